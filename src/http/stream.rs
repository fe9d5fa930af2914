//! Event streams: a task's event log sent as SSE (`text/event-stream`) or NDJSON, from
//! any cursor, then following live. Each subscriber reads at its own cursor (memory
//! tail first, the file for older records, on a blocking thread); a stalled client
//! simply stops being polled, so it never slows the agent or other clients. The stream
//! ends after the `done` event, or cleanly between events once it has lasted
//! `OUTPOST_STREAM_MAX_S` (SSE: with a `retry:` hint), before a front end's request
//! timeout cuts it; the client resumes with `Last-Event-ID`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::watch;

use super::errors::{Body, Resp};
use crate::task::eventlog::{Cursor, Read, Record};
use crate::task::Task;

/// Wire format of an event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ndjson,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Sse => "text/event-stream",
            Format::Ndjson => "application/x-ndjson",
        }
    }
}

/// How many bytes of records one frame carries at most.
const BATCH: usize = 256 * 1024;

struct Sub {
    task: Arc<Task>,
    cursor: Cursor,
    rx: watch::Receiver<u64>,
    heartbeat: Duration,
    /// When this response ends even though the task goes on.
    deadline: tokio::time::Instant,
    format: Format,
    done: bool,
}

/// How often an idle stream says it is alive, and how long one response may last.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub max: Duration,
}

/// The last frame of a response cut at its time limit: a comment saying why and a
/// `retry:` hint (milliseconds) for the client's reconnection; NDJSON just ends.
const TIME_LIMIT_FRAME: &[u8] =
    b": this response reached OUTPOST_STREAM_MAX_S; reconnect with Last-Event-ID\nretry: 1000\n\n";

/// A streaming response of the task's events after `after`.
pub fn response(task: Arc<Task>, after: u64, format: Format, timing: Timing) -> Resp {
    let rx = task.log.subscribe();
    let sub = Sub {
        task,
        cursor: Cursor::after(after),
        rx,
        heartbeat: timing.heartbeat,
        deadline: tokio::time::Instant::now() + timing.max,
        format,
        done: false,
    };
    let body = StreamBody::new(stream::unfold(sub, next_frame));
    let mut r = Response::new(Body::new(body.boxed_unsync()));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

async fn next_frame(mut s: Sub) -> Option<(Result<Frame<Bytes>, Infallible>, Sub)> {
    // Bounded by the log: every turn either returns a frame or waits for a change.
    loop {
        if s.done {
            return None;
        }
        if tokio::time::Instant::now() >= s.deadline {
            s.done = true;
            return match s.format {
                Format::Sse => Some((Ok(Frame::data(Bytes::from_static(TIME_LIMIT_FRAME))), s)),
                Format::Ndjson => None,
            };
        }
        s.rx.borrow_and_update();
        let read = match s.task.log.read_memory(&mut s.cursor, BATCH) {
            Some(r) => r,
            None => {
                let task = s.task.clone();
                let mut cursor = s.cursor;
                let r = tokio::task::spawn_blocking(move || {
                    let r = task.log.read_file(&mut cursor, BATCH);
                    (r, cursor)
                })
                .await;
                match r {
                    Ok((Ok(read), cursor)) => {
                        s.cursor = cursor;
                        read
                    }
                    Ok((Err(e), _)) => {
                        tracing::warn!(task_id = %s.task.id(), "reading the event log for a subscriber: {e}");
                        s.done = true;
                        return Some((Ok(Frame::data(damage_frame(&s.task, &e, s.format))), s));
                    }
                    Err(_) => return None,
                }
            }
        };
        match read {
            Read::Records(recs) => {
                s.done = recs.iter().any(Record::is_done);
                let frame = encode(&recs, s.format);
                return Some((Ok(Frame::data(frame)), s));
            }
            Read::End => return None,
            Read::Idle => {
                tokio::select! {
                    changed = s.rx.changed() => {
                        if changed.is_err() {
                            // The log is gone (cannot happen while the task lives); end.
                            return None;
                        }
                    }
                    // The loop's top ends the response.
                    _ = tokio::time::sleep_until(s.deadline) => {}
                    _ = tokio::time::sleep(s.heartbeat) => {
                        if s.format == Format::Sse {
                            return Some((Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n"))), s));
                        }
                    }
                }
            }
        }
    }
}

/// What a subscriber gets where the log cannot be read on: an `error` event and a
/// `done` event, both without an id (a client that reconnects from its last id comes
/// back to the same place and is told the same), so a stream never ends silently.
fn damage_frame(task: &Task, e: &std::io::Error, format: Format) -> Bytes {
    let message = format!("the task's event log cannot be served past this point: {e}");
    let error = serde_json::json!({"event": "error", "code": "log_damaged", "message": message});
    let view = task.view();
    let status = if view.status.is_terminal() {
        view.status
    } else {
        crate::task::model::Status::Failed
    };
    let done = serde_json::json!({
        "event": "done", "status": status, "exit_code": view.exit_code, "branch": view.branch,
        "commit": view.commit, "pr_url": view.pr_url, "error": message, "error_code": "log_damaged",
    });
    let mut out = BytesMut::new();
    for (name, v) in [("error", error), ("done", done)] {
        match format {
            Format::Ndjson => {
                out.put_slice(v.to_string().as_bytes());
                out.put_slice(b"\n");
            }
            Format::Sse => {
                out.put_slice(format!("event: {name}\ndata: {v}\n\n").as_bytes());
            }
        }
    }
    out.freeze()
}

/// `GET /work/<id>/log`: the output bytes of every `output` record up to the last one
/// written now, decoded from the log as it is read (off the runtime, a batch at a time).
/// The length is promised up front, and a client is only ever served what is durable:
/// where the last records are still being synced the body waits for them (at most
/// [`LOG_DURABLE_WAIT`]; past that the body ends short and the connection closes, which
/// the client sees as an error, never as a short log).
pub fn output_response(task: Arc<Task>) -> Resp {
    let (last, len) = task.log.output_mark();
    let rx = task.log.subscribe();
    let state = (task, Cursor::after(0), last, rx);
    let body = stream::unfold(state, |(task, cursor, last, rx)| async move {
        let (out, cursor, rx) = next_output(&task, cursor, last, rx).await?;
        Some((
            Ok::<_, Infallible>(Frame::data(out)),
            (task, cursor, last, rx),
        ))
    });
    let mut r = Response::new(Body::new(StreamBody::new(body).boxed_unsync()));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// How long `/log` waits for records it promised to become durable.
const LOG_DURABLE_WAIT: Duration = Duration::from_secs(30);

/// The next batch of output bytes up to record `last`; `None` once `last` is served,
/// or where the log cannot be read (logged) or its end does not become durable in time.
async fn next_output(
    task: &Arc<Task>,
    mut cursor: Cursor,
    last: u64,
    mut rx: watch::Receiver<u64>,
) -> Option<(Bytes, Cursor, watch::Receiver<u64>)> {
    let deadline = tokio::time::Instant::now() + LOG_DURABLE_WAIT;
    loop {
        if cursor.after >= last {
            return None;
        }
        rx.borrow_and_update();
        let t = task.clone();
        let read = tokio::task::spawn_blocking(move || {
            let r = t.log.read_file(&mut cursor, BATCH);
            (r, cursor)
        })
        .await;
        match read {
            Ok((Ok(Read::Records(recs)), c)) => {
                let mut out = BytesMut::new();
                for r in recs.iter().filter(|r| r.id <= last) {
                    if let Some(bytes) = crate::task::eventlog::output_of(r) {
                        out.put_slice(&bytes);
                    }
                }
                return Some((out.freeze(), c, rx));
            }
            Ok((Ok(Read::Idle), c)) => {
                // Written but not yet synced: wait for the log to become durable further.
                cursor = c;
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) | Err(_) => {
                        tracing::warn!(task_id = %task.id(), "GET /log: record {last} did not become durable within {} s; the response ends short", LOG_DURABLE_WAIT.as_secs());
                        return None;
                    }
                }
            }
            Ok((Ok(Read::End), _)) => return None,
            Ok((Err(e), _)) => {
                tracing::warn!(task_id = %task.id(), "reading the output from the event log: {e}");
                return None;
            }
            Err(_) => return None,
        }
    }
}

/// Frames records: SSE `id:`/`event:`/`data:` blocks, or NDJSON lines as stored.
pub fn encode(recs: &[Record], format: Format) -> Bytes {
    let size: usize = recs.iter().map(|r| r.line.len() + 48).sum();
    let mut out = BytesMut::with_capacity(size);
    for r in recs {
        match format {
            Format::Ndjson => out.put_slice(&r.line),
            Format::Sse => {
                out.put_slice(b"id: ");
                out.put_slice(itoa(r.id).as_bytes());
                out.put_slice(b"\nevent: ");
                out.put_slice(&r.event);
                out.put_slice(b"\ndata: ");
                out.put_slice(r.json());
                out.put_slice(b"\n\n");
            }
        }
    }
    out.freeze()
}

fn itoa(n: u64) -> String {
    n.to_string()
}
