//! Claude Code's `stream-json` lines (`system`, `assistant`, `user`, `result`) as
//! `agent` events.

use serde_json::Value;

use super::{
    bounded, classify_message, content_text, status_code, summarize_input, u, AgentEvent,
    ErrorCode, RunResult, StructuredParser, Usage, MAX_TEXT,
};

impl StructuredParser {
    pub(super) fn claude(&mut self, v: &Value, out: &mut Vec<AgentEvent>) {
        self.set_session(&v["session_id"]);
        match v["type"].as_str() {
            Some("assistant") => {
                let msg = &v["message"];
                let id = msg["id"].as_str().map(str::to_string);
                if id.is_none() || id != self.last_message_id {
                    self.totals.usage.add(&Usage::from_anthropic(&msg["usage"]));
                    self.totals.turns += 1;
                    self.last_message_id = id;
                }
                for block in msg["content"].as_array().into_iter().flatten() {
                    match block["type"].as_str() {
                        Some("text") => {
                            let text = bounded(block["text"].as_str().unwrap_or(""), MAX_TEXT);
                            if !text.is_empty() {
                                out.push(AgentEvent::Text { text });
                            }
                        }
                        Some("tool_use") => {
                            let tool = block["name"].as_str().unwrap_or("").to_string();
                            let id = block["id"].as_str().map(str::to_string);
                            if let Some(id) = &id {
                                self.remember_tool(id, &tool);
                            }
                            let input = summarize_input(&block["input"]);
                            out.push(AgentEvent::ToolUse { tool, id, input });
                        }
                        _ => {}
                    }
                }
            }
            Some("user") => {
                for block in v["message"]["content"].as_array().into_iter().flatten() {
                    if block["type"].as_str() != Some("tool_result") {
                        continue;
                    }
                    let id = block["tool_use_id"].as_str().map(str::to_string);
                    let tool = id.as_ref().and_then(|i| self.tools.get(i).cloned());
                    out.push(AgentEvent::ToolResult {
                        tool,
                        id,
                        is_error: block["is_error"].as_bool().unwrap_or(false),
                        text: bounded(&content_text(&block["content"]), MAX_TEXT),
                    });
                }
            }
            Some("system") if v["subtype"].as_str() == Some("api_retry") => {
                // Claude Code retries failed API calls (10 times by default, with
                // backoff, 401 included): say so while it waits.
                let status = u(&v["error_status"]);
                out.push(AgentEvent::Error {
                    error: status_code(status).unwrap_or(ErrorCode::AgentError),
                    message: bounded(
                        &format!(
                            "model API error {status} ({}), retry {} of {}",
                            v["error"].as_str().unwrap_or("unknown"),
                            u(&v["attempt"]),
                            u(&v["max_retries"])
                        ),
                        MAX_TEXT,
                    ),
                });
            }
            Some("result") => {
                let is_error = v["is_error"].as_bool().unwrap_or(false)
                    || v["subtype"].as_str().is_some_and(|s| s != "success");
                let text = match v["result"].as_str() {
                    Some(t) => t.to_string(),
                    None => content_text(&v["errors"]),
                };
                let error = is_error.then(|| claude_error_code(v, &text));
                let session_cost = v["total_cost_usd"].as_f64();
                // `total_cost_usd` is the session's; this run's is the sum over
                // `model_usage_since_last_result` where the CLI gives it.
                let run_cost = v["model_usage_since_last_result"]
                    .as_object()
                    .map(|m| m.values().filter_map(|x| x["costUSD"].as_f64()).sum())
                    .or(session_cost)
                    .unwrap_or(0.0);
                self.finished = true;
                self.totals.cost_usd = run_cost;
                out.push(AgentEvent::Result(RunResult {
                    session_id: self.session_id.clone(),
                    num_turns: u(&v["num_turns"]),
                    usage: Usage::from_anthropic(&v["usage"]),
                    cost_usd: run_cost,
                    session_cost_usd: session_cost,
                    is_error,
                    error,
                    text: bounded(&text, MAX_TEXT),
                }));
            }
            _ => {}
        }
    }
}

/// Maps Claude Code's `result` of a failed run to an error code.
fn claude_error_code(v: &Value, text: &str) -> ErrorCode {
    match v["subtype"].as_str() {
        Some("error_max_budget_usd") => return ErrorCode::BudgetExceeded,
        Some("error_max_turns") => return ErrorCode::MaxTurns,
        _ => {}
    }
    if let Some(code) = v["api_error_status"].as_u64().and_then(status_code) {
        return code;
    }
    classify_message(text)
}
