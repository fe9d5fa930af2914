//! SWE-ReX 1.4.0's remote server (`swerex-remote`, FastAPI on uvicorn), driven through
//! `POST /execute` (`{"command": ..., "shell": true}`: the command runs to its end and
//! its whole output comes back in one JSON answer). It has no streaming route; its
//! `X-Request-ID` header makes a retried request get the stored answer.

use super::proc::Server;
use super::{free_port, install, wait_ready, Held, Peer, Streamed, Work};
use crate::client::{Conn, Endpoint, Proto};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const LABEL: &str = "SWE-ReX 1.4.0";
const PIN: &str = "swe-rex==1.4.0";
const TOKEN: &str = "outpost-bench";

pub struct SweRex {
    venv: PathBuf,
    dir: PathBuf,
    ep: Endpoint,
    server: Server,
    conn: Option<Conn>,
}

impl SweRex {
    pub async fn start(w: &Work) -> Result<SweRex> {
        let venv = install::venv("swe-rex-1.4.0", (3, 10), &[PIN], false).await?;
        let (ep, server) = launch(&venv, &w.dir).await?;
        Ok(SweRex {
            venv,
            dir: w.dir.clone(),
            ep,
            server,
            conn: None,
        })
    }

    async fn conn(&mut self) -> Result<&mut Conn> {
        match self.conn {
            Some(ref mut c) => Ok(c),
            None => Ok(self.conn.insert(self.ep.connect(Proto::H1).await?)),
        }
    }
}

async fn launch(venv: &std::path::Path, dir: &std::path::Path) -> Result<(Endpoint, Server)> {
    let port = free_port()?;
    let mut cmd = std::process::Command::new(venv.join("bin/swerex-remote"));
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--auth-token",
        TOKEN,
    ]);
    let mut server = Server::start(cmd, &dir.join("swerex.log"), &format!("swerex-{port}"))?;
    let ep = Endpoint::local(([127, 0, 0, 1], port).into());
    let probe = ep.clone();
    wait_ready(&mut server, Duration::from_secs(60), || {
        let ep = probe.clone();
        async move {
            let mut c = ep.connect(Proto::H1).await?;
            let req = c.request(
                Method::GET,
                "/is_alive",
                Bytes::new(),
                &[("x-api-key", TOKEN)],
            )?;
            let status = c.send(req).await?.status();
            if !status.is_success() {
                bail!("GET /is_alive: {status}");
            }
            Ok(())
        }
    })
    .await?;
    Ok((ep, server))
}

fn body(cmd: &str) -> Bytes {
    Bytes::from(serde_json::json!({"command": cmd, "shell": true}).to_string())
}

/// `POST /execute` on `conn`; the answer's body read chunk by chunk into `on_chunk`.
async fn execute(
    conn: &mut Conn,
    cmd: &str,
    request_id: Option<&str>,
    mut on_chunk: impl FnMut(&[u8]),
) -> Result<()> {
    let mut headers = vec![("content-type", "application/json"), ("x-api-key", TOKEN)];
    if let Some(id) = request_id {
        headers.push(("x-request-id", id));
    }
    let req = conn.request(Method::POST, "/execute", body(cmd), &headers)?;
    let resp = conn.send(req).await?;
    let status = resp.status();
    let mut b = resp.into_body();
    while let Some(frame) = b.frame().await {
        if let Ok(chunk) = frame.context("reading the answer")?.into_data() {
            on_chunk(&chunk);
        }
    }
    if !status.is_success() {
        bail!("POST /execute answered {status}");
    }
    Ok(())
}

/// The `stdout` of an `/execute` answer.
fn stdout(answer: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get("stdout").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_default()
}

impl Peer for SweRex {
    fn server(&self) -> &Server {
        &self.server
    }

    async fn command(&mut self, cmd: &str) -> Result<()> {
        let mut answer = Vec::new();
        let conn = self.conn().await?;
        if let Err(e) = execute(conn, cmd, None, |c| answer.extend_from_slice(c)).await {
            self.conn = None;
            return Err(e);
        }
        let v: serde_json::Value = serde_json::from_slice(&answer).context("answer is not JSON")?;
        if v.get("exit_code").and_then(|c| c.as_i64()) != Some(0) {
            bail!("the command failed: {v}");
        }
        Ok(())
    }

    async fn stream(&mut self, cmd: &str, counter: &AtomicU64) -> Result<Streamed> {
        let t0 = Instant::now();
        let mut s = Streamed::default();
        let conn = &mut self.ep.connect(Proto::H1).await?;
        // The JSON answer is the output plus ~40 bytes of framing: counted as it comes.
        execute(conn, cmd, None, |c| {
            let at = t0.elapsed();
            s.first_byte.get_or_insert(at);
            s.last_byte = Some(at);
            s.bytes += c.len() as u64;
            counter.fetch_add(c.len() as u64, Ordering::Relaxed);
        })
        .await?;
        Ok(s)
    }

    async fn open(&mut self, _cmd: &str) -> Result<Option<Held>> {
        Ok(None)
    }

    async fn replay(&mut self, cmd: &str) -> Result<(String, String)> {
        let id = format!("replay-{}", crate::ticker::now_ns());
        // Nothing streams: the client goes away while the command runs (after 1 s,
        // about run1-line3), then sends the same request (same X-Request-ID) again.
        {
            let mut c = self.ep.connect(Proto::H1).await?;
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                execute(&mut c, cmd, Some(&id), |_| {}),
            )
            .await;
        }
        let ask = |ep: Endpoint| {
            let (cmd, id) = (cmd.to_string(), id.clone());
            async move {
                let mut c = ep.connect(Proto::H1).await?;
                let mut answer = Vec::new();
                let r = tokio::time::timeout(
                    Duration::from_secs(20),
                    execute(&mut c, &cmd, Some(&id), |b| answer.extend_from_slice(b)),
                )
                .await;
                match r {
                    Ok(r) => r?,
                    Err(_) => bail!("no answer within 20 s"),
                }
                Ok::<_, anyhow::Error>(stdout(&answer))
            }
        };
        let dropped = ask(self.ep.clone()).await?;
        self.conn = None;
        self.server.stop();
        let (ep, server) = launch(&self.venv, &self.dir).await?;
        self.ep = ep;
        self.server = server;
        let restarted = ask(self.ep.clone()).await?;
        Ok((dropped, restarted))
    }
}
