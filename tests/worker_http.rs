//! The HTTP contract against the real binary: seed-compatible routes over HTTP/1.1 and
//! h2c (reqwest and curl), the three reply kinds of POST /work, every refusal with its
//! status and JSON error shape, auth, and start-up configuration errors.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn hello_and_pty_status_on_h1_and_h2c() {
    let w = Worker::start(&[("OUTPOST_WORKER_ID", "worker-dev-gcp")]);
    for c in [h1(), h2c()] {
        let r = c.get(w.url("/hello")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "available");
        assert_eq!(v["workerId"], "worker-dev-gcp");
        assert!(v["uptime"].is_u64());
        assert_eq!(v["activeTasks"], 0);
        assert_eq!(v["totalTasksExecuted"], 0);
        let v: Value = get_json(&c, w.url("/pty/status")).await;
        assert_eq!(
            v,
            json!({"executorType": "pty", "streamingType": "sse", "activeProcesses": 0})
        );
        assert_eq!(c.get(w.url("/healthz")).send().await.unwrap().status(), 200);
        assert_eq!(c.get(w.url("/readyz")).send().await.unwrap().status(), 200);
        let m = text_of(c.get(w.url("/metrics"))).await;
        assert!(m.contains("# TYPE outpost_tasks_active gauge"));
        assert!(m.contains("outpost_tasks{status=\"done\"} 0"));
    }
}

/// Many streams at once on one h2c connection (the streams run in the connection's
/// task and their frames are packed into shared writes: src/http/inline.rs and
/// coalesce.rs): every answer arrives whole, small and large bodies alike, and the same
/// bytes as over HTTP/1.1.
#[tokio::test]
async fn many_streams_on_one_h2c_connection_answer_whole() {
    let w = Worker::start(&[]);
    let h2 = h2c();
    let big_h1 = h1()
        .get(w.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        big_h1.len() > 16 * 1024,
        "a body over more than one h2 frame"
    );
    let mut set = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (c, url) = if i % 30 == 0 {
            (h2.clone(), w.url("/openapi.json"))
        } else {
            (h2.clone(), w.url("/hello"))
        };
        set.spawn(async move {
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            assert_eq!(r.status(), 200);
            (i, r.bytes().await.unwrap())
        });
    }
    let mut n = 0;
    while let Some(done) = set.join_next().await {
        let (i, body) = done.unwrap();
        if i % 30 == 0 {
            assert_eq!(body, big_h1);
        } else {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["status"], "available");
        }
        n += 1;
    }
    assert_eq!(n, 300);
}

#[tokio::test]
async fn curl_streams_a_shell_task_on_h1_and_h2_prior_knowledge() {
    let w = Worker::start(&[]);
    for extra in [&[][..], &["--http2-prior-knowledge"][..]] {
        let out = Command::new("curl")
            .args(["-sS", "-N", "-X", "POST"])
            .args(extra)
            .arg(w.url("/work"))
            .args(["-d", r#"{"prompt":"echo \"Hello from Cloud Run\""}"#])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("event: output"), "{text}");
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .collect();
        // The output may come in more than one event: join them.
        let output: String = events
            .iter()
            .filter(|v| v["event"] == "output")
            .map(|v| v["data"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(output, "Hello from Cloud Run\r\n", "{text}");
        // A scratch task has nothing to prepare: `queued` then `working`, ids 1 and 2.
        let statuses: Vec<(u64, String)> = events
            .iter()
            .filter(|v| v["event"] == "status")
            .map(|v| {
                (
                    v["id"].as_u64().unwrap(),
                    v["status"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            statuses[..2],
            [(1, "queued".into()), (2, "working".into())],
            "{text}"
        );
        assert_eq!(statuses.len(), 3, "{text}");
        assert_eq!(statuses[2].1, "done", "{text}");
        assert!(
            text.trim_end().ends_with('}') && text.contains("event: done"),
            "{text}"
        );
        let done = text.rsplit("event: done\ndata: ").next().unwrap();
        let v: Value = serde_json::from_str(done.trim()).unwrap();
        assert_eq!(v["status"], "done");
        assert_eq!(v["exit_code"], 0);
    }
    let v: Value = get_json(&h1(), w.url("/hello")).await;
    assert_eq!(v["totalTasksExecuted"], 2);
}

#[tokio::test]
async fn post_work_reply_kinds() {
    let w = Worker::start(&[("OUTPOST_MAX_TASKS", "4")]);
    let c = h2c();
    // JSON: 202 + Location + task object.
    let r = c
        .post(w.url("/work"))
        .header("accept", "application/json")
        .json(&json!({"prompt": "echo one", "issue_id": "gt-abc123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(loc, format!("/work/{}", v["id"].as_str().unwrap()));
    assert_eq!(v["branch"], "polecat/gt-abc123");
    for k in [
        "id",
        "issue_id",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "exit_code",
        "branch",
        "commit",
        "pr_url",
        "error",
        "output_bytes",
    ] {
        assert!(v.get(k).is_some(), "task object lacks {k}");
    }
    let done = wait_terminal(&c, &w, v["id"].as_str().unwrap(), Duration::from_secs(20)).await;
    assert_eq!(done["status"], "done");
    assert_eq!(done["output_bytes"], 5);

    // NDJSON: one object per line with id and event, ending after done.
    let r = c
        .post(w.url("/work"))
        .header("accept", "application/x-ndjson")
        .json(&json!({"prompt": "echo two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.last().unwrap()["event"], "done");
    let joined: String = lines
        .iter()
        .filter(|l| l["event"] == "output")
        .map(|l| l["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(joined, "two\r\n");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], i as u64 + 1);
    }

    // /run (ClaudeCluster-compatible) streams SSE by default.
    let r = c
        .post(w.url("/run"))
        .json(&json!({"prompt": "echo three", "priority": 5}))
        .send()
        .await
        .unwrap();
    let events = Sse::new(r).collect(Duration::from_secs(20)).await;
    assert_complete(&events, 1);
    assert_eq!(output_of(&events), b"three\r\n");

    // The list is newest first.
    let list: Vec<Value> = get_json(&c, w.url("/work")).await;
    assert_eq!(list.len(), 3);
    assert_eq!(list[2]["issue_id"], "gt-abc123");
    let ids: Vec<&str> = list.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let log = c
        .get(w.url(&format!("/work/{}/log", ids[2])))
        .send()
        .await
        .unwrap();
    assert_eq!(log.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(log.text().await.unwrap(), "one\r\n");
}

async fn error_of(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["code"].is_string(), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().len() > 5, "{v}");
    v["error"].clone()
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_and_changes_nothing() {
    let w = Worker::start(&[]);
    let c = h1();
    let post = |body: String| {
        c.post(w.url("/work"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let e = error_of(post("{not json".into()).await.unwrap(), 400).await;
    assert_eq!(e["code"], "bad_json");
    let cases = [
        (json!({}), "prompt"),
        (json!({"prompt": 1}), "prompt"),
        (json!({"prompt": "x", "issue_id": "-rf"}), "issue_id"),
        (json!({"prompt": "x", "issue_id": "a..b"}), "issue_id"),
        (json!({"prompt": "x", "branch": "a b"}), "branch"),
        (json!({"prompt": "x", "branch": "x".repeat(300)}), "branch"),
        (json!({"prompt": "x", "rig_url": "file:///etc"}), "rig_url"),
        (
            json!({"prompt": "x", "rig_url": "ext::sh -c id"}),
            "rig_url",
        ),
        (
            json!({"prompt": "x", "rig_url": "https://u:p@github.com/o/r"}),
            "rig_url",
        ),
        (
            json!({"prompt": "x", "rig_url": "http://github.com/o/r"}),
            "rig_url",
        ),
        (
            json!({"prompt": "x", "rig_url": "https://169.254.169.254/x"}),
            "rig_url",
        ),
        (
            json!({"prompt": "x", "rig_url": "https://metadata.google.internal/x"}),
            "rig_url",
        ),
        (
            json!({"prompt": "x", "rig_url": "https://127.0.0.1/o/r"}),
            "rig_url",
        ),
        (
            json!({"prompt": "x", "beads_url": "https://10.0.0.1/o/r"}),
            "beads_url",
        ),
        (json!({"prompt": "x", "timeout_s": "soon"}), "timeout_s"),
    ];
    for (body, field) in cases {
        let e = error_of(post(body.to_string()).await.unwrap(), 400).await;
        assert_eq!(e["field"], field, "{body}");
        assert_eq!(e["code"], "invalid_field");
    }
    let big = json!({"prompt": "x".repeat(1_100_000)}).to_string();
    error_of(post(big).await.unwrap(), 413).await;
    let r = c
        .post(w.url("/work"))
        .header("content-type", "multipart/form-data")
        .body("x")
        .send()
        .await
        .unwrap();
    error_of(r, 415).await;
    error_of(c.get(w.url("/nope")).send().await.unwrap(), 404).await;
    error_of(c.get(w.url("/work/t-missing")).send().await.unwrap(), 404).await;
    error_of(
        c.get(w.url("/work/t-missing/events")).send().await.unwrap(),
        404,
    )
    .await;
    let r = c.put(w.url("/work")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET, POST");
    error_of(r, 405).await;
    error_of(
        c.post(w.url("/work/t-x/resize"))
            .body("{}")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    // Nothing was created by any of it.
    let list: Vec<Value> = get_json(&c, w.url("/work")).await;
    assert!(list.is_empty());
    assert!(std::fs::read_dir(w.data.join("tasks"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn capacity_and_duplicate_issue() {
    let w = Worker::start(&[("OUTPOST_MAX_TASKS", "1")]);
    let c = h1();
    let id = submit(&c, &w, json!({"prompt": "sleep 30", "issue_id": "gt-1"})).await;
    let r = post_work(&c, &w, json!({"prompt": "x", "issue_id": "gt-1"})).await;
    let e = error_of(r, 409).await;
    assert_eq!(e["id"], id.as_str());
    let r = post_work(&c, &w, json!({"prompt": "x"})).await;
    assert!(r.headers().get("retry-after").is_some());
    error_of(r, 429).await;
    let v: Value = get_json(&c, w.url("/hello")).await;
    assert_eq!(v["status"], "busy");
    assert_eq!(v["activeTasks"], 1);
    assert_eq!(cancel(&c, &w, &id).await.status(), 202);
    let t = wait_terminal(&c, &w, &id, Duration::from_secs(20)).await;
    assert_eq!(t["status"], "cancelled");
    // The slot and the issue are free again.
    let id2 = submit(&c, &w, json!({"prompt": "true", "issue_id": "gt-1"})).await;
    assert_eq!(
        wait_terminal(&c, &w, &id2, Duration::from_secs(20)).await["status"],
        "done"
    );
    error_of(cancel(&c, &w, &id2).await, 409).await;
}

#[tokio::test]
async fn bearer_token_guards_all_but_hello_and_healthz() {
    let w = Worker::start(&[("OUTPOST_TOKEN", "s3cret-token")]);
    let c = h1();
    assert_eq!(c.get(w.url("/hello")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(w.url("/healthz")).send().await.unwrap().status(), 200);
    for path in ["/work", "/pty/status", "/metrics", "/readyz"] {
        let e = error_of(c.get(w.url(path)).send().await.unwrap(), 401).await;
        assert_eq!(e["code"], "unauthorized");
        let r = c
            .get(w.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = c
            .get(w.url(path))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = post_work(&c, &w, json!({"prompt": "env"})).await;
    assert_eq!(r.status(), 401);
}

#[test]
fn bad_configuration_stops_the_start_with_one_line() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.arg("serve")
            .env_remove("K_SERVICE")
            .env_remove("OUTPOST_TOKEN")
            .env("PORT", free_port().to_string());
        let tmp = tempfile::tempdir().unwrap();
        cmd.env("OUTPOST_DATA", tmp.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&[("OUTPOST_MAX_TASKS", "many")]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim(),
        "outpost serve: invalid OUTPOST_MAX_TASKS=\"many\": expected a whole number from 1 to 1024"
    );
    let (code, err) = run(&[("OUTPOST_HEARTBEAT_S", "0")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("OUTPOST_HEARTBEAT_S"), "{err}");
    let (code, err) = run(&[("OUTPOST_BIND", "0.0.0.0")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("OUTPOST_TOKEN") && err.contains("OUTPOST_INSECURE_NO_AUTH"),
        "{err}"
    );
    let (code, err) = run(&[("OUTPOST_LOG_FORMAT", "xml")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("OUTPOST_LOG_FORMAT"), "{err}");
}

#[tokio::test]
async fn cloud_run_mode_logs_json() {
    let w = Worker::start(&[
        ("K_SERVICE", "outpost"),
        ("OUTPOST_BIND", "127.0.0.2"),
        ("OUTPOST_INSECURE_NO_AUTH", "1"),
    ]);
    let c = h1();
    let r = post_work(&c, &w, json!({"prompt": "echo hi"})).await;
    Sse::new(r).collect(Duration::from_secs(20)).await;
    let log = w.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["severity"].is_string() && l["message"].is_string() && l["time"].is_string()));
    assert!(lines.iter().any(|l| l["task_id"].is_string()));
}

#[tokio::test]
async fn secrets_never_reach_the_agent_the_stream_or_the_log() {
    let w = Worker::start(&[
        ("OUTPOST_TOKEN", "tok-AAAA1111"),
        ("OUTPOST_GIT_TOKEN", "git-BBBB2222"),
        ("GH_TOKEN", "gh-CCCC3333"),
    ]);
    let c = h1();
    let r = c
        .post(w.url("/work"))
        .bearer_auth("tok-AAAA1111")
        .json(&json!({"prompt": "env; echo END"}))
        .send()
        .await
        .unwrap();
    let events = Sse::new(r).collect(Duration::from_secs(20)).await;
    let out = String::from_utf8(output_of(&events)).unwrap();
    assert!(out.contains("OUTPOST_TASK_ID=t-"), "{out}");
    assert!(out.contains("END"));
    for secret in ["tok-AAAA1111", "git-BBBB2222", "gh-CCCC3333"] {
        assert!(!out.contains(secret), "{secret} reached the agent");
        assert!(!w.log_text().contains(secret), "{secret} reached the log");
    }
}
