//! [`ServerCore`]: the shared state of a running server (accounts, limits, quotas, events, shutdown), from which
//! each front-end takes connection slots and opens sessions.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::account::{Account, AccountStore};
use crate::auth::{AuthError, Authenticator};
use crate::error::CoreError;
use crate::events::{Event, EventBus, EventKind};
use crate::limits::{ConnectionLimiter, ConnectionSlot, FailureThrottle, LimitError, Limits};
use crate::quota::{QuotaRegistry, QuotaTracker};
use crate::registry::MadeOnce;
use crate::session::{ClientInfo, Session, SessionParts};
use crate::storage::local::LocalStorage;
use crate::transfer::UploadMode;

/// Server-wide settings that apply to every protocol.
#[derive(Clone, Debug, Default)]
pub struct ServerSettings {
    pub limits: Limits,
    pub upload_mode: UploadMode,
}

/// Why a login did not produce a session.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("cannot open the home directory: {0}")]
    Home(#[from] CoreError),
}

/// Shared server state. Cheap to clone.
#[derive(Clone)]
pub struct ServerCore {
    inner: Arc<CoreInner>,
}

struct CoreInner {
    auth: Authenticator,
    events: EventBus,
    limiter: ConnectionLimiter,
    failures: FailureThrottle,
    quotas: QuotaRegistry,
    homes: MadeOnce<PathBuf, LocalStorage>,
    settings: ServerSettings,
    shutdown: watch::Sender<bool>,
}

impl ServerCore {
    pub fn new(auth: Authenticator, events: EventBus, settings: ServerSettings) -> Self {
        let inner = CoreInner {
            auth,
            events,
            limiter: ConnectionLimiter::default(),
            failures: FailureThrottle::default(),
            quotas: QuotaRegistry::default(),
            homes: MadeOnce::default(),
            settings,
            shutdown: watch::Sender::new(false),
        };
        ServerCore {
            inner: Arc::new(inner),
        }
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.auth
    }

    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.settings.limits
    }

    pub fn store(&self) -> &Arc<dyn AccountStore> {
        self.inner.auth.store()
    }

    /// Takes a connection slot for a new client, or says which cap refuses it.
    pub fn connect(&self, ip: IpAddr) -> Result<ConnectionSlot, LimitError> {
        self.inner.limiter.connect(ip, &self.inner.settings.limits)
    }

    /// Live connections, over all front-ends.
    pub fn connections(&self) -> usize {
        self.inner.limiter.connections()
    }

    /// Verifies the credentials and opens a session in the account's home. Publishes `login` or `login-failed`.
    /// A client address with too many failed passwords of late is refused before its password is looked at.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: &ClientInfo,
    ) -> Result<Session, LoginError> {
        let limits = &self.inner.settings.limits;
        let result = async {
            self.inner.failures.check(client.ip, limits)?;
            let account = self
                .inner
                .auth
                .verify_password(username, password, client.ip)
                .await?;
            let anonymous = self.inner.auth.is_anonymous(username);
            self.open_session(account, anonymous, client).await
        }
        .await;
        if let Err(LoginError::Auth(AuthError::InvalidCredentials)) = result {
            self.inner.failures.record_failure(client.ip, limits);
        }
        self.publish_failure(username, client, &result);
        result
    }

    /// Logs in with a public key whose possession the protocol has verified (see
    /// [`Authenticator::verify_public_key`]), like [`ServerCore::login`] does with a password.
    pub async fn login_with_key(
        &self,
        username: &str,
        key: &str,
        client: &ClientInfo,
    ) -> Result<Session, LoginError> {
        let result = async {
            let account = self
                .inner
                .auth
                .verify_public_key(username, key, client.ip)
                .await?;
            self.open_session(account, false, client).await
        }
        .await;
        self.publish_failure(username, client, &result);
        result
    }

    fn publish_failure(
        &self,
        username: &str,
        client: &ClientInfo,
        result: &Result<Session, LoginError>,
    ) {
        if let Err(e) = result {
            let mut event = Event::new(EventKind::LoginFailed, client, username);
            event.error = Some(e.to_string());
            self.inner.events.publish(event);
        }
    }

    /// Takes the account's session slot and opens its home.
    async fn open_session(
        &self,
        account: Arc<Account>,
        anonymous: bool,
        client: &ClientInfo,
    ) -> Result<Session, LoginError> {
        let slot = self
            .inner
            .limiter
            .login(&account.name, account.max_sessions)?;
        let storage = self.home_storage(&account.home).await?;
        let (quota, store) = if anonymous {
            (Arc::new(QuotaTracker::unlimited()), None)
        } else {
            let store = Arc::clone(self.store());
            (
                self.inner.quotas.tracker(&account, &*store).await?,
                Some(store),
            )
        };
        Ok(Session::new(SessionParts {
            account,
            client: client.clone(),
            storage,
            quota,
            store,
            events: self.inner.events.clone(),
            upload_mode: self.inner.settings.upload_mode,
            slot: Some(slot),
        }))
    }

    /// The storage of a home, shared by all its sessions: an idle session holds no descriptor of its own.
    async fn home_storage(&self, home: &Path) -> Result<Arc<LocalStorage>, CoreError> {
        let storage = self
            .inner
            .homes
            .get_or_try_make(home, || LocalStorage::open(home))
            .await?;
        Ok(storage)
    }

    /// Tells every front-end to stop accepting and to close idle sessions.
    pub fn shut_down(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// A signal that fires when the server shuts down.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.inner.shutdown.subscribe())
    }
}

/// Fires once the server starts shutting down.
pub struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    /// Waits until shutdown has begun (returns at once if it already has).
    pub async fn wait(&mut self) {
        // The sender lives as long as the core; an error can only mean it is gone, which is a shutdown too.
        let _ = self.0.wait_for(|down| *down).await;
    }
}
