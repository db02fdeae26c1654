//! `sessions`: open N logged-in sessions, hold them, and measure the login rate and what each idle session costs
//! the server (PSS of the server's process tree after minus before, divided by N).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::conn::{Connection, Connector};
use crate::pss::{self, Memory};
use crate::report::Table;
use crate::{Result, Scheme, SourceIps, Target};

/// How long a warm-up session's server process gets to exit.
const WARMUP_EXIT: Duration = Duration::from_millis(300);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub sessions: usize,
    /// Logins in flight at once. Forking servers accept from a short listen backlog (vsftpd: 32), so more only
    /// makes connections wait for SYN retransmits.
    pub concurrency: usize,
    /// Source addresses; by default enough 127.0.0.x addresses for `sessions`.
    pub sources: Option<SourceIps>,
    /// Server processes whose memory (with their descendants) is measured.
    pub pids: Vec<u32>,
    /// Wait after the last login before measuring memory.
    pub settle: Duration,
    /// Keep the sessions open this much longer after measuring.
    pub hold: Duration,
    /// Log in once (and out) before the baseline, so that one-time costs of a first login (a password hash
    /// computed and cached, lazily started thread pools) are not counted as per-session memory.
    pub warmup: bool,
}

/// What was measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    pub protocol: Scheme,
    pub sessions_requested: usize,
    pub sessions_opened: usize,
    pub failures: usize,
    pub first_error: Option<String>,
    pub source_addresses: usize,
    pub concurrency: usize,
    pub warmup: bool,
    pub login_seconds: f64,
    pub logins_per_sec: f64,
    pub memory_before: Option<Memory>,
    pub memory_after: Option<Memory>,
    /// Server memory per open session, KiB.
    pub per_session_kib: Option<f64>,
    /// The same, projected to a million sessions, GiB.
    pub projected_gib_per_million: Option<f64>,
    pub server_cpu_seconds: Option<f64>,
    pub client_cpu_seconds: f64,
    pub open_files_limit: u64,
}

/// Opens the sessions, measures, holds, and closes them.
pub async fn run(target: &Target, options: &Options) -> Result<Report> {
    let open_files_limit = crate::raise_open_file_limit();
    let sources = options
        .sources
        .clone()
        .unwrap_or_else(|| SourceIps::enough_for(options.sessions, target.addr.ip()));
    let connector = Arc::new(Connector::new(target, sources.clone())?);
    let measure = |pids: &[u32]| (!pids.is_empty()).then(|| pss::measure(pids)).transpose();

    if options.warmup {
        connector.open_session(0).await?.close().await;
        // Let a forking server's session process exit before the baseline.
        tokio::time::sleep(WARMUP_EXIT).await;
    }
    let memory_before = measure(&options.pids)?;
    let server_cpu_before = crate::cpu::tree_seconds(&options.pids);
    let client_cpu_before = crate::cpu::own_seconds();
    // A fixed set of workers, each logging in one session after another: no task per session waiting on a
    // semaphore, and the collecting task is woken once per worker rather than once per login.
    let next = Arc::new(AtomicUsize::new(0));
    let workers = options.concurrency.clamp(1, options.sessions.max(1));
    let mut logins = JoinSet::new();
    let started = Instant::now();
    for _ in 0..workers {
        let connector = Arc::clone(&connector);
        let next = Arc::clone(&next);
        let sessions = options.sessions;
        logins.spawn(async move {
            let mut done = Logins::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sessions {
                    return done;
                }
                match connector.open_session(i).await {
                    Ok(connection) => {
                        done.held.push(connection);
                        done.last_login = started.elapsed();
                    }
                    Err(e) => done.failed(e.to_string()),
                }
            }
        });
    }
    let mut all = Logins::default();
    while let Some(joined) = logins.join_next().await {
        match joined {
            Ok(done) => all.merge(done),
            Err(e) => all.failed(e.to_string()),
        }
    }
    let Logins {
        held,
        failures,
        first_error,
        last_login,
    } = all;
    let login_seconds = last_login.as_secs_f64();
    let server_cpu = crate::cpu::tree_seconds(&options.pids) - server_cpu_before;
    let client_cpu_seconds = crate::cpu::own_seconds() - client_cpu_before;
    tokio::time::sleep(options.settle).await;
    let memory_after = measure(&options.pids)?;
    let per_session_kib = match (memory_before, memory_after) {
        (Some(before), Some(after)) if !held.is_empty() => {
            Some((after.pss_kib as f64 - before.pss_kib as f64) / held.len() as f64)
        }
        _ => None,
    };
    tokio::time::sleep(options.hold).await;
    let opened = held.len();
    drop(held);

    Ok(Report {
        scenario: "sessions",
        target: target.display_url(),
        protocol: target.scheme,
        sessions_requested: options.sessions,
        sessions_opened: opened,
        failures,
        first_error,
        source_addresses: sources.len(),
        concurrency: options.concurrency,
        warmup: options.warmup,
        login_seconds,
        logins_per_sec: if login_seconds > 0.0 {
            opened as f64 / login_seconds
        } else {
            0.0
        },
        memory_before,
        memory_after,
        per_session_kib,
        projected_gib_per_million: per_session_kib.map(|kib| kib * 1e6 / (1024.0 * 1024.0)),
        server_cpu_seconds: (!options.pids.is_empty()).then_some(server_cpu),
        client_cpu_seconds,
        open_files_limit,
    })
}

/// The sessions one worker (or all of them) opened, and what failed.
#[derive(Default)]
struct Logins {
    held: Vec<Connection>,
    failures: usize,
    first_error: Option<String>,
    /// When the last successful login completed, from the start of the logins.
    last_login: Duration,
}

impl Logins {
    fn failed(&mut self, error: String) {
        self.failures += 1;
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: Logins) {
        self.held.extend(other.held);
        self.failures += other.failures;
        if let Some(e) = other.first_error {
            self.first_error.get_or_insert(e);
        }
        self.last_login = self.last_login.max(other.last_login);
    }
}

impl Report {
    pub fn table(&self) -> String {
        Table::new(format!("sessions  {}", self.target))
            .row(
                "sessions opened",
                format!("{} of {}", self.sessions_opened, self.sessions_requested),
            )
            .row("failures", self.failures)
            .row_opt("first error", self.first_error.as_ref())
            .row("source addresses", self.source_addresses)
            .row("login time", format!("{:.2} s", self.login_seconds))
            .row("logins/s", format!("{:.0}", self.logins_per_sec))
            .row_opt(
                "server PSS before",
                self.memory_before
                    .map(|m| format!("{} KiB in {} processes", m.pss_kib, m.processes)),
            )
            .row_opt(
                "server PSS after",
                self.memory_after
                    .map(|m| format!("{} KiB in {} processes", m.pss_kib, m.processes)),
            )
            .row_opt(
                "per session",
                self.per_session_kib.map(|k| format!("{k:.2} KiB")),
            )
            .row_opt(
                "1,000,000 sessions",
                self.projected_gib_per_million
                    .map(|g| format!("{g:.1} GiB")),
            )
            .row_opt(
                "server CPU",
                self.server_cpu_seconds.map(|s| format!("{s:.2} s")),
            )
            .row("client CPU", format!("{:.2} s", self.client_cpu_seconds))
            .render()
    }
}
