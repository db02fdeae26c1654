//! Quota accounting while other sessions of the account shrink, delete or replace a file that an upload has open:
//! the account never stores more than it is charged for, and ends charged for exactly what it stores.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use ferry_core::account::{Account, AccountStore, Permission, Permissions, Quota, QuotaUsage};
use ferry_core::auth::{hash_password, Authenticator};
use ferry_core::events::{EventBus, Protocol};
use ferry_core::quota::rescan;
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
    core: ServerCore,
    a: Session,
    b: Session,
}

/// How [`Account2::with`] sets an account up.
struct Setup {
    upload_mode: UploadMode,
    permissions: Permissions,
    quota: Quota,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            upload_mode: UploadMode::Direct,
            permissions: Permissions::all(),
            quota: Quota {
                max_bytes: Some(100),
                max_files: Some(10),
            },
        }
    }
}

impl Account2 {
    async fn new(upload_mode: UploadMode) -> Self {
        Self::with(
            Setup {
                upload_mode,
                ..Setup::default()
            },
            |_| {},
        )
        .await
    }

    /// An account set up as `setup` says, whose home `fill` fills (as an administrator would) before a rescan
    /// counts it and the account logs in.
    async fn with(setup: Setup, fill: impl FnOnce(&Path)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteAccountStore::open(&tmp.path().join("db")).unwrap();
        let mut account = Account::new("u", tmp.path().join("home"));
        account.password_hash = Some(hash_password("pw").unwrap());
        account.permissions = setup.permissions;
        account.quota = setup.quota;
        store.create(&account).await.unwrap();
        std::fs::create_dir_all(&account.home).unwrap();
        fill(&account.home);
        rescan(&store, &account).await.unwrap();
        let store: Arc<dyn AccountStore> = Arc::new(store);
        let settings = ServerSettings {
            upload_mode: setup.upload_mode,
            ..ServerSettings::default()
        };
        let core = ServerCore::new(
            Authenticator::new(Arc::clone(&store)),
            EventBus::default(),
            settings,
        );
        let a = login(&core).await;
        let b = login(&core).await;
        Account2 {
            tmp,
            store,
            core,
            a,
            b,
        }
    }

    /// Another session of the account.
    async fn login(&self) -> Session {
        login(&self.core).await
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

async fn login(core: &ServerCore) -> Session {
    let client = ClientInfo::new(Protocol::Sftp, "127.0.0.1".parse().unwrap());
    core.login("u", "pw", &client).await.unwrap()
}

fn path(s: &str) -> VirtualPath {
    VirtualPath::parse(s).unwrap()
}

/// What the files in `dir` hold: each name is a file, and the bytes of a file with several names count once.
fn usage(bytes: u64, files: u64) -> QuotaUsage {
    QuotaUsage { bytes, files }
}

fn disk_usage(dir: &Path) -> QuotaUsage {
    let mut usage = QuotaUsage::default();
    let mut seen = HashSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        if meta.is_file() {
            usage.files += 1;
            if seen.insert(meta.ino()) {
                usage.bytes += meta.len();
            }
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
    let counted = usage(47, 2);
    assert_eq!(acct.a.quota().usage(), counted);
    // Writing on into the deleted file is charged as before.
    up.write(&[b'y'; 5]).await.unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 52);
    up.finish().await.unwrap();
    assert_eq!(acct.a.quota().usage(), usage(7, 1));
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn a_file_replaced_by_a_rename_under_its_upload_is_given_back_when_the_upload_ends() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/f", 30).await;
    acct.put("/g", 20).await;
    let mut up = acct.open("/f", WriteMode::Append).await;
    acct.b.rename(&path("/g"), &path("/f")).await.unwrap();
    assert_eq!(acct.a.quota().usage(), usage(50, 2));
    up.write(&[b'y'; 5]).await.unwrap();
    up.finish().await.unwrap();
    acct.assert_charged_for_disk().await;
    assert_eq!(std::fs::read(acct.home().join("f")).unwrap(), [b'x'; 20]);
}

/// An upload whose last write closed its file (FTP's last buffer) has nothing to look at its file through when it
/// ends: a removal, a rename over it or a truncation from another session after that write used to leave the file's
/// bytes counted for good.
#[tokio::test]
async fn a_file_changed_after_the_last_write_of_its_upload_is_accounted_when_the_upload_ends() {
    for change in ["remove", "rename over", "truncate"] {
        let acct = Account2::new(UploadMode::Direct).await;
        acct.put("/keep", 7).await;
        acct.put("/g", 3).await;
        let mut up = acct.open("/f", WriteMode::Truncate).await;
        up.write(&[b'y'; 20]).await.unwrap();
        up.write_last(vec![b'y'; 10]).await.unwrap();
        match change {
            "remove" => acct.b.remove(&path("/f")).await.unwrap(),
            "rename over" => acct.b.rename(&path("/g"), &path("/f")).await.unwrap(),
            _ => acct.b.set_len(&path("/f"), 4).await.unwrap(),
        }
        up.finish().await.unwrap();
        acct.assert_charged_for_disk().await;
    }
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
    assert_eq!(acct.a.quota().usage(), usage(60, 1));
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
    assert_eq!(acct.a.quota().usage(), usage(30, 1));
    // Its temporary file removed under it, an upload that breaks off gives back all it counted.
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'y'; 10]).await.unwrap();
    up.fail("broken off").await;
    acct.assert_charged_for_disk().await;
}

/// No quota, so that hard links may be made; usage is still kept.
fn unlimited() -> Setup {
    Setup {
        quota: Quota::default(),
        ..Setup::default()
    }
}

/// The name of the one temporary file of an atomic upload in `dir`.
fn temp_file_in(dir: &Path) -> String {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".ferry-upload-"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names.into_iter().next().unwrap()
}

/// The review's bypass: an empty file linked, grown through one name, the other name removed, repeated.
#[tokio::test]
async fn hard_links_are_refused_to_accounts_with_a_quota() {
    let acct = Account2::new(UploadMode::Direct).await;
    acct.put("/a", 0).await;
    assert!(matches!(
        acct.b.hard_link(&path("/a"), &path("/link")).await,
        Err(CoreError::AccessDenied)
    ));
    assert!(!acct.home().join("link").exists());
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn a_name_removed_from_a_linked_file_gives_back_the_file_count_only() {
    let acct = Account2::with(unlimited(), |home| {
        std::fs::write(home.join("a"), [b'a'; 30]).unwrap();
        std::fs::hard_link(home.join("a"), home.join("admin-link")).unwrap();
    })
    .await;
    acct.assert_charged_for_disk().await;
    acct.b.hard_link(&path("/a"), &path("/link")).await.unwrap();
    acct.assert_charged_for_disk().await;
    let mut up = acct.open("/a", WriteMode::Append).await;
    up.write(&[b'y'; 20]).await.unwrap();
    up.finish().await.unwrap();
    acct.b.remove(&path("/link")).await.unwrap();
    acct.assert_charged_for_disk().await;
    acct.put("/other", 5).await;
    acct.b
        .rename(&path("/other"), &path("/admin-link"))
        .await
        .unwrap();
    acct.assert_charged_for_disk().await;
    acct.b.remove(&path("/a")).await.unwrap();
    assert_eq!(acct.a.quota().usage(), usage(5, 1));
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn a_name_removed_while_an_upload_has_the_file_open_by_another_gives_back_its_file() {
    let acct = Account2::with(unlimited(), |home| {
        std::fs::write(home.join("a"), [b'a'; 30]).unwrap();
        std::fs::hard_link(home.join("a"), home.join("b")).unwrap();
    })
    .await;
    let mut up = acct.open("/a", WriteMode::Append).await;
    up.write(&[b'y'; 10]).await.unwrap();
    acct.b.remove(&path("/b")).await.unwrap();
    up.finish().await.unwrap();
    acct.assert_charged_for_disk().await;
    assert_eq!(acct.a.quota().usage(), usage(40, 1));
}

/// Another session renamed or deleted an upload's temporary file: its data stayed on disk, uncounted, or a file
/// that was never counted was given back.
#[tokio::test]
async fn temporary_files_of_atomic_uploads_are_out_of_every_client_s_reach() {
    let acct = Account2::new(UploadMode::Atomic).await;
    acct.put("/x", 10).await;
    let mut up = acct.open("/x", WriteMode::Truncate).await;
    up.write(&[b'n'; 20]).await.unwrap();
    let temp = temp_file_in(&acct.home());
    let temp_path = path(&format!("/{temp}"));
    let b = &acct.b;
    let mut listing = b.list(&path("/")).await.unwrap();
    let mut listed = Vec::new();
    while let Some(entry) = listing.next().await {
        listed.push(entry.unwrap().name);
    }
    assert_eq!(listed, ["x"]);
    let not_found = |what: &str, r: Result<(), CoreError>| {
        assert!(matches!(r, Err(CoreError::NotFound)), "{what}: {r:?}");
    };
    not_found("stat", b.metadata(&temp_path).await.map(drop));
    not_found("lstat", b.symlink_metadata(&temp_path).await.map(drop));
    not_found("download", b.open_read(&temp_path, 0).await.map(drop));
    not_found("remove", b.remove(&temp_path).await);
    not_found("rename", b.rename(&temp_path, &path("/stolen")).await);
    not_found("truncate", b.set_len(&temp_path, 0).await);
    not_found("chmod", b.set_mode(&temp_path, 0o600).await);
    not_found("link", b.hard_link(&temp_path, &path("/stolen")).await);
    not_found("symlink", b.symlink(&temp, &path("/sym")).await);
    let invalid = |what: &str, r: Result<(), CoreError>| {
        assert!(matches!(r, Err(CoreError::InvalidName(_))), "{what}: {r:?}");
    };
    invalid("rename onto", b.rename(&path("/x"), &temp_path).await);
    invalid("mkdir", b.mkdir(&temp_path).await);
    invalid(
        "upload",
        b.open_write(&temp_path, WriteMode::Truncate)
            .await
            .map(drop),
    );
    up.finish().await.unwrap();
    assert_eq!(std::fs::read(acct.home().join("x")).unwrap(), [b'n'; 20]);
    acct.assert_charged_for_disk().await;
}

/// An atomic upload of `/n`, which does not exist when it starts, while session `b` creates `/n` with 30 bytes;
/// the upload then ends with `end`. Returns the result and what `/n` holds.
async fn atomic_upload_racing_a_new_file(
    permissions: &str,
    end: fn(Upload) -> upload_ends::End,
) -> (Account2, Result<u64, CoreError>, Vec<u8>) {
    let acct = Account2::with(
        Setup {
            upload_mode: UploadMode::Atomic,
            permissions: permissions.parse().unwrap(),
            ..Setup::default()
        },
        |_| {},
    )
    .await;
    let mut up = acct.open("/n", WriteMode::Truncate).await;
    up.write(&[b'a'; 10]).await.unwrap();
    let mut other = acct
        .b
        .open_write(&path("/n"), WriteMode::Truncate)
        .await
        .unwrap();
    other.write(&[b'b'; 30]).await.unwrap();
    other.finish().await.unwrap();
    let result = end(up).await;
    let held = std::fs::read(acct.home().join("n")).unwrap();
    (acct, result, held)
}

/// Ways an upload ends, as futures of its result.
mod upload_ends {
    use std::future::Future;
    use std::pin::Pin;

    use ferry_core::transfer::Upload;
    use ferry_core::CoreError;

    pub type End = Pin<Box<dyn Future<Output = Result<u64, CoreError>>>>;

    pub fn finish(up: Upload) -> End {
        Box::pin(up.finish())
    }

    pub fn fail(up: Upload) -> End {
        Box::pin(async move {
            up.fail("broken off").await;
            Err(CoreError::Aborted)
        })
    }
}

#[tokio::test]
async fn an_atomic_upload_does_not_replace_a_file_created_meanwhile_without_overwrite() {
    let no_overwrite = "list,download,upload,delete,rename";
    let (acct, result, held) =
        atomic_upload_racing_a_new_file(no_overwrite, upload_ends::finish).await;
    assert!(
        matches!(result, Err(CoreError::AlreadyExists)),
        "{result:?}"
    );
    assert_eq!(held, [b'b'; 30]);
    assert_eq!(std::fs::read_dir(acct.home()).unwrap().count(), 1);
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn an_atomic_upload_replaces_a_file_created_meanwhile_with_overwrite_and_gives_it_back() {
    let (acct, result, held) = atomic_upload_racing_a_new_file("all", upload_ends::finish).await;
    assert_eq!(result.unwrap(), 10);
    assert_eq!(held, [b'a'; 10]);
    assert_eq!(std::fs::read_dir(acct.home()).unwrap().count(), 1);
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn a_broken_off_atomic_upload_never_replaces_a_file_created_meanwhile() {
    for permissions in ["all", "list,download,upload,delete,rename"] {
        let (acct, _, held) = atomic_upload_racing_a_new_file(permissions, upload_ends::fail).await;
        assert_eq!(held, [b'b'; 30], "{permissions}");
        assert_eq!(std::fs::read_dir(acct.home()).unwrap().count(), 1);
        acct.assert_charged_for_disk().await;
    }
}

/// `RANG 0 2` and STOR: before the fix, atomic mode replaced the file with the two bytes.
#[tokio::test]
async fn an_atomic_mode_write_from_the_start_that_keeps_the_rest_writes_in_place() {
    let acct = Account2::new(UploadMode::Atomic).await;
    let mut up = acct.open("/x", WriteMode::Truncate).await;
    up.write(b"0123456789").await.unwrap();
    up.finish().await.unwrap();
    let keep_rest = WriteMode::At {
        offset: 0,
        truncate: false,
    };
    let mut up = acct.open("/x", keep_rest).await;
    up.write(b"AB").await.unwrap();
    up.finish().await.unwrap();
    assert_eq!(std::fs::read(acct.home().join("x")).unwrap(), b"AB23456789");
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn growing_a_file_by_its_size_needs_upload_and_shrinking_it_overwrite() {
    let setup = |permissions: &str| Setup {
        permissions: permissions.parse().unwrap(),
        ..Setup::default()
    };
    let fill = |home: &Path| std::fs::write(home.join("f"), b"abc").unwrap();
    let acct = Account2::with(setup("list,download,overwrite"), fill).await;
    assert!(matches!(
        acct.a.set_len(&path("/f"), 50).await,
        Err(CoreError::PermissionDenied(Permission::Upload))
    ));
    acct.a.set_len(&path("/f"), 1).await.unwrap();
    let acct = Account2::with(setup("list,download,upload"), fill).await;
    assert!(matches!(
        acct.a.set_len(&path("/f"), 1).await,
        Err(CoreError::PermissionDenied(Permission::Overwrite))
    ));
    acct.a.set_len(&path("/f"), 50).await.unwrap();
    assert_eq!(std::fs::metadata(acct.home().join("f")).unwrap().len(), 50);
    acct.assert_charged_for_disk().await;
}

/// Runs `test` on a runtime with several worker threads, where sessions' operations really run at once.
fn on_many_threads(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// An account without limits holding a file of 1000 bytes, which keeps the counters away from 0 (where a release
/// made twice would be hidden), and `n` more sessions of it.
async fn busy_account(n: usize) -> (Account2, Vec<Session>) {
    let acct = Account2::with(unlimited(), |_| {}).await;
    acct.put("/base", 1000).await;
    let mut sessions = Vec::new();
    for _ in 0..n {
        sessions.push(acct.login().await);
    }
    (acct, sessions)
}

/// Runs `op` on every session at once and waits for all; their errors are expected (all but one find the file
/// gone) and ignored.
async fn all_at_once<F, Fut>(sessions: &[Session], op: F)
where
    F: Fn(usize, Session) -> Fut,
    Fut: std::future::Future<Output = Result<(), CoreError>> + Send + 'static,
{
    let tasks: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(op(i, s.clone())))
        .collect();
    for task in tasks {
        let _ = task.await.unwrap();
    }
}

#[test]
fn concurrent_truncations_of_one_file_give_its_bytes_back_once() {
    on_many_threads(async {
        let (acct, sessions) = busy_account(6).await;
        for _ in 0..30 {
            acct.put("/victim", 100).await;
            all_at_once(&sessions, |_, s| async move {
                s.set_len(&path("/victim"), 0).await
            })
            .await;
            acct.assert_charged_for_disk().await;
        }
    });
}

#[test]
fn concurrent_renames_onto_one_file_give_back_each_file_they_replace() {
    on_many_threads(async {
        let (acct, sessions) = busy_account(6).await;
        for _ in 0..30 {
            acct.put("/t", 100).await;
            for i in 0..sessions.len() {
                acct.put(&format!("/s{i}"), 1).await;
            }
            all_at_once(&sessions, |i, s| async move {
                s.rename(&path(&format!("/s{i}")), &path("/t")).await
            })
            .await;
            acct.assert_charged_for_disk().await;
        }
    });
}

#[test]
fn removals_racing_a_rename_onto_the_same_name_give_back_what_they_removed() {
    on_many_threads(async {
        let (acct, sessions) = busy_account(4).await;
        for _ in 0..30 {
            acct.put("/t", 100).await;
            acct.put("/s", 1).await;
            all_at_once(&sessions, |i, s| async move {
                if i == 0 {
                    s.rename(&path("/s"), &path("/t")).await
                } else {
                    s.remove(&path("/t")).await
                }
            })
            .await;
            acct.assert_charged_for_disk().await;
            for name in ["/s", "/t"] {
                let _ = acct.a.remove(&path(name)).await;
            }
        }
    });
}

/// Uploads `pieces` of 1,000 bytes to `name` from `session`, the last as FTP does (the storage may close the file
/// with it), and finishes, or ends the upload as failed at the first error (the file removed under it); here rather
/// than dropped, which would record it in the background.
async fn upload_pieces(session: Session, name: &str, mode: WriteMode, pieces: usize) {
    let Ok(mut up) = session.open_write(&path(name), mode).await else {
        return;
    };
    for piece in 0..pieces {
        let written = if piece + 1 == pieces {
            up.write_last(vec![b'u'; 1000]).await
        } else {
            up.write(&[b'u'; 1000]).await
        };
        if let Err(e) = written {
            up.fail(&e).await;
            return;
        }
    }
    let _ = up.finish().await;
}

/// Two uploads of one name (one appending, one replacing) while another session removes it, resizes it or renames a
/// file over it: each of these found holes in the accounting. An upload that grew the file and ended between a
/// removal's look and its release had its growth counted for good (FTP clients storing and deleting one name in a
/// loop left megabytes counted for an empty home); an upload opened in the window between another operation's look
/// and act was given back twice or not at all; a resize that looked at the old data of a file an upload was about
/// to empty counted too little (stored usage below the disk's); two uploads that created the file at once counted it
/// twice; and the stored usage, kept by adding each operation's change, lost changes that arrived out of order and
/// dipped below zero.
#[test]
fn removals_and_truncations_racing_uploads_of_the_same_name_end_charged_for_the_disk() {
    on_many_threads(async {
        let (acct, sessions) = busy_account(3).await;
        for round in 0..150 {
            let tasks = [
                tokio::spawn(upload_pieces(
                    sessions[0].clone(),
                    "/f",
                    WriteMode::Append,
                    round % 4 + 1,
                )),
                tokio::spawn(upload_pieces(
                    sessions[1].clone(),
                    "/f",
                    WriteMode::Truncate,
                    round % 3,
                )),
            ];
            for _ in 0..3 {
                tokio::task::yield_now().await;
                let other = &sessions[2];
                let _ = match round % 3 {
                    0 => other.remove(&path("/f")).await,
                    1 => other.set_len(&path("/f"), 500).await,
                    _ => other.rename(&path("/base"), &path("/f")).await,
                };
            }
            for task in tasks {
                task.await.unwrap();
            }
            acct.assert_charged_for_disk().await;
            if round % 3 == 2 && !acct.home().join("base").exists() {
                acct.put("/base", 1000).await;
            }
        }
    });
}

/// Two FTP-like uploads of one name while a third session deletes it. The first upload's last write closes its file,
/// so once the name is deleted nothing holds the file, and the kernel may give the second upload's new file the
/// same inode number while the first is still ending: the two were counted as one file (the file count ended
/// above the disk's).
#[test]
fn uploads_of_one_name_racing_its_deletion_end_charged_for_the_disk() {
    on_many_threads(async {
        let (acct, sessions) = busy_account(3).await;
        for round in 0..300 {
            let tasks = [
                tokio::spawn(upload_pieces(
                    sessions[0].clone(),
                    "/f",
                    WriteMode::Truncate,
                    round % 3 + 1,
                )),
                tokio::spawn(upload_pieces(
                    sessions[1].clone(),
                    "/f",
                    WriteMode::Truncate,
                    round % 2 + 1,
                )),
            ];
            for _ in 0..2 {
                tokio::task::yield_now().await;
                let _ = sessions[2].remove(&path("/f")).await;
            }
            for task in tasks {
                task.await.unwrap();
            }
            acct.assert_charged_for_disk().await;
        }
    });
}

/// A replacing upload empties its file at its first write, which takes no lock, so a resize from another session
/// could look at the old data, count its growth from there, and extend the file the upload had just rewritten; with
/// the file then renamed away, the upload, its file closed by its last write, could not settle the count at its
/// end: the usage ended below the disk's (5 and 13 rounds of 400 in a review). The resize now counts from what is
/// counted for the file (erring high).
#[test]
fn a_resize_racing_a_replacing_upload_never_leaves_the_usage_below_the_disk() {
    on_many_threads(async {
        let (acct, sessions) = busy_account(3).await;
        let gap = |acct: &Account2| {
            acct.a.quota().usage().bytes as i64 - disk_usage(&acct.home()).bytes as i64
        };
        let mut before = gap(&acct);
        for round in 0..400 {
            acct.put("/f", 20_000).await;
            let mut up = sessions[0]
                .open_write(&path("/f"), WriteMode::Truncate)
                .await
                .unwrap();
            let b = sessions[1].clone();
            let resize = tokio::spawn(async move { b.set_len(&path("/f"), 30_000).await });
            for _ in 0..(round % 4) {
                tokio::task::yield_now().await;
            }
            up.write_last(vec![b'n'; 30]).await.unwrap();
            let _ = resize.await.unwrap();
            sessions[2].rename(&path("/f"), &path("/g")).await.unwrap();
            up.finish().await.unwrap();
            sessions[2].remove(&path("/g")).await.unwrap();
            let after = gap(&acct);
            assert!(
                after >= before,
                "round {round}: usage minus disk went {before} -> {after}"
            );
            before = after;
        }
    });
}

/// An account in atomic mode with a quota of 1,000 bytes, at 700: `/f` of 400 bytes and `/other` of 300.
async fn atomic_account_at_700_of_1000() -> Account2 {
    let setup = Setup {
        upload_mode: UploadMode::Atomic,
        quota: Quota {
            max_bytes: Some(1000),
            max_files: Some(10),
        },
        ..Setup::default()
    };
    Account2::with(setup, |home| {
        std::fs::write(home.join("f"), [b'o'; 400]).unwrap();
        std::fs::write(home.join("other"), [b'x'; 300]).unwrap();
    })
    .await
}

/// Before the fix the new copy counted beside the old one: 700 + 400 passed the quota, and the upload failed.
#[tokio::test]
async fn an_atomic_replace_is_allowed_when_the_result_fits_the_quota() {
    let acct = atomic_account_at_700_of_1000().await;
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'n'; 400]).await.unwrap();
    up.finish().await.unwrap();
    assert_eq!(std::fs::read(acct.home().join("f")).unwrap(), [b'n'; 400]);
    assert_eq!(acct.a.quota().usage(), usage(700, 2));
    acct.assert_charged_for_disk().await;
    // The new copy may take all the room the old one leaves: 700 bytes, not one more.
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'm'; 700]).await.unwrap();
    assert!(matches!(
        up.write(b"m").await,
        Err(CoreError::QuotaExceeded(_))
    ));
    up.finish().await.unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 1000);
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn an_atomic_replace_whose_old_file_is_deleted_meanwhile_never_stores_past_the_quota() {
    let acct = atomic_account_at_700_of_1000().await;
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'n'; 350]).await.unwrap();
    acct.b.remove(&path("/f")).await.unwrap();
    // The deleted file stays counted while the upload runs: the account cannot use its room twice.
    assert_eq!(acct.a.quota().usage().bytes, 1050);
    let mut other = acct
        .b
        .open_write(&path("/g"), WriteMode::Truncate)
        .await
        .unwrap();
    assert!(matches!(
        other.write(b"g").await,
        Err(CoreError::QuotaExceeded(_))
    ));
    other.fail("quota").await;
    up.write(&[b'n'; 350]).await.unwrap();
    assert!(matches!(
        up.write(b"n").await,
        Err(CoreError::QuotaExceeded(_))
    ));
    assert!(disk_usage(&acct.home()).bytes <= 1000);
    assert!(acct.a.quota().usage().bytes <= 1000 + 400);
    up.finish().await.unwrap();
    assert_eq!(std::fs::read(acct.home().join("f")).unwrap(), [b'n'; 700]);
    // `/g` was kept, empty, for its client to resume.
    assert_eq!(acct.a.quota().usage(), usage(1000, 3));
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn an_atomic_replace_whose_old_file_is_truncated_meanwhile_gives_it_back_once() {
    let acct = atomic_account_at_700_of_1000().await;
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'n'; 500]).await.unwrap();
    acct.b.set_len(&path("/f"), 0).await.unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 1200);
    up.finish().await.unwrap();
    assert_eq!(acct.a.quota().usage().bytes, 800);
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn an_aborted_atomic_replace_leaves_usage_as_it_was() {
    let acct = atomic_account_at_700_of_1000().await;
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'n'; 600]).await.unwrap();
    up.fail("broken off").await;
    assert_eq!(std::fs::read(acct.home().join("f")).unwrap(), [b'o'; 400]);
    assert_eq!(acct.a.quota().usage(), usage(700, 2));
    acct.assert_charged_for_disk().await;
    // Its old file deleted meanwhile: the deletion's bytes and file are given back when the pin goes.
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'n'; 600]).await.unwrap();
    acct.b.remove(&path("/f")).await.unwrap();
    up.fail("broken off").await;
    assert_eq!(acct.a.quota().usage(), usage(300, 1));
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn an_aborted_atomic_replace_whose_old_file_was_shrunk_meanwhile_is_charged_what_remains() {
    let acct = atomic_account_at_700_of_1000().await;
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'n'; 600]).await.unwrap();
    acct.b.set_len(&path("/f"), 100).await.unwrap();
    assert_eq!(
        acct.a.quota().usage().bytes,
        1300,
        "the cut bytes stay pinned"
    );
    up.fail("broken off").await;
    assert_eq!(acct.a.quota().usage().bytes, 400);
    acct.assert_charged_for_disk().await;
}

/// Renamed away, the old file stays on the disk: an upload that used its room cannot replace something else.
#[tokio::test]
async fn an_atomic_replace_whose_old_file_was_renamed_away_must_fit_without_it() {
    let acct = atomic_account_at_700_of_1000().await;
    let mut up = acct.open("/f", WriteMode::Truncate).await;
    up.write(&[b'n'; 600]).await.unwrap();
    acct.b.rename(&path("/f"), &path("/moved")).await.unwrap();
    assert!(matches!(
        up.finish().await,
        Err(CoreError::QuotaExceeded(_))
    ));
    assert!(!acct.home().join("f").exists());
    assert_eq!(acct.a.quota().usage().bytes, 700);
    acct.assert_charged_for_disk().await;
    // One that fits beside it completes, as a new file.
    let mut up = acct.open("/moved", WriteMode::Truncate).await;
    up.write(&[b'n'; 250]).await.unwrap();
    acct.b.rename(&path("/moved"), &path("/f")).await.unwrap();
    up.finish().await.unwrap();
    assert_eq!(acct.a.quota().usage(), usage(950, 3));
    acct.assert_charged_for_disk().await;
}

#[tokio::test]
async fn two_atomic_replaces_of_one_file_give_it_back_once() {
    let acct = atomic_account_at_700_of_1000().await;
    let mut first = acct.open("/f", WriteMode::Truncate).await;
    let mut second = acct
        .b
        .open_write(&path("/f"), WriteMode::Truncate)
        .await
        .unwrap();
    // Each may pass the quota by the old file's 400 bytes, together not more: whichever ends last fits.
    first.write(&[b'1'; 300]).await.unwrap();
    second.write(&[b'2'; 400]).await.unwrap();
    assert!(matches!(
        second.write(b"2").await,
        Err(CoreError::QuotaExceeded(_))
    ));
    first.finish().await.unwrap();
    assert_eq!(
        acct.a.quota().usage().bytes,
        1400,
        "the second pin holds the old file"
    );
    second.finish().await.unwrap();
    assert_eq!(std::fs::read(acct.home().join("f")).unwrap(), [b'2'; 400]);
    assert_eq!(acct.a.quota().usage(), usage(700, 2));
    acct.assert_charged_for_disk().await;
}

/// The other operation races the upload's open too: a deletion can free an inode that the upload's new temporary file
/// then reuses while the deleted file is still pinned.
#[test]
fn atomic_replaces_racing_deletions_renames_and_truncations_end_within_the_quota() {
    on_many_threads(async {
        let acct = atomic_account_at_700_of_1000().await;
        for round in 0..45 {
            for name in ["/f", "/moved"] {
                let _ = acct.a.remove(&path(name)).await;
            }
            acct.put("/f", 400).await;
            let b = acct.b.clone();
            let a = acct.a.clone();
            let upload = tokio::spawn(async move {
                let mut up = a.open_write(&path("/f"), WriteMode::Truncate).await?;
                for _ in 0..7 {
                    // Ended here rather than dropped, which would record it in the background.
                    if let Err(e) = up.write(&[b'n'; 100]).await {
                        up.fail(&e).await;
                        return Err(e);
                    }
                    tokio::task::yield_now().await;
                }
                up.finish().await.map(drop)
            });
            let other = tokio::spawn(async move {
                match round % 3 {
                    0 => b.remove(&path("/f")).await,
                    1 => b.set_len(&path("/f"), 0).await,
                    _ => b.rename(&path("/f"), &path("/moved")).await,
                }
            });
            let _ = upload.await.unwrap();
            let _ = other.await.unwrap();
            acct.assert_charged_for_disk().await;
            assert!(disk_usage(&acct.home()).bytes <= 1000, "round {round}");
        }
    });
}

/// An append to the old file from another session (in place, in either mode) shares its registration with the pin.
#[tokio::test]
async fn an_append_to_the_file_an_atomic_upload_replaces_is_given_back_with_it() {
    for append_ends_first in [false, true] {
        let acct = atomic_account_at_700_of_1000().await;
        let mut replace = acct.open("/f", WriteMode::Truncate).await;
        replace.write(&[b'n'; 200]).await.unwrap();
        let mut append = acct
            .b
            .open_write(&path("/f"), WriteMode::Append)
            .await
            .unwrap();
        append.write(&[b'a'; 50]).await.unwrap();
        assert!(matches!(
            append.write(&[b'a'; 51]).await,
            Err(CoreError::QuotaExceeded(_))
        ));
        if append_ends_first {
            append.finish().await.unwrap();
            replace.finish().await.unwrap();
        } else {
            replace.finish().await.unwrap();
            assert_eq!(
                acct.a.quota().usage().bytes,
                950,
                "the append holds the old file"
            );
            append.finish().await.unwrap();
        }
        assert_eq!(std::fs::read(acct.home().join("f")).unwrap(), [b'n'; 200]);
        assert_eq!(
            acct.a.quota().usage(),
            usage(500, 2),
            "append ends first: {append_ends_first}"
        );
        acct.assert_charged_for_disk().await;
    }
}
