//! Uploads that the kernel moves from the data socket into the file, while the client sends faster than ferry
//! writes. The buffered path copies every byte twice (out of the socket on the runtime, into the page cache on the
//! blocking pool) and crosses to the blocking pool once per 1 MiB buffer; a pump runs on one blocking thread,
//! waits for the socket itself and splices what arrived into the file through a pipe (see
//! [`crate::storage::splice`]): one copy and no hand-offs while data keeps coming. It gives the thread back as
//! soon as nothing has arrived for a moment, so only uploads that are moving hold one.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::Upload;
use crate::error::{CoreError, CoreResult};
use crate::storage::splice::{self, Pipe};

/// Uploads that may pump at once; uploads past this write from buffers. Each holds a thread of the blocking pool
/// (512 by default, which other file work queues behind once all are taken) while its data keeps coming. Their
/// pipes are bounded by the kernel too: an unprivileged user's pipes may hold 64 MiB in all by default
/// (`/proc/sys/fs/pipe-user-pages-soft`), past which a pipe is refused and its upload uses buffers. 100 uploaders
/// of 16 MiB, three alternating runs: 2,266-2,650 MiB/s and 0.78-0.90 s of server CPU with 32, 2,640-2,858 MiB/s
/// and 0.72-0.79 s with 128.
const MAX_PUMPS: usize = 128;

static PUMPS: Semaphore = Semaphore::const_new(MAX_PUMPS);

/// What an upload needs to have data moved into its file by the kernel: the file, a pipe, and its place among the
/// uploads that pump.
struct Pump {
    file: Arc<File>,
    pipe: Pipe,
    _slot: SemaphorePermit<'static>,
}

/// Why [`Upload::pump`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The data connection ended: everything sent is in the file.
    Ended,
    /// Nothing arrived for the idle time given.
    Idle,
    /// The caller's cancellation came.
    Cancelled,
    /// The upload cannot pump now (see [`Upload::pump`]); nothing was read.
    Unavailable,
}

/// What broke a pump off. Data moved into the file before it stays there, counted.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// Reading the data connection failed.
    #[error("{0}")]
    Socket(io::Error),
    /// The quota refused the data, or writing the file failed.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Sets its flag when dropped, so that a pump stops when whoever waits for it goes away.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Upload {
    /// Moves what arrives on `socket` (a non-blocking TCP socket, the upload's data connection) into the file
    /// inside the kernel, on a blocking thread, after the writes before have ended. Each piece is counted against
    /// the quota before it is written, as [`Upload::write`] does, and added to `progress`. Returns at the end of
    /// the stream, when nothing has arrived for `idle`, or when `cancelled` completes (the thread stops before the
    /// next piece, within `idle`). [`PumpEnd::Unavailable`] when the storage has no local file to move data into,
    /// [`MAX_PUMPS`] uploads pump already, or the kernel refuses the pipe: write from buffers instead.
    pub async fn pump(
        &mut self,
        socket: BorrowedFd<'_>,
        idle: Duration,
        progress: Arc<AtomicU64>,
        cancelled: impl Future<Output = impl Sized>,
    ) -> Result<PumpEnd, PumpError> {
        let Some(pump) = self.prepare_pump().await? else {
            return Ok(PumpEnd::Unavailable);
        };
        let socket = socket.try_clone_to_owned().map_err(PumpError::Socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_on_drop = StopOnDrop(Arc::clone(&stop));
        // The upload goes along to the blocking thread and comes back with the outcome; should this future be
        // dropped meanwhile, it is dropped there and records itself as failed.
        let mut upload = Upload {
            state: self.state.take(),
        };
        let mut pumping = tokio::task::spawn_blocking(move || {
            let result = upload.pump_blocking(&pump, socket.as_fd(), idle, &stop, &progress);
            // Dropped here, off the runtime, and before the writer can close the file.
            drop(pump);
            (upload, result)
        });
        let joined = tokio::select! {
            biased;
            joined = &mut pumping => joined,
            _ = cancelled => {
                drop(stop_on_drop);
                let joined = pumping.await;
                joined.map(|(upload, result)| (upload, result.map(|_| PumpEnd::Cancelled)))
            }
        };
        let (mut upload, result) = joined.map_err(|e| CoreError::from(io::Error::other(e)))?;
        self.state = upload.state.take();
        result
    }

    /// The file and a pipe for [`Upload::pump`], or `None` (see there).
    async fn prepare_pump(&mut self) -> CoreResult<Option<Pump>> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        // The pump is not paced: paced uploads are written from buffers.
        if s.session.upload_pace().is_some() {
            return Ok(None);
        }
        let Ok(slot) = PUMPS.try_acquire() else {
            return Ok(None);
        };
        let Some(file) = s.writer.direct_file().await? else {
            return Ok(None);
        };
        let pipe = match Pipe::new() {
            Ok(pipe) => pipe,
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for an upload, writing from buffers");
                return Ok(None);
            }
        };
        Ok(Some(Pump {
            file,
            pipe,
            _slot: slot,
        }))
    }

    /// The loop of [`Upload::pump`], on the calling thread, which it blocks.
    fn pump_blocking(
        &mut self,
        pump: &Pump,
        socket: BorrowedFd<'_>,
        idle: Duration,
        stop: &AtomicBool,
        progress: &AtomicU64,
    ) -> Result<PumpEnd, PumpError> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(PumpEnd::Cancelled);
            }
            if !splice::wait_readable(socket, idle).map_err(PumpError::Socket)? {
                return Ok(PumpEnd::Idle);
            }
            let n = match pump.pipe.fill_from(socket) {
                Ok(0) => return Ok(PumpEnd::Ended),
                Ok(n) => n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(PumpError::Socket(e)),
            };
            // After an error the pipe may still hold data; it goes with the pump.
            let growth = s.reserve_growth(n)?;
            if let Err(e) = pump.pipe.drain_into(&pump.file, n as usize) {
                s.session.quota().release_bytes(growth);
                return Err(CoreError::from(e).into());
            }
            s.advance(n, growth);
            progress.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpStream;

    use super::super::tests::{path, session};
    use super::*;
    use crate::account::Permissions;
    use crate::session::Session;
    use crate::storage::splice::tests::connected;
    use crate::storage::WriteMode;

    /// Pumps from `server` with a fresh progress counter and nothing to cancel it.
    async fn pump(
        up: &mut Upload,
        server: &TcpStream,
        idle: Duration,
    ) -> Result<PumpEnd, PumpError> {
        let progress = Arc::new(AtomicU64::new(0));
        up.pump(server.as_fd(), idle, progress, std::future::pending::<()>())
            .await
    }

    async fn upload(max_bytes: Option<u64>) -> (tempfile::TempDir, Session, Upload) {
        let tmp = tempfile::tempdir().unwrap();
        let session = session(&tmp, Permissions::all(), max_bytes).await;
        let up = session
            .open_write(&path("/f"), WriteMode::Truncate)
            .await
            .unwrap();
        (tmp, session, up)
    }

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_pump_moves_what_arrives_into_the_file_after_the_writes_before() {
        let (tmp, session, mut up) = upload(None).await;
        let (mut client, server) = connected();
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let sent = data.clone();
        let sender = std::thread::spawn(move || client.write_all(&sent));
        // Still being written behind when the pump starts.
        up.write_owned(b"head".to_vec()).await.unwrap();
        let progress = Arc::new(AtomicU64::new(0));
        let end = up
            .pump(
                server.as_fd(),
                LONG,
                Arc::clone(&progress),
                std::future::pending::<()>(),
            )
            .await
            .unwrap();
        assert_eq!(end, PumpEnd::Ended);
        sender.join().unwrap().unwrap();
        assert_eq!(progress.load(Ordering::Relaxed), data.len() as u64);
        up.write_last(Vec::new()).await.unwrap();
        assert_eq!(up.finish().await.unwrap(), 4 + data.len() as u64);
        let written = std::fs::read(tmp.path().join("home/f")).unwrap();
        assert_eq!(&written[..4], b"head");
        assert!(
            written[4..] == data[..],
            "the file differs from what was sent"
        );
        assert_eq!(session.quota().usage().bytes, 4 + data.len() as u64);
    }

    #[tokio::test]
    async fn a_pump_returns_when_nothing_arrives_and_writes_go_on_after_its_data() {
        let (tmp, _session, mut up) = upload(None).await;
        let (mut client, server) = connected();
        client.write_all(b"abc").unwrap();
        let end = pump(&mut up, &server, Duration::from_millis(100)).await;
        assert_eq!(end.unwrap(), PumpEnd::Idle);
        up.write(b"def").await.unwrap();
        up.finish().await.unwrap();
        assert_eq!(std::fs::read(tmp.path().join("home/f")).unwrap(), b"abcdef");
    }

    #[tokio::test]
    async fn a_piece_over_the_quota_is_not_written() {
        let (tmp, session, mut up) = upload(Some(10)).await;
        let (mut client, server) = connected();
        client.write_all(b"0123456789abcdef").unwrap();
        drop(client);
        let e = pump(&mut up, &server, LONG).await.unwrap_err();
        assert!(
            matches!(e, PumpError::Core(CoreError::QuotaExceeded(_))),
            "{e}"
        );
        up.fail("quota").await;
        assert_eq!(std::fs::read(tmp.path().join("home/f")).unwrap(), b"");
        assert_eq!(session.quota().usage().bytes, 0);
    }

    #[tokio::test]
    async fn a_cancelled_pump_stops_and_keeps_the_upload() {
        let (_tmp, _session, mut up) = upload(None).await;
        let (_client, server) = connected();
        let progress = Arc::new(AtomicU64::new(0));
        let idle = Duration::from_millis(100);
        let end = up
            .pump(server.as_fd(), idle, progress, std::future::ready(()))
            .await
            .unwrap();
        assert_eq!(end, PumpEnd::Cancelled);
        up.write(b"x").await.unwrap();
        assert_eq!(up.finish().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_reset_connection_is_a_socket_error() {
        let (_tmp, _session, mut up) = upload(None).await;
        let (client, server) = connected();
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let e = pump(&mut up, &server, LONG).await.unwrap_err();
        assert!(matches!(e, PumpError::Socket(_)), "{e}");
    }
}
