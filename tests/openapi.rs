//! The OpenAPI document (docs/openapi.yaml, and docs/openapi.json generated from it)
//! against the code: the two files agree, the router's route table and the document
//! list the same routes, the worker serves the document, and real responses of a
//! running worker (JSON bodies, SSE and NDJSON events, error shapes, headers) fit the
//! document's schemas.

mod common;
mod contract;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use contract::*;
use outpost::http::routes::ROUTES;
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";

/// The JSON file is exactly the YAML rendered as compact JSON (keys sorted).
/// `OUTPOST_REGEN_OPENAPI=1` rewrites it from the YAML.
#[test]
fn json_is_generated_from_yaml() {
    // Compact: it is embedded in the binary; people read the YAML.
    let want = serde_json::to_string(&yaml_doc()).unwrap() + "\n";
    let path = root().join("docs/openapi.json");
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        if std::env::var_os("OUTPOST_REGEN_OPENAPI").is_some() {
            std::fs::write(&path, &want).unwrap();
            return;
        }
        panic!(
            "docs/openapi.json is not what docs/openapi.yaml says: run \
             `OUTPOST_REGEN_OPENAPI=1 cargo test --test openapi json_is_generated_from_yaml` \
             and commit both files"
        );
    }
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// Every (method, path) of the document.
fn doc_routes(d: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in d["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn router_and_document_list_the_same_routes() {
    let d = doc();
    let code: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let documented = doc_routes(&d);
    let missing: Vec<_> = code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes in the router but not in docs/openapi.yaml: {missing:?}; \
         in the document but not in the router (src/http/routes.rs ROUTES): {extra:?}"
    );
    // The routes open without a token are exactly those with `security: []`.
    for r in ROUTES {
        let op = &d["paths"][r.path][r.method.to_lowercase()];
        let open = op.get("security") == Some(&json!([]));
        assert_eq!(
            open, r.open,
            "{} {}: security in the document",
            r.method, r.path
        );
        assert!(
            op["operationId"].is_string(),
            "{} {} has no operationId",
            r.method,
            r.path
        );
    }
}

/// Every `$ref` in the document points at something that exists, and every link names
/// an operation that exists.
#[test]
fn document_references_resolve() {
    let d = doc();
    fn walk(v: &Value, refs: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    refs.push(r.clone());
                }
                for x in m.values() {
                    walk(x, refs);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, refs)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(&d, &mut refs);
    assert!(refs.len() > 50);
    for r in &refs {
        let ptr = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(d.pointer(ptr).is_some(), "unresolved $ref {r}");
    }
    let ids: BTreeSet<String> = doc_routes(&d)
        .iter()
        .map(|(m, p)| {
            d["paths"][p][m.to_lowercase()]["operationId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), ROUTES.len(), "operationIds are unique");
    let text = d.to_string();
    for part in text.split("\"operationId\":\"").skip(1) {
        let id = part.split('"').next().unwrap();
        assert!(ids.contains(id), "a link names the unknown operation {id}");
    }
    // Every schema of the components compiles, and they refuse what they should.
    for name in d["components"]["schemas"].as_object().unwrap().keys() {
        schema_check(&format!("#/components/schemas/{name}"), &json!(null)).ok();
    }
    let ev = "#/components/schemas/Event";
    assert!(schema_check(ev, &json!({"id": 1, "event": "output", "data": "x"})).is_ok());
    assert!(schema_check(ev, &json!({"id": 1, "event": "output"})).is_err());
    assert!(schema_check(ev, &json!({"id": 0, "event": "status", "status": "done"})).is_err());
    assert!(schema_check(ev, &json!({"id": 2, "event": "nope"})).is_err());
    let done = json!({"id": 9, "event": "done", "status": "done", "exit_code": 0,
        "branch": "b", "commit": null, "pr_url": null, "error": null, "duration_ms": 3});
    assert!(schema_check(ev, &done).is_ok());
    let mut no_duration = done.clone();
    no_duration.as_object_mut().unwrap().remove("duration_ms");
    assert!(schema_check(ev, &no_duration).is_err());
    // A damaged log ends with an `error` and a `done`, neither with an id.
    let damaged = json!({"event": "done", "status": "failed", "exit_code": null,
        "branch": "b", "commit": null, "pr_url": null, "error": "x", "error_code": "log_damaged"});
    assert!(schema_check(ev, &damaged).is_ok());
    let error = json!({"event": "error", "code": "log_damaged", "message": "x"});
    assert!(schema_check(ev, &error).is_ok());
    assert!(schema_check("#/components/schemas/Task", &json!({"id": "t-1"})).is_err());
    let ok_id = "#/components/schemas/IssueId";
    for good in ["gt-abc123", "ISSUE_42", "v1.2", "é"] {
        assert!(schema_check(ok_id, &json!(good)).is_ok(), "{good}");
    }
    for bad in [
        "-x", "a..b", "a b", "a~1", "x.lock", ".hidden", "a/b", "", "a@{1}", "@", "a.",
    ] {
        assert!(schema_check(ok_id, &json!(bad)).is_err(), "{bad}");
        assert!(
            outpost::validate::check_ref_part("issue_id", bad, 128, false).is_err(),
            "{bad}"
        );
    }
}

fn authed() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    reqwest::Client::builder()
        .http1_only()
        .default_headers(h)
        .build()
        .unwrap()
}

fn token_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("OUTPOST_TOKEN", TOKEN),
        ("OUTPOST_WORKER_ID", "worker-dev-gcp"),
    ]
}

#[tokio::test]
async fn the_worker_serves_the_document() {
    let w = Worker::start(&token_env());
    let c = authed();
    let r = c.get(w.url("/openapi.json")).send().await.unwrap();
    let v = conforms("GET", "/openapi.json", r).await;
    assert_eq!(v, doc());
    let r = c.get(w.url("/openapi.yaml")).send().await.unwrap();
    let text = conforms("GET", "/openapi.yaml", r).await;
    let yaml = std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap();
    assert_eq!(text.as_str().unwrap(), yaml);
    // Like every route but /hello and /healthz, it needs the token.
    let r = h1().get(w.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    conforms("GET", "/openapi.json", r).await;
}

#[tokio::test]
async fn health_responses_fit_the_document() {
    let w = Worker::start(&token_env());
    let c = authed();
    for path in ["/hello", "/healthz", "/readyz", "/pty/status", "/metrics"] {
        let r = c.get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        conforms("GET", path, r).await;
    }
    // /hello and /healthz answer without the token, the rest do not.
    for path in ["/hello", "/healthz"] {
        let r = h1().get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        conforms("GET", path, r).await;
    }
    for path in ["/readyz", "/pty/status", "/metrics", "/work"] {
        let r = h1().get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        conforms("GET", path, r).await;
    }
}

#[tokio::test]
async fn task_responses_and_streams_fit_the_document() {
    let w = Worker::start(&token_env());
    let c = authed();
    let url = |p: &str| w.url(p);
    let post_json = |p: &str, body: Value| {
        c.post(url(p))
            .header("accept", "application/json")
            .json(&body)
    };

    // POST /work, all three replies.
    let body = json!({"prompt": "printf 'a\\377b'", "issue_id": "gt-1", "timeout_s": 60});
    let task = call(post_json("/work", body), 202, "POST", "/work").await;
    let id = task["id"].as_str().unwrap().to_string();
    wait_terminal(&c, &w, &id, Duration::from_secs(30)).await;
    let sse = c.post(url("/work")).json(&json!({"prompt": "echo sse"}));
    let events = call(sse, 200, "POST", "/work").await;
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "output"));
    let nd = c
        .post(url("/work"))
        .header("accept", "application/x-ndjson")
        .json(&json!({"prompt": "echo nd"}));
    call(nd, 200, "POST", "/work").await;

    // The task, the list, the events both ways (an output event with b64 among them),
    // the log.
    let task_url = |suffix: &str| url(&format!("/work/{id}{suffix}"));
    let t = call(c.get(task_url("")), 200, "GET", "/work/{id}").await;
    assert_eq!(t["status"], "done");
    let list = call(c.get(url("/work?limit=2")), 200, "GET", "/work").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let ev = "/work/{id}/events";
    let events = call(c.get(task_url("/events")), 200, "GET", ev).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.get("b64").is_some()),
        "{events}"
    );
    let nd = c
        .get(task_url("/events?after=1"))
        .header("accept", "application/x-ndjson");
    let after = call(nd, 200, "GET", ev).await;
    assert_eq!(after[0]["id"], 2);
    call(c.get(task_url("/log")), 200, "GET", "/work/{id}/log").await;

    // A finished task: cancel and input are 409.
    call(c.delete(task_url("")), 409, "DELETE", "/work/{id}").await;
    let input = c.post(task_url("/input")).body("x");
    call(input, 409, "POST", "/work/{id}/input").await;

    // A running task: input, resize, cancel.
    let body = json!({"prompt": "read line; echo got $line; sleep 30"});
    let live = call(post_json("/work", body), 202, "POST", "/work").await;
    let live_url = |suffix: &str| url(&format!("/work/{}{suffix}", live["id"].as_str().unwrap()));
    let mut input_ok = false;
    for _ in 0..100 {
        let r = c
            .post(live_url("/input"))
            .body("hi\n")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let v = conforms("POST", "/work/{id}/input", r).await;
            assert_eq!(v["written"], 3);
            input_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(input_ok, "input was never taken");
    let resize = c
        .post(live_url("/resize"))
        .json(&json!({"cols": 100, "rows": 30}));
    call(resize, 200, "POST", "/work/{id}/resize").await;
    // At capacity (OUTPOST_MAX_TASKS is 1): 429 with Retry-After.
    call(
        post_json("/run", json!({"prompt": "echo x"})),
        429,
        "POST",
        "/run",
    )
    .await;
    call(c.delete(live_url("")), 202, "DELETE", "/work/{id}").await;
    let live_id = live["id"].as_str().unwrap();
    let end = wait_terminal(&c, &w, live_id, Duration::from_secs(30)).await;
    assert_eq!(end["status"], "cancelled");

    // Refusals.
    call(c.get(url("/work/t-nope")), 404, "GET", "/work/{id}").await;
    call(c.post(url("/work")).body("{not json"), 400, "POST", "/work").await;
    let xml = c
        .post(url("/work"))
        .header("content-type", "application/xml")
        .body("<a/>");
    call(xml, 415, "POST", "/work").await;
    let big = c.post(url("/work")).body(vec![b' '; 2 << 20]);
    call(big, 413, "POST", "/work").await;
    call(c.get(task_url("/events?after=x")), 400, "GET", ev).await;
    let anon = h1().post(url("/run")).json(&json!({"prompt": "x"}));
    call(anon, 401, "POST", "/run").await;
}
