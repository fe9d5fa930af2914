//! The OpenAPI document (docs/openapi.yaml, and docs/openapi.json generated from it)
//! against the code: the two files agree, the router's route table and the document
//! list the same routes, the worker serves the document, and real responses of a
//! running worker (JSON bodies, SSE and NDJSON events, error shapes, headers) fit the
//! document's schemas. Also both of ClaudeCluster's shapes (`/hello`, `POST /run`) and
//! refusals that name the field and what is allowed.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use outpost::http::routes::ROUTES;
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_doc() -> Value {
    let text = std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml is not valid YAML")
}

fn doc() -> Value {
    let text = std::fs::read_to_string(root().join("docs/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("docs/openapi.json is not valid JSON")
}

/// The JSON file is exactly the YAML rendered as pretty JSON (keys sorted).
/// `OUTPOST_REGEN_OPENAPI=1` rewrites it from the YAML.
#[test]
fn json_is_generated_from_yaml() {
    let want = serde_json::to_string_pretty(&yaml_doc()).unwrap() + "\n";
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

/// Validates `value` against the schema at `pointer` of the document (formats too).
fn schema_check(pointer: &str, value: &Value) -> Result<(), String> {
    static CACHE: Mutex<Option<HashMap<String, std::sync::Arc<jsonschema::Validator>>>> =
        Mutex::new(None);
    let v = {
        let mut g = CACHE.lock().unwrap();
        let map = g.get_or_insert_with(HashMap::new);
        map.entry(pointer.to_string())
            .or_insert_with(|| {
                let mut schema = doc();
                schema["$ref"] = json!(pointer);
                schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
                let v = jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("schema {pointer} does not compile: {e}"));
                std::sync::Arc::new(v)
            })
            .clone()
    };
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Follows a `$ref` inside the document to the object it names.
fn deref<'a>(d: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => deref(d, d.pointer(r.trim_start_matches('#')).unwrap()),
        None => v,
    }
}

/// Checks a real response against the document: its status is documented for the
/// operation, its content type is one the response lists, required headers are there,
/// and the body fits the schema (JSON), or each event does (SSE, NDJSON). Returns the
/// JSON body, or the events.
async fn conforms(method: &str, template: &str, r: reqwest::Response) -> Value {
    let d = doc();
    let status = r.status().as_u16();
    let op = &d["paths"][template][method.to_lowercase()];
    assert!(op.is_object(), "{method} {template} is not in the document");
    let resp = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {template}: status {status} is not documented"));
    let resp = deref(&d, resp);
    if let Some(headers) = resp.get("headers").and_then(Value::as_object) {
        for (name, h) in headers {
            let h = deref(&d, h);
            if h["required"] == json!(true) {
                assert!(
                    r.headers().contains_key(name.as_str()),
                    "{method} {template} {status}: header {name} is missing"
                );
            }
        }
    }
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let mime = ct.split(';').next().unwrap().trim().to_string();
    let content = &resp["content"];
    let media = content.get(&mime).unwrap_or_else(|| {
        panic!("{method} {template} {status}: content type {ct} is not documented: {content}")
    });
    let body = r.bytes().await.unwrap();
    let check = |ptr: &str, v: &Value| {
        if let Err(e) = schema_check(ptr, v) {
            panic!("{method} {template} {status}: {v} does not fit {ptr}: {e}");
        }
    };
    match mime.as_str() {
        "application/json" => {
            let v: Value = serde_json::from_slice(&body).unwrap();
            let schema = &media["schema"];
            match schema.get("$ref").and_then(Value::as_str) {
                Some(ptr) => check(ptr, &v),
                None => {
                    // An inline schema: validate against its pointer in the document.
                    let code = status.to_string();
                    let ptr = format!(
                        "#/paths/{}/{}/responses/{code}/content/application~1json/schema",
                        template
                            .replace('~', "~0")
                            .replace('/', "~1")
                            .replace('{', "%7B")
                            .replace('}', "%7D"),
                        method.to_lowercase()
                    );
                    check(&ptr, &v)
                }
            }
            v
        }
        "text/event-stream" | "application/x-ndjson" => {
            let events: Vec<Value> = if mime == "text/event-stream" {
                // Each event as an SSE parser reads it, then its data as an Event.
                let blocks = sse_events(&body);
                for b in &blocks {
                    check("#/components/schemas/SseEvent", b);
                }
                blocks
                    .iter()
                    .map(|b| serde_json::from_str(b["data"].as_str().unwrap()).unwrap())
                    .collect()
            } else {
                let lines: Vec<Value> = body
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_slice(l).unwrap())
                    .collect();
                check(
                    "#/components/schemas/NdjsonStream",
                    &Value::Array(lines.clone()),
                );
                lines
            };
            assert!(!events.is_empty(), "{method} {template}: an empty stream");
            for e in &events {
                check("#/components/schemas/Event", e);
            }
            assert_eq!(
                events.last().unwrap()["event"],
                "done",
                "the stream ends with done"
            );
            Value::Array(events)
        }
        _ => Value::String(String::from_utf8_lossy(&body).into_owned()),
    }
}

/// The events of an SSE body as an SSE parser reads them (`{id, event, data}`, all
/// strings), checking `id` and `event` agree with the data's own.
fn sse_events(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).unwrap();
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut ev = serde_json::Map::new();
        for line in block.lines().filter(|l| !l.starts_with(':')) {
            let (k, v) = line.split_once(": ").unwrap_or((line, ""));
            ev.insert(k.to_string(), json!(v));
        }
        if ev.is_empty() {
            continue;
        }
        let data: Value = serde_json::from_str(ev["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data["id"].to_string(),
            ev["id"].as_str().unwrap(),
            "{block}"
        );
        assert_eq!(data["event"], ev["event"], "{block}");
        out.push(Value::Object(ev));
    }
    out
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

/// Sends a request, checks its status, and checks the response against the document
/// (`conforms`); returns what `conforms` returns.
async fn call(rb: reqwest::RequestBuilder, status: u16, method: &str, template: &str) -> Value {
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), status, "{method} {template}");
    conforms(method, template, r).await
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
    let r = c
        .post(w.url("/work"))
        .header("accept", "application/json")
        .json(&json!({"prompt": "true", "timeout_s": 5.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
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
