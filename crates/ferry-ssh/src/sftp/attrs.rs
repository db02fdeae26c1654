//! SFTP file attributes and the `ls -l` style long names of directory listings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::storage::{FileKind, Metadata};
use russh_sftp::protocol::FileAttributes;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Listings show the year instead of the time for files older than this (as `ls -l` does).
const RECENT: Duration = Duration::from_secs(180 * 24 * 3600);

/// The attributes of a file as SFTP sends them: size, owner, type and mode bits, times.
pub(crate) fn from_metadata(meta: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(meta.size),
        uid: Some(meta.uid),
        user: None,
        gid: Some(meta.gid),
        group: None,
        permissions: Some(type_bits(meta.kind) | (meta.mode & 0o7777)),
        atime: Some(unix_seconds(meta.accessed)),
        mtime: Some(unix_seconds(meta.modified)),
    }
}

/// A listing line like `-rw-r--r--    1 alice    alice        1234 Mar  4 12:00 name`.
pub(crate) fn long_name(name: &str, meta: &Metadata, owner: &str, now: SystemTime) -> String {
    let kind = match meta.kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File => '-',
        FileKind::Other => '?',
    };
    let mut mode = String::with_capacity(10);
    mode.push(kind);
    for shift in [6, 3, 0] {
        let bits = (meta.mode >> shift) & 0o7;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        mode.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    format!(
        "{mode} {:>4} {owner:<8} {owner:<8} {:>8} {} {name}",
        meta.nlink,
        meta.size,
        listing_time(meta.modified, now)
    )
}

/// The modification time given in an SFTP attribute.
pub(crate) fn system_time(seconds: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(seconds))
}

fn type_bits(kind: FileKind) -> u32 {
    match kind {
        FileKind::Dir => S_IFDIR,
        FileKind::File => S_IFREG,
        FileKind::Symlink => S_IFLNK,
        FileKind::Other => 0,
    }
}

/// Seconds since the epoch, clamped to what SFTP v3's 32-bit fields hold.
fn unix_seconds(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

fn listing_time(t: SystemTime, now: SystemTime) -> String {
    let dt = ferry_core::datetime::utc(t);
    // A time in the future shows its year, as OpenSSH's sftp-server shows it.
    let recent = now.duration_since(t).is_ok_and(|age| age < RECENT);
    let formatted = if recent {
        dt.format(time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]"
        ))
    } else {
        dt.format(time::macros::format_description!(
            "[month repr:short] [day padding:space]  [year]"
        ))
    };
    formatted.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: FileKind, mode: u32, modified: SystemTime) -> Metadata {
        Metadata {
            kind,
            size: 1234,
            modified,
            accessed: modified,
            mode,
            nlink: 1,
            uid: 1000,
            gid: 1000,
            unique_id: 0,
        }
    }

    #[test]
    fn attributes_carry_type_bits() {
        let m = meta(FileKind::Dir, 0o755, UNIX_EPOCH);
        let a = from_metadata(&m);
        assert!(a.is_dir());
        assert_eq!(a.permissions, Some(0o040755));
        assert_eq!(a.size, Some(1234));
    }

    #[test]
    fn long_names_look_like_ls() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let line = long_name("a b", &meta(FileKind::File, 0o640, t), "alice", t);
        assert_eq!(
            line,
            "-rw-r-----    1 alice    alice        1234 Nov 14 22:13 a b"
        );
        let old = long_name("d", &meta(FileKind::Dir, 0o755, UNIX_EPOCH), "bob", t);
        assert!(
            old.starts_with("drwxr-xr-x") && old.contains("Jan  1  1970 d"),
            "{old}"
        );
    }

    #[test]
    fn far_future_times_show_a_year_and_do_not_panic() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        let line = long_name("f", &meta(FileKind::File, 0o644, far), "alice", now);
        assert!(line.ends_with("Dec 31  9999 f"), "{line}");
        let soon = now + Duration::from_secs(3600);
        let line = long_name("g", &meta(FileKind::File, 0o644, soon), "alice", now);
        assert!(line.ends_with("Nov 14  2023 g"), "{line}");
    }

    #[test]
    fn times_beyond_2106_are_clamped() {
        let far = UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) + 10);
        assert_eq!(unix_seconds(far), u32::MAX);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
