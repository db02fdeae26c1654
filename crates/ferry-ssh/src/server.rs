//! The listener: accepts TCP connections, applies the core's connection caps, and runs an SSH session for each, with
//! the core's login and idle timeouts.

use std::borrow::Cow;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_core::server::ServerCore;
use russh::keys::PrivateKey;
use russh::server::Config;
use russh::{cipher, Disconnect, MethodKind, MethodSet, Preferred, SshId};
use tokio::net::{TcpListener, TcpStream};

use crate::activity::{Activity, Watched};
use crate::connection::{Connection, ConnectionState};
use crate::host_keys::{self, PendingKey};
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
    /// Replaced when a host key is added; each connection takes the one current when it starts.
    russh: RwLock<Arc<Config>>,
}

impl Shared {
    fn russh_config(&self) -> Arc<Config> {
        Arc::clone(&self.russh.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn add_host_key(&self, key: PrivateKey) {
        let mut current = self.russh.write().unwrap_or_else(|e| e.into_inner());
        let mut keys = current.keys.clone();
        keys.push(key);
        *current = Arc::new(russh_config(&self.core, &self.config, keys));
    }
}

/// How often a connection checks, during a shutdown, whether its channels have finished.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

/// The login methods offered, in the order clients should try them.
pub(crate) const AUTH_METHODS: &[MethodKind] = &[MethodKind::PublicKey, MethodKind::Password];

/// Ciphers offered, best first: russh's defaults plus aes128-gcm@openssh.com, which russh supports but leaves out of
/// its default list although it is OpenSSH's second choice and the fastest cipher on CPUs with AES instructions.
const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

/// russh's settings for `config` with `keys`, and the core's idle timeout.
fn russh_config(core: &ServerCore, config: &SshConfig, keys: Vec<PrivateKey>) -> Config {
    Config {
        server_id: SshId::Standard(Cow::Borrowed(concat!(
            "SSH-2.0-ferry_",
            env!("CARGO_PKG_VERSION")
        ))),
        methods: MethodSet::from(AUTH_METHODS),
        // Failed logins are slowed down by the core's own delay, as for FTP; key probes are not.
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys,
        window_size: config.window_size,
        maximum_packet_size: config.max_packet_size,
        inactivity_timeout: Some(core.limits().idle_timeout),
        // Key probes (one per key in the client's agent) count too; failed logins are capped separately.
        max_auth_attempts: 20,
        preferred: Preferred {
            cipher: Cow::Borrowed(CIPHERS),
            ..Preferred::default()
        },
        ..Config::default()
    }
}

/// An SSH server over one [`ServerCore`].
#[derive(Clone)]
pub struct SshServer {
    shared: Arc<Shared>,
}

impl SshServer {
    pub fn new(core: ServerCore, config: SshConfig) -> Self {
        let russh = russh_config(&core, &config, config.host_keys.clone());
        SshServer {
            shared: Arc::new(Shared {
                core,
                config,
                russh: RwLock::new(Arc::new(russh)),
            }),
        }
    }

    /// Generates `pending` host keys in the background; new connections are offered each one once it exists.
    pub fn generate_host_keys(&self, pending: Vec<PendingKey>) {
        for key in pending {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                match tokio::task::spawn_blocking(move || key.generate()).await {
                    Ok(Ok(key)) => {
                        let fingerprint = host_keys::fingerprints(std::slice::from_ref(&key));
                        tracing::info!(key = ?fingerprint, "generated an SSH host key");
                        shared.add_host_key(key);
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot generate an SSH host key"),
                    Err(e) => tracing::error!(error = %e, "SSH host key generation failed"),
                }
            });
        }
    }

    /// Accepts connections on `listener` until the core shuts down.
    pub async fn serve(&self, listener: TcpListener) -> io::Result<()> {
        listener_nodelay(&listener)?;
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

/// Sets TCP_NODELAY on the listening socket, from which Linux copies it to every connection accepted: russh
/// applies its `nodelay` setting only to sockets it accepts itself. With Nagle's algorithm on, a small reply (a
/// burst of SFTP write acknowledgements) waits for the client to acknowledge the previous segment, and a client
/// that sends nothing until it gets that reply delays its acknowledgement: each round trip of a pipelined upload
/// then stalls.
fn listener_nodelay(listener: &TcpListener) -> io::Result<()> {
    socket2::SockRef::from(listener).set_tcp_nodelay(true)
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
    let state = Arc::new(ConnectionState::default());
    // However this function ends, the connection's channel tasks learn that it has.
    let _ended = state.ended.clone().drop_guard();
    let connection = Connection::new(Arc::clone(&shared), peer, Arc::clone(&state));
    // A second handle on the socket, to cut off a client that does not finish logging in (russh cannot send its
    // disconnect message in the middle of a key exchange).
    let cutoff = tcp
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpStream::from);
    // The login timeout counts from the connection, through the version exchange, to a successful login.
    let login_deadline = tokio::time::Instant::now()
        .checked_add(shared.core.limits().login_timeout)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(30 * 365 * 86_400));
    let activity = Activity::new();
    let tcp = Watched::new(tcp, activity.clone());
    let start = russh::server::run_stream(shared.russh_config(), tcp, connection);
    let session = match tokio::time::timeout_at(login_deadline, start).await {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "ssh handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "login timeout");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    let login_deadline = tokio::time::sleep_until(login_deadline);
    tokio::pin!(login_deadline);
    let mut shutdown = shared.core.shutdown_signal();
    let mut shutting_down = false;
    let mut idle_check = tokio::time::interval(SHUTDOWN_POLL);
    let logged_in = || state.authenticated.load(Ordering::Acquire);
    let idle_timeout = shared.core.limits().idle_timeout;
    let result = loop {
        let reason = tokio::select! {
            result = &mut session => break result,
            () = activity.idle_for(idle_timeout) => "no traffic",
            () = &mut login_deadline, if !logged_in() => {
                if logged_in() {
                    continue;
                }
                "login timeout"
            }
            () = shutdown.wait(), if !shutting_down => {
                shutting_down = true;
                continue;
            }
            _ = idle_check.tick(), if shutting_down => {
                // On shutdown, a connection goes once no channel of it is at work.
                if state.running.load(Ordering::Acquire) > 0 {
                    continue;
                }
                "server shutting down"
            }
        };
        tracing::info!(%peer, reason, "disconnecting");
        // Bounded: a connection whose task waits on a channel's task takes no message, a disconnect included.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            handle.disconnect(Disconnect::ByApplication, reason.into(), "en".into()),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(1), &mut session)
            .await
            .is_err()
        {
            if let Ok(socket) = &cutoff {
                let _ = socket.shutdown(Shutdown::Both);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut session).await;
        }
        break Ok(());
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "disconnected"),
        Err(e) => tracing::debug!(%peer, error = %e, "disconnected"),
    }
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_packets_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener_nodelay(&listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server_side, peer) = accepted.unwrap();
        assert_eq!(peer, client.unwrap().local_addr().unwrap());
        assert!(server_side.nodelay().unwrap());
    }
}
