//! Test support: a scripted model server on 127.0.0.1 that speaks the Anthropic Messages
//! API (`POST /v1/messages`, streaming SSE or one JSON message, and
//! `POST /v1/messages/count_tokens`). Claude Code reaches it through
//! `ANTHROPIC_BASE_URL=<url>`, opencode through its bundled `anthropic` provider with
//! `options.baseURL = <url>/v1` (see docs/agents.md).
//!
//! The script is a list of replies (a tool call, then a final text, ...) with set token
//! counts, served in order to the agent's conversation requests; when it runs out, the
//! last text reply is repeated. opencode's side request for a session title (its `title`
//! agent) is answered apart and does not consume the script. Every request is recorded
//! (so a test can check that a resumed session sends the earlier turns); a key other
//! than the configured one gets 401, and the server can be told to answer 429.
//!
//! `agents` drives the real CLIs against it.
//!
//! Use from a test file as `mod modelserver;`.
#![allow(dead_code)]

pub mod agents;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Token counts of one reply, as the server reports them in `message_start` and
/// `message_delta`: the same type the structured parser reports.
pub use outpost::agent::structured::Usage;

/// What one scripted turn answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A `tool_use` block calling `name` with `input` (stop reason `tool_use`).
    ToolUse { name: String, input: Value },
    /// A final text block (stop reason `end_turn`).
    Text(String),
    /// No answer for [`STALL`], then 529 `overloaded_error`: keeps the agent waiting
    /// mid-session, so that a test can interrupt it there.
    Stall,
}

/// How long a [`Reply::Stall`] holds its request.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// One scripted turn.
#[derive(Debug, Clone)]
pub struct Step {
    pub reply: Reply,
    pub usage: Usage,
}

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Script {
    pub steps: Vec<Step>,
    /// The one key accepted (`x-api-key` or `Authorization: Bearer`); others get 401.
    pub api_key: String,
    /// Answer every conversation request with 429 `rate_limit_error`.
    pub rate_limited: bool,
}

impl Script {
    /// A tool call and then a final text, each with its own usage.
    pub fn tool_then_text(
        tool: &str,
        input: Value,
        tool_usage: Usage,
        text: &str,
        text_usage: Usage,
    ) -> Script {
        Script {
            steps: vec![
                Step {
                    reply: Reply::ToolUse {
                        name: tool.to_string(),
                        input,
                    },
                    usage: tool_usage,
                },
                Step {
                    reply: Reply::Text(text.to_string()),
                    usage: text_usage,
                },
            ],
            api_key: "sk-outpost-test".to_string(),
            rate_limited: false,
        }
    }

    /// The sum of the usage of every step.
    pub fn total_usage(&self) -> Usage {
        let mut u = Usage::default();
        for s in &self.steps {
            u.add(&s.usage);
        }
        u
    }
}

/// What a request was, as the server classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A conversation turn (`POST /v1/messages`), answered from the script.
    Turn,
    /// opencode's session-title request, answered apart.
    Title,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// Anything else (probes, model lists): logged, answered 404 (HEAD: 200).
    Other,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The JSON body, `Null` when there was none or it was not JSON.
    pub body: Value,
    pub kind: Kind,
    pub status: u16,
}

impl Recorded {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every piece of text in the request's `messages` (text blocks, tool inputs and
    /// tool results), joined with newlines: what a test greps for earlier turns.
    pub fn messages_text(&self) -> String {
        let mut out = String::new();
        if let Some(msgs) = self.body.get("messages").and_then(Value::as_array) {
            for m in msgs {
                collect_text(&m["content"], &mut out);
            }
        }
        out
    }
}

fn collect_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(a) => a.iter().for_each(|x| collect_text(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_text(x, out)),
        _ => {}
    }
}

struct State {
    /// Requests held by a [`Reply::Stall`] so far.
    stalled: std::sync::atomic::AtomicUsize,
    script: Mutex<Script>,
    next_step: Mutex<usize>,
    log: Mutex<Vec<Recorded>>,
}

/// A running model server; stops on drop.
pub struct ModelServer {
    addr: SocketAddr,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ModelServer {
    /// Starts a server on 127.0.0.1 (an ephemeral port).
    pub fn start(script: Script) -> ModelServer {
        let state = Arc::new(State {
            stalled: Default::default(),
            script: Mutex::new(script),
            next_step: Mutex::new(0),
            log: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        ModelServer {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:<port>`: Claude Code's `ANTHROPIC_BASE_URL`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// The key the server accepts.
    pub fn api_key(&self) -> String {
        self.state.script.lock().unwrap().api_key.clone()
    }

    /// The sum of the usage of every step of the script.
    pub fn script_total(&self) -> Usage {
        self.state.script.lock().unwrap().total_usage()
    }

    /// Replaces the script and starts it from its first step.
    pub fn set_script(&self, script: Script) {
        *self.state.script.lock().unwrap() = script;
        *self.state.next_step.lock().unwrap() = 0;
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    /// The conversation requests so far, in order.
    pub fn turns(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind == Kind::Turn)
            .collect()
    }

    /// How many requests a [`Reply::Stall`] has held so far.
    pub fn stalled(&self) -> usize {
        self.state.stalled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.state.log.lock().unwrap().clear();
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

type Resp = Response<Full<Bytes>>;

async fn handle(req: Request<Incoming>, st: Arc<State>) -> Result<Resp, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let raw = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let only_path = path.split('?').next().unwrap_or("").to_string();
    let kind = match (method.as_str(), only_path.as_str()) {
        ("POST", "/v1/messages") if is_title_request(&body) => Kind::Title,
        ("POST", "/v1/messages") => Kind::Turn,
        ("POST", "/v1/messages/count_tokens") => Kind::CountTokens,
        _ => Kind::Other,
    };
    let resp = match answer(&st, &method, kind, &headers, &body) {
        Some(r) => r,
        None => {
            st.stalled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(STALL).await;
            json_response(
                StatusCode::from_u16(529).unwrap(),
                &error_body("overloaded_error", "the scripted model server stalled"),
            )
        }
    };
    st.log.lock().unwrap().push(Recorded {
        method,
        path,
        headers,
        body,
        kind,
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

/// opencode asks its small model for a title with a first user message that starts
/// "Generate a title for this conversation".
fn is_title_request(body: &Value) -> bool {
    let first = &body["messages"][0]["content"];
    let text = match first {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .first()
            .and_then(|b| b["text"].as_str())
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    };
    text.starts_with("Generate a title for this conversation")
}

/// The response, or `None` for a scripted stall.
fn answer(
    st: &State,
    method: &str,
    kind: Kind,
    headers: &[(String, String)],
    body: &Value,
) -> Option<Resp> {
    if kind == Kind::Other {
        let status = if method == "HEAD" {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        return Some(json_response(
            status,
            &error_body("not_found_error", "no such endpoint"),
        ));
    }
    let script = st.script.lock().unwrap().clone();
    let key = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-api-key"))
        .map(|(_, v)| v.clone())
        .or_else(|| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, v)| v.strip_prefix("Bearer ").map(str::to_string))
        });
    if key.as_deref() != Some(script.api_key.as_str()) {
        return Some(json_response(
            StatusCode::UNAUTHORIZED,
            &error_body("authentication_error", "invalid x-api-key"),
        ));
    }
    if kind == Kind::CountTokens {
        return Some(json_response(StatusCode::OK, &json!({"input_tokens": 100})));
    }
    if script.rate_limited {
        let mut r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &error_body(
                "rate_limit_error",
                "rate limited by the scripted model server",
            ),
        );
        r.headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("0"));
        return Some(r);
    }
    let model = body["model"]
        .as_str()
        .unwrap_or("claude-sonnet-4-5")
        .to_string();
    let step = if kind == Kind::Title {
        Step {
            reply: Reply::Text("Scripted session".into()),
            usage: Usage::default(),
        }
    } else {
        let mut next = st.next_step.lock().unwrap();
        let i = *next;
        *next += 1;
        match script.steps.get(i) {
            Some(s) => s.clone(),
            None => script
                .steps
                .iter()
                .rev()
                .find(|s| matches!(s.reply, Reply::Text(_)))
                .cloned()
                .unwrap_or(Step {
                    reply: Reply::Text("Nothing more to do.".into()),
                    usage: Usage::default(),
                }),
        }
    };
    if matches!(step.reply, Reply::Stall) {
        return None;
    }
    let id = format!("msg_scripted_{}", st.log.lock().unwrap().len());
    Some(if body["stream"].as_bool() == Some(true) {
        sse_response(&id, &model, &step)
    } else {
        json_response(StatusCode::OK, &whole_message(&id, &model, &step))
    })
}

fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn json_response(status: StatusCode, v: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", "req_scripted")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn tool_use_id(id: &str) -> String {
    format!("toolu_{}", id.trim_start_matches("msg_"))
}

fn usage_json(u: &Usage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
    })
}

fn stop_reason(step: &Step) -> &'static str {
    match step.reply {
        Reply::ToolUse { .. } => "tool_use",
        Reply::Text(_) | Reply::Stall => "end_turn",
    }
}

fn whole_message(id: &str, model: &str, step: &Step) -> Value {
    let content = match &step.reply {
        Reply::ToolUse { name, input } => {
            json!([{"type": "tool_use", "id": tool_use_id(id), "name": name, "input": input}])
        }
        Reply::Text(t) => json!([{"type": "text", "text": t}]),
        Reply::Stall => json!([]),
    };
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason(step), "stop_sequence": null,
        "usage": usage_json(&step.usage, step.usage.output_tokens),
    })
}

fn sse_response(id: &str, model: &str, step: &Step) -> Resp {
    let mut out = String::new();
    let mut event = |name: &str, data: Value| {
        out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": usage_json(&step.usage, 1),
        }}),
    );
    match &step.reply {
        Reply::ToolUse { name, input } => {
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block":
                    {"type": "tool_use", "id": tool_use_id(id), "name": name, "input": {}}}),
            );
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta":
                    {"type": "input_json_delta", "partial_json": input.to_string()}}),
            );
        }
        Reply::Stall => {}
        Reply::Text(t) => {
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block":
                    {"type": "text", "text": ""}}),
            );
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta":
                    {"type": "text_delta", "text": t}}),
            );
        }
    }
    event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    event(
        "message_delta",
        json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(step), "stop_sequence": null},
            "usage": {"output_tokens": step.usage.output_tokens}}),
    );
    event("message_stop", json!({"type": "message_stop"}));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("request-id", "req_scripted")
        .body(Full::new(Bytes::from(out)))
        .unwrap()
}
