//! The memory view: which memory limit and usage really apply to this process (cgroup v2,
//! cgroup v1, or the whole machine from /proc/meminfo), plus swap and PSI, read into a
//! [`Snapshot`]. Detection follows /proc/self/cgroup and /proc/self/mountinfo; every root
//! is configurable so the parsing is tested on sample trees.

use serde::Serialize;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where a snapshot's limit and usage come from.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A cgroup v2 (unified) directory: memory.max, memory.current, memory.stat.
    Cgroup2,
    /// A cgroup v1 memory controller directory: memory.limit_in_bytes and friends.
    Cgroup1,
    /// No usable cgroup: the machine's /proc/meminfo.
    Meminfo,
}

/// One reading of memory, all sizes in bytes.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The memory this process can have: min(cgroup limit, MemTotal).
    pub total: u64,
    /// What can still be had without reclaiming more than inactive page cache:
    /// min(limit - (usage - inactive_file), MemAvailable).
    pub available: u64,
    /// The cgroup limit (the lowest along the cgroup's ancestors), None when unlimited.
    pub limit: Option<u64>,
    /// The cgroup's charged memory (including page cache), None without a cgroup.
    pub usage: Option<u64>,
    /// Machine swap, from /proc/meminfo.
    pub swap_total: u64,
    pub swap_free: u64,
    /// PSI `some avg10` (percent of time stalled on memory over the last 10 s) from the
    /// cgroup's memory.pressure, else /proc/pressure/memory; None where PSI is off.
    pub psi_some_avg10: Option<f64>,
    pub source: Source,
}

/// v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on 64-bit);
/// anything this large is no limit.
const V1_NO_LIMIT: u64 = 1 << 62;
/// Bound on walking up cgroup ancestors.
const MAX_DEPTH: usize = 64;
const SYS_FS_CGROUP: &str = "/sys/fs/cgroup";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cgroup {
    /// The cgroup directory and the hierarchy's top (ancestors are walked up to it).
    V2 {
        dir: PathBuf,
        top: PathBuf,
    },
    V1 {
        dir: PathBuf,
    },
    None,
}

/// Reads memory figures for this process (or a chosen cgroup). Cheap to clone; every
/// [`MemoryView::snapshot`] re-reads the files.
#[derive(Clone, Debug)]
pub struct MemoryView {
    proc_root: PathBuf,
    cgroup: Cgroup,
}

impl MemoryView {
    /// The view for this process, from the real /proc and /sys/fs/cgroup.
    pub fn detect() -> MemoryView {
        MemoryView::with_roots("/proc", SYS_FS_CGROUP)
    }

    /// Detects the cgroup from `proc_root/self/cgroup` and `proc_root/self/mountinfo`,
    /// resolving mount points under `/sys/fs/cgroup` against `sys_fs_cgroup_root`.
    /// Never fails: without a usable memory cgroup it reads `proc_root/meminfo`.
    pub fn with_roots(proc_root: impl AsRef<Path>, sys_fs_cgroup_root: impl AsRef<Path>) -> Self {
        let proc_root = proc_root.as_ref().to_path_buf();
        let sys_root = sys_fs_cgroup_root.as_ref();
        let cgroup_text = fs::read_to_string(proc_root.join("self/cgroup")).unwrap_or_default();
        let mountinfo_text =
            fs::read_to_string(proc_root.join("self/mountinfo")).unwrap_or_default();
        let cgroup = detect_cgroup(&cgroup_text, &mountinfo_text, sys_root);
        MemoryView { proc_root, cgroup }
    }

    /// A view of a given cgroup v1 memory directory (e.g. /sys/fs/cgroup/memory/x).
    pub fn for_cgroup_v1(dir: impl AsRef<Path>) -> Self {
        MemoryView {
            proc_root: PathBuf::from("/proc"),
            cgroup: Cgroup::V1 {
                dir: dir.as_ref().to_path_buf(),
            },
        }
    }

    /// A view of a given cgroup v2 directory (e.g. /sys/fs/cgroup/x); limits of its
    /// ancestors up to /sys/fs/cgroup count too.
    pub fn for_cgroup_v2(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref().to_path_buf();
        let top = if dir.starts_with(SYS_FS_CGROUP) {
            PathBuf::from(SYS_FS_CGROUP)
        } else {
            dir.clone()
        };
        MemoryView {
            proc_root: PathBuf::from("/proc"),
            cgroup: Cgroup::V2 { dir, top },
        }
    }

    /// The cgroup directory read, if any.
    pub fn cgroup_dir(&self) -> Option<&Path> {
        match &self.cgroup {
            Cgroup::V2 { dir, .. } | Cgroup::V1 { dir } => Some(dir),
            Cgroup::None => None,
        }
    }

    /// Reads the current figures. Fails only when /proc/meminfo cannot be read; a
    /// cgroup whose files cannot be read gives a `Meminfo` snapshot instead.
    pub fn snapshot(&self) -> io::Result<Snapshot> {
        let meminfo_path = self.proc_root.join("meminfo");
        let meminfo_text = fs::read_to_string(&meminfo_path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", meminfo_path.display()),
            )
        })?;
        let mi = parse_meminfo(&meminfo_text);
        let figures = match &self.cgroup {
            Cgroup::V2 { dir, top } => read_v2(dir, top).map(|f| (f, Source::Cgroup2)),
            Cgroup::V1 { dir } => read_v1(dir).map(|f| (f, Source::Cgroup1)),
            Cgroup::None => None,
        };
        let psi_some_avg10 = self
            .cgroup_dir()
            .and_then(|d| read_psi(&d.join("memory.pressure")))
            .or_else(|| read_psi(&self.proc_root.join("pressure/memory")));
        let (limit, usage, source, cg_available) = match figures {
            Some((f, source)) => {
                let cg_available = f.limit.map(|limit| {
                    let working = f.usage.saturating_sub(f.inactive_file);
                    limit.saturating_sub(working)
                });
                (f.limit, Some(f.usage), source, cg_available)
            }
            None => (None, None, Source::Meminfo, None),
        };
        let total = limit.map_or(mi.total, |l| l.min(mi.total));
        let available = cg_available.map_or(mi.available, |a| a.min(mi.available));
        Ok(Snapshot {
            total,
            available: available.min(total),
            limit,
            usage,
            swap_total: mi.swap_total,
            swap_free: mi.swap_free,
            psi_some_avg10,
            source,
        })
    }

    /// How many times the kernel OOM killer has fired in this cgroup (v2 memory.events,
    /// v1 memory.oom_control `oom_kill`), else machine-wide (/proc/vmstat). Compare two
    /// readings to tell whether a SIGKILLed agent was OOM-killed. None when not reported.
    pub fn oom_kills(&self) -> Option<u64> {
        let cgroup_file = match &self.cgroup {
            Cgroup::V2 { dir, .. } => Some(dir.join("memory.events")),
            Cgroup::V1 { dir } => Some(dir.join("memory.oom_control")),
            Cgroup::None => None,
        };
        let from_cgroup = cgroup_file
            .and_then(|p| fs::read_to_string(p).ok())
            .and_then(|t| stat_value(&t, "oom_kill"));
        from_cgroup.or_else(|| {
            fs::read_to_string(self.proc_root.join("vmstat"))
                .ok()
                .and_then(|t| stat_value(&t, "oom_kill"))
        })
    }
}

/// Limit, usage and reclaimable cache read from one cgroup.
struct Figures {
    limit: Option<u64>,
    usage: u64,
    inactive_file: u64,
}

fn read_v2(dir: &Path, top: &Path) -> Option<Figures> {
    let usage = read_number(&dir.join("memory.current"))?;
    let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let mut limit: Option<u64> = None;
    let mut at = Some(dir);
    for _ in 0..MAX_DEPTH {
        let Some(cur) = at else { break };
        if !cur.starts_with(top) {
            break;
        }
        if let Ok(text) = fs::read_to_string(cur.join("memory.max")) {
            if let Some(value) = parse_limit(&text, u64::MAX) {
                limit = Some(limit.map_or(value, |l| l.min(value)));
            }
        }
        if cur == top {
            break;
        }
        at = cur.parent();
    }
    Some(Figures {
        limit,
        usage,
        inactive_file: stat_value(&stat, "inactive_file").unwrap_or(0),
    })
}

fn read_v1(dir: &Path) -> Option<Figures> {
    let usage = read_number(&dir.join("memory.usage_in_bytes"))?;
    let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let own = fs::read_to_string(dir.join("memory.limit_in_bytes"))
        .ok()
        .and_then(|t| parse_limit(&t, V1_NO_LIMIT));
    let hierarchical = stat_value(&stat, "hierarchical_memory_limit").filter(|&v| v < V1_NO_LIMIT);
    let limit = match (own, hierarchical) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let inactive_file = stat_value(&stat, "total_inactive_file")
        .or_else(|| stat_value(&stat, "inactive_file"))
        .unwrap_or(0);
    Some(Figures {
        limit,
        usage,
        inactive_file,
    })
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A limit file: "max" or a value at or above `no_limit` means none.
fn parse_limit(text: &str, no_limit: u64) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>().ok().filter(|&v| v < no_limit)
}

/// The value of `key` in a "key value" per-line file (memory.stat, vmstat, events).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(key) {
            parts.next()?.parse().ok()
        } else {
            None
        }
    })
}

fn read_psi(path: &Path) -> Option<f64> {
    parse_psi_some_avg10(&fs::read_to_string(path).ok()?)
}

/// `some avg10=1.23 avg60=... total=...` -> 1.23
fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

/// /proc/meminfo figures in bytes.
#[derive(Debug, Default, PartialEq)]
struct Meminfo {
    total: u64,
    available: u64,
    swap_total: u64,
    swap_free: u64,
}

fn parse_meminfo(text: &str) -> Meminfo {
    let kib = |key: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            let number = rest.split_whitespace().next()?;
            number.parse::<u64>().ok().map(|v| v.saturating_mul(1024))
        })
    };
    let total = kib("MemTotal").unwrap_or(0);
    // Kernels before 3.14 have no MemAvailable; free + cache is the usual estimate.
    let available = kib("MemAvailable").unwrap_or_else(|| {
        kib("MemFree").unwrap_or(0) + kib("Buffers").unwrap_or(0) + kib("Cached").unwrap_or(0)
    });
    Meminfo {
        total,
        available: available.min(total),
        swap_total: kib("SwapTotal").unwrap_or(0),
        swap_free: kib("SwapFree").unwrap_or(0),
    }
}

/// One line of /proc/self/mountinfo, the fields detection needs.
#[derive(Debug, PartialEq)]
struct Mount {
    root: String,
    mount_point: String,
    fstype: String,
    super_options: String,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?.to_string();
            let _source = right.next();
            Some(Mount {
                root: unescape_octal(left.get(3)?),
                mount_point: unescape_octal(left.get(4)?),
                fstype,
                super_options: right.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo`.
pub(crate) fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        let value = octal.and_then(|d| {
            let v = d.iter().fold(0u16, |acc, b| acc * 8 + u16::from(b - b'0'));
            u8::try_from(v).ok()
        });
        if let Some(v) = value {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The memory lines of /proc/self/cgroup: (v1 memory controller path, v2 path).
fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v1, v2)
}

/// The directory of `cgroup_path` inside a hierarchy mounted at `mount_point` whose
/// mount shows `mount_root` (a container's mount root may already be its own cgroup).
fn cgroup_dir_in_mount(mount_root: &str, mount_point: &Path, cgroup_path: &str) -> PathBuf {
    let relative = if mount_root == "/" {
        cgroup_path
    } else {
        cgroup_path
            .strip_prefix(mount_root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .unwrap_or_default()
    };
    mount_point.join(relative.trim_start_matches('/'))
}

/// A mount point from mountinfo, moved under the chosen /sys/fs/cgroup root.
fn relocate(mount_point: &str, sys_root: &Path) -> PathBuf {
    if sys_root == Path::new(SYS_FS_CGROUP) {
        return PathBuf::from(mount_point);
    }
    match Path::new(mount_point).strip_prefix(SYS_FS_CGROUP) {
        Ok(rest) => sys_root.join(rest),
        Err(_) => PathBuf::from(mount_point),
    }
}

fn detect_cgroup(cgroup_text: &str, mountinfo_text: &str, sys_root: &Path) -> Cgroup {
    let (v1_path, v2_path) = parse_proc_cgroup(cgroup_text);
    let mounts = parse_mountinfo(mountinfo_text);
    if let Some(path) = v1_path {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"));
        let (root, point) = match mount {
            Some(m) => (m.root.as_str(), relocate(&m.mount_point, sys_root)),
            None => ("/", sys_root.join("memory")),
        };
        let dir = cgroup_dir_in_mount(root, &point, &path);
        let dir = if dir.is_dir() { dir } else { point };
        if dir.join("memory.usage_in_bytes").exists() {
            return Cgroup::V1 { dir };
        }
    }
    if let Some(path) = v2_path {
        let mount = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup2")
            .min_by_key(|m| m.mount_point != SYS_FS_CGROUP);
        let (root, top) = match mount {
            Some(m) => (m.root.as_str(), relocate(&m.mount_point, sys_root)),
            None => ("/", sys_root.to_path_buf()),
        };
        let controllers = fs::read_to_string(top.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "memory") {
            let dir = cgroup_dir_in_mount(root, &top, &path);
            let dir = if dir.is_dir() { dir } else { top.clone() };
            return Cgroup::V2 { dir, top };
        }
    }
    Cgroup::None
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
