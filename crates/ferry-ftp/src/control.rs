//! The control connection: bounded line reading (with Telnet sequences removed, as RFC 959 asks) and replies.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::reply::Reply;
use crate::tls::MaybeTls;

/// Bytes requested from the socket per read; the line buffer grows by this much at most beyond a line.
const READ_CHUNK: usize = 256;
/// A line buffer larger than this after a command is shrunk back, so idle sessions stay small.
const IDLE_BUFFER: usize = 1024;

const IAC: u8 = 255;

/// What reading a line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// The line was longer than allowed; it has been skipped.
    TooLong,
    /// The line was not valid UTF-8.
    InvalidUtf8,
}

/// A control connection.
pub struct Control {
    stream: MaybeTls,
    buf: Vec<u8>,
    max_line: usize,
    /// Skipping the rest of an overlong line.
    discarding: bool,
    /// Longest wait for a reply to be taken by the client: a client that sends commands and reads no replies
    /// would otherwise hold its session, and its connection slot, forever.
    write_timeout: Duration,
}

impl Control {
    pub fn new(stream: MaybeTls, max_line: usize, write_timeout: Duration) -> Self {
        Control {
            stream,
            buf: Vec::new(),
            max_line,
            discarding: false,
            write_timeout,
        }
    }

    pub fn stream(&self) -> &MaybeTls {
        &self.stream
    }

    /// Switches the connection to TLS (AUTH TLS). Input the client pipelined before the handshake is dropped,
    /// so that nothing sent in the clear is taken as if it were protected (the STARTTLS injection attack).
    pub async fn upgrade(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
        wait: std::time::Duration,
    ) -> io::Result<()> {
        self.buf.clear();
        self.stream.upgrade(acceptor, wait).await
    }

    /// Reads the next line. `Ok(None)` at end of stream. Cancel-safe: input read so far stays buffered.
    pub async fn read_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let rest = self.buf.split_off(pos + 1);
                let raw = std::mem::replace(&mut self.buf, rest);
                if self.buf.is_empty() {
                    // Nothing pipelined: an idle session keeps no buffer at all.
                    self.buf = Vec::new();
                } else if self.buf.capacity() > IDLE_BUFFER {
                    self.buf.shrink_to(IDLE_BUFFER);
                }
                if std::mem::take(&mut self.discarding) || raw.len() > self.max_line {
                    return Ok(Some(Line::TooLong));
                }
                return Ok(Some(decode(&raw)));
            }
            if self.buf.len() > self.max_line {
                self.discarding = true;
                self.buf = Vec::new();
            }
            self.buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
            if let MaybeTls::Plain(tcp) = &self.stream {
                if !self.buf.contains(&b'\n') {
                    read_past_urgent_mark(tcp, &mut self.buf)?;
                }
            }
        }
    }

    /// Resolves once the client has closed its side of the connection (or the connection failed), keeping what it
    /// sends before for [`Control::read_line`]; once a line's worth waits unread it reads no more, and stays
    /// pending. Cancel-safe.
    pub async fn closed(&mut self) -> io::Result<()> {
        while self.buf.len() <= self.max_line {
            self.buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(());
            }
        }
        std::future::pending().await
    }

    pub async fn reply(&mut self, reply: &Reply) -> io::Result<()> {
        self.write_raw(reply.to_wire().as_bytes()).await
    }

    /// Writes preformatted reply text (for replies streamed line by line). Fails with `TimedOut` when the client
    /// has not taken it within the write timeout.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = &mut self.stream;
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        tokio::time::timeout(self.write_timeout, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client takes no replies"))?
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Reads what is already queued on the socket without waiting for readiness.
///
/// Clients such as Python's ftplib send `ABOR` as TCP urgent data (the Telnet Synch). With SO_OOBINLINE the urgent
/// byte stays in the stream, but recv(2) stops at the urgent mark; tokio takes that short read for an empty
/// socket and waits for a readiness event that never comes, because the rest of the line has already arrived.
fn read_past_urgent_mark(tcp: &tokio::net::TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut chunk = [0u8; READ_CHUNK];
    // SAFETY: `chunk` is valid for writes of its length; the fd belongs to `tcp`, borrowed for the call.
    let n = unsafe {
        libc::recv(
            tcp.as_raw_fd(),
            chunk.as_mut_ptr().cast(),
            chunk.len(),
            libc::MSG_DONTWAIT,
        )
    };
    match n {
        n if n > 0 => buf.extend_from_slice(chunk.get(..n as usize).unwrap_or_default()),
        0 => {}
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Removes Telnet commands (`IAC x`, `IAC WILL/WONT/DO/DONT x`; `IAC IAC` is a literal 255) and the line end.
fn decode(raw: &[u8]) -> Line {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match (raw[i], raw.get(i + 1)) {
            (IAC, Some(&IAC)) => {
                out.push(IAC);
                i += 2;
            }
            (IAC, Some(&(251..=254))) => i += 3,
            (IAC, _) => i += 2,
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    while matches!(out.last(), Some(b'\n' | b'\r')) {
        out.pop();
    }
    match String::from_utf8(out) {
        Ok(s) => Line::Text(s),
        Err(_) => Line::InvalidUtf8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reply_the_client_never_takes_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut control = Control::new(MaybeTls::Plain(server), 16, Duration::from_millis(200));
        // More than the socket buffers of both ends hold.
        let reply = vec![b'x'; 64 * 1024 * 1024];
        let error = control.write_raw(&reply).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn overlong_lines_are_refused_even_when_complete() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut control = Control::new(MaybeTls::Plain(server), 16, Duration::from_secs(5));
        client
            .write_all(format!("MKD {}\r\nNOOP\r\n", "x".repeat(40)).as_bytes())
            .await
            .unwrap();
        assert_eq!(control.read_line().await.unwrap(), Some(Line::TooLong));
        assert_eq!(
            control.read_line().await.unwrap(),
            Some(Line::Text("NOOP".into()))
        );
    }

    #[test]
    fn telnet_sequences_are_removed() {
        assert_eq!(
            decode(b"\xff\xf4\xff\xf2ABOR\r\n"),
            Line::Text("ABOR".into())
        );
        assert_eq!(decode(b"NOOP\r\n"), Line::Text("NOOP".into()));
        assert_eq!(
            decode(b"\xff\xfb\x01USER a\r\n"),
            Line::Text("USER a".into())
        );
        assert_eq!(decode(b"RETR \xff\xff\r\n"), Line::InvalidUtf8);
        assert_eq!(decode(b"\xff"), Line::Text(String::new()));
    }
}
