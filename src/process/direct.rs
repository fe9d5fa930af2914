//! Starting a contained agent without a shim: one `clone(CLONE_VM | CLONE_VFORK)` whose
//! child, on the parent's memory and a stack of its own, does every step of the task's
//! [`ExecPlan`] with raw system calls and then `execve`s the agent. So there is one
//! `execve` per agent, not two (the `outpost __agent-exec` shim cost ~0.8 ms of CPU per
//! task on the glibc build: loading this 6 MB binary and its libraries, and the Rust
//! runtime's start), and the agent's first instruction still runs contained.
//!
//! In order, in the child: every signal back to its default (all stay blocked until
//! just before `execve`), a new session, the PTY opened by path (so it becomes the
//! session's controlling terminal) as stdin, stdout and stderr, the working directory,
//! the task's cgroups joined (descriptors the parent opened: writing "0" moves the
//! writer, and the child has one thread), RLIMIT_NPROC, the agent's groups, gid and uid
//! (no supplementary groups), no new privileges, every descriptor above stderr closed,
//! nothing blocked, `execve`. The parent thread is suspended until the `execve` (or the
//! child's exit), as with `posix_spawn`.
//!
//! Why raw system calls: the child shares the parent's memory while the parent's other
//! threads run. It must not allocate, take a lock, or use a libc wrapper that acts on
//! the whole process (glibc's and musl's `setresuid` signal every thread the libc knows,
//! and those are the parent's). The only memory it writes is its own stack, the
//! descriptors' numbers it is given, and `failed`. A step that fails is named on the
//! terminal (the task's output, as the shim did) and the child exits with 127.

use std::ffi::{c_char, c_int, c_void, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use super::exec::ExecPlan;

/// The child's stack: its frames are small and it does not recurse.
const STACK: usize = 64 * 1024;

/// What the child needs, all prepared by the parent (pointers into live CStrings and
/// null-terminated arrays).
struct Child<'a> {
    exe: *const c_char,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
    tty: *const c_char,
    cwd: *const c_char,
    /// Open `tasks` / `cgroup.procs` files of the task's cgroups.
    join: &'a [c_int],
    user: Option<(u32, u32)>,
    nproc: Option<u64>,
    /// Set by the child when a step failed: the step's index + 1 and the errno.
    failed_step: AtomicI32,
    failed_errno: AtomicI32,
}

/// The steps, as the failure message names them.
const STEPS: [&str; 12] = [
    "resetting signals",
    "setsid",
    "opening the terminal",
    "making the terminal stdin, stdout and stderr",
    "changing to the working directory",
    "joining the task's cgroup",
    "setting RLIMIT_NPROC",
    "setgroups",
    "setresgid",
    "setresuid",
    "setting no_new_privs",
    "executing the agent",
];

/// Starts the program `exe` (argv, envp: null-terminated arrays) on the PTY `tty` in
/// `cwd`, contained by `plan`; returns its pid (also its session and process group).
pub(crate) fn spawn(
    exe: &CString,
    argv: &[*mut c_char],
    envp: &[*mut c_char],
    tty: &CString,
    cwd: &CString,
    plan: &ExecPlan,
) -> anyhow::Result<i32> {
    use anyhow::Context;
    let files: Vec<std::fs::File> = plan
        .cgroup_procs
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .with_context(|| format!("opening the task's cgroup {}", p.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let join: Vec<c_int> = files.iter().map(|f| f.as_raw_fd()).collect();
    let child = Child {
        exe: exe.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        tty: tty.as_ptr(),
        cwd: cwd.as_ptr(),
        join: &join,
        user: plan.user,
        nproc: plan.nproc,
        failed_step: AtomicI32::new(0),
        failed_errno: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; STACK];
    // The stack grows down from its 16-byte aligned top.
    let top = {
        let end = stack.as_mut_ptr().wrapping_add(STACK);
        end.wrapping_sub(end as usize % 16)
    };
    // SAFETY: sigset operations on local values; the mask is restored below. The child
    // runs `child_main` on `stack` (alive until after the clone returns: CLONE_VFORK
    // suspends this thread until the child has exec'd or exited) and reads `child`,
    // which outlives it for the same reason.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top.cast::<c_void>(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(&child).cast_mut().cast::<c_void>(),
        );
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(err).context("starting the agent (clone)");
        }
        pid
    };
    drop(stack);
    drop(files);
    let step = child.failed_step.load(Ordering::SeqCst);
    if step > 0 {
        let what = STEPS.get(step as usize - 1).copied().unwrap_or("starting");
        let errno = io::Error::from_raw_os_error(child.failed_errno.load(Ordering::SeqCst));
        tracing::warn!(pid, "the agent could not be started: {what}: {errno}");
    }
    Ok(pid)
}

/// A raw system call's result: Ok, or the errno.
fn sys(r: libc::c_long) -> Result<libc::c_long, c_int> {
    if r < 0 {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL))
    } else {
        Ok(r)
    }
}

/// The child: every step of the plan, then `execve`. Never returns.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Child`, alive and unchanged while this runs.
    let c = unsafe { &*arg.cast::<Child<'_>>() };
    let (step, errno) = match steps(c) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    c.failed_step.store(step as i32 + 1, Ordering::SeqCst);
    c.failed_errno.store(errno, Ordering::SeqCst);
    report(step, errno);
    // SAFETY: ends this process (the child) only.
    unsafe { libc::syscall(libc::SYS_exit_group, 127) };
    127
}

enum Never {}

/// The steps; on failure, the index of the step in [`STEPS`] and the errno.
fn steps(c: &Child<'_>) -> Result<Never, (usize, c_int)> {
    let at = |step: usize| move |errno: c_int| (step, errno);
    // SAFETY (for every call below): raw system calls on integers, on pointers to
    // NUL-terminated strings and null-terminated arrays the parent keeps alive, and on
    // local values; none touches memory other than this child's stack.
    unsafe {
        // Signals: all still blocked (the parent blocked them before the clone); each
        // back to its default, so none can run a handler of the parent in here. The
        // kernel's sigaction with everything zero is SIG_DFL.
        let dfl = [0u64; 4];
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let r = libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null::<u64>(),
                8usize,
            );
            // Numbers past the kernel's last signal fail: that is the end of them.
            if r < 0 && sig <= 31 {
                sys(r).map_err(at(0))?;
            }
        }
        sys(libc::syscall(libc::SYS_setsid)).map_err(at(1))?;
        let fd = sys(libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c.tty,
            libc::O_RDWR,
            0,
        ))
        .map_err(at(2))? as c_int;
        for target in 0..3 {
            let from = if target == 0 { fd } else { 0 };
            if from != target {
                sys(libc::syscall(libc::SYS_dup3, from, target, 0)).map_err(at(3))?;
            }
        }
        if fd > 2 {
            libc::syscall(libc::SYS_close, fd);
        }
        sys(libc::syscall(libc::SYS_chdir, c.cwd)).map_err(at(4))?;
        for &f in c.join {
            let n = sys(libc::syscall(libc::SYS_write, f, c"0".as_ptr(), 1usize)).map_err(at(5))?;
            if n != 1 {
                return Err((5, libc::EIO));
            }
        }
        if let Some(n) = c.nproc {
            // The kernel's rlimit64: the soft limit, then the hard one.
            let lim: [u64; 2] = [n, n];
            sys(libc::syscall(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_NPROC,
                lim.as_ptr(),
                std::ptr::null::<u64>(),
            ))
            .map_err(at(6))?;
        }
        if let Some((uid, gid)) = c.user {
            let groups = [gid];
            sys(libc::syscall(libc::SYS_setgroups, 1usize, groups.as_ptr())).map_err(at(7))?;
            sys(libc::syscall(libc::SYS_setresgid, gid, gid, gid)).map_err(at(8))?;
            sys(libc::syscall(libc::SYS_setresuid, uid, uid, uid)).map_err(at(9))?;
        }
        sys(libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_NO_NEW_PRIVS,
            1usize,
            0usize,
            0usize,
            0usize,
        ))
        .map_err(at(10))?;
        // Every descriptor of the worker is close-on-exec already; this is the second
        // lock on that door (one by one where the kernel lacks close_range).
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..1024 {
                libc::syscall(libc::SYS_close, fd);
            }
        }
        let none = 0u64;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none,
            std::ptr::null::<u64>(),
            8usize,
        );
        let r = libc::syscall(libc::SYS_execve, c.exe, c.argv, c.envp);
        Err((11, sys(r).err().unwrap_or(libc::EINVAL)))
    }
}

/// Names the failed step on stderr (the terminal, once it is set up), without
/// allocating: `outpost: the agent could not be started: <step>: errno <n>`.
fn report(step: usize, errno: c_int) {
    let mut num = [0u8; 12];
    let mut i = num.len();
    let mut v = errno.unsigned_abs();
    loop {
        i -= 1;
        num[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    let what = STEPS.get(step).copied().unwrap_or("starting");
    let parts: [&[u8]; 5] = [
        b"outpost: the agent could not be started: ",
        what.as_bytes(),
        b": errno ",
        num.get(i..).unwrap_or(&[]),
        b"\r\n",
    ];
    for p in parts {
        // SAFETY: write(2) from a live slice.
        unsafe { libc::syscall(libc::SYS_write, 2, p.as_ptr(), p.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::reaper::{reaper, Exit};
    use std::io::Read;
    use std::time::{Duration, Instant};

    /// Runs `argv` through `spawn` on a fresh PTY with `plan`: its output and its exit.
    fn run(argv: &[&str], plan: &ExecPlan) -> (String, Exit) {
        let pty = nix::pty::openpty(None, None).unwrap();
        let tty = nix::unistd::ttyname(&pty.slave).unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        let words: Vec<CString> = argv.iter().map(|a| c(a)).collect();
        let mut argv_p: Vec<*mut c_char> = words.iter().map(|w| w.as_ptr().cast_mut()).collect();
        argv_p.push(std::ptr::null_mut());
        let env = [c("PATH=/usr/bin:/bin")];
        let env_p = [env[0].as_ptr().cast_mut(), std::ptr::null_mut()];
        let tty_c = c(tty.to_str().unwrap());
        let pid = spawn(&words[0], &argv_p, &env_p, &tty_c, &c("/"), plan).unwrap();
        drop(pty.slave);
        let mut exit = reaper().watch(pid);
        let mut master = std::fs::File::from(pty.master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Bounded: the PTY reports EIO once the child's side is closed.
        for _ in 0..10_000 {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let reaped = loop {
            if let Ok(r) = exit.try_recv() {
                break r;
            }
            assert!(Instant::now() < deadline, "the child did not end");
            reaper().reap_all();
            std::thread::sleep(Duration::from_millis(2));
        };
        (String::from_utf8_lossy(&out).into_owned(), reaped.exit)
    }

    #[test]
    fn runs_the_program_on_its_terminal_with_the_plan_applied() {
        let plan = ExecPlan {
            nproc: Some(4096),
            ..ExecPlan::default()
        };
        let script = "tty; ls -1 /proc/self/fd; grep -E '^(SigBlk|NoNewPrivs)' /proc/self/status; ulimit -Hu 2>/dev/null || cat /proc/self/limits | grep processes";
        let (out, exit) = run(&["/bin/sh", "-c", script], &plan);
        assert_eq!(exit, Exit::Code(0), "{out}");
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert!(lines[0].starts_with("/dev/pts/"), "{out}");
        // 0, 1, 2 and the descriptor ls reads /proc/self/fd with: nothing of ours.
        assert_eq!(&lines[1..5], &["0", "1", "2", "3"], "{out}");
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        assert!(out.contains("NoNewPrivs:\t1"), "{out}");
        assert!(out.contains("4096"), "{out}");
        if nix::unistd::geteuid().is_root() {
            let plan = ExecPlan {
                user: Some((65534, 65534)),
                ..ExecPlan::default()
            };
            let (out, exit) = run(&["/bin/sh", "-c", "id -u; id -g; id -G"], &plan);
            assert_eq!(exit, Exit::Code(0), "{out}");
            let ids: Vec<&str> = out.lines().map(str::trim).collect();
            assert_eq!(ids, ["65534", "65534", "65534"], "{out}");
        }
    }

    #[test]
    fn a_failed_step_is_named_on_the_terminal_with_exit_127() {
        let plan = ExecPlan {
            nproc: Some(4096),
            ..ExecPlan::default()
        };
        // A directory cannot be executed: execve fails with EACCES.
        let (out, exit) = run(&["/tmp"], &plan);
        assert_eq!(exit, Exit::Code(127), "{out}");
        assert!(
            out.contains("the agent could not be started: executing the agent: errno 13"),
            "{out}"
        );
    }
}
