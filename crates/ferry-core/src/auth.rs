//! Password authentication: argon2id hashes, verified off the async runtime, with an in-memory cache of recent
//! successes so that a client that logs in again and again does not pay the hash every time. Public keys (SSH) are
//! matched against the account's OpenSSH `authorized_keys` lines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::account::{Account, AccountStore, Permissions};
use crate::error::{CoreError, CoreResult};
use crate::registry::SharedByKey;

/// How long a successful verification is remembered.
const CACHE_TTL: Duration = Duration::from_secs(600);
/// At most this many cached verifications; the cache is cleared when full.
const CACHE_CAPACITY: usize = 10_000;

/// Names that log in as the anonymous account when anonymous access is enabled.
pub const ANONYMOUS_NAMES: [&str; 2] = ["anonymous", "ftp"];

/// Why a login was refused. Front-ends should not tell the client which of these it was.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid user name or password")]
    InvalidCredentials,
    #[error("login from {0} not allowed for this account")]
    AddressNotAllowed(IpAddr),
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Hashes a password with argon2id and a random salt, in PHC string format. CPU-heavy: call it off the runtime.
pub fn hash_password(password: &str) -> CoreResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CoreError::InvalidArgument(format!("cannot hash password: {e}")))
}

/// A random password of `len` letters and digits.
pub fn random_password(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = vec![0u8; len];
    OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

struct CachedLogin {
    /// The stored hash the password was verified against: a changed password invalidates the entry.
    stored_hash: String,
    /// A keyed digest of the password that was accepted.
    password_digest: [u8; 32],
    /// The store's [`AccountStore::generation`] read before the account was: while it is unchanged, so is the account.
    generation: Option<u64>,
    /// The account as sessions see it (no credentials), shared by all its sessions.
    account: Arc<Account>,
    at: Instant,
}

/// Verifies credentials against an [`AccountStore`].
pub struct Authenticator {
    store: Arc<dyn AccountStore>,
    anonymous: Option<Arc<Account>>,
    cache: Mutex<HashMap<String, CachedLogin>>,
    cache_key: [u8; 32],
    /// One verification per account at a time: a herd of first logins runs argon2id once, not once each.
    verifying: SharedByKey<String, tokio::sync::Mutex<()>>,
    /// argon2id runs at most this many at once (each holds 19 MiB): a core-sized pool, not one thread per login.
    hashing: Semaphore,
    /// A hash no password matches, checked in place of a missing one, so that a login for an unknown account (or
    /// one without a password) takes as long as a wrong password: the time does not tell which names exist.
    stand_in_hash: tokio::sync::OnceCell<String>,
    #[cfg(test)]
    hashes_run: std::sync::atomic::AtomicUsize,
}

impl Authenticator {
    pub fn new(store: Arc<dyn AccountStore>) -> Self {
        let mut cache_key = [0u8; 32];
        OsRng.fill_bytes(&mut cache_key);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Authenticator {
            store,
            anonymous: None,
            cache: Mutex::new(HashMap::new()),
            cache_key,
            verifying: SharedByKey::default(),
            hashing: Semaphore::new(cores),
            stand_in_hash: tokio::sync::OnceCell::new(),
            #[cfg(test)]
            hashes_run: Default::default(),
        }
    }

    /// Enables read-only anonymous login rooted at `root`.
    pub fn with_anonymous(mut self, root: PathBuf) -> Self {
        let mut account = Account::new("anonymous", root);
        account.permissions = Permissions::read_only();
        self.anonymous = Some(Arc::new(account));
        self
    }

    pub fn anonymous_enabled(&self) -> bool {
        self.anonymous.is_some()
    }

    pub fn is_anonymous(&self, username: &str) -> bool {
        self.anonymous.is_some()
            && ANONYMOUS_NAMES
                .iter()
                .any(|n| n.eq_ignore_ascii_case(username))
    }

    pub fn store(&self) -> &Arc<dyn AccountStore> {
        &self.store
    }

    /// Checks a user name and password from a client at `ip`; any password is accepted for anonymous access.
    /// The account comes without its credentials, shared with the account's other sessions.
    pub async fn verify_password(
        &self,
        username: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<Arc<Account>, AuthError> {
        if self.is_anonymous(username) {
            if let Some(anonymous) = &self.anonymous {
                return Ok(Arc::clone(anonymous));
            }
        }
        let digest = self.password_digest(username, password);
        let account = match self.cached_unchanged(username, &digest) {
            Some(account) => account,
            None => {
                let lock = self
                    .verifying
                    .get_or_insert_with(username, Default::default);
                let _one_at_a_time = lock.lock().await;
                // Another login may have verified the same password while this one waited.
                match self.cached_unchanged(username, &digest) {
                    Some(account) => account,
                    None => self.verify_with_store(username, password, digest).await?,
                }
            }
        };
        // The address check comes after the password so that it reveals nothing to a guesser.
        if !account.ip_allowed(ip) {
            return Err(AuthError::AddressNotAllowed(ip));
        }
        Ok(account)
    }

    /// Reads the account and checks the password against its hash (argon2id, unless this password was accepted
    /// for this hash recently).
    async fn verify_with_store(
        &self,
        username: &str,
        password: &str,
        digest: [u8; 32],
    ) -> Result<Arc<Account>, AuthError> {
        // Read before the account: a change in between makes the entry look stale, never the reverse.
        let generation = self.store.generation();
        let account = self.store.get(username).await?;
        let Some((account, stored_hash)) =
            account.and_then(|a| a.password_hash.clone().map(|hash| (a, hash)))
        else {
            let stand_in = self
                .stand_in_hash
                .get_or_try_init(|| async {
                    let password = random_password(32);
                    tokio::task::spawn_blocking(move || hash_password(&password))
                        .await
                        .map_err(|e| CoreError::Store(e.to_string()))?
                })
                .await?;
            self.hash_matches(stand_in.clone(), password).await?;
            return Err(AuthError::InvalidCredentials);
        };
        if !self.cached_for_hash(username, &stored_hash, &digest)
            && !self.hash_matches(stored_hash.clone(), password).await?
        {
            return Err(AuthError::InvalidCredentials);
        }
        let account = Arc::new(without_credentials(account));
        self.remember(
            username,
            CachedLogin {
                stored_hash,
                password_digest: digest,
                generation,
                account: Arc::clone(&account),
                at: Instant::now(),
            },
        );
        Ok(account)
    }

    /// Whether `password` matches `hash` (argon2id on the blocking pool, at most a core's worth at once).
    async fn hash_matches(&self, hash: String, password: &str) -> Result<bool, AuthError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| CoreError::Store(e.to_string()))?;
        #[cfg(test)]
        self.hashes_run
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let password = password.to_owned();
        Ok(
            tokio::task::spawn_blocking(move || verify_hash(&hash, &password))
                .await
                .map_err(|e| CoreError::Store(e.to_string()))?,
        )
    }

    /// Checks that `key`, an OpenSSH public key (`ssh-ed25519 AAAA... [comment]`) whose possession the protocol has
    /// already verified, is one of the account's keys, for a client at `ip`. Stored lines with `authorized_keys`
    /// options (`from=`, `command=`, ...) never match: ferry does not implement the restrictions they ask for.
    pub async fn verify_public_key(
        &self,
        username: &str,
        key: &str,
        ip: IpAddr,
    ) -> Result<Arc<Account>, AuthError> {
        if self.is_anonymous(username) {
            return Err(AuthError::InvalidCredentials);
        }
        let offered = key_identity(key).ok_or(AuthError::InvalidCredentials)?;
        let account = self
            .store
            .get(username)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        if !account
            .public_keys
            .iter()
            .any(|line| key_identity(line) == Some(offered))
        {
            return Err(AuthError::InvalidCredentials);
        }
        if !account.ip_allowed(ip) {
            return Err(AuthError::AddressNotAllowed(ip));
        }
        Ok(Arc::new(without_credentials(account)))
    }

    fn password_digest(&self, username: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update((username.len() as u64).to_le_bytes());
        h.update(username.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// The account of a recent login with the same password, if the store says nothing changed since: a repeated
    /// login then costs neither a store read nor a hash.
    fn cached_unchanged(&self, username: &str, digest: &[u8; 32]) -> Option<Arc<Account>> {
        let generation = self.store.generation()?;
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(username)
            .filter(|c| {
                c.generation == Some(generation)
                    && c.password_digest == *digest
                    && c.at.elapsed() < CACHE_TTL
            })
            .map(|c| Arc::clone(&c.account))
    }

    /// Whether this password was accepted recently against this very hash.
    fn cached_for_hash(&self, username: &str, stored_hash: &str, digest: &[u8; 32]) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(username).is_some_and(|c| {
            c.stored_hash == stored_hash
                && c.password_digest == *digest
                && c.at.elapsed() < CACHE_TTL
        })
    }

    fn remember(&self, username: &str, login: CachedLogin) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(username.to_owned(), login);
    }
}

/// A session never needs the credentials again: they are not kept in memory for its lifetime.
fn without_credentials(mut account: Account) -> Account {
    account.password_hash = None;
    account.public_keys = Vec::new();
    account
}

/// The key type and base64 blob of an OpenSSH public key line, or `None` for a comment, a line with options or
/// anything else.
fn key_identity(line: &str) -> Option<(&str, &str)> {
    let mut words = line.split_whitespace();
    let key_type = words.next()?;
    let blob = words.next()?;
    let known_type = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"]
        .iter()
        .any(|prefix| key_type.starts_with(prefix));
    let base64 = blob
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    (known_type && base64).then_some((key_type, blob))
}

fn verify_hash(stored_hash: &str, password: &str) -> bool {
    PasswordHash::new(stored_hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteAccountStore;

    async fn authenticator() -> (tempfile::TempDir, Authenticator) {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteAccountStore::open(&tmp.path().join("db")).unwrap();
        let mut a = Account::new("alice", tmp.path().join("alice"));
        a.password_hash = Some(hash_password("right").unwrap());
        a.allowed_ips.push("127.0.0.0/8".parse().unwrap());
        store.create(&a).await.unwrap();
        (tmp, Authenticator::new(Arc::new(store)))
    }

    #[tokio::test]
    async fn password_is_checked_even_when_cached() {
        let (_tmp, auth) = authenticator().await;
        let ip = "127.0.0.1".parse().unwrap();
        assert!(auth.verify_password("alice", "right", ip).await.is_ok());
        assert!(auth.verify_password("alice", "right", ip).await.is_ok());
        assert!(matches!(
            auth.verify_password("alice", "wrong", ip).await,
            Err(AuthError::InvalidCredentials)
        ));
        assert!(matches!(
            auth.verify_password("bob", "right", ip).await,
            Err(AuthError::InvalidCredentials)
        ));
    }

    #[tokio::test]
    async fn unknown_accounts_cost_a_hash_as_wrong_passwords_do() {
        let (tmp, auth) = authenticator().await;
        auth.store()
            .create(&Account::new("keys-only", tmp.path().join("k")))
            .await
            .unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        for (n, user) in ["nobody", "keys-only", "alice"].into_iter().enumerate() {
            assert!(matches!(
                auth.verify_password(user, "guess", ip).await,
                Err(AuthError::InvalidCredentials)
            ));
            assert_eq!(
                auth.hashes_run.load(std::sync::atomic::Ordering::Relaxed),
                n + 1,
                "{user}"
            );
        }
    }

    #[tokio::test]
    async fn changed_password_invalidates_the_cache() {
        let (_tmp, auth) = authenticator().await;
        let ip = "127.0.0.1".parse().unwrap();
        auth.verify_password("alice", "right", ip).await.unwrap();
        let mut a = auth.store().get("alice").await.unwrap().unwrap();
        a.password_hash = Some(hash_password("new").unwrap());
        auth.store().update(&a).await.unwrap();
        assert!(auth.verify_password("alice", "right", ip).await.is_err());
        assert!(auth.verify_password("alice", "new", ip).await.is_ok());
    }

    #[tokio::test]
    async fn a_change_by_another_process_is_seen_at_the_next_login() {
        let (tmp, auth) = authenticator().await;
        let ip = "127.0.0.1".parse().unwrap();
        auth.verify_password("alice", "right", ip).await.unwrap();
        // A second connection to the same file, as `ferry user passwd` makes from its own process.
        let other = SqliteAccountStore::open(&tmp.path().join("db")).unwrap();
        let mut a = other.get("alice").await.unwrap().unwrap();
        a.password_hash = Some(hash_password("new").unwrap());
        other.update(&a).await.unwrap();
        assert!(auth.verify_password("alice", "right", ip).await.is_err());
        assert!(auth.verify_password("alice", "new", ip).await.is_ok());
        other.remove("alice").await.unwrap();
        assert!(auth.verify_password("alice", "new", ip).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn simultaneous_first_logins_hash_once_and_share_the_account() {
        let (_tmp, auth) = authenticator().await;
        let auth = Arc::new(auth);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let logins: Vec<_> = (0..16)
            .map(|_| {
                let auth = Arc::clone(&auth);
                tokio::spawn(async move { auth.verify_password("alice", "right", ip).await })
            })
            .collect();
        let mut accounts = Vec::new();
        for login in logins {
            accounts.push(login.await.unwrap().unwrap());
        }
        assert_eq!(
            auth.hashes_run.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(accounts.iter().all(|a| Arc::ptr_eq(a, &accounts[0])));
        assert!(accounts[0].password_hash.is_none() && accounts[0].public_keys.is_empty());
        // A wrong password is never answered from the cache.
        assert!(auth.verify_password("alice", "wrong", ip).await.is_err());
        assert_eq!(
            auth.hashes_run.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[tokio::test]
    async fn address_outside_the_allow_list_is_refused() {
        let (_tmp, auth) = authenticator().await;
        let r = auth
            .verify_password("alice", "right", "10.1.1.1".parse().unwrap())
            .await;
        assert!(matches!(r, Err(AuthError::AddressNotAllowed(_))));
    }

    #[tokio::test]
    async fn public_keys_match_type_and_blob_only() {
        let (_tmp, auth) = authenticator().await;
        let mut a = auth.store().get("alice").await.unwrap().unwrap();
        a.public_keys = vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1 alice@laptop".into(),
            "from=\"10.0.0.0/8\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey2".into(),
        ];
        auth.store().update(&a).await.unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let ok = auth
            .verify_public_key("alice", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1", ip)
            .await;
        assert!(ok.is_ok());
        for wrong in [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey2",
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIKey1",
            "ssh-ed25519",
            "",
        ] {
            assert!(
                auth.verify_public_key("alice", wrong, ip).await.is_err(),
                "{wrong:?} accepted"
            );
        }
        assert!(auth
            .verify_public_key(
                "alice",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1",
                "10.1.1.1".parse().unwrap()
            )
            .await
            .is_err());
    }

    #[tokio::test]
    async fn anonymous_is_read_only_and_takes_any_password() {
        let (tmp, auth) = authenticator().await;
        let auth = auth.with_anonymous(tmp.path().join("pub"));
        let a = auth
            .verify_password("anonymous", "x@y", "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(a.permissions, Permissions::read_only());
    }
}
