//! `outpost attach -i` under a PTY the test drives (portable-pty): the local terminal
//! goes raw, typed text reaches a task running `cat` and comes back (over reused
//! HTTP/1.1 connections), Ctrl-] detaches
//! and leaves the task running, a window size change reaches `stty size` in the agent,
//! and the end of the task ends the attach with its exit code.

mod clientkit;
mod common;

use std::time::{Duration, Instant};

use clientkit::Pty;
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

fn status_of(w: &Worker, id: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let v: Value = rt.block_on(get_json(&h1(), w.url(&format!("/work/{id}"))));
    v["status"].as_str().unwrap().to_string()
}

fn start_task(w: &Worker, prompt: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(submit(&h1(), w, json!({ "prompt": prompt })));
    let end = Instant::now() + T;
    while status_of(w, &id) != "working" {
        assert!(Instant::now() < end, "the task never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    id
}

#[test]
fn typed_text_reaches_cat_and_comes_back_and_ctrl_bracket_detaches() {
    let w = Worker::start(&[]);
    let id = start_task(&w, "cat");
    // Through a proxy that only counts connections.
    let proxy = clientkit::Proxy::start(w.port, 0, usize::MAX);
    let mut a = Pty::start(&["attach", "-i", "--url", &proxy.url(), &id]);
    a.wait_for("Ctrl-] detaches", 1);
    a.type_keys(b"hello-outpost\r");
    // Once echoed by the agent's terminal, once written back by cat.
    a.wait_for("hello-outpost", 2);
    for i in 0..10 {
        a.type_keys(format!("key-{i}\r").as_bytes());
        a.wait_for(&format!("key-{i}"), 2);
    }
    // Keystrokes reuse an idle HTTP/1.1 connection: the stream holds one, the lookup,
    // the resize and every input share a few more.
    let conns = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        conns <= 4,
        "{conns} connections for 12 requests and a stream"
    );
    // Raw mode: Ctrl-C is a key for the agent, not a signal for the client.
    a.type_keys(b"second line\r");
    a.wait_for("second line", 2);
    a.type_keys(&[0x1d]);
    assert_eq!(a.wait_exit(), 130, "{}", a.text());
    assert!(a.text().contains("detached"), "{}", a.text());
    assert_eq!(
        status_of(&w, &id),
        "working",
        "detaching leaves the task running"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(cancel(&h1(), &w, &id));
    let log = rt.block_on(async {
        let v = wait_terminal(&h1(), &w, &id, T).await;
        assert_eq!(v["status"], "cancelled");
        h1().get(w.url(&format!("/work/{id}/log")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert_eq!(log.matches("hello-outpost").count(), 2, "{log:?}");
}

#[test]
fn a_window_size_change_reaches_stty_size_and_the_task_end_ends_the_attach() {
    let w = Worker::start(&[]);
    let id = start_task(
        &w,
        "while IFS= read -r l; do if [ \"$l\" = size ]; then stty size; else echo \"got:$l\"; fi; done; exit 4",
    );
    let mut a = Pty::start(&["attach", "-i", "--url", &w.url(""), &id]);
    a.wait_for("Ctrl-] detaches", 1);
    // The size on attach is sent first.
    a.type_keys(b"size\r");
    a.wait_for("30 100", 1);
    a.resize(50, 132);
    // The resize and the next line travel separately: ask until the new size shows.
    let end = Instant::now() + T;
    while !a.text().contains("50 132") {
        assert!(
            Instant::now() < end,
            "the new size never arrived:\n{}",
            a.text()
        );
        a.type_keys(b"size\r");
        std::thread::sleep(Duration::from_millis(200));
    }
    a.type_keys(b"abc\r");
    a.wait_for("got:abc", 1);
    // EOF ends the loop and the task (exit 4): the attach ends with that code.
    a.type_keys(&[0x04]);
    assert_eq!(a.wait_exit(), 4, "{}", a.text());
    assert!(a.text().contains("failed · exit 4"), "{}", a.text());
}
