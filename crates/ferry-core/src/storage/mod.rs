//! The storage trait: where file data lives. Paths handed to a [`Storage`] are relative to its root (`""` is the
//! root itself) and come from a [`crate::vpath::VirtualPath`]; an implementation must still never let one resolve
//! outside the root, whatever symlinks it meets.

mod cached_read;
pub mod local;
mod local_listing;
pub mod names;
pub mod sendfile;
pub(crate) mod splice;
mod write_behind;

use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::account::QuotaUsage;

/// The kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What storage knows about a file.
#[derive(Clone, Debug)]
pub struct Metadata {
    pub kind: FileKind,
    pub size: u64,
    pub modified: SystemTime,
    pub accessed: SystemTime,
    /// Unix permission bits (`0o755`).
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    /// A stable identity for the file (device and inode for local storage).
    pub unique_id: u128,
}

impl Metadata {
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }

    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }

    /// The file's identity, size and number of names.
    pub fn state(&self) -> FileState {
        FileState {
            unique_id: self.unique_id,
            size: self.size,
            nlink: self.nlink,
        }
    }
}

/// A file open for writing as it is at one moment: which file, how long, and how many names it has (0: it has been
/// deleted while open). Uploads keep quota accounts with it (see [`crate::quota::QuotaTracker`]).
/// Why a storage refused to open something that exists: it is not a regular file (a FIFO, a device, a socket).
/// Carried inside an [`io::Error`]; [`crate::error::CoreError`] recognises it.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("not a regular file")]
pub struct NotARegularFile;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileState {
    /// The file's identity, as [`Metadata::unique_id`].
    pub unique_id: u128,
    pub size: u64,
    pub nlink: u64,
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: String,
    pub metadata: Metadata,
    /// Where a symlink points, for `ls -l` style listings.
    pub link_target: Option<String>,
}

/// How to open a file for writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Create the file or truncate an existing one.
    Truncate,
    /// Create a new file; `AlreadyExists` if the name is taken.
    CreateNew,
    /// Write from `offset` on, creating the file if needed; with `truncate`, data beyond `offset` is dropped first.
    At { offset: u64, truncate: bool },
    /// Write at the end, creating the file if needed.
    Append,
}

/// A file open for reading, with its metadata as of the open (from the open file, so that the two agree).
pub struct OpenedFile {
    pub reader: Box<dyn FileReader>,
    pub metadata: Metadata,
}

/// Where and how [`Storage::open_write_planned`] opens a file.
#[derive(Clone, Debug)]
pub struct WriteTarget {
    pub path: String,
    pub mode: WriteMode,
    /// Create the file, failing with `AlreadyExists` if anything is at the path, whatever `mode` says (an `Append`
    /// stays one: its writes go to the end of the file).
    pub exclusive: bool,
}

/// Decides, from the metadata of what is at a path (`None`: nothing is), where and how to open it for writing; an
/// error refuses, and nothing is opened. It runs where the storage does its work (for local storage, on the
/// blocking pool, or on the caller's thread for a file the kernel has cached), so it must not wait for anything.
pub type WritePlanner = Box<dyn FnOnce(Option<&Metadata>) -> io::Result<WriteTarget> + Send>;

/// A file open for reading.
#[async_trait]
pub trait FileReader: AsyncRead + Send + Unpin {
    /// The file's descriptor when it is a local file that can be sent with sendfile(2) (see [`sendfile`]);
    /// sends start at, and move, the descriptor's position, which is where the file was opened: reads need not
    /// move it, so a reader that has been read from must not be sent from.
    fn local_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Makes the next read start at `offset` of the same open file, whatever name it has now. `Unsupported` (the
    /// default) where the storage cannot.
    fn reposition(&mut self, _offset: u64) -> io::Result<()> {
        Err(unsupported_on_open_file())
    }

    /// The open file's metadata, whatever name it has now. `Unsupported` (the default) where the storage cannot
    /// tell.
    async fn metadata(&mut self) -> io::Result<Metadata> {
        Err(unsupported_on_open_file())
    }

    /// Changes the open file itself, whatever name it has now (a file open only for reading cannot change its
    /// length). `Unsupported` (the default) where the storage cannot.
    async fn change(&mut self, _change: FileChange) -> io::Result<()> {
        Err(unsupported_on_open_file())
    }
}

/// A change to an open file itself, whatever name it has now ([`FileWriter::change`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileChange {
    /// Truncate or extend it to this many bytes.
    Len(u64),
    /// Set its Unix permission bits.
    Mode(u32),
    /// Set its modification time (the access time stays).
    Modified(SystemTime),
}

/// A file open for writing. Dropping it without [`tokio::io::AsyncWriteExt::shutdown`] may lose buffered data.
#[async_trait]
pub trait FileWriter: AsyncWrite + Send + Unpin {
    /// Writes all of `data` and returns an empty buffer for the caller to fill next. Storage that writes behind the
    /// caller takes `data` itself rather than copying it, and gives back a buffer it is done with (which may be
    /// unallocated, the first time); the default writes `data` and gives it back.
    async fn write_owned(&mut self, mut data: Vec<u8>) -> io::Result<Vec<u8>> {
        self.write_all(&data).await?;
        data.clear();
        Ok(data)
    }

    /// Writes `data`, the last bytes of the file, and closes the file where the storage can do both at once; the
    /// writer then takes no more writes. An error may surface only at [`tokio::io::AsyncWriteExt::shutdown`],
    /// which must still be called. The default writes `data` and flushes.
    async fn write_last(&mut self, data: Vec<u8>) -> io::Result<()> {
        self.write_all(&data).await?;
        self.flush().await
    }

    /// The local file this writer writes at the file's own position, once the writes before have ended, for data
    /// to be moved into it by the kernel (see [`crate::transfer::Upload::pump`]); writes through this writer go on
    /// at the position such moves leave. `None` (the default): the storage has no such file.
    async fn direct_file(&mut self) -> io::Result<Option<Arc<std::fs::File>>> {
        Ok(None)
    }

    /// Whether the file still holds the data it had before the upload, which this writer is to replace (at its
    /// first write, or its shutdown): false (the default) where nothing is to be replaced, or where the storage
    /// replaced it when it opened the file.
    fn holds_old_data(&self) -> bool {
        false
    }

    /// Gives up replacing the old data (see [`FileWriter::holds_old_data`]), for an upload that ends before its
    /// first write: the shutdown then leaves the file as it was.
    fn keep_old_data(&mut self) {}

    /// The file as the open found it (before any truncation the open did itself), known without a trip of its own.
    fn opened(&self) -> FileState;

    /// The file as it is now, once the writes before have ended; `None` once [`FileWriter::write_last`] has closed
    /// it.
    async fn state(&mut self) -> io::Result<Option<FileState>>;

    /// The open file's metadata once the writes before have ended, whatever name it has now. `Unsupported` (the
    /// default) where the storage cannot tell.
    async fn metadata(&mut self) -> io::Result<Metadata> {
        Err(unsupported_on_open_file())
    }

    /// Changes the open file itself once the writes before have ended, whatever name it has now (an SFTP handle
    /// acts on the file it opened). `Unsupported` (the default) where the storage cannot.
    async fn change(&mut self, _change: FileChange) -> io::Result<()> {
        Err(unsupported_on_open_file())
    }

    /// Reads up to `len` bytes at `offset` of the open file once the writes before have ended (empty at the end),
    /// for a client that reads what it writes. `Unsupported` (the default) where the storage cannot.
    async fn read_at(&mut self, _offset: u64, _len: usize) -> io::Result<Vec<u8>> {
        Err(unsupported_on_open_file())
    }
}

/// What a reader or writer answers when its storage cannot act on the open file itself.
fn unsupported_on_open_file() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "the storage cannot do this on an open file",
    )
}

/// A directory listing that arrives entry by entry, so that a huge directory is never held in memory at once.
///
/// A [`DirBatches`] reader is run on the blocking pool, where it reads batch after batch while the consumer keeps
/// up, so that reading never waits for the consumer to come and ask. Once [`READ_AHEAD`] batches wait unread, it
/// stops and gives its thread back; the consumer starts it again when it takes one. A stalled listing therefore
/// holds no thread, and a listing holds at most `READ_AHEAD + 2` batches: those waiting, the one being read and
/// the one being consumed.
pub struct DirStream {
    /// The batches read ahead; `None` for a stream made from entries.
    ahead: Option<Arc<ReadAhead>>,
    /// The batch being consumed.
    current: std::vec::IntoIter<DirEntry>,
    /// Decides on each entry (see [`DirStream::filtering`]).
    filter: Option<EntryFilter>,
}

/// Keeps (`true`) or leaves out an entry of a [`DirStream`], and may change it on the way.
pub type EntryFilter = Box<dyn FnMut(&mut DirEntry) -> bool + Send>;

/// Batches a [`DirStream`] reads ahead of its consumer before its reader stops.
pub const READ_AHEAD: usize = 2;

/// A directory read batch by batch with blocking calls, for [`DirStream::blocking`].
pub trait DirBatches: Send + 'static {
    /// The next entries (blocking); an empty batch is the end. Nothing more is read after an error.
    fn next_batch(&mut self) -> io::Result<Vec<DirEntry>>;
}

/// What a listing's reader and its consumer share.
struct ReadAhead {
    state: Mutex<AheadState>,
    /// Told whenever a batch (or the end) arrives.
    arrived: Notify,
}

struct AheadState {
    batches: VecDeque<io::Result<Vec<DirEntry>>>,
    /// The reader while it waits for room; `None` while it reads, and once it has finished.
    parked: Option<Box<dyn DirBatches>>,
    /// The reader has delivered its last batch (or an error).
    finished: bool,
    /// The consumer is gone: the reader stops after the batch it is reading.
    abandoned: bool,
}

impl ReadAhead {
    fn state(&self) -> MutexGuard<'_, AheadState> {
        // The lock is never held across anything that can panic; take the state even if a thread did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `reader` on the blocking pool until it finishes or has [`READ_AHEAD`] batches waiting.
    fn start(self: Arc<Self>, reader: Box<dyn DirBatches>) {
        tokio::task::spawn_blocking(move || self.read(reader));
    }

    fn read(&self, mut reader: Box<dyn DirBatches>) {
        loop {
            let batch = reader.next_batch();
            let last = !matches!(&batch, Ok(entries) if !entries.is_empty());
            let mut state = self.state();
            if state.abandoned {
                return;
            }
            if matches!(&batch, Ok(entries) if entries.is_empty()) {
                state.finished = true;
            } else {
                state.finished = last;
                state.batches.push_back(batch);
            }
            if last || state.batches.len() >= READ_AHEAD {
                if !last {
                    state.parked = Some(reader);
                }
                drop(state);
                self.arrived.notify_one();
                return;
            }
            drop(state);
            self.arrived.notify_one();
        }
    }
}

impl DirStream {
    /// A stream read by `reader` on the blocking pool, ahead of the consumer (see [`DirStream`]).
    pub fn blocking(reader: impl DirBatches) -> Self {
        let ahead = Arc::new(ReadAhead {
            state: Mutex::new(AheadState {
                batches: VecDeque::with_capacity(READ_AHEAD),
                parked: None,
                finished: false,
                abandoned: false,
            }),
            arrived: Notify::new(),
        });
        Arc::clone(&ahead).start(Box::new(reader));
        DirStream {
            ahead: Some(ahead),
            current: Vec::new().into_iter(),
            filter: None,
        }
    }

    /// A stream holding exactly these entries.
    pub fn from_entries(entries: Vec<DirEntry>) -> Self {
        DirStream {
            ahead: None,
            current: entries.into_iter(),
            filter: None,
        }
    }

    /// The same stream with each entry passed through `filter` first.
    pub fn filtering(mut self, filter: EntryFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    pub async fn next(&mut self) -> Option<io::Result<DirEntry>> {
        loop {
            if let Some(mut entry) = self.current.next() {
                if self.filter.as_mut().is_some_and(|keep| !keep(&mut entry)) {
                    continue;
                }
                return Some(Ok(entry));
            }
            let ahead = self.ahead.as_ref()?;
            let batch = {
                let mut state = ahead.state();
                let batch = state.batches.pop_front();
                if batch.is_none() && state.finished {
                    return None;
                }
                if let (Some(_), Some(reader)) = (&batch, state.parked.take()) {
                    Arc::clone(ahead).start(reader);
                }
                batch
            };
            match batch {
                Some(Ok(entries)) => self.current = entries.into_iter(),
                Some(Err(e)) => return Some(Err(e)),
                // A batch that arrives meanwhile leaves a permit: this wait then ends at once.
                None => ahead.arrived.notified().await,
            }
        }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        if let Some(ahead) = &self.ahead {
            let mut state = ahead.state();
            state.abandoned = true;
            state.parked = None;
            state.batches.clear();
        }
    }
}

/// What a storage backend can do, so that front-ends can advertise only what works.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    pub resume: bool,
    pub atomic_rename: bool,
    pub sendfile: bool,
    pub symlinks: bool,
}

/// File data, rooted at one directory (an account's home).
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;
    /// Metadata, following symlinks that stay inside the root.
    async fn metadata(&self, path: &str) -> io::Result<Metadata>;
    /// Metadata of the entry itself, not following a final symlink.
    async fn symlink_metadata(&self, path: &str) -> io::Result<Metadata>;
    async fn read_dir(&self, path: &str) -> io::Result<DirStream>;
    /// Opens a file (not a directory) for reading from `offset` on. An offset beyond the end is not checked.
    async fn open_read(&self, path: &str, offset: u64) -> io::Result<OpenedFile>;
    async fn open_write(&self, path: &str, mode: WriteMode) -> io::Result<Box<dyn FileWriter>>;
    /// Looks at `path` (following symlinks, as [`Storage::metadata`]) and opens what `plan` decides from it. Storage
    /// that can should do both in one trip (the default makes two), so that a small upload waits for the storage
    /// once before its data arrives.
    async fn open_write_planned(
        &self,
        path: &str,
        plan: WritePlanner,
    ) -> io::Result<Box<dyn FileWriter>> {
        let existing = match self.metadata(path).await {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let target = plan(existing.as_ref())?;
        self.open_write(&target.path, target.mode).await
    }
    /// Opens the file at `path` again for writing from `offset`, never creating one: fails unless `path` still
    /// names the file whose [`Metadata::unique_id`] is `unique_id` (an upload that writes out of order must not
    /// write to another file, or to a new one, than the one it opened).
    async fn reopen_write(
        &self,
        path: &str,
        offset: u64,
        unique_id: u128,
    ) -> io::Result<Box<dyn FileWriter>>;
    async fn create_dir(&self, path: &str) -> io::Result<()>;
    async fn remove_dir(&self, path: &str) -> io::Result<()>;
    async fn remove_file(&self, path: &str) -> io::Result<()>;
    /// Renames, replacing an existing file at `to`.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Renames, failing with `AlreadyExists` if anything is at `to`: the look and the move are one step, so that
    /// nothing created at `to` meanwhile is replaced.
    async fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()>;
    async fn set_modified(&self, path: &str, time: SystemTime) -> io::Result<()>;
    async fn set_mode(&self, path: &str, mode: u32) -> io::Result<()>;
    async fn set_len(&self, path: &str, len: u64) -> io::Result<()>;
    async fn read_link(&self, path: &str) -> io::Result<String>;
    /// Creates a symlink at `link` pointing to `target`, a path relative to the link's directory.
    async fn symlink(&self, target: &str, link: &str) -> io::Result<()>;
    async fn hard_link(&self, from: &str, to: &str) -> io::Result<()>;
    /// Free bytes on the device holding the root, when known.
    async fn free_space(&self) -> io::Result<Option<u64>>;
    /// Total size and number of regular files below `path` (symlinks not followed), for quota rescans. Each name
    /// of a file with several (hard links) is a file, but its bytes count once, as a quota tracker counts them.
    async fn disk_usage(&self, path: &str) -> io::Result<QuotaUsage>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    /// Hands out `batches` batches of two entries, then the end (or `error`), counting the batches read.
    struct Counted {
        batches: usize,
        read: Arc<AtomicUsize>,
        error: bool,
    }

    impl DirBatches for Counted {
        fn next_batch(&mut self) -> io::Result<Vec<DirEntry>> {
            let n = self.read.fetch_add(1, Ordering::SeqCst);
            if n >= self.batches {
                return if self.error {
                    Err(io::Error::other("broken"))
                } else {
                    Ok(Vec::new())
                };
            }
            Ok([0, 1].map(|i| entry(&format!("{n}.{i}"))).into())
        }
    }

    fn entry(name: &str) -> DirEntry {
        DirEntry {
            name: name.to_owned(),
            metadata: Metadata {
                kind: FileKind::File,
                size: 0,
                modified: UNIX_EPOCH,
                accessed: UNIX_EPOCH,
                mode: 0o644,
                nlink: 1,
                uid: 0,
                gid: 0,
                unique_id: 0,
            },
            link_target: None,
        }
    }

    fn counted(batches: usize, error: bool) -> (DirStream, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        let reader = Counted {
            batches,
            read: Arc::clone(&read),
            error,
        };
        (DirStream::blocking(reader), read)
    }

    async fn settle(read: &AtomicUsize, until: usize) -> usize {
        for _ in 0..200 {
            if read.load(Ordering::SeqCst) >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Give a reader that would go too far the time to do so.
        tokio::time::sleep(Duration::from_millis(50)).await;
        read.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn reading_goes_on_while_the_consumer_works_but_only_read_ahead_batches_far() {
        let (mut stream, read) = counted(100, false);
        assert_eq!(stream.next().await.unwrap().unwrap().name, "0.0");
        // The batch being consumed, and READ_AHEAD more without being asked.
        assert_eq!(settle(&read, READ_AHEAD + 1).await, READ_AHEAD + 1);
        let mut names = vec!["0.0".to_owned()];
        while let Some(entry) = stream.next().await {
            names.push(entry.unwrap().name);
        }
        let expected: Vec<String> = (0..100)
            .flat_map(|n| [format!("{n}.0"), format!("{n}.1")])
            .collect();
        assert_eq!(names, expected);
    }

    #[tokio::test]
    async fn entries_read_before_an_error_come_first() {
        let (mut stream, _) = counted(3, true);
        for _ in 0..6 {
            assert!(stream.next().await.unwrap().is_ok());
        }
        assert!(stream.next().await.unwrap().is_err());
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_listing_stops_reading() {
        let (mut stream, read) = counted(100, false);
        assert!(stream.next().await.unwrap().is_ok());
        let before = settle(&read, READ_AHEAD + 1).await;
        drop(stream);
        assert_eq!(settle(&read, usize::MAX).await, before);
    }
}
