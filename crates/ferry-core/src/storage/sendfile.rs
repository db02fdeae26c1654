//! Zero-copy sends from a local file to a socket (sendfile(2)), and the page-cache check that keeps them from
//! waiting for the disk on the async runtime.
//!
//! sendfile on a non-blocking socket returns `WouldBlock` when the socket buffer is full, so it never waits for
//! the network; it does wait for the disk when the file's pages are not in the page cache. A sender therefore
//! checks, before each window of [`WINDOW`] bytes, that the window's last page is cached (a one-byte
//! `preadv2(RWF_NOWAIT)`, which fails rather than wait) and otherwise reads the window on the blocking pool first.
//! A page evicted in between costs one short wait for the disk, not a blocked runtime for a whole file.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Bytes made resident in the page cache ahead of the sends.
pub const WINDOW: u64 = 2 * 1024 * 1024;

/// Sends up to `max` bytes from `file`'s current position to `socket`, advancing the position; 0 at the end of
/// the file.
pub fn send(file: BorrowedFd<'_>, socket: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
    Ok(rustix::fs::sendfile(socket, file, None, max)?)
}

/// Whether the byte at `offset` can be read without waiting for the disk. Also true beyond the end of the file,
/// where there is nothing to wait for, and on a file system that cannot tell (no `RWF_NOWAIT`), where the sends
/// then wait for the disk as a read would.
pub fn is_cached(file: BorrowedFd<'_>, offset: u64) -> bool {
    let mut byte = [0u8; 1];
    let mut bufs = [io::IoSliceMut::new(&mut byte)];
    let probe = rustix::io::preadv2(file, &mut bufs, offset, rustix::io::ReadWriteFlags::NOWAIT);
    probe != Err(rustix::io::Errno::AGAIN)
}

/// Reads `len` bytes of `file` from `offset` into the page cache, waiting for the disk: call it on the blocking
/// pool.
pub fn load(file: OwnedFd, offset: u64, len: u64) -> io::Result<()> {
    // Start the reads of the whole window at once, then wait for them by reading it.
    let _ = rustix::fs::fadvise(
        &file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::WillNeed,
    );
    let mut scratch = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let want = scratch
            .len()
            .min(usize::try_from(len - done).unwrap_or(usize::MAX));
        let n = rustix::io::pread(&file, &mut scratch[..want], offset + done)?;
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn sends_from_the_file_position_and_advances_it() {
        let data: Vec<u8> = (0..=255).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        file.seek(SeekFrom::Start(10)).unwrap();
        let (out, mut peer) = UnixStream::pair().unwrap();
        assert_eq!(send(file.as_fd(), out.as_fd(), 20).unwrap(), 20);
        assert_eq!(file.stream_position().unwrap(), 30);
        let mut got = [0u8; 20];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, data[10..30]);
        file.seek(SeekFrom::End(0)).unwrap();
        assert_eq!(send(file.as_fd(), out.as_fd(), 20).unwrap(), 0);
    }

    #[test]
    fn a_loaded_window_is_cached() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; 3 * 1024 * 1024]).unwrap();
        load(file.as_fd().try_clone_to_owned().unwrap(), 0, WINDOW).unwrap();
        assert!(is_cached(file.as_fd(), WINDOW - 1));
        assert!(is_cached(file.as_fd(), 10 * WINDOW), "beyond the end");
    }
}
