//! The shapes of the HTTP contract as a client reads and writes them: the work request,
//! the task object, `/hello`, the events and the error body. Every field the contract
//! may add later is optional here, and unknown fields are ignored, so a newer worker
//! never breaks an older client.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /work`: what a controller asks for. Absent fields are not sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rig_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beads_url: Option<String>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fresh: Option<bool>,
}

/// A task's status. `Other` keeps a status word this client does not know yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    #[serde(untagged)]
    Other(String),
}

impl Status {
    pub fn as_str(&self) -> &str {
        match self {
            Status::Queued => "queued",
            Status::Cloning => "cloning",
            Status::Working => "working",
            Status::Pushing => "pushing",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
            Status::Other(s) => s,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Status::Done | Status::Failed | Status::Cancelled | Status::Interrupted
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `resources` of a task (added field).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    pub cpu_seconds: Option<f64>,
    pub memory_peak_bytes: Option<u64>,
    pub wall_seconds: Option<f64>,
}

/// `cost` of a task (added field).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cost {
    pub compute_usd: Option<f64>,
    pub model_usd: Option<f64>,
    pub total_usd: Option<f64>,
}

/// Token counts an agent reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
}

/// `agent` of a task (added field, for agents with structured output).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentInfo {
    pub name: Option<String>,
    pub session_id: Option<String>,
    pub num_turns: Option<u64>,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
}

/// The task object: `GET /work/<id>`, `GET /work`, the `202` of `POST /work`. (serde
/// reads a missing `Option` field as `None`.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub id: String,
    pub issue_id: Option<String>,
    pub status: Status,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub pr_url: Option<String>,
    pub error: Option<String>,
    pub output_bytes: Option<u64>,
    pub last_event_id: Option<u64>,
    pub resources: Option<Resources>,
    pub cost: Option<Cost>,
    pub agent: Option<AgentInfo>,
    pub resumed_from: Option<String>,
}

/// `GET /hello`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub status: String,
    pub worker_id: Option<String>,
    pub uptime: Option<u64>,
    pub active_tasks: Option<u64>,
    pub total_tasks_executed: Option<u64>,
    pub version: Option<String>,
    pub max_tasks: Option<u64>,
    pub agent: Option<String>,
    pub isolation: Option<String>,
    pub containment: Option<String>,
    pub memory: Option<Value>,
}

impl Hello {
    /// Whether this outpost says it can take one more task now.
    pub fn has_room(&self) -> bool {
        if self.status != "available" {
            return false;
        }
        match (self.active_tasks, self.max_tasks) {
            (Some(active), Some(max)) => active < max,
            _ => true,
        }
    }
}

/// The `done` event: always the last of a task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Done {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub pr_url: Option<String>,
    pub error: Option<String>,
    pub duration_ms: Option<u64>,
    pub resources: Option<Resources>,
    pub cost: Option<Cost>,
    pub agent: Option<AgentInfo>,
}

/// A `progress` event: a clone or push transfer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub phase: String,
    #[serde(default)]
    pub received_objects: u64,
    #[serde(default)]
    pub total_objects: u64,
    #[serde(default)]
    pub bytes: u64,
}

/// One event of a task's stream, as sent (the `data` object with `id` and `event`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: u64,
    /// The event type (`output`, `status`, `progress`, `agent`, `done`, or a newer one).
    pub event: String,
    /// The whole `data` object.
    pub data: Value,
}

impl Event {
    /// The bytes of an `output` event (`data` as UTF-8 or `b64`); empty for others.
    pub fn output_bytes(&self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        if self.event != "output" {
            return Ok(Vec::new());
        }
        if let Some(s) = self.data.get("data").and_then(Value::as_str) {
            return Ok(s.as_bytes().to_vec());
        }
        if let Some(b) = self.data.get("b64").and_then(Value::as_str) {
            return base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("event {}: bad b64 output: {e}", self.id));
        }
        Ok(Vec::new())
    }

    pub fn is_done(&self) -> bool {
        self.event == "done"
    }

    /// The `done` payload, for the terminal event.
    pub fn done(&self) -> Option<Done> {
        self.is_done()
            .then(|| serde_json::from_value(self.data.clone()).ok())
            .flatten()
    }

    /// The `progress` payload.
    pub fn progress(&self) -> Option<Progress> {
        (self.event == "progress")
            .then(|| serde_json::from_value(self.data.clone()).ok())
            .flatten()
    }

    /// The status word of a `status` event.
    pub fn status(&self) -> Option<&str> {
        (self.event == "status")
            .then(|| self.data.get("status").and_then(Value::as_str))
            .flatten()
    }
}

/// The error body of the contract: `{"error": {"code", "message", ...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    pub id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_with_and_without_added_fields() {
        let old: Task = serde_json::from_value(json!({
            "id": "t-1", "issue_id": null, "status": "working", "created_at": "x",
            "started_at": null, "finished_at": null, "exit_code": null, "branch": "b",
            "commit": null, "pr_url": null, "error": null, "output_bytes": 0
        }))
        .unwrap();
        assert_eq!(old.status, Status::Working);
        assert!(old.cost.is_none());
        let new: Task = serde_json::from_value(json!({
            "id": "t-2", "status": "done", "exit_code": 0,
            "cost": {"compute_usd": 0.001, "model_usd": null, "total_usd": 0.001},
            "resources": {"cpu_seconds": 1.5, "memory_peak_bytes": 1024, "wall_seconds": 2.0},
            "agent": {"name": "claude", "num_turns": 3, "usage": {"input_tokens": 10}},
            "future_field": [1, 2]
        }))
        .unwrap();
        assert_eq!(new.cost.unwrap().total_usd, Some(0.001));
        assert_eq!(new.agent.unwrap().usage.unwrap().input_tokens, Some(10));
    }

    #[test]
    fn unknown_status_is_kept() {
        let s: Status = serde_json::from_value(json!("paused")).unwrap();
        assert_eq!(s, Status::Other("paused".into()));
        assert!(!s.is_terminal());
    }

    #[test]
    fn output_bytes_text_and_b64() {
        let e = Event {
            id: 1,
            event: "output".into(),
            data: json!({"id": 1, "event": "output", "b64": "/wBh"}),
        };
        assert_eq!(e.output_bytes().unwrap(), vec![0xff, 0, b'a']);
        let e = Event {
            id: 2,
            event: "output".into(),
            data: json!({"data": "é\r\n"}),
        };
        assert_eq!(e.output_bytes().unwrap(), "é\r\n".as_bytes());
    }

    #[test]
    fn request_omits_absent_fields() {
        let r = WorkRequest {
            prompt: Some("echo hi".into()),
            git_ref: Some("main".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"prompt": "echo hi", "ref": "main"})
        );
    }
}
