//! The memory watch: once a second it reads the memory view (on a blocking thread),
//! keeps the latest snapshot for `/hello` and `/metrics`, turns the registry's pressure
//! flag on and off, and when memory is critical stops the agent using the most memory
//! before the kernel has to pick. It also tells the runner whether an agent's SIGKILL
//! was the kernel's OOM killer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// Starts the watch loop: every `every`, or every `every / 5` while under pressure.
pub fn spawn(reg: Arc<Registry>, min_available: Option<u64>, every: Duration) {
    // A first reading now, so /hello has figures from its first answer (small files).
    let mut level = Level::Ok;
    if let Ok(snap) = watch().view.snapshot() {
        level = Policy::for_snapshot(&snap, min_available).level(&snap);
        watch().set_latest(snap, level);
        reg.set_pressure(level >= Level::Pressure);
    }
    tokio::spawn(async move {
        let mut warned = false;
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
