//! The last step before an agent runs: `outpost __agent-exec`, started by the worker in
//! the agent's new session on its terminal, puts itself into the task's cgroups, sets
//! the task's resource limits, drops to the agent's uid and gid (no supplementary
//! groups, no new privileges), closes every descriptor above stderr, and `execve`s the
//! agent. So the agent's first instruction already runs contained: there is no window
//! in which it could fork outside. Also `outpost __kill-uid UID`: becomes UID and
//! kills every process of it (the containment of last resort, where no cgroup can be
//! written).
//!
//! This runs in a fresh, single-threaded process: it allocates and uses std freely, and
//! reports a failure on the terminal (the task's output) with exit code 127.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;

/// The name of the hidden subcommand that starts an agent.
pub const EXEC_ARG: &str = "__agent-exec";
/// The name of the hidden subcommand that kills every process of a uid.
pub const KILL_UID_ARG: &str = "__kill-uid";

/// What the shim does, in its command-line form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecPlan {
    /// `cgroup.procs` files to write "0" (this process) into.
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

    /// The shim's arguments (after the program name), then `--`, the program's path
    /// and its argument vector.
    pub fn args(&self, exe: &str, argv: &[String]) -> Vec<String> {
        let mut a = vec![EXEC_ARG.to_string()];
        for p in &self.cgroup_procs {
            a.push("--cgroup".into());
            a.push(p.display().to_string());
        }
        if let Some((u, g)) = self.user {
            a.push("--user".into());
            a.push(format!("{u}:{g}"));
        }
        if let Some(n) = self.nproc {
            a.push("--nproc".into());
            a.push(n.to_string());
        }
        a.push("--".into());
        a.push(exe.to_string());
        a.extend(argv.iter().cloned());
        a
    }
}

/// Runs `outpost __agent-exec ...` (`args` are the words after `__agent-exec`); returns
/// only on failure, with the process's exit code.
pub fn agent_exec_main(args: &[OsString]) -> i32 {
    match agent_exec(args) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("outpost: the agent could not be started: {e}\r");
            127
        }
    }
}

enum Never {}

fn agent_exec(args: &[OsString]) -> Result<Never, String> {
    let mut plan = ExecPlan::default();
    let mut i = 0;
    let word = |i: usize| -> Result<String, String> {
        args.get(i)
            .and_then(|a| a.to_str())
            .map(str::to_string)
            .ok_or_else(|| "a shim argument is missing or not UTF-8".to_string())
    };
    while i < args.len() {
        match word(i)?.as_str() {
            "--cgroup" => plan.cgroup_procs.push(word(i + 1)?.into()),
            "--user" => {
                let v = word(i + 1)?;
                let (u, g) = v.split_once(':').ok_or("--user takes uid:gid")?;
                let parse = |s: &str| s.parse::<u32>().map_err(|_| format!("bad id {s:?}"));
                plan.user = Some((parse(u)?, parse(g)?));
            }
            "--nproc" => {
                plan.nproc = Some(word(i + 1)?.parse().map_err(|_| "bad --nproc")?);
            }
            "--" => {
                i += 1;
                break;
            }
            other => return Err(format!("unknown shim argument {other:?}")),
        }
        i += 2;
    }
    let exe = args.get(i).ok_or("no program after --")?;
    let argv = &args[i + 1..];
    for f in &plan.cgroup_procs {
        std::fs::write(f, "0")
            .map_err(|e| format!("joining the task's cgroup {}: {e}", f.display()))?;
    }
    if let Some(n) = plan.nproc {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &lim) } != 0 {
            return Err(format!(
                "setting RLIMIT_NPROC: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some((uid, gid)) = plan.user {
        become_user(uid, gid)?;
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    close_from(3);
    let c = |s: &OsString| {
        CString::new(s.clone().into_vec()).map_err(|_| "an argument holds a NUL byte".to_string())
    };
    let exe_c = c(exe)?;
    let argv_c: Vec<CString> = argv.iter().map(c).collect::<Result<_, _>>()?;
    let mut ptrs: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: NUL-terminated strings and a null-terminated pointer array that outlive
    // the call; `environ` is the process's own environment.
    unsafe { libc::execve(exe_c.as_ptr(), ptrs.as_ptr(), environ) };
    Err(format!(
        "executing {}: {}",
        exe.to_string_lossy(),
        std::io::Error::last_os_error()
    ))
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

/// Closes every descriptor from `first` up.
fn close_from(first: i32) {
    // SAFETY: close_range takes integers; where the kernel lacks it, close one by one.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, u32::MAX, 0) };
    if r != 0 {
        for fd in first..1024 {
            // SAFETY: closing a descriptor number that may not be open.
            unsafe { libc::close(fd) };
        }
    }
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
    fn plan_round_trips_through_its_arguments() {
        let plan = ExecPlan {
            cgroup_procs: vec!["/sys/fs/cgroup/memory/x/cgroup.procs".into()],
            user: Some((61184, 61184)),
            nproc: Some(512),
        };
        let args = plan.args("/bin/sh", &["sh".into(), "-c".into(), "echo hi".into()]);
        assert_eq!(args[0], EXEC_ARG);
        assert_eq!(
            &args[1..],
            &[
                "--cgroup",
                "/sys/fs/cgroup/memory/x/cgroup.procs",
                "--user",
                "61184:61184",
                "--nproc",
                "512",
                "--",
                "/bin/sh",
                "sh",
                "-c",
                "echo hi"
            ]
        );
        assert!(ExecPlan::default().is_empty());
        assert!(!plan.is_empty());
    }

    #[test]
    fn bad_shim_arguments_are_reported_not_executed() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            agent_exec_main(&os(&["--bogus", "x", "--", "/bin/true"])),
            127
        );
        assert_eq!(
            agent_exec_main(&os(&["--user", "nope", "--", "/bin/true"])),
            127
        );
        assert_eq!(kill_uid_main(&os(&["0"])), 2);
    }
}
