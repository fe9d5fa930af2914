//! Test support: a real git server on 127.0.0.1. `git http-backend` (the one the git CLI
//! ships) behind a small CGI bridge (tokio + hyper), over plain HTTP or TLS (rustls, a
//! throwaway CA made with rcgen whose PEM file clients trust). Repositories are bare
//! repos in a temp dir, made and inspected with the real `git` CLI. Extras for tests:
//! basic-auth requirement, injected failures (5xx), stalling an upload-pack response
//! halfway (to kill a client mid-fetch), and a log of requests. Stops on drop.
//!
//! Use from a test file as `mod gitserver;`.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Body = BoxBody<Bytes, Infallible>;

/// Shared between the test thread and the server's tasks.
#[derive(Default)]
struct State {
    project_root: PathBuf,
    /// `Basic <base64(user:password)>` required on every request when set.
    auth: Mutex<Option<String>>,
    /// Statuses to answer the next requests with, instead of serving them.
    failures: Mutex<VecDeque<u16>>,
    /// Hold upload-pack responses after their first half.
    stall: AtomicBool,
    stalled: AtomicUsize,
    /// Hold ref listings (`GET .../info/refs`) before answering them.
    hold_listing: AtomicBool,
    held: AtomicUsize,
    release: tokio::sync::Notify,
    /// `METHOD /path?query -> status`, in order.
    log: Mutex<Vec<String>>,
}

/// A running git server. Dropping it stops the server and deletes its repositories.
pub struct GitServer {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl GitServer {
    /// Starts a server on 127.0.0.1 (an ephemeral port), over TLS when `tls`.
    pub fn start(tls: bool) -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repos");
        std::fs::create_dir_all(&root).unwrap();
        let state = Arc::new(State {
            project_root: root,
            ..State::default()
        });
        let acceptor = tls.then(|| make_tls(dir.path()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        GitServer {
            dir,
            addr,
            tls,
            state,
            runtime: Some(runtime),
        }
    }

    /// Prepares a task's worktree on `branch` from repository `name`'s default branch
    /// with outpost's git module; panics on failure.
    pub fn prepare(
        &self,
        cfg: &outpost::git::GitConfig,
        name: &str,
        branch: &str,
        task: &str,
    ) -> outpost::git::Workspace {
        outpost::git::prepare(cfg, &self.url(name), None, branch, task, &mut |_| {}).unwrap()
    }

    /// The clone URL of repository `name`.
    pub fn url(&self, name: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/{name}.git", self.addr.port())
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The bare repository of `name` on disk.
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.state.project_root.join(format!("{name}.git"))
    }

    /// The PEM file of the CA that signed the server's certificate (TLS servers only).
    pub fn cert_pem_path(&self) -> PathBuf {
        assert!(self.tls, "cert_pem_path() on a plain-HTTP server");
        self.dir.path().join("ca.pem")
    }

    /// A scratch directory that lives as long as the server.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Creates bare repository `name` (pushes enabled) with one commit on `main` holding
    /// `files`; returns that commit's id.
    pub fn create_repo(&self, name: &str, files: &[(&str, &str)]) -> String {
        let bare = self.repo_path(name);
        run_git(
            self.dir.path(),
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        run_git(&bare, &["config", "http.receivepack", "true"]);
        self.commit(name, "main", files, "initial commit")
    }

    /// Adds a commit writing `files` on top of `branch` of repository `name` (creating
    /// the branch from main if it does not exist) with the git CLI; returns its id.
    pub fn commit(
        &self,
        name: &str,
        branch: &str,
        files: &[(&str, &str)],
        message: &str,
    ) -> String {
        let work = tempfile::tempdir_in(self.dir.path()).unwrap();
        let w = work.path();
        let bare = self.repo_path(name);
        run_git(w, &["init", "-q", "-b", branch]);
        // Start from the branch if it exists, else from main (nothing: the first commit).
        let bare_str = bare.to_str().unwrap();
        let found = [branch, "main"].iter().any(|b| {
            git_output(w, &["fetch", "-q", bare_str, b])
                .status
                .success()
        });
        if found {
            run_git(w, &["reset", "-q", "--hard", "FETCH_HEAD"]);
        }
        for (path, content) in files {
            let p = w.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        run_git(w, &["add", "-A"]);
        run_git(w, &["commit", "-q", "--allow-empty", "-m", message]);
        let spec = format!("HEAD:refs/heads/{branch}");
        run_git(w, &["push", "-q", "-f", bare.to_str().unwrap(), &spec]);
        run_git(w, &["rev-parse", "HEAD"])
    }

    /// Runs `git` in the bare repository `name`; panics on failure; returns trimmed stdout.
    pub fn git(&self, name: &str, args: &[&str]) -> String {
        run_git(&self.repo_path(name), args)
    }

    /// Installs a `pre-receive` hook in `name` that prints `message` and refuses every push.
    pub fn reject_pushes(&self, name: &str, message: &str) {
        let hook = self.repo_path(name).join("hooks").join("pre-receive");
        std::fs::write(&hook, format!("#!/bin/sh\necho '{message}' >&2\nexit 1\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Requires HTTP basic auth `user:password` on every request from now on.
    pub fn require_auth(&self, user: &str, password: &str) {
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        *self.state.auth.lock().unwrap() = Some(format!("Basic {encoded}"));
    }

    /// Answers the next `statuses.len()` requests with these statuses (e.g. 503).
    pub fn fail_next(&self, statuses: &[u16]) {
        self.state.failures.lock().unwrap().extend(statuses);
    }

    /// While on, upload-pack responses that carry a pack stop after their first half until
    /// turned off.
    pub fn set_stall(&self, on: bool) {
        self.switch(&self.state.stall, on);
    }

    /// Waits (at most `timeout`) until a response is being held; true if one is.
    pub fn wait_stalled(&self, timeout: Duration) -> bool {
        wait_for(&self.state.stalled, timeout)
    }

    /// While on, ref listings (`GET .../info/refs`, a warm fetch's check) are held,
    /// unanswered, until turned off.
    pub fn hold_listings(&self, on: bool) {
        self.switch(&self.state.hold_listing, on);
    }

    /// Turns a hold on or off; off releases every response it holds.
    fn switch(&self, flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
        if !on {
            self.state.release.notify_waiters();
        }
    }

    /// Waits (at most `timeout`) until a ref listing is being held; true if one is.
    pub fn wait_listing_held(&self, timeout: Duration) -> bool {
        wait_for(&self.state.held, timeout)
    }

    /// Every request served so far: `METHOD /path?query -> status`.
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }
}

/// Waits (at most `timeout`) until `count` is above zero; true if it is.
fn wait_for(count: &AtomicUsize, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if count.load(Ordering::SeqCst) > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until `flag` is off (it is turned off with a `release` notification).
async fn released(state: &State, flag: &AtomicBool) {
    while flag.load(Ordering::SeqCst) {
        let released = state.release.notified();
        if !flag.load(Ordering::SeqCst) {
            break;
        }
        released.await;
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.set_stall(false);
        self.hold_listings(false);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Every file below `dir` (not following symlinks), with its metadata. A directory or
/// file that goes while the walk runs is left out: a worker empties its trash in the
/// background, so a data dir's ended worktrees can vanish between listing and reading.
pub fn files_below(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("listing {}: {e}", d.display()),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => stack.push(path),
                Ok(meta) => out.push((path, meta)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("reading {}: {e}", path.display()),
            }
        }
    }
    out
}

/// Runs `git` in `dir` with an isolated configuration; panics on failure; returns stdout.
pub fn run_git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `git` in `dir` with an isolated configuration and returns what happened.
pub fn git_output(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "upstream")
        .env("GIT_AUTHOR_EMAIL", "upstream@example.com")
        .env("GIT_COMMITTER_NAME", "upstream")
        .env("GIT_COMMITTER_EMAIL", "upstream@example.com")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn http_backend() -> PathBuf {
    let exec = run_git(Path::new("/"), &["--exec-path"]);
    PathBuf::from(exec).join("git-http-backend")
}

fn make_tls(dir: &Path) -> tokio_rustls::TlsAcceptor {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "outpost test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

fn full(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text.to_string())).boxed());
    *resp.status_mut() = status;
    resp
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
    );
    let resp = serve(req, state.clone()).await;
    state
        .log
        .lock()
        .unwrap()
        .push(format!("{line} -> {}", resp.status().as_u16()));
    Ok(resp)
}

async fn serve(req: Request<Incoming>, state: Arc<State>) -> Response<Body> {
    let injected = state.failures.lock().unwrap().pop_front();
    if let Some(status) = injected {
        return full(StatusCode::from_u16(status).unwrap(), "injected failure\n");
    }
    let mut remote_user = None;
    let required = state.auth.lock().unwrap().clone();
    if let Some(required) = required {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(required.as_str()) {
            let mut resp = full(StatusCode::UNAUTHORIZED, "authentication required\n");
            resp.headers_mut().insert(
                "www-authenticate",
                hyper::header::HeaderValue::from_static("Basic realm=\"git\""),
            );
            return resp;
        }
        remote_user = Some("git-user".to_string());
    }

    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type");
    let encoding = header("content-encoding");
    let protocol = header("git-protocol");
    if method == "GET" && path.ends_with("/info/refs") && state.hold_listing.load(Ordering::SeqCst)
    {
        state.held.fetch_add(1, Ordering::SeqCst);
        released(&state, &state.hold_listing).await;
        state.held.fetch_sub(1, Ordering::SeqCst);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return full(StatusCode::BAD_REQUEST, "bad body\n"),
    };

    let root = state.project_root.clone();
    let env = CgiEnv {
        method: method.clone(),
        path: path.clone(),
        query,
        content_type,
        encoding,
        protocol,
        remote_user,
    };
    let out = tokio::task::spawn_blocking(move || run_cgi(&root, &env, &body))
        .await
        .unwrap();
    let (head, payload) = split_cgi(&out);
    let mut status = StatusCode::OK;
    let mut builder = Response::builder();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        } else {
            builder = builder.header(name.trim(), value);
        }
    }
    let builder = builder.status(status);
    let stall = state.stall.load(Ordering::SeqCst)
        && method == "POST"
        && path.ends_with("/git-upload-pack")
        && payload.windows(4).any(|w| w == b"PACK");
    if !stall {
        return builder.body(Full::new(payload).boxed()).unwrap();
    }
    // Send the first half, then hold the rest until released (or the server stops).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    let half = payload.len() / 2;
    let (first, rest) = (payload.slice(..half), payload.slice(half..));
    let _ = tx.send(Ok(Frame::data(first))).await;
    state.stalled.fetch_add(1, Ordering::SeqCst);
    let st = state.clone();
    tokio::spawn(async move {
        released(&st, &st.stall).await;
        st.stalled.fetch_sub(1, Ordering::SeqCst);
        let _ = tx.send(Ok(Frame::data(rest))).await;
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    builder.body(BodyExt::boxed(body)).unwrap()
}

/// The request facts `git http-backend` gets through its environment.
struct CgiEnv {
    method: String,
    path: String,
    query: String,
    content_type: Option<String>,
    encoding: Option<String>,
    protocol: Option<String>,
    remote_user: Option<String>,
}

/// Runs `git http-backend` for one request; returns its whole output (headers and body).
fn run_cgi(root: &Path, env: &CgiEnv, body: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut cmd = Command::new(http_backend());
    cmd.env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", &env.method)
        .env("PATH_INFO", &env.path)
        .env("QUERY_STRING", &env.query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(ct) = &env.content_type {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(enc) = &env.encoding {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(p) = &env.protocol {
        cmd.env("GIT_PROTOCOL", p);
    }
    if let Some(user) = &env.remote_user {
        cmd.env("REMOTE_USER", user);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = stdin.write_all(body);
        });
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let _ = child.wait();
    out
}

/// Splits CGI output into its header block and its body.
fn split_cgi(out: &[u8]) -> (String, Bytes) {
    for (sep, len) in [(&b"\r\n\r\n"[..], 4), (&b"\n\n"[..], 2)] {
        if let Some(i) = out.windows(len).position(|w| w == sep) {
            let head = String::from_utf8_lossy(&out[..i]).into_owned();
            return (head, Bytes::copy_from_slice(&out[i + len..]));
        }
    }
    (String::new(), Bytes::copy_from_slice(out))
}
