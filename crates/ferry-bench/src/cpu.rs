//! CPU time used by a process tree (the server) and by this process (the load generator), from `/proc`: it shows
//! where the cycles of a 2-core machine went, and that the load generator was not the bottleneck.

use crate::pss::process_tree;

/// User plus system CPU seconds of `roots` and their live descendants (0 when unreadable).
pub fn tree_seconds(roots: &[u32]) -> f64 {
    let Ok(tree) = process_tree(roots) else {
        return 0.0;
    };
    tree.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| parse_cpu_ticks(&stat))
        .sum::<u64>() as f64
        / ticks_per_second()
}

/// User plus system CPU seconds of this process, all threads.
pub fn own_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_cpu_ticks(&stat))
        .map_or(0.0, |ticks| ticks as f64 / ticks_per_second())
}

/// utime + stime (fields 14 and 15 of `/proc/PID/stat`, counted after the command name).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_summed() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("1 (x) S 1"), None);
    }
}
