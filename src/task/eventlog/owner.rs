//! Who owns a live log: the worker that writes it holds an exclusive `flock` on its
//! file for as long as it has it open (from its creation, or its reopening after a
//! crash, to its `done`). Two workers can share one data dir (a volume two instances
//! mount, an old instance draining while a new one starts): the one that starts reads
//! back every task it finds, and without this it would take the other's live tasks for
//! a crash's leftovers and end them `interrupted` under it. The kernel drops the lock
//! with its holder (kill -9, crash), so a dead worker's tasks are recovered as before.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Takes the lock on a log's file for this process. `Ok(false)`: another process
/// holds it (the log is live there).
pub(super) fn claim(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) on a descriptor the File keeps open.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        // A file system without flock (some network ones): nothing to learn from it.
        Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS) => Ok(true),
        _ => Err(e),
    }
}

/// Whether the log of the task in `dir` is held by another live process (a worker
/// sharing this data dir). A log that cannot be opened is held by no one.
pub fn held_elsewhere(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(super::EVENTS_FILE)) else {
        return false;
    };
    // SAFETY: as above; a shared lock, dropped with `file` at once.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// The error [`super::EventLog::reopen`] returns for a log another process holds.
pub(super) fn held_error(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        format!(
            "{} is live in another worker sharing this data dir (it holds the log's lock)",
            path.display()
        ),
    )
}
