//! The worker's own work beside the tasks (deleting pruned tasks, emptying the trash,
//! building checkout templates and copying checkouts ahead) runs on threads at a lower
//! CPU priority: on two CPUs a task's agent and its commit check come first, and the
//! background work still gets done (at nice 10 a thread has about a tenth of a normal
//! one's share while both want a CPU, and is never starved). A task that waits for such
//! work (a spare checkout being copied) gives its thread the normal priority back.

/// The nice value of background threads (0 is normal, 19 the lowest).
pub(crate) const NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority to [`NICE`] (on Linux, nice is per thread).
/// `what` names the work in the debug line written when that fails.
pub(crate) fn lower_priority(what: &str) {
    set_nice(nix::unistd::gettid().as_raw(), NICE, what);
}

/// Gives this process's thread `tid` the normal priority again (nice 0): background
/// work that a task now waits for. Raising a priority needs CAP_SYS_NICE (a worker run
/// as root has it); without it the thread stays as it was.
pub(crate) fn restore_priority(tid: i32) {
    set_nice(tid, 0, "a background thread a task waits for");
}

/// Sets the nice value of this process's thread `tid`; a failure is only logged (the
/// work goes on at the priority it has).
fn set_nice(tid: i32, nice: libc::c_int, what: &str) {
    // SAFETY: setpriority only changes the scheduling priority of that thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, tid as libc::id_t, nice) };
    if rc != 0 {
        tracing::debug!(
            "{what}: its priority stays (nice {nice} refused: {})",
            std::io::Error::last_os_error()
        );
    }
}

/// The nice value of this process's thread named `name` (the first one), from
/// `/proc/self/task/*/stat`.
#[cfg(test)]
pub(crate) fn nice_of_thread(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .find_map(|t| nice_in(&t.path()))
}

/// The nice value of this process's thread `tid`.
#[cfg(test)]
pub(crate) fn nice_of(tid: i32) -> Option<i32> {
    nice_in(&std::path::Path::new("/proc/self/task").join(tid.to_string()))
}

#[cfg(test)]
fn nice_in(task: &std::path::Path) -> Option<i32> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(16)?.parse::<i32>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A background thread lowers its own priority only, and a waiting task can give it
    /// the normal one back (as root).
    #[test]
    fn a_thread_lowers_its_priority_and_can_be_given_it_back() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            lower_priority("a test");
            let tid = nix::unistd::gettid().as_raw();
            tx.send((tid, nice_of(tid))).expect("send");
            let _ = wait.recv();
        });
        let (tid, nice) = rx.recv().expect("the thread's nice");
        assert_eq!(nice, Some(NICE));
        let me = nix::unistd::gettid().as_raw();
        assert_eq!(
            nice_of(me),
            Some(0),
            "the caller's own priority is unchanged"
        );
        restore_priority(tid);
        let want = if nix::unistd::geteuid().is_root() {
            0
        } else {
            NICE
        };
        assert_eq!(nice_of(tid), Some(want));
        go.send(()).expect("go");
        t.join().expect("join");
    }
}
