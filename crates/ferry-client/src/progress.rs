//! How the transfer engine tells the outside world what it is doing. The CLI renders these calls as progress bars,
//! plain lines or JSON; the engine knows nothing of terminals.

use std::time::Duration;

use crate::error::ClientError;
use crate::transfer::TransferReport;

/// Receives the engine's progress. Calls for different files may come from different tasks at once.
pub trait Progress: Send + Sync {
    /// The work ahead: how many files and bytes (sizes of the sources).
    fn begin(&self, _files: usize, _bytes: u64) {}
    /// File `id` starts (or starts again after a retry) at `resumed_from` of `size` bytes.
    fn start(&self, id: usize, name: &str, size: u64, resumed_from: u64);
    /// `bytes` more bytes of file `id` moved.
    fn advance(&self, id: usize, bytes: u64);
    /// File `id` failed with a transient error and is tried again after `delay`.
    fn retry(&self, _id: usize, _error: &ClientError, _attempt: u32, _delay: Duration) {}
    /// File `id` is done, or failed for good.
    fn finish(&self, id: usize, name: &str, result: &Result<TransferReport, ClientError>);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: usize, _: &str, _: u64, _: u64) {}
    fn advance(&self, _: usize, _: u64) {}
    fn finish(&self, _: usize, _: &str, _: &Result<TransferReport, ClientError>) {}
}
