//! Uploads that go from a TCP socket to a local file without passing through ferry: splice(2) moves what has
//! arrived on the socket into a pipe (the kernel hands over references to the received pages, no copy), and from
//! the pipe into the file (one copy, into the page cache). A buffered upload copies twice, out of the socket and
//! into the page cache.
//!
//! The first step runs on the runtime thread (`SPLICE_F_NONBLOCK`, on a non-blocking socket: it never waits), the
//! second on the blocking pool, as a buffered write would, and empties the pipe.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Size asked for each pipe: a splice from the socket takes at most this much (less when the received data is
/// spread over many small pages).
pub(super) const PIPE_SIZE: usize = 1024 * 1024;

/// A pipe holding data spliced from a socket until it is written to a file.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe.
    held: usize,
}

impl Pipe {
    /// A pipe of [`PIPE_SIZE`]. Fails where the kernel refuses the size (an unprivileged user past
    /// `/proc/sys/fs/pipe-user-pages-soft`, or `pipe-max-size` below it): with its default 64 KiB, every 64 KiB
    /// would cost a trip to the blocking pool, so the caller writes from buffers instead.
    pub(super) fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)?;
        Ok(Pipe {
            read,
            write,
            held: 0,
        })
    }

    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Moves what has arrived on `socket` (non-blocking) into this pipe, as much as fits; 0 at the end of the
    /// stream. `WouldBlock` when nothing has arrived, or when the pipe is full: the kernel counts a pipe's room in
    /// pages, not bytes, and received data may fill a page only in part, so a pipe holding data can be full with
    /// fewer than [`PIPE_SIZE`] bytes in it. Only on an empty pipe does `WouldBlock` mean that the socket has
    /// nothing.
    pub(super) fn fill_from(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        let room = PIPE_SIZE.saturating_sub(self.held);
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let flags = rustix::pipe::SpliceFlags::NONBLOCK | rustix::pipe::SpliceFlags::MOVE;
        let n = rustix::pipe::splice(socket, None, &self.write, None, room, flags)?;
        self.held += n;
        Ok(n)
    }

    /// Writes everything the pipe holds to `file` at its position (blocking: call it on the blocking pool). Where
    /// the file refuses splice (`EINVAL`: a file system without splice support), the data is read out of the pipe
    /// and written instead.
    pub(super) fn drain_into(&mut self, file: &std::fs::File) -> io::Result<()> {
        while self.held > 0 {
            let moved = rustix::pipe::splice(
                &self.read,
                None,
                file.as_fd(),
                None,
                self.held,
                rustix::pipe::SpliceFlags::MOVE,
            );
            match moved {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.held -= n,
                Err(rustix::io::Errno::INVAL) => return self.copy_into(file),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads what the pipe holds and writes it to `file` (blocking).
    fn copy_into(&mut self, mut file: &std::fs::File) -> io::Result<()> {
        use std::io::Write;
        let mut buf = vec![0u8; self.held.min(64 * 1024)];
        while self.held > 0 {
            let want = self.held.min(buf.len());
            let n = rustix::io::read(&self.read, &mut buf[..want])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            file.write_all(&buf[..n])?;
            self.held -= n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_pipe_moves_socket_data_to_the_file_position() {
        let (mut client, server) = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| {
                let c = std::net::TcpStream::connect(l.local_addr()?)?;
                Ok((c, l.accept()?.0))
            })
            .unwrap();
        server.set_nonblocking(true).unwrap();
        let mut pipe = Pipe::new().unwrap();
        let e = pipe.fill_from(server.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"hello pipe").unwrap();
        let mut n = 0;
        while n == 0 {
            n = match pipe.fill_from(server.as_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => panic!("{e}"),
            };
        }
        assert_eq!((n, pipe.held()), (10, 10));
        client.write_all(b"!").unwrap();
        let mut more = 0;
        while more == 0 {
            more = pipe.fill_from(server.as_fd()).unwrap_or(0);
        }
        assert_eq!(pipe.held(), 11);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b">>").unwrap();
        pipe.drain_into(&file).unwrap();
        assert_eq!(pipe.held(), 0);
        file.rewind().unwrap();
        let mut out = String::new();
        file.read_to_string(&mut out).unwrap();
        assert_eq!(out, ">>hello pipe!");
        drop(client);
        assert_eq!(pipe.fill_from(server.as_fd()).unwrap(), 0);
    }

    #[test]
    fn data_a_file_cannot_splice_is_copied_instead() {
        // Splicing into a file opened to append fails with EINVAL.
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut pipe = Pipe::new().unwrap();
        a.write_all(b"appended").unwrap();
        pipe.held = rustix::pipe::splice(
            &b,
            None,
            &pipe.write,
            None,
            8,
            rustix::pipe::SpliceFlags::empty(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old ").unwrap();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        pipe.drain_into(&file).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old appended");
    }
}
