//! One SSH connection: authentication through the core, then each session channel's request (the `sftp`
//! subsystem, an exec command, a shell) handed to a task of its own. Everything else is refused.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::events::Protocol;
use ferry_core::session::Session;
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session as SshSession, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodSet, Pty};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthFailure, Logins, Outcome};
use crate::exec::{self, Command, CommandError};
use crate::scp;
use crate::server::{Shared, AUTH_METHODS};
use crate::sftp;

/// Why a connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error(transparent)]
    Ssh(#[from] russh::Error),
    #[error(transparent)]
    Auth(#[from] AuthFailure),
}

/// What the listener watches of a connection, for its login timeout and for shutdown.
#[derive(Default)]
pub(crate) struct ConnectionState {
    pub authenticated: AtomicBool,
    /// Channels whose request is being served.
    pub running: AtomicUsize,
    /// Cancelled by the listener when the connection has ended.
    pub ended: CancellationToken,
}

/// How long a channel's task may go on after its connection ended, to finish what it was doing.
const CHANNEL_GRACE: Duration = Duration::from_secs(5);

/// Runs a channel's task until it ends, or until [`CHANNEL_GRACE`] after its connection has: russh never wakes a
/// task waiting for window space on a channel whose connection is gone, and such a task would hold its session
/// (and the account's session slot) for ever.
fn spawn_channel<F>(state: &ConnectionState, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let ended = state.ended.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = async {
                ended.cancelled().await;
                tokio::time::sleep(CHANNEL_GRACE).await;
            } => tracing::debug!("channel task ended with its connection"),
        }
    });
}

/// The russh handler of one connection.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    logins: Logins,
    /// The logged-in session, shared by all channels.
    session: Option<Session>,
    state: Arc<ConnectionState>,
    /// Channels opened but not yet given a request.
    pending: HashMap<ChannelId, Channel<Msg>>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>, peer: SocketAddr, state: Arc<ConnectionState>) -> Self {
        Connection {
            logins: Logins::new(shared.core.clone(), peer),
            shared,
            peer,
            session: None,
            state,
            pending: HashMap::new(),
        }
    }

    fn accept(&mut self, outcome: Outcome) -> Auth {
        match outcome {
            Outcome::Accepted(session) => {
                self.session = Some(session);
                Auth::Accept
            }
            Outcome::Refused => refuse(),
        }
    }

    /// Takes a pending channel for its request, with the session that serves it.
    fn take(&mut self, id: ChannelId) -> Option<(Channel<Msg>, Session, RunningGuard)> {
        let channel = self.pending.remove(&id)?;
        let session = self.session.clone()?;
        self.state.running.fetch_add(1, Ordering::AcqRel);
        let guard = RunningGuard(Arc::clone(&self.state));
        Some((channel, session, guard))
    }
}

/// Refuses one login attempt. Both methods stay on offer: russh would otherwise drop a method after its first
/// failure, while the core's failure limit is what decides how many attempts a client gets.
fn refuse() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(AUTH_METHODS)),
        partial_success: false,
    }
}

/// Counts a channel as running until dropped.
struct RunningGuard(Arc<ConnectionState>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl russh::server::Handler for Connection {
    type Error = ConnectionError;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let outcome = self.logins.password(user, password).await?;
        Ok(self.accept(outcome))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            if self.logins.key_acceptable(user, offer.public_key).await {
                Auth::Accept
            } else {
                refuse()
            },
        )
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let outcome = self.logins.key(user, key.public_key).await?;
        Ok(self.accept(outcome))
    }

    async fn auth_succeeded(&mut self, _session: &mut SshSession) -> Result<(), Self::Error> {
        self.state.authenticated.store(true, Ordering::Release);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let open = self.pending.len() + self.state.running.load(Ordering::Acquire);
        if self.session.is_none() || open >= self.shared.config.max_channels {
            tracing::info!(peer = %self.peer, open, "session channel refused");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.pending.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.pending.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let taken = match name {
            "sftp" => self.take(channel),
            _ => None,
        };
        let Some((channel_io, user, guard)) = taken else {
            tracing::info!(peer = %self.peer, subsystem = name, "subsystem refused");
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let limits = self.shared.config.sftp.clone();
        spawn_channel(&self.state, async move {
            let (mut read, write) = channel_io.split();
            let output = write.make_writer();
            sftp::serve(
                user.with_protocol(Protocol::Sftp),
                read.make_reader(),
                output,
                limits,
            )
            .await;
            end_channel(&write, 0).await;
            drop(guard);
        });
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let Some((channel_io, user, guard)) = self.take(channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let command = exec::parse(data);
        let shown: String = String::from_utf8_lossy(data).chars().take(200).collect();
        tracing::info!(peer = %self.peer, user = %user.username(), command = ?shown, "exec");
        spawn_channel(&self.state, async move {
            run_command(user, command, channel_io).await;
            drop(guard);
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let Some((channel_io, user, guard)) = self.take(channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let message = format!(
            "Hi {}! You are logged in to ferry, which offers file transfer (sftp, scp) and the commands md5sum, \
             sha1sum, sha256sum, sha512sum and pwd, but no shell.\r\n",
            user.username()
        );
        spawn_channel(&self.state, async move {
            let (_, write) = channel_io.split();
            let mut stderr = write.make_writer_ext(Some(1));
            let _ = stderr.write_all(message.as_bytes()).await;
            end_channel(&write, exec::EXIT_FAILURE).await;
            drop(guard);
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }
}

/// Runs an exec command on its channel and ends the channel with the command's exit status.
async fn run_command(
    session: Session,
    command: Result<Command, CommandError>,
    channel: Channel<Msg>,
) {
    let (mut read, write) = channel.split();
    let mut stdout = write.make_writer();
    let mut stderr = write.make_writer_ext(Some(1));
    let status = match command {
        Err(e) => {
            let _ = stderr.write_all(format!("ferry: {e}\n").as_bytes()).await;
            match e {
                CommandError::Unsupported(_) => exec::EXIT_NOT_FOUND,
                _ => exec::EXIT_FAILURE,
            }
        }
        Ok(Command::Pwd) => {
            let _ = stdout.write_all(b"/\n").await;
            0
        }
        Ok(Command::Checksum {
            program,
            algorithm,
            files,
        }) => {
            let session = session.with_protocol(Protocol::Ssh);
            let mut stdin = read.make_reader();
            exec::checksum(
                &session,
                program,
                algorithm,
                &files,
                &mut stdin,
                &mut stdout,
                &mut stderr,
            )
            .await
            .unwrap_or(exec::EXIT_FAILURE)
        }
        Ok(Command::Scp(args)) => {
            let session = session.with_protocol(Protocol::Scp);
            let input = BufReader::new(read.make_reader());
            scp::run(&session, &args, input, &mut stdout).await
        }
    };
    let _ = stdout.flush().await;
    end_channel(&write, status).await;
}

async fn end_channel<S>(write: &russh::ChannelWriteHalf<S>, status: u32)
where
    S: From<(ChannelId, russh::ChannelMsg)> + Send + Sync + 'static,
{
    let _ = write.exit_status(status).await;
    let _ = write.eof().await;
    let _ = write.close().await;
}
