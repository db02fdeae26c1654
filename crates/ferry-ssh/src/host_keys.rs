//! The server's host keys: an Ed25519 key, and an RSA key for older clients, kept in OpenSSH format in one directory.
//! They are generated on first start (private keys mode 0600) and reused afterwards, so that clients that have
//! seen the server once keep trusting it.

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

/// Loads the host keys from `dir`, generating any that is missing. `dir` is created with mode 0700 if needed.
pub fn load_or_generate(dir: &Path) -> Result<Vec<PrivateKey>, HostKeyError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| HostKeyError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let mut keys = Vec::with_capacity(KEY_FILES.len());
    for (name, kind) in KEY_FILES {
        let path = dir.join(name);
        let key_err = |source| HostKeyError::Key {
            path: path.clone(),
            source,
        };
        let key = match fs::read_to_string(&path) {
            Ok(text) => PrivateKey::from_openssh(text).map_err(key_err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = generate(kind).map_err(key_err)?;
                write_key(&path, &key).map_err(io_err(&path))?;
                key
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        keys.push(key);
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

/// Writes the private key (0600, never readable by others even for a moment) and its `.pub` companion.
fn write_key(path: &Path, key: &PrivateKey) -> io::Result<()> {
    let private = key.to_openssh(LineEnding::LF).map_err(io::Error::other)?;
    let public = key.public_key().to_openssh().map_err(io::Error::other)?;
    let temp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(private.as_bytes())?;
    file.sync_all()?;
    fs::rename(&temp, path)?;
    fs::write(path.with_extension("pub"), format!("{public}\n"))
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
}
