//! One FTP control connection: the command loop, login, and the handler of every command. File operations all go
//! through the core [`Session`]; this module only speaks the protocol.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ferry_core::account::canonical_ip;
use ferry_core::checksum::HashAlgorithm;
use ferry_core::error::CoreError;
use ferry_core::events::Protocol;
use ferry_core::limits::ConnectionSlot;
use ferry_core::server::LoginError;
use ferry_core::session::{ClientInfo, Session};
use ferry_core::storage::{DirEntry, WriteMode};
use ferry_core::vpath::VirtualPath;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::command::{self, Command, Opts, ParseError, ProtLevel, Site, TransferType};
use crate::control::{Control, Line};
use crate::datachan::{self, DataSetup};
use crate::listing::{self, EntryRole, MLST_FACTS};
use crate::reaper::Alarm;
use crate::reply::{quote_path, Code, Reply};
use crate::server::Shared;
use crate::tls::MaybeTls;
use crate::transfer::{self, DataContext, Job, ListFormat, ListSource, TransferError};

/// What woke an idle session up.
enum Wake {
    TransferDone(Result<u64, TransferError>),
    Shutdown,
    Line(io::Result<Option<Line>>),
    Idle,
}

/// What the command loop does after a command.
enum Flow {
    Continue,
    Close,
}

/// A transfer running in its own task.
struct RunningTransfer {
    handle: JoinHandle<Result<u64, TransferError>>,
    cancel: Option<oneshot::Sender<()>>,
    progress: Arc<AtomicU64>,
    /// The data connection is up.
    connected: Arc<AtomicBool>,
    what: String,
    /// The 226 text on success.
    done_text: String,
}

/// State of one control connection.
/// What the client chose with `TYPE`, `EPSV ALL`, `OPTS HASH` and `OPTS MLST`; `REIN` restores the defaults.
struct ClientOptions {
    transfer_type: TransferType,
    epsv_all: bool,
    hash_algorithm: HashAlgorithm,
    /// Bit i set: MLST_FACTS[i] is shown.
    mlst_facts: u8,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            transfer_type: TransferType::Binary,
            epsv_all: false,
            hash_algorithm: HashAlgorithm::Sha256,
            mlst_facts: u8::MAX,
        }
    }
}

pub(crate) struct FtpSession {
    shared: Arc<Shared>,
    control: Control,
    peer: SocketAddr,
    local: SocketAddr,
    pending_user: Option<String>,
    session: Option<Session>,
    cwd: VirtualPath,
    options: ClientOptions,
    rest: u64,
    rename_from: Option<VirtualPath>,
    data: Option<DataSetup>,
    pbsz: bool,
    prot: ProtLevel,
    hash_range: Option<(u64, u64)>,
    failed_logins: u32,
    transfer: Option<RunningTransfer>,
    shutting_down: bool,
    _slot: ConnectionSlot,
}

impl FtpSession {
    pub(crate) fn new(
        shared: Arc<Shared>,
        stream: MaybeTls,
        peer: SocketAddr,
        local: SocketAddr,
        slot: ConnectionSlot,
    ) -> Self {
        let limits = shared.core.limits();
        let control = Control::new(stream, limits.max_line_len, limits.data_timeout);
        FtpSession {
            shared,
            control,
            peer,
            local,
            pending_user: None,
            session: None,
            cwd: VirtualPath::root(),
            options: ClientOptions::default(),
            rest: 0,
            rename_from: None,
            data: None,
            pbsz: false,
            prot: ProtLevel::Clear,
            hash_range: None,
            failed_logins: 0,
            transfer: None,
            shutting_down: false,
            _slot: slot,
        }
    }

    /// Runs the connection until the client quits, times out or the server shuts down. Takes the session boxed:
    /// by value, its state would be stored twice in the future of every idle session.
    pub(crate) async fn run(mut self: Box<Self>) {
        let connected = Instant::now();
        if Box::pin(self.send(Code::Ready, "ferry FTP server ready"))
            .await
            .is_err()
        {
            return;
        }
        // Idle and login timeouts and shutdown come from the server's reaper, not from a timer per session.
        let watch = self.shared.reaper.register();
        loop {
            if self.transfer.is_some() {
                watch.never_expire();
            } else {
                let limits = self.shared.core.limits();
                let mut idle_for = limits.idle_timeout;
                if self.session.is_none() {
                    idle_for =
                        idle_for.min(limits.login_timeout.saturating_sub(connected.elapsed()));
                }
                watch.expire_after(idle_for);
            }
            // Only waiting happens here; everything that runs is in the boxed handler, so that an idle session's
            // future holds nothing but these waits.
            let wake = tokio::select! {
                biased;
                outcome = wait_transfer(&mut self.transfer) => Wake::TransferDone(outcome),
                alarm = watch.alarm() => match alarm {
                    Alarm::Shutdown => Wake::Shutdown,
                    Alarm::Idle if watch.expired() => Wake::Idle,
                    // Raised just before activity moved the deadline.
                    Alarm::Idle => continue,
                },
                line = self.control.read_line() => Wake::Line(line),
            };
            match Box::pin(self.handle_wake(wake)).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) | Err(_) => break,
            }
        }
        Box::pin(self.close()).await;
    }

    async fn handle_wake(&mut self, wake: Wake) -> io::Result<Flow> {
        let flow = match wake {
            Wake::TransferDone(outcome) => self.transfer_finished(outcome).await?,
            Wake::Shutdown => {
                self.shutting_down = true;
                Flow::Continue
            }
            Wake::Line(Ok(Some(line))) => self.handle_line(line).await?,
            Wake::Line(Ok(None) | Err(_)) => Flow::Close,
            Wake::Idle => {
                tracing::info!(peer = %self.peer, "closing idle connection");
                self.send(
                    Code::ServiceUnavailable,
                    "Timeout: closing control connection",
                )
                .await?;
                Flow::Close
            }
        };
        if matches!(flow, Flow::Continue) && self.shutting_down && self.transfer.is_none() {
            self.send(Code::ServiceUnavailable, "Server shutting down")
                .await?;
            return Ok(Flow::Close);
        }
        Ok(flow)
    }

    async fn close(&mut self) {
        self.abort_transfer().await;
        self.control.shutdown().await;
    }

    async fn send(&mut self, code: Code, text: impl Into<String>) -> io::Result<()> {
        self.control.reply(&Reply::new(code, text)).await
    }

    async fn handle_line(&mut self, line: Line) -> io::Result<Flow> {
        let text = match line {
            Line::Text(text) => text,
            Line::TooLong => {
                tracing::warn!(peer = %self.peer, "command line too long");
                return self
                    .send(Code::SyntaxError, "Command line too long")
                    .await
                    .map(|()| Flow::Continue);
            }
            Line::InvalidUtf8 => {
                return self
                    .send(Code::ArgumentError, "Command is not valid UTF-8")
                    .await
                    .map(|()| Flow::Continue);
            }
        };
        let command = match command::parse(&text) {
            Ok(command) => command,
            Err(e) => {
                let code = match e {
                    ParseError::Unknown(_) => Code::SyntaxError,
                    ParseError::NotImplemented(_) => Code::NotImplemented,
                    ParseError::BadArgument(_) => Code::ArgumentError,
                    ParseError::ParameterNotImplemented(_) => Code::ParameterNotImplemented,
                    ParseError::NetworkProtocolNotSupported => Code::UnsupportedNetworkProtocol,
                };
                return self
                    .send(code, e.to_string())
                    .await
                    .map(|()| Flow::Continue);
            }
        };
        tracing::debug!(peer = %self.peer, verb = command.verb(), "command");
        if self.transfer.is_some() && !command.runs_during_transfer() {
            // The command waits for the transfer, and the connection is read meanwhile only to notice the client
            // leaving: one that never opens the data connection must not hold its session until the data timeout.
            // A transfer whose data connection is up runs to its end, as it would for a client that pipelined QUIT.
            let outcome = tokio::select! {
                outcome = wait_transfer(&mut self.transfer) => outcome,
                _ = self.control.closed() => {
                    let connected = self
                        .transfer
                        .as_ref()
                        .is_some_and(|t| t.connected.load(Ordering::Acquire));
                    if !connected {
                        return Ok(Flow::Close);
                    }
                    wait_transfer(&mut self.transfer).await
                }
            };
            if let Flow::Close = self.transfer_finished(outcome).await? {
                return Ok(Flow::Close);
            }
        }
        if self.session.is_none() && !command.allowed_before_login() {
            return self
                .send(Code::NotLoggedIn, "Please log in with USER and PASS")
                .await
                .map(|()| Flow::Continue);
        }
        // Boxed so that the (large) handler state is not part of the idle session's future.
        Box::pin(self.execute(command)).await
    }

    async fn execute(&mut self, command: Command) -> io::Result<Flow> {
        // RNTO must come right after RNFR (RFC 959): any other command forgets the RNFR.
        if !matches!(command, Command::Rnto(_)) {
            self.rename_from = None;
        }
        match command {
            Command::User(name) => self.user(name).await?,
            Command::Pass(password) => return self.pass(password).await,
            Command::Acct(_) if self.session.is_some() => {
                self.send(Code::NotNeeded, "ACCT not needed").await?
            }
            Command::Acct(_) => {
                self.send(Code::BadSequence, "Log in with USER and PASS first")
                    .await?
            }
            Command::Rein => {
                self.abort_transfer().await;
                self.reset_login();
                // Back to the defaults of a new connection, except for the control connection's TLS and its PBSZ/PROT.
                self.options = ClientOptions::default();
                self.send(Code::Ready, "Ready for a new user").await?;
            }
            Command::Quit => {
                if self.transfer.is_some() {
                    let outcome = wait_transfer(&mut self.transfer).await;
                    self.transfer_finished(outcome).await?;
                }
                self.send(Code::Closing, "Goodbye").await?;
                return Ok(Flow::Close);
            }
            Command::Cwd(path) => self.cwd(&path).await?,
            Command::Cdup => self.cwd("..").await?,
            Command::Pwd => {
                let text = format!("{} is the current directory", quote_path(self.cwd.as_str()));
                self.send(Code::PathCreated, text).await?;
            }
            Command::Mkd(path) => self.mkd(&path).await?,
            Command::Rmd(path) => {
                let r = self
                    .with_path(&path, |s, p| async move { s.rmdir(&p).await })
                    .await;
                self.done(r, Code::FileActionOk, "Directory removed")
                    .await?;
            }
            Command::Dele(path) => {
                let r = self
                    .with_file_path(&path, |s, p| async move { s.remove(&p).await })
                    .await;
                self.done(r, Code::FileActionOk, "File deleted").await?;
            }
            Command::Rnfr(path) => self.rnfr(&path).await?,
            Command::Rnto(path) => self.rnto(&path).await?,
            Command::Retr(path) => self.retr(&path).await?,
            Command::Stor(path) => self.store(&path, false).await?,
            Command::Appe(path) => self.store(&path, true).await?,
            Command::Stou => self.stou().await?,
            Command::Rest(offset) => {
                self.rest = offset;
                self.send(
                    Code::PendingFurtherInfo,
                    format!("Restarting at {offset}. Send STOR or RETR"),
                )
                .await?;
            }
            Command::Allo => self.send(Code::NotNeeded, "ALLO not needed").await?,
            Command::Abor => self.abor().await?,
            Command::List(path) => self.list(path.as_deref(), ListKind::Long).await?,
            Command::Nlst(path) => self.list(path.as_deref(), ListKind::Names).await?,
            Command::Mlsd(path) => self.list(path.as_deref(), ListKind::Facts).await?,
            Command::Mlst(path) => self.mlst(path.as_deref()).await?,
            Command::Stat(None) => self.stat().await?,
            Command::Stat(Some(path)) => self.stat_path(&path).await?,
            Command::Type(t) => {
                self.options.transfer_type = t;
                let name = if t == TransferType::Ascii {
                    "ASCII"
                } else {
                    "Binary"
                };
                self.send(Code::Ok, format!("Switching to {name} mode"))
                    .await?;
            }
            Command::Stru(_) => self.send(Code::Ok, "Structure set to F").await?,
            Command::Mode(_) => self.send(Code::Ok, "Mode set to S").await?,
            Command::Syst => self.send(Code::SystemType, "UNIX Type: L8").await?,
            Command::Noop => self.send(Code::Ok, "NOOP ok").await?,
            Command::Help => self.control.reply(&help()).await?,
            Command::Site(site) => self.site(site).await?,
            Command::Feat => {
                self.control
                    .reply(&features(
                        self.shared.acceptor.is_some(),
                        &self.facts(),
                        self.options.hash_algorithm,
                    ))
                    .await?
            }
            Command::Opts(opts) => self.opts(opts).await?,
            Command::Size(path) => self.size(&path).await?,
            Command::Mdtm(path) => self.mdtm(&path).await?,
            Command::Mfmt { time, path } => {
                // The reply gives the time stored, which the file system may have clamped to its range.
                let r = self
                    .with_path(&path, |s, p| async move {
                        s.set_modified(&p, time).await?;
                        let stored = s.metadata(&p).await?.modified;
                        Ok((p, stored))
                    })
                    .await;
                let text = r
                    .as_ref()
                    .map(|(p, stored)| format!("Modify={}; {}", listing::time_val(*stored), p))
                    .ok();
                self.done(r, Code::FileStatus, text.unwrap_or_default())
                    .await?;
            }
            Command::Pasv => self.pasv().await?,
            Command::Epsv { all: true, .. } => {
                self.options.epsv_all = true;
                self.send(Code::Ok, "EPSV ALL ok").await?;
            }
            Command::Epsv {
                all: false,
                protocol,
            } => self.epsv(protocol).await?,
            Command::Port(target) | Command::Eprt(target) => self.port(target).await?,
            Command::Auth(mechanism) => return self.auth(&mechanism).await,
            Command::Pbsz(_) if self.control.stream().is_tls() => {
                self.pbsz = true;
                self.send(Code::Ok, "PBSZ=0").await?;
            }
            Command::Pbsz(_) => {
                self.send(Code::BadSequence, "PBSZ needs a TLS connection (AUTH TLS)")
                    .await?
            }
            Command::Prot(level) => self.prot(level).await?,
            Command::Hash(path) => {
                let range = self.hash_range.take();
                let (start, len) = range.map_or((0, None), |r| (r.0, range_len(r)));
                self.hash(
                    &path,
                    self.options.hash_algorithm,
                    start,
                    len,
                    HashReply::Draft,
                )
                .await?
            }
            Command::Rang(range) => {
                self.hash_range = range;
                let text = match range {
                    Some((start, end)) => format!("Restarting at {start}. Ending byte {end}"),
                    None => "Range reset".to_owned(),
                };
                self.send(Code::PendingFurtherInfo, text).await?;
            }
            Command::LegacyHash {
                algorithm,
                path,
                range,
            } => {
                let (start, len) =
                    range.map_or((0, None), |(s, e)| (s, e.map(|e| e.saturating_sub(s))));
                self.hash(&path, algorithm, start, len, HashReply::Legacy)
                    .await?
            }
            Command::Avbl(path) => self.avbl(path.as_deref()).await?,
        }
        Ok(Flow::Continue)
    }

    fn core(&self) -> Result<&Session, Reply> {
        self.session
            .as_ref()
            .ok_or_else(|| Reply::new(Code::NotLoggedIn, "Not logged in"))
    }

    fn resolve(&self, input: &str) -> Result<VirtualPath, Reply> {
        VirtualPath::resolve(&self.cwd, input).map_err(|e| error_reply(&e))
    }

    /// [`Self::with_path`] for a path that is to name a file: one ending in a slash is refused rather than taken as
    /// a file's name (`STOR dir/` into a missing `dir` does not create a file `dir`, as open(2) refuses it for
    /// vsftpd).
    async fn with_file_path<T, F, Fut>(&self, input: &str, op: F) -> Result<T, Reply>
    where
        F: FnOnce(Session, VirtualPath) -> Fut,
        Fut: std::future::Future<Output = Result<T, CoreError>>,
    {
        if VirtualPath::names_dir(input) {
            return Err(error_reply(&CoreError::IsADirectory));
        }
        self.with_path(input, op).await
    }

    /// Resolves `input` and runs `op` on the session with it; errors become replies.
    async fn with_path<T, F, Fut>(&self, input: &str, op: F) -> Result<T, Reply>
    where
        F: FnOnce(Session, VirtualPath) -> Fut,
        Fut: std::future::Future<Output = Result<T, CoreError>>,
    {
        let session = self.core()?.clone();
        let path = self.resolve(input)?;
        op(session, path).await.map_err(|e| error_reply(&e))
    }

    /// Sends `code text` on success, the error reply otherwise.
    async fn done<T>(
        &mut self,
        result: Result<T, Reply>,
        code: Code,
        text: impl Into<String>,
    ) -> io::Result<()> {
        match result {
            Ok(_) => self.send(code, text).await,
            Err(reply) => self.control.reply(&reply).await,
        }
    }

    fn reset_login(&mut self) {
        self.session = None;
        self.pending_user = None;
        self.cwd = VirtualPath::root();
        self.rest = 0;
        self.rename_from = None;
        self.data = None;
        self.hash_range = None;
    }

    async fn user(&mut self, name: String) -> io::Result<()> {
        self.reset_login();
        let anonymous = self.shared.core.authenticator().is_anonymous(&name);
        if self.shared.config.require_tls && !self.control.stream().is_tls() && !anonymous {
            return self
                .send(
                    Code::NotLoggedIn,
                    "TLS required: use AUTH TLS before logging in",
                )
                .await;
        }
        self.pending_user = Some(name);
        if anonymous {
            self.send(
                Code::NeedPassword,
                "Guest login ok, send your e-mail address as password",
            )
            .await
        } else {
            self.send(Code::NeedPassword, "Password required").await
        }
    }

    async fn pass(&mut self, password: String) -> io::Result<Flow> {
        let Some(user) = self.pending_user.take() else {
            self.send(Code::BadSequence, "Log in with USER first")
                .await?;
            return Ok(Flow::Continue);
        };
        let protocol = if self.control.stream().is_tls() {
            Protocol::Ftps
        } else {
            Protocol::Ftp
        };
        let client = ClientInfo::new(protocol, canonical_ip(self.peer.ip()));
        match self.shared.core.login(&user, &password, &client).await {
            Ok(session) => {
                // The login event is logged (by the event log of `ferry serve`); a second line would repeat it.
                tracing::debug!(peer = %self.peer, "logged in");
                self.session = Some(session);
                self.cwd = VirtualPath::root();
                self.failed_logins = 0;
                self.send(Code::LoggedIn, "Login successful").await?;
                Ok(Flow::Continue)
            }
            Err(LoginError::Limit(e)) => {
                tracing::info!(peer = %self.peer, user = ?user, error = %e, "login refused");
                self.send(Code::NotLoggedIn, format!("Login refused: {e}"))
                    .await?;
                Ok(Flow::Continue)
            }
            Err(LoginError::Home(e)) => {
                tracing::error!(peer = %self.peer, user = ?user, error = %e, "cannot open home directory");
                self.send(Code::NotLoggedIn, "Cannot open home directory")
                    .await?;
                Ok(Flow::Continue)
            }
            Err(LoginError::Auth(e)) => {
                self.failed_logins += 1;
                tracing::warn!(peer = %self.peer, user = ?user, error = %e, failures = self.failed_logins, "login failed");
                tokio::time::sleep(self.shared.core.limits().failed_login_delay).await;
                self.send(Code::NotLoggedIn, "Login incorrect").await?;
                if self
                    .shared
                    .core
                    .limits()
                    .too_many_login_failures(self.failed_logins)
                {
                    self.send(
                        Code::ServiceUnavailable,
                        "Too many failed logins, closing connection",
                    )
                    .await?;
                    return Ok(Flow::Close);
                }
                Ok(Flow::Continue)
            }
        }
    }

    async fn auth(&mut self, mechanism: &str) -> io::Result<Flow> {
        let Some(acceptor) = self.shared.acceptor.clone() else {
            self.send(Code::NotImplemented, "TLS is not configured")
                .await?;
            return Ok(Flow::Continue);
        };
        if !matches!(mechanism, "TLS" | "TLS-C" | "SSL") {
            self.send(Code::ParameterNotImplemented, "Only AUTH TLS is supported")
                .await?;
            return Ok(Flow::Continue);
        }
        if self.control.stream().is_tls() {
            self.send(Code::BadSequence, "TLS is already active")
                .await?;
            return Ok(Flow::Continue);
        }
        self.send(Code::AuthOk, "Proceed with TLS negotiation")
            .await?;
        let wait = self.shared.core.limits().login_timeout;
        if let Err(e) = self.control.upgrade(&acceptor, wait).await {
            tracing::info!(peer = %self.peer, error = %e, "TLS handshake failed");
            return Ok(Flow::Close);
        }
        self.pbsz = false;
        self.prot = ProtLevel::Clear;
        Ok(Flow::Continue)
    }

    async fn prot(&mut self, level: ProtLevel) -> io::Result<()> {
        if !self.pbsz {
            return self
                .send(Code::BadSequence, "PBSZ must come before PROT")
                .await;
        }
        if level == ProtLevel::Clear && self.shared.config.require_tls {
            return self
                .send(
                    Code::PolicyDenied,
                    "Data connections must be protected (PROT P)",
                )
                .await;
        }
        self.prot = level;
        let name = if level == ProtLevel::Private {
            "Private"
        } else {
            "Clear"
        };
        self.send(Code::Ok, format!("Protection level set to {name}"))
            .await
    }

    async fn cwd(&mut self, input: &str) -> io::Result<()> {
        let result = self
            .with_path(input, |s, p| async move {
                match s.metadata(&p).await {
                    Ok(m) if m.is_dir() => Ok(p),
                    Ok(_) => Err(CoreError::NotADirectory),
                    Err(e) => Err(e),
                }
            })
            .await;
        match result {
            Ok(path) => {
                let text = format!("Directory changed to {}", quote_path(path.as_str()));
                self.cwd = path;
                self.send(Code::FileActionOk, text).await
            }
            Err(reply) => self.control.reply(&reply).await,
        }
    }

    async fn mkd(&mut self, input: &str) -> io::Result<()> {
        let result = self
            .with_path(input, |s, p| async move { s.mkdir(&p).await.map(|()| p) })
            .await;
        let text = result
            .as_ref()
            .map(|p| format!("{} created", quote_path(p.as_str())))
            .unwrap_or_default();
        self.done(result, Code::PathCreated, text).await
    }

    async fn rnfr(&mut self, input: &str) -> io::Result<()> {
        let result = self
            .with_path(input, |s, p| async move {
                s.symlink_metadata(&p).await.map(|_| p)
            })
            .await;
        match result {
            Ok(path) => {
                self.rename_from = Some(path);
                self.send(Code::PendingFurtherInfo, "Ready for RNTO").await
            }
            Err(reply) => self.control.reply(&reply).await,
        }
    }

    async fn rnto(&mut self, input: &str) -> io::Result<()> {
        let Some(from) = self.rename_from.take() else {
            return self.send(Code::BadSequence, "RNFR required first").await;
        };
        let result = self
            .with_path(input, |s, to| async move { s.rename(&from, &to).await })
            .await;
        self.done(result, Code::FileActionOk, "Rename successful")
            .await
    }

    async fn size(&mut self, input: &str) -> io::Result<()> {
        let result = self
            .with_path(input, |s, p| async move { s.metadata(&p).await })
            .await;
        match result {
            Ok(meta) if meta.is_file() => self.send(Code::FileStatus, meta.size.to_string()).await,
            Ok(_) => self.send(Code::FileUnavailable, "Not a regular file").await,
            Err(reply) => self.control.reply(&reply).await,
        }
    }

    async fn mdtm(&mut self, input: &str) -> io::Result<()> {
        let result = self
            .with_path(input, |s, p| async move { s.metadata(&p).await })
            .await;
        match result {
            Ok(meta) => {
                self.send(Code::FileStatus, listing::time_val(meta.modified))
                    .await
            }
            Err(reply) => self.control.reply(&reply).await,
        }
    }

    async fn site(&mut self, site: Site) -> io::Result<()> {
        match site {
            Site::Help => {
                let lines = vec!["SITE commands:".into(), "CHMOD HELP".into(), "End".into()];
                self.control.reply(&Reply::multi(Code::Help, lines)).await
            }
            Site::Chmod { mode, path } => {
                let result = self
                    .with_path(&path, |s, p| async move { s.set_mode(&p, mode).await })
                    .await;
                self.done(result, Code::Ok, "SITE CHMOD command ok").await
            }
            Site::Other(name) => {
                self.send(Code::SyntaxError, format!("Unknown SITE command {name}"))
                    .await
            }
        }
    }

    async fn opts(&mut self, opts: Opts) -> io::Result<()> {
        match opts {
            Opts::Utf8(_) => self.send(Code::Ok, "Always in UTF8 mode").await,
            Opts::Mlst(facts) => {
                self.options.mlst_facts = MLST_FACTS
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| facts.iter().any(|g| g == *f))
                    .fold(0, |mask, (i, _)| mask | 1 << i);
                let shown: String = self
                    .facts()
                    .iter()
                    .map(|f| format!("{}; ", fact_label(f)).replace(' ', ""))
                    .collect();
                self.send(Code::Ok, format!("MLST OPTS {shown}")).await
            }
            Opts::Hash(Some(algorithm)) => {
                self.options.hash_algorithm = algorithm;
                self.send(Code::Ok, algorithm.name()).await
            }
            Opts::Hash(None) => {
                self.send(Code::Ok, self.options.hash_algorithm.name())
                    .await
            }
            Opts::Other(name) => {
                self.send(Code::ArgumentError, format!("Option {name} not understood"))
                    .await
            }
        }
    }

    fn facts(&self) -> Vec<String> {
        MLST_FACTS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.options.mlst_facts & (1 << i) != 0)
            .map(|(_, f)| f.to_string())
            .collect()
    }

    async fn avbl(&mut self, input: Option<&str>) -> io::Result<()> {
        let result = self
            .with_path(input.unwrap_or("."), |s, p| async move {
                s.metadata(&p).await?;
                s.available_space().await
            })
            .await;
        match result {
            Ok(Some(bytes)) => self.send(Code::FileStatus, bytes.to_string()).await,
            Ok(None) => {
                self.send(Code::FileUnavailable, "Available space unknown")
                    .await
            }
            Err(reply) => self.control.reply(&reply).await,
        }
    }

    async fn hash(
        &mut self,
        input: &str,
        algorithm: HashAlgorithm,
        start: u64,
        len: Option<u64>,
        style: HashReply,
    ) -> io::Result<()> {
        let result = self
            .with_path(input, |s, p| async move {
                s.checksum(&p, algorithm, start, len).await
            })
            .await;
        match (result, style) {
            (Ok((hex, start, end)), HashReply::Draft) => {
                let last = end.saturating_sub(1).max(start);
                self.send(
                    Code::FileStatus,
                    format!("{} {start}-{last} {hex} {input}", algorithm.name()),
                )
                .await
            }
            (Ok((hex, _, _)), HashReply::Legacy) => self.send(Code::FileActionOk, hex).await,
            (Err(reply), _) => self.control.reply(&reply).await,
        }
    }

    // ---- data connections ----

    fn control_ip(&self) -> IpAddr {
        canonical_ip(self.local.ip())
    }

    async fn pasv(&mut self) -> io::Result<()> {
        if self.options.epsv_all {
            return self
                .send(Code::BadSequence, "Only EPSV is allowed after EPSV ALL")
                .await;
        }
        let advertised = self
            .shared
            .config
            .passive_host
            .unwrap_or_else(|| self.control_ip());
        let IpAddr::V4(v4) = advertised else {
            return self
                .send(Code::SyntaxError, "PASV needs IPv4; use EPSV")
                .await;
        };
        let Some(port) = self.listen_passive().await? else {
            return Ok(());
        };
        let [a, b, c, d] = v4.octets();
        let text = format!(
            "Entering Passive Mode ({a},{b},{c},{d},{},{})",
            port >> 8,
            port & 0xff
        );
        self.send(Code::EnteringPassive, text).await
    }

    async fn epsv(&mut self, protocol: Option<u8>) -> io::Result<()> {
        let family = if self.control_ip().is_ipv4() { 1 } else { 2 };
        if protocol.is_some_and(|p| p != family) {
            return self
                .send(
                    Code::UnsupportedNetworkProtocol,
                    format!("Network protocol not supported, use ({family})"),
                )
                .await;
        }
        let Some(port) = self.listen_passive().await? else {
            return Ok(());
        };
        self.send(
            Code::EnteringExtendedPassive,
            format!("Entering Extended Passive Mode (|||{port}|)"),
        )
        .await
    }

    async fn port(&mut self, target: SocketAddr) -> io::Result<()> {
        if self.options.epsv_all {
            return self
                .send(Code::BadSequence, "Only EPSV is allowed after EPSV ALL")
                .await;
        }
        if !datachan::active_target_allowed(target, self.peer.ip()) {
            tracing::warn!(peer = %self.peer, %target, "refused PORT/EPRT to another address (FTP bounce)");
            return self
                .send(
                    Code::SyntaxError,
                    "Illegal PORT command: only your own address is allowed",
                )
                .await;
        }
        self.data = Some(DataSetup::Active {
            target,
            local_ip: self.local.ip(),
        });
        self.send(Code::Ok, "PORT command successful").await
    }

    /// Opens the passive listener of the next transfer and returns its port, or replies why it cannot (`None`).
    async fn listen_passive(&mut self) -> io::Result<Option<u16>> {
        match self.shared.config.passive_ports.bind(self.local.ip()) {
            Ok((listener, port)) => {
                self.data = Some(DataSetup::Passive(listener));
                Ok(Some(port))
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "cannot open a passive data port");
                self.send(Code::CantOpenData, "Cannot open a data port")
                    .await?;
                Ok(None)
            }
        }
    }

    /// Takes the restart marker (REST) and range (RANG) for the data transfer command being handled: they apply to
    /// that command only, whether it starts a transfer or fails before (no data connection, a refused path).
    fn take_restart(&mut self) -> (u64, Option<(u64, u64)>) {
        (std::mem::take(&mut self.rest), self.hash_range.take())
    }

    /// Takes the data connection setup for a transfer, or replies why there is none.
    async fn take_data_setup(&mut self) -> io::Result<Option<DataSetup>> {
        if self.shared.config.require_tls && self.prot != ProtLevel::Private {
            self.send(
                Code::DataProtectionRequired,
                "Data connections must be protected: use PBSZ 0 and PROT P",
            )
            .await?;
            return Ok(None);
        }
        match self.data.take() {
            Some(setup) => Ok(Some(setup)),
            None => {
                self.send(Code::CantOpenData, "Use PORT, EPRT, PASV or EPSV first")
                    .await?;
                Ok(None)
            }
        }
    }

    async fn start_transfer(
        &mut self,
        setup: DataSetup,
        job: Job,
        opening: String,
        what: String,
        done_text: String,
    ) -> io::Result<()> {
        self.send(Code::FileStatusOk, opening).await?;
        let acceptor = if self.prot == ProtLevel::Private {
            self.shared.data_acceptor.clone()
        } else {
            None
        };
        let data = DataContext {
            setup,
            client_ip: self.peer.ip(),
            timeout: self.shared.core.limits().data_timeout,
            tls: acceptor,
            require_tls_resumption: self.shared.config.require_tls_resumption,
            connected: Arc::default(),
        };
        let connected = Arc::clone(&data.connected);
        let (cancel, cancelled) = oneshot::channel();
        let progress = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn(transfer::run(job, data, Arc::clone(&progress), cancelled));
        self.transfer = Some(RunningTransfer {
            handle,
            cancel: Some(cancel),
            progress,
            connected,
            what,
            done_text,
        });
        Ok(())
    }

    async fn transfer_finished(&mut self, outcome: Result<u64, TransferError>) -> io::Result<Flow> {
        let done_text = self
            .transfer
            .take()
            .map(|t| t.done_text)
            .unwrap_or_default();
        let reply = match outcome {
            Ok(_) => Reply::new(Code::ClosingData, done_text),
            Err(e) => transfer_error_reply(&e),
        };
        self.control.reply(&reply).await?;
        Ok(Flow::Continue)
    }

    async fn abor(&mut self) -> io::Result<()> {
        let Some(mut running) = self.transfer.take() else {
            self.data = None;
            return self
                .send(Code::DataOpenNoTransfer, "No transfer to abort")
                .await;
        };
        if let Some(cancel) = running.cancel.take() {
            let _ = cancel.send(());
        }
        let outcome = (&mut running.handle)
            .await
            .unwrap_or(Err(TransferError::Aborted));
        match outcome {
            Ok(_) => self.send(Code::ClosingData, running.done_text).await?,
            Err(TransferError::Aborted) => {
                self.send(Code::TransferAborted, "Transfer aborted").await?
            }
            Err(e) => self.control.reply(&transfer_error_reply(&e)).await?,
        }
        self.send(Code::ClosingData, "ABOR successful").await
    }

    /// Cancels a running transfer and waits for it to clean up (connection closed, session ending).
    async fn abort_transfer(&mut self) {
        if let Some(mut running) = self.transfer.take() {
            if let Some(cancel) = running.cancel.take() {
                let _ = cancel.send(());
            }
            let _ = running.handle.await;
        }
    }

    async fn stat(&mut self) -> io::Result<()> {
        if let Some(t) = &self.transfer {
            let text = format!(
                "Status: {} bytes transferred of {}",
                t.progress.load(Ordering::Relaxed),
                t.what
            );
            return self.send(Code::FileStatus, text).await;
        }
        let user = self
            .session
            .as_ref()
            .map_or("(not logged in)".to_owned(), |s| s.username().to_owned());
        let lines = vec![
            "ferry FTP server status:".to_owned(),
            format!("Connected to {}", self.peer.ip()),
            format!("Logged in as {user}"),
            format!(
                "TYPE: {}",
                if self.options.transfer_type == TransferType::Ascii {
                    "ASCII"
                } else {
                    "BINARY"
                }
            ),
            format!(
                "Control connection: {}",
                if self.control.stream().is_tls() {
                    "TLS"
                } else {
                    "plain"
                }
            ),
            format!(
                "Data protection: {}",
                if self.prot == ProtLevel::Private {
                    "private"
                } else {
                    "clear"
                }
            ),
            "End of status".to_owned(),
        ];
        self.control
            .reply(&Reply::multi(Code::SystemStatus, lines))
            .await
    }

    /// `STAT path`: the listing on the control connection, streamed.
    async fn stat_path(&mut self, input: &str) -> io::Result<()> {
        let result = self.listing_source(input).await;
        let (_, source) = match result {
            Ok(found) => found,
            Err(reply) => return self.control.reply(&reply).await,
        };
        self.control
            .write_raw(format!("213-Status of {input}:\r\n").as_bytes())
            .await?;
        let now = std::time::SystemTime::now();
        let write_entry = |entry: &DirEntry| {
            let line = listing::list_line(
                &entry.name,
                &entry.metadata,
                entry.link_target.as_deref(),
                now,
            );
            format!(" {}\r\n", line.replace(['\r', '\n'], " "))
        };
        match source {
            ListSource::Entry(entry) => {
                self.control
                    .write_raw(write_entry(&entry).as_bytes())
                    .await?
            }
            ListSource::Dir(mut entries) => {
                while let Some(entry) = entries.next().await {
                    match entry {
                        Ok(entry)
                            if listing::listable(&entry.name, entry.link_target.as_deref()) =>
                        {
                            self.control
                                .write_raw(write_entry(&entry).as_bytes())
                                .await?
                        }
                        _ => {}
                    }
                }
            }
        }
        self.send(Code::FileStatus, "End of status").await
    }

    /// Resolves a listing target: a directory's entries, or one file's entry.
    async fn listing_source(&self, input: &str) -> Result<(VirtualPath, ListSource), Reply> {
        self.with_path(input, |s, p| async move {
            let meta = s.metadata(&p).await?;
            if meta.is_dir() {
                let entries = s.list(&p).await?;
                Ok((p, ListSource::Dir(entries)))
            } else {
                let name = p.file_name().unwrap_or("").to_owned();
                Ok((
                    p,
                    ListSource::Entry(DirEntry {
                        name,
                        metadata: meta,
                        link_target: None,
                    }),
                ))
            }
        })
        .await
    }

    async fn list(&mut self, input: Option<&str>, kind: ListKind) -> io::Result<()> {
        self.take_restart();
        let Some(setup) = self.take_data_setup().await? else {
            return Ok(());
        };
        let target = input.unwrap_or(".");
        let (path, source) = match self.listing_source(target).await {
            Ok(found) => found,
            Err(reply) => return self.control.reply(&reply).await,
        };
        let format = match kind {
            ListKind::Long => ListFormat::Long,
            ListKind::Names => {
                // Names as the client can use them: under the directory it named, or the file's path as given.
                let prefix = match (&source, input) {
                    (ListSource::Dir(_), Some(arg)) if arg != "." => {
                        format!("{}/", arg.trim_end_matches('/'))
                    }
                    (ListSource::Entry(_), Some(arg)) => arg
                        .rsplit_once('/')
                        .map_or(String::new(), |(dir, _)| format!("{dir}/")),
                    _ => String::new(),
                };
                ListFormat::Names { prefix }
            }
            ListKind::Facts => {
                if matches!(source, ListSource::Entry(_)) {
                    return self
                        .send(
                            Code::ArgumentError,
                            "MLSD needs a directory; use MLST for a file",
                        )
                        .await;
                }
                let session = self
                    .core()
                    .map_err(|_| io::Error::other("not logged in"))?
                    .clone();
                let facts = self.facts();
                let header = dir_fact_lines(&session, &path, &facts).await;
                ListFormat::Facts {
                    facts,
                    dir: path.clone(),
                    session,
                    header,
                }
            }
        };
        let opening = format!(
            "Opening {} mode data connection for file list",
            if self.prot == ProtLevel::Private {
                "TLS"
            } else {
                "ASCII"
            }
        );
        self.start_transfer(
            setup,
            Job::Listing { source, format },
            opening,
            format!("listing of {path}"),
            "Directory send OK".into(),
        )
        .await
    }

    async fn mlst(&mut self, input: Option<&str>) -> io::Result<()> {
        let facts = self.facts();
        let target = input.unwrap_or(".");
        let result = self
            .with_path(target, |s, p| async move {
                let meta = s.metadata(&p).await?;
                let perms = s.account().permissions_at(&p);
                Ok((p, meta, perms))
            })
            .await;
        match result {
            Ok((path, meta, perms)) => {
                let line =
                    listing::mlst_line(path.as_str(), &meta, perms, EntryRole::Plain, &facts);
                let lines = vec![format!("Listing {target}"), line, "End".to_owned()];
                self.control
                    .reply(&Reply::multi(Code::FileActionOk, lines))
                    .await
            }
            Err(reply) => self.control.reply(&reply).await,
        }
    }

    async fn retr(&mut self, input: &str) -> io::Result<()> {
        let (rest, range) = self.take_restart();
        let Some(setup) = self.take_data_setup().await? else {
            return Ok(());
        };
        let (offset, limit) = range.map_or((rest, None), |r| (r.0, range_len(r)));
        let result = self
            .with_path(input, |s, p| async move { s.open_read(&p, offset).await })
            .await;
        let download = match result {
            Ok(download) => download,
            Err(reply) => return self.control.reply(&restart_reply(reply, offset)).await,
        };
        let ascii = self.options.transfer_type == TransferType::Ascii;
        let opening = format!(
            "Opening {} mode data connection for {} ({} bytes)",
            if ascii { "ASCII" } else { "BINARY" },
            download.path(),
            download.size()
        );
        let what = format!("RETR {}", download.path());
        self.start_transfer(
            setup,
            Job::Download {
                download,
                ascii,
                limit,
            },
            opening,
            what,
            "Transfer complete".into(),
        )
        .await
    }

    /// STOR (or APPE with `append`): `REST n` writes from n on, dropping the old data after it; a `RANG` range
    /// writes from its start, keeping the rest of the file.
    async fn store(&mut self, input: &str, append: bool) -> io::Result<()> {
        let (offset, range) = self.take_restart();
        let Some(setup) = self.take_data_setup().await? else {
            return Ok(());
        };
        let mode = match (range, offset, append) {
            (Some((start, _)), _, _) => WriteMode::At {
                offset: start,
                truncate: false,
            },
            (None, 0, false) => WriteMode::Truncate,
            (None, 0, true) => WriteMode::Append,
            (None, offset, _) => WriteMode::At {
                offset,
                truncate: true,
            },
        };
        let result = self
            .with_file_path(input, |s, p| async move { s.open_write(&p, mode).await })
            .await;
        let upload = match result {
            Ok(upload) => upload,
            Err(reply) => return self.control.reply(&restart_reply(reply, offset)).await,
        };
        let path = upload.path().map(ToString::to_string).unwrap_or_default();
        let ascii = self.options.transfer_type == TransferType::Ascii;
        let opening = format!("Ok to send data for {path}");
        self.start_transfer(
            setup,
            Job::Upload { upload, ascii },
            opening,
            format!("STOR {path}"),
            "Transfer complete".into(),
        )
        .await
    }

    async fn stou(&mut self) -> io::Result<()> {
        self.take_restart();
        let Some(setup) = self.take_data_setup().await? else {
            return Ok(());
        };
        let cwd = self.cwd.clone();
        let stem = format!("ferry.{}", rand::random::<u32>());
        let result = match self.core() {
            Ok(s) => s
                .create_unique(&cwd, &stem)
                .await
                .map_err(|e| error_reply(&e)),
            Err(reply) => Err(reply),
        };
        let upload = match result {
            Ok(upload) => upload,
            Err(reply) => return self.control.reply(&reply).await,
        };
        let name = upload
            .path()
            .and_then(|p| p.file_name())
            .unwrap_or_default()
            .to_owned();
        let ascii = self.options.transfer_type == TransferType::Ascii;
        let job = Job::Upload { upload, ascii };
        self.start_transfer(
            setup,
            job,
            format!("FILE: {name}"),
            format!("STOU {name}"),
            format!("Transfer complete (unique file name: {name})"),
        )
        .await
    }
}

/// The `type=cdir` line of an MLSD listing and, below the root, the `type=pdir` line.
async fn dir_fact_lines(session: &Session, dir: &VirtualPath, facts: &[String]) -> String {
    let mut lines = String::new();
    let mut add = |name: &str, path: &VirtualPath, meta: &ferry_core::storage::Metadata, role| {
        let perms = session.account().permissions_at(path);
        lines.push_str(&listing::mlst_line(name, meta, perms, role, facts));
        lines.push_str("\r\n");
    };
    if let Ok(meta) = session.metadata(dir).await {
        add(".", dir, &meta, EntryRole::Current);
    }
    if !dir.is_root() {
        let parent = dir.parent();
        if let Ok(meta) = session.metadata(&parent).await {
            add("..", &parent, &meta, EntryRole::Parent);
        }
    }
    lines
}

#[derive(Clone, Copy)]
enum ListKind {
    Long,
    Names,
    Facts,
}

#[derive(Clone, Copy)]
enum HashReply {
    /// `213 SHA-256 0-49 <hex> <file>` (draft-bryan-ftpext-hash).
    Draft,
    /// `250 <hex>` (XMD5, XSHA1, XSHA256, XSHA512, XCRC).
    Legacy,
}

/// Waits for the running transfer to end; pending forever when there is none (for `select!`).
async fn wait_transfer(transfer: &mut Option<RunningTransfer>) -> Result<u64, TransferError> {
    match transfer {
        Some(t) => (&mut t.handle).await.unwrap_or(Err(TransferError::Aborted)),
        None => std::future::pending().await,
    }
}

/// The one mapping from core errors to FTP replies.
pub(crate) fn error_reply(e: &CoreError) -> Reply {
    let (code, text) = match e {
        CoreError::NotFound => (
            Code::FileUnavailable,
            "No such file or directory".to_owned(),
        ),
        CoreError::PermissionDenied(p) => {
            (Code::FileUnavailable, format!("Permission denied ({p})"))
        }
        CoreError::AccessDenied => (Code::FileUnavailable, "Access denied".to_owned()),
        CoreError::AlreadyExists => (Code::FileUnavailable, "File exists".to_owned()),
        CoreError::NotADirectory => (Code::FileUnavailable, "Not a directory".to_owned()),
        CoreError::IsADirectory => (Code::FileUnavailable, "Is a directory".to_owned()),
        CoreError::NotARegularFile => (Code::FileUnavailable, "Not a regular file".to_owned()),
        CoreError::DirectoryNotEmpty => (Code::FileUnavailable, "Directory not empty".to_owned()),
        CoreError::InvalidName(m) => (Code::BadFileName, format!("Invalid file name: {m}")),
        CoreError::InvalidArgument(m) => (Code::ArgumentError, m.clone()),
        CoreError::QuotaExceeded(m) => (Code::QuotaExceeded, format!("Quota exceeded: {m}")),
        CoreError::StorageFull => (
            Code::InsufficientStorage,
            "Insufficient storage space".to_owned(),
        ),
        CoreError::Unsupported => (Code::NotImplemented, "Not supported".to_owned()),
        CoreError::Aborted => (Code::TransferAborted, "Transfer aborted".to_owned()),
        CoreError::Store(_) | CoreError::Io(_) => {
            tracing::error!(error = %e, "local error");
            (Code::LocalError, "Local error in processing".to_owned())
        }
    };
    Reply::new(code, text)
}

/// The bytes of a RANG range, both ends included; `None` (to the end of the file) when there are more than a u64
/// counts (`RANG 0 18446744073709551615`).
fn range_len((start, end): (u64, u64)) -> Option<u64> {
    end.saturating_sub(start).checked_add(1)
}

/// An invalid offset after REST is reported with 554 (RFC 3659 section 5.4).
fn restart_reply(reply: Reply, offset: u64) -> Reply {
    if offset > 0 && reply.code == Code::ArgumentError {
        Reply {
            code: Code::InvalidRestart,
            ..reply
        }
    } else {
        reply
    }
}

fn transfer_error_reply(e: &TransferError) -> Reply {
    match e {
        TransferError::Data(d) => Reply::new(
            Code::CantOpenData,
            format!("Cannot open data connection: {d}"),
        ),
        TransferError::Aborted => Reply::new(Code::TransferAborted, "Transfer aborted"),
        TransferError::Stalled | TransferError::ConnectionLost(_) => Reply::new(
            Code::TransferAborted,
            format!("Connection closed; transfer aborted ({e})"),
        ),
        TransferError::Core(c) => match error_reply(c) {
            r if matches!(r.code, Code::QuotaExceeded | Code::InsufficientStorage) => r,
            // An atomic upload that found a file it may not replace at its name (docs/ftp.md).
            r if matches!(c, CoreError::AlreadyExists) => r,
            r => Reply {
                code: Code::LocalError,
                ..r
            },
        },
    }
}

fn fact_label(fact: &str) -> &str {
    if fact == "unix.mode" {
        "UNIX.mode"
    } else {
        fact
    }
}

/// The FEAT reply; `*` marks the MLST facts and the HASH algorithm this session has selected.
fn features(tls: bool, selected_facts: &[String], hash: HashAlgorithm) -> Reply {
    let mut lines = vec!["Features:".to_owned()];
    if tls {
        lines.extend(["AUTH TLS", "PBSZ", "PROT"].map(String::from));
    }
    let facts: String = MLST_FACTS
        .iter()
        .map(|f| {
            let star = if selected_facts.iter().any(|s| s == f) {
                "*"
            } else {
                ""
            };
            format!("{}{star};", fact_label(f))
        })
        .collect();
    let hashes: Vec<String> = HashAlgorithm::ALL
        .iter()
        .map(|a| format!("{}{}", a.name(), if *a == hash { "*" } else { "" }))
        .collect();
    lines.extend([
        "AVBL".to_owned(),
        "EPRT".to_owned(),
        "EPSV".to_owned(),
        format!("HASH {}", hashes.join(";")),
        "MDTM".to_owned(),
        "MFMT".to_owned(),
        format!("MLST {facts}"),
        "RANG STREAM".to_owned(),
        "REST STREAM".to_owned(),
        "SIZE".to_owned(),
        "TVFS".to_owned(),
        "UTF8".to_owned(),
    ]);
    lines.extend(["XCRC", "XMD5", "XSHA1", "XSHA256", "XSHA512"].map(String::from));
    lines.push("End".to_owned());
    Reply::multi(Code::SystemStatus, lines)
}

fn help() -> Reply {
    let lines = vec![
        "The following commands are recognized:".to_owned(),
        "ABOR ACCT ALLO APPE AUTH AVBL CDUP CWD  DELE EPRT EPSV FEAT HASH HELP LIST MDTM"
            .to_owned(),
        "MFMT MKD  MLSD MLST MODE NLST NOOP OPTS PASS PASV PBSZ PORT PROT PWD  QUIT RANG"
            .to_owned(),
        "REIN REST RETR RMD  RNFR RNTO SITE SIZE STAT STOR STOU STRU SYST TYPE USER XCRC"
            .to_owned(),
        "XCUP XCWD XMD5 XMKD XPWD XRMD XSHA1 XSHA256 XSHA512".to_owned(),
        "Help OK".to_owned(),
    ];
    Reply::multi(Code::Help, lines)
}
