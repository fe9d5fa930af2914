//! The contract as an OpenAPI 3.1 document: `GET /openapi.json` and `GET /openapi.yaml`
//! serve `docs/openapi.json` and `docs/openapi.yaml`, embedded at compile time. The YAML
//! is the one written by hand; the JSON is generated from it and checked against it by
//! tests/openapi.rs, so the two never drift.

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;

use super::errors::{json_bytes, Resp};

const JSON: &str = include_str!("../../docs/openapi.json");
const YAML: &str = include_str!("../../docs/openapi.yaml");

/// `GET /openapi.json`.
pub fn json() -> Resp {
    json_bytes(StatusCode::OK, Bytes::from_static(JSON.as_bytes()))
}

/// `GET /openapi.yaml`.
pub fn yaml() -> Resp {
    let mut r = json_bytes(StatusCode::OK, Bytes::from_static(YAML.as_bytes()));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/yaml; charset=utf-8"),
    );
    r
}
