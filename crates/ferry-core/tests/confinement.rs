//! Property test: whatever path a client sends, resolved as a virtual path and handed to local storage, no
//! operation reads, writes, creates or deletes anything outside the home, even with symlinks that point out.

use std::path::Path;

use ferry_core::storage::local::LocalStorage;
use ferry_core::storage::{Storage, WriteMode};
use ferry_core::vpath::VirtualPath;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

/// Components that tempt an escape: parent references, symlinks out (absolute and relative), a link to a link,
/// plain names, and odd characters.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("".to_owned()),
        Just("out_abs".to_owned()),
        Just("out_rel".to_owned()),
        Just("chain".to_owned()),
        Just("dir".to_owned()),
        Just("secret".to_owned()),
        Just("outside".to_owned()),
        Just("new".to_owned()),
        "[a-z\\\\ ]{1,3}",
    ]
}

fn client_path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 0..6)).prop_map(|(abs, parts)| {
        let joined = parts.join("/");
        if abs {
            format!("/{joined}")
        } else {
            joined
        }
    })
}

/// Every file below `dir` with its contents, sorted.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let ft = entry.file_type().unwrap();
            let path = entry.path();
            if ft.is_dir() {
                pending.push(path.clone());
                out.push((path.display().to_string(), Vec::new()));
            } else if ft.is_file() {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            } else {
                out.push((path.display().to_string(), b"link".to_vec()));
            }
        }
    }
    out.sort();
    out
}

async fn attempt(storage: &LocalStorage, cwd: &str, input: &str) {
    let cwd = VirtualPath::parse(cwd).unwrap();
    let Ok(path) = VirtualPath::resolve(&cwd, input) else {
        return;
    };
    let rel = path.relative();
    let _ = storage.metadata(rel).await;
    let _ = storage.read_dir(rel).await;
    let _ = storage.open_read(rel, 0).await;
    if let Ok(mut w) = storage.open_write(rel, WriteMode::Truncate).await {
        let _ = w.write_all(b"pwned").await;
        let _ = w.shutdown().await;
    }
    if let Ok(mut w) = storage.open_write(rel, WriteMode::Append).await {
        let _ = w.write_all(b"pwned").await;
        let _ = w.shutdown().await;
    }
    let _ = storage.create_dir(rel).await;
    let _ = storage.set_mode(rel, 0o777).await;
    let _ = storage.set_len(rel, 0).await;
    let _ = storage.rename(rel, "renamed").await;
    let _ = storage.rename("dir/inner", rel).await;
    let _ = storage.remove_file(rel).await;
    let _ = storage.remove_dir(rel).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn no_client_path_escapes_the_home(cwd in prop_oneof![Just("/"), Just("/dir")], input in client_path()) {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"top secret").unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("dir")).unwrap();
        std::fs::write(home.join("dir/inner"), b"inner").unwrap();
        std::os::unix::fs::symlink(&outside, home.join("out_abs")).unwrap();
        std::os::unix::fs::symlink("../outside", home.join("out_rel")).unwrap();
        std::os::unix::fs::symlink("out_rel", home.join("chain")).unwrap();
        std::os::unix::fs::symlink("../../outside/secret", home.join("dir/secret")).unwrap();

        let before_outside = snapshot(&outside);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let storage = LocalStorage::open(&home).await.unwrap();
            attempt(&storage, cwd, &input).await;
        });
        prop_assert_eq!(snapshot(&outside), before_outside);
        let top: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        prop_assert_eq!(top.len(), 2, "something was created next to the home: {:?}", top);
    }
}
