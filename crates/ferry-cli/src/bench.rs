//! `ferry bench`: the load generator (crate ferry-bench) on the command line, with a table or `--json` as output.

use std::path::PathBuf;
use std::time::Duration;

use crate::output::{out, outln};
use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_bench::{list, null_ftp, raw_tcp, sessions, small, transfer, units, SourceIps, Target};

/// Longest that `sessions --hold` may keep sessions open: every benchmark stops by itself.
const MAX_HOLD_SECS: u64 = 3600;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The one SSH cipher offered for sftp:// targets.
    #[arg(long, global = true, default_value = ferry_bench::sftp::CIPHER)]
    cipher: String,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open N logged-in sessions, hold them, report the login rate and server memory (PSS) per session.
    Sessions(SessionsArgs),
    /// Upload then download K parallel streams of S bytes each; report the throughput. Each upload creates its
    /// file (ferry-bench-transfer-I.bin, deleted before, untimed, and at the end).
    Transfer(TransferArgs),
    /// Store then retrieve F small files from C clients; report files per second.
    Small(SmallArgs),
    /// List a directory of E entries (MLSD, else LIST; READDIR over SFTP); report time and server memory.
    List(ListArgs),
    /// The physical limit: copy S bytes over loopback TCP in K streams inside this process.
    RawTcp(RawTcpArgs),
    /// The floor for `sessions`: serve FTP logins on a loopback address, answering USER and PASS without any
    /// checking, until killed.
    NullFtp(NullFtpArgs),
}

#[derive(Args, Debug)]
struct SessionsArgs {
    /// ftp://USER:PASSWORD@127.0.0.1:PORT/, ftps://... or sftp://... (loopback only).
    url: String,
    /// Sessions to open.
    #[arg(short = 'n', long = "sessions", default_value_t = 1000)]
    sessions: usize,
    /// Server process to measure (with its descendants); repeatable.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Source addresses, e.g. 127.0.0.1-127.0.0.20 [default: enough 127.0.0.x for N].
    #[arg(long)]
    source_ips: Option<String>,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Milliseconds to wait after the last login before measuring memory.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Seconds to keep the sessions open after measuring (at most 3600).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Do not log in once before the baseline (count a first login's one-time costs as per-session memory).
    #[arg(long)]
    no_warmup: bool,
}

#[derive(Args, Debug)]
struct TransferArgs {
    url: String,
    /// Bytes per stream, e.g. 1GiB.
    #[arg(long, default_value = "1GiB")]
    size: String,
    /// Parallel streams, each on its own logged-in connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Server process whose CPU time is reported; repeatable.
    #[arg(long = "pid")]
    pids: Vec<u32>,
}

#[derive(Args, Debug)]
struct SmallArgs {
    url: String,
    /// Files to store and then retrieve.
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Size of each file (at most 256KiB).
    #[arg(long, default_value = "4KiB")]
    size: String,
    /// Clients, each on one connection, sharing the files.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    #[arg(long = "pid")]
    pids: Vec<u32>,
}

#[derive(Args, Debug)]
struct ListArgs {
    url: String,
    /// Entries in the listed directory.
    #[arg(long, default_value_t = 100_000)]
    entries: usize,
    /// Create the entries directly on disk in DIR (the server-side directory of the URL's path) instead of
    /// uploading them through the protocol.
    #[arg(long)]
    local_dir: Option<PathBuf>,
    /// Server process to measure (with its descendants); repeatable.
    #[arg(long = "pid")]
    pids: Vec<u32>,
}

#[derive(Args, Debug)]
struct RawTcpArgs {
    #[arg(long, default_value = "1GiB")]
    size: String,
    #[arg(long, default_value_t = 1)]
    streams: usize,
}

#[derive(Args, Debug)]
struct NullFtpArgs {
    /// Loopback address to listen on, e.g. 127.0.0.1:21300.
    #[arg(long)]
    listen: std::net::SocketAddr,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let json = args.json;
    let cipher = args.cipher;
    let target = |url: &str| target(url, &cipher);
    let (table, value) = match args.scenario {
        Scenario::Sessions(a) => {
            let sources = a
                .source_ips
                .as_deref()
                .map(str::parse::<SourceIps>)
                .transpose()?;
            let options = sessions::Options {
                sessions: a.sessions,
                concurrency: a.concurrency,
                sources,
                pids: a.pids,
                settle: Duration::from_millis(a.settle_ms),
                hold: Duration::from_secs(a.hold.min(MAX_HOLD_SECS)),
                warmup: !a.no_warmup,
            };
            let report = sessions::run(&target(&a.url)?, &options).await?;
            (report.table(), serde_json::to_value(&report)?)
        }
        Scenario::Transfer(a) => {
            let options = transfer::Options {
                size: size(&a.size)?,
                streams: a.streams.max(1),
                pids: a.pids,
            };
            let report = transfer::run(&target(&a.url)?, &options).await?;
            (report.table(), serde_json::to_value(&report)?)
        }
        Scenario::Small(a) => {
            let options = small::Options {
                files: a.files,
                size: size(&a.size)?,
                clients: a.clients.max(1),
                pids: a.pids,
            };
            let report = small::run(&target(&a.url)?, &options).await?;
            (report.table(), serde_json::to_value(&report)?)
        }
        Scenario::List(a) => {
            let options = list::Options {
                entries: a.entries,
                local_dir: a.local_dir,
                pids: a.pids,
            };
            let report = list::run(&target(&a.url)?, &options).await?;
            (report.table(), serde_json::to_value(&report)?)
        }
        Scenario::RawTcp(a) => {
            let options = raw_tcp::Options {
                size: size(&a.size)?,
                streams: a.streams.max(1),
            };
            let report = raw_tcp::run(&options).await?;
            (report.table(), serde_json::to_value(&report)?)
        }
        Scenario::NullFtp(a) => {
            anyhow::ensure!(
                a.listen.ip().is_loopback(),
                "null-ftp listens on loopback addresses only, not {}",
                a.listen.ip()
            );
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("listening on {}", a.listen))?;
            null_ftp::serve(listener).await?;
            return Ok(());
        }
    };
    if json {
        outln!("{value}");
    } else {
        out!("{table}");
    }
    Ok(())
}

fn target(url: &str, cipher: &str) -> anyhow::Result<Target> {
    let mut target = url.parse::<Target>().context("the target URL")?;
    target.ssh_cipher = cipher.to_owned();
    Ok(target)
}

fn size(text: &str) -> anyhow::Result<u64> {
    Ok(units::parse_size(text)?)
}
