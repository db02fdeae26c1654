//! The storage trait: where file data lives. Paths handed to a [`Storage`] are relative to its root (`""` is the
//! root itself) and come from a [`crate::vpath::VirtualPath`]; an implementation must still never let one resolve
//! outside the root, whatever symlinks it meets.

pub mod local;
mod local_listing;
pub mod sendfile;

use std::io;
use std::os::fd::BorrowedFd;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

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

/// A file open for reading.
pub trait FileReader: AsyncRead + Send + Unpin {
    /// The file's descriptor when it is a local file that can be sent with sendfile(2) (see [`sendfile`]);
    /// sends move the same position as reads, but a reader that has been read from may have read ahead of it.
    fn local_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// A file open for writing. Dropping it without [`tokio::io::AsyncWriteExt::shutdown`] may lose buffered data.
pub trait FileWriter: AsyncWrite + Send + Unpin {}

/// A directory listing that arrives entry by entry, so that a huge directory is never held in memory at once.
pub struct DirStream {
    /// The read of the next batch, already under way (one batch ahead of the consumer).
    next: Option<JoinHandle<DirBatch>>,
    /// The current batch, reversed so that `pop` yields entries in order.
    current: Vec<DirEntry>,
}

/// One batch of a listing, and what reads the batch after it (`None` at the end).
pub struct DirBatch {
    pub entries: io::Result<Vec<DirEntry>>,
    pub rest: Option<Box<dyn FnOnce() -> DirBatch + Send>>,
}

impl DirStream {
    /// A stream whose batches `first`, and the continuations it returns, read on the blocking pool. One batch is
    /// read ahead, so that reading overlaps with sending; a consumer that stops reading holds no thread, only
    /// the batch read ahead (and dropping the stream drops the reader).
    pub fn blocking(first: impl FnOnce() -> DirBatch + Send + 'static) -> Self {
        DirStream {
            next: Some(tokio::task::spawn_blocking(first)),
            current: Vec::new(),
        }
    }

    /// A stream holding exactly these entries.
    pub fn from_entries(mut entries: Vec<DirEntry>) -> Self {
        entries.reverse();
        DirStream {
            next: None,
            current: entries,
        }
    }

    pub async fn next(&mut self) -> Option<io::Result<DirEntry>> {
        loop {
            if let Some(entry) = self.current.pop() {
                return Some(Ok(entry));
            }
            let batch = match self.next.take()?.await {
                Ok(batch) => batch,
                Err(e) => return Some(Err(io::Error::other(e))),
            };
            if let Some(rest) = batch.rest {
                self.next = Some(tokio::task::spawn_blocking(rest));
            }
            match batch.entries {
                Ok(mut entries) => {
                    entries.reverse();
                    self.current = entries;
                }
                Err(e) => {
                    self.next = None;
                    return Some(Err(e));
                }
            }
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
    async fn open_read(&self, path: &str, offset: u64) -> io::Result<Box<dyn FileReader>>;
    async fn open_write(&self, path: &str, mode: WriteMode) -> io::Result<Box<dyn FileWriter>>;
    async fn create_dir(&self, path: &str) -> io::Result<()>;
    async fn remove_dir(&self, path: &str) -> io::Result<()>;
    async fn remove_file(&self, path: &str) -> io::Result<()>;
    /// Renames, replacing an existing file at `to`.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    async fn set_modified(&self, path: &str, time: SystemTime) -> io::Result<()>;
    async fn set_mode(&self, path: &str, mode: u32) -> io::Result<()>;
    async fn set_len(&self, path: &str, len: u64) -> io::Result<()>;
    async fn read_link(&self, path: &str) -> io::Result<String>;
    /// Creates a symlink at `link` pointing to `target`, a path relative to the link's directory.
    async fn symlink(&self, target: &str, link: &str) -> io::Result<()>;
    async fn hard_link(&self, from: &str, to: &str) -> io::Result<()>;
    /// Free bytes on the device holding the root, when known.
    async fn free_space(&self) -> io::Result<Option<u64>>;
    /// Total size and number of regular files below `path` (symlinks not followed), for quota rescans.
    async fn disk_usage(&self, path: &str) -> io::Result<QuotaUsage>;
}
