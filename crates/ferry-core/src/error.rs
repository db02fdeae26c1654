//! The errors every session operation can return. Each front-end maps them to its protocol's replies in one place.

use std::io;

use crate::account::Permission;
use crate::storage::NotARegularFile;

/// Why an operation on a session failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("no such file or directory")]
    NotFound,
    #[error("permission denied: {0} not allowed here")]
    PermissionDenied(Permission),
    #[error("access denied")]
    AccessDenied,
    #[error("already exists")]
    AlreadyExists,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("not a regular file")]
    NotARegularFile,
    #[error("directory not empty")]
    DirectoryNotEmpty,
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("quota exceeded: {0}")]
    QuotaExceeded(&'static str),
    #[error("no space left on device")]
    StorageFull,
    #[error("not supported by this storage")]
    Unsupported,
    #[error("transfer aborted")]
    Aborted,
    #[error("account store: {0}")]
    Store(String),
    #[error("i/o error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for CoreError {
    fn from(e: io::Error) -> Self {
        use io::ErrorKind as K;
        if e.get_ref()
            .is_some_and(|inner| inner.is::<NotARegularFile>())
        {
            return CoreError::NotARegularFile;
        }
        match e.kind() {
            K::NotFound => CoreError::NotFound,
            // cap-std reports an escape attempt (absolute symlink, `..` beyond the root) as PermissionDenied.
            K::PermissionDenied => CoreError::AccessDenied,
            K::AlreadyExists => CoreError::AlreadyExists,
            K::NotADirectory => CoreError::NotADirectory,
            K::IsADirectory => CoreError::IsADirectory,
            K::DirectoryNotEmpty => CoreError::DirectoryNotEmpty,
            K::StorageFull | K::QuotaExceeded => CoreError::StorageFull,
            K::InvalidFilename => CoreError::InvalidName(e.to_string()),
            _ => match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::EXDEV) => CoreError::AccessDenied,
                Some(libc::ENAMETOOLONG) => CoreError::InvalidName("name too long".into()),
                _ => CoreError::Io(e),
            },
        }
    }
}

pub type CoreResult<T> = Result<T, CoreError>;
