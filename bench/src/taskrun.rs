//! One task driven the way a controller would: `POST /work` with the default (SSE)
//! response, following its events to `done`, timing the first and last output byte.

use crate::client::{work_body, Conn};
use crate::sse::{self, Flow};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use std::time::{Duration, Instant};

/// Receives the bytes of each `output` event.
pub type OnOutput<'a> = dyn FnMut(&[u8]) + Send + 'a;

/// What a task run looked like from the client, timed from just before the POST.
#[derive(Debug, Clone, Default)]
pub struct TaskRun {
    pub output_bytes: u64,
    pub first_output: Option<Duration>,
    pub last_output: Option<Duration>,
    pub done: Option<Duration>,
    /// When the `status` event saying `working` (the agent started) came.
    pub working: Option<Duration>,
    /// `error` of the `done` event, if any.
    pub error: Option<String>,
    /// `status` of the `done` event (`done`, `failed`, ...).
    pub status: Option<String>,
    pub last_id: Option<u64>,
}

/// The worker refused the task for now (429/503): the caller may retry later.
#[derive(Debug)]
pub struct Busy(pub StatusCode);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worker busy ({}); raise OUTPOST_MAX_TASKS or lower --concurrency",
            self.0
        )
    }
}

impl std::error::Error for Busy {}

/// Starts a task running `prompt` and follows it to `done`. `on_output` gets the bytes
/// of each `output` event; without it only their length is counted (cheaper). `tick`
/// is called with the byte count of each output event (for a progress counter).
pub async fn run(
    conn: &mut Conn,
    prompt: &str,
    on_output: Option<&mut OnOutput<'_>>,
    tick: &(dyn Fn(u64) + Sync),
) -> Result<TaskRun> {
    run_body(conn, work_body(prompt), on_output, tick).await
}

/// As [`run`], with the whole `POST /work` JSON body given.
pub async fn run_body(
    conn: &mut Conn,
    body: Bytes,
    mut on_output: Option<&mut OnOutput<'_>>,
    tick: &(dyn Fn(u64) + Sync),
) -> Result<TaskRun> {
    let req = conn.request(
        Method::POST,
        "/work",
        body,
        &[
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ],
    )?;
    let t0 = Instant::now();
    let resp = conn.send(req).await?;
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        let _ = resp.into_body().collect().await;
        return Err(Busy(status).into());
    }
    if status != StatusCode::OK {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!(
            "POST /work answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let mut run = TaskRun::default();
    let done = sse::follow(resp.into_body(), |e| {
        run.last_id = e.id.or(run.last_id);
        match e.event.as_str() {
            "output" => {
                let at = t0.elapsed();
                let n = match on_output.as_mut() {
                    Some(f) => {
                        let bytes = sse::output_bytes(&e.data)?;
                        f(&bytes);
                        bytes.len()
                    }
                    None => sse::output_len(&e.data)?,
                } as u64;
                if n > 0 {
                    run.first_output.get_or_insert(at);
                    run.last_output = Some(at);
                    run.output_bytes += n;
                    tick(n);
                }
            }
            "status" => {
                let v: serde_json::Value =
                    serde_json::from_slice(&e.data).context("status event: data is not JSON")?;
                if v.get("status").and_then(|s| s.as_str()) == Some("working") {
                    run.working.get_or_insert(t0.elapsed());
                }
            }
            "done" => {
                run.done = Some(t0.elapsed());
                let v: serde_json::Value =
                    serde_json::from_slice(&e.data).context("done event: data is not JSON")?;
                run.status = v.get("status").and_then(|s| s.as_str()).map(str::to_string);
                run.error = v.get("error").and_then(|s| s.as_str()).map(str::to_string);
            }
            _ => {}
        }
        Ok(Flow::Continue)
    })
    .await;
    match done {
        Ok(true) => Ok(run),
        Ok(false) => bail!("the event stream ended before the done event"),
        Err(e) => Err(e),
    }
}

/// Whether an error from [`run`] is a capacity refusal.
pub fn is_busy(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Busy>().is_some()
}
