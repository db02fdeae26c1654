//! `ferry user ...`: account administration on the account store. It works while a server runs: the server
//! reads accounts at each login.

use std::io::{BufRead, IsTerminal};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

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
    /// Change an existing account's settings, remove SSH keys, or clear restrictions.
    Edit {
        name: String,
        #[command(flatten)]
        removals: Removals,
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
    /// Upload rate of each session, in bytes per second: 500KiB, 10MiB, 1GB (0: unlimited).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    upload_rate: Option<u64>,
    /// Download rate of each session, in bytes per second: 500KiB, 10MiB, 1GB (0: unlimited).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    download_rate: Option<u64>,
    /// Addresses allowed to log in, as CIDR (repeatable) [default: any].
    #[arg(long = "allow-ip")]
    allow_ips: Vec<IpNet>,
    /// SSH public key file in authorized_keys format (repeatable); keys the account has already are skipped.
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
}

/// What `ferry user edit` can take away; done before the settings are applied, so `--clear-keys --key FILE`
/// replaces the account's keys.
#[derive(Args)]
struct Removals {
    /// Revoke an SSH public key, given as its authorized_keys line or its base64 part (repeatable).
    #[arg(long = "remove-key", value_name = "KEY")]
    remove_keys: Vec<String>,
    /// Revoke every SSH public key of the account.
    #[arg(long, conflicts_with = "remove_keys")]
    clear_keys: bool,
    /// Let the account log in from any address again.
    #[arg(long, conflicts_with = "allow_ips")]
    clear_allow_ip: bool,
    /// Drop every per-directory permission (the account's --perm applies everywhere again).
    #[arg(long, conflicts_with = "dir_perms")]
    clear_dir_perms: bool,
}

impl Removals {
    fn apply(self, account: &mut Account) -> anyhow::Result<()> {
        if self.clear_keys {
            account.public_keys.clear();
        }
        for key in &self.remove_keys {
            let before = account.public_keys.len();
            account.public_keys.retain(|stored| !same_key(stored, key));
            if account.public_keys.len() == before {
                bail!("account {} has no key matching {key:?}", account.name);
            }
        }
        if self.clear_allow_ip {
            account.allowed_ips.clear();
        }
        if self.clear_dir_perms {
            account.dir_permissions.clear();
        }
        Ok(())
    }
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
        if let Some(rate) = self.upload_rate {
            account.rates.upload = NonZeroU64::new(rate);
        }
        if let Some(rate) = self.download_rate {
            account.rates.download = NonZeroU64::new(rate);
        }
        if !self.allow_ips.is_empty() {
            account.allowed_ips = self.allow_ips;
        }
        for key in &self.keys {
            let text = std::fs::read_to_string(key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                check_key_line(line)
                    .with_context(|| format!("{} line {}", key.display(), number + 1))?;
                // A line of the same key stored with options (accepted by earlier versions, never usable) goes.
                account
                    .public_keys
                    .retain(|k| !(same_key(k, line) && key_options(k)));
                if !account.public_keys.iter().any(|k| same_key(k, line)) {
                    account.public_keys.push(line.to_owned());
                }
            }
        }
        Ok(())
    }
}

fn parse_rate(text: &str) -> Result<u64, String> {
    ferry_bench::units::parse_size(text).map_err(|e| e.to_string())
}

/// A rate for `ferry user list`: `-` for none.
fn show_rate(rate: Option<NonZeroU64>) -> String {
    rate.map_or("-".to_owned(), |r| {
        format!(
            "{}/s",
            ferry_bench::units::format_size(r.get()).replace(' ', "")
        )
    })
}

/// Whether the authorized_keys line `stored` holds the key `key`: the same line, or the same key blob whatever the
/// comment and options (`key` may also be the bare base64 blob).
fn same_key(stored: &str, key: &str) -> bool {
    let key = key.trim();
    if stored.trim() == key {
        return true;
    }
    let wanted = match key_blob(key) {
        Some(blob) => blob,
        None if !key.contains(char::is_whitespace) => key,
        None => return false,
    };
    key_blob(stored) == Some(wanted)
}

/// Key types of authorized_keys lines, by prefix.
const KEY_TYPES: [&str; 4] = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"];

/// Refuses what `--key` must not add: a line with authorized_keys options, whose restrictions ferry does not
/// implement (so that the key would be either unusable or unrestricted), and a line that is no public key at all
/// (a private key file, a fingerprint).
fn check_key_line(line: &str) -> anyhow::Result<()> {
    if key_options(line) {
        bail!(
            "the key has authorized_keys options ({}...), which ferry does not implement; \
             give the key without them (limit addresses with --allow-ip)",
            line.split_whitespace().next().unwrap_or_default()
        );
    }
    if key_blob(line).is_none() {
        bail!("not a public key line (expected \"ssh-ed25519 AAAA... comment\" or the like)");
    }
    Ok(())
}

/// Whether an authorized_keys line starts with options rather than its key type.
fn key_options(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or_default();
    !KEY_TYPES.iter().any(|t| first.starts_with(t)) && key_blob(line).is_some()
}

/// The base64 blob of an authorized_keys line: the word after the key type, itself after any options.
fn key_blob(line: &str) -> Option<&str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| KEY_TYPES.iter().any(|t| w[0].starts_with(t)))
        .map(|w| w[1])
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// Opens the account store in `data_dir`, creating the directory and the database if needed.
pub fn open_store(data_dir: &Path) -> anyhow::Result<SqliteAccountStore> {
    create_private_dir(data_dir)?;
    Ok(SqliteAccountStore::open(&store_path(data_dir))?)
}

/// Whether `data_dir` holds an account database. `ferry serve` creates the `admin` account only with a new one.
pub fn store_exists(data_dir: &Path) -> anyhow::Result<bool> {
    let path = store_path(data_dir);
    path.try_exists()
        .with_context(|| format!("cannot look for {}", path.display()))
}

/// Opens the account store in `data_dir`, which must exist: only `ferry serve` and `ferry user add` create one, so
/// that a mistyped `--data-dir` is an error rather than a new, empty database.
fn open_existing_store(data_dir: &Path) -> anyhow::Result<SqliteAccountStore> {
    if !store_exists(data_dir)? {
        bail!(
            "no account database in {}: `ferry serve` or `ferry user add` creates one",
            data_dir.display()
        );
    }
    open_store(data_dir)
}

fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ferry.db")
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

/// The password given with `--password` or `--password-stdin`, or `None` when one is to be generated. An empty
/// password is refused whichever way it came.
fn read_password(args: &PasswordArgs) -> anyhow::Result<Option<String>> {
    let password = match &args.password {
        Some(p) => p.clone(),
        None if !args.password_stdin => return Ok(None),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("Password: ");
            }
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        bail!("empty password: give a non-empty one, or neither --password nor --password-stdin to generate one");
    }
    Ok(Some(password))
}

pub async fn run(args: UserArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    // Only `add` creates the database, and only once nothing else can fail: `ferry serve` creates the `admin`
    // account with a new database alone, so an empty one left behind would leave a new server without accounts.
    let existing_store = || open_existing_store(&data_dir);
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
            let store = open_store(&data_dir)?;
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
        UserCommand::Edit {
            name,
            removals,
            settings,
        } => {
            let store = existing_store()?;
            let mut account = find(&store, &name).await?;
            removals.apply(&mut account)?;
            settings.apply(&mut account)?;
            store.update(&account).await?;
            outln!("updated account {name}");
        }
        UserCommand::List => {
            outln!(
                "{:<20} {:<28} {:>12} {:>10} {:>14} {:>8} {:>12} {:>12}  HOME",
                "NAME",
                "PERMISSIONS",
                "QUOTA BYTES",
                "QUOTA FILES",
                "USED BYTES",
                "FILES",
                "UPLOAD",
                "DOWNLOAD"
            );
            let store = existing_store()?;
            for account in store.list().await? {
                let usage = store.usage(&account.name).await?;
                let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                outln!(
                    "{:<20} {:<28} {:>12} {:>10} {:>14} {:>8} {:>12} {:>12}  {}",
                    account.name,
                    account.permissions.to_string(),
                    show(account.quota.max_bytes),
                    show(account.quota.max_files),
                    usage.bytes,
                    usage.files,
                    show_rate(account.rates.upload),
                    show_rate(account.rates.download),
                    account.home.display()
                );
            }
        }
        UserCommand::Remove { name } => {
            if !existing_store()?.remove(&name).await? {
                bail!("no account named {name}");
            }
            outln!("removed account {name} (its files were kept)");
        }
        UserCommand::Passwd { name, password } => {
            let store = existing_store()?;
            let mut account = find(&store, &name).await?;
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
            let store = existing_store()?;
            let account = find(&store, &name).await?;
            let usage = ferry_core::quota::rescan(&store, &account).await?;
            outln!("{name}: {} bytes in {} files", usage.bytes, usage.files);
        }
        UserCommand::Keys { name } => {
            for key in find(&existing_store()?, &name).await?.public_keys {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    const ALICE_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKJ8iZ0g6bNtm3Wb0bzvzsS1A3bSZlz9YyD5V8yQ0Jm4 alice@laptop";
    const BOB_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn0v3oFMKvnp7bC7N0m2iL3P5n8GqkR0yN9Qm6Jtq1x bob@desk";

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        user: UserArgs,
    }

    /// Runs `ferry user ARGS --data-dir DIR`.
    async fn user(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
        let mut argv = vec!["ferry", "--data-dir", dir.to_str().unwrap()];
        argv.extend_from_slice(args);
        run(Cli::try_parse_from(argv)?.user).await
    }

    async fn account(dir: &Path, name: &str) -> Account {
        find(&open_store(dir).unwrap(), name).await.unwrap()
    }

    fn key_file(dir: &Path, name: &str, lines: &[&str]) -> String {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn an_empty_password_is_refused_by_add_and_passwd() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let error = user(dir, &["add", "eve", "--password", ""])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("empty password"), "{error}");
        assert!(open_store(dir).unwrap().get("eve").await.unwrap().is_none());

        user(dir, &["add", "eve", "--password", "first"])
            .await
            .unwrap();
        let before = account(dir, "eve").await.password_hash;
        assert!(user(dir, &["passwd", "eve", "--password", ""])
            .await
            .is_err());
        assert_eq!(account(dir, "eve").await.password_hash, before);
    }

    #[tokio::test]
    async fn only_a_successful_add_creates_the_database() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for args in [
            &["list"][..],
            &["keys", "al"],
            &["remove", "al"],
            &["add", "al", "--password", ""],
        ] {
            assert!(user(dir, args).await.is_err(), "{args:?}");
            assert!(!store_exists(dir).unwrap(), "{args:?} created the database");
        }
        let error = user(dir, &["list"]).await.unwrap_err();
        assert!(error.to_string().contains("no account database"), "{error}");
        user(dir, &["add", "al", "--password", "pw"]).await.unwrap();
        assert!(store_exists(dir).unwrap());
        user(dir, &["list"]).await.unwrap();
    }

    #[tokio::test]
    async fn keys_with_options_and_lines_that_are_no_keys_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        user(dir, &["add", "al", "--password", "pw"]).await.unwrap();
        let refused = [
            (format!("from=\"127.0.0.1\" {ALICE_KEY}"), "options"),
            (
                format!("command=\"/bin/false\",restrict {ALICE_KEY}"),
                "options",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----".to_owned(),
                "not a public key",
            ),
            (
                "SHA256:pF4CgOdU17dmUuxzCwkxqXdfxT2RulRWu0FTvJJ6Hho".to_owned(),
                "not a public key",
            ),
        ];
        for (line, why) in refused {
            let file = key_file(dir, "k.pub", &[BOB_KEY, &line]);
            let error = user(dir, &["edit", "al", "--key", &file])
                .await
                .unwrap_err();
            let text = format!("{error:#}");
            assert!(
                text.contains("k.pub line 2") && text.contains(why),
                "{line}: {text}"
            );
            assert!(account(dir, "al").await.public_keys.is_empty(), "{line}");
        }
    }

    #[tokio::test]
    async fn a_key_stored_with_options_is_replaced_by_the_plain_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        user(dir, &["add", "al", "--password", "pw"]).await.unwrap();
        // As an earlier version stored it.
        let store = open_store(dir).unwrap();
        let mut al = find(&store, "al").await.unwrap();
        al.public_keys = vec![format!("from=\"10.9.9.9\" {ALICE_KEY}"), BOB_KEY.to_owned()];
        store.update(&al).await.unwrap();
        let file = key_file(dir, "k.pub", &[ALICE_KEY]);
        user(dir, &["edit", "al", "--key", &file]).await.unwrap();
        assert_eq!(account(dir, "al").await.public_keys, [BOB_KEY, ALICE_KEY]);
    }

    #[tokio::test]
    async fn a_key_added_twice_is_kept_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let keys = key_file(dir, "keys.pub", &[ALICE_KEY, ALICE_KEY]);
        let renamed = ALICE_KEY.replace("alice@laptop", "alice@other");
        let again = key_file(dir, "again.pub", &[&renamed, BOB_KEY]);
        user(dir, &["add", "al", "--password", "pw", "--key", &keys])
            .await
            .unwrap();
        user(dir, &["edit", "al", "--key", &keys, "--key", &again])
            .await
            .unwrap();
        assert_eq!(account(dir, "al").await.public_keys, [ALICE_KEY, BOB_KEY]);
    }

    #[tokio::test]
    async fn remove_key_revokes_a_key_by_line_or_by_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let keys = key_file(dir, "keys.pub", &[ALICE_KEY, BOB_KEY]);
        user(dir, &["add", "al", "--password", "pw", "--key", &keys])
            .await
            .unwrap();

        user(dir, &["edit", "al", "--remove-key", ALICE_KEY])
            .await
            .unwrap();
        assert_eq!(account(dir, "al").await.public_keys, [BOB_KEY]);

        let bob_blob = BOB_KEY.split_whitespace().nth(1).unwrap();
        user(dir, &["edit", "al", "--remove-key", bob_blob])
            .await
            .unwrap();
        assert!(account(dir, "al").await.public_keys.is_empty());

        let error = user(dir, &["edit", "al", "--remove-key", bob_blob])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("no key matching"), "{error}");
    }

    #[tokio::test]
    async fn a_key_is_revoked_whatever_its_comment() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let keys = key_file(dir, "keys.pub", &[ALICE_KEY, BOB_KEY]);
        user(dir, &["add", "al", "--password", "pw", "--key", &keys])
            .await
            .unwrap();
        let without_comment = ALICE_KEY.rsplit_once(' ').unwrap().0;
        user(dir, &["edit", "al", "--remove-key", without_comment])
            .await
            .unwrap();
        assert_eq!(account(dir, "al").await.public_keys, [BOB_KEY]);
    }

    #[tokio::test]
    async fn clear_flags_empty_keys_address_limits_and_directory_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let keys = key_file(dir, "keys.pub", &[ALICE_KEY, BOB_KEY]);
        let add = [
            "add",
            "al",
            "--password",
            "pw",
            "--key",
            &keys,
            "--allow-ip",
            "10.0.0.0/8",
            "--dir-perm",
            "/in=upload",
        ];
        user(dir, &add).await.unwrap();
        let a = account(dir, "al").await;
        assert!(
            !a.public_keys.is_empty() && !a.allowed_ips.is_empty() && !a.dir_permissions.is_empty()
        );

        user(
            dir,
            &[
                "edit",
                "al",
                "--clear-keys",
                "--clear-allow-ip",
                "--clear-dir-perms",
            ],
        )
        .await
        .unwrap();
        let a = account(dir, "al").await;
        assert!(
            a.public_keys.is_empty() && a.allowed_ips.is_empty() && a.dir_permissions.is_empty()
        );
    }

    #[tokio::test]
    async fn clear_keys_with_key_replaces_the_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let alice = key_file(dir, "alice.pub", &[ALICE_KEY]);
        let bob = key_file(dir, "bob.pub", &[BOB_KEY]);
        user(dir, &["add", "al", "--password", "pw", "--key", &alice])
            .await
            .unwrap();
        user(dir, &["edit", "al", "--clear-keys", "--key", &bob])
            .await
            .unwrap();
        assert_eq!(account(dir, "al").await.public_keys, [BOB_KEY]);
    }

    #[test]
    fn clearing_and_setting_the_same_list_at_once_is_refused() {
        for args in [
            ["edit", "al", "--clear-allow-ip", "--allow-ip", "10.0.0.0/8"],
            [
                "edit",
                "al",
                "--clear-dir-perms",
                "--dir-perm",
                "/in=upload",
            ],
            ["edit", "al", "--clear-keys", "--remove-key", "AAAA"],
        ] {
            assert!(Cli::try_parse_from(["ferry"].into_iter().chain(args)).is_err());
        }
    }
}
