//! Sessions that survive interruption (issue 11, point 5), with the real agent CLIs
//! run by a real worker against the scripted model server and the test git server.
//!
//! Per CLI (Claude Code, opencode): a task with an `issue_id` makes a tool call (it
//! writes NOTES.md), then the model server holds the next turn, so the worker's SIGTERM
//! lands mid-session; the worker drains (checkpoint pushed, task `interrupted`) and
//! exits. A new worker on the same data dir takes a new `POST /work` with the same
//! `issue_id`: the task object and `done` say `resumed_from: <first task>`, the agent
//! continues its session (same session id; the model server's first request of the
//! resumed run holds the earlier prompt and tool call), and the worktree began from the
//! pushed checkpoint (the new commit's parent is the checkpoint, and the resumed tool
//! call read NOTES.md from it). `"fresh": true` after an interruption starts a new
//! session instead. Two workers sharing one data dir: the second refuses the issue the
//! first runs with 409 `duplicate_issue` naming the first's task, and takes it once the
//! first worker is killed (the kernel dropped the lock).
//!
//! Needs the pinned CLIs of tests/setup/20-agents.sh in /opt/outpost-agents (or
//! `OUTPOST_AGENTS_PREFIX`).

mod common;
mod gitserver;
mod modelserver;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use gitserver::GitServer;
use modelserver::agents::{worker_env, Cli, TEXT_USAGE, TOOL_USAGE};
use modelserver::{ModelServer, Recorded, Reply, Script, Step};
use serde_json::{json, Value};

/// One task with an agent run (Claude Code 1-5 s, opencode 15-30 s; more when loaded).
const T: Duration = Duration::from_secs(240);

const EDIT: &str = "edited by the scripted model";
const FIRST_PROMPT: &str = "Write NOTES.md, please.";
const SECOND_PROMPT: &str = "Carry on where you stopped.";

fn bash(cli: Cli) -> &'static str {
    match cli {
        Cli::Claude => "Bash",
        Cli::Opencode => "bash",
    }
}

fn tool_step(cli: Cli, command: &str) -> Step {
    Step {
        reply: Reply::ToolUse {
            name: bash(cli).into(),
            input: json!({"command": command, "description": "A scripted command"}),
        },
        usage: TOOL_USAGE,
    }
}

/// The first run: a tool call that writes NOTES.md, then a turn the server holds.
fn interrupted_script(cli: Cli) -> Script {
    let mut s = Script::tool_then_text(bash(cli), json!({}), TOOL_USAGE, "", TEXT_USAGE);
    s.steps = vec![
        tool_step(cli, &format!("printf '{EDIT}\\n' > NOTES.md")),
        Step {
            reply: Reply::Stall,
            usage: TEXT_USAGE,
        },
    ];
    s
}

/// The resumed run: copies NOTES.md (there only if the worktree began from the
/// checkpoint) to SEEN.md, then a final text.
fn resumed_script(cli: Cli) -> Script {
    let mut s = Script::tool_then_text(bash(cli), json!({}), TOOL_USAGE, "Done.", TEXT_USAGE);
    s.steps[0] = tool_step(cli, "cp NOTES.md SEEN.md");
    s
}

fn agent_env(cli: Cli, model: &ModelServer) -> Vec<(String, String)> {
    let mut env = worker_env(cli, model, &model.api_key());
    // Room for the drain's checkpoint on a loaded machine.
    env.push(("OUTPOST_GRACE_S".into(), "10".into()));
    env
}

fn start(data: &Path, env: &[(String, String)]) -> Worker {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Worker::start_on(data, free_port(), &env)
}

/// Waits (4 minutes at most) until the model server holds the agent's next turn: the
/// session is then mid-way, its tool call done.
fn wait_for_held_turn(model: &ModelServer, w: &Worker) {
    for _ in 0..2400 {
        if model.stalled() > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the agent never reached the held turn; log:\n{}",
        w.log_text()
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// POSTs a task (JSON reply); returns the task object of the 202.
async fn post(c: &reqwest::Client, w: &Worker, body: &Value) -> Value {
    let r = c
        .post(w.url("/work"))
        .header("accept", "application/json")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 202, "{text}\nlog:\n{}", w.log_text());
    serde_json::from_str(&text).unwrap()
}

/// The conversation requests the model server answered (not the held one).
fn answered_turns(model: &ModelServer) -> Vec<Recorded> {
    model
        .turns()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect()
}

/// A worker ran a task of `issue` to the held turn and was SIGTERMed there; the task
/// ended `interrupted` with its checkpoint pushed.
struct Interrupted {
    git: GitServer,
    model: ModelServer,
    _tmp: tempfile::TempDir,
    data: PathBuf,
    env: Vec<(String, String)>,
    issue: String,
    body: Value,
    first: Value,
}

/// Interrupts the first task with `signal` to its worker: SIGTERM (a drain: the
/// checkpoint is pushed) or SIGKILL (nothing is pushed; the restarted worker ends the
/// task `interrupted`).
fn interrupt(cli: Cli, issue: &str, signal: i32) -> Interrupted {
    let git = GitServer::start(false);
    git.create_repo("rig", &[("README.md", "hello\n")]);
    let model = ModelServer::start(interrupted_script(cli));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let env = agent_env(cli, &model);
    let body = json!({"issue_id": issue, "rig_url": git.url("rig"), "ref": "main",
                      "prompt": FIRST_PROMPT});
    let mut w = start(&data, &env);
    let id = rt().block_on(async {
        let c = h1();
        let t = post(&c, &w, &body).await;
        assert!(t.get("resumed_from").is_none(), "{t}");
        t["id"].as_str().unwrap().to_string()
    });
    // Mid-session: the tool call ran, the next turn is held by the server.
    wait_for_held_turn(&model, &w);
    let st = w.signal_and_wait(signal, Duration::from_secs(60));
    assert!(
        st.is_some_and(|s| s.success() || signal == libc::SIGKILL),
        "{st:?}; log:\n{}",
        w.log_text()
    );
    // What the drained worker left, read back by a new worker on the same data dir.
    let w = start(&data, &env);
    let first: Value =
        rt().block_on(async { get_json(&h1(), w.url(&format!("/work/{id}"))).await });
    drop(w);
    assert_eq!(first["status"], "interrupted", "{first}");
    if signal == libc::SIGKILL {
        assert!(first["commit"].is_null(), "{first}");
    } else {
        let checkpoint = first["commit"]
            .as_str()
            .unwrap_or_else(|| panic!("no checkpoint in {first}"));
        assert_eq!(
            git.git(
                "rig",
                &["rev-parse", &format!("refs/heads/polecat/{issue}")]
            ),
            checkpoint
        );
        assert_eq!(
            git.git("rig", &["show", &format!("{checkpoint}:NOTES.md")])
                .trim(),
            EDIT
        );
        assert!(
            first["agent"]["session_id"].as_str().is_some(),
            "the interrupted run's session: {first}"
        );
    }
    Interrupted {
        git,
        model,
        _tmp: tmp,
        data,
        env,
        issue: issue.to_string(),
        body,
        first,
    }
}

/// Submits `body` to a new worker on the data dir and follows the task to `done`.
fn run_again(s: &Interrupted, body: Value) -> (Value, Vec<Event>, Worker) {
    let w = start(&s.data, &s.env);
    let (task, events) = rt().block_on(async {
        let c = h1();
        let task = post(&c, &w, &body).await;
        let id = task["id"].as_str().unwrap().to_string();
        let events = Sse::new(open_events(&c, &w, &id).await).collect(T).await;
        (task, events)
    });
    (task, events, w)
}

fn resumes_after_sigterm_and_restart(cli: Cli) {
    let s = interrupt(cli, &format!("gt-resume-{}", cli.name()), libc::SIGTERM);
    let first_id = s.first["id"].as_str().unwrap();
    let checkpoint = s.first["commit"].as_str().unwrap();
    let session = s.first["agent"]["session_id"].as_str().unwrap();
    s.model.set_script(resumed_script(cli));
    s.model.clear_requests();
    let mut body = s.body.clone();
    body["prompt"] = json!(SECOND_PROMPT);
    let (task, events, w) = run_again(&s, body);
    assert_eq!(task["resumed_from"], first_id, "{task}");
    assert_complete(&events, 1);
    let done = &events.last().unwrap().data;
    assert_eq!(
        done["status"],
        "done",
        "{done}\noutput:\n{}\nlog:\n{}",
        String::from_utf8_lossy(&output_of(&events)),
        w.log_text()
    );
    assert_eq!(done["resumed_from"], first_id, "{done}");
    // The agent continued its own session.
    assert_eq!(done["agent"]["session_id"], session, "{done}");
    // The resumed run's first request carries the earlier turns.
    let turns = answered_turns(&s.model);
    let text = turns
        .first()
        .unwrap_or_else(|| panic!("no turn reached the model server"))
        .messages_text();
    assert!(text.contains(FIRST_PROMPT), "{text}");
    assert!(text.contains(&format!("printf '{EDIT}")), "{text}");
    assert!(text.contains(SECOND_PROMPT), "{text}");
    // The worktree began from the pushed checkpoint: the resumed tool call found
    // NOTES.md there, and the new commit sits on the checkpoint.
    let commit = done["commit"].as_str().expect("a pushed commit");
    assert_eq!(
        s.git.git("rig", &["rev-parse", &format!("{commit}^")]),
        checkpoint
    );
    assert_eq!(
        s.git
            .git("rig", &["show", &format!("{commit}:SEEN.md")])
            .trim(),
        EDIT
    );
    assert_eq!(
        s.git.git(
            "rig",
            &["rev-parse", &format!("refs/heads/polecat/{}", s.issue)]
        ),
        commit
    );
    // The task object says so too, and the issue's record names the resumed task.
    let id = task["id"].as_str().unwrap();
    let view: Value = rt().block_on(async { get_json(&h1(), w.url(&format!("/work/{id}"))).await });
    assert_eq!(view["resumed_from"], first_id, "{view}");
    let record: Value = serde_json::from_slice(
        &std::fs::read(s.data.join("sessions").join(&s.issue).join("session.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["task_id"], id, "{record}");
    assert_eq!(record["status"], "done", "{record}");
    assert_eq!(record["session_id"], session, "{record}");
    assert_eq!(record["commit"], commit, "{record}");
}

#[test]
fn claude_resumes_its_session_after_a_sigterm_and_a_restart() {
    resumes_after_sigterm_and_restart(Cli::Claude);
}

#[test]
fn opencode_resumes_its_session_after_a_sigterm_and_a_restart() {
    resumes_after_sigterm_and_restart(Cli::Opencode);
}

/// kill -9 of the worker mid-session: nothing was pushed, the restarted worker ended
/// the task `interrupted`, and the next task of the issue continues the agent's
/// session (its transcript kept the turns before the kill) in a worktree from `ref`.
#[test]
fn claude_resumes_its_session_after_the_worker_is_killed() {
    let cli = Cli::Claude;
    let s = interrupt(cli, "gt-killed", libc::SIGKILL);
    let first_id = s.first["id"].as_str().unwrap();
    // The session id the worker fixed at admission and kept in the issue's record.
    let record: Value = serde_json::from_slice(
        &std::fs::read(s.data.join("sessions/gt-killed/session.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["task_id"], first_id, "{record}");
    assert_eq!(record["status"], "running", "{record}");
    let session = record["session_id"]
        .as_str()
        .expect("a session id")
        .to_string();
    let mut script = resumed_script(cli);
    script.steps.remove(0);
    s.model.set_script(script);
    s.model.clear_requests();
    let mut body = s.body.clone();
    body["prompt"] = json!(SECOND_PROMPT);
    let (task, events, w) = run_again(&s, body);
    assert_eq!(task["resumed_from"], first_id, "{task}");
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "done", "{done}\nlog:\n{}", w.log_text());
    assert_eq!(done["resumed_from"], first_id, "{done}");
    assert_eq!(done["agent"]["session_id"], session.as_str(), "{done}");
    let turns = answered_turns(&s.model);
    let text = turns.first().expect("a turn").messages_text();
    assert!(text.contains(FIRST_PROMPT), "{text}");
    assert!(text.contains(&format!("printf '{EDIT}")), "{text}");
}

/// `"fresh": true` after an interruption: a new session, no `resumed_from`, none of
/// the earlier turns sent.
#[test]
fn fresh_starts_a_new_session_after_an_interruption() {
    let cli = Cli::Claude;
    let s = interrupt(cli, "gt-fresh", libc::SIGTERM);
    let session = s.first["agent"]["session_id"].as_str().unwrap();
    let mut script = resumed_script(cli);
    script.steps.remove(0);
    s.model.set_script(script);
    s.model.clear_requests();
    let mut body = s.body.clone();
    body["prompt"] = json!(SECOND_PROMPT);
    body["fresh"] = json!(true);
    let (task, events, w) = run_again(&s, body);
    assert!(task.get("resumed_from").is_none(), "{task}");
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "done", "{done}\nlog:\n{}", w.log_text());
    assert!(done.get("resumed_from").is_none(), "{done}");
    let new_session = done["agent"]["session_id"].as_str().expect("a session id");
    assert_ne!(new_session, session);
    let turns = answered_turns(&s.model);
    let text = turns.first().expect("a turn").messages_text();
    assert!(text.contains(SECOND_PROMPT), "{text}");
    assert!(!text.contains(FIRST_PROMPT), "{text}");
    assert!(!text.contains(EDIT), "{text}");
}

/// Two workers on one data dir: the issue's lock keeps the second off the issue the
/// first runs (409 `duplicate_issue` with the first's task id), until the first dies.
#[test]
fn two_workers_sharing_a_data_dir_never_run_one_issue_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut a = Worker::start_on(&data, free_port(), &[]);
    // Its own agent uid: the uid fallback kills what its slot's uid runs.
    let b = Worker::start_on(&data, free_port(), &[("OUTPOST_AGENT_USER", "63990")]);
    let body = json!({"issue_id": "gt-shared", "prompt": "sleep 45"});
    let rt = rt();
    let first = rt.block_on(async { post(&h1(), &a, &body).await });
    let first_id = first["id"].as_str().unwrap();
    let refused = rt.block_on(async {
        let r = h1()
            .post(b.url("/work"))
            .header("accept", "application/json")
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    });
    assert_eq!(refused.0, 409, "{}", refused.1);
    assert_eq!(
        refused.1["error"]["code"], "duplicate_issue",
        "{}",
        refused.1
    );
    assert_eq!(refused.1["error"]["id"], first_id, "{}", refused.1);
    // Another issue is fine on the second worker.
    let other = rt.block_on(async {
        let c = h1();
        let t = post(&c, &b, &json!({"issue_id": "gt-other", "prompt": "true"})).await;
        let id = t["id"].as_str().unwrap().to_string();
        wait_terminal(&c, &b, &id, Duration::from_secs(60)).await
    });
    assert_eq!(other["status"], "done", "{other}");
    // The first worker dies holding the issue: the kernel drops its lock.
    a.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
    let taken = rt.block_on(async {
        let c = h1();
        let t = post(&c, &b, &body).await;
        let id = t["id"].as_str().unwrap().to_string();
        assert_eq!(cancel(&c, &b, &id).await.status(), 202);
        wait_terminal(&c, &b, &id, Duration::from_secs(60)).await
    });
    assert_eq!(taken["status"], "cancelled", "{taken}");
    // The shell agent has no session to continue.
    assert!(taken.get("resumed_from").is_none(), "{taken}");
    // On one worker, the live issue still answers 409 with the same shape.
    let rt2 = rt.block_on(async {
        let c = h1();
        let t = post(&c, &b, &body).await;
        let r = c
            .post(b.url("/work"))
            .header("accept", "application/json")
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = r.status();
        let v: Value = r.json().await.unwrap();
        let id = t["id"].as_str().unwrap().to_string();
        cancel(&c, &b, &id).await;
        (st, v, id)
    });
    assert_eq!(rt2.0, 409);
    assert_eq!(rt2.1["error"]["code"], "duplicate_issue");
    assert_eq!(rt2.1["error"]["id"], rt2.2);
}

/// Without a rig the agent works in a scratch dir: a resumed task gets the same path
/// (opencode resumes a session only from the directory it was created in, and would
/// otherwise hang without a word).
#[test]
fn opencode_resumes_a_session_in_a_scratch_dir() {
    let cli = Cli::Opencode;
    let model = ModelServer::start(interrupted_script(cli));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let env = agent_env(cli, &model);
    let body = json!({"issue_id": "gt-scratch", "prompt": FIRST_PROMPT});
    let mut w = start(&data, &env);
    let first_id = rt().block_on(async {
        let t = post(&h1(), &w, &body).await;
        t["id"].as_str().unwrap().to_string()
    });
    wait_for_held_turn(&model, &w);
    w.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
    let mut script = resumed_script(cli);
    script.steps.remove(0);
    model.set_script(script);
    model.clear_requests();
    let w = start(&data, &env);
    let (task, events) = rt().block_on(async {
        let c = h1();
        let t = post(
            &c,
            &w,
            &json!({"issue_id": "gt-scratch", "prompt": SECOND_PROMPT}),
        )
        .await;
        let id = t["id"].as_str().unwrap().to_string();
        (t, Sse::new(open_events(&c, &w, &id).await).collect(T).await)
    });
    assert_eq!(task["resumed_from"], first_id.as_str(), "{task}");
    let done = &events.last().unwrap().data;
    assert_eq!(
        done["status"],
        "done",
        "{done}\noutput:\n{}\nlog:\n{}",
        String::from_utf8_lossy(&output_of(&events)),
        w.log_text()
    );
    let text = answered_turns(&model)
        .first()
        .expect("a turn")
        .messages_text();
    assert!(text.contains(FIRST_PROMPT), "{text}");
    assert!(text.contains(&format!("printf '{EDIT}")), "{text}");
    // Nothing of either run is left in the run dir.
    let left: Vec<_> = std::fs::read_dir(data.join("run"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A task that failed (here: its `timeout_s` passed while the model server held a
/// turn) is continued by the next task of its issue on the same worker, no restart.
#[test]
fn claude_continues_a_task_that_failed() {
    let cli = Cli::Claude;
    let git = GitServer::start(false);
    git.create_repo("rig", &[("README.md", "hello\n")]);
    let model = ModelServer::start(interrupted_script(cli));
    let tmp = tempfile::tempdir().unwrap();
    let env = agent_env(cli, &model);
    let w = start(&tmp.path().join("data"), &env);
    let body = json!({"issue_id": "gt-failed", "rig_url": git.url("rig"), "ref": "main",
                      "prompt": FIRST_PROMPT, "timeout_s": 30});
    let rt = rt();
    let first = rt.block_on(async {
        let c = h1();
        let t = post(&c, &w, &body).await;
        let id = t["id"].as_str().unwrap().to_string();
        wait_terminal(&c, &w, &id, T).await
    });
    assert_eq!(first["status"], "failed", "{first}");
    assert_eq!(first["error_code"], "timeout", "{first}");
    let mut script = resumed_script(cli);
    script.steps.remove(0);
    model.set_script(script);
    model.clear_requests();
    let mut again = body.clone();
    again["prompt"] = json!(SECOND_PROMPT);
    again["timeout_s"] = json!(null);
    let (task, done) = rt.block_on(async {
        let c = h1();
        let t = post(&c, &w, &again).await;
        let id = t["id"].as_str().unwrap().to_string();
        let events = Sse::new(open_events(&c, &w, &id).await).collect(T).await;
        (t, events.last().unwrap().data.clone())
    });
    assert_eq!(task["resumed_from"], first["id"], "{task}");
    assert_eq!(done["status"], "done", "{done}\nlog:\n{}", w.log_text());
    assert_eq!(done["resumed_from"], first["id"], "{done}");
    assert_eq!(done["agent"]["session_id"], first["agent"]["session_id"]);
    let text = answered_turns(&model)
        .first()
        .expect("a turn")
        .messages_text();
    assert!(text.contains(FIRST_PROMPT), "{text}");
    assert!(text.contains(SECOND_PROMPT), "{text}");
}
