//! The HTTP client: hyper connections over HTTP/1.1 and h2c (prior knowledge) to one
//! endpoint, and the few requests the scenarios make.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::TcpStream;

pub type Body = Full<Bytes>;

/// Wire protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2c,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2c => "h2c",
        }
    }
}

/// Where a server listens: its socket address and the authority used in requests.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub authority: String,
}

impl Endpoint {
    /// Parses `http://host:port[/]` and resolves the host.
    pub async fn from_url(url: &str) -> Result<Endpoint> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("--url {url:?} is not a URL like http://127.0.0.1:8080"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--url {url:?}: only http:// is supported (bench speaks h1 and h2c)");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--url {url:?} has no host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve {host:?} from --url {url:?}"))?
            .next()
            .with_context(|| format!("{host:?} resolves to no address"))?;
        Ok(Endpoint {
            addr,
            authority: format!("{}:{port}", authority.host()),
        })
    }

    /// `GET path` as an event stream on a fresh HTTP/1.1 connection (one per stream,
    /// as an idle subscriber holds it): the response, once its status says success.
    pub async fn events(&self, path: &str) -> Result<Response<Incoming>> {
        let mut c = self.connect(Proto::H1).await?;
        let req = c.request(
            Method::GET,
            path,
            Bytes::new(),
            &[("accept", "text/event-stream")],
        )?;
        let resp = c.send(req).await?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        Ok(resp)
    }

    pub fn local(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            authority: addr.to_string(),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// Opens one connection speaking `proto`.
    pub async fn connect(&self, proto: Proto) -> Result<Conn> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
        let io = TokioIo::new(tcp);
        let sender = match proto {
            Proto::H1 => {
                let (s, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .context("HTTP/1.1 handshake")?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H1(s)
            }
            Proto::H2c => {
                let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .context("h2c (prior knowledge) handshake")?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(s)
            }
        };
        Ok(Conn {
            sender,
            authority: self.authority.clone(),
        })
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// One client connection.
pub struct Conn {
    sender: Sender,
    authority: String,
}

impl Conn {
    /// Another handle on the same h2c connection (a stream beside the others);
    /// None for HTTP/1.1, which carries one request at a time.
    pub fn another_stream(&self) -> Option<Conn> {
        match &self.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
                authority: self.authority.clone(),
            }),
            Sender::H1(_) => None,
        }
    }

    /// Builds a request for `path` with the right URI form for the protocol.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<Request<Body>> {
        let uri = match self.sender {
            Sender::H1(_) => path.to_string(),
            Sender::H2(_) => format!("http://{}{path}", self.authority),
        };
        let mut b = Request::builder().method(method).uri(uri);
        if matches!(self.sender, Sender::H1(_)) {
            b = b.header(hyper::header::HOST, &self.authority);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(body)).context("building a request")
    }

    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>> {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.context("connection closed")?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.context("connection closed")?;
                s.send_request(req).await
            }
        };
        resp.context("request failed")
    }

    /// GET `path` and collect the body.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes)> {
        let req = self.request(Method::GET, path, Bytes::new(), &[])?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the body")?
            .to_bytes();
        Ok((status, body))
    }
}

/// GET `path` on a fresh HTTP/1.1 connection and parse the JSON body.
pub async fn get_json(ep: &Endpoint, path: &str) -> Result<serde_json::Value> {
    let mut c = ep.connect(Proto::H1).await?;
    let (status, body) = c.get(path).await?;
    if !status.is_success() {
        bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("GET {path}: body is not JSON"))
}

/// The JSON body of a `POST /work` whose prompt is `prompt` (the shell agent runs it).
pub fn work_body(prompt: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "prompt": prompt }).to_string())
}

/// `POST /work` asking for a 202 and the task object; returns the task id.
pub async fn start_task(ep: &Endpoint, prompt: &str) -> Result<String> {
    let mut c = ep.connect(Proto::H1).await?;
    let req = c.request(
        Method::POST,
        "/work",
        work_body(prompt),
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
    )?;
    let resp = c.send(req).await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the POST /work body")?
        .to_bytes();
    if status != StatusCode::ACCEPTED {
        bail!(
            "POST /work answered {status}: {} (is OUTPOST_MAX_TASKS high enough?)",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).context("POST /work: body is not JSON")?;
    v.get("id")
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .context("POST /work: the task object has no \"id\"")
}

/// `DELETE /work/<id>` (cancel); errors are reported to the caller to ignore or show.
pub async fn cancel_task(ep: &Endpoint, id: &str) -> Result<()> {
    let mut c = ep.connect(Proto::H1).await?;
    let req = c.request(Method::DELETE, &format!("/work/{id}"), Bytes::new(), &[])?;
    let resp = c.send(req).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if !status.is_success() && status != StatusCode::CONFLICT {
        bail!("DELETE /work/{id}: {status}");
    }
    Ok(())
}
