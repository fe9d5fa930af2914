//! Structured agent output: a line parser for each agent's JSON-lines format (Claude
//! Code's `stream-json`, opencode's `run --format json`), fed the raw PTY bytes in
//! whatever chunks they arrive. It carries partial lines between chunks, tolerates the
//! PTY's CR/LF, stray ANSI escape sequences and lines that are not JSON, and turns each
//! line into `agent` events (`{"kind": "text" | "tool_use" | "tool_result" | "result" |
//! "error", ...}`), with every text bounded. It keeps the running usage and cost
//! (`Totals`) so the worker can enforce a budget where the agent has no flag for it,
//! the agent's session id as soon as it is known, and whether the run is over (opencode
//! may hang after its last step: the worker stops it then).
//!
//! The formats, and the error reports mapped to error codes, are those of the pinned
//! CLIs (captures in tests/fixtures/agents/, notes in docs/agents.md). One submodule per
//! format: `claude`, `opencode`.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::profile::OutputFormat;

/// Longest text kept in an event (the raw `output` events keep everything).
pub const MAX_TEXT: usize = 4096;
/// Longest tool-input summary.
pub const MAX_SUMMARY: usize = 200;
/// Longest line parsed; the rest of a longer line is skipped (it still reaches the raw
/// output). Claude Code prints a whole tool result on one line.
pub const MAX_LINE: usize = 8 << 20;
/// Tool names remembered by call id, to name the tool of a result.
const MAX_TOOL_IDS: usize = 1024;

/// Why an agent failed, from its own report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The model API refused the key (401/403).
    AgentAuth,
    /// The model API rate-limited the agent (429) or was overloaded (529).
    AgentRateLimited,
    /// The spend cap was reached.
    BudgetExceeded,
    /// The agent stopped at its turn limit.
    MaxTurns,
    /// Any other failure the agent reported.
    AgentError,
}

impl ErrorCode {
    /// The code as it appears in the API (`agent_auth`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AgentAuth => "agent_auth",
            ErrorCode::AgentRateLimited => "agent_rate_limited",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::MaxTurns => "max_turns",
            ErrorCode::AgentError => "agent_error",
        }
    }
}

/// Token counts, named as in the Anthropic API and in the task object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
}

impl Usage {
    /// Adds `o`'s counts to these.
    pub fn add(&mut self, o: &Usage) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_read_input_tokens += o.cache_read_input_tokens;
        self.cache_creation_input_tokens += o.cache_creation_input_tokens;
    }

    fn from_anthropic(v: &Value) -> Usage {
        Usage {
            input_tokens: u(&v["input_tokens"]),
            output_tokens: u(&v["output_tokens"]),
            cache_read_input_tokens: u(&v["cache_read_input_tokens"]),
            cache_creation_input_tokens: u(&v["cache_creation_input_tokens"]),
        }
    }
}

/// The end of a run, as the agent reported it (or, for opencode, as summed from its
/// steps).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    pub session_id: Option<String>,
    pub num_turns: u64,
    pub usage: Usage,
    /// What this run cost.
    pub cost_usd: f64,
    /// What the whole session cost so far, where the agent says (Claude Code's
    /// `total_cost_usd` counts the earlier runs of a resumed session).
    pub session_cost_usd: Option<f64>,
    pub is_error: bool,
    /// Set when `is_error`.
    pub error: Option<ErrorCode>,
    /// The agent's final text or error message (bounded).
    pub text: String,
}

/// One `agent` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Text the model wrote.
    Text { text: String },
    /// The model called a tool; `input` is a short summary of its arguments.
    ToolUse {
        tool: String,
        /// The tool call's id (`call_id` in JSON: the log's records have their own `id`).
        #[serde(rename = "call_id")]
        id: Option<String>,
        input: String,
    },
    /// What a tool returned.
    ToolResult {
        tool: Option<String>,
        #[serde(rename = "call_id")]
        id: Option<String>,
        is_error: bool,
        text: String,
    },
    /// The run is over.
    Result(RunResult),
    /// The agent reported an error (the run may still end with a `result`).
    Error { error: ErrorCode, message: String },
}

impl AgentEvent {
    /// The event as the JSON object stored in the log (no `id` or `event` key: the
    /// log's record has those).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Running usage and cost of a run, from the streamed output.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub usage: Usage,
    /// The agent's own cost figures, summed (opencode per step; Claude Code only in its
    /// final result).
    pub cost_usd: f64,
    /// Model turns seen (Claude Code: assistant messages; opencode: finished steps).
    pub turns: u64,
}

impl Totals {
    /// Whether the spend so far is over `budget_usd`.
    pub fn exceeds(&self, budget_usd: f64) -> bool {
        self.cost_usd > budget_usd
    }

    /// The result a worker reports when it stopped the agent over the cap.
    pub fn budget_exceeded(&self, session_id: Option<String>, budget_usd: f64) -> RunResult {
        RunResult {
            session_id,
            num_turns: self.turns,
            usage: self.usage,
            cost_usd: self.cost_usd,
            session_cost_usd: None,
            is_error: true,
            error: Some(ErrorCode::BudgetExceeded),
            text: format!(
                "stopped by the worker: spent ${:.6}, over the budget of ${budget_usd}",
                self.cost_usd
            ),
        }
    }
}

/// Parses one agent's output stream.
#[derive(Debug)]
pub struct StructuredParser {
    format: OutputFormat,
    line: Vec<u8>,
    /// The current line is past [`MAX_LINE`]: skip to its end.
    skipping: bool,
    totals: Totals,
    session_id: Option<String>,
    finished: bool,
    tools: HashMap<String, String>,
    /// Claude Code repeats a message's usage on each of its content lines.
    last_message_id: Option<String>,
    /// opencode: the error it reported, for the result.
    error: Option<(ErrorCode, String)>,
    last_text: String,
}

impl StructuredParser {
    /// A parser for `format` (`OutputFormat::None` yields no events).
    pub fn new(format: OutputFormat) -> StructuredParser {
        StructuredParser {
            format,
            line: Vec::new(),
            skipping: false,
            totals: Totals::default(),
            session_id: None,
            finished: false,
            tools: HashMap::new(),
            last_message_id: None,
            error: None,
            last_text: String::new(),
        }
    }

    /// Feeds raw output bytes; returns the events of every line they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        if self.format == OutputFormat::None {
            return out;
        }
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if self.skipping {
                    self.skipping = false;
                } else if !self.line.is_empty() {
                    let line = std::mem::take(&mut self.line);
                    self.parse_line(&line, &mut out);
                }
                self.line.clear();
            } else if !self.skipping {
                if self.line.len() >= MAX_LINE {
                    self.line.clear();
                    self.skipping = true;
                } else {
                    self.line.push(b);
                }
            }
        }
        out
    }

    /// Ends the stream: parses a last line that had no newline. When the agent exited
    /// without a result, none is made up here: the worker reports the exit.
    pub fn finish(&mut self) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        let line = std::mem::take(&mut self.line);
        if !self.skipping && !line.is_empty() && self.format != OutputFormat::None {
            self.parse_line(&line, &mut out);
        }
        self.skipping = false;
        out
    }

    /// Usage and cost so far.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The agent's session id, once a line named it.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// Whether the agent reported the end of its run (a `result` event was produced).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn parse_line(&mut self, raw: &[u8], out: &mut Vec<AgentEvent>) {
        let clean = strip_escapes(raw);
        let Some(start) = clean.iter().position(|&b| b == b'{') else {
            return;
        };
        // The first JSON value on the line; anything after it is ignored.
        let mut values = serde_json::Deserializer::from_slice(&clean[start..]).into_iter::<Value>();
        let Some(Ok(v)) = values.next() else {
            return;
        };
        match self.format {
            OutputFormat::ClaudeStreamJson => self.claude(&v, out),
            OutputFormat::OpencodeJson => self.opencode(&v, out),
            OutputFormat::None => {}
        }
    }

    fn remember_tool(&mut self, id: &str, name: &str) {
        if self.tools.len() >= MAX_TOOL_IDS {
            self.tools.clear();
        }
        self.tools.insert(id.to_string(), name.to_string());
    }

    fn set_session(&mut self, v: &Value) {
        if let Some(id) = v.as_str().filter(|s| !s.is_empty()) {
            if self.session_id.as_deref() != Some(id) {
                self.session_id = Some(id.to_string());
            }
        }
    }
}

fn status_code(status: u64) -> Option<ErrorCode> {
    match status {
        401 | 403 => Some(ErrorCode::AgentAuth),
        429 | 529 => Some(ErrorCode::AgentRateLimited),
        _ => None,
    }
}

/// An error code from an error message, where no status says it.
fn classify_message(text: &str) -> ErrorCode {
    let t = text.to_ascii_lowercase();
    if t.contains("api key") || t.contains("authentication") || t.contains("x-api-key") {
        ErrorCode::AgentAuth
    } else if t.contains("rate limit") || t.contains("rate_limit") || t.contains("overloaded") {
        ErrorCode::AgentRateLimited
    } else {
        ErrorCode::AgentError
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The text of a tool result or error list: a string, or the text blocks of an array.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|b| match b {
                Value::String(s) => s.clone(),
                b => b["text"].as_str().unwrap_or("").to_string(),
            })
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// A one-line summary of a tool's input: the most telling field (a command, a path, a
/// pattern), else the compact JSON; at most [`MAX_SUMMARY`] bytes.
fn summarize_input(input: &Value) -> String {
    const KEYS: [&str; 8] = [
        "command",
        "file_path",
        "filePath",
        "path",
        "pattern",
        "url",
        "description",
        "prompt",
    ];
    let s = KEYS
        .iter()
        .find_map(|k| input[*k].as_str().map(str::to_string))
        .unwrap_or_else(|| match input {
            Value::Null => String::new(),
            v => v.to_string(),
        });
    bounded(&s.replace(['\n', '\r'], " "), MAX_SUMMARY)
}

/// `s` cut to at most `max` bytes on a char boundary, with `…` when cut.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The line without terminal escape sequences (CSI, OSC, two-byte escapes) and other
/// control bytes. Valid JSON never holds a raw control byte, so none of the JSON is lost.
fn strip_escapes(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if b == 0x1b {
            i += 1;
            match line.get(i) {
                Some(b'[') => {
                    i += 1;
                    while i < line.len() && !(0x40..=0x7e).contains(&line[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                Some(b']') => {
                    i += 1;
                    while i < line.len() {
                        if line[i] == 0x07 {
                            i += 1;
                            break;
                        }
                        if line[i] == 0x1b && line.get(i + 1) == Some(&b'\\') {
                            i += 2;
                            break;
                        }
                        i += 1;
                    }
                }
                Some(_) => {
                    // Intermediate bytes (`ESC ( B`), then the final byte.
                    while i < line.len() && (0x20..=0x2f).contains(&line[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                None => {}
            }
        } else {
            if b >= 0x20 || b == b'\t' {
                out.push(b);
            }
            i += 1;
        }
    }
    out
}

mod claude;
mod opencode;

#[cfg(test)]
mod tests;
