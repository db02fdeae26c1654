//! Holding a session's transfers to the byte rates of its account ([`RateLimits`]): each direction has one pace,
//! shared by every transfer of the session that way (an SFTP session's parallel downloads share its rate).
//!
//! A pace counts bytes after they have moved and waits until the rate allows them, so a transfer runs ahead of
//! its rate by at most one piece. Only time lost to idleness is made up, and only [`BURST`] of it: a transfer that
//! paused does not then run at full speed.

use std::num::NonZeroU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::account::RateLimits;

/// Idle time a pace makes up for: after a pause, this much of the rate passes at once.
const BURST: Duration = Duration::from_millis(100);
/// The smallest piece worth a wait, whatever the rate.
const MIN_PIECE: usize = 4096;

/// The paces of one session.
#[derive(Debug, Default)]
pub(crate) struct Paces {
    upload: Option<Pace>,
    download: Option<Pace>,
}

impl Paces {
    pub(crate) fn new(rates: RateLimits) -> Self {
        Paces {
            upload: rates.upload.map(Pace::new),
            download: rates.download.map(Pace::new),
        }
    }

    pub(crate) fn upload(&self) -> Option<&Pace> {
        self.upload.as_ref()
    }

    pub(crate) fn download(&self) -> Option<&Pace> {
        self.download.as_ref()
    }
}

/// One direction's pace.
#[derive(Debug)]
pub(crate) struct Pace {
    /// Bytes per second.
    rate: NonZeroU64,
    /// When the bytes counted so far are due at the rate.
    due: Mutex<Instant>,
}

impl Pace {
    fn new(rate: NonZeroU64) -> Self {
        Pace {
            rate,
            due: Mutex::new(Instant::now()),
        }
    }

    /// Counts `n` bytes that have moved and waits until the rate allows them.
    pub(crate) async fn moved(&self, n: u64) {
        let now = Instant::now();
        let due = {
            let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
            let earliest = now.checked_sub(BURST).unwrap_or(now);
            let start = (*due).max(earliest);
            // Past the clock's range only with an absurd count: then that piece is not held back.
            *due = start.checked_add(self.time_for(n)).unwrap_or(start);
            *due
        };
        if due > now {
            tokio::time::sleep_until(due).await;
        }
    }

    /// The most bytes to move at once: about a tenth of a second's worth, so that a slow rate is kept smoothly
    /// rather than in long silences a client could take for a stalled connection.
    pub(crate) fn piece(&self) -> usize {
        usize::try_from(self.rate.get() / 10)
            .unwrap_or(usize::MAX)
            .max(MIN_PIECE)
    }

    fn time_for(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate.get());
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pace(rate: u64) -> Pace {
        Pace::new(NonZeroU64::new(rate).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_take_the_time_the_rate_gives_them() {
        let pace = pace(1000);
        let start = Instant::now();
        for _ in 0..10 {
            pace.moved(500).await;
        }
        // 5,000 bytes at 1,000/s, from a pace just made (no idle time to make up).
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_is_made_up_for_only_a_burst_long() {
        let pace = pace(1000);
        pace.moved(1000).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        pace.moved(100).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "within the burst");
        pace.moved(1000).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn transfers_of_a_session_share_its_rate() {
        let pace = Arc::new(pace(1000));
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let pace = Arc::clone(&pace);
                tokio::spawn(async move {
                    for _ in 0..5 {
                        pace.moved(100).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // 2,000 bytes together.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn pieces_are_a_tenth_of_a_second_and_not_tiny() {
        assert_eq!(pace(10 << 20).piece(), 1 << 20);
        assert_eq!(pace(1000).piece(), MIN_PIECE);
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let pace = pace(1);
        assert_eq!(pace.time_for(u64::MAX), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn no_rates_no_paces() {
        let paces = Paces::new(RateLimits::default());
        assert!(paces.upload().is_none() && paces.download().is_none());
        let paces = Paces::new(RateLimits {
            upload: NonZeroU64::new(5),
            download: None,
        });
        assert!(paces.upload().is_some() && paces.download().is_none());
    }
}
