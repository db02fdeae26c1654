//! Listing formats: `ls -l` lines as vsftpd writes them (LIST, STAT path), bare names (NLST) and RFC 3659 facts
//! (MLSD, MLST).

use std::time::{Duration, SystemTime};

use ferry_core::account::{Permission, Permissions};
use ferry_core::storage::{FileKind, Metadata};
use time::OffsetDateTime;

/// About six months: older entries show the year instead of the time, as `ls -l` does.
const RECENT: Duration = Duration::from_secs(182 * 24 * 3600);

/// MLST facts ferry can show, and those shown by default (all of them).
pub const MLST_FACTS: [&str; 6] = ["type", "size", "modify", "perm", "unique", "unix.mode"];

/// One `ls -l` line, without CRLF: `-rw-r--r--    1 ftp      ftp          1234 Nov 21 10:00 name`.
pub fn list_line(
    name: &str,
    meta: &Metadata,
    link_target: Option<&str>,
    now: SystemTime,
) -> String {
    let mut line = format!(
        "{}{} {:>4} {:<8} {:<8} {:>8} {} {}",
        type_char(meta.kind),
        mode_string(meta.mode),
        meta.nlink,
        "ftp",
        "ftp",
        meta.size,
        ls_time(meta.modified, now),
        name
    );
    if let Some(target) = link_target {
        line.push_str(" -> ");
        line.push_str(target);
    }
    line
}

fn type_char(kind: FileKind) -> char {
    match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File => '-',
        FileKind::Other => 'p',
    }
}

fn mode_string(mode: u32) -> String {
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        bit(0o100, 'x'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        bit(0o010, 'x'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        bit(0o001, 'x'),
    ]
    .iter()
    .collect()
}

fn ls_time(t: SystemTime, now: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    let recent = now
        .duration_since(t)
        .map(|age| age < RECENT)
        .unwrap_or(true);
    let format = if recent {
        time::macros::format_description!("[month repr:short] [day] [hour]:[minute]")
    } else {
        time::macros::format_description!("[month repr:short] [day]  [year]")
    };
    dt.format(&format).unwrap_or_else(|_| "Jan 01  1970".into())
}

/// An RFC 3659 time value, `YYYYMMDDHHMMSS`, in UTC.
pub fn time_val(t: SystemTime) -> String {
    let format = time::macros::format_description!("[year][month][day][hour][minute][second]");
    OffsetDateTime::from(t)
        .format(&format)
        .unwrap_or_else(|_| "19700101000000".into())
}

/// What kind of MLSD entry a listing line describes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EntryRole {
    Plain,
    /// The listed directory itself (`type=cdir`).
    Current,
    /// Its parent (`type=pdir`).
    Parent,
}

/// The facts of one entry, `fact=value;...; name`, showing only `facts` (lower-case names).
pub fn mlst_line(
    name: &str,
    meta: &Metadata,
    perms: Permissions,
    role: EntryRole,
    facts: &[String],
) -> String {
    let mut out = String::with_capacity(96 + name.len());
    for fact in facts {
        let value = match fact.as_str() {
            "type" => match (role, meta.kind) {
                (EntryRole::Current, _) => "cdir".to_owned(),
                (EntryRole::Parent, _) => "pdir".to_owned(),
                (_, FileKind::Dir) => "dir".to_owned(),
                (_, FileKind::File) => "file".to_owned(),
                (_, FileKind::Symlink) => "OS.unix=symlink".to_owned(),
                (_, FileKind::Other) => "OS.unix=special".to_owned(),
            },
            "size" => meta.size.to_string(),
            "modify" => time_val(meta.modified),
            "perm" => perm_fact(meta.kind, perms),
            "unique" => format!("{:x}", meta.unique_id),
            "unix.mode" => format!("0{:o}", meta.mode),
            _ => continue,
        };
        let label = if fact == "unix.mode" {
            "UNIX.mode"
        } else {
            fact.as_str()
        };
        out.push_str(label);
        out.push('=');
        out.push_str(&value);
        out.push(';');
    }
    out.push(' ');
    out.push_str(name);
    out
}

/// The RFC 3659 `perm` fact: what this account may do with the entry.
fn perm_fact(kind: FileKind, p: Permissions) -> String {
    let write = p.contains(Permission::Upload) && p.contains(Permission::Overwrite);
    let letters: &[(bool, char)] = if kind == FileKind::Dir {
        &[
            (p.contains(Permission::Upload), 'c'),
            (p.contains(Permission::Rmdir), 'd'),
            (true, 'e'),
            (p.contains(Permission::Rename), 'f'),
            (p.contains(Permission::List), 'l'),
            (p.contains(Permission::Mkdir), 'm'),
            (p.contains(Permission::Delete), 'p'),
        ]
    } else {
        &[
            (p.contains(Permission::Upload), 'a'),
            (p.contains(Permission::Delete), 'd'),
            (p.contains(Permission::Rename), 'f'),
            (p.contains(Permission::Download), 'r'),
            (write, 'w'),
        ]
    };
    letters
        .iter()
        .filter(|(allowed, _)| *allowed)
        .map(|(_, c)| c)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn meta(kind: FileKind, size: u64, mode: u32) -> Metadata {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Metadata {
            kind,
            size,
            modified: t,
            accessed: t,
            mode,
            nlink: 1,
            uid: 0,
            gid: 0,
            unique_id: 0x801_1234,
        }
    }

    #[test]
    fn ls_line_matches_vsftpd_layout() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + 3600);
        assert_eq!(
            list_line("file.txt", &meta(FileKind::File, 5, 0o644), None, now),
            "-rw-r--r--    1 ftp      ftp             5 Nov 14 22:13 file.txt"
        );
        let later = now + Duration::from_secs(365 * 24 * 3600);
        assert_eq!(
            list_line("d", &meta(FileKind::Dir, 4096, 0o755), None, later),
            "drwxr-xr-x    1 ftp      ftp          4096 Nov 14  2023 d"
        );
        assert!(
            list_line("l", &meta(FileKind::Symlink, 3, 0o777), Some("abc"), now)
                .ends_with("l -> abc")
        );
    }

    #[test]
    fn mlst_facts() {
        let facts: Vec<String> = MLST_FACTS.iter().map(|s| s.to_string()).collect();
        let line = mlst_line(
            "f",
            &meta(FileKind::File, 12, 0o600),
            Permissions::read_only(),
            EntryRole::Plain,
            &facts,
        );
        assert_eq!(
            line,
            "type=file;size=12;modify=20231114221320;perm=r;unique=8011234;UNIX.mode=0600; f"
        );
        let dir = mlst_line(
            ".",
            &meta(FileKind::Dir, 0, 0o755),
            Permissions::all(),
            EntryRole::Current,
            &facts[..1],
        );
        assert_eq!(dir, "type=cdir; .");
    }
}
