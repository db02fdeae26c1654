//! `ferry user ...`: account administration on the account store. It works while a server runs: the server
//! reads accounts at each login.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferry_core::account::{Account, AccountStore, DirPermissions, Permissions, Quota};
use ferry_core::auth::{hash_password, random_password};
use ferry_core::store::SqliteAccountStore;
use ipnet::IpNet;

use crate::config::DEFAULT_DATA_DIR;
use crate::output::outln;

#[derive(Args)]
pub struct UserArgs {
    /// Directory holding the account database [default: ./ferry-data].
    #[arg(long, env = "FERRY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account. Without --password or --password-stdin a random password is generated and printed.
    Add {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        settings: AccountSettings,
    },
    /// Change an existing account's settings.
    Edit {
        name: String,
        #[command(flatten)]
        settings: AccountSettings,
    },
    /// List accounts with their permissions, quotas and usage.
    List,
    /// Delete an account (its files stay on disk).
    Remove { name: String },
    /// Set a new password. Without --password or --password-stdin a random one is generated and printed.
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Recount an account's quota usage from the files in its home.
    Rescan { name: String },
    /// List an account's SSH public keys.
    Keys { name: String },
}

#[derive(Args)]
struct PasswordArgs {
    /// The password (visible in the process list: prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Args)]
struct AccountSettings {
    /// Home directory [default: DATA_DIR/files/NAME].
    #[arg(long)]
    home: Option<PathBuf>,
    /// Permissions: comma-separated list,download,upload,overwrite,delete,rename,mkdir,rmdir,chmod,set-time, or
    /// all, read, none [default: all].
    #[arg(long)]
    perm: Option<Permissions>,
    /// Permissions for a sub-directory and below, as /path=LIST (repeatable).
    #[arg(long = "dir-perm")]
    dir_perms: Vec<DirPermissions>,
    /// Byte quota (0: unlimited).
    #[arg(long)]
    quota_bytes: Option<u64>,
    /// File-count quota (0: unlimited).
    #[arg(long)]
    quota_files: Option<u64>,
    /// Most concurrent sessions (0: unlimited).
    #[arg(long)]
    max_sessions: Option<u32>,
    /// Addresses allowed to log in, as CIDR (repeatable) [default: any].
    #[arg(long = "allow-ip")]
    allow_ips: Vec<IpNet>,
    /// SSH public key file in authorized_keys format (repeatable).
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
}

impl AccountSettings {
    fn apply(self, account: &mut Account) -> anyhow::Result<()> {
        if let Some(home) = self.home {
            account.home = absolute(&home)?;
        }
        if let Some(perm) = self.perm {
            account.permissions = perm;
        }
        if !self.dir_perms.is_empty() {
            account.dir_permissions = self.dir_perms;
        }
        let limit = |v: u64| (v > 0).then_some(v);
        account.quota = Quota {
            max_bytes: self.quota_bytes.map_or(account.quota.max_bytes, limit),
            max_files: self.quota_files.map_or(account.quota.max_files, limit),
        };
        if let Some(max) = self.max_sessions {
            account.max_sessions = (max > 0).then_some(max);
        }
        if !self.allow_ips.is_empty() {
            account.allowed_ips = self.allow_ips;
        }
        for key in &self.keys {
            let text = std::fs::read_to_string(key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            account.public_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        Ok(())
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// Opens the account store in `data_dir`, creating the directory if needed.
pub fn open_store(data_dir: &Path) -> anyhow::Result<SqliteAccountStore> {
    create_private_dir(data_dir)?;
    Ok(SqliteAccountStore::open(&data_dir.join("ferry.db"))?)
}

pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// The default home of an account: `DATA_DIR/files/NAME`, absolute.
pub fn default_home(data_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    absolute(&data_dir.join("files").join(name))
}

/// Hashes a password off the async runtime (argon2 is deliberately slow).
pub async fn hash(password: String) -> anyhow::Result<String> {
    Ok(tokio::task::spawn_blocking(move || hash_password(&password)).await??)
}

fn read_password(args: &PasswordArgs) -> anyhow::Result<Option<String>> {
    if let Some(p) = &args.password {
        return Ok(Some(p.clone()));
    }
    if !args.password_stdin {
        return Ok(None);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(Some(password))
}

pub async fn run(args: UserArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let store = Arc::new(open_store(&data_dir)?);
    match args.command {
        UserCommand::Add {
            name,
            password,
            settings,
        } => {
            Account::validate_name(&name)?;
            let mut account = Account::new(&name, default_home(&data_dir, &name)?);
            settings.apply(&mut account)?;
            let (password, generated) = match read_password(&password)? {
                Some(p) => (p, false),
                None => (random_password(16), true),
            };
            account.password_hash = Some(hash(password.clone()).await?);
            create_private_dir(&account.home)?;
            store
                .create(&account)
                .await
                .with_context(|| format!("cannot create account {name}"))?;
            outln!("created account {name} (home {})", account.home.display());
            if generated {
                outln!("password: {password}");
            }
        }
        UserCommand::Edit { name, settings } => {
            let mut account = find(&*store, &name).await?;
            settings.apply(&mut account)?;
            store.update(&account).await?;
            outln!("updated account {name}");
        }
        UserCommand::List => {
            outln!(
                "{:<20} {:<28} {:>12} {:>10} {:>14} {:>8}  HOME",
                "NAME",
                "PERMISSIONS",
                "QUOTA BYTES",
                "QUOTA FILES",
                "USED BYTES",
                "FILES"
            );
            for account in store.list().await? {
                let usage = store.usage(&account.name).await?;
                let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                outln!(
                    "{:<20} {:<28} {:>12} {:>10} {:>14} {:>8}  {}",
                    account.name,
                    account.permissions.to_string(),
                    show(account.quota.max_bytes),
                    show(account.quota.max_files),
                    usage.bytes,
                    usage.files,
                    account.home.display()
                );
            }
        }
        UserCommand::Remove { name } => {
            if !store.remove(&name).await? {
                bail!("no account named {name}");
            }
            outln!("removed account {name} (its files were kept)");
        }
        UserCommand::Passwd { name, password } => {
            let mut account = find(&*store, &name).await?;
            let (password, generated) = match read_password(&password)? {
                Some(p) => (p, false),
                None => (random_password(16), true),
            };
            account.password_hash = Some(hash(password.clone()).await?);
            store.update(&account).await?;
            outln!("password changed for {name}");
            if generated {
                outln!("password: {password}");
            }
        }
        UserCommand::Rescan { name } => {
            let account = find(&*store, &name).await?;
            let usage = ferry_core::quota::rescan(&*store, &account).await?;
            outln!("{name}: {} bytes in {} files", usage.bytes, usage.files);
        }
        UserCommand::Keys { name } => {
            for key in find(&*store, &name).await?.public_keys {
                outln!("{key}");
            }
        }
    }
    Ok(())
}

async fn find(store: &dyn AccountStore, name: &str) -> anyhow::Result<Account> {
    store
        .get(name)
        .await?
        .with_context(|| format!("no account named {name}"))
}
