//! The registry: the one place that admits work. It owns the set of tasks (live and
//! finished), the capacity limit, the live `issue_id`s, the drain and pressure flags,
//! and the counters `/hello` reports. At start it recovers the tasks of an earlier run
//! from the data dir: every task that was live then ends `interrupted`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Context;
use tokio::sync::Notify;

use super::cost::{Instance, Totals};
use super::eventlog::EventLog;
use super::model::{Ending, Status, TaskMeta, TaskState, WorkRequest};
use super::prune::Pruned;
use super::{write_json_new, StopReason, Task};
use crate::config::Config;
use crate::process::Containment;

/// Why new work was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A task with this `issue_id` is live: its id.
    Duplicate(String),
    /// Another worker sharing the data dir runs a task with this `issue_id` (it holds
    /// the issue's lock): its id, when the lock file names it.
    IssueLocked(Option<String>),
    /// `OUTPOST_MAX_TASKS` tasks are live.
    Full,
    /// The worker is shutting down.
    Draining,
    /// Memory is short.
    Pressure,
    /// The data dir could not take the task.
    Storage(String),
    /// Free space on the data dir is below `OUTPOST_MIN_FREE_DISK`: (free, minimum).
    DiskFull(u64, u64),
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<Task>>,
    /// Ids in creation order (oldest first).
    order: Vec<String>,
    live_issues: HashMap<String, String>,
    /// Tasks admitted and not yet released (at most `OUTPOST_MAX_TASKS`).
    live: Vec<Arc<Task>>,
}

/// The set of tasks.
pub struct Registry {
    pub cfg: Arc<Config>,
    /// How every task's processes are contained (chosen at start).
    pub containment: Arc<Containment>,
    /// The instance's size, for the compute cost of tasks.
    pub instance: Instance,
    /// Sums over every task that ended since start, for `/metrics`.
    pub totals: Totals,
    tasks_dir: PathBuf,
    inner: Mutex<Inner>,
    pruned: Pruned,
    total_executed: AtomicU64,
    /// `Inner::live`, mirrored for lock-free reads (`/hello` on every request).
    live_now: AtomicUsize,
    /// Bumped whenever anything `/hello` reports changes (so it can reuse its body).
    generation: AtomicU64,
    draining: AtomicBool,
    pressure: AtomicBool,
    started: Instant,
    idle_since: Mutex<Instant>,
    changed: Notify,
    seq: AtomicU64,
}

impl Registry {
    /// Opens the registry on the data dir, recovering earlier tasks.
    pub fn open(
        cfg: Arc<Config>,
        containment: Arc<Containment>,
        instance: Instance,
    ) -> anyhow::Result<Arc<Registry>> {
        let tasks_dir = cfg.data_dir.join("tasks");
        std::fs::create_dir_all(&tasks_dir).with_context(|| {
            format!(
                "creating {} (is OUTPOST_DATA writable?)",
                tasks_dir.display()
            )
        })?;
        crate::placement::spread_children(&tasks_dir);
        let reg = Arc::new(Registry {
            cfg,
            containment,
            instance,
            totals: Totals::default(),
            pruned: Pruned::open(&tasks_dir),
            tasks_dir,
            inner: Mutex::new(Inner::default()),
            total_executed: AtomicU64::new(0),
            live_now: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            pressure: AtomicBool::new(false),
            started: Instant::now(),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
            seq: AtomicU64::new(0),
        });
        reg.recover()?;
        Ok(reg)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recover(&self) -> anyhow::Result<()> {
        let mut found = Vec::new();
        let rd = std::fs::read_dir(&self.tasks_dir)
            .with_context(|| format!("reading {}", self.tasks_dir.display()))?;
        for entry in rd.flatten() {
            let dir = entry.path();
            match recover_one(&dir) {
                Ok(Some(task)) => found.push(task),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "skipping a task that cannot be read back: {e:#}")
                }
            }
        }
        found.sort_by(|a, b| {
            a.meta
                .created_unix_ms
                .cmp(&b.meta.created_unix_ms)
                .then(a.meta.id.cmp(&b.meta.id))
        });
        let pruned = self.pruned.total();
        self.total_executed.fetch_add(pruned, Ordering::Relaxed);
        let mut g = self.lock();
        for t in found {
            if t.status().is_terminal() {
                self.total_executed.fetch_add(1, Ordering::Relaxed);
            }
            g.order.push(t.meta.id.clone());
            g.by_id.insert(t.meta.id.clone(), Arc::new(t));
        }
        let doomed = self.prune(&mut g);
        drop(g);
        self.pruned.delete_now(doomed);
        Ok(())
    }

    /// Admits a task, or says why not. Creates its directory and its log, with the
    /// `queued` status as event 1.
    pub fn admit(&self, req: WorkRequest) -> Result<Arc<Task>, Refusal> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Draining);
        }
        if self.pressure.load(Ordering::SeqCst) {
            return Err(Refusal::Pressure);
        }
        let mut g = self.lock();
        if let Some(issue) = &req.issue_id {
            if let Some(id) = g.live_issues.get(issue) {
                return Err(Refusal::Duplicate(id.clone()));
            }
        }
        if g.live.len() >= self.cfg.max_tasks {
            return Err(Refusal::Full);
        }
        if let Some(free) = free_disk(&self.tasks_dir) {
            if free < self.cfg.min_free_disk {
                return Err(Refusal::DiskFull(free, self.cfg.min_free_disk));
            }
        }
        // The lowest slot no live task holds (there is one: fewer than max_tasks live).
        let slot = (0..self.cfg.max_tasks)
            .find(|s| !g.live.iter().any(|t| t.slot() == *s))
            .unwrap_or(0);
        let now = crate::timefmt::now_unix_ms();
        let id = self.new_id(now);
        let branch = req
            .branch
            .clone()
            .unwrap_or_else(|| format!("polecat/{}", req.issue_id.as_deref().unwrap_or(&id)));
        // The issue's lock on the data dir: held for the life of the task, against
        // other workers sharing the data dir (this one's live tasks are checked above).
        let claim = match &req.issue_id {
            Some(issue) => {
                let ask = super::session::Ask {
                    issue_id: issue,
                    task_id: &id,
                    branch: &branch,
                    rig_url: req.rig_url.as_deref(),
                    fresh: req.fresh,
                    profile: &self.cfg.agent_profile,
                };
                match super::session::claim(&self.cfg.data_dir, &ask) {
                    Ok(c) => Some(c),
                    Err(super::session::ClaimError::Busy(holder)) => {
                        return Err(Refusal::IssueLocked(holder))
                    }
                    Err(super::session::ClaimError::Io(e)) => {
                        return Err(Refusal::Storage(format!("{e:#}")))
                    }
                }
            }
            None => None,
        };
        let meta = TaskMeta {
            id: id.clone(),
            created_at: crate::timefmt::rfc3339_ms(now),
            created_unix_ms: now,
            branch,
            resumed_from: claim.as_ref().and_then(|c| c.start.resumed_from.clone()),
            request: req,
        };
        let dir = self.tasks_dir.join(&id);
        let mut task =
            create_task(meta, dir, slot).map_err(|e| Refusal::Storage(format!("{e:#}")))?;
        if let Some(c) = &claim {
            if let Err(e) = c.begin() {
                tracing::error!(task_id = %id, "writing the issue's session record: {e:#}");
            }
        }
        task.session = claim.map(Box::new);
        let task = Arc::new(task);
        if let Some(issue) = &task.meta.request.issue_id {
            g.live_issues.insert(issue.clone(), id.clone());
        }
        g.live.push(task.clone());
        self.live_now.store(g.live.len(), Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        g.order.push(id.clone());
        g.by_id.insert(id, task.clone());
        drop(g);
        self.changed.notify_waiters();
        Ok(task)
    }

    /// Called by the runner once a task has reached a terminal state.
    pub fn release(&self, task: &Task) {
        if let Some(c) = task.session() {
            c.release();
        }
        let mut g = self.lock();
        if let Some(issue) = &task.meta.request.issue_id {
            if g.live_issues.get(issue).map(String::as_str) == Some(task.id()) {
                g.live_issues.remove(issue);
            }
        }
        g.live.retain(|t| t.id() != task.id());
        self.live_now.store(g.live.len(), Ordering::SeqCst);
        if g.live.is_empty() {
            *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        let doomed = self.prune(&mut g);
        drop(g);
        self.total_executed.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        self.pruned.delete_later(doomed);
    }

    /// Forgets the oldest finished tasks beyond `OUTPOST_KEEP_TASKS` and returns their
    /// directories, for [`Pruned`] to delete (it also keeps the persisted count of
    /// pruned tasks, so `totalTasksExecuted` stays true).
    fn prune(&self, g: &mut Inner) -> Vec<PathBuf> {
        // Every task that is not live has ended: admission adds a task to both, and
        // `release` takes it out of `live` once it has ended. So no per-task look here,
        // which ran on every task end.
        let finished = g.by_id.len().saturating_sub(g.live.len());
        let mut excess = finished.saturating_sub(self.cfg.keep_tasks);
        if excess == 0 {
            return Vec::new();
        }
        // Positions in `order`, ascending (usually its first few: the oldest tasks).
        let mut at = Vec::new();
        for (i, id) in g.order.iter().enumerate() {
            if excess == 0 {
                break;
            }
            if g.by_id.get(id).is_some_and(|t| t.status().is_terminal()) {
                at.push(i);
                excess -= 1;
            }
        }
        let mut doomed: Vec<PathBuf> = Vec::with_capacity(at.len());
        for &i in &at {
            if let Some(t) = g.by_id.remove(&g.order[i]) {
                doomed.push(t.dir().to_path_buf());
            }
        }
        if at.last().is_some_and(|&last| last + 1 == at.len()) {
            g.order.drain(..at.len());
        } else {
            let mut i = 0;
            g.order.retain(|_| {
                i += 1;
                at.binary_search(&(i - 1)).is_err()
            });
        }
        self.pruned.add(doomed.len() as u64);
        doomed
    }

    fn new_id(&self, now_ms: u64) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let salt = std::process::id() as u64
            ^ (Instant::now().elapsed().subsec_nanos() as u64)
            ^ random_u64();
        format!(
            "t-{now_ms:011x}{:06x}",
            (salt.wrapping_add(seq.wrapping_mul(0x9E37_79B9))) & 0xff_ffff
        )
    }

    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.lock().by_id.get(id).cloned()
    }

    /// Tasks, newest first, at most `limit`.
    pub fn list(&self, limit: usize) -> Vec<Arc<Task>> {
        let g = self.lock();
        g.order
            .iter()
            .rev()
            .take(limit)
            .filter_map(|id| g.by_id.get(id).cloned())
            .collect()
    }

    /// Live tasks (not yet terminal).
    pub fn live(&self) -> Vec<Arc<Task>> {
        let g = self.lock();
        g.live
            .iter()
            .filter(|t| !t.status().is_terminal())
            .cloned()
            .collect()
    }

    /// Changes whenever live tasks, counters, draining or pressure change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn live_count(&self) -> usize {
        self.live_now.load(Ordering::Relaxed)
    }

    pub fn total_executed(&self) -> u64 {
        self.total_executed.load(Ordering::Relaxed)
    }

    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn idle_for(&self) -> Option<std::time::Duration> {
        if self.live_count() > 0 {
            return None;
        }
        Some(
            self.idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed(),
        )
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn under_pressure(&self) -> bool {
        self.pressure.load(Ordering::SeqCst)
    }

    pub fn set_pressure(&self, on: bool) {
        if self.pressure.swap(on, Ordering::SeqCst) != on {
            self.generation.fetch_add(1, Ordering::SeqCst);
            if on {
                tracing::warn!("memory pressure: refusing new work until it clears");
            } else {
                tracing::info!("memory pressure cleared: taking work again");
            }
        }
    }

    /// Stops taking work and asks every live task to stop for shutdown.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        for t in self.live() {
            t.request_stop(StopReason::Shutdown);
        }
        self.changed.notify_waiters();
    }

    /// Waits until no task is live (or `deadline` passes).
    pub async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.changed.notified();
            if self.live_count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.live_count() == 0;
            }
        }
    }
}

/// Free bytes on the file system holding `dir` (for unprivileged users), if it tells.
fn free_disk(dir: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

fn create_task(meta: TaskMeta, dir: PathBuf, slot: usize) -> anyhow::Result<Task> {
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_json_new(&dir.join("meta.json"), &meta)
        .with_context(|| format!("writing {}/meta.json", dir.display()))?;
    let log = EventLog::create(&dir)
        .with_context(|| format!("creating the event log in {}", dir.display()))?;
    let mut state = TaskState::new();
    if super::workspace::is_scratch(&meta.request) {
        // Nothing to prepare before its agent starts: `working` goes with `queued`, in
        // the new log's first sync (one flush fewer per task on a disk).
        log.append_all(&[
            ("status", r#"{"status":"queued"}"#),
            ("status", r#"{"status":"working"}"#),
        ])
        .context("writing the first events")?;
        state.status = Status::Working;
        state.started_at = Some(meta.created_at.clone());
    } else {
        log.append("status", r#"{"status":"queued"}"#)
            .context("writing the first event")?;
    }
    Ok(Task::new(meta, dir, log, state, slot))
}

/// Reads one task back; a task that was live ends `interrupted` now.
fn recover_one(dir: &std::path::Path) -> anyhow::Result<Option<Task>> {
    let meta_path = dir.join("meta.json");
    if !meta_path.exists() {
        return Ok(None);
    }
    let meta: TaskMeta =
        serde_json::from_slice(&std::fs::read(&meta_path)?).context("meta.json")?;
    let mut state: TaskState = std::fs::read(dir.join("task.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let (log, last) = match EventLog::reopen(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            // Not a crash's leftover: another worker on this data dir runs it.
            tracing::info!(dir = %dir.display(), "leaving alone a task another worker runs: {e}");
            return Ok(None);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("reopening the event log")),
    };
    if let Some(done) = last.filter(|r| r.is_done()) {
        // The log is the truth: take the outcome from its done event.
        let v: serde_json::Value = serde_json::from_slice(done.json()).unwrap_or_default();
        if let Some(s) = v
            .get("status")
            .and_then(|s| serde_json::from_value::<Status>(s.clone()).ok())
        {
            state.status = s;
            state.exit_code = v
                .get("exit_code")
                .and_then(|c| c.as_i64())
                .map(|c| c as i32);
            state.commit = v.get("commit").and_then(|c| c.as_str()).map(String::from);
            state.error = v.get("error").and_then(|c| c.as_str()).map(String::from);
            state.error_code = v
                .get("error_code")
                .and_then(|c| c.as_str())
                .map(String::from);
            state.resources = v
                .get("resources")
                .and_then(|r| serde_json::from_value(r.clone()).ok());
            state.cost = v
                .get("cost")
                .and_then(|r| serde_json::from_value(r.clone()).ok());
        }
        return Ok(Some(Task::new(meta, dir.to_path_buf(), log, state, 0)));
    }
    if state.status.is_terminal() {
        // task.json ran ahead of a log whose done line was torn: make it non-terminal so
        // `finish` can write the ending again.
        state.status = Status::Pushing;
    }
    let task = Task::new(meta, dir.to_path_buf(), log, state, 0);
    task.finish(Ending {
        status: Some(Status::Interrupted),
        error: Some(
            "the worker stopped while this task was running (restart, crash or kill -9)".into(),
        ),
        error_code: Some("interrupted"),
        ..Ending::default()
    })?;
    Ok(Some(task))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::timefmt::now_unix_ms());
    h.finish()
}
