//! FTP and FTPS (explicit and implicit) over suppaftp's tokio client.
//!
//! What the server offers is read from `FEAT`: `MLST`/`MLSD` listings (else `LIST`, parsed in the Unix or DOS
//! format), `HASH` with `RANG` or the legacy `XSHA256`-style commands for checksums, `MFMT` (else `MDTM` with a
//! time, as vsftpd takes it) for setting times. Resumed downloads send `REST n` before `RETR`; resumed uploads
//! use `APPE`; a bounded read uses `RANG` where offered, else `REST` and closes the data connection once enough bytes came.
//!
//! Two things can leave a control connection unusable, and each makes the transport log in again with the same
//! endpoint: a data connection the client closed before the end of the file (ProFTPD over TLS then ends the whole
//! session), and, over FTPS, a data connection refused because it could not resume the control connection's TLS
//! session (rustls uses each TLS 1.3 session ticket once; ProFTPD, which requires resumption, issues two per
//! control connection and none on upload data connections, so a third upload on one connection is refused).

use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream, TransferStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode, Status};
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{tls, Endpoint, Entry, EntryKind, Sink, Source, Transport};
use crate::checksum::{normalize_hex, HashAlgorithm};
use crate::error::{ClientError, Result};
use crate::url::{file_name, parent, Scheme};

/// Size of the buffer data is copied through.
const BUFFER: usize = 256 * 1024;

/// The underlying stream type; plain FTP uses it without TLS.
type Stream = suppaftp::tokio::AsyncRustlsStream;

/// One run of a control-connection exchange that opens a data connection (see [`FtpTransport::open_data`]).
type DataExchange<'a, T> =
    Pin<Box<dyn Future<Output = std::result::Result<T, FtpError>> + Send + 'a>>;

/// A logged-in FTP or FTPS control connection.
pub struct FtpTransport {
    ftp: AsyncRustlsFtpStream,
    /// Where to log in again when the session became unusable.
    endpoint: Arc<Endpoint>,
    /// The TLS sessions of this control connection (FTPS), for data connections to resume.
    sessions: Option<Arc<tls::SessionStore>>,
    describe: String,
    timeout: Duration,
    features: Features,
}

/// What `FEAT` said.
#[derive(Debug, Default, Clone)]
struct Features {
    mlst: bool,
    hash: Vec<HashAlgorithm>,
    hash_selected: Option<HashAlgorithm>,
    rang: bool,
    legacy_hash: Vec<HashAlgorithm>,
    mfmt: bool,
    mdtm: bool,
    /// `LIST -a` was refused where a bare `LIST` worked.
    list_a_refused: bool,
}

impl FtpTransport {
    /// Connects, secures (for ftps) and logs in to the endpoint's server.
    pub async fn connect(endpoint: &Arc<Endpoint>) -> Result<FtpTransport> {
        let url = &endpoint.url;
        let options = &endpoint.options;
        let target = url.server();
        let timeout = effective_timeout(options.timeout);
        let connect_err = |reason: String| ClientError::Connect {
            target: target.clone(),
            reason,
        };
        let addr = (url.host.as_str(), url.port_or_default());
        let (tls_config, sessions) = match url.scheme {
            Scheme::Ftps | Scheme::FtpsImplicit => {
                let (config, sessions) =
                    tls::client_config(options).map_err(|reason| ClientError::Refused {
                        target: target.clone(),
                        reason,
                    })?;
                (Some(config), Some(sessions))
            }
            _ => (None, None),
        };
        let connector = |config: &Arc<rustls::ClientConfig>| {
            AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(config.clone()))
        };
        let connecting = async {
            match (&tls_config, url.scheme) {
                (Some(config), Scheme::FtpsImplicit) => {
                    let mut ftp = AsyncRustlsFtpStream::connect_secure_implicit(
                        addr,
                        connector(config),
                        &url.host,
                    )
                    .await?;
                    ftp.custom_command("PBSZ 0", &[Status::CommandOk]).await?;
                    ftp.custom_command("PROT P", &[Status::CommandOk]).await?;
                    Ok(ftp)
                }
                (Some(config), _) => {
                    let ftp = AsyncRustlsFtpStream::connect(addr).await?;
                    ftp.into_secure(connector(config), &url.host).await
                }
                (None, _) => AsyncRustlsFtpStream::connect(addr).await,
            }
        };
        let mut ftp = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| connect_err("timed out".to_owned()))?
            .map_err(|e| connect_error(&target, e))?;

        let (user, password) = credentials(endpoint).await;
        let login = tokio::time::timeout(timeout, ftp.login(user.as_str(), password.as_str()))
            .await
            .map_err(|_| connect_err("login timed out".to_owned()))?;
        match login {
            Ok(()) => endpoint.set_password(password).await,
            // 530 and the other permanent replies to USER/PASS: another try would be refused the same way.
            Err(FtpError::UnexpectedResponse(r))
                if reply_code(&r.body).is_some_and(|c| (500..600).contains(&c)) =>
            {
                return Err(ClientError::Auth {
                    target,
                    reason: reply_text(&r.body),
                });
            }
            Err(e) => return Err(connect_error(&target, e)),
        }
        let is_v6 = url.host.contains(':');
        ftp.set_mode(if options.ftp_active {
            Mode::Active
        } else if is_v6 {
            Mode::ExtendedPassive
        } else {
            Mode::Passive
        });
        // Data connections go to the control connection's address even if PASV names another (NAT, or a bounce).
        ftp.set_passive_nat_workaround(true);
        let mut transport = FtpTransport {
            ftp,
            endpoint: endpoint.clone(),
            sessions,
            describe: target,
            timeout,
            features: Features::default(),
        };
        transport
            .timed("", async |ftp| ftp.transfer_type(FileType::Binary).await)
            .await?;
        if let Ok(Ok(feat)) = tokio::time::timeout(timeout, transport.ftp.feat()).await {
            transport.features = Features::parse(&feat);
            if feat.keys().any(|k| k.eq_ignore_ascii_case("UTF8")) {
                let _ = tokio::time::timeout(
                    timeout,
                    transport
                        .ftp
                        .custom_command("OPTS UTF8 ON", &[Status::CommandOk]),
                )
                .await;
            }
        }
        Ok(transport)
    }

    /// Replaces this session with a fresh login to the same endpoint. The old control connection is dropped
    /// without `QUIT`: it is broken or out of step.
    async fn reconnect(&mut self) -> Result<()> {
        *self = FtpTransport::connect(&self.endpoint).await?;
        Ok(())
    }

    /// Before a data connection: when the server requires data connections to resume the control connection's TLS
    /// session and none is left to resume (rustls uses each TLS 1.3 ticket once; ProFTPD issues two per control
    /// connection and none on upload data connections), logs in again, which brings new tickets.
    async fn ensure_resumable_session(&mut self) -> Result<()> {
        let exhausted = self.sessions.as_ref().is_some_and(|s| !s.can_resume());
        if exhausted && self.endpoint.ftps_requires_resumption().await {
            self.reconnect().await?;
        }
        Ok(())
    }

    /// Whether a data connection opened now would resume the control connection's TLS session (`None` for plain
    /// FTP).
    fn data_connection_resumes(&self) -> Option<bool> {
        self.sessions.as_ref().map(|s| s.can_resume())
    }

    /// Takes the outcome of an exchange that opened a data connection: `Some` to go on with, `None` to run the
    /// exchange again (each exchange sends any `REST` or `RANG` it needs itself, so that it can). Over FTPS, a data
    /// connection refused with 425 is tried once more on a fresh login: the refusal is what a server that requires
    /// TLS session resumption answers once rustls has no unused session ticket left for it, and a new control
    /// connection brings new tickets.
    async fn data_opened<T>(
        &mut self,
        path: &str,
        outcome: std::result::Result<std::result::Result<T, FtpError>, tokio::time::error::Elapsed>,
        tried_fresh_login: &mut bool,
    ) -> Result<Option<T>> {
        match outcome {
            Ok(Ok(t)) => Ok(Some(t)),
            Ok(Err(FtpError::UnexpectedResponse(r)))
                if reply_code(&r.body) == Some(425)
                    && self.sessions.is_some()
                    && !*tried_fresh_login =>
            {
                self.endpoint.set_ftps_requires_resumption().await;
                *tried_fresh_login = true;
                self.reconnect().await?;
                Ok(None)
            }
            Ok(Err(e)) => Err(map_error(path, e)),
            Err(_) => Err(ClientError::lost(path, "timed out waiting for the server")),
        }
    }

    /// After the last byte of a `RANG` range: whether the server ends the data connection there (`false` when
    /// more bytes come: ProFTPD 1.3.8 over TLS takes `RANG` but sends on to the end of the file). Waiting for the
    /// end also keeps the server's TLS `close_notify` from being left unread, which would make closing the socket
    /// reset it.
    async fn range_ended(&self, path: &str, stream: &mut TransferStream<Stream>) -> Result<bool> {
        let mut extra = [0u8; 1];
        match tokio::time::timeout(self.timeout, stream.read(&mut extra)).await {
            Ok(Ok(0)) => Ok(true),
            // Ended without close_notify: the end of the range all the same.
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(true),
            Ok(Ok(_)) => Ok(false),
            Ok(Err(e)) => Err(ClientError::lost(path, e)),
            Err(_) => Err(ClientError::lost(
                path,
                "timed out waiting for the end of the range",
            )),
        }
    }

    /// Brings the control connection back in step after the client closed a data connection before the end of
    /// the file: reads the transfer's reply (426, or 226 if the server had sent everything) and checks with `NOOP`
    /// that the session goes on. ProFTPD over TLS ends the session instead ("unexpected OpenSSL error,
    /// disconnecting" after the broken pipe), so then this logs in again.
    async fn settle_after_early_close(&mut self) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.ftp.noop()).await {
            Ok(Ok(())) => Ok(()),
            _ => self.reconnect().await,
        }
    }

    /// Runs `exchange`, which opens a data connection, with the reply timeout, after
    /// [`FtpTransport::ensure_resumable_session`] and as many times as [`FtpTransport::data_opened`] asks (a retry
    /// runs on a fresh login). Each run sends any `REST` or `RANG` it needs itself; its future may borrow only the
    /// control connection, so it owns everything else it uses.
    async fn open_data<T: Send>(
        &mut self,
        path: &str,
        mut exchange: impl for<'a> FnMut(&'a mut AsyncRustlsFtpStream) -> DataExchange<'a, T> + Send,
    ) -> Result<T> {
        self.ensure_resumable_session().await?;
        let mut tried_fresh_login = false;
        loop {
            let outcome = tokio::time::timeout(self.timeout, exchange(&mut self.ftp)).await;
            if let Some(opened) = self
                .data_opened(path, outcome, &mut tried_fresh_login)
                .await?
            {
                return Ok(opened);
            }
        }
    }

    /// Runs one control-connection exchange with the reply timeout, mapping errors to `path`.
    async fn timed<T>(
        &mut self,
        path: &str,
        op: impl AsyncFnOnce(&mut AsyncRustlsFtpStream) -> std::result::Result<T, FtpError>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, op(&mut self.ftp)).await {
            Ok(r) => r.map_err(|e| map_error(path, e)),
            Err(_) => Err(ClientError::lost(path, "timed out waiting for the server")),
        }
    }

    /// The lines of `MLSD` (or `LIST`) of `arg`.
    async fn listing(&mut self, dir: &str, arg: Option<&str>, mlsd: bool) -> Result<Vec<String>> {
        let arg = arg.map(str::to_owned);
        self.open_data(dir, move |ftp| {
            let arg = arg.clone();
            Box::pin(async move {
                if mlsd {
                    ftp.mlsd(arg.as_deref()).await
                } else {
                    ftp.list(arg.as_deref()).await
                }
            })
        })
        .await
    }

    /// The lines of `LIST -a` of `dir`: vsftpd and others leave names starting with a dot out of a bare `LIST`,
    /// and a mirror would take them for files the source does not have. A server that refuses the option (a 5xx
    /// reply where a bare `LIST` works) is asked without it from then on, as lftp does; one that takes `-a` for a
    /// name and lists nothing is asked again without it.
    async fn list_all(&mut self, dir: &str) -> Result<Vec<String>> {
        let bare = (!dir.is_empty()).then(|| dir.to_owned());
        if self.features.list_a_refused {
            return self.listing(dir, bare.as_deref(), false).await;
        }
        let with_a = if dir.is_empty() {
            "-a".to_owned()
        } else {
            format!("-a {dir}")
        };
        match self.listing(dir, Some(&with_a), false).await {
            Ok(lines) if !lines.is_empty() => Ok(lines),
            Ok(_) => self.listing(dir, bare.as_deref(), false).await,
            Err(ClientError::Remote { .. }) => {
                let lines = self.listing(dir, bare.as_deref(), false).await?;
                self.features.list_a_refused = true;
                Ok(lines)
            }
            Err(e) => Err(e),
        }
    }

    async fn mlst(&mut self, path: &str) -> Result<Option<Entry>> {
        let arg = if path.is_empty() { "." } else { path };
        let reply = tokio::time::timeout(
            self.timeout,
            self.ftp
                .custom_command(format!("MLST {arg}"), &[Status::RequestedFileActionOk]),
        )
        .await
        .map_err(|_| ClientError::lost(path, "timed out waiting for the server"))?;
        match reply {
            Ok(r) => {
                let text = String::from_utf8_lossy(&r.body);
                let facts_line = text.lines().nth(1).unwrap_or_default();
                Ok(parse_mlsx(facts_line.trim_start()).map(|mut e| {
                    e.name = file_name(path).to_owned();
                    e
                }))
            }
            Err(FtpError::UnexpectedResponse(r)) if reply_code(&r.body) == Some(550) => Ok(None),
            Err(e) => Err(map_error(path, e)),
        }
    }

    async fn select_hash(&mut self, path: &str, algorithm: HashAlgorithm) -> Result<bool> {
        if self.features.hash_selected == Some(algorithm) {
            return Ok(true);
        }
        let cmd = format!("OPTS HASH {}", algorithm.ftp_name());
        match self
            .timed(path, async |ftp| {
                ftp.custom_command(cmd, &[Status::CommandOk]).await
            })
            .await
        {
            Ok(_) => {
                self.features.hash_selected = Some(algorithm);
                Ok(true)
            }
            Err(ClientError::Remote { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `RETR` from `offset`, at most `len` bytes; with `use_rang` a length is sent as `RANG` (so the server stops
    /// there), else the data connection is closed once enough bytes came.
    async fn retrieve(
        &mut self,
        path: &str,
        offset: u64,
        len: Option<u64>,
        use_rang: bool,
        sink: Sink<'_>,
    ) -> Result<u64> {
        if len == Some(0) {
            return Ok(0);
        }
        let rang = match len {
            Some(l) if use_rang => Some(format!("RANG {offset} {}", offset + l - 1)),
            _ => None,
        };
        let rest = match (&rang, offset) {
            (None, 1..) => Some(
                usize::try_from(offset)
                    .map_err(|_| ClientError::remote(path, "offset too large"))?,
            ),
            _ => None,
        };
        let ranged = rang.is_some();
        let remote = path.to_owned();
        let stream = self
            .open_data(path, move |ftp| {
                let (rang, remote) = (rang.clone(), remote.clone());
                Box::pin(async move {
                    if let Some(cmd) = &rang {
                        ftp.custom_command(cmd, &[Status::RequestFilePending])
                            .await?;
                    }
                    if let Some(off) = rest {
                        ftp.resume_transfer(off).await?;
                    }
                    ftp.retr_as_stream(remote).await
                })
            })
            .await?;
        self.copy_out(path, stream, len, ranged, sink).await
    }

    async fn copy_out(
        &mut self,
        path: &str,
        mut stream: TransferStream<Stream>,
        len: Option<u64>,
        bounded_by_server: bool,
        sink: Sink<'_>,
    ) -> Result<u64> {
        let copied =
            copy_with_timeout(&mut stream, sink, Network::Reader, len, self.timeout, path).await;
        let total = match copied {
            Ok(n) => n,
            Err(e) => {
                drop(stream);
                return Err(e);
            }
        };
        let ended_early = match len {
            Some(l) if total >= l && bounded_by_server => {
                !self.range_ended(path, &mut stream).await?
            }
            Some(l) => total >= l,
            None => false,
        };
        if ended_early {
            // Enough bytes came: close the data connection before the end of the file. ABOR is not used: a server
            // that finished before it arrives sends an extra reply (vsftpd: "225 No transfer to ABOR").
            drop(stream);
            self.settle_after_early_close().await?;
            return Ok(total);
        }
        tokio::time::timeout(self.timeout, stream.finish())
            .await
            .map_err(|_| ClientError::lost(path, "timed out waiting for the end of the transfer"))?
            .map_err(|e| map_error(path, e))?;
        Ok(total)
    }
}

#[async_trait]
impl Transport for FtpTransport {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        let arg = (!dir.is_empty()).then(|| dir.to_owned());
        if self.features.mlst {
            let lines = self.listing(dir, arg.as_deref(), true).await?;
            Ok(lines
                .iter()
                .filter_map(|l| parse_mlsx(l))
                .filter(|e| e.name != "." && e.name != "..")
                .collect())
        } else {
            let lines = self.list_all(dir).await?;
            Ok(lines
                .iter()
                .filter_map(|l| parse_list_line(l))
                .filter(|e| e.name != "." && e.name != "..")
                .collect())
        }
    }

    async fn stat(&mut self, path: &str) -> Result<Option<Entry>> {
        if path.is_empty() || path == "/" || path == "." {
            return Ok(Some(dir_entry(path)));
        }
        if self.features.mlst {
            return self.mlst(path).await;
        }
        let p = path.to_owned();
        let size = tokio::time::timeout(self.timeout, self.ftp.size(&p))
            .await
            .map_err(|_| ClientError::lost(path, "timed out waiting for the server"))?;
        match size {
            Ok(size) => {
                let mtime = match tokio::time::timeout(self.timeout, self.ftp.mdtm(&p)).await {
                    Ok(Ok(t)) => Some(SystemTime::from(t.and_utc())),
                    _ => None,
                };
                Ok(Some(Entry {
                    name: file_name(path).to_owned(),
                    kind: EntryKind::File,
                    size: size as u64,
                    mtime,
                    mtime_precision: Duration::from_secs(1),
                    mode: None,
                }))
            }
            Err(FtpError::UnexpectedResponse(r)) if reply_code(&r.body) == Some(550) => {
                // Not a file: a directory shows up in its parent's listing.
                let name = file_name(path);
                let listing = match self.list(parent(path)).await {
                    Ok(l) => l,
                    Err(ClientError::Remote { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                Ok(listing.into_iter().find(|e| e.name == name))
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
        let ranged = self.features.rang;
        self.retrieve(path, offset, len, ranged, sink).await
    }

    async fn read_at_most(
        &mut self,
        path: &str,
        offset: u64,
        limit: u64,
        sink: Sink<'_>,
    ) -> Result<u64> {
        self.retrieve(path, offset, Some(limit), false, sink).await
    }

    async fn write(&mut self, path: &str, offset: u64, source: Source<'_>) -> Result<u64> {
        // Taken before `open_data` makes sure a session is left to resume: that logs in again only once the server
        // is known to require resumption, which is all a failure below would record.
        let resumes = self.data_connection_resumes();
        let remote = path.to_owned();
        let mut stream = self
            .open_data(path, move |ftp| {
                let remote = remote.clone();
                Box::pin(async move {
                    if offset == 0 {
                        ftp.put_with_stream(remote).await
                    } else {
                        ftp.append_with_stream(remote).await
                    }
                })
            })
            .await?;
        let copied = copy_with_timeout(
            source,
            &mut stream,
            Network::Writer,
            None,
            self.timeout,
            path,
        )
        .await;
        let finished = match copied {
            Ok(total) => {
                async {
                    stream
                        .shutdown()
                        .await
                        .map_err(|e| ClientError::lost(path, e))?;
                    tokio::time::timeout(self.timeout, stream.finish())
                        .await
                        .map_err(|_| {
                            ClientError::lost(path, "timed out waiting for the end of the transfer")
                        })?
                        .map_err(|e| map_error(path, e))?;
                    Ok(total)
                }
                .await
            }
            Err(e) => {
                drop(stream);
                Err(e)
            }
        };
        if finished.is_err() && resumes == Some(false) {
            // An upload over a data connection that could not resume the TLS session failed: ProFTPD takes the
            // handshake, then closes the connection (or answers 425) as it requires resumption. From now on a
            // data connection is made resumable first; the retry sends the file again.
            self.endpoint.set_ftps_requires_resumption().await;
        }
        finished
    }

    async fn remove_file(&mut self, path: &str) -> Result<()> {
        let p = path.to_owned();
        self.timed(path, async |ftp| ftp.rm(p).await).await
    }

    async fn remove_dir(&mut self, path: &str) -> Result<()> {
        let p = path.to_owned();
        self.timed(path, async |ftp| ftp.rmdir(p).await).await
    }

    async fn mkdir(&mut self, path: &str) -> Result<()> {
        let p = path.to_owned();
        self.timed(path, async |ftp| ftp.mkdir(p).await).await
    }

    async fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (from.to_owned(), to.to_owned());
        self.timed(from, async |ftp| ftp.rename(f, t).await).await
    }

    async fn set_mtime(&mut self, path: &str, mtime: SystemTime) -> Result<bool> {
        let Some(stamp) = format_mdtm(mtime) else {
            return Ok(false);
        };
        let cmd = if self.features.mfmt {
            format!("MFMT {stamp} {path}")
        } else if self.features.mdtm {
            format!("MDTM {stamp} {path}")
        } else {
            return Ok(false);
        };
        let result = self
            .timed(path, async |ftp| {
                ftp.custom_command(cmd, &[Status::File, Status::RequestedFileActionOk])
                    .await
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(ClientError::Remote { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn checksum_algorithms(&mut self) -> Vec<HashAlgorithm> {
        let mut algos = self.features.hash.clone();
        for a in &self.features.legacy_hash {
            if !algos.contains(a) {
                algos.push(*a);
            }
        }
        algos.sort();
        algos
    }

    async fn supports_ranged_checksum(&mut self) -> bool {
        (self.features.rang && !self.features.hash.is_empty())
            || !self.features.legacy_hash.is_empty()
    }

    async fn checksum(
        &mut self,
        path: &str,
        algorithm: HashAlgorithm,
        range: Option<Range<u64>>,
    ) -> Result<Option<String>> {
        if let Some(r) = &range {
            if r.start >= r.end {
                return Ok(Some(crate::checksum::Hasher::new(algorithm).finish_hex()));
            }
        }
        let use_hash =
            self.features.hash.contains(&algorithm) && (range.is_none() || self.features.rang);
        if use_hash && self.select_hash(path, algorithm).await? {
            if let Some(r) = &range {
                let cmd = format!("RANG {} {}", r.start, r.end - 1);
                self.timed(path, async |ftp| {
                    ftp.custom_command(cmd, &[Status::RequestFilePending]).await
                })
                .await?;
            }
            let cmd = format!("HASH {path}");
            let reply = self
                .timed(path, async |ftp| {
                    ftp.custom_command(cmd, &[Status::File]).await
                })
                .await;
            return match reply {
                // 213 SHA-256 0-49 <hex> <name>
                Ok(r) => Ok(reply_text(&r.body)
                    .split_whitespace()
                    .nth(2)
                    .and_then(|h| normalize_hex(h, algorithm))),
                Err(ClientError::Remote { .. }) => Ok(None),
                Err(e) => Err(e),
            };
        }
        if self.features.legacy_hash.contains(&algorithm) && !path.contains(' ') {
            let cmd = match &range {
                Some(r) => format!(
                    "{} {path} {} {}",
                    algorithm.ftp_legacy_command(),
                    r.start,
                    r.end
                ),
                None => format!("{} {path}", algorithm.ftp_legacy_command()),
            };
            let reply = self
                .timed(path, async |ftp| {
                    ftp.custom_command(cmd, &[Status::RequestedFileActionOk])
                        .await
                })
                .await;
            return match reply {
                Ok(r) => Ok(reply_text(&r.body)
                    .split_whitespace()
                    .next()
                    .and_then(|h| normalize_hex(h, algorithm))),
                Err(ClientError::Remote { .. }) => Ok(None),
                Err(e) => Err(e),
            };
        }
        Ok(None)
    }

    async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ftp.quit()).await;
    }
}

impl Features {
    fn parse(feat: &suppaftp::types::Features) -> Features {
        let get = |name: &str| {
            feat.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone().unwrap_or_default())
        };
        let mut out = Features {
            mlst: get("MLST").is_some(),
            rang: get("RANG").is_some(),
            mfmt: get("MFMT").is_some(),
            mdtm: get("MDTM").is_some(),
            ..Features::default()
        };
        if let Some(list) = get("HASH") {
            for item in list.split(';').filter(|s| !s.is_empty()) {
                let selected = item.ends_with('*');
                if let Some(a) = HashAlgorithm::parse(item.trim_end_matches('*')) {
                    out.hash.push(a);
                    if selected {
                        out.hash_selected = Some(a);
                    }
                }
            }
        }
        for a in HashAlgorithm::ALL {
            if get(a.ftp_legacy_command()).is_some() {
                out.legacy_hash.push(a);
            }
        }
        out.hash.sort();
        out
    }
}

/// The user and password for a login: from the URL or `FERRY_PASSWORD`, else `~/.netrc`, else a prompt; no user
/// at all means anonymous.
async fn credentials(endpoint: &Endpoint) -> (String, String) {
    let url = &endpoint.url;
    let known = endpoint.password().await;
    let netrc = crate::netrc::Netrc::load();
    let entry = netrc.find(&url.host, url.user.as_deref());
    let user = url
        .user
        .clone()
        .or_else(|| entry.and_then(|e| e.login.clone()))
        .unwrap_or_else(|| "anonymous".to_owned());
    let password = known
        .or_else(|| entry.and_then(|e| e.password.clone()))
        .or_else(|| {
            (user != "anonymous" && user != "ftp")
                .then(|| endpoint.prompt_password(&format!("{user}@{}", url.host)))
                .flatten()
        })
        .unwrap_or_else(|| {
            if user == "anonymous" || user == "ftp" {
                "anonymous@".to_owned()
            } else {
                String::new()
            }
        });
    (user, password)
}

fn effective_timeout(t: Duration) -> Duration {
    if t.is_zero() {
        Duration::from_secs(30)
    } else {
        t
    }
}

/// Which end of a copy is the data connection: its errors and stalls are a lost connection (worth a retry),
/// the other end's are local errors (a full disk, a closed output pipe), which a retry does not mend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Network {
    Reader,
    Writer,
}

/// Copies until EOF (or `len` bytes); each read and each write is limited by `timeout`, so that a stalled peer
/// ends the transfer in either direction.
async fn copy_with_timeout<R, W>(
    reader: &mut R,
    writer: &mut W,
    network: Network,
    len: Option<u64>,
    timeout: Duration,
    path: &str,
) -> Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let fail = |side: Network, e: io::Error| {
        if side == network {
            ClientError::lost(path, e)
        } else {
            ClientError::local(path, e)
        }
    };
    let stalled = |_| ClientError::lost(path, "transfer stalled");
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    let mut remaining = len.unwrap_or(u64::MAX);
    while remaining > 0 {
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = tokio::time::timeout(timeout, reader.read(&mut buf[..want]))
            .await
            .map_err(stalled)?
            .map_err(|e| fail(Network::Reader, e))?;
        if n == 0 {
            break;
        }
        tokio::time::timeout(timeout, writer.write_all(&buf[..n]))
            .await
            .map_err(stalled)?
            .map_err(|e| fail(Network::Writer, e))?;
        total += n as u64;
        remaining -= n as u64;
    }
    tokio::time::timeout(timeout, writer.flush())
        .await
        .map_err(stalled)?
        .map_err(|e| fail(Network::Writer, e))?;
    Ok(total)
}

fn map_error(path: &str, e: FtpError) -> ClientError {
    match e {
        FtpError::UnexpectedResponse(r) => {
            let text = reply_text(&r.body);
            match reply_code(&r.body) {
                Some(530) => ClientError::Auth {
                    target: path.to_owned(),
                    reason: text,
                },
                // Transient negative replies (421 closing, 425/426 data connection trouble, 450 busy, 451 local
                // error) are worth another try; 452 (no storage left) is not, within a retry's seconds.
                Some(452) => ClientError::remote(path, text),
                Some(400..500) => ClientError::lost(path, text),
                _ => ClientError::remote(path, text),
            }
        }
        other => ClientError::lost(path, describe_ftp_error(&other)),
    }
}

/// A failure to connect or secure the connection: permanent when the certificate was refused or the server
/// answered with a permanent (5xx) reply, such as a refused `AUTH TLS`; else worth another try.
fn connect_error(target: &str, e: FtpError) -> ClientError {
    let permanent = match &e {
        FtpError::UnexpectedResponse(r) => reply_code(&r.body).is_some_and(|c| c >= 500),
        // suppaftp keeps only the text of rustls's error; rustls names certificate failures as such
        // ("invalid peer certificate: ...", and ours: "certificate fingerprint ... does not match").
        FtpError::SecureError(text) => text.contains("certificate"),
        _ => false,
    };
    let reason = describe_ftp_error(&e);
    let target = target.to_owned();
    if permanent {
        ClientError::Refused { target, reason }
    } else {
        ClientError::Connect { target, reason }
    }
}

fn describe_ftp_error(e: &FtpError) -> String {
    match e {
        FtpError::UnexpectedResponse(r) => reply_text(&r.body),
        FtpError::ConnectionError(io) => io.to_string(),
        FtpError::SecureError(e) => format!("TLS: {e}"),
        other => other.to_string(),
    }
}

fn reply_code(body: &[u8]) -> Option<u32> {
    std::str::from_utf8(body.get(..3)?).ok()?.parse().ok()
}

/// The reply without its code, last line only for multi-line replies.
fn reply_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let last = text
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    last.get(4..).unwrap_or(&last).trim().to_owned()
}

fn dir_entry(path: &str) -> Entry {
    Entry {
        name: file_name(path).to_owned(),
        kind: EntryKind::Dir,
        size: 0,
        mtime: None,
        mtime_precision: Duration::from_secs(1),
        mode: None,
    }
}

/// Parses an `MLSD` line or the facts line of `MLST`: `type=file;size=12;modify=20240102030405; name`.
pub fn parse_mlsx(line: &str) -> Option<Entry> {
    let (facts, name) = line.split_once(' ')?;
    let mut entry = Entry {
        name: name.to_owned(),
        kind: EntryKind::Other,
        size: 0,
        mtime: None,
        mtime_precision: Duration::from_secs(1),
        mode: None,
    };
    for fact in facts.split(';').filter(|f| !f.is_empty()) {
        let Some((key, value)) = fact.split_once('=') else {
            continue;
        };
        match key.to_ascii_lowercase().as_str() {
            "type" => {
                entry.kind = match value.to_ascii_lowercase().as_str() {
                    "file" => EntryKind::File,
                    "dir" | "cdir" | "pdir" => EntryKind::Dir,
                    v if v.contains("slink") => EntryKind::Symlink,
                    _ => EntryKind::Other,
                };
                if matches!(value.to_ascii_lowercase().as_str(), "cdir" | "pdir") {
                    entry.name = ".".to_owned();
                }
            }
            "size" => entry.size = value.parse().unwrap_or(0),
            "modify" => entry.mtime = parse_mdtm(value),
            "unix.mode" => entry.mode = u32::from_str_radix(value, 8).ok(),
            _ => {}
        }
    }
    Some(entry)
}

/// Parses one `LIST` line (Unix `ls -l` or DOS format); `None` for `total` lines and junk.
pub fn parse_list_line(line: &str) -> Option<Entry> {
    use std::str::FromStr;
    if line.starts_with("total ") {
        return None;
    }
    let file = suppaftp::list::File::from_str(line).ok()?;
    let kind = if file.is_directory() {
        EntryKind::Dir
    } else if file.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::File
    };
    // `ls -l` shows HH:MM for recent files and only the year for older ones.
    let precision = match line.split_whitespace().nth(7) {
        Some(f) if f.contains(':') => Duration::from_secs(60),
        Some(_) => Duration::from_secs(86_400),
        None => Duration::from_secs(60),
    };
    Some(Entry {
        name: file.name().to_owned(),
        kind,
        size: file.size() as u64,
        mtime: Some(file.modified()),
        mtime_precision: precision,
        mode: None,
    })
}

/// `YYYYMMDDHHMMSS[.sss]` in UTC.
fn parse_mdtm(value: &str) -> Option<SystemTime> {
    let digits = value.get(..14)?;
    let format = time::macros::format_description!("[year][month][day][hour][minute][second]");
    let t = PrimitiveDateTime::parse(digits, &format).ok()?;
    Some(SystemTime::from(t.assume_utc()))
}

/// `YYYYMMDDHHMMSS` in UTC; `None` for a time outside the years 1 to 9999, which the format cannot hold.
fn format_mdtm(t: SystemTime) -> Option<String> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok()?,
        Err(before) => -i64::try_from(before.duration().as_secs()).ok()?,
    };
    let t = OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .filter(|t| t.year() >= 1)?;
    Some(format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails every write with `kind`.
    struct Failing(io::ErrorKind);

    impl AsyncWrite for Failing {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Err(self.0.into()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failing_local_end_is_a_local_error_and_a_failing_data_connection_is_a_lost_one() {
        let copy = |network| async move {
            let mut data: &[u8] = b"some bytes";
            let mut sink = Failing(io::ErrorKind::BrokenPipe);
            copy_with_timeout(
                &mut data,
                &mut sink,
                network,
                None,
                Duration::from_secs(5),
                "f",
            )
            .await
        };
        // A download whose output pipe was closed: no retry can mend that.
        let download = copy(Network::Reader).await;
        assert!(
            matches!(&download, Err(ClientError::Local { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe),
            "{download:?}"
        );
        assert!(!download.unwrap_err().is_transient());
        // An upload whose data connection broke: worth a retry.
        let upload = copy(Network::Writer).await;
        assert!(upload.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn a_stalled_write_ends_the_copy() {
        let (mut writer, _reader_kept_open) = tokio::io::duplex(16);
        let mut data: &[u8] = &[7u8; 1024];
        let copied = copy_with_timeout(
            &mut data,
            &mut writer,
            Network::Writer,
            None,
            Duration::from_millis(50),
            "f",
        )
        .await;
        assert!(
            matches!(&copied, Err(ClientError::ConnectionLost { reason, .. }) if reason == "transfer stalled"),
            "{copied:?}"
        );
    }

    #[test]
    fn mlsd_lines_parse() {
        let e = parse_mlsx("type=file;size=1234;modify=20240102030405;UNIX.mode=0644; a file.txt")
            .unwrap();
        assert_eq!(e.name, "a file.txt");
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.size, 1234);
        assert_eq!(e.mode, Some(0o644));
        assert_eq!(format_mdtm(e.mtime.unwrap()).unwrap(), "20240102030405");
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(format_mdtm(far), None);
        let d = parse_mlsx("type=dir;modify=20240102030405; sub").unwrap();
        assert!(d.is_dir());
        assert_eq!(parse_mlsx("type=cdir; /x").unwrap().name, ".");
    }

    #[test]
    fn unix_list_lines_parse_with_their_precision() {
        let e = parse_list_line("-rw-r--r--    1 1000     1000         4096 Mar 05 12:34 data.bin")
            .unwrap();
        assert_eq!(e.name, "data.bin");
        assert_eq!(e.size, 4096);
        assert_eq!(e.mtime_precision, Duration::from_secs(60));
        let d = parse_list_line("drwxr-xr-x    2 0        0            4096 Jan 01  2020 old dir")
            .unwrap();
        assert!(d.is_dir());
        assert_eq!(d.name, "old dir");
        assert_eq!(d.mtime_precision, Duration::from_secs(86_400));
        assert!(parse_list_line("total 8").is_none());
    }

    #[test]
    fn replies_are_split_into_code_and_text() {
        assert_eq!(reply_code(b"550 No such file\r\n"), Some(550));
        assert_eq!(reply_text(b"550 No such file\r\n"), "No such file");
        assert_eq!(
            reply_text(b"213-SHA-256\r\n213 SHA-256 0-9 abcd f\r\n"),
            "SHA-256 0-9 abcd f"
        );
    }
}
