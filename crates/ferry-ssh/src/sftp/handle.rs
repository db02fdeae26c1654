//! Open SFTP handles. Each one lives in its own task and serves its requests in the order they arrived, while
//! different handles proceed in parallel. Consecutive writes waiting in a handle's queue are written to the file
//! together: a client that pipelines 32 KiB writes costs one storage call per batch instead of one per request.

use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use ferry_core::error::CoreError;
use ferry_core::session::Session;
use ferry_core::storage::{DirStream, FileKind, WriteMode};
use ferry_core::transfer::{Download, Upload};
use ferry_core::vpath::VirtualPath;
use russh_sftp::protocol::{Attrs, File, FileAttributes, Name, OpenFlags, Packet};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::attrs;
use super::status::Status;
use super::{wire, Reply};

/// Entries sent in one READDIR reply (as OpenSSH does).
const NAMES_PER_READDIR: usize = 100;
/// Data of queued writes gathered into one write to the file. A batch holds only requests that already arrived (in
/// the session's in-flight budget), so this bounds what one storage call takes (and, for local files, copies into
/// its buffer), not what a client may send.
const MAX_WRITE_BATCH: usize = 1024 * 1024;

/// A request addressed to an open handle.
pub(crate) enum HandleRequest {
    Read { offset: u64, len: u32 },
    Write { offset: u64, data: Bytes },
    Fstat,
    Fsetstat(FileAttributes),
    ReadDir,
    Fsync,
    Close,
}

/// A request queued for a handle's task, holding its share of the session's in-flight budget.
pub(crate) struct Job {
    pub id: u32,
    pub request: HandleRequest,
    pub permit: OwnedSemaphorePermit,
}

/// What a handle serves.
pub(crate) enum OpenHandle {
    File(Box<FileHandle>),
    Dir(DirHandle),
}

/// Serves `jobs` for one handle until it is closed or the session ends, sending each reply to `replies`.
pub(crate) async fn run(
    mut handle: OpenHandle,
    mut jobs: mpsc::Receiver<Job>,
    replies: mpsc::UnboundedSender<Reply>,
    max_read: u32,
) {
    let mut held = None;
    loop {
        let job = match held.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let Job {
            id,
            request,
            permit,
        } = job;
        // A failed send of a reply means the session is over; the handle still has to be wound up. Permits travel
        // with the replies and go back once these are written.
        match (&mut handle, request) {
            (OpenHandle::File(file), HandleRequest::Write { offset, data }) => {
                // The file takes a write once the one before reached the storage: wait for that first, so that
                // the writes arriving meanwhile join this batch instead of waiting for the next.
                let earlier = file.settle().await;
                let mut batch = WriteBatch::new(id, offset, data, permit);
                while batch.len < MAX_WRITE_BATCH {
                    let Ok(next) = jobs.try_recv() else { break };
                    if let Some(next) = batch.join(next, file.append) {
                        held = Some(next);
                        break;
                    }
                }
                let bytes = file.write_batch(&batch, earlier).await;
                let _ = replies.send(Reply {
                    bytes,
                    permit: Some(batch.permit),
                });
            }
            (handle, request) => {
                let closing = matches!(request, HandleRequest::Close);
                let bytes = handle.serve(id, request, max_read).await;
                let _ = replies.send(Reply {
                    bytes,
                    permit: Some(permit),
                });
                if closing {
                    return;
                }
            }
        }
    }
    if let OpenHandle::File(file) = handle {
        file.abandon().await;
    }
}

/// Consecutive WRITE requests to one handle, each written where the one before ended (or all at the end, with
/// APPEND), with their shares of the in-flight budget (merged into one permit).
struct WriteBatch {
    writes: Vec<(u32, u64, Bytes)>,
    permit: OwnedSemaphorePermit,
    len: usize,
}

impl WriteBatch {
    fn new(id: u32, offset: u64, data: Bytes, permit: OwnedSemaphorePermit) -> Self {
        WriteBatch {
            len: data.len(),
            writes: vec![(id, offset, data)],
            permit,
        }
    }

    /// Where the next write has to start to join the batch.
    fn end(&self) -> Option<u64> {
        let (_, offset, _) = self.writes.first()?;
        offset.checked_add(self.len as u64)
    }

    /// Adds `job` if it is a write that continues the batch; gives it back otherwise.
    fn join(&mut self, job: Job, append: bool) -> Option<Job> {
        let Job {
            id,
            request,
            permit,
        } = job;
        match request {
            HandleRequest::Write { offset, data } if append || Some(offset) == self.end() => {
                self.len += data.len();
                self.writes.push((id, offset, data));
                // Every permit of a session comes from its one in-flight semaphore, as `merge` requires.
                self.permit.merge(permit);
                None
            }
            request => Some(Job {
                id,
                request,
                permit,
            }),
        }
    }
}

impl OpenHandle {
    async fn serve(&mut self, id: u32, request: HandleRequest, max_read: u32) -> Bytes {
        let result = match (self, request) {
            (OpenHandle::File(f), HandleRequest::Read { offset, len }) => {
                return f
                    .read(id, offset, len.min(max_read))
                    .await
                    .unwrap_or_else(|s| wire::status(id, s.code, &s.message))
            }
            (OpenHandle::File(f), HandleRequest::Write { offset, data }) => {
                f.write(offset, &data).await
            }
            (OpenHandle::File(f), HandleRequest::Fstat) => {
                return match f.stat().await {
                    Ok(attrs) => wire::packet(id, Packet::Attrs(Attrs { id, attrs })),
                    Err(s) => wire::status(id, s.code, &s.message),
                }
            }
            (OpenHandle::File(f), HandleRequest::Fsetstat(attrs)) => f.set_attrs(&attrs).await,
            (OpenHandle::File(f), HandleRequest::Fsync) => f.flush().await,
            (OpenHandle::File(f), HandleRequest::Close) => f.close().await,
            (OpenHandle::Dir(d), HandleRequest::ReadDir) => {
                return match d.read_dir(id).await {
                    Ok(name) => wire::packet(id, Packet::Name(name)),
                    Err(s) => wire::status(id, s.code, &s.message),
                }
            }
            (OpenHandle::Dir(d), HandleRequest::Fstat) => match d.session.metadata(&d.path).await {
                Ok(meta) => {
                    let attrs = attrs::from_metadata(&meta);
                    return wire::packet(id, Packet::Attrs(Attrs { id, attrs }));
                }
                Err(e) => Err(e.into()),
            },
            (OpenHandle::Dir(_), HandleRequest::Close) => Ok(()),
            (OpenHandle::Dir(_), _) => Err(Status::failure("not a file handle")),
            (OpenHandle::File(_), HandleRequest::ReadDir) => {
                Err(Status::failure("not a directory handle"))
            }
        };
        match result {
            Ok(()) => wire::status(id, russh_sftp::protocol::StatusCode::Ok, "ok"),
            Err(s) => wire::status(id, s.code, &s.message),
        }
    }
}

/// Where a handle's download stands.
struct Reader {
    download: Download,
    position: u64,
}

/// An open file. Writes go through an [`Upload`] that places each block at its offset (or, with APPEND, at the
/// end); a handle open only for reading reads through a [`Download`]. Requests on the handle act on the file it
/// opened, as OpenSSH's act on its descriptor, whatever has happened to its name since.
pub(crate) struct FileHandle {
    session: Session,
    path: VirtualPath,
    readable: bool,
    writable: bool,
    append: bool,
    reader: Option<Reader>,
    upload: Option<Upload>,
    /// The first write error, so that the upload is recorded as failed when the handle closes.
    write_error: Option<String>,
}

impl FileHandle {
    /// Opens `path` as SSH_FXP_OPEN asks. Writing without TRUNC keeps existing data: the upload starts at the end
    /// and reaches earlier offsets only where the account may overwrite. CREAT, EXCL and TRUNC act as open(2)'s
    /// flags also on a handle opened only for reading (OpenSSH passes them on): the file is created or emptied, and
    /// `CREAT|EXCL` on an existing file fails, which clients use as a lock.
    pub(crate) async fn open(
        session: Session,
        path: VirtualPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<FileHandle, Status> {
        let writable = flags.contains(OpenFlags::WRITE);
        let readable = flags.contains(OpenFlags::READ) || !writable;
        let mut handle = FileHandle {
            session,
            path,
            readable,
            writable,
            append: flags.contains(OpenFlags::APPEND),
            reader: None,
            upload: None,
            write_error: None,
        };
        let changes = [OpenFlags::CREATE, OpenFlags::TRUNCATE, OpenFlags::EXCLUDE]
            .into_iter()
            .any(|flag| flags.contains(flag));
        if writable || changes {
            let existed = handle.session.metadata(&handle.path).await.is_ok();
            if !flags.contains(OpenFlags::CREATE) && !existed {
                return Err(CoreError::NotFound.into());
            }
            let mode = if flags.contains(OpenFlags::EXCLUDE) {
                WriteMode::CreateNew
            } else if flags.contains(OpenFlags::TRUNCATE) {
                WriteMode::Truncate
            } else {
                WriteMode::Append
            };
            // Read-only with CREAT alone, of an existing file: nothing to write.
            if writable || existed.then_some(mode) != Some(WriteMode::Append) {
                let upload = handle.session.open_write(&handle.path, mode).await?;
                if writable {
                    handle.upload = Some(upload);
                } else {
                    upload.finish().await?;
                }
                if let (false, Some(mode)) = (existed, attrs.permissions) {
                    // Like open(2)'s mode argument; where it cannot be set, the default stays.
                    let _ = handle
                        .session
                        .set_creation_mode(&handle.path, mode, FileKind::File)
                        .await;
                }
            }
        }
        if !writable {
            let download = handle.session.open_read(&handle.path, 0).await?;
            handle.reader = Some(Reader {
                download,
                position: 0,
            });
        }
        Ok(handle)
    }

    /// Reads from the file the handle opened, whatever name it has now: a handle open for writing reads what it
    /// wrote (an atomic upload's temporary file), one open only for reading goes on with its download, moved to
    /// `offset` when the client reads out of sequence.
    async fn read(&mut self, id: u32, offset: u64, len: u32) -> Result<Bytes, Status> {
        if !self.readable {
            return Err(Status::new(
                russh_sftp::protocol::StatusCode::PermissionDenied,
                "handle not open for reading",
            ));
        }
        // No file reaches that far (and pread(2) refuses such offsets).
        if i64::try_from(offset).is_err() {
            return Err(Status::eof());
        }
        let len = len as usize;
        if let Some(upload) = &mut self.upload {
            let data = upload.read_at(offset, len).await?;
            if data.is_empty() {
                return Err(Status::eof());
            }
            let mut buf = Vec::with_capacity(wire::DATA_HEADER_LEN + data.len());
            buf.resize(wire::DATA_HEADER_LEN, 0);
            buf.extend_from_slice(&data);
            return Ok(wire::data(id, buf, data.len()));
        }
        let Some(reader) = &mut self.reader else {
            return Err(closed());
        };
        if reader.position != offset {
            reader.download.seek(offset)?;
            reader.position = offset;
        }
        let mut buf = vec![0u8; wire::DATA_HEADER_LEN + len];
        let mut filled = 0;
        while filled < len {
            let Some(space) = buf.get_mut(wire::DATA_HEADER_LEN + filled..) else {
                break;
            };
            let n = reader.download.read(space).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Err(Status::eof());
        }
        reader.position += filled as u64;
        Ok(wire::data(id, buf, filled))
    }

    /// Waits until the upload's earlier writes have reached the storage. An error is one of theirs, reported by
    /// storage that writes behind.
    async fn settle(&mut self) -> Result<(), Status> {
        let Some(upload) = &mut self.upload else {
            return Ok(());
        };
        let result = upload.flush().await.map_err(Status::from);
        if let Err(e) = &result {
            self.write_error.get_or_insert_with(|| e.message.clone());
        }
        result
    }

    /// Writes a batch and answers each of its requests; `earlier` is what [`FileHandle::settle`] found, and a
    /// failure there fails the batch's first request, the one waiting when it came to light. The batch goes to the
    /// file as one vectored write, without joining its data first; if that fails, its requests are written one by
    /// one, so that each gets its own status (a quota runs out at a request, not at the batch).
    async fn write_batch(&mut self, batch: &WriteBatch, earlier: Result<(), Status>) -> Bytes {
        let mut replies = BytesMut::new();
        let mut writes = batch.writes.as_slice();
        if let (Err(e), Some(((id, _, _), rest))) = (earlier, writes.split_first()) {
            put_reply(&mut replies, *id, Err(e));
            writes = rest;
        }
        let joined = match writes {
            [] => return replies.freeze(),
            [(id, offset, data)] => {
                let result = self.write(*offset, data).await;
                put_reply(&mut replies, *id, result);
                return replies.freeze();
            }
            [(_, offset, _), ..] => {
                let parts: Vec<&[u8]> = writes.iter().map(|(_, _, data)| &data[..]).collect();
                self.write_unrecorded(*offset, &parts).await
            }
        };
        for (id, offset, data) in writes {
            let result = match &joined {
                Ok(()) => Ok(()),
                Err(_) => self.write(*offset, data).await,
            };
            put_reply(&mut replies, *id, result);
        }
        replies.freeze()
    }

    async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Status> {
        let result = self.write_unrecorded(offset, &[data]).await;
        if let Err(e) = &result {
            self.write_error.get_or_insert_with(|| e.message.clone());
        }
        result
    }

    /// Writes `parts`, one after another, at `offset` (or at the end, with APPEND) without noting a failure for the
    /// handle's close.
    async fn write_unrecorded(&mut self, offset: u64, parts: &[&[u8]]) -> Result<(), Status> {
        if !self.writable {
            return Err(Status::new(
                russh_sftp::protocol::StatusCode::PermissionDenied,
                "handle not open for writing",
            ));
        }
        let Some(upload) = &mut self.upload else {
            return Err(closed());
        };
        let result = if self.append {
            upload.write_parts(parts).await
        } else {
            upload.write_parts_at(offset, parts).await
        };
        Ok(result?)
    }

    async fn flush(&mut self) -> Result<(), Status> {
        if let Some(upload) = &mut self.upload {
            upload.flush().await?;
        }
        Ok(())
    }

    /// The attributes of the file the handle opened, whatever name it has now; those of a file being written
    /// once the writes before have reached it.
    async fn stat(&mut self) -> Result<FileAttributes, Status> {
        let meta = match (&mut self.upload, &mut self.reader) {
            (Some(upload), _) => upload.metadata().await?,
            (None, Some(reader)) => reader.download.metadata().await?,
            (None, None) => return Err(closed()),
        };
        Ok(attrs::from_metadata(&meta))
    }

    /// Applies FSETSTAT attributes, in the order [`set_attrs`] does, to the file the handle opened, never to
    /// another file that has taken its name meanwhile: to the file being written (an atomic upload's temporary
    /// file, which keeps them when it takes its final name), or to the file being read, whose size cannot change
    /// through the handle (as with OpenSSH's ftruncate(2) on a descriptor open only for reading).
    async fn set_attrs(&mut self, attrs: &FileAttributes) -> Result<(), Status> {
        let mode = attrs.permissions.map(|mode| mode & 0o7777);
        let mtime = attrs.mtime.map(attrs::system_time);
        if let Some(upload) = &mut self.upload {
            if let Some(size) = attrs.size {
                upload.set_len(size).await?;
            }
            if let Some(mode) = mode {
                upload.set_mode(mode).await?;
            }
            if let Some(mtime) = mtime {
                upload.set_modified(mtime).await?;
            }
            return Ok(());
        }
        let Some(reader) = &mut self.reader else {
            return Err(closed());
        };
        if attrs.size.is_some() {
            return Err(Status::new(
                russh_sftp::protocol::StatusCode::PermissionDenied,
                "handle not open for writing",
            ));
        }
        if let Some(mode) = mode {
            reader.download.set_mode(mode).await?;
        }
        if let Some(mtime) = mtime {
            reader.download.set_modified(mtime).await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), Status> {
        if let Some(reader) = self.reader.take() {
            reader.download.finish();
        }
        self.end_upload().await
    }

    async fn end_upload(&mut self) -> Result<(), Status> {
        let Some(upload) = self.upload.take() else {
            return Ok(());
        };
        match self.write_error.take() {
            // Clients that pipeline writes may not look at each reply: say it again when the file is closed.
            Some(error) => {
                let status = Status::failure(format!("upload failed: {error}"));
                upload.fail(error).await;
                Err(status)
            }
            None => upload.finish().await.map(drop).map_err(Status::from),
        }
    }

    /// Ends transfers left open when the session ended.
    async fn abandon(mut self) {
        if let Some(reader) = self.reader.take() {
            reader.download.fail("the client disconnected");
        }
        if let Some(upload) = self.upload.take() {
            let reason = self
                .write_error
                .take()
                .unwrap_or_else(|| "the client disconnected".to_owned());
            upload.fail(reason).await;
        }
    }
}

/// What a request on a handle whose file is no longer open gets.
fn closed() -> Status {
    Status::failure("the handle's file is closed")
}

fn put_reply(replies: &mut BytesMut, id: u32, result: Result<(), Status>) {
    match result {
        Ok(()) => wire::put_status(replies, id, russh_sftp::protocol::StatusCode::Ok, "ok"),
        Err(s) => wire::put_status(replies, id, s.code, &s.message),
    }
}

/// Applies SETSTAT/FSETSTAT attributes: size, then mode, then modification time (last, so that it sticks). Owner
/// changes are not supported and ignored; the access time cannot be set on its own.
pub(crate) async fn set_attrs(
    session: &Session,
    path: &VirtualPath,
    attrs: &FileAttributes,
) -> Result<(), Status> {
    if let Some(size) = attrs.size {
        session.set_len(path, size).await?;
    }
    if let Some(mode) = attrs.permissions {
        session.set_mode(path, mode & 0o7777).await?;
    }
    if let Some(mtime) = attrs.mtime {
        session
            .set_modified(path, attrs::system_time(mtime))
            .await?;
    }
    Ok(())
}

/// An open directory listing.
pub(crate) struct DirHandle {
    session: Session,
    path: VirtualPath,
    /// `None` once every entry was sent.
    entries: Option<DirStream>,
}

impl DirHandle {
    pub(crate) async fn open(session: Session, path: VirtualPath) -> Result<DirHandle, Status> {
        let meta = session.metadata(&path).await?;
        if !meta.is_dir() {
            return Err(CoreError::NotADirectory.into());
        }
        let entries = session.list(&path).await?;
        Ok(DirHandle {
            session,
            path,
            entries: Some(entries),
        })
    }

    async fn read_dir(&mut self, id: u32) -> Result<Name, Status> {
        let Some(stream) = &mut self.entries else {
            return Err(Status::eof());
        };
        let now = SystemTime::now();
        let owner = self.session.username().to_owned();
        let mut files = Vec::new();
        while files.len() < NAMES_PER_READDIR {
            match stream.next().await {
                None => {
                    self.entries = None;
                    break;
                }
                Some(Ok(entry)) => files.push(File {
                    longname: attrs::long_name(&entry.name, &entry.metadata, &owner, now),
                    attrs: attrs::from_metadata(&entry.metadata),
                    filename: entry.name,
                }),
                Some(Err(e)) => {
                    tracing::warn!(path = ?self.path, error = %e, "skipping an unreadable directory entry");
                }
            }
        }
        if files.is_empty() {
            return Err(Status::eof());
        }
        Ok(Name { id, files })
    }
}
