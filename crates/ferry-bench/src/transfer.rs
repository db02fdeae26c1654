//! `transfer`: K parallel streams each upload a file of S bytes, then download it again; throughput is the total
//! bytes over the wall time of each phase.
//!
//! Each upload creates its file: one left at the name (by an earlier run) is deleted first, outside the timing,
//! and the files are deleted again at the end. Replacing a large file makes the file system free the old one's
//! cached pages and blocks, and ext4 starts writing back a file truncated to zero when it is closed; that work
//! would swamp the transfer's own figure (1 GiB: 550 MiB/s replacing against 2,200 creating, measured for ferry
//! and pure-ftpd alike), and it is the file system's, not the server's.

use std::time::Instant;

use serde::Serialize;
use tokio::task::JoinSet;

use crate::conn::{upload_chunk, Connection, Connector, CHUNK};
use crate::report::Table;
use crate::units::{format_size, mib_per_sec};
use crate::{Error, Result, Scheme, Target};

#[derive(Clone, Debug)]
pub struct Options {
    pub size: u64,
    pub streams: usize,
    /// Server processes whose CPU time is reported.
    pub pids: Vec<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    pub protocol: Scheme,
    pub size: u64,
    pub streams: usize,
    pub upload: Phase,
    pub download: Phase,
}

/// One direction of a transfer run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Phase {
    pub bytes: u64,
    pub seconds: f64,
    pub mib_per_sec: f64,
    pub server_cpu_seconds: Option<f64>,
    pub client_cpu_seconds: f64,
}

pub async fn run(target: &Target, options: &Options) -> Result<Report> {
    crate::raise_open_file_limit();
    let connector = Connector::single_source(target)?;
    let mut connections = Vec::with_capacity(options.streams);
    for i in 0..options.streams {
        let mut connection = connector.open(i).await?;
        if i == 0 && !target.dir.is_empty() {
            connection.make_dir(&target.dir).await?;
        }
        connections.push(connection);
    }
    let name = |i: usize| target.path(&format!("ferry-bench-transfer-{i}.bin"));
    remove_files(&mut connections, name).await?;
    let chunk = upload_chunk();
    let size = options.size;

    let (connections, upload) = phase(connections, &options.pids, move |i, mut c| {
        let (path, chunk) = (name(i), chunk.clone());
        async move {
            c.store(&path, size, &chunk).await?;
            Ok((c, size))
        }
    })
    .await?;
    let (mut connections, download) = phase(connections, &options.pids, move |i, mut c| {
        let path = name(i);
        async move {
            let mut buf = vec![0u8; CHUNK];
            let got = c.retrieve(&path, &mut buf).await?;
            if got != size {
                return Err(Error::Protocol(format!(
                    "{path}: downloaded {got} bytes, expected {size}"
                )));
            }
            Ok((c, got))
        }
    })
    .await?;
    remove_files(&mut connections, name).await?;
    for c in connections {
        c.close().await;
    }
    Ok(Report {
        scenario: "transfer",
        target: target.display_url(),
        protocol: target.scheme,
        size,
        streams: options.streams,
        upload,
        download,
    })
}

/// Deletes each connection's file, where there is one (see the module's documentation).
async fn remove_files(
    connections: &mut [Connection],
    name: impl Fn(usize) -> String,
) -> Result<()> {
    for (i, c) in connections.iter_mut().enumerate() {
        c.remove_if_present(&name(i)).await?;
    }
    Ok(())
}

/// Runs `op` on every connection at once and times the whole.
pub(crate) async fn phase<F, Fut>(
    connections: Vec<Connection>,
    pids: &[u32],
    op: F,
) -> Result<(Vec<Connection>, Phase)>
where
    F: Fn(usize, Connection) -> Fut,
    Fut: std::future::Future<Output = Result<(Connection, u64)>> + Send + 'static,
{
    let server_cpu = crate::cpu::tree_seconds(pids);
    let client_cpu = crate::cpu::own_seconds();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, c) in connections.into_iter().enumerate() {
        let fut = op(i, c);
        tasks.spawn(async move { (i, fut.await) });
    }
    let mut done = Vec::new();
    let mut bytes = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, result) =
            joined.map_err(|e| Error::Protocol(format!("stream task failed: {e}")))?;
        let (c, n) = result?;
        bytes += n;
        done.push((i, c));
    }
    let seconds = started.elapsed().as_secs_f64();
    done.sort_by_key(|(i, _)| *i);
    let phase = Phase {
        bytes,
        seconds,
        mib_per_sec: mib_per_sec(bytes, seconds),
        server_cpu_seconds: (!pids.is_empty()).then(|| crate::cpu::tree_seconds(pids) - server_cpu),
        client_cpu_seconds: crate::cpu::own_seconds() - client_cpu,
    };
    Ok((done.into_iter().map(|(_, c)| c).collect(), phase))
}

impl Report {
    pub fn table(&self) -> String {
        let phase = |p: &Phase| {
            let server = p
                .server_cpu_seconds
                .map_or(String::new(), |s| format!(", server CPU {s:.2} s"));
            format!(
                "{:.1} MiB/s  ({} in {:.2} s{server}, client CPU {:.2} s)",
                p.mib_per_sec,
                format_size(p.bytes),
                p.seconds,
                p.client_cpu_seconds
            )
        };
        Table::new(format!("transfer  {}", self.target))
            .row("streams", self.streams)
            .row("size per stream", format_size(self.size))
            .row("upload", phase(&self.upload))
            .row("download", phase(&self.download))
            .render()
    }
}
