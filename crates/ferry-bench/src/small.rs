//! `small`: C clients, each on one logged-in connection, store F small files between them (one data connection per
//! file), then retrieve them all; the figure is files per second in each direction.

use serde::Serialize;

use crate::conn::{upload_chunk, Connector, CHUNK};
use crate::report::Table;
use crate::transfer::{phase, Phase};
use crate::units::format_size;
use crate::{Error, Result, Scheme, Target};

#[derive(Clone, Debug)]
pub struct Options {
    pub files: usize,
    pub size: u64,
    pub clients: usize,
    pub pids: Vec<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    pub protocol: Scheme,
    pub files: usize,
    pub size: u64,
    pub clients: usize,
    pub stor_ops_per_sec: f64,
    pub retr_ops_per_sec: f64,
    pub stor: Phase,
    pub retr: Phase,
}

pub async fn run(target: &Target, options: &Options) -> Result<Report> {
    crate::raise_open_file_limit();
    if options.size > CHUNK as u64 {
        return Err(Error::Argument(format!(
            "small files are at most {}",
            format_size(CHUNK as u64)
        )));
    }
    let clients = options.clients.clamp(1, options.files.max(1));
    let connector = Connector::single_source(target)?;
    let mut connections = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut connection = connector.open(i).await?;
        if i == 0 && !target.dir.is_empty() {
            connection.make_dir(&target.dir).await?;
        }
        connections.push(connection);
    }
    let files = options.files;
    let size = options.size;
    let names = move |client: usize| -> Vec<String> {
        (client..files)
            .step_by(clients)
            .map(|j| target.path(&format!("ferry-bench-small-{j}.bin")))
            .collect()
    };
    let chunk = upload_chunk();

    let (connections, stor) = phase(connections, &options.pids, |i, mut c| {
        let (paths, chunk) = (names(i), chunk.clone());
        async move {
            for path in &paths {
                c.store(path, size, &chunk[..size as usize]).await?;
            }
            Ok((c, paths.len() as u64 * size))
        }
    })
    .await?;
    let (connections, retr) = phase(connections, &options.pids, |i, mut c| {
        let paths = names(i);
        async move {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0;
            for path in &paths {
                total += c.retrieve(path, &mut buf).await?;
            }
            Ok((c, total))
        }
    })
    .await?;
    for c in connections {
        c.close().await;
    }
    let rate = |p: &Phase| {
        if p.seconds > 0.0 {
            files as f64 / p.seconds
        } else {
            0.0
        }
    };
    Ok(Report {
        scenario: "small",
        target: target.display_url(),
        protocol: target.scheme,
        files,
        size,
        clients,
        stor_ops_per_sec: rate(&stor),
        retr_ops_per_sec: rate(&retr),
        stor,
        retr,
    })
}

impl Report {
    pub fn table(&self) -> String {
        Table::new(format!("small  {}", self.target))
            .row(
                "files",
                format!("{} of {}", self.files, format_size(self.size)),
            )
            .row("clients", self.clients)
            .row(
                "STOR",
                format!(
                    "{:.0} files/s  ({:.2} s)",
                    self.stor_ops_per_sec, self.stor.seconds
                ),
            )
            .row(
                "RETR",
                format!(
                    "{:.0} files/s  ({:.2} s)",
                    self.retr_ops_per_sec, self.retr.seconds
                ),
            )
            .render()
    }
}
