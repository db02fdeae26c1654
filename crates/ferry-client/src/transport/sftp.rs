//! SFTP over russh's client and russh-sftp.
//!
//! Host keys are checked against known_hosts (unknown keys: recorded with `--accept-new-host-key`, asked about on
//! a terminal, refused otherwise; changed keys: always refused). Logins try, in order: a password given in the
//! URL or `FERRY_PASSWORD`, the ssh-agent's keys, identity files (`--identity`, `IdentityFile` from
//! `~/.ssh/config`, `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`), and last a password prompt. Checksums come from
//! the `sha256sum`-style commands run over an exec channel, which ferry's server answers itself and an OpenSSH
//! server runs in the user's shell; a server that has neither gives no checksums.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{Endpoint, Entry, EntryKind, Sink, Source, Transport};
use crate::checksum::{normalize_hex, HashAlgorithm};
use crate::error::{ClientError, Result};
use crate::ssh_config::{home_dir, SshConfig};

/// Size of the buffer data is copied through.
const BUFFER: usize = 256 * 1024;
/// Most output accepted from a checksum command.
const MAX_COMMAND_OUTPUT: usize = 64 * 1024;

/// How the first connection to an endpoint logged in, so later ones go straight to it.
#[derive(Clone)]
pub enum ResolvedAuth {
    Password(String),
    Key(Arc<PrivateKey>),
    Agent(PublicKey),
}

/// A logged-in SFTP session.
pub struct SftpTransport {
    handle: Handle<HostKeyCheck>,
    sftp: SftpSession,
    describe: String,
    timeout: Duration,
    /// Whether the server runs `sha256sum`; `None` until asked.
    sums: Option<bool>,
}

impl SftpTransport {
    /// Connects to the endpoint's server, checks its host key and logs in.
    pub async fn connect(endpoint: &Arc<Endpoint>) -> Result<SftpTransport> {
        let url = &endpoint.url;
        let options = &endpoint.options;
        let host_config = SshConfig::load().host(&url.host);
        let host = host_config
            .host_name
            .clone()
            .unwrap_or_else(|| url.host.clone());
        let port = url.port.or(host_config.port).unwrap_or(22);
        let user = url
            .user
            .clone()
            .or_else(|| host_config.user.clone())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "root".to_owned());
        let target = format!("sftp://{user}@{}:{port}", crate::url::bracket_host(&host));
        let timeout = if options.timeout.is_zero() {
            Duration::from_secs(30)
        } else {
            options.timeout
        };
        let connect_err = |reason: String| ClientError::Connect {
            target: target.clone(),
            reason,
        };

        let known_hosts = options
            .known_hosts
            .clone()
            .or_else(|| host_config.known_hosts_file.clone())
            .or_else(|| home_dir().map(|h| h.join(".ssh/known_hosts")));
        let verdict = Arc::new(Mutex::new(None));
        let check = HostKeyCheck {
            host: host.clone(),
            port,
            known_hosts,
            accept_new: options.accept_new_host_key,
            prompter: options.prompter.clone(),
            verdict: verdict.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(3600)),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            nodelay: true,
            ..client::Config::default()
        });
        let connecting = client::connect(config, (host.as_str(), port), check);
        let mut handle = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => return Err(connect_err("timed out".to_owned())),
            Ok(Err(e)) => {
                // A refused host key is final; anything else (refused, reset, closed) may pass.
                let refusal = verdict.lock().ok().and_then(|v| v.clone());
                return Err(match refusal {
                    Some(reason) => ClientError::Refused {
                        target: target.clone(),
                        reason,
                    },
                    None => connect_err(describe_ssh_error(&e)),
                });
            }
            Ok(Ok(h)) => h,
        };

        let auth = authenticate(&mut handle, endpoint, &user, &host_config, &target).await?;
        endpoint.state.lock().await.sftp = Some(auth);

        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| connect_err(describe_ssh_error(&e)))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| connect_err(format!("sftp subsystem: {}", describe_ssh_error(&e))))?;
        let sftp_config = russh_sftp::client::Config {
            request_timeout_secs: timeout.as_secs().max(1),
            ..russh_sftp::client::Config::default()
        };
        let sftp = tokio::time::timeout(
            timeout,
            SftpSession::new_with_config(channel.into_stream(), sftp_config),
        )
        .await
        .map_err(|_| connect_err("sftp subsystem timed out".to_owned()))?
        .map_err(|e| connect_err(format!("sftp subsystem: {e}")))?;
        Ok(SftpTransport {
            handle,
            sftp,
            describe: target,
            timeout,
            sums: None,
        })
    }

    /// Runs a command on an exec channel; returns its exit status and stdout.
    async fn exec(&mut self, command: &str) -> Result<(u32, Vec<u8>)> {
        let run = async {
            let mut channel = self
                .handle
                .channel_open_session()
                .await
                .map_err(|e| ClientError::lost(&self.describe, describe_ssh_error(&e)))?;
            channel
                .exec(true, command)
                .await
                .map_err(|e| ClientError::lost(&self.describe, describe_ssh_error(&e)))?;
            let _ = channel.eof().await;
            let mut out = Vec::new();
            let mut status = None;
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } if out.len() + data.len() <= MAX_COMMAND_OUTPUT => {
                        out.extend_from_slice(&data);
                    }
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            Ok((status.unwrap_or(255), out))
        };
        tokio::time::timeout(self.timeout * 4, run)
            .await
            .map_err(|_| ClientError::lost(command, "timed out waiting for the server"))?
    }
}

#[async_trait]
impl Transport for SftpTransport {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        let path = if dir.is_empty() { "." } else { dir };
        let entries = self
            .sftp
            .read_dir(path)
            .await
            .map_err(|e| map_error(dir, e))?;
        Ok(entries
            .filter(|e| e.file_name() != "." && e.file_name() != "..")
            .map(|e| entry_from(e.file_name(), &e.metadata()))
            .collect())
    }

    async fn stat(&mut self, path: &str) -> Result<Option<Entry>> {
        let p = if path.is_empty() { "." } else { path };
        match self.sftp.metadata(p).await {
            Ok(meta) => Ok(Some(entry_from(
                crate::url::file_name(path).to_owned(),
                &meta,
            ))),
            Err(russh_sftp::client::error::Error::Status(s))
                if s.status_code == StatusCode::NoSuchFile =>
            {
                Ok(None)
            }
            Err(e) => Err(map_error(path, e)),
        }
    }

    async fn read(
        &mut self,
        path: &str,
        offset: u64,
        len: Option<u64>,
        sink: Sink<'_>,
    ) -> Result<u64> {
        let mut file = self.sftp.open(path).await.map_err(|e| map_error(path, e))?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| ClientError::lost(path, e))?;
        }
        let mut buf = vec![0u8; BUFFER];
        let mut total = 0u64;
        let mut remaining = len.unwrap_or(u64::MAX);
        while remaining > 0 {
            let want = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let n = file
                .read(&mut buf[..want])
                .await
                .map_err(|e| ClientError::lost(path, e))?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n])
                .await
                .map_err(|e| ClientError::local(path, e))?;
            total += n as u64;
            remaining -= n as u64;
        }
        sink.flush()
            .await
            .map_err(|e| ClientError::local(path, e))?;
        let _ = file.close().await;
        Ok(total)
    }

    async fn write(&mut self, path: &str, offset: u64, source: Source<'_>) -> Result<u64> {
        let flags = if offset == 0 {
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE
        } else {
            OpenFlags::WRITE
        };
        let mut file = self
            .sftp
            .open_with_flags(path, flags)
            .await
            .map_err(|e| map_error(path, e))?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| ClientError::lost(path, e))?;
        }
        let mut buf = vec![0u8; BUFFER];
        let mut total = 0u64;
        loop {
            let n = source
                .read(&mut buf)
                .await
                .map_err(|e| ClientError::local(path, e))?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .await
                .map_err(|e| ClientError::lost(path, e))?;
            total += n as u64;
        }
        file.flush().await.map_err(|e| ClientError::lost(path, e))?;
        file.close().await.map_err(|e| ClientError::lost(path, e))?;
        Ok(total)
    }

    async fn remove_file(&mut self, path: &str) -> Result<()> {
        self.sftp
            .remove_file(path)
            .await
            .map_err(|e| map_error(path, e))
    }

    async fn remove_dir(&mut self, path: &str) -> Result<()> {
        self.sftp
            .remove_dir(path)
            .await
            .map_err(|e| map_error(path, e))
    }

    async fn mkdir(&mut self, path: &str) -> Result<()> {
        self.sftp
            .create_dir(path)
            .await
            .map_err(|e| map_error(path, e))
    }

    async fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.sftp
            .rename(from, to)
            .await
            .map_err(|e| map_error(from, e))
    }

    async fn set_mtime(&mut self, path: &str, mtime: SystemTime) -> Result<bool> {
        let secs = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
            .unwrap_or(0);
        let attrs = FileAttributes {
            atime: Some(secs),
            mtime: Some(secs),
            ..FileAttributes::empty()
        };
        Ok(self.sftp.set_metadata(path, attrs).await.is_ok())
    }

    async fn checksum_algorithms(&mut self) -> Vec<HashAlgorithm> {
        if self.sums.is_none() {
            // An empty stdin hashes to a known digest on every server that runs the command.
            let ok = match self.exec("sha256sum").await {
                Ok((0, out)) => String::from_utf8_lossy(&out).starts_with(
                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ),
                _ => false,
            };
            self.sums = Some(ok);
        }
        if self.sums == Some(true) {
            HashAlgorithm::ALL.to_vec()
        } else {
            Vec::new()
        }
    }

    async fn supports_ranged_checksum(&mut self) -> bool {
        false
    }

    async fn checksum(
        &mut self,
        path: &str,
        algorithm: HashAlgorithm,
        range: Option<Range<u64>>,
    ) -> Result<Option<String>> {
        if range.is_some() || self.checksum_algorithms().await.is_empty() {
            return Ok(None);
        }
        let command = format!("{} -- {}", algorithm.sum_command(), shell_quote(path));
        let (status, out) = self.exec(&command).await?;
        if status != 0 {
            return Ok(None);
        }
        Ok(String::from_utf8_lossy(&out)
            .split_whitespace()
            .next()
            .and_then(|h| normalize_hex(h.trim_start_matches('\\'), algorithm)))
    }

    async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.sftp.close().await;
            let _ = self
                .handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        })
        .await;
    }
}

/// Logs in with the first method that works; see the module docs for the order.
async fn authenticate(
    handle: &mut Handle<HostKeyCheck>,
    endpoint: &Endpoint,
    user: &str,
    host_config: &crate::ssh_config::SshHostConfig,
    target: &str,
) -> Result<ResolvedAuth> {
    let auth_err = |reason: &str| ClientError::Auth {
        target: target.to_owned(),
        reason: reason.to_owned(),
    };
    let lost = |e: russh::Error| ClientError::Connect {
        target: target.to_owned(),
        reason: describe_ssh_error(&e),
    };
    let remembered = endpoint.state.lock().await.sftp.clone();
    if let Some(auth) = remembered {
        if try_auth(handle, user, &auth).await.map_err(lost)? {
            return Ok(auth);
        }
    }
    if let Some(password) = endpoint.password().await {
        let auth = ResolvedAuth::Password(password);
        if try_auth(handle, user, &auth).await.map_err(lost)? {
            return Ok(auth);
        }
        return Err(auth_err("password refused"));
    }
    if !host_config.identities_only {
        if let Ok(mut agent) = AgentClient::connect_env().await {
            if let Ok(keys) = agent.request_identities().await {
                for identity in keys {
                    let key = identity.public_key().into_owned();
                    let hash = rsa_hash(handle, &key).await;
                    let ok = handle
                        .authenticate_publickey_with(user, key.clone(), hash, &mut agent)
                        .await
                        .map(|r| r.success())
                        .unwrap_or(false);
                    if ok {
                        return Ok(ResolvedAuth::Agent(key));
                    }
                }
            }
        }
    }
    for path in identity_files(endpoint, host_config) {
        let Ok(key) = russh::keys::load_secret_key(&path, None) else {
            continue;
        };
        let auth = ResolvedAuth::Key(Arc::new(key));
        if try_auth(handle, user, &auth).await.map_err(lost)? {
            return Ok(auth);
        }
    }
    if let Some(password) = endpoint.prompt_password(&format!("{user}@{}", endpoint.url.host)) {
        let auth = ResolvedAuth::Password(password.clone());
        if try_auth(handle, user, &auth).await.map_err(lost)? {
            endpoint.set_password(password).await;
            return Ok(auth);
        }
        return Err(auth_err("password refused"));
    }
    Err(auth_err(
        "no key or password accepted (give a password in the URL, FERRY_PASSWORD or at the prompt)",
    ))
}

async fn try_auth(
    handle: &mut Handle<HostKeyCheck>,
    user: &str,
    auth: &ResolvedAuth,
) -> std::result::Result<bool, russh::Error> {
    match auth {
        ResolvedAuth::Password(p) => Ok(handle
            .authenticate_password(user, p.as_str())
            .await?
            .success()),
        ResolvedAuth::Key(key) => {
            let hash = rsa_hash(handle, key.public_key()).await;
            let key = PrivateKeyWithHashAlg::new(key.clone(), hash);
            Ok(handle.authenticate_publickey(user, key).await?.success())
        }
        ResolvedAuth::Agent(key) => {
            let Ok(mut agent) = AgentClient::connect_env().await else {
                return Ok(false);
            };
            let hash = rsa_hash(handle, key).await;
            Ok(handle
                .authenticate_publickey_with(user, key.clone(), hash, &mut agent)
                .await
                .map(|r| r.success())
                .unwrap_or(false))
        }
    }
}

async fn rsa_hash(handle: &Handle<HostKeyCheck>, key: &PublicKey) -> Option<HashAlg> {
    if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten()
    } else {
        None
    }
}

fn identity_files(
    endpoint: &Endpoint,
    host_config: &crate::ssh_config::SshHostConfig,
) -> Vec<PathBuf> {
    let mut files = endpoint.options.identities.clone();
    files.extend(host_config.identity_files.iter().cloned());
    if host_config.identity_files.is_empty() {
        if let Some(home) = home_dir() {
            for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                files.push(home.join(".ssh").join(name));
            }
        }
    }
    files.retain(|p| p.is_file());
    files
}

/// The russh handler: checks the server's host key against known_hosts.
pub struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: Option<PathBuf>,
    accept_new: bool,
    prompter: Option<Arc<dyn super::Prompter>>,
    /// Why the key was refused, for the error message.
    verdict: Arc<Mutex<Option<String>>>,
}

impl HostKeyCheck {
    fn refuse(&self, why: String) -> bool {
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(why);
        }
        false
    }

    fn check(&self, key: &PublicKey) -> bool {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let Some(path) = &self.known_hosts else {
            return self.refuse("no known_hosts file (HOME is not set)".to_owned());
        };
        match russh::keys::known_hosts::check_known_hosts_path(&self.host, self.port, key, path) {
            Ok(true) => true,
            Ok(false) => {
                let accept = self.accept_new
                    || self
                        .prompter
                        .as_ref()
                        .is_some_and(|p| p.accept_host_key(&self.host, &fingerprint));
                if !accept {
                    return self.refuse(format!(
                        "unknown host key {fingerprint}; check it and run again with --accept-new-host-key, \
                         or add it to {}",
                        path.display()
                    ));
                }
                if let Err(e) = russh::keys::known_hosts::learn_known_hosts_path(
                    &self.host, self.port, key, path,
                ) {
                    tracing::warn!("cannot record the host key in {}: {e}", path.display());
                }
                true
            }
            Err(russh::keys::Error::KeyChanged { line }) => self.refuse(format!(
                "HOST KEY CHANGED: the server shows {fingerprint}, which differs from {}:{line}; someone may be \
                 intercepting the connection",
                path.display()
            )),
            Err(e) => self.refuse(format!("cannot read {}: {e}", path.display())),
        }
    }
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => Ok(self.check(key)),
            PublicKeyOrCertificate::Certificate(_) => {
                Ok(self.refuse("host certificates are not supported".to_owned()))
            }
        }
    }
}

fn entry_from(name: String, meta: &FileAttributes) -> Entry {
    let kind = if meta.is_dir() {
        EntryKind::Dir
    } else if meta.is_symlink() {
        EntryKind::Symlink
    } else if meta.is_regular() || meta.permissions.is_none() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    Entry {
        name,
        kind,
        size: meta.size.unwrap_or(0),
        mtime: meta
            .mtime
            .map(|s| UNIX_EPOCH + Duration::from_secs(u64::from(s))),
        mtime_precision: Duration::from_secs(1),
        mode: meta.permissions.map(|p| p & 0o7777),
    }
}

fn map_error(path: &str, e: russh_sftp::client::error::Error) -> ClientError {
    use russh_sftp::client::error::Error;
    match e {
        Error::Status(s) => match s.status_code {
            StatusCode::NoSuchFile => ClientError::NotFound {
                path: path.to_owned(),
            },
            StatusCode::PermissionDenied => ClientError::remote(path, "permission denied"),
            StatusCode::ConnectionLost | StatusCode::NoConnection => {
                ClientError::lost(path, s.error_message)
            }
            _ if s.error_message.is_empty() => ClientError::remote(path, s.status_code),
            _ => ClientError::remote(path, s.error_message),
        },
        Error::Timeout => ClientError::lost(path, "timed out waiting for the server"),
        other => ClientError::lost(path, other),
    }
}

fn describe_ssh_error(e: &russh::Error) -> String {
    match e {
        russh::Error::IO(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// Quotes a word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
