//! The listener: one port serving HTTP/1.1 and HTTP/2 cleartext with prior knowledge
//! (hyper-util's auto builder reads the preface), and TLS (rustls) with ALPN `h2` and
//! `http/1.1` when a certificate is configured. Stops accepting on shutdown and lets
//! open connections finish (event streams end after their `done` event). A cleartext
//! HTTP/1.1 event-stream subscription is served without hyper (`subscribe`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::coalesce::Coalesce;
use super::inline::{self, InlineExec};
use super::subscribe;
use super::{handle, AppState};

/// Builds the TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading OUTPOST_TLS_CERT {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the certificates in {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("OUTPOST_TLS_CERT {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key OUTPOST_TLS_KEY {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn builder() -> auto::Builder<InlineExec> {
    let mut b = auto::Builder::new(InlineExec);
    b.http1()
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .timer(TokioTimer::new());
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// One builder per protocol: the protocol is known before hyper reads a byte, so hyper
/// reads straight into its own buffer (auto-detection would hand it the sniffed bytes
/// first, and its read buffer then grows to 16 KiB for every connection).
struct Builders {
    h1: auto::Builder<InlineExec>,
    h2: auto::Builder<InlineExec>,
}

impl Builders {
    fn pick(&self, h2: bool) -> &auto::Builder<InlineExec> {
        if h2 {
            &self.h2
        } else {
            &self.h1
        }
    }
}

/// HTTP/2's client connection preface: a cleartext connection that starts with it
/// speaks h2c with prior knowledge.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a new connection may take to send its first bytes.
const FIRST_BYTES: Duration = Duration::from_secs(30);

/// The first bytes of a cleartext connection, peeked (nothing consumed): as many of
/// the h2c preface's length as had come when they stopped matching it, or all of it.
struct FirstBytes {
    buf: [u8; 24],
    n: usize,
}

impl FirstBytes {
    /// Whether the connection speaks h2c with prior knowledge.
    fn h2(&self) -> bool {
        self.bytes() == PREFACE
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.n]
    }
}

/// Tells h2c prior knowledge from HTTP/1.1 by peeking at the first bytes (nothing is
/// consumed). A client that stops partway through the preface is polled every 10 ms,
/// within the caller's timeout.
async fn first_bytes(stream: &tokio::net::TcpStream) -> FirstBytes {
    let mut first = FirstBytes {
        buf: [0u8; 24],
        n: 0,
    };
    loop {
        first.n = stream.peek(&mut first.buf).await.unwrap_or(0);
        let n = first.n;
        if n == 0 || first.buf[..n] != PREFACE[..n] || n == PREFACE.len() {
            return first;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a connection: an h2 one with its streams in its own task (see `inline`).
fn served<C: std::future::Future>(h2: bool, conn: C) -> Either<inline::Driven<C>, C> {
    if h2 {
        Either::Left(inline::drive(conn))
    } else {
        Either::Right(conn)
    }
}

/// Serves until `shutdown` turns true, then waits (at most `linger`) for open
/// connections to finish.
pub async fn serve(
    state: &'static AppState,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
    linger: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builders = Arc::new(Builders {
        h1: builder().http1_only(),
        h2: builder().http2_only(),
    });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait a little instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = service_fn(move |req| handle(state, req));
        let builders = builders.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        // The task's future is as large as its largest state, for its whole life: the
        // hyper connections (4 KiB and more) are boxed, so that a hand-served event
        // stream's task stays small.
        tokio::spawn(async move {
            let ended = match tls {
                None => {
                    let first = tokio::time::Instant::now() + FIRST_BYTES;
                    let Ok(bytes) = tokio::time::timeout_at(first, first_bytes(&stream)).await
                    else {
                        return;
                    };
                    let h2 = bytes.h2();
                    let mut stream = stream;
                    if !h2 {
                        if let Some(resp) =
                            subscribe::take(state, &mut stream, bytes.bytes(), first).await
                        {
                            // The watcher is held to the end, as hyper's connections hold
                            // theirs: the shutdown waits for the stream (within `linger`).
                            subscribe::serve(stream, resp, peer).await;
                            drop(watcher);
                            return;
                        }
                    }
                    let conn = builders
                        .pick(h2)
                        .serve_connection(TokioIo::new(Coalesce::new(stream, h2)), svc)
                        .into_owned();
                    Box::pin(served(h2, watcher.watch(conn))).await
                }
                Some(acc) => {
                    Box::pin(async move {
                        let accept = acc.accept(stream);
                        let tls = match tokio::time::timeout(Duration::from_secs(10), accept).await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "TLS handshake failed: {e}");
                                return Ok(());
                            }
                            Err(_) => return Ok(()),
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let conn = builders
                            .pick(h2)
                            .serve_connection(TokioIo::new(Coalesce::new(tls, h2)), svc)
                            .into_owned();
                        served(h2, watcher.watch(conn)).await
                    })
                    .await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(linger, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            "closing connections still open after {} ms",
            linger.as_millis()
        );
    }
}
