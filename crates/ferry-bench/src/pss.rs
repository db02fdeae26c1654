//! Server memory as PSS (proportional set size) from `/proc/PID/smaps_rollup`, summed over a process and all its
//! descendants: forking servers (vsftpd, ProFTPD, pure-ftpd, sshd) hold a session in one or two child processes,
//! whose shared pages PSS divides fairly between them.

use std::collections::{HashMap, HashSet};
use std::io;

/// Memory of a process tree at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// PSS summed over the processes, in KiB.
    pub pss_kib: u64,
    /// How many processes were counted.
    pub processes: usize,
}

/// Measures the PSS of `roots` and all their descendants. A process that exits while being read is skipped.
pub fn measure(roots: &[u32]) -> io::Result<Memory> {
    sum(&process_tree(roots)?)
}

/// Measures the PSS of exactly `pids` (no descendants looked up: cheap enough to sample often).
pub fn sum(pids: &[u32]) -> io::Result<Memory> {
    let mut memory = Memory::default();
    for &pid in pids {
        match std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            Ok(text) => {
                if let Some(kib) = parse_pss_kib(&text) {
                    memory.pss_kib += kib;
                    memory.processes += 1;
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            }
            Err(e) => return Err(e),
        }
    }
    Ok(memory)
}

/// `roots` (those still alive) and every process descending from them, found through the parent ids in
/// `/proc/*/stat`.
pub fn process_tree(roots: &[u32]) -> io::Result<Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut alive = HashSet::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        alive.insert(pid);
        if let Some(ppid) = parse_parent_pid(&stat) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<u32> = roots
        .iter()
        .copied()
        .filter(|p| alive.contains(p))
        .collect();
    let mut tree = Vec::new();
    while let Some(pid) = stack.pop() {
        if seen.insert(pid) {
            tree.push(pid);
            stack.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    Ok(tree)
}

/// The `Pss:` line of smaps_rollup, in KiB.
pub fn parse_pss_kib(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup.lines().find_map(|line| {
        let rest = line.strip_prefix("Pss:")?;
        let mut words = rest.split_whitespace();
        let value = words.next()?.parse().ok()?;
        (words.next()? == "kB").then_some(value)
    })
}

/// The parent pid from `/proc/PID/stat`: the second field after the command name, which may itself hold spaces
/// and parentheses, so parsing starts after the last `)`.
fn parse_parent_pid(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "55d0c0a00000-7ffd1f9fe000 ---p 00000000 00:00 0                  [rollup]
Rss:                3884 kB
Pss:                 976 kB
Pss_Dirty:           340 kB
Pss_Anon:            336 kB
Shared_Clean:       2908 kB
";

    #[test]
    fn pss_line_is_read_in_kib() {
        assert_eq!(parse_pss_kib(ROLLUP), Some(976));
    }

    #[test]
    fn pss_dirty_is_not_mistaken_for_pss() {
        let text = "Rss: 10 kB\nPss_Dirty: 5 kB\nPss: 7 kB\n";
        assert_eq!(parse_pss_kib(text), Some(7));
        assert_eq!(parse_pss_kib("Rss: 10 kB\n"), None);
        assert_eq!(parse_pss_kib("Pss: lots\n"), None);
    }

    #[test]
    fn parent_pid_survives_odd_command_names() {
        assert_eq!(parse_parent_pid("42 (a) b) c) S 17 42 42 0"), Some(17));
        assert_eq!(parse_parent_pid("7 (sleep) S 1 7 7"), Some(1));
        assert_eq!(parse_parent_pid("garbage"), None);
    }

    #[test]
    fn own_process_has_memory() {
        let me = std::process::id();
        let memory = measure(&[me]).unwrap();
        assert!(memory.processes >= 1);
        assert!(memory.pss_kib > 0);
    }

    #[test]
    fn children_are_part_of_the_tree() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let tree = process_tree(&[std::process::id()]).unwrap();
        let child_pid = child.id();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(tree.contains(&child_pid));
        assert!(tree.contains(&std::process::id()));
    }

    #[test]
    fn vanished_processes_are_skipped() {
        assert_eq!(measure(&[u32::MAX - 1]).unwrap(), Memory::default());
    }
}
