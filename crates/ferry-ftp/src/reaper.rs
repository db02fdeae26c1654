//! One task per server wakes the sessions whose idle or login deadline has passed, and every session when the
//! server shuts down. An idle session then holds a small shared [`Watch`] (a deadline, two flags and a waker)
//! instead of a timer and a shutdown future of its own: at a million sessions, a timer each costs more than the
//! rest of the session's state.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use ferry_core::server::ServerCore;
use futures_util::task::AtomicWaker;
use slab::Slab;
use tokio::time::Instant;

/// How often deadlines are checked: a session closes at most this long after its timeout.
const TICK: Duration = Duration::from_millis(250);
/// A deadline that never passes (while a transfer runs).
const NEVER: u64 = u64::MAX;

const IDLE: u8 = 1;
const SHUTDOWN: u8 = 2;

/// Why the reaper woke a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alarm {
    /// Its deadline has passed (check [`Registration::expired`]: activity may have moved it since).
    Idle,
    /// The server is shutting down.
    Shutdown,
}

/// The sessions of one server, checked every [`TICK`].
#[derive(Clone)]
pub(crate) struct Reaper {
    inner: Arc<Inner>,
}

struct Inner {
    /// Deadlines are milliseconds since this instant.
    epoch: Instant,
    sessions: Mutex<Slab<Arc<Watch>>>,
    started: AtomicBool,
    shutting_down: AtomicBool,
}

/// What a session and the reaper share.
struct Watch {
    deadline_ms: AtomicU64,
    alarms: AtomicU8,
    waker: AtomicWaker,
}

impl Watch {
    fn raise(&self, alarm: u8) {
        self.alarms.fetch_or(alarm, Ordering::AcqRel);
        self.waker.wake();
    }
}

impl Reaper {
    pub(crate) fn new() -> Self {
        Reaper {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                sessions: Mutex::new(Slab::new()),
                started: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the checking task, once, on the current runtime. It ends when the server shuts down.
    pub(crate) fn start(&self, core: &ServerCore) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let mut shutdown = core.shutdown_signal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tick.tick() => inner.wake_expired(),
                }
            }
            inner.shutting_down.store(true, Ordering::Release);
            for (_, watch) in inner.sessions().iter() {
                watch.raise(SHUTDOWN);
            }
        });
    }

    /// Watches a new session; it starts with no deadline.
    pub(crate) fn register(&self) -> Registration {
        let watch = Arc::new(Watch {
            deadline_ms: AtomicU64::new(NEVER),
            alarms: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        });
        let key = self.inner.sessions().insert(Arc::clone(&watch));
        // After the shutdown sweep a new session would never hear of it: tell it now.
        if self.inner.shutting_down.load(Ordering::Acquire) {
            watch.raise(SHUTDOWN);
        }
        Registration {
            reaper: Arc::clone(&self.inner),
            watch,
            key,
        }
    }
}

impl Inner {
    fn sessions(&self) -> MutexGuard<'_, Slab<Arc<Watch>>> {
        // Every update is a single slab operation: a poisoned lock still holds a consistent slab.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    fn wake_expired(&self) {
        let now = self.now_ms();
        for (_, watch) in self.sessions().iter() {
            if watch.deadline_ms.load(Ordering::Acquire) <= now {
                watch.raise(IDLE);
            }
        }
    }
}

/// A session's place in the [`Reaper`]; dropping it leaves.
pub(crate) struct Registration {
    reaper: Arc<Inner>,
    watch: Arc<Watch>,
    key: usize,
}

impl Registration {
    /// Sets the deadline `after` from now, replacing the previous one.
    pub(crate) fn expire_after(&self, after: Duration) {
        let after = u64::try_from(after.as_millis()).unwrap_or(NEVER);
        let deadline = self.reaper.now_ms().saturating_add(after);
        self.watch.deadline_ms.store(deadline, Ordering::Release);
    }

    /// No deadline until the next [`Registration::expire_after`] (a transfer is running).
    pub(crate) fn never_expire(&self) {
        self.watch.deadline_ms.store(NEVER, Ordering::Release);
    }

    /// Whether the deadline has passed. An [`Alarm::Idle`] raised just before activity moved the deadline is
    /// stale: check this before acting on it.
    pub(crate) fn expired(&self) -> bool {
        self.watch.deadline_ms.load(Ordering::Acquire) <= self.reaper.now_ms()
    }

    /// Waits for the next alarm and takes it. Shutdown comes first when both are raised.
    pub(crate) async fn alarm(&self) -> Alarm {
        let watch = &*self.watch;
        poll_fn(|cx| {
            let take = |watch: &Watch| {
                let alarms = watch.alarms.load(Ordering::Acquire);
                let alarm = if alarms & SHUTDOWN != 0 {
                    (SHUTDOWN, Alarm::Shutdown)
                } else if alarms & IDLE != 0 {
                    (IDLE, Alarm::Idle)
                } else {
                    return None;
                };
                watch.alarms.fetch_and(!alarm.0, Ordering::AcqRel);
                Some(alarm.1)
            };
            if let Some(alarm) = take(watch) {
                return Poll::Ready(alarm);
            }
            watch.waker.register(cx.waker());
            // An alarm raised between the first look and the registration must not be lost.
            match take(watch) {
                Some(alarm) => Poll::Ready(alarm),
                None => Poll::Pending,
            }
        })
        .await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sessions = self.reaper.sessions();
        if sessions.contains(self.key) {
            sessions.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::auth::Authenticator;
    use ferry_core::events::EventBus;
    use ferry_core::store::SqliteAccountStore;

    fn core() -> (tempfile::TempDir, ServerCore) {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteAccountStore::open(&tmp.path().join("db")).unwrap();
        let auth = Authenticator::new(Arc::new(store));
        (
            tmp,
            ServerCore::new(auth, EventBus::default(), Default::default()),
        )
    }

    #[tokio::test]
    async fn an_expired_session_is_woken_and_activity_moves_the_deadline() {
        let (_tmp, core) = core();
        let reaper = Reaper::new();
        reaper.start(&core);
        let session = reaper.register();
        session.expire_after(Duration::from_millis(300));
        let quiet = reaper.register();
        quiet.never_expire();
        let started = Instant::now();
        let alarm = tokio::time::timeout(Duration::from_secs(30), session.alarm()).await;
        assert_eq!(alarm.unwrap(), Alarm::Idle);
        // Never before the deadline.
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(session.expired());
        // Activity moves the deadline away; a session without one is never woken.
        session.expire_after(Duration::from_secs(3600));
        assert!(!session.expired());
        assert_eq!(quiet.watch.alarms.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn shutdown_wakes_every_session_and_new_ones_at_once() {
        let (_tmp, core) = core();
        let reaper = Reaper::new();
        reaper.start(&core);
        let sessions: Vec<_> = (0..3).map(|_| reaper.register()).collect();
        core.shut_down();
        for s in &sessions {
            assert_eq!(s.alarm().await, Alarm::Shutdown);
        }
        // The sweep is over; a late session is told at registration.
        while !reaper.inner.shutting_down.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        assert_eq!(reaper.register().alarm().await, Alarm::Shutdown);
    }

    #[tokio::test]
    async fn a_dropped_session_leaves_the_reaper() {
        let reaper = Reaper::new();
        let a = reaper.register();
        let b = reaper.register();
        drop(a);
        assert_eq!(reaper.inner.sessions().len(), 1);
        drop(b);
        assert!(reaper.inner.sessions().is_empty());
    }
}
