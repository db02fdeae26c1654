//! Listing formats: `ls -l` lines as vsftpd writes them (LIST, STAT path), bare names (NLST) and RFC 3659 facts
//! (MLSD, MLST).

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::account::{Permission, Permissions};
use ferry_core::datetime::utc;
use ferry_core::storage::{FileKind, Metadata};

/// About six months: older entries show the year instead of the time, as `ls -l` does.
const RECENT: Duration = Duration::from_secs(182 * 24 * 3600);

/// MLST facts ferry can show, and those shown by default (all of them).
pub const MLST_FACTS: [&str; 6] = ["type", "size", "modify", "perm", "unique", "unix.mode"];

/// Whether an entry may be listed: a name or link target holding a line break would end its line early and let
/// the rest pose as an entry of its own (`evil\n226 fake` made by another protocol, or put in the home by other
/// means). Such entries are left out; no client can name them over FTP either (see [`ferry_core::vpath`]).
pub fn listable(name: &str, link_target: Option<&str>) -> bool {
    let breaks = |s: &str| s.contains(['\r', '\n']);
    !breaks(name) && !link_target.is_some_and(breaks)
}

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
    let dt = utc(t);
    // A time in the future shows its year, as vsftpd and `ls -l` show it.
    let recent = now.duration_since(t).is_ok_and(|age| age < RECENT);
    let format = if recent {
        time::macros::format_description!("[month repr:short] [day] [hour]:[minute]")
    } else {
        time::macros::format_description!("[month repr:short] [day]  [year]")
    };
    dt.format(&format).unwrap_or_else(|_| "Jan 01  1970".into())
}

/// An RFC 3659 time value, `YYYYMMDDHHMMSS`, in UTC.
pub fn time_val(t: SystemTime) -> String {
    let mut out = String::with_capacity(14);
    push_time_val(&mut out, t);
    out
}

/// Appends [`time_val`] of `t` to `out`. Listings write one per entry, so the years ferry sees (1970 to 9999) are
/// computed directly rather than through a format description.
fn push_time_val(out: &mut String, t: SystemTime) {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: u64 = 253_402_300_800;
    match t.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() < YEAR_10000 => {
            let secs = since.as_secs();
            let (year, month, day) = civil_from_days(secs / 86_400);
            let time = secs % 86_400;
            let _ = write!(
                out,
                "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
                time / 3600,
                time / 60 % 60,
                time % 60
            );
        }
        _ => {
            let format =
                time::macros::format_description!("[year][month][day][hour][minute][second]");
            match utc(t).format(&format) {
                Ok(text) => out.push_str(&text),
                Err(_) => out.push_str("19700101000000"),
            }
        }
    }
}

/// The proleptic Gregorian date (year, month, day) `days` days after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
    push_mlst_line(&mut out, name, meta, perms, role, facts);
    out
}

/// Appends [`mlst_line`] to `out`, without allocating for the facts.
pub fn push_mlst_line(
    out: &mut String,
    name: &str,
    meta: &Metadata,
    perms: Permissions,
    role: EntryRole,
    facts: &[String],
) {
    for fact in facts {
        match fact.as_str() {
            "type" => {
                out.push_str("type=");
                out.push_str(match (role, meta.kind) {
                    (EntryRole::Current, _) => "cdir",
                    (EntryRole::Parent, _) => "pdir",
                    (_, FileKind::Dir) => "dir",
                    (_, FileKind::File) => "file",
                    (_, FileKind::Symlink) => "OS.unix=symlink",
                    (_, FileKind::Other) => "OS.unix=special",
                });
            }
            "size" => {
                let _ = write!(out, "size={}", meta.size);
            }
            "modify" => {
                out.push_str("modify=");
                push_time_val(out, meta.modified);
            }
            "perm" => {
                out.push_str("perm=");
                push_perm_fact(out, meta.kind, perms);
            }
            "unique" => {
                let _ = write!(out, "unique={:x}", meta.unique_id);
            }
            "unix.mode" => {
                let _ = write!(out, "UNIX.mode=0{:o}", meta.mode);
            }
            _ => continue,
        }
        out.push(';');
    }
    out.push(' ');
    out.push_str(name);
}

/// Appends the RFC 3659 `perm` fact: what this account may do with the entry.
fn push_perm_fact(out: &mut String, kind: FileKind, p: Permissions) {
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
    out.extend(
        letters
            .iter()
            .filter(|(allowed, _)| *allowed)
            .map(|(_, c)| c),
    );
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;

    #[test]
    fn entries_with_line_breaks_are_not_listable() {
        assert!(listable("plain name.txt", None));
        assert!(listable("link", Some("../target")));
        assert!(!listable("evil\n226 forged.exe", None));
        assert!(!listable("evil\r226 forged", None));
        assert!(!listable(
            "link",
            Some("x\r\n-rw-r--r-- 1 ftp ftp 9 Jan 1 2020 forged")
        ));
    }

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

    /// btrfs and tmpfs keep such times as set (ext4 clamps them to 2446).
    #[test]
    fn times_past_the_year_9999_are_shown_as_its_end() {
        let mut far = meta(FileKind::File, 1, 0o644);
        far.modified = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(list_line("f", &far, None, now).ends_with("Dec 31  9999 f"));
        assert_eq!(time_val(far.modified), "99991231235959");
    }

    #[test]
    fn time_values_match_the_time_crate() {
        let format = time::macros::format_description!("[year][month][day][hour][minute][second]");
        let samples = [
            0,
            59,
            86_399,
            86_400,
            951_782_400, // 2000-02-29
            951_868_799,
            1_700_000_000,
            4_107_542_399, // 2100-02-28T23:59:59
            4_107_542_400, // 2100-03-01, not a leap year
            253_402_300_799,
        ];
        let mut step = 0u64;
        let spread = std::iter::from_fn(|| {
            step += 1;
            (step < 20_000).then_some(step * 12_670_019 % 253_402_300_800)
        });
        for secs in samples.into_iter().chain(spread) {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(
                time_val(t),
                OffsetDateTime::from(t).format(&format).unwrap(),
                "{secs}"
            );
        }
        assert_eq!(
            time_val(UNIX_EPOCH - Duration::from_secs(1)),
            "19691231235959"
        );
    }
}
