//! TLS for control and data connections (RFC 4217), with rustls. Control and data connections share one
//! `ServerConfig`, and so one session cache: a data connection can resume the control connection's TLS session,
//! as FileZilla and other GnuTLS-based clients require.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read certificate {path}: {source}")]
    Certificate {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot read private key {path}: {source}")]
    Key {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS configurations of one FTP server: one for control connections and one for data connections, sharing
/// the session cache, the ticket keys (so that a data connection can resume the control connection's session) and
/// the certificate.
#[derive(Clone)]
pub struct TlsConfigs {
    pub control: Arc<ServerConfig>,
    /// Sends no TLS 1.3 session tickets: an uploading client never reads its data connection, and unread tickets
    /// in its receive buffer make its close a reset that can destroy the end of the upload.
    pub data: Arc<ServerConfig>,
    /// What both present; [`ServerCertificate::reload`] replaces it for the handshakes that follow.
    pub certificate: Arc<ServerCertificate>,
}

/// Server TLS configurations from PEM files (certificate chain and private key).
pub fn server_configs(cert: &Path, key: &Path) -> Result<TlsConfigs, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate = Arc::new(ServerCertificate {
        current: RwLock::new(load_certified_key(cert, key, &provider)?),
        provider: provider.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    // Stateless tickets stay valid for several resumptions (stateful TLS 1.3 tickets are single-use), so every data
    // connection of a session can resume the control connection's session.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    let mut data = config.clone();
    data.send_tls13_tickets = 0;
    Ok(TlsConfigs {
        control: Arc::new(config),
        data: Arc::new(data),
        certificate,
    })
}

/// The certificate chain and key the server presents, replaceable while it runs (a renewed certificate): handshakes
/// that start after [`ServerCertificate::reload`] present the new one, connections already up keep theirs, and
/// sessions resumed from before the reload stay valid.
#[derive(Debug)]
pub struct ServerCertificate {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCertificate {
    /// Reads `cert` and `key` again and presents them from the next handshake on. Reads files: call it off the
    /// runtime. On any error (unreadable, not PEM, no certificate, a key that does not match the certificate) the
    /// current certificate stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsConfigError> {
        let loaded = load_certified_key(cert, key, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A certificate chain and its private key from PEM files, checked to belong together.
fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsConfigError::Certificate {
            path: cert.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Certificate {
            path: cert.display().to_string(),
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsConfigError::Key {
        path: key.display().to_string(),
        source,
    })?;
    Ok(Arc::new(CertifiedKey::from_der(certs, key, provider)?))
}

/// Bytes a TLS data connection reads from its socket at once. rustls asks its reader for at most 4 KiB at a time,
/// so a TLS upload read straight from the socket made about one system call per 4 KiB; through this buffer, one per
/// 64 KiB at most (a 256 MiB FTPS STOR: 16,529 `recvfrom` calls before, 4,124 after; 1 GiB, alternating runs:
/// 912-995 -> 1,001-1,108 MiB/s in one set, level within the noise in another). Only data connections have it:
/// they are few and short-lived, while a TLS control connection would hold it for as long as its session idles.
const DATA_READ_BUFFER: usize = 64 * 1024;

/// A TCP stream, in the clear or inside TLS.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// A TLS data connection, read through [`DATA_READ_BUFFER`].
    TlsData(Box<TlsStream<BufReader<TcpStream>>>),
    /// Taken out during a TLS upgrade that failed; every operation fails.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl MaybeTls {
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_) | MaybeTls::TlsData(_))
    }

    /// Accepts TLS on a data connection.
    pub async fn accept_data(
        acceptor: &tokio_rustls::TlsAcceptor,
        tcp: TcpStream,
    ) -> io::Result<MaybeTls> {
        let tls = acceptor
            .accept(BufReader::with_capacity(DATA_READ_BUFFER, tcp))
            .await?;
        Ok(MaybeTls::TlsData(Box::new(tls)))
    }

    /// The TCP connection underneath, unless closed.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTls::Plain(tcp) => Some(tcp),
            MaybeTls::Tls(tls) => Some(tls.get_ref().0),
            MaybeTls::TlsData(tls) => Some(tls.get_ref().0.get_ref()),
            MaybeTls::Closed => None,
        }
    }

    /// Whether the TLS handshake resumed an earlier session.
    pub fn resumed_session(&self) -> bool {
        let kind = match self {
            MaybeTls::Plain(_) | MaybeTls::Closed => return false,
            MaybeTls::Tls(tls) => tls.get_ref().1.handshake_kind(),
            MaybeTls::TlsData(tls) => tls.get_ref().1.handshake_kind(),
        };
        kind == Some(rustls::HandshakeKind::Resumed)
    }

    /// Replaces a plain stream by its TLS upgrade (AUTH TLS). On failure the stream is closed.
    pub async fn upgrade(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
        wait: std::time::Duration,
    ) -> io::Result<()> {
        let MaybeTls::Plain(tcp) = std::mem::replace(self, MaybeTls::Closed) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "already TLS"));
        };
        let tls = tokio::time::timeout(wait, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        *self = MaybeTls::Tls(Box::new(tls));
        Ok(())
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::TlsData(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::TlsData(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::TlsData(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::TlsData(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A self-signed certificate for `name` and its key, as PEM files in `dir`; with the certificate's DER.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        (cert, key, generated.cert.der().clone())
    }

    #[test]
    fn a_reload_presents_the_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, first) = write_pair(dir.path(), "first.example");
        let configs = server_configs(&cert, &key).unwrap();
        assert_eq!(configs.certificate.current().cert, vec![first]);

        let (cert, key, second) = write_pair(dir.path(), "second.example");
        configs.certificate.reload(&cert, &key).unwrap();
        assert_eq!(configs.certificate.current().cert, vec![second]);
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, first) = write_pair(dir.path(), "first.example");
        let (other_cert, other_key, _) = write_pair(dir.path(), "other.example");
        let configs = server_configs(&cert, &key).unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");

        let attempts = [
            (&cert, &other_key, "key of another certificate"),
            (&other_cert, &key, "certificate of another key"),
            (&missing, &key, "missing certificate"),
            (&cert, &missing, "missing key"),
            (&garbage, &key, "no certificate in the file"),
            (&key, &key, "a key file given as the certificate"),
            (&cert, &garbage, "no key in the file"),
        ];
        for (cert, key, what) in attempts {
            let e = configs.certificate.reload(cert, key);
            assert!(e.is_err(), "{what}: reloaded");
            assert_eq!(
                configs.certificate.current().cert,
                vec![first.clone()],
                "{what}"
            );
        }
        let e = server_configs(&other_cert, &key).err().unwrap();
        assert!(e.to_string().contains("invalid certificate or key"), "{e}");
    }
}
