//! Reading a local directory for a listing (blocking): getdents(2) into one fixed buffer, and statx(2) of each name
//! relative to the directory's descriptor. A name from getdents is a single path component (`.` and `..` are
//! skipped) and is looked at with `AT_SYMLINK_NOFOLLOW`, so nothing resolves outside the directory, which was
//! itself opened beneath the storage root; no path is built or checked per entry, and the only allocation per entry
//! is its name (escaped as [`super::names`] says when it is not UTF-8).

use std::ffi::{CStr, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, Statx, StatxFlags};

use super::{names, DirEntry, FileKind, Metadata};

/// Bytes of directory entries fetched by one getdents(2) call: a few hundred entries with short names.
const GETDENTS_BUFFER: usize = 8 * 1024;

/// A local directory being read entry by entry, with each entry's own metadata (symlinks not followed).
pub(super) struct LocalDirReader {
    dir: OwnedFd,
    buf: Box<[MaybeUninit<u8>]>,
    /// An error met after the entries of the last batch, reported by the next call.
    pending_error: Option<io::Error>,
}

impl LocalDirReader {
    /// Starts reading the directory `dir` (blocking).
    pub(super) fn open(dir: impl AsFd) -> io::Result<Self> {
        // A descriptor of its own, open for reading: the one given may be an O_PATH handle, and the read position
        // must not be shared.
        let dir = rustix::fs::openat(
            dir,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(LocalDirReader {
            dir,
            buf: vec![MaybeUninit::uninit(); GETDENTS_BUFFER].into_boxed_slice(),
            pending_error: None,
        })
    }

    /// Reads whole getdents buffers until at least `min` entries are in the batch or the directory ends (blocking).
    /// An empty batch means the end. Entries that vanish before they are looked at, or cannot be, are left out,
    /// as `ls` does. An error after some entries is reported by the next call, after those entries.
    pub(super) fn read_batch(&mut self, min: usize) -> io::Result<Vec<DirEntry>> {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        let mut batch = Vec::with_capacity(min);
        while batch.len() < min {
            let mut raw = RawDir::new(&self.dir, &mut self.buf[..]);
            loop {
                let entry = match raw.next() {
                    None => return Ok(batch),
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) if batch.is_empty() => return Err(e.into()),
                    Some(Err(e)) => {
                        self.pending_error = Some(e.into());
                        return Ok(batch);
                    }
                };
                let name = entry.file_name();
                if !matches!(name.to_bytes(), b"." | b"..") {
                    if let Some(entry) = read_entry(&self.dir, name) {
                        batch.push(entry);
                    }
                }
                // Stop only at the end of a buffer: the next `RawDir` starts with a fresh getdents call.
                if raw.is_buffer_empty() {
                    break;
                }
            }
        }
        Ok(batch)
    }
}

/// The entry `name` of `dir` with its metadata, `None` when it cannot be looked at.
fn read_entry(dir: &OwnedFd, name: &CStr) -> Option<DirEntry> {
    let stat = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .ok()?;
    let metadata = metadata_from_statx(&stat);
    let link_target = if metadata.kind == FileKind::Symlink {
        rustix::fs::readlinkat(dir, name, Vec::new())
            .ok()
            .map(|target| string_of(&target))
    } else {
        None
    };
    Some(DirEntry {
        name: string_of(name),
        metadata,
        link_target,
    })
}

/// A name or link target read from disk, as a virtual path holds it.
fn string_of(bytes: &CStr) -> String {
    names::from_disk(OsStr::from_bytes(bytes.to_bytes())).into_owned()
}

/// The same [`Metadata`] as `LocalStorage::symlink_metadata` gives for the entry.
pub(super) fn metadata_from_statx(stat: &Statx) -> Metadata {
    let mode = u32::from(stat.stx_mode);
    let kind = match FileType::from_raw_mode(mode) {
        FileType::Symlink => FileKind::Symlink,
        FileType::Directory => FileKind::Dir,
        FileType::RegularFile => FileKind::File,
        _ => FileKind::Other,
    };
    let dev = rustix::fs::makedev(stat.stx_dev_major, stat.stx_dev_minor);
    Metadata {
        kind,
        size: stat.stx_size,
        modified: super::local::unix_time(stat.stx_mtime.tv_sec, i64::from(stat.stx_mtime.tv_nsec)),
        accessed: super::local::unix_time(stat.stx_atime.tv_sec, i64::from(stat.stx_atime.tv_nsec)),
        mode: mode & 0o7777,
        nlink: u64::from(stat.stx_nlink),
        uid: stat.stx_uid,
        gid: stat.stx_gid,
        unique_id: (u128::from(dev) << 64) | u128::from(stat.stx_ino),
    }
}
