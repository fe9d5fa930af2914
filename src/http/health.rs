//! Health and introspection: `/hello` (seed-compatible, in both of ClaudeCluster's
//! shapes), `/pty/status`, `/healthz`,
//! `/readyz` and `/metrics` (Prometheus text). They read cached figures only, so they
//! stay cheap under load.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::errors::{full, json as json_resp, json_bytes, ApiError, Resp};
use super::AppState;
use crate::memory::{Level, Snapshot};
use crate::supervise::memwatch;
use crate::task::model::Status;
use bytes::Bytes;
use serde::Serialize;
use std::cell::RefCell;

/// Request counters for `/metrics`: one per shard, each on its own cache line, so the
/// threads answering requests do not contend on a single counter.
#[derive(Default)]
pub struct Counters {
    shards: [Shard; SHARDS],
}

const SHARDS: usize = 8;

#[derive(Default)]
#[repr(align(64))]
struct Shard(AtomicU64);

impl Counters {
    pub fn request(&self) {
        thread_local! {
            static SLOT: usize = {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
            };
        }
        let slot = SLOT.with(|s| *s);
        self.shards[slot].0.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

fn status_word(state: &AppState, live: usize) -> &'static str {
    if state.reg.is_draining() {
        "draining"
    } else if state.reg.under_pressure() {
        "pressure"
    } else if live >= state.cfg.max_tasks {
        "busy"
    } else {
        "available"
    }
}

fn active_processes(state: &AppState) -> usize {
    state
        .reg
        .live()
        .iter()
        .filter(|t| t.agent().is_some())
        .count()
}

/// The `/hello` body, serialized straight from borrowed fields (it is the hottest route).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Hello<'a> {
    status: &'static str,
    worker_id: &'a str,
    uptime: u64,
    active_tasks: usize,
    total_tasks_executed: u64,
    version: &'static str,
    max_tasks: usize,
    agent: &'a str,
    /// `user` when agents run as an unprivileged user, `none` when as the worker.
    isolation: &'static str,
    /// How a task's processes are held together: cgroup2, cgroup1, uid or session.
    containment: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<MemoryFigures>,
    // ClaudeCluster's worker code and controller read these beside the fields above.
    id: &'a str,
    name: &'a str,
    current_tasks: usize,
    capabilities: Capabilities<'a>,
    timestamp: String,
}

/// ClaudeCluster's `capabilities`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Capabilities<'a> {
    max_concurrent_tasks: usize,
    supported_commands: [&'a str; 1],
}

#[derive(Serialize)]
struct MemoryFigures {
    #[serde(flatten)]
    snapshot: Snapshot,
    level: Level,
}

/// What a rendered `/hello` body depends on: registry generation, memory reading
/// generation, uptime in ms.
type HelloKey = (u64, u64, u64);

/// `/hello`. Its body is rendered at most once per millisecond per thread while nothing
/// it reports changes (load balancers and controllers poll it hard); `uptime` is exact to
/// the millisecond and every other figure is current.
pub fn hello(state: &AppState) -> Resp {
    thread_local! {
        static CACHED: RefCell<Option<(HelloKey, Bytes)>> = const { RefCell::new(None) };
    }
    let uptime = state.reg.uptime_ms();
    let key = (
        state.reg.generation(),
        memwatch::watch().generation(),
        uptime,
    );
    let hit = CACHED.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, b)| b.clone())
    });
    let body = hit.unwrap_or_else(|| {
        let b = render_hello(state, uptime);
        CACHED.with(|c| *c.borrow_mut() = Some((key, b.clone())));
        b
    });
    json_bytes(StatusCode::OK, body)
}

fn render_hello(state: &AppState, uptime: u64) -> Bytes {
    let live = state.reg.live_count();
    let agent = state.cfg.agent.name();
    let body = Hello {
        status: status_word(state, live),
        worker_id: &state.cfg.worker_id,
        uptime,
        active_tasks: live,
        total_tasks_executed: state.reg.total_executed(),
        version: env!("CARGO_PKG_VERSION"),
        max_tasks: state.cfg.max_tasks,
        agent,
        isolation: state.reg.containment.identity().isolation(),
        containment: state.reg.containment.kind().name(),
        memory: memwatch::watch()
            .latest()
            .map(|(snapshot, level)| MemoryFigures { snapshot, level }),
        id: &state.cfg.worker_id,
        name: &state.cfg.worker_id,
        current_tasks: live,
        capabilities: Capabilities {
            max_concurrent_tasks: state.cfg.max_tasks,
            supported_commands: [agent],
        },
        timestamp: crate::timefmt::rfc3339_ms(started_unix_ms(uptime) + uptime),
    };
    let mut out = Vec::with_capacity(512);
    if serde_json::to_writer(&mut out, &body).is_err() {
        out.clear();
        out.extend_from_slice(b"{}");
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// The wall-clock time the worker started, in ms since the epoch (fixed at the first
/// call), so `timestamp` moves with `uptime` and the cached body stays exact.
fn started_unix_ms(uptime: u64) -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| crate::timefmt::now_unix_ms().saturating_sub(uptime))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PtyStatus {
    executor_type: &'static str,
    streaming_type: &'static str,
    active_processes: usize,
}

pub fn pty_status(state: &AppState) -> Resp {
    let body = PtyStatus {
        executor_type: "pty",
        streaming_type: "sse",
        active_processes: active_processes(state),
    };
    json_resp(StatusCode::OK, &body)
}

pub fn healthz() -> Resp {
    json_resp(StatusCode::OK, &json!({ "status": "alive" }))
}

pub fn readyz(state: &AppState) -> Result<Resp, ApiError> {
    if state.reg.is_draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the worker is shutting down",
        )
        .retry_after(10));
    }
    if state.reg.under_pressure() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "memory_pressure",
            "memory is short on this worker",
        )
        .retry_after(30));
    }
    Ok(json_resp(StatusCode::OK, &json!({ "status": "ready" })))
}

pub fn metrics(state: &AppState) -> Resp {
    let mut s = String::with_capacity(2048);
    let subs: usize = state.reg.live().iter().map(|t| t.log.subscribers()).sum();
    let flag = |b: bool| u8::from(b).to_string();
    #[rustfmt::skip]
    let mut rows: Vec<(&str, &str, &str, String)> = vec![
        ("outpost_uptime_seconds", "Seconds since the worker started.", "gauge", format!("{:.3}", state.reg.uptime_ms() as f64 / 1000.0)),
        ("outpost_tasks_active", "Tasks not yet in a terminal state.", "gauge", state.reg.live_count().to_string()),
        ("outpost_tasks_max", "OUTPOST_MAX_TASKS.", "gauge", state.cfg.max_tasks.to_string()),
        ("outpost_tasks_executed_total", "Tasks that reached a terminal state since the data dir was created.", "counter", state.reg.total_executed().to_string()),
        ("outpost_agent_processes", "Agent processes (PTY sessions) alive now.", "gauge", active_processes(state).to_string()),
        ("outpost_http_requests_total", "HTTP requests received.", "counter", state.metrics.requests().to_string()),
        ("outpost_draining", "1 while shutting down.", "gauge", flag(state.reg.is_draining())),
        ("outpost_memory_pressure", "1 while new work is refused for memory.", "gauge", flag(state.reg.under_pressure())),
        ("outpost_orphans_reaped_total", "Processes reaped that nobody waited for.", "counter", crate::process::reaper::reaper().orphans_reaped().to_string()),
        ("outpost_stream_subscribers", "Event-stream subscribers of live tasks.", "gauge", subs.to_string()),
        ("outpost_task_cpu_seconds_total", "CPU time of the agents of tasks that ended since start.", "counter", format!("{:.6}", state.reg.totals.cpu_seconds())),
        ("outpost_task_wall_seconds_total", "Wall time of tasks that ended since start.", "counter", format!("{:.3}", state.reg.totals.wall_seconds())),
        ("outpost_task_compute_usd_total", "Compute cost of tasks that ended since start (USD).", "counter", format!("{:.6}", state.reg.totals.compute_usd())),
        ("outpost_task_model_usd_total", "Model cost the agents reported, tasks ended since start (USD).", "counter", format!("{:.6}", state.reg.totals.model_usd())),
    ];
    if let Some((m, level)) = memwatch::watch().latest() {
        #[rustfmt::skip]
        rows.extend([
            ("outpost_memory_total_bytes", "Memory this worker can have (cgroup limit or MemTotal).", "gauge", m.total.to_string()),
            ("outpost_memory_available_bytes", "Memory still available.", "gauge", m.available.to_string()),
            ("outpost_memory_usage_bytes", "Cgroup memory usage.", "gauge", m.usage.unwrap_or(0).to_string()),
            ("outpost_swap_total_bytes", "Swap configured.", "gauge", m.swap_total.to_string()),
            ("outpost_swap_free_bytes", "Swap free.", "gauge", m.swap_free.to_string()),
            ("outpost_memory_psi_some_avg10", "PSI memory some avg10 (percent).", "gauge", m.psi_some_avg10.unwrap_or(0.0).to_string()),
            ("outpost_memory_level", "0 ok, 1 pressure, 2 critical.", "gauge", (level as u8).to_string()),
        ]);
    }
    for (name, help, kind, value) in rows {
        let _ = write!(
            s,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
    let _ = writeln!(s, "# HELP outpost_tasks Tasks by status (all known to this worker).\n# TYPE outpost_tasks gauge");
    let all = state.reg.list(usize::MAX);
    for st in Status::ALL {
        let n = all.iter().filter(|t| t.status() == st).count();
        let _ = writeln!(s, "outpost_tasks{{status=\"{}\"}} {n}", st.as_str());
    }
    let mut r = Response::new(full(s));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
