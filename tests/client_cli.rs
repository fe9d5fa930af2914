//! The other client commands and settings against real workers: TLS with `--cacert`
//! (ALPN picks h2), a token from `--token-file` and the 401 that says what to
//! do without one, `ls` and `logs`, and Ctrl-C (SIGINT) detaching or, with
//! `--cancel-on-interrupt`, cancelling.

mod clientkit;
mod common;

use std::time::Duration;

use clientkit::{run, Client};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

#[test]
fn tls_with_a_ca_file_and_alpn() {
    let tmp = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = tmp.path().join("cert.pem");
    let key = tmp.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let w = Worker::start(&[
        ("OUTPOST_TLS_CERT", cert.to_str().unwrap()),
        ("OUTPOST_TLS_KEY", key.to_str().unwrap()),
    ]);
    let url = w.url("");
    assert!(url.starts_with("https://"));
    let cert = cert.to_str().unwrap();
    let (code, out, stderr) = run(&["run", "--url", &url, "--cacert", cert, "printf tls"], T);
    assert_eq!((code, out.as_slice()), (0, &b"tls"[..]), "{stderr}");
    let (code, out, _) = run(&["status", "--url", &url, "--cacert", cert, "--json"], T);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v[0]["hello"]["status"], "available");
    // Without the CA the handshake fails, and the error says what to pass.
    let (code, _, stderr) = run(&["status", "--url", &url], T);
    assert_eq!(code, 1);
    assert!(stderr.contains("--cacert"), "{stderr}");
}

#[test]
fn token_file_ls_logs_and_a_401_that_says_what_to_do() {
    let w = Worker::start(&[("OUTPOST_TOKEN", "s3cret")]);
    let url = w.url("");
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("token");
    std::fs::write(&tf, "s3cret\n").unwrap();
    let tf = tf.to_str().unwrap();
    let (code, _, stderr) = run(&["ls", "--url", &url], T);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("401") && stderr.contains("--token"),
        "{stderr}"
    );
    let (code, out, stderr) = run(
        &["run", "--url", &url, "--token-file", tf, "printf 'a\\377b'"],
        T,
    );
    assert_eq!((code, out.as_slice()), (0, &b"a\xffb"[..]), "{stderr}");
    let (code, out, _) = run(&["ls", "--url", &url, "--token-file", tf], T);
    assert_eq!(code, 0);
    let table = String::from_utf8(out).unwrap();
    let id = table
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        table.starts_with("ID") && table.contains(" done "),
        "{table}"
    );
    let (code, out, _) = run(&["logs", "--url", &url, "--token-file", tf, &id], T);
    assert_eq!((code, out.as_slice()), (0, &b"a\xffb"[..]));
    let (code, _, stderr) = run(&["logs", "--url", &url, "--token-file", tf, "t-nope"], T);
    assert_eq!(code, 1);
    assert!(stderr.contains("404"), "{stderr}");
    let (code, _, stderr) = run(&["run", "--url", &url, "--bogus"], T);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown option --bogus"), "{stderr}");
}

fn live_ids(w: &Worker) -> Vec<(String, String)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let v: Vec<Value> = rt.block_on(get_json(&h1(), w.url("/work")));
    v.iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn ctrl_c_detaches_or_cancels() {
    let w = Worker::start(&[("OUTPOST_MAX_TASKS", "2")]);
    let url = w.url("");
    let mut c = Client::spawn(&["run", "--url", &url, "echo started; sleep 30"]);
    c.wait_stdout(b"started", T);
    unsafe { libc::kill(c.child.id() as i32, libc::SIGINT) };
    assert_eq!(c.wait(T), 130, "{}", c.stderr_text());
    assert!(
        c.stderr_text().contains("outpost attach --url"),
        "{}",
        c.stderr_text()
    );
    let tasks = live_ids(&w);
    assert_eq!(tasks[0].1, "working", "detaching leaves it running");

    let mut c = Client::spawn(&[
        "run",
        "--url",
        &url,
        "--cancel-on-interrupt",
        "echo started; sleep 30",
    ]);
    c.wait_stdout(b"started", T);
    unsafe { libc::kill(c.child.id() as i32, libc::SIGINT) };
    assert_eq!(c.wait(T), 201, "cancelled: {}", c.stderr_text());
    let tasks = live_ids(&w);
    assert_eq!(tasks[0].1, "cancelled");
    assert_eq!(tasks[1].1, "working");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(cancel(&h1(), &w, &tasks[1].0));
}

#[test]
fn run_sends_issue_context_and_timeout() {
    let w = Worker::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx.json");
    std::fs::write(&ctx, r#"{"ticket": {"n": 7}}"#).unwrap();
    let (code, out, stderr) = run(
        &[
            "run",
            "--url",
            &w.url(""),
            "--issue",
            "gt-7",
            "--context",
            ctx.to_str().unwrap(),
            "--timeout",
            "1",
            "cat \"$OUTPOST_CONTEXT\"; echo; echo \"issue=$OUTPOST_ISSUE_ID\"; sleep 5",
        ],
        T,
    );
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(r#"{"ticket":{"n":7}}"#), "{out:?}");
    assert!(out.contains("issue=gt-7"), "{out:?}");
    assert!(stderr.contains("branch polecat/gt-7"), "{stderr}");
    assert!(
        stderr.contains("timed out"),
        "the 1 s timeout reached the worker: {stderr}"
    );
    assert_ne!(code, 0);
    std::fs::write(&ctx, "not json").unwrap();
    let (code, _, stderr) = run(
        &[
            "run",
            "--url",
            &w.url(""),
            "--context",
            ctx.to_str().unwrap(),
            "true",
        ],
        T,
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("is not JSON"), "{stderr}");
}
