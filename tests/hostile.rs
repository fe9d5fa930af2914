//! The agent as an attacker: each test is a task prompt that tries to reach what an
//! agent must not (the worker's secrets, other tasks, the worker itself) or to leave
//! something behind, against the real worker running as root with real cgroups and
//! an unprivileged agent user. Every attack must fail while the worker keeps serving.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "tok-hostile-5f2a9c";
const GIT_TOKEN: &str = "gittok-hostile-77b1e0";
/// The strongest containment this machine has (cgroups here) and the one of last resort.
const CONTAINMENTS: [&str; 2] = ["auto", "uid"];

/// Root is what these tests are about; CI runs as root, so there they must run.
fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "the hostile-agent tests need root on CI"
    );
    eprintln!("skipped: the hostile-agent tests need root");
    false
}

fn authed() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

/// A worker whose agents have a uid of their own: a test's agent that kills every
/// process of its uid (`kill -9 -1`) must not reach another test's agents.
fn worker(extra: &[(&str, &str)]) -> Worker {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let uid = (63_000 + 16 * NEXT.fetch_add(1, Ordering::Relaxed)).to_string();
    let mut env = vec![("OUTPOST_TOKEN", TOKEN), ("OUTPOST_GIT_TOKEN", GIT_TOKEN)];
    if !extra.iter().any(|(k, _)| *k == "OUTPOST_AGENT_USER") {
        env.push(("OUTPOST_AGENT_USER", uid.as_str()));
    }
    env.extend_from_slice(extra);
    Worker::start(&env)
}

/// Runs a prompt to its end; returns (output text, the task object).
async fn run(c: &reqwest::Client, w: &Worker, body: Value) -> (String, Value) {
    let id = submit(c, w, body).await;
    let t = wait_terminal(c, w, &id, Duration::from_secs(60)).await;
    let out = output_of(&events_of(c, w, &id).await);
    (String::from_utf8_lossy(&out).into_owned(), t)
}

/// Processes whose command line holds `marker` (excluding this test's own pgrep).
fn running(marker: &str) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-af", marker])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(String::from)
        .collect()
}

async fn alive_and_serving(c: &reqwest::Client, w: &Worker) {
    assert!(alive(w.pid()), "the worker died; log:\n{}", w.log_text());
    let h: Value = get_json(c, w.url("/hello")).await;
    assert!(h["status"].is_string(), "{h}");
}

#[tokio::test]
async fn the_worker_reports_its_isolation_and_containment() {
    if !root_or_skip() {
        return;
    }
    let w = worker(&[]);
    let c = authed();
    let h: Value = get_json(&c, w.url("/hello")).await;
    assert_eq!(h["isolation"], "user", "{h}");
    assert!(
        matches!(h["containment"].as_str(), Some("cgroup1" | "cgroup2")),
        "{h}"
    );
    let (out, t) = run(
        &c,
        &w,
        json!({"prompt": "id -u; echo HOME=$HOME; cat /proc/self/cgroup"}),
    )
    .await;
    assert_eq!(t["status"], "done", "{t}");
    let uid: u32 = out.lines().next().unwrap().trim().parse().unwrap();
    assert_ne!(uid, 0, "the agent runs as root: {out}");
    assert!(out.contains("/outpost-"), "not in a task cgroup: {out}");
    assert!(
        out.contains(&format!("HOME={}", w.data.join("home/0").display())),
        "{out}"
    );
}

#[tokio::test]
async fn secrets_of_the_worker_are_out_of_reach() {
    if !root_or_skip() {
        return;
    }
    let w = worker(&[]);
    let c = authed();
    let pid = w.pid();
    let data = w.data.display();
    let prompt = format!(
        "env; tr '\\0' '\\n' < /proc/{pid}/environ; tr '\\0' ' ' < /proc/{pid}/cmdline; \
         cat /proc/$PPID/environ; head -c 4096 /proc/{pid}/mem; \
         grep -r -a -h {TOKEN} {data} /proc/{pid}/ 2>&1 | head -5; \
         grep -r -a -l hostile {data} 2>&1 | head; ls {data}/tasks {data}/git/cache; \
         python3 -c 'import ctypes; print(\"ptrace\", ctypes.CDLL(None).ptrace(16, {pid}, 0, 0))'; \
         echo finished"
    );
    let (out, t) = run(&c, &w, json!({"prompt": prompt})).await;
    assert!(out.contains("finished"), "{out}");
    assert!(
        !out.contains(TOKEN),
        "the agent read the worker's token:\n{out}"
    );
    assert!(
        !out.contains(GIT_TOKEN),
        "the agent read the git token:\n{out}"
    );
    assert!(
        !out.contains("OUTPOST_DATA"),
        "the agent's env names the data dir:\n{out}"
    );
    assert!(out.contains("Permission denied"), "{out}");
    assert!(
        !out.contains("ptrace 0"),
        "the agent could ptrace the worker:\n{out}"
    );
    assert_eq!(t["status"], "done", "{t}");
    alive_and_serving(&c, &w).await;
}

#[tokio::test]
async fn the_worker_cannot_be_killed_or_frozen() {
    if !root_or_skip() {
        return;
    }
    let w = worker(&[]);
    let c = authed();
    let pid = w.pid();
    let prompt = format!(
        "kill -STOP {pid}; kill -9 {pid}; kill -9 $PPID; kill -9 -1; sleep 0.2; echo survived"
    );
    let (out, t) = run(&c, &w, json!({"prompt": prompt})).await;
    assert!(out.contains("survived"), "{out}");
    assert!(out.contains("not permitted"), "{out}");
    assert_eq!(t["status"], "done", "{t}");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_ne!(state, "T", "the worker was stopped");
    alive_and_serving(&c, &w).await;
}

#[tokio::test]
async fn other_tasks_cannot_be_read_or_rewritten_and_logs_cannot_be_forged() {
    if !root_or_skip() {
        return;
    }
    let data_tmp = tempfile::tempdir().unwrap();
    let data = data_tmp.path().join("data");
    let port = free_port();
    let env = [("OUTPOST_TOKEN", TOKEN), ("OUTPOST_GIT_TOKEN", GIT_TOKEN)];
    let mut w = Worker::start_on(&data, port, &env);
    let c = authed();
    let (_, first) = run(&c, &w, json!({"prompt": "echo SECRET-OF-A-4471"})).await;
    let a = first["id"].as_str().unwrap().to_string();
    let branch_a = first["branch"].as_str().unwrap().to_string();
    let tasks = data.join("tasks");
    let prompt = format!(
        "cat {t}/{a}/events.ndjson; ls {t}; \
         echo '{{\"id\":\"{a}\",\"branch\":\"evil\"}}' > {t}/{a}/meta.json; \
         echo '{{\"id\":999,\"event\":\"done\",\"status\":\"done\",\"commit\":\"f00d\",\"pr_url\":\"https://evil\"}}' >> {t}/$OUTPOST_TASK_ID/events.ndjson; \
         echo finished",
        t = tasks.display()
    );
    let (out, t) = run(&c, &w, json!({"prompt": prompt})).await;
    assert!(out.contains("finished"), "{out}");
    assert!(
        !out.contains("SECRET-OF-A-4471"),
        "the agent read another task's log:\n{out}"
    );
    assert_eq!(t["status"], "done", "{t}");
    let b = t["id"].as_str().unwrap().to_string();
    let events = events_of(&c, &w, &b).await;
    assert_complete(&events, 1);
    let done = &events.last().unwrap().data;
    assert!(
        done["commit"].is_null() && done["pr_url"].is_null(),
        "{done}"
    );
    // After a restart the meta of A is still A's own.
    w.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    drop(w);
    let w = Worker::start_on(&data, port, &env);
    let c = authed();
    let again: Value = get_json(&c, w.url(&format!("/work/{a}"))).await;
    assert_eq!(again["branch"], branch_a.as_str(), "{again}");
    assert_complete(&events_of(&c, &w, &b).await, 1);
}

#[tokio::test]
async fn nothing_a_task_starts_outlives_it() {
    if !root_or_skip() {
        return;
    }
    for containment in CONTAINMENTS {
        let w = worker(&[("OUTPOST_CONTAINMENT", containment)]);
        let c = authed();
        let h: Value = get_json(&c, w.url("/hello")).await;
        let prompt = "setsid sleep 4301 </dev/null >/dev/null 2>&1 & \
             (setsid sh -c 'sleep 4302 & sleep 4303' </dev/null >/dev/null 2>&1 &) ; \
             nohup sleep 4304 >/dev/null 2>&1 & sleep 0.3; echo started";
        let (out, t) = run(&c, &w, json!({"prompt": prompt})).await;
        assert!(out.contains("started"), "{out}");
        assert_eq!(t["status"], "done", "{t}");
        let left = running("sleep 430");
        assert!(
            left.is_empty(),
            "{containment} ({h}): left behind after done: {left:?}"
        );

        // And after a cancel.
        let id = submit(
            &c,
            &w,
            json!({"prompt": "setsid sleep 4311 </dev/null >/dev/null 2>&1 & (sleep 4312 &); sleep 100"}),
        )
        .await;
        for _ in 0..100 {
            if running("sleep 4311").len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(cancel(&c, &w, &id).await.status(), 202);
        let t = wait_terminal(&c, &w, &id, Duration::from_secs(30)).await;
        assert_eq!(t["status"], "cancelled", "{t}");
        let left = running("sleep 431");
        assert!(
            left.is_empty(),
            "{containment}: left behind after DELETE: {left:?}"
        );
        alive_and_serving(&c, &w).await;
    }
}

#[tokio::test]
async fn a_fork_bomb_fails_inside_its_task() {
    if !root_or_skip() {
        return;
    }
    for containment in CONTAINMENTS {
        let w = worker(&[
            ("OUTPOST_CONTAINMENT", containment),
            ("OUTPOST_TASK_PIDS", "64"),
        ]);
        let c = authed();
        let id = submit(
            &c,
            &w,
            json!({"prompt": "n=0; for i in $(seq 2000); do sleep 4321 2>/dev/null & n=$((n+1)); done; echo tried $n; sleep 1", "timeout_s": 30}),
        )
        .await;
        // While it runs, the worker answers.
        for _ in 0..10 {
            alive_and_serving(&c, &w).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = wait_terminal(&c, &w, &id, Duration::from_secs(60)).await;
        let peak = running("sleep 4321").len();
        assert_eq!(peak, 0, "{containment}: sleeps left after the task: {peak}");
        let out = String::from_utf8_lossy(&output_of(&events_of(&c, &w, &id).await)).into_owned();
        assert!(
            out.contains("fork")
                || out.contains("Resource temporarily unavailable")
                || out.contains("retry"),
            "{containment}: no fork failure seen: {}\n{t}",
            &out[..out.len().min(2000)]
        );
        alive_and_serving(&c, &w).await;
    }
}

#[tokio::test]
async fn an_output_flood_stops_at_the_output_limit() {
    if !root_or_skip() {
        return;
    }
    let w = worker(&[("OUTPOST_TASK_MAX_OUTPUT", "100M")]);
    let c = authed();
    let id = submit(
        &c,
        &w,
        json!({"prompt": "head -c 2G /dev/zero | tr '\\0' 'x' | fold -w 4000", "timeout_s": 120}),
    )
    .await;
    let t = wait_terminal(&c, &w, &id, Duration::from_secs(150)).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error_code"], "output_limit", "{t}");
    let bytes = t["output_bytes"].as_u64().unwrap();
    assert!(
        (100 << 20..101 << 20).contains(&bytes),
        "output_bytes {bytes}"
    );
    let log = w.data.join("tasks").join(&id).join("events.ndjson");
    let on_disk = std::fs::metadata(&log).unwrap().len();
    assert!(
        on_disk < 105 << 20,
        "the log holds {on_disk} bytes for {bytes} of output"
    );
    assert!(
        !w.data.join("tasks").join(&id).join("output.raw").exists(),
        "output stored twice"
    );
    let raw = c
        .get(w.url(&format!("/work/{id}/log")))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.bytes().await.unwrap().len() as u64, bytes);
    alive_and_serving(&c, &w).await;
}

#[tokio::test]
async fn tasks_report_what_they_used_and_cost() {
    if !root_or_skip() {
        return;
    }
    let w = worker(&[
        ("OUTPOST_INSTANCE_CPU", "2"),
        ("OUTPOST_INSTANCE_MEMORY", "4G"),
    ]);
    let c = authed();
    // One CPU-second of the agent's own time, however busy the machine is.
    let burn_one_second = "python3 -c \"import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass\n\"";
    let (_, burn) = run(&c, &w, json!({"prompt": burn_one_second})).await;
    let cpu = burn["resources"]["cpu_seconds"].as_f64().unwrap();
    assert!(
        (0.95..1.8).contains(&cpu),
        "a one-second burn reported {cpu} s: {burn}"
    );
    let wall = burn["resources"]["wall_seconds"].as_f64().unwrap();
    let cost = burn["cost"]["compute_usd"].as_f64().unwrap();
    let want = wall * (2.0 * 0.000_024 + 4.0 * 0.000_002_5);
    assert!(
        (cost - want).abs() < 1e-9,
        "cost {cost}, expected {want}: {burn}"
    );
    assert_eq!(burn["cost"]["total_usd"], burn["cost"]["compute_usd"]);

    let (_, mem) = run(
        &c,
        &w,
        json!({"prompt": "python3 -c \"b = b'\\x01' * (210 << 20); print('ok', len(b))\""}),
    )
    .await;
    let peak = mem["resources"]["memory_peak_bytes"].as_u64().unwrap();
    assert!(
        peak > 200 << 20,
        "touching 200 MiB reported a peak of {peak}: {mem}"
    );
    let events = events_of(&c, &w, mem["id"].as_str().unwrap()).await;
    let done = &events.last().unwrap().data;
    assert_eq!(done["resources"], mem["resources"]);

    let metrics = c
        .get(w.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let total: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outpost_task_cpu_seconds_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(total >= cpu, "{metrics}");
}

#[tokio::test]
async fn a_log_damaged_under_the_worker_ends_its_stream_with_an_error_and_done() {
    if !root_or_skip() {
        return;
    }
    let w = worker(&[]);
    let c = authed();
    let (_, t) = run(
        &c,
        &w,
        json!({"prompt": "for i in $(seq 400); do echo line $i; sleep 0.001; done"}),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_string();
    // Damage the log while the worker serves it: bytes overwritten in the middle (a
    // record the worker did not write), then the file cut short of what it wrote.
    let log = w.data.join("tasks").join(&id).join("events.ndjson");
    let mut bytes = std::fs::read(&log).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 40].copy_from_slice(&[b'#'; 40]);
    std::fs::write(&log, &bytes).unwrap();
    for _ in 0..2 {
        let body = text_of(c.get(w.url(&format!("/work/{id}/events")))).await;
        assert!(
            body.contains("event: error"),
            "{}",
            &body[body.len().saturating_sub(600)..]
        );
        let tail = &body[body.rfind("event: done").expect("no done")..];
        assert!(tail.contains("log_damaged"), "{tail}");
        assert!(!body.contains("####"), "damaged bytes were served");
        std::fs::write(&log, &bytes[..mid / 2]).unwrap();
    }
}

#[tokio::test]
async fn a_task_past_its_memory_limit_dies_alone_and_says_so() {
    if !root_or_skip() {
        return;
    }
    let w = worker(&[("OUTPOST_TASK_MEMORY", "100M")]);
    let c = authed();
    let hog = "python3 -c \"b = b'\\x01' * (300 << 20); print('survived', len(b))\"";
    let (out, t) = run(&c, &w, json!({"prompt": hog})).await;
    assert!(!out.contains("survived"), "{out}");
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error_code"], "out_of_memory", "{t}");
    let peak = t["resources"]["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak <= 101 << 20, "the task went past its limit: {peak}");
    alive_and_serving(&c, &w).await;
    let (out, t) = run(&c, &w, json!({"prompt": "echo next"})).await;
    assert_eq!((out.as_str(), &t["status"]), ("next\r\n", &json!("done")));
}

#[tokio::test]
async fn new_work_is_refused_while_the_data_dir_is_nearly_full() {
    if !root_or_skip() {
        return;
    }
    let w = worker(&[("OUTPOST_MIN_FREE_DISK", "1000000G")]);
    let c = authed();
    let r = post_work(&c, &w, json!({"prompt": "echo hi"})).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "disk_full", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OUTPOST_MIN_FREE_DISK"),
        "{e}"
    );
}

/// The task's cgroup directory in the v1 pids hierarchy, from a `cat /proc/self/cgroup`.
fn pids_cgroup_of(out: &str) -> Option<std::path::PathBuf> {
    let path = out.lines().find_map(|l| {
        let mut parts = l.trim().splitn(3, ':');
        let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctls.split(',').any(|c| c == "pids").then_some(path)
    })?;
    Some(std::path::Path::new("/sys/fs/cgroup/pids").join(path.trim_start_matches('/')))
}

#[tokio::test]
async fn a_cgroup_is_reused_only_after_a_task_that_left_nothing_behind() {
    if !root_or_skip() {
        return;
    }
    let w = worker(&[("OUTPOST_MAX_TASKS", "1")]);
    let c = authed();
    let h: Value = get_json(&c, w.url("/hello")).await;
    if h["containment"] != "cgroup1" {
        eprintln!("skipped: cgroups are reused on v1 only ({h})");
        return;
    }
    // A: a third of a second of CPU, nothing left behind: its cgroup is kept.
    let burn = "cat /proc/self/cgroup; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done";
    let (out_a, a) = run(&c, &w, json!({"prompt": burn})).await;
    assert_eq!(a["status"], "done", "{a}");
    let dir_a = pids_cgroup_of(&out_a).expect("no pids cgroup line");
    let id_a = a["id"].as_str().unwrap();
    assert!(dir_a.ends_with(id_a), "{out_a}");
    let cpu_a = a["resources"]["cpu_seconds"].as_f64().unwrap();
    assert!(cpu_a > 0.1, "{a}");
    assert!(dir_a.is_dir(), "A's cgroup was not kept for the next task");

    // B: A's cgroup renamed after B, its counters reset.
    let (out_b, b) = run(&c, &w, json!({"prompt": "cat /proc/self/cgroup"})).await;
    assert_eq!(b["status"], "done", "{b}");
    let dir_b = pids_cgroup_of(&out_b).expect("no pids cgroup line");
    assert!(dir_b.ends_with(b["id"].as_str().unwrap()), "{out_b}");
    assert!(!dir_a.exists(), "A's cgroup is still there under its name");
    let cpu_b = b["resources"]["cpu_seconds"].as_f64().unwrap();
    assert!(
        cpu_b < cpu_a / 2.0,
        "B reported A's CPU too: {cpu_b} after {cpu_a}"
    );
    let peak_b = b["resources"]["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak_b > 0 && peak_b < 8 << 20, "{b}");

    // C leaves a process behind: it is killed, and C's cgroup is removed, not kept.
    let (out_c, t) = run(
        &c,
        &w,
        json!({"prompt": "cat /proc/self/cgroup; setsid sleep 4401 </dev/null >/dev/null 2>&1 & sleep 0.2"}),
    )
    .await;
    assert_eq!(t["status"], "done", "{t}");
    let dir_c = pids_cgroup_of(&out_c).expect("no pids cgroup line");
    assert!(running("sleep 4401").is_empty(), "left behind");
    assert!(!dir_c.exists(), "a cgroup something was killed in was kept");

    // D: a cgroup of its own again.
    let (out_d, d) = run(&c, &w, json!({"prompt": "cat /proc/self/cgroup"})).await;
    assert_eq!(d["status"], "done", "{d}");
    let dir_d = pids_cgroup_of(&out_d).expect("no pids cgroup line");
    assert!(dir_d.ends_with(d["id"].as_str().unwrap()), "{out_d}");
    alive_and_serving(&c, &w).await;
}
