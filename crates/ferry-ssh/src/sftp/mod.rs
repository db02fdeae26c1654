//! The SFTP subsystem: protocol version 3 as OpenSSH speaks it, with the OpenSSH extensions
//! `posix-rename`, `statvfs`/`fstatvfs` (reporting the account's quota), `fsync`, `hardlink`, `limits` and
//! `expand-path`.
//!
//! Requests are read as fast as the client pipelines them. Requests on an open handle go to that handle's own task
//! and are served in order; different handles are served in parallel; requests by path are served in order as they
//! arrive. The number of requests being served is bounded (`max_in_flight`); requests beyond it wait, read, in a
//! queue of their own. The channel is never left unread while replies wait to go out: russh passes incoming data
//! to the channel and sends outgoing data from one task, and it reopens the client's window as data arrives rather
//! than as it is read, so a reader that stopped until replies had gone out would wait for them forever (paramiko's
//! `get` asks for every block of a file at once). The waiting queue is bounded in bytes; a client that goes past it
//! has its session ended.

mod attrs;
mod handle;
mod status;
mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_core::error::CoreError;
use ferry_core::registry::SharedByKey;
use ferry_core::session::Session;
use ferry_core::storage::FileKind;
use ferry_core::vpath::VirtualPath;
use russh_sftp::protocol::{
    Attrs, File, FileAttributes, Handle as HandleReply, Name, Packet, StatusCode, Version,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use handle::{DirHandle, FileHandle, HandleRequest, Job, OpenHandle};
use status::Status;
use wire::ExtArgs;

/// Limits of one SFTP session; the defaults are OpenSSH's, but for the bounds on requests waiting to be served.
#[derive(Clone, Debug)]
pub struct SftpLimits {
    /// Longest request packet accepted; a longer one ends the session.
    pub max_packet: u32,
    /// Most data returned by one READ.
    pub max_read: u32,
    /// Most data a client should send in one WRITE (advertised; the packet limit enforces it).
    pub max_write: u32,
    pub max_handles: usize,
    /// Open directory listings, a subset of `max_handles`: each holds up to two batches of entries (one read
    /// ahead) while the client has not read them, but no storage thread.
    pub max_dir_handles: usize,
    /// Requests read from the client but not yet answered.
    pub max_in_flight: usize,
    /// Bytes of requests beyond `max_in_flight` one session may hold; a client that goes past it has its session
    /// ended.
    pub max_waiting: usize,
    /// The same over every session that shares these limits (a server's): the per-session bound alone multiplies
    /// by channels and connections.
    pub waiting_total: Arc<WaitingBudget>,
    /// Open handles over every session that shares these limits, and per account: each holds a file descriptor,
    /// and `max_handles` alone multiplies by channels and connections up to the process's open-file limit.
    pub open_handles: Arc<HandleBudget>,
}

/// Open handles over many sessions: in all, and per account.
pub struct HandleBudget {
    total: Arc<Semaphore>,
    per_account: SharedByKey<String, Semaphore>,
    account_max: usize,
}

/// The permits one open handle holds until its task ends (a closed handle may still be finishing an upload).
struct HandlePermits {
    _total: OwnedSemaphorePermit,
    _account: OwnedSemaphorePermit,
}

impl HandleBudget {
    pub fn new(total: usize, account_max: usize) -> Self {
        HandleBudget {
            total: Arc::new(Semaphore::new(total)),
            per_account: SharedByKey::default(),
            account_max,
        }
    }

    /// A budget sized to the process's open-file limit as it is now: a quarter of it for SFTP handles in all
    /// (connections, FTP transfers and the server's own files need the rest), 1,024 for one account.
    fn for_open_file_limit() -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let total = usize::try_from(limit / 4)
            .unwrap_or(usize::MAX)
            .clamp(64, 1 << 20);
        HandleBudget::new(total, 1024)
    }

    /// The semaphore of `account`'s handles, shared by its sessions while any holds it.
    fn account(&self, account: &str) -> Arc<Semaphore> {
        self.per_account
            .get_or_insert_with(account, || Semaphore::new(self.account_max))
    }
}

impl std::fmt::Debug for HandleBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleBudget")
            .field("available", &self.total.available_permits())
            .field("account_max", &self.account_max)
            .finish()
    }
}

/// Bytes of waiting requests over many sessions, bounded as a whole.
#[derive(Debug)]
pub struct WaitingBudget {
    used: AtomicUsize,
    max: usize,
}

impl WaitingBudget {
    pub fn new(max: usize) -> Self {
        WaitingBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Default for SftpLimits {
    fn default() -> Self {
        SftpLimits {
            max_packet: 256 * 1024,
            max_read: 255 * 1024,
            max_write: 255 * 1024,
            max_handles: 256,
            max_dir_handles: 64,
            max_in_flight: 64,
            max_waiting: MAX_WAITING_BYTES,
            waiting_total: Arc::new(WaitingBudget::new(MAX_WAITING_TOTAL)),
            open_handles: Arc::new(HandleBudget::for_open_file_limit()),
        }
    }
}

/// Replies shorter than this are gathered with others that are ready into one write to the channel (the size of an
/// SSH packet with OpenSSH's usual limit).
const GATHER_REPLIES: usize = 32 * 1024;
/// Bytes of requests read beyond the in-flight budget that may wait to be served in one session, counted with
/// [`WAITING_ENTRY_COST`] each. paramiko's `get` of a 20 GiB file asks for its 655,360 blocks at once, about 30 MiB
/// of READ requests, 72 MiB as counted: files up to about 17 GiB fetched that way fit.
const MAX_WAITING_BYTES: usize = 64 * 1024 * 1024;
/// The same over all the sessions of a server.
const MAX_WAITING_TOTAL: usize = 256 * 1024 * 1024;
/// What a waiting request costs beyond its bytes: its copy's allocation and its place in the queue.
const WAITING_ENTRY_COST: usize = 64;

/// A reply, with the in-flight budget its request held: the budget goes back once the reply is written, so that the
/// replies waiting for the channel never outnumber it (their queue needs no bound of its own).
pub(crate) struct Reply {
    pub bytes: Bytes,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The extensions announced in the VERSION reply, with their versions.
const EXTENSIONS: [(&str, &str); 7] = [
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fstatvfs@openssh.com", "2"),
    ("hardlink@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("limits@openssh.com", "1"),
    ("expand-path@openssh.com", "1"),
];

/// Serves SFTP for `session` on an SSH channel's `input` and `output` until the client closes it. Returns once
/// every reply has been written.
pub async fn serve<R, W>(session: Session, input: R, output: W, limits: SftpLimits)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (replies, queue) = mpsc::unbounded_channel();
    let mut writer = AbortOnDrop(tokio::spawn(write_replies(output, queue)));
    let account_handles = limits.open_handles.account(session.username());
    let mut server = Server {
        session,
        account_handles,
        handles: HashMap::new(),
        next_handle: 1,
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        replies,
        limits,
    };
    let mut input = wire::PacketReader::new(input, server.limits.max_packet);
    let result = server.run(&mut input).await;
    if let Err(e) = &result {
        tracing::info!(user = %server.session.username(), error = %e, "sftp session ended");
    }
    // Dropping the queues lets every handle task finish its requests and wind up its transfers; the writer ends
    // when the last of them is done.
    drop(server);
    if result.is_ok() {
        let _ = (&mut writer.0).await;
    }
    // After a protocol error the replies still to go are not waited for: the client may have stopped taking them
    // (a window it never opens), and the channel must close regardless. `writer` aborts the task when dropped.
}

/// Aborts the reply writer when [`serve`] ends, also when its future is dropped before (the connection went away
/// and its channel tasks were cancelled): a writer waiting for window space on a channel that is gone would wait
/// forever, holding every reply still queued (up to the in-flight budget, megabytes of READ data).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes replies to the channel. Small replies that are ready together go out in one write, so that a burst of
/// write acknowledgements costs one SSH packet instead of one each.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut output: W,
    mut queue: mpsc::UnboundedReceiver<Reply>,
) {
    let mut written: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut next = queue.recv().await;
    while let Some(reply) = next.take() {
        written.extend(reply.permit);
        let mut out = reply.bytes;
        if out.len() < GATHER_REPLIES {
            let mut gathered: Option<BytesMut> = None;
            while let Ok(more) = queue.try_recv() {
                if out.len() + gathered.as_ref().map_or(0, BytesMut::len) + more.bytes.len()
                    > GATHER_REPLIES
                {
                    next = Some(more);
                    break;
                }
                written.extend(more.permit);
                gathered
                    .get_or_insert_with(|| {
                        let mut buf = BytesMut::with_capacity(GATHER_REPLIES);
                        buf.extend_from_slice(&out);
                        buf
                    })
                    .extend_from_slice(&more.bytes);
            }
            if let Some(gathered) = gathered {
                out = gathered.freeze();
            }
        }
        if output.write_all(&out).await.is_err() {
            break;
        }
        written.clear();
        if next.is_none() {
            next = queue.recv().await;
        }
    }
    // Keep draining (and giving the budget back) so that nothing waits on a dead channel.
    drop(written);
    drop(next);
    while queue.recv().await.is_some() {}
}

/// Requests read beyond the in-flight budget, in arrival order, bounded in bytes per session and over the server.
struct Waiting {
    requests: VecDeque<Bytes>,
    bytes: usize,
    max: usize,
    total: Arc<WaitingBudget>,
}

impl Waiting {
    fn new(limits: &SftpLimits) -> Self {
        Waiting {
            requests: VecDeque::new(),
            bytes: 0,
            max: limits.max_waiting,
            total: Arc::clone(&limits.waiting_total),
        }
    }

    fn push(&mut self, raw: Bytes) -> std::io::Result<()> {
        let cost = raw.len() + WAITING_ENTRY_COST;
        if self.bytes + cost > self.max || !self.total.take(cost) {
            return Err(protocol_error(
                "more requests waiting for replies than the server holds",
            ));
        }
        self.bytes += cost;
        // Copied out of the read buffer it arrived in, which it would otherwise hold whole (a request sent as an
        // SSH message of its own arrives alone in a buffer of 64 KiB): what waits is what was counted.
        self.requests.push_back(Bytes::copy_from_slice(&raw));
        Ok(())
    }

    fn pop(&mut self) -> Option<Bytes> {
        let raw = self.requests.pop_front()?;
        let cost = raw.len() + WAITING_ENTRY_COST;
        self.bytes -= cost;
        self.total.give_back(cost);
        Some(raw)
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.total.give_back(self.bytes);
    }
}

struct HandleEntry {
    path: VirtualPath,
    is_dir: bool,
    jobs: mpsc::Sender<Job>,
}

struct Server {
    session: Session,
    /// The account's share of [`SftpLimits::open_handles`].
    account_handles: Arc<Semaphore>,
    handles: HashMap<String, HandleEntry>,
    next_handle: u64,
    in_flight: Arc<Semaphore>,
    replies: mpsc::UnboundedSender<Reply>,
    limits: SftpLimits,
}

impl Server {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        input: &mut wire::PacketReader<R>,
    ) -> std::io::Result<()> {
        let Some(first) = input.next().await? else {
            return Ok(());
        };
        match Packet::try_from(&mut first.clone()) {
            Ok(Packet::Init(_)) => {}
            _ => return Err(protocol_error("the first packet must be SSH_FXP_INIT")),
        }
        let version = Version {
            version: russh_sftp::protocol::VERSION,
            extensions: EXTENSIONS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        self.reply(wire::packet(0, Packet::Version(version)), None);
        let mut waiting = Waiting::new(&self.limits);
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                permit = Arc::clone(&self.in_flight).acquire_owned(), if !waiting.is_empty() => {
                    let (Ok(permit), Some(raw)) = (permit, waiting.pop()) else {
                        return Ok(());
                    };
                    self.serve_raw(raw, permit).await?;
                }
                raw = input.next(), if open => match raw? {
                    Some(raw) => {
                        let free = waiting
                            .is_empty()
                            .then(|| Arc::clone(&self.in_flight).try_acquire_owned().ok())
                            .flatten();
                        match free {
                            Some(permit) => self.serve_raw(raw, permit).await?,
                            None => waiting.push(raw)?,
                        }
                    }
                    None => open = false,
                },
                else => return Ok(()),
            }
        }
    }

    /// Serves one request packet with its share of the in-flight budget.
    async fn serve_raw(&mut self, raw: Bytes, permit: OwnedSemaphorePermit) -> std::io::Result<()> {
        // WRITE, the request that carries the most data, is decoded here without copying the data.
        if let Some(write) = wire::write_request(&raw) {
            let request = HandleRequest::Write {
                offset: write.offset,
                data: write.data,
            };
            match std::str::from_utf8(&write.handle) {
                Ok(handle) => self.send_to_handle(write.id, handle, request, permit).await,
                Err(_) => self.invalid_handle(write.id, permit),
            }
            return Ok(());
        }
        let id = wire::request_id(&raw).unwrap_or(0);
        match Packet::try_from(&mut raw.clone()) {
            Ok(Packet::Init(_)) => return Err(protocol_error("a second SSH_FXP_INIT")),
            Ok(packet) => self.dispatch(id, packet, permit).await,
            Err(e) => {
                let status = match raw.first() {
                    Some(1..=20 | 200) => Status::bad_message(format!("malformed request: {e}")),
                    _ => Status::unsupported("unknown request type"),
                };
                self.reply(wire::status(id, status.code, &status.message), Some(permit));
            }
        }
        Ok(())
    }

    fn reply(&self, bytes: Bytes, permit: Option<OwnedSemaphorePermit>) {
        // Fails only when the writer stopped because the channel is gone; the read loop ends soon after.
        let _ = self.replies.send(Reply { bytes, permit });
    }

    /// Routes a request: handle requests to the handle's task, the rest served here, in order.
    async fn dispatch(&mut self, id: u32, packet: Packet, permit: OwnedSemaphorePermit) {
        let handle_request = match packet {
            Packet::Read(r) => Some((
                r.handle,
                HandleRequest::Read {
                    offset: r.offset,
                    len: r.len,
                },
            )),
            Packet::Write(w) => Some((
                w.handle,
                HandleRequest::Write {
                    offset: w.offset,
                    data: Bytes::from(w.data),
                },
            )),
            Packet::Fstat(f) => Some((f.handle, HandleRequest::Fstat)),
            Packet::FSetStat(f) => Some((f.handle, HandleRequest::Fsetstat(f.attrs))),
            Packet::ReadDir(r) => Some((r.handle, HandleRequest::ReadDir)),
            Packet::Close(c) => Some((c.handle, HandleRequest::Close)),
            Packet::Extended(e) if e.request == "fsync@openssh.com" => {
                match ExtArgs::new(&e.data).string() {
                    Some(handle) => Some((handle, HandleRequest::Fsync)),
                    None => {
                        let s = Status::bad_message("fsync needs a handle");
                        return self.reply(wire::status(id, s.code, &s.message), Some(permit));
                    }
                }
            }
            other => {
                let reply = self.serve_path_request(id, other).await;
                self.reply(reply, Some(permit));
                return;
            }
        };
        if let Some((handle, request)) = handle_request {
            self.send_to_handle(id, &handle, request, permit).await;
        }
    }

    async fn send_to_handle(
        &mut self,
        id: u32,
        handle: &str,
        request: HandleRequest,
        permit: OwnedSemaphorePermit,
    ) {
        let jobs = if matches!(request, HandleRequest::Close) {
            self.handles.remove(handle).map(|entry| entry.jobs)
        } else {
            self.handles.get(handle).map(|entry| entry.jobs.clone())
        };
        let Some(jobs) = jobs else {
            return self.invalid_handle(id, permit);
        };
        let job = Job {
            id,
            request,
            permit,
        };
        // Never waits: a handle's queue holds the whole in-flight budget.
        if let Err(mpsc::error::SendError(job)) = jobs.send(job).await {
            let s = Status::failure("handle is gone");
            self.reply(wire::status(id, s.code, &s.message), Some(job.permit));
        }
    }

    fn invalid_handle(&self, id: u32, permit: OwnedSemaphorePermit) {
        let s = Status::failure("invalid handle");
        self.reply(wire::status(id, s.code, &s.message), Some(permit));
    }

    async fn serve_path_request(&mut self, id: u32, packet: Packet) -> Bytes {
        let ok = || wire::status(id, StatusCode::Ok, "ok");
        let result: Result<Bytes, Status> = async {
            match packet {
                Packet::Open(o) => {
                    let path = resolve_file(&o.filename)?;
                    let permits = self.check_handle_room(false)?;
                    let file =
                        FileHandle::open(self.session.clone(), path.clone(), o.pflags, &o.attrs)
                            .await?;
                    Ok(self.add_handle(id, path, OpenHandle::File(Box::new(file)), permits))
                }
                Packet::OpenDir(o) => {
                    let path = resolve(&o.path)?;
                    let permits = self.check_handle_room(true)?;
                    let dir = DirHandle::open(self.session.clone(), path.clone()).await?;
                    Ok(self.add_handle(id, path, OpenHandle::Dir(dir), permits))
                }
                Packet::Stat(s) => self.stat(id, &s.path, true).await,
                Packet::Lstat(s) => self.stat(id, &s.path, false).await,
                Packet::SetStat(s) => {
                    let path = resolve(&s.path)?;
                    if VirtualPath::names_dir(&s.path)
                        && !self.session.metadata(&path).await?.is_dir()
                    {
                        return Err(CoreError::NotADirectory.into());
                    }
                    handle::set_attrs(&self.session, &path, &s.attrs).await?;
                    Ok(ok())
                }
                Packet::Remove(r) => {
                    self.session.remove(&resolve_file(&r.filename)?).await?;
                    Ok(ok())
                }
                Packet::MkDir(m) => {
                    let path = resolve(&m.path)?;
                    self.session.mkdir(&path).await?;
                    if let Some(mode) = m.attrs.permissions {
                        // Like mkdir(2)'s mode; where it cannot be set, the default stays.
                        let _ = self
                            .session
                            .set_creation_mode(&path, mode, FileKind::Dir)
                            .await;
                    }
                    Ok(ok())
                }
                Packet::RmDir(r) => {
                    self.session.rmdir(&resolve(&r.path)?).await?;
                    Ok(ok())
                }
                Packet::RealPath(r) => Ok(single_name(id, resolve(&r.path)?.to_string())),
                Packet::Rename(r) => {
                    let (from, to) = self.rename_paths(&r.oldpath, &r.newpath).await?;
                    // A missing source is reported as such, before the target is looked at.
                    self.session.symlink_metadata(&from).await?;
                    // SFTP v3 RENAME does not replace (posix-rename does).
                    if self.session.symlink_metadata(&to).await.is_ok() {
                        return Err(CoreError::AlreadyExists.into());
                    }
                    self.session.rename(&from, &to).await?;
                    Ok(ok())
                }
                Packet::ReadLink(r) => {
                    let target = self.session.read_link(&resolve(&r.path)?).await?;
                    Ok(single_name(id, target))
                }
                // OpenSSH sends the target first, whatever the draft says, and every client follows it.
                Packet::Symlink(s) => {
                    let (target, link) = (s.linkpath, resolve_file(&s.targetpath)?);
                    self.session.symlink(&target, &link).await?;
                    Ok(ok())
                }
                Packet::Extended(e) => self.extended(id, &e.request, &e.data).await,
                _ => Err(Status::unsupported("not a request")),
            }
        }
        .await;
        result.unwrap_or_else(|s| wire::status(id, s.code, &s.message))
    }

    /// Room for one more handle in this session, the account and the server, taken.
    fn check_handle_room(&self, dir: bool) -> Result<HandlePermits, Status> {
        let dirs = || self.handles.values().filter(|h| h.is_dir).count();
        if self.handles.len() >= self.limits.max_handles {
            return Err(Status::failure("too many open handles"));
        }
        if dir && dirs() >= self.limits.max_dir_handles {
            return Err(Status::failure("too many open directories"));
        }
        let account = Arc::clone(&self.account_handles)
            .try_acquire_owned()
            .map_err(|_| Status::failure("too many open handles for this account"))?;
        let total = Arc::clone(&self.limits.open_handles.total)
            .try_acquire_owned()
            .map_err(|_| Status::failure("too many open handles on the server"))?;
        Ok(HandlePermits {
            _total: total,
            _account: account,
        })
    }

    fn add_handle(
        &mut self,
        id: u32,
        path: VirtualPath,
        handle: OpenHandle,
        permits: HandlePermits,
    ) -> Bytes {
        let is_dir = matches!(handle, OpenHandle::Dir(_));
        let name = self.next_handle.to_string();
        self.next_handle += 1;
        let (jobs, queue) = mpsc::channel(self.limits.max_in_flight.max(1));
        let task = handle::run(handle, queue, self.replies.clone(), self.limits.max_read);
        tokio::spawn(async move {
            task.await;
            drop(permits);
        });
        self.handles
            .insert(name.clone(), HandleEntry { path, is_dir, jobs });
        wire::packet(id, Packet::Handle(HandleReply { id, handle: name }))
    }

    /// The two paths of a rename; with a trailing slash on either, what is renamed must be a directory.
    async fn rename_paths(
        &self,
        old: &str,
        new: &str,
    ) -> Result<(VirtualPath, VirtualPath), Status> {
        let (from, to) = (resolve(old)?, resolve(new)?);
        if (VirtualPath::names_dir(old) || VirtualPath::names_dir(new))
            && !self.session.symlink_metadata(&from).await?.is_dir()
        {
            return Err(CoreError::NotADirectory.into());
        }
        Ok((from, to))
    }

    async fn stat(&self, id: u32, path: &str, follow: bool) -> Result<Bytes, Status> {
        let dir_named = VirtualPath::names_dir(path);
        let path = resolve(path)?;
        // A trailing slash follows a final symlink, as in POSIX.
        let meta = if follow || dir_named {
            self.session.metadata(&path).await?
        } else {
            self.session.symlink_metadata(&path).await?
        };
        if dir_named && !meta.is_dir() {
            return Err(CoreError::NotADirectory.into());
        }
        let attrs = attrs::from_metadata(&meta);
        Ok(wire::packet(id, Packet::Attrs(Attrs { id, attrs })))
    }

    async fn extended(&self, id: u32, request: &str, data: &[u8]) -> Result<Bytes, Status> {
        let mut args = ExtArgs::new(data);
        let mut arg = || {
            args.string()
                .ok_or_else(|| Status::bad_message("missing argument"))
        };
        match request {
            "posix-rename@openssh.com" => {
                let (from, to) = self.rename_paths(&arg()?, &arg()?).await?;
                self.session.rename(&from, &to).await?;
                Ok(wire::status(id, StatusCode::Ok, "ok"))
            }
            "hardlink@openssh.com" => {
                let (from, to) = (resolve_file(&arg()?)?, resolve_file(&arg()?)?);
                self.session.hard_link(&from, &to).await?;
                Ok(wire::status(id, StatusCode::Ok, "ok"))
            }
            "statvfs@openssh.com" => {
                let path = resolve(&arg()?)?;
                self.session.metadata(&path).await?;
                self.statvfs(id, &path).await
            }
            "fstatvfs@openssh.com" => {
                let handle = arg()?;
                let path = match self.handles.get(&handle) {
                    Some(entry) => entry.path.clone(),
                    None => return Err(Status::failure("invalid handle")),
                };
                self.statvfs(id, &path).await
            }
            "limits@openssh.com" => {
                let l = &self.limits;
                let mut out = Vec::with_capacity(32);
                for v in [
                    u64::from(l.max_packet),
                    u64::from(l.max_read),
                    u64::from(l.max_write),
                    l.max_handles as u64,
                ] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                Ok(wire::extended_reply(id, &out))
            }
            "expand-path@openssh.com" => {
                let path = crate::exec::resolve_path(&arg()?)?;
                Ok(single_name(id, path.to_string()))
            }
            _ => Err(Status::unsupported(format!(
                "extension {request} not supported"
            ))),
        }
    }

    /// statvfs@openssh.com, describing the account's quota (or the free disk space, whichever is smaller) as a
    /// file system of 4 KiB blocks.
    async fn statvfs(&self, id: u32, path: &VirtualPath) -> Result<Bytes, Status> {
        const BLOCK: u64 = 4096;
        const ST_RDONLY: u64 = 1;
        const ST_NOSUID: u64 = 2;
        const NAME_MAX: u64 = 255;
        let quota = self.session.quota();
        let usage = quota.usage();
        let available = self
            .session
            .available_space()
            .await?
            .unwrap_or(u64::MAX / 2);
        let avail_blocks = available / BLOCK;
        let total_blocks = usage.bytes.div_ceil(BLOCK).saturating_add(avail_blocks);
        let free_files = quota.remaining_files().unwrap_or(u64::MAX / 2);
        let total_files = usage.files.saturating_add(free_files);
        let writable = self
            .session
            .allowed(ferry_core::account::Permission::Upload, path);
        let flags = ST_NOSUID | if writable { 0 } else { ST_RDONLY };
        let fields = [
            BLOCK,
            BLOCK,
            total_blocks,
            avail_blocks,
            avail_blocks,
            total_files,
            free_files,
            free_files,
            0,
            flags,
            NAME_MAX,
        ];
        let mut out = Vec::with_capacity(fields.len() * 8);
        for v in fields {
            out.extend_from_slice(&v.to_be_bytes());
        }
        Ok(wire::extended_reply(id, &out))
    }
}

/// Resolves a client path: relative paths start at the home, which is `/`.
fn resolve(path: &str) -> Result<VirtualPath, Status> {
    Ok(VirtualPath::resolve(&VirtualPath::root(), path)?)
}

/// Resolves a client path that is to name a file (or link): one ending in a slash is refused rather than taken as a
/// file's name, so that `put f dir/` into a missing `dir` does not create a file `dir`, as OpenSSH refuses it.
fn resolve_file(path: &str) -> Result<VirtualPath, Status> {
    if VirtualPath::names_dir(path) {
        return Err(CoreError::IsADirectory.into());
    }
    resolve(path)
}

/// A NAME reply with one entry and no attributes (REALPATH, READLINK, expand-path).
fn single_name(id: u32, name: String) -> Bytes {
    let file = File {
        longname: name.clone(),
        filename: name,
        attrs: FileAttributes::empty(),
    };
    wire::packet(
        id,
        Packet::Name(Name {
            id,
            files: vec![file],
        }),
    )
}

fn protocol_error(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_waiting: usize, total: &Arc<WaitingBudget>) -> SftpLimits {
        SftpLimits {
            max_waiting,
            waiting_total: Arc::clone(total),
            ..SftpLimits::default()
        }
    }

    #[test]
    fn waiting_requests_are_bounded_per_session_and_over_the_server() {
        let request = Bytes::from(vec![7u8; 1000]);
        let cost = 1000 + WAITING_ENTRY_COST;
        let total = Arc::new(WaitingBudget::new(5 * cost));
        let mut first = Waiting::new(&limits(3 * cost, &total));
        for _ in 0..3 {
            first.push(request.clone()).unwrap();
        }
        assert!(
            first.push(request.clone()).is_err(),
            "past the session's bound"
        );
        let mut second = Waiting::new(&limits(3 * cost, &total));
        second.push(request.clone()).unwrap();
        second.push(request.clone()).unwrap();
        assert!(
            second.push(request.clone()).is_err(),
            "past the server's bound"
        );
        // What is served, and what a session that ends still held, is given back.
        assert_eq!(first.pop().unwrap(), request);
        second.push(request.clone()).unwrap();
        drop(first);
        let mut third = Waiting::new(&limits(3 * cost, &total));
        third.push(request.clone()).unwrap();
        third.push(request.clone()).unwrap();
        drop((second, third));
        assert_eq!(total.used.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_waiting_request_does_not_hold_the_buffer_it_arrived_in() {
        let total = Arc::new(WaitingBudget::new(usize::MAX));
        let mut waiting = Waiting::new(&limits(usize::MAX, &total));
        let arrived = Bytes::from(vec![1u8; 64 * 1024]);
        waiting.push(arrived.slice(..4100)).unwrap();
        let kept = waiting.pop().unwrap();
        assert_eq!(kept.len(), 4100);
        assert_ne!(kept.as_ptr(), arrived.as_ptr());
    }
}
