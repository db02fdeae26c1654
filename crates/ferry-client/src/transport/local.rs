//! The local filesystem as a [`Transport`], so that downloads, uploads and mirrors are all copies between two
//! transports.
//!
//! Symbolic links: `stat` follows a link (the path a user named), listings report links as links, so walks do not
//! enter them and mirrors do not delete through them, and files are opened for writing with `O_NOFOLLOW`.

use std::io::{ErrorKind, SeekFrom};
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{Entry, EntryKind, Sink, Source, Transport};
use crate::checksum::{hash_local_file, HashAlgorithm};
use crate::error::{ClientError, Result};

/// Size of the buffers used to copy local files.
const BUFFER: usize = 256 * 1024;

/// The local filesystem; paths are local paths.
pub struct LocalTransport;

#[async_trait]
impl Transport for LocalTransport {
    fn describe(&self) -> String {
        "local".to_owned()
    }

    fn is_local(&self) -> bool {
        true
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        let mut rd = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| io_error(dir, e))?;
        let mut out = Vec::new();
        while let Some(de) = rd.next_entry().await.map_err(|e| io_error(dir, e))? {
            let name = de.file_name().to_string_lossy().into_owned();
            // A link is listed as a link: a walk must not enter it, nor a mirror delete through it.
            let Ok(meta) = tokio::fs::symlink_metadata(de.path()).await else {
                continue;
            };
            out.push(entry_from(name, &meta));
        }
        Ok(out)
    }

    async fn stat(&mut self, path: &str) -> Result<Option<Entry>> {
        match tokio::fs::metadata(path).await {
            Ok(meta) => {
                let name = Path::new(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.to_owned());
                Ok(Some(entry_from(name, &meta)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(path, e)),
        }
    }

    async fn read(
        &mut self,
        path: &str,
        offset: u64,
        len: Option<u64>,
        sink: Sink<'_>,
    ) -> Result<u64> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| io_error(path, e))?;
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| io_error(path, e))?;
        let mut remaining = len.unwrap_or(u64::MAX);
        let mut buf = vec![0u8; BUFFER];
        let mut total = 0;
        while remaining > 0 {
            let want = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let n = file
                .read(&mut buf[..want])
                .await
                .map_err(|e| io_error(path, e))?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n])
                .await
                .map_err(|e| ClientError::lost(path, e))?;
            total += n as u64;
            remaining -= n as u64;
        }
        sink.flush().await.map_err(|e| ClientError::lost(path, e))?;
        Ok(total)
    }

    async fn write(&mut self, path: &str, offset: u64, source: Source<'_>) -> Result<u64> {
        let mut file = open_at(path, offset).await?;
        let mut buf = vec![0u8; BUFFER];
        let mut total = 0;
        loop {
            let n = source
                .read(&mut buf)
                .await
                .map_err(|e| ClientError::lost(path, e))?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .await
                .map_err(|e| io_error(path, e))?;
            total += n as u64;
        }
        file.flush().await.map_err(|e| io_error(path, e))?;
        file.sync_data().await.map_err(|e| io_error(path, e))?;
        Ok(total)
    }

    async fn remove_file(&mut self, path: &str) -> Result<()> {
        tokio::fs::remove_file(path)
            .await
            .map_err(|e| io_error(path, e))
    }

    async fn remove_dir(&mut self, path: &str) -> Result<()> {
        tokio::fs::remove_dir(path)
            .await
            .map_err(|e| io_error(path, e))
    }

    async fn mkdir(&mut self, path: &str) -> Result<()> {
        tokio::fs::create_dir(path)
            .await
            .map_err(|e| io_error(path, e))
    }

    async fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        tokio::fs::rename(from, to)
            .await
            .map_err(|e| io_error(from, e))
    }

    async fn set_mtime(&mut self, path: &str, mtime: SystemTime) -> Result<bool> {
        let file = write_options()
            .open(path)
            .await
            .map_err(|e| io_error(path, e))?
            .into_std()
            .await;
        tokio::task::spawn_blocking(move || file.set_modified(mtime))
            .await
            .map_err(|e| ClientError::local(path, std::io::Error::other(e)))?
            .map_err(|e| io_error(path, e))?;
        Ok(true)
    }

    async fn checksum_algorithms(&mut self) -> Vec<HashAlgorithm> {
        HashAlgorithm::ALL.to_vec()
    }

    async fn supports_ranged_checksum(&mut self) -> bool {
        true
    }

    async fn checksum(
        &mut self,
        path: &str,
        algorithm: HashAlgorithm,
        range: Option<Range<u64>>,
    ) -> Result<Option<String>> {
        hash_local_file(Path::new(path), algorithm, range)
            .await
            .map(Some)
            .map_err(|e| io_error(path, e))
    }

    async fn close(&mut self) {}
}

/// Opens a file for writing from `offset`: created or truncated at 0, else cut to `offset` and positioned there.
/// A symbolic link at `path` is refused, not followed.
pub async fn open_at(path: &str, offset: u64) -> Result<tokio::fs::File> {
    let mut file = write_options()
        .create(true)
        .truncate(offset == 0)
        .open(path)
        .await
        .map_err(|e| io_error(path, e))?;
    if offset > 0 {
        file.set_len(offset).await.map_err(|e| io_error(path, e))?;
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| io_error(path, e))?;
    }
    Ok(file)
}

/// Opens an existing file for writing at any offset, refusing a symbolic link at `path`.
pub async fn open_existing(path: &str) -> Result<tokio::fs::File> {
    write_options()
        .open(path)
        .await
        .map_err(|e| io_error(path, e))
}

/// The text of a small note file such as a transfer's sidecar (at most [`NOTE_LIMIT`] bytes read); `None` when it
/// is missing, unreadable or a symbolic link.
pub async fn read_note(path: &str) -> Option<String> {
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .await
        .ok()?;
    let mut text = String::new();
    file.take(NOTE_LIMIT).read_to_string(&mut text).await.ok()?;
    Some(text)
}

/// The most of a note file [`read_note`] reads.
pub const NOTE_LIMIT: u64 = 4096;

/// Write access that does not follow a symbolic link in the last component: a link planted as `NAME.part` must not
/// turn a download into a write to the file it points to.
fn write_options() -> tokio::fs::OpenOptions {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).custom_flags(libc::O_NOFOLLOW);
    options
}

fn entry_from(name: String, meta: &std::fs::Metadata) -> Entry {
    use std::os::unix::fs::PermissionsExt;
    let kind = if meta.is_dir() {
        EntryKind::Dir
    } else if meta.is_file() {
        EntryKind::File
    } else if meta.file_type().is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    };
    Entry {
        name,
        kind,
        size: if meta.is_file() { meta.len() } else { 0 },
        mtime: meta.modified().ok(),
        mtime_precision: Duration::from_secs(1),
        mode: Some(meta.permissions().mode() & 0o7777),
    }
}

fn io_error(path: &str, e: std::io::Error) -> ClientError {
    if e.kind() == ErrorKind::NotFound {
        ClientError::NotFound {
            path: path.to_owned(),
        }
    } else {
        ClientError::local(path, e)
    }
}
