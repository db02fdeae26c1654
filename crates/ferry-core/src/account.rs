//! Accounts, their permissions and quotas, and the [`AccountStore`] trait that keeps them.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::str::FromStr;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::error::{CoreError, CoreResult};
use crate::vpath::VirtualPath;

/// One thing an account may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    List,
    Download,
    Upload,
    Overwrite,
    Delete,
    Rename,
    Mkdir,
    Rmdir,
    Chmod,
    SetTime,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::List,
        Permission::Download,
        Permission::Upload,
        Permission::Overwrite,
        Permission::Delete,
        Permission::Rename,
        Permission::Mkdir,
        Permission::Rmdir,
        Permission::Chmod,
        Permission::SetTime,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::List => "list",
            Permission::Download => "download",
            Permission::Upload => "upload",
            Permission::Overwrite => "overwrite",
            Permission::Delete => "delete",
            Permission::Rename => "rename",
            Permission::Mkdir => "mkdir",
            Permission::Rmdir => "rmdir",
            Permission::Chmod => "chmod",
            Permission::SetTime => "set-time",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Permission`]s. Written as a comma-separated list (`list,download`), `all` (or `*`), `read`
/// (list and download) or `none`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u16);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);

    pub fn all() -> Self {
        Permission::ALL.iter().fold(Self::NONE, |p, &x| p.with(x))
    }

    pub fn read_only() -> Self {
        Self::NONE.with(Permission::List).with(Permission::Download)
    }

    pub fn with(self, p: Permission) -> Self {
        Permissions(self.0 | p.bit())
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |&p| self.contains(p))
    }
}

impl FromStr for Permissions {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut perms = Permissions::NONE;
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            perms = match word {
                "all" | "*" => Permissions::all(),
                "none" => perms,
                "read" => Permissions(perms.0 | Permissions::read_only().0),
                _ => match Permission::ALL
                    .iter()
                    .find(|p| p.name() == word || (word == "settime" && **p == Permission::SetTime))
                {
                    Some(&p) => perms.with(p),
                    None => {
                        return Err(CoreError::InvalidArgument(format!(
                            "unknown permission {word:?}"
                        )))
                    }
                },
            };
        }
        Ok(perms)
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Permissions::all() {
            return f.write_str("all");
        }
        if *self == Permissions::NONE {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Permission::name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({self})")
    }
}

/// Permissions that replace the account's own for one directory and everything below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirPermissions {
    pub path: VirtualPath,
    pub permissions: Permissions,
}

impl FromStr for DirPermissions {
    type Err = CoreError;

    /// Parses `/path=list,download`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, perms) = s.split_once('=').ok_or_else(|| {
            CoreError::InvalidArgument(format!("expected /path=PERMS, got {s:?}"))
        })?;
        Ok(DirPermissions {
            path: VirtualPath::parse(path)?,
            permissions: perms.parse()?,
        })
    }
}

/// Limits on what an account may store; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub max_bytes: Option<u64>,
    pub max_files: Option<u64>,
}

impl Quota {
    pub fn is_limited(&self) -> bool {
        self.max_bytes.is_some() || self.max_files.is_some()
    }
}

/// Bytes per second that one session of an account may move each way; `None`: as fast as it goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub upload: Option<NonZeroU64>,
    pub download: Option<NonZeroU64>,
}

/// What an account stores now, as counted against its [`Quota`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaUsage {
    pub bytes: u64,
    pub files: u64,
}

/// A user who can log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// The real directory the account is confined to.
    pub home: PathBuf,
    /// An argon2id hash in PHC format; `None` disables password login.
    pub password_hash: Option<String>,
    /// Permissions everywhere in the home, unless a [`DirPermissions`] entry says otherwise.
    pub permissions: Permissions,
    pub dir_permissions: Vec<DirPermissions>,
    pub quota: Quota,
    /// Concurrent sessions allowed for this account; `None` means no per-account cap.
    pub max_sessions: Option<u32>,
    /// Transfer rates of each session: all its transfers each way together.
    pub rates: RateLimits,
    /// Addresses the account may log in from; empty means any.
    pub allowed_ips: Vec<IpNet>,
    /// OpenSSH `authorized_keys` lines.
    pub public_keys: Vec<String>,
}

impl Account {
    /// A new account with all permissions, no quota and no password.
    pub fn new(name: impl Into<String>, home: impl Into<PathBuf>) -> Self {
        Account {
            name: name.into(),
            home: home.into(),
            password_hash: None,
            permissions: Permissions::all(),
            dir_permissions: Vec::new(),
            quota: Quota::default(),
            max_sessions: None,
            rates: RateLimits::default(),
            allowed_ips: Vec::new(),
            public_keys: Vec::new(),
        }
    }

    /// The permissions in force at `path`: those of the deepest configured directory containing it.
    pub fn permissions_at(&self, path: &VirtualPath) -> Permissions {
        self.dir_permissions
            .iter()
            .filter(|d| path.starts_with(&d.path))
            .max_by_key(|d| d.path.as_str().len())
            .map_or(self.permissions, |d| d.permissions)
    }

    /// Whether some directory strictly inside `dir` has permissions configured: if not, every entry of `dir` has
    /// [`Account::permissions_at`] `dir`, and a listing need not look each one up.
    pub fn has_permissions_below(&self, dir: &VirtualPath) -> bool {
        self.dir_permissions
            .iter()
            .any(|d| d.path != *dir && d.path.starts_with(dir))
    }

    /// Whether `dir` itself or some directory inside it has permissions configured: renaming `dir` would carry
    /// entries out from under their rules.
    pub fn has_permissions_within(&self, dir: &VirtualPath) -> bool {
        self.dir_permissions.iter().any(|d| d.path.starts_with(dir))
    }

    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allowed_ips.is_empty() || self.allowed_ips.iter().any(|net| net.contains(&ip))
    }

    /// Checks that `name` is acceptable as an account name: it becomes a directory name and a log field. The names
    /// of anonymous access are reserved: with it enabled, such an account could never log in.
    pub fn validate_name(name: &str) -> CoreResult<()> {
        if crate::auth::ANONYMOUS_NAMES
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(name))
        {
            return Err(CoreError::InvalidName(format!(
                "account name {name:?} is reserved for anonymous access"
            )));
        }
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
            && !name.starts_with('.');
        if ok {
            Ok(())
        } else {
            Err(CoreError::InvalidName(format!(
                "account name {name:?}: use 1-64 letters, digits, . _ - @"
            )))
        }
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) to IPv4 so that one rule covers both listeners.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Where accounts, their keys and their quota usage live. Embedded SQLite is the default
/// ([`crate::store::SqliteAccountStore`]); a shared database can implement the same trait for several nodes.
#[async_trait]
pub trait AccountStore: Send + Sync {
    async fn get(&self, name: &str) -> CoreResult<Option<Account>>;
    async fn list(&self) -> CoreResult<Vec<Account>>;
    /// Creates a new account; `AlreadyExists` if the name is taken.
    async fn create(&self, account: &Account) -> CoreResult<()>;
    /// Replaces an existing account; `NotFound` if there is none.
    async fn update(&self, account: &Account) -> CoreResult<()>;
    /// Removes an account and its usage; returns whether it existed.
    async fn remove(&self, name: &str) -> CoreResult<bool>;
    async fn usage(&self, name: &str) -> CoreResult<QuotaUsage>;
    /// Adds (or with negative numbers, subtracts) to the stored usage. The changes of concurrent operations may be
    /// applied in any order, so they must add up whatever the order: the sum may dip below zero meanwhile (a file's
    /// release stored before its growth), and [`AccountStore::usage`] reads anything below zero as zero.
    async fn add_usage(&self, name: &str, bytes: i64, files: i64) -> CoreResult<()>;
    async fn set_usage(&self, name: &str, usage: QuotaUsage) -> CoreResult<()>;
    /// A value that changes whenever an account may have changed, here or in another process, or `None` when the
    /// store cannot tell cheaply. Called on every login: it must not wait for I/O. While it is unchanged, an
    /// account read earlier is still current.
    fn generation(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_and_display() {
        let p: Permissions = "list,download".parse().unwrap();
        assert!(p.contains(Permission::List) && p.contains(Permission::Download));
        assert!(!p.contains(Permission::Upload));
        assert_eq!(p.to_string(), "list,download");
        assert_eq!("all".parse::<Permissions>().unwrap(), Permissions::all());
        assert_eq!(
            "read".parse::<Permissions>().unwrap(),
            Permissions::read_only()
        );
        assert!("list,fly".parse::<Permissions>().is_err());
    }

    #[test]
    fn deepest_directory_permissions_win() {
        let mut a = Account::new("u", "/tmp/u");
        a.permissions = Permissions::read_only();
        a.dir_permissions.push("/in=upload,list".parse().unwrap());
        a.dir_permissions.push("/in/deep=none".parse().unwrap());
        let at = |p: &str| a.permissions_at(&VirtualPath::parse(p).unwrap());
        assert_eq!(at("/x"), Permissions::read_only());
        assert!(at("/in/file").contains(Permission::Upload));
        assert!(!at("/inbox").contains(Permission::Upload));
        assert_eq!(at("/in/deep/f"), Permissions::NONE);
        let below = |p: &str| a.has_permissions_below(&VirtualPath::parse(p).unwrap());
        assert!(below("/") && below("/in"));
        assert!(!below("/in/deep") && !below("/x") && !below("/i"));
    }

    #[test]
    fn allowed_ips_match_mapped_addresses() {
        let mut a = Account::new("u", "/tmp/u");
        assert!(a.ip_allowed("10.0.0.1".parse().unwrap()));
        a.allowed_ips.push("127.0.0.0/8".parse().unwrap());
        assert!(a.ip_allowed("127.0.0.5".parse().unwrap()));
        assert!(a.ip_allowed("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!a.ip_allowed("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn account_names_are_checked() {
        assert!(Account::validate_name("alice.b-1@x").is_ok());
        assert!(Account::validate_name("../x").is_err());
        assert!(Account::validate_name("").is_err());
        assert!(Account::validate_name(".hidden").is_err());
        assert!(Account::validate_name("FTP").is_err());
        assert!(Account::validate_name("anonymous").is_err());
    }
}
