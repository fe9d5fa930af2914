//! A pool of three real workers in order of preference, one full (OUTPOST_MAX_TASKS=1
//! with a sleeping task), one stopped, one free: `outpost run` lands on the free one;
//! the same `issue_id` twice attaches instead of starting twice; a pool file with a
//! token file; `status` as a table; waiting for room, and giving up.

mod clientkit;
mod common;

use std::time::Duration;

use clientkit::{run, Client};
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn tasks(w: &Worker) -> Vec<Value> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(get_json(&h1(), w.url("/work")))
}

fn authed_tasks(w: &Worker, token: &str) -> Vec<Value> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        h1().get(w.url("/work"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
}

/// A full worker (one slot, taken by a sleeping task), a stopped one, a free one.
fn three() -> (Worker, Worker, Worker) {
    let full = Worker::start(&[("OUTPOST_MAX_TASKS", "1")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(submit(&h1(), &full, json!({"prompt": "sleep 30"})));
    let mut stopped = Worker::start(&[]);
    stopped.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    let free = Worker::start(&[("OUTPOST_MAX_TASKS", "4"), ("OUTPOST_TOKEN", "c-secret")]);
    (full, stopped, free)
}

#[test]
fn run_lands_on_the_free_outpost_and_a_live_issue_is_attached_not_started_twice() {
    let (full, stopped, free) = three();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.token"), "c-secret\n").unwrap();
    let pool = dir.path().join("pool.toml");
    std::fs::write(
        &pool,
        format!(
            "# in order of preference\n[[outpost]]\nurl = \"{}\"\n\n[[outpost]]\nurl = \"{}\"\n\n[[outpost]]\nurl = \"{}\"\ntoken_file = \"c.token\"\n",
            full.url(""),
            stopped.url(""),
            free.url("")
        ),
    )
    .unwrap();
    let pool = pool.to_str().unwrap();
    let with_pool = |args: &[&str]| {
        let (mut cmd, _home) = clientkit::command(args);
        let out = cmd.env("OUTPOST_POOL", pool).output().unwrap();
        (
            out.status.code().unwrap(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, stderr) = with_pool(&["run", "echo placed"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out, b"placed\r\n");
    assert!(
        stderr.contains(&format!("skipping {}: busy", full.url(""))),
        "{stderr}"
    );
    assert!(stderr.contains(&stopped.url("")), "{stderr}");
    assert!(
        stderr.contains(&format!("started on {}", free.url(""))),
        "{stderr}"
    );
    assert_eq!(tasks(&full).len(), 1, "only the sleeping task");
    assert_eq!(authed_tasks(&free, "c-secret").len(), 1);

    let (code, out, stderr) = with_pool(&["status"]);
    assert_eq!(code, 1, "one outpost is unreachable");
    let table = String::from_utf8(out).unwrap();
    assert!(table.starts_with("OUTPOST"), "{table}");
    assert!(table.contains("busy") && table.contains("1/1"), "{table}");
    assert!(table.contains("unreachable"), "{table}");
    assert!(
        table.contains("available") && table.contains("0/4"),
        "{table}"
    );
    assert!(
        stderr.contains(&stopped.url("")) && stderr.contains("connect"),
        "{stderr}"
    );

    // The same issue twice: the second run attaches to the first's task.
    let urls = [full.url(""), stopped.url(""), free.url("")];
    let mut args = vec!["run", "--token", "c-secret", "--issue", "gt-dup"];
    for u in &urls {
        args.extend(["--url", u.as_str()]);
    }
    let mut first_args = args.clone();
    first_args.push("echo first; sleep 2; echo end");
    let mut first = Client::spawn(&first_args);
    first.wait_stdout(b"first", T);
    let mut second_args = args.clone();
    second_args.push("echo second");
    let (code, out, stderr) = run(&second_args, T);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("already live"), "{stderr}");
    assert_eq!(out, b"first\r\nend\r\n", "the first task's whole output");
    assert_eq!(first.wait(T), 0);
    assert_eq!(first.stdout_bytes(), b"first\r\nend\r\n");
    let dup: Vec<Value> = authed_tasks(&free, "c-secret")
        .into_iter()
        .filter(|t| t["issue_id"] == "gt-dup")
        .collect();
    assert_eq!(dup.len(), 1, "started once: {dup:?}");
    assert_eq!(tasks(&full).len(), 1);
}

#[test]
fn a_full_pool_waits_for_room_and_gives_up_after_the_wait() {
    let full = Worker::start(&[("OUTPOST_MAX_TASKS", "1")]);
    let url = full.url("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(submit(&h1(), &full, json!({"prompt": "sleep 3"})));
    let (code, _, stderr) = run(&["run", "--url", &url, "--wait", "0.5", "true"], T);
    assert_eq!(code, 200, "refused: {stderr}");
    assert!(stderr.contains("no outpost had room"), "{stderr}");
    // Wait long enough: it starts when the sleeping task is over.
    let (code, out, stderr) = run(&["run", "--url", &url, "--wait", "30", "echo got in"], T);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out, b"got in\r\n");
    assert!(stderr.contains("every outpost is full"), "{stderr}");
    let first = rt.block_on(wait_terminal(&h1(), &full, &id, T));
    assert_eq!(first["status"], "done");
}
