//! The connection layer to one outpost: HTTP/1.1, HTTP/2 cleartext with prior
//! knowledge, and TLS by rustls with ALPN `h2` / `http/1.1`. An HTTP/2 connection is
//! opened once and kept for every request and stream to that outpost; when it dies the
//! next request opens a new one. HTTP/1.1 connections are kept (a few) and reused once
//! idle, so keystrokes of `attach -i` do not each pay a connect (and TLS handshake);
//! a long-lived stream holds its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::error::ClientError;

/// How to reach an outpost.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// HTTP/2 with prior knowledge on `http://` URLs (on `https://`, ALPN decides).
    pub http2: bool,
    /// A PEM file of CAs to trust besides the system's (a self-signed outpost).
    pub ca_file: Option<PathBuf>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens connections to one outpost and keeps its HTTP/2 connection.
pub struct Connector {
    url: String,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    http2: bool,
    shared: tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
    /// HTTP/1.1 connections, busy or idle; an idle one is reused.
    h1: std::sync::Mutex<Vec<http1::SendRequest<Full<Bytes>>>>,
}

/// HTTP/1.1 connections kept per outpost.
const KEEP_H1: usize = 4;

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Connector {
    /// A connector for `base` (`http://host:port` or `https://...`).
    pub fn new(base: &url::Url, opts: &ConnectOptions) -> Result<Connector, ClientError> {
        let tls = match base.scheme() {
            "http" => None,
            "https" => Some(tls_config(opts.ca_file.as_deref())?),
            other => {
                return Err(ClientError::Setup(format!(
                    "{base}: the scheme {other:?} is not supported; use http:// or https://"
                )))
            }
        };
        let host = base
            .host_str()
            .ok_or_else(|| ClientError::Setup(format!("{base}: the URL has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = base.port_or_known_default().unwrap_or(80);
        Ok(Connector {
            url: base.as_str().trim_end_matches('/').to_string(),
            host,
            port,
            tls,
            http2: opts.http2,
            shared: tokio::sync::Mutex::new(None),
            h1: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn unreachable(&self, message: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            url: self.url.clone(),
            message: message.to_string(),
        }
    }

    /// Sends one request; `path_and_query` starts with `/`.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let sender = self.sender().await?;
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let result = match sender {
            Sender::H1(mut s) => {
                let host = hyper::header::HeaderValue::from_str(&self.authority())
                    .map_err(|e| ClientError::Setup(format!("{}: bad host: {e}", self.url)))?;
                req.headers_mut().insert(hyper::header::HOST, host);
                *req.uri_mut() = path.parse().map_err(|e| {
                    ClientError::Setup(format!("{}: bad path {path:?}: {e}", self.url))
                })?;
                let r = s.send_request(req).await;
                if r.is_ok() {
                    self.keep_h1(s);
                }
                r
            }
            Sender::H2(mut s) => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let uri = format!("{scheme}://{}{path}", self.authority());
                *req.uri_mut() = uri.parse().map_err(|e| {
                    ClientError::Setup(format!("{}: bad URL {uri:?}: {e}", self.url))
                })?;
                let r = s.send_request(req).await;
                if r.is_err() {
                    // The connection may be dead: the next request opens a new one.
                    *self.shared.lock().await = None;
                }
                r
            }
        };
        result.map_err(|e| self.unreachable(format!("the request failed: {e}")))
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Keeps an HTTP/1.1 connection for reuse once its response has been read.
    fn keep_h1(&self, s: http1::SendRequest<Full<Bytes>>) {
        if let Ok(mut pool) = self.h1.lock() {
            pool.retain(|c| !c.is_closed());
            if pool.len() < KEEP_H1 {
                pool.push(s);
            }
        }
    }

    /// An idle kept HTTP/1.1 connection, taken out of the pool.
    fn idle_h1(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut pool = self.h1.lock().ok()?;
        pool.retain(|c| !c.is_closed());
        let i = pool.iter().position(|c| c.is_ready())?;
        Some(pool.swap_remove(i))
    }

    async fn sender(&self) -> Result<Sender, ClientError> {
        if let Some(s) = self.idle_h1() {
            return Ok(Sender::H1(s));
        }
        let mut shared = self.shared.lock().await;
        if let Some(s) = shared.as_ref() {
            if !s.is_closed() {
                return Ok(Sender::H2(s.clone()));
            }
        }
        *shared = None;
        let sender = self.open().await?;
        if let Sender::H2(s) = &sender {
            *shared = Some(s.clone());
        }
        Ok(sender)
    }

    async fn open(&self) -> Result<Sender, ClientError> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| self.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| self.unreachable(format!("connecting: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(tcp, self.http2).await,
            Some(cfg) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| ClientError::Setup(format!("{}: bad TLS name: {e}", self.url)))?;
                let tls = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp),
                )
                .await
                .map_err(|_| self.unreachable("no TLS handshake within 10 s"))?
                .map_err(|e| {
                    self.unreachable(format!(
                        "TLS handshake: {e} (for a self-signed outpost pass --cacert FILE)"
                    ))
                })?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                self.handshake(tls, h2).await
            }
        }
    }

    async fn handshake<IO>(&self, io: IO, h2: bool) -> Result<Sender, ClientError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(|e| self.unreachable(format!("HTTP/2 handshake: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| self.unreachable(format!("HTTP/1.1 handshake: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H1(sender))
        }
    }
}

/// The TLS client setup: webpki roots, the system's roots, and `ca_file`; ALPN h2 and
/// http/1.1.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        let data = std::fs::read(path).map_err(|e| {
            ClientError::Setup(format!("reading the CA file {}: {e}", path.display()))
        })?;
        let certs = CertificateDer::pem_slice_iter(&data)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Setup(format!("the CA file {}: {e}", path.display())))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(ClientError::Setup(format!(
                "the CA file {} holds no usable PEM certificate",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Setup(format!("setting up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
