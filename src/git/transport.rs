//! The smart-HTTP transport libgit2 uses for `http://` and `https://`: stateless RPC
//! over `ureq` with rustls (no OpenSSL, no libgit2 TLS). `GET <url>/info/refs?service=..`
//! for the ref advertisement, `POST <url>/git-upload-pack|git-receive-pack` with the
//! bytes libgit2 writes. Bounded retries with backoff on transient failures, timeouts
//! on every socket step, and a structured [`GitError`] recorded for the caller.
//!
//! libgit2's transport factory is process-global, so the settings of one operation (token,
//! timeouts, trust) travel in a [`Session`] installed on the calling thread by
//! [`begin`] for the duration of the fetch or push (libgit2 is synchronous: the factory
//! and every read/write run on that thread).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};

use super::error::{basic_auth_value, redact, GitError};
use super::remote_url::{origin_of, RemoteUrl};
use super::{tls, GitConfig};

/// Attempts per HTTP request (the first try included).
pub(crate) const TRIES: u32 = 3;
/// Most pack data libgit2 keeps mapped at once.
const MAPPED_LIMIT: usize = 256 * 1024 * 1024;
/// Pause before the second try; doubled before each later one.
const BACKOFF: Duration = Duration::from_millis(250);

/// One fetch or push: who to talk to and how, and the first error worth reporting.
pub(crate) struct Session {
    token: Option<String>,
    origin: String,
    display_url: String,
    network_timeout: Duration,
    agent: ureq::Agent,
    error: Mutex<Option<GitError>>,
}

impl Session {
    fn record(&self, err: GitError) -> io::Error {
        let text = err.to_string();
        if let Ok(mut slot) = self.error.lock() {
            if slot.is_none() {
                *slot = Some(err);
            }
        }
        io::Error::other(text)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Session>>> = const { RefCell::new(None) };
}

/// Keeps a [`Session`] installed on this thread; restores the previous one on drop.
pub(crate) struct SessionGuard {
    session: Arc<Session>,
    previous: Option<Arc<Session>>,
}

impl SessionGuard {
    /// The structured error the transport recorded, if any (taken: asked once).
    pub(crate) fn take_error(&self) -> Option<GitError> {
        self.session.error.lock().ok().and_then(|mut e| e.take())
    }

    /// Turns a libgit2 error from a network operation into the best [`GitError`]: the one
    /// the transport recorded, else libgit2's own message (redacted).
    pub(crate) fn map_err(&self, what: &str, err: &git2::Error) -> GitError {
        if let Some(recorded) = self.take_error() {
            return recorded;
        }
        GitError::git(
            format!("{what} {}", self.session.display_url),
            err,
            self.session.token.as_deref(),
        )
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Installs the settings for an operation on `remote` on this thread.
pub(crate) fn begin(cfg: &GitConfig, remote: &RemoteUrl) -> Result<SessionGuard, GitError> {
    install_transport();
    let tls = tls::client_config(cfg.extra_ca_file.as_deref())?;
    let agent = ureq::AgentBuilder::new()
        .tls_config(tls)
        .timeout_connect(cfg.network_timeout)
        .timeout_read(cfg.network_timeout)
        .timeout_write(cfg.network_timeout)
        .redirects(5)
        .user_agent(concat!("git/2.0 (outpost/", env!("CARGO_PKG_VERSION"), ")"))
        .build();
    let session = Arc::new(Session {
        token: cfg.token.clone().filter(|t| !t.is_empty()),
        origin: remote.origin.clone(),
        display_url: remote.url.clone(),
        network_timeout: cfg.network_timeout,
        agent,
        error: Mutex::new(None),
    });
    let previous = CURRENT.with(|c| c.borrow_mut().replace(session.clone()));
    Ok(SessionGuard { session, previous })
}

/// Registers this transport with libgit2 for `http` and `https`, and sets libgit2's
/// process-wide options, once per process.
pub fn install_transport() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: libgit2 options are set once, before any repository is opened by us.
        unsafe {
            // The data dir is ours; a volume created by another uid must not lock us out.
            let _ = git2::opts::set_verify_owner_validation(false);
            // Keep mapped pack windows modest on small (0.6 GB) machines.
            let _ = git2::opts::set_mwindow_mapped_limit(MAPPED_LIMIT);
        }
        for scheme in ["https", "http"] {
            // SAFETY: registration runs once, inside call_once, before any transport of
            // ours is created (every caller goes through this function first).
            let registered = unsafe { git2::transport::register(scheme, factory) };
            if let Err(e) = registered {
                tracing::error!(scheme, error = %e, "cannot register the git HTTP transport");
            }
        }
    });
}

fn factory(remote: &git2::Remote<'_>) -> Result<Transport, git2::Error> {
    let session = CURRENT.with(|c| c.borrow().clone()).ok_or_else(|| {
        git2::Error::from_str("git network access outside an outpost git session")
    })?;
    let sub = HttpSubtransport {
        session,
        base: Arc::new(Mutex::new(None)),
    };
    Transport::smart(remote, true, sub)
}

struct HttpSubtransport {
    session: Arc<Session>,
    /// The repository URL after a redirect of the ref advertisement, if any.
    base: Arc<Mutex<Option<String>>>,
}

impl SmartSubtransport for HttpSubtransport {
    fn action(
        &self,
        url: &str,
        service: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let base = self
            .base
            .lock()
            .ok()
            .and_then(|b| b.clone())
            .unwrap_or_else(|| url.trim_end_matches('/').to_string());
        Ok(Box::new(HttpStream {
            session: self.session.clone(),
            redirected_base: self.base.clone(),
            base,
            service,
            body: Vec::new(),
            response: None,
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

struct HttpStream {
    session: Arc<Session>,
    redirected_base: Arc<Mutex<Option<String>>>,
    base: String,
    service: Service,
    body: Vec<u8>,
    response: Option<Box<dyn Read + Send + Sync>>,
}

impl Write for HttpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.body.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            let reader = self.send()?;
            self.response = Some(reader);
        }
        let Some(reader) = self.response.as_mut() else {
            return Ok(0);
        };
        reader.read(buf).map_err(|e| {
            let detail = io_detail(&e, self.session.network_timeout);
            let err = GitError::Network {
                url: self.session.display_url.clone(),
                detail: format!("{detail} while receiving data"),
                tries: 1,
            };
            self.session.record(err)
        })
    }
}

impl HttpStream {
    /// Sends the request (with retries) and returns the response body.
    fn send(&mut self) -> io::Result<Box<dyn Read + Send + Sync>> {
        let (name, ls) = match self.service {
            Service::UploadPackLs => ("git-upload-pack", true),
            Service::UploadPack => ("git-upload-pack", false),
            Service::ReceivePackLs => ("git-receive-pack", true),
            Service::ReceivePack => ("git-receive-pack", false),
        };
        let url = if ls {
            format!("{}/info/refs?service={name}", self.base)
        } else {
            format!("{}/{name}", self.base)
        };
        let expected = if ls {
            format!("application/x-{name}-advertisement")
        } else {
            format!("application/x-{name}-result")
        };
        // A receive-pack the server may have applied must not be sent twice.
        let retry_after_send = self.service != Service::ReceivePack;
        let session = self.session.clone();
        let auth = session
            .token
            .as_deref()
            .filter(|_| origin_of(&url).as_deref() == Some(session.origin.as_str()))
            .map(basic_auth_value);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = if ls {
                session.agent.get(&url)
            } else {
                session
                    .agent
                    .post(&url)
                    .set("Content-Type", &format!("application/x-{name}-request"))
            };
            req = req.set("Accept", &expected).set("Pragma", "no-cache");
            if let Some(auth) = &auth {
                req = req.set("Authorization", auth);
            }
            let result = if ls {
                req.call()
            } else {
                req.send_bytes(&self.body)
            };
            let last = attempt >= TRIES;
            let err = match result {
                Ok(resp) => return self.accept(resp, &url, &expected),
                Err(ureq::Error::Status(status, _)) => {
                    let retry = (status >= 500 || status == 429) && retry_after_send;
                    if retry && !last {
                        backoff(attempt);
                        continue;
                    }
                    status_error(&session, status, attempt)
                }
                Err(ureq::Error::Transport(t)) => {
                    if let Some(detail) = tls_detail(&t) {
                        GitError::Tls {
                            url: session.display_url.clone(),
                            detail: redact(&detail, session.token.as_deref()),
                        }
                    } else {
                        let (detail, retryable) = transport_detail(&t, session.network_timeout);
                        let retry = retryable
                            && (retry_after_send || t.kind() == ureq::ErrorKind::ConnectionFailed);
                        if retry && !last {
                            backoff(attempt);
                            continue;
                        }
                        GitError::Network {
                            url: session.display_url.clone(),
                            detail: redact(&detail, session.token.as_deref()),
                            tries: attempt,
                        }
                    }
                }
            };
            return Err(session.record(err));
        }
    }

    /// Checks a successful response and remembers a redirected repository URL.
    fn accept(
        &self,
        resp: ureq::Response,
        url: &str,
        expected: &str,
    ) -> io::Result<Box<dyn Read + Send + Sync>> {
        // `content_type()` is the media type alone (parameters such as charset dropped).
        let content_type = resp.content_type().trim().to_ascii_lowercase();
        if content_type != expected {
            let err = GitError::NotSmartHttp {
                url: self.session.display_url.clone(),
                content_type,
            };
            return Err(self.session.record(err));
        }
        let final_url = resp.get_url();
        if final_url != url {
            if let Some(idx) = final_url.find("/info/refs") {
                if let Ok(mut base) = self.redirected_base.lock() {
                    *base = Some(final_url[..idx].to_string());
                }
            }
        }
        Ok(resp.into_reader())
    }
}

fn backoff(attempt: u32) {
    std::thread::sleep(BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1)));
}

fn status_error(session: &Session, status: u16, tries: u32) -> GitError {
    let url = session.display_url.clone();
    let has_token = session.token.is_some();
    match status {
        401 | 403 => GitError::Auth {
            url,
            status,
            hint: if has_token {
                "the server refused the token in OUTPOST_GIT_TOKEN: check that it is valid and can access this repository"
            } else {
                "set OUTPOST_GIT_TOKEN (or GH_TOKEN) to a token that can access this repository"
            },
        },
        404 => GitError::NotFound {
            url,
            hint: if has_token {
                " and that the token in OUTPOST_GIT_TOKEN can see this repository"
            } else {
                "; a private repository also answers 404 without a token: set OUTPOST_GIT_TOKEN"
            },
        },
        _ => GitError::Http { url, status, tries },
    }
}

/// A short description of a transport failure and whether another try may help.
fn transport_detail(t: &ureq::Transport, timeout: Duration) -> (String, bool) {
    let io_err = source_chain(t).find_map(|e| e.downcast_ref::<io::Error>());
    match (t.kind(), io_err) {
        (ureq::ErrorKind::Dns, _) => (
            format!(
                "cannot resolve the host name ({})",
                t.message().unwrap_or("DNS lookup failed")
            ),
            false,
        ),
        (_, Some(e)) => {
            let retryable = matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::WouldBlock
            );
            (io_detail(e, timeout), retryable)
        }
        (kind, None) => {
            let retryable = matches!(
                kind,
                ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io
            );
            let detail = match t.message() {
                Some(m) => format!("{kind}: {m}"),
                None => kind.to_string(),
            };
            (detail, retryable)
        }
    }
}

fn io_detail(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        io::ErrorKind::ConnectionAborted => "connection aborted".to_string(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            format!("timed out (nothing for {}s)", timeout.as_secs_f32())
        }
        io::ErrorKind::UnexpectedEof => "the connection closed unexpectedly".to_string(),
        _ => e.to_string(),
    }
}

/// The rustls error behind a transport failure, as text, if there is one.
fn tls_detail(t: &ureq::Transport) -> Option<String> {
    for e in source_chain(t) {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            if let Some(tls) = io_err
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
            {
                return Some(tls.to_string());
            }
        }
    }
    None
}

fn source_chain<'a>(
    t: &'a ureq::Transport,
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> + 'a {
    let first = std::error::Error::source(t);
    std::iter::successors(first, |e| e.source())
}
