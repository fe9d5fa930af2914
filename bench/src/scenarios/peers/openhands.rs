//! OpenHands agent-server 1.58.2 (PyPI `openhands-agent-server`, its `agent-server`
//! command, FastAPI on uvicorn; Python >= 3.12). Small commands go through
//! `POST /api/bash/execute_bash_command`; streams through the websocket
//! `/sockets/bash-events` (send an `ExecuteBashRequest`, get `BashCommand` and
//! `BashOutput` events: it publishes output in 1 MiB pieces and at the command's end);
//! a lost client asks `GET /api/bash/bash_events/search?command_id__eq=...`, which
//! reads the events it stores as files (under its working dir, kept across a restart).

use super::outpost::AbortOnDrop;
use super::proc::Server;
use super::{free_port, install, wait_ready, Held, Peer, Streamed, Work};
use crate::client::{self, Conn, Endpoint, Proto};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

pub const LABEL: &str = "OpenHands agent-server 1.58.2";
const PIN: &str = "openhands-agent-server==1.58.2";

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub struct OpenHands {
    venv: PathBuf,
    home: PathBuf,
    ep: Endpoint,
    server: Server,
    conn: Option<Conn>,
    open_ids: Vec<String>,
    idle_procs: Option<usize>,
}

impl OpenHands {
    pub async fn start(w: &Work) -> Result<OpenHands> {
        let venv = install::venv("openhands-agent-server-1.58.2", (3, 12), &[PIN], false).await?;
        let home = w.dir.join("openhands");
        std::fs::create_dir_all(&home).context("creating OpenHands' working dir")?;
        let (ep, server) = launch(&venv, &home).await?;
        Ok(OpenHands {
            venv,
            home,
            ep,
            server,
            conn: None,
            open_ids: Vec::new(),
            idle_procs: None,
        })
    }

    async fn conn(&mut self) -> Result<&mut Conn> {
        match self.conn {
            Some(ref mut c) => Ok(c),
            None => Ok(self.conn.insert(self.ep.connect(Proto::H1).await?)),
        }
    }

    /// A bash-events socket with `cmd` sent on it; returns it and the command's id.
    async fn start_cmd(&self, cmd: &str) -> Result<(Ws, String)> {
        let url = format!("ws://{}/sockets/bash-events", self.ep.authority);
        let tcp = tokio::net::TcpStream::connect(self.ep.addr)
            .await
            .context("connecting")?;
        tcp.set_nodelay(true)?;
        let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .context("websocket handshake")?;
        let req = serde_json::json!({"command": cmd, "timeout": 300}).to_string();
        ws.send(Message::text(req))
            .await
            .context("sending the command")?;
        // Every socket gets every command's events: ours is the BashCommand with our text.
        loop {
            let v = next_json(&mut ws, Duration::from_secs(20)).await?;
            if v.get("kind").and_then(Value::as_str) == Some("BashCommand")
                && v.get("command").and_then(Value::as_str) == Some(cmd)
            {
                let id = v
                    .get("id")
                    .and_then(Value::as_str)
                    .context("BashCommand without id")?;
                return Ok((ws, id.to_string()));
            }
            if v.get("code").is_some() {
                bail!("the server refused the command: {v}");
            }
        }
    }

    /// The stored output of command `id` once it has ended (polled for up to 15 s).
    async fn stored(&self, id: &str) -> Result<String> {
        let path = format!("/api/bash/bash_events/search?kind__eq=BashOutput&command_id__eq={id}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let page = client::get_json(&self.ep, &path).await?;
            let mut items: Vec<&Value> = page
                .get("items")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            items.sort_by_key(|e| e.get("order").and_then(Value::as_u64));
            if items
                .iter()
                .any(|e| !e.get("exit_code").unwrap_or(&Value::Null).is_null())
                || Instant::now() > deadline
            {
                return Ok(items
                    .iter()
                    .filter_map(|e| e.get("stdout").and_then(Value::as_str))
                    .collect());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn launch(venv: &Path, home: &Path) -> Result<(Endpoint, Server)> {
    let port = free_port()?;
    let mut cmd = std::process::Command::new(venv.join("bin/agent-server"));
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .current_dir(home)
        // LiteLLM would fetch a price list from the internet at start.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env_remove("SESSION_API_KEY")
        .env_remove("OH_SESSION_API_KEYS_0");
    let mut server = Server::start(
        cmd,
        &home.join("../openhands.log"),
        &format!("openhands-{port}"),
    )?;
    let ep = Endpoint::local(([127, 0, 0, 1], port).into());
    let probe = ep.clone();
    wait_ready(&mut server, Duration::from_secs(180), || {
        let ep = probe.clone();
        async move { client::get_json(&ep, "/ready").await.map(|_| ()) }
    })
    .await?;
    Ok((ep, server))
}

async fn next_json(ws: &mut Ws, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .context("no event in time")?
            .context("the socket closed")?
            .context("reading the socket")?;
        let data = match msg {
            Message::Text(t) => Bytes::from(t.as_str().to_owned()),
            Message::Binary(b) => b,
            Message::Close(c) => bail!("the socket closed: {c:?}"),
            _ => continue,
        };
        return serde_json::from_slice(&data).context("an event that is not JSON");
    }
}

impl Peer for OpenHands {
    fn server(&self) -> &Server {
        &self.server
    }

    async fn command(&mut self, cmd: &str) -> Result<()> {
        let body = Bytes::from(serde_json::json!({"command": cmd}).to_string());
        let conn = self.conn().await?;
        let req = conn.request(
            Method::POST,
            "/api/bash/execute_bash_command",
            body,
            &[("content-type", "application/json")],
        )?;
        let r = async {
            let resp = conn.send(req).await?;
            let status = resp.status();
            let b = resp
                .into_body()
                .collect()
                .await
                .context("reading the answer")?
                .to_bytes();
            let v: Value = serde_json::from_slice(&b).context("answer is not JSON")?;
            if !status.is_success() || v.get("exit_code").and_then(Value::as_i64) != Some(0) {
                bail!("{status}: {v}");
            }
            Ok(())
        }
        .await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn stream(&mut self, cmd: &str, counter: &AtomicU64) -> Result<Streamed> {
        let t0 = Instant::now();
        let (mut ws, id) = self.start_cmd(cmd).await?;
        let mut s = Streamed::default();
        loop {
            let v = next_json(&mut ws, Duration::from_secs(120)).await?;
            if v.get("kind").and_then(Value::as_str) != Some("BashOutput")
                || v.get("command_id").and_then(Value::as_str) != Some(id.as_str())
            {
                continue;
            }
            let n = v.get("stdout").and_then(Value::as_str).map_or(0, str::len) as u64;
            if n > 0 {
                let at = t0.elapsed();
                s.first_byte.get_or_insert(at);
                s.last_byte = Some(at);
                s.bytes += n;
                counter.fetch_add(n, Ordering::Relaxed);
            }
            if !v.get("exit_code").unwrap_or(&Value::Null).is_null() {
                return Ok(s);
            }
        }
    }

    async fn open(&mut self, cmd: &str) -> Result<Option<Held>> {
        if self.idle_procs.is_none() {
            self.idle_procs = Some(self.server.memory().procs);
        }
        // Its output comes at the command's end: open is the command's start event.
        let (mut ws, id) = self.start_cmd(cmd).await?;
        self.open_ids.push(id);
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
        Ok(Some(Box::new(AbortOnDrop(reader))))
    }

    fn open_note(&self) -> Option<&'static str> {
        Some("its output comes in 1 MiB pieces or at the end: a stream is open at the command's start event")
    }

    async fn closed(&mut self) -> Result<()> {
        for id in std::mem::take(&mut self.open_ids) {
            let mut c = self.ep.connect(Proto::H1).await?;
            let path = format!("/api/bash/bash_commands/{id}/stop");
            let req = c.request(Method::POST, &path, Bytes::new(), &[])?;
            let _ = c.send(req).await?.into_body().collect().await;
        }
        let idle = self.idle_procs.unwrap_or(1);
        for _ in 0..100 {
            if self.server.memory().procs <= idle {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the open streams' commands were still there 10 s after their stop")
    }

    async fn replay(&mut self, cmd: &str) -> Result<(String, String)> {
        let t0 = Instant::now();
        let (ws, id) = self.start_cmd(cmd).await?;
        // No output before the end: the client goes away 1 s in (about run1-line3).
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed())).await;
        drop(ws);
        let dropped = self.stored(&id).await?;
        self.conn = None;
        self.server.stop();
        let (ep, server) = launch(&self.venv, &self.home).await?;
        self.ep = ep;
        self.server = server;
        let restarted = self.stored(&id).await?;
        Ok((dropped, restarted))
    }
}
