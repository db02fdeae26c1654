//! One retry policy for the whole client: how often a transient failure (see [`ClientError::is_transient`]) is
//! tried again and how long to wait before each try. Connection setup, the single-shot commands and each file of
//! a transfer all follow it.
//!
//! The waits grow exponentially from [`RetryPolicy::first_delay`] (1 s, 2 s, 4 s, ...) up to
//! [`RetryPolicy::max_delay`] (30 s), and each is shortened by a random fraction of up to a quarter, so that
//! clients that failed together do not all come back at the same instant.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ClientError, Result};

/// Told about each retry before its wait: the error, which retry this is (from 1), and the wait.
pub type RetryNotice = Arc<dyn Fn(&ClientError, u32, Duration) + Send + Sync>;

/// How transient failures are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (0: fail at the first transient error).
    pub retries: u32,
    /// The wait before the first retry; each further one doubles it.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (from 1), before jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.first_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_delay)
    }

    /// The wait before retry number `retry`, with jitter: between three quarters of [`RetryPolicy::backoff`]
    /// and all of it.
    pub fn delay(&self, retry: u32) -> Duration {
        let full = self.backoff(retry);
        full.saturating_sub(full.mul_f64(jitter_fraction() * 0.25))
    }

    /// Runs `op` until it succeeds, fails with an error that is not transient, or the retries are used up.
    /// `notice` hears of each retry.
    pub async fn run<T, F, Fut>(&self, notice: Option<&RetryNotice>, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match op().await {
                Err(e) if self.again(&e, tries, notice).await => {}
                result => return result,
            }
        }
    }

    /// Whether to try again after `error` ended try number `tries` (from 1). If so, tells `notice` and waits
    /// first. For loops that [`RetryPolicy::run`] cannot express.
    pub async fn again(
        &self,
        error: &ClientError,
        tries: u32,
        notice: Option<&RetryNotice>,
    ) -> bool {
        if !error.is_transient() || tries > self.retries {
            return false;
        }
        let wait = self.delay(tries);
        if let Some(notice) = notice {
            notice(error, tries, wait);
        }
        tokio::time::sleep(wait).await;
        true
    }
}

/// A number in `[0, 1)` that differs between calls and processes; good enough to spread retries, not for
/// anything secret.
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn lost() -> ClientError {
        ClientError::lost("f", "connection reset")
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = (1..=7).map(|r| p.backoff(r).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_only_shortens_by_up_to_a_quarter() {
        let p = RetryPolicy::default();
        for r in 1..10 {
            let d = p.delay(r);
            assert!(
                d <= p.backoff(r) && d >= p.backoff(r).mul_f64(0.75),
                "{d:?}"
            );
        }
    }

    fn quick(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let tries = AtomicU32::new(0);
        let heard = Arc::new(AtomicU32::new(0));
        let h = heard.clone();
        let notice: RetryNotice = Arc::new(move |_, _, _| {
            h.fetch_add(1, Ordering::SeqCst);
        });
        let r = quick(3)
            .run(Some(&notice), || async {
                if tries.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(lost())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.ok(), Some(7));
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        assert_eq!(heard.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn retries_stop_after_the_limit() {
        let tries = AtomicU32::new(0);
        let r: Result<()> = quick(2)
            .run(None, || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err(lost())
            })
            .await;
        assert!(matches!(r, Err(ClientError::ConnectionLost { .. })));
        assert_eq!(tries.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        for error in [
            || ClientError::Auth {
                target: "h".into(),
                reason: "530 Login incorrect".into(),
            },
            || ClientError::NotFound { path: "f".into() },
            || ClientError::Refused {
                target: "h".into(),
                reason: "host key changed".into(),
            },
            || ClientError::Usage("bad".into()),
        ] {
            let tries = AtomicU32::new(0);
            let r: Result<()> = quick(5)
                .run(None, || async {
                    tries.fetch_add(1, Ordering::SeqCst);
                    Err(error())
                })
                .await;
            assert!(r.is_err());
            assert_eq!(tries.load(Ordering::SeqCst), 1);
        }
    }
}
