//! Data connections: passive listeners from the configured port range, active connections to the client, the
//! checks that refuse the FTP bounce attack and foreign data connections, and TLS on the data channel.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use ferry_core::account::canonical_ip;
use rand::Rng;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;

use crate::tls::MaybeTls;

/// How a data connection will be made for the next transfer.
pub enum DataSetup {
    /// PASV/EPSV: the client connects to this listener.
    Passive(TcpListener),
    /// PORT/EPRT: the server connects to the client from `local_ip`.
    Active {
        target: SocketAddr,
        local_ip: IpAddr,
    },
}

/// Why a data connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("timed out waiting for the data connection")]
    Timeout,
    #[error("data connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake on the data connection failed: {0}")]
    Tls(io::Error),
    #[error("the data connection did not resume the control connection's TLS session")]
    NoResumption,
}

/// Passive ports: a configured range, or any port the OS picks.
#[derive(Clone, Debug, Default)]
pub struct PassivePorts {
    range: Option<RangeInclusive<u16>>,
}

impl PassivePorts {
    pub fn new(range: Option<RangeInclusive<u16>>) -> Self {
        PassivePorts { range }
    }

    /// Binds a listener on `ip`, trying the ports of the range from a random start until one is free.
    pub async fn bind(&self, ip: IpAddr) -> io::Result<TcpListener> {
        let Some(range) = &self.range else {
            return TcpListener::bind(SocketAddr::new(ip, 0)).await;
        };
        let (first, last) = (*range.start(), *range.end());
        let count = u32::from(last - first) + 1;
        let start = rand::thread_rng().gen_range(0..count);
        for i in 0..count {
            let port = first + ((start + i) % count) as u16;
            match TcpListener::bind(SocketAddr::new(ip, port)).await {
                Ok(listener) => return Ok(listener),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free port in the passive range",
        ))
    }
}

/// Whether an active-mode target is acceptable: only the client's own address (no FTP bounce), never a
/// privileged port.
pub fn active_target_allowed(target: SocketAddr, client_ip: IpAddr) -> bool {
    canonical_ip(target.ip()) == canonical_ip(client_ip) && target.port() >= 1024
}

/// Opens the data connection described by `setup` within `wait`, refusing connections from any address but
/// `client_ip`, and wraps it in TLS when `tls` is given.
pub async fn establish(
    setup: DataSetup,
    client_ip: IpAddr,
    wait: Duration,
    tls: Option<(&TlsAcceptor, bool)>,
) -> Result<MaybeTls, DataError> {
    let deadline = Instant::now() + wait;
    let tcp = match setup {
        DataSetup::Passive(listener) => loop {
            let (stream, peer) = timeout_at(deadline, listener.accept())
                .await
                .map_err(|_| DataError::Timeout)??;
            if canonical_ip(peer.ip()) == canonical_ip(client_ip) {
                break stream;
            }
            tracing::warn!(%peer, client = %client_ip, "refused a data connection from a foreign address");
        },
        DataSetup::Active { target, local_ip } => {
            let socket = if target.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(local_ip, 0))?;
            timeout_at(deadline, socket.connect(target))
                .await
                .map_err(|_| DataError::Timeout)??
        }
    };
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(MaybeTls::Plain(tcp)),
        Some((acceptor, require_resumption)) => {
            let stream = timeout_at(deadline, acceptor.accept(tcp))
                .await
                .map_err(|_| DataError::Timeout)?;
            let stream = MaybeTls::Tls(Box::new(stream.map_err(DataError::Tls)?));
            if require_resumption && !stream.resumed_session() {
                return Err(DataError::NoResumption);
            }
            Ok(stream)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_targets_are_refused() {
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(active_target_allowed(
            "127.0.0.1:5000".parse().unwrap(),
            client
        ));
        assert!(!active_target_allowed(
            "127.0.0.2:5000".parse().unwrap(),
            client
        ));
        assert!(!active_target_allowed(
            "127.0.0.1:25".parse().unwrap(),
            client
        ));
        assert!(active_target_allowed(
            "[::ffff:127.0.0.1]:5000".parse().unwrap(),
            client
        ));
    }

    #[tokio::test]
    async fn passive_ports_stay_in_range() {
        let ports = PassivePorts::new(Some(40000..=40100));
        let l = ports.bind("127.0.0.1".parse().unwrap()).await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert!((40000..=40100).contains(&port));
    }

    #[tokio::test]
    async fn data_connection_from_the_client_is_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let setup = DataSetup::Passive(listener);
        let stream = establish(
            setup,
            "127.0.0.1".parse().unwrap(),
            Duration::from_secs(5),
            None,
        )
        .await
        .unwrap();
        assert!(!stream.is_tls());
        client.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn data_connection_from_a_foreign_address_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let intruder = TcpSocket::new_v4().unwrap();
        intruder.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let _conn = intruder.connect(addr).await.unwrap();
        let r = establish(
            DataSetup::Passive(listener),
            "127.0.0.1".parse().unwrap(),
            Duration::from_millis(300),
            None,
        )
        .await;
        assert!(matches!(r, Err(DataError::Timeout)));
    }
}
