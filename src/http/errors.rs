//! Responses: the body type, JSON helpers, and the one error shape of the contract,
//! `{"error": {"code": "<snake_case>", "message": "<human sentence>"}}`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

/// Every response body.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

/// A whole body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Resp {
    let mut body = Vec::with_capacity(512);
    if serde_json::to_writer(&mut body, value).is_err() {
        body.clear();
        body.extend_from_slice(b"{}");
    }
    body.push(b'\n');
    json_bytes(status, Bytes::from(body))
}

/// A JSON response from an already rendered body.
pub fn json_bytes(status: StatusCode, body: Bytes) -> Resp {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An error the client sees.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    pub allow: Option<String>,
    pub extra: Option<Box<(&'static str, Value)>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
            extra: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn method_not_allowed(allow: String) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this route answers {allow} only: use one of those methods"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extra = Some(Box::new((key, value)));
        self
    }

    pub fn into_response(self) -> Resp {
        let mut err = json!({ "code": self.code, "message": self.message });
        if let Some((k, v)) = self.extra.map(|b| *b) {
            err[k] = v;
        }
        let mut r = json(self.status, &json!({ "error": err }));
        let h = r.headers_mut();
        if let Some(s) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(v) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            h.insert(ALLOW, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<crate::validate::FieldError> for ApiError {
    fn from(e: crate::validate::FieldError) -> Self {
        let field = e.field;
        ApiError::bad_request("invalid_field", e.to_string()).with("field", json!(field))
    }
}

/// Lets handlers return `Result<Resp, Infallible>` from `Result<Resp, ApiError>`.
pub fn respond(r: Result<Resp, ApiError>) -> Result<Resp, Infallible> {
    Ok(r.unwrap_or_else(ApiError::into_response))
}
