//! `ferry-bench`: a lean load generator for FTP, FTPS and SFTP servers, used by `ferry bench` and `bench/run` to
//! measure ferry and the servers people would pick instead, on the same machine and in the same run.
//!
//! Every scenario takes a [`Target`] (a URL with credentials, loopback only) and returns a report that serialises to
//! JSON and renders as a small table:
//!
//! - [`sessions`]: open N logged-in sessions, hold them, measure the login rate and the server's memory (PSS).
//! - [`transfer`]: upload then download throughput of K parallel streams.
//! - [`small`]: small-file STOR and RETR operations per second.
//! - [`list`]: time and server memory to list a directory of E entries.
//! - [`raw_tcp`]: the physical limit, a plain TCP copy of the same bytes over loopback.
//! - [`null_ftp`]: the floor for logins, a server that answers a login and does nothing else.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_bench::Error> {
//! let target: ferry_bench::Target = "ftp://alice:secret@127.0.0.1:2121/".parse()?;
//! let report = ferry_bench::transfer::run(&target, &ferry_bench::transfer::Options {
//!     size: 64 << 20,
//!     streams: 1,
//!     pids: Vec::new(),
//! }).await?;
//! println!("{}", report.table());
//! # Ok(()) }
//! ```
//!
//! The FTP side is a small hand-written driver ([`ftp`]) rather than a general client library: the load generator
//! must cost the machine as little as possible next to the server it measures, and must control exactly which
//! commands go over the wire. SFTP goes through russh and russh-sftp ([`sftp`]).

pub mod conn;
pub mod cpu;
pub mod ftp;
pub mod list;
pub mod null_ftp;
pub mod pss;
pub mod raw_tcp;
pub mod report;
pub mod sessions;
pub mod sftp;
pub mod small;
pub mod source;
pub mod target;
pub mod transfer;
pub mod units;

pub use source::SourceIps;
pub use target::{Scheme, Target};

/// Everything that can stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{0}")]
    Argument(String),
    #[error("unexpected FTP reply to {command}: {reply}")]
    Reply { command: String, reply: String },
    #[error("FTP protocol: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("SSH: {0}")]
    Ssh(#[from] russh::Error),
    #[error("SFTP: {0}")]
    Sftp(#[from] russh_sftp::client::error::Error),
    #[error("timed out: {0}")]
    Timeout(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Raises this process's soft limit on open files to its hard limit (per process), since a benchmark of N
/// sessions holds N sockets. Returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}
