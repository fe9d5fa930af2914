//! opencode's `run --format json` envelopes (`step_start`, `text`, `tool_use`,
//! `step_finish`, `error`) as `agent` events; opencode prints no result line, so the
//! result is summed from its steps.

use serde_json::Value;

use super::{
    bounded, classify_message, content_text, status_code, summarize_input, u, AgentEvent,
    ErrorCode, RunResult, StructuredParser, Usage, MAX_TEXT,
};

impl StructuredParser {
    pub(super) fn opencode(&mut self, v: &Value, out: &mut Vec<AgentEvent>) {
        self.set_session(&v["sessionID"]);
        let part = &v["part"];
        match v["type"].as_str() {
            Some("text") => {
                let text = bounded(part["text"].as_str().unwrap_or(""), MAX_TEXT);
                if !text.is_empty() {
                    self.last_text = text.clone();
                    out.push(AgentEvent::Text { text });
                }
            }
            Some("tool_use") => {
                let tool = part["tool"].as_str().unwrap_or("").to_string();
                let id = part["callID"].as_str().map(str::to_string);
                let state = &part["state"];
                out.push(AgentEvent::ToolUse {
                    tool: tool.clone(),
                    id: id.clone(),
                    input: summarize_input(&state["input"]),
                });
                match state["status"].as_str() {
                    Some("completed") => out.push(AgentEvent::ToolResult {
                        tool: Some(tool),
                        id,
                        is_error: false,
                        text: bounded(&content_text(&state["output"]), MAX_TEXT),
                    }),
                    Some("error") => out.push(AgentEvent::ToolResult {
                        tool: Some(tool),
                        id,
                        is_error: true,
                        text: bounded(&content_text(&state["error"]), MAX_TEXT),
                    }),
                    _ => {}
                }
            }
            Some("step_finish") => {
                let t = &part["tokens"];
                self.totals.usage.add(&Usage {
                    input_tokens: u(&t["input"]),
                    output_tokens: u(&t["output"]),
                    cache_read_input_tokens: u(&t["cache"]["read"]),
                    cache_creation_input_tokens: u(&t["cache"]["write"]),
                });
                self.totals.cost_usd += part["cost"].as_f64().unwrap_or(0.0);
                self.totals.turns += 1;
                // `tool-calls`: another step follows; any other reason ends the run.
                if part["reason"].as_str() != Some("tool-calls") {
                    self.end_opencode_run(out);
                }
            }
            Some("error") => {
                let (code, message) = opencode_error(&v["error"]);
                out.push(AgentEvent::Error {
                    error: code,
                    message: message.clone(),
                });
                self.error = Some((code, message));
                self.end_opencode_run(out);
            }
            _ => {}
        }
    }

    fn end_opencode_run(&mut self, out: &mut Vec<AgentEvent>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let (error, text) = match self.error.take() {
            Some((code, msg)) => (Some(code), msg),
            None => (None, std::mem::take(&mut self.last_text)),
        };
        out.push(AgentEvent::Result(RunResult {
            session_id: self.session_id.clone(),
            num_turns: self.totals.turns,
            usage: self.totals.usage,
            cost_usd: self.totals.cost_usd,
            session_cost_usd: None,
            is_error: error.is_some(),
            error,
            text,
        }));
    }
}

/// opencode's `error` envelope: `{name, data: {message, statusCode, ...}}`.
fn opencode_error(e: &Value) -> (ErrorCode, String) {
    let data = &e["data"];
    let message = data["message"]
        .as_str()
        .or_else(|| e["message"].as_str())
        .or_else(|| e["name"].as_str())
        .unwrap_or("opencode reported an error")
        .to_string();
    let code = data["statusCode"]
        .as_u64()
        .and_then(status_code)
        .or_else(|| {
            (e["name"].as_str() == Some("ProviderAuthError")).then_some(ErrorCode::AgentAuth)
        })
        .unwrap_or_else(|| classify_message(&format!("{message} {}", data["responseBody"])));
    (code, bounded(&message, MAX_TEXT))
}
