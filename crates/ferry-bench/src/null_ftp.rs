//! `null-ftp`: the floor for the `sessions` scenario. A server that answers an FTP login (220 greeting, 331 to
//! `USER`, 230 to `PASS`, 221 to `QUIT`, 502 to anything else) without checking, storing or logging anything, so
//! that `sessions` against it measures what a login costs the machine with no server work at all: the kernel's TCP
//! work on both ends, the runtime's, and the load generator's. A login server cannot beat it on the same machine.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest command line read; a longer one closes the connection.
const MAX_LINE: usize = 512;

/// How long accepting pauses after an error (out of file descriptors, for one), instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// Serves logins on `listener` until the process ends.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    crate::raise_open_file_limit();
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(session(tcp));
            }
            Err(_) => tokio::time::sleep(ACCEPT_PAUSE).await,
        }
    }
}

/// One connection: the greeting, then a reply to each command line until `QUIT` or the client closes.
async fn session(mut tcp: TcpStream) -> io::Result<()> {
    tcp.write_all(b"220 null-ftp ready\r\n").await?;
    let mut buf = [0u8; MAX_LINE];
    let mut filled = 0;
    loop {
        let Some(free) = buf.get_mut(filled..).filter(|free| !free.is_empty()) else {
            return Ok(());
        };
        let n = tcp.read(free).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        while let Some(end) = buf[..filled].iter().position(|&b| b == b'\n') {
            let (reply, quit) = reply_to(&buf[..end]);
            tcp.write_all(reply).await?;
            if quit {
                return Ok(());
            }
            buf.copy_within(end + 1..filled, 0);
            filled -= end + 1;
        }
    }
}

/// The reply to one command line (without its line feed), and whether the connection ends after it.
fn reply_to(line: &[u8]) -> (&'static [u8], bool) {
    let verb = line
        .split(|&b| b == b' ' || b == b'\r')
        .next()
        .unwrap_or_default();
    if verb.eq_ignore_ascii_case(b"USER") {
        (b"331 Password required\r\n", false)
    } else if verb.eq_ignore_ascii_case(b"PASS") {
        (b"230 Logged in\r\n", false)
    } else if verb.eq_ignore_ascii_case(b"QUIT") {
        (b"221 Goodbye\r\n", true)
    } else {
        (b"502 Not implemented\r\n", false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_follow_the_verb_in_any_case() {
        assert_eq!(
            reply_to(b"USER bench\r"),
            (&b"331 Password required\r\n"[..], false)
        );
        assert_eq!(reply_to(b"pass x y"), (&b"230 Logged in\r\n"[..], false));
        assert_eq!(reply_to(b"QUIT"), (&b"221 Goodbye\r\n"[..], true));
        assert_eq!(
            reply_to(b"RETR f"),
            (&b"502 Not implemented\r\n"[..], false)
        );
        assert_eq!(reply_to(b""), (&b"502 Not implemented\r\n"[..], false));
    }

    #[tokio::test]
    async fn the_sessions_scenario_logs_in_and_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(listener));
        let target = format!("ftp://bench:pw@127.0.0.1:{port}/").parse().unwrap();
        let options = crate::sessions::Options {
            sessions: 40,
            concurrency: 8,
            sources: None,
            pids: Vec::new(),
            settle: Duration::ZERO,
            hold: Duration::ZERO,
            warmup: true,
        };
        let report = crate::sessions::run(&target, &options).await.unwrap();
        assert_eq!(
            (report.sessions_opened, report.failures),
            (40, 0),
            "{:?}",
            report.first_error
        );
    }
}
