//! Property test: whatever packets a client sends (well-formed requests with hostile fields, truncated ones, random
//! bytes), the SFTP server ends when the client goes away, never panics, and never touches a file outside the home.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use ferry_core::account::{Account, AccountStore, Quota};
use ferry_core::auth::{hash_password, Authenticator};
use ferry_core::events::{EventBus, Protocol};
use ferry_core::server::{ServerCore, ServerSettings};
use ferry_core::session::ClientInfo;
use ferry_core::store::SqliteAccountStore;
use ferry_ssh::sftp::{self, SftpLimits};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

const SECRET: &[u8] = b"outside the home";

/// Paths that tempt an escape or name things that exist.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("f".to_owned()),
        Just("d".to_owned()),
        Just("d/g".to_owned()),
        Just("../secret".to_owned()),
        Just("/../../secret".to_owned()),
        Just("link".to_owned()),
        Just("".to_owned()),
        Just("~".to_owned()),
        "[a-z./]{0,12}",
    ]
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// One packet body (type byte first), without the length.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    let handle = prop_oneof![
        Just(b"1".to_vec()),
        Just(b"2".to_vec()),
        Just(b"3".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8)
    ];
    let request = (
        prop::sample::select(vec![
            3u8, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 200, 101, 1, 99,
        ]),
        any::<u32>(),
        path(),
        path(),
        handle,
        prop_oneof![Just(0u64), 0u64..70_000, any::<u64>()],
        prop_oneof![Just(32_768u32), any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..600),
        any::<u32>(),
        prop::sample::select(vec![
            "posix-rename@openssh.com",
            "hardlink@openssh.com",
            "statvfs@openssh.com",
            "fstatvfs@openssh.com",
            "fsync@openssh.com",
            "limits@openssh.com",
            "expand-path@openssh.com",
            "bogus",
        ]),
    )
        .prop_map(|(kind, id, a, b, handle, offset, len, data, flags, ext)| {
            let mut p = vec![kind];
            p.extend_from_slice(&id.to_be_bytes());
            match kind {
                3 => {
                    p.extend(string(a.as_bytes()));
                    p.extend_from_slice(&(flags & 0x3f).to_be_bytes());
                    p.extend_from_slice(&[0, 0, 0, 4, 0, 0, 1, 0xff]);
                }
                4 | 8 | 12 => p.extend(string(&handle)),
                5 => {
                    p.extend(string(&handle));
                    p.extend_from_slice(&offset.to_be_bytes());
                    p.extend_from_slice(&len.to_be_bytes());
                }
                6 => {
                    p.extend(string(&handle));
                    p.extend_from_slice(&offset.to_be_bytes());
                    p.extend(string(&data));
                }
                9 | 10 => {
                    if kind == 9 {
                        p.extend(string(a.as_bytes()));
                    } else {
                        p.extend(string(&handle));
                    }
                    p.extend_from_slice(&flags.to_be_bytes());
                    p.extend_from_slice(&data);
                }
                18 | 20 => {
                    p.extend(string(a.as_bytes()));
                    p.extend(string(b.as_bytes()));
                }
                200 => {
                    p.extend(string(ext.as_bytes()));
                    p.extend(string(a.as_bytes()));
                    p.extend(string(b.as_bytes()));
                }
                _ => p.extend(string(a.as_bytes())),
            }
            // Sometimes cut the packet short.
            if flags % 7 == 0 {
                p.truncate((flags as usize / 7) % (p.len() + 1));
            }
            p
        });
    prop_oneof![8 => request, 1 => prop::collection::vec(any::<u8>(), 1..64)]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn core(root: &Path) -> ServerCore {
    let store = SqliteAccountStore::open(&root.join("db")).unwrap();
    let mut account = Account::new("u", root.join("home"));
    account.password_hash = Some(hash_password("pw").unwrap());
    account.quota = Quota {
        max_bytes: Some(1_000_000),
        max_files: Some(50),
    };
    store.create(&account).await.unwrap();
    let store: Arc<dyn AccountStore> = Arc::new(store);
    ServerCore::new(
        Authenticator::new(store),
        EventBus::default(),
        ServerSettings::default(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_packets_never_panic_or_escape(packets in prop::collection::vec(packet(), 1..40)) {
        HOOK.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICS.fetch_add(1, Ordering::SeqCst);
                default(info);
            }));
        });
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("secret"), SECRET).unwrap();
        std::fs::create_dir_all(tmp.path().join("home/d")).unwrap();
        std::fs::write(tmp.path().join("home/f"), b"0123456789").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), tmp.path().join("home/link")).unwrap();
        let before = PANICS.load(Ordering::SeqCst);
        runtime().block_on(async {
            let core = core(tmp.path()).await;
            let client = ClientInfo::new(Protocol::Sftp, "127.0.0.1".parse().unwrap());
            let session = core.login("u", "pw", &client).await.unwrap();
            let (mut client_end, server_end) = tokio::io::duplex(64 * 1024);
            let (input, output) = tokio::io::split(server_end);
            let server = tokio::spawn(sftp::serve(session, input, output, SftpLimits::default()));
            let mut frames = Vec::new();
            let init = [1u8, 0, 0, 0, 3];
            frames.extend_from_slice(&(init.len() as u32).to_be_bytes());
            frames.extend_from_slice(&init);
            for p in &packets {
                frames.extend_from_slice(&(p.len() as u32).to_be_bytes());
                frames.extend_from_slice(p);
            }
            let (mut read_end, mut write_end) = tokio::io::split(&mut client_end);
            let writer = async {
                let _ = write_end.write_all(&frames).await;
                let _ = write_end.shutdown().await;
            };
            let reader = async {
                let mut sink = vec![0u8; 64 * 1024];
                while matches!(read_end.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            let ended = tokio::time::timeout(Duration::from_secs(20), async {
                tokio::join!(writer, reader);
            })
            .await;
            assert!(ended.is_ok(), "the server did not end after the client closed");
            server.await.unwrap();
        });
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), before);
        prop_assert_eq!(std::fs::read(tmp.path().join("secret")).unwrap(), SECRET);
        let mut outside: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with("db"))
            .collect();
        outside.sort();
        prop_assert_eq!(outside, ["home", "secret"]);
    }
}
