//! The real agent CLIs (Claude Code and opencode) run by a real worker
//! (`OUTPOST_AGENT=claude` / `opencode`) against the scripted model server on 127.0.0.1:
//! the worker builds the command line and the environment from the agent profile, runs
//! it as the agent user (not root, so Claude's root refusal does not apply), parses its
//! output into `agent` events beside the raw `output`, and reports the agent's session,
//! turns, usage and cost in `done` and the task object. Checks, per CLI: a task on the
//! test git server ends `done` with the tool call's edit in the pushed commit (read with
//! the git CLI), a bad key ends `agent_auth`, and a budget below the scripted cost ends
//! `budget_exceeded` (Claude Code: its own `--max-budget-usd`, from
//! `OUTPOST_MAX_COST_USD`, overridden by the request's `max_cost_usd`; opencode: the
//! worker stops it from the streamed cost).
//!
//! Needs the pinned CLIs of tests/setup/20-agents.sh in /opt/outpost-agents (or
//! `OUTPOST_AGENTS_PREFIX`).

mod common;
mod gitserver;
mod modelserver;

use std::time::Duration;

use common::*;
use gitserver::GitServer;
use modelserver::agents::{cost_of, worker_env, Cli, TEXT_USAGE, TOOL_USAGE};
use modelserver::{ModelServer, Script, Usage};
use serde_json::{json, Value};

/// One task with an agent run (Claude Code 1-5 s, opencode 15-30 s; more when loaded).
const T: Duration = Duration::from_secs(240);

const EDIT: &str = "edited by the scripted model";

/// A shell tool call that writes NOTES.md in the agent's cwd (the task's worktree,
/// whose path the script cannot know), then a final text.
fn scripted(cli: Cli) -> Script {
    let tool = match cli {
        Cli::Claude => "Bash",
        Cli::Opencode => "bash",
    };
    Script::tool_then_text(
        tool,
        json!({"command": format!("printf '{EDIT}\\n' > NOTES.md"), "description": "Write NOTES.md"}),
        TOOL_USAGE,
        "Done: NOTES.md written.",
        TEXT_USAGE,
    )
}

/// A worker that runs `cli` against `model` with `key`.
fn agent_worker(cli: Cli, model: &ModelServer, key: &str, extra: &[(&str, &str)]) -> Worker {
    let mut env = worker_env(cli, model, key);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Worker::start(&env)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Submits a task and follows its events to `done`; returns its id and events.
fn run_task(w: &Worker, body: Value) -> (String, Vec<Event>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = h1();
        let id = submit(&c, w, body).await;
        let events = Sse::new(open_events(&c, w, &id).await).collect(T).await;
        (id, events)
    })
}

fn agent_events(events: &[Event]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e.event == "agent")
        .map(|e| &e.data)
        .collect()
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
    })
}

/// The tool call's edit is pushed; the events, `done`, the task object and /metrics
/// report the scripted usage and cost.
fn edits_the_rig_and_reports_usage_and_cost(cli: Cli) {
    let git = GitServer::start(false);
    git.create_repo("rig", &[("README.md", "hello\n")]);
    let model = ModelServer::start(scripted(cli));
    let w = agent_worker(cli, &model, &model.api_key(), &[]);
    let issue = format!("gt-{}", cli.name());
    let (id, events) = run_task(
        &w,
        json!({"issue_id": issue, "rig_url": git.url("rig"), "ref": "main",
               "prompt": "Write NOTES.md, please."}),
    );
    assert_complete(&events, 1);
    let done = &events.last().unwrap().data;
    assert_eq!(
        done["status"],
        "done",
        "{done}\noutput:\n{}\nlog:\n{}",
        String::from_utf8_lossy(&output_of(&events)),
        w.log_text()
    );
    // The pushed commit holds the tool call's edit.
    let commit = done["commit"].as_str().unwrap_or_else(|| {
        panic!(
            "no commit in {done}; agent events: {:?}",
            agent_events(&events)
        )
    });
    assert_eq!(
        git.git(
            "rig",
            &["rev-parse", &format!("refs/heads/polecat/{issue}")]
        ),
        commit
    );
    assert_eq!(
        git.git("rig", &["show", &format!("{commit}:NOTES.md")])
            .trim(),
        EDIT
    );

    // The agent events show the tool call, its result and the end of the run, each
    // after the raw output that carried it; the raw output is still all there.
    let agent = agent_events(&events);
    let tool = agent
        .iter()
        .find(|e| e["kind"] == "tool_use")
        .unwrap_or_else(|| panic!("no tool_use event in {agent:?}"));
    assert!(
        tool["tool"].as_str().unwrap().eq_ignore_ascii_case("bash"),
        "{tool}"
    );
    assert!(
        tool["input"].as_str().unwrap().contains("NOTES.md"),
        "{tool}"
    );
    assert!(
        agent
            .iter()
            .any(|e| e["kind"] == "tool_result" && e["is_error"] == false),
        "{agent:?}"
    );
    let result = agent.iter().find(|e| e["kind"] == "result").unwrap();
    // The tool call's id does not shadow the record's own.
    assert_eq!(
        tool["call_id"].as_str().map(|c| !c.is_empty()),
        Some(true),
        "{tool}"
    );
    for e in events.iter().filter(|e| e.event == "agent") {
        assert_eq!(e.data["id"].as_u64(), Some(e.id), "{}", e.data);
    }
    assert_eq!(result["is_error"], false);
    let first_output = events.iter().find(|e| e.event == "output").unwrap().id;
    let first_agent = events.iter().find(|e| e.event == "agent").unwrap().id;
    assert!(first_output < first_agent);
    let raw = String::from_utf8_lossy(&output_of(&events)).into_owned();
    let last_line = match cli {
        Cli::Claude => r#""type":"result""#,
        Cli::Opencode => r#""type":"step_finish""#,
    };
    assert!(raw.contains(last_line), "{raw}");

    // done: the scripted usage and cost, the model cost in `cost`.
    let want = model.script_total();
    let a = &done["agent"];
    assert_eq!(a["name"], cli.name());
    assert_eq!(a["num_turns"], 2);
    assert_eq!(a["usage"], usage_json(&want), "{a}");
    let cost = a["cost_usd"].as_f64().unwrap();
    assert!(close(cost, cost_of(&want)), "{cost} vs {}", cost_of(&want));
    let session = a["session_id"].as_str().expect("a session id");
    assert_eq!(result["session_id"], session);
    let c = &done["cost"];
    assert!(close(c["model_usd"].as_f64().unwrap(), cost));
    let total = c["total_usd"].as_f64().unwrap();
    assert!(close(total, c["compute_usd"].as_f64().unwrap() + cost));
    // The model server saw the two conversation turns.
    assert_eq!(model.turns().len(), 2);

    // The task object says the same; /metrics sums the model spend.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (task, metrics) = rt.block_on(async {
        let c = h1();
        let task: Value = get_json(&c, w.url(&format!("/work/{id}"))).await;
        let m = c.get(w.url("/metrics")).send().await.unwrap();
        (task, m.text().await.unwrap())
    });
    assert_eq!(task["agent"], *a);
    assert_eq!(task["cost"], *c);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("outpost_task_model_usd_total"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let summed: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
    assert!((summed - cost).abs() < 1e-5, "{line} vs {cost}");
}

fn bad_key_ends_agent_auth(cli: Cli) {
    let model = ModelServer::start(scripted(cli));
    // Claude Code's own default: it would retry the 401 for about 3 minutes; the worker
    // stops it at the first refusal.
    let w = agent_worker(
        cli,
        &model,
        "sk-not-the-key",
        &[("CLAUDE_CODE_MAX_RETRIES", "10")],
    );
    let (_, events) = run_task(&w, json!({"prompt": "Write NOTES.md, please."}));
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error_code"], "agent_auth", "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("agent_auth"),
        "{done}"
    );
    assert_eq!(done["agent"]["name"], cli.name());
    assert!(agent_events(&events)
        .iter()
        .any(|e| e["kind"] == "result" && e["error"] == "agent_auth"));
}

/// Over the budget: Claude Code stops itself (`--max-budget-usd`), opencode is
/// stopped by the worker.
fn over_budget_ends_budget_exceeded(cli: Cli) {
    let model = ModelServer::start(scripted(cli));
    // The worker's default cap, below the cost of the first turn alone.
    let cap = cost_of(&TOOL_USAGE) / 2.0;
    let cap_s = format!("{cap}");
    let w = agent_worker(
        cli,
        &model,
        &model.api_key(),
        &[("OUTPOST_MAX_COST_USD", cap_s.as_str())],
    );
    let (_, events) = run_task(&w, json!({"prompt": "Write NOTES.md, please."}));
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error_code"], "budget_exceeded", "{done}");
    let spent = done["agent"]["cost_usd"].as_f64().unwrap();
    assert!(spent > cap, "{spent} <= {cap}");
    assert!(close(done["cost"]["model_usd"].as_f64().unwrap(), spent));
    if cli == Cli::Claude {
        // The turn that crossed the cap is paid; its tool call is not run.
        assert!(!agent_events(&events)
            .iter()
            .any(|e| e["kind"] == "tool_result"));
    }

    // The request's max_cost_usd wins over the worker's default.
    model.set_script(scripted(cli));
    let (_, events) = run_task(
        &w,
        json!({"prompt": "Write NOTES.md, please.", "max_cost_usd": 1.0}),
    );
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "done", "{done}");
    assert!(close(
        done["agent"]["cost_usd"].as_f64().unwrap(),
        cost_of(&model.script_total())
    ));
}

#[test]
fn claude_edits_the_rig_and_the_worker_reports_its_usage_and_cost() {
    edits_the_rig_and_reports_usage_and_cost(Cli::Claude);
}

#[test]
fn opencode_edits_the_rig_and_the_worker_reports_its_usage_and_cost() {
    edits_the_rig_and_reports_usage_and_cost(Cli::Opencode);
}

#[test]
fn claude_with_a_bad_key_ends_agent_auth() {
    bad_key_ends_agent_auth(Cli::Claude);
}

#[test]
fn opencode_with_a_bad_key_ends_agent_auth() {
    bad_key_ends_agent_auth(Cli::Opencode);
}

#[test]
fn claude_over_its_budget_ends_budget_exceeded() {
    over_budget_ends_budget_exceeded(Cli::Claude);
}

#[test]
fn opencode_over_its_budget_is_stopped_by_the_worker() {
    over_budget_ends_budget_exceeded(Cli::Opencode);
}

#[test]
fn max_cost_usd_must_be_a_positive_number() {
    let w = Worker::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = h1();
        for bad in [json!(-1), json!(0), json!("1")] {
            let r = c
                .post(w.url("/work"))
                .header("accept", "application/json")
                .json(&json!({"prompt": "true", "max_cost_usd": bad}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{bad}");
            let body: Value = r.json().await.unwrap();
            assert!(body.to_string().contains("max_cost_usd"), "{body}");
        }
    });
}

/// opencode may not exit after its last step (docs/agents.md). The real CLI exits
/// here (`OPENCODE_PURE=1`), so this stands in a program named `opencode` that prints a
/// captured opencode run (tests/fixtures/agents/opencode-tool.pty) and then stays: the
/// worker stops it a grace after the parser saw the end of the run, and the task ends
/// by the run's result (`done`), not as cancelled or killed.
#[test]
fn an_agent_that_hangs_after_its_result_is_stopped_and_the_task_ends_by_the_result() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fixture = dir.path().join("opencode-tool.pty");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/agents/opencode-tool.pty"
        ),
        &fixture,
    )
    .unwrap();
    std::fs::set_permissions(&fixture, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let program = bin.join("opencode");
    std::fs::write(
        &program,
        format!("#!/bin/sh\ncat '{}'\nexec sleep 4371\n", fixture.display()),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let w = Worker::start(&[("OUTPOST_AGENT", "opencode"), ("PATH", &path)]);
    let (_, events) = run_task(&w, json!({"prompt": "Write NOTES.md, please."}));
    assert_complete(&events, 1);
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "done", "{done}\nlog:\n{}", w.log_text());
    assert!(done["error_code"].is_null(), "{done}");
    // It was killed: the exit code says so.
    assert_eq!(done["exit_code"], 137, "{done}");
    let a = &done["agent"];
    assert_eq!(a["name"], "opencode");
    assert_eq!(a["num_turns"], 2);
    assert!(a["cost_usd"].as_f64().unwrap() > 0.0, "{a}");
    assert!(a["session_id"].as_str().unwrap().starts_with("ses_"), "{a}");
    assert!(agent_events(&events)
        .iter()
        .any(|e| e["kind"] == "result" && e["is_error"] == false));
    // Nothing of it is left.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.lines().any(|l| l.trim() == "sleep 4371"), "{ps}");
}

/// Where the operator runs agents as root (`OUTPOST_AGENT_USER=root`), Claude Code's
/// refusal of `--dangerously-skip-permissions` as root is lifted (`IS_SANDBOX=1`).
#[test]
fn claude_runs_as_root_where_the_operator_chose_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let model = ModelServer::start(scripted(Cli::Claude));
    let w = agent_worker(
        Cli::Claude,
        &model,
        &model.api_key(),
        &[("OUTPOST_AGENT_USER", "root")],
    );
    let (_, events) = run_task(&w, json!({"prompt": "Write NOTES.md, please."}));
    let done = &events.last().unwrap().data;
    assert_eq!(
        done["status"],
        "done",
        "{done}\noutput:\n{}",
        String::from_utf8_lossy(&output_of(&events))
    );
    assert_eq!(done["agent"]["num_turns"], 2, "{done}");
}
