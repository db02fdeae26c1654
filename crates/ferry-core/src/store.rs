//! The embedded SQLite [`AccountStore`]: the default, so that `ferry serve` works with no setup. The database is
//! in WAL mode, so `ferry user ...` can change accounts while a server is running. A server sees such a change at the
//! next login: logins ask [`AccountStore::generation`], SQLite's `data_version`, whether anything changed since
//! the account was last read.

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use crate::account::{Account, AccountStore, DirPermissions, Quota, QuotaUsage, RateLimits};
use crate::error::{CoreError, CoreResult};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    name            TEXT PRIMARY KEY,
    home            TEXT NOT NULL,
    password_hash   TEXT,
    permissions     TEXT NOT NULL,
    dir_permissions TEXT NOT NULL DEFAULT '',
    quota_bytes     INTEGER,
    quota_files     INTEGER,
    max_sessions    INTEGER,
    allowed_ips     TEXT NOT NULL DEFAULT '',
    public_keys     TEXT NOT NULL DEFAULT '',
    used_bytes      INTEGER NOT NULL DEFAULT 0,
    used_files      INTEGER NOT NULL DEFAULT 0,
    upload_rate     INTEGER,
    download_rate   INTEGER
);";

/// Columns added after the first release, with their types: a database made before gets them when opened.
const ADDED_COLUMNS: [(&str, &str); 2] = [("upload_rate", "INTEGER"), ("download_rate", "INTEGER")];

const COLUMNS: &str =
    "name, home, password_hash, permissions, dir_permissions, quota_bytes, quota_files, max_sessions, allowed_ips, public_keys, upload_rate, download_rate";

/// Accounts in one SQLite file.
#[derive(Clone)]
pub struct SqliteAccountStore {
    conn: Arc<Mutex<Connection>>,
    /// A second connection that only reads `PRAGMA data_version`, so that the check never waits behind a write
    /// on `conn`. Its value changes with every commit of any other connection, in this process or another.
    watch: Arc<Mutex<Connection>>,
}

impl SqliteAccountStore {
    /// Opens (creating if needed) the database at `path`, with mode 0600.
    pub fn open(path: &Path) -> CoreResult<Self> {
        let conn = Connection::open(path).map_err(store_error)?;
        set_private(path);
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(store_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(store_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(store_error)?;
        conn.execute_batch(SCHEMA).map_err(store_error)?;
        add_missing_columns(&conn).map_err(store_error)?;
        let watch = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(store_error)?;
        Ok(SqliteAccountStore {
            conn: Arc::new(Mutex::new(conn)),
            watch: Arc::new(Mutex::new(watch)),
        })
    }

    async fn with<T, F>(&self, f: F) -> CoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn).map_err(store_error)
        })
        .await
        .map_err(|e| CoreError::Store(e.to_string()))?
    }
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// Adds the [`ADDED_COLUMNS`] a database made by an earlier version lacks (empty: no limit).
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let present = conn
        .prepare("SELECT name FROM pragma_table_info('accounts')")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (name, kind) in ADDED_COLUMNS {
        if !present.iter().any(|p| p == name) {
            conn.execute_batch(&format!("ALTER TABLE accounts ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}

fn store_error(e: rusqlite::Error) -> CoreError {
    CoreError::Store(e.to_string())
}

fn bad_column(index: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty())
}

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    let permissions: String = row.get(3)?;
    let dir_permissions: String = row.get(4)?;
    let allowed_ips: String = row.get(8)?;
    let public_keys: String = row.get(9)?;
    let optional_u64 = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    Ok(Account {
        name: row.get(0)?,
        home: PathBuf::from(row.get::<_, String>(1)?),
        password_hash: row.get(2)?,
        permissions: permissions.parse().map_err(|e| bad_column(3, e))?,
        dir_permissions: lines(&dir_permissions)
            .map(|l| l.parse::<DirPermissions>().map_err(|e| bad_column(4, e)))
            .collect::<rusqlite::Result<_>>()?,
        quota: Quota {
            max_bytes: optional_u64(5)?,
            max_files: optional_u64(6)?,
        },
        max_sessions: row
            .get::<_, Option<i64>>(7)?
            .map(|v| v.clamp(0, i64::from(u32::MAX)) as u32),
        allowed_ips: lines(&allowed_ips)
            .map(|l| l.parse().map_err(|e| bad_column(8, e)))
            .collect::<rusqlite::Result<_>>()?,
        public_keys: lines(&public_keys).map(str::to_owned).collect(),
        rates: RateLimits {
            upload: optional_u64(10)?.and_then(NonZeroU64::new),
            download: optional_u64(11)?.and_then(NonZeroU64::new),
        },
    })
}

/// The account's columns in [`COLUMNS`] order, as SQL values.
fn account_values(a: &Account) -> [rusqlite::types::Value; 12] {
    use rusqlite::types::Value;
    let join = |items: Vec<String>| items.join("\n");
    let opt = |v: Option<u64>| {
        v.map_or(Value::Null, |v| {
            Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
        })
    };
    [
        Value::Text(a.name.clone()),
        Value::Text(a.home.to_string_lossy().into_owned()),
        a.password_hash.clone().map_or(Value::Null, Value::Text),
        Value::Text(a.permissions.to_string()),
        Value::Text(join(
            a.dir_permissions
                .iter()
                .map(|d| format!("{}={}", d.path, d.permissions))
                .collect(),
        )),
        opt(a.quota.max_bytes),
        opt(a.quota.max_files),
        opt(a.max_sessions.map(u64::from)),
        Value::Text(join(a.allowed_ips.iter().map(|n| n.to_string()).collect())),
        Value::Text(join(a.public_keys.clone())),
        opt(a.rates.upload.map(NonZeroU64::get)),
        opt(a.rates.download.map(NonZeroU64::get)),
    ]
}

#[async_trait]
impl AccountStore for SqliteAccountStore {
    async fn get(&self, name: &str) -> CoreResult<Option<Account>> {
        let name = name.to_owned();
        self.with(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM accounts WHERE name = ?1"))?
                .query_row([name], account_from_row)
                .optional()
        })
        .await
    }

    async fn list(&self) -> CoreResult<Vec<Account>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM accounts ORDER BY name"))?;
            let rows = stmt.query_map([], account_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn create(&self, account: &Account) -> CoreResult<()> {
        let values = account_values(account);
        let inserted = self
            .with(move |c| {
                c.execute(
                    &format!("INSERT OR IGNORE INTO accounts ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"),
                    rusqlite::params_from_iter(values),
                )
            })
            .await?;
        if inserted == 0 {
            return Err(CoreError::AlreadyExists);
        }
        Ok(())
    }

    async fn update(&self, account: &Account) -> CoreResult<()> {
        let values = account_values(account);
        let updated = self
            .with(move |c| {
                c.execute(
                    "UPDATE accounts SET home=?2, password_hash=?3, permissions=?4, dir_permissions=?5, quota_bytes=?6,
                     quota_files=?7, max_sessions=?8, allowed_ips=?9, public_keys=?10, upload_rate=?11,
                     download_rate=?12 WHERE name=?1",
                    rusqlite::params_from_iter(values),
                )
            })
            .await?;
        if updated == 0 {
            return Err(CoreError::NotFound);
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> CoreResult<bool> {
        let name = name.to_owned();
        Ok(self
            .with(move |c| c.execute("DELETE FROM accounts WHERE name = ?1", [name]))
            .await?
            > 0)
    }

    async fn usage(&self, name: &str) -> CoreResult<QuotaUsage> {
        let name = name.to_owned();
        let usage = self
            .with(move |c| {
                c.query_row(
                    "SELECT used_bytes, used_files FROM accounts WHERE name = ?1",
                    [name],
                    |r| {
                        Ok(QuotaUsage {
                            bytes: r.get::<_, i64>(0)?.max(0) as u64,
                            files: r.get::<_, i64>(1)?.max(0) as u64,
                        })
                    },
                )
                .optional()
            })
            .await?;
        Ok(usage.unwrap_or_default())
    }

    async fn add_usage(&self, name: &str, bytes: i64, files: i64) -> CoreResult<()> {
        let name = name.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE accounts SET used_bytes = used_bytes + ?2, used_files = used_files + ?3 WHERE name = ?1",
                params![name, bytes, files],
            )
        })
        .await
        .map(drop)
    }

    async fn set_usage(&self, name: &str, usage: QuotaUsage) -> CoreResult<()> {
        let name = name.to_owned();
        let (bytes, files) = (
            i64::try_from(usage.bytes).unwrap_or(i64::MAX),
            i64::try_from(usage.files).unwrap_or(i64::MAX),
        );
        self.with(move |c| {
            c.execute(
                "UPDATE accounts SET used_bytes = ?2, used_files = ?3 WHERE name = ?1",
                params![name, bytes, files],
            )
        })
        .await
        .map(drop)
    }

    fn generation(&self) -> Option<u64> {
        // Runs on the caller's (async) thread. It does not wait for I/O: the connection is held only for this
        // pragma, which in WAL mode reads SQLite's shared-memory index under non-blocking locks; only after a
        // change does it re-read the first page, from the page cache.
        let watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let version = watch
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)))
            .ok()?;
        u64::try_from(version).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Permissions;

    #[tokio::test]
    async fn a_database_of_an_earlier_version_gets_the_new_columns() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE accounts (name TEXT PRIMARY KEY, home TEXT NOT NULL, password_hash TEXT,
                permissions TEXT NOT NULL, dir_permissions TEXT NOT NULL DEFAULT '', quota_bytes INTEGER,
                quota_files INTEGER, max_sessions INTEGER, allowed_ips TEXT NOT NULL DEFAULT '',
                public_keys TEXT NOT NULL DEFAULT '', used_bytes INTEGER NOT NULL DEFAULT 0,
                used_files INTEGER NOT NULL DEFAULT 0);
             INSERT INTO accounts (name, home, permissions) VALUES ('bob', '/srv/bob', 'all');",
        )
        .unwrap();
        drop(old);

        let store = SqliteAccountStore::open(&path).unwrap();
        let mut bob = store.get("bob").await.unwrap().unwrap();
        assert_eq!(bob.rates, RateLimits::default());
        bob.rates.upload = NonZeroU64::new(4096);
        store.update(&bob).await.unwrap();
        drop(store);
        let again = SqliteAccountStore::open(&path).unwrap();
        assert_eq!(again.get("bob").await.unwrap(), Some(bob));
    }

    #[tokio::test]
    async fn accounts_round_trip_and_usage_is_kept_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteAccountStore::open(&tmp.path().join("db")).unwrap();
        let mut a = Account::new("alice", "/srv/alice");
        a.password_hash = Some("$argon2id$x".into());
        a.permissions = Permissions::read_only();
        a.dir_permissions.push("/in=upload".parse().unwrap());
        a.quota = Quota {
            max_bytes: Some(10),
            max_files: None,
        };
        a.max_sessions = Some(2);
        a.rates.download = NonZeroU64::new(1 << 20);
        a.allowed_ips.push("10.0.0.0/8".parse().unwrap());
        a.public_keys.push("ssh-ed25519 AAAA alice@x".into());
        store.create(&a).await.unwrap();
        assert!(matches!(
            store.create(&a).await,
            Err(CoreError::AlreadyExists)
        ));
        assert_eq!(store.get("alice").await.unwrap(), Some(a.clone()));

        // Changes stored out of order add up as in order.
        store.add_usage("alice", -30, -1).await.unwrap();
        assert_eq!(store.usage("alice").await.unwrap(), QuotaUsage::default());
        store.add_usage("alice", 100, 2).await.unwrap();
        a.max_sessions = None;
        store.update(&a).await.unwrap();
        assert_eq!(
            store.usage("alice").await.unwrap(),
            QuotaUsage {
                bytes: 70,
                files: 1
            }
        );
        assert_eq!(store.list().await.unwrap(), vec![a]);
        assert!(store.remove("alice").await.unwrap());
        assert_eq!(store.get("alice").await.unwrap(), None);
    }
}
