//! Drives a real agent CLI (Claude Code or opencode, installed by
//! tests/setup/20-agents.sh) against a [`ModelServer`]: builds its command line and
//! environment from outpost's agent profile, points its provider at the server
//! ([`provider_env`]: the env a worker needs too), runs it in a PTY as an unprivileged
//! user in a [`Sandbox`] (Claude Code refuses `--dangerously-skip-permissions` as root),
//! and feeds its output through outpost's structured parser, stopping it where a worker
//! would (over a budget it cannot cap itself, or hung after its result).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use outpost::agent::profile::{AgentProfile, SessionPlan};
use outpost::agent::structured::{AgentEvent, RunResult, StructuredParser};
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use serde_json::json;

use super::{ModelServer, Usage};

/// The unprivileged user the agents run as (`nobody`).
pub const AGENT_UID: u32 = 65534;
pub const AGENT_GID: u32 = 65534;
/// One run may take this long before the test kills it.
pub const RUN_LIMIT: Duration = Duration::from_secs(180);
/// After the parser saw the end of the run, the CLI gets this long to exit by itself.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);

/// The price of the model both CLIs are told to use, USD per million tokens: Claude Code
/// prices `claude-sonnet-4-5` so (its own table), and opencode is given the same prices
/// for its scripted model in its config.
pub const PRICE_IN: f64 = 3.0;
pub const PRICE_OUT: f64 = 15.0;
pub const PRICE_CACHE_READ: f64 = 0.3;
pub const PRICE_CACHE_WRITE: f64 = 3.75;

/// Scripted token counts: the tool-call turn and the final turn.
pub const TOOL_USAGE: Usage = Usage {
    input_tokens: 1200,
    output_tokens: 80,
    cache_read_input_tokens: 300,
    cache_creation_input_tokens: 100,
};
pub const TEXT_USAGE: Usage = Usage {
    input_tokens: 1500,
    output_tokens: 40,
    cache_read_input_tokens: 0,
    cache_creation_input_tokens: 0,
};

pub fn cost_of(u: &Usage) -> f64 {
    (u.input_tokens as f64 * PRICE_IN
        + u.output_tokens as f64 * PRICE_OUT
        + u.cache_read_input_tokens as f64 * PRICE_CACHE_READ
        + u.cache_creation_input_tokens as f64 * PRICE_CACHE_WRITE)
        / 1e6
}

pub fn agent_bin(name: &str) -> PathBuf {
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
pub enum Cli {
    Claude,
    Opencode,
}

impl Cli {
    pub fn name(self) -> &'static str {
        match self {
            Cli::Claude => "claude",
            Cli::Opencode => "opencode",
        }
    }

    pub fn profile(self, args: &str) -> AgentProfile {
        let extra = match self {
            Cli::Claude => format!("--model claude-sonnet-4-5 {args}"),
            Cli::Opencode => args.to_string(),
        };
        AgentProfile::parse(self.name(), Some(&extra))
            .unwrap()
            .with_program(agent_bin(self.name()).to_string_lossy())
    }

    /// The scripted tool call that writes `file` (an absolute path).
    pub fn write_tool(self, file: &Path, content: &str) -> (&'static str, serde_json::Value) {
        match self {
            Cli::Claude => ("Write", json!({"file_path": file, "content": content})),
            Cli::Opencode => ("write", json!({"filePath": file, "content": content})),
        }
    }
}

/// A temp dir with the agent's worktree, home and session state, owned by the agent user.
pub struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["work", "work2", "home", "state"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("work/README.md"), "scratch repo\n").unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_tree(tmp.path());
        Sandbox { tmp }
    }

    pub fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    /// A second worktree path (a resumed Claude Code session runs there).
    pub fn work2(&self) -> PathBuf {
        self.tmp.path().join("work2")
    }

    pub fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
}

pub fn chown_tree(p: &Path) {
    std::os::unix::fs::lchown(p, Some(AGENT_UID), Some(AGENT_GID)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}

/// What one run of a CLI produced.
pub struct Run {
    pub raw: Vec<u8>,
    pub events: Vec<AgentEvent>,
    /// The result: the agent's own, or the one the test made when it stopped the agent
    /// over the budget (as the worker does).
    pub result: Option<RunResult>,
    pub session_id: Option<String>,
    pub stopped_over_budget: bool,
    /// The CLI was still running [`EXIT_GRACE`] after it reported the end of its run.
    pub hung: bool,
    /// The test sent it SIGTERM (`term_when_stalled`).
    pub terminated: bool,
}

impl Run {
    pub fn tool_uses(&self) -> Vec<(&str, &str)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::ToolUse { tool, input, .. } => Some((tool.as_str(), input.as_str())),
                _ => None,
            })
            .collect()
    }

    pub fn result(&self) -> &RunResult {
        self.result.as_ref().unwrap_or_else(|| {
            panic!(
                "no result event; output:\n{}",
                String::from_utf8_lossy(&self.raw)
            )
        })
    }
}

pub struct RunOpts<'a> {
    pub cli: Cli,
    pub sandbox: &'a Sandbox,
    pub server: &'a ModelServer,
    pub key: String,
    pub prompt: &'a str,
    pub session: Option<SessionPlan>,
    pub budget: Option<f64>,
    pub env: Vec<(String, String)>,
    /// The directory to run in; the sandbox's worktree by default.
    pub cwd: Option<PathBuf>,
    /// More `OUTPOST_AGENT_ARGS`.
    pub args: &'a str,
    /// SIGTERM the CLI's process group once the server holds one of its requests (a
    /// [`super::Reply::Stall`]: a worker's drain in the middle of a session); SIGKILL
    /// [`EXIT_GRACE`] later if it is still there.
    pub term_when_stalled: bool,
}

impl<'a> RunOpts<'a> {
    pub fn new(cli: Cli, sandbox: &'a Sandbox, server: &'a ModelServer, prompt: &'a str) -> Self {
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
            term_when_stalled: false,
        }
    }
}

/// The environment of a worker that runs `cli` against `model` with the API key `key`:
/// the profile, plain HTTP to the test servers on 127.0.0.1, the CLI's directory first
/// on PATH, the model Claude Code prices as the tests do (its own table), one retry of a
/// refused key (Claude Code retries a 401 ten times with backoff, about 3 minutes), and
/// the provider settings.
pub fn worker_env(cli: Cli, model: &ModelServer, key: &str) -> Vec<(String, String)> {
    let bin = agent_bin(cli.name());
    let dir = bin.parent().unwrap().to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = vec![
        ("OUTPOST_AGENT".into(), cli.name().into()),
        ("OUTPOST_ALLOW_HTTP".into(), "1".into()),
        ("OUTPOST_ALLOWED_HOSTS".into(), "127.0.0.1".into()),
        (
            "PATH".into(),
            format!("{dir}:{}", std::env::var("PATH").unwrap_or_default()),
        ),
        ("ANTHROPIC_MODEL".into(), "claude-sonnet-4-5".into()),
        ("CLAUDE_CODE_MAX_RETRIES".into(), "1".into()),
    ];
    env.extend(provider_env(cli, model, key));
    env
}

/// The model provider's environment for a CLI: where the model server is, the key, and
/// for opencode the config that points its Anthropic provider there.
pub fn provider_env(cli: Cli, server: &ModelServer, key: &str) -> Vec<(String, String)> {
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
pub fn run(o: RunOpts) -> Run {
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
        terminated: false,
    };
    let mut termed_at: Option<Instant> = None;
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
        if o.term_when_stalled && termed_at.is_none() && o.server.stalled() > 0 {
            out.terminated = true;
            termed_at = Some(Instant::now());
            // SAFETY: plain syscall on the CLI's own process group.
            unsafe {
                libc::kill(-pid, libc::SIGTERM);
            }
        }
        if termed_at.is_some_and(|t| t.elapsed() > EXIT_GRACE) {
            kill_group(pid);
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
                hung || parser.is_finished() || out.terminated,
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

pub fn kill_group(pid: i32) {
    // SAFETY: plain syscall; the group is the CLI's own session (portable-pty setsid()s).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Saves a run's raw output as a parser fixture when OUTPOST_CAPTURE_FIXTURES is set.
pub fn capture(name: &str, run: &Run) {
    if std::env::var_os("OUTPOST_CAPTURE_FIXTURES").is_none() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agents");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.pty")), &run.raw).unwrap();
}
