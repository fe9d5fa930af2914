//! The task routes: create (`POST /work`, `POST /run`), list, get, cancel, events,
//! log, input and resize.

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
            format!("the body is larger than {MAX_BODY} bytes"),
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

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    check_json_type(&req)?;
    let body = read_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not valid JSON: {e}")))
}

/// What the client asked to get back.
enum Reply {
    Json,
    Stream(Format),
}

fn reply_kind(req: &Request<Incoming>) -> Reply {
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
    let body = read_json(req).await?;
    let request = if run_compat {
        let prompt = body.get("prompt").cloned().unwrap_or(Value::Null);
        validate::parse_request(&json!({ "prompt": prompt }))?
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
    Ok(match reply {
        Reply::Json => {
            let mut r = json_resp(StatusCode::ACCEPTED, &task.view());
            if let Ok(v) = HeaderValue::from_str(&format!("/work/{}", task.id())) {
                r.headers_mut().insert(LOCATION, v);
            }
            r
        }
        Reply::Stream(f) => with_task_headers(
            events_stream::response(task.clone(), 0, f, state.cfg.heartbeat),
            &task,
        ),
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

fn find(state: &AppState, id: &str) -> Result<Arc<Task>, ApiError> {
    state
        .reg
        .get(id)
        .ok_or_else(|| ApiError::not_found(&format!("task {id}")))
}

/// `GET /work`: newest first; `?limit=N` (default 100).
pub fn list(state: &AppState, req: &Request<Incoming>) -> Resp {
    let limit = query_param(req, "limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100usize);
    let tasks: Vec<_> = state.reg.list(limit).iter().map(|t| t.view()).collect();
    json_resp(StatusCode::OK, &tasks)
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

/// `GET /work/<id>/events`: from `Last-Event-ID` or `?after=N`.
pub fn events(state: &AppState, id: &str, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    let task = find(state, id)?;
    let header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let after = match header.or_else(|| query_param(req, "after")) {
        None => 0,
        Some(v) => v.trim().parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_field",
                "after / Last-Event-ID must be an event id (a whole number)",
            )
            .with("field", json!("after"))
        })?,
    };
    let format = match reply_kind(req) {
        Reply::Stream(f) => f,
        Reply::Json => Format::Ndjson,
    };
    Ok(events_stream::response(
        task,
        after,
        format,
        state.cfg.heartbeat,
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
    let body = read_json(req).await?;
    let dim = |field: &'static str| -> Result<u16, ApiError> {
        body.get(field)
            .and_then(Value::as_u64)
            .filter(|n| (1..=1000).contains(n))
            .map(|n| n as u16)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_field",
                    format!("{field}: expected a whole number from 1 to 1000"),
                )
                .with("field", json!(field))
            })
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

fn query_param(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_string())
    })
}
