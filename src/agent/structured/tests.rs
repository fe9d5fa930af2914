//! Unit tests of the structured parser, on real output of the pinned CLIs captured in a
//! PTY against the scripted model server (tests/fixtures/agents/, rewritten by
//! `OUTPOST_CAPTURE_FIXTURES=1 cargo test --test agents_cli`). The scripted figures:
//! a tool-call turn of 1200 in / 80 out / 300 cache read / 100 cache write tokens and a
//! final turn of 1500 in / 40 out, priced at 3 / 15 / 0.3 / 3.75 USD per million.
use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/agents/",
            $name
        ))
    };
}

const CLAUDE: OutputFormat = OutputFormat::ClaudeStreamJson;
const OPENCODE: OutputFormat = OutputFormat::OpencodeJson;
const SESSION: &str = "7d0c6e0a-3f4b-4b8e-9a41-2f4f7c1e5a10";
const BOTH_TURNS: Usage = Usage {
    input_tokens: 2700,
    output_tokens: 120,
    cache_read_input_tokens: 300,
    cache_creation_input_tokens: 100,
};

fn parse(format: OutputFormat, bytes: &[u8]) -> (Vec<AgentEvent>, StructuredParser) {
    parse_chunked(format, bytes, usize::MAX)
}

fn parse_chunked(
    format: OutputFormat,
    bytes: &[u8],
    chunk: usize,
) -> (Vec<AgentEvent>, StructuredParser) {
    let mut p = StructuredParser::new(format);
    let mut events = Vec::new();
    for c in bytes.chunks(chunk.min(bytes.len().max(1))) {
        events.extend(p.feed(c));
    }
    events.extend(p.finish());
    (events, p)
}

fn result(events: &[AgentEvent]) -> &RunResult {
    let results: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Result(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "one result expected: {events:?}");
    results[0]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn tool_uses(events: &[AgentEvent]) -> Vec<(&str, &str)> {
    events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ToolUse { tool, input, .. } => Some((tool.as_str(), input.as_str())),
            _ => None,
        })
        .collect()
}

#[test]
fn claude_tool_run() {
    let (events, p) = parse(CLAUDE, fixture!("claude-tool.pty"));
    let tools = tool_uses(&events);
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].0, "Write");
    assert!(tools[0].1.ends_with("/work/NOTES.md"), "{tools:?}");
    assert!(events.iter().any(|e| matches!(e,
        AgentEvent::ToolResult { tool: Some(t), is_error: false, text, .. }
            if t == "Write" && text.contains("NOTES.md"))));
    assert!(events.contains(&AgentEvent::Text {
        text: "Done: NOTES.md written.".into()
    }));
    let r = result(&events);
    assert!(!r.is_error && r.error.is_none());
    assert_eq!(r.usage, BOTH_TURNS);
    assert!(close(r.cost_usd, 0.010365), "{}", r.cost_usd);
    assert_eq!(r.num_turns, 2);
    assert_eq!(r.session_id.as_deref(), Some(SESSION));
    assert_eq!(r.text, "Done: NOTES.md written.");
    assert!(p.is_finished());
    // Streamed usage, one count per message: the input side is exact, but Claude Code
    // prints each message with the usage of its `message_start` (output_tokens: 1), so
    // only the result has the output tokens.
    let streamed = p.totals().usage;
    assert_eq!(streamed.input_tokens, BOTH_TURNS.input_tokens);
    assert_eq!(streamed.cache_read_input_tokens, 300);
    assert_eq!(streamed.cache_creation_input_tokens, 100);
    assert_eq!(streamed.output_tokens, 2);
    assert_eq!(p.totals().turns, 2);
}

#[test]
fn claude_session_id_is_known_from_the_first_line() {
    let bytes = fixture!("claude-tool.pty");
    let first_line = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut p = StructuredParser::new(CLAUDE);
    assert!(p.feed(&bytes[..first_line]).is_empty());
    assert_eq!(p.session_id(), Some(SESSION));
    assert!(!p.is_finished());
}

#[test]
fn claude_resumed_run_reports_its_own_cost() {
    let (events, _) = parse(CLAUDE, fixture!("claude-resume.pty"));
    let r = result(&events);
    assert!(!r.is_error);
    assert_eq!(r.session_id.as_deref(), Some(SESSION));
    assert_eq!(r.usage.input_tokens, 1500);
    assert_eq!(r.usage.output_tokens, 40);
    assert!(close(r.cost_usd, 0.0051), "{}", r.cost_usd);
    // The CLI's total counts the first run too.
    assert!(close(r.session_cost_usd.unwrap(), 0.010365 + 0.0051));
}

#[test]
fn claude_bad_key_is_agent_auth() {
    let (events, _) = parse(CLAUDE, fixture!("claude-bad-key.pty"));
    assert!(events.iter().any(|e| matches!(e,
        AgentEvent::Error { error: ErrorCode::AgentAuth, message } if message.contains("401"))));
    let r = result(&events);
    assert!(r.is_error);
    assert_eq!(r.error, Some(ErrorCode::AgentAuth));
    assert!(r.text.contains("API key"), "{}", r.text);
    assert!(tool_uses(&events).is_empty());
}

#[test]
fn claude_budget_is_budget_exceeded() {
    let (events, _) = parse(CLAUDE, fixture!("claude-budget.pty"));
    let r = result(&events);
    assert_eq!(r.error, Some(ErrorCode::BudgetExceeded));
    assert!(r.text.contains("maximum budget"), "{}", r.text);
    // Checked after the first turn: its tool call was never run.
    assert!(close(r.cost_usd, 0.005265));
    assert!(!events
        .iter()
        .any(|e| matches!(e, AgentEvent::ToolResult { .. })));
}

#[test]
fn claude_turn_limit_is_max_turns() {
    let (events, _) = parse(CLAUDE, fixture!("claude-max-turns.pty"));
    let r = result(&events);
    assert_eq!(r.error, Some(ErrorCode::MaxTurns));
    assert!(r.text.contains("maximum number of turns"), "{}", r.text);
    // The one turn allowed ran its tool call.
    assert!(events
        .iter()
        .any(|e| matches!(e, AgentEvent::ToolResult { .. })));
}

#[test]
fn claude_rate_limit_is_agent_rate_limited() {
    let (events, _) = parse(CLAUDE, fixture!("claude-rate-limited.pty"));
    assert_eq!(result(&events).error, Some(ErrorCode::AgentRateLimited));
}

#[test]
fn opencode_tool_run() {
    let bytes = fixture!("opencode-tool.pty");
    let (events, p) = parse(OPENCODE, bytes);
    let tools = tool_uses(&events);
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].0, "write");
    assert!(tools[0].1.ends_with("/work/NOTES.md"), "{tools:?}");
    assert!(events.iter().any(|e| matches!(e,
        AgentEvent::ToolResult { tool: Some(t), is_error: false, .. } if t == "write")));
    let r = result(&events);
    assert!(!r.is_error);
    assert_eq!(r.usage, BOTH_TURNS);
    assert!(close(r.cost_usd, 0.010365), "{}", r.cost_usd);
    assert_eq!(r.num_turns, 2);
    assert!(r.session_id.as_deref().unwrap().starts_with("ses_"));
    assert_eq!(r.text, "Done: NOTES.md written.");
    assert!(p.is_finished());
}

#[test]
fn opencode_run_is_over_after_the_last_step_only() {
    let bytes = fixture!("opencode-tool.pty");
    let mut p = StructuredParser::new(OPENCODE);
    let mut finishes = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let events = p.feed(line);
        if line.windows(13).any(|w| w == b"\"step_finish\"") {
            finishes += 1;
            // The tool-call step is not the end; the final step is.
            assert_eq!(
                p.is_finished(),
                finishes == 2,
                "after step_finish {finishes}"
            );
            assert_eq!(
                events.iter().any(|e| matches!(e, AgentEvent::Result(_))),
                finishes == 2
            );
        }
    }
    assert_eq!(finishes, 2);
}

#[test]
fn opencode_streamed_cost_crosses_a_budget() {
    let (events, p) = parse(OPENCODE, fixture!("opencode-budget.pty"));
    // The worker stopped it after the first step: the capture ends there, no result.
    assert!(!p.is_finished());
    assert!(!events.iter().any(|e| matches!(e, AgentEvent::Result(_))));
    let t = p.totals();
    assert!(close(t.cost_usd, 0.005265));
    assert!(t.exceeds(0.0026) && !t.exceeds(0.006));
    let r = t.budget_exceeded(p.session_id().map(String::from), 0.0026);
    assert_eq!(r.error, Some(ErrorCode::BudgetExceeded));
    assert_eq!(r.usage.input_tokens, 1200);
    let json = AgentEvent::Result(r).to_json();
    assert_eq!(json["kind"], "result");
    assert_eq!(json["error"], "budget_exceeded");
    assert_eq!(json["usage"]["cache_read_input_tokens"], 300);
}

#[test]
fn opencode_bad_key_is_agent_auth() {
    let (events, p) = parse(OPENCODE, fixture!("opencode-bad-key.pty"));
    assert!(events.iter().any(|e| matches!(
        e,
        AgentEvent::Error {
            error: ErrorCode::AgentAuth,
            ..
        }
    )));
    let r = result(&events);
    assert_eq!(r.error, Some(ErrorCode::AgentAuth));
    assert!(p.is_finished(), "an error ends the run");
}

#[test]
fn opencode_rate_limit_is_agent_rate_limited() {
    let (events, _) = parse(OPENCODE, fixture!("opencode-rate-limited.pty"));
    assert_eq!(result(&events).error, Some(ErrorCode::AgentRateLimited));
}

#[test]
fn failing_tools_are_tool_results_with_is_error() {
    for (format, bytes, tool, says) in [
        (
            CLAUDE,
            &fixture!("claude-tool-error.pty")[..],
            "Read",
            "does not exist",
        ),
        (
            OPENCODE,
            &fixture!("opencode-tool-error.pty")[..],
            "read",
            "MISSING.md",
        ),
    ] {
        let (events, _) = parse(format, bytes);
        assert!(
            events.iter().any(|e| matches!(e,
                AgentEvent::ToolResult { tool: Some(t), is_error: true, text, .. }
                    if t == tool && text.contains(says))),
            "{events:?}"
        );
        let r = result(&events);
        assert!(!r.is_error);
        assert_eq!(r.text, "That file is not there.");
    }
}

#[test]
fn any_chunking_gives_the_same_events() {
    for (format, bytes) in [
        (CLAUDE, &fixture!("claude-tool.pty")[..]),
        (OPENCODE, &fixture!("opencode-tool.pty")[..]),
    ] {
        let (whole, _) = parse(format, bytes);
        for chunk in [1, 2, 7, 64, 1000] {
            assert_eq!(
                parse_chunked(format, bytes, chunk).0,
                whole,
                "chunks of {chunk}"
            );
        }
    }
}

#[test]
fn escapes_stray_lines_and_line_endings_are_tolerated() {
    let bytes = fixture!("opencode-tool.pty");
    let (clean, _) = parse(OPENCODE, bytes);
    // Every line noisy: an OSC title, an erase-line CSI, a colour, CR-only and LF-only
    // endings, a non-JSON line, a truncated JSON line, and no newline at the very end.
    let mut noisy = b"\x1b]0;opencode\x07starting up...\r\n{\"type\":\"text\",\r\n".to_vec();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        noisy.extend_from_slice(b"\x1b[2K\x1b[0m");
        noisy.extend_from_slice(line);
        noisy.extend_from_slice(b"\x1b(B\r");
        noisy.extend_from_slice(b"warning: not json\n");
    }
    noisy.truncate(noisy.len() - 1);
    assert_eq!(parse_chunked(OPENCODE, &noisy, 5).0, clean);
}

#[test]
fn overlong_lines_are_skipped_and_texts_bounded() {
    let mut p = StructuredParser::new(CLAUDE);
    let mut big = vec![b'x'; MAX_LINE + 10];
    big.push(b'\n');
    assert!(p.feed(&big).is_empty());
    let long = "é".repeat(MAX_TEXT);
    let line = serde_json::json!({"type": "assistant", "message": {"id": "m", "content": [
        {"type": "text", "text": long},
        {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "a\nb".repeat(500)}}
    ]}})
    .to_string();
    let events = p.feed(format!("{line}\n").as_bytes());
    let AgentEvent::Text { text } = &events[0] else {
        panic!("{events:?}")
    };
    assert!(text.len() <= MAX_TEXT && text.ends_with('…'));
    let AgentEvent::ToolUse { tool, input, .. } = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(tool, "Bash");
    assert!(input.len() <= MAX_SUMMARY && input.starts_with("a b"));
}

#[test]
fn no_format_no_events() {
    let (events, p) = parse(OutputFormat::None, fixture!("claude-tool.pty"));
    assert!(events.is_empty());
    assert!(!p.is_finished());
}
