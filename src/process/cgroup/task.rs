//! The cgroup of one task: how a process joins it, its limits, its processes (and
//! killing them all), what it used, and its reuse by the next task.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{read_small, write, Limits, Usage, Version, CPUACCT, FREEZER, MEMORY, PIDS};

/// How [`TaskCgroup::kill_all`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emptied {
    /// No process is left.
    pub empty: bool,
    /// It found processes to kill.
    pub killed: bool,
}

/// The cgroup of one task (one directory on v2, one per hierarchy on v1).
#[derive(Debug, Clone)]
pub struct TaskCgroup {
    pub(super) version: Version,
    pub(super) dirs: Vec<Option<PathBuf>>,
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

    pub(super) fn apply(&self, limits: Limits) -> io::Result<()> {
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

    /// This idle (empty) cgroup, renamed to `new`'s names, its CPU and peak memory
    /// counters reset. On an error both names are removed.
    pub(super) fn reuse_as(self, new: TaskCgroup) -> Result<TaskCgroup, String> {
        let renamed = self
            .dirs
            .iter()
            .zip(&new.dirs)
            .try_for_each(|(old, to)| match (old, to) {
                (Some(old), Some(to)) => fs::rename(old, to)
                    .map_err(|e| format!("renaming {} to {}: {e}", old.display(), to.display())),
                _ => Ok(()),
            });
        let reset = renamed.and_then(|()| {
            let dir = |i| new.dir(i).ok_or_else(String::new);
            if let Ok(d) = dir(CPUACCT) {
                write(&d.join("cpuacct.usage"), "0")?;
            }
            if let Ok(d) = dir(MEMORY) {
                write(&d.join("memory.max_usage_in_bytes"), "0")?;
            }
            Ok(())
        });
        match reset {
            Ok(()) => Ok(new),
            Err(e) => {
                self.remove();
                new.remove();
                Err(e)
            }
        }
    }

    /// The processes in the cgroup now. On v1 one hierarchy tells (pids, else memory):
    /// every process of the task is in each of them, since its first process joined all
    /// before its first instruction, the rest were born inside, and moving one out takes
    /// writing into another cgroup, which only root can.
    pub fn pids(&self) -> Vec<i32> {
        let dir = match self.version {
            Version::V2 => self.dir(0),
            Version::V1 => self.dir(PIDS).or_else(|| self.dir(MEMORY)),
        };
        let Some(text) = dir.and_then(|d| read_small(&d.join("cgroup.procs")).ok()) else {
            return Vec::new();
        };
        let mut out: Vec<i32> = text
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills every process in the cgroup and waits (at most about two seconds) until
    /// none is left.
    pub fn kill_all(&self) -> Emptied {
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
                return Emptied {
                    empty: true,
                    killed: round > 0,
                };
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
        Emptied {
            empty: self.pids().is_empty(),
            killed: true,
        }
    }

    /// What the task used: CPU time and peak memory.
    pub fn usage(&self) -> Usage {
        let num = |p: PathBuf| -> Option<u64> { read_small(&p).ok()?.trim().parse().ok() };
        match self.version {
            Version::V2 => {
                let Some(d) = self.dir(0) else {
                    return Usage::default();
                };
                let cpu_us = read_small(&d.join("cpu.stat"))
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
        read_small(&self.dir(MEMORY)?.join(file))
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
        read_small(&d.join(file)).is_ok_and(|s| {
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
