//! What the steps between the worker and an agent do: the [`ExecPlan`] (the task's
//! cgroups to join, the uid and gid to become, RLIMIT_NPROC), carried out in the
//! agent's own process right before its `execve` by `direct` (so the agent's first
//! instruction already runs contained: there is no window in which it could fork
//! outside). Also `outpost __kill-uid UID`: becomes UID and kills every process of it
//! (the containment of last resort, where no cgroup can be written).
//!
//! (Until issue 15 the plan ran in a shim, `outpost __agent-exec`, started in the
//! agent's place and then executing it: a second `execve` of this 6 MB binary per task.)

use std::ffi::OsString;

/// The name of the hidden subcommand that kills every process of a uid.
pub const KILL_UID_ARG: &str = "__kill-uid";

/// What is done in the agent's process before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecPlan {
    /// Files to write "0" (the writer) into: the task's cgroups (see
    /// `TaskCgroup::procs_files`).
    pub cgroup_procs: Vec<std::path::PathBuf>,
    /// The uid and gid to become.
    pub user: Option<(u32, u32)>,
    /// RLIMIT_NPROC (counts every process of the uid).
    pub nproc: Option<u64>,
}

impl ExecPlan {
    /// Whether the agent can be started directly (nothing to do before exec).
    pub fn is_empty(&self) -> bool {
        self.cgroup_procs.is_empty() && self.user.is_none() && self.nproc.is_none()
    }
}

/// Drops every privilege: no supplementary groups, then gid, then uid (all three ids).
fn become_user(uid: u32, gid: u32) -> Result<(), String> {
    let groups = [gid];
    // SAFETY: plain system calls on integers and a valid one-element array.
    unsafe {
        if libc::setgroups(1, groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(format!(
                "setresgid({gid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(format!(
                "setresuid({uid}): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Runs `outpost __kill-uid UID`: becomes UID and SIGKILLs every process of it (a
/// `kill(-1)` from a uid reaches exactly that uid's processes), until none is left.
pub fn kill_uid_main(args: &[OsString]) -> i32 {
    let Some(uid) = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|u| *u != 0)
    else {
        eprintln!("outpost __kill-uid: expected a uid other than 0");
        return 2;
    };
    if let Err(e) = become_user(uid, uid) {
        eprintln!("outpost __kill-uid {uid}: {e}");
        return 1;
    }
    // kill(-1) runs under the task list lock, so no fork slips between its visits;
    // a few rounds for processes that were mid-fork.
    for _ in 0..100 {
        // SAFETY: kill with integer arguments.
        let r = unsafe { libc::kill(-1, libc::SIGKILL) };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            return 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_uid_refuses_root_and_nonsense() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(kill_uid_main(&os(&["0"])), 2);
        assert_eq!(kill_uid_main(&os(&["nope"])), 2);
        assert!(ExecPlan::default().is_empty());
        let plan = ExecPlan {
            nproc: Some(1),
            ..ExecPlan::default()
        };
        assert!(!plan.is_empty());
    }
}
