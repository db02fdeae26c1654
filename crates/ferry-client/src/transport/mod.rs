//! One trait for every place files live: an FTP/FTPS server, an SFTP server, or the local filesystem. The transfer
//! engine and mirror only speak [`Transport`], so any pair of them can be copied between.

pub mod ftp;
pub mod local;
pub mod sftp;
pub mod tls;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::checksum::HashAlgorithm;
use crate::error::Result;
use crate::retry::{RetryNotice, RetryPolicy};
use crate::url::{RemoteUrl, Scheme};

/// What a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A file or directory as a listing or `stat` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name within its directory (for `stat`, the last component of the path).
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: Option<SystemTime>,
    /// How far `mtime` may be from the truth: one second for MLSD, SFTP and local files, a minute or a day
    /// for `LIST` output, which shows no seconds (or no time for old files).
    pub mtime_precision: Duration,
    /// Unix permission bits, where the server tells them.
    pub mode: Option<u32>,
}

impl Entry {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
}

/// A writer the transports fill (downloads) or a reader they drain (uploads).
pub type Sink<'a> = &'a mut (dyn AsyncWrite + Send + Unpin);
/// See [`Sink`].
pub type Source<'a> = &'a mut (dyn AsyncRead + Send + Unpin);

/// File operations on one connection. Paths are in the server's form (see [`crate::url`]); for the local
/// transport they are local paths.
#[async_trait]
pub trait Transport: Send {
    /// `ftp://user@host:port`, `local`: for messages.
    fn describe(&self) -> String;

    /// Whether this is the local filesystem (downloads to it go through a `.part` file).
    fn is_local(&self) -> bool {
        false
    }

    /// The entries of a directory, without `.` and `..`.
    async fn list(&mut self, dir: &str) -> Result<Vec<Entry>>;

    /// The entry at `path`, `None` when nothing is there.
    async fn stat(&mut self, path: &str) -> Result<Option<Entry>>;

    /// Writes the file's bytes from `offset` (at most `len` of them) into `sink`; returns the bytes written.
    async fn read(
        &mut self,
        path: &str,
        offset: u64,
        len: Option<u64>,
        sink: Sink<'_>,
    ) -> Result<u64>;

    /// Writes the file's bytes from `offset` to its end into `sink`, but stops after `limit` of them; returns the
    /// bytes written. Unlike [`Transport::read`] with a length, this asks the server for the rest of the file:
    /// `limit` only guards against a server that sends more than it said the file holds (FTP sends no `RANG`,
    /// which servers such as ProFTPD refuse when it reaches past the end of the file).
    async fn read_at_most(
        &mut self,
        path: &str,
        offset: u64,
        limit: u64,
        sink: Sink<'_>,
    ) -> Result<u64> {
        self.read(path, offset, Some(limit), sink).await
    }

    /// Stores `source` into the file: from scratch (truncating) when `offset` is 0, else appended at `offset`,
    /// which is the file's current size. Returns the bytes stored.
    async fn write(&mut self, path: &str, offset: u64, source: Source<'_>) -> Result<u64>;

    async fn remove_file(&mut self, path: &str) -> Result<()>;
    async fn remove_dir(&mut self, path: &str) -> Result<()>;
    async fn mkdir(&mut self, path: &str) -> Result<()>;
    async fn rename(&mut self, from: &str, to: &str) -> Result<()>;

    /// Sets a file's modification time where the server allows it; `Ok(false)` when it cannot.
    async fn set_mtime(&mut self, path: &str, mtime: SystemTime) -> Result<bool>;

    /// The checksum algorithms the server computes, best first (empty when it offers none).
    async fn checksum_algorithms(&mut self) -> Vec<HashAlgorithm>;

    /// Whether [`Transport::checksum`] takes a byte range.
    async fn supports_ranged_checksum(&mut self) -> bool;

    /// The lower-case hex checksum of the file (or of `range` of it), computed by the server; `None` when the
    /// server cannot.
    async fn checksum(
        &mut self,
        path: &str,
        algorithm: HashAlgorithm,
        range: Option<Range<u64>>,
    ) -> Result<Option<String>>;

    /// Ends the session politely (QUIT, SSH disconnect). Errors are ignored.
    async fn close(&mut self);
}

/// How to reach and trust servers: the options of the command line that are not about one transfer.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Do not verify FTPS certificates.
    pub insecure: bool,
    /// Accept an FTPS certificate whose SHA-256 fingerprint (hex, colons allowed) is this, whoever signed it.
    pub tls_fingerprint: Option<String>,
    /// Extra CA certificates (PEM) for FTPS.
    pub ca_file: Option<PathBuf>,
    /// Record unknown SSH host keys in known_hosts instead of asking or refusing.
    pub accept_new_host_key: bool,
    /// known_hosts file to use instead of `~/.ssh/known_hosts` (or the config's UserKnownHostsFile).
    pub known_hosts: Option<PathBuf>,
    /// Identity files to try before the configured ones.
    pub identities: Vec<PathBuf>,
    /// Timeout for connecting and for each reply.
    pub timeout: Duration,
    /// Use active mode (PORT/EPRT) for FTP data connections.
    pub ftp_active: bool,
    /// Asks the user for passwords and unknown host keys; `None` in scripts.
    pub prompter: Option<Arc<dyn Prompter>>,
    /// How connection attempts that fail for a transient reason are retried.
    pub retry: RetryPolicy,
    /// Hears of each connection retry (the CLI prints a line).
    pub on_retry: Option<RetryNotice>,
}

/// Questions the client may ask a person at a terminal.
pub trait Prompter: Send + Sync {
    /// A password for `target` (`None`: no answer).
    fn password(&self, target: &str) -> Option<String>;
    /// Whether to trust and record an unknown host key.
    fn accept_host_key(&self, host: &str, fingerprint: &str) -> bool;
}

/// Credentials and host settings resolved once per server, shared by every connection to it, so that a prompt is
/// answered once even when `-j 4` opens four connections.
pub struct Endpoint {
    pub url: RemoteUrl,
    pub options: ConnectOptions,
    state: tokio::sync::Mutex<EndpointState>,
}

#[derive(Default)]
struct EndpointState {
    /// A password that worked, or was given.
    password: Option<String>,
    /// The SFTP settings learnt by the first connection.
    sftp: Option<sftp::ResolvedAuth>,
    /// The FTPS server refused a data connection that did not resume the control connection's TLS session.
    ftps_requires_resumption: bool,
}

impl Endpoint {
    /// An endpoint for the server of `url`. The password comes from the URL, else `FERRY_PASSWORD`, else (FTP)
    /// `~/.netrc`, else a prompt when one is needed.
    pub fn new(url: RemoteUrl, options: ConnectOptions) -> Arc<Endpoint> {
        let password = url
            .password
            .clone()
            .or_else(|| std::env::var("FERRY_PASSWORD").ok());
        Arc::new(Endpoint {
            url,
            options,
            state: tokio::sync::Mutex::new(EndpointState {
                password,
                ..EndpointState::default()
            }),
        })
    }

    /// Opens a new connection to this endpoint, retrying transient failures as [`ConnectOptions::retry`] says.
    pub async fn connect(self: &Arc<Self>) -> Result<Box<dyn Transport>> {
        let options = &self.options;
        options
            .retry
            .run(options.on_retry.as_ref(), || self.connect_once())
            .await
    }

    async fn connect_once(self: &Arc<Self>) -> Result<Box<dyn Transport>> {
        match self.url.scheme {
            Scheme::Sftp => Ok(Box::new(sftp::SftpTransport::connect(self).await?)),
            _ => Ok(Box::new(ftp::FtpTransport::connect(self).await?)),
        }
    }

    async fn password(&self) -> Option<String> {
        self.state.lock().await.password.clone()
    }

    async fn set_password(&self, password: String) {
        self.state.lock().await.password = Some(password);
    }

    async fn ftps_requires_resumption(&self) -> bool {
        self.state.lock().await.ftps_requires_resumption
    }

    async fn set_ftps_requires_resumption(&self) {
        self.state.lock().await.ftps_requires_resumption = true;
    }

    fn prompt_password(&self, target: &str) -> Option<String> {
        self.options
            .prompter
            .as_ref()
            .and_then(|p| p.password(target))
    }
}

/// Where connections for one side of a transfer come from: the local filesystem, a remote endpoint, or a function
/// (for embedding and tests). Idle connections are kept for reuse.
pub struct Pool {
    origin: Origin,
    idle: std::sync::Mutex<Vec<Box<dyn Transport>>>,
    /// Told whenever a connection is handed back.
    returned: tokio::sync::Notify,
}

/// Makes connections for [`Pool::custom`].
pub type TransportFactory = dyn Fn() -> Box<dyn Transport> + Send + Sync;

enum Origin {
    Local,
    Remote(Arc<Endpoint>),
    Custom(Arc<TransportFactory>),
}

impl Pool {
    /// A pool of connections to `endpoint`.
    pub fn remote(endpoint: Arc<Endpoint>) -> Arc<Pool> {
        Pool::new(Origin::Remote(endpoint))
    }

    /// The local filesystem.
    pub fn local() -> Arc<Pool> {
        Pool::new(Origin::Local)
    }

    /// Connections made by `factory`.
    pub fn custom(factory: Arc<TransportFactory>) -> Arc<Pool> {
        Pool::new(Origin::Custom(factory))
    }

    fn new(origin: Origin) -> Arc<Pool> {
        Arc::new(Pool {
            origin,
            idle: std::sync::Mutex::new(Vec::new()),
            returned: tokio::sync::Notify::new(),
        })
    }

    /// Whether this side is the local filesystem.
    pub fn is_local(&self) -> bool {
        matches!(self.origin, Origin::Local)
    }

    /// The remote endpoint, if this side is remote.
    pub fn endpoint(&self) -> Option<&Arc<Endpoint>> {
        match &self.origin {
            Origin::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// An idle connection, or a new one. While a new one is being made (and retried), a connection handed back
    /// by another user of the pool is taken instead: against a server that allows fewer connections than asked
    /// for (`-j 4` where the server takes two per address), the work goes on over the connections it allows.
    pub async fn get(&self) -> Result<Box<dyn Transport>> {
        if let Some(t) = self.take_idle() {
            return Ok(t);
        }
        match &self.origin {
            Origin::Local => Ok(Box::new(local::LocalTransport)),
            Origin::Remote(endpoint) => {
                let connect = endpoint.connect();
                tokio::pin!(connect);
                loop {
                    let returned = self.returned.notified();
                    if let Some(t) = self.take_idle() {
                        return Ok(t);
                    }
                    tokio::select! {
                        made = &mut connect => return made,
                        () = returned => {}
                    }
                }
            }
            Origin::Custom(factory) => Ok(factory()),
        }
    }

    fn take_idle(&self) -> Option<Box<dyn Transport>> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    /// Returns a connection that is in a good state, for reuse.
    pub fn put(&self, transport: Box<dyn Transport>) {
        if self.is_local() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(transport);
        }
        self.returned.notify_waiters();
    }

    /// Closes every idle connection.
    pub async fn close(&self) {
        let idle: Vec<_> = match self.idle.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => Vec::new(),
        };
        for mut t in idle {
            t.close().await;
        }
    }
}
