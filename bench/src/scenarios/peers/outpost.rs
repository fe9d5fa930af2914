//! outpost itself as a peer: a worker of its own (`outpost serve` on a free port with a
//! data dir the scenario keeps, so a restart finds its tasks), driven through `POST /work`
//! (SSE) and `GET /work/<id>/events?after=N`.

use super::proc::Server;
use super::{free_port, wait_ready, Held, Peer, Streamed, Work};
use crate::client::{self, Conn, Endpoint, Proto};
use crate::sse::{self, Flow};
use crate::taskrun;
use anyhow::{bail, Context, Result};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct Outpost {
    bin: PathBuf,
    data: PathBuf,
    max_tasks: usize,
    ep: Endpoint,
    server: Server,
    conn: Option<Conn>,
    /// Tasks started for open streams, cancelled by [`Peer::closed`].
    open_ids: Vec<String>,
}

impl Outpost {
    pub async fn start(bin: &Path, w: &Work) -> Result<Outpost> {
        if !bin.is_file() {
            bail!(
                "no worker binary at {} (cargo build --release -p outpost)",
                bin.display()
            );
        }
        let data = w.dir.join("outpost-data");
        std::fs::create_dir_all(&data).context("creating outpost's data dir")?;
        let max_tasks = w.open_streams + 8;
        let (server, ep) = launch(bin, &data, max_tasks, &w.dir).await?;
        Ok(Outpost {
            bin: bin.to_path_buf(),
            data,
            max_tasks,
            ep,
            server,
            conn: None,
            open_ids: Vec::new(),
        })
    }

    async fn conn(&mut self) -> Result<&mut Conn> {
        match self.conn {
            Some(ref mut c) => Ok(c),
            None => Ok(self.conn.insert(self.ep.connect(Proto::H1).await?)),
        }
    }
}

async fn launch(
    bin: &Path,
    data: &Path,
    max_tasks: usize,
    dir: &Path,
) -> Result<(Server, Endpoint)> {
    let port = free_port()?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("serve")
        .arg("--port")
        .arg(port.to_string())
        .arg("--data")
        .arg(data)
        .env("OUTPOST_BIND", "127.0.0.1")
        .env("OUTPOST_MAX_TASKS", max_tasks.to_string())
        .env_remove("OUTPOST_AGENT")
        .env_remove("OUTPOST_TOKEN")
        .env_remove("OUTPOST_SWAP")
        .env_remove("K_SERVICE");
    let mut server = Server::start(cmd, &dir.join("outpost.log"), &format!("outpost-{port}"))?;
    let ep = Endpoint::local(([127, 0, 0, 1], port).into());
    let probe = ep.clone();
    wait_ready(&mut server, Duration::from_secs(20), || {
        let ep = probe.clone();
        async move { client::get_json(&ep, "/hello").await.map(|_| ()) }
    })
    .await?;
    Ok((server, ep))
}

/// `POST /work` asking for SSE; the task id and the event stream.
async fn post(conn: &mut Conn, cmd: &str) -> Result<(String, Incoming)> {
    let req = conn.request(
        Method::POST,
        "/work",
        client::work_body(cmd),
        &[
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ],
    )?;
    let resp = conn.send(req).await?;
    if resp.status() != StatusCode::OK {
        bail!("POST /work answered {}", resp.status());
    }
    let id = resp
        .headers()
        .get("x-task-id")
        .and_then(|v| v.to_str().ok())
        .context("POST /work: no X-Task-Id header")?
        .to_string();
    Ok((id, resp.into_body()))
}

/// Follows an event stream, collecting output text, until `stop` says so, `done`, or
/// `limit`. Returns the text and the last event id seen.
async fn collect(
    body: Incoming,
    limit: Duration,
    stop: impl Fn(&str) -> bool,
) -> (String, Option<u64>) {
    let mut text = String::new();
    let mut last = None;
    let _ = tokio::time::timeout(
        limit,
        sse::follow(body, |e| {
            last = e.id.or(last);
            if e.event == "output" {
                text.push_str(&String::from_utf8_lossy(&sse::output_bytes(&e.data)?));
            }
            Ok(if stop(&text) {
                Flow::Stop
            } else {
                Flow::Continue
            })
        }),
    )
    .await;
    (text, last)
}

/// Aborts a reader task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Peer for Outpost {
    fn server(&self) -> &Server {
        &self.server
    }

    async fn command(&mut self, cmd: &str) -> Result<()> {
        let conn = self.conn().await?;
        match taskrun::run(conn, cmd, None, &|_| {}).await {
            Ok(r) if r.status.as_deref() == Some("done") => Ok(()),
            Ok(r) => bail!("task ended {:?}: {:?}", r.status, r.error),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    async fn stream(&mut self, cmd: &str, counter: &AtomicU64) -> Result<Streamed> {
        let conn = &mut self.ep.connect(Proto::H1).await?;
        let tick = |n: u64| {
            counter.fetch_add(n, Ordering::Relaxed);
        };
        let r = taskrun::run(conn, cmd, None, &tick).await?;
        Ok(Streamed {
            bytes: r.output_bytes,
            first_byte: r.first_output,
            last_byte: r.last_output,
        })
    }

    async fn open(&mut self, cmd: &str) -> Result<Option<Held>> {
        let mut c = self.ep.connect(Proto::H1).await?;
        let (id, mut body) = post(&mut c, cmd).await?;
        self.open_ids.push(id);
        // Read up to the first output, then keep reading in the background.
        let mut parser = sse::Parser::new();
        let mut got = false;
        while !got {
            use http_body_util::BodyExt;
            let frame = body
                .frame()
                .await
                .context("the stream ended before any output")?
                .context("reading the stream")?;
            if let Ok(chunk) = frame.into_data() {
                parser.push(&chunk, &mut |e| got |= e.event == "output");
            }
        }
        let reader = tokio::spawn(async move {
            let _keep = c;
            let _ = sse::follow(body, |_| Ok(Flow::Continue)).await;
        });
        Ok(Some(Box::new(AbortOnDrop(reader))))
    }

    async fn closed(&mut self) -> Result<()> {
        for id in std::mem::take(&mut self.open_ids) {
            client::cancel_task(&self.ep, &id).await?;
        }
        // Until their agents are gone, so the next figures do not carry them.
        for _ in 0..100 {
            let v = client::get_json(&self.ep, "/pty/status").await?;
            if v.get("activeProcesses").and_then(|n| n.as_u64()) == Some(0) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the open-stream tasks were still running 10 s after their cancel")
    }

    async fn replay(&mut self, cmd: &str) -> Result<(String, String)> {
        let mut c = self.ep.connect(Proto::H1).await?;
        let (id, body) = post(&mut c, cmd).await?;
        let (_, last) = collect(body, Duration::from_secs(10), |t| t.contains("run1-line2")).await;
        drop(c); // the client goes away mid-stream
        let after = last.unwrap_or(0);
        let body = self
            .ep
            .events(&format!("/work/{id}/events?after={after}"))
            .await?
            .into_body();
        let (dropped, _) = collect(body, Duration::from_secs(15), |_| false).await;
        // Restart the worker on the same data dir and ask for the whole task again.
        self.conn = None;
        self.server.stop();
        let (server, ep) = launch(
            &self.bin,
            &self.data,
            self.max_tasks,
            self.data.parent().unwrap_or(&self.data),
        )
        .await?;
        self.server = server;
        self.ep = ep;
        let body = self
            .ep
            .events(&format!("/work/{id}/events?after=0"))
            .await?
            .into_body();
        let (restarted, _) = collect(body, Duration::from_secs(15), |_| false).await;
        Ok((dropped, restarted))
    }
}
