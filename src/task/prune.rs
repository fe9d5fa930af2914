//! Deleting old finished tasks: the persisted count of pruned tasks (`tasks/pruned.json`,
//! so `totalTasksExecuted` stays true across restarts), and one housekeeping thread at
//! low CPU priority that deletes their directories. Freeing a task's log can take tens
//! of milliseconds of kernel time (a 256 MiB stream); at normal priority that stalled
//! the tasks running beside it (`bench tasks` after `bench stream`: p99 18–50 ms).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use super::write_json_atomic;

/// The file, under the tasks dir, holding the count of pruned tasks (a JSON number).
const PRUNED_FILE: &str = "pruned.json";
/// How long the housekeeping thread gathers pruned tasks before deleting them.
const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// The count of pruned tasks and the thread that deletes them.
pub(super) struct Pruned {
    file: PathBuf,
    total: Arc<AtomicU64>,
    /// The housekeeping thread's queue, started on first use.
    queue: Mutex<Option<Sender<Vec<PathBuf>>>>,
}

impl Pruned {
    pub(super) fn open(tasks_dir: &Path) -> Pruned {
        let file = tasks_dir.join(PRUNED_FILE);
        let total = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(0);
        Pruned {
            file,
            total: Arc::new(AtomicU64::new(total)),
            queue: Mutex::new(None),
        }
    }

    /// How many tasks were pruned over the data dir's life (including those whose
    /// deletion is still queued).
    pub(super) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts `n` more pruned tasks (their deletion follows).
    pub(super) fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the count and deletes `dirs` on this thread (at start, before any task).
    pub(super) fn delete_now(&self, dirs: Vec<PathBuf>) {
        record_and_delete(&self.file, &self.total, dirs);
    }

    /// Hands `dirs` to the housekeeping thread; deletes them here if it cannot start.
    pub(super) fn delete_later(&self, dirs: Vec<PathBuf>) {
        if dirs.is_empty() {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.is_none() {
            *queue = self.start_thread();
        }
        let dirs = match queue.as_ref() {
            Some(q) => match q.send(dirs) {
                Ok(()) => return,
                Err(e) => {
                    // The thread is gone (it cannot be, short of a panic).
                    *queue = None;
                    e.0
                }
            },
            None => dirs,
        };
        drop(queue);
        self.delete_now(dirs);
    }

    fn start_thread(&self) -> Option<Sender<Vec<PathBuf>>> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<PathBuf>>();
        let (file, total) = (self.file.clone(), self.total.clone());
        let started = std::thread::Builder::new()
            .name("outpost-prune".to_string())
            .spawn(move || {
                crate::background::lower_priority("housekeeping");
                for mut dirs in rx.iter() {
                    // What more comes meanwhile goes with it: one write of the count per
                    // batch, not per task end (tasks back to back end hundreds a second).
                    std::thread::sleep(LINGER);
                    while let Ok(more) = rx.try_recv() {
                        dirs.extend(more);
                    }
                    record_and_delete(&file, &total, dirs);
                }
            });
        match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!("no housekeeping thread ({e}): deleting old tasks inline");
                None
            }
        }
    }
}

/// Writes the count (before anything is deleted, so a crash in between can only
/// count a task twice, never lose it), then deletes the directories. Blocking.
fn record_and_delete(file: &Path, total: &AtomicU64, dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    if let Err(e) = write_json_atomic(file, &total.load(Ordering::Relaxed)) {
        tracing::warn!("recording pruned tasks in {}: {e}", file.display());
    }
    for d in dirs {
        if let Err(e) = std::fs::remove_dir_all(&d) {
            tracing::warn!(dir = %d.display(), "deleting an old task: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_later_at_low_priority_and_keeps_the_count() {
        let dir = std::env::temp_dir().join(format!("outpost-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let old: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("t-{i}"))).collect();
        for d in &old {
            std::fs::create_dir_all(d.join("work")).unwrap();
            std::fs::write(d.join("events.ndjson"), "x").unwrap();
        }
        let p = Pruned::open(&dir);
        assert_eq!(p.total(), 0);
        p.add(3);
        p.delete_later(old.clone());
        // Bounded wait for the housekeeping thread.
        for _ in 0..200 {
            if old.iter().all(|d| !d.exists()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(old.iter().all(|d| !d.exists()));
        // The count was written before the deletions, and a new reader sees it.
        assert_eq!(Pruned::open(&dir).total(), 3);
        // The thread runs at the lowest-but-not-idle priority we asked for.
        let nice = crate::background::nice_of_thread("outpost-prune");
        assert_eq!(nice, Some(crate::background::NICE));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
