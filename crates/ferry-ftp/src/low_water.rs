//! `SO_RCVLOWAT` on the data socket of an upload: while a client sends faster than ferry writes, the reader is woken
//! once per [`MARK`] bytes instead of once per arriving segment. On loopback every 64 KiB segment woke the runtime
//! thread out of epoll: server CPU for a 1 GiB STOR from curl, 3 runs each, was 0.68–0.86 s with the default mark
//! of one byte and 0.46–0.54 s with 256 KiB.
//!
//! The mark is raised only after a whole upload buffer was waiting (the client is ahead), and only when the socket's
//! receive buffer is at least four times the mark: Linux grows a smaller buffer to fit the mark and clamps the TCP
//! window to it, which would throttle a client far away. A read that has waited [`PATIENCE`] without reaching the
//! mark puts it back to one byte, so a client that slows down has its data taken within that time and the stall
//! timeout keeps its meaning.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Bytes that must be queued before a reader is woken, while the mark is raised.
pub const MARK: usize = 256 * 1024;
/// How long a read waits for the mark before it lowers it and takes what has arrived.
pub const PATIENCE: Duration = Duration::from_millis(50);

/// The low-water mark of one data socket.
pub struct LowWater {
    /// The data connection's TCP socket; it outlives this value (both belong to one transfer).
    fd: Option<RawFd>,
    raised: bool,
}

impl LowWater {
    /// Starts at the default mark of one byte; `None` (no TCP socket) never raises it.
    pub fn new(fd: Option<RawFd>) -> Self {
        LowWater { fd, raised: false }
    }

    pub fn is_raised(&self) -> bool {
        self.raised
    }

    /// Raises the mark to [`MARK`] if the receive buffer is large enough (see the module docs). Failures leave the
    /// mark as it was: it only saves wake-ups.
    pub fn raise(&mut self) {
        let Some(fd) = self.fd else { return };
        if self.raised || !matches!(get(fd, libc::SO_RCVBUF), Ok(n) if n >= 4 * MARK as libc::c_int)
        {
            return;
        }
        self.raised = set(fd, libc::SO_RCVLOWAT, MARK as libc::c_int).is_ok();
    }

    /// Puts the mark back to one byte; the kernel then wakes a waiting reader if anything is queued.
    pub fn lower(&mut self) {
        if let (Some(fd), true) = (self.fd, self.raised) {
            self.raised = set(fd, libc::SO_RCVLOWAT, 1).is_err();
        }
    }
}

fn set(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads a c_int from `value` for the length given; `fd` is the transfer's open socket.
    let done = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes to `value`, a c_int; `fd` is the transfer's open socket.
    let done = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if done == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_raised_mark_holds_small_writes_back_until_lowered() {
        let (mut client, mut server) = pair().await;
        // A buffer large enough for the mark, as autotuning makes it for a fast upload.
        set(server.as_raw_fd(), libc::SO_RCVBUF, 4 * MARK as libc::c_int).unwrap();
        // tokio tries the first read of a new socket without waiting for readiness; a short read clears it, so
        // that the next read waits for the kernel's wake-up, which is what the mark governs.
        let mut buf = [0u8; 16];
        client.write_all(b"first").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 5);
        let mut mark = LowWater::new(Some(server.as_raw_fd()));
        mark.raise();
        assert!(mark.is_raised());
        client.write_all(b"small").await.unwrap();
        let held = tokio::time::timeout(PATIENCE, server.read(&mut buf)).await;
        assert!(held.is_err(), "woken below the mark");
        mark.lower();
        let n = tokio::time::timeout(Duration::from_secs(10), server.read(&mut buf))
            .await
            .expect("lowering the mark wakes the reader")
            .unwrap();
        assert_eq!(&buf[..n], b"small");
    }

    #[tokio::test]
    async fn the_mark_stays_down_on_a_small_receive_buffer() {
        let (_client, server) = pair().await;
        set(server.as_raw_fd(), libc::SO_RCVBUF, 64 * 1024).unwrap();
        let mut mark = LowWater::new(Some(server.as_raw_fd()));
        mark.raise();
        assert!(!mark.is_raised());
        assert_eq!(get(server.as_raw_fd(), libc::SO_RCVLOWAT).unwrap(), 1);
        let mut none = LowWater::new(None);
        none.raise();
        assert!(!none.is_raised());
    }
}
