//! Logins over SSH: passwords and public keys checked by the core, with failed attempts counted and slowed down
//! exactly as for FTP (the core's `failed_login_delay` and `max_login_failures`).

use std::net::SocketAddr;

use ferry_core::account::canonical_ip;
use ferry_core::auth::AuthError;
use ferry_core::events::Protocol;
use ferry_core::server::{LoginError, ServerCore};
use ferry_core::session::{ClientInfo, Session};
use russh::keys::PublicKey;

/// Why a connection is closed during authentication.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthFailure {
    #[error("too many failed logins")]
    TooManyFailures,
}

/// How one login attempt ended.
pub(crate) enum Outcome {
    Accepted(Session),
    Refused,
}

/// The login state of one connection.
pub(crate) struct Logins {
    core: ServerCore,
    peer: SocketAddr,
    failures: u32,
}

impl Logins {
    pub(crate) fn new(core: ServerCore, peer: SocketAddr) -> Self {
        Logins {
            core,
            peer,
            failures: 0,
        }
    }

    fn client(&self) -> ClientInfo {
        ClientInfo::new(Protocol::Ssh, canonical_ip(self.peer.ip()))
    }

    pub(crate) async fn password(
        &mut self,
        user: &str,
        password: &str,
    ) -> Result<Outcome, AuthFailure> {
        let result = self.core.login(user, password, &self.client()).await;
        self.outcome(user, "password", result).await
    }

    /// A public-key login; russh has already verified the client's signature.
    pub(crate) async fn key(
        &mut self,
        user: &str,
        key: &PublicKey,
    ) -> Result<Outcome, AuthFailure> {
        let Ok(key) = key.to_openssh() else {
            return Ok(Outcome::Refused);
        };
        let result = self.core.login_with_key(user, &key, &self.client()).await;
        self.outcome(user, "publickey", result).await
    }

    /// Whether `key` would be accepted for `user`, asked before the client signs anything. Not a login attempt. A
    /// key of the account offered from an address its rules refuse is taken here, so that the signed attempt that
    /// follows fails as a login and counts against the failure limits.
    pub(crate) async fn key_acceptable(&self, user: &str, key: &PublicKey) -> bool {
        let Ok(key) = key.to_openssh() else {
            return false;
        };
        let ip = canonical_ip(self.peer.ip());
        matches!(
            self.core
                .authenticator()
                .verify_public_key(user, &key, ip)
                .await,
            Ok(_) | Err(AuthError::AddressNotAllowed(_))
        )
    }

    async fn outcome(
        &mut self,
        user: &str,
        method: &str,
        result: Result<Session, LoginError>,
    ) -> Result<Outcome, AuthFailure> {
        let peer = self.peer;
        match result {
            Ok(session) => {
                tracing::info!(%peer, user, method, "logged in");
                self.failures = 0;
                Ok(Outcome::Accepted(session))
            }
            Err(LoginError::Limit(e)) => {
                tracing::info!(%peer, user, error = %e, "login refused");
                Ok(Outcome::Refused)
            }
            Err(LoginError::Home(e)) => {
                tracing::error!(%peer, user, error = %e, "cannot open home directory");
                Ok(Outcome::Refused)
            }
            Err(LoginError::Auth(e)) => {
                self.failures += 1;
                tracing::warn!(%peer, user, method, error = %e, failures = self.failures, "login failed");
                let limits = self.core.limits();
                tokio::time::sleep(limits.failed_login_delay).await;
                if limits.too_many_login_failures(self.failures) {
                    Err(AuthFailure::TooManyFailures)
                } else {
                    Ok(Outcome::Refused)
                }
            }
        }
    }
}
