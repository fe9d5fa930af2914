//! Trees of ended tasks are deleted off the task's path. [`discard`] renames one (a
//! worktree, a scratch task's run dir) into `<data>/trash/`: a single rename, after
//! which its path is free and the task can report its end. A background thread then
//! deletes what the trash holds. Deleting a 2,000-file checkout on ext4 takes
//! 0.1-0.2 s once its files are on disk, and even an empty scratch dir's three
//! `rmdir`s cost a trivial task's `done` 0.5-1 ms on ext4 (docs/bench.md).
//!
//! What a crash left in the trash goes with the next discard, or with [`sweep`] at
//! start-up. This module owns the deleting thread and the list of trash dirs it has
//! yet to empty; the thread lingers a moment for the next discard (tasks back to back
//! would otherwise start one each) and ends when none comes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the deleting thread waits for more work before it ends.
const LINGER: Duration = Duration::from_secs(2);
/// Where trash lived before scratch dirs went there too (swept at start-up).
const LEGACY: &str = "git/trash";

/// The deleting thread's work: the trash dirs to empty, and whether it runs.
struct State {
    dirty: Vec<PathBuf>,
    running: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    dirty: Vec::new(),
    running: false,
});
/// Signalled when the deleting thread ends (nothing left to delete).
static IDLE: Condvar = Condvar::new();
/// Signalled when a trash dir is queued for the lingering thread.
static WORK: Condvar = Condvar::new();

/// `<data>/trash`: trees being deleted (root's alone).
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("trash")
}

/// Deletes, in the background, what a crash left in the data dir's trash (and in
/// the trash of earlier versions).
pub fn sweep_data_dir(data_dir: &Path) {
    sweep(&dir(data_dir));
    sweep(&data_dir.join(LEGACY));
}

/// A number unique in this process, for the names of trees in the trash and of the
/// git cache's spare checkouts.
pub(crate) fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Moves `path` into `trash` and has it deleted in the background. Where it cannot be
/// moved (the trash cannot be made, or is on another file system) it is deleted now.
/// A path that does not exist is no error.
pub fn discard(trash: &Path, path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
        return Ok(());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = trash.join(format!("{name}-{}", unique()));
    let moved = private_dir(trash).and_then(|()| fs::rename(path, &dest));
    match moved {
        Ok(()) => {
            schedule(trash);
            Ok(())
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), "deleting in place, not moved to the trash: {e}");
            remove(path)
        }
    }
}

/// Has whatever `trash` holds deleted in the background (a crash's leftovers).
pub fn sweep(trash: &Path) {
    if trash.is_dir() {
        schedule(trash);
    }
}

/// Queues `trash` to be emptied, starting the deleting thread unless it runs; the
/// thread ends once no trash dir has been queued for [`LINGER`].
fn schedule(trash: &Path) {
    let mut s = state();
    if !s.dirty.iter().any(|d| d == trash) {
        s.dirty.push(trash.to_path_buf());
    }
    if s.running {
        WORK.notify_one();
        return;
    }
    s.running = true;
    drop(s);
    let spawned = std::thread::Builder::new()
        .name("outpost-trash".into())
        .spawn(|| {
            crate::background::lower_priority("emptying the trash");
            // Bounded: each turn empties a queued dir; discards queue their dir again
            // only for what they moved in meanwhile.
            while let Some(dir) = next_dirty(LINGER) {
                empty(&dir);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no thread to empty the trash ({e}): emptying it now");
        while let Some(dir) = next_dirty(Duration::ZERO) {
            empty(&dir);
        }
    }
}

/// The next trash dir to empty, waiting up to `linger` for one; None (and the
/// thread marked ended) when none came.
fn next_dirty(linger: Duration) -> Option<PathBuf> {
    let mut s = state();
    if s.dirty.is_empty() && !linger.is_zero() {
        s = WORK
            .wait_timeout_while(s, linger, |s| s.dirty.is_empty())
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    let next = s.dirty.pop();
    if next.is_none() {
        s.running = false;
        IDLE.notify_all();
    }
    next
}

fn empty(trash: &Path) {
    let Ok(entries) = fs::read_dir(trash) else {
        return;
    };
    for e in entries.flatten() {
        if let Err(err) = remove(&e.path()) {
            tracing::warn!(path = %e.path().display(), "emptying the trash: {err}");
        }
    }
}

fn remove(path: &Path) -> io::Result<()> {
    let is_dir = fs::symlink_metadata(path).map(|m| m.is_dir());
    let r = match is_dir {
        Ok(true) => fs::remove_dir_all(path),
        Ok(false) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// The trash dir: root's alone (0700), like the worktrees' parents.
fn private_dir(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Waits, at most `timeout`, until nothing is being deleted; true if so.
    fn settle(timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = state();
        // Bounded by the deadline.
        while s.running {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = IDLE
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    #[test]
    fn a_discarded_tree_leaves_its_path_at_once_and_the_trash_is_emptied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let trash = dir.path().join("trash");
        let tree = dir.path().join("wt");
        for i in 0..20 {
            let d = tree.join(format!("d{i}"));
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("f"), b"x").expect("write");
        }
        discard(&trash, &tree).expect("discard");
        assert!(!tree.exists(), "the worktree's path is still taken");
        assert!(settle(Duration::from_secs(30)), "still deleting");
        assert_eq!(fs::read_dir(&trash).expect("trash").count(), 0);
        // Nothing there: no error, nothing to do.
        discard(&trash, &tree).expect("discard of nothing");
    }

    #[test]
    fn what_a_crash_left_in_the_trash_is_swept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let trash = dir.path().join("trash");
        fs::create_dir_all(trash.join("left-1/sub")).expect("mkdir");
        fs::write(trash.join("left-1/sub/f"), b"x").expect("write");
        fs::write(trash.join("stray"), b"x").expect("write");
        sweep(&trash);
        assert!(settle(Duration::from_secs(30)), "still deleting");
        assert_eq!(fs::read_dir(&trash).expect("trash").count(), 0);
    }
}
