//! SFTP sessions through russh and russh-sftp, with the cipher pinned to `aes128-gcm@openssh.com` so that ferry and
//! OpenSSH are measured doing the same cryptographic work.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::{cipher, Preferred};
use russh_sftp::client::SftpSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ftp::{connect_from, IO_TIMEOUT};
use crate::{Error, Result, Target};

/// The cipher every SFTP benchmark uses.
pub const CIPHER: &str = "aes128-gcm@openssh.com";

/// A russh client configuration for benchmarks: one cipher only (by its SSH name), large windows, no idle timeout.
pub fn client_config(cipher_name: &str) -> Result<Arc<client::Config>> {
    let cipher: &'static [cipher::Name] = match cipher_name {
        "aes128-gcm@openssh.com" => &[cipher::AES_128_GCM],
        "aes256-gcm@openssh.com" => &[cipher::AES_256_GCM],
        "chacha20-poly1305@openssh.com" => &[cipher::CHACHA20_POLY1305],
        "aes128-ctr" => &[cipher::AES_128_CTR],
        "aes256-ctr" => &[cipher::AES_256_CTR],
        other => return Err(Error::Argument(format!("unknown SSH cipher {other:?}"))),
    };
    Ok(Arc::new(client::Config {
        preferred: Preferred {
            cipher: Cow::Borrowed(cipher),
            ..Preferred::default()
        },
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 32 * 1024,
        inactivity_timeout: None,
        nodelay: true,
        ..client::Config::default()
    }))
}

/// A logged-in SSH connection with the SFTP subsystem open.
pub struct SftpConnection {
    ssh: Handle<AcceptHostKey>,
    sftp: SftpSession,
}

impl SftpConnection {
    /// Connects from `source`, authenticates with the target's password, and starts SFTP.
    pub async fn open(
        target: &Target,
        source: IpAddr,
        config: &Arc<client::Config>,
    ) -> Result<Self> {
        let tcp = connect_from(source, target.addr).await?;
        let mut ssh = timed(
            "SSH handshake",
            client::connect_stream(Arc::clone(config), tcp, AcceptHostKey),
        )
        .await??;
        let auth = timed(
            "SSH password authentication",
            ssh.authenticate_password(target.user.clone(), target.password.clone()),
        )
        .await??;
        if !auth.success() {
            return Err(Error::Protocol(format!(
                "SSH password authentication refused for {}",
                target.user
            )));
        }
        let channel = timed("SSH channel", ssh.channel_open_session()).await??;
        timed("SFTP subsystem", channel.request_subsystem(true, "sftp")).await??;
        let sftp_config = russh_sftp::client::Config {
            max_concurrent_reads: 64,
            max_concurrent_writes: 64,
            request_timeout_secs: IO_TIMEOUT.as_secs(),
            ..russh_sftp::client::Config::default()
        };
        let sftp = timed(
            "SFTP init",
            SftpSession::new_with_config(channel.into_stream(), sftp_config),
        )
        .await??;
        Ok(SftpConnection { ssh, sftp })
    }

    /// Uploads `size` bytes to `path`, writing `chunk` over and over.
    pub async fn store(&self, path: &str, size: u64, chunk: &[u8]) -> Result<()> {
        let mut file = self.sftp.create(path).await?;
        let mut left = size;
        while left > 0 {
            let n = chunk.len().min(left as usize);
            file.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        file.shutdown().await?;
        Ok(())
    }

    /// Downloads `path` into `buf` and returns its size.
    pub async fn retrieve(&self, path: &str, buf: &mut [u8]) -> Result<u64> {
        let mut file = self.sftp.open(path).await?;
        let mut total = 0u64;
        loop {
            let n = file.read(buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        file.shutdown().await?;
        Ok(total)
    }

    /// Reads the directory `path` and returns the number of entries.
    pub async fn list(&self, path: &str) -> Result<u64> {
        let path = if path.is_empty() { "." } else { path };
        Ok(self.sftp.read_dir(path).await?.count() as u64)
    }

    /// Removes the file `path`, ignoring an error (it may not exist).
    pub async fn remove_if_present(&self, path: &str) {
        let _ = self.sftp.remove_file(path).await;
    }

    /// Creates `path`, ignoring an error (it may exist).
    pub async fn make_dir(&self, path: &str) {
        let _ = self.sftp.create_dir(path).await;
    }

    /// Ends the SFTP session and the SSH connection.
    pub async fn close(self) {
        let _ = self.sftp.close().await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.ssh
                .disconnect(russh::Disconnect::ByApplication, "", "en"),
        )
        .await;
    }
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(IO_TIMEOUT, f)
        .await
        .map_err(|_| Error::Timeout(what.to_owned()))
}

/// Trusts every host key: the targets are loopback servers the benchmark started itself.
pub struct AcceptHostKey;

impl client::Handler for AcceptHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        Ok(true)
    }
}
