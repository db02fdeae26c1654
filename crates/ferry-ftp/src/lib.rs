//! ferry-ftp: the FTP and FTPS front-end of ferry.
//!
//! It parses control-connection commands ([`command`]), keeps per-connection protocol state, moves data over
//! passive or active data connections ([`datachan`]), and maps every file operation onto a
//! [`ferry_core::session::Session`]. Permissions, quotas, confinement and events are the core's business.
//!
//! ```no_run
//! # async fn demo(core: ferry_core::server::ServerCore) -> std::io::Result<()> {
//! use ferry_ftp::{FtpConfig, FtpServer};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:2121").await?;
//! FtpServer::new(core, FtpConfig::default()).serve(listener, false).await
//! # }
//! ```

pub mod command;
mod control;
pub mod datachan;
pub mod listing;
mod low_water;
mod reaper;
pub mod reply;
mod server;
mod session;
pub mod tls;
mod transfer;

pub use server::{FtpConfig, FtpServer};
