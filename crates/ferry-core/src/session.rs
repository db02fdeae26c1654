//! A logged-in session: every file operation a front-end may perform, as virtual-path operations that check
//! permissions, keep quotas and publish events. Confinement comes from the storage, which is rooted at the home.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::account::{Account, AccountStore, Permission, RateLimits};
use crate::checksum::HashAlgorithm;
use crate::error::{CoreError, CoreResult};
use crate::events::{Event, EventBus, EventKind, Protocol};
use crate::limits::AccountSlot;
use crate::pace::{Pace, Paces};
use crate::quota::QuotaTracker;
use crate::storage::{
    DirStream, FileChange, FileKind, Metadata, Storage, WriteMode, WritePlanner, WriteTarget,
};
use crate::transfer::{
    is_upload_temp_name, upload_temp_name, Download, TempTarget, Upload, UploadMode, UploadParts,
};
use crate::vpath::VirtualPath;

/// Size of the chunks read while hashing a file.
const HASH_CHUNK: usize = 256 * 1024;
/// How many times an upload is planned at most when files keep appearing at its name between its look and its open.
const CREATE_ATTEMPTS: usize = 3;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Who is connected, over what.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub protocol: Protocol,
    pub ip: IpAddr,
    pub session_id: u64,
}

impl ClientInfo {
    /// A new client with a process-unique session id.
    pub fn new(protocol: Protocol, ip: IpAddr) -> Self {
        ClientInfo {
            protocol,
            ip,
            session_id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A logged-in account's view of its home. Cheap to clone; the last clone dropped ends the session (logout).
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
    /// The protocol this handle's events are published under (see [`Session::with_protocol`]).
    protocol: Protocol,
}

struct SessionInner {
    /// Shared with the account's other sessions; holds no credentials.
    account: Arc<Account>,
    client: ClientInfo,
    storage: Arc<dyn Storage>,
    quota: Arc<QuotaTracker>,
    /// Where usage is persisted; `None` for anonymous sessions.
    store: Option<Arc<dyn AccountStore>>,
    events: EventBus,
    upload_mode: UploadMode,
    /// The account's transfer rates; boxed, as most accounts have none and an idle session should stay small.
    paces: Option<Box<Paces>>,
    _slot: Option<AccountSlot>,
}

/// Everything [`Session::new`] needs; built by [`crate::server::ServerCore::login`].
pub struct SessionParts {
    pub account: Arc<Account>,
    pub client: ClientInfo,
    pub storage: Arc<dyn Storage>,
    pub quota: Arc<QuotaTracker>,
    pub store: Option<Arc<dyn AccountStore>>,
    pub events: EventBus,
    pub upload_mode: UploadMode,
    pub slot: Option<AccountSlot>,
}

impl Session {
    pub fn new(p: SessionParts) -> Self {
        let rates = p.account.rates;
        let inner = SessionInner {
            paces: (rates != RateLimits::default()).then(|| Box::new(Paces::new(rates))),
            account: p.account,
            client: p.client,
            storage: p.storage,
            quota: p.quota,
            store: p.store,
            events: p.events,
            upload_mode: p.upload_mode,
            _slot: p.slot,
        };
        let session = Session {
            protocol: inner.client.protocol,
            inner: Arc::new(inner),
        };
        session.publish(EventKind::Login, None, None, None);
        session
    }

    /// The same session, publishing its events under `protocol`: an SSH connection logs in once and then runs
    /// SFTP, SCP or commands on its channels.
    pub fn with_protocol(&self, protocol: Protocol) -> Session {
        Session {
            inner: Arc::clone(&self.inner),
            protocol,
        }
    }

    pub fn account(&self) -> &Account {
        &self.inner.account
    }

    pub fn username(&self) -> &str {
        &self.inner.account.name
    }

    pub fn client(&self) -> &ClientInfo {
        &self.inner.client
    }

    pub fn quota(&self) -> &QuotaTracker {
        &self.inner.quota
    }

    pub(crate) fn storage(&self) -> &dyn Storage {
        &*self.inner.storage
    }

    /// The pace of this session's uploads, if its account has an upload rate.
    pub(crate) fn upload_pace(&self) -> Option<&Pace> {
        self.inner.paces.as_deref().and_then(Paces::upload)
    }

    /// The pace of this session's downloads, if its account has a download rate.
    pub(crate) fn download_pace(&self) -> Option<&Pace> {
        self.inner.paces.as_deref().and_then(Paces::download)
    }

    /// Whether the account may do `permission` at `path`.
    pub fn allowed(&self, permission: Permission, path: &VirtualPath) -> bool {
        self.inner.account.permissions_at(path).contains(permission)
    }

    pub(crate) fn check(&self, permission: Permission, path: &VirtualPath) -> CoreResult<()> {
        if self.allowed(permission, path) {
            Ok(())
        } else {
            Err(CoreError::PermissionDenied(permission))
        }
    }

    /// Metadata of a file or directory (symlinks inside the home are followed).
    pub async fn metadata(&self, path: &VirtualPath) -> CoreResult<Metadata> {
        self.check(Permission::List, &path.parent())?;
        visible(path)?;
        Ok(self.storage().metadata(path.relative()).await?)
    }

    /// Metadata of the entry itself, not following a final symlink.
    pub async fn symlink_metadata(&self, path: &VirtualPath) -> CoreResult<Metadata> {
        self.check(Permission::List, &path.parent())?;
        visible(path)?;
        Ok(self.storage().symlink_metadata(path.relative()).await?)
    }

    /// Streams the entries of a directory, without the temporary files of atomic uploads, and without the targets
    /// of symlinks that lead outside the home (which would show the server's paths; the links themselves fail).
    pub async fn list(&self, path: &VirtualPath) -> CoreResult<DirStream> {
        self.check(Permission::List, path)?;
        visible(path)?;
        let dir = path.clone();
        Ok(self
            .storage()
            .read_dir(path.relative())
            .await?
            .filtering(Box::new(move |entry| {
                if entry
                    .link_target
                    .as_deref()
                    .is_some_and(|target| !dir.holds_link_to(target))
                {
                    entry.link_target = None;
                }
                !is_upload_temp_name(&entry.name)
            })))
    }

    /// Opens a file for download from `offset` on; an offset beyond the end is an error.
    pub async fn open_read(&self, path: &VirtualPath, offset: u64) -> CoreResult<Download> {
        self.check(Permission::Download, path)?;
        visible(path)?;
        let opened = self.storage().open_read(path.relative(), offset).await?;
        let size = opened.metadata.size;
        check_offset(offset, size)?;
        Ok(Download::new(
            self.clone(),
            opened.reader,
            path.clone(),
            size,
            offset,
        ))
    }

    /// Opens a file for upload. Creating needs `upload`; destroying existing data (truncating, writing before the
    /// end without appending) also needs `overwrite`. Writing past the end is an error.
    pub async fn open_write(&self, path: &VirtualPath, mode: WriteMode) -> CoreResult<Upload> {
        if path.is_root() {
            return Err(CoreError::IsADirectory);
        }
        self.check(Permission::Upload, path)?;
        creatable(path)?;
        // A file counted as new must be one: a planned creation is exclusive, and planned again if a file appeared
        // between the look and the open. The last attempt creates as `O_CREAT` does (through a dangling symbolic
        // link, say, where every exclusive creation fails), at the risk of counting a file that just appeared.
        let mut attempt = 1;
        loop {
            let exclusive = attempt < CREATE_ATTEMPTS;
            match self.open_write_planned(path, mode, exclusive).await {
                Err(CoreError::AlreadyExists) if exclusive && mode != WriteMode::CreateNew => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Opens a file for upload as planned from one look at what is at `path`; with `exclusive`, an upload planned
    /// to create the file fails with `AlreadyExists` if one appeared meanwhile.
    async fn open_write_planned(
        &self,
        path: &VirtualPath,
        mode: WriteMode,
        exclusive: bool,
    ) -> CoreResult<Upload> {
        let names = self.quota().lock_names().await;
        let result = self.open_write_locked(path, mode, exclusive).await;
        drop(names);
        result
    }

    async fn open_write_locked(
        &self,
        path: &VirtualPath,
        mode: WriteMode,
        exclusive: bool,
    ) -> CoreResult<Upload> {
        let releases = self.quota().releases();
        // The plan is made where the storage looks at the file, in the same trip as the open; it comes back here,
        // or the reason the upload is refused does.
        let decision: Arc<Mutex<Option<CoreResult<WritePlan>>>> = Arc::default();
        let planner: WritePlanner = {
            let (session, path, decision) = (self.clone(), path.clone(), Arc::clone(&decision));
            Box::new(move |existing| {
                let plan = session.plan_write(&path, mode, existing);
                let target = plan.as_ref().ok().map(|p| p.target(&path, mode, exclusive));
                *lock(&decision) = Some(plan);
                target.ok_or_else(|| io::Error::other("upload refused"))
            })
        };
        let opened = self
            .storage()
            .open_write_planned(path.relative(), planner)
            .await;
        let decided = lock(&decision).take();
        let (mut writer, plan) = match (opened, decided) {
            (Ok(writer), Some(Ok(plan))) => (writer, plan),
            (_, Some(Err(refusal))) => return Err(refusal),
            (Err(e), Some(Ok(plan))) => {
                if plan.files_delta > 0 {
                    self.quota().release_file();
                }
                return Err(e.into());
            }
            (Err(e), None) => return Err(e.into()),
            (Ok(_), None) => return Err(CoreError::Io(io::Error::other("upload was not planned"))),
        };
        // The file is registered with the quota tracker for as long as the upload runs (see `crate::quota`), as
        // the writer found it: the smaller of the two looks, should the file have shrunk in between. Data dropped
        // by truncation is freed there; an atomic upload pins the old file instead, and frees it when it replaces
        // it.
        let opened = writer.opened();
        let quota = self.quota();
        let mut files_delta = plan.files_delta;
        let (size, kept) = match plan.temp {
            Some(_) => (0, 0),
            None => {
                if plan.existing_id.is_some_and(|id| id != opened.unique_id) {
                    // What was planned for was replaced before the open: this may be a new file, not yet counted.
                    quota.add_file();
                    files_delta += 1;
                }
                let size = plan.existing.unwrap_or(0).min(opened.size);
                (size, plan.kept.min(size))
            }
        };
        let mut joined = quota.join_upload(opened.unique_id, size, kept, releases);
        if joined.settle {
            let now = writer.state().await.ok().flatten();
            joined = quota.settle_upload(joined.registration, size, kept, now);
        }
        let temp = match plan.temp {
            Some(temp) => {
                let replaced = plan.existing_id.zip(plan.existing);
                Some(self.pin_replaced(path, replaced, releases, temp).await)
            }
            None => None,
        };
        Ok(Upload::new(UploadParts {
            session: self.clone(),
            writer,
            path: path.clone(),
            temp,
            position: plan.position,
            size: joined.believed,
            registration: joined.registration,
            overwrite_floor: plan.overwrite_floor,
            bytes_delta: -(joined.released as i64),
            files_delta,
        }))
    }

    /// Pins the file an atomic upload to `path` replaces, if there is one (`replaced`: its identity and size when
    /// the plan looked at it; see `crate::quota`), and says where the upload is written. `releases`:
    /// [`QuotaTracker::releases`] from before that look.
    async fn pin_replaced(
        &self,
        path: &VirtualPath,
        replaced: Option<(u128, u64)>,
        releases: u64,
        temp: VirtualPath,
    ) -> TempTarget {
        let Some((replaces, size)) = replaced else {
            return TempTarget {
                temp,
                replaces: None,
                allowance: 0,
            };
        };
        let quota = self.quota();
        let mut pinned = quota.pin_replaced(replaces, size, releases);
        if pinned.settle {
            let now = self
                .storage()
                .metadata(path.relative())
                .await
                .ok()
                .map(|meta| meta.state());
            pinned = quota.settle_upload(pinned.registration, size, size, now);
        }
        TempTarget {
            temp,
            replaces: Some(pinned.registration),
            allowance: pinned.believed,
        }
    }

    /// Decides how an upload to `path` in `mode` proceeds given what is there (`None`: nothing), checking
    /// permissions, and counts a new file against the quota (the last step, so that a refusal reserves nothing).
    fn plan_write(
        &self,
        path: &VirtualPath,
        mode: WriteMode,
        existing: Option<&Metadata>,
    ) -> CoreResult<WritePlan> {
        if existing.is_some_and(Metadata::is_dir) {
            return Err(CoreError::IsADirectory);
        }
        let existing_id = existing.map(|meta| meta.unique_id);
        let existing = existing.map(|meta| meta.size);
        let size = existing.unwrap_or(0);
        let (position, kept) = match mode {
            WriteMode::Truncate => (0, 0),
            WriteMode::CreateNew if existing.is_some() => return Err(CoreError::AlreadyExists),
            WriteMode::CreateNew => (0, 0),
            WriteMode::Append => (size, size),
            WriteMode::At { offset, .. } if offset > size => {
                return Err(CoreError::InvalidArgument(format!(
                    "offset {offset} is beyond the file size {size}"
                )))
            }
            WriteMode::At {
                offset,
                truncate: true,
            } => (offset, offset),
            WriteMode::At {
                offset,
                truncate: false,
            } => (offset, size),
        };
        let destroys_data =
            existing.is_some() && (kept < size || (position < size && mode != WriteMode::Append));
        if destroys_data {
            self.check(Permission::Overwrite, path)?;
        }
        // Only an upload that replaces the whole file goes through a temporary file: one that keeps the rest of
        // the file (`RANG 0 n` and STOR) writes in place, as in direct mode.
        let atomic = self.inner.upload_mode == UploadMode::Atomic && position == 0 && kept == 0;
        let overwrite_floor = if atomic || self.allowed(Permission::Overwrite, path) {
            0
        } else {
            kept
        };
        let temp = if atomic {
            Some(
                path.parent()
                    .join(&upload_temp_name(path.file_name().unwrap_or("file")))?,
            )
        } else {
            None
        };
        let files_delta = if existing.is_none() {
            self.quota().reserve_file()?;
            1
        } else {
            0
        };
        Ok(WritePlan {
            existing,
            existing_id,
            position,
            kept,
            overwrite_floor,
            files_delta,
            temp,
        })
    }

    /// Creates a new file with a unique name in `dir` (FTP STOU) and opens it for upload.
    pub async fn create_unique(&self, dir: &VirtualPath, stem: &str) -> CoreResult<Upload> {
        for attempt in 0..100u32 {
            let name = if attempt == 0 {
                stem.to_owned()
            } else {
                format!("{stem}.{attempt}")
            };
            match self
                .open_write(&dir.join(&name)?, WriteMode::CreateNew)
                .await
            {
                Err(CoreError::AlreadyExists) => continue,
                other => return other,
            }
        }
        Err(CoreError::AlreadyExists)
    }

    /// Deletes a file (not a directory).
    pub async fn remove(&self, path: &VirtualPath) -> CoreResult<()> {
        let result = self.remove_inner(path).await;
        self.publish(EventKind::Delete, Some(path), None, result.as_ref().err());
        result
    }

    async fn remove_inner(&self, path: &VirtualPath) -> CoreResult<()> {
        self.check(Permission::Delete, path)?;
        visible(path)?;
        let names = self.quota().lock_names().await;
        let meta = self.storage().symlink_metadata(path.relative()).await?;
        if meta.is_dir() {
            return Err(CoreError::IsADirectory);
        }
        self.storage().remove_file(path.relative()).await?;
        let (bytes, files) = if meta.is_file() {
            self.release_name(&meta, 1)
        } else {
            (0, 0)
        };
        drop(names);
        self.persist_usage(bytes, files).await;
        Ok(())
    }

    /// Gives back what a name of the file `meta` held now that the name is gone (deleted, or replaced by a
    /// rename): `files` (0 or 1), and the file's bytes unless the file keeps other names (hard links), which still
    /// hold them. A file an upload has open keeps its bytes counted until the upload ends (see `crate::quota`).
    /// Returns the change of usage to persist. Called with [`QuotaTracker::lock_names`] held.
    pub(crate) fn release_name(&self, meta: &Metadata, files: u64) -> (i64, i64) {
        let quota = self.quota();
        if meta.nlink > 1 {
            if files > 0 {
                quota.release_file();
            }
            (0, -(files as i64))
        } else if quota.release_unlinked(meta.unique_id, meta.size, files) {
            (-(meta.size as i64), -(files as i64))
        } else {
            (0, 0)
        }
    }

    pub async fn mkdir(&self, path: &VirtualPath) -> CoreResult<()> {
        let result = async {
            if path.is_root() {
                return Err(CoreError::AlreadyExists);
            }
            self.check(Permission::Mkdir, path)?;
            creatable(path)?;
            Ok(self.storage().create_dir(path.relative()).await?)
        }
        .await;
        self.publish(EventKind::Mkdir, Some(path), None, result.as_ref().err());
        result
    }

    pub async fn rmdir(&self, path: &VirtualPath) -> CoreResult<()> {
        let result = async {
            if path.is_root() {
                return Err(CoreError::AccessDenied);
            }
            self.check(Permission::Rmdir, path)?;
            visible(path)?;
            Ok(self.storage().remove_dir(path.relative()).await?)
        }
        .await;
        self.publish(EventKind::Rmdir, Some(path), None, result.as_ref().err());
        result
    }

    /// Renames a file or directory; replacing an existing file at `to` also needs `overwrite` there.
    pub async fn rename(&self, from: &VirtualPath, to: &VirtualPath) -> CoreResult<()> {
        let result = self.rename_inner(from, to).await;
        self.publish(
            EventKind::Rename,
            Some(from),
            Some(to),
            result.as_ref().err(),
        );
        result
    }

    async fn rename_inner(&self, from: &VirtualPath, to: &VirtualPath) -> CoreResult<()> {
        if from.is_root() || to.is_root() {
            return Err(CoreError::AccessDenied);
        }
        if to != from && to.starts_with(from) {
            return Err(CoreError::InvalidArgument(
                "cannot move a directory into itself".into(),
            ));
        }
        self.check(Permission::Rename, from)?;
        self.check(Permission::Rename, to)?;
        visible(from)?;
        creatable(to)?;
        let names = self.quota().lock_names().await;
        let source = self.storage().symlink_metadata(from.relative()).await?;
        if source.is_dir() && self.inner.account.has_permissions_within(from) {
            return Err(CoreError::AccessDenied);
        }
        if source.kind == FileKind::Symlink && from.parent() != to.parent() {
            // A relative link leads elsewhere from another directory: there it must still lead inside the home, as
            // a new link's target must, so that nothing that walks the home on disk is led out of it.
            let target = self.storage().read_link(from.relative()).await?;
            if !to.parent().holds_link_to(&target) {
                return Err(CoreError::AccessDenied);
            }
        }
        let replaced = match self.storage().symlink_metadata(to.relative()).await {
            // As rename(2): a directory may replace an empty directory (a full one is refused by the storage).
            Ok(meta) if meta.is_dir() && !source.is_dir() => return Err(CoreError::AlreadyExists),
            Ok(meta) if meta.is_dir() => {
                self.check(Permission::Overwrite, to)?;
                None
            }
            Ok(meta) => {
                self.check(Permission::Overwrite, to)?;
                Some(meta)
            }
            Err(_) => None,
        };
        self.storage()
            .rename(from.relative(), to.relative())
            .await?;
        // Renaming a name onto another name of the same file (hard links) changes nothing.
        let replaced = replaced.filter(|m| m.is_file() && m.unique_id != source.unique_id);
        let (bytes, files) = replaced.map_or((0, 0), |meta| self.release_name(&meta, 1));
        drop(names);
        self.persist_usage(bytes, files).await;
        Ok(())
    }

    /// The target of a symlink, as stored, when it leads to a place inside the home (see [`Session::list`]).
    pub async fn read_link(&self, path: &VirtualPath) -> CoreResult<String> {
        self.check(Permission::List, &path.parent())?;
        visible(path)?;
        let target = match self.storage().read_link(path.relative()).await {
            Ok(target) => target,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(CoreError::InvalidArgument("not a symbolic link".into()))
            }
            Err(e) => return Err(e.into()),
        };
        if !path.parent().holds_link_to(&target) {
            return Err(CoreError::AccessDenied);
        }
        Ok(target)
    }

    /// Creates a symlink at `link` to `target`, a path relative to the link's directory or absolute from the home.
    /// A target outside the home is refused; the link is stored relative so that it resolves the same way on disk.
    pub async fn symlink(&self, target: &str, link: &VirtualPath) -> CoreResult<()> {
        self.check_link(link)?;
        let dir = link.parent();
        let target = VirtualPath::resolve_beneath(&dir, target)?;
        visible(&target)?;
        Ok(self
            .storage()
            .symlink(&target.relative_from(&dir), link.relative())
            .await?)
    }

    /// Creates a hard link `to` for the regular file `from`. The new name counts as a file; its bytes are the
    /// file's, counted once for all its names, as a quota rescan counts them. Refused to accounts with a quota:
    /// the bytes of a file with several names are given back only with its last name, so one name could be
    /// deleted, and the others grown, in ways whose accounting a client could play against the quota.
    pub async fn hard_link(&self, from: &VirtualPath, to: &VirtualPath) -> CoreResult<()> {
        self.check_link(to)?;
        self.check(Permission::Download, from)?;
        self.check(Permission::Overwrite, from)?;
        visible(from)?;
        let quota = self.inner.account.quota;
        if quota.max_bytes.is_some() || quota.max_files.is_some() {
            return Err(CoreError::AccessDenied);
        }
        let names = self.quota().lock_names().await;
        let meta = self.storage().symlink_metadata(from.relative()).await?;
        if meta.is_dir() {
            return Err(CoreError::IsADirectory);
        }
        if !meta.is_file() {
            return Err(CoreError::InvalidArgument(
                "only regular files can be hard-linked".into(),
            ));
        }
        self.quota().reserve_file()?;
        if let Err(e) = self
            .storage()
            .hard_link(from.relative(), to.relative())
            .await
        {
            self.quota().release_file();
            return Err(e.into());
        }
        drop(names);
        self.persist_usage(0, 1).await;
        Ok(())
    }

    /// New links need `upload` where they are created. With per-directory permissions they are refused: a link
    /// would reach data through a path whose permissions differ from those of the data's own directory.
    fn check_link(&self, link: &VirtualPath) -> CoreResult<()> {
        self.check(Permission::Upload, link)?;
        creatable(link)?;
        if self.inner.account.dir_permissions.is_empty() {
            Ok(())
        } else {
            Err(CoreError::AccessDenied)
        }
    }

    pub async fn set_modified(&self, path: &VirtualPath, time: SystemTime) -> CoreResult<()> {
        let apply = self.storage().set_modified(path.relative(), time);
        self.change_attribute(path, FileChange::Modified(time), apply)
            .await
    }

    /// Changes the mode or the modification time of `path` with `apply` (on its name, or on a file open under it),
    /// after the checks of [`Session::set_mode`] or [`Session::set_modified`], and publishes the change. Sizes have
    /// rules of their own ([`Session::set_len`]) and are refused here.
    pub(crate) async fn change_attribute(
        &self,
        path: &VirtualPath,
        change: FileChange,
        apply: impl std::future::Future<Output = io::Result<()>>,
    ) -> CoreResult<()> {
        let (kind, checked) = match change {
            FileChange::Mode(mode) => (EventKind::Chmod, self.check_set_mode(path, mode)),
            FileChange::Modified(_) => (
                EventKind::SetTime,
                self.check(Permission::SetTime, path)
                    .and_then(|()| visible(path)),
            ),
            FileChange::Len(_) => {
                return Err(CoreError::InvalidArgument(
                    "a size is not an attribute".into(),
                ))
            }
        };
        let result = match checked {
            Ok(()) => apply.await.map_err(CoreError::from),
            Err(e) => Err(e),
        };
        self.publish(kind, Some(path), None, result.as_ref().err());
        result
    }

    /// Gives a file or directory this session has just created the mode its client asked for, as open(2) and
    /// mkdir(2) take one: allowed to whoever may create it (`upload`, or `mkdir` for a directory), and with group and
    /// other write taken away, as the usual umask of 022 would. Unlike [`Session::set_mode`] it needs no `chmod`, so
    /// that a client uploading a private file keeps it private.
    pub async fn set_creation_mode(
        &self,
        path: &VirtualPath,
        mode: u32,
        kind: FileKind,
    ) -> CoreResult<()> {
        let needed = match kind {
            FileKind::Dir => Permission::Mkdir,
            _ => Permission::Upload,
        };
        self.check(needed, path)?;
        visible(path)?;
        Ok(self
            .storage()
            .set_mode(path.relative(), mode & 0o755)
            .await?)
    }

    /// Changes Unix permission bits (only the 0o777 bits; setuid and friends are refused).
    pub async fn set_mode(&self, path: &VirtualPath, mode: u32) -> CoreResult<()> {
        let apply = self.storage().set_mode(path.relative(), mode);
        self.change_attribute(path, FileChange::Mode(mode), apply)
            .await
    }

    /// Whether `path` may be given `mode` (see [`Session::set_mode`]).
    fn check_set_mode(&self, path: &VirtualPath, mode: u32) -> CoreResult<()> {
        // The home itself keeps the mode the server gave it: `chmod 000 /` would lock its owner out of it (the
        // server, running as that owner, could no longer look inside), as `RMD /` would.
        if path.is_root() {
            return Err(CoreError::AccessDenied);
        }
        self.check(Permission::Chmod, path)?;
        visible(path)?;
        if mode & !0o777 != 0 {
            return Err(CoreError::InvalidArgument(format!(
                "mode {mode:o} not allowed"
            )));
        }
        Ok(())
    }

    /// Truncates or extends a file to `len` bytes: growing it needs `upload` (it adds data, as an append does),
    /// shrinking it `overwrite` (it destroys data). Bytes cut from a file that an upload has open stay counted until
    /// the upload ends (see `crate::quota`).
    pub async fn set_len(&self, path: &VirtualPath, len: u64) -> CoreResult<()> {
        if !self.allowed(Permission::Upload, path) {
            self.check(Permission::Overwrite, path)?;
        }
        visible(path)?;
        let names = self.quota().lock_names().await;
        let meta = self.storage().metadata(path.relative()).await?;
        if meta.is_dir() {
            return Err(CoreError::IsADirectory);
        }
        if len > meta.size {
            self.check(Permission::Upload, path)?;
        } else if len < meta.size {
            self.check(Permission::Overwrite, path)?;
        }
        // Growth is counted from the size seen, or from what is counted for the file if uploads have it open and
        // that is less (one replacing it may empty it any moment): erring high, which their last one settles.
        let quota = self.quota();
        let from = quota
            .counted_for(meta.unique_id)
            .map_or(meta.size, |counted| counted.min(meta.size));
        let growth = len.saturating_sub(from);
        if growth > 0 {
            quota.reserve_bytes(growth)?;
        }
        if let Err(e) = self.storage().set_len(path.relative(), len).await {
            quota.release_bytes(growth);
            return Err(e.into());
        }
        quota.resized_elsewhere(meta.unique_id, growth);
        let released = len < meta.size && quota.release_shrunk(meta.unique_id, meta.size - len);
        drop(names);
        if released {
            self.persist_usage(len as i64 - meta.size as i64, 0).await;
        } else {
            self.persist_usage(growth as i64, 0).await;
        }
        Ok(())
    }

    /// Hashes `length` bytes (to the end when `None`) of a file from `start`, in lower-case hex, and returns the
    /// hash with the range actually covered (`end` exclusive).
    pub async fn checksum(
        &self,
        path: &VirtualPath,
        algorithm: HashAlgorithm,
        start: u64,
        length: Option<u64>,
    ) -> CoreResult<(String, u64, u64)> {
        self.check(Permission::Download, path)?;
        visible(path)?;
        let opened = self.storage().open_read(path.relative(), start).await?;
        let size = opened.metadata.size;
        check_offset(start, size)?;
        let end = length.map_or(size, |l| start.saturating_add(l).min(size));
        let mut reader = opened.reader;
        let mut hasher = algorithm.hasher();
        let mut remaining = end - start;
        let mut buf = vec![0u8; HASH_CHUNK];
        while remaining > 0 {
            use tokio::io::AsyncReadExt;
            let want = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let n = reader.read(&mut buf[..want]).await?;
            if n == 0 {
                break;
            }
            remaining -= n as u64;
            // Hashing is CPU work: keep it off the async runtime.
            let (h, b) = tokio::task::spawn_blocking(move || {
                hasher.update(&buf[..n]);
                (hasher, buf)
            })
            .await
            .map_err(|e| CoreError::Io(std::io::Error::other(e)))?;
            hasher = h;
            buf = b;
        }
        Ok((hasher.finish_hex(), start, end - remaining))
    }

    /// Bytes the account can still store: the smaller of its remaining quota and the free space on disk.
    pub async fn available_space(&self) -> CoreResult<Option<u64>> {
        let free = self.storage().free_space().await?;
        Ok(match (self.quota().remaining_bytes(), free) {
            (Some(q), Some(f)) => Some(q.min(f)),
            (q, f) => q.or(f),
        })
    }

    pub(crate) async fn persist_usage(&self, bytes: i64, files: i64) {
        if bytes == 0 && files == 0 {
            return;
        }
        if let Some(store) = &self.inner.store {
            if let Err(e) = store
                .add_usage(&self.inner.account.name, bytes, files)
                .await
            {
                tracing::error!(user = %self.inner.account.name, error = %e, "cannot store quota usage");
            }
        }
    }

    pub(crate) fn publish_transfer(
        &self,
        kind: EventKind,
        path: &VirtualPath,
        bytes: u64,
        duration: Duration,
        error: Option<String>,
    ) {
        let mut event = self.event(kind, Some(path), None);
        event.bytes = bytes;
        event.duration = duration;
        event.error = error;
        self.inner.events.publish(event);
    }

    pub(crate) fn publish(
        &self,
        kind: EventKind,
        path: Option<&VirtualPath>,
        target: Option<&VirtualPath>,
        error: Option<&CoreError>,
    ) {
        let mut event = self.event(kind, path, target);
        event.error = error.map(ToString::to_string);
        self.inner.events.publish(event);
    }

    fn event(
        &self,
        kind: EventKind,
        path: Option<&VirtualPath>,
        target: Option<&VirtualPath>,
    ) -> Event {
        let mut event = self.inner.base_event(kind);
        event.protocol = self.protocol;
        event.path = path.map(ToString::to_string);
        event.target = target.map(ToString::to_string);
        event.real_path = path.map(|p| {
            self.inner
                .account
                .home
                .join(p.relative())
                .to_string_lossy()
                .into_owned()
        });
        event
    }
}

impl SessionInner {
    fn base_event(&self, kind: EventKind) -> Event {
        Event::new(kind, &self.client, &self.account.name)
    }
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        self.events.publish(self.base_event(EventKind::Logout));
    }
}

/// How an upload opens its file, decided from what was at its path (see [`Session::open_write`]).
struct WritePlan {
    /// The size of the file that was there, if one was.
    existing: Option<u64>,
    /// Its identity.
    existing_id: Option<u128>,
    position: u64,
    /// Bytes of the existing file that the upload keeps.
    kept: u64,
    overwrite_floor: u64,
    /// 1 when the upload creates the file (already counted against the quota).
    files_delta: i64,
    /// Where an atomic upload is written until it completes.
    temp: Option<VirtualPath>,
}

impl WritePlan {
    /// What the storage opens: the temporary file of an atomic upload (created afresh), or the file itself, created
    /// `exclusive`ly where the plan counted it as new.
    fn target(&self, path: &VirtualPath, mode: WriteMode, exclusive: bool) -> WriteTarget {
        match &self.temp {
            // Created, never opened: an entry already at the name (a symlink to another file, say) makes the
            // upload fail rather than write through it.
            Some(temp) => WriteTarget {
                path: temp.relative().to_owned(),
                mode: WriteMode::CreateNew,
                exclusive: true,
            },
            None => WriteTarget {
                path: path.relative().to_owned(),
                mode,
                exclusive: exclusive && self.existing.is_none(),
            },
        }
    }
}

/// Refuses a path to or through an atomic upload's temporary file as if nothing were there (see
/// [`is_upload_temp_name`]).
fn visible(path: &VirtualPath) -> CoreResult<()> {
    if path.components().any(is_upload_temp_name) {
        Err(CoreError::NotFound)
    } else {
        Ok(())
    }
}

/// Refuses to create anything at a name reserved for atomic uploads' temporary files.
fn creatable(path: &VirtualPath) -> CoreResult<()> {
    visible(&path.parent())?;
    if path.file_name().is_some_and(is_upload_temp_name) {
        return Err(CoreError::InvalidName(
            "the name is reserved for uploads in progress".into(),
        ));
    }
    Ok(())
}

/// Reading or hashing from `offset` needs the offset within the file.
fn check_offset(offset: u64, size: u64) -> CoreResult<()> {
    if offset > size {
        return Err(CoreError::InvalidArgument(format!(
            "offset {offset} is beyond the file size {size}"
        )));
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Permissions;
    use crate::transfer::tests::{path, session};

    /// As rename(2): a directory replaces an empty directory, never a full one, and a file never replaces one.
    #[tokio::test]
    async fn a_directory_may_replace_an_empty_directory_only() {
        let tmp = tempfile::tempdir().unwrap();
        let s = session(&tmp, Permissions::all(), None).await;
        let home = tmp.path().join("home");
        for dir in ["src/inner", "empty", "full/x"] {
            std::fs::create_dir_all(home.join(dir)).unwrap();
        }
        std::fs::write(home.join("f"), b"x").unwrap();
        assert!(s.rename(&path("/f"), &path("/empty")).await.is_err());
        assert!(s.rename(&path("/src"), &path("/full")).await.is_err());
        s.rename(&path("/src"), &path("/empty")).await.unwrap();
        assert!(home.join("empty/inner").is_dir());
        assert!(home.join("full/x").is_dir() && home.join("f").is_file());
    }

    /// A link moved to another directory must still lead inside the home from there; within its directory it may
    /// be renamed whatever it points to.
    #[tokio::test]
    async fn links_cannot_be_moved_where_they_would_lead_out_of_the_home() {
        let tmp = tempfile::tempdir().unwrap();
        let s = session(&tmp, Permissions::all(), None).await;
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("a/b")).unwrap();
        std::os::unix::fs::symlink("../other", home.join("a/lnk")).unwrap();
        std::os::unix::fs::symlink("/etc", home.join("a/abs")).unwrap();
        for to in ["/lnk", "/a/b/../../lnk"] {
            let refused = s.rename(&path("/a/lnk"), &path(to)).await;
            assert!(matches!(refused, Err(CoreError::AccessDenied)), "{to}");
        }
        assert!(std::fs::symlink_metadata(home.join("a/lnk")).is_ok());
        s.rename(&path("/a/lnk"), &path("/a/b/lnk")).await.unwrap();
        s.rename(&path("/a/b/lnk"), &path("/a/b/renamed"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_link(home.join("a/b/renamed")).unwrap(),
            std::path::Path::new("../other")
        );
        s.rename(&path("/a/abs"), &path("/a/abs2")).await.unwrap();
        assert!(s.rename(&path("/a/abs2"), &path("/abs")).await.is_err());
    }

    /// Targets that lead outside the home (absolute ones name the server's own file system) are not shown: not in
    /// listings, not by READLINK. The links themselves are listed.
    #[tokio::test]
    async fn link_targets_outside_the_home_are_not_shown() {
        let tmp = tempfile::tempdir().unwrap();
        let s = session(&tmp, Permissions::all(), None).await;
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("d/e")).unwrap();
        std::fs::write(home.join("f"), b"x").unwrap();
        let links = [
            ("d/abs", "/etc/passwd", false),
            ("d/climbs", "../../outside", false),
            ("d/deep", "e/../../f", true),
            ("d/up", "../f", true),
            ("d/e/top", "../../f", true),
        ];
        for (link, target, _) in links {
            std::os::unix::fs::symlink(target, home.join(link)).unwrap();
        }
        let mut shown = std::collections::BTreeMap::new();
        for dir in ["/d", "/d/e"] {
            let mut entries = s.list(&path(dir)).await.unwrap();
            while let Some(entry) = entries.next().await {
                let entry = entry.unwrap();
                shown.insert(format!("{dir}/{}", entry.name), entry.link_target);
            }
        }
        assert!(matches!(
            s.read_link(&path("/f")).await,
            Err(CoreError::InvalidArgument(_))
        ));
        for (link, target, inside) in links {
            let expected = inside.then(|| target.to_owned());
            assert_eq!(shown[&format!("/{link}")], expected, "{link}");
            let read = s.read_link(&path(&format!("/{link}"))).await;
            match read {
                Ok(read) => assert!(inside && read == target, "{link}"),
                Err(e) => assert!(!inside && matches!(e, CoreError::AccessDenied), "{link}"),
            }
        }
    }
}
