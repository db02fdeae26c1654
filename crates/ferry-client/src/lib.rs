//! ferry's client side: one URL syntax and one [`Transport`](transport::Transport) trait for FTP, FTPS and SFTP
//! servers (and the local filesystem), and a transfer [`Engine`](transfer::Engine) that resumes, verifies,
//! retries, runs files in parallel and splits large downloads into segments. Progress goes to a
//! [`Progress`](progress::Progress) implementation, so the engine knows nothing of terminals.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_client::error::ClientError> {
//! use std::sync::Arc;
//! use ferry_client::transport::{ConnectOptions, Endpoint, Pool};
//! use ferry_client::transfer::{Engine, Job, TransferOptions};
//! use ferry_client::url::RemoteUrl;
//!
//! let url = RemoteUrl::parse("sftp://alice@files.example.com/srv/data.bin")?;
//! let remote = Pool::remote(Endpoint::new(url.clone(), ConnectOptions::default()));
//! let engine = Engine::new(remote, Pool::local(), TransferOptions::default(),
//!                          Arc::new(ferry_client::progress::NoProgress));
//! let job = Job { source: url.path.clone(), destination: "data.bin".into(), name: "data.bin".into(),
//!                 fresh: false };
//! let report = engine.copy(0, &job).await?;
//! println!("{} bytes, verified by {:?}", report.bytes, report.verified);
//! # Ok(()) }
//! ```

pub mod checksum;
pub mod error;
pub mod mirror;
pub mod netrc;
pub mod progress;
pub mod retry;
pub mod ssh_config;
pub mod transfer;
pub mod transport;
pub mod url;
