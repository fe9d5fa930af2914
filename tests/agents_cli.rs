//! The real agent CLIs (Claude Code and opencode, pinned, installed by
//! tests/setup/20-agents.sh) against the scripted model server, driven from the test
//! directly: each run is started from outpost's agent profile (its argv and env), in a
//! PTY, as an unprivileged user (Claude Code refuses `--dangerously-skip-permissions` as
//! root), and its output goes through outpost's structured parser. Checks: the scripted
//! tool call edits a file, the agent events show it, usage and cost match the script, a
//! bad key ends `agent_auth`, a budget below the scripted cost ends `budget_exceeded`,
//! 429s end `agent_rate_limited`, and a resumed session sends the earlier turns.
//!
//! `OUTPOST_CAPTURE_FIXTURES=1 cargo test --test agents_cli` rewrites the captures in
//! tests/fixtures/agents/ that the parser's unit tests read.

mod modelserver;

use std::path::Path;

use modelserver::agents::{capture, cost_of, run, Cli, RunOpts, Sandbox, TEXT_USAGE, TOOL_USAGE};
use modelserver::{ModelServer, Reply, Script, Step, Usage};
use outpost::agent::profile::{claude_transcript_exists, SessionPlan};
use outpost::agent::structured::{AgentEvent, ErrorCode};
use serde_json::json;

fn scripted(cli: Cli, file: &Path) -> Script {
    let (tool, input) = cli.write_tool(file, "edited by the scripted model\n");
    Script::tool_then_text(
        tool,
        input,
        TOOL_USAGE,
        "Done: NOTES.md written.",
        TEXT_USAGE,
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// The tool call edits the file, the events show it, usage and cost match the script;
/// then a resumed session sends the earlier turns.
fn tool_call_and_resume(cli: Cli) {
    let sb = Sandbox::new();
    let file = sb.work().join("NOTES.md");
    let server = ModelServer::start(scripted(cli, &file));
    let mut o = RunOpts::new(cli, &sb, &server, "Write NOTES.md, please.");
    if cli == Cli::Claude {
        o.session = Some(SessionPlan::New(Some(
            "7d0c6e0a-3f4b-4b8e-9a41-2f4f7c1e5a10".into(),
        )));
    }
    let first = run(o);
    capture(&format!("{}-tool", cli.name()), &first);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap_or_default(),
        "edited by the scripted model\n",
        "the tool call did not write the file; output:\n{}",
        String::from_utf8_lossy(&first.raw)
    );
    let tools = first.tool_uses();
    assert_eq!(tools.len(), 1, "tool uses: {tools:?}");
    assert!(tools[0].0.eq_ignore_ascii_case("write"), "{tools:?}");
    assert_eq!(tools[0].1, file.to_string_lossy());
    assert!(first.events.iter().any(|e| matches!(
        e,
        AgentEvent::ToolResult {
            is_error: false,
            ..
        }
    )));
    let r = first.result();
    assert!(!r.is_error, "{r:?}");
    let want = server.script_total();
    assert_eq!(r.usage, want, "usage");
    assert!(
        close(r.cost_usd, cost_of(&server.script_total())),
        "cost {} vs {}",
        r.cost_usd,
        cost_of(&server.script_total())
    );
    assert_eq!(r.num_turns, 2);
    let session = first.session_id.clone().expect("a session id");
    if cli == Cli::Claude {
        assert_eq!(session, "7d0c6e0a-3f4b-4b8e-9a41-2f4f7c1e5a10");
        assert!(claude_transcript_exists(&sb.state(), &session));
        assert!(!claude_transcript_exists(
            &sb.state(),
            "00000000-0000-4000-8000-000000000000"
        ));
    }
    assert_eq!(r.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(server.turns().len(), 2, "conversation requests");
    // Nothing but the conversation (and opencode's title request): no probes, no
    // token counting, no model lists (the env of the profile turns them off).
    let other: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|q| q.kind != modelserver::Kind::Turn && q.kind != modelserver::Kind::Title)
        .map(|q| format!("{} {}", q.method, q.path))
        .collect();
    assert!(other.is_empty(), "unexpected requests: {other:?}");

    // Resume: a new prompt in the same session; the model server gets the earlier turns.
    server.clear_requests();
    let mut o = RunOpts::new(cli, &sb, &server, "And now say goodbye.");
    o.session = Some(SessionPlan::Resume(session.clone()));
    // Claude Code finds a session by id from any directory; opencode only from the
    // directory it was created in (docs/agents.md), so its worktree path must stay.
    if cli == Cli::Claude {
        o.cwd = Some(sb.work2());
    }
    let second = run(o);
    capture(&format!("{}-resume", cli.name()), &second);
    let r2 = second.result();
    assert!(!r2.is_error, "{r2:?}");
    // This run's own figures: the script's final turn, served once more.
    assert_eq!(r2.usage, TEXT_USAGE);
    assert!(
        close(r2.cost_usd, cost_of(&TEXT_USAGE)),
        "resumed cost {}",
        r2.cost_usd
    );
    let turns = server.turns();
    assert!(!turns.is_empty());
    let sent = turns[0].messages_text();
    assert!(
        sent.contains("Write NOTES.md, please."),
        "earlier prompt not resent:\n{sent}"
    );
    assert!(sent.contains("And now say goodbye."), "{sent}");
    assert!(
        sent.contains("edited by the scripted model"),
        "earlier tool call not resent"
    );
    assert!(
        sent.contains("Done: NOTES.md written."),
        "earlier answer not resent"
    );
    assert_eq!(second.session_id.as_deref(), Some(session.as_str()));
}

/// A run stopped with SIGTERM in the middle of its session (the tool call done, the next
/// model request held by the server), then resumed: the resumed run sends the whole conversation
/// so far and finishes.
fn interrupted_session_resumes(cli: Cli) {
    let sb = Sandbox::new();
    let file = sb.work().join("NOTES.md");
    let mut script = scripted(cli, &file);
    script.steps.insert(
        1,
        Step {
            reply: Reply::Stall,
            usage: Usage::default(),
        },
    );
    let server = ModelServer::start(script);
    let mut o = RunOpts::new(cli, &sb, &server, "Write NOTES.md, please.");
    if cli == Cli::Claude {
        o.session = Some(SessionPlan::New(Some(
            "3b5e1c2d-6a7f-4e8b-9c0d-1e2f3a4b5c6d".into(),
        )));
    }
    o.term_when_stalled = true;
    let first = run(o);
    assert!(first.terminated);
    assert!(first.result.is_none(), "it was stopped before its result");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "edited by the scripted model\n"
    );
    let session = first
        .session_id
        .clone()
        .expect("the session id, from the first line");

    server.clear_requests();
    let mut o = RunOpts::new(cli, &sb, &server, "Go on.");
    o.session = Some(SessionPlan::Resume(session.clone()));
    let second = run(o);
    let r = second.result();
    assert!(!r.is_error, "{r:?}");
    assert_eq!(r.session_id.as_deref(), Some(session.as_str()));
    let sent = server.turns()[0].messages_text();
    for earlier in [
        "Write NOTES.md, please.",
        "edited by the scripted model",
        "Go on.",
    ] {
        assert!(
            sent.contains(earlier),
            "{earlier:?} not in the resumed request:\n{sent}"
        );
    }
}

/// A tool call that fails (reading a file that is not there) shows as a tool result
/// with `is_error`, and the run goes on to its final answer.
fn failing_tool(cli: Cli) {
    let sb = Sandbox::new();
    let missing = sb.work().join("MISSING.md");
    let (tool, input) = match cli {
        Cli::Claude => ("Read", json!({ "file_path": missing })),
        Cli::Opencode => ("read", json!({ "filePath": missing })),
    };
    let server = ModelServer::start(Script::tool_then_text(
        tool,
        input,
        TOOL_USAGE,
        "That file is not there.",
        TEXT_USAGE,
    ));
    let run = run(RunOpts::new(cli, &sb, &server, "Read MISSING.md."));
    capture(&format!("{}-tool-error", cli.name()), &run);
    assert!(
        run.events.iter().any(|e| matches!(e,
            AgentEvent::ToolResult { tool: Some(t), is_error: true, .. } if t == tool)),
        "{:?}",
        run.events
    );
    let r = run.result();
    assert!(!r.is_error, "{r:?}");
    assert_eq!(r.text, "That file is not there.");
}

fn bad_key(cli: Cli) {
    let sb = Sandbox::new();
    let server = ModelServer::start(scripted(cli, &sb.work().join("NOTES.md")));
    let mut o = RunOpts::new(cli, &sb, &server, "Write NOTES.md, please.");
    o.key = "sk-wrong".into();
    // Claude Code retries a 401 ten times with backoff (about 3 minutes) by default.
    o.env.push(("CLAUDE_CODE_MAX_RETRIES".into(), "1".into()));
    let run = run(o);
    assert!(run.events.iter().any(|e| matches!(
        e,
        AgentEvent::Error {
            error: ErrorCode::AgentAuth,
            ..
        }
    )));
    capture(&format!("{}-bad-key", cli.name()), &run);
    let r = run.result();
    assert!(r.is_error);
    assert_eq!(r.error, Some(ErrorCode::AgentAuth), "{r:?}");
    assert!(server
        .requests()
        .iter()
        .all(|q| q.status == 401 || q.kind == modelserver::Kind::Other));
    assert!(!sb.work().join("NOTES.md").exists());
}

fn budget(cli: Cli) {
    let sb = Sandbox::new();
    let file = sb.work().join("NOTES.md");
    let server = ModelServer::start(scripted(cli, &file));
    // Below the cost of the first turn alone.
    let cap = cost_of(&TOOL_USAGE) / 2.0;
    let mut o = RunOpts::new(cli, &sb, &server, "Write NOTES.md, please.");
    o.budget = Some(cap);
    let run = run(o);
    capture(&format!("{}-budget", cli.name()), &run);
    let r = run.result();
    assert!(r.is_error, "{r:?}");
    assert_eq!(r.error, Some(ErrorCode::BudgetExceeded), "{r:?}");
    assert!(r.cost_usd > cap);
    assert_eq!(cli == Cli::Opencode, run.stopped_over_budget);
}

fn rate_limited(cli: Cli) {
    let sb = Sandbox::new();
    let mut script = scripted(cli, &sb.work().join("NOTES.md"));
    script.rate_limited = true;
    let server = ModelServer::start(script);
    let mut o = RunOpts::new(cli, &sb, &server, "Write NOTES.md, please.");
    // Claude Code retries a 429 ten times with backoff (about 3 minutes) by default.
    o.env.push(("CLAUDE_CODE_MAX_RETRIES".into(), "1".into()));
    let run = run(o);
    capture(&format!("{}-rate-limited", cli.name()), &run);
    let r = run.result();
    assert_eq!(r.error, Some(ErrorCode::AgentRateLimited), "{r:?}");
}

/// Claude Code's own turn limit (`--max-turns`, through OUTPOST_AGENT_ARGS) ends
/// `max_turns`: the scripted tool call takes the one turn allowed.
#[test]
fn claude_max_turns() {
    let cli = Cli::Claude;
    let sb = Sandbox::new();
    let server = ModelServer::start(scripted(cli, &sb.work().join("NOTES.md")));
    let mut o = RunOpts::new(cli, &sb, &server, "Write NOTES.md, please.");
    o.args = "--max-turns 1";
    let run = run(o);
    capture("claude-max-turns", &run);
    let r = run.result();
    assert!(r.is_error, "{r:?}");
    assert_eq!(r.error, Some(ErrorCode::MaxTurns), "{r:?}");
}

#[test]
fn claude_tool_call_and_resume() {
    tool_call_and_resume(Cli::Claude);
}

#[test]
fn opencode_tool_call_and_resume() {
    tool_call_and_resume(Cli::Opencode);
}

#[test]
fn claude_interrupted_session_resumes() {
    interrupted_session_resumes(Cli::Claude);
}

#[test]
fn opencode_interrupted_session_resumes() {
    interrupted_session_resumes(Cli::Opencode);
}

#[test]
fn claude_failing_tool() {
    failing_tool(Cli::Claude);
}

#[test]
fn opencode_failing_tool() {
    failing_tool(Cli::Opencode);
}

#[test]
fn claude_bad_key_is_agent_auth() {
    bad_key(Cli::Claude);
}

#[test]
fn opencode_bad_key_is_agent_auth() {
    bad_key(Cli::Opencode);
}

#[test]
fn claude_budget_flag_ends_budget_exceeded() {
    budget(Cli::Claude);
}

#[test]
fn opencode_budget_is_enforced_from_streamed_cost() {
    budget(Cli::Opencode);
}

#[test]
fn claude_rate_limited() {
    rate_limited(Cli::Claude);
}

#[test]
fn opencode_rate_limited() {
    rate_limited(Cli::Opencode);
}
