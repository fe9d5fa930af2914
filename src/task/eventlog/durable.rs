//! Durability of event logs: an event reaches a client only once it is on stable
//! storage, so a machine that loses power never comes back without events a client
//! already saw (nor hands out their ids again for other events). One syncer thread
//! serves every log: a log with new records is queued once, and one `fdatasync` covers
//! every record appended before it started, so a fast writer costs a sync per batch,
//! not per record (group commit). On a file system held in memory (tmpfs, ramfs) there
//! is nothing to sync: records are served as soon as they are written.
//!
//! A new log's directory is synced here too, before its first record is served: its
//! files (`meta.json`, the log), the directory, and its entry in the parent, where the
//! parent (`tasks/`) is synced once for every new log of the batch. So admitting a task
//! costs no sync on the caller's thread, and tasks admitted together share the parent's.

use std::path::PathBuf;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use std::sync::MutexGuard;
use std::time::Duration;

use super::{Inner, Shared};

/// The syncer's side of a log.
impl Shared {
    /// For the syncer: the file, how far it reaches now, and the directory to sync
    /// first if it is new (None: nothing to sync).
    pub(super) fn to_sync(&self) -> Option<(Arc<std::fs::File>, u64, Option<PathBuf>)> {
        let mut g = self.lock();
        g.sync_queued = false;
        if g.durable >= g.len {
            return None;
        }
        let file = g.events.clone()?;
        let dir = g.unsynced_dir.clone();
        g.dir_syncing = dir.is_some();
        Some((file, g.len, dir))
    }

    /// For the syncer: the new log's directory is on stable storage.
    pub(super) fn dir_synced(&self) {
        let mut g = self.lock();
        g.unsynced_dir = None;
        g.dir_syncing = false;
        self.dir_done.notify_all();
    }

    /// Makes sure the new log's directory is on stable storage: syncs it here unless the
    /// syncer is at it, in which case this waits for the syncer (a task that ends right
    /// away would otherwise sync the same files twice).
    pub(super) fn ensure_dir_synced<'a>(
        &'a self,
        mut g: MutexGuard<'a, Inner>,
    ) -> std::io::Result<MutexGuard<'a, Inner>> {
        if g.dir_syncing {
            // Bounded: the syncer ends its syncs (or gives up on them) and says so; after
            // the wait this syncs the directory itself.
            let (back, _) = self
                .dir_done
                .wait_timeout_while(g, Duration::from_secs(30), |g| g.dir_syncing)
                .unwrap_or_else(|e| e.into_inner());
            g = back;
        }
        if let Some(dir) = g.unsynced_dir.take() {
            sync_dir(&dir)?;
            sync_parents(&[dir.as_path()]);
        }
        Ok(g)
    }
}

/// Whether files in `dir` need syncing to survive a power loss.
pub(super) fn needs_sync(dir: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    match nix::sys::statfs::statfs(dir) {
        Ok(st) => {
            // The field's type differs between libcs (i64 on glibc, c_ulong on musl).
            #[allow(clippy::unnecessary_cast)]
            let kind = st.filesystem_type().0 as i64;
            kind != TMPFS_MAGIC && kind != RAMFS_MAGIC
        }
        // Unknown: sync, which is always safe.
        Err(_) => true,
    }
}

struct Queue {
    logs: Mutex<VecDeque<Arc<Shared>>>,
    ready: Condvar,
}

fn queue_handle() -> &'static Queue {
    static Q: OnceLock<Queue> = OnceLock::new();
    Q.get_or_init(|| {
        let q = Queue {
            logs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        };
        if let Err(e) = std::thread::Builder::new()
            .name("log-sync".into())
            .spawn(run)
        {
            // Without the thread nothing would ever be served: say so loudly; appends
            // still sync in `queue`.
            tracing::error!("cannot start the event log syncer: {e}; syncing inline");
        }
        q
    })
}

static STARTED: OnceLock<bool> = OnceLock::new();

/// Queues a log whose new records must reach stable storage.
pub(super) fn queue(log: Arc<Shared>) {
    let q = queue_handle();
    if STARTED.get().is_none() {
        // The syncer thread did not start (or not yet): sync here rather than never.
        sync_one(&log);
        return;
    }
    q.logs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back(log);
    q.ready.notify_one();
}

/// The syncer: takes every queued log, syncs it, serves what is now on disk.
fn run() {
    let _ = STARTED.set(true);
    let q = queue_handle();
    loop {
        let batch: Vec<Arc<Shared>> = {
            let mut logs = q.logs.lock().unwrap_or_else(|e| e.into_inner());
            while logs.is_empty() {
                logs = q.ready.wait(logs).unwrap_or_else(|e| e.into_inner());
            }
            logs.drain(..).collect()
        };
        sync_batch(batch);
    }
}

fn sync_one(log: &Arc<Shared>) {
    sync_batch(vec![log.clone()]);
}

/// A log to sync: the log, its file, the length to cover, a new directory to sync.
type Pending = (Arc<Shared>, Arc<std::fs::File>, u64, Option<PathBuf>);

/// Syncs every log of the batch (new ones with their directory, their parents once),
/// then serves what is on disk.
fn sync_batch(batch: Vec<Arc<Shared>>) {
    let work: Vec<Pending> = batch
        .into_iter()
        .filter_map(|log| {
            let (file, len, dir) = log.to_sync()?;
            Some((log, file, len, dir))
        })
        .collect();
    for (_, file, _, dir) in &work {
        // A new log's file is synced whole with its directory.
        let r = match dir {
            Some(d) => sync_dir(d),
            None => file.sync_data(),
        };
        if let Err(e) = r {
            // The data is in the page cache; serving it is what the log did before
            // syncing existed. A log that cannot sync must not stall its readers forever.
            tracing::warn!("syncing an event log failed: {e}; serving its records unsynced");
        }
    }
    let dirs: Vec<&Path> = work.iter().filter_map(|w| w.3.as_deref()).collect();
    sync_parents(&dirs);
    for (log, _, len, dir) in &work {
        if dir.is_some() {
            log.dir_synced();
        }
        if log.synced(*len) {
            queue(log.clone());
        }
    }
}

/// Syncs a new log's directory: every file in it (the log included: data and size),
/// then the directory itself.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Syncs the parent of each directory (each parent once): their entries in it.
pub(super) fn sync_parents(dirs: &[&Path]) {
    let mut parents: Vec<&Path> = dirs.iter().filter_map(|d| d.parent()).collect();
    parents.sort_unstable();
    parents.dedup();
    for p in parents {
        if let Err(e) = std::fs::File::open(p).and_then(|f| f.sync_all()) {
            tracing::warn!(dir = %p.display(), "syncing a directory of event logs failed: {e}");
        }
    }
}
