//! Quota accounting while other sessions of the account shrink, delete or replace a file that an upload has open:
//! the account never stores more than it is charged for, and ends charged for exactly what it stores.

use std::path::Path;
use std::sync::Arc;

use ferry_core::account::{Account, AccountStore, Permissions, Quota, QuotaUsage};
use ferry_core::auth::{hash_password, Authenticator};
use ferry_core::events::{EventBus, Protocol};
use ferry_core::server::{ServerCore, ServerSettings};
use ferry_core::session::{ClientInfo, Session};
use ferry_core::storage::WriteMode;
use ferry_core::store::SqliteAccountStore;
use ferry_core::transfer::{Upload, UploadMode};
use ferry_core::vpath::VirtualPath;
use ferry_core::CoreError;

/// An account with every permission and a quota of 100 bytes and 10 files, logged in twice (as two connections
/// would be), and its store.
struct Account2 {
    tmp: tempfile::TempDir,
    store: Arc<dyn AccountStore>,
    a: Session,
    b: Session,
}

impl Account2 {
    async fn new(upload_mode: UploadMode) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteAccountStore::open(&tmp.path().join("db")).unwrap();
        let mut account = Account::new("u", tmp.path().join("home"));
        account.password_hash = Some(hash_password("pw").unwrap());
        account.permissions = Permissions::all();
        account.quota = Quota {
            max_bytes: Some(100),
            max_files: Some(10),
        };
        store.create(&account).await.unwrap();
        let store: Arc<dyn AccountStore> = Arc::new(store);
        let settings = ServerSettings {
            upload_mode,
            ..ServerSettings::default()
        };
        let core = ServerCore::new(
            Authenticator::new(Arc::clone(&store)),
            EventBus::default(),
            settings,
        );
        let login = || async {
            let client = ClientInfo::new(Protocol::Sftp, "127.0.0.1".parse().unwrap());
            core.login("u", "pw", &client).await.unwrap()
        };
        let (a, b) = (login().await, login().await);
        Account2 { tmp, store, a, b }
    }

    fn home(&self) -> std::path::PathBuf {
        self.tmp.path().join("home")
    }

    /// Opens `name` for upload from session `a` in `mode`.
    async fn open(&self, name: &str, mode: WriteMode) -> Upload {
        self.a.open_write(&path(name), mode).await.unwrap()
    }

    /// Uploads `len` bytes to `name` from session `a` and closes it.
    async fn put(&self, name: &str, len: usize) {
        let mut up = self.open(name, WriteMode::Truncate).await;
        up.write(&vec![b'x'; len]).await.unwrap();
        up.finish().await.unwrap();
    }

    /// Checks that the live usage, the stored usage and what is on disk agree.
    async fn assert_charged_for_disk(&self) {
        let disk = disk_usage(&self.home());
        assert_eq!(self.a.quota().usage(), disk, "live usage against the disk");
        assert_eq!(
            self.store.usage("u").await.unwrap(),
            disk,
            "stored usage against the disk"
        );
    }
}

fn path(s: &str) -> VirtualPath {
    VirtualPath::parse(s).unwrap()
}

fn disk_usage(dir: &Path) -> QuotaUsage {
    let mut usage = QuotaUsage::default();
    for entry in std::fs::read_dir(dir).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        if meta.is_file() {
            usage.files += 1;
            usage.bytes += meta.len();
        }
    }
    usage
}

/// The SFTP trigger: OPEN without TRUNC (an upload from the end), SETSTAT size=0 from elsewhere, then a WRITE of the
/// old size at offset 0. Before the fix the truncation gave the 60 bytes back at once and the write inside the old
/// size was free: 60 bytes stored, 0 charged, and the next 60-byte file fitted the 100-byte quota.
#[tokio::test]
async fn an_overwrite_after_another_session_truncated_the_file_is_charged() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/f", 60).await;
    let mut up = acct.open("/f", WriteMode::Append).await;
    acct.b.set_len(&path("/f"), 0).await.unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 60, "left counted while open");
    up.write_at(0, &[b'y'; 60]).await.unwrap();
    up.finish().await.unwrap();
    acct.assert_charged_for_disk().await;
    assert_eq!(acct.a.quota().usage().bytes, 60);
    let mut next = acct.open("/g", WriteMode::Truncate).await;
    assert!(matches!(
        next.write(&[b'z'; 60]).await,
        Err(CoreError::QuotaExceeded(_))
    ));
    next.fail("quota").await;
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn a_file_truncated_under_its_upload_is_charged_what_remains_when_the_upload_ends() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/f", 60).await;
    let mut up = acct.open("/f", WriteMode::Append).await;
    up.write(&[b'y'; 10]).await.unwrap();
    acct.b.set_len(&path("/f"), 5).await.unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 70);
    up.finish().await.unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 5);
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn a_file_removed_under_its_upload_stays_counted_until_the_upload_ends() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/keep", 7).await;
    acct.put("/f", 30).await;
    let mut up = acct.open("/f", WriteMode::Append).await;
    up.write(&[b'y'; 10]).await.unwrap();
    acct.b.remove(&path("/f")).await.unwrap();
    let counted = QuotaUsage {
        bytes: 47,
        files: 2,
    };
    assert_eq!(acct.a.quota().usage(), counted);
    // Writing on into the deleted file is charged as before.
    up.write(&[b'y'; 5]).await.unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 52);
    up.finish().await.unwrap();
    assert_eq!(acct.a.quota().usage(), QuotaUsage { bytes: 7, files: 1 });
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn a_file_replaced_by_a_rename_under_its_upload_is_given_back_when_the_upload_ends() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/f", 30).await;
    acct.put("/g", 20).await;
    let mut up = acct.open("/f", WriteMode::Append).await;
    acct.b.rename(&path("/g"), &path("/f")).await.unwrap();
    assert_eq!(
        acct.a.quota().usage(),
        QuotaUsage {
            bytes: 50,
            files: 2
        }
    );
    up.write(&[b'y'; 5]).await.unwrap();
    up.finish().await.unwrap();
    acct.assert_charged_for_disk().await;
    assert_eq!(std::fs::read(acct.home().join("f")).unwrap(), [b'x'; 20]);
}

/// With REMOVE, a write at another offset reopened the path with create: a new file, counted against neither quota.
#[tokio::test]
async fn a_write_elsewhere_after_the_file_was_removed_fails_and_creates_nothing() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/f", 10).await;
    let mut up = acct.open("/f", WriteMode::Append).await;
    acct.b.remove(&path("/f")).await.unwrap();
    assert!(up.write_at(0, &[b'y'; 10]).await.is_err());
    assert!(!acct.home().join("f").exists());
    up.fail("the file is gone").await;
    assert_eq!(acct.a.quota().usage(), QuotaUsage::default());
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn a_write_elsewhere_after_the_file_was_replaced_fails_and_leaves_the_new_file_alone() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/f", 10).await;
    acct.put("/g", 4).await;
    let mut up = acct.open("/f", WriteMode::Append).await;
    acct.b.rename(&path("/g"), &path("/f")).await.unwrap();
    assert!(up.write_at(0, b"yyyy").await.is_err());
    up.fail("the file was replaced").await;
    assert_eq!(std::fs::read(acct.home().join("f")).unwrap(), b"xxxx");
    acct.assert_charged_for_disk().await;
}

/// A truncating upload of a file another upload has open leaves the old bytes counted until the last one ends.
#[tokio::test]
async fn a_truncating_upload_beside_another_is_charged_what_the_file_holds_at_the_end() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/f", 50).await;
    let mut first = acct.open("/f", WriteMode::Append).await;
    let mut second = acct
        .b
        .open_write(&path("/f"), WriteMode::Truncate)
        .await
        .unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 50);
    second.write(&[b'y'; 10]).await.unwrap();
    second.finish().await.unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 60);
    first.write_at(0, &[b'z'; 50]).await.unwrap();
    first.finish().await.unwrap();
    acct.assert_charged_for_disk().await;
    assert_eq!(acct.a.quota().usage().bytes, 50);
}

#[tokio::test]
async fn uploads_nobody_interferes_with_count_as_before() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/f", 60).await;
    // Replacing a file frees its old bytes at once: a file of the same size fits a quota that cannot hold both.
    acct.put("/f", 60).await;
    assert_eq!(
        acct.a.quota().usage(),
        QuotaUsage {
            bytes: 60,
            files: 1
        }
    );
    let mut up = acct.open("/f", WriteMode::Append).await;
    up.write(&[b'y'; 30]).await.unwrap();
    up.finish().await.unwrap();
    let mut up = acct
        .a
        .open_write(
            &path("/f"),
            WriteMode::At {
                offset: 20,
                truncate: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 20);
    up.write(&[b'y'; 5]).await.unwrap();
    up.finish().await.unwrap();
    acct.b.set_len(&path("/f"), 40).await.unwrap();
    acct.b.set_len(&path("/f"), 10).await.unwrap();
    acct.assert_charged_for_disk().await;
    assert_eq!(acct.a.quota().usage().bytes, 10);
}

#[tokio::test]
async fn atomic_uploads_count_the_file_they_replace_or_create() {
    let acct = Account2::new(UploadMode::Atomic).await;
    acct.put("/f", 40).await;
    acct.put("/f", 40).await;
    acct.assert_charged_for_disk().await;
    // The file to replace disappears meanwhile: the upload's file is a new one.
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'y'; 30]).await.unwrap();
    acct.b.remove(&path("/f")).await.unwrap();
    up.finish().await.unwrap();
    acct.assert_charged_for_disk().await;
    assert_eq!(
        acct.a.quota().usage(),
        QuotaUsage {
            bytes: 30,
            files: 1
        }
    );
    // Its temporary file removed under it, an upload that breaks off gives back all it counted.
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'y'; 10]).await.unwrap();
    up.fail("broken off").await;
    acct.assert_charged_for_disk().await;
}
