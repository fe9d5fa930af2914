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

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use modelserver::{ModelServer, Script, Usage};
use outpost::agent::profile::{AgentProfile, SessionPlan};
use outpost::agent::structured::{AgentEvent, ErrorCode, RunResult, StructuredParser};
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use serde_json::json;

/// The unprivileged user the agents run as (`nobody`).
const AGENT_UID: u32 = 65534;
const AGENT_GID: u32 = 65534;
/// One run may take this long before the test kills it.
const RUN_LIMIT: Duration = Duration::from_secs(180);
/// After the parser saw the end of the run, the CLI gets this long to exit by itself.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Scripted token counts: the tool-call turn and the final turn.
const TOOL_USAGE: Usage = Usage {
    input_tokens: 1200,
    output_tokens: 80,
    cache_read_input_tokens: 300,
    cache_creation_input_tokens: 100,
};
const TEXT_USAGE: Usage = Usage {
    input_tokens: 1500,
    output_tokens: 40,
    cache_read_input_tokens: 0,
    cache_creation_input_tokens: 0,
};
/// The price of the model both CLIs are told to use, USD per million tokens: Claude Code
/// prices `claude-sonnet-4-5` so (its own table), and opencode is given the same prices
/// for its scripted model in its config.
const PRICE_IN: f64 = 3.0;
const PRICE_OUT: f64 = 15.0;
const PRICE_CACHE_READ: f64 = 0.3;
const PRICE_CACHE_WRITE: f64 = 3.75;

fn cost_of(u: &Usage) -> f64 {
    (u.input_tokens as f64 * PRICE_IN
        + u.output_tokens as f64 * PRICE_OUT
        + u.cache_read_input_tokens as f64 * PRICE_CACHE_READ
        + u.cache_creation_input_tokens as f64 * PRICE_CACHE_WRITE)
        / 1e6
}

fn agent_bin(name: &str) -> PathBuf {
    let prefix =
        std::env::var("OUTPOST_AGENTS_PREFIX").unwrap_or_else(|_| "/opt/outpost-agents".into());
    let p = Path::new(&prefix).join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run tests/setup/20-agents.sh (./test does) to install the pinned agent CLIs",
        p.display()
    );
    p
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cli {
    Claude,
    Opencode,
}

impl Cli {
    fn name(self) -> &'static str {
        match self {
            Cli::Claude => "claude",
            Cli::Opencode => "opencode",
        }
    }

    fn profile(self, args: &str) -> AgentProfile {
        let extra = match self {
            Cli::Claude => format!("--model claude-sonnet-4-5 {args}"),
            Cli::Opencode => args.to_string(),
        };
        AgentProfile::parse(self.name(), Some(&extra))
            .unwrap()
            .with_program(agent_bin(self.name()).to_string_lossy())
    }

    /// The scripted tool call that writes `file` (an absolute path).
    fn write_tool(self, file: &Path, content: &str) -> (&'static str, serde_json::Value) {
        match self {
            Cli::Claude => ("Write", json!({"file_path": file, "content": content})),
            Cli::Opencode => ("write", json!({"filePath": file, "content": content})),
        }
    }
}

/// A temp dir with the agent's worktree, home and session state, owned by the agent user.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["work", "work2", "home", "state"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("work/README.md"), "scratch repo\n").unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_tree(tmp.path());
        Sandbox { tmp }
    }

    fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    /// A second worktree path (a resumed Claude Code session runs there).
    fn work2(&self) -> PathBuf {
        self.tmp.path().join("work2")
    }

    fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
}

fn chown_tree(p: &Path) {
    std::os::unix::fs::lchown(p, Some(AGENT_UID), Some(AGENT_GID)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}

/// What one run of a CLI produced.
struct Run {
    raw: Vec<u8>,
    events: Vec<AgentEvent>,
    /// The result: the agent's own, or the one the test made when it stopped the agent
    /// over the budget (as the worker does).
    result: Option<RunResult>,
    session_id: Option<String>,
    stopped_over_budget: bool,
    /// The CLI was still running [`EXIT_GRACE`] after it reported the end of its run.
    hung: bool,
}

impl Run {
    fn tool_uses(&self) -> Vec<(&str, &str)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::ToolUse { tool, input, .. } => Some((tool.as_str(), input.as_str())),
                _ => None,
            })
            .collect()
    }

    fn result(&self) -> &RunResult {
        self.result.as_ref().unwrap_or_else(|| {
            panic!(
                "no result event; output:\n{}",
                String::from_utf8_lossy(&self.raw)
            )
        })
    }
}

struct RunOpts<'a> {
    cli: Cli,
    sandbox: &'a Sandbox,
    server: &'a ModelServer,
    key: String,
    prompt: &'a str,
    session: Option<SessionPlan>,
    budget: Option<f64>,
    env: Vec<(String, String)>,
    /// The directory to run in; the sandbox's worktree by default.
    cwd: Option<PathBuf>,
    /// More `OUTPOST_AGENT_ARGS`.
    args: &'a str,
}

impl<'a> RunOpts<'a> {
    fn new(cli: Cli, sandbox: &'a Sandbox, server: &'a ModelServer, prompt: &'a str) -> Self {
        RunOpts {
            cli,
            sandbox,
            server,
            key: server.api_key(),
            prompt,
            session: None,
            budget: None,
            env: Vec::new(),
            cwd: None,
            args: "",
        }
    }
}

/// The model provider's environment for a CLI: where the model server is, the key, and
/// for opencode the config that points its Anthropic provider there.
fn provider_env(cli: Cli, server: &ModelServer, key: &str) -> Vec<(String, String)> {
    let mut env = vec![("ANTHROPIC_API_KEY".to_string(), key.to_string())];
    match cli {
        Cli::Claude => env.push(("ANTHROPIC_BASE_URL".into(), server.url())),
        Cli::Opencode => {
            let config = json!({
                "$schema": "https://opencode.ai/config.json",
                "model": "anthropic/outpost-scripted",
                "small_model": "anthropic/outpost-scripted",
                "autoupdate": false,
                "share": "disabled",
                "provider": {"anthropic": {
                    "options": {"baseURL": format!("{}/v1", server.url())},
                    "models": {"outpost-scripted": {
                        "name": "Outpost scripted model",
                        "tool_call": true,
                        "cost": {"input": PRICE_IN, "output": PRICE_OUT,
                                 "cache_read": PRICE_CACHE_READ, "cache_write": PRICE_CACHE_WRITE},
                        "limit": {"context": 200000, "output": 8192}
                    }}
                }}
            });
            env.push(("OPENCODE_CONFIG_CONTENT".into(), config.to_string()));
            env.push(("OPENCODE_DISABLE_MODELS_FETCH".into(), "1".into()));
        }
    }
    env
}

/// Runs the CLI once in a PTY as the agent user and parses its output.
fn run(o: RunOpts) -> Run {
    let profile = o.cli.profile(o.args);
    let argv = profile.argv(o.prompt, o.session.as_ref(), o.budget);
    let mut cmd = CommandBuilder::new("setpriv");
    cmd.args([
        format!("--reuid={AGENT_UID}"),
        format!("--regid={AGENT_GID}"),
        "--clear-groups".into(),
        "--".into(),
    ]);
    cmd.args(&argv);
    cmd.env_clear();
    cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    cmd.env("HOME", o.sandbox.home());
    cmd.env("TERM", "xterm-256color");
    cmd.env("LANG", "C.UTF-8");
    for (k, v) in profile
        .env(&o.sandbox.state())
        .into_iter()
        .chain(provider_env(o.cli, o.server, &o.key))
        .chain(o.env.iter().cloned())
    {
        cmd.env(k, v);
    }
    cmd.cwd(o.cwd.clone().unwrap_or_else(|| o.sandbox.work()));
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: 40,
            cols: 200,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut child = pair.slave.spawn_command(cmd).unwrap();
    drop(pair.slave);
    let pid = child.process_id().unwrap() as i32;
    let mut reader = pair.master.try_clone_reader().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut parser = StructuredParser::new(profile.format());
    let mut out = Run {
        raw: Vec::new(),
        events: Vec::new(),
        result: None,
        session_id: None,
        stopped_over_budget: false,
        hung: false,
    };
    let start = Instant::now();
    let mut finished_at: Option<Instant> = None;
    let mut exited = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(chunk) => {
                out.raw.extend_from_slice(&chunk);
                out.events.extend(parser.feed(&chunk));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The terminal closed: the CLI is exiting; give it a moment to be reaped.
                for _ in 0..20 {
                    if exited || child.try_wait().unwrap().is_some() {
                        exited = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !exited && child.try_wait().unwrap().is_some() {
            exited = true;
        }
        if let Some(budget) = o.budget.filter(|_| !profile.caps_budget()) {
            if !out.stopped_over_budget && parser.totals().exceeds(budget) {
                out.stopped_over_budget = true;
                out.result = Some(
                    parser
                        .totals()
                        .budget_exceeded(parser.session_id().map(String::from), budget),
                );
                kill_group(pid);
            }
        }
        if parser.is_finished() && finished_at.is_none() {
            finished_at = Some(Instant::now());
        }
        let hung = !exited && finished_at.is_some_and(|t| t.elapsed() > EXIT_GRACE);
        if hung && !out.hung {
            out.hung = true;
            eprintln!(
                "{}: still running {EXIT_GRACE:?} after its result: stopping it",
                o.cli.name()
            );
        }
        if hung || start.elapsed() > RUN_LIMIT {
            kill_group(pid);
            assert!(
                hung || parser.is_finished(),
                "{} ran past {RUN_LIMIT:?}; output:\n{}",
                o.cli.name(),
                String::from_utf8_lossy(&out.raw)
            );
        }
    }
    kill_group(pid);
    let _ = child.wait();
    eprintln!(
        "{} run: {:.1} s, result after {:.1} s, exited by itself: {exited}",
        o.cli.name(),
        start.elapsed().as_secs_f64(),
        finished_at.map_or(f64::NAN, |t| (t - start).as_secs_f64()),
    );
    out.events.extend(parser.finish());
    if out.result.is_none() {
        out.result = out.events.iter().rev().find_map(|e| match e {
            AgentEvent::Result(r) => Some(r.clone()),
            _ => None,
        });
    }
    out.session_id = parser.session_id().map(String::from);
    out
}

fn kill_group(pid: i32) {
    // SAFETY: plain syscall; the group is the CLI's own session (portable-pty setsid()s).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Saves a run's raw output as a parser fixture when OUTPOST_CAPTURE_FIXTURES is set.
fn capture(name: &str, run: &Run) {
    if std::env::var_os("OUTPOST_CAPTURE_FIXTURES").is_none() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agents");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.pty")), &run.raw).unwrap();
}

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
