//! `ferry serve`: prepares the data directory (database, admin account, TLS certificate), starts the listeners
//! and the event subscribers, reloads the TLS certificate and reopens the xferlog on SIGHUP, and shuts down
//! gracefully on SIGTERM or Ctrl-C.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_core::account::{Account, AccountStore};
use ferry_core::auth::{random_password, Authenticator};
use ferry_core::events::{Event, EventBus};
use ferry_core::limits::Limits;
use ferry_core::server::{ServerCore, ServerSettings};
use ferry_core::store::SqliteAccountStore;
use ferry_ftp::datachan::PassivePorts;
use ferry_ftp::tls::ServerCertificate;
use ferry_ftp::{FtpConfig, FtpServer};
use ferry_ssh::{host_keys, SshConfig, SshServer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::config::{LogFormat, ServeArgs};
use crate::user::{create_private_dir, default_home, hash, open_store, store_exists};
use crate::{service, tls_setup};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    init_logging(config.log_format);
    let open_files = raise_open_file_limit();
    tune_malloc();

    create_private_dir(&config.data_dir)?;
    create_private_dir(&config.data_dir.join("files"))?;
    println!("ferry: data directory {}", config.data_dir.display());
    let (store, admin_password) = open_accounts(&config.data_dir).await?;
    if let Some(password) = admin_password {
        println!("ferry: created account \"admin\" with password: {password}  (shown once; change it with `ferry user passwd admin`)");
    }
    let store = Arc::new(store);

    let (cert, key) = match &config.tls_files {
        Some(files) => files.clone(),
        None => tls_setup::ensure_self_signed(&config.data_dir.join("tls"))?,
    };
    let tls = ferry_ftp::tls::server_configs(&cert, &key)?;
    let certificate = tls.certificate.clone();

    let mut auth = Authenticator::new(store);
    if let Some(dir) = &config.anonymous {
        auth = auth.with_anonymous(std::path::absolute(dir)?);
    }
    let events = EventBus::default();
    let mut limits = config.limits.clone();
    if let Some(open_files) = open_files {
        fit_connections(&mut limits, open_files, config.max_connections_set);
    }
    let settings = ServerSettings {
        limits,
        upload_mode: config.upload_mode,
    };
    let core = ServerCore::new(auth, events.clone(), settings);
    spawn_event_log(&events);
    let (reopen_xferlog, xferlog_reopened) = watch::channel(());
    if let Some(path) = config.xferlog.clone() {
        let events = events.clone();
        tokio::spawn(async move {
            if let Err(e) = ferry_core::xferlog::run(&events, &path, xferlog_reopened).await {
                tracing::error!(path = %path.display(), error = %e, "xferlog stopped");
            }
        });
    }

    let ftp = FtpServer::new(
        core.clone(),
        FtpConfig {
            passive_ports: PassivePorts::new(config.passive_ports.clone()),
            passive_host: config.passive_host,
            tls: Some(tls),
            require_tls: config.require_tls,
            require_tls_resumption: config.require_tls_resumption,
        },
    );
    let mut servers = Vec::new();
    let listener = bind(config.ftp)?;
    println!(
        "ferry: ftp listening on {} (explicit FTPS via AUTH TLS)",
        listener.local_addr()?
    );
    servers.push(tokio::spawn({
        let ftp = ftp.clone();
        async move { ftp.serve(listener, false).await }
    }));
    if let Some(addr) = config.ftps {
        let listener = bind(addr)?;
        println!(
            "ferry: ftps listening on {} (implicit TLS)",
            listener.local_addr()?
        );
        servers.push(tokio::spawn(async move { ftp.serve(listener, true).await }));
    }
    let ssh_dir = config.data_dir.join("ssh");
    let (keys, pending_keys) = tokio::task::spawn_blocking(move || host_keys::load(&ssh_dir))
        .await?
        .context("SSH host keys")?;
    let fingerprints = host_keys::fingerprints(&keys);
    let ssh = SshServer::new(core.clone(), SshConfig::new(keys));
    // A new RSA key takes a moment; the server starts with Ed25519 and adds RSA when it exists.
    ssh.generate_host_keys(pending_keys);
    let listener = bind(config.sftp)?;
    println!(
        "ferry: sftp listening on {} (SFTP, SCP and checksum commands over SSH)",
        listener.local_addr()?
    );
    for fingerprint in fingerprints {
        println!("ferry: ssh host key {fingerprint}");
    }
    servers.push(tokio::spawn(async move { ssh.serve(listener).await }));
    if config.anonymous.is_some() {
        println!("ferry: anonymous read-only access is enabled");
    }
    // Listening for signals before saying ready: a SIGHUP's default action would end the process.
    let signals = Signals::listen();
    println!("ferry: ready");
    service::ready();

    let reload = Reload {
        certificate,
        cert,
        key,
        reopen_xferlog,
    };
    signals.wait(&reload).await;
    service::stopping();
    println!(
        "ferry: shutting down; running transfers get {}s to finish",
        config.shutdown_grace.as_secs()
    );
    core.shut_down();
    for server in servers {
        let _ = server.await;
    }
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    while core.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if core.connections() > 0 {
        tracing::warn!(
            connections = core.connections(),
            "grace period over; closing remaining connections"
        );
    }
    Ok(())
}

/// Connections the kernel completes and queues for a listener before it is accepted from (capped by
/// `net.core.somaxconn`, 4096 by default). The usual 128 overflows when a few hundred clients connect at once:
/// the kernel then drops their handshakes, and each waits a second or more to retry.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let listen = || {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen on {addr}"))
}

/// Opens the account database of `data_dir`. When there is none yet, it is created with an `admin` account that has
/// all permissions and a random password, returned here. Only then: a database whose accounts were all removed
/// stays without any, rather than getting an `admin` back at the next start.
async fn open_accounts(data_dir: &Path) -> anyhow::Result<(SqliteAccountStore, Option<String>)> {
    if store_exists(data_dir)? {
        return Ok((open_store(data_dir)?, None));
    }
    // Hashed before the database exists, so that nothing slow lies between creating it and adding the account.
    let password = random_password(16);
    let mut admin = Account::new("admin", default_home(data_dir, "admin")?);
    admin.password_hash = Some(hash(password.clone()).await?);
    create_private_dir(&admin.home)?;
    let store = open_store(data_dir)?;
    store.create(&admin).await?;
    Ok((store, Some(password)))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// glibc's malloc raises its mmap threshold to the largest block freed so far (up to 32 MiB). After the first
/// login, argon2id's 19 MiB working memory would then come from the heap of whichever blocking-pool thread ran it
/// and stay there. A fixed threshold (which also turns the dynamic one off) keeps blocks of 4 MiB and more in
/// their own mappings, returned to the system when freed; transfer buffers (256 KiB, 1 MiB) stay below it.
///
/// Turning the dynamic threshold off also leaves the trim threshold at its initial 128 KiB (the dynamic rule
/// would have raised it to twice the mmap threshold), so every freed upload buffer (1 MiB) made its arena give
/// its top back to the kernel: an `madvise(MADV_DONTNEED)`, a TLB flush on the other cores, and page faults for
/// the next upload, after most small STORs. Setting the trim threshold to what the dynamic rule would have
/// chosen, 8 MiB, lets an arena keep that much free memory at its top. One client storing 3,000 files of 4 KiB
/// (alternating runs, server CPU time): 0.89-1.01 s before, 0.82-1.03 s after (medians 0.92 and 0.85 s, five runs
/// each), and 0.95-1.01 against 0.77-1.01 s with the same threshold set through `GLIBC_TUNABLES` (six runs each).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// Serving many sessions needs many descriptors: raise the soft limit to the hard limit. Returns the soft limit
/// in force afterwards, `None` when there is none.
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Descriptors the connection cap leaves to everything but the connections themselves: listeners, the account
/// database, logs, and the passive listeners, data connections and files of transfers (a session holds one
/// descriptor while idle and up to three more while it transfers). Half the limit when that is smaller.
const RESERVED_DESCRIPTORS: u64 = 512;

/// The most connections that `open_files` descriptors hold, [`RESERVED_DESCRIPTORS`] kept back.
fn connections_fitting(open_files: u64) -> usize {
    let fitting = open_files - RESERVED_DESCRIPTORS.min(open_files / 2);
    usize::try_from(fitting).unwrap_or(usize::MAX)
}

/// Lowers the connection cap to what the open-file limit holds. Past it, accepting a connection fails for want
/// of a descriptor: the client would wait unanswered in the listen queue, and sessions already in could not open
/// files or data connections, where the cap refuses the newcomer with a reply and keeps the sessions working.
fn fit_connections(limits: &mut Limits, open_files: u64, set: bool) {
    let fitting = connections_fitting(open_files);
    if limits.max_connections != 0 && limits.max_connections <= fitting {
        return;
    }
    if set {
        tracing::warn!(
            configured = limits.max_connections,
            open_file_limit = open_files,
            "max-connections lowered to {fitting}: raise the open-file limit (ulimit -n, LimitNOFILE=) for more"
        );
    } else {
        tracing::debug!(open_file_limit = open_files, "max-connections {fitting}");
    }
    limits.max_connections = fitting;
}

/// Writes every event to the log: one line per login, transfer and file operation.
fn spawn_event_log(events: &EventBus) {
    let mut rx = events.subscribe();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(event) => log_event(&event),
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "event log fell behind"),
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// User names, paths and errors come from clients. Paths and errors are recorded as strings, which the text log
/// quotes and escapes and the JSON log encodes; user names go through [`ClientText`]. Either way a name holding a
/// newline cannot start a log line of its own, nor one holding spaces pose as more fields.
fn log_event(e: &Event) {
    let kind = e.kind.name();
    let (user, path, target) = (
        ClientText(&e.username),
        e.path.as_deref(),
        e.target.as_deref(),
    );
    match &e.error {
        None => tracing::info!(
            event = kind, user = %user, ip = %e.remote_ip, protocol = %e.protocol, session = e.session_id,
            path, target, bytes = e.bytes, millis = e.duration.as_millis() as u64, "{kind} ok"
        ),
        Some(error) => tracing::warn!(
            event = kind, user = %user, ip = %e.remote_ip, protocol = %e.protocol, session = e.session_id,
            path, target, bytes = e.bytes, error = error.as_str(), "{kind} failed"
        ),
    }
}

/// A string a client chose, for a log field: as it is when it could be an account name (letters, digits, `.`, `_`,
/// `-`, `@`), else quoted, with control and other unprintable characters escaped as in Rust.
struct ClientText<'a>(&'a str);

impl fmt::Display for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && self
                .0
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// What SIGHUP does: the TLS certificate and key are read again from their files (a renewed certificate), and the
/// xferlog is reopened (after rotation). Accounts need nothing: changes to them apply at once.
struct Reload {
    certificate: Arc<ServerCertificate>,
    cert: PathBuf,
    key: PathBuf,
    reopen_xferlog: watch::Sender<()>,
}

impl Reload {
    async fn run(&self) {
        service::reloading();
        let (certificate, cert, key) = (
            self.certificate.clone(),
            self.cert.clone(),
            self.key.clone(),
        );
        match tokio::task::spawn_blocking(move || certificate.reload(&cert, &key)).await {
            Ok(Ok(())) => tracing::info!(
                cert = %self.cert.display(),
                key = %self.key.display(),
                "TLS certificate reloaded"
            ),
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "TLS certificate not reloaded; the one loaded before stays in use"
            ),
            Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded"),
        }
        self.reopen_xferlog.send_replace(());
        service::ready();
    }
}

/// The signals `ferry serve` acts on: SIGTERM and SIGINT (Ctrl-C) stop it, SIGHUP reloads.
struct Signals {
    /// `None` if the handlers could not be installed; then only Ctrl-C is heard.
    handlers: Option<(Signal, Signal)>,
}

impl Signals {
    fn listen() -> Signals {
        let handlers = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(hangup)) => Some((term, hangup)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM and SIGHUP; stop with Ctrl-C");
                None
            }
        };
        Signals { handlers }
    }

    /// Returns on SIGTERM or Ctrl-C; runs `reload` on each SIGHUP.
    async fn wait(self, reload: &Reload) {
        let Some((mut term, mut hangup)) = self.handlers else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = hangup.recv() => reload.run().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_core::events::{EventKind, Protocol};
    use ferry_core::session::ClientInfo;

    use super::*;

    fn cap_after_fit(max_connections: usize, open_files: u64) -> usize {
        let mut limits = Limits {
            max_connections,
            ..Limits::default()
        };
        fit_connections(&mut limits, open_files, true);
        limits.max_connections
    }

    #[test]
    fn connection_cap_fits_the_open_file_limit() {
        // The default cap and an unlimited one come down to what the descriptors hold, a reserve kept back.
        assert_eq!(cap_after_fit(20_000, 20_000), 19_488);
        assert_eq!(cap_after_fit(0, 20_000), 19_488);
        assert_eq!(cap_after_fit(20_000, 1_024), 512);
        assert_eq!(cap_after_fit(20_000, 128), 64);
        // A cap that fits stays as it is.
        assert_eq!(cap_after_fit(5_000, 20_000), 5_000);
        assert_eq!(cap_after_fit(19_488, 20_000), 19_488);
        assert_eq!(cap_after_fit(30_000, 1_048_576), 30_000);
    }

    #[tokio::test]
    async fn admin_is_created_with_a_new_database_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (store, password) = open_accounts(&dir).await.unwrap();
        assert!(password.is_some_and(|p| !p.is_empty()));
        let admin = store.get("admin").await.unwrap().unwrap();
        assert!(admin.home.is_dir());

        let (store, password) = open_accounts(&dir).await.unwrap();
        assert!(password.is_none());
        assert!(store.remove("admin").await.unwrap());
        drop(store);
        let (store, password) = open_accounts(&dir).await.unwrap();
        assert!(
            password.is_none(),
            "admin came back after every account was removed"
        );
        assert!(store.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn no_admin_for_a_database_made_by_user_add() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open_store(tmp.path()).unwrap();
        store
            .create(&Account::new("alice", tmp.path().join("alice")))
            .await
            .unwrap();
        drop(store);
        let (store, password) = open_accounts(tmp.path()).await.unwrap();
        assert!(password.is_none());
        assert!(store.get("admin").await.unwrap().is_none());
    }

    /// Log output, shared with the subscriber that writes it.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_lines(json: bool, event: &Event) -> Vec<String> {
        let out = Captured::default();
        let writer = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false);
        if json {
            tracing::subscriber::with_default(builder.json().finish(), || log_event(event));
        } else {
            tracing::subscriber::with_default(builder.finish(), || log_event(event));
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    fn forged_login_failure() -> Event {
        let client = ClientInfo::new(Protocol::Ftp, "192.0.2.7".parse().unwrap());
        let forged = "bob\n2026-01-01T00:00:00Z  INFO event=\"login\" user=\"admin\" login ok";
        let mut event = Event::new(EventKind::LoginFailed, &client, forged);
        event.error = Some("unknown user bob\r\nforged".to_owned());
        event
    }

    #[test]
    fn a_user_name_with_a_newline_cannot_forge_a_log_line() {
        let event = forged_login_failure();
        let lines = log_lines(false, &event);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].contains(r#"user="bob\n2026"#), "{}", lines[0]);
        assert!(
            lines[0].contains(r#"error="unknown user bob\r\nforged""#),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn a_plain_user_name_is_logged_as_it_is() {
        let client = ClientInfo::new(Protocol::Ftp, "192.0.2.7".parse().unwrap());
        let event = Event::new(EventKind::Login, &client, "alice.b-c_d@example.com");
        let lines = log_lines(false, &event);
        assert!(
            lines[0].contains(" user=alice.b-c_d@example.com "),
            "{}",
            lines[0]
        );
        assert_eq!(ClientText("").to_string(), r#""""#);
        assert_eq!(ClientText("a\u{1b}[31m").to_string(), r#""a\u{1b}[31m""#);
    }

    #[test]
    fn a_user_name_with_spaces_cannot_add_fields() {
        let client = ClientInfo::new(Protocol::Ftp, "192.0.2.7".parse().unwrap());
        let event = Event::new(EventKind::LoginFailed, &client, "bob ip=10.0.0.1");
        let lines = log_lines(false, &event);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains(r#"user="bob ip=10.0.0.1""#),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn the_json_log_escapes_only_unusual_user_names() {
        let event = forged_login_failure();
        let lines = log_lines(true, &event);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        let record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(record["fields"]["user"], format!("{:?}", event.username));
        assert_eq!(record["fields"]["error"], "unknown user bob\r\nforged");
        let client = ClientInfo::new(Protocol::Ftp, "192.0.2.7".parse().unwrap());
        let lines = log_lines(true, &Event::new(EventKind::Login, &client, "alice"));
        let record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(record["fields"]["user"], "alice");
    }
}
