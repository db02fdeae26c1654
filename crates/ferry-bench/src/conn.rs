//! One logged-in connection to the target, FTP(S) or SFTP, behind the few operations the scenarios need.

use std::net::IpAddr;
use std::sync::Arc;

use crate::ftp::{Control, ListCommand, Listing};
use crate::sftp::SftpConnection;
use crate::{Result, Scheme, SourceIps, Target};

/// Size of the buffer each stream reads into and writes from.
pub const CHUNK: usize = 256 * 1024;

/// Opens connections to one target, sharing the TLS or SSH configuration between them.
#[derive(Clone)]
pub struct Connector {
    pub target: Target,
    pub sources: SourceIps,
    tls: Option<Arc<rustls::ClientConfig>>,
    ssh: Option<Arc<russh::client::Config>>,
}

impl Connector {
    pub fn new(target: &Target, sources: SourceIps) -> Result<Self> {
        Ok(Connector {
            target: target.clone(),
            sources,
            tls: match target.scheme {
                Scheme::Ftps => Some(crate::ftp::tls_config()?),
                _ => None,
            },
            ssh: match target.scheme {
                Scheme::Sftp => Some(crate::sftp::client_config(&target.ssh_cipher)?),
                _ => None,
            },
        })
    }

    /// A connector whose connections all come from one address: the first of `sources` or the usual loopback.
    pub fn single_source(target: &Target) -> Result<Self> {
        let source = match target.addr.ip() {
            IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
            v6 => v6,
        };
        Connector::new(target, SourceIps::single(source))
    }

    /// Opens the `i`th connection and logs in, and nothing more (no TYPE, PBSZ or PROT): an idle session.
    pub async fn open_session(&self, i: usize) -> Result<Connection> {
        let source = self.sources.pick(i);
        match &self.ssh {
            Some(config) => Ok(Connection::Sftp(
                SftpConnection::open(&self.target, source, config).await?,
            )),
            None => {
                let mut control = Control::connect(&self.target, source, self.tls.as_ref()).await?;
                control
                    .login(&self.target.user, &self.target.password)
                    .await?;
                Ok(Connection::Ftp(control))
            }
        }
    }

    /// Opens the `i`th connection (its source address is picked round-robin) and logs in.
    pub async fn open(&self, i: usize) -> Result<Connection> {
        let source = self.sources.pick(i);
        match &self.ssh {
            Some(config) => Ok(Connection::Sftp(
                SftpConnection::open(&self.target, source, config).await?,
            )),
            None => Ok(Connection::Ftp(
                Control::open(&self.target, source, self.tls.as_ref()).await?,
            )),
        }
    }
}

/// A logged-in connection.
pub enum Connection {
    Ftp(Control),
    Sftp(SftpConnection),
}

impl Connection {
    pub async fn store(&mut self, path: &str, size: u64, chunk: &[u8]) -> Result<()> {
        match self {
            Connection::Ftp(c) => c.store(path, size, chunk).await,
            Connection::Sftp(c) => c.store(path, size, chunk).await,
        }
    }

    pub async fn retrieve(&mut self, path: &str, buf: &mut [u8]) -> Result<u64> {
        match self {
            Connection::Ftp(c) => c.retrieve(path, buf).await,
            Connection::Sftp(c) => c.retrieve(path, buf).await,
        }
    }

    /// Deletes the file `path` if the server lets it, for a scenario that must start without it; a refusal (no
    /// such file, or not allowed) is not an error, since FTP answers both with the same 550.
    pub async fn remove_if_present(&mut self, path: &str) -> Result<()> {
        match self {
            Connection::Ftp(c) => c.remove_if_present(path).await,
            Connection::Sftp(c) => {
                c.remove_if_present(path).await;
                Ok(())
            }
        }
    }

    /// Creates `path`; an existing directory is fine.
    pub async fn make_dir(&mut self, path: &str) -> Result<()> {
        match self {
            Connection::Ftp(c) => c.make_dir(path).await,
            Connection::Sftp(c) => {
                c.make_dir(path).await;
                Ok(())
            }
        }
    }

    /// Lists `path`: with MLSD when the FTP server announces MLST, else LIST; with READDIR over SFTP. Returns the
    /// command used.
    pub async fn list(&mut self, path: &str, buf: &mut [u8]) -> Result<(&'static str, Listing)> {
        match self {
            Connection::Ftp(c) => {
                let command = if c
                    .features()
                    .await?
                    .iter()
                    .any(|f| f.to_ascii_uppercase().starts_with("MLST"))
                {
                    ListCommand::Mlsd
                } else {
                    ListCommand::List
                };
                let listing = c.list(command, path, buf).await?;
                Ok((
                    if command == ListCommand::Mlsd {
                        "MLSD"
                    } else {
                        "LIST"
                    },
                    listing,
                ))
            }
            Connection::Sftp(c) => {
                let entries = c.list(path).await?;
                Ok((
                    "READDIR",
                    Listing {
                        bytes: 0,
                        lines: entries,
                    },
                ))
            }
        }
    }

    pub async fn close(self) {
        match self {
            Connection::Ftp(c) => c.quit().await,
            Connection::Sftp(c) => c.close().await,
        }
    }
}

/// A buffer of `CHUNK` bytes with a repeating non-zero pattern, to upload from.
pub fn upload_chunk() -> Arc<Vec<u8>> {
    Arc::new((0..CHUNK).map(|i| (i % 251) as u8).collect())
}
