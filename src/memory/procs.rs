//! Per-process-group memory: resident memory summed by process group, to find the agent
//! using the most when memory runs short.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// Resident memory (VmRSS) summed over every process whose process group is `pgid`.
/// Processes that exit during the scan are skipped; 0 when the group has none.
pub fn group_rss(pgid: i32) -> u64 {
    rss_by_group(Path::new("/proc"), &[pgid])
        .get(&pgid)
        .copied()
        .unwrap_or(0)
}

/// Of the given process groups, the one with the most resident memory and that amount.
/// Groups without live processes are left out; None when none has any.
pub fn largest_group(pgids: &[i32]) -> Option<(i32, u64)> {
    largest_in(&rss_by_group(Path::new("/proc"), pgids))
}

fn largest_in(by_group: &HashMap<i32, u64>) -> Option<(i32, u64)> {
    by_group
        .iter()
        .map(|(&pgid, &rss)| (pgid, rss))
        // Ties go to the lower pgid so the answer does not depend on hash order.
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
}

/// One pass over `proc_root`: RSS per wanted process group (only groups with a live
/// process appear).
fn rss_by_group(proc_root: &Path, wanted: &[i32]) -> HashMap<i32, u64> {
    let mut sums = HashMap::new();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return sums;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let dir = proc_root.join(pid.to_string());
        let Some(pgrp) = fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| parse_stat_pgrp(&s))
        else {
            continue; // exited meanwhile
        };
        if !wanted.contains(&pgrp) {
            continue;
        }
        // A zombie has no VmRSS line: it counts as a live member with 0 bytes.
        let rss = fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| parse_vm_rss(&s))
            .unwrap_or(0);
        *sums.entry(pgrp).or_insert(0) += rss;
    }
    sums
}

/// The process group from /proc/<pid>/stat; the command name may hold spaces and ')'.
fn parse_stat_pgrp(stat: &str) -> Option<i32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp ...
    after_comm.split_whitespace().nth(2)?.parse().ok()
}

/// `VmRSS:   1234 kB` from /proc/<pid>/status, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    #[test]
    fn stat_parsing_copes_with_odd_command_names() {
        let stat = "4242 (a) b (c)) S 1 777 777 0 -1 4194560 100 0 0 0";
        assert_eq!(parse_stat_pgrp(stat), Some(777));
        assert_eq!(parse_stat_pgrp("garbage"), None);
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
        assert_eq!(parse_vm_rss("Name:\tzombie\n"), None);
    }

    #[test]
    fn sums_by_group_on_a_sample_proc_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let procs = [
            (10, 10, 1000),
            (11, 10, 3000),
            (12, 12, 500),
            (13, 99, 7000),
        ];
        for (pid, pgrp, kib) in procs {
            let dir = tmp.path().join(pid.to_string());
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("stat"), format!("{pid} (sh) S 1 {pgrp} {pgrp} 0")).unwrap();
            fs::write(dir.join("status"), format!("VmRSS:\t{kib} kB\n")).unwrap();
        }
        // Not a process directory, and a process that vanished (no stat).
        fs::create_dir(tmp.path().join("self")).unwrap();
        fs::create_dir(tmp.path().join("14")).unwrap();
        let sums = rss_by_group(tmp.path(), &[10, 12, 50]);
        assert_eq!(sums.get(&10), Some(&(4000 * 1024)));
        assert_eq!(sums.get(&12), Some(&(500 * 1024)));
        assert_eq!(sums.get(&50), None);
        assert_eq!(largest_in(&sums), Some((10, 4000 * 1024)));
        assert_eq!(largest_in(&HashMap::new()), None);
    }

    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper_group() -> Kill {
        Kill(
            Command::new("sleep")
                .arg("600")
                .process_group(0)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    #[test]
    fn real_process_groups() {
        let child = sleeper_group();
        let pgid = child.0.id() as i32;
        let rss = group_rss(pgid);
        assert!(rss > 0, "a live sleep has resident memory");
        let (largest, largest_rss) = largest_group(&[pgid, i32::MAX]).unwrap();
        assert_eq!(largest, pgid);
        assert!(largest_rss > 0);
        assert_eq!(group_rss(i32::MAX), 0);
        assert_eq!(largest_group(&[i32::MAX]), None);
    }
}
