//! Both of ClaudeCluster's shapes (`/hello`, `POST /run` asked for JSON) beside
//! outpost's own, checked against the OpenAPI document too; and refusals that name the
//! field and say what is allowed.

mod common;
mod contract;

use std::time::Duration;

use common::*;
use contract::*;
use serde_json::{json, Value};

/// ClaudeCluster's guide documents one /hello shape and its code reads another: both
/// are there, beside outpost's own fields.
#[tokio::test]
async fn hello_has_both_seed_shapes() {
    let w = Worker::start(&[
        ("OUTPOST_WORKER_ID", "worker-dev-gcp"),
        ("OUTPOST_MAX_TASKS", "3"),
    ]);
    let before = outpost::timefmt::now_unix_ms();
    let v: Value = get_json(&h1(), w.url("/hello")).await;
    // The guide's shape.
    assert_eq!(v["status"], "available");
    assert_eq!(v["workerId"], "worker-dev-gcp");
    assert!(v["uptime"].is_u64());
    assert_eq!(v["activeTasks"], 0);
    assert_eq!(v["totalTasksExecuted"], 0);
    // The shape its worker code and controller read.
    assert_eq!(v["id"], "worker-dev-gcp");
    assert_eq!(v["name"], "worker-dev-gcp");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["currentTasks"], 0);
    assert_eq!(v["capabilities"]["maxConcurrentTasks"], 3);
    assert_eq!(v["capabilities"]["supportedCommands"], json!(["shell"]));
    let ts = v["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    // The timestamp is now, to the millisecond (started + uptime, give or take the
    // clock reading that fixed the start).
    let now = outpost::timefmt::now_unix_ms();
    let lo = outpost::timefmt::rfc3339_ms(before.saturating_sub(5));
    let hi = outpost::timefmt::rfc3339_ms(now + 5);
    assert!(
        lo.as_str() <= ts && ts <= hi.as_str(),
        "{lo} <= {ts} <= {hi}"
    );
    // It moves with uptime.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let v2: Value = get_json(&h1(), w.url("/hello")).await;
    assert!(v2["timestamp"].as_str().unwrap() > ts);
    assert!(v2["uptime"].as_u64().unwrap() >= v["uptime"].as_u64().unwrap() + 20);
    schema_check("#/components/schemas/Hello", &v2).unwrap();
    // A task running: both counts say so.
    let id = submit(&h1(), &w, json!({"prompt": "sleep 5"})).await;
    let v: Value = get_json(&h1(), w.url("/hello")).await;
    assert_eq!(v["activeTasks"], 1);
    assert_eq!(v["currentTasks"], 1);
    cancel(&h1(), &w, &id).await;
}

/// `POST /run` asked for JSON answers at once in ClaudeCluster's shape; otherwise it
/// streams like `POST /work`.
#[tokio::test]
async fn run_has_the_seed_json_shape_and_streams_otherwise() {
    let w = Worker::start(&[("OUTPOST_MAX_TASKS", "4")]);
    let c = h1();
    let r = c
        .post(w.url("/run"))
        .header("accept", "application/json")
        .json(
            &json!({"prompt": "echo seed", "priority": 5, "workerId": "w1", "metadata": {"a": 1}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let v = conforms("POST", "/run", r).await;
    let id = v["taskId"].as_str().unwrap();
    assert!(id.starts_with("t-"));
    assert_eq!(v["status"], "pending");
    assert_eq!(v["estimatedDuration"], 0);
    assert_eq!(v["task"]["id"], id);
    assert_eq!(loc, format!("/work/{id}"));
    let end = wait_terminal(&c, &w, id, Duration::from_secs(30)).await;
    assert_eq!(end["status"], "done");
    let out = c
        .get(w.url(&format!("/work/{id}/log")))
        .send()
        .await
        .unwrap();
    assert_eq!(out.text().await.unwrap(), "seed\r\n");
    // Without Accept: JSON, the seed's stream.
    let r = c
        .post(w.url("/run"))
        .json(&json!({"prompt": "echo s2"}))
        .send()
        .await
        .unwrap();
    let events = Sse::new(r).collect(Duration::from_secs(30)).await;
    assert_eq!(output_of(&events), b"s2\r\n");
}

/// Every refusal names the field and says what is allowed.
#[tokio::test]
async fn refusals_name_the_field_and_what_is_allowed() {
    let w = Worker::start(&[]);
    let c = h1();
    let cases: Vec<(&str, &str, Value, &str, &str)> = vec![
        (
            "/work",
            "POST",
            json!({}),
            "prompt",
            "prompt or an issue_id",
        ),
        (
            "/work",
            "POST",
            json!({"prompt": 5}),
            "prompt",
            "expected a string (or null), got a number",
        ),
        (
            "/work",
            "POST",
            json!([1]),
            "body",
            "expected a JSON object, got an array",
        ),
        (
            "/work",
            "POST",
            json!({"prompt": "x", "timeout_s": 0}),
            "timeout_s",
            "from 1 to 604800",
        ),
        (
            "/work",
            "POST",
            json!({"prompt": "x", "timeout_s": 1.5}),
            "timeout_s",
            "got 1.5",
        ),
        (
            "/work",
            "POST",
            json!({"issue_id": "a b"}),
            "issue_id",
            "git ref rules",
        ),
        (
            "/work",
            "POST",
            json!({"issue_id": "a/b"}),
            "issue_id",
            "must not contain '/'",
        ),
        (
            "/work",
            "POST",
            json!({"issue_id": "x".repeat(129)}),
            "issue_id",
            "longer than 128",
        ),
        (
            "/work",
            "POST",
            json!({"prompt": "x", "branch": "-x"}),
            "branch",
            "must not start with '-'",
        ),
        (
            "/work",
            "POST",
            json!({"prompt": "x", "rig_url": "file:///etc"}),
            "rig_url",
            "use https://",
        ),
        (
            "/work",
            "POST",
            json!({"prompt": "x", "rig_url": "nope"}),
            "rig_url",
            "expected https://",
        ),
        (
            "/run",
            "POST",
            json!({"prompt": ""}),
            "prompt",
            "non-empty string",
        ),
        (
            "/run",
            "POST",
            json!({"prompt": "x", "priority": 11}),
            "priority",
            "from 1 to 10",
        ),
        (
            "/run",
            "POST",
            json!({"prompt": "x", "workerId": 3}),
            "workerId",
            "expected a string",
        ),
        (
            "/run",
            "POST",
            json!({"prompt": "x", "metadata": []}),
            "metadata",
            "expected an object",
        ),
    ];
    for (path, method, body, field, words) in cases {
        let r = c
            .request(method.parse().unwrap(), w.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path} {body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_field", "{v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}: ")), "{msg}");
        assert!(msg.contains(words), "{body}: {msg:?} should say {words:?}");
    }
    // 5.0 is a whole number, as JSON Schema's integer says.
    let id = submit(&c, &w, json!({"prompt": "true", "timeout_s": 5.0})).await;
    wait_terminal(&c, &w, &id, Duration::from_secs(30)).await;
    // Query parameters and headers: digits only, within range.
    for (url, field, header) in [
        ("/work?limit=0", "limit", None),
        ("/work?limit=-1", "limit", None),
        ("/work?limit=%2B5", "limit", None),
        (
            &format!("/work/{id}/events?after=1x") as &str,
            "after",
            None,
        ),
        (
            &format!("/work/{id}/events") as &str,
            "Last-Event-ID",
            Some("3a"),
        ),
    ] {
        let mut rb = c.get(w.url(url));
        if let Some(h) = header {
            rb = rb.header("last-event-id", h);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["field"], field, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("digits only"),
            "{v}"
        );
    }
    // The largest cursor is fine (nothing after it), one more is refused.
    let r = c
        .get(w.url(&format!("/work/{id}/events")))
        .header("last-event-id", "9223372036854775807")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "");
    let r = c
        .get(w.url(&format!("/work/{id}/events?after=9223372036854775808")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Resize names the field; a wrong method lists the allowed ones; an unknown route
    // points at the document.
    let r = c
        .post(w.url(&format!("/work/{id}/resize")))
        .json(&json!({"cols": 0, "rows": 10}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "cols", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("from 1 to 1000"));
    let r = c.put(w.url("/work")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST");
    let r = c.get(w.url("/nothing/here")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/openapi.json"),
        "{v}"
    );
    // No trailing-slash aliases: `/work/` is not a task id.
    let r = c.get(w.url("/work/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
