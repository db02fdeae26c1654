//! Client errors, each naming the file or server it concerns, and the process exit codes they map to.

use std::io;

/// Every file done.
pub const EXIT_OK: u8 = 0;
/// Some files failed (missing, refused, connection dropped after retries, local disk full, ...).
pub const EXIT_FAILED: u8 = 1;
/// The command line is wrong (unknown scheme, bad URL, bad flag).
pub const EXIT_USAGE: u8 = 2;
/// The server could not be reached, refused the login, or showed an untrusted host key or certificate.
pub const EXIT_CONNECT: u8 = 3;
/// A transferred file did not match the source's checksum or size.
pub const EXIT_VERIFY: u8 = 4;

/// What went wrong, with enough context for a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("login to {target} failed: {reason}")]
    Auth { target: String, reason: String },
    /// The server was reached but cannot be used, and asking again gets the same answer: an untrusted host key
    /// or certificate, TLS not offered.
    #[error("cannot connect to {target}: {reason}")]
    Refused { target: String, reason: String },
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: {reason}")]
    Remote { path: String, reason: String },
    #[error("{path}: {source}")]
    Local { path: String, source: io::Error },
    #[error("{path}: connection lost: {reason}")]
    ConnectionLost { path: String, reason: String },
    #[error("{path}: verification failed: {reason}")]
    Verify { path: String, reason: String },
}

/// Results of the client crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// The exit code for a command that ended with this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => EXIT_USAGE,
            ClientError::Connect { .. }
            | ClientError::Auth { .. }
            | ClientError::Refused { .. } => EXIT_CONNECT,
            ClientError::Verify { .. } => EXIT_VERIFY,
            _ => EXIT_FAILED,
        }
    }

    /// Whether trying again (on a new connection, resuming) may succeed: the server could not be reached, or the
    /// connection broke or timed out, or the server answered "try later" (FTP 4xx). Refused logins, untrusted
    /// keys and certificates, missing files and usage errors are permanent.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::ConnectionLost { .. } | ClientError::Connect { .. }
        )
    }

    /// A local I/O error about `path`.
    pub fn local(path: impl std::fmt::Display, source: io::Error) -> Self {
        ClientError::Local {
            path: path.to_string(),
            source,
        }
    }

    /// A server refusal about `path`.
    pub fn remote(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        ClientError::Remote {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    /// A connection that broke while working on `path`.
    pub fn lost(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        ClientError::ConnectionLost {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The same error about another path (for errors raised below the level that knows the user's name for it).
    pub fn with_path(self, path: &str) -> Self {
        match self {
            ClientError::NotFound { .. } => ClientError::NotFound {
                path: path.to_owned(),
            },
            ClientError::Remote { reason, .. } => ClientError::Remote {
                path: path.to_owned(),
                reason,
            },
            ClientError::Local { source, .. } => ClientError::Local {
                path: path.to_owned(),
                source,
            },
            ClientError::ConnectionLost { reason, .. } => ClientError::ConnectionLost {
                path: path.to_owned(),
                reason,
            },
            ClientError::Verify { reason, .. } => ClientError::Verify {
                path: path.to_owned(),
                reason,
            },
            other => other,
        }
    }
}

/// The exit code for a command whose files ended with these errors: connection failures first, then
/// verification failures, then any other failure.
pub fn exit_code_for<'a>(errors: impl IntoIterator<Item = &'a ClientError>) -> u8 {
    errors
        .into_iter()
        .map(|e| match e.exit_code() {
            EXIT_CONNECT => (3, EXIT_CONNECT),
            EXIT_USAGE => (4, EXIT_USAGE),
            EXIT_VERIFY => (2, EXIT_VERIFY),
            code => (1, code),
        })
        .max_by_key(|(rank, _)| *rank)
        .map_or(EXIT_OK, |(_, code)| code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_prefers_connection_then_verification_failures() {
        let missing = ClientError::NotFound { path: "a".into() };
        let verify = ClientError::Verify {
            path: "b".into(),
            reason: "x".into(),
        };
        let connect = ClientError::Connect {
            target: "h".into(),
            reason: "refused".into(),
        };
        assert_eq!(exit_code_for([]), EXIT_OK);
        assert_eq!(exit_code_for([&missing]), EXIT_FAILED);
        assert_eq!(exit_code_for([&missing, &verify]), EXIT_VERIFY);
        assert_eq!(exit_code_for([&verify, &connect, &missing]), EXIT_CONNECT);
    }
}
