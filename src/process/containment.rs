//! Containment: what keeps every process of a task together, so that all of them can
//! be found, limited, accounted and killed when the task ends, whatever the agent did
//! (`setsid`, double forks, daemons). Chosen once at start, strongest first:
//! - `cgroup2` / `cgroup1`: a cgroup per task (see `cgroup`), joined before the agent's
//!   first instruction; memory and process limits are the cgroup's.
//! - `uid`: where no cgroup can be written but the worker is root: every task slot has
//!   its own uid, so a task's processes are exactly that uid's; RLIMIT_NPROC bounds
//!   them and `kill(-1)` from that uid kills them all.
//! - `session`: the worker is not root and has no cgroup: the agent's session and
//!   process group are killed. An agent that calls `setsid` can escape this one; the
//!   log says so at start.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::cgroup::{Cgroups, Ended, Limits, TaskCgroup, Version};
use super::exec::{ExecPlan, KILL_UID_ARG};
use super::identity::Identity;
use super::reaper::{reaper, Reaped};

/// Which containment is in force (`/hello`'s `containment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cgroup2,
    Cgroup1,
    Uid,
    Session,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cgroup2 => "cgroup2",
            Kind::Cgroup1 => "cgroup1",
            Kind::Uid => "uid",
            Kind::Session => "session",
        }
    }

    /// Parses `OUTPOST_CONTAINMENT` (`auto` or a kind's name).
    pub fn parse(s: &str) -> Result<Option<Kind>, String> {
        Ok(Some(match s {
            "" | "auto" => return Ok(None),
            "cgroup" | "cgroup2" | "cgroup1" => return Ok(None),
            "uid" => Kind::Uid,
            "session" => Kind::Session,
            _ => return Err("expected auto, cgroup, uid or session".into()),
        }))
    }
}

/// The worker's containment, set up once.
pub struct Containment {
    kind: Kind,
    cgroups: Option<Arc<Cgroups>>,
    identity: Identity,
    limits: Limits,
    /// Why a weaker kind is in force, for the log.
    pub note: Option<String>,
    /// Whether the task cgroup of this name belongs to a task alive in another worker
    /// sharing the data dir (left alone by the sweeps).
    live_elsewhere: LiveElsewhere,
}

/// See [`Containment::setup`]'s `live_elsewhere`.
pub type LiveElsewhere = Box<dyn Fn(&str) -> bool + Send + Sync>;

impl Containment {
    /// Picks the strongest containment this worker can have. `key` names this worker's
    /// cgroup parent (derived from its data dir); `forced` is `OUTPOST_CONTAINMENT`;
    /// `live_elsewhere` says which task (by id, the name of its cgroup) another worker
    /// on the same data dir runs now, so that no sweep kills it.
    pub fn setup(
        identity: Identity,
        key: &str,
        limits: Limits,
        forced: Option<Kind>,
        live_elsewhere: LiveElsewhere,
    ) -> Containment {
        let root = nix::unistd::geteuid().is_root();
        let fallback = |note: Option<String>| {
            let kind = if root && identity.separated() {
                Kind::Uid
            } else {
                Kind::Session
            };
            (kind, None, note)
        };
        let (kind, cgroups, note) = match forced {
            Some(k @ (Kind::Uid | Kind::Session)) => {
                let (kind, _, _) = fallback(None);
                let kind = if k == Kind::Uid { kind } else { Kind::Session };
                (
                    kind,
                    None,
                    Some(format!("OUTPOST_CONTAINMENT={}", k.name())),
                )
            }
            _ => {
                match Cgroups::setup(key) {
                    Ok(cg) => {
                        let kind = match cg.version() {
                            Version::V2 => Kind::Cgroup2,
                            Version::V1 => Kind::Cgroup1,
                        };
                        let swept = cg.sweep(&live_elsewhere);
                        let note = (swept > 0).then(|| {
                        format!("killed the processes of {swept} task cgroup(s) an earlier run left")
                    });
                        (kind, Some(Arc::new(cg)), note)
                    }
                    Err(e) => fallback(Some(format!("no cgroups for tasks: {e}"))),
                }
            }
        };
        Containment {
            kind,
            cgroups,
            identity,
            limits,
            note,
            live_elsewhere,
        }
    }

    /// At a clean stop: removes the cgroup parent of the tasks (all have ended).
    pub fn close(&self) {
        if let Some(cg) = &self.cgroups {
            cg.sweep(&self.live_elsewhere);
            cg.remove_parents();
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The user the agent of slot `slot` runs as, where it is not the worker's own.
    pub fn agent_user(&self, slot: usize) -> Option<(u32, u32)> {
        self.identity
            .separated()
            .then(|| self.identity.for_slot(slot))
    }

    /// Prepares the containment of one task in slot `slot` (blocking: cgroupfs).
    pub fn enter(&self, task_id: &str, slot: usize) -> io::Result<Jail> {
        let user = self.identity.for_slot(slot);
        let mut plan = ExecPlan {
            user: self.agent_user(slot),
            ..ExecPlan::default()
        };
        let cgroup = match &self.cgroups {
            Some(cg) => {
                let c = cg.create(task_id, self.limits)?;
                plan.cgroup_procs = c.procs_files();
                Some((c, cg.clone()))
            }
            None => None,
        };
        if self.kind == Kind::Uid {
            plan.nproc = self.limits.pids;
            // Whatever an earlier task of this slot left dies before this one starts.
            kill_uid(user.0);
        }
        Ok(Jail {
            kind: self.kind,
            cgroup,
            uid: user.0,
            plan,
            leader: None,
            emptied: AtomicBool::new(false),
            left_behind: AtomicBool::new(false),
            oom: OnceLock::new(),
        })
    }
}

/// The containment of one task.
pub struct Jail {
    kind: Kind,
    /// The task's cgroup, and the worker's that it returns to at the end.
    cgroup: Option<(TaskCgroup, Arc<Cgroups>)>,
    uid: u32,
    plan: ExecPlan,
    leader: Option<i32>,
    /// A kill found the cgroup empty: nothing can enter it any more.
    emptied: AtomicBool,
    /// A kill found processes left in it.
    left_behind: AtomicBool,
    /// Whether the OOM killer acted in it, once asked (after the task's end).
    oom: OnceLock<bool>,
}

impl Jail {
    /// What is done in this task's agent process before it runs.
    pub fn plan(&self) -> &ExecPlan {
        &self.plan
    }

    /// The uid the agent runs as.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Records the agent's leader (also its session and process group).
    pub fn set_leader(&mut self, pid: i32) {
        self.leader = Some(pid);
    }

    /// Kills every process of the task and waits until none is left (blocking, about
    /// two seconds at most). Returns whether none is left.
    pub fn kill_all(&self) -> bool {
        match self.kind {
            Kind::Cgroup1 | Kind::Cgroup2 => {
                let Some((c, _)) = &self.cgroup else {
                    return true;
                };
                let out = c.kill_all();
                if out.killed {
                    self.left_behind.store(true, Ordering::Relaxed);
                }
                if out.empty {
                    self.emptied.store(true, Ordering::Relaxed);
                }
                out.empty
            }
            Kind::Uid => {
                kill_uid(self.uid);
                // Stragglers (the killer was slow, or something was mid-fork): by pid.
                kill_until_none(|p| p.uid == self.uid)
            }
            Kind::Session => {
                let Some(leader) = self.leader else {
                    return true;
                };
                kill_until_none(|p: &ProcInfo| p.sid == leader || p.pgid == leader)
            }
        }
    }

    /// Processes of the task alive now (for tests and `/metrics`).
    pub fn processes(&self) -> Vec<i32> {
        match (&self.cgroup, self.kind, self.leader) {
            (Some((c, _)), _, _) => c.pids(),
            (None, Kind::Uid, _) => processes_where(|p| p.uid == self.uid)
                .iter()
                .map(|p| p.pid)
                .collect(),
            (None, _, Some(l)) => processes_where(|p| p.sid == l || p.pgid == l)
                .iter()
                .map(|p| p.pid)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// CPU time and peak memory of the task: from its cgroup, else from the kernel's
    /// account of the leader and what it waited for.
    pub fn usage(&self, leader: Option<&Reaped>) -> (u64, u64) {
        if let Some((c, _)) = &self.cgroup {
            let u = c.usage();
            if u.cpu_us > 0 || u.memory_peak > 0 {
                return (u.cpu_us, u.memory_peak);
            }
        }
        leader.map(|r| (r.cpu_us, r.max_rss)).unwrap_or((0, 0))
    }

    /// Memory the task holds now, where a cgroup tells.
    pub fn memory_now(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(|(c, _)| c.memory_now())
    }

    /// Whether the kernel's OOM killer acted inside the task (cgroups only).
    /// Asked once the task has ended, the answer is kept (for [`Jail::release`]).
    pub fn oom_killed(&self) -> bool {
        *self
            .oom
            .get_or_init(|| self.cgroup.as_ref().is_some_and(|(c, _)| c.oom_killed()))
    }

    /// Kills what is left and removes the task's cgroup, or keeps it for the next task
    /// when the task left nothing behind (blocking). A cgroup found empty once stays
    /// empty: none of its processes is left to start another, and nothing else joins.
    pub fn release(&self) {
        if !self.emptied.load(Ordering::Relaxed) {
            self.kill_all();
        }
        if let Some((c, cgroups)) = &self.cgroup {
            let end = Ended {
                left_behind: !self.emptied.load(Ordering::Relaxed)
                    || self.left_behind.load(Ordering::Relaxed),
                oom_killed: self.oom_killed(),
            };
            cgroups.release(c, end);
        }
    }
}

/// SIGKILLs every process for which `of_task` holds until none is left (about two
/// seconds at most); returns whether none is left.
fn kill_until_none(of_task: impl Fn(&ProcInfo) -> bool) -> bool {
    for _ in 0..400 {
        let left = processes_where(&of_task);
        if left.is_empty() {
            return true;
        }
        for p in left {
            // SAFETY: kill with integer arguments.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    processes_where(&of_task).is_empty()
}

/// Runs `outpost __kill-uid UID` and waits for it (at most 30 seconds, on a machine
/// so loaded that starting a process takes that long).
fn kill_uid(uid: u32) {
    if uid == 0 {
        return;
    }
    let child = std::process::Command::new("/proc/self/exe")
        .arg(KILL_UID_ARG)
        .arg(uid.to_string())
        .stdin(std::process::Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(uid, "could not start the uid killer: {e}");
            return;
        }
    };
    let mut rx = reaper().watch(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if rx.try_recv().is_ok() {
            return;
        }
        // The reaper may not be running (unit tests): reaping here is the same owner.
        reaper().reap_all();
        std::thread::sleep(Duration::from_millis(1));
    }
    tracing::warn!(uid, "the uid killer did not finish in 30 s");
}

struct ProcInfo {
    pid: i32,
    uid: u32,
    pgid: i32,
    sid: i32,
}

/// Every process (but this one) for which `keep` holds.
fn processes_where(keep: impl Fn(&ProcInfo) -> bool) -> Vec<ProcInfo> {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| proc_info(Path::new("/proc"), pid))
        .filter(|p| keep(p))
        .collect()
}

fn proc_info(proc_root: &Path, pid: i32) -> Option<ProcInfo> {
    let dir = proc_root.join(pid.to_string());
    // The real uid, from `status` (the directory's owner is root for a process that
    // made itself non-dumpable).
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let _state = f.next()?;
    let _ppid = f.next()?;
    let pgid = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        uid,
        pgid,
        sid,
    })
}
