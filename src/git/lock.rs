//! The per-cache lock: an exclusive `flock` on `<cache>.lock`, polled every 50 ms up to a
//! timeout. The kernel drops the lock when its holder dies, so a killed worker never
//! leaves a stale lock behind; separate opens in one process exclude each other too.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::GitError;

const POLL: Duration = Duration::from_millis(50);

/// Held while a cache is being checked, fetched or read; released on drop.
pub(crate) struct CacheLock {
    _lock: Flock<File>,
}

impl CacheLock {
    /// Waits (bounded by `timeout`) for the exclusive lock on `path`.
    pub(crate) fn acquire(path: &Path, timeout: Duration) -> Result<CacheLock, GitError> {
        let started = Instant::now();
        let mut file = open(path)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(CacheLock { _lock: lock }),
                Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => {
                    if started.elapsed() >= timeout {
                        return Err(GitError::LockTimeout {
                            path: PathBuf::from(path),
                            waited: timeout,
                        });
                    }
                    file = f;
                    std::thread::sleep(POLL.min(timeout.saturating_sub(started.elapsed())));
                }
                Err((_, errno)) => {
                    return Err(GitError::io(
                        format!(
                            "locking {} (the data dir's file system must support flock)",
                            path.display()
                        ),
                        std::io::Error::from(errno),
                    ))
                }
            }
        }
    }
}

fn open(path: &Path) -> Result<File, GitError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| GitError::io(format!("creating {}", parent.display()), e))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| GitError::io(format!("opening the lock file {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_times_out_then_gets_it_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.lock");
        let first = CacheLock::acquire(&path, Duration::from_secs(1)).unwrap();
        let err = CacheLock::acquire(&path, Duration::from_millis(120))
            .err()
            .unwrap();
        assert!(matches!(err, GitError::LockTimeout { .. }), "{err}");
        drop(first);
        CacheLock::acquire(&path, Duration::from_millis(120)).unwrap();
    }
}
