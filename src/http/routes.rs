//! The route table of the contract (every method and path the router answers, which
//! `docs/openapi.yaml` must match) and the task routes: create (`POST /work`,
//! `POST /run`), list, get, cancel, events, log, input and resize.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION};
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use super::errors::{json as json_resp, ApiError, Resp};
use super::stream::{self as events_stream, Format};
use super::AppState;
use crate::task::{runner, Refusal, StopReason, Task};
use crate::validate::{self, UrlPolicy};

/// What a route does; the router matches a request against [`ROUTES`] and then
/// dispatches on this (one exhaustive `match`, so a route cannot lack a handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Hello,
    Healthz,
    Readyz,
    Metrics,
    PtyStatus,
    OpenapiJson,
    OpenapiYaml,
    ListWork,
    CreateWork,
    Run,
    GetWork,
    CancelWork,
    Events,
    Log,
    Input,
    Resize,
}

/// One route: method, path (`{id}` stands for one non-empty path segment, a task id),
/// and whether it answers without the bearer token.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub op: Op,
    pub open: bool,
}

const fn route(method: &'static str, path: &'static str, op: Op) -> Route {
    Route {
        method,
        path,
        op,
        open: false,
    }
}

/// Every route the worker answers. The OpenAPI document lists exactly these
/// (tests/openapi.rs fails when the two differ).
pub const ROUTES: &[Route] = &[
    Route {
        open: true,
        ..route("GET", "/hello", Op::Hello)
    },
    Route {
        open: true,
        ..route("GET", "/healthz", Op::Healthz)
    },
    route("GET", "/readyz", Op::Readyz),
    route("GET", "/metrics", Op::Metrics),
    route("GET", "/pty/status", Op::PtyStatus),
    route("GET", "/openapi.json", Op::OpenapiJson),
    route("GET", "/openapi.yaml", Op::OpenapiYaml),
    route("GET", "/work", Op::ListWork),
    route("POST", "/work", Op::CreateWork),
    route("POST", "/run", Op::Run),
    route("GET", "/work/{id}", Op::GetWork),
    route("DELETE", "/work/{id}", Op::CancelWork),
    route("GET", "/work/{id}/events", Op::Events),
    route("GET", "/work/{id}/log", Op::Log),
    route("POST", "/work/{id}/input", Op::Input),
    route("POST", "/work/{id}/resize", Op::Resize),
];

/// What the table says about a request path.
pub enum Lookup<'a> {
    /// A route matched: its operation and the `{id}` segment, if the path has one.
    Found(&'static Route, Option<&'a str>),
    /// The path is known but not with this method; `allow` lists the methods it has.
    WrongMethod {
        allow: String,
        open: bool,
    },
    NotFound,
}

/// Matches `method` and `path` against [`ROUTES`]. Paths match exactly (no trailing
/// `/`); `{id}` matches one non-empty segment.
pub fn lookup<'a>(method: &str, path: &'a str) -> Lookup<'a> {
    let mut allow: Vec<&'static str> = Vec::new();
    let mut open = false;
    for r in ROUTES {
        let Some(id) = match_path(r.path, path) else {
            continue;
        };
        if r.method == method {
            return Lookup::Found(r, id);
        }
        open |= r.open;
        allow.push(r.method);
    }
    if allow.is_empty() {
        Lookup::NotFound
    } else {
        Lookup::WrongMethod {
            allow: allow.join(", "),
            open,
        }
    }
}

/// `Some(id)` when `path` fits `template` (`id` is the `{id}` segment, if any).
fn match_path<'a>(template: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut id = None;
    let mut got = path.strip_prefix('/')?.split('/');
    for want in template.trim_start_matches('/').split('/') {
        let seg = got.next()?;
        if want == "{id}" {
            if seg.is_empty() {
                return None;
            }
            id = Some(seg);
        } else if want != seg {
            return None;
        }
    }
    got.next().is_none().then_some(id)
}

/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;
/// How much of an oversized body is read and dropped before answering 413.
const DRAIN_MAX: usize = 8 << 20;

/// Reads a body of at most 1 MiB. A larger one is read on (up to a bound) and dropped
/// before the 413, so the client is not cut off mid-upload with a reset.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request("bad_body", format!("reading the body failed: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen <= MAX_BODY {
                    buf.extend_from_slice(&data);
                } else if seen > DRAIN_MAX {
                    break;
                }
            }
        }
        Ok::<(), ApiError>(())
    })
    .await;
    match drained {
        Ok(Err(e)) => return Err(e),
        Err(_) if seen <= MAX_BODY => {
            return Err(ApiError::bad_request(
                "bad_body",
                "the body did not arrive within 5 s",
            ))
        }
        _ => {}
    }
    if seen > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {MAX_BODY} bytes (1 MiB): send less; large material belongs in the repository"),
        ));
    }
    Ok(buf.freeze())
}

/// JSON bodies: no content type, JSON, or what `curl -d` sends by default.
fn check_json_type(req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(ct) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = mime.is_empty()
        || mime == "application/json"
        || mime.ends_with("+json")
        || mime == "application/x-www-form-urlencoded"
        || mime == "text/plain";
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("the body must be JSON (Content-Type: application/json), not {mime}"),
        ))
    }
}

/// Reads a JSON body; `example` shows the client what to send when it is not JSON.
async fn read_json(req: Request<Incoming>, example: &str) -> Result<Value, ApiError> {
    check_json_type(&req)?;
    let body = read_body(req).await?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the body is not valid JSON ({e}): send a JSON object such as {example}"),
        )
    })
}

/// What the client asked to get back.
enum Reply {
    Json,
    Stream(Format),
}

fn reply_kind<B>(req: &Request<B>) -> Reply {
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    for part in accept.split(',') {
        match part.split(';').next().unwrap_or("").trim() {
            "application/json" => return Reply::Json,
            "application/x-ndjson" => return Reply::Stream(Format::Ndjson),
            "text/event-stream" => return Reply::Stream(Format::Sse),
            _ => {}
        }
    }
    Reply::Stream(Format::Sse)
}

/// `POST /work` and `POST /run`.
pub async fn create(
    state: &AppState,
    req: Request<Incoming>,
    run_compat: bool,
) -> Result<Resp, ApiError> {
    let reply = reply_kind(&req);
    let body = read_json(req, r#"{"prompt": "echo hi"}"#).await?;
    let request = if run_compat {
        validate::parse_run_request(&body)?
    } else {
        validate::parse_request(&body)?
    };
    let policy = UrlPolicy {
        allow_http: state.cfg.allow_http,
        allowed_hosts: state.cfg.allowed_hosts.clone(),
    };
    for (field, url) in [
        ("rig_url", &request.rig_url),
        ("beads_url", &request.beads_url),
    ] {
        if let Some(u) = url {
            validate::check_url(field, u, &policy).await?;
        }
    }
    let task = state.reg.admit(request).map_err(refusal)?;
    tracing::info!(task_id = %task.id(), issue_id = task.meta.request.issue_id.as_deref().unwrap_or(""), "task admitted");
    runner::spawn(state.reg.clone(), task.clone());
    // The answer (with the task's id) goes out once the task is on stable storage, as
    // its first event; the runner works meanwhile.
    task.log.first_durable().await;
    Ok(match reply {
        Reply::Json => {
            let mut r = if run_compat {
                json_resp(StatusCode::ACCEPTED, &run_reply(&task))
            } else {
                json_resp(StatusCode::ACCEPTED, &task.view())
            };
            if let Ok(v) = HeaderValue::from_str(&format!("/work/{}", task.id())) {
                r.headers_mut().insert(LOCATION, v);
            }
            r
        }
        Reply::Stream(f) => with_task_headers(
            events_stream::response(task.clone(), 0, f, stream_timing(state)),
            &task,
        ),
    })
}

/// `POST /run`'s JSON reply in ClaudeCluster's shape (`taskId`, `status: "pending"`,
/// `estimatedDuration` in ms: outpost makes no guess, so it is the task's time limit,
/// or 0 when it has none), with outpost's task object beside it.
fn run_reply(task: &Task) -> Value {
    let estimate = task
        .meta
        .request
        .timeout_s
        .unwrap_or(0)
        .saturating_mul(1000);
    json!({
        "taskId": task.id(),
        "status": "pending",
        "estimatedDuration": estimate,
        "events": format!("/work/{}/events", task.id()),
        "task": task.view(),
    })
}

fn with_task_headers(mut r: Resp, task: &Task) -> Resp {
    if let Ok(v) = HeaderValue::from_str(task.id()) {
        r.headers_mut().insert("x-task-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("/work/{}", task.id())) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn refusal(r: Refusal) -> ApiError {
    match r {
        Refusal::Duplicate(id) => ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_issue",
            format!(
                "a task for this issue_id is already running: {id}; attach to /work/{id}/events"
            ),
        )
        .with("id", json!(id)),
        Refusal::IssueLocked(holder) => {
            let e = ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_issue",
                match &holder {
                    Some(id) => format!(
                        "a task for this issue_id is running on another worker that shares this data dir: {id}"
                    ),
                    None => "a task for this issue_id is running on another worker that shares this data dir".to_string(),
                },
            );
            match holder {
                Some(id) => e.with("id", json!(id)),
                None => e,
            }
        }
        Refusal::Full => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "at_capacity",
            "every task slot is busy (OUTPOST_MAX_TASKS); retry later",
        )
        .retry_after(5),
        Refusal::Draining => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the worker is shutting down; send the task elsewhere",
        )
        .retry_after(10),
        Refusal::Pressure => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "memory_pressure",
            "memory is short on this worker; retry later or elsewhere",
        )
        .retry_after(30),
        Refusal::DiskFull(free, min) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "disk_full",
            format!(
                "the data dir has {} free, below OUTPOST_MIN_FREE_DISK ({}); retry later or elsewhere",
                crate::memory::format_size(free),
                crate::memory::format_size(min)
            ),
        )
        .retry_after(60),
        Refusal::Storage(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("the data dir could not take the task: {e}"),
        ),
    }
}

/// The heartbeat and time limit of an event-stream response, from the worker's settings.
fn stream_timing(state: &AppState) -> events_stream::Timing {
    events_stream::Timing {
        heartbeat: state.cfg.heartbeat,
        max: state.cfg.stream_max,
    }
}

fn find(state: &AppState, id: &str) -> Result<Arc<Task>, ApiError> {
    state
        .reg
        .get(id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("task {id} not found: it never ran on this worker, or it was pruned (OUTPOST_KEEP_TASKS); GET /work lists the tasks kept"),
            )
        })
}

/// Largest `?limit=` of `GET /work`.
pub const MAX_LIST: u64 = 1_000_000;

/// `GET /work`: newest first; `?limit=N` (1..=1000000, default 100).
pub fn list(state: &AppState, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    let limit = match query_param(req, "limit") {
        None => 100,
        Some(v) => validate::query_number("limit", &v, 1..=MAX_LIST)?,
    };
    let tasks: Vec<_> = state
        .reg
        .list(limit as usize)
        .iter()
        .map(|t| t.view())
        .collect();
    Ok(json_resp(StatusCode::OK, &tasks))
}

pub fn get(state: &AppState, id: &str) -> Result<Resp, ApiError> {
    Ok(json_resp(StatusCode::OK, &find(state, id)?.view()))
}

/// `DELETE /work/<id>`: SIGTERM to the group, grace, SIGKILL; ends `cancelled`.
pub fn cancel(state: &AppState, id: &str) -> Result<Resp, ApiError> {
    let task = find(state, id)?;
    if task.status().is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("task {id} already ended ({})", task.status().as_str()),
        ));
    }
    task.request_stop(StopReason::Cancel);
    Ok(json_resp(StatusCode::ACCEPTED, &task.view()))
}

/// Largest event id a client may name as its cursor (`after`, `Last-Event-ID`): far
/// beyond any log, and small enough that the cursor's arithmetic cannot overflow.
pub const MAX_EVENT_ID: u64 = i64::MAX as u64;

/// `GET /work/<id>/events`: from `Last-Event-ID` or `?after=N`. Generic over the body:
/// `subscribe` calls it with the head of a request hyper has not seen.
pub fn events<B>(state: &AppState, id: &str, req: &Request<B>) -> Result<Resp, ApiError> {
    let task = find(state, id)?;
    // Both are checked when both are sent; the header (what EventSource resends) wins.
    let query = match query_param(req, "after") {
        Some(v) => Some(validate::query_number("after", &v, 0..=MAX_EVENT_ID)?),
        None => None,
    };
    let header = match req.headers().get("last-event-id") {
        Some(h) => {
            let v = h.to_str().unwrap_or("\u{fffd}");
            Some(validate::query_number(
                "Last-Event-ID",
                v,
                0..=MAX_EVENT_ID,
            )?)
        }
        None => None,
    };
    let after = header.or(query).unwrap_or(0);
    let format = match reply_kind(req) {
        Reply::Stream(f) => f,
        Reply::Json => Format::Ndjson,
    };
    Ok(events_stream::response(
        task,
        after,
        format,
        stream_timing(state),
    ))
}

/// `GET /work/<id>/log`: the raw output bytes so far.
pub async fn log(state: &AppState, id: &str) -> Result<Resp, ApiError> {
    let task = find(state, id)?;
    Ok(events_stream::output_response(task))
}

fn not_running(task: &Task) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_running",
        format!(
            "task {} has no running agent (status {})",
            task.id(),
            task.status().as_str()
        ),
    )
}

/// `POST /work/<id>/input`: the body's bytes go to the agent's terminal.
pub async fn input(state: &AppState, id: &str, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let task = find(state, id)?;
    let agent = task.agent().ok_or_else(|| not_running(&task))?;
    let body = read_body(req).await?;
    let n = body.len();
    let write = tokio::task::spawn_blocking(move || agent.write_input(&body));
    match tokio::time::timeout(Duration::from_secs(10), write).await {
        Ok(Ok(Ok(()))) => Ok(json_resp(StatusCode::OK, &json!({ "written": n }))),
        Ok(Ok(Err(e))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "input_failed",
            format!("writing to the terminal failed: {e}"),
        )),
        Ok(Err(_)) | Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "input_blocked",
            "the agent is not reading its terminal; input is still pending",
        )
        .retry_after(1)),
    }
}

/// `POST /work/<id>/resize` with `{"cols": 120, "rows": 40}`.
pub async fn resize(state: &AppState, id: &str, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let task = find(state, id)?;
    let body = read_json(req, r#"{"cols": 120, "rows": 40}"#).await?;
    if !body.is_object() {
        return Err(validate::FieldError {
            field: "body",
            message: format!(
                "expected a JSON object like {{\"cols\": 120, \"rows\": 40}}, got {}",
                validate::kind(&body)
            ),
        }
        .into());
    }
    let dim = |field: &'static str| -> Result<u16, ApiError> {
        let v = body.get(field).unwrap_or(&Value::Null);
        Ok(validate::whole_in(field, v, 1..=1000, "")? as u16)
    };
    let (cols, rows) = (dim("cols")?, dim("rows")?);
    let agent = task.agent().ok_or_else(|| not_running(&task))?;
    agent
        .resize(cols, rows)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "resize_failed", format!("{e:#}")))?;
    Ok(json_resp(
        StatusCode::OK,
        &json!({ "cols": cols, "rows": rows }),
    ))
}

fn query_param<B>(req: &Request<B>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_string())
    })
}
