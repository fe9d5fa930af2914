//! What bench reads from the kernel: a process's memory (/proc/<pid>/status), CPU time
//! (/proc/<pid>/stat) and writes (/proc/<pid>/io), which pid listens on a port
//! (/proc/net/tcp*), the open-file limit, what file system a directory is on, and the
//! machine's description.

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path} (is the worker still running?)"))?;
    parse_status_kib(&text, field).with_context(|| format!("{path} has no {field} line"))
}

fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// Peak resident memory of `pid` in KiB.
pub fn hwm_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Threads of `pid`.
pub fn threads(pid: u32) -> Result<u64> {
    status_kib(pid, "Threads")
}

/// CPU time `pid` has used (user + system, all its threads), in seconds.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path} (is the worker still running?)"))?;
    let ticks = parse_stat_cpu(&text).with_context(|| format!("{path}: no utime/stime"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line, in clock ticks.
fn parse_stat_cpu(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Bytes `pid` has caused to be written to storage (`write_bytes` of /proc/<pid>/io:
/// counted when page-cache pages are dirtied, so buffered writes count too; nothing
/// for a file system held in memory).
pub fn write_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/io");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {path} (as root?)"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:")?.trim().parse().ok())
        .with_context(|| format!("{path} has no write_bytes line"))
}

/// What file system `dir` is on: a short name, and whether it is held in memory (tmpfs,
/// ramfs: nothing there reaches a disk, so nothing is synced).
pub fn fs_kind(dir: &std::path::Path) -> Result<(&'static str, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("{}: a NUL in the path", dir.display()))?;
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statfs({}): {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    // The field's type differs between libcs.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    Ok(match magic {
        0x0102_1994 => ("tmpfs", true),
        0x8584_58f6 => ("ramfs", true),
        0xEF53 => ("ext4", false),
        0x5846_5342 => ("xfs", false),
        0x9123_683E => ("btrfs", false),
        0x794c_7630 => ("overlayfs", false),
        0x2FC1_2FC1 => ("zfs", false),
        _ => ("another file system", false),
    })
}

/// Bytes free to an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &std::path::Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("{}: a NUL in the path", dir.display()))?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statvfs({}): {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The pid of the process holding a listening TCP socket on `port`, if it is visible here.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        inodes.extend(listening_inodes(&text, port));
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            (f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A").then(|| f[9].parse().ok())?
        })
        .collect()
}

/// Raises this process's open-file limit to at least `want` (raising the hard limit
/// too when allowed, as root is), so that children spawned afterwards inherit it.
/// Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    let raised = libc::rlimit {
        rlim_cur: want.min(nr_open),
        rlim_max: lim.rlim_max.max(want.min(nr_open)),
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(raised.rlim_cur);
    }
    // Not allowed to raise the hard limit: take what the hard limit gives.
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } != 0 {
        bail!(
            "setrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(lim.rlim_max)
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub mem_total_mib: u64,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu,
        kernel,
        mem_total_mib: parse_status_kib(&meminfo, "MemTotal").unwrap_or(0) / 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_is_readable() {
        let me = std::process::id();
        let rss = rss_kib(me).unwrap();
        assert!(rss > 0);
        assert!(hwm_kib(me).unwrap() >= rss);
    }

    #[test]
    fn finds_the_pid_behind_a_listening_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }

    #[test]
    fn own_cpu_io_and_file_system_are_readable() {
        let me = std::process::id();
        // Burn a little CPU so the figure has something to show.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_secs(me).unwrap() > 0.0);
        assert!(threads(me).unwrap() >= 1);
        let before = write_bytes(me).unwrap();
        let dir = std::env::temp_dir().join(format!("bench-procfs-{me}"));
        std::fs::write(&dir, vec![7u8; 1 << 20]).unwrap();
        let (name, in_memory) = fs_kind(&std::env::temp_dir()).unwrap();
        if !in_memory {
            assert!(write_bytes(me).unwrap() >= before + (1 << 20), "{name}");
        }
        std::fs::remove_file(&dir).unwrap();
        assert!(fs_kind(std::path::Path::new("/dev/shm")).unwrap().1);
        assert!(free_bytes(&std::env::temp_dir()).unwrap() > 0);
    }

    #[test]
    fn stat_cpu_fields_parse_past_odd_names() {
        let t = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(t), Some(175));
    }

    #[test]
    fn status_lines_parse() {
        let t = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(t, "VmRSS"), Some(1024));
        assert_eq!(parse_status_kib(t, "VmSwap"), None);
    }
}
