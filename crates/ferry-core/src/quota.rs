//! Live quota accounting. One [`QuotaTracker`] per account is shared by all of that account's sessions, so that
//! concurrent uploads reserve space atomically and can never overrun the quota together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::account::{Account, AccountStore, Quota, QuotaUsage};
use crate::error::{CoreError, CoreResult};
use crate::registry::MadeOnce;
use crate::storage::local::LocalStorage;
use crate::storage::Storage;

/// Usage and limits of one account while it has sessions. Limits of `u64::MAX` mean unlimited.
pub struct QuotaTracker {
    bytes: AtomicU64,
    files: AtomicU64,
    max_bytes: AtomicU64,
    max_files: AtomicU64,
}

impl QuotaTracker {
    fn new(quota: Quota, usage: QuotaUsage) -> Self {
        let tracker = QuotaTracker {
            bytes: AtomicU64::new(usage.bytes),
            files: AtomicU64::new(usage.files),
            max_bytes: AtomicU64::new(u64::MAX),
            max_files: AtomicU64::new(u64::MAX),
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
        reserve(&self.bytes, &self.max_bytes, n)
            .map_err(|_| CoreError::QuotaExceeded("byte quota reached"))
    }

    /// Counts one more file, or fails if the file quota is reached.
    pub fn reserve_file(&self) -> CoreResult<()> {
        reserve(&self.files, &self.max_files, 1)
            .map_err(|_| CoreError::QuotaExceeded("file quota reached"))
    }

    pub fn release_bytes(&self, n: u64) {
        release(&self.bytes, n);
    }

    pub fn release_file(&self) {
        release(&self.files, 1);
    }
}

fn reserve(counter: &AtomicU64, max: &AtomicU64, n: u64) -> Result<(), ()> {
    let max = max.load(Ordering::Relaxed);
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
}
