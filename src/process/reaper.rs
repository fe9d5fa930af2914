//! The process table: one owner reaps every child of this process (and, as PID 1 or a
//! child subreaper, every orphan that is re-parented to it) and hands each exit status
//! to whoever asked for it, with the resource usage the kernel reports for it. Nobody
//! else calls `waitpid`, so no status is ever stolen.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// Statuses reaped before anyone asked are kept this long (a race between spawn and
/// `watch`); orphans nobody asks for fall off the end.
const UNCLAIMED_MAX: usize = 256;

/// What the kernel reported for a reaped process: its exit and its resource usage
/// (its own, plus that of the descendants it waited for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub exit: Exit,
    /// User plus system CPU time, in microseconds.
    pub cpu_us: u64,
    /// The largest resident set of the process or a waited-for descendant, in bytes.
    pub max_rss: u64,
}

impl Reaped {
    /// A status for a process whose end was not seen (its watch was dropped).
    pub fn lost() -> Reaped {
        Reaped {
            exit: Exit::Signal(9),
            cpu_us: 0,
            max_rss: 0,
        }
    }
}

#[derive(Default)]
struct Table {
    waiting: HashMap<i32, oneshot::Sender<Reaped>>,
    unclaimed: VecDeque<(i32, Reaped)>,
    reaped_orphans: u64,
}

/// The reaper. There is one per process: see [`reaper`].
pub struct Reaper {
    table: Mutex<Table>,
}

/// The process-wide reaper.
pub fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(|| Reaper {
        table: Mutex::new(Table::default()),
    })
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for the exit status of `pid`, a child of this process.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Reaped> {
        let (tx, rx) = oneshot::channel();
        let mut t = self.lock();
        if let Some(i) = t.unclaimed.iter().position(|(p, _)| *p == pid) {
            if let Some((_, exit)) = t.unclaimed.remove(i) {
                let _ = tx.send(exit);
                return rx;
            }
        }
        t.waiting.insert(pid, tx);
        rx
    }

    /// Reaps every child that has ended; returns how many.
    pub fn reap_all(&self) -> usize {
        let mut n = 0;
        // Bounded: each turn reaps one process; there cannot be more zombies than pids.
        for _ in 0..1_000_000 {
            let Some(reaped) = wait_any() else { break };
            n += 1;
            let (pid, r) = reaped;
            let mut t = self.lock();
            match t.waiting.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(r);
                }
                None => {
                    t.reaped_orphans += 1;
                    t.unclaimed.push_back((pid, r));
                    if t.unclaimed.len() > UNCLAIMED_MAX {
                        t.unclaimed.pop_front();
                    }
                }
            }
        }
        n
    }

    /// Processes reaped that nobody was waiting for (orphans, mostly).
    pub fn orphans_reaped(&self) -> u64 {
        self.lock().reaped_orphans
    }
}

/// One `wait4(-1, WNOHANG)`: the next ended child with its usage, or `None` when no
/// child has ended (or there are none).
fn wait_any() -> Option<(i32, Reaped)> {
    // Bounded: EINTR and stopped/continued children are the only reasons to go round.
    for _ in 0..1_000 {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only into `status` and `ru`, both valid for the call.
        let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
        if pid == 0 {
            return None;
        }
        if pid < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return None;
        }
        let exit = if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            continue;
        };
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        return Some((
            pid,
            Reaped {
                exit,
                cpu_us: tv(ru.ru_utime) + tv(ru.ru_stime),
                max_rss: (ru.ru_maxrss.max(0) as u64) * 1024,
            },
        ));
    }
    None
}

/// Runs the reaper on the async runtime: on every SIGCHLD, and once a second as a
/// backstop (signals coalesce).
pub fn spawn_reaper() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tick.tick() => {}
            }
            // waitpid with WNOHANG does not block.
            reaper().reap_all();
        }
    });
    Ok(())
}
