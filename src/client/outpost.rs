//! One outpost: its base URL, its token, its connection, and a method per route of the
//! contract. Replies that are errors come back as [`ClientError::Api`] with the
//! contract's code and message.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Response};
use serde::de::DeserializeOwned;

use super::conn::{ConnectOptions, Connector};
use super::error::ClientError;
use super::events::EventStream;
use super::types::{ErrorBody, Hello, Task, WorkRequest};

/// How long a whole non-streaming reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one outpost.
pub struct Outpost {
    url: String,
    token: Option<String>,
    conn: Connector,
}

impl Outpost {
    /// A client for the outpost at `url` (`http://host:port` or `https://...`).
    pub fn new(
        url: &str,
        token: Option<String>,
        opts: &ConnectOptions,
    ) -> Result<Outpost, ClientError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            ClientError::Setup(format!(
                "{url:?} is not a URL ({e}); pass --url like http://127.0.0.1:8080"
            ))
        })?;
        if parsed.path() != "/" && !parsed.path().is_empty() {
            return Err(ClientError::Setup(format!(
                "{url}: give the outpost's base URL, without a path"
            )));
        }
        Ok(Outpost {
            url: parsed.as_str().trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            conn: Connector::new(&parsed, opts)?,
        })
    }

    /// The base URL, as given (without a trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request and returns the response head with its body still streaming;
    /// an error status is read and returned as [`ClientError::Api`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(USER_AGENT, concat!("outpost/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = &self.token {
            b = b.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let req = b.body(Full::new(body.unwrap_or_default())).map_err(|e| {
            ClientError::Setup(format!("{}{path}: building the request: {e}", self.url))
        })?;
        let resp = self.conn.send(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.api_error(resp).await)
    }

    async fn api_error(&self, resp: Response<Incoming>) -> ClientError {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = self.read_body(resp).await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => ClientError::Api {
                url: self.url.clone(),
                status,
                code: e.error.code,
                message: e.error.message,
                retry_after,
                id: e.error.id,
            },
            Err(_) => ClientError::Api {
                url: self.url.clone(),
                status,
                code: "http_error".into(),
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                retry_after,
                id: None,
            },
        }
    }

    async fn read_body(&self, resp: Response<Incoming>) -> Result<Bytes, ClientError> {
        match tokio::time::timeout(REPLY_TIMEOUT, resp.into_body().collect()).await {
            Ok(Ok(b)) => Ok(b.to_bytes()),
            Ok(Err(e)) => Err(ClientError::Unreachable {
                url: self.url.clone(),
                message: format!("reading the reply: {e}"),
            }),
            Err(_) => Err(ClientError::Unreachable {
                url: self.url.clone(),
                message: format!("no whole reply within {REPLY_TIMEOUT:?}"),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<T, ClientError> {
        let accept = [(ACCEPT.as_str(), "application/json".to_string())];
        let resp = self.request(method, path, &accept, body).await?;
        let bytes = self.read_body(resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url: self.url.clone(),
            message: format!(
                "{path}: {e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        })
    }

    /// `GET /hello`.
    pub async fn hello(&self) -> Result<Hello, ClientError> {
        self.json(Method::GET, "/hello", None).await
    }

    /// `POST /work` (JSON reply): the new task. A live task with the same `issue_id`
    /// is `Api { status: 409, id: Some(live id), .. }`.
    pub async fn submit(&self, req: &WorkRequest) -> Result<Task, ClientError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| ClientError::Setup(format!("encoding the request: {e}")))?;
        self.json(Method::POST, "/work", Some(body.into())).await
    }

    /// `GET /work?limit=N`, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<Task>, ClientError> {
        self.json(Method::GET, &format!("/work?limit={limit}"), None)
            .await
    }

    /// `GET /work/<id>`.
    pub async fn task(&self, id: &str) -> Result<Task, ClientError> {
        self.json(Method::GET, &format!("/work/{}", path_part(id)?), None)
            .await
    }

    /// `DELETE /work/<id>`: cancel.
    pub async fn cancel(&self, id: &str) -> Result<Task, ClientError> {
        self.json(Method::DELETE, &format!("/work/{}", path_part(id)?), None)
            .await
    }

    /// `POST /work/<id>/input`: bytes to the agent's terminal; returns how many.
    pub async fn input(&self, id: &str, bytes: Bytes) -> Result<u64, ClientError> {
        let path = format!("/work/{}/input", path_part(id)?);
        let v: serde_json::Value = self.json(Method::POST, &path, Some(bytes)).await?;
        Ok(v.get("written")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0))
    }

    /// `POST /work/<id>/resize`.
    pub async fn resize(&self, id: &str, cols: u16, rows: u16) -> Result<(), ClientError> {
        let path = format!("/work/{}/resize", path_part(id)?);
        let body = serde_json::json!({ "cols": cols, "rows": rows }).to_string();
        let _: serde_json::Value = self.json(Method::POST, &path, Some(body.into())).await?;
        Ok(())
    }

    /// `GET /work/<id>/log`: the raw output so far, as a streaming body.
    pub async fn log(&self, id: &str) -> Result<Incoming, ClientError> {
        let path = format!("/work/{}/log", path_part(id)?);
        Ok(self
            .request(Method::GET, &path, &[], None)
            .await?
            .into_body())
    }

    /// `GET /work/<id>/events` after event `after` (0: from the start), one connection;
    /// see [`super::Follow`] for a stream that resumes by itself.
    pub async fn events(&self, id: &str, after: u64) -> Result<EventStream, ClientError> {
        let path = format!("/work/{}/events", path_part(id)?);
        let mut headers = vec![(ACCEPT.as_str(), "text/event-stream".to_string())];
        if after > 0 {
            headers.push(("last-event-id", after.to_string()));
        }
        let resp = self.request(Method::GET, &path, &headers, None).await?;
        Ok(EventStream::new(self.url.clone(), resp.into_body()))
    }
}

/// A task id as a path segment: ids are `[A-Za-z0-9._-]`, anything else is refused here.
fn path_part(id: &str) -> Result<&str, ClientError> {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(id)
    } else {
        Err(ClientError::Setup(format!(
            "{id:?} is not a task id (like t-19a8f0c2a1b3c4d5e; see `outpost ls`)"
        )))
    }
}
