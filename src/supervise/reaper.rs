//! The process table: one owner reaps every child of this process (and, as PID 1 or a
//! child subreaper, every orphan that is re-parented to it) and hands each exit status
//! to whoever asked for it. Nobody else calls `waitpid`, so no status is ever stolen.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
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

#[derive(Default)]
struct Table {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: VecDeque<(i32, Exit)>,
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
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
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
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            n += 1;
            let mut t = self.lock();
            match t.waiting.remove(&exit.0) {
                Some(tx) => {
                    let _ = tx.send(exit.1);
                }
                None => {
                    t.reaped_orphans += 1;
                    t.unclaimed.push_back(exit);
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
