//! Session caps (global, per client address, per account) and the timeouts every front-end applies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::account::canonical_ip;

/// Limits shared by every front-end. `0` caps mean unlimited.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Disconnect a session that sends nothing for this long.
    pub idle_timeout: Duration,
    /// Time allowed from connect to a successful login.
    pub login_timeout: Duration,
    /// Time allowed to establish a data connection, for a data connection to make progress, and for a client to
    /// take a reply on its control connection.
    pub data_timeout: Duration,
    /// Pause after each failed login, to slow password guessing.
    pub failed_login_delay: Duration,
    /// Disconnect after this many failed logins on one connection; `0`: no limit (the delay and
    /// `max_failures_per_ip` still apply).
    pub max_login_failures: u32,
    /// Refuse password logins from a client address (an IPv6 /64) after this many failed ones within
    /// `failure_window`, whatever connections they came on; `0`: no limit.
    pub max_failures_per_ip: u32,
    pub failure_window: Duration,
    /// Longest command line (FTP) accepted, in bytes.
    pub max_line_len: usize,
}

impl Limits {
    /// Whether a connection with `failures` failed logins has had too many.
    pub fn too_many_login_failures(&self, failures: u32) -> bool {
        self.max_login_failures > 0 && failures >= self.max_login_failures
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            // Enough for a NAT of many clients with parallel transfers, and too few for one address to take every
            // slot (the rest of 20,000) and keep them for the login timeout.
            max_connections_per_ip: 256,
            idle_timeout: Duration::from_secs(300),
            login_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(60),
            failed_login_delay: Duration::from_secs(1),
            max_login_failures: 3,
            max_failures_per_ip: 20,
            failure_window: Duration::from_secs(300),
            max_line_len: 4096 + 16,
        }
    }
}

/// Why a connection or session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("too many connections")]
    TooManyConnections,
    #[error("too many connections from your address")]
    TooManyFromAddress,
    #[error("too many sessions for this account")]
    TooManySessions,
    #[error("too many failed logins from your address, try again later")]
    TooManyFailures,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_account: HashMap<String, usize>,
}

/// Counts live connections and sessions; the guards it hands out give their slot back when dropped.
#[derive(Clone, Default)]
pub struct ConnectionLimiter {
    counts: Arc<Mutex<Counts>>,
}

/// A held connection slot.
pub struct ConnectionSlot {
    limiter: ConnectionLimiter,
    ip: IpAddr,
}

/// A held per-account session slot.
pub struct AccountSlot {
    limiter: ConnectionLimiter,
    account: String,
}

impl ConnectionLimiter {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while holding this lock cannot leave the counts inconsistent (each update is one statement).
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection slot for a client at `ip` (an IPv6 client's /64 counts as one address, as for failed
    /// logins: a subscriber has all of its addresses to connect from).
    pub fn connect(&self, ip: IpAddr, limits: &Limits) -> Result<ConnectionSlot, LimitError> {
        let ip = address_key(ip);
        let mut counts = self.counts();
        if limits.max_connections > 0 && counts.total >= limits.max_connections {
            return Err(LimitError::TooManyConnections);
        }
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if limits.max_connections_per_ip > 0 && from_ip >= limits.max_connections_per_ip {
            return Err(LimitError::TooManyFromAddress);
        }
        counts.total += 1;
        *counts.per_ip.entry(ip).or_default() += 1;
        Ok(ConnectionSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Takes a session slot for `account`, allowing at most `max` at once (`None`: no cap).
    pub fn login(&self, account: &str, max: Option<u32>) -> Result<AccountSlot, LimitError> {
        let mut counts = self.counts();
        let current = counts.per_account.get(account).copied().unwrap_or(0);
        if max.is_some_and(|max| current >= max as usize) {
            return Err(LimitError::TooManySessions);
        }
        *counts.per_account.entry(account.to_owned()).or_default() += 1;
        Ok(AccountSlot {
            limiter: self.clone(),
            account: account.to_owned(),
        })
    }

    /// Live connections in total.
    pub fn connections(&self) -> usize {
        self.counts().total
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts();
        if let Some(n) = counts.per_account.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                counts.per_account.remove(&self.account);
            }
        }
    }
}

/// Addresses whose failed logins are counted at most; past it, windows that have ended are dropped, and if none
/// has, new addresses go uncounted until one ends (a bounded map rather than memory for every address of a flood).
const MAX_COUNTED_ADDRESSES: usize = 65_536;

/// Failed password logins per client address, over fixed windows. The per-connection limit alone lets a guesser
/// open more connections, and every guess for an account queues for its password check ahead of the real user's;
/// an address past the limit is refused before any password is looked at.
#[derive(Default)]
pub struct FailureThrottle {
    by_address: Mutex<HashMap<IpAddr, FailureWindow>>,
}

#[derive(Clone, Copy)]
struct FailureWindow {
    started: Instant,
    failures: u32,
}

impl FailureThrottle {
    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, FailureWindow>> {
        self.by_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a client at `ip` may try a password now.
    pub fn check(&self, ip: IpAddr, limits: &Limits) -> Result<(), LimitError> {
        if limits.max_failures_per_ip == 0 {
            return Ok(());
        }
        let now = Instant::now();
        match self.windows().get(&address_key(ip)) {
            Some(w)
                if now.duration_since(w.started) < limits.failure_window
                    && w.failures >= limits.max_failures_per_ip =>
            {
                Err(LimitError::TooManyFailures)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed password login from `ip`.
    pub fn record_failure(&self, ip: IpAddr, limits: &Limits) {
        if limits.max_failures_per_ip == 0 {
            return;
        }
        let now = Instant::now();
        let ended = |w: &FailureWindow| now.duration_since(w.started) >= limits.failure_window;
        let key = address_key(ip);
        let mut windows = self.windows();
        if !windows.contains_key(&key) && windows.len() >= MAX_COUNTED_ADDRESSES {
            windows.retain(|_, w| !ended(w));
            if windows.len() >= MAX_COUNTED_ADDRESSES {
                return;
            }
        }
        let window = windows.entry(key).or_insert(FailureWindow {
            started: now,
            failures: 0,
        });
        if ended(window) {
            *window = FailureWindow {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

/// What failures are counted by: the address, or for IPv6 its /64 (one subscriber's network, whose addresses
/// are all theirs to use).
fn address_key(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_login_failures_means_no_limit_per_connection() {
        let limits = |max| Limits {
            max_login_failures: max,
            ..Limits::default()
        };
        assert!(!limits(3).too_many_login_failures(2));
        assert!(limits(3).too_many_login_failures(3));
        assert!(!limits(0).too_many_login_failures(1_000));
    }

    #[test]
    fn failures_per_address_are_limited_within_a_window() {
        let throttle = FailureThrottle::default();
        let limits = Limits {
            max_failures_per_ip: 3,
            failure_window: Duration::from_secs(3600),
            ..Limits::default()
        };
        let guesser: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(throttle.check(guesser, &limits), Ok(()));
            throttle.record_failure(guesser, &limits);
        }
        assert_eq!(
            throttle.check(guesser, &limits),
            Err(LimitError::TooManyFailures)
        );
        // The same address mapped into IPv6 is the same client.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(throttle.check(mapped, &limits).is_err());
        // Others are not affected; an IPv6 /64 counts as one.
        assert!(throttle
            .check("192.0.2.2".parse().unwrap(), &limits)
            .is_ok());
        for last in 1..=3 {
            throttle.record_failure(format!("2001:db8::{last}").parse().unwrap(), &limits);
        }
        assert!(throttle
            .check("2001:db8::ffff:1".parse().unwrap(), &limits)
            .is_err());
        assert!(throttle
            .check("2001:db8:0:1::1".parse().unwrap(), &limits)
            .is_ok());
        // A window that has ended starts over; 0 means no limit.
        let short = Limits {
            failure_window: Duration::ZERO,
            ..limits.clone()
        };
        assert!(throttle.check(guesser, &short).is_ok());
        let unlimited = Limits {
            max_failures_per_ip: 0,
            ..limits
        };
        assert!(throttle.check(guesser, &unlimited).is_ok());
    }

    #[test]
    fn per_ip_cap_frees_slots_on_drop() {
        let limiter = ConnectionLimiter::default();
        let limits = Limits {
            max_connections_per_ip: 2,
            ..Limits::default()
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = limiter.connect(ip, &limits).unwrap();
        let _b = limiter.connect(ip, &limits).unwrap();
        assert_eq!(
            limiter.connect(ip, &limits).err(),
            Some(LimitError::TooManyFromAddress)
        );
        assert!(limiter
            .connect("127.0.0.2".parse().unwrap(), &limits)
            .is_ok());
        drop(a);
        assert!(limiter.connect(ip, &limits).is_ok());
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address() {
        let limiter = ConnectionLimiter::default();
        let limits = Limits {
            max_connections_per_ip: 1,
            ..Limits::default()
        };
        let _a = limiter
            .connect("2001:db8:1:2::1".parse().unwrap(), &limits)
            .unwrap();
        assert_eq!(
            limiter
                .connect("2001:db8:1:2:ffff::9".parse().unwrap(), &limits)
                .err(),
            Some(LimitError::TooManyFromAddress)
        );
        assert!(limiter
            .connect("2001:db8:1:3::1".parse().unwrap(), &limits)
            .is_ok());
        // An IPv4 client seen through an IPv6 socket is its IPv4 address.
        let _v4 = limiter
            .connect("::ffff:192.0.2.7".parse().unwrap(), &limits)
            .unwrap();
        assert!(limiter
            .connect("192.0.2.7".parse().unwrap(), &limits)
            .is_err());
    }

    #[test]
    fn global_and_account_caps() {
        let limiter = ConnectionLimiter::default();
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let _a = limiter
            .connect("127.0.0.1".parse().unwrap(), &limits)
            .unwrap();
        assert_eq!(
            limiter.connect("127.0.0.2".parse().unwrap(), &limits).err(),
            Some(LimitError::TooManyConnections)
        );
        let s = limiter.login("bob", Some(1)).unwrap();
        assert!(limiter.login("bob", Some(1)).is_err());
        drop(s);
        assert!(limiter.login("bob", Some(1)).is_ok());
    }
}
