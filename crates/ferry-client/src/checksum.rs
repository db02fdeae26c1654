//! Checksum algorithms the client and servers agree on, and local hashing.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

/// A checksum algorithm, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgorithm {
    Sha256,
    Sha512,
    Sha1,
    Md5,
}

impl HashAlgorithm {
    /// Every algorithm, best first.
    pub const ALL: [HashAlgorithm; 4] = [
        HashAlgorithm::Sha256,
        HashAlgorithm::Sha512,
        HashAlgorithm::Sha1,
        HashAlgorithm::Md5,
    ];

    /// `sha256`, as in `--algorithm` and JSON output.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Md5 => "md5",
        }
    }

    /// The name in FTP's `HASH`/`OPTS HASH` (`SHA-256`).
    pub fn ftp_name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "SHA-256",
            HashAlgorithm::Sha512 => "SHA-512",
            HashAlgorithm::Sha1 => "SHA-1",
            HashAlgorithm::Md5 => "MD5",
        }
    }

    /// The legacy FTP command (`XSHA256`).
    pub fn ftp_legacy_command(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "XSHA256",
            HashAlgorithm::Sha512 => "XSHA512",
            HashAlgorithm::Sha1 => "XSHA1",
            HashAlgorithm::Md5 => "XMD5",
        }
    }

    /// The coreutils program (`sha256sum`) that SSH servers run on request.
    pub fn sum_command(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256sum",
            HashAlgorithm::Sha512 => "sha512sum",
            HashAlgorithm::Sha1 => "sha1sum",
            HashAlgorithm::Md5 => "md5sum",
        }
    }

    /// Parses `sha256`, `SHA-256`, `sha-256` and the like.
    pub fn parse(name: &str) -> Option<HashAlgorithm> {
        let n = name.to_ascii_lowercase().replace('-', "");
        HashAlgorithm::ALL.into_iter().find(|a| a.name() == n)
    }

    /// Length of the hex digest.
    pub fn hex_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 64,
            HashAlgorithm::Sha512 => 128,
            HashAlgorithm::Sha1 => 40,
            HashAlgorithm::Md5 => 32,
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The first algorithm both sides compute.
pub fn common_algorithm(a: &[HashAlgorithm], b: &[HashAlgorithm]) -> Option<HashAlgorithm> {
    a.iter().copied().find(|x| b.contains(x))
}

/// An incremental hash.
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
    Sha1(Sha1),
    Md5(Md5),
}

impl Hasher {
    pub fn new(algorithm: HashAlgorithm) -> Hasher {
        match algorithm {
            HashAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            HashAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
            HashAlgorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            HashAlgorithm::Md5 => Hasher::Md5(Md5::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Md5(h) => h.update(data),
        }
    }

    /// The lower-case hex digest.
    pub fn finish_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Md5(h) => hex::encode(h.finalize()),
        }
    }
}

/// Hashes a local file, or a byte range of it, on the blocking pool.
pub async fn hash_local_file(
    path: &Path,
    algorithm: HashAlgorithm,
    range: Option<Range<u64>>,
) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let (start, len) = match range {
            Some(r) => (r.start, Some(r.end.saturating_sub(r.start))),
            None => (0, None),
        };
        file.seek(SeekFrom::Start(start))?;
        let mut reader: Box<dyn Read> = match len {
            Some(len) => Box::new(file.take(len)),
            None => Box::new(file),
        };
        let mut hasher = Hasher::new(algorithm);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finish_hex())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Checks that `s` looks like a hex digest of `algorithm`, and lower-cases it.
pub fn normalize_hex(s: &str, algorithm: HashAlgorithm) -> Option<String> {
    (s.len() == algorithm.hex_len() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_every_spelling() {
        assert_eq!(HashAlgorithm::parse("SHA-256"), Some(HashAlgorithm::Sha256));
        assert_eq!(HashAlgorithm::parse("sha512"), Some(HashAlgorithm::Sha512));
        assert_eq!(HashAlgorithm::parse("MD5"), Some(HashAlgorithm::Md5));
        assert_eq!(HashAlgorithm::parse("crc32"), None);
    }

    #[tokio::test]
    async fn local_ranges_hash_like_slices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut h = Hasher::new(HashAlgorithm::Sha256);
        h.update(&data[10..5000]);
        assert_eq!(
            hash_local_file(&path, HashAlgorithm::Sha256, Some(10..5000))
                .await
                .unwrap(),
            h.finish_hex()
        );
        let mut h = Hasher::new(HashAlgorithm::Md5);
        h.update(&data);
        assert_eq!(
            hash_local_file(&path, HashAlgorithm::Md5, None)
                .await
                .unwrap(),
            h.finish_hex()
        );
    }
}
