//! `list`: time and server memory to list one directory of E entries (MLSD when the server has it, else LIST; READDIR
//! over SFTP). The entries are created either directly on disk (`local_dir`, the server's view of the target
//! directory: fast, and the same files for every server) or through the protocol (E empty uploads).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::conn::{Connector, CHUNK};
use crate::pss::{self, Memory};
use crate::report::Table;
use crate::transfer::phase;
use crate::{Error, Result, Scheme, Target};

/// How often server memory is sampled while the listing runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Connections that upload the entries when they are created through the protocol.
const CREATE_CLIENTS: usize = 8;

#[derive(Clone, Debug)]
pub struct Options {
    pub entries: usize,
    /// The server-side directory that the target URL's directory maps to; entries are created there directly.
    pub local_dir: Option<PathBuf>,
    pub pids: Vec<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    pub protocol: Scheme,
    pub entries: usize,
    /// `local-dir`, `existing` (already on disk) or `protocol`.
    pub created_via: &'static str,
    pub command: &'static str,
    pub lines: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub entries_per_sec: f64,
    pub memory_before: Option<Memory>,
    pub memory_peak: Option<Memory>,
    /// Peak minus before, KiB.
    pub memory_growth_kib: Option<i64>,
    pub server_cpu_seconds: Option<f64>,
}

pub async fn run(target: &Target, options: &Options) -> Result<Report> {
    crate::raise_open_file_limit();
    let dir_name = format!("ferry-bench-list-{}", options.entries);
    let remote_dir = target.path(&dir_name);
    let connector = Connector::single_source(target)?;
    let created_via = match &options.local_dir {
        Some(local) => {
            let dir = local.join(&dir_name);
            let entries = options.entries;
            tokio::task::spawn_blocking(move || create_on_disk(&dir, entries))
                .await
                .map_err(|e| Error::Protocol(format!("creating entries: {e}")))??
        }
        None => {
            create_through_protocol(&connector, &remote_dir, options.entries).await?;
            "protocol"
        }
    };

    let mut connection = connector.open(0).await?;
    let tree = if options.pids.is_empty() {
        Vec::new()
    } else {
        pss::process_tree(&options.pids)?
    };
    let memory_before = (!tree.is_empty()).then(|| pss::sum(&tree)).transpose()?;
    let server_cpu = crate::cpu::tree_seconds(&tree);
    let sampler = Sampler::start(tree.clone());
    let mut buf = vec![0u8; CHUNK];
    let started = Instant::now();
    let listed = connection.list(&remote_dir, &mut buf).await;
    let seconds = started.elapsed().as_secs_f64();
    let peak = sampler.stop().await;
    let server_cpu_seconds =
        (!tree.is_empty()).then(|| crate::cpu::tree_seconds(&tree) - server_cpu);
    let (command, listing) = listed?;
    connection.close().await;
    let memory_peak = memory_before.map(|before| Memory {
        pss_kib: peak.max(before.pss_kib),
        processes: before.processes,
    });
    Ok(Report {
        scenario: "list",
        target: target.display_url(),
        protocol: target.scheme,
        entries: options.entries,
        created_via,
        command,
        lines: listing.lines,
        bytes: listing.bytes,
        seconds,
        entries_per_sec: if seconds > 0.0 {
            options.entries as f64 / seconds
        } else {
            0.0
        },
        memory_before,
        memory_peak,
        memory_growth_kib: memory_before
            .zip(memory_peak)
            .map(|(b, p)| p.pss_kib as i64 - b.pss_kib as i64),
        server_cpu_seconds,
    })
}

/// Creates `entries` empty files `entry-000000`... in `dir`, unless it already holds exactly that many.
fn create_on_disk(dir: &Path, entries: usize) -> Result<&'static str> {
    if dir.is_dir() && std::fs::read_dir(dir)?.count() == entries {
        return Ok("existing");
    }
    std::fs::create_dir_all(dir)?;
    for i in 0..entries {
        std::fs::File::create(dir.join(entry_name(i)))?;
    }
    Ok("local-dir")
}

async fn create_through_protocol(
    connector: &Connector,
    remote_dir: &str,
    entries: usize,
) -> Result<()> {
    let clients = CREATE_CLIENTS.min(entries.max(1));
    let mut connections = Vec::with_capacity(clients);
    for i in 0..clients {
        connections.push(connector.open(i).await?);
    }
    if let Some(first) = connections.first_mut() {
        if !connector.target.dir.is_empty() {
            first.make_dir(&connector.target.dir).await?;
        }
        first.make_dir(remote_dir).await?;
    }
    let (connections, _) = phase(connections, &[], |client, mut c| {
        let paths: Vec<String> = (client..entries)
            .step_by(clients)
            .map(|i| format!("{remote_dir}/{}", entry_name(i)))
            .collect();
        async move {
            for path in &paths {
                c.store(path, 0, &[]).await?;
            }
            Ok((c, 0))
        }
    })
    .await?;
    for c in connections {
        c.close().await;
    }
    Ok(())
}

fn entry_name(i: usize) -> String {
    format!("entry-{i:06}")
}

/// Samples the PSS of fixed pids in the background and keeps the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let task = (!pids.is_empty()).then(|| {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = pss::sum(&pids) {
                        peak.fetch_max(m.pss_kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(SAMPLE_EVERY).await;
                }
            })
        });
        Sampler { stop, peak, task }
    }

    /// Stops sampling and returns the peak PSS in KiB (0 when nothing was sampled).
    async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Report {
    pub fn table(&self) -> String {
        Table::new(format!("list  {}", self.target))
            .row(
                "entries",
                format!("{} (created via {})", self.entries, self.created_via),
            )
            .row("command", self.command)
            .row("lines received", self.lines)
            .row("bytes received", self.bytes)
            .row(
                "time",
                format!(
                    "{:.3} s  ({:.0} entries/s)",
                    self.seconds, self.entries_per_sec
                ),
            )
            .row_opt(
                "server PSS before",
                self.memory_before.map(|m| format!("{} KiB", m.pss_kib)),
            )
            .row_opt(
                "server PSS peak",
                self.memory_peak.map(|m| format!("{} KiB", m.pss_kib)),
            )
            .row_opt("growth", self.memory_growth_kib.map(|k| format!("{k} KiB")))
            .row_opt(
                "server CPU",
                self.server_cpu_seconds.map(|s| format!("{s:.2} s")),
            )
            .render()
    }
}
