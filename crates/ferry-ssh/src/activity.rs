//! A connection's socket that notes when bytes last moved, either way.
//!
//! russh runs its inactivity timeout inside the connection's own task, and that task waits, timers and all, while
//! a channel's task is not taking the data russh hands it (russh passes channel data on with a bounded, waiting
//! send). A client that makes one of our channel tasks stop reading (by never opening its window while the task
//! writes, then sending more) would hold its connection, its session slot and their memory for ever, even after
//! it went away. The server watches the socket from outside instead, and cuts off a connection on which nothing
//! moved for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When bytes last moved on a connection, shared between its socket and its watcher.
#[derive(Clone)]
pub(crate) struct Activity {
    inner: Arc<ActivityInner>,
}

struct ActivityInner {
    started: Instant,
    /// Milliseconds from `started` to the last move.
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            inner: Arc::new(ActivityInner {
                started: Instant::now(),
                last_ms: AtomicU64::new(0),
            }),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When bytes last moved.
    pub(crate) fn last(&self) -> Instant {
        self.inner.started + Duration::from_millis(self.inner.last_ms.load(Ordering::Relaxed))
    }

    /// Waits until nothing has moved for `idle`; never returns if `idle` is zero (no timeout).
    pub(crate) async fn idle_for(&self, idle: Duration) {
        if idle.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let Some(deadline) = self.last().checked_add(idle) else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream whose reads and writes of at least one byte are noted in an [`Activity`].
pub(crate) struct Watched<S> {
    stream: S,
    activity: Activity,
}

impl<S> Watched<S> {
    pub(crate) fn new(stream: S, activity: Activity) -> Self {
        Watched { stream, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_a_quiet_stretch_after_the_last_move() {
        let activity = Activity::new();
        let (near, mut far) = tokio::io::duplex(64);
        let mut near = Watched::new(near, activity.clone());
        let begin = Instant::now();
        tokio::time::sleep(Duration::from_secs(8)).await;
        near.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        far.write_all(b"y").await.unwrap();
        let mut byte = [0u8; 1];
        near.read_exact(&mut byte).await.unwrap();
        activity.idle_for(Duration::from_secs(10)).await;
        // The read at 16 s was the last move: quiet from there for 10 s.
        assert_eq!(begin.elapsed().as_secs(), 26);
    }
}
