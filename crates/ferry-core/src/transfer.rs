//! Uploads and downloads in progress. An [`Upload`] reserves quota for every chunk before writing it, so an upload
//! is cut off at the quota instead of overrunning it; both publish their event when they end, however they end.
//! While it runs, an upload's file is registered with the account's [`crate::quota::QuotaTracker`], so that
//! other operations on the file cannot give back bytes the upload believes counted; an atomic upload also pins the
//! file it replaces, and may pass the quota by that file's bytes, which it gives back when it replaces it.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::account::Permission;
use crate::error::{CoreError, CoreResult};
use crate::events::EventKind;
use crate::quota::{Registration, Released};
use crate::session::Session;
use crate::storage::{sendfile, FileChange, FileReader, FileState, FileWriter, Metadata};
use crate::vpath::VirtualPath;

mod pump;
pub use pump::{PumpEnd, PumpError};

/// How uploads that start from zero reach their final name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UploadMode {
    /// Write the file in place.
    #[default]
    Direct,
    /// Write an upload that replaces the whole file to a temporary name in the same directory (reserved: see
    /// [`is_upload_temp_name`]) and rename it into place on success; uploads that keep part of the file write in
    /// place. If a new file's upload breaks off, the partial data is moved to the final name so that the client
    /// can resume it; an existing file, or one created at the name meanwhile, is never replaced by a partial one.
    Atomic,
}

/// What follows the upload's name in the name of an atomic upload's temporary file.
const TEMP_MARK: &str = ".ferry-upload-";
/// Longest part of the upload's name kept in its temporary file's name, in bytes.
const TEMP_STEM_MAX: usize = 200;
/// Hex digits of the random part of a temporary file's name.
const TEMP_RANDOM_DIGITS: usize = 16;

/// The hidden name an atomic upload of `name` is written under until it completes: random, so that no one can
/// place anything at it beforehand, and short enough for any file system (the name is cut to 200 bytes). Names of
/// this form are reserved (see [`is_upload_temp_name`]).
pub(crate) fn upload_temp_name(name: &str) -> String {
    let mut end = name.len().min(TEMP_STEM_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        ".{}{TEMP_MARK}{:0width$x}",
        name.get(..end).unwrap_or("file"),
        rand::random::<u64>(),
        width = TEMP_RANDOM_DIGITS
    )
}

/// Whether `name` has the form of an atomic upload's temporary file: `.NAME.ferry-upload-` and 16 lower-case hex
/// digits. Such names are reserved: sessions treat them as if nothing were there, and listings leave them out, so
/// that no client can read, move, delete or replace a file an upload is writing (its quota accounts rely on that).
pub fn is_upload_temp_name(name: &str) -> bool {
    let Some(stem) = name.strip_prefix('.') else {
        return false;
    };
    let Some(split) = stem.len().checked_sub(TEMP_MARK.len() + TEMP_RANDOM_DIGITS) else {
        return false;
    };
    let (Some(upload), Some(mark), Some(random)) = (
        stem.get(..split),
        stem.get(split..split + TEMP_MARK.len()),
        stem.get(split + TEMP_MARK.len()..),
    ) else {
        return false;
    };
    !upload.is_empty()
        && upload.len() <= TEMP_STEM_MAX
        && mark == TEMP_MARK
        && random
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where an atomic upload is written until it completes.
pub(crate) struct TempTarget {
    pub temp: VirtualPath,
    /// The file at the final name when the upload started, if there was one: pinned with the quota tracker
    /// ([`crate::quota::QuotaTracker::pin_replaced`]) until the upload ends, by this registration.
    pub replaces: Option<Registration>,
    /// The bytes counted for that file when it was pinned, by which the upload may pass the byte quota.
    pub allowance: u64,
}

/// An upload in progress. End it with [`Upload::finish`] or [`Upload::fail`]; if it is dropped instead, it is
/// recorded as failed in the background.
pub struct Upload {
    state: Option<UploadState>,
}

struct UploadState {
    session: Session,
    writer: Box<dyn FileWriter>,
    path: VirtualPath,
    temp: Option<TempTarget>,
    position: u64,
    /// The file's length as far as this upload knows it: writes within it are counted already.
    size: u64,
    /// The file written (its identity), as registered with the quota tracker.
    registration: Registration,
    /// Bytes this upload counted for growing the file.
    grown: u64,
    /// Bytes at the start of the file that existed before the upload and that it may not overwrite (0 when the
    /// account may overwrite here).
    overwrite_floor: u64,
    /// Net change of stored bytes caused by this upload (truncation counts negative).
    bytes_delta: i64,
    files_delta: i64,
    transferred: u64,
    started: Instant,
}

pub(crate) struct UploadParts {
    pub session: Session,
    pub writer: Box<dyn FileWriter>,
    pub path: VirtualPath,
    pub temp: Option<TempTarget>,
    pub position: u64,
    pub size: u64,
    /// Registered with the quota tracker ([`crate::quota::QuotaTracker::join_upload`]); the upload leaves it.
    pub registration: Registration,
    pub overwrite_floor: u64,
    pub bytes_delta: i64,
    pub files_delta: i64,
}

impl Upload {
    pub(crate) fn new(p: UploadParts) -> Self {
        Upload {
            state: Some(UploadState {
                session: p.session,
                writer: p.writer,
                path: p.path,
                temp: p.temp,
                position: p.position,
                size: p.size,
                registration: p.registration,
                grown: 0,
                overwrite_floor: p.overwrite_floor,
                bytes_delta: p.bytes_delta,
                files_delta: p.files_delta,
                transferred: 0,
                started: Instant::now(),
            }),
        }
    }

    /// The final path of the file.
    pub fn path(&self) -> Option<&VirtualPath> {
        self.state.as_ref().map(|s| &s.path)
    }

    /// Bytes written so far.
    pub fn transferred(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.transferred)
    }

    /// How many bytes to gather before each write: `wanted`, or less when the session's upload rate would take
    /// much more than a tenth of a second for them (see [`Upload::write`]: writes wait for the rate).
    pub fn buffer_size(&self, wanted: usize) -> usize {
        let pace = self.state.as_ref().and_then(|s| s.session.upload_pace());
        pace.map_or(wanted, |pace| wanted.min(pace.piece()))
    }

    /// Writes `data` at the current position, after reserving any growth of the file against the quota.
    pub async fn write(&mut self, data: &[u8]) -> CoreResult<()> {
        self.write_parts(&[data]).await
    }

    /// Writes `data` at the current position as [`Upload::write`] does, handing the buffer itself to the storage
    /// (see [`crate::storage::FileWriter::write_owned`]): returns an empty buffer to fill next, which may be
    /// unallocated.
    pub async fn write_owned(&mut self, data: Vec<u8>) -> CoreResult<Vec<u8>> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        let len = data.len() as u64;
        let growth = s.reserve_growth(len)?;
        let spare = match s.writer.write_owned(data).await {
            Ok(spare) => spare,
            Err(e) => {
                s.session.quota().release_bytes(growth);
                return Err(e.into());
            }
        };
        s.advance(len, growth);
        pace_upload(&s.session, len).await;
        Ok(spare)
    }

    /// Writes `data` at the current position as [`Upload::write_owned`] does, as the last bytes of the upload: the
    /// storage may close the file in the same step. Nothing more may be written; end with [`Upload::finish`].
    pub async fn write_last(&mut self, data: Vec<u8>) -> CoreResult<()> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        let len = data.len() as u64;
        let growth = s.reserve_growth(len)?;
        // The file of a changed upload stays open, to be looked at when the upload ends.
        let written = if s.session.quota().upload_changed(s.registration) {
            s.writer.write_owned(data).await.map(drop)
        } else {
            s.writer.write_last(data).await
        };
        if let Err(e) = written {
            s.session.quota().release_bytes(growth);
            return Err(e.into());
        }
        s.advance(len, growth);
        pace_upload(&s.session, len).await;
        Ok(())
    }

    /// Writes `parts` one after another at the current position, as [`Upload::write`] does with their
    /// concatenation but without copying them into one buffer first: storage that takes vectored writes gets them
    /// in one call.
    pub async fn write_parts(&mut self, parts: &[&[u8]]) -> CoreResult<()> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let growth = s.reserve_growth(len)?;
        if let Err(e) = write_all_parts(&mut s.writer, parts).await {
            s.session.quota().release_bytes(growth);
            return Err(e.into());
        }
        s.advance(len, growth);
        pace_upload(&s.session, len).await;
        Ok(())
    }

    /// Writes `data` at `offset`, for protocols whose clients write blocks out of order (SFTP). Writing where the
    /// upload already is costs nothing extra; anywhere else the file is reopened at `offset`. Quota is reserved for
    /// any growth as in [`Upload::write`]; data that existed before the upload may only be overwritten with the
    /// `overwrite` permission.
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> CoreResult<()> {
        self.write_parts_at(offset, &[data]).await
    }

    /// Writes `parts` one after another from `offset`, as [`Upload::write_at`] does with their concatenation (see
    /// [`Upload::write_parts`]).
    pub async fn write_parts_at(&mut self, offset: u64, parts: &[&[u8]]) -> CoreResult<()> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        if offset != s.position {
            if offset < s.overwrite_floor {
                return Err(CoreError::PermissionDenied(Permission::Overwrite));
            }
            // Buffered data must reach the file before another handle writes to it.
            s.writer.shutdown().await?;
            // The same file, or an error: never a new file, nor one whose bytes this upload does not hold counted.
            let target = s.temp.as_ref().map_or(&s.path, |t| &t.temp);
            s.writer = s
                .session
                .storage()
                .reopen_write(target.relative(), offset, s.registration.id)
                .await?;
            s.position = offset;
        }
        self.write_parts(parts).await
    }

    /// Hands buffered data to the storage, so that other readers of the file see it.
    pub async fn flush(&mut self) -> CoreResult<()> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        s.writer.flush().await?;
        Ok(())
    }

    /// The metadata of the file being written (an atomic upload's temporary file), whatever name it has now, once
    /// the data written so far has reached it.
    pub async fn metadata(&mut self) -> CoreResult<Metadata> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        s.writer.flush().await?;
        Ok(s.writer.metadata().await?)
    }

    /// Reads up to `len` bytes at `offset` of the file being written, whatever name it has now, once the data
    /// written so far has reached it (empty at the end): a client may read what it writes. Needs `download`.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> CoreResult<Vec<u8>> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        s.session.check(Permission::Download, &s.path)?;
        s.writer.flush().await?;
        Ok(s.writer.read_at(offset, len).await?)
    }

    /// Truncates or extends the file being written to `len` bytes, whatever name it has now, with the rules of
    /// [`Session::set_len`]: growing needs `upload` and counts against the quota as a write would, shrinking needs
    /// `overwrite`, and the bytes cut stay counted until the upload ends and finds the file changed (see
    /// `crate::quota`). Writes go on where they were.
    pub async fn set_len(&mut self, len: u64) -> CoreResult<()> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        s.writer.flush().await?;
        let now = s.writer.metadata().await?.size;
        if len > now {
            s.session.check(Permission::Upload, &s.path)?;
        } else if len < now {
            s.session.check(Permission::Overwrite, &s.path)?;
        }
        let growth = len.saturating_sub(s.size);
        if growth > 0 {
            let allowance = s.temp.as_ref().map_or(0, |t| t.allowance);
            s.session.quota().reserve_bytes_beyond(growth, allowance)?;
        }
        if let Err(e) = s.writer.change(FileChange::Len(len)).await {
            s.session.quota().release_bytes(growth);
            return Err(e.into());
        }
        s.size += growth;
        s.bytes_delta += growth as i64;
        s.grown += growth;
        if len < now {
            s.session.quota().shrunk_by_upload(s.registration);
        }
        Ok(())
    }

    /// Sets the permission bits of the file being written, whatever name it has now, with the rules of
    /// [`Session::set_mode`].
    pub async fn set_mode(&mut self, mode: u32) -> CoreResult<()> {
        self.change_attribute(FileChange::Mode(mode)).await
    }

    /// Sets the modification time of the file being written, whatever name it has now, with the rules of
    /// [`Session::set_modified`]. It is set once the data written so far has reached the file, and an atomic
    /// upload keeps it when it takes its final name; later writes change it again.
    pub async fn set_modified(&mut self, time: SystemTime) -> CoreResult<()> {
        self.change_attribute(FileChange::Modified(time)).await
    }

    async fn change_attribute(&mut self, change: FileChange) -> CoreResult<()> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        let writer = &mut s.writer;
        let apply = async move {
            writer.flush().await?;
            writer.change(change).await
        };
        s.session.change_attribute(&s.path, change, apply).await
    }

    /// Completes the upload: flushes, moves an atomic upload into place, records usage and the event.
    pub async fn finish(mut self) -> CoreResult<u64> {
        let Some(s) = self.state.take() else {
            return Err(CoreError::Aborted);
        };
        detached(finish_upload(s))
            .await
            .unwrap_or(Err(CoreError::Aborted))
    }

    /// Ends the upload as failed because of `reason`, keeping what was written (see [`UploadMode::Atomic`]).
    pub async fn fail(mut self, reason: impl fmt::Display) {
        if let Some(s) = self.state.take() {
            detached(fail_upload(s, reason.to_string(), true)).await;
        }
    }

    /// Ends the upload as failed before its data could start (FTP: the data connection never came). A file it was
    /// to replace is left as it was, as vsftpd leaves it, rather than emptied: a firewall in the way of a passive
    /// connection must not cost the user the file. Once data could come, [`Upload::fail`] empties the file even if
    /// nothing arrived, so that a client resuming by size finds nothing of the old file to append to.
    pub async fn fail_unstarted(mut self, reason: impl fmt::Display) {
        if let Some(mut s) = self.state.take() {
            keep_untouched_file(&mut s);
            detached(fail_upload(s, reason.to_string(), true)).await;
        }
    }
}

/// Runs the end of an upload as a task of its own and waits for it (`None` if it panicked). A caller cancelled on
/// the way (an SSH channel's task ends with its connection) would otherwise leave the upload registered with the
/// quota tracker for good, its usage unstored: the end waits for the account's names lock, which another session
/// may hold across a long deletion.
async fn detached<T: Send + 'static>(end: impl Future<Output = T> + Send + 'static) -> Option<T> {
    tokio::spawn(end).await.ok()
}

/// Completes the upload (see [`Upload::finish`]).
async fn finish_upload(mut s: UploadState) -> CoreResult<u64> {
    match complete(&mut s).await {
        Ok(()) => {
            let transferred = s.transferred;
            record(s, None, None).await;
            Ok(transferred)
        }
        Err(e) => {
            let refused = matches!(e, CoreError::AlreadyExists);
            fail_upload(s, e.to_string(), !refused).await;
            Err(e)
        }
    }
}

/// Waits until the session's upload rate, if any, allows `len` more bytes. (A function of the session alone: the
/// upload's writer, which is not `Sync`, must not be borrowed across the wait.)
async fn pace_upload(session: &Session, len: u64) {
    if let Some(pace) = session.upload_pace() {
        pace.moved(len).await;
    }
}

impl UploadState {
    /// Reserves quota for the growth of the file that writing `len` bytes at the current position causes, and
    /// returns it.
    fn reserve_growth(&self, len: u64) -> CoreResult<u64> {
        let growth = (self.position + len).saturating_sub(self.size);
        if growth > 0 {
            let allowance = self.temp.as_ref().map_or(0, |t| t.allowance);
            self.session
                .quota()
                .reserve_bytes_beyond(growth, allowance)?;
        }
        Ok(growth)
    }

    /// Accounts for `len` bytes written at the current position, which grew the file by `growth`.
    fn advance(&mut self, len: u64, growth: u64) {
        self.position += len;
        self.size = self.size.max(self.position);
        self.bytes_delta += growth as i64;
        self.grown += growth;
        self.transferred += len;
    }

    /// Leaves the quota tracker's registration of the file, giving back what it counts beyond the file if this was
    /// the file's last upload and the file changed meanwhile. `known`: the file's state, when the caller knows it
    /// (it deleted the file); otherwise it is looked at if needed, through the writer or, once the writer has
    /// closed it after the last write, at the upload's name.
    ///
    /// Leaves under [`crate::quota::QuotaTracker::lock_names`]: an operation that has looked at the file and is
    /// about to delete, replace or shrink it then finds it still registered and leaves its accounts to this leave.
    async fn leave(&mut self, known: Option<FileState>) {
        // The running write ends before the lock is taken, so that only the look at the file waits under it.
        let _ = self.writer.flush().await;
        let session = self.session.clone();
        let quota = session.quota();
        let names = quota.lock_names().await;
        let now = match quota.leave_needs_state(self.registration) {
            Some(token) => {
                let state = match known {
                    Some(state) => Some(state),
                    None => match self.writer.state().await {
                        Ok(Some(state)) => Some(state),
                        _ => state_at_name(&session, &self.path, self.registration).await,
                    },
                };
                state.map(|state| (token, state))
            }
            None => None,
        };
        let released = quota.leave_upload(self.registration, self.grown, now);
        drop(names);
        self.count(released);
    }

    /// Adds to the usage this upload stores what the quota tracker gave back or counted when a registration left.
    fn count(&mut self, released: Released) {
        self.bytes_delta += released.charged as i64 - released.bytes as i64;
        self.files_delta -= released.files as i64;
    }

    /// Drops the pin of `replaced`, the file an atomic upload set out to replace, giving back what is counted for it
    /// beyond what it holds now if the pin is its last registration and it changed: everything when it lost its
    /// last name meanwhile. `token` is [`crate::quota::QuotaTracker::sole_registration`], taken before `known`,
    /// the file's state if the caller knows it; otherwise the file is looked at under the final name, where it
    /// was ([`state_at_name`]). Called with [`crate::quota::QuotaTracker::lock_names`] held, so that no deletion,
    /// rename or resize comes between the look and the release.
    async fn unpin(
        &mut self,
        replaced: Registration,
        token: Option<u64>,
        known: Option<FileState>,
    ) {
        let quota = self.session.quota();
        let state = match (token, known) {
            (Some(_), Some(known)) => Some(known),
            (Some(_), None) if quota.upload_changed(replaced) => {
                state_at_name(&self.session, &self.path, replaced).await
            }
            _ => None,
        };
        let released = quota.leave_upload(replaced, 0, token.zip(state));
        self.count(released);
    }
}

/// The state of the file of `registration`, an upload's or a pin's, for a file the upload cannot look at through its
/// writer: deleted if the quota tracker saw its last name go (a file found at `path` now is another one, which may
/// even have its identity), else as found at `path`, its final name; unknown (`None`) if it is not there (it lives
/// on elsewhere, or the look failed: its counts stay, erring high). With [`crate::quota::QuotaTracker::lock_names`]
/// held. (A function of the session alone, as [`pace_upload`] is.)
async fn state_at_name(
    session: &Session,
    path: &VirtualPath,
    registration: Registration,
) -> Option<FileState> {
    if session.quota().unlinked(registration) {
        return Some(FileState {
            unique_id: registration.id,
            size: 0,
            nlink: 0,
        });
    }
    session
        .storage()
        .metadata(path.relative())
        .await
        .ok()
        .map(|meta| meta.state())
        .filter(|state| state.unique_id == registration.id)
}

/// Writes all of `parts`, in order: with vectored writes where `writer` takes them (each call may take part of
/// them), one part after another otherwise.
async fn write_all_parts<W>(writer: &mut W, parts: &[&[u8]]) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    if parts.len() < 2 || !writer.is_write_vectored() {
        for part in parts {
            writer.write_all(part).await?;
        }
        return Ok(());
    }
    let mut rest: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < rest.len() {
        let slices: Vec<IoSlice<'_>> = rest.iter().skip(first).map(|p| IoSlice::new(p)).collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while let Some(part) = rest.get_mut(first) {
            if written < part.len() {
                *part = part.get(written..).unwrap_or_default();
                break;
            }
            written -= part.len();
            first += 1;
        }
    }
    Ok(())
}

/// Flushes the upload and moves an atomic upload into place. The temporary file of a new file takes the final
/// name only if nothing has appeared there meanwhile; otherwise, as for an upload over an existing file, whatever is
/// there now is replaced if the account may overwrite it (or it is the very file the upload set out to replace),
/// and its usage given back. An upload that used the allowance of the file it pinned must replace that file, or
/// find it deleted, or else fit the quota without it. On an error the temporary file and the pin are left for
/// [`fail_upload`].
async fn complete(s: &mut UploadState) -> CoreResult<()> {
    s.writer.shutdown().await?;
    let Some(temp) = &s.temp else {
        return Ok(());
    };
    let (temp_path, path, replaces, allowance) = (
        temp.temp.clone(),
        s.path.clone(),
        temp.replaces,
        temp.allowance,
    );
    let (from, to) = (temp_path.relative(), path.relative());
    let session = s.session.clone();
    let storage = session.storage();
    if replaces.is_none() {
        match storage.rename_noreplace(from, to).await {
            Ok(()) => {
                s.temp = None;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
    }
    let quota = session.quota();
    let names = quota.lock_names().await;
    let token = replaces.and_then(|id| quota.sole_registration(id));
    // What is replaced now, which need not be what was there when the upload started.
    let old = storage.symlink_metadata(to).await.ok();
    let planned = old
        .as_ref()
        .is_some_and(|old| Some(old.unique_id) == replaces.map(|pin| pin.id));
    if old.is_some() && !planned && !session.allowed(Permission::Overwrite, &path) {
        return Err(CoreError::AlreadyExists);
    }
    // The pinned file's bytes are given back if the rename takes its last name, or if it lost it meanwhile; not if
    // it lives on elsewhere (renamed away, or linked), and then the upload has no allowance.
    let pinned_goes = replaces.is_some_and(|id| {
        quota.unlinked(id) || (planned && old.as_ref().is_some_and(|old| old.nlink <= 1))
    });
    if allowance > 0 && !pinned_goes && !quota.within_byte_quota() {
        return Err(CoreError::QuotaExceeded("byte quota reached"));
    }
    storage.rename(from, to).await?;
    // A new file counted itself when it started: it takes the place of the one it replaced, whose count goes.
    let counted_as_new = replaces.is_none();
    s.temp = None;
    let mut known = None;
    match old.filter(Metadata::is_file) {
        Some(old) => {
            let (bytes, files) = session.release_name(&old, u64::from(counted_as_new));
            s.bytes_delta += bytes;
            s.files_delta += files;
            if planned {
                // The file as the rename left it: one name fewer.
                known = Some(FileState {
                    unique_id: old.unique_id,
                    size: old.size,
                    nlink: old.nlink.saturating_sub(1),
                });
            }
        }
        // The file to replace is gone (its file given back, or still counted by the pin until it is dropped
        // below): this one is new.
        None if !counted_as_new => {
            quota.add_file();
            s.files_delta += 1;
        }
        None => {}
    }
    if let Some(replaced) = replaces {
        s.unpin(replaced, token, known).await;
    }
    drop(names);
    Ok(())
}

/// Ends a failed upload. The partial data of an atomic upload of a new file is moved to the final name, so that the
/// client can resume, unless something has appeared there meanwhile; otherwise the temporary file is deleted and
/// its usage given back. An existing file is never replaced by partial data. `keep`: whether the data may take the
/// final name (not when it was refused it).
async fn fail_upload(mut s: UploadState, error: String, keep: bool) {
    let _ = s.writer.shutdown().await;
    let mut known = None;
    if let Some(temp) = s.temp.take() {
        let session = s.session.clone();
        let storage = session.storage();
        let quota = session.quota();
        // Once the temporary file is deleted its inode may go to a new file, which must not register before the
        // release below has marked this one's registration.
        let names = quota.lock_names().await;
        let kept = keep
            && temp.replaces.is_none()
            && storage
                .rename_noreplace(temp.temp.relative(), s.path.relative())
                .await
                .is_ok();
        if !kept && storage.remove_file(temp.temp.relative()).await.is_ok() {
            // Registered, so normally left counted until the upload leaves below, knowing the file deleted.
            let files = u64::from(s.files_delta > 0);
            if quota.release_unlinked(s.registration.id, s.size, files) {
                s.bytes_delta -= s.size as i64;
                s.files_delta -= files as i64;
            }
            known = Some(FileState {
                unique_id: s.registration.id,
                size: 0,
                nlink: 0,
            });
        }
        // The file it was to replace keeps its place: dropping the pin accounts for what others did to it.
        if let Some(replaced) = temp.replaces {
            let token = quota.sole_registration(replaced);
            s.unpin(replaced, token, None).await;
        }
        drop(names);
    }
    record(s, Some(error), known).await;
}

/// Leaves the file an upload that wrote nothing was to replace as it was, and counts its old bytes again (see
/// [`Upload::fail_unstarted`]). Only where nothing else has touched the file's accounts since (see
/// [`crate::quota::QuotaTracker::restore_replaced`]); otherwise the file is emptied as the upload would have, so
/// that the accounts hold.
fn keep_untouched_file(s: &mut UploadState) {
    let released = u64::try_from(-s.bytes_delta).unwrap_or(0);
    if s.transferred > 0 || s.grown > 0 || s.temp.is_some() || released == 0 {
        return;
    }
    if s.writer.holds_old_data() && s.session.quota().restore_replaced(s.registration, released) {
        s.writer.keep_old_data();
        s.bytes_delta = 0;
    }
}

/// Leaves the file's registration (see [`UploadState::leave`]), then stores the usage and publishes the event.
async fn record(mut s: UploadState, error: Option<String>, known: Option<FileState>) {
    s.leave(known).await;
    s.session.persist_usage(s.bytes_delta, s.files_delta).await;
    s.session.publish_transfer(
        EventKind::Upload,
        &s.path,
        s.transferred,
        s.started.elapsed(),
        error,
    );
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(fail_upload(s, CoreError::Aborted.to_string(), true));
            }
        }
    }
}

/// A download in progress. End it with [`Download::finish`] or [`Download::fail`]; if dropped, it is recorded
/// as failed.
pub struct Download {
    session: Session,
    reader: Box<dyn FileReader>,
    path: VirtualPath,
    size: u64,
    transferred: u64,
    started: Instant,
    done: bool,
    /// Whether [`Download::read`] has been used (reads may run ahead of the file position sends start from).
    read_from: bool,
    /// Where the download started in the file: while only sends move the file position, it is this plus
    /// `transferred`.
    offset: u64,
    /// The file position up to which the page cache has been checked for direct sends.
    cached_to: u64,
}

impl Download {
    pub(crate) fn new(
        session: Session,
        reader: Box<dyn FileReader>,
        path: VirtualPath,
        size: u64,
        offset: u64,
    ) -> Self {
        Download {
            session,
            reader,
            path,
            size,
            transferred: 0,
            started: Instant::now(),
            done: false,
            read_from: false,
            offset,
            cached_to: 0,
        }
    }

    pub fn path(&self) -> &VirtualPath {
        &self.path
    }

    /// The file's size when it was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn transferred(&self) -> u64 {
        self.transferred
    }

    /// Reads the next chunk into `buf`; `0` at the end of the file.
    pub async fn read(&mut self, buf: &mut [u8]) -> CoreResult<usize> {
        self.read_from = true;
        let pace = self.session.download_pace();
        let piece = pace.map_or(buf.len(), |pace| buf.len().min(pace.piece()));
        let n = self.reader.read(&mut buf[..piece]).await?;
        self.transferred += n as u64;
        if let Some(pace) = pace {
            pace.moved(n as u64).await;
        }
        Ok(n)
    }

    /// Makes the next read start at `offset` of the file opened, whatever name it has now (an offset beyond its end
    /// reads nothing). Direct sends are no longer possible.
    pub fn seek(&mut self, offset: u64) -> CoreResult<()> {
        self.read_from = true;
        self.reader.reposition(offset)?;
        Ok(())
    }

    /// The metadata of the file opened, whatever name it has now.
    pub async fn metadata(&mut self) -> CoreResult<Metadata> {
        Ok(self.reader.metadata().await?)
    }

    /// Sets the permission bits of the file opened, whatever name it has now, with the rules of
    /// [`Session::set_mode`].
    pub async fn set_mode(&mut self, mode: u32) -> CoreResult<()> {
        let change = FileChange::Mode(mode);
        let apply = self.reader.change(change);
        self.session
            .change_attribute(&self.path, change, apply)
            .await
    }

    /// Sets the modification time of the file opened, whatever name it has now, with the rules of
    /// [`Session::set_modified`].
    pub async fn set_modified(&mut self, time: SystemTime) -> CoreResult<()> {
        let change = FileChange::Modified(time);
        let apply = self.reader.change(change);
        self.session
            .change_attribute(&self.path, change, apply)
            .await
    }

    /// Whether [`Download::send_to`] can be used: the file is local, has not been read from, and the session's
    /// downloads have no rate (direct sends are not paced: paced downloads go through [`Download::read`]).
    pub fn can_send_directly(&self) -> bool {
        self.direct_fd().is_some()
    }

    /// The file's descriptor if [`Download::can_send_directly`].
    fn direct_fd(&self) -> Option<BorrowedFd<'_>> {
        if self.read_from || self.session.download_pace().is_some() {
            return None;
        }
        self.reader.local_fd()
    }

    /// Makes sure the next bytes to send are in the page cache, reading them on the blocking pool if they are not,
    /// so that [`Download::send_to`] does not wait for the disk; cheap when they are (one probe per
    /// [`sendfile::WINDOW`]). Returns how many bytes from the current position may be sent.
    pub async fn prepare_send(&mut self) -> CoreResult<u64> {
        let Some(fd) = self.direct_fd() else {
            return Err(unsupported().into());
        };
        let position = self.offset + self.transferred;
        if position < self.cached_to {
            return Ok(self.cached_to - position);
        }
        let end = position
            .saturating_add(sendfile::WINDOW)
            .min(self.size.max(position));
        if end > position && !sendfile::is_cached(fd, end - 1) {
            let file = fd.try_clone_to_owned()?;
            tokio::task::spawn_blocking(move || sendfile::load(file, position, end - position))
                .await
                .map_err(io::Error::other)??;
        }
        self.cached_to = position.saturating_add(sendfile::WINDOW);
        Ok(sendfile::WINDOW)
    }

    /// Sends up to `max` bytes from the file straight to `socket` (sendfile(2)), without copying them through this
    /// process; 0 at the end of the file. On a non-blocking socket it returns `WouldBlock` when the socket buffer
    /// is full. Call [`Download::prepare_send`] before each call.
    pub fn send_to(&mut self, socket: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let fd = self.direct_fd().ok_or_else(unsupported)?;
        let n = sendfile::send(fd, socket, max)?;
        self.transferred += n as u64;
        Ok(n)
    }

    pub fn finish(mut self) {
        self.record(None);
    }

    pub fn fail(mut self, reason: impl fmt::Display) {
        self.record(Some(reason.to_string()));
    }

    fn record(&mut self, error: Option<String>) {
        if !std::mem::replace(&mut self.done, true) {
            let elapsed: Duration = self.started.elapsed();
            self.session.publish_transfer(
                EventKind::Download,
                &self.path,
                self.transferred,
                elapsed,
                error,
            );
        }
    }
}

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "direct sends need an unread local file",
    )
}

impl Drop for Download {
    fn drop(&mut self) {
        self.record(Some(CoreError::Aborted.to_string()));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::account::{Account, AccountStore, Permissions, Quota};
    use crate::auth::{hash_password, Authenticator};
    use crate::events::{EventBus, Protocol};
    use crate::server::{ServerCore, ServerSettings};
    use crate::session::ClientInfo;
    use crate::storage::WriteMode;
    use crate::store::SqliteAccountStore;

    /// A session for an account with `permissions` and a byte quota of `max_bytes`.
    pub(crate) async fn session(
        tmp: &tempfile::TempDir,
        permissions: Permissions,
        max_bytes: Option<u64>,
    ) -> Session {
        let store = SqliteAccountStore::open(&tmp.path().join("db")).unwrap();
        let mut account = Account::new("u", tmp.path().join("home"));
        account.password_hash = Some(hash_password("pw").unwrap());
        account.permissions = permissions;
        account.quota = Quota {
            max_bytes,
            max_files: None,
        };
        store.create(&account).await.unwrap();
        let store: Arc<dyn AccountStore> = Arc::new(store);
        let core = ServerCore::new(
            Authenticator::new(store),
            EventBus::default(),
            ServerSettings::default(),
        );
        let client = ClientInfo::new(Protocol::Sftp, "127.0.0.1".parse().unwrap());
        core.login("u", "pw", &client).await.unwrap()
    }

    pub(crate) fn path(s: &str) -> VirtualPath {
        VirtualPath::parse(s).unwrap()
    }

    /// An upload of `/f` by an account with a quota of 10 bytes.
    async fn upload_of_ten_bytes_at_most() -> (tempfile::TempDir, Session, Upload) {
        let tmp = tempfile::tempdir().unwrap();
        let session = session(&tmp, Permissions::all(), Some(10)).await;
        let up = session
            .open_write(&path("/f"), WriteMode::Truncate)
            .await
            .unwrap();
        (tmp, session, up)
    }

    #[tokio::test]
    async fn write_at_places_out_of_order_blocks_and_counts_growth_once() {
        let (tmp, session, mut up) = upload_of_ten_bytes_at_most().await;
        up.write_at(4, b"4567").await.unwrap();
        up.write_at(0, b"0123").await.unwrap();
        up.write_at(8, b"89").await.unwrap();
        assert!(matches!(
            up.write_at(10, b"x").await,
            Err(CoreError::QuotaExceeded(_))
        ));
        up.write_at(2, b"ab").await.unwrap();
        up.finish().await.unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("home/f")).unwrap(),
            b"01ab456789"
        );
        assert_eq!(session.quota().usage().bytes, 10);
    }

    #[tokio::test]
    async fn an_upload_resizes_and_looks_at_its_own_file_after_its_name_is_taken() {
        let (tmp, session, mut up) = upload_of_ten_bytes_at_most().await;
        let home = tmp.path().join("home");
        up.write(b"0123").await.unwrap();
        std::fs::rename(home.join("f"), home.join("g")).unwrap();
        std::fs::write(home.join("f"), b"other").unwrap();
        assert_eq!(up.metadata().await.unwrap().size, 4);
        up.set_len(8).await.unwrap();
        assert_eq!(session.quota().usage().bytes, 8);
        assert!(matches!(
            up.set_len(11).await,
            Err(CoreError::QuotaExceeded(_))
        ));
        up.set_len(2).await.unwrap();
        assert_eq!(up.read_at(0, 10).await.unwrap(), b"01");
        up.finish().await.unwrap();
        assert_eq!(std::fs::read(home.join("g")).unwrap(), b"01");
        assert_eq!(std::fs::read(home.join("f")).unwrap(), b"other");
        // The bytes cut stayed counted until the upload ended.
        assert_eq!(session.quota().usage().bytes, 2);
    }

    #[tokio::test]
    async fn shrinking_an_uploads_file_needs_overwrite() {
        let (tmp, session) = old_file_without_overwrite().await;
        let mut up = session
            .open_write(&path("/f"), WriteMode::Append)
            .await
            .unwrap();
        assert!(matches!(
            up.set_len(1).await,
            Err(CoreError::PermissionDenied(Permission::Overwrite))
        ));
        up.set_len(5).await.unwrap();
        up.finish().await.unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("home/f")).unwrap(),
            b"old\0\0"
        );
    }

    #[tokio::test]
    async fn a_download_moved_to_an_offset_reads_the_file_it_opened() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        std::fs::write(tmp.path().join("home/f"), b"0123456789").unwrap();
        let session = session(&tmp, Permissions::all(), None).await;
        let mut down = session.open_read(&path("/f"), 0).await.unwrap();
        std::fs::remove_file(tmp.path().join("home/f")).unwrap();
        assert_eq!(down.metadata().await.unwrap().size, 10);
        down.seek(6).unwrap();
        let mut buf = [0u8; 8];
        let n = down.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"6789");
        down.finish();
    }

    /// A home holding `f` ("old"), and a session that may upload but not overwrite.
    async fn old_file_without_overwrite() -> (tempfile::TempDir, Session) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        std::fs::write(tmp.path().join("home/f"), b"old").unwrap();
        let no_overwrite = "list,download,upload".parse().unwrap();
        let session = session(&tmp, no_overwrite, None).await;
        (tmp, session)
    }

    #[tokio::test]
    async fn write_at_below_existing_data_needs_overwrite() {
        let (tmp, session) = old_file_without_overwrite().await;
        let mut up = session
            .open_write(&path("/f"), WriteMode::Append)
            .await
            .unwrap();
        up.write_at(3, b"new").await.unwrap();
        up.write_at(5, b"W").await.unwrap();
        assert!(matches!(
            up.write_at(1, b"X").await,
            Err(CoreError::PermissionDenied(Permission::Overwrite))
        ));
        up.flush().await.unwrap();
        assert_eq!(std::fs::read(tmp.path().join("home/f")).unwrap(), b"oldneW");
        up.finish().await.unwrap();
    }

    #[tokio::test]
    async fn an_upload_that_cannot_be_opened_gives_back_its_file_reservation() {
        let tmp = tempfile::tempdir().unwrap();
        let session = session(&tmp, Permissions::all(), None).await;
        assert!(matches!(
            session
                .open_write(&path("/missing/f"), WriteMode::Truncate)
                .await,
            Err(CoreError::NotFound)
        ));
        assert_eq!(session.quota().usage().files, 0);
        std::fs::create_dir_all(tmp.path().join("home/d")).unwrap();
        assert!(matches!(
            session.open_write(&path("/d"), WriteMode::Truncate).await,
            Err(CoreError::IsADirectory)
        ));
        assert_eq!(session.quota().usage().files, 0);
    }

    #[tokio::test]
    async fn a_refused_upload_leaves_the_file_alone() {
        let (tmp, session) = old_file_without_overwrite().await;
        assert!(matches!(
            session.open_write(&path("/f"), WriteMode::Truncate).await,
            Err(CoreError::PermissionDenied(Permission::Overwrite))
        ));
        assert!(matches!(
            session.open_write(&path("/f"), WriteMode::CreateNew).await,
            Err(CoreError::AlreadyExists)
        ));
        assert!(matches!(
            session
                .open_write(
                    &path("/f"),
                    WriteMode::At {
                        offset: 4,
                        truncate: false
                    }
                )
                .await,
            Err(CoreError::InvalidArgument(_))
        ));
        assert_eq!(std::fs::read(tmp.path().join("home/f")).unwrap(), b"old");
        let mut up = session
            .open_write(&path("/g"), WriteMode::CreateNew)
            .await
            .unwrap();
        up.write(b"new").await.unwrap();
        up.finish().await.unwrap();
        assert_eq!(session.quota().usage().files, 1);
    }

    #[tokio::test]
    async fn a_download_checks_its_offset_against_the_opened_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("home/d")).unwrap();
        std::fs::write(tmp.path().join("home/f"), b"0123").unwrap();
        let session = session(&tmp, Permissions::all(), None).await;
        assert!(matches!(
            session.open_read(&path("/f"), 5).await,
            Err(CoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            session.open_read(&path("/d"), 0).await,
            Err(CoreError::IsADirectory)
        ));
        let mut down = session.open_read(&path("/f"), 4).await.unwrap();
        assert_eq!(down.size(), 4);
        assert_eq!(down.read(&mut [0u8; 8]).await.unwrap(), 0);
        let mut down = session.open_read(&path("/f"), 1).await.unwrap();
        let mut buf = [0u8; 8];
        let n = down.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"123");
    }

    #[tokio::test]
    async fn write_parts_at_lands_parts_in_order_and_counts_growth_once() {
        let (tmp, session, mut up) = upload_of_ten_bytes_at_most().await;
        up.write_parts_at(2, &[b"23", b"", b"456"]).await.unwrap();
        up.write_parts_at(0, &[b"0", b"1"]).await.unwrap();
        assert!(matches!(
            up.write_parts_at(7, &[b"78", b"9x"]).await,
            Err(CoreError::QuotaExceeded(_))
        ));
        up.write_parts_at(7, &[b"7", b"89"]).await.unwrap();
        up.finish().await.unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("home/f")).unwrap(),
            b"0123456789"
        );
        assert_eq!(session.quota().usage().bytes, 10);
    }

    #[tokio::test]
    async fn owned_writes_land_in_order_and_a_chunk_over_the_quota_is_not_written() {
        let (tmp, session, mut up) = upload_of_ten_bytes_at_most().await;
        let mut buf = up.write_owned(b"0123".to_vec()).await.unwrap();
        buf.extend_from_slice(b"4567");
        buf = up.write_owned(buf).await.unwrap();
        assert!(buf.is_empty());
        buf.extend_from_slice(b"89x");
        assert!(matches!(
            up.write_owned(buf).await,
            Err(CoreError::QuotaExceeded(_))
        ));
        let buf = up.write_owned(b"89".to_vec()).await.unwrap();
        assert!(buf.is_empty());
        assert_eq!(up.transferred(), 10);
        up.finish().await.unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("home/f")).unwrap(),
            b"0123456789"
        );
        assert_eq!(session.quota().usage().bytes, 10);
    }

    /// Takes vectored writes, at most `limit` bytes per call.
    struct Trickle {
        data: Vec<u8>,
        limit: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(self.limit - taken);
                self.data.extend_from_slice(&buf[..n]);
                taken += n;
            }
            self.calls += 1;
            std::task::Poll::Ready(Ok(taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn temporary_names_are_recognised_exactly() {
        for name in ["x", "a.b", &"l".repeat(300), "caf\u{e9}"] {
            let temp = upload_temp_name(name);
            assert!(is_upload_temp_name(&temp), "{temp}");
        }
        for other in [
            "x",
            ".x.ferry-upload-",
            ".x.ferry-upload-0123456789abcdef0",
            ".x.ferry-upload-0123456789ABCDEF",
            ".x.ferry-upload-0123456789abcdeg",
            "..ferry-upload-0123456789abcdef",
            "x.ferry-upload-0123456789abcdef",
            ".x.ferry-uploads0123456789abcdef",
            ".ferry-upload-0123456789abcdef",
        ] {
            assert!(!is_upload_temp_name(other), "{other}");
        }
        assert!(is_upload_temp_name(".x.ferry-upload-0123456789abcdef"));
    }

    #[tokio::test]
    async fn parts_written_in_pieces_arrive_whole_and_in_order() {
        let parts: [&[u8]; 5] = [b"abcd", b"", b"e", b"fghijkl", b"mn"];
        let mut partial = Trickle {
            data: Vec::new(),
            limit: 3,
            calls: 0,
        };
        write_all_parts(&mut partial, &parts).await.unwrap();
        assert_eq!(partial.data, b"abcdefghijklmn");
        assert_eq!(partial.calls, 5);
        let mut whole = Trickle {
            data: Vec::new(),
            limit: usize::MAX,
            calls: 0,
        };
        write_all_parts(&mut whole, &parts).await.unwrap();
        assert_eq!(whole.data, b"abcdefghijklmn");
        assert_eq!(whole.calls, 1);
    }

    /// Two appending uploads of a name that did not exist: the first, created exclusively because it was counted as
    /// a new file, was opened without `O_APPEND` for a while, and wrote over the second's data.
    #[tokio::test]
    async fn two_appends_to_a_new_file_keep_both() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        let session = session(&tmp, Permissions::all(), None).await;
        let mut first = session
            .open_write(&path("/log"), WriteMode::Append)
            .await
            .unwrap();
        first.write(b"AAAA").await.unwrap();
        first.flush().await.unwrap();
        let mut second = session
            .open_write(&path("/log"), WriteMode::Append)
            .await
            .unwrap();
        second.write(b"BBBB").await.unwrap();
        second.flush().await.unwrap();
        first.write(b"CCCC").await.unwrap();
        first.finish().await.unwrap();
        second.finish().await.unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("home/log")).unwrap(),
            b"AAAABBBBCCCC"
        );
    }

    /// A name that is a dangling symbolic link inside the home is written through, as before uploads counted as new
    /// files were created exclusively (which fails on any entry at the name).
    #[tokio::test]
    async fn an_upload_through_a_dangling_symlink_creates_its_target() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        std::os::unix::fs::symlink("target", tmp.path().join("home/f")).unwrap();
        let session = session(&tmp, Permissions::all(), None).await;
        let mut up = session
            .open_write(&path("/f"), WriteMode::Truncate)
            .await
            .unwrap();
        up.write(b"data").await.unwrap();
        up.finish().await.unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("home/target")).unwrap(),
            b"data"
        );
    }

    /// `finish` cancelled while it waits for the account's names lock (held here; a long deletion in another
    /// session holds it in use, and an SSH channel's task is cancelled when its connection ends): the upload still
    /// leaves its registration and stores its usage.
    #[tokio::test]
    async fn an_upload_whose_finish_is_cancelled_still_accounts_for_itself() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("home")).unwrap();
        let session = session(&tmp, Permissions::all(), None).await;
        let mut up = session
            .open_write(&path("/f"), WriteMode::Truncate)
            .await
            .unwrap();
        up.write(&[b'x'; 40]).await.unwrap();
        let names = session.quota().lock_names().await;
        let cancelled = tokio::time::timeout(Duration::from_millis(50), up.finish()).await;
        assert!(cancelled.is_err(), "finish waits for the names lock");
        drop(names);
        // The detached end runs once the lock is free, before the deletion (which waits for the lock after it): the
        // deletion finds the file unregistered and gives it back at once.
        let store = SqliteAccountStore::open(&tmp.path().join("db")).unwrap();
        session.remove(&path("/f")).await.unwrap();
        assert_eq!(session.quota().usage().bytes, 0);
        assert_eq!(store.usage("u").await.unwrap().bytes, 0);
    }
}
