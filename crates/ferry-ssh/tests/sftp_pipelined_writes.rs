//! Pipelined WRITE requests, as sftp, scp and rclone send them: the server writes queued writes to a handle in
//! batches, and these tests check that batching changes nothing a client can see: data lands at its offsets whatever
//! the order, each request gets its own status in order, a quota runs out at the request that passes it, and
//! requests between writes see exactly the writes before them. Also: a session whose task is cancelled (its
//! connection went away) lets go of its channel.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ferry_core::account::{Account, AccountStore, Quota};
use ferry_core::auth::{hash_password, Authenticator};
use ferry_core::events::{EventBus, Protocol};
use ferry_core::server::{ServerCore, ServerSettings};
use ferry_core::session::{ClientInfo, Session};
use ferry_core::store::SqliteAccountStore;
use ferry_ssh::sftp::{self, SftpLimits};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

const SSH_FXP_INIT: u8 = 1;
const SSH_FXP_OPEN: u8 = 3;
const SSH_FXP_CLOSE: u8 = 4;
const SSH_FXP_WRITE: u8 = 6;
const SSH_FXP_FSTAT: u8 = 8;
const SSH_FXP_STATUS: u8 = 101;
const SSH_FXP_HANDLE: u8 = 102;
const SSH_FXP_ATTRS: u8 = 105;

const FXF_WRITE: u32 = 0x02;
const FXF_APPEND: u32 = 0x04;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;

const FX_OK: u32 = 0;
const FX_FAILURE: u32 = 4;

/// A reply, by its request id.
#[derive(Debug)]
enum Reply {
    Status { id: u32, code: u32, message: String },
    Handle { id: u32, handle: Vec<u8> },
    Size { id: u32, size: u64 },
}

impl Reply {
    fn id(&self) -> u32 {
        match self {
            Reply::Status { id, .. } | Reply::Handle { id, .. } | Reply::Size { id, .. } => *id,
        }
    }
}

/// A logged-in session of an account `u` with `home` and `quota`.
async fn session(home: &Path, quota: Quota) -> Session {
    let store = SqliteAccountStore::open(&home.with_extension("db")).unwrap();
    let mut account = Account::new("u", home.to_path_buf());
    account.password_hash = Some(hash_password("pw").unwrap());
    account.quota = quota;
    store.create(&account).await.unwrap();
    let store: Arc<dyn AccountStore> = Arc::new(store);
    let core = ServerCore::new(
        Authenticator::new(store),
        EventBus::default(),
        ServerSettings::default(),
    );
    let client = ClientInfo::new(Protocol::Sftp, "127.0.0.1".parse().unwrap());
    core.login("u", "pw", &client).await.unwrap()
}

/// A bare SFTP client on one end of an in-memory pipe, the server on the other.
struct Client {
    read: ReadHalf<DuplexStream>,
    write: WriteHalf<DuplexStream>,
    next_id: u32,
    server: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn start(home: &Path, quota: Quota) -> Client {
        let session = session(home, quota).await;
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let (input, output) = tokio::io::split(server_end);
        let server = tokio::spawn(sftp::serve(session, input, output, SftpLimits::default()));
        let (read, write) = tokio::io::split(client_end);
        let mut client = Client {
            read,
            write,
            next_id: 1,
            server,
        };
        client.send(&frame(SSH_FXP_INIT, &3u32.to_be_bytes())).await;
        let version = ReplyReader(&mut client.read).packet().await;
        assert_eq!(version.first(), Some(&2u8), "VERSION");
        client
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    async fn send(&mut self, frames: &[u8]) {
        self.write.write_all(frames).await.unwrap();
    }

    async fn reply(&mut self) -> Reply {
        ReplyReader(&mut self.read).next().await
    }

    async fn open(&mut self, name: &str, flags: u32) -> Vec<u8> {
        let id = self.id();
        let mut body = id.to_be_bytes().to_vec();
        body.extend(string(name.as_bytes()));
        body.extend_from_slice(&flags.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        self.send(&frame(SSH_FXP_OPEN, &body)).await;
        match self.reply().await {
            Reply::Handle { id: got, handle } if got == id => handle,
            other => panic!("OPEN failed: {other:?}"),
        }
    }

    /// Sends `requests` (already framed) in one go while reading their replies, which must come in order.
    async fn pipeline(&mut self, requests: Vec<(u32, Vec<u8>)>) -> Vec<Reply> {
        let ids: Vec<u32> = requests.iter().map(|(id, _)| *id).collect();
        let frames: Vec<u8> = requests.into_iter().flat_map(|(_, f)| f).collect();
        let Client { read, write, .. } = self;
        let send = async {
            write.write_all(&frames).await.unwrap();
        };
        let mut reader = ReplyReader(read);
        let receive = async {
            let mut replies = Vec::new();
            for _ in &ids {
                replies.push(reader.next().await);
            }
            replies
        };
        let ((), replies) = tokio::join!(send, receive);
        let got: Vec<u32> = replies.iter().map(Reply::id).collect();
        assert_eq!(got, ids, "replies out of order");
        replies
    }

    fn write_request(&mut self, handle: &[u8], offset: u64, data: &[u8]) -> (u32, Vec<u8>) {
        let id = self.id();
        let mut body = id.to_be_bytes().to_vec();
        body.extend(string(handle));
        body.extend_from_slice(&offset.to_be_bytes());
        body.extend(string(data));
        (id, frame(SSH_FXP_WRITE, &body))
    }

    fn handle_request(&mut self, kind: u8, handle: &[u8]) -> (u32, Vec<u8>) {
        let id = self.id();
        let mut body = id.to_be_bytes().to_vec();
        body.extend(string(handle));
        (id, frame(kind, &body))
    }

    async fn close(&mut self, handle: &[u8]) -> Reply {
        let (_, request) = self.handle_request(SSH_FXP_CLOSE, handle);
        self.send(&request).await;
        self.reply().await
    }

    async fn end(self) {
        drop(self.write);
        drop(self.read);
        self.server.await.unwrap();
    }
}

/// Reads replies off a borrowed read half (so that requests can be written at the same time).
struct ReplyReader<'a>(&'a mut ReadHalf<DuplexStream>);

impl ReplyReader<'_> {
    async fn packet(&mut self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut body).await.unwrap();
        body
    }

    async fn next(&mut self) -> Reply {
        let body = self.packet().await;
        let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        let id = u32_at(1);
        match body[0] {
            SSH_FXP_STATUS => {
                let len = u32_at(9) as usize;
                Reply::Status {
                    id,
                    code: u32_at(5),
                    message: String::from_utf8_lossy(&body[13..13 + len]).into_owned(),
                }
            }
            SSH_FXP_HANDLE => {
                let len = u32_at(5) as usize;
                Reply::Handle {
                    id,
                    handle: body[9..9 + len].to_vec(),
                }
            }
            SSH_FXP_ATTRS => {
                assert_eq!(u32_at(5) & 1, 1, "ATTRS without a size");
                Reply::Size {
                    id,
                    size: u64::from_be_bytes(body[9..17].try_into().unwrap()),
                }
            }
            other => panic!("unexpected reply type {other}"),
        }
    }
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Deterministic bytes that differ at every offset that matters.
fn content(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn assert_ok(replies: &[Reply]) {
    for r in replies {
        assert!(
            matches!(r, Reply::Status { code: FX_OK, .. }),
            "not OK: {r:?}"
        );
    }
}

fn no_quota() -> Quota {
    Quota {
        max_bytes: None,
        max_files: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_in_any_order_land_at_their_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let mut client = Client::start(&home, no_quota()).await;
    let data = content(3 * 1024 * 1024 + 777);
    // Chunks of uneven sizes, sent as runs of consecutive chunks (which the server may join) in reverse order of
    // the runs, with some runs reversed inside too (which it may not).
    let mut chunks = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let len = (1000 + (i * 7919) % 40_000).min(data.len() - at);
        chunks.push((at, len));
        at += len;
        i += 1;
    }
    let mut order = Vec::new();
    for (n, run) in chunks.chunks(9).rev().enumerate() {
        if n % 3 == 1 {
            order.extend(run.iter().rev());
        } else {
            order.extend(run.iter());
        }
    }
    let handle = client.open("f", FXF_WRITE | FXF_CREAT | FXF_TRUNC).await;
    let requests = order
        .iter()
        .map(|&&(at, len)| client.write_request(&handle, at as u64, &data[at..at + len]))
        .collect();
    let replies = client.pipeline(requests).await;
    assert_eq!(replies.len(), chunks.len());
    assert_ok(&replies);
    assert_ok(&[client.close(&handle).await]);
    client.end().await;
    assert!(std::fs::read(home.join("f")).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_runs_out_at_the_write_that_passes_it_and_nothing_after_is_written() {
    const QUOTA: u64 = 1_000_000;
    const BLOCK: usize = 32 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let quota = Quota {
        max_bytes: Some(QUOTA),
        max_files: None,
    };
    let mut client = Client::start(&home, quota).await;
    let data = content(64 * BLOCK);
    let handle = client.open("big", FXF_WRITE | FXF_CREAT | FXF_TRUNC).await;
    let requests = data
        .chunks(BLOCK)
        .enumerate()
        .map(|(i, block)| client.write_request(&handle, (i * BLOCK) as u64, block))
        .collect();
    let replies = client.pipeline(requests).await;
    let fits = QUOTA as usize / BLOCK;
    for (i, reply) in replies.iter().enumerate() {
        match reply {
            Reply::Status { code: FX_OK, .. } => assert!(i < fits, "write {i} passed the quota"),
            Reply::Status {
                code: FX_FAILURE,
                message,
                ..
            } => {
                assert!(i >= fits, "write {i} fits the quota but failed: {message}");
                assert!(message.contains("quota"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Clients that do not look at every write's status hear about it when they close the file.
    assert!(matches!(
        client.close(&handle).await,
        Reply::Status {
            code: FX_FAILURE,
            ..
        }
    ));
    client.end().await;
    let written = std::fs::read(home.join("big")).unwrap();
    assert_eq!(written.len(), fits * BLOCK);
    assert!(written == data[..fits * BLOCK]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_between_pipelined_writes_sees_exactly_the_writes_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let mut client = Client::start(&home, no_quota()).await;
    let data = content(40 * 10_000);
    let handle = client.open("f", FXF_WRITE | FXF_CREAT | FXF_TRUNC).await;
    let mut requests = Vec::new();
    let mut stats = Vec::new();
    for (i, block) in data.chunks(10_000).enumerate() {
        requests.push(client.write_request(&handle, (i * 10_000) as u64, block));
        if i % 13 == 5 {
            let (id, request) = client.handle_request(SSH_FXP_FSTAT, &handle);
            stats.push((id, ((i + 1) * 10_000) as u64));
            requests.push((id, request));
        }
    }
    let replies = client.pipeline(requests).await;
    for reply in &replies {
        match reply {
            Reply::Size { id, size } => {
                let (_, expected) = stats.iter().find(|(s, _)| s == id).unwrap();
                assert_eq!(size, expected, "FSTAT {id}");
            }
            other => assert_ok(std::slice::from_ref(other)),
        }
    }
    assert_ok(&[client.close(&handle).await]);
    client.end().await;
    assert!(std::fs::read(home.join("f")).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_appends_go_to_the_end_in_order_whatever_their_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("log"), b"existing\n").unwrap();
    let mut client = Client::start(&home, no_quota()).await;
    let handle = client.open("log", FXF_WRITE | FXF_APPEND).await;
    let lines: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let requests = lines
        .iter()
        .enumerate()
        .map(|(i, line)| client.write_request(&handle, (i % 3) as u64, line))
        .collect();
    assert_ok(&client.pipeline(requests).await);
    assert_ok(&[client.close(&handle).await]);
    client.end().await;
    let mut expected = b"existing\n".to_vec();
    expected.extend(lines.concat());
    assert_eq!(std::fs::read(home.join("log")).unwrap(), expected);
}

/// A channel that takes no more data (a window the client never opens) and tells when it is dropped.
struct Stuck(Arc<AtomicBool>);

impl AsyncWrite for Stuck {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_cancelled_session_lets_go_of_its_channel() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let (mut client, server_end) = tokio::io::duplex(64 * 1024);
    let output = Stuck(Arc::clone(&dropped));
    let server = tokio::spawn(sftp::serve(
        session(&home, Quota::default()).await,
        server_end,
        output,
        SftpLimits::default(),
    ));
    // The VERSION reply is queued and its writer waits on the channel for good.
    client
        .write_all(&frame(SSH_FXP_INIT, &3u32.to_be_bytes()))
        .await
        .unwrap();
    tokio::task::yield_now().await;
    assert!(!dropped.load(Ordering::SeqCst));
    // The connection goes away: its channel tasks are cancelled.
    server.abort();
    let _ = server.await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dropped.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reply writer still holds the channel"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
