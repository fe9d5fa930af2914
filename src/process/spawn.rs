//! Starting an agent process on a terminal (through `direct` when it must be contained
//! or change user, with the same steps and more): `posix_spawn` in a new session whose
//! controlling terminal is the PTY (opened by path after `setsid`, so the kernel makes
//! it the session's terminal and the agent's group its foreground group), with the
//! terminal as stdin, stdout and stderr, every signal at its default and none blocked.
//!
//! Why not fork: outpost is a multi-threaded process, and forking it copies its page
//! tables and turns every page it then writes into a copy-on-write fault that must
//! flush the other CPUs' TLBs. `posix_spawn` starts the child on the parent's memory
//! (`CLONE_VM | CLONE_VFORK`), which made trivial tasks about twice as fast (`bench
//! tasks`). The price is that the child can only run the steps `posix_spawn` offers;
//! they are enough.
//!
//! No descriptor of ours may reach the agent: every one outpost opens is close-on-exec
//! (Rust, tokio and libgit2 open them so, and [`mark_inherited_cloexec`] marks those
//! inherited at start); with glibc the child also closes everything above stderr.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::exec::ExecPlan;

/// What to start.
pub(crate) struct Spawn<'a> {
    /// The program as given (a name looked up on `PATH`, or a path).
    pub program: &'a str,
    /// The whole argument vector, `argv[0]` included.
    pub argv: &'a [String],
    /// The complete environment of the child.
    pub env: &'a [(OsString, OsString)],
    pub cwd: &'a Path,
    /// The PTY's slave device (`/dev/pts/N`).
    pub tty: &'a Path,
    /// What is done before the program runs (cgroups, user, limits); empty:
    /// the program is started directly.
    pub plan: &'a ExecPlan,
}

/// Starts the process; returns its pid (also its process group and session id).
pub(crate) fn spawn(s: &Spawn<'_>) -> anyhow::Result<i32> {
    use anyhow::Context;
    let path_var = s.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v);
    let exe =
        resolve(s.program, path_var.map(OsString::as_os_str), s.cwd).map_err(anyhow::Error::msg)?;
    match std::fs::metadata(s.cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!(
            "the working directory {} is not a directory",
            s.cwd.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("the working directory {}", s.cwd.display()))
        }
    }
    let tty = cstring(s.tty.as_os_str())?;
    let cwd = cstring(s.cwd.as_os_str())?;
    let exe_c = cstring(exe.as_os_str())?;
    let argv: Vec<CString> = s
        .argv
        .iter()
        .map(|a| cstring(OsStr::new(a)))
        .collect::<anyhow::Result<_>>()?;
    let env: Vec<CString> = s
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            cstring(&kv)
        })
        .collect::<anyhow::Result<_>>()?;
    let argv_p = null_terminated(&argv);
    let env_p = null_terminated(&env);
    if !s.plan.is_empty() {
        // Containment, user and limits: steps posix_spawn does not offer.
        return super::direct::spawn(&exe_c, &argv_p, &env_p, &tty, &cwd, s.plan).with_context(
            || {
                format!(
                    "starting {} in {} on {}",
                    exe.display(),
                    s.cwd.display(),
                    s.tty.display()
                )
            },
        );
    }

    let actions = FileActions::new()?;
    let attr = Attr::new()?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer handed to libc points into a CString, a pointer array or
    // an initialized posix_spawn object that lives until the end of this function;
    // the child only runs the steps recorded in `actions` and `attr`, then execve.
    let rc = unsafe {
        let fa = actions.ptr();
        check(libc::posix_spawn_file_actions_addopen(
            fa,
            0,
            tty.as_ptr(),
            libc::O_RDWR,
            0,
        ))?;
        check(libc::posix_spawn_file_actions_adddup2(fa, 0, 1))?;
        check(libc::posix_spawn_file_actions_adddup2(fa, 0, 2))?;
        check(libc::posix_spawn_file_actions_addchdir_np(fa, cwd.as_ptr()))?;
        #[cfg(target_env = "gnu")]
        check(libc::posix_spawn_file_actions_addclosefrom_np(fa, 3))?;

        let at = attr.ptr();
        let flags = libc::POSIX_SPAWN_SETSID
            | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
            | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
        check(libc::posix_spawnattr_setflags(at, flags))?;
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::posix_spawnattr_setsigmask(at, &none))?;
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        check(libc::posix_spawnattr_setsigdefault(at, &all))?;

        libc::posix_spawn(
            &mut pid,
            exe_c.as_ptr(),
            fa,
            at,
            argv_p.as_ptr(),
            env_p.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc)).with_context(|| {
            format!(
                "starting {} in {} on {}",
                exe.display(),
                s.cwd.display(),
                s.tty.display()
            )
        });
    }
    Ok(pid)
}

/// Where `program` is: itself when it names a path (relative to `cwd`), else the first
/// executable file of that name in `path_var`'s directories.
pub(crate) fn resolve(
    program: &str,
    path_var: Option<&OsStr>,
    cwd: &Path,
) -> Result<PathBuf, String> {
    if program.is_empty() {
        return Err("the agent command line is empty".to_string());
    }
    if program.contains('/') {
        let p = cwd.join(program);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "the agent program {} is not an executable file",
                p.display()
            ))
        };
    }
    let Some(path_var) = path_var.filter(|p| !p.is_empty()) else {
        return Err(format!(
            "the agent program `{program}` cannot be looked up: PATH is not set (give its full path)"
        ));
    };
    for dir in std::env::split_paths(path_var) {
        let candidate = cwd.join(dir).join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "the agent program `{program}` was not found on PATH ({}): install it or give its full path",
        path_var.to_string_lossy()
    ))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Marks every descriptor this process inherited (above stderr) close-on-exec, so that
/// none reaches an agent. Call once at start, before any descriptor of our own exists.
pub fn mark_inherited_cloexec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only change the flag of `fd`; one already closed (the
        // directory's own) fails harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn cstring(s: &OsStr) -> anyhow::Result<CString> {
    CString::new(s.as_bytes().to_vec()).map_err(|_| {
        anyhow::anyhow!(
            "{:?} contains a NUL byte, which no program can receive",
            s.to_string_lossy()
        )
    })
}

fn null_terminated(items: &[CString]) -> Vec<*mut libc::c_char> {
    items
        .iter()
        .map(|c| c.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

fn check(rc: libc::c_int) -> anyhow::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(anyhow::Error::new(io::Error::from_raw_os_error(rc))
            .context("preparing to start the agent"))
    }
}

/// `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(Box<libc::posix_spawn_file_actions_t>);

impl FileActions {
    fn new() -> anyhow::Result<FileActions> {
        // SAFETY: zeroed storage is what posix_spawn_file_actions_init expects to fill.
        let mut fa = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `fa` is valid, writable storage for the object.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut *fa) })?;
        Ok(FileActions(fa))
    }

    fn ptr(&self) -> *mut libc::posix_spawn_file_actions_t {
        std::ptr::from_ref(&*self.0).cast_mut()
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialized in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut *self.0) };
    }
}

/// `posix_spawnattr_t`, destroyed on drop.
struct Attr(Box<libc::posix_spawnattr_t>);

impl Attr {
    fn new() -> anyhow::Result<Attr> {
        // SAFETY: as for FileActions.
        let mut at = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `at` is valid, writable storage for the object.
        check(unsafe { libc::posix_spawnattr_init(&mut *at) })?;
        Ok(Attr(at))
    }

    fn ptr(&self) -> *mut libc::posix_spawnattr_t {
        std::ptr::from_ref(&*self.0).cast_mut()
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialized in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut *self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_on_path_and_paths_as_given() {
        let cwd = Path::new("/");
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        let sh = resolve("sh", Some(path), cwd).unwrap();
        assert!(sh.ends_with("bin/sh"), "{}", sh.display());
        assert_eq!(
            resolve("/bin/sh", None, cwd).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let e = resolve("no-such-agent-xyz", Some(path), cwd).unwrap_err();
        assert!(
            e.contains("not found on PATH") && e.contains("/usr/bin"),
            "{e}"
        );
        let e = resolve("sh", None, cwd).unwrap_err();
        assert!(e.contains("PATH is not set"), "{e}");
        // A directory or a file without exec bits is not a program.
        let plain = std::env::temp_dir().join(format!("outpost-plain-{}", std::process::id()));
        std::fs::write(&plain, "x").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = resolve(plain.to_str().unwrap(), None, cwd);
        std::fs::remove_file(&plain).unwrap();
        assert!(refused.unwrap_err().contains("not an executable file"));
        assert!(resolve("/bin", None, cwd).is_err());
        assert!(resolve("", Some(path), cwd).is_err());
    }

    #[test]
    fn inherited_descriptors_are_marked_close_on_exec() {
        let file = std::fs::File::open("/etc/hostname").unwrap();
        // SAFETY: F_DUPFD returns a new descriptor (without close-on-exec), closed below.
        let fd = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_DUPFD, 3) };
        assert!(fd > 2);
        // SAFETY: F_GETFD on our own descriptor.
        let before = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(before & libc::FD_CLOEXEC, 0);
        mark_inherited_cloexec();
        // SAFETY: as above; then closed once.
        let after = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        unsafe { libc::close(fd) };
        assert_ne!(after & libc::FD_CLOEXEC, 0);
    }
}
