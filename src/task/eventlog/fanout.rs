//! Several syncs at once. A new log's files, its directory and the directory's entry in
//! `tasks/` must all be on stable storage before its first record is served, and every
//! `fsync` ends in a device cache flush: one after the other, four flushes in a row.
//! Issued together they cost about two, because the block layer folds the flushes that
//! arrive while one is in flight into the next. Order among them buys nothing: the
//! kernel writes dirty metadata back on its own at any time, so a crash before the last
//! of them can leave any part of the directory on disk either way, and nothing is
//! served before all of them have ended.
//!
//! The calling thread syncs the first path and hands the others to a few helper
//! threads (started as needed, at most [`HELPERS`]); what no helper has taken by the
//! time it is done, it syncs itself. So a batch never waits for a busy helper, and
//! without helpers (none could be started) it is the plain loop.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use super::crew::{self, Crew};

/// Helper threads at most.
const HELPERS: usize = 3;

/// `fsync` of each of `paths` (data, size and metadata), at once; the results in the
/// same order.
pub(super) fn sync_together(paths: &[PathBuf]) -> Vec<io::Result<()>> {
    let Some((first, rest)) = paths.split_first() else {
        return Vec::new();
    };
    let batch = Arc::new(Batch::new(paths.len()));
    for (i, p) in rest.iter().enumerate() {
        hand_out(Job {
            path: p.clone(),
            index: i + 1,
            batch: batch.clone(),
        });
    }
    batch.finish(0, sync_path(first));
    for job in take_back(&batch) {
        job.run();
    }
    batch.wait()
}

fn sync_path(p: &Path) -> io::Result<()> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| io::Error::new(e.kind(), format!("syncing {}: {e}", p.display())))
}

/// One batch's results, filled in by whoever synced each path.
struct Batch {
    state: Mutex<(usize, Vec<Option<io::Result<()>>>)>,
    done: Condvar,
}

impl Batch {
    fn new(n: usize) -> Batch {
        Batch {
            state: Mutex::new((n, (0..n).map(|_| None).collect())),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (usize, Vec<Option<io::Result<()>>>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, index: usize, r: io::Result<()>) {
        let mut g = self.lock();
        if let Some(slot) = g.1.get_mut(index) {
            if slot.replace(r).is_none() {
                g.0 -= 1;
            }
        }
        if g.0 == 0 {
            self.done.notify_all();
        }
    }

    /// Waits until every path was synced (each by a helper or by the caller, who took
    /// back all that no helper had begun, so each wait is one sync long).
    fn wait(&self) -> Vec<io::Result<()>> {
        let mut g = self.lock();
        while g.0 > 0 {
            g = self.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        std::mem::take(&mut g.1)
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::Error::other("a sync was lost"))))
            .collect()
    }
}

struct Job {
    path: PathBuf,
    index: usize,
    batch: Arc<Batch>,
}

impl Job {
    fn run(self) {
        let r = sync_path(&self.path);
        self.batch.finish(self.index, r);
    }
}

struct Pool {
    state: Mutex<PoolState>,
    ready: Condvar,
}

struct PoolState {
    jobs: VecDeque<Job>,
    crew: Crew,
}

fn pool() -> &'static Pool {
    static P: OnceLock<Pool> = OnceLock::new();
    P.get_or_init(|| Pool {
        state: Mutex::new(PoolState {
            jobs: VecDeque::new(),
            crew: Crew::default(),
        }),
        ready: Condvar::new(),
    })
}

fn lock_pool() -> MutexGuard<'static, PoolState> {
    pool().state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues a job for the helpers, starting one if none is idle and there is room. A
/// job no thread takes is taken back by its caller.
fn hand_out(job: Job) {
    let mut st = lock_pool();
    st.jobs.push_back(job);
    if st.crew.idle > 0 {
        drop(st);
        pool().ready.notify_one();
        return;
    }
    if st.crew.threads >= HELPERS {
        return;
    }
    st.crew.threads += 1;
    if let Err(e) = std::thread::Builder::new()
        .name("log-sync-helper".into())
        .spawn(helper)
    {
        st.crew.threads -= 1;
        tracing::debug!("no sync helper thread: {e}");
    }
}

/// The jobs of `batch` that no helper has begun.
fn take_back(batch: &Arc<Batch>) -> Vec<Job> {
    let mut st = lock_pool();
    let (mine, others): (VecDeque<Job>, VecDeque<Job>) = std::mem::take(&mut st.jobs)
        .into_iter()
        .partition(|j| Arc::ptr_eq(&j.batch, batch));
    st.jobs = others;
    mine.into()
}

/// A helper: syncs the jobs handed out, and ends once none has come for a while.
fn helper() {
    while let Some(job) = crew::next_job(
        lock_pool(),
        &pool().ready,
        |s| &mut s.crew,
        |s| s.jobs.pop_front(),
    ) {
        job.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_synced_and_each_result_is_its_own() {
        let t = tempfile::tempdir().unwrap();
        let mut paths: Vec<PathBuf> = (0..6)
            .map(|i| {
                let p = t.path().join(format!("f{i}"));
                std::fs::write(&p, b"x").unwrap();
                p
            })
            .collect();
        paths.insert(3, t.path().join("missing"));
        paths.push(t.path().to_path_buf());
        // Several batches at once share the helpers.
        let results: Vec<Vec<io::Result<()>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4).map(|_| s.spawn(|| sync_together(&paths))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            assert_eq!(r.len(), paths.len());
            for (i, r) in r.iter().enumerate() {
                match r {
                    Err(e) => {
                        assert_eq!(i, 3, "{e}");
                        assert!(e.to_string().contains("missing"), "{e}");
                    }
                    Ok(()) => assert_ne!(i, 3),
                }
            }
        }
        assert!(sync_together(&[]).is_empty());
    }
}
