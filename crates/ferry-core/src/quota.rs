//! Live quota accounting. One [`QuotaTracker`] per account is shared by all of that account's sessions, so that
//! concurrent uploads reserve space atomically and can never overrun the quota together.
//!
//! # Files that uploads have open
//!
//! An upload counts only what it adds beyond the size it believes its file has: writing over data that is already
//! counted costs nothing. Another operation that shrinks or deletes that file (SFTP SETSTAT or REMOVE, FTP DELE, a
//! rename over it, a truncating upload) would give the file's bytes back at once, and the upload, still believing
//! the old size, would then write them again for free. So the tracker keeps the identities
//! ([`crate::storage::Metadata::unique_id`]) of the files uploads have open: while a file has one, those operations
//! leave its bytes and its file counted, and note that it changed. The last upload of a changed file compares what
//! was counted for it with the file itself when it ends, and gives back the difference (everything, file included,
//! when the file has been deleted). An upload that writes at another offset reopens its file by identity, never
//! creating one (see [`crate::storage::Storage::reopen_write`]).
//!
//! An identity is an inode number, which the kernel gives to a new file once a deleted one is no longer open (an
//! upload whose last write closed its file keeps nothing open). A registered file whose last name went is set apart
//! when a new file of its identity registers, and the uploads of each leave their own by their [`Registration`].
//!
//! # Files that atomic uploads replace
//!
//! An atomic upload writes a new copy beside the file it replaces, so both are on disk until the new copy takes the
//! old one's name. The upload pins the old file ([`QuotaTracker::pin_replaced`]): it is registered as uploads' files
//! are, so that deleting, shrinking or replacing it leaves its bytes counted, and the upload may pass the quota by
//! what is counted for it ([`QuotaTracker::reserve_bytes_beyond`]). Those bytes are given back once, when the new
//! copy replaces the file or, if the file lost its last name meanwhile, when the pin is dropped
//! ([`QuotaTracker::unlinked`]); a file still on disk elsewhere (renamed away) gives nothing back, so an upload that
//! replaces something else must then fit the quota without the allowance.
//!
//! What is counted for an open file only ever errs high: where a race leaves it unclear whether bytes were given
//! back, the file stays counted (a rescan sets it right), and no write is ever charged nothing for bytes that are not
//! counted. One such race: an upload sizes its file when it opens it, before it is registered, so a release in
//! between could go unnoticed; the tracker numbers its releases, and an upload that saw the number change looks at
//! its file again once registered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::account::{Account, AccountStore, Quota, QuotaUsage};
use crate::error::{CoreError, CoreResult};
use crate::registry::MadeOnce;
use crate::storage::local::LocalStorage;
use crate::storage::{FileState, Storage};

/// Usage and limits of one account while it has sessions. Limits of `u64::MAX` mean unlimited.
pub struct QuotaTracker {
    bytes: AtomicU64,
    files: AtomicU64,
    max_bytes: AtomicU64,
    max_files: AtomicU64,
    /// Files that uploads have open (see the module's documentation). Taken when an upload starts and ends and by
    /// operations that shrink or delete files, never while data is written.
    open: Mutex<OpenFiles>,
    /// Held by operations that look at a file and then delete, replace, resize or link it, from the look until
    /// they have accounted for what they did, and by uploads as they open and join their file and as they leave it
    /// (see [`QuotaTracker::lock_names`]). Never taken by writes.
    names: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct OpenFiles {
    /// The registered files that names may still lead to, by identity.
    files: HashMap<u128, OpenFile>,
    /// Registered files whose last name went, once a new file took their identity (the kernel reuses the inode
    /// numbers of deleted files that nothing holds open: an upload whose last write closed its file holds nothing):
    /// their uploads still leave them, by [`Registration`].
    gone: HashMap<Registration, OpenFile>,
    /// How many times bytes or files of an existing file have been given back.
    releases: u64,
}

/// An upload's (or a pin's) registration of its file with the tracker: the file's identity, and which of the files
/// that have had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Registration {
    pub id: u128,
    generation: u64,
}

impl OpenFiles {
    /// Whether `reg` is the registration of the file that names may lead to, rather than one that is gone.
    fn current(&self, reg: Registration) -> bool {
        self.files
            .get(&reg.id)
            .is_some_and(|file| file.generation == reg.generation)
    }

    fn get(&self, reg: Registration) -> Option<&OpenFile> {
        if self.current(reg) {
            self.files.get(&reg.id)
        } else {
            self.gone.get(&reg)
        }
    }

    fn get_mut(&mut self, reg: Registration) -> Option<&mut OpenFile> {
        if self.current(reg) {
            self.files.get_mut(&reg.id)
        } else {
            self.gone.get_mut(&reg)
        }
    }

    fn remove(&mut self, reg: Registration) -> Option<OpenFile> {
        if self.current(reg) {
            self.files.remove(&reg.id)
        } else {
            self.gone.remove(&reg)
        }
    }

    /// The registered file `id` that a name led to: not one whose last name went, which is set apart (the name led
    /// to a new file that took its identity).
    fn named(&mut self, id: u128) -> Option<&mut OpenFile> {
        if self.files.get(&id).is_some_and(|file| file.unlinked) {
            self.retire(id);
        }
        self.files.get_mut(&id)
    }

    /// Moves the registered file `id`, if there is one, to [`OpenFiles::gone`] (its last name went), and returns
    /// the generation a new file of that identity takes.
    fn retire(&mut self, id: u128) -> u64 {
        if let Some(file) = self.files.remove(&id) {
            let reg = Registration {
                id,
                generation: file.generation,
            };
            self.gone.insert(reg, file);
        }
        if self.gone.is_empty() {
            return 0;
        }
        self.gone
            .keys()
            .filter(|reg| reg.id == id)
            .map(|reg| reg.generation + 1)
            .max()
            .unwrap_or(0)
    }
}

/// A file that uploads have open.
struct OpenFile {
    /// Tells the files that have had this identity apart (see [`OpenFiles::gone`]).
    generation: u64,
    uploads: usize,
    /// Counted for the file when its first upload started (after that upload's truncation); at most what the
    /// tracker holds for it.
    base: u64,
    /// Growth counted by the file's uploads that have ended.
    grown: u64,
    /// Uploads that have joined the file (for [`QuotaTracker::leave_upload`]).
    joins: u64,
    /// The first upload is looking at the file again ([`QuotaTracker::settle_upload`]); `base` is 0 until then.
    settling: bool,
    /// The file may now differ from what was counted for it: the last upload to leave compares them.
    changed: bool,
    /// Deleted while open, its counts left standing: files to give back with its bytes once it is found deleted.
    unlinked_files: u64,
    /// Its last name went while it was open (see [`QuotaTracker::release_unlinked`]): the file is gone.
    unlinked: bool,
}

/// How an upload joined the accounts of its file ([`QuotaTracker::join_upload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Joined {
    /// The size the upload may believe the file has: writes within it are already counted.
    pub believed: u64,
    /// Bytes its truncation gave back.
    pub released: u64,
    /// The upload must look at its file again and call [`QuotaTracker::settle_upload`].
    pub settle: bool,
    pub registration: Registration,
}

/// What the last upload of a file gave back when it left, or counted again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Released {
    pub bytes: u64,
    pub files: u64,
    /// Bytes the file holds beyond what was counted for it, counted now (past the quota if need be: they are on
    /// the disk).
    pub charged: u64,
}

impl QuotaTracker {
    fn new(quota: Quota, usage: QuotaUsage) -> Self {
        let tracker = QuotaTracker {
            bytes: AtomicU64::new(usage.bytes),
            files: AtomicU64::new(usage.files),
            max_bytes: AtomicU64::new(u64::MAX),
            max_files: AtomicU64::new(u64::MAX),
            open: Mutex::default(),
            names: tokio::sync::Mutex::new(()),
        };
        tracker.set_quota(quota);
        tracker
    }

    /// An unlimited tracker that is never persisted (anonymous access).
    pub fn unlimited() -> Self {
        Self::new(Quota::default(), QuotaUsage::default())
    }

    fn set_quota(&self, quota: Quota) {
        self.max_bytes
            .store(quota.max_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.max_files
            .store(quota.max_files.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn usage(&self) -> QuotaUsage {
        QuotaUsage {
            bytes: self.bytes.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
        }
    }

    /// Bytes that may still be stored, or `None` without a byte quota.
    pub fn remaining_bytes(&self) -> Option<u64> {
        let max = self.max_bytes.load(Ordering::Relaxed);
        (max != u64::MAX).then(|| max.saturating_sub(self.bytes.load(Ordering::Relaxed)))
    }

    /// Files that may still be created, or `None` without a file quota.
    pub fn remaining_files(&self) -> Option<u64> {
        let max = self.max_files.load(Ordering::Relaxed);
        (max != u64::MAX).then(|| max.saturating_sub(self.files.load(Ordering::Relaxed)))
    }

    /// Reserves `n` more bytes, or fails without reserving anything if that would pass the quota.
    pub fn reserve_bytes(&self, n: u64) -> CoreResult<()> {
        self.reserve_bytes_beyond(n, 0)
    }

    /// Reserves `n` more bytes as [`QuotaTracker::reserve_bytes`] does, letting usage pass the quota by `allowance`:
    /// for an atomic upload, the bytes counted for the file it replaces, which it has pinned (see the module's
    /// documentation).
    pub(crate) fn reserve_bytes_beyond(&self, n: u64, allowance: u64) -> CoreResult<()> {
        let max = self
            .max_bytes
            .load(Ordering::Relaxed)
            .saturating_add(allowance);
        reserve(&self.bytes, max, n).map_err(|_| CoreError::QuotaExceeded("byte quota reached"))
    }

    /// Counts one more file, or fails if the file quota is reached.
    pub fn reserve_file(&self) -> CoreResult<()> {
        reserve(&self.files, self.max_files.load(Ordering::Relaxed), 1)
            .map_err(|_| CoreError::QuotaExceeded("file quota reached"))
    }

    /// Whether the bytes counted are within the byte quota.
    pub(crate) fn within_byte_quota(&self) -> bool {
        self.bytes.load(Ordering::Acquire) <= self.max_bytes.load(Ordering::Relaxed)
    }

    pub fn release_bytes(&self, n: u64) {
        release(&self.bytes, n);
    }

    pub fn release_file(&self) {
        release(&self.files, 1);
    }

    /// Serialises, across the account's sessions, the operations that look at a file and then act on what they saw
    /// (remove, rename, resize, link, an atomic upload replacing a file): without it, two of them could see the
    /// same file and both give it back, or one could give back a file another had already replaced. Uploads open
    /// and join their file, and leave it, under it too: such an operation then never acts between an upload's look
    /// at its file and its registration (it would give back, or resize, what the upload was about to count
    /// otherwise), nor between its own look and its act while an upload that grew the file leaves (it would give
    /// back the size it saw, not the growth counted since); and an upload never joins a file with a size another
    /// upload's end has made stale. Held across the storage calls, so it is an async lock; writes never take it.
    pub(crate) async fn lock_names(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.names.lock().await
    }

    /// Counts one more file even past the file quota: a file that exists and was not counted (an upload found a
    /// new file where it planned to write to an existing one).
    pub(crate) fn add_file(&self) {
        self.files.fetch_add(1, Ordering::AcqRel);
    }

    /// The number of releases so far; an upload reads it before it looks at its file (see
    /// [`QuotaTracker::join_upload`]).
    pub(crate) fn releases(&self) -> u64 {
        self.open().releases
    }

    /// Registers an upload of the file `unique_id`, which it found `size` bytes long when it opened it, of which
    /// it keeps `kept` (the rest it truncates). `releases` is [`QuotaTracker::releases`] from before that look.
    ///
    /// The first upload of a file gives the truncated bytes back and believes `kept`, unless a release happened
    /// since it looked: then it believes nothing until it has looked again and settled. An upload joining others
    /// leaves their counts as they are (its truncation is given back when the last one leaves) and believes no more
    /// than is counted for the file.
    pub(crate) fn join_upload(
        &self,
        unique_id: u128,
        size: u64,
        kept: u64,
        releases: u64,
    ) -> Joined {
        let mut open = self.open();
        let changed = open.releases != releases;
        let kept = kept.min(size);
        match open.files.get_mut(&unique_id) {
            // A name led to the file, so it is not the one whose last name went: that one's identity was reused.
            Some(file) if file.unlinked => {}
            Some(file) => {
                file.uploads += 1;
                file.joins += 1;
                file.changed = true;
                let counted = if file.settling { 0 } else { file.base } + file.grown;
                return Joined {
                    believed: kept.min(counted),
                    released: 0,
                    settle: false,
                    registration: Registration {
                        id: unique_id,
                        generation: file.generation,
                    },
                };
            }
            None => {}
        }
        let generation = open.retire(unique_id);
        let (base, released) = if changed { (0, 0) } else { (kept, size - kept) };
        open.files.insert(
            unique_id,
            OpenFile {
                generation,
                uploads: 1,
                base,
                grown: 0,
                joins: 0,
                settling: changed,
                changed: false,
                unlinked_files: 0,
                unlinked: false,
            },
        );
        self.give_back(&mut open, released, 0);
        Joined {
            believed: base,
            released,
            settle: changed,
            registration: Registration {
                id: unique_id,
                generation,
            },
        }
    }

    /// Settles the first upload of a file (its `registration`) after [`QuotaTracker::join_upload`] asked it to, with
    /// `now`, the state of its file looked at after it joined (`None` if that failed): the file is counted as the
    /// smaller of the two looks, or as nothing where that is unclear (another upload wrote meanwhile, or the file was
    /// deleted and given back before the upload joined). Gives the truncation back as `join_upload` does.
    pub(crate) fn settle_upload(
        &self,
        registration: Registration,
        size: u64,
        kept: u64,
        now: Option<FileState>,
    ) -> Joined {
        let unique_id = registration.id;
        let mut open = self.open();
        let Some(file) = open.get_mut(registration) else {
            return Joined {
                believed: 0,
                released: 0,
                settle: false,
                registration,
            };
        };
        file.settling = false;
        if now.is_some_and(|now| now.unique_id == unique_id && now.nlink == 0)
            && file.unlinked_files == 0
        {
            // Deleted and given back before the upload joined: what it writes into the file goes with it.
            file.changed = true;
            file.unlinked = true;
        }
        let base = match now {
            Some(now)
                if file.uploads == 1
                    && file.grown == 0
                    && now.unique_id == unique_id
                    && (now.nlink > 0 || file.unlinked_files > 0) =>
            {
                size.min(now.size)
            }
            _ => 0,
        };
        let released = base - kept.min(base);
        file.base = base - released;
        let believed = file.base;
        self.give_back(&mut open, released, 0);
        Joined {
            believed,
            released,
            settle: false,
            registration,
        }
    }

    /// Pins the file `unique_id` that an atomic upload is to replace, which it found `size` bytes long, until
    /// [`QuotaTracker::leave_upload`]: it is registered as an upload's file that keeps all its data (see
    /// [`QuotaTracker::join_upload`], whose rules for a release since `releases` apply), so that its bytes stay
    /// counted whatever other sessions do to it. `believed` in the answer is what is counted for it: the allowance
    /// by which the upload may pass the quota.
    pub(crate) fn pin_replaced(&self, unique_id: u128, size: u64, releases: u64) -> Joined {
        self.join_upload(unique_id, size, size, releases)
    }

    /// Whether the file of `registration`, an upload's or a pin's, lost its last name while registered (it was
    /// deleted, or replaced by a rename): its bytes are given back when its last registration leaves.
    pub(crate) fn unlinked(&self, registration: Registration) -> bool {
        self.open()
            .get(registration)
            .is_some_and(|file| file.unlinked)
    }

    /// The token [`QuotaTracker::leave_upload`] trusts a state with, for the caller's `registration` if it is its
    /// file's only one, whether the file changed or not: for a state looked at before the caller knows
    /// whether it will change it (an atomic upload about to replace the file it pinned).
    pub(crate) fn sole_registration(&self, registration: Registration) -> Option<u64> {
        let open = self.open();
        let file = open.get(registration)?;
        (file.uploads == 1).then_some(file.joins)
    }

    /// Counts again the `bytes` that the upload of `registration` gave back when it joined (the old data it was to
    /// replace) if that upload is the file's only one, grew nothing and saw nothing change: it ends without having
    /// written, and the file keeps its old data. Returns whether they are counted again (past the quota if need
    /// be: they are on the disk); otherwise the caller empties the file, as the upload would have.
    pub(crate) fn restore_replaced(&self, registration: Registration, bytes: u64) -> bool {
        let mut open = self.open();
        let Some(file) = open.get_mut(registration) else {
            return false;
        };
        if file.uploads != 1 || file.joins != 0 || file.changed || file.settling || file.grown != 0
        {
            return false;
        }
        file.base = file.base.saturating_add(bytes);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        true
    }

    /// Notes that the upload of `registration` shrank its own file: the last upload of the file settles its count.
    pub(crate) fn shrunk_by_upload(&self, registration: Registration) {
        if let Some(file) = self.open().get_mut(registration) {
            file.changed = true;
        }
    }

    /// Whether the file of an upload's `registration` changed behind it (so that its last upload will
    /// look at it when it leaves).
    pub(crate) fn upload_changed(&self, registration: Registration) -> bool {
        self.open()
            .get(registration)
            .is_some_and(|file| file.changed)
    }

    /// Whether the upload of `registration` that is about to leave is the last one of a file that changed, and must
    /// therefore say how its file is now: `Some(token)` to hand to [`QuotaTracker::leave_upload`] with the state.
    pub(crate) fn leave_needs_state(&self, registration: Registration) -> Option<u64> {
        let open = self.open();
        let file = open.get(registration)?;
        (file.uploads == 1 && file.changed).then_some(file.joins)
    }

    /// Ends the upload of `registration` that counted `grown` bytes of growth. The last upload of a file that changed
    /// hands in `now`, the state of its file looked at after [`QuotaTracker::leave_needs_state`] gave the token,
    /// and settles what is counted for the file to what it holds: gives back what is counted beyond it, or counts
    /// what it holds beyond that (an operation of another session that looked at the file while an upload changed
    /// it may have counted too little). A state from before another upload joined is not trusted, and nothing is
    /// settled without one.
    pub(crate) fn leave_upload(
        &self,
        registration: Registration,
        grown: u64,
        now: Option<(u64, FileState)>,
    ) -> Released {
        let mut open = self.open();
        let Some(file) = open.get_mut(registration) else {
            return Released::default();
        };
        file.grown = file.grown.saturating_add(grown);
        file.uploads = file.uploads.saturating_sub(1);
        if file.uploads > 0 {
            return Released::default();
        }
        let Some(file) = open.remove(registration) else {
            return Released::default();
        };
        let released = match now {
            Some((token, now)) if file.changed && token == file.joins => {
                let counted = file.base.saturating_add(file.grown);
                if now.nlink == 0 {
                    Released {
                        bytes: counted,
                        files: file.unlinked_files,
                        charged: 0,
                    }
                } else {
                    Released {
                        bytes: counted.saturating_sub(now.size),
                        files: 0,
                        charged: now.size.saturating_sub(counted),
                    }
                }
            }
            _ => Released::default(),
        };
        self.give_back(&mut open, released.bytes, released.files);
        self.bytes.fetch_add(released.charged, Ordering::AcqRel);
        released
    }

    /// What is counted for the file `unique_id` if uploads have it open (its part written by uploads still running
    /// not included): a file they are replacing may hold less than a look at it shows (its old data goes at their
    /// first write, which takes no lock).
    pub(crate) fn counted_for(&self, unique_id: u128) -> Option<u64> {
        let open = self.open();
        let file = open.files.get(&unique_id).filter(|file| !file.unlinked)?;
        Some(if file.settling { 0 } else { file.base } + file.grown)
    }

    /// Notes that a file of `unique_id` was resized by other means than its uploads, growing by `bytes` (counted
    /// already) as far as a look at it told. If uploads have it open, the growth is counted as theirs, and the last
    /// one settles what is counted for the file with what it holds when it ends: the look may be stale (an upload
    /// that replaces the file empties it when it starts writing), and the uploads believe it shorter than it is.
    pub(crate) fn resized_elsewhere(&self, unique_id: u128, bytes: u64) {
        let mut open = self.open();
        if let Some(file) = open.named(unique_id) {
            file.grown = file.grown.saturating_add(bytes);
            file.changed = true;
        }
    }

    /// Gives back `bytes` that a file of `unique_id` no longer holds (it was shrunk), unless an upload has it open:
    /// then they stay counted until the upload ends. Returns whether they were given back.
    pub(crate) fn release_shrunk(&self, unique_id: u128, bytes: u64) -> bool {
        self.release_or_defer(unique_id, bytes, 0, false)
    }

    /// Gives back the `bytes` and `files` (0 or 1) of a file of `unique_id` that a name no longer leads to (it was
    /// deleted, or replaced by a rename), unless an upload has it open: then they stay counted until the last
    /// upload ends and finds the file deleted. Returns whether they were given back.
    pub(crate) fn release_unlinked(&self, unique_id: u128, bytes: u64, files: u64) -> bool {
        self.release_or_defer(unique_id, bytes, files, true)
    }

    fn release_or_defer(&self, unique_id: u128, bytes: u64, files: u64, unlinked: bool) -> bool {
        let mut open = self.open();
        if let Some(file) = open.named(unique_id) {
            file.changed = true;
            file.unlinked_files = file.unlinked_files.max(files);
            file.unlinked |= unlinked;
            return false;
        }
        self.give_back(&mut open, bytes, files);
        true
    }

    /// Releases counts of existing files, numbering the release, with `open` locked.
    fn give_back(&self, open: &mut OpenFiles, bytes: u64, files: u64) {
        if bytes == 0 && files == 0 {
            return;
        }
        open.releases += 1;
        self.release_bytes(bytes);
        release(&self.files, files);
    }

    fn open(&self) -> MutexGuard<'_, OpenFiles> {
        // Nothing that can panic runs with the lock held; take the state even if a thread did.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn reserve(counter: &AtomicU64, max: u64, n: u64) -> Result<(), ()> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            cur.checked_add(n).filter(|&next| next <= max)
        })
        .map(drop)
        .map_err(drop)
}

fn release(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
        Some(cur.saturating_sub(n))
    });
}

/// Hands out the one tracker of each account that has live sessions.
#[derive(Default)]
pub struct QuotaRegistry {
    trackers: MadeOnce<String, QuotaTracker>,
}

impl QuotaRegistry {
    /// The account's tracker; created from the stored usage if no session holds one. An existing tracker takes the
    /// account's current limits, so that an edited quota applies from the next login on.
    pub async fn tracker(
        &self,
        account: &Account,
        store: &dyn AccountStore,
    ) -> CoreResult<Arc<QuotaTracker>> {
        let tracker = self
            .trackers
            .get_or_try_make(account.name.as_str(), || async {
                let usage = store.usage(&account.name).await?;
                Ok::<_, CoreError>(QuotaTracker::new(account.quota, usage))
            })
            .await?;
        tracker.set_quota(account.quota);
        Ok(tracker)
    }
}

/// Recounts an account's usage from the files in its home and stores it.
pub async fn rescan(store: &dyn AccountStore, account: &Account) -> CoreResult<QuotaUsage> {
    let storage = LocalStorage::open(&account.home).await?;
    let usage = storage.disk_usage("").await?;
    store.set_usage(&account.name, usage).await?;
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_pass_the_quota() {
        let t = QuotaTracker::new(
            Quota {
                max_bytes: Some(100),
                max_files: Some(1),
            },
            QuotaUsage::default(),
        );
        t.reserve_bytes(60).unwrap();
        assert!(t.reserve_bytes(41).is_err());
        t.reserve_bytes(40).unwrap();
        assert_eq!(t.remaining_bytes(), Some(0));
        t.release_bytes(50);
        assert_eq!(t.remaining_bytes(), Some(50));
        t.reserve_file().unwrap();
        assert!(t.reserve_file().is_err());
        assert_eq!(QuotaTracker::unlimited().remaining_bytes(), None);
    }

    /// The registration of the first file of identity `id`.
    fn r(id: u128) -> Registration {
        Registration { id, generation: 0 }
    }

    fn state(unique_id: u128, size: u64, nlink: u64) -> FileState {
        FileState {
            unique_id,
            size,
            nlink,
        }
    }

    fn tracker_holding(bytes: u64, files: u64) -> QuotaTracker {
        QuotaTracker::new(Quota::default(), QuotaUsage { bytes, files })
    }

    #[test]
    fn a_replaced_file_left_untouched_is_counted_again_only_by_its_sole_upload() {
        let t = tracker_holding(100, 1);
        let joined = t.join_upload(1, 60, 0, t.releases());
        assert_eq!(joined.released, 60);
        assert_eq!(t.usage().bytes, 40);
        assert!(t.restore_replaced(r(1), 60));
        assert_eq!(t.usage().bytes, 100);
        assert_eq!(t.leave_upload(r(1), 0, None), Released::default());
        assert_eq!(t.usage().bytes, 100);

        // Another upload joined: the file is theirs to change, and the old bytes stay given back.
        t.join_upload(2, 30, 0, t.releases());
        t.join_upload(2, 0, 0, t.releases());
        assert!(!t.restore_replaced(r(2), 30));
        assert_eq!(t.usage().bytes, 70);
    }

    #[test]
    fn a_file_deleted_under_two_uploads_is_given_back_once_when_the_last_leaves() {
        let t = tracker_holding(100, 2);
        let releases = t.releases();
        let first = t.join_upload(1, 50, 50, releases);
        assert_eq!(
            (first.believed, first.released, first.settle),
            (50, 0, false)
        );
        // A truncating upload beside it gives nothing back and believes the file empty.
        let second = t.join_upload(1, 50, 0, releases);
        assert_eq!((second.believed, second.released), (0, 0));
        assert!(!t.release_shrunk(1, 50));
        assert!(!t.release_unlinked(1, 50, 1));
        assert_eq!(
            t.usage(),
            QuotaUsage {
                bytes: 100,
                files: 2
            }
        );
        assert_eq!(t.leave_needs_state(r(1)), None);
        assert_eq!(t.leave_upload(r(1), 10, None), Released::default());
        let token = t
            .leave_needs_state(r(1))
            .expect("the last upload of a changed file");
        let released = t.leave_upload(r(1), 5, Some((token, state(1, 65, 0))));
        assert_eq!(
            released,
            Released {
                bytes: 65,
                files: 1,
                charged: 0,
            }
        );
        assert_eq!(
            t.usage(),
            QuotaUsage {
                bytes: 35,
                files: 1
            }
        );
        // Unregistered now: given back at once.
        assert!(t.release_unlinked(1, 35, 1));
        assert_eq!(t.usage(), QuotaUsage::default());
    }

    #[test]
    fn a_state_from_before_another_upload_joined_is_not_trusted() {
        let t = tracker_holding(50, 1);
        t.join_upload(1, 50, 50, t.releases());
        assert!(!t.release_shrunk(1, 50));
        let token = t.leave_needs_state(r(1)).unwrap();
        let other = t.join_upload(1, 0, 0, t.releases());
        assert_eq!(other.believed, 0);
        t.leave_upload(r(1), 20, None);
        assert_eq!(
            t.leave_upload(r(1), 0, Some((token, state(1, 0, 1)))),
            Released::default()
        );
        assert_eq!(t.usage().bytes, 50);
    }

    #[test]
    fn an_upload_that_opened_its_file_during_a_release_believes_only_what_it_sees_after() {
        let t = tracker_holding(60, 1);
        let releases = t.releases();
        // Between the upload's look at its file (60 bytes) and its registration, the file is cut to 0 and given
        // back.
        assert!(t.release_shrunk(1, 60));
        let joined = t.join_upload(1, 60, 60, releases);
        assert_eq!((joined.believed, joined.settle), (0, true));
        let settled = t.settle_upload(r(1), 60, 60, Some(state(1, 0, 1)));
        assert_eq!((settled.believed, settled.released), (0, 0));
        t.leave_upload(r(1), 0, None);
        // A file deleted before the upload registered was given back by its deletion, not again.
        let releases = t.releases();
        assert!(t.release_unlinked(2, 0, 1));
        t.join_upload(2, 0, 0, releases);
        t.settle_upload(r(2), 0, 0, Some(state(2, 0, 0)));
        let token = t.leave_needs_state(r(2)).unwrap();
        assert_eq!(
            t.leave_upload(r(2), 7, Some((token, state(2, 7, 0)))),
            Released {
                bytes: 7,
                ..Released::default()
            }
        );
    }

    fn tracker_with_quota(max_bytes: u64, bytes: u64, files: u64) -> QuotaTracker {
        let quota = Quota {
            max_bytes: Some(max_bytes),
            max_files: None,
        };
        QuotaTracker::new(quota, QuotaUsage { bytes, files })
    }

    /// The file `id` that an atomic upload replaced lost its last name: its pin gives back all that is counted for
    /// it, once.
    fn unpin_deleted(t: &QuotaTracker, id: u128) -> Released {
        let token = t.sole_registration(r(id));
        t.leave_upload(r(id), 0, token.map(|token| (token, state(id, 0, 0))))
    }

    #[test]
    fn a_pinned_file_lets_its_replacement_pass_the_quota_by_its_size_and_goes_once() {
        // 700 of 1,000 bytes used, 400 of them by file 1, which an atomic upload replaces.
        let t = tracker_with_quota(1000, 700, 2);
        let pinned = t.pin_replaced(1, 400, t.releases());
        assert_eq!((pinned.believed, pinned.released), (400, 0));
        // Without the allowance, a 400-byte copy would not fit beside the old one.
        assert!(t.reserve_bytes(400).is_err());
        t.reserve_bytes_beyond(700, pinned.believed).unwrap();
        assert!(t.reserve_bytes_beyond(1, pinned.believed).is_err());
        assert!(t.reserve_bytes(1).is_err());
        assert!(!t.within_byte_quota());
        // The new copy takes the name: the rename's release of the old file waits for the pin, which gives it back.
        assert!(!t.release_unlinked(1, 400, 0));
        assert!(t.unlinked(r(1)));
        assert_eq!(
            unpin_deleted(&t, 1),
            Released {
                bytes: 400,
                files: 0,
                charged: 0,
            }
        );
        assert_eq!(
            t.usage(),
            QuotaUsage {
                bytes: 1000,
                files: 2
            }
        );
        assert!(t.within_byte_quota());
    }

    #[test]
    fn a_pinned_file_deleted_by_another_session_stays_counted_until_the_pin_is_dropped() {
        let t = tracker_with_quota(1000, 700, 2);
        let pinned = t.pin_replaced(1, 400, t.releases());
        t.reserve_bytes_beyond(350, pinned.believed).unwrap();
        // The deleting session gets nothing back yet, and a shrink is deferred as well.
        assert!(!t.release_shrunk(1, 100));
        assert!(!t.release_unlinked(1, 400, 1));
        assert_eq!(t.usage().bytes, 1050);
        assert!(t.reserve_bytes(1).is_err());
        // The upload breaks off: its 350 bytes go with its temporary file, the deleted file's bytes and file with
        // the pin.
        t.release_bytes(350);
        assert_eq!(
            unpin_deleted(&t, 1),
            Released {
                bytes: 400,
                files: 1,
                charged: 0,
            }
        );
        assert_eq!(
            t.usage(),
            QuotaUsage {
                bytes: 300,
                files: 1
            }
        );
    }

    #[test]
    fn an_unchanged_pinned_file_keeps_its_counts_when_the_pin_is_dropped() {
        let t = tracker_with_quota(1000, 700, 2);
        t.pin_replaced(1, 400, t.releases());
        assert!(!t.unlinked(r(1)));
        assert_eq!(t.leave_needs_state(r(1)), None);
        let token = t
            .sole_registration(r(1))
            .expect("the pin is the only registration");
        assert_eq!(
            t.leave_upload(r(1), 0, Some((token, state(1, 400, 1)))),
            Released::default()
        );
        assert_eq!(t.usage().bytes, 700);
        // Unpinned: a deletion gives the file back at once.
        assert!(t.release_unlinked(1, 400, 1));
        assert_eq!(t.usage().bytes, 300);
    }

    #[test]
    fn a_file_pinned_by_two_uploads_is_given_back_by_the_last_pin() {
        let t = tracker_with_quota(1000, 700, 2);
        let first = t.pin_replaced(1, 400, t.releases());
        let second = t.pin_replaced(1, 400, t.releases());
        assert_eq!((first.believed, second.believed), (400, 400));
        assert_eq!(t.sole_registration(r(1)), None);
        // The first replaces the file and drops its pin: the second still holds the file's bytes.
        assert!(!t.release_unlinked(1, 400, 0));
        assert_eq!(t.leave_upload(r(1), 0, None), Released::default());
        assert_eq!(t.usage().bytes, 700);
        assert_eq!(unpin_deleted(&t, 1).bytes, 400);
        assert_eq!(t.usage().bytes, 300);
    }

    #[test]
    fn an_unchanged_release_number_lets_the_first_upload_truncate_at_once() {
        let t = tracker_holding(80, 1);
        let joined = t.join_upload(1, 80, 30, t.releases());
        assert_eq!(
            (joined.believed, joined.released, joined.settle),
            (30, 50, false)
        );
        assert_eq!(t.usage().bytes, 30);
        assert_eq!(t.leave_needs_state(r(1)), None);
        assert_eq!(t.leave_upload(r(1), 10, None), Released::default());
    }

    /// The kernel reuses the inode number of a deleted file once nothing holds the file open (an upload whose last
    /// write closed its file holds nothing): a new file of that identity is registered apart from the deleted one,
    /// whose upload still leaves it. They were counted as one, and the deleted file's count stayed.
    #[test]
    fn a_new_file_with_the_identity_of_a_deleted_one_is_counted_apart() {
        let t = tracker_holding(0, 0);
        t.reserve_file().unwrap();
        let first = t.join_upload(1, 0, 0, t.releases());
        t.reserve_bytes(30).unwrap();
        assert!(!t.release_unlinked(1, 30, 1), "left to the upload");
        t.reserve_file().unwrap();
        let second = t.join_upload(1, 0, 0, t.releases());
        assert_ne!(second.registration, first.registration);
        t.reserve_bytes(20).unwrap();
        assert!(!t.upload_changed(second.registration));
        // The new file is deleted in turn: left to its own upload.
        assert!(!t.release_unlinked(1, 20, 1));
        let token = t.leave_needs_state(first.registration).expect("changed");
        let released = t.leave_upload(first.registration, 30, Some((token, state(1, 0, 0))));
        assert_eq!(
            released,
            Released {
                bytes: 30,
                files: 1,
                charged: 0,
            }
        );
        assert_eq!(
            t.usage(),
            QuotaUsage {
                bytes: 20,
                files: 1
            }
        );
        let token = t.leave_needs_state(second.registration).expect("changed");
        t.leave_upload(second.registration, 20, Some((token, state(1, 0, 0))));
        assert_eq!(t.usage(), QuotaUsage::default());
    }
}
