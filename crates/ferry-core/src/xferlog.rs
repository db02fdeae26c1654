//! The classic wu-ftpd/vsftpd transfer log (`xferlog(5)`), written by an event-bus subscriber.

use std::path::Path;

use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::auth::ANONYMOUS_NAMES;
use crate::events::{Event, EventBus, EventKind};

/// One xferlog line for a finished upload or download, or `None` for other events.
pub fn format_line(event: &Event) -> Option<String> {
    let direction = match event.kind {
        EventKind::Upload => 'i',
        EventKind::Download => 'o',
        _ => return None,
    };
    let time = OffsetDateTime::from(event.time);
    let format = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
    );
    let when = time.format(&format).ok()?;
    let anonymous = ANONYMOUS_NAMES.contains(&event.username.as_str());
    let path = event
        .real_path
        .as_deref()
        .or(event.path.as_deref())
        .unwrap_or("-");
    Some(format!(
        "{when} {secs} {host} {bytes} {file} b _ {direction} {mode} {user} {service} 0 * {status}",
        secs = event.duration.as_secs().max(u64::from(
            event.duration.subsec_nanos() > 0 && event.duration.as_secs() == 0
        )),
        host = event.remote_ip,
        bytes = event.bytes,
        file = field(path),
        mode = if anonymous { 'a' } else { 'r' },
        user = field(&event.username),
        service = event.protocol,
        status = if event.succeeded() { 'c' } else { 'i' },
    ))
}

/// A client's string as one xferlog field: whitespace would split it into more fields, control characters (a
/// newline, a terminal escape) would reach whoever reads the log. Both become `_`.
fn field(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Appends a line to `path` for every finished transfer published on `events`, until the bus closes. Each change
/// on `reopen` opens `path` again, so that a log rotated away (renamed, then `ferry serve` sent SIGHUP) is followed
/// by a new file at the name; if that open fails, lines keep going to the file open before.
pub async fn run(
    events: &EventBus,
    path: &Path,
    mut reopen: watch::Receiver<()>,
) -> std::io::Result<()> {
    let mut rx = events.subscribe();
    let mut file = open(path).await?;
    let mut reopening = true;
    loop {
        let received = tokio::select! {
            received = rx.recv() => received,
            changed = reopen.changed(), if reopening => {
                if changed.is_err() {
                    // The sender is gone: no more reopening, the log goes on in the file it has.
                    reopening = false;
                    continue;
                }
                match open(path).await {
                    Ok(new) => file = new,
                    Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot reopen the xferlog; writing on to the file open before"),
                }
                continue;
            }
        };
        match received {
            Ok(event) => {
                if let Some(mut line) = format_line(&event) {
                    line.push('\n');
                    file.write_all(line.as_bytes()).await?;
                    file.flush().await?;
                }
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "xferlog fell behind; some transfers not logged")
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

async fn open(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Protocol;
    use crate::session::ClientInfo;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn upload_line_has_the_eighteen_fields() {
        let client = ClientInfo::new(Protocol::Ftp, "127.0.0.1".parse().unwrap());
        let mut e = Event::new(EventKind::Upload, &client, "alice");
        e.time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        e.bytes = 1234;
        e.duration = Duration::from_secs(3);
        e.real_path = Some("/srv/alice/my file".into());
        let line = format_line(&e).unwrap();
        assert_eq!(
            line,
            "Tue Nov 14 22:13:20 2023 3 127.0.0.1 1234 /srv/alice/my_file b _ i r alice ftp 0 * c"
        );
        assert_eq!(line.split_whitespace().count(), 18);
        assert!(format_line(&Event::new(EventKind::Login, &client, "alice")).is_none());
    }

    #[test]
    fn control_characters_from_clients_do_not_reach_the_log() {
        let client = ClientInfo::new(Protocol::Ftp, "127.0.0.1".parse().unwrap());
        let mut e = Event::new(EventKind::Download, &client, "guest\x1b[31m x");
        e.real_path = Some("/srv/a/red\x1b[31m\nfake line".into());
        let line = format_line(&e).unwrap();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("/srv/a/red_[31m_fake_line") && line.contains("guest_[31m_x"));
        assert_eq!(line.split_whitespace().count(), 18);
    }

    /// Waits until `path` holds `lines` lines, and returns them.
    async fn lines_in(path: &Path, lines: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= lines {
                return text.lines().map(str::to_owned).collect();
            }
            assert!(tokio::time::Instant::now() < deadline, "{path:?}: {text:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn exists(path: &Path) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(tokio::time::Instant::now() < deadline, "no {path:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_rotated_log_goes_on_in_a_new_file_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xferlog");
        let events = EventBus::default();
        let (reopen, reopened) = watch::channel(());
        let task = tokio::spawn({
            let (events, path) = (events.clone(), path.clone());
            async move { run(&events, &path, reopened).await }
        });
        // It subscribes before it creates the file.
        exists(&path).await;
        let client = ClientInfo::new(Protocol::Ftp, "127.0.0.1".parse().unwrap());
        let upload = |name: &str| {
            let mut e = Event::new(EventKind::Upload, &client, "alice");
            e.path = Some(name.into());
            e
        };
        events.publish(upload("/first"));
        lines_in(&path, 1).await;

        let rotated = dir.path().join("xferlog.1");
        std::fs::rename(&path, &rotated).unwrap();
        reopen.send(()).unwrap();
        exists(&path).await;
        events.publish(upload("/second"));
        let new = lines_in(&path, 1).await;
        assert!(new[0].contains(" /second "), "{new:?}");
        let old = lines_in(&rotated, 1).await;
        assert_eq!(old.len(), 1);
        assert!(old[0].contains(" /first "), "{old:?}");

        // Without a reopen signal left, the log goes on where it is.
        drop(reopen);
        events.publish(upload("/third"));
        lines_in(&path, 2).await;
        task.abort();
    }
}
