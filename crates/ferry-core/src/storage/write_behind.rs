//! Writes of a local file that run on the blocking pool behind the caller, one at a time, and that can take the
//! caller's buffer instead of copying it.
//!
//! tokio's `File` copies every write into its own buffer before handing it to the blocking pool; in a profile of a
//! 1 GiB upload that copy was 7.6% of the server's time. [`WriteBehind::write_owned`] moves the filled buffer to
//! the blocking pool and gives the caller the one the previous write is done with, so the caller fills one buffer
//! from the network while the other is written. Writes through [`AsyncWrite`] copy, as tokio's `File` does.
//!
//! [`FileWriter::write_last`] closes the file in the same trip as the last write: closing a file can start its
//! write-back (ext4 does when a file that was truncated is closed), and a small upload needs no trip of its own
//! for it.
//!
//! A file that held data and is to be replaced (STOR) is opened without truncating it and emptied here instead:
//! before the first write when more writes follow, as `O_TRUNC` would have, but when the first write is also the
//! last (an upload that arrived whole in one buffer) the new bytes overwrite the old ones and the file is cut at
//! their end. ext4 writes a file that was truncated to zero back to disk when it is closed (`auto_da_alloc`, for
//! programs that rewrite files without fsync); the cut leaves the size above zero, so replacing a small file no
//! longer costs a disk write per upload at once (a 2,000-file STOR run over existing files made 2,000 write
//! requests to the disk with `O_TRUNC`, as pure-ftpd's `ftruncate(0)` does), and readers see the old file until
//! the new one is complete. Neither way syncs (ext4 starts that write-back, it does not wait for it).
//!
//! As with tokio's `File`, a write returns once it has been started: its error (ENOSPC, EIO, ...) is returned by
//! the next write, flush or shutdown. A writer dropped with a write running lets it finish.

use std::fs::File;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Seek, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;

use super::local::{blocking, read_at_most};
use super::{FileChange, FileState, FileWriter, Metadata};

/// At most this many bytes are copied per [`AsyncWrite`] write (as tokio's `File` does).
const MAX_COPIED_WRITE: usize = 2 * 1024 * 1024;
/// A copy buffer larger than this is freed once its write is done instead of being kept for the next copied write:
/// a writer left idle (an SFTP handle its client no longer writes to, of up to 256 per session) would hold it.
const KEEP_COPY_BUFFER: usize = 256 * 1024;

/// A local file open for writing, at its own position (or at its end, when opened to append).
pub(super) struct WriteBehind {
    /// `None` once [`FileWriter::write_last`] has taken the file to close it.
    file: Option<Arc<File>>,
    state: State,
    /// The file still holds the data it had before this upload, which is to go (see the module's documentation).
    emptying: bool,
    /// The file as it was opened.
    opened: FileState,
    /// The running (or last) write is of a buffer copied here, not one the caller handed over.
    copied: bool,
    /// The same file opened again for reading, once [`FileWriter::read_at`] needed it.
    reader: Option<Arc<File>>,
}

enum State {
    /// No write is running; holds the buffer the next copied write goes into.
    Idle(Vec<u8>),
    /// A write is running on the blocking pool and gives its buffer back when done.
    Busy(JoinHandle<(io::Result<()>, Vec<u8>)>),
}

impl WriteBehind {
    /// A writer of `file`, which was `opened` when it was opened.
    pub(super) fn new(file: File, opened: FileState) -> Self {
        WriteBehind {
            file: Some(Arc::new(file)),
            state: State::Idle(Vec::new()),
            emptying: false,
            opened,
            copied: false,
            reader: None,
        }
    }

    /// A writer that replaces the contents of `file`, opened at its start without truncating it: the old data is
    /// gone once the writer has been shut down.
    pub(super) fn replacing(file: File, opened: FileState) -> Self {
        WriteBehind {
            emptying: true,
            ..WriteBehind::new(file, opened)
        }
    }

    /// Waits for the running write, if any, and returns its error.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let State::Busy(task) = &mut self.state {
            let joined = ready!(Pin::new(task).poll(cx));
            let (result, mut buf) =
                joined.unwrap_or_else(|e| (Err(io::Error::other(e)), Vec::new()));
            buf.clear();
            if self.copied && buf.capacity() > KEEP_COPY_BUFFER {
                buf = Vec::new();
            }
            self.state = State::Idle(buf);
            result?;
        }
        Poll::Ready(Ok(()))
    }

    /// The idle writer's spare buffer (empty), leaving an unallocated one in its place.
    fn take_spare(&mut self) -> Vec<u8> {
        match &mut self.state {
            State::Idle(buf) => std::mem::take(buf),
            State::Busy(_) => Vec::new(),
        }
    }

    /// Starts writing all of `data` on the blocking pool; with `close`, the file is closed there afterwards.
    fn start(&mut self, data: Vec<u8>, close: bool) -> io::Result<()> {
        let file = if close {
            self.file.take()
        } else {
            self.file.as_ref().map(Arc::clone)
        };
        let file = file.ok_or_else(closed)?;
        let emptying = std::mem::take(&mut self.emptying);
        self.state = State::Busy(tokio::task::spawn_blocking(move || {
            let result = write_replacing(&file, &data, emptying && !close, emptying && close);
            // The last reference when closing (the previous write has ended): ext4 may start writing back
            // here, which must not happen on the runtime.
            drop(file);
            (result, data)
        }));
        Ok(())
    }

    /// Waits for the running write, then empties the file if its old data is still there (nothing was written),
    /// and waits for that too.
    fn poll_emptied(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.emptying {
            ready!(self.poll_idle(cx))?;
            self.start(Vec::new(), false)?;
        }
        self.poll_idle(cx)
    }

    /// The file, once the writes before have ended and the old data to replace is gone (see
    /// [`FileWriter::holds_old_data`]): what a look at the file, or a change to it, must come after.
    async fn settled_file(&mut self) -> io::Result<Arc<File>> {
        poll_fn(|cx| self.poll_emptied(cx)).await?;
        self.file.as_ref().map(Arc::clone).ok_or_else(closed)
    }

    /// Copies up to [`MAX_COPIED_WRITE`] bytes of `bufs` into the spare buffer and starts writing them.
    fn poll_copy(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        ready!(self.poll_idle(cx))?;
        let mut spare = self.take_spare();
        for buf in bufs {
            let room = MAX_COPIED_WRITE - spare.len();
            spare.extend_from_slice(buf.get(..room).unwrap_or(buf));
            if spare.len() == MAX_COPIED_WRITE {
                break;
            }
        }
        let n = spare.len();
        if n == 0 {
            self.state = State::Idle(spare);
        } else {
            self.copied = true;
            self.start(spare, false)?;
        }
        Poll::Ready(Ok(n))
    }
}

#[async_trait]
impl FileWriter for WriteBehind {
    async fn write_owned(&mut self, data: Vec<u8>) -> io::Result<Vec<u8>> {
        poll_fn(|cx| self.poll_idle(cx)).await?;
        if data.is_empty() {
            return Ok(data);
        }
        let spare = self.take_spare();
        self.copied = false;
        self.start(data, false)?;
        Ok(spare)
    }

    async fn write_last(&mut self, data: Vec<u8>) -> io::Result<()> {
        poll_fn(|cx| self.poll_idle(cx)).await?;
        self.start(data, true)
    }

    async fn direct_file(&mut self) -> io::Result<Option<Arc<File>>> {
        poll_fn(|cx| self.poll_emptied(cx)).await?;
        let file = self.file.as_ref().ok_or_else(closed)?;
        // A file open to append writes at its end, not at its position (and splice(2) refuses it).
        if rustix::fs::fcntl_getfl(&**file)?.contains(rustix::fs::OFlags::APPEND) {
            return Ok(None);
        }
        Ok(Some(Arc::clone(file)))
    }

    fn holds_old_data(&self) -> bool {
        // Set until the first write empties the file (or the shutdown does).
        self.emptying
    }

    fn keep_old_data(&mut self) {
        self.emptying = false;
    }

    fn opened(&self) -> FileState {
        self.opened
    }

    async fn state(&mut self) -> io::Result<Option<FileState>> {
        poll_fn(|cx| self.poll_idle(cx)).await?;
        let Some(file) = self.file.as_ref().map(Arc::clone) else {
            return Ok(None);
        };
        let state = tokio::task::spawn_blocking(move || file_state(&file))
            .await
            .map_err(io::Error::other)??;
        Ok(Some(state))
    }

    async fn metadata(&mut self) -> io::Result<Metadata> {
        let file = self.settled_file().await?;
        blocking(move || super::local::open_file_metadata(&file)).await
    }

    async fn change(&mut self, change: FileChange) -> io::Result<()> {
        let file = self.settled_file().await?;
        blocking(move || super::local::change_open_file(&file, change)).await
    }

    async fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = self.settled_file().await?;
        let reader = self.reader.clone();
        let (data, reader) = blocking(move || {
            let reader = match reader {
                Some(reader) => reader,
                None => Arc::new(reopen_for_reading(&file)?),
            };
            let data = read_at_most(&reader, offset, len)?;
            Ok((data, reader))
        })
        .await?;
        self.reader = Some(reader);
        Ok(data)
    }
}

/// Opens the file `file` (open for writing only) again for reading (blocking): the same file, whatever name it has
/// now or if it has none, through its descriptor's entry in `/proc/self/fd`.
#[cfg(target_os = "linux")]
fn reopen_for_reading(file: &File) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(not(target_os = "linux"))]
fn reopen_for_reading(_file: &File) -> io::Result<File> {
    Err(io::ErrorKind::Unsupported.into())
}

impl AsyncWrite for WriteBehind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_copy(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_copy(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What is flushed is what a reader of the file sees: no longer the old data of a file being replaced (an
        // SFTP handle opened with TRUNC, then read or FSTATed before its first write).
        self.get_mut().poll_emptied(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing written: the file ends up empty, as after O_TRUNC.
        self.get_mut().poll_emptied(cx)
    }
}

/// The state of an open file (one fstat(2)); the identity is made as [`super::Metadata::unique_id`] is.
pub(super) fn file_state(file: &File) -> io::Result<FileState> {
    Ok(state_of(&file.metadata()?))
}

/// The state of a file from its metadata.
pub(super) fn state_of(meta: &std::fs::Metadata) -> FileState {
    use std::os::unix::fs::MetadataExt;
    FileState {
        unique_id: (u128::from(meta.dev()) << 64) | u128::from(meta.ino()),
        size: meta.size(),
        nlink: meta.nlink(),
    }
}

/// Writes `data` at the file's position; with `empty_first`, empties the file before, and with `cut_after`, cuts it
/// where the data ends (when it was longer), leaving it above zero unless `data` is empty.
fn write_replacing(file: &File, data: &[u8], empty_first: bool, cut_after: bool) -> io::Result<()> {
    if empty_first {
        file.set_len(0)?;
    }
    let mut writer = file;
    writer.write_all(data)?;
    if cut_after {
        let end = writer.stream_position()?;
        if file.metadata()?.len() > end {
            file.set_len(end)?;
        }
    }
    Ok(())
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the file was closed after its last write",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;
    use tokio::io::AsyncWriteExt;

    fn temp_writer() -> (tempfile::TempDir, std::path::PathBuf, WriteBehind) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let writer = writer_of(File::create(&path).unwrap());
        (tmp, path, writer)
    }

    /// A writer of /dev/full, where every write fails with ENOSPC.
    #[cfg(target_os = "linux")]
    fn full_device_writer() -> WriteBehind {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        writer_of(full)
    }

    fn writer_of(file: File) -> WriteBehind {
        let opened = file_state(&file).unwrap();
        WriteBehind::new(file, opened)
    }

    #[tokio::test]
    async fn owned_and_copied_writes_land_in_order() {
        let (_tmp, path, mut w) = temp_writer();
        let first = b"abc".to_vec();
        let spare = w.write_owned(first).await.unwrap();
        assert!(spare.is_empty());
        w.write_all(b"def").await.unwrap();
        let mut second = w.write_owned(Vec::with_capacity(8)).await.unwrap();
        second.extend_from_slice(b"ghi");
        let spare = w.write_owned(second).await.unwrap();
        assert!(spare.is_empty());
        w.write_all_buf(&mut &b"jk"[..]).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdefghijk");
    }

    #[tokio::test]
    async fn the_buffer_given_back_is_the_one_written_before() {
        let (_tmp, _path, mut w) = temp_writer();
        let mut a = Vec::with_capacity(1000);
        a.extend_from_slice(b"a");
        let a_ptr = a.as_ptr();
        w.write_owned(a).await.unwrap();
        let back = w.write_owned(b"b".to_vec()).await.unwrap();
        assert_eq!(
            (back.as_ptr(), back.len(), back.capacity()),
            (a_ptr, 0, 1000)
        );
    }

    #[tokio::test]
    async fn an_idle_writer_keeps_no_large_copy_buffer() {
        let (_tmp, _path, mut w) = temp_writer();
        w.write_all(&vec![1u8; 1024 * 1024]).await.unwrap();
        w.flush().await.unwrap();
        assert!(matches!(&w.state, State::Idle(buf) if buf.capacity() == 0));
        // A small one is kept for the next copied write.
        w.write_all(&[2u8; 1000]).await.unwrap();
        w.flush().await.unwrap();
        assert!(matches!(&w.state, State::Idle(buf) if buf.capacity() >= 1000));
    }

    #[tokio::test]
    async fn a_large_copied_write_is_taken_in_bounded_pieces() {
        let (_tmp, path, mut w) = temp_writer();
        let data = vec![7u8; MAX_COPIED_WRITE + 5];
        assert_eq!(w.write(&data).await.unwrap(), MAX_COPIED_WRITE);
        w.write_all(&data[MAX_COPIED_WRITE..]).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[tokio::test]
    async fn the_last_write_closes_the_file_and_nothing_is_written_after_it() {
        let (_tmp, path, mut w) = temp_writer();
        w.write_owned(b"abc".to_vec()).await.unwrap();
        w.write_last(b"def".to_vec()).await.unwrap();
        w.shutdown().await.unwrap();
        assert!(w.file.is_none());
        assert_eq!(
            w.write_all(b"g").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
    }

    #[tokio::test]
    async fn only_a_file_written_at_its_position_is_given_for_direct_writes() {
        let (_tmp, path, mut w) = temp_writer();
        w.write_owned(b"abc".to_vec()).await.unwrap();
        let file = w
            .direct_file()
            .await
            .unwrap()
            .expect("a file at its position");
        assert_eq!((&*file).stream_position().unwrap(), 3);
        let appending = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        assert!(writer_of(appending).direct_file().await.unwrap().is_none());
    }

    /// A writer replacing a file that holds `old`.
    fn replacing_writer(old: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, WriteBehind) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, old).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let opened = file_state(&file).unwrap();
        (tmp, path, WriteBehind::replacing(file, opened))
    }

    #[tokio::test]
    async fn a_file_replaced_in_one_write_keeps_its_old_data_until_then_and_is_cut_after_it() {
        let (_tmp, path, mut w) = replacing_writer(b"the old contents");
        assert_eq!(std::fs::read(&path).unwrap(), b"the old contents");
        w.write_last(b"new".to_vec()).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[tokio::test]
    async fn a_file_replaced_by_a_longer_one_in_one_write_holds_only_the_new_data() {
        let (_tmp, path, mut w) = replacing_writer(b"old");
        w.write_last(b"the new contents".to_vec()).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"the new contents");
    }

    #[tokio::test]
    async fn a_file_replaced_in_several_writes_is_emptied_before_the_first() {
        let (_tmp, path, mut w) = replacing_writer(b"0123456789");
        w.write_owned(b"ab".to_vec()).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
        w.write_last(b"c".to_vec()).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }

    #[tokio::test]
    async fn a_file_replaced_by_nothing_is_empty_after_shutdown() {
        let (_tmp, path, mut w) = replacing_writer(b"old");
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        let (_tmp, path, mut w) = replacing_writer(b"old");
        w.write_last(Vec::new()).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[tokio::test]
    async fn a_replaced_file_is_empty_once_flushed_before_any_write() {
        let (_tmp, path, mut w) = replacing_writer(b"old");
        w.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        w.write_all(b"new").await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[tokio::test]
    async fn a_replaced_file_given_for_direct_writes_is_empty_and_at_its_start() {
        let (_tmp, path, mut w) = replacing_writer(b"old");
        let file = w.direct_file().await.unwrap().expect("a file");
        assert_eq!((&*file).stream_position().unwrap(), 0);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        (&*file).write_all(b"spliced").unwrap();
        w.write_last(b"!".to_vec()).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"spliced!");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_failed_last_write_is_reported_at_shutdown() {
        let mut w = full_device_writer();
        w.write_last(b"x".to_vec()).await.unwrap();
        let e = w.shutdown().await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_failed_write_is_reported_by_the_next_call() {
        let mut w = full_device_writer();
        w.write_owned(b"x".to_vec()).await.unwrap();
        let e = w.write_owned(b"y".to_vec()).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        w.write_all(b"z").await.unwrap();
        assert_eq!(
            w.shutdown().await.unwrap_err().raw_os_error(),
            Some(libc::ENOSPC)
        );
    }
}
