//! Agents as real processes: cancel kills the whole process group (grandchildren too),
//! timeout, input and resize reach the program, the agent's environment, SIGTERM
//! drains (streams get their done, exit code 0), and PID-1 duty inside
//! `unshare --pid --fork`: orphans are reaped, no zombie is left.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

fn read_pids(path: &std::path::Path) -> Vec<i32> {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path) {
            let pids: Vec<i32> = s
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.len() >= 2 {
                return pids;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the agent did not write its pids to {}", path.display());
}

#[tokio::test]
async fn cancel_kills_the_whole_group_including_grandchildren() {
    let w = Worker::start(&[]);
    let c = h1();
    // Somewhere the agent (an unprivileged user when the tests run as root) may write.
    let shared = shared_dir();
    let pidfile = shared.path().join("pids");
    // The shell ignores SIGTERM, so the group needs the SIGKILL after the grace.
    let prompt = format!(
        "trap '' TERM; sleep 1000 & echo $! > {p}.tmp; (sleep 1000 & echo $! >> {p}.tmp; wait) & sleep 0.2; mv {p}.tmp {p}; wait",
        p = pidfile.display()
    );
    let id = submit(&c, &w, json!({ "prompt": prompt })).await;
    let pids = read_pids(&pidfile);
    assert!(pids.iter().all(|p| alive(*p)));
    assert_eq!(cancel(&c, &w, &id).await.status(), 202);
    let t = wait_terminal(&c, &w, &id, T).await;
    assert_eq!(t["status"], "cancelled");
    assert!(t["error"].as_str().unwrap().contains("cancel"));
    for p in pids {
        assert!(
            !alive(p),
            "process {p} of the cancelled group is still alive"
        );
    }
    let evs = events_of(&c, &w, &id).await;
    assert_eq!(evs.last().unwrap().data["status"], "cancelled");
}

#[tokio::test]
async fn timeout_stops_the_agent_and_fails_the_task() {
    let w = Worker::start(&[]);
    let c = h1();
    let id = submit(
        &c,
        &w,
        json!({"prompt": "echo start; sleep 100", "timeout_s": 1}),
    )
    .await;
    let t = wait_terminal(&c, &w, &id, T).await;
    assert_eq!(t["status"], "failed");
    assert!(t["error"].as_str().unwrap().contains("timed out"), "{t}");
    assert_eq!(t["exit_code"], 128 + 15);
}

#[tokio::test]
async fn exit_codes_map_to_done_and_failed() {
    let w = Worker::start(&[]);
    let c = h1();
    let id = submit(&c, &w, json!({"prompt": "exit 3"})).await;
    let t = wait_terminal(&c, &w, &id, T).await;
    assert_eq!(t["status"], "failed");
    assert_eq!(t["exit_code"], 3);
    assert!(t["error"].as_str().unwrap().contains("code 3"));
    let id = submit(&c, &w, json!({"prompt": "kill -9 $$"})).await;
    let t = wait_terminal(&c, &w, &id, T).await;
    assert_eq!(t["status"], "failed");
    assert_eq!(t["exit_code"], 137);
}

/// The agent leads its own session and process group, its terminal is its controlling
/// terminal with its group in the foreground, and it holds no descriptor but 0, 1 and 2
/// (not even one the worker inherited from whoever started it).
#[tokio::test]
async fn the_agent_leads_a_session_on_its_terminal_and_inherits_no_descriptor() {
    let file = std::fs::File::open("/etc/hostname").unwrap();
    // SAFETY: F_DUPFD returns a new descriptor (without close-on-exec) that we close below.
    let leaked = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_DUPFD, 50) };
    assert!(leaked >= 50);
    let w = Worker::start(&[]);
    // SAFETY: `leaked` is ours and closed once.
    unsafe { libc::close(leaked) };
    let fds = std::fs::read_dir(format!("/proc/{}/fd", w.pid())).unwrap();
    let names: Vec<String> = fds
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&leaked.to_string()),
        "the worker did not inherit fd {leaked}: {names:?}"
    );

    let c = h1();
    let prompt = r#"set -- $(cat /proc/$$/stat); echo "pid=$1 pgrp=$5 sid=$6 tty=$7 fg=$8"; echo FDS; ls -1 /proc/$$/fd; echo END; tty"#;
    let events = Sse::new(post_work(&c, &w, json!({ "prompt": prompt })).await)
        .collect(T)
        .await;
    let out = String::from_utf8_lossy(&output_of(&events)).into_owned();
    let field = |name: &str| -> String {
        let start = out
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {out}"));
        out[start + name.len() + 1..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let pid = field("pid");
    assert_eq!(field("pgrp"), pid, "{out}");
    assert_eq!(field("sid"), pid, "{out}");
    assert_eq!(field("fg"), pid, "{out}");
    assert_ne!(field("tty"), "0", "no controlling terminal: {out}");
    // A simple command, not a pipeline: the shell holds no pipe while `ls` looks.
    let fds: Vec<&str> = out
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "FDS")
        .skip(1)
        .take_while(|l| *l != "END")
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
}

#[tokio::test]
async fn input_reaches_the_program() {
    let w = Worker::start(&[]);
    let c = h1();
    let r = post_work(
        &c,
        &w,
        json!({"prompt": "echo ready; read line; echo \"got:$line\""}),
    )
    .await;
    let id = r.headers()["x-task-id"].to_str().unwrap().to_string();
    let mut sse = Sse::new(r);
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("ready") {
        out.extend(sse.next(T).await.unwrap().output_bytes().unwrap());
    }
    let r = c
        .post(w.url(&format!("/work/{id}/input")))
        .body("hello\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    while let Some(e) = sse.next(T).await {
        out.extend(e.output_bytes().unwrap());
    }
    assert!(
        String::from_utf8_lossy(&out).contains("got:hello"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // After the end, input is refused clearly.
    let r = c
        .post(w.url(&format!("/work/{id}/input")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn resize_reaches_the_program() {
    let w = Worker::start(&[]);
    let c = h1();
    // Reports its size on SIGWINCH; bounded to 100 turns of 0.1 s.
    let prompt = "stty size; trap 'stty size' WINCH; echo ready; i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); if [ -e stop ]; then break; fi; done";
    let r = post_work(&c, &w, json!({ "prompt": prompt })).await;
    let id = r.headers()["x-task-id"].to_str().unwrap().to_string();
    let mut sse = Sse::new(r);
    let mut out = String::new();
    while !out.contains("ready") {
        out.push_str(&String::from_utf8_lossy(
            &sse.next(T).await.unwrap().output_bytes().unwrap(),
        ));
    }
    assert!(out.starts_with("40 120"), "initial size: {out:?}");
    let r = c
        .post(w.url(&format!("/work/{id}/resize")))
        .json(&json!({"cols": 100, "rows": 33}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    while !out.contains("33 100") {
        match sse.next(T).await {
            Some(e) => out.push_str(&String::from_utf8_lossy(&e.output_bytes().unwrap())),
            None => panic!("ended without reporting the new size: {out:?}"),
        }
    }
    let r = c
        .post(w.url(&format!("/work/{id}/resize")))
        .json(&json!({"cols": 0, "rows": 33}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    cancel(&c, &w, &id).await;
}

#[tokio::test]
async fn agent_environment_and_context_file() {
    let w = Worker::start(&[]);
    let c = h1();
    let r = post_work(&c, &w, json!({"prompt": "echo \"$OUTPOST_TASK_ID|$OUTPOST_ISSUE_ID|$TERM\"; cat \"$OUTPOST_CONTEXT\"; echo; pwd", "issue_id": "gt-env", "context": {"k": [1, 2]}})).await;
    let id = r.headers()["x-task-id"].to_str().unwrap().to_string();
    let out = String::from_utf8(output_of(&Sse::new(r).collect(T).await)).unwrap();
    assert!(
        out.contains(&format!("{id}|gt-env|xterm-256color")),
        "{out}"
    );
    assert!(out.contains(r#"{"k":[1,2]}"#), "{out}");
    assert!(out.contains(&format!("run/{id}/work")), "{out}");
}

#[tokio::test]
async fn sigterm_drains_streams_get_done_and_exit_is_zero() {
    let mut w = Worker::start(&[("OUTPOST_GRACE_S", "2")]);
    let c = h1();
    let r = post_work(
        &c,
        &w,
        json!({"prompt": "trap 'echo bye; exit 5' TERM; echo up; sleep 100 & wait"}),
    )
    .await;
    let mut sse = Sse::new(r);
    loop {
        if sse.next(T).await.unwrap().event == "output" {
            break;
        }
    }
    let pid = w.pid();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // While draining, new work is refused with 503 and Retry-After.
    let mut saw_503 = false;
    for _ in 0..40 {
        match c
            .post(w.url("/work"))
            .json(&json!({"prompt": "true"}))
            .send()
            .await
        {
            Ok(r) if r.status() == 503 => {
                assert!(r.headers().get("retry-after").is_some());
                saw_503 = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => break,
        }
    }
    let mut rest = Vec::new();
    while let Some(e) = sse.next(T).await {
        rest.push(e);
    }
    let done = rest.last().expect("events after SIGTERM");
    assert_eq!(done.event, "done");
    assert_eq!(done.data["status"], "interrupted");
    assert!(String::from_utf8_lossy(&output_of(&rest)).contains("bye"));
    let st = w
        .signal_and_wait(0, Duration::from_secs(10))
        .expect("exited");
    assert_eq!(st.code(), Some(0), "exit status {st:?}");
    assert!(saw_503 || w.log_text().contains("draining"));
}

#[test]
fn as_pid_1_orphans_are_reaped_and_sigterm_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_outpost"))
        .arg("serve")
        .env("PORT", port.to_string())
        .env("OUTPOST_DATA", tmp.path())
        .env("OUTPOST_MAX_TASKS", "2")
        .env_remove("OUTPOST_TOKEN")
        .env_remove("K_SERVICE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let base = format!("http://127.0.0.1:{port}");
        let c = h1();
        let mut up = false;
        for _ in 0..200 {
            if c.get(format!("{base}/hello")).send().await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(up, "outpost did not start as PID 1");
        // 300 grandchildren orphaned by their parent, each exiting a moment later.
        let prompt = "i=0; while [ $i -lt 300 ]; do (sleep 0.3 &) ; i=$((i+1)); done; echo spawned";
        let r = c.post(format!("{base}/work")).json(&json!({ "prompt": prompt })).send().await.unwrap();
        let evs = Sse::new(r).collect(T).await;
        assert_eq!(evs.last().unwrap().data["status"], "done");
        // A probe task lists zombies in the namespace (its own /proc).
        let mut zombies = String::from("?");
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = c
                .post(format!("{base}/work"))
                .json(&json!({"prompt": "for s in /proc/[0-9]*/stat; do read -r l < $s 2>/dev/null && case \"$l\" in *') Z '*) echo Z;; esac; done | wc -l"}))
                .send()
                .await
                .unwrap();
            let out = String::from_utf8(output_of(&Sse::new(r).collect(T).await)).unwrap();
            zombies = out.trim().to_string();
            if zombies == "0" {
                break;
            }
        }
        assert_eq!(zombies, "0", "zombies left in the namespace");
        let m = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let reaped: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("outpost_orphans_reaped_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        assert!(reaped >= 300, "reaped {reaped}");
    });
    // SIGTERM to PID 1 of the namespace: find it as unshare's child.
    let ns_init =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap();
    let pid1: i32 = ns_init.split_whitespace().next().unwrap().parse().unwrap();
    unsafe { libc::kill(pid1, libc::SIGTERM) };
    let mut status = None;
    for _ in 0..500 {
        if let Ok(Some(st)) = child.try_wait() {
            status = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("PID 1 did not exit after SIGTERM");
    });
    assert_eq!(st.code(), Some(0), "{st:?}");
    let _: Option<Value> = None;
}
