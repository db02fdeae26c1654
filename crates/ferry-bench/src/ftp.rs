//! A minimal FTP/FTPS driver: a control connection, passive data connections, and the handful of commands the
//! scenarios send (USER, PASS, TYPE I, EPSV/PASV, STOR, RETR, MLSD/LIST, MKD, FEAT, QUIT).
//!
//! Written by hand on purpose. A benchmark client shares the machine with the server it measures, so it must do as
//! little as possible per byte and per command (one read buffer per connection, no parsing beyond the reply code,
//! data read into and written from one reused buffer), and it must send exactly the commands a scenario names,
//! with nothing negotiated behind its back (no SYST, no PWD, no OPTS UTF8). A general client library does neither.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use crate::{Error, Result, Scheme, Target};

/// How long one reply, one connect or one data read or write may take before the benchmark gives up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest reply accepted (a FEAT or multi-line greeting is far shorter).
const MAX_REPLY: usize = 64 * 1024;

/// One reply: its code and its full text (all lines).
#[derive(Clone, Debug)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }
}

/// Which listing command to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListCommand {
    Mlsd,
    List,
}

/// What a listing returned.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Listing {
    pub bytes: u64,
    pub lines: u64,
}

/// A TLS client configuration for loopback benchmarks: it accepts any certificate (the servers under test use
/// self-signed ones) and keeps sessions for resumption, which servers such as vsftpd require on data connections.
pub fn tls_config() -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A logged-in (or about to be) control connection.
pub struct Control {
    stream: Stream,
    buf: Vec<u8>,
    source: IpAddr,
    peer: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    use_epsv: bool,
}

impl Control {
    /// Connects from `source`, reads the greeting, and for `ftps://` switches to TLS (`AUTH TLS`).
    pub async fn connect(
        target: &Target,
        source: IpAddr,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<Self> {
        let tcp = connect_from(source, target.addr).await?;
        let mut control = Control {
            stream: Either::Left(tcp),
            buf: Vec::with_capacity(512),
            source,
            peer: target.addr,
            tls: None,
            use_epsv: true,
        };
        control.expect("greeting", &[2]).await?;
        if target.scheme == Scheme::Ftps {
            let config = match tls {
                Some(config) => Arc::clone(config),
                None => tls_config()?,
            };
            control.command("AUTH TLS", &[2]).await?;
            let Either::Left(tcp) = control.stream else {
                return Err(Error::Protocol(
                    "AUTH TLS on a connection that is not plain".into(),
                ));
            };
            let tls = tls_handshake(&config, target.addr, tcp).await?;
            control = Control {
                stream: Either::Right(Box::new(tls)),
                tls: Some(config),
                ..control
            };
        }
        Ok(control)
    }

    /// Connects, logs in, selects binary type, and for FTPS protects the data connections.
    pub async fn open(
        target: &Target,
        source: IpAddr,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<Self> {
        let mut control = Control::connect(target, source, tls).await?;
        control.login(&target.user, &target.password).await?;
        if control.tls.is_some() {
            control.command("PBSZ 0", &[2]).await?;
            control.command("PROT P", &[2]).await?;
        }
        control.command("TYPE I", &[2]).await?;
        Ok(control)
    }

    /// USER then PASS.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<()> {
        let reply = self.command(&format!("USER {user}"), &[2, 3]).await?;
        if reply.code == 331 || reply.class() == 3 {
            self.send(&format!("PASS {password}")).await?;
            self.expect("PASS", &[2]).await?;
        }
        Ok(())
    }

    /// Sends one command and checks the class of its reply (2 for 2xx, ...).
    pub async fn command(&mut self, line: &str, classes: &[u16]) -> Result<Reply> {
        self.send(line).await?;
        self.expect(line, classes).await
    }

    /// The FEAT lines, trimmed.
    pub async fn features(&mut self) -> Result<Vec<String>> {
        let reply = self.command("FEAT", &[2, 5]).await?;
        Ok(reply
            .text
            .lines()
            .skip(1)
            .map(|l| l.trim().to_owned())
            .collect())
    }

    /// MKD, accepting "already exists".
    pub async fn make_dir(&mut self, path: &str) -> Result<()> {
        self.command(&format!("MKD {path}"), &[2, 5])
            .await
            .map(drop)
    }

    /// DELE, accepting a refusal.
    pub async fn remove_if_present(&mut self, path: &str) -> Result<()> {
        self.command(&format!("DELE {path}"), &[2, 5])
            .await
            .map(drop)
    }

    /// Uploads `size` bytes to `path`, writing `chunk` over and over.
    pub async fn store(&mut self, path: &str, size: u64, chunk: &[u8]) -> Result<()> {
        let tcp = self.open_data().await?;
        let command = format!("STOR {path}");
        self.command(&command, &[1]).await?;
        let mut data = self.secure_data(tcp).await?;
        let mut left = size;
        while left > 0 {
            let n = chunk.len().min(left as usize);
            timed("data write", data.write_all(&chunk[..n])).await?;
            left -= n as u64;
        }
        timed("data close", data.shutdown()).await?;
        // Wait for the server to close its side too (with TLS, after its close_notify): closing first would reset
        // the connection under a server still finishing its TLS shutdown, which vsftpd reports as a failed upload.
        let mut rest = [0u8; 512];
        while let Ok(n) = timed("data close", data.read(&mut rest)).await {
            if n == 0 {
                break;
            }
        }
        drop(data);
        self.expect(&command, &[2]).await.map(drop)
    }

    /// Downloads `path`, reading into `buf`, and returns its size.
    pub async fn retrieve(&mut self, path: &str, buf: &mut [u8]) -> Result<u64> {
        let tcp = self.open_data().await?;
        let command = format!("RETR {path}");
        self.command(&command, &[1]).await?;
        let mut data = self.secure_data(tcp).await?;
        let mut total = 0u64;
        loop {
            let n = timed("data read", data.read(buf)).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        drop(data);
        self.expect(&command, &[2]).await?;
        Ok(total)
    }

    /// Lists `path` with MLSD or LIST, counting bytes and lines, reading into `buf`.
    pub async fn list(
        &mut self,
        command: ListCommand,
        path: &str,
        buf: &mut [u8],
    ) -> Result<Listing> {
        let tcp = self.open_data().await?;
        let verb = match command {
            ListCommand::Mlsd => "MLSD",
            ListCommand::List => "LIST",
        };
        let line = if path.is_empty() {
            verb.to_owned()
        } else {
            format!("{verb} {path}")
        };
        self.command(&line, &[1]).await?;
        let mut data = self.secure_data(tcp).await?;
        let mut listing = Listing::default();
        loop {
            let n = timed("data read", data.read(buf)).await?;
            if n == 0 {
                break;
            }
            listing.bytes += n as u64;
            listing.lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        drop(data);
        self.expect(&line, &[2]).await?;
        Ok(listing)
    }

    /// QUIT, ignoring what the server says.
    pub async fn quit(mut self) {
        if self.send("QUIT").await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.read_reply()).await;
        }
    }

    /// Asks for a passive data connection (EPSV, or PASV where EPSV is refused) and connects to it from the same
    /// source address as the control connection (servers check that). With FTPS, the TLS handshake follows the
    /// transfer command's preliminary reply ([`Control::secure_data`]), as servers expect.
    async fn open_data(&mut self) -> Result<TcpStream> {
        let port = if self.use_epsv {
            self.send("EPSV").await?;
            let reply = self.read_reply().await?;
            match reply.class() {
                2 => Some(parse_epsv(&reply.text).ok_or_else(|| bad_reply("EPSV", &reply))?),
                _ => {
                    self.use_epsv = false;
                    None
                }
            }
        } else {
            None
        };
        let port = match port {
            Some(port) => port,
            None => {
                let reply = self.command("PASV", &[2]).await?;
                parse_pasv(&reply.text).ok_or_else(|| bad_reply("PASV", &reply))?
            }
        };
        connect_from(self.source, SocketAddr::new(self.peer.ip(), port)).await
    }

    /// The data connection, with TLS when the control connection has it.
    async fn secure_data(&self, tcp: TcpStream) -> Result<Stream> {
        match &self.tls {
            None => Ok(Either::Left(tcp)),
            Some(config) => Ok(Either::Right(Box::new(
                tls_handshake(config, self.peer, tcp).await?,
            ))),
        }
    }

    async fn send(&mut self, line: &str) -> Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        timed("control write", self.stream.write_all(&bytes)).await?;
        Ok(())
    }

    async fn expect(&mut self, command: &str, classes: &[u16]) -> Result<Reply> {
        let reply = self.read_reply().await?;
        if classes.contains(&reply.class()) {
            Ok(reply)
        } else {
            Err(bad_reply(command, &reply))
        }
    }

    /// Reads one complete reply; a preliminary `120` greeting is skipped.
    async fn read_reply(&mut self) -> Result<Reply> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf) {
                self.buf.drain(..used);
                if reply.code == 120 {
                    continue;
                }
                return Ok(reply);
            }
            if self.buf.len() > MAX_REPLY {
                return Err(Error::Protocol("reply longer than 64 KiB".into()));
            }
            let mut chunk = [0u8; 1024];
            let n = timed("control read", self.stream.read(&mut chunk)).await?;
            if n == 0 {
                return Err(Error::Protocol(
                    "the server closed the control connection".into(),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Parses one complete reply from the start of `buf`: `ddd text` or `ddd-text ... ddd text`. Returns it and how
/// many bytes it used, or `None` while incomplete.
pub fn parse_reply(buf: &[u8]) -> Option<(Reply, usize)> {
    let mut start = 0;
    let mut code: Option<u16> = None;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        let line_end = start + nl + 1;
        let digits = line
            .get(..3)
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u16>().ok());
        let separator = line.get(3).copied();
        match (code, digits) {
            (None, Some(c)) if separator == Some(b'-') => code = Some(c),
            (None, Some(c)) => return Some((reply(c, &buf[..line_end]), line_end)),
            (None, None) => return Some((reply(0, &buf[..line_end]), line_end)),
            (Some(c), Some(d)) if c == d && separator != Some(b'-') => {
                return Some((reply(c, &buf[..line_end]), line_end));
            }
            _ => {}
        }
        start = line_end;
    }
    None
}

fn reply(code: u16, text: &[u8]) -> Reply {
    Reply {
        code,
        text: String::from_utf8_lossy(text).trim_end().to_owned(),
    }
}

/// The port of `229 Entering Extended Passive Mode (|||6446|)`.
pub fn parse_epsv(text: &str) -> Option<u16> {
    let inner = &text[text.find('(')? + 1..text.rfind(')')?];
    let delimiter = inner.chars().next()?;
    inner.split(delimiter).nth(3)?.parse().ok()
}

/// The port of `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`; the address is ignored (the control connection's
/// peer is used, as modern clients do).
pub fn parse_pasv(text: &str) -> Option<u16> {
    let after_code = text.get(4..)?;
    let start = after_code.find(|c: char| c.is_ascii_digit())?;
    let numbers = &after_code[start..];
    let end = numbers
        .find(|c: char| !(c.is_ascii_digit() || c == ','))
        .unwrap_or(numbers.len());
    let parts: Vec<u16> = numbers[..end]
        .split(',')
        .map(str::parse::<u16>)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    match parts.as_slice() {
        [_, _, _, _, p1, p2] if *p1 < 256 && *p2 < 256 => Some(p1 * 256 + p2),
        _ => None,
    }
}

fn bad_reply(command: &str, reply: &Reply) -> Error {
    let command = if command.starts_with("PASS ") {
        "PASS ***"
    } else {
        command
    };
    Error::Reply {
        command: command.to_owned(),
        reply: reply.text.clone(),
    }
}

/// A TCP connection to `to` from `from` (port chosen by the kernel), with Nagle off.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Choose the port at connect time, unique per 4-tuple, rather than at bind time, unique per address: with
    // many connections in TIME_WAIT, a bind to port 0 runs out of ports long before the 4-tuples run out.
    let enable: libc::c_int = 1;
    // SAFETY: setsockopt reads `enable` (a c_int, as the option expects) for the given length only.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 && to.is_ipv4() {
        return Err(io::Error::last_os_error().into());
    }
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = timed("connect", socket.connect(to)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn tls_handshake(
    config: &Arc<ClientConfig>,
    peer: SocketAddr,
    tcp: TcpStream,
) -> Result<TlsStream<BufReader<TcpStream>>> {
    let name = ServerName::IpAddress(peer.ip().into());
    // rustls reads at most 4 KiB at a time from what it is given: through a buffer, a TLS download costs one
    // system call per 64 KiB instead of one per 4 KiB, so the load generator's reads do not hold servers back.
    let tcp = BufReader::with_capacity(64 * 1024, tcp);
    let stream = timed(
        "TLS handshake",
        TlsConnector::from(Arc::clone(config)).connect(name, tcp),
    )
    .await?;
    Ok(stream)
}

/// Runs `io` with [`IO_TIMEOUT`].
async fn timed<T>(what: &str, io: impl std::future::Future<Output = io::Result<T>>) -> Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, io).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::Timeout(what.to_owned())),
    }
}

/// A control or data connection, plain or TLS.
type Stream = Either<TcpStream, Box<TlsStream<BufReader<TcpStream>>>>;

/// Accepts every certificate: the targets are loopback servers with self-signed certificates, and the benchmark
/// measures them, it does not trust them with anything.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_reply() {
        let (reply, used) = parse_reply(b"230 Login successful.\r\nrest").unwrap();
        assert_eq!(reply.code, 230);
        assert_eq!(reply.text, "230 Login successful.");
        assert_eq!(used, 23);
    }

    #[test]
    fn multi_line_reply_ends_at_the_same_code_with_a_space() {
        let text = b"211-Features:\r\n MLST type*;size*;\r\n211-inner\r\n UTF8\r\n211 End\r\n";
        let (reply, used) = parse_reply(text).unwrap();
        assert_eq!(reply.code, 211);
        assert_eq!(used, text.len());
        assert!(reply.text.contains("UTF8"));
    }

    #[test]
    fn incomplete_replies_wait_for_more() {
        assert!(parse_reply(b"230 Login succ").is_none());
        assert!(parse_reply(b"211-Features:\r\n UTF8\r\n").is_none());
    }

    #[test]
    fn passive_ports() {
        assert_eq!(
            parse_epsv("229 Entering Extended Passive Mode (|||6446|)"),
            Some(6446)
        );
        assert_eq!(parse_epsv("229 ok (!!!51000!)"), Some(51000));
        assert_eq!(parse_epsv("229 nonsense"), None);
        assert_eq!(
            parse_pasv("227 Entering Passive Mode (127,0,0,1,195,80)."),
            Some(50000)
        );
        assert_eq!(
            parse_pasv("227 Entering Passive Mode (127,0,0,1,300,80)"),
            None
        );
        assert_eq!(parse_pasv("227 =127,0,0,1,4,1"), Some(1025));
        assert_eq!(parse_pasv("227 Entering Passive Mode"), None);
    }
}
