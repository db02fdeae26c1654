//! Data connections: passive listeners from the configured port range, active connections to the client, the
//! checks that refuse the FTP bounce attack and foreign data connections, and TLS on the data channel.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use ferry_core::account::canonical_ip;
use rand::Rng;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;

use crate::tls::MaybeTls;

/// How a data connection will be made for the next transfer.
pub enum DataSetup {
    /// PASV/EPSV: the client connects to this listener.
    Passive(PassiveListener),
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

/// A passive listener, non-blocking and not yet registered with the runtime: clients connect right after the
/// PASV/EPSV reply, before their transfer command, so the connection is usually waiting when the transfer starts and
/// is taken without registering the listener at all. Registering costs two `epoll_ctl` calls and, when the
/// connection arrives, wakes an idle worker for nothing: a strace of 2,000 small STORs and RETRs on ten connections
/// counted 16,019 `epoll_ctl` and 12,698 `futex` calls with the listener registered, 8,020 and 8,856 without.
#[derive(Debug)]
pub struct PassiveListener(Socket);

impl PassiveListener {
    /// Accepts the client's data connection before `deadline`, refusing (closing) connections from any other
    /// address: at once when one is waiting, else through the runtime.
    async fn accept_from(
        self,
        client_ip: IpAddr,
        deadline: Instant,
    ) -> Result<TcpStream, DataError> {
        let from_client = |peer: SocketAddr| {
            let ok = canonical_ip(peer.ip()) == canonical_ip(client_ip);
            if !ok {
                tracing::warn!(%peer, client = %client_ip, "refused a data connection from a foreign address");
            }
            ok
        };
        loop {
            match self.0.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
                Ok((socket, peer)) => {
                    if peer.as_socket().is_some_and(from_client) {
                        return Ok(TcpStream::from_std(socket.into())?);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        let listener = TcpListener::from_std(self.0.into())?;
        loop {
            let (stream, peer) = timeout_at(deadline, listener.accept())
                .await
                .map_err(|_| DataError::Timeout)??;
            if from_client(peer) {
                return Ok(stream);
            }
        }
    }
}

/// Where passive listeners bind when no range is configured and `/proc` cannot tell: Linux's default ephemeral range.
const FALLBACK_EPHEMERAL: RangeInclusive<u16> = 32768..=60999;
/// Backlog of a passive listener: it waits for one connection, from one client.
const PASSIVE_BACKLOG: i32 = 8;

/// Passive ports: a configured range or, by default, the system's ephemeral range (less its reserved ports).
///
/// Each listener binds an explicit port, picked at random in the range, with `SO_REUSEADDR`, rather than port 0.
/// The kernel's search for a free port 0 slows down as data connections of earlier transfers pile up in
/// TIME_WAIT (thousands per second with small files); an explicit port with `SO_REUSEADDR` is not blocked by
/// connections in TIME_WAIT on it, so a bind costs one lookup however many there are.
#[derive(Clone, Debug)]
pub struct PassivePorts {
    range: RangeInclusive<u16>,
    /// Ports the range leaves out (`net.ipv4.ip_local_reserved_ports` for the default range).
    reserved: Vec<RangeInclusive<u16>>,
}

impl Default for PassivePorts {
    fn default() -> Self {
        PassivePorts::new(None)
    }
}

impl PassivePorts {
    /// `range`, or the system's ephemeral range when `None`.
    pub fn new(range: Option<RangeInclusive<u16>>) -> Self {
        match range {
            Some(range) => PassivePorts {
                range,
                reserved: Vec::new(),
            },
            None => PassivePorts {
                range: read_proc("/proc/sys/net/ipv4/ip_local_port_range")
                    .and_then(|s| parse_port_range(&s))
                    .unwrap_or(FALLBACK_EPHEMERAL),
                reserved: read_proc("/proc/sys/net/ipv4/ip_local_reserved_ports")
                    .map(|s| parse_port_list(&s))
                    .unwrap_or_default(),
            },
        }
    }

    /// Binds a listener on `ip`, trying the ports of the range from a random start until one is free, and returns
    /// it with its port. A port that is taken is retried with the same socket, which a failed bind leaves unbound.
    pub fn bind(&self, ip: IpAddr) -> io::Result<(PassiveListener, u16)> {
        let (first, last) = (*self.range.start(), *self.range.end());
        let count = u32::from(last - first) + 1;
        let start = rand::thread_rng().gen_range(0..count);
        let mut unbound = None;
        for i in 0..count {
            let port = first + ((start + i) % count) as u16;
            if port == 0 || self.reserved.iter().any(|r| r.contains(&port)) {
                continue;
            }
            let socket = match unbound.take() {
                Some(socket) => socket,
                None => reusing_socket(ip)?,
            };
            match socket.bind(&SocketAddr::new(ip, port).into()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    unbound = Some(socket);
                    continue;
                }
                Err(e) => return Err(e),
            }
            // Listening checks the port again; the socket is bound by then, so the next port needs a new one.
            match socket.listen(PASSIVE_BACKLOG) {
                Ok(()) => return Ok((PassiveListener(socket), port)),
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

/// A socket for a listener with `SO_REUSEADDR`, which Linux lets share its port only with connections in
/// TIME_WAIT (never with another listener).
fn reusing_socket(ip: IpAddr) -> io::Result<Socket> {
    let domain = Domain::for_address(SocketAddr::new(ip, 0));
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), None)?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `ip_local_port_range`: two numbers separated by white space.
fn parse_port_range(s: &str) -> Option<RangeInclusive<u16>> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high))) = (it.next(), it.next()) else {
        return None;
    };
    (1 <= low && low <= high).then_some(low..=high)
}

/// `ip_local_reserved_ports`: comma-separated ports and ranges (`8080,9000-9100`), possibly empty.
fn parse_port_list(s: &str) -> Vec<RangeInclusive<u16>> {
    s.trim()
        .split(',')
        .filter_map(|item| {
            let item = item.trim();
            let (low, high) = item.split_once('-').unwrap_or((item, item));
            let (low, high) = (low.parse::<u16>().ok()?, high.parse::<u16>().ok()?);
            (low <= high).then_some(low..=high)
        })
        .collect()
}

/// Whether an active-mode target is acceptable: only the client's own address (no FTP bounce), never a
/// privileged port.
pub fn active_target_allowed(target: SocketAddr, client_ip: IpAddr) -> bool {
    canonical_ip(target.ip()) == canonical_ip(client_ip) && target.port() >= 1024
}

/// Opens the data connection described by `setup` within `wait`, refusing connections from any address but
/// `client_ip`, and wraps it in TLS when `tls` is given. Data connections send at once (`TCP_NODELAY`), so that
/// the tail of a small file leaves without waiting for an acknowledgement.
pub async fn establish(
    setup: DataSetup,
    client_ip: IpAddr,
    wait: Duration,
    tls: Option<(&TlsAcceptor, bool)>,
) -> Result<MaybeTls, DataError> {
    let deadline = Instant::now()
        .checked_add(wait)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(30 * 365 * 86_400));
    let tcp = match setup {
        DataSetup::Passive(listener) => listener.accept_from(client_ip, deadline).await?,
        DataSetup::Active { target, local_ip } => {
            // A listener on `[::]` sees IPv4 clients at IPv4-mapped addresses (`::ffff:a.b.c.d`): connect and bind
            // in the family of the plain address, which is the one PORT names.
            let target = SocketAddr::new(canonical_ip(target.ip()), target.port());
            let socket = if target.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(canonical_ip(local_ip), 0))?;
            timeout_at(deadline, socket.connect(target))
                .await
                .map_err(|_| DataError::Timeout)??
        }
    };
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(MaybeTls::Plain(tcp)),
        Some((acceptor, require_resumption)) => {
            let stream = timeout_at(deadline, MaybeTls::accept_data(acceptor, tcp))
                .await
                .map_err(|_| DataError::Timeout)?
                .map_err(DataError::Tls)?;
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
        let (l, port) = ports.bind("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(address(&l).port(), port);
        assert!((40000..=40100).contains(&port));
    }

    #[test]
    fn system_port_settings_are_parsed() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("0 10"), None);
        assert_eq!(parse_port_range("junk"), None);
        assert_eq!(parse_port_list("\n"), Vec::<RangeInclusive<u16>>::new());
        assert_eq!(
            parse_port_list("8080,9000-9100\n"),
            vec![8080..=8080, 9000..=9100]
        );
    }

    #[tokio::test]
    async fn reserved_ports_are_skipped() {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let ports = PassivePorts {
            range: port - 1..=port,
            reserved: vec![port - 1..=port - 1],
        };
        let (_l, bound) = ports.bind("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(bound, port);
    }

    #[tokio::test]
    async fn a_port_whose_connections_closed_is_bound_again() {
        // The server closes first, as after a download, so its side of the connection lingers on the port (in
        // TIME_WAIT once the client's close arrives).
        let ports = PassivePorts::new(None);
        let (first, _) = ports.bind("127.0.0.1".parse().unwrap()).unwrap();
        let addr = address(&first);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server_side = first
            .accept_from(addr.ip(), Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        drop(server_side);
        drop(client);
        let again = PassivePorts {
            range: addr.port()..=addr.port(),
            reserved: Vec::new(),
        };
        again.bind("127.0.0.1".parse().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_passed_over_for_a_free_one() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let Some(next) = port.checked_add(1) else {
            return;
        };
        if TcpListener::bind(("127.0.0.1", next)).await.is_err() {
            return;
        }
        let ports = PassivePorts::new(Some(port..=next));
        for _ in 0..4 {
            let (_l, bound) = ports.bind("127.0.0.1".parse().unwrap()).unwrap();
            assert_eq!(bound, next);
        }
    }

    #[tokio::test]
    async fn a_port_with_a_listener_is_not_shared() {
        let (_taken, port) = PassivePorts::new(None)
            .bind("127.0.0.1".parse().unwrap())
            .unwrap();
        let ports = PassivePorts::new(Some(port..=port));
        let err = ports.bind("127.0.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    fn localhost() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    fn address(listener: &PassiveListener) -> SocketAddr {
        listener.0.local_addr().unwrap().as_socket().unwrap()
    }

    #[tokio::test]
    async fn a_connection_already_waiting_is_taken_and_sends_at_once() {
        let (listener, port) = PassivePorts::new(None).bind(localhost()).unwrap();
        let client = tokio::net::TcpStream::connect((localhost(), port))
            .await
            .unwrap();
        let setup = DataSetup::Passive(listener);
        let stream = establish(setup, localhost(), Duration::from_secs(5), None)
            .await
            .unwrap();
        assert!(!stream.is_tls());
        assert!(stream.tcp().unwrap().nodelay().unwrap());
        assert_eq!(
            stream.tcp().unwrap().peer_addr().unwrap(),
            client.local_addr().unwrap()
        );
    }

    #[tokio::test]
    async fn a_connection_that_comes_later_is_waited_for() {
        let (listener, port) = PassivePorts::new(None).bind(localhost()).unwrap();
        let setup = DataSetup::Passive(listener);
        let accepting = tokio::spawn(establish(setup, localhost(), Duration::from_secs(5), None));
        // The test runtime has one thread: the accept finds no connection and waits before the client connects.
        tokio::task::yield_now().await;
        let client = tokio::net::TcpStream::connect((localhost(), port))
            .await
            .unwrap();
        let stream = accepting.await.unwrap().unwrap();
        assert_eq!(
            stream.tcp().unwrap().peer_addr().unwrap(),
            client.local_addr().unwrap()
        );
    }

    /// A connection from another address is closed, whether it was waiting or came while the client's was awaited.
    #[tokio::test]
    async fn data_connections_from_a_foreign_address_are_refused() {
        let listener = std::net::TcpListener::bind((localhost(), 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let intrude = || async {
            let intruder = TcpSocket::new_v4().unwrap();
            intruder.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            intruder.connect(addr).await.unwrap()
        };
        let mut waiting = intrude().await;
        listener.set_nonblocking(true).unwrap();
        let setup = DataSetup::Passive(PassiveListener(listener.into()));
        let accepting = tokio::spawn(establish(setup, localhost(), Duration::from_secs(5), None));
        tokio::task::yield_now().await;
        let mut later = intrude().await;
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = accepting.await.unwrap().unwrap();
        assert_eq!(
            stream.tcp().unwrap().peer_addr().unwrap(),
            client.local_addr().unwrap()
        );
        for intruder in [&mut waiting, &mut later] {
            let mut byte = [0u8; 1];
            let read = tokio::io::AsyncReadExt::read(intruder, &mut byte).await;
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
    }

    #[tokio::test]
    async fn no_data_connection_times_out() {
        let (listener, _) = PassivePorts::new(None).bind(localhost()).unwrap();
        let r = establish(
            DataSetup::Passive(listener),
            localhost(),
            Duration::from_millis(100),
            None,
        )
        .await;
        assert!(matches!(r, Err(DataError::Timeout)));
    }

    #[tokio::test]
    async fn an_active_data_connection_sends_at_once() {
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = client.local_addr().unwrap();
        let accepted = tokio::spawn(async move { client.accept().await });
        let setup = DataSetup::Active {
            target,
            local_ip: "127.0.0.1".parse().unwrap(),
        };
        let stream = establish(setup, target.ip(), Duration::from_secs(5), None)
            .await
            .unwrap();
        assert!(stream.tcp().unwrap().nodelay().unwrap());
        accepted.await.unwrap().unwrap();
    }

    /// An IPv4 client of a listener on `[::]`: the control connection's local address is IPv4-mapped.
    #[tokio::test]
    async fn an_active_connection_from_an_ipv4_mapped_address_connects() {
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = client.local_addr().unwrap();
        let accepted = tokio::spawn(async move { client.accept().await });
        let setup = DataSetup::Active {
            target,
            local_ip: "::ffff:127.0.0.1".parse().unwrap(),
        };
        establish(setup, target.ip(), Duration::from_secs(5), None)
            .await
            .unwrap();
        accepted.await.unwrap().unwrap();
    }
}
