//! `raw-tcp`: the physical limit for the transfer scenarios. K streams each send S bytes over loopback TCP from one
//! reused buffer to a reader that discards them, in this process, with the same buffer size as the FTP streams.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::conn::{upload_chunk, CHUNK};
use crate::report::Table;
use crate::units::{format_size, mib_per_sec};
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct Options {
    pub size: u64,
    pub streams: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub size: u64,
    pub streams: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub mib_per_sec: f64,
    pub cpu_seconds: f64,
}

pub async fn run(options: &Options) -> Result<Report> {
    crate::raise_open_file_limit();
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await?;
    let addr = listener.local_addr()?;
    let streams = options.streams.max(1);
    let size = options.size;
    let chunk = upload_chunk();
    let cpu = crate::cpu::own_seconds();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut readers = JoinSet::new();
        for _ in 0..streams {
            let (mut tcp, _) = listener.accept().await?;
            readers.spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                loop {
                    let n = tcp.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<u64, std::io::Error>(total);
                    }
                    total += n as u64;
                }
            });
        }
        let mut total = 0;
        while let Some(joined) = readers.join_next().await {
            total += joined.map_err(std::io::Error::other)??;
        }
        Ok::<u64, std::io::Error>(total)
    });
    for _ in 0..streams {
        let chunk = chunk.clone();
        tasks.spawn(async move {
            let mut tcp = crate::ftp::connect_from(addr.ip(), addr)
                .await
                .map_err(std::io::Error::other)?;
            let mut left = size;
            while left > 0 {
                let n = chunk.len().min(left as usize);
                tcp.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
            tcp.shutdown().await?;
            Ok(0)
        });
    }
    let mut bytes = 0;
    while let Some(joined) = tasks.join_next().await {
        bytes += joined.map_err(|e| Error::Protocol(e.to_string()))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        scenario: "raw-tcp",
        size,
        streams,
        bytes,
        seconds,
        mib_per_sec: mib_per_sec(bytes, seconds),
        cpu_seconds: crate::cpu::own_seconds() - cpu,
    })
}

impl Report {
    pub fn table(&self) -> String {
        Table::new("raw-tcp  loopback")
            .row("streams", self.streams)
            .row("size per stream", format_size(self.size))
            .row(
                "throughput",
                format!(
                    "{:.1} MiB/s  ({:.2} s, CPU {:.2} s)",
                    self.mib_per_sec, self.seconds, self.cpu_seconds
                ),
            )
            .render()
    }
}
