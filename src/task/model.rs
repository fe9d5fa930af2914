//! The task's data model: the request a controller sends, the status machine, and the
//! task object that `/work/<id>` returns.

use serde::Serialize;
use serde_json::Value;

pub use crate::agent::run::AgentReport;

/// Where a task is in its life. It only moves forward; terminal states never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Cloning,
    Working,
    Pushing,
    Done,
    Failed,
    Cancelled,
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Cloning => "cloning",
            Status::Working => "working",
            Status::Pushing => "pushing",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() >= 4
    }

    /// Position in the forward order; all terminal states share the last rank.
    pub fn rank(self) -> u8 {
        match self {
            Status::Queued => 0,
            Status::Cloning => 1,
            Status::Working => 2,
            Status::Pushing => 3,
            _ => 4,
        }
    }

    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Cloning,
        Status::Working,
        Status::Pushing,
        Status::Done,
        Status::Failed,
        Status::Cancelled,
        Status::Interrupted,
    ];
}

/// A validated `POST /work` request.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct WorkRequest {
    pub issue_id: Option<String>,
    pub rig_url: Option<String>,
    pub beads_url: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub branch: Option<String>,
    pub prompt: Option<String>,
    pub context: Option<Value>,
    pub timeout_s: Option<u64>,
    /// The spend cap of the agent's model, in US dollars (else `OUTPOST_MAX_COST_USD`).
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// Start over: a new agent session, even where an earlier task of the `issue_id`
    /// was interrupted or failed (see `task::session`).
    #[serde(default)]
    pub fresh: bool,
}

/// The task object of the contract.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub id: String,
    pub issue_id: Option<String>,
    pub status: Status,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub branch: String,
    pub commit: Option<String>,
    pub pr_url: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub output_bytes: u64,
    pub last_event_id: u64,
    pub resources: Option<Resources>,
    pub cost: Option<Cost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentReport>,
    /// The earlier task of the same `issue_id` this one continues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
}

/// What a task's processes used (from its cgroup, or the kernel's account of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu_seconds: f64,
    pub memory_peak_bytes: u64,
    pub wall_seconds: f64,
}

/// What a task cost, in US dollars: compute (wall time at the instance's size and
/// price) and the model's own figure where the agent reports one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Cost {
    pub compute_usd: f64,
    pub model_usd: Option<f64>,
    pub total_usd: f64,
}

/// How a task ended: everything its final `status` and `done` events say.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    pub status: Option<Status>,
    pub exit_code: Option<i32>,
    pub commit: Option<String>,
    pub error: Option<String>,
    /// A word for programs: `output_limit`, `out_of_memory`, `timeout`, ...
    pub error_code: Option<&'static str>,
    pub resources: Option<Resources>,
    pub cost: Option<Cost>,
    /// What an agent with structured output reported.
    pub agent: Option<AgentReport>,
}

impl Ending {
    /// A failure with a message and a code.
    pub fn failed(code: &'static str, error: impl Into<String>) -> Ending {
        Ending {
            status: Some(Status::Failed),
            error: Some(error.into()),
            error_code: Some(code),
            ..Ending::default()
        }
    }

    pub fn status(&self) -> Status {
        self.status.unwrap_or(Status::Failed)
    }
}

/// The mutable part of a task, persisted as `task.json` at every change (derived from
/// the event log, which stays the source of truth).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TaskState {
    pub status: Status,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub commit: Option<String>,
    pub pr_url: Option<String>,
    pub error: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub cost: Option<Cost>,
    #[serde(default)]
    pub agent: Option<AgentReport>,
}

impl TaskState {
    pub fn new() -> Self {
        TaskState {
            status: Status::Queued,
            started_at: None,
            finished_at: None,
            exit_code: None,
            commit: None,
            pr_url: None,
            error: None,
            error_code: None,
            resources: None,
            cost: None,
            agent: None,
        }
    }
}

impl Default for TaskState {
    fn default() -> Self {
        Self::new()
    }
}

/// What the `done` event says.
#[derive(Debug, Clone, Serialize)]
pub struct DoneEvent {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub branch: String,
    pub commit: Option<String>,
    pub pr_url: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<&'static str>,
    pub duration_ms: u64,
    pub output_bytes: u64,
    pub resources: Option<Resources>,
    pub cost: Option<Cost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
}

/// The immutable facts of a task, persisted as `meta.json` when it is created.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TaskMeta {
    pub id: String,
    pub created_at: String,
    pub created_unix_ms: u64,
    pub branch: String,
    pub request: WorkRequest,
    /// The earlier task of the same `issue_id` this one continues (decided at
    /// admission: see `task::session`).
    #[serde(default)]
    pub resumed_from: Option<String>,
}
