//! Uploads and downloads in progress. An [`Upload`] reserves quota for every chunk before writing it, so an upload
//! is cut off at the quota instead of overrunning it; both publish their event when they end, however they end.

use std::fmt;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{CoreError, CoreResult};
use crate::events::EventKind;
use crate::session::Session;
use crate::storage::{FileReader, FileWriter};
use crate::vpath::VirtualPath;

/// How uploads that start from zero reach their final name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UploadMode {
    /// Write the file in place.
    #[default]
    Direct,
    /// Write to a temporary name in the same directory and rename into place on success. If a new file's upload
    /// breaks off, the partial data is moved to the final name so that the client can resume it; an existing
    /// file is never replaced by a partial one.
    Atomic,
}

/// Where an atomic upload is written until it completes.
pub(crate) struct TempTarget {
    pub temp: VirtualPath,
    /// Whether a file existed at the final name when the upload started, and its size.
    pub replaced_size: Option<u64>,
}

/// An upload in progress. End it with [`Upload::finish`] or [`Upload::fail`]; if it is dropped instead, it is
/// recorded as failed in the background.
pub struct Upload {
    state: Option<UploadState>,
}

struct UploadState {
    session: Session,
    writer: Box<dyn FileWriter>,
    path: VirtualPath,
    temp: Option<TempTarget>,
    position: u64,
    /// The file's length as far as this upload knows it.
    size: u64,
    /// Net change of stored bytes caused by this upload (truncation counts negative).
    bytes_delta: i64,
    files_delta: i64,
    transferred: u64,
    started: Instant,
}

pub(crate) struct UploadParts {
    pub session: Session,
    pub writer: Box<dyn FileWriter>,
    pub path: VirtualPath,
    pub temp: Option<TempTarget>,
    pub position: u64,
    pub size: u64,
    pub bytes_delta: i64,
    pub files_delta: i64,
}

impl Upload {
    pub(crate) fn new(p: UploadParts) -> Self {
        Upload {
            state: Some(UploadState {
                session: p.session,
                writer: p.writer,
                path: p.path,
                temp: p.temp,
                position: p.position,
                size: p.size,
                bytes_delta: p.bytes_delta,
                files_delta: p.files_delta,
                transferred: 0,
                started: Instant::now(),
            }),
        }
    }

    /// The final path of the file.
    pub fn path(&self) -> Option<&VirtualPath> {
        self.state.as_ref().map(|s| &s.path)
    }

    /// Bytes written so far.
    pub fn transferred(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.transferred)
    }

    /// Writes `data` at the current position, after reserving any growth of the file against the quota.
    pub async fn write(&mut self, data: &[u8]) -> CoreResult<()> {
        let s = self.state.as_mut().ok_or(CoreError::Aborted)?;
        let end = s.position + data.len() as u64;
        let growth = end.saturating_sub(s.size);
        if growth > 0 {
            s.session.quota().reserve_bytes(growth)?;
        }
        if let Err(e) = s.writer.write_all(data).await {
            s.session.quota().release_bytes(growth);
            return Err(e.into());
        }
        s.position = end;
        s.size = s.size.max(end);
        s.bytes_delta += growth as i64;
        s.transferred += data.len() as u64;
        Ok(())
    }

    /// Completes the upload: flushes, moves an atomic upload into place, records usage and the event.
    pub async fn finish(mut self) -> CoreResult<u64> {
        let Some(mut s) = self.state.take() else {
            return Err(CoreError::Aborted);
        };
        let result = complete(&mut s).await;
        let transferred = s.transferred;
        let error = result.as_ref().err().map(ToString::to_string);
        record(s, error).await;
        result.map(|()| transferred)
    }

    /// Ends the upload as failed because of `reason`, keeping what was written (see [`UploadMode::Atomic`]).
    pub async fn fail(mut self, reason: impl fmt::Display) {
        if let Some(s) = self.state.take() {
            fail_upload(s, reason.to_string()).await;
        }
    }
}

async fn complete(s: &mut UploadState) -> CoreResult<()> {
    s.writer.shutdown().await?;
    if let Some(temp) = s.temp.take() {
        s.session
            .storage()
            .rename(temp.temp.relative(), s.path.relative())
            .await?;
        if let Some(old) = temp.replaced_size {
            s.session.quota().release_bytes(old);
            s.bytes_delta -= old as i64;
        }
    }
    Ok(())
}

async fn fail_upload(mut s: UploadState, error: String) {
    let _ = s.writer.shutdown().await;
    if let Some(temp) = s.temp.take() {
        let storage = s.session.storage();
        let kept = match temp.replaced_size {
            // A new file: keep the partial data under the final name so that the client can resume.
            None => storage
                .rename(temp.temp.relative(), s.path.relative())
                .await
                .is_ok(),
            Some(_) => false,
        };
        if !kept && storage.remove_file(temp.temp.relative()).await.is_ok() {
            s.session.quota().release_bytes(s.size);
            s.bytes_delta -= s.size as i64;
            if s.files_delta > 0 {
                s.session.quota().release_file();
                s.files_delta -= 1;
            }
        }
    }
    record(s, Some(error)).await;
}

async fn record(s: UploadState, error: Option<String>) {
    s.session.persist_usage(s.bytes_delta, s.files_delta).await;
    s.session.publish_transfer(
        EventKind::Upload,
        &s.path,
        s.transferred,
        s.started.elapsed(),
        error,
    );
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(fail_upload(s, CoreError::Aborted.to_string()));
            }
        }
    }
}

/// A download in progress. End it with [`Download::finish`] or [`Download::fail`]; if dropped, it is recorded
/// as failed.
pub struct Download {
    session: Session,
    reader: Box<dyn FileReader>,
    path: VirtualPath,
    size: u64,
    transferred: u64,
    started: Instant,
    done: bool,
}

impl Download {
    pub(crate) fn new(
        session: Session,
        reader: Box<dyn FileReader>,
        path: VirtualPath,
        size: u64,
    ) -> Self {
        Download {
            session,
            reader,
            path,
            size,
            transferred: 0,
            started: Instant::now(),
            done: false,
        }
    }

    pub fn path(&self) -> &VirtualPath {
        &self.path
    }

    /// The file's size when it was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn transferred(&self) -> u64 {
        self.transferred
    }

    /// Reads the next chunk into `buf`; `0` at the end of the file.
    pub async fn read(&mut self, buf: &mut [u8]) -> CoreResult<usize> {
        let n = self.reader.read(buf).await?;
        self.transferred += n as u64;
        Ok(n)
    }

    pub fn finish(mut self) {
        self.record(None);
    }

    pub fn fail(mut self, reason: impl fmt::Display) {
        self.record(Some(reason.to_string()));
    }

    fn record(&mut self, error: Option<String>) {
        if !std::mem::replace(&mut self.done, true) {
            let elapsed: Duration = self.started.elapsed();
            self.session.publish_transfer(
                EventKind::Download,
                &self.path,
                self.transferred,
                elapsed,
                error,
            );
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.record(Some(CoreError::Aborted.to_string()));
    }
}
