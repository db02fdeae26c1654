//! The in-process event bus. Logs, the xferlog, metrics and later the web UI subscribe to it; front-ends and the
//! session layer only publish.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::session::ClientInfo;

/// Which protocol a session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Ftp,
    Ftps,
    Sftp,
    Scp,
    Ssh,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Ftp => "ftp",
            Protocol::Ftps => "ftps",
            Protocol::Sftp => "sftp",
            Protocol::Scp => "scp",
            Protocol::Ssh => "ssh",
        })
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Login,
    LoginFailed,
    Logout,
    Upload,
    Download,
    Delete,
    Rename,
    Mkdir,
    Rmdir,
    Chmod,
    SetTime,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Login => "login",
            EventKind::LoginFailed => "login-failed",
            EventKind::Logout => "logout",
            EventKind::Upload => "upload",
            EventKind::Download => "download",
            EventKind::Delete => "delete",
            EventKind::Rename => "rename",
            EventKind::Mkdir => "mkdir",
            EventKind::Rmdir => "rmdir",
            EventKind::Chmod => "chmod",
            EventKind::SetTime => "set-time",
        }
    }
}

/// One event. `error` is `None` for a success.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub time: SystemTime,
    pub protocol: Protocol,
    pub session_id: u64,
    pub username: String,
    pub remote_ip: IpAddr,
    pub path: Option<String>,
    /// The new name of a rename.
    pub target: Option<String>,
    /// Bytes moved by a transfer.
    pub bytes: u64,
    pub duration: Duration,
    /// The real file behind `path`, for the xferlog.
    pub real_path: Option<String>,
    pub error: Option<String>,
}

impl Event {
    /// An event of `kind` for `username` on `client`, with no path, no bytes and no error yet.
    pub fn new(kind: EventKind, client: &ClientInfo, username: &str) -> Self {
        Event {
            kind,
            time: SystemTime::now(),
            protocol: client.protocol,
            session_id: client.session_id,
            username: username.to_owned(),
            remote_ip: client.ip,
            path: None,
            target: None,
            bytes: 0,
            duration: Duration::ZERO,
            real_path: None,
            error: None,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// A cloneable handle to the bus. Publishing never blocks; a subscriber that falls behind loses the oldest events
/// and is told how many (`RecvError::Lagged`).
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        EventBus {
            sender: broadcast::channel(capacity).0,
        }
    }

    pub fn publish(&self, event: Event) {
        // No subscriber is not an error: the event simply has no audience.
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}
