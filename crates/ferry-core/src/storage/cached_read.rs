//! Reads of a local file that take bytes already in the page cache directly, on the calling thread, and go to the
//! blocking pool only for bytes that must come from the disk.
//!
//! tokio's `File` hands every read to the blocking pool, two context switches per read even when the file is
//! cached, as a downloaded file usually is: in a profile of an FTPS download they were about a third of the
//! server's time. `preadv2(RWF_NOWAIT)` copies what is cached and fails with `EAGAIN` rather than wait for the
//! disk, so the runtime never waits for it.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

use super::{FileChange, FileReader, Metadata};

/// At most this many bytes are read from the disk per trip to the blocking pool.
const MAX_DISK_READ: usize = 1024 * 1024;

/// A local file read from a position on, sequentially. The descriptor's own position is not moved by reads: it
/// stays where the file was opened (see [`FileReader::local_fd`]).
pub(super) struct CachedReader {
    file: Arc<File>,
    /// Offset of the next byte to read from the file.
    position: u64,
    /// Bytes read from the disk that did not fit the caller's buffer, handed out from `spilled_from` on.
    spill: Vec<u8>,
    spilled_from: usize,
    /// A read from the disk on the blocking pool.
    pending: Option<JoinHandle<io::Result<Vec<u8>>>>,
    /// Cleared when the file system refuses `RWF_NOWAIT`; every read then goes to the blocking pool.
    nowait: bool,
}

impl CachedReader {
    /// Reads `file` from `position` on.
    pub(super) fn new(file: File, position: u64) -> Self {
        CachedReader {
            file: Arc::new(file),
            position,
            spill: Vec::new(),
            spilled_from: 0,
            pending: None,
            nowait: true,
        }
    }

    /// Starts reading up to `len` bytes at the current position on the blocking pool.
    fn read_from_disk(&mut self, len: usize) {
        let file = Arc::clone(&self.file);
        let offset = self.position;
        let len = len.min(MAX_DISK_READ);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            super::local::read_at_most(&file, offset, len)
        }));
    }
}

impl AsyncRead for CachedReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.spilled_from < this.spill.len() {
                let n = buf.remaining().min(this.spill.len() - this.spilled_from);
                buf.put_slice(&this.spill[this.spilled_from..this.spilled_from + n]);
                this.spilled_from += n;
                if this.spilled_from == this.spill.len() {
                    // All handed out: a reader left idle (an SFTP handle the client no longer reads) keeps no
                    // buffer; the next read from the disk brings its own.
                    this.spill = Vec::new();
                    this.spilled_from = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(pending) = this.pending.as_mut() {
                let read = ready!(Pin::new(pending).poll(cx));
                this.pending = None;
                let data = read.map_err(io::Error::other)??;
                if data.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.position += data.len() as u64;
                this.spill = data;
                this.spilled_from = 0;
                continue;
            }
            if this.nowait {
                match read_cached(&this.file, buf.initialize_unfilled(), this.position) {
                    Ok(n) => {
                        buf.advance(n);
                        this.position += n as u64;
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => this.nowait = false,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            this.read_from_disk(buf.remaining());
        }
    }
}

#[async_trait]
impl FileReader for CachedReader {
    fn local_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.file.as_fd())
    }

    fn reposition(&mut self, offset: u64) -> io::Result<()> {
        // A read from the disk still running is for the old position: its result is dropped with it.
        self.pending = None;
        self.spill = Vec::new();
        self.spilled_from = 0;
        self.position = offset;
        Ok(())
    }

    async fn metadata(&mut self) -> io::Result<Metadata> {
        let file = Arc::clone(&self.file);
        super::local::blocking(move || super::local::open_file_metadata(&file)).await
    }

    async fn change(&mut self, change: FileChange) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        super::local::blocking(move || super::local::change_open_file(&file, change)).await
    }
}

/// Reads what is in the page cache at `offset` into `buf`; `WouldBlock` when the first byte is not, `Unsupported`
/// where the system cannot tell.
#[cfg(target_os = "linux")]
fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    let mut bufs = [io::IoSliceMut::new(buf)];
    match preadv2(file, &mut bufs, offset, ReadWriteFlags::NOWAIT) {
        Ok(n) => Ok(n),
        Err(Errno::OPNOTSUPP) => Err(io::ErrorKind::Unsupported.into()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &File, _buf: &mut [u8], _offset: u64) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::io::AsyncReadExt;

    use super::*;

    fn file_of(data: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(data).unwrap();
        file
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn reads_from_the_position_to_the_end() {
        let data = pattern(3 * MAX_DISK_READ + 17);
        let mut reader = CachedReader::new(file_of(&data), 5);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data[5..]);
    }

    #[tokio::test]
    async fn disk_reads_larger_than_the_callers_buffer_are_handed_out_in_order() {
        let data = pattern(100_000);
        let mut reader = CachedReader::new(file_of(&data), 0);
        // What the page cache would not give comes from the blocking pool, as after EAGAIN.
        reader.nowait = false;
        reader.read_from_disk(data.len());
        let mut out = Vec::new();
        let mut small = [0u8; 1000];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&small[..n]);
        }
        assert_eq!(out, data);
        assert_eq!(
            reader.spill.capacity(),
            0,
            "a spill handed out whole is freed"
        );
    }

    #[tokio::test]
    async fn the_descriptor_position_stays_where_the_file_was_opened() {
        let data = pattern(10_000);
        let mut file = file_of(&data);
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(100)).unwrap();
        let mut reader = CachedReader::new(file, 100);
        let mut buf = [0u8; 50];
        reader.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, data[100..150]);
        let fd = reader.local_fd().unwrap();
        assert_eq!(rustix::fs::tell(fd).unwrap(), 100);
    }
}
