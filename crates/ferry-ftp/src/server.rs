//! Listeners: accept control connections (plain with AUTH TLS, or implicit FTPS), apply connection caps and
//! start a session task for each.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ferry_core::limits::{ConnectionSlot, LimitError};
use ferry_core::server::ServerCore;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::datachan::PassivePorts;
use crate::reaper::Reaper;
use crate::reply::{Code, Reply};
use crate::session::FtpSession;
use crate::tls::{MaybeTls, TlsConfigs};

/// FTP-specific settings.
#[derive(Clone, Default)]
pub struct FtpConfig {
    pub passive_ports: PassivePorts,
    /// The address advertised in PASV replies (for servers behind NAT); default: the control connection's.
    pub passive_host: Option<IpAddr>,
    /// TLS for AUTH TLS, implicit FTPS and protected data connections; `None` disables them.
    pub tls: Option<TlsConfigs>,
    /// Refuse logins and data transfers that are not protected by TLS (anonymous logins excepted).
    pub require_tls: bool,
    /// Refuse TLS data connections that do not resume the control connection's TLS session.
    pub require_tls_resumption: bool,
}

/// Shared by every session of one FTP server.
pub(crate) struct Shared {
    pub core: ServerCore,
    pub config: FtpConfig,
    pub acceptor: Option<TlsAcceptor>,
    pub data_acceptor: Option<TlsAcceptor>,
    pub reaper: Reaper,
}

/// An FTP server over one [`ServerCore`]; it can run several listeners.
#[derive(Clone)]
pub struct FtpServer {
    shared: Arc<Shared>,
}

impl FtpServer {
    pub fn new(core: ServerCore, config: FtpConfig) -> Self {
        let acceptor = config
            .tls
            .as_ref()
            .map(|t| TlsAcceptor::from(Arc::clone(&t.control)));
        let data_acceptor = config
            .tls
            .as_ref()
            .map(|t| TlsAcceptor::from(Arc::clone(&t.data)));
        let shared = Shared {
            core,
            config,
            acceptor,
            data_acceptor,
            reaper: Reaper::new(),
        };
        FtpServer {
            shared: Arc::new(shared),
        }
    }

    /// Accepts connections on `listener` until the core shuts down. With `implicit_tls`, every connection starts
    /// with a TLS handshake (FTPS on its own port).
    pub async fn serve(&self, listener: TcpListener, implicit_tls: bool) -> io::Result<()> {
        if implicit_tls && self.shared.acceptor.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "implicit FTPS needs a TLS certificate",
            ));
        }
        self.shared.reaper.start(&self.shared.core);
        let fixed_local = prepare_listener(&listener)?;
        let mut shutdown = self.shared.core.shutdown_signal();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Running out of file descriptors must not end the server: wait a moment and go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let local = match fixed_local {
                Some(local) => local,
                None => match tcp.local_addr() {
                    Ok(local) => local,
                    Err(_) => continue,
                },
            };
            // The slot is taken before any TLS handshake, so that connections that never finish one count
            // against the caps like any other.
            let slot = match self.shared.core.connect(peer.ip()) {
                Ok(slot) => slot,
                Err(e) if implicit_tls => {
                    // There is no TLS yet to say why in; a handshake per refused connection is work a cap is there
                    // to spare.
                    tracing::warn!(%peer, error = %e, "connection refused");
                    continue;
                }
                Err(e) => {
                    tokio::spawn(refuse(MaybeTls::Plain(tcp), peer, e));
                    continue;
                }
            };
            let shared = Arc::clone(&self.shared);
            if implicit_tls {
                tokio::spawn(async move {
                    if let Some(stream) = implicit_handshake(&shared, tcp, peer).await {
                        start_session(shared, stream, peer, local, slot);
                    }
                });
            } else {
                start_session(shared, MaybeTls::Plain(tcp), peer, local, slot);
            }
        }
    }
}

/// Sets, on the listening socket, the options every control connection needs; Linux copies a listening socket's
/// options to each connection it accepts, which spares two system calls per connection. ftplib and others send
/// ABOR's Telnet Synch as urgent data, so it is kept in the normal stream (`SO_OOBINLINE`), and replies go out at
/// once (`TCP_NODELAY`). Returns the local address of every accepted connection when the listener is bound to one
/// address (otherwise each connection's is asked for).
fn prepare_listener(listener: &TcpListener) -> io::Result<Option<SocketAddr>> {
    let socket = socket2::SockRef::from(listener);
    socket.set_out_of_band_inline(true)?;
    socket.set_tcp_nodelay(true)?;
    let local = listener.local_addr()?;
    Ok((!local.ip().is_unspecified()).then_some(local))
}

/// Spawns the session of a new connection. The task runs the session and nothing else, so that an idle session's
/// future holds only the session's own waits.
fn start_session(
    shared: Arc<Shared>,
    stream: MaybeTls,
    peer: SocketAddr,
    local: SocketAddr,
    slot: ConnectionSlot,
) {
    let session = FtpSession::new(Arc::clone(&shared), stream, peer, local, slot);
    tokio::spawn(Box::new(session).run());
}

async fn implicit_handshake(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> Option<MaybeTls> {
    let acceptor = shared.acceptor.as_ref()?;
    let wait = shared.core.limits().login_timeout;
    match tokio::time::timeout(wait, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(MaybeTls::Tls(Box::new(tls))),
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "implicit TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Tells a client over a connection cap why it is turned away, and closes.
async fn refuse(mut stream: MaybeTls, peer: SocketAddr, e: LimitError) {
    tracing::warn!(%peer, error = %e, "connection refused");
    let reply = Reply::new(Code::ServiceUnavailable, format!("{e}, try again later"));
    let _ = stream.write_all(reply.to_wire().as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_inherit_the_listener_options() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(prepare_listener(&listener).unwrap(), Some(addr));
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server_side, _) = accepted.unwrap();
        assert!(server_side.nodelay().unwrap());
        assert!(socket2::SockRef::from(&server_side)
            .out_of_band_inline()
            .unwrap());
        assert_eq!(server_side.local_addr().unwrap(), addr);
        drop(client);
    }

    #[tokio::test]
    async fn a_listener_on_every_address_asks_each_connection() {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        assert_eq!(prepare_listener(&listener).unwrap(), None);
    }
}
