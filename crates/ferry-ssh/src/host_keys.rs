//! The server's host keys: an Ed25519 key, and an RSA key for older clients, kept in OpenSSH format in one directory.
//! They are generated on first start (private keys mode 0600) and reused afterwards, so that clients that have
//! seen the server once keep trusting it. Generating the RSA key takes a good part of a second, so [`load`] leaves
//! it to the caller as a [`PendingKey`] that can be generated while the server already runs.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::RsaKeypair;
use russh::keys::ssh_key::{self, HashAlg, LineEnding};
use russh::keys::{Algorithm, PrivateKey};

/// Size of a generated RSA host key, in bits (OpenSSH's default).
pub const RSA_BITS: usize = 3072;

/// The key files, in the order the server offers them.
const KEY_FILES: [(&str, KeyKind); 2] = [
    ("ssh_host_ed25519_key", KeyKind::Ed25519),
    ("ssh_host_rsa_key", KeyKind::Rsa),
];

#[derive(Clone, Copy)]
enum KeyKind {
    Ed25519,
    Rsa,
}

/// Why the host keys could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        source: ssh_key::Error,
    },
}

/// A host key that does not exist yet.
pub struct PendingKey {
    path: PathBuf,
    kind: KeyKind,
}

impl PendingKey {
    /// Generates the key and saves it, unless another process (a second server on the same data directory)
    /// saved one first: then that key is used. CPU-heavy for RSA: run it off the async runtime.
    pub fn generate(self) -> Result<PrivateKey, HostKeyError> {
        let key = generate(self.kind).map_err(|source| HostKeyError::Key {
            path: self.path.clone(),
            source,
        })?;
        match write_key(&self.path, &key) {
            Ok(true) => Ok(key),
            Ok(false) => read_key(self.path),
            Err(source) => Err(HostKeyError::Io {
                path: self.path,
                source,
            }),
        }
    }
}

/// Loads the host keys from `dir` (created with mode 0700 if needed). A missing Ed25519 key is generated at once;
/// a missing RSA key is returned to be generated later.
pub fn load(dir: &Path) -> Result<(Vec<PrivateKey>, Vec<PendingKey>), HostKeyError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| HostKeyError::Io {
            path: dir.to_owned(),
            source,
        })?;
    let mut keys = Vec::with_capacity(KEY_FILES.len());
    let mut pending = Vec::new();
    for (name, kind) in KEY_FILES {
        let path = dir.join(name);
        if !path.exists() {
            let key = PendingKey { path, kind };
            match kind {
                KeyKind::Ed25519 => keys.push(key.generate()?),
                KeyKind::Rsa => pending.push(key),
            }
            continue;
        }
        keys.push(read_key(path)?);
    }
    Ok((keys, pending))
}

/// Loads the host keys from `dir`, generating any that is missing.
pub fn load_or_generate(dir: &Path) -> Result<Vec<PrivateKey>, HostKeyError> {
    let (mut keys, pending) = load(dir)?;
    for key in pending {
        keys.push(key.generate()?);
    }
    Ok(keys)
}

/// `SHA256:...` fingerprints of the keys with their algorithm names, for the startup output.
pub fn fingerprints(keys: &[PrivateKey]) -> Vec<String> {
    keys.iter()
        .map(|k| format!("{} {}", k.fingerprint(HashAlg::Sha256), k.algorithm()))
        .collect()
}

fn generate(kind: KeyKind) -> Result<PrivateKey, ssh_key::Error> {
    let mut rng = rand::rng();
    let mut key = match kind {
        KeyKind::Ed25519 => PrivateKey::random(&mut rng, Algorithm::Ed25519)?,
        KeyKind::Rsa => PrivateKey::from(RsaKeypair::random(&mut rng, RSA_BITS)?),
    };
    key.set_comment("ferry host key");
    Ok(key)
}

fn read_key(path: PathBuf) -> Result<PrivateKey, HostKeyError> {
    let text = fs::read_to_string(&path).map_err(|source| HostKeyError::Io {
        path: path.clone(),
        source,
    })?;
    PrivateKey::from_openssh(text).map_err(|source| HostKeyError::Key { path, source })
}

/// Writes the private key (0600, never readable by others even for a moment) and its `.pub` companion; `false`
/// when a key was already there (saved by another process meanwhile), which is left as it is. The key is written
/// whole to a name of this process's own and then linked into place, which fails rather than replace a key.
fn write_key(path: &Path, key: &PrivateKey) -> io::Result<bool> {
    let private = key.to_openssh(LineEnding::LF).map_err(io::Error::other)?;
    let public = key.public_key().to_openssh().map_err(io::Error::other)?;
    let temp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(private.as_bytes())?;
    file.sync_all()?;
    let linked = fs::hard_link(&temp, path);
    fs::remove_file(&temp)?;
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    }
    fs::write(path.with_extension("pub"), format!("{public}\n"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_generated_once_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ssh");
        let first = load_or_generate(&dir).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].algorithm(), Algorithm::Ed25519);
        assert!(first[1].algorithm().is_rsa());
        for (name, _) in KEY_FILES {
            let mode = fs::metadata(dir.join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let again = load_or_generate(&dir).unwrap();
        assert_eq!(fingerprints(&first), fingerprints(&again));
    }

    /// Two servers started at once on a new data directory: the second to save a key uses the first one's (it
    /// used to fail, the first having renamed away the temporary file both wrote).
    #[test]
    fn a_key_saved_first_by_another_process_is_the_one_used() {
        let tmp = tempfile::tempdir().unwrap();
        let (keys, _) = load(tmp.path()).unwrap();
        let path = tmp.path().join("raced_key");
        fs::copy(tmp.path().join(KEY_FILES[0].0), &path).unwrap();
        let pending = PendingKey {
            path,
            kind: KeyKind::Ed25519,
        };
        let used = pending.generate().unwrap();
        assert_eq!(fingerprints(&[used]), fingerprints(&keys));
        let names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");
        assert!(!tmp.path().join("raced_key.pub").exists());
    }

    #[test]
    fn only_rsa_is_left_pending() {
        let tmp = tempfile::tempdir().unwrap();
        let (keys, pending) = load(tmp.path()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(pending.len(), 1);
        let rsa = pending.into_iter().next().unwrap().generate().unwrap();
        let (again, pending) = load(tmp.path()).unwrap();
        assert!(pending.is_empty());
        assert_eq!(fingerprints(&again)[1], fingerprints(&[rsa])[0]);
    }
}
