//! ferry-core: everything a ferry protocol front-end needs and nothing protocol-specific.
//!
//! A front-end (FTP, SFTP, ...) takes a connection slot and logs a client in through [`server::ServerCore`],
//! receives a [`session::Session`] for the account, and then only calls virtual-path
//! operations on that session: `list`, `open_read`, `open_write`, `remove`, `rename`, `mkdir`, `checksum`, ...
//! The session decides permissions, quotas and confinement, talks to [`storage::Storage`], keeps quota usage and
//! publishes [`events::Event`]s. A front-end maps [`error::CoreError`] to its protocol's replies in one place.
//!
//! ```no_run
//! # async fn demo(core: ferry_core::server::ServerCore) -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_core::{events::Protocol, session::ClientInfo, vpath::VirtualPath};
//! let client = ClientInfo::new(Protocol::Ftp, "127.0.0.1".parse()?);
//! let _slot = core.connect(client.ip)?;
//! let session = core.login("alice", "secret", &client).await?;
//! let mut listing = session.list(&VirtualPath::root()).await?;
//! while let Some(entry) = listing.next().await {
//!     println!("{}", entry?.name);
//! }
//! # Ok(()) }
//! ```

pub mod account;
pub mod auth;
pub mod checksum;
pub mod datetime;
pub mod error;
pub mod events;
pub mod limits;
mod pace;
pub mod quota;
pub mod registry;
pub mod server;
pub mod session;
pub mod storage;
pub mod store;
pub mod transfer;
pub mod vpath;
pub mod xferlog;

pub use error::{CoreError, CoreResult};
