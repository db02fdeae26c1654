//! The one mapping from core errors to SFTP status codes.

use ferry_core::error::CoreError;
use russh_sftp::protocol::StatusCode;

/// A request that ends with a status other than OK.
#[derive(Debug)]
pub(crate) struct Status {
    pub code: StatusCode,
    pub message: String,
}

impl Status {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }

    pub fn eof() -> Self {
        Status::new(StatusCode::Eof, "end of file")
    }

    pub fn bad_message(message: impl Into<String>) -> Self {
        Status::new(StatusCode::BadMessage, message)
    }

    pub fn failure(message: impl Into<String>) -> Self {
        Status::new(StatusCode::Failure, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Status::new(StatusCode::OpUnsupported, message)
    }
}

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Self {
        let code = match &e {
            CoreError::NotFound => StatusCode::NoSuchFile,
            CoreError::PermissionDenied(_) | CoreError::AccessDenied => {
                StatusCode::PermissionDenied
            }
            CoreError::Unsupported => StatusCode::OpUnsupported,
            CoreError::InvalidName(_)
            | CoreError::InvalidArgument(_)
            | CoreError::AlreadyExists
            | CoreError::NotADirectory
            | CoreError::IsADirectory
            | CoreError::NotARegularFile
            | CoreError::DirectoryNotEmpty
            | CoreError::QuotaExceeded(_)
            | CoreError::StorageFull
            | CoreError::Aborted
            | CoreError::Store(_)
            | CoreError::Io(_) => StatusCode::Failure,
        };
        if let CoreError::Io(io) = &e {
            tracing::warn!(error = %io, "sftp request failed");
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::account::Permission;

    #[test]
    fn core_errors_map_to_the_codes_clients_understand() {
        let code = |e| Status::from(e).code;
        assert_eq!(code(CoreError::NotFound), StatusCode::NoSuchFile);
        assert_eq!(
            code(CoreError::PermissionDenied(Permission::Upload)),
            StatusCode::PermissionDenied
        );
        assert_eq!(code(CoreError::AccessDenied), StatusCode::PermissionDenied);
        assert_eq!(
            code(CoreError::QuotaExceeded("byte quota reached")),
            StatusCode::Failure
        );
        assert_eq!(code(CoreError::Unsupported), StatusCode::OpUnsupported);
    }
}
