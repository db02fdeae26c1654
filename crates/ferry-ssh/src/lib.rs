//! ferry-ssh: the SSH front-end of ferry.
//!
//! One SSH server (built on `russh`) authenticates accounts through [`ferry_core::server::ServerCore`] with a
//! password or a public key, then serves each session channel with one of:
//!
//! - the `sftp` subsystem ([`sftp`]): SFTP version 3 with the OpenSSH extensions, requests pipelined and handled
//!   concurrently across open handles;
//! - `scp -t` / `scp -f` ([`scp`]): the legacy SCP protocol (`scp -O`), both directions, `-r` and `-p`;
//! - `md5sum`, `sha1sum`, `sha256sum`, `sha512sum` and `pwd` ([`exec`]), answered without a shell.
//!
//! Everything else (shells, terminals, port and agent forwarding, other commands) is refused; no process is ever
//! spawned for a client. Every file operation is a call on a [`ferry_core::session::Session`], so permissions,
//! quotas, confinement and events behave exactly as for FTP.
//!
//! ```no_run
//! # async fn demo(core: ferry_core::server::ServerCore) -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_ssh::{host_keys, SshConfig, SshServer};
//! let keys = host_keys::load_or_generate(std::path::Path::new("ferry-data/ssh"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:2222").await?;
//! SshServer::new(core, SshConfig::new(keys)).serve(listener).await?;
//! # Ok(()) }
//! ```

mod activity;
mod auth;
mod connection;
pub mod exec;
pub mod host_keys;
pub mod scp;
mod server;
pub mod sftp;
mod shell_words;

pub use server::{SshConfig, SshServer};
