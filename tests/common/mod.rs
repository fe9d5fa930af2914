//! Test support: starts the real `outpost` binary on a free loopback port with its own
//! data dir, and reads its SSE / NDJSON streams with the client library's SSE parser.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

/// A loopback port no other worker of this test binary gets: taken in turn from a
/// range below the kernel's ephemeral ports (so two workers started at once cannot be
/// handed the same just-released port, which let one test talk to another's worker),
/// skipping any port something else holds.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 15_000;
    const SPAN: u16 = 15_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Test binaries run one after another; spread them over the range anyway.
    let base = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (base.wrapping_add(n) % SPAN);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// A running worker; killed on drop.
pub struct Worker {
    pub child: Option<Child>,
    pub port: u16,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub log: PathBuf,
    pub scheme: &'static str,
    pub host: &'static str,
}

impl Worker {
    pub fn start(env: &[(&str, &str)]) -> Worker {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        // A port free when chosen can be taken by another program before the worker
        // binds it: then the worker says so and exits, and another port is tried.
        let mut tries = 0;
        let mut w = loop {
            match Worker::try_start_on(&data, free_port(), env) {
                Ok(w) => break w,
                Err(why) if tries < 4 && why.contains("is the port in use") => tries += 1,
                Err(why) => panic!("{why}"),
            }
        };
        w._tmp = Some(tmp);
        w
    }

    /// Starts on a given data dir and port (for restarts).
    pub fn start_on(data: &Path, port: u16, env: &[(&str, &str)]) -> Worker {
        Worker::try_start_on(data, port, env).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts on a given data dir and port; Err says why it did not come up.
    pub fn try_start_on(data: &Path, port: u16, env: &[(&str, &str)]) -> Result<Worker, String> {
        let log = data.with_extension(format!("log{port}"));
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.arg("serve")
            .env_remove("K_SERVICE")
            .env_remove("OUTPOST_TOKEN")
            .env("PORT", port.to_string())
            .env("OUTPOST_DATA", data)
            .env("OUTPOST_GRACE_S", "2")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let tls = env.iter().any(|(k, _)| *k == "OUTPOST_TLS_CERT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start outpost");
        let w = Worker {
            child: Some(child),
            port,
            data: data.to_path_buf(),
            _tmp: None,
            log,
            scheme: if tls { "https" } else { "http" },
            host: bind_host(env),
        };
        w.wait_ready()?;
        Ok(w)
    }

    /// Waits (bounded) until this worker, not just anything on its port, listens: the
    /// connection must succeed while the process runs and its log says it listens.
    fn wait_ready(&self) -> Result<(), String> {
        for _ in 0..200 {
            if !self.running() {
                return Err(format!(
                    "worker exited before listening on port {}; log:\n{}",
                    self.port,
                    self.log_text()
                ));
            }
            if std::net::TcpStream::connect((self.host, self.port)).is_ok()
                && self.log_text().contains(" listening")
                && self.running()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!("worker did not listen; log:\n{}", self.log_text()))
    }

    /// Whether the worker process is still running (not exited, not a zombie).
    pub fn running(&self) -> bool {
        let Some(c) = self.child.as_ref() else {
            return false;
        };
        match std::fs::read_to_string(format!("/proc/{}/stat", c.id())) {
            Ok(stat) => !matches!(
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next()),
                Some('Z' | 'X')
            ),
            Err(_) => false,
        }
    }

    /// What a failed request's message says about the worker: alive or not, and its log.
    pub fn diagnose(&self) -> String {
        format!(
            "worker on port {} {}; its log:\n{}",
            self.port,
            if self.running() {
                "is running"
            } else {
                "has EXITED"
            },
            self.log_text()
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}:{}{}", self.scheme, self.host, self.port, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends a signal and waits (bounded) for the process to exit; returns its status.
    pub fn signal_and_wait(&mut self, sig: i32, max: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, sig) };
        let steps = (max.as_millis() / 20) as usize;
        for _ in 0..steps {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Worker {
    /// Stops the worker as a platform would (SIGTERM, SIGKILL after 3 s), so that a
    /// worker with nothing left to drain removes its cgroups: one killed outright
    /// leaves its cgroup parent behind on this machine for good (another data dir's
    /// worker never sweeps it), and hundreds of them slow every later cgroup operation.
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal_and_wait(libc::SIGTERM, Duration::from_secs(3));
        }
    }
}

fn bind_host(env: &[(&str, &str)]) -> &'static str {
    match env
        .iter()
        .find(|(k, _)| *k == "OUTPOST_BIND")
        .map(|(_, v)| *v)
    {
        Some("127.0.0.2") => "127.0.0.2",
        _ => "127.0.0.1",
    }
}

pub fn h1() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

pub fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// One event of a task, as the client library reads it (`id`, `event`, `data`).
pub use outpost::client::types::Event;

/// Reads SSE events from a streaming response with the client library's SSE parser
/// (the WHATWG rules), checking the status and content type first.
pub struct Sse {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: outpost::client::sse::Parser,
    ready: std::collections::VecDeque<outpost::client::sse::RawEvent>,
    /// Comment lines seen (`: keep-alive`).
    pub comments: u64,
}

impl Sse {
    pub fn new(resp: reqwest::Response) -> Sse {
        assert_eq!(resp.status(), 200, "stream status");
        let ct = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        Sse {
            stream: resp.bytes_stream().boxed(),
            parser: outpost::client::sse::Parser::new(),
            ready: Default::default(),
            comments: 0,
        }
    }

    /// The last `retry:` hint (milliseconds) the server sent, if any.
    pub fn retry_ms(&self) -> Option<u64> {
        self.parser.retry_ms
    }

    /// The next event, or None at the end of the stream; panics after `max` of silence.
    pub async fn next(&mut self, max: Duration) -> Option<Event> {
        match self.try_next(max).await {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    }

    /// As [`Sse::next`], but a broken connection, silence or a malformed event is an
    /// `Err` instead of a panic (for clients of a worker that is being killed). An event
    /// cut off by the connection's end is not returned: it was never whole.
    pub async fn try_next(&mut self, max: Duration) -> Result<Option<Event>, String> {
        loop {
            if let Some(raw) = self.ready.pop_front() {
                return raw.into_event().map(Some);
            }
            match tokio::time::timeout(max, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let mut out = Vec::new();
                    self.parser.feed(&chunk, &mut out);
                    self.ready.extend(out);
                    self.comments = self.parser.comments;
                }
                Ok(Some(Err(e))) => return Err(format!("stream error: {e}")),
                Ok(None) => return Ok(None),
                Err(_) => return Err(format!("no event within {max:?}")),
            }
        }
    }

    /// Every event to the end of the stream.
    pub async fn collect(mut self, max: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.next(max).await {
            out.push(e);
        }
        out
    }
}

/// All output bytes of a list of events, in order.
pub fn output_of(events: &[Event]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e.event == "output")
        .flat_map(|e| e.output_bytes().expect("output event"))
        .collect()
}

/// Checks ids strictly increase by one from `first` and the stream ends with done.
pub fn assert_complete(events: &[Event], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.id,
            first + i as u64,
            "ids must be consecutive: {events:?}"
        );
    }
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("done"),
        "ends with done"
    );
}

/// GETs a URL and parses its JSON body.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
) -> T {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// POSTs a task with the default reply (an SSE stream).
pub async fn post_work(c: &reqwest::Client, w: &Worker, body: Value) -> reqwest::Response {
    match c.post(w.url("/work")).json(&body).send().await {
        Ok(r) => r,
        Err(e) => panic!("POST /work failed: {e:?}\n{}", w.diagnose()),
    }
}

/// POSTs a task and returns its id (JSON reply).
pub async fn submit(c: &reqwest::Client, w: &Worker, body: Value) -> String {
    submit_as(c, w, None, body).await
}

/// As [`submit`], with `Authorization: Bearer <token>` when a token is given.
pub async fn submit_as(
    c: &reqwest::Client,
    w: &Worker,
    token: Option<&str>,
    body: Value,
) -> String {
    let mut req = c.post(w.url("/work")).header("accept", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /work failed: {e:?}\n{}", w.diagnose()));
    assert_eq!(r.status(), 202, "submit: {}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Waits (bounded) for a task to reach a terminal state; returns its object.
pub async fn wait_terminal(c: &reqwest::Client, w: &Worker, id: &str, max: Duration) -> Value {
    let steps = (max.as_millis() / 50) as usize;
    for _ in 0..steps {
        let v: Value = c
            .get(w.url(&format!("/work/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(
            v["status"].as_str(),
            Some("done" | "failed" | "cancelled" | "interrupted")
        ) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} did not end within {max:?}");
}

/// Sends a request and reads its whole body as text.
pub async fn text_of(req: reqwest::RequestBuilder) -> String {
    req.send().await.unwrap().text().await.unwrap()
}

/// Reopens a task's event stream after `last`, as EventSource does (`Last-Event-ID`).
pub async fn events_after(
    c: &reqwest::Client,
    w: &Worker,
    id: &str,
    last: u64,
) -> reqwest::Response {
    c.get(w.url(&format!("/work/{id}/events")))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap()
}

/// Opens a task's event stream from the start.
pub async fn open_events(c: &reqwest::Client, w: &Worker, id: &str) -> reqwest::Response {
    c.get(w.url(&format!("/work/{id}/events")))
        .send()
        .await
        .unwrap()
}

/// The full event list of a task (replayed from the start).
pub async fn events_of(c: &reqwest::Client, w: &Worker, id: &str) -> Vec<Event> {
    let r = c
        .get(w.url(&format!("/work/{id}/events")))
        .send()
        .await
        .unwrap();
    Sse::new(r).collect(Duration::from_secs(30)).await
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn read_all(mut f: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

/// `dir` is marked as the top of independent hierarchies (`chattr +T`) where the
/// filesystem has the flag (ext4, as /tmp is on the test machines), so that each tree
/// made in it starts in a block group of its own.
pub fn assert_spreads_children(dir: &Path) {
    use std::os::fd::AsRawFd;
    let fs = nix::sys::statfs::statfs(dir).unwrap();
    if fs.filesystem_type() != nix::sys::statfs::EXT4_SUPER_MAGIC {
        eprintln!(
            "{} is not on ext4: the placement hint is not checked",
            dir.display()
        );
        return;
    }
    let file = std::fs::File::open(dir).unwrap();
    let mut flags: libc::c_int = 0;
    // SAFETY: the fd is open and `flags` outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    assert_eq!(rc, 0, "{}", dir.display());
    assert_ne!(flags & 0x0002_0000, 0, "{} is not +T", dir.display());
}

/// `DELETE /work/<id>` (cancel); returns the response for the caller to check.
pub async fn cancel(c: &reqwest::Client, w: &Worker, id: &str) -> reqwest::Response {
    c.delete(w.url(&format!("/work/{id}")))
        .send()
        .await
        .unwrap()
}

/// A temporary directory every user may write (the agent runs as an unprivileged user
/// when the tests run as root).
pub fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}
