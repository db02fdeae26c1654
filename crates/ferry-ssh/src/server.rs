//! The listener: accepts TCP connections, applies the core's connection caps, and runs an SSH session for each, with
//! the core's login and idle timeouts.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::server::ServerCore;
use russh::keys::PrivateKey;
use russh::server::Config;
use russh::{Disconnect, MethodKind, MethodSet, SshId};
use tokio::net::{TcpListener, TcpStream};

use crate::connection::Connection;
use crate::sftp::SftpLimits;

/// SSH-specific settings.
#[derive(Clone)]
pub struct SshConfig {
    /// The host keys, offered in this order (see [`crate::host_keys`]).
    pub host_keys: Vec<PrivateKey>,
    /// Bytes a client may send on a channel before waiting for the server to take them.
    pub window_size: u32,
    /// Largest channel data packet accepted.
    pub max_packet_size: u32,
    /// Session channels one connection may have open at once.
    pub max_channels: usize,
    pub sftp: SftpLimits,
}

impl SshConfig {
    /// Defaults sized for throughput: an 8 MiB window and OpenSSH's 32 KiB packets.
    pub fn new(host_keys: Vec<PrivateKey>) -> Self {
        SshConfig {
            host_keys,
            window_size: 8 * 1024 * 1024,
            max_packet_size: 32 * 1024,
            max_channels: 10,
            sftp: SftpLimits::default(),
        }
    }
}

/// Shared by every connection of one SSH server.
pub(crate) struct Shared {
    pub core: ServerCore,
    pub config: SshConfig,
    pub russh: Arc<Config>,
}

/// An SSH server over one [`ServerCore`].
#[derive(Clone)]
pub struct SshServer {
    shared: Arc<Shared>,
}

impl SshServer {
    pub fn new(core: ServerCore, config: SshConfig) -> Self {
        let limits = core.limits();
        let russh = Config {
            server_id: SshId::Standard(Cow::Borrowed(concat!(
                "SSH-2.0-ferry_",
                env!("CARGO_PKG_VERSION")
            ))),
            methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::Password][..]),
            // Failed logins are slowed down by the core's own delay, as for FTP; key probes are not.
            auth_rejection_time: Duration::ZERO,
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: config.host_keys.clone(),
            window_size: config.window_size,
            maximum_packet_size: config.max_packet_size,
            inactivity_timeout: Some(limits.idle_timeout),
            // Key probes (one per key in the client's agent) count too; failed logins are capped separately.
            max_auth_attempts: 20,
            nodelay: true,
            ..Config::default()
        };
        SshServer {
            shared: Arc::new(Shared {
                core,
                config,
                russh: Arc::new(russh),
            }),
        }
    }

    /// Accepts connections on `listener` until the core shuts down.
    pub async fn serve(&self, listener: TcpListener) -> io::Result<()> {
        let mut shutdown = self.shared.core.shutdown_signal();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Running out of file descriptors must not end the server: wait a moment and go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move { accept(shared, tcp, peer).await });
        }
    }
}

async fn accept(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let slot = match shared.core.connect(peer.ip()) {
        Ok(slot) => slot,
        Err(e) => {
            // Before the key exchange there is no way to send a message the client would show.
            tracing::warn!(%peer, error = %e, "connection refused");
            return;
        }
    };
    tracing::debug!(%peer, "connected");
    let authenticated = Arc::new(AtomicBool::new(false));
    let connection = Connection::new(Arc::clone(&shared), peer, Arc::clone(&authenticated));
    let login_timeout = shared.core.limits().login_timeout;
    let session = match russh::server::run_stream(Arc::clone(&shared.russh), tcp, connection).await
    {
        Ok(session) => session,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "ssh handshake failed");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    let login_deadline = tokio::time::sleep(login_timeout);
    tokio::pin!(login_deadline);
    let result = loop {
        tokio::select! {
            result = &mut session => break result,
            () = &mut login_deadline, if !authenticated.load(Ordering::Acquire) => {
                if authenticated.load(Ordering::Acquire) {
                    continue;
                }
                tracing::info!(%peer, "login timeout");
                let _ = handle
                    .disconnect(Disconnect::ByApplication, "login timeout".into(), "en".into())
                    .await;
                // Wait for the session to wind down, but not for ever.
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut session).await;
                break Ok(());
            }
        }
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "disconnected"),
        Err(e) => tracing::debug!(%peer, error = %e, "disconnected"),
    }
    drop(slot);
}
