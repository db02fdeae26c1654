//! Moving an upload from a TCP socket into a local file inside the kernel: splice(2) moves what has arrived on the
//! socket into a pipe (references to the received pages, no copy) and from the pipe into the file (one copy, into
//! the page cache). Buffered writes copy twice, out of the socket and into the page cache, and cross to the
//! blocking pool once per buffer. See [`crate::transfer::Upload::pump`], which runs this on one blocking thread.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::pipe::SpliceFlags;

/// Size asked for each pipe: one splice from the socket moves at most this much (less when the received data is
/// spread over partly filled pages: the kernel counts a pipe's room in pages).
const PIPE_SIZE: usize = 1024 * 1024;

/// A pipe that data from a socket passes through on its way to a file. It is empty between calls.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pipe of [`PIPE_SIZE`]. Fails where the kernel refuses the size (an unprivileged user past
    /// `/proc/sys/fs/pipe-user-pages-soft`, or `pipe-max-size` below it); the caller then writes from buffers.
    pub(crate) fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)?;
        Ok(Pipe { read, write })
    }

    /// Moves what has arrived on `socket` (non-blocking) into the empty pipe, as much as fits; 0 at the end of the
    /// stream, `WouldBlock` when nothing has arrived.
    pub(crate) fn fill_from(&self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        Ok(rustix::pipe::splice(
            socket,
            None,
            &self.write,
            None,
            PIPE_SIZE,
            flags,
        )?)
    }

    /// Writes the `len` bytes the pipe holds to `file` at its position (blocking). A file that refuses splice
    /// (`EINVAL`: opened to append, or a file system without it) gets them read out and written instead; uploads
    /// to append do not pump (see [`crate::storage::FileWriter::direct_file`]), so this is the rare case.
    pub(crate) fn drain_into(&self, file: &File, mut len: usize) -> io::Result<()> {
        while len > 0 {
            match rustix::pipe::splice(&self.read, None, file, None, len, SpliceFlags::MOVE) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => len -= n,
                Err(rustix::io::Errno::INVAL) => return self.copy_into(file, len),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn copy_into(&self, mut file: &File, mut len: usize) -> io::Result<()> {
        let mut buf = vec![0u8; len.min(64 * 1024)];
        let mut pipe = File::from(self.read.try_clone()?);
        while len > 0 {
            let want = len.min(buf.len());
            pipe.read_exact(&mut buf[..want])?;
            file.write_all(&buf[..want])?;
            len -= want;
        }
        Ok(())
    }
}

/// Waits until `socket` has data (or its end, or an error) to read, at most `timeout`; false if it has none by
/// then. With `SO_RCVLOWAT` raised, "data" means at least the mark.
pub(crate) fn wait_readable(socket: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let timeout = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [PollFd::new(&socket, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(ready) => return Ok(ready > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    /// A connected pair: the client end, and the server end non-blocking as the runtime's sockets are.
    pub(crate) fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    #[test]
    fn socket_data_reaches_the_file_at_its_position() {
        let (mut client, server) = connected();
        let pipe = Pipe::new().unwrap();
        let e = pipe.fill_from(server.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(!wait_readable(server.as_fd(), Duration::from_millis(1)).unwrap());

        client.write_all(b"hello pipe").unwrap();
        assert!(wait_readable(server.as_fd(), Duration::from_secs(10)).unwrap());
        let n = pipe.fill_from(server.as_fd()).unwrap();
        assert_eq!(n, 10);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b">>").unwrap();
        pipe.drain_into(&file, n).unwrap();

        drop(client);
        assert!(wait_readable(server.as_fd(), Duration::from_secs(10)).unwrap());
        assert_eq!(pipe.fill_from(server.as_fd()).unwrap(), 0);
        let mut out = String::new();
        std::io::Seek::rewind(&mut file).unwrap();
        file.read_to_string(&mut out).unwrap();
        assert_eq!(out, ">>hello pipe");
    }

    #[test]
    fn a_file_open_to_append_gets_the_data_copied() {
        let (mut client, server) = connected();
        let pipe = Pipe::new().unwrap();
        client.write_all(b"appended").unwrap();
        assert!(wait_readable(server.as_fd(), Duration::from_secs(10)).unwrap());
        let n = pipe.fill_from(server.as_fd()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old ").unwrap();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        pipe.drain_into(&file, n).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old appended");
    }
}
