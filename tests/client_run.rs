//! `outpost run` against a real worker on loopback: the bytes on stdout are exactly the
//! agent's (binary and split UTF-8 included) across a SIGKILL and restart of the worker
//! and across connections a proxy cuts mid-stream (HTTP/1.1 and h2c); the exit codes
//! for done, failed, cancelled, refused, interrupted and lost; clone progress as plain
//! lines when stderr is not a terminal, and as a bar redrawn in place on a terminal.

mod clientkit;
mod common;
mod gitserver;

use std::time::Duration;

use clientkit::{run, Client, Proxy, Pty};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// The agent's bytes: rows with a UTF-8 character written in two halves (a pause
/// between them now and then) and bytes that are not UTF-8.
const ROWS_SCRIPT: &str = "i=0; while [ $i -lt ROWS ]; do printf 'row %03d caf\\303' $i; \
     [ $((i % 20)) = 0 ] && sleep PAUSE; printf '\\251 bin:\\377\\376\\001 end\\n'; i=$((i+1)); done";

fn rows_script(rows: usize, pause: &str) -> String {
    ROWS_SCRIPT
        .replace("ROWS", &rows.to_string())
        .replace("PAUSE", pause)
}

/// What the terminal of `rows_script(rows, _)` shows (the PTY turns `\n` into `\r\n`).
fn rows_expected(rows: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..rows {
        v.extend_from_slice(format!("row {i:03} caf").as_bytes());
        v.extend_from_slice(b"\xc3\xa9 bin:\xff\xfe\x01 end\r\n");
    }
    v
}

fn task_ids(w: &Worker) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let v: Vec<Value> = rt.block_on(get_json(&h1(), w.url("/work")));
    v.iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn output_is_exact_across_a_kill_9_and_restart_then_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let mut w = Worker::start_on(&data, port, &[]);
    let url = w.url("");
    // Slow rows: the worker is killed while the agent is still writing.
    let script = rows_script(400, "0.3");
    let mut c = Client::spawn(&["run", "--url", &url, "--reconnect-for", "30", &script]);
    c.wait_stdout(b"row 025 ", T);
    w.signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .expect("the worker died of SIGKILL");
    std::thread::sleep(Duration::from_millis(700));
    let w = Worker::start_on(&data, port, &[]);
    let code = c.wait(T);
    let stderr = c.stderr_text();
    assert_eq!(code, 202, "interrupted; stderr:\n{stderr}");
    assert!(stderr.contains("resum"), "{stderr}");
    assert!(stderr.contains(" interrupted"), "{stderr}");
    let out = c.stdout_bytes();
    let ids = task_ids(&w);
    assert_eq!(ids.len(), 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let logged = rt.block_on(async {
        h1().get(w.url(&format!("/work/{}/log", ids[0])))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    assert_eq!(out, logged.to_vec(), "stdout is the task's whole output");
    let full = rows_expected(400);
    assert!(
        out.len() > 25 * 20 && out.len() < full.len(),
        "{}",
        out.len()
    );
    assert_eq!(
        out[..],
        full[..out.len()],
        "a prefix of what the agent wrote"
    );
}

fn through_cutting_proxy(http2: bool) {
    let w = Worker::start(&[]);
    let proxy = Proxy::start(w.port, 3, 3000);
    let script = rows_script(400, "0.05");
    let mut args = vec!["run", "--url"];
    let url = proxy.url();
    args.push(&url);
    if http2 {
        args.push("--http2");
    }
    args.push(&script);
    let (code, out, stderr) = run(&args, T);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert_eq!(proxy.cuts(), 3, "the proxy cut three streams");
    assert_eq!(out.len(), rows_expected(400).len(), "stderr:\n{stderr}");
    assert!(out == rows_expected(400), "bytes differ");
    assert_eq!(stderr.matches("resumed after event").count(), 3, "{stderr}");
}

#[test]
fn output_is_exact_when_a_proxy_cuts_http1_streams() {
    through_cutting_proxy(false);
}

#[test]
fn output_is_exact_when_a_proxy_cuts_the_h2c_connection() {
    through_cutting_proxy(true);
}

#[test]
fn output_is_exact_when_the_worker_ends_streams_at_stream_max() {
    // The worker's own time limit (Cloud Run's request timeout in miniature): every
    // response ends cleanly after 1 s with a retry hint, and the client resumes.
    let w = Worker::start(&[("OUTPOST_STREAM_MAX_S", "1")]);
    let url = w.url("");
    let script = rows_script(200, "0.2");
    let (code, out, stderr) = run(&["run", "--url", &url, &script], T);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert!(out == rows_expected(200), "bytes differ; stderr:\n{stderr}");
    assert!(
        stderr.matches("resumed after event").count() >= 1,
        "the 2 s task was never cut: {stderr}"
    );
}

#[test]
fn exit_codes_for_done_failed_refused_and_json_events() {
    let w = Worker::start(&[]);
    let url = w.url("");
    let (code, out, _) = run(&["run", "--url", &url, "printf hi"], T);
    assert_eq!((code, out.as_slice()), (0, &b"hi"[..]));
    let (code, _, stderr) = run(&["run", "--url", &url, "exit 7"], T);
    assert_eq!(code, 7, "the task's own exit code; {stderr}");
    assert!(stderr.contains("failed · exit 7"), "{stderr}");
    let (code, _, stderr) = run(&["run", "--url", &url, "--branch", "bad..name", "true"], T);
    assert_eq!(code, 200, "refused: {stderr}");
    assert!(stderr.contains("invalid_field"), "{stderr}");
    // --json: the events as NDJSON, ids in order, ending with done.
    let (code, out, _) = run(&["run", "--url", &url, "--json", "printf x"], T);
    assert_eq!(code, 0);
    let events: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["id"], i as u64 + 1);
    }
    assert_eq!(events.last().unwrap()["event"], "done");
    assert!(events
        .iter()
        .any(|e| e["event"] == "output" && e["data"] == "x"));
}

#[test]
fn exit_codes_for_cancelled_and_lost() {
    let mut w = Worker::start(&[]);
    let url = w.url("");
    let mut c = Client::spawn(&["run", "--url", &url, "echo started; sleep 30"]);
    c.wait_stdout(b"started", T);
    let id = task_ids(&w).remove(0);
    let (code, out, stderr) = run(&["cancel", "--url", &url, &id], T);
    assert_eq!(code, 0, "{stderr}");
    assert!(String::from_utf8_lossy(&out).contains("cancelling"));
    assert_eq!(c.wait(T), 201, "cancelled; {}", c.stderr_text());
    // `attach` of a finished task: its end again, with the same exit code.
    let (code, _, stderr) = run(&["attach", "--url", &url, &id], T);
    assert_eq!(code, 201, "{stderr}");
    // The worker goes away for good: the client gives up after its window.
    let mut c = Client::spawn(&[
        "run",
        "--url",
        &url,
        "--reconnect-for",
        "2",
        "echo started; sleep 30",
    ]);
    c.wait_stdout(b"started", T);
    w.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    assert_eq!(c.wait(T), 203, "lost; {}", c.stderr_text());
    assert!(c.stderr_text().contains("gave up reconnecting"));
}

/// A git server with a repository `rig` of 60 files, and a worker allowed to clone it.
fn git_setup() -> (gitserver::GitServer, Worker) {
    let srv = gitserver::GitServer::start(false);
    let files: Vec<(String, String)> = (0..60)
        .map(|i| (format!("f{i}.txt"), format!("file {i}\n").repeat(50)))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    srv.create_repo("rig", &refs);
    let w = Worker::start(&[
        ("OUTPOST_ALLOW_HTTP", "1"),
        ("OUTPOST_ALLOWED_HOSTS", "127.0.0.1"),
    ]);
    (srv, w)
}

/// `outpost run` of `prompt` on a clone of `rig`.
fn clone_args(srv: &gitserver::GitServer, w: &Worker, prompt: &str) -> Vec<String> {
    [
        "run",
        "--url",
        &w.url(""),
        "--repo",
        &srv.url("rig"),
        prompt,
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn clone_progress_is_a_bar_on_a_terminal() {
    let (srv, w) = git_setup();
    let args = clone_args(&srv, &w, "echo the-end");
    let mut pty = Pty::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(pty.wait_exit(), 0, "{}", pty.text());
    let screen = pty.text();
    assert!(
        screen.contains("\r\x1b[2Kclone [") && screen.contains("] 100% "),
        "{screen:?}"
    );
    assert!(screen.contains("the-end"), "{screen:?}");
}

#[test]
fn clone_progress_is_plain_lines_when_stderr_is_not_a_terminal() {
    let (srv, w) = git_setup();
    let args = clone_args(&srv, &w, "ls | wc -l");
    let (code, out, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), T);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), "60");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("clone ")).collect();
    assert!(!lines.is_empty(), "{stderr}");
    assert!(lines.iter().any(|l| l.contains("clone 100%")), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains("\x1b["),
        "{stderr:?}"
    );
    assert!(
        stderr.contains("commit") || stderr.contains("done"),
        "{stderr}"
    );
}
