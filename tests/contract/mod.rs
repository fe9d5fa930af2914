//! Test support for the OpenAPI document: loading it, validating values against its
//! schemas (the `jsonschema` crate, formats included), and checking a real response of
//! the worker against the operation it answers: status, content type, required
//! headers, body or stream events.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};

/// The repository's top directory.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn yaml_doc() -> Value {
    let text = std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml is not valid YAML")
}

pub fn doc() -> Value {
    let text = std::fs::read_to_string(root().join("docs/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("docs/openapi.json is not valid JSON")
}

/// Validates `value` against the schema at `pointer` of the document (formats too).
pub fn schema_check(pointer: &str, value: &Value) -> Result<(), String> {
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
pub async fn conforms(method: &str, template: &str, r: reqwest::Response) -> Value {
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

/// Sends a request, checks its status, and checks the response against the document
/// (`conforms`); returns what `conforms` returns.
pub async fn call(rb: reqwest::RequestBuilder, status: u16, method: &str, template: &str) -> Value {
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), status, "{method} {template}");
    conforms(method, template, r).await
}
