//! Tasks: one unit of work from `POST /work` to its `done` event. A `Task` owns its
//! event log (the source of truth), the state derived from it, and the handles of its
//! running agent; the registry owns the set of tasks; the runner drives one task.

pub mod cost;
pub mod eventlog;
mod launch;
pub mod model;
mod prune;
pub mod registry;
pub mod runner;
pub mod session;
pub mod workspace;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::json;
use tokio::sync::Notify;

use crate::agent::pty::AgentHandle;
use crate::process::Jail;
use eventlog::EventLog;
use model::{DoneEvent, Ending, Status, TaskMeta, TaskState, TaskView};

pub use registry::{Refusal, Registry};

/// Why a running task is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `DELETE /work/<id>`.
    Cancel,
    /// The task's `timeout_s` passed.
    Timeout,
    /// The worker is draining (SIGTERM).
    Shutdown,
    /// Memory is critical and this agent uses the most.
    Memory,
    /// The agent wrote more than `OUTPOST_TASK_MAX_OUTPUT`.
    OutputLimit,
    /// The data dir is nearly full.
    DiskFull,
    /// The agent spent more than the task's `max_cost_usd` (enforced by the worker
    /// where the agent has no flag for it).
    BudgetExceeded,
}

/// One task.
pub struct Task {
    pub meta: TaskMeta,
    pub log: EventLog,
    dir: PathBuf,
    /// Which of the `OUTPOST_MAX_TASKS` slots it holds (its agent's uid follows).
    slot: usize,
    state: Mutex<TaskState>,
    agent: Mutex<Option<AgentHandle>>,
    jail: Mutex<Option<Arc<Jail>>>,
    /// Why it is being stopped (the first reason asked wins), and the runner's wake-up.
    /// Not a `watch` channel: that is a 350-byte allocation of its own, kept for as long
    /// as the task stays listed.
    stop: Mutex<Option<StopReason>>,
    stop_asked: Notify,
    /// The hold on its `issue_id` (lock, record, how it starts), while it is live.
    /// Boxed: 400 bytes that most tasks (no `issue_id`) would carry for as long as they
    /// stay listed.
    session: Option<Box<session::Claim>>,
}

impl Task {
    fn new(meta: TaskMeta, dir: PathBuf, log: EventLog, state: TaskState, slot: usize) -> Task {
        Task {
            meta,
            log,
            dir,
            slot,
            state: Mutex::new(state),
            agent: Mutex::new(None),
            jail: Mutex::new(None),
            stop: Mutex::new(None),
            stop_asked: Notify::new(),
            session: None,
        }
    }

    /// Its hold on its `issue_id` (tasks admitted by this worker with an `issue_id`).
    pub fn session(&self) -> Option<&session::Claim> {
        self.session.as_deref()
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The containment of the running agent, if any.
    pub fn jail(&self) -> Option<Arc<Jail>> {
        locked(&self.jail).clone()
    }

    fn set_jail(&self, j: Option<Arc<Jail>>) {
        *locked(&self.jail) = j;
    }

    /// Memory the task's processes hold now: its cgroup's figure, else its process
    /// group's resident memory. Reads small files: call off the runtime.
    pub fn memory_in_use(&self) -> Option<u64> {
        if let Some(m) = self.jail().and_then(|j| j.memory_now()) {
            return Some(m);
        }
        self.agent().map(|a| crate::memory::group_rss(a.pid()))
    }

    pub fn id(&self) -> &str {
        &self.meta.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> MutexGuard<'_, TaskState> {
        locked(&self.state)
    }

    pub fn status(&self) -> Status {
        self.state().status
    }

    /// The task object of the contract.
    pub fn view(&self) -> TaskView {
        let s = self.state().clone();
        TaskView {
            id: self.meta.id.clone(),
            issue_id: self.meta.request.issue_id.clone(),
            status: s.status,
            created_at: self.meta.created_at.clone(),
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            branch: self.meta.branch.clone(),
            commit: s.commit,
            pr_url: s.pr_url,
            error: s.error,
            error_code: s.error_code,
            output_bytes: self.log.output_bytes(),
            last_event_id: self.log.last_id(),
            resources: s.resources,
            cost: s.cost,
            agent: s.agent,
            resumed_from: self.meta.resumed_from.clone(),
        }
    }

    /// Moves the task forward to `status` (never backward, never out of a terminal
    /// state): the event is logged first, then the state follows.
    pub fn set_status(&self, status: Status) -> io::Result<()> {
        let mut st = self.state();
        if st.status.is_terminal() || status.rank() <= st.status.rank() || status.is_terminal() {
            return Ok(());
        }
        self.log
            .append("status", &json!({ "status": status }).to_string())?;
        st.status = status;
        if st.started_at.is_none() && status != Status::Queued {
            st.started_at = Some(crate::timefmt::now_rfc3339());
        }
        // task.json is written at the end only: a live task found after a restart ends
        // `interrupted` whatever it was doing, and the log holds every step.
        Ok(())
    }

    /// Appends a non-status event (progress, notes).
    pub fn emit(&self, event: &'static str, payload: serde_json::Value) -> io::Result<u64> {
        self.log.append(event, &payload.to_string())
    }

    /// Ends the task: a final `status` event, then `done`, which closes the log.
    pub fn finish(&self, end: Ending) -> io::Result<()> {
        let mut st = self.state();
        if st.status.is_terminal() {
            return Ok(());
        }
        let status = end.status();
        let now = crate::timefmt::now_unix_ms();
        let done = DoneEvent {
            status,
            exit_code: end.exit_code,
            branch: self.meta.branch.clone(),
            commit: end.commit.clone(),
            pr_url: st.pr_url.clone(),
            error: end.error.clone(),
            error_code: end.error_code,
            duration_ms: now.saturating_sub(self.meta.created_unix_ms),
            output_bytes: self.log.output_bytes(),
            resources: end.resources,
            cost: end.cost,
            agent: end.agent.clone(),
            resumed_from: self.meta.resumed_from.clone(),
        };
        let payload = serde_json::to_string(&done).map_err(io::Error::other)?;
        self.log.append_all(&[
            ("status", &json!({ "status": status }).to_string()),
            ("done", &payload),
        ])?;
        st.status = status;
        st.exit_code = end.exit_code;
        st.commit = end.commit;
        st.error = end.error;
        st.error_code = end.error_code.map(String::from);
        st.resources = end.resources;
        st.cost = end.cost;
        st.agent = end.agent;
        st.finished_at = Some(crate::timefmt::rfc3339_ms(now));
        let r = self.persist(&st);
        drop(st);
        self.log.sync().ok();
        r
    }

    fn persist(&self, st: &TaskState) -> io::Result<()> {
        write_json_atomic(&self.dir.join("task.json"), st)
    }

    /// Asks the runner to stop the agent; the first reason wins.
    pub fn request_stop(&self, reason: StopReason) -> bool {
        {
            let mut r = locked(&self.stop);
            if r.is_some() {
                return false;
            }
            *r = Some(reason);
        }
        self.stop_asked.notify_waiters();
        true
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        *locked(&self.stop)
    }

    /// Returns once a stop has been asked for (at once if it already was).
    async fn stop_requested(&self) {
        loop {
            // Registered before the check, so a stop asked in between still wakes it.
            let asked = self.stop_asked.notified();
            tokio::pin!(asked);
            asked.as_mut().enable();
            if self.stop_reason().is_some() {
                return;
            }
            asked.await;
        }
    }

    /// The running agent's handle, if any.
    pub fn agent(&self) -> Option<AgentHandle> {
        locked(&self.agent).clone()
    }

    fn set_agent(&self, h: Option<AgentHandle>) {
        *locked(&self.agent) = h;
    }
}

/// A task's lock, held or poisoned: every field behind one is written whole, so a panic
/// elsewhere leaves consistent data.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes JSON to `path` through a temporary file and a rename.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes JSON to `path`, which must not exist yet (`meta.json`, once, into its new
/// task directory). No temporary file and rename: there is nothing to replace, and the
/// new log's first sync (before any of its events is served) covers this file and the
/// directory alike; a crash before it can leave a partial file, which the recovery
/// skips with a warning, as it would an empty file that a rename without a sync leaves.
pub fn write_json_new<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn task_in(dir: &Path) -> Task {
        let meta = TaskMeta {
            id: "t-stop".into(),
            created_at: "2026-12-02T00:00:00.000Z".into(),
            created_unix_ms: 0,
            branch: "polecat/t-stop".into(),
            request: Default::default(),
            resumed_from: None,
        };
        let log = EventLog::create(dir).unwrap();
        Task::new(meta, dir.to_path_buf(), log, TaskState::new(), 0)
    }

    #[tokio::test]
    async fn a_stop_wakes_the_runner_waiting_or_not_yet_and_the_first_reason_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let task = Arc::new(task_in(tmp.path()));
        // Asked while the runner waits.
        let waiting = tokio::spawn({
            let t = task.clone();
            async move { t.stop_requested().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no stop asked yet");
        assert!(task.request_stop(StopReason::Cancel));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting runner woke")
            .unwrap();
        // The first reason stays; a runner that starts waiting later returns at once.
        assert!(!task.request_stop(StopReason::Timeout));
        assert_eq!(task.stop_reason(), Some(StopReason::Cancel));
        tokio::time::timeout(Duration::from_secs(5), task.stop_requested())
            .await
            .expect("a stop asked before the wait is seen");
    }
}
