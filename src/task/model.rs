//! The task's data model: the request a controller sends, the status machine, and the
//! task object that `/work/<id>` returns.

use serde::Serialize;
use serde_json::Value;

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
    pub output_bytes: u64,
    pub last_event_id: u64,
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
    pub duration_ms: u64,
}

/// The immutable facts of a task, persisted as `meta.json` when it is created.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TaskMeta {
    pub id: String,
    pub created_at: String,
    pub created_unix_ms: u64,
    pub branch: String,
    pub request: WorkRequest,
}
