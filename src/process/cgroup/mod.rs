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
//!
//! v1 cgroups are reused: the cgroup of a task that left nothing behind, saw no OOM
//! kill and holds at most [`REUSE_MAX_CHARGE`] is kept, and the next task's is that one
//! renamed after it, its CPU and peak counters reset. Creating and removing a cgroup in
//! four hierarchies (each populating and tearing down its control files) was about a
//! quarter of the worker's CPU per trivial task; a rename is a few microseconds. v2
//! cannot rename a cgroup, so there every task gets a new one.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod setup;
mod task;

pub use setup::own_cpu_limit;
pub use task::{Emptied, TaskCgroup};

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
    /// v1: empty cgroups of finished tasks, for the next tasks (see the module doc).
    idle: Arc<Mutex<Vec<TaskCgroup>>>,
}

/// The most memory a finished task's cgroup may still be charged with (what its
/// processes left in the page cache and the kernel's caches) to be reused: the next
/// task's peak and current figures include it.
pub const REUSE_MAX_CHARGE: u64 = 1 << 20;

/// How a task ended, for [`Cgroups::release`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ended {
    /// Processes were left (and killed), or it was never found empty.
    pub left_behind: bool,
    /// The kernel's OOM killer acted inside it.
    pub oom_killed: bool,
}

/// At most this many idle cgroups are kept.
const IDLE_MAX: usize = 64;

/// The v1 hierarchies used, in this order.
const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpuacct", "freezer"];
const MEMORY: usize = 0;
const PIDS: usize = 1;
const CPUACCT: usize = 2;
const FREEZER: usize = 3;

impl Cgroups {
    fn new(version: Version, parents: Vec<Option<PathBuf>>) -> Cgroups {
        Cgroups {
            version,
            parents,
            idle: Arc::default(),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<TaskCgroup>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn named(&self, name: &str) -> TaskCgroup {
        TaskCgroup {
            version: self.version,
            dirs: self
                .parents
                .iter()
                .map(|p| p.as_ref().map(|p| p.join(name)))
                .collect(),
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The cgroup of one task, with its limits: an idle one renamed after it (v1), else
    /// a new one. `limits` are the worker's, the same for every task.
    pub fn create(&self, name: &str, limits: Limits) -> io::Result<TaskCgroup> {
        let idle = self.idle().pop();
        if let Some(old) = idle {
            match old.reuse_as(self.named(name)) {
                Ok(cg) => return Ok(cg),
                Err(e) => tracing::debug!("a new task cgroup instead of an idle one: {e}"),
            }
        }
        let cg = self.named(name);
        let mut stale = false;
        for d in cg.dirs.iter().flatten() {
            match fs::create_dir(d) {
                Ok(()) => readable(d),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => stale = true,
                Err(e) => return Err(with_path(e, d)),
            }
        }
        if stale {
            // Left by an earlier run under the same name: emptied first, as the whole
            // cgroup (every hierarchy's directory is there now).
            cg.kill_all();
        }
        cg.apply(limits)?;
        Ok(cg)
    }

    /// The end of a task's cgroup: kept for the next task where its task left no
    /// process behind, saw no OOM kill (v1's count cannot be reset) and its charge
    /// allows, else removed.
    pub fn release(&self, cg: &TaskCgroup, end: Ended) {
        let keep = !end.left_behind
            && !end.oom_killed
            && self.version == Version::V1
            && cg.memory_now().unwrap_or(0) <= REUSE_MAX_CHARGE;
        if keep {
            let mut idle = self.idle();
            if idle.len() < IDLE_MAX {
                idle.push(cg.clone());
                return;
            }
        }
        cg.remove();
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
        // Idle cgroups are among them: forget them.
        self.idle().clear();
        for name in &names {
            let cg = self.named(name);
            cg.kill_all();
            cg.remove();
        }
        names.len()
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

/// A small control file's text: one read and the one that finds its end (`fs::read_to_string`
/// asks for the size first, and reads a file of unknown size in growing pieces). The
/// buffer is on the heap: these reads run on the blocking pool's threads, and a buffer
/// on their stacks would keep a page of each of them (hundreds, with as many tasks).
fn read_small(p: &Path) -> io::Result<String> {
    let mut f = fs::File::open(p)?;
    let mut text = vec![0u8; 512];
    let mut len = 0;
    loop {
        if len == text.len() {
            text.resize(len * 2, 0);
        }
        match f.read(&mut text[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    text.truncate(len);
    String::from_utf8(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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
mod tests;
