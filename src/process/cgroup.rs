//! Control groups for tasks: find the worker's own cgroup (v2 unified, or the v1
//! memory, pids, cpuacct and freezer hierarchies), make a parent for its tasks under
//! it, and give each task a cgroup of its own with its limits. A task's cgroup is what
//! finds every process of the task (whatever `setsid` or double forks it did), kills
//! them all, and tells what the task used.
//!
//! v2: the parent is `<own>/outpost-<key>`; when `<own>` still holds processes (the
//! "no internal processes" rule), they move into `<own>/outpost-supervisor` first.
//! v1: the parent is `<own path in each hierarchy>/outpost-<key>`. `<key>` is derived
//! from the data dir, so a restart on the same data dir finds (and sweeps) what an
//! earlier run left, and two workers on one machine never share a parent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which cgroup version is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Per-task limits written into the task's cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

/// What a task's processes used, read from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_us: u64,
    pub memory_peak: u64,
}

/// The parent of the worker's task cgroups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// v2: one directory. v1: one per hierarchy, in `V1_CONTROLLERS` order (None where
    /// that hierarchy is not mounted).
    parents: Vec<Option<PathBuf>>,
}

/// The v1 hierarchies used, in this order.
const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpuacct", "freezer"];
const MEMORY: usize = 0;
const PIDS: usize = 1;
const CPUACCT: usize = 2;
const FREEZER: usize = 3;

impl Cgroups {
    /// Sets up the parent of task cgroups on this machine (`/proc` and `/sys/fs/cgroup`),
    /// or says why cgroups cannot be used.
    pub fn setup(key: &str) -> Result<Cgroups, String> {
        Self::setup_at(Path::new("/proc/self"), Path::new("/sys/fs/cgroup"), key)
    }

    /// As [`Cgroups::setup`], with the process's `/proc/self` and the cgroup root given
    /// (tests use sample trees).
    pub fn setup_at(proc_self: &Path, root: &Path, key: &str) -> Result<Cgroups, String> {
        let table = fs::read_to_string(proc_self.join("cgroup"))
            .map_err(|e| format!("reading {}/cgroup: {e}", proc_self.display()))?;
        let unified = root.join("cgroup.controllers").exists();
        if unified {
            let own = table
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
            return setup_v2(&root.join(own.trim_start_matches('/')), key);
        }
        let mut parents = Vec::new();
        for ctl in V1_CONTROLLERS {
            let mount = root.join(ctl);
            let own = table.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
                ctls.split(',').any(|c| c == ctl).then_some(path)
            });
            match own {
                Some(path) if mount.is_dir() => {
                    let parent = mount
                        .join(path.trim_start_matches('/'))
                        .join(parent_name(key));
                    mkdir(&parent)?;
                    parents.push(Some(parent));
                }
                _ => parents.push(None),
            }
        }
        if parents[MEMORY].is_none() && parents[PIDS].is_none() {
            return Err("neither the memory nor the pids cgroup v1 hierarchy is mounted".into());
        }
        Ok(Cgroups {
            version: Version::V1,
            parents,
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Creates the cgroup of one task, with its limits.
    pub fn create(&self, name: &str, limits: Limits) -> io::Result<TaskCgroup> {
        let dirs: Vec<Option<PathBuf>> = self
            .parents
            .iter()
            .map(|p| p.as_ref().map(|p| p.join(name)))
            .collect();
        let cg = TaskCgroup {
            version: self.version,
            dirs,
        };
        for d in cg.dirs.iter().flatten() {
            match fs::create_dir(d) {
                Ok(()) => readable(d),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Left by an earlier run under the same name: empty it first.
                    let old = TaskCgroup {
                        version: self.version,
                        dirs: vec![Some(d.clone())],
                    };
                    old.kill_all();
                }
                Err(e) => return Err(with_path(e, d)),
            }
        }
        cg.apply(limits)?;
        Ok(cg)
    }

    /// Removes the (empty) parents, when the worker stops cleanly.
    pub fn remove_parents(&self) {
        for p in self.parents.iter().flatten() {
            let _ = fs::remove_dir(p);
        }
    }

    /// Kills and removes every task cgroup an earlier run left under the parent, but
    /// those `live` says belong to a task alive elsewhere (another worker sharing the
    /// data dir, hence the parent). Returns how many it removed.
    pub fn sweep(&self, live: &dyn Fn(&str) -> bool) -> usize {
        let Some(first) = self.parents.iter().flatten().next() else {
            return 0;
        };
        let names: Vec<String> = match fs::read_dir(first) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| !live(name))
                .collect(),
            Err(_) => return 0,
        };
        for name in &names {
            let cg = TaskCgroup {
                version: self.version,
                dirs: self
                    .parents
                    .iter()
                    .map(|p| p.as_ref().map(|p| p.join(name)))
                    .collect(),
            };
            cg.kill_all();
            cg.remove();
        }
        names.len()
    }
}

/// The CPU limit of this process's cgroup in CPUs (v2 `cpu.max`, v1 CFS quota), None
/// when there is none.
pub fn own_cpu_limit() -> Option<f64> {
    cpu_limit_at(Path::new("/proc/self"), Path::new("/sys/fs/cgroup"))
}

fn cpu_limit_at(proc_self: &Path, root: &Path) -> Option<f64> {
    let table = fs::read_to_string(proc_self.join("cgroup")).ok()?;
    let ratio = |quota: &str, period: &str| -> Option<f64> {
        let (q, p) = (
            quota.trim().parse::<f64>().ok()?,
            period.trim().parse::<f64>().ok()?,
        );
        (q > 0.0 && p > 0.0).then_some(q / p)
    };
    if root.join("cgroup.controllers").exists() {
        let own = table.lines().find_map(|l| l.strip_prefix("0::"))?;
        let text =
            fs::read_to_string(root.join(own.trim_start_matches('/')).join("cpu.max")).ok()?;
        let (q, p) = text.trim().split_once(' ')?;
        return ratio(q, p);
    }
    let own = table.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctls.split(',').any(|c| c == "cpu").then_some(path)
    })?;
    let dir = root.join("cpu").join(own.trim_start_matches('/'));
    ratio(
        &fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?,
        &fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?,
    )
}

fn parent_name(key: &str) -> String {
    format!("outpost-{key}")
}

fn setup_v2(own: &Path, key: &str) -> Result<Cgroups, String> {
    let want = ["memory", "pids", "cpu"];
    let available = fs::read_to_string(own.join("cgroup.controllers"))
        .map_err(|e| format!("reading {}/cgroup.controllers: {e}", own.display()))?;
    let enable: Vec<&str> = want
        .iter()
        .copied()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    if !enable.contains(&"memory") || !enable.contains(&"pids") {
        return Err(format!(
            "the worker's cgroup {} does not offer the memory and pids controllers (has: {}); give the service a delegated subtree (systemd Delegate=yes)",
            own.display(),
            available.trim()
        ));
    }
    let line: String = enable.iter().map(|c| format!("+{c} ")).collect();
    // The parent must hold no processes of its own to pass controllers down.
    if let Err(first) = write(&own.join("cgroup.subtree_control"), line.trim()) {
        let leaf = own.join("outpost-supervisor");
        mkdir(&leaf)?;
        let procs = fs::read_to_string(own.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            // A process that exits meanwhile cannot be moved; that is fine.
            let _ = write(&leaf.join("cgroup.procs"), pid);
        }
        write(&own.join("cgroup.subtree_control"), line.trim()).map_err(|e| {
            format!(
                "enabling {line}in {}: {e} (before moving into {}: {first})",
                own.display(),
                leaf.display()
            )
        })?;
    }
    let parent = own.join(parent_name(key));
    mkdir(&parent)?;
    write(&parent.join("cgroup.subtree_control"), line.trim())
        .map_err(|e| format!("enabling {line}in {}: {e}", parent.display()))?;
    Ok(Cgroups {
        version: Version::V2,
        parents: vec![Some(parent)],
    })
}

/// The cgroup of one task (one directory on v2, one per hierarchy on v1).
#[derive(Debug, Clone)]
pub struct TaskCgroup {
    version: Version,
    dirs: Vec<Option<PathBuf>>,
}

impl TaskCgroup {
    fn dir(&self, v1_index: usize) -> Option<&Path> {
        match self.version {
            Version::V2 => self.dirs.first()?.as_deref(),
            Version::V1 => self.dirs.get(v1_index)?.as_deref(),
        }
    }

    /// The files a new, single-threaded process writes "0" into to join the cgroup
    /// (every hierarchy): v2 `cgroup.procs`; v1 `tasks`, which moves the writing thread
    /// alone. Moving a whole process (v1 or v2 `cgroup.procs`) takes the kernel's
    /// global threadgroup lock for writing, which waits for an RCU grace period: 6-15
    /// ms per task on the bench VM, against 0.15 ms through `tasks` (see
    /// docs/bench.md). For a process of one thread both move the same thing, and every
    /// thread or process it starts afterwards is born inside.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let file = match self.version {
            Version::V2 => "cgroup.procs",
            Version::V1 => "tasks",
        };
        self.dirs.iter().flatten().map(|d| d.join(file)).collect()
    }

    fn apply(&self, limits: Limits) -> io::Result<()> {
        let (mem_file, pids_file) = match self.version {
            Version::V2 => ("memory.max", "pids.max"),
            Version::V1 => ("memory.limit_in_bytes", "pids.max"),
        };
        if let (Some(m), Some(dir)) = (limits.memory, self.dir(MEMORY)) {
            write(&dir.join(mem_file), &m.to_string()).map_err(io::Error::other)?;
            if self.version == Version::V2 {
                // Swap would let a task run past its memory limit at the disk's pace.
                let _ = write(&dir.join("memory.swap.max"), "0");
            }
        }
        if let (Some(p), Some(dir)) = (limits.pids, self.dir(PIDS)) {
            write(&dir.join(pids_file), &p.to_string()).map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        for d in self.dirs.iter().flatten() {
            if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills every process in the cgroup and waits (at most about two seconds) until
    /// none is left. Returns whether it is empty.
    pub fn kill_all(&self) -> bool {
        if self.version == Version::V2 {
            if let Some(d) = self.dir(0) {
                // cgroup.kill (Linux 5.14) kills the whole subtree atomically.
                let _ = write(&d.join("cgroup.kill"), "1");
            }
        }
        let freezer = match self.version {
            Version::V2 => self.dir(0).map(|d| (d.join("cgroup.freeze"), "1", "0")),
            Version::V1 => self
                .dir(FREEZER)
                .map(|d| (d.join("freezer.state"), "FROZEN", "THAWED")),
        };
        for round in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            // Frozen, nothing can fork between reading the list and the kills.
            let frozen = freezer
                .as_ref()
                .is_some_and(|(f, on, _)| write(f, on).is_ok());
            for pid in self.pids() {
                // SAFETY: kill takes plain integers; a pid that is gone fails with ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if frozen {
                if let Some((f, _, off)) = &freezer {
                    let _ = write(f, off);
                }
            }
            std::thread::sleep(Duration::from_millis(if round < 20 { 1 } else { 10 }));
        }
        self.pids().is_empty()
    }

    /// What the task used: CPU time and peak memory.
    pub fn usage(&self) -> Usage {
        let num = |p: PathBuf| -> Option<u64> { fs::read_to_string(p).ok()?.trim().parse().ok() };
        match self.version {
            Version::V2 => {
                let Some(d) = self.dir(0) else {
                    return Usage::default();
                };
                let cpu_us = fs::read_to_string(d.join("cpu.stat"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("usage_usec "))
                            .and_then(|v| v.trim().parse().ok())
                    })
                    .unwrap_or(0);
                let memory_peak = num(d.join("memory.peak"))
                    .or_else(|| num(d.join("memory.current")))
                    .unwrap_or(0);
                Usage {
                    cpu_us,
                    memory_peak,
                }
            }
            Version::V1 => Usage {
                cpu_us: self
                    .dir(CPUACCT)
                    .and_then(|d| num(d.join("cpuacct.usage")))
                    .map(|ns| ns / 1000)
                    .unwrap_or(0),
                memory_peak: self
                    .dir(MEMORY)
                    .and_then(|d| num(d.join("memory.max_usage_in_bytes")))
                    .unwrap_or(0),
            },
        }
    }

    /// Memory the cgroup holds now.
    pub fn memory_now(&self) -> Option<u64> {
        let file = match self.version {
            Version::V2 => "memory.current",
            Version::V1 => "memory.usage_in_bytes",
        };
        fs::read_to_string(self.dir(MEMORY)?.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the kernel's OOM killer acted inside this cgroup.
    pub fn oom_killed(&self) -> bool {
        let Some(d) = self.dir(MEMORY) else {
            return false;
        };
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        fs::read_to_string(d.join(file)).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    }

    /// Removes the (empty) cgroup; retried briefly while the last exits settle.
    pub fn remove(&self) {
        for d in self.dirs.iter().flatten() {
            for attempt in 0..50 {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 49 => {
                        tracing::warn!(cgroup = %d.display(), "could not remove a task cgroup: {e}");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
}

/// A cgroup directory the agent may look into (its limits: Node.js, for one, sizes its
/// heap from memory.max); its files stay root's to write.
fn readable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
}

fn mkdir(p: &Path) -> Result<(), String> {
    match fs::create_dir(p) {
        Ok(()) => {
            readable(p);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("creating the cgroup {}: {e}", p.display())),
    }
}

fn write(p: &Path, v: &str) -> Result<(), String> {
    fs::write(p, v).map_err(|e| format!("writing {v:?} to {}: {e}", p.display()))
}

fn with_path(e: io::Error, p: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("creating the cgroup {}: {e}", p.display()),
    )
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
