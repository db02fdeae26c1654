//! rustls client configuration for FTPS: the system's trust roots (plus `--ca-file`), or a pinned certificate
//! fingerprint, or no verification at all with `--insecure`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, NamedGroup, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::ConnectOptions;

/// Builds the client configuration the options ask for. One configuration serves the control connection and
/// every data connection, so data connections can resume the control connection's TLS session; the returned
/// store holds that configuration's sessions and tells whether one is left to resume.
pub fn client_config(
    options: &ConnectOptions,
) -> Result<(Arc<ClientConfig>, Arc<SessionStore>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if options.insecure || options.tls_fingerprint.is_some() {
        let pin = match &options.tls_fingerprint {
            Some(f) => Some(parse_fingerprint(f)?),
            None => None,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedOrAny { pin, provider }))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let store = Arc::new(SessionStore::default());
    config.resumption = Resumption::store(store.clone());
    Ok((Arc::new(config), store))
}

/// rustls's in-memory session store, counting what it holds: rustls resumes a TLS 1.2 session any number of
/// times but uses each TLS 1.3 ticket once, and a server that requires data connections to resume the control
/// connection's session refuses one that cannot.
#[derive(Debug)]
pub struct SessionStore {
    inner: ClientSessionMemoryCache,
    tls13_tickets: AtomicUsize,
    tls12_session: AtomicBool,
}

/// How many TLS 1.3 tickets rustls's memory cache keeps per server.
const TLS13_TICKETS_KEPT: usize = 8;

impl Default for SessionStore {
    fn default() -> SessionStore {
        SessionStore {
            inner: ClientSessionMemoryCache::new(16),
            tls13_tickets: AtomicUsize::new(0),
            tls12_session: AtomicBool::new(false),
        }
    }
}

impl SessionStore {
    /// Whether a new connection could resume a session (the store serves one server).
    pub fn can_resume(&self) -> bool {
        self.tls12_session.load(Ordering::Relaxed) || self.tls13_tickets.load(Ordering::Relaxed) > 0
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.tls12_session.store(true, Ordering::Relaxed);
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.tls12_session.store(false, Ordering::Relaxed);
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let _ = self
            .tls13_tickets
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some((n + 1).min(TLS13_TICKETS_KEPT))
            });
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(server_name);
        let _ = self
            .tls13_tickets
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(if ticket.is_some() {
                    n.saturating_sub(1)
                } else {
                    0
                })
            });
        ticket
    }
}

/// The SHA-256 fingerprint of a certificate, as `AA:BB:...`.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts `AA:BB:..`, `aabb..` or `SHA256:aabb..`.
fn parse_fingerprint(s: &str) -> Result<Vec<u8>, String> {
    let s = s
        .strip_prefix("SHA256:")
        .or_else(|| s.strip_prefix("sha256:"))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    match hex::decode(&hex) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes),
        _ => Err(format!(
            "--tls-fingerprint {s}: expected a SHA-256 fingerprint (64 hex digits)"
        )),
    }
}

#[derive(Debug)]
struct PinnedOrAny {
    pin: Option<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedOrAny {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            Some(pin) if Sha256::digest(end_entity.as_ref()).as_slice() != pin.as_slice() => {
                Err(rustls::Error::General(format!(
                    "certificate fingerprint {} does not match --tls-fingerprint",
                    fingerprint(end_entity)
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ClientConnection, ServerConfig, ServerConnection};

    /// Moves TLS records both ways until neither side has more to send.
    fn exchange(client: &mut ClientConnection, server: &mut ServerConnection) {
        while client.wants_write() || server.wants_write() {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
    }

    #[test]
    fn the_session_store_tells_when_no_tls13_ticket_is_left() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        server_config.send_tls13_tickets = 2;
        let options = ConnectOptions {
            insecure: true,
            ..ConnectOptions::default()
        };
        let (config, store) = client_config(&options).unwrap();
        assert!(!store.can_resume());
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(config.clone(), name.clone()).unwrap();
        let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
        exchange(&mut client, &mut server);
        assert!(!client.is_handshaking());
        // Two tickets: two connections (each takes one as it says hello) can resume, a third cannot.
        for _ in 0..2 {
            assert!(store.can_resume());
            drop(ClientConnection::new(config.clone(), name.clone()).unwrap());
        }
        assert!(!store.can_resume());
    }

    #[test]
    fn fingerprints_parse_in_common_spellings() {
        let hex64 = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&hex64).unwrap(), vec![0xab; 32]);
        assert_eq!(parse_fingerprint(&colons).unwrap(), vec![0xab; 32]);
        assert_eq!(
            parse_fingerprint(&format!("SHA256:{hex64}")).unwrap(),
            vec![0xab; 32]
        );
        assert!(parse_fingerprint("abcd").is_err());
    }
}
