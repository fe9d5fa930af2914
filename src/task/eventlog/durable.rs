//! Durability of event logs: an event reaches a client only once it is on stable
//! storage, so a machine that loses power never comes back without events a client
//! already saw (nor hands out their ids again for other events). A few syncer threads
//! serve every log: a log with new records is queued once, and one `fdatasync` covers
//! every record appended before it started, so a fast writer costs a sync per batch,
//! not per record (group commit). The threads (started as needed, at most `SYNCERS`)
//! sync different logs at once: the block layer folds flushes that arrive while one is
//! in flight into the next, so eight busy logs cost about one device flush per round
//! rather than eight in a row. On a file system held in memory (tmpfs, ramfs) there is
//! nothing to sync: records are served as soon as they are written.
//!
//! A new log's directory is synced here too, before its first record is served: its
//! files (`meta.json`, the log), the directory, and its entry in the parent (`tasks/`).
//! So admitting a task costs no sync on the caller's thread.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::crew::{self, Crew};
use super::{Inner, Shared};

/// The syncer's side of a log.
impl Shared {
    /// For the syncer: the file, how far it reaches now, and the directory to sync
    /// first if it is new (None: nothing to sync, or a sync of it is under way). A
    /// sync begun here ends with [`Shared::sync_ended`].
    pub(super) fn to_sync(&self) -> Option<(Arc<std::fs::File>, u64, Option<PathBuf>)> {
        let mut g = self.lock();
        g.sync_queued = false;
        if g.syncing || g.durable >= g.len {
            // Another syncer is at this log: it queues the log again when it ends.
            return None;
        }
        let file = g.events.clone()?;
        let dir = g.unsynced_dir.clone();
        g.syncing = true;
        Some((file, g.len, dir))
    }

    /// For the syncer: the new log's directory is on stable storage.
    pub(super) fn dir_synced(&self) {
        let mut g = self.lock();
        g.unsynced_dir = None;
        self.dir_done.notify_all();
    }

    /// Makes sure the new log's directory is on stable storage: syncs it here unless the
    /// syncer is at it, in which case this waits for the syncer (a task that ends right
    /// away would otherwise sync the same files twice).
    pub(super) fn ensure_dir_synced<'a>(
        &'a self,
        mut g: MutexGuard<'a, Inner>,
    ) -> std::io::Result<MutexGuard<'a, Inner>> {
        if g.dir_syncing() {
            // Bounded: the syncer ends its syncs (or gives up on them) and says so; after
            // the wait this syncs the directory itself.
            let (back, _) = self
                .dir_done
                .wait_timeout_while(g, Duration::from_secs(30), |g| g.dir_syncing())
                .unwrap_or_else(|e| e.into_inner());
            g = back;
        }
        if let Some(dir) = g.unsynced_dir.take() {
            sync_new_dir(&dir)?;
        }
        Ok(g)
    }
}

/// Syncer threads at most (each holds one log at a time).
const SYNCERS: usize = 4;

/// Whether files in `dir` need syncing to survive a power loss (unknown: sync, which
/// is always safe).
pub(super) fn needs_sync(dir: &Path) -> bool {
    crate::placement::filesystem_in_memory(dir) != Some(true)
}

struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

struct State {
    logs: VecDeque<Arc<Shared>>,
    /// Syncer threads running, and how many of them wait for work.
    crew: Crew,
}

fn queue_handle() -> &'static Queue {
    static Q: OnceLock<Queue> = OnceLock::new();
    Q.get_or_init(|| Queue {
        state: Mutex::new(State {
            logs: VecDeque::new(),
            crew: Crew::default(),
        }),
        ready: Condvar::new(),
    })
}

/// Queues a log whose new records must reach stable storage.
pub(super) fn queue(log: Arc<Shared>) {
    let q = queue_handle();
    let mut st = q.state.lock().unwrap_or_else(|e| e.into_inner());
    st.logs.push_back(log);
    if st.crew.idle > 0 {
        drop(st);
        q.ready.notify_one();
        return;
    }
    if st.crew.threads >= SYNCERS {
        // Every syncer is busy: the first free one takes it.
        return;
    }
    st.crew.threads += 1;
    let started = std::thread::Builder::new()
        .name("log-sync".into())
        .spawn(run);
    if let Err(e) = started {
        st.crew.threads -= 1;
        if st.crew.threads == 0 {
            // Without a thread nothing would ever be served: sync here rather than never.
            let log = st.logs.pop_back();
            drop(st);
            tracing::error!("cannot start an event log syncer: {e}; syncing inline");
            // Bounded by the log's appends: each turn serves all it had.
            if let Some(log) = log {
                while sync_one(&log) {}
            }
        }
    }
}

/// Syncs `log` on the calling thread (which may block for a device flush), then
/// queues it for the syncers if it grew meanwhile.
pub(super) fn sync_here(log: &Arc<Shared>) {
    if sync_one(log) {
        queue(log.clone());
    }
}

/// A syncer: takes a queued log, syncs it, serves what is now on disk; a log that
/// grew meanwhile goes to the back of the queue (so every busy log gets its turn).
/// Ends once no log has come for a while (`crew`).
fn run() {
    let q = queue_handle();
    let mut again: Option<Arc<Shared>> = None;
    loop {
        let mut st = q.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = again.take() {
            st.logs.push_back(log);
        }
        let Some(log) = crew::next_job(st, &q.ready, |s| &mut s.crew, |s| s.logs.pop_front())
        else {
            return;
        };
        if sync_one(&log) {
            again = Some(log);
        }
    }
}

/// Syncs what `log` has appended so far (with its directory first, when the log is
/// new) and serves it; returns whether more came meanwhile (the log is then marked
/// queued again, for the caller to queue).
fn sync_one(log: &Arc<Shared>) -> bool {
    let Some((file, len, dir)) = log.to_sync() else {
        return false;
    };
    let r = match &dir {
        // A new log's file is synced whole with its directory.
        Some(d) => sync_new_dir(d),
        None => file.sync_data(),
    };
    if let Err(e) = r {
        // The data is in the page cache; serving it is what the log did before
        // syncing existed. A log that cannot sync must not stall its readers forever.
        tracing::warn!("syncing an event log failed: {e}; serving its records unsynced");
    }
    if dir.is_some() {
        log.dir_synced();
    }
    log.sync_ended(len)
}

/// Syncs a new log's directory: every file in it (the log included: data and size),
/// the directory itself and its entry in the parent (`tasks/`), all at once (see
/// `fanout`). Fails where a file or the directory could not be synced; a parent that
/// could not be is logged (its entry may be on disk already).
pub(super) fn sync_new_dir(dir: &Path) -> std::io::Result<()> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    paths.push(dir.to_path_buf());
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    paths.extend(parent.map(Path::to_path_buf));
    let results = super::fanout::sync_together(&paths);
    let last = results.len().saturating_sub(1);
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Err(e) if parent.is_some() && i == last => {
                tracing::warn!("syncing a directory of event logs failed: {e}");
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
    }
    Ok(())
}
