//! Data transfers (RETR, STOR/APPE/STOU, listings) running in their own task, so that the control connection
//! stays responsive: ABOR cancels a transfer, STAT reports its progress.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_core::error::CoreError;
use ferry_core::session::Session;
use ferry_core::storage::{DirEntry, DirStream};
use ferry_core::transfer::{Download, PumpEnd, PumpError, Upload};
use ferry_core::vpath::VirtualPath;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::datachan::{self, DataError, DataSetup};
use crate::listing::{self, EntryRole};
use crate::low_water::{self, LowWater};
use crate::tls::MaybeTls;

/// Size of the buffer of one running download that is read and written (allocated only while it runs).
const TRANSFER_BUFFER: usize = 256 * 1024;
/// Size of each of the two buffers of one running upload (one filled from the network while the other is written):
/// a buffer takes all the data that has arrived before each write, so that a fast upload hands the blocking pool up
/// to this much per write rather than one socket read's worth.
const UPLOAD_BUFFER: usize = 1024 * 1024;
/// Listing output is sent in batches of about this size.
const LISTING_BATCH: usize = 64 * 1024;

/// How a finished transfer went.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Data(#[from] DataError),
    #[error("transfer aborted")]
    Aborted,
    #[error("data connection stalled")]
    Stalled,
    #[error("data connection lost: {0}")]
    ConnectionLost(std::io::Error),
    #[error("{0}")]
    Core(#[from] CoreError),
}

/// How listing entries are written.
pub enum ListFormat {
    /// `ls -l` lines.
    Long,
    /// Names only, each prefixed with `prefix` (NLST of a directory argument).
    Names { prefix: String },
    /// RFC 3659 facts (MLSD), with the listed directory for permissions and the lines that go first (the
    /// `cdir` and `pdir` entries).
    Facts {
        facts: Vec<String>,
        dir: VirtualPath,
        session: Session,
        header: String,
    },
}

/// What to list.
pub enum ListSource {
    Dir(DirStream),
    /// A single entry (LIST of a file).
    Entry(DirEntry),
}

/// The work of one transfer.
pub enum Job {
    /// `limit`: send at most this many bytes (a RANG range).
    Download {
        download: Download,
        ascii: bool,
        limit: Option<u64>,
    },
    Upload {
        upload: Upload,
        ascii: bool,
    },
    Listing {
        source: ListSource,
        format: ListFormat,
    },
}

/// Where and how the data connection is made.
pub struct DataContext {
    pub setup: DataSetup,
    pub client_ip: std::net::IpAddr,
    pub timeout: Duration,
    pub tls: Option<TlsAcceptor>,
    pub require_tls_resumption: bool,
    /// Set once the data connection is up.
    pub connected: Arc<AtomicBool>,
}

/// Runs a transfer to its end; returns the bytes moved. `progress` counts bytes as they go; a message on `cancel`
/// (or dropping its sender) aborts.
pub async fn run(
    job: Job,
    data: DataContext,
    progress: Arc<AtomicU64>,
    mut cancel: oneshot::Receiver<()>,
) -> Result<u64, TransferError> {
    let tls = data.tls.as_ref().map(|a| (a, data.require_tls_resumption));
    let connected = tokio::select! {
        _ = &mut cancel => Err(TransferError::Aborted),
        r = datachan::establish(data.setup, data.client_ip, data.timeout, tls) => r.map_err(TransferError::from),
    };
    let mut stream = match connected {
        Ok(stream) => {
            data.connected.store(true, Ordering::Release);
            stream
        }
        Err(e) => {
            job.fail_unconnected(&e).await;
            return Err(e);
        }
    };
    let io = Io {
        timeout: data.timeout,
        progress,
    };
    match job {
        Job::Download {
            download,
            ascii,
            limit,
        } => match &mut stream {
            MaybeTls::Plain(tcp) if !ascii && download.can_send_directly() => {
                cork(tcp);
                io.send_file_direct(download, limit, tcp, &mut cancel).await
            }
            _ => {
                io.send_file(download, ascii, limit, &mut stream, &mut cancel)
                    .await
            }
        },
        Job::Upload { upload, ascii } => {
            let mut low_water = LowWater::new(stream.tcp().map(AsRawFd::as_raw_fd));
            let direct = match &stream {
                MaybeTls::Plain(tcp) if !ascii => Some(tcp.as_raw_fd()),
                _ => None,
            };
            io.receive_file(
                upload,
                ascii,
                &mut stream,
                direct,
                &mut low_water,
                &mut cancel,
            )
            .await
        }
        Job::Listing { source, format } => {
            io.send_listing(source, format, &mut stream, &mut cancel)
                .await
        }
    }
}

/// Holds back partial segments of a sendfile download (`TCP_CORK`) until the shutdown that ends it sends them with
/// its FIN. Data connections have `TCP_NODELAY`, so that the tail of a small file leaves at once, but on its own
/// that also sends each batch sendfile(2) hands to TCP as soon as it is queued: the batches are 64 KiB and a
/// loopback segment holds 65,483 bytes, so most batches left as a full segment and one of 53 bytes (a 256 MiB
/// upload and download took 13,170 segments, 10,334 corked). 1 GiB RETR: 1,108 -> 1,434 MiB/s (medians of five,
/// on par with ProFTPD's blocking sendfile). Not for TLS, whose downloads measured slower corked.
fn cork(tcp: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_cork(true) {
        tracing::debug!(error = %e, "could not cork a data connection");
    }
}

impl Job {
    /// Ends a job whose data connection never came: an upload leaves the file it was to replace as it was.
    async fn fail_unconnected(self, reason: &TransferError) {
        match self {
            Job::Download { download, .. } => download.fail(reason),
            Job::Upload { upload, .. } => upload.fail_unstarted(reason).await,
            Job::Listing { .. } => {}
        }
    }
}

struct Io {
    timeout: Duration,
    progress: Arc<AtomicU64>,
}

impl Io {
    /// Writes `chunk` to the data connection unless cancelled or stalled.
    async fn write<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        chunk: &[u8],
        cancel: &mut oneshot::Receiver<()>,
    ) -> Result<(), TransferError> {
        tokio::select! {
            biased;
            _ = cancel => Err(TransferError::Aborted),
            r = timeout(self.timeout, stream.write_all(chunk)) => match r {
                Err(_) => Err(TransferError::Stalled),
                Ok(Err(e)) => Err(TransferError::ConnectionLost(e)),
                Ok(Ok(())) => Ok(()),
            },
        }
    }

    async fn finish_stream<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
    ) -> Result<(), TransferError> {
        match timeout(self.timeout, stream.shutdown()).await {
            Err(_) => Err(TransferError::Stalled),
            Ok(Err(e)) => Err(TransferError::ConnectionLost(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn send_file<S: AsyncWrite + Unpin>(
        &self,
        mut download: Download,
        ascii: bool,
        limit: Option<u64>,
        stream: &mut S,
        cancel: &mut oneshot::Receiver<()>,
    ) -> Result<u64, TransferError> {
        let mut buf = vec![0u8; TRANSFER_BUFFER];
        let mut converted = Vec::new();
        let mut remaining = limit.unwrap_or(u64::MAX);
        let result = async {
            loop {
                let want = buf
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let n = download.read(&mut buf[..want]).await?;
                remaining -= n as u64;
                if n == 0 {
                    break;
                }
                let chunk = if ascii {
                    to_network_ascii(&buf[..n], &mut converted);
                    &converted[..]
                } else {
                    &buf[..n]
                };
                self.write(stream, chunk, cancel).await?;
                self.progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            self.finish_stream(stream).await
        }
        .await;
        settle(download, result)
    }

    /// Sends a binary download of a local file over plain TCP with sendfile(2): the data goes from the page cache
    /// to the socket without passing through ferry. The socket is non-blocking, so each send returns once the
    /// socket buffer is full, and cancellation and the stall timeout act between sends as in [`Io::send_file`].
    async fn send_file_direct(
        &self,
        mut download: Download,
        limit: Option<u64>,
        tcp: &mut TcpStream,
        cancel: &mut oneshot::Receiver<()>,
    ) -> Result<u64, TransferError> {
        let mut remaining = limit.unwrap_or(u64::MAX);
        let result = async {
            while remaining > 0 {
                let ready = download.prepare_send().await?;
                let want = usize::try_from(remaining.min(ready)).unwrap_or(usize::MAX);
                let send = tcp.async_io(Interest::WRITABLE, || download.send_to(tcp.as_fd(), want));
                let n = tokio::select! {
                    biased;
                    _ = &mut *cancel => return Err(TransferError::Aborted),
                    r = timeout(self.timeout, send) => match r {
                        Err(_) => return Err(TransferError::Stalled),
                        Ok(Err(e)) => return Err(TransferError::ConnectionLost(e)),
                        Ok(Ok(n)) => n,
                    },
                };
                if n == 0 {
                    break;
                }
                remaining -= n as u64;
                self.progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            self.finish_stream(tcp).await
        }
        .await;
        settle(download, result)
    }

    /// Replaces the contents of `buf` with data from the data connection until its capacity is reached, the data
    /// connection ends, or no more data has arrived yet: only the first read waits (until the stall timeout, or a
    /// cancellation). Returns whether the data connection ended, and what broke the transfer off, if anything did
    /// after the bytes in `buf`. Reading into the spare capacity spares zeroing the buffer for every upload.
    async fn fill<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut Vec<u8>,
        low_water: &mut LowWater,
        cancel: &mut oneshot::Receiver<()>,
    ) -> (bool, Option<TransferError>) {
        buf.clear();
        while buf.len() < buf.capacity() {
            let read = if buf.is_empty() {
                let first = async {
                    if low_water.is_raised() {
                        if let Ok(read) = timeout(low_water::PATIENCE, stream.read_buf(buf)).await {
                            return read;
                        }
                        low_water.lower();
                    }
                    stream.read_buf(buf).await
                };
                tokio::select! {
                    biased;
                    _ = &mut *cancel => Err(TransferError::Aborted),
                    r = timeout(self.timeout, first) => match r {
                        Err(_) => Err(TransferError::Stalled),
                        Ok(Err(e)) => Err(TransferError::ConnectionLost(e)),
                        Ok(Ok(n)) => Ok(n),
                    },
                }
            } else {
                tokio::select! {
                    biased;
                    r = stream.read_buf(buf) => r.map_err(TransferError::ConnectionLost),
                    () = std::future::ready(()) => break,
                }
            };
            match read {
                Ok(0) => return (true, None),
                Ok(n) => {
                    self.progress.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => return (false, Some(e)),
            }
        }
        if buf.len() == buf.capacity() {
            // A whole buffer was waiting: the client is ahead, so wake for larger amounts from now on.
            low_water.raise();
        }
        (false, None)
    }

    /// Receives an upload into its file. `direct` is the data connection's socket when it is plain TCP carrying a
    /// binary upload: once a whole buffer was waiting (the client is ahead), the data goes from it to the file
    /// inside the kernel while it keeps coming (see [`Upload::pump`]), else from buffers.
    async fn receive_file<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut upload: Upload,
        ascii: bool,
        stream: &mut S,
        direct: Option<RawFd>,
        low_water: &mut LowWater,
        cancel: &mut oneshot::Receiver<()>,
    ) -> Result<u64, TransferError> {
        // Smaller under an upload rate, whose writes wait: the client then waits in small steps, not long silences.
        let size = upload.buffer_size(UPLOAD_BUFFER);
        let mut buf = Vec::with_capacity(size);
        let mut decoder = AsciiDecoder::default();
        let mut converted = Vec::new();
        let result = async {
            let mut end = false;
            while !end {
                let (ended, broken) = self.fill(stream, &mut buf, low_water, cancel).await;
                end = ended;
                let client_ahead = buf.len() == buf.capacity();
                // What arrived before an abort or a broken connection is kept, for a resumed upload to build on.
                if ascii {
                    decoder.decode(&buf, &mut converted);
                    upload.write(&converted).await?;
                } else if end {
                    upload.write_last(std::mem::take(&mut buf)).await?;
                } else {
                    // The buffer goes to the file as it is; the one given back is filled next.
                    buf = upload.write_owned(std::mem::take(&mut buf)).await?;
                    buf.reserve_exact(size);
                    if buf.capacity() > size {
                        buf.shrink_to(size);
                    }
                }
                if let Some(e) = broken {
                    return Err(e);
                }
                if let Some(fd) = direct.filter(|_| client_ahead && !end) {
                    // SAFETY: `fd` is the socket of `stream`, which outlives this call.
                    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
                    end = self.pump(&mut upload, socket, low_water, cancel).await?;
                }
            }
            if ascii && decoder.pending_cr {
                upload.write(b"\r").await?;
            }
            // Answer the client's TLS close_notify with ours; clients such as ftplib wait for it.
            self.finish_stream(stream).await
        }
        .await;
        match result {
            Ok(()) => Ok(upload.finish().await?),
            Err(e) => {
                upload.fail(&e).await;
                Err(e)
            }
        }
    }

    /// Pumps the upload from `socket` (see [`Upload::pump`]); returns whether the data connection ended, in which
    /// case the file has been closed.
    async fn pump(
        &self,
        upload: &mut Upload,
        socket: BorrowedFd<'_>,
        low_water: &mut LowWater,
        cancel: &mut oneshot::Receiver<()>,
    ) -> Result<bool, TransferError> {
        let progress = Arc::clone(&self.progress);
        match upload
            .pump(socket, low_water::PATIENCE, progress, cancel)
            .await
        {
            Ok(PumpEnd::Ended) => {
                upload.write_last(Vec::new()).await?;
                Ok(true)
            }
            Ok(PumpEnd::Idle) => {
                // The client fell behind: take what it sends as it comes again.
                low_water.lower();
                Ok(false)
            }
            Ok(PumpEnd::Unavailable) => Ok(false),
            Ok(PumpEnd::Cancelled) => Err(TransferError::Aborted),
            Err(PumpError::Socket(e)) => Err(TransferError::ConnectionLost(e)),
            Err(PumpError::Core(e)) => Err(e.into()),
        }
    }

    async fn send_listing<S: AsyncWrite + Unpin>(
        &self,
        source: ListSource,
        format: ListFormat,
        stream: &mut S,
        cancel: &mut oneshot::Receiver<()>,
    ) -> Result<u64, TransferError> {
        let now = SystemTime::now();
        let mut batch = String::with_capacity(LISTING_BATCH + 1024);
        let mut sent = 0u64;
        // Every entry of the listed directory has its permissions unless a directory below has its own.
        let uniform_perms = match &format {
            ListFormat::Facts { dir, session, .. } => {
                let account = session.account();
                (!account.has_permissions_below(dir)).then(|| account.permissions_at(dir))
            }
            _ => None,
        };
        let add = |batch: &mut String, entry: &DirEntry| {
            if !listing::listable(&entry.name, entry.link_target.as_deref()) {
                return;
            }
            match &format {
                ListFormat::Long => batch.push_str(&listing::list_line(
                    &entry.name,
                    &entry.metadata,
                    entry.link_target.as_deref(),
                    now,
                )),
                ListFormat::Names { prefix } => {
                    batch.push_str(prefix);
                    batch.push_str(&entry.name);
                }
                ListFormat::Facts {
                    facts,
                    dir,
                    session,
                    ..
                } => {
                    let perms = uniform_perms.unwrap_or_else(|| {
                        dir.join(&entry.name)
                            .map(|p| session.account().permissions_at(&p))
                            .unwrap_or_else(|_| session.account().permissions_at(dir))
                    });
                    listing::push_mlst_line(
                        batch,
                        &entry.name,
                        &entry.metadata,
                        perms,
                        EntryRole::Plain,
                        facts,
                    );
                }
            }
            batch.push_str("\r\n");
        };
        if let ListFormat::Facts { header, .. } = &format {
            batch.push_str(header);
        }
        match source {
            ListSource::Entry(entry) => add(&mut batch, &entry),
            ListSource::Dir(mut entries) => {
                while let Some(entry) = entries.next().await {
                    match entry {
                        Ok(entry) => add(&mut batch, &entry),
                        // An entry that vanished or cannot be read is left out rather than failing the listing.
                        Err(e) => tracing::debug!(error = %e, "listing entry skipped"),
                    }
                    if batch.len() >= LISTING_BATCH {
                        self.write(stream, batch.as_bytes(), cancel).await?;
                        sent += batch.len() as u64;
                        self.progress
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        batch.clear();
                    }
                }
            }
        }
        self.write(stream, batch.as_bytes(), cancel).await?;
        sent += batch.len() as u64;
        self.finish_stream(stream).await?;
        Ok(sent)
    }
}

/// ASCII type on the wire: every LF becomes CRLF (RFC 959 NVT-ASCII), as vsftpd and others do.
fn to_network_ascii(input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    for &b in input {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
}

/// ASCII uploads: CRLF becomes LF, including a CR and LF split across two reads.
#[derive(Default)]
struct AsciiDecoder {
    pending_cr: bool,
}

impl AsciiDecoder {
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        for &b in input {
            if std::mem::take(&mut self.pending_cr) && b != b'\n' {
                out.push(b'\r');
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
    }
}

/// Records how a download ended and returns the bytes it sent.
fn settle(download: Download, result: Result<(), TransferError>) -> Result<u64, TransferError> {
    let sent = download.transferred();
    match result {
        Ok(()) => {
            download.finish();
            Ok(sent)
        }
        Err(e) => {
            download.fail(&e);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_round_trip() {
        let mut out = Vec::new();
        to_network_ascii(b"a\nb\n", &mut out);
        assert_eq!(out, b"a\r\nb\r\n");
        let mut d = AsciiDecoder::default();
        let mut got = Vec::new();
        d.decode(b"x\r", &mut out);
        got.extend_from_slice(&out);
        d.decode(b"\ny\rz\r\n", &mut out);
        got.extend_from_slice(&out);
        assert_eq!(got, b"x\ny\rz\n");
        assert!(!d.pending_cr);
    }
}
