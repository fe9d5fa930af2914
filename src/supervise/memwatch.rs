//! The memory watch: once a second it reads the memory view (on a blocking thread),
//! keeps the latest snapshot for `/hello` and `/metrics`, turns the registry's pressure
//! flag on and off, and when memory is critical stops the agent using the most memory
//! before the kernel has to pick. It also tells the runner whether an agent's SIGKILL
//! was the kernel's OOM killer. And once the worker has been quiet (no request, no task
//! started or ended) for [`QUIET_SHED`], it hands back what the allocator holds free and sheds the
//! executable's pages that start-up, admission or clean-up faulted in
//! ([`crate::memory::shed`]): a worker between tasks, or beside one long agent, keeps
//! resident only what it uses again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::latest::LatestReading;
use crate::memory::{Level, MemoryView, Policy, Snapshot};
use crate::task::{Registry, StopReason};

/// The process-wide watch.
pub struct MemWatch {
    view: MemoryView,
    latest: LatestReading,
    oom_kills: AtomicU64,
}

/// The memory watch of this process.
pub fn watch() -> &'static MemWatch {
    static W: OnceLock<MemWatch> = OnceLock::new();
    W.get_or_init(|| {
        let view = MemoryView::detect();
        let kills = view.oom_kills().unwrap_or(0);
        MemWatch {
            view,
            latest: LatestReading::default(),
            oom_kills: AtomicU64::new(kills),
        }
    })
}

impl MemWatch {
    /// The latest snapshot and its level, if one was taken (no lock: see `latest`).
    pub fn latest(&self) -> Option<(Snapshot, Level)> {
        self.latest.load()
    }

    /// Changes with every reading (for responses that cache what they render).
    pub fn generation(&self) -> u64 {
        self.latest.generation()
    }

    fn set_latest(&self, s: Snapshot, l: Level) {
        self.latest.store(&s, l);
    }

    /// Whether the kernel OOM-killed something since the last call, or memory is at its
    /// limit now. Reads the cgroup's counters (small files): call off the runtime or
    /// accept a few microseconds.
    pub fn oom_suspected(&self) -> bool {
        let now = self.view.oom_kills().unwrap_or(0);
        let before = self.oom_kills.swap(now, Ordering::SeqCst);
        if now > before {
            return true;
        }
        matches!(self.latest(), Some((_, Level::Critical)))
    }
}

/// How long the worker must be quiet (no request received, no task admitted or ended,
/// no counter moved) before its free memory and clean pages are handed back again.
pub const QUIET_SHED: Duration = Duration::from_secs(5);

/// When to shed: once per quiet spell of the worker's activity count.
struct QuietShed {
    generation: u64,
    since: Instant,
    shed: bool,
}

impl QuietShed {
    fn new(generation: u64) -> QuietShed {
        QuietShed {
            generation,
            since: Instant::now(),
            // Not yet for this spell (at start: what the first requests fault in after
            // serve's own shed goes once the worker has been quiet).
            shed: false,
        }
    }

    /// Whether to shed now, given the activity count.
    fn due(&mut self, generation: u64) -> bool {
        if generation != self.generation {
            *self = QuietShed::new(generation);
            return false;
        }
        if self.shed || self.since.elapsed() < QUIET_SHED {
            return false;
        }
        self.shed = true;
        true
    }
}

/// Starts the watch loop: every `every`, or every `every / 5` while under pressure.
/// `activity` is a count that moves whenever the worker does something (requests
/// received, the registry's generation): the memory is handed back after a spell in
/// which it did not move (a measurement in progress is not disturbed).
pub fn spawn(
    reg: Arc<Registry>,
    min_available: Option<u64>,
    every: Duration,
    activity: impl Fn() -> u64 + Send + 'static,
) {
    // A first reading now, so /hello has figures from its first answer (small files).
    let mut level = Level::Ok;
    if let Ok(snap) = watch().view.snapshot() {
        level = Policy::for_snapshot(&snap, min_available).level(&snap);
        watch().set_latest(snap, level);
        reg.set_pressure(level >= Level::Pressure);
    }
    tokio::spawn(async move {
        let mut warned = false;
        let mut quiet = QuietShed::new(activity());
        loop {
            // Under pressure memory can run out within a second: look five times as often.
            let pause = if level >= Level::Pressure {
                every / 5
            } else {
                every
            };
            tokio::time::sleep(pause).await;
            let snap = tokio::task::spawn_blocking(|| watch().view.snapshot()).await;
            let snap = match snap {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    if !warned {
                        tracing::warn!("reading memory figures failed: {e}; pressure checks are off until it works");
                        warned = true;
                    }
                    continue;
                }
                Err(_) => continue,
            };
            level = Policy::for_snapshot(&snap, min_available).level(&snap);
            watch().set_latest(snap, level);
            reg.set_pressure(level >= Level::Pressure);
            if level == Level::Critical {
                stop_largest(&reg).await;
            }
            if quiet.due(activity()) {
                // Reads /proc/self/smaps: well under a millisecond, but file I/O.
                let shed = tokio::task::spawn_blocking(|| {
                    crate::memory::shed::heap();
                    crate::memory::shed::file_pages()
                })
                .await;
                if let Ok(Err(e)) = shed {
                    tracing::debug!("pages not shed: {e}");
                }
            }
        }
    });
}

/// Stops the live task whose processes hold the most memory (its cgroup's figure where
/// it has one, so processes that left the agent's group count too); the runner then
/// kills every process of it.
async fn stop_largest(reg: &Arc<Registry>) {
    let live: Vec<_> = reg
        .live()
        .into_iter()
        .filter(|t| t.stop_reason().is_none() && t.agent().is_some())
        .collect();
    if live.is_empty() {
        return;
    }
    let sizes = tokio::task::spawn_blocking(move || {
        live.into_iter()
            .map(|t| {
                let m = t.memory_in_use().unwrap_or(0);
                (t, m)
            })
            .max_by_key(|(_, m)| *m)
    })
    .await;
    if let Ok(Some((task, bytes))) = sizes {
        tracing::warn!(
            task_id = %task.id(),
            mib = bytes >> 20,
            "memory is critical: stopping the task that uses the most"
        );
        task.request_stop(StopReason::Memory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_once_per_quiet_spell() {
        let mut q = QuietShed::new(7);
        assert!(!q.due(7), "not before the spell is long enough");
        q.since -= QUIET_SHED;
        assert!(q.due(7), "the first quiet spell after start sheds");
        assert!(!q.due(7), "once");
        assert!(!q.due(8), "a change starts a new spell");
        assert!(!q.due(8), "not before the spell is long enough");
        q.since -= QUIET_SHED;
        assert!(q.due(8), "a long enough spell sheds");
        assert!(!q.due(8), "once");
        assert!(!q.due(9));
    }
}
