//! Local filesystem storage, confined with cap-std: every path is resolved beneath the root directory handle
//! (openat2 with RESOLVE_BENEATH where the kernel has it, a checked component-by-component walk otherwise), so
//! `..`, absolute symlinks and symlinks that climb out of the root fail with an error instead of escaping.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cap_fs_ext::{DirExt, SystemTimeSpec};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt, OpenOptions, PermissionsExt};
use std::os::unix::fs::DirBuilderExt;

use super::cached_read::CachedReader;
use super::local_listing::LocalDirReader;
use super::names;
use super::write_behind::{self, WriteBehind};
use super::{
    Capabilities, DirBatches, DirStream, FileKind, FileState, FileWriter, Metadata,
    NotARegularFile, OpenedFile, Storage, WriteMode, WritePlanner,
};
use crate::account::QuotaUsage;

/// Entries read per batch (at least; whole getdents buffers are read): with [`super::READ_AHEAD`], this bounds
/// what a listing holds however large the directory.
const LISTING_BATCH: usize = 256;

impl DirBatches for LocalDirReader {
    fn next_batch(&mut self) -> io::Result<Vec<super::DirEntry>> {
        self.read_batch(LISTING_BATCH)
    }
}

/// Storage in a local directory.
#[derive(Clone)]
pub struct LocalStorage {
    root: Arc<Dir>,
}

impl LocalStorage {
    /// Opens `root` (creating it if needed, mode 0700) as the confinement root.
    pub async fn open(root: &Path) -> io::Result<Self> {
        let root = root.to_owned();
        blocking(move || {
            if !root.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&root)?;
            }
            Ok(LocalStorage {
                root: Arc::new(Dir::open_ambient_dir(&root, ambient_authority())?),
            })
        })
        .await
    }

    async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Dir) -> io::Result<T> + Send + 'static,
    {
        let root = Arc::clone(&self.root);
        blocking(move || f(&root)).await
    }
}

/// Runs blocking filesystem work off the async runtime.
pub(super) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Reads up to `len` bytes of `file` at `offset` (blocking); fewer only at the end of the file.
pub(super) fn read_at_most(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; len];
    let n = loop {
        match file.read_at(&mut data, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            read => break read?,
        }
    };
    data.truncate(n);
    Ok(data)
}

/// The virtual path `path` as a path on disk: names as [`names::to_disk`] gives them, `.` for the root itself (as
/// cap-std wants it). Borrowed unless a name has escaped bytes.
fn disk_path(path: &str) -> io::Result<Cow<'_, OsStr>> {
    names::to_disk(if path.is_empty() { "." } else { path })
}

/// The directory part of `path` (`.` if it has none) and its last component.
fn split_last(path: &OsStr) -> (&OsStr, &OsStr) {
    let bytes = path.as_bytes();
    match bytes.iter().rposition(|&b| b == b'/') {
        Some(slash) => (
            OsStr::from_bytes(&bytes[..slash]),
            OsStr::from_bytes(&bytes[slash + 1..]),
        ),
        None => (OsStr::new("."), path),
    }
}

fn convert_metadata(m: &cap_std::fs::Metadata) -> Metadata {
    let kind = if m.is_symlink() {
        FileKind::Symlink
    } else if m.is_dir() {
        FileKind::Dir
    } else if m.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    Metadata {
        kind,
        size: m.len(),
        modified: unix_time(m.mtime(), m.mtime_nsec()),
        accessed: unix_time(m.atime(), m.atime_nsec()),
        mode: m.mode() & 0o7777,
        nlink: m.nlink(),
        uid: m.uid(),
        gid: m.gid(),
        unique_id: (u128::from(m.dev()) << 64) | u128::from(m.ino()),
    }
}

/// The metadata of an open local file (one fstat(2), blocking).
pub(super) fn open_file_metadata(file: &std::fs::File) -> io::Result<Metadata> {
    let meta = cap_std::fs::Metadata::from_just_metadata(file.metadata()?);
    Ok(convert_metadata(&meta))
}

/// Makes `change` to an open local file (blocking).
pub(super) fn change_open_file(file: &std::fs::File, change: super::FileChange) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    match change {
        super::FileChange::Len(len) => file.set_len(len),
        super::FileChange::Mode(mode) => {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        }
        super::FileChange::Modified(time) => file.set_modified(time),
    }
}

pub(super) fn unix_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(u64::try_from(nsecs).unwrap_or(0));
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s) + nanos,
        Err(_) => UNIX_EPOCH,
    }
}

/// Opens the existing regular file `path` as `access` says on the calling thread if the kernel can do it from its
/// caches alone: openat2 with `RESOLVE_CACHED` fails with `EAGAIN` rather than wait for the disk, and
/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` confine it as cap-std's own opens are confined. A download of a cached
/// file then needs no trip to the blocking pool at all (with [`CachedReader`] and sendfile), and an upload replacing
/// a file one trip (its write with the close). The kernel refuses `RESOLVE_CACHED` with `O_CREAT`, so a new file is
/// always created on the blocking pool. `None` for anything else, errors included: the caller opens on the blocking
/// pool, which reports errors as usual. `O_NONBLOCK` keeps the open of a FIFO from waiting for a peer (and one
/// breaking a lease from waiting for its holder); it is cleared again on the regular files that are returned.
#[cfg(target_os = "linux")]
fn open_cached(root: &Dir, path: &OsStr, access: Access) -> Option<(std::fs::File, Metadata)> {
    use rustix::fs::{openat2, AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};
    let io = OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let flags = match access {
        Access::Read => OFlags::RDONLY | io,
        Access::Write => OFlags::WRONLY | io,
        Access::Append => OFlags::WRONLY | OFlags::APPEND | io,
        Access::Lookup => OFlags::PATH | OFlags::CLOEXEC,
    };
    let fd = openat2(
        root,
        path,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::CACHED,
    )
    .ok()?;
    let stat = rustix::fs::statx(&fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).ok()?;
    let metadata = super::local_listing::metadata_from_statx(&stat);
    if metadata.kind != FileKind::File {
        return None;
    }
    if flags.contains(OFlags::NONBLOCK) {
        // O_NONBLOCK off again, O_APPEND kept.
        rustix::fs::fcntl_setfl(&fd, flags & OFlags::APPEND).ok()?;
    }
    Some((std::fs::File::from(fd), metadata))
}

#[cfg(not(target_os = "linux"))]
fn open_cached(_root: &Dir, _path: &OsStr, _access: Access) -> Option<(std::fs::File, Metadata)> {
    None
}

/// How [`open_cached`] opens a file.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
    Append,
    /// Only to look at it (`O_PATH`).
    Lookup,
}

/// Creates the symlink `link` to `target` (blocking), with the link's directory reached without following any
/// symlink. `target` is relative to the link's directory as the client names it, which is where the link goes on
/// disk only when no directory on the way is itself a symlink: through one to a shallower directory, the target's
/// `..`s would climb out of the root (harmless to ferry, which never follows them out, but not to whatever else
/// reads the home). Such a link is refused (`ELOOP`, access denied).
#[cfg(target_os = "linux")]
fn symlink_in_real_dir(root: &Dir, target: &OsStr, link: &OsStr) -> io::Result<()> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    let (parent, name) = split_last(link);
    let dir = openat2(
        root,
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?;
    Ok(rustix::fs::symlinkat(target, &dir, name)?)
}

#[cfg(not(target_os = "linux"))]
fn symlink_in_real_dir(root: &Dir, target: &OsStr, link: &OsStr) -> io::Result<()> {
    // Each directory on the way checked, then the link made: racy against a client swapping a directory for a
    // symlink in between, which openat2 rules out on Linux.
    let mut walked = std::path::PathBuf::new();
    for part in Path::new(link)
        .parent()
        .into_iter()
        .flat_map(Path::components)
    {
        walked.push(part);
        if root.symlink_metadata(&walked)?.file_type().is_symlink() {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
    }
    root.symlink(target, link)
}

/// Renames `from` to `to` unless something is at `to` (blocking): each name's directory is opened beneath the
/// root, then renameat2 with `RENAME_NOREPLACE` moves the last component.
#[cfg(target_os = "linux")]
fn rename_noreplace(root: &Dir, from: &OsStr, to: &OsStr) -> io::Result<()> {
    use rustix::fs::RenameFlags;
    let (from_dir, from_name) = split_parent(root, from)?;
    let (to_dir, to_name) = split_parent(root, to)?;
    Ok(rustix::fs::renameat_with(
        &from_dir,
        from_name,
        &to_dir,
        to_name,
        RenameFlags::NOREPLACE,
    )?)
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(root: &Dir, from: &OsStr, to: &OsStr) -> io::Result<()> {
    // A new name fails if one exists; the old name goes once the new one is there.
    root.hard_link(from, root, to)?;
    root.remove_file(from)
}

/// The directory holding `path`, opened beneath the root, and the last component of `path`, which names a plain
/// entry in it (a [`crate::vpath::VirtualPath`] has no `.` or `..`).
#[cfg(target_os = "linux")]
fn split_parent<'a>(root: &Dir, path: &'a OsStr) -> io::Result<(Dir, &'a OsStr)> {
    let (parent, name) = split_last(path);
    if matches!(name.as_bytes(), b"" | b"." | b"..") {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    Ok((root.open_dir(parent)?, name))
}

/// Opens `path` with `options` (blocking), refusing anything but a regular file. `O_NONBLOCK` keeps the open of a
/// FIFO from waiting for a peer (one left in a home by an administrator would otherwise hold a blocking-pool thread
/// until someone opened its other end), and is cleared again on the file returned. Devices and sockets are refused
/// as well: a download of `/dev/zero`'s like would never end.
fn open_regular(
    dir: &Dir,
    path: &OsStr,
    options: &mut OpenOptions,
) -> io::Result<(std::fs::File, std::fs::Metadata)> {
    use cap_std::fs::OpenOptionsExt;
    use rustix::fs::OFlags;
    options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = match dir.open_with(path, options) {
        Ok(file) => file.into_std(),
        // A FIFO opened for writing without a reader, or a device without its driver: never a regular file.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(io::Error::other(NotARegularFile))
        }
        Err(e) => return Err(e),
    };
    let metadata = file.metadata()?;
    if metadata.is_dir() {
        return Err(io::ErrorKind::IsADirectory.into());
    }
    if !metadata.is_file() {
        return Err(io::Error::other(NotARegularFile));
    }
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
    Ok((file, metadata))
}

/// Opens `path` for writing as `mode` says (blocking). A file replaced from its start (`Truncate`) is not truncated
/// here: its writer empties it (see [`WriteBehind::replacing`]).
fn open_for_write(
    dir: &Dir,
    path: &OsStr,
    mode: WriteMode,
    exclusive: bool,
) -> io::Result<WriteBehind> {
    let mut options = OpenOptions::new();
    options.write(true);
    match mode {
        WriteMode::Truncate => options.create(true),
        WriteMode::CreateNew => options.create_new(true),
        WriteMode::At { .. } => options.create(true),
        WriteMode::Append => options.create(true).append(true),
    };
    if exclusive {
        options.create_new(true);
    }
    let (file, metadata) = open_regular(dir, path, &mut options)?;
    // The one look at the opened file an upload needs (for its quota account), which the replacing check shares.
    writer_for(file, write_behind::state_of(&metadata), mode)
}

/// [`open_for_write`] on the calling thread, when the file exists, [`open_cached`] can open it, and nothing that
/// could wait for the disk (a truncation) is to follow.
fn open_existing_cached(root: &Dir, path: &OsStr, mode: WriteMode) -> Option<WriteBehind> {
    let access = match mode {
        WriteMode::Truncate
        | WriteMode::At {
            truncate: false, ..
        } => Access::Write,
        WriteMode::Append => Access::Append,
        WriteMode::CreateNew | WriteMode::At { truncate: true, .. } => return None,
    };
    let (file, metadata) = open_cached(root, path, access)?;
    writer_for(file, metadata.state(), mode).ok()
}

/// The writer of `file`, just opened as `mode` says, which was `opened` then (blocking when `mode` truncates).
fn writer_for(
    mut file: std::fs::File,
    opened: FileState,
    mode: WriteMode,
) -> io::Result<WriteBehind> {
    match mode {
        WriteMode::Truncate if opened.size > 0 => {
            return Ok(WriteBehind::replacing(file, opened));
        }
        WriteMode::At { offset, truncate } => {
            if truncate {
                file.set_len(offset)?;
            }
            file.seek(SeekFrom::Start(offset))?;
        }
        _ => {}
    }
    Ok(WriteBehind::new(file, opened))
}

/// Opens the existing file `path` for writing at `offset` (blocking), if it is the file `unique_id`.
fn reopen_for_write(
    dir: &Dir,
    path: &OsStr,
    offset: u64,
    unique_id: u128,
) -> io::Result<WriteBehind> {
    let (mut file, metadata) = open_regular(dir, path, OpenOptions::new().write(true))?;
    let opened = write_behind::state_of(&metadata);
    if opened.unique_id != unique_id {
        return Err(io::Error::other(
            "the file was replaced while it was being written",
        ));
    }
    file.seek(SeekFrom::Start(offset))?;
    Ok(WriteBehind::new(file, opened))
}

#[async_trait]
impl Storage for LocalStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resume: true,
            atomic_rename: true,
            sendfile: true,
            symlinks: true,
        }
    }

    async fn metadata(&self, path: &str) -> io::Result<Metadata> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| d.metadata(path).map(|m| convert_metadata(&m)))
            .await
    }

    async fn symlink_metadata(&self, path: &str) -> io::Result<Metadata> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| d.symlink_metadata(path).map(|m| convert_metadata(&m)))
            .await
    }

    async fn read_dir(&self, path: &str) -> io::Result<DirStream> {
        let path = disk_path(path)?.into_owned();
        let reader = self
            .run(move |d| LocalDirReader::open(d.open_dir(path)?))
            .await?;
        Ok(DirStream::blocking(reader))
    }

    async fn open_read(&self, path: &str, offset: u64) -> io::Result<OpenedFile> {
        let path = disk_path(path)?;
        // An offset past the end is not sought (lseek refuses one past i64::MAX): the caller refuses it, knowing
        // the size.
        let seek = move |file: &mut std::fs::File, size: u64| -> io::Result<()> {
            if offset > 0 && offset <= size {
                file.seek(SeekFrom::Start(offset))?;
            }
            Ok(())
        };
        if let Some((mut file, metadata)) = open_cached(&self.root, &path, Access::Read) {
            seek(&mut file, metadata.size)?;
            return Ok(OpenedFile {
                reader: Box::new(CachedReader::new(file, offset)),
                metadata,
            });
        }
        let path = path.into_owned();
        let (file, metadata) = self
            .run(move |d| {
                let (mut file, metadata) = open_regular(d, &path, OpenOptions::new().read(true))?;
                let metadata =
                    convert_metadata(&cap_std::fs::Metadata::from_just_metadata(metadata));
                seek(&mut file, metadata.size)?;
                Ok((file, metadata))
            })
            .await?;
        Ok(OpenedFile {
            reader: Box::new(CachedReader::new(file, offset)),
            metadata,
        })
    }

    async fn open_write(&self, path: &str, mode: WriteMode) -> io::Result<Box<dyn FileWriter>> {
        let path = disk_path(path)?;
        if let Some(writer) = open_existing_cached(&self.root, &path, mode) {
            return Ok(Box::new(writer));
        }
        let path = path.into_owned();
        let writer = self
            .run(move |d| open_for_write(d, &path, mode, false))
            .await?;
        Ok(Box::new(writer))
    }

    async fn open_write_planned(
        &self,
        path: &str,
        plan: WritePlanner,
    ) -> io::Result<Box<dyn FileWriter>> {
        let path = disk_path(path)?;
        // An existing file the kernel has in its caches is planned for here, and opened here too if it can be.
        if let Some((_, existing)) = open_cached(&self.root, &path, Access::Lookup) {
            let target = plan(Some(&existing))?;
            if !target.exclusive {
                return self.open_write(&target.path, target.mode).await;
            }
            let (path, mode) = (disk_path(&target.path)?.into_owned(), target.mode);
            let writer = self
                .run(move |d| open_for_write(d, &path, mode, true))
                .await?;
            return Ok(Box::new(writer));
        }
        let path = path.into_owned();
        let writer = self
            .run(move |d| {
                let existing = match d.metadata(path) {
                    Ok(meta) => Some(convert_metadata(&meta)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                let target = plan(existing.as_ref())?;
                open_for_write(d, &disk_path(&target.path)?, target.mode, target.exclusive)
            })
            .await?;
        Ok(Box::new(writer))
    }

    async fn reopen_write(
        &self,
        path: &str,
        offset: u64,
        unique_id: u128,
    ) -> io::Result<Box<dyn FileWriter>> {
        let path = disk_path(path)?.into_owned();
        let writer = self
            .run(move |d| reopen_for_write(d, &path, offset, unique_id))
            .await?;
        Ok(Box::new(writer))
    }

    async fn create_dir(&self, path: &str) -> io::Result<()> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| d.create_dir(path)).await
    }

    async fn remove_dir(&self, path: &str) -> io::Result<()> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| d.remove_dir(path)).await
    }

    async fn remove_file(&self, path: &str) -> io::Result<()> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| d.remove_file(path)).await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (disk_path(from)?.into_owned(), disk_path(to)?.into_owned());
        self.run(move |d| d.rename(from, d, to)).await
    }

    async fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (disk_path(from)?.into_owned(), disk_path(to)?.into_owned());
        self.run(move |d| rename_noreplace(d, &from, &to)).await
    }

    async fn set_modified(&self, path: &str, time: SystemTime) -> io::Result<()> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| {
            d.set_times(
                path,
                None,
                Some(SystemTimeSpec::Absolute(
                    cap_std::time::SystemTime::from_std(time),
                )),
            )
        })
        .await
    }

    async fn set_mode(&self, path: &str, mode: u32) -> io::Result<()> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| {
            d.set_permissions(path, cap_std::fs::Permissions::from_mode(mode & 0o7777))
        })
        .await
    }

    async fn set_len(&self, path: &str, len: u64) -> io::Result<()> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| {
            d.open_with(path, OpenOptions::new().write(true))?
                .set_len(len)
        })
        .await
    }

    async fn read_link(&self, path: &str) -> io::Result<String> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| {
            d.read_link_contents(path)
                .map(|target| names::from_disk(target.as_os_str()).into_owned())
        })
        .await
    }

    async fn symlink(&self, target: &str, link: &str) -> io::Result<()> {
        let (target, link) = (
            names::to_disk(target)?.into_owned(),
            disk_path(link)?.into_owned(),
        );
        self.run(move |d| symlink_in_real_dir(d, &target, &link))
            .await
    }

    async fn hard_link(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (disk_path(from)?.into_owned(), disk_path(to)?.into_owned());
        self.run(move |d| d.hard_link(from, d, to)).await
    }

    async fn free_space(&self) -> io::Result<Option<u64>> {
        self.run(|d| {
            use std::os::fd::AsRawFd;
            let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
            // SAFETY: the fd is a valid open directory for the duration of the call and `st` is writable.
            let rc = unsafe { libc::fstatvfs(d.as_raw_fd(), st.as_mut_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fstatvfs succeeded, so it filled `st`.
            let st = unsafe { st.assume_init() };
            Ok(Some(st.f_bavail.saturating_mul(st.f_frsize)))
        })
        .await
    }

    async fn disk_usage(&self, path: &str) -> io::Result<QuotaUsage> {
        let path = disk_path(path)?.into_owned();
        self.run(move |d| {
            let mut usage = QuotaUsage::default();
            // Files with several names: each name is a file, but their bytes are stored (and counted) once.
            let mut linked = std::collections::HashSet::new();
            // Directories still to walk are kept as paths and opened one at a time: a home with thousands of
            // directories would otherwise hold a descriptor for each, up to the open-file limit.
            let mut pending = vec![std::path::PathBuf::from(path)];
            while let Some(dir_path) = pending.pop() {
                let dir = d.open_dir(&dir_path)?;
                for entry in dir.entries()? {
                    let entry = entry?;
                    let file_type = entry.file_type()?;
                    if file_type.is_dir() {
                        pending.push(dir_path.join(entry.file_name()));
                    } else if file_type.is_file() {
                        let meta = entry.metadata()?;
                        usage.files += 1;
                        if meta.nlink() < 2 || linked.insert((meta.dev(), meta.ino())) {
                            usage.bytes += meta.len();
                        }
                    }
                }
            }
            Ok(usage)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CoreError;
    use crate::storage::WriteTarget;
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn storage() -> (tempfile::TempDir, LocalStorage) {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let s = LocalStorage::open(&home).await.unwrap();
        std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
        (tmp, s)
    }

    #[test]
    fn listings_nobody_reads_hold_no_storage_thread() {
        // Two blocking threads only: listings that the client stopped reading must not take them from the
        // session's other operations.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Without the fix this hangs (the third listing cannot even open); the timeout turns that into a failure.
        let stalled_listings = async {
            let (tmp, s) = storage().await;
            for i in 0..8 * LISTING_BATCH {
                std::fs::write(tmp.path().join(format!("home/f{i:04}")), b"").unwrap();
            }
            let mut stalled = Vec::new();
            for _ in 0..8 {
                let mut listing = s.read_dir("").await.unwrap();
                assert!(listing.next().await.unwrap().is_ok());
                stalled.push(listing);
            }
            assert!(s.metadata("f0001").await.is_ok());
            // And each stalled listing still reads to its end, in full.
            for mut listing in stalled {
                let mut n = 1;
                while let Some(entry) = listing.next().await {
                    entry.unwrap();
                    n += 1;
                }
                assert_eq!(n, 8 * LISTING_BATCH);
            }
        };
        let listed = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), stalled_listings).await
        });
        listed.expect("storage operations waited behind stalled listings");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn cached_opens_take_regular_files_inside_the_root_only() {
        let (tmp, s) = storage().await;
        let home = tmp.path().join("home");
        std::fs::write(home.join("f"), b"0123456789").unwrap();
        std::fs::create_dir(home.join("d")).unwrap();
        std::os::unix::fs::symlink("f", home.join("inside")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), home.join("abs")).unwrap();
        std::os::unix::fs::symlink("../secret", home.join("rel")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            home.join("fifo").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Looked at once, so that the kernel has every name cached.
        for name in ["f", "d", "inside", "abs", "rel", "fifo"] {
            let _ = std::fs::symlink_metadata(home.join(name));
        }
        let (file, meta) = open_cached(&s.root, OsStr::new("f"), Access::Read)
            .expect("a cached regular file opens inline");
        assert_eq!(meta.size, 10);
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
        // A symlink inside the root may be followed inline or left to the blocking pool (the kernel does not
        // always follow links from its caches alone), never to anything but its target.
        if let Some((_, meta)) = open_cached(&s.root, OsStr::new("inside"), Access::Read) {
            assert_eq!(meta.size, 10);
        }
        // A FIFO without a writer would block an open without O_NONBLOCK: this returns at once.
        for other in [
            "d",
            "abs",
            "rel",
            "fifo",
            "../secret",
            "/etc/passwd",
            "missing",
        ] {
            assert!(
                open_cached(&s.root, OsStr::new(other), Access::Read).is_none(),
                "{other}"
            );
        }
        let mut opened = s.open_read("f", 4).await.unwrap();
        let mut out = String::new();
        opened.reader.read_to_string(&mut out).await.unwrap();
        assert_eq!((out.as_str(), opened.metadata.size), ("456789", 10));
    }

    /// An upload over a cached file is planned for and opened on the calling thread; whatever could wait for the
    /// disk (a truncation, a creation) is left to the blocking pool, with the same outcome.
    #[tokio::test]
    async fn cached_write_opens_replace_and_append_inline() {
        let (tmp, s) = storage().await;
        let home = tmp.path().join("home");
        std::fs::write(home.join("f"), b"0123456789").unwrap();
        let _ = std::fs::metadata(home.join("f"));
        let (_, looked) =
            open_cached(&s.root, OsStr::new("f"), Access::Lookup).expect("looked at inline");
        let blocking = s.metadata("f").await.unwrap();
        assert_eq!(
            (looked.kind, looked.size, looked.unique_id, looked.mode),
            (
                blocking.kind,
                blocking.size,
                blocking.unique_id,
                blocking.mode
            )
        );
        let (file, _) =
            open_cached(&s.root, OsStr::new("f"), Access::Append).expect("opened inline");
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(flags.contains(rustix::fs::OFlags::APPEND));
        assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
        let truncating = WriteMode::At {
            offset: 2,
            truncate: true,
        };
        for mode in [WriteMode::CreateNew, truncating] {
            assert!(open_existing_cached(&s.root, OsStr::new("f"), mode).is_none());
        }
        let replacing =
            open_existing_cached(&s.root, OsStr::new("f"), WriteMode::Truncate).expect("inline");
        assert_eq!(replacing.opened().size, 10);
        drop(replacing);

        let planned = |mode| -> WritePlanner {
            Box::new(move |existing: Option<&Metadata>| {
                assert_eq!(existing.map(|m| m.size), Some(10));
                Ok(WriteTarget {
                    path: "f".into(),
                    mode,
                    exclusive: false,
                })
            })
        };
        let mut w = s
            .open_write_planned("f", planned(WriteMode::Truncate))
            .await
            .unwrap();
        w.write_last(b"abc".to_vec()).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(home.join("f")).unwrap(), b"abc");
        std::fs::write(home.join("f"), b"0123456789").unwrap();
        for (mode, expected) in [
            (WriteMode::Append, &b"0123456789xy"[..]),
            (truncating, b"01xy"),
        ] {
            let mut w = s.open_write_planned("f", planned(mode)).await.unwrap();
            w.write_last(b"xy".to_vec()).await.unwrap();
            w.shutdown().await.unwrap();
            assert_eq!(std::fs::read(home.join("f")).unwrap(), expected);
            std::fs::write(home.join("f"), b"0123456789").unwrap();
        }
    }

    /// Without O_NONBLOCK on the blocking-pool opens, each of these waited for the FIFO's other end for ever.
    #[tokio::test]
    async fn fifos_are_refused_without_waiting_for_a_peer() {
        let (tmp, s) = storage().await;
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tmp.path().join("home/fifo").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        let not_regular = |e: io::Error| {
            assert!(
                matches!(CoreError::from(e), CoreError::NotARegularFile),
                "wrong error"
            )
        };
        let opens = async {
            not_regular(s.open_read("fifo", 0).await.err().expect("read"));
            for mode in [
                WriteMode::Truncate,
                WriteMode::Append,
                WriteMode::At {
                    offset: 0,
                    truncate: false,
                },
            ] {
                // Opened for writing, a FIFO without a reader fails with ENXIO rather than opening.
                not_regular(s.open_write("fifo", mode).await.err().expect("write"));
            }
            // With a reader at the other end the open succeeds, and the file is refused after it.
            let reader = std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(tmp.path().join("home/fifo"))
                .unwrap();
            not_regular(
                s.open_write("fifo", WriteMode::Truncate)
                    .await
                    .err()
                    .expect("write with a reader"),
            );
            drop(reader);
        };
        tokio::time::timeout(Duration::from_secs(30), opens)
            .await
            .expect("an open waited for the FIFO's other end");
    }

    #[tokio::test]
    async fn symlink_pointing_outside_is_not_followed() {
        let (tmp, s) = storage().await;
        std::os::unix::fs::symlink(tmp.path().join("secret"), tmp.path().join("home/abs")).unwrap();
        std::os::unix::fs::symlink("../secret", tmp.path().join("home/rel")).unwrap();
        for link in ["abs", "rel"] {
            assert!(s.open_read(link, 0).await.is_err(), "{link} escaped");
            assert!(
                s.open_write(link, WriteMode::Truncate).await.is_err(),
                "{link} escaped for writing"
            );
            assert!(s.metadata(link).await.is_err());
        }
        assert_eq!(
            std::fs::read(tmp.path().join("secret")).unwrap(),
            b"outside"
        );
    }

    /// The review's escape: a link made through a directory that is itself a link to a shallower one.
    #[tokio::test]
    async fn links_are_not_made_through_linked_directories() {
        let (tmp, s) = storage().await;
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("a/b")).unwrap();
        std::os::unix::fs::symlink("../..", home.join("a/b/up")).unwrap();
        // As the client names it, a/b/up/x is three levels deep, so ../../../secret would stay inside; on disk the
        // link would be home/x, and the target one level outside.
        let e = s.symlink("../../../secret", "a/b/up/x").await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(std::fs::symlink_metadata(home.join("x")).is_err());
        s.symlink("../f", "a/b/link").await.unwrap();
        assert_eq!(
            std::fs::read_link(home.join("a/b/link")).unwrap(),
            Path::new("../f")
        );
        s.symlink("f", "top").await.unwrap();
        assert_eq!(
            std::fs::read_link(home.join("top")).unwrap(),
            Path::new("f")
        );
    }

    #[tokio::test]
    async fn dot_dot_cannot_leave_the_root() {
        let (_tmp, s) = storage().await;
        assert!(s.open_read("../secret", 0).await.is_err());
        assert!(s.read_dir("..").await.is_err());
        assert!(s.create_dir("../evil").await.is_err());
    }

    #[tokio::test]
    async fn write_at_offset_truncates_and_resumes() {
        let (_tmp, s) = storage().await;
        let mut w = s.open_write("f", WriteMode::Truncate).await.unwrap();
        w.write_all(b"hello world").await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let mut w = s
            .open_write(
                "f",
                WriteMode::At {
                    offset: 5,
                    truncate: true,
                },
            )
            .await
            .unwrap();
        w.write_all(b"!!").await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let mut r = s.open_read("f", 3).await.unwrap();
        assert_eq!(r.metadata.size, 7);
        let mut out = String::new();
        r.reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "lo!!");
    }

    #[tokio::test]
    async fn listing_shows_each_entry_as_symlink_metadata_does() {
        let (tmp, s) = storage().await;
        let home = tmp.path().join("home");
        std::fs::write(home.join("file"), b"12345").unwrap();
        std::fs::create_dir(home.join("dir")).unwrap();
        std::os::unix::fs::symlink("file", home.join("link")).unwrap();
        std::os::unix::fs::symlink("../secret", home.join("outside")).unwrap();
        std::fs::write(home.join("caf\u{e9}"), b"").unwrap();
        let mut stream = s.read_dir("").await.unwrap();
        let mut seen = Vec::new();
        while let Some(entry) = stream.next().await {
            let entry = entry.unwrap();
            let own = s.symlink_metadata(&entry.name).await.unwrap();
            let m = &entry.metadata;
            // Reading a symlink's target touches its access time.
            if m.kind != FileKind::Symlink {
                assert_eq!(m.accessed, own.accessed, "{}", entry.name);
            }
            assert_eq!(
                (
                    m.kind,
                    m.size,
                    m.modified,
                    m.mode,
                    m.nlink,
                    m.uid,
                    m.gid,
                    m.unique_id
                ),
                (
                    own.kind,
                    own.size,
                    own.modified,
                    own.mode,
                    own.nlink,
                    own.uid,
                    own.gid,
                    own.unique_id
                ),
                "{}",
                entry.name
            );
            seen.push((entry.name, entry.link_target));
        }
        seen.sort();
        let expected = [
            ("caf\u{e9}", None),
            ("dir", None),
            ("file", None),
            ("link", Some("file")),
            ("outside", Some("../secret")),
        ];
        let expected: Vec<(String, Option<String>)> = expected
            .iter()
            .map(|(n, t)| (n.to_string(), t.map(str::to_owned)))
            .collect();
        assert_eq!(seen, expected);
    }

    /// A name on disk that is not UTF-8 is listed with its bytes escaped, and reaches the file by that name in every
    /// operation; escapes that spell a UTF-8 name are refused, not taken as a second name of that file.
    #[tokio::test]
    async fn names_that_are_not_utf8_work_by_their_escaped_name() {
        let (tmp, s) = storage().await;
        let home = tmp.path().join("home");
        let on_disk = |bytes: &[u8]| home.join(OsStr::from_bytes(bytes));
        std::fs::write(on_disk(b"caf\xe9"), b"latin-1").unwrap();
        std::os::unix::fs::symlink(OsStr::from_bytes(b"caf\xe9"), home.join("link")).unwrap();
        let mut stream = s.read_dir("").await.unwrap();
        let mut seen = Vec::new();
        while let Some(entry) = stream.next().await {
            let entry = entry.unwrap();
            seen.push((entry.name, entry.link_target));
        }
        seen.sort();
        let escaped = "caf\u{EFE9}";
        assert_eq!(
            seen,
            [
                (escaped.to_owned(), None),
                ("link".to_owned(), Some(escaped.to_owned()))
            ]
        );
        assert_eq!(s.read_link("link").await.unwrap(), escaped);
        assert_eq!(s.metadata(escaped).await.unwrap().size, 7);
        let mut opened = s.open_read(escaped, 0).await.unwrap();
        let mut out = String::new();
        opened.reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "latin-1");

        s.create_dir("d\u{EFFF}").await.unwrap();
        s.rename(escaped, "d\u{EFFF}/caf\u{EFE9}").await.unwrap();
        s.rename_noreplace("d\u{EFFF}/caf\u{EFE9}", "d\u{EFFF}/\u{EF80}")
            .await
            .unwrap();
        assert_eq!(std::fs::read(on_disk(b"d\xff/\x80")).unwrap(), b"latin-1");
        s.symlink("d\u{EFFF}/\u{EF80}", "l\u{EF80}").await.unwrap();
        assert_eq!(
            std::fs::read_link(on_disk(b"l\x80")).unwrap().as_os_str(),
            OsStr::from_bytes(b"d\xff/\x80")
        );
        let mut w = s
            .open_write("d\u{EFFF}/new\u{EFE9}", WriteMode::Truncate)
            .await
            .unwrap();
        w.write_all(b"12").await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(
            s.disk_usage("d\u{EFFF}").await.unwrap(),
            QuotaUsage { bytes: 9, files: 2 }
        );
        s.remove_file("d\u{EFFF}/\u{EF80}").await.unwrap();
        s.remove_file("d\u{EFFF}/new\u{EFE9}").await.unwrap();
        s.remove_dir("d\u{EFFF}").await.unwrap();
        assert!(!on_disk(b"d\xff").exists());

        // C3 A9, escaped, spells "é": the file "caf\u{e9}" under another name, past any rule written for its own.
        std::fs::write(home.join("caf\u{e9}"), b"utf-8").unwrap();
        let alias = "caf\u{EFC3}\u{EFA9}";
        let invalid_name = |e: io::Error| {
            assert!(
                matches!(CoreError::from(e), CoreError::InvalidName(_)),
                "wrong error"
            )
        };
        invalid_name(s.open_read(alias, 0).await.err().expect("read"));
        invalid_name(s.metadata(alias).await.unwrap_err());
        invalid_name(s.remove_file(alias).await.unwrap_err());
        invalid_name(s.rename("caf\u{e9}", alias).await.unwrap_err());
        invalid_name(s.symlink(alias, "l").await.unwrap_err());
        assert_eq!(std::fs::read(home.join("caf\u{e9}")).unwrap(), b"utf-8");
    }

    #[tokio::test]
    async fn a_rescan_counts_every_name_but_the_bytes_of_a_linked_file_once() {
        let (tmp, s) = storage().await;
        let home = tmp.path().join("home");
        std::fs::create_dir(home.join("d")).unwrap();
        std::fs::write(home.join("a"), [0u8; 100]).unwrap();
        std::fs::hard_link(home.join("a"), home.join("b")).unwrap();
        std::fs::hard_link(home.join("a"), home.join("d/c")).unwrap();
        std::fs::write(home.join("d/e"), [0u8; 7]).unwrap();
        assert_eq!(
            s.disk_usage("").await.unwrap(),
            QuotaUsage {
                bytes: 107,
                files: 4
            }
        );
    }

    #[tokio::test]
    async fn a_rename_without_replacing_leaves_what_is_there() {
        let (tmp, s) = storage().await;
        let home = tmp.path().join("home");
        std::fs::create_dir(home.join("d")).unwrap();
        std::fs::write(home.join("d/a"), b"a").unwrap();
        std::fs::write(home.join("d/b"), b"b").unwrap();
        let e = s.rename_noreplace("d/a", "d/b").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(home.join("d/b")).unwrap(), b"b");
        s.rename_noreplace("d/a", "c").await.unwrap();
        assert_eq!(std::fs::read(home.join("c")).unwrap(), b"a");
        assert!(s.rename_noreplace("c", "../escaped").await.is_err());
        assert!(!tmp.path().join("escaped").exists());
    }

    #[tokio::test]
    async fn listing_streams_every_entry() {
        let (tmp, s) = storage().await;
        for i in 0..300 {
            std::fs::write(tmp.path().join(format!("home/f{i}")), b"x").unwrap();
        }
        let mut stream = s.read_dir("").await.unwrap();
        let mut n = 0;
        while let Some(e) = stream.next().await {
            assert_eq!(e.unwrap().metadata.size, 1);
            n += 1;
        }
        assert_eq!(n, 300);
        assert_eq!(
            s.disk_usage("").await.unwrap(),
            QuotaUsage {
                bytes: 300,
                files: 300
            }
        );
    }
}
