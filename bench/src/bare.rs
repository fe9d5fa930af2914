//! The `hello` baseline: a bare hyper server (HTTP/1.1 + h2c on one port, like outpost)
//! answering one fixed JSON body. It runs as a child process (`bench __bare-server`) so
//! that it, like the worker, has its own process and runtime apart from the load.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Child entry: `bench __bare-server BODY`. Prints its port, serves until stdin closes.
pub fn main(args: &[String]) -> Result<()> {
    let body = Bytes::from(
        args.first()
            .context("usage: bench __bare-server BODY")?
            .clone(),
    );
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        println!("{}", listener.local_addr()?.port());
        // The parent holds our stdin; when it goes away, so do we.
        std::thread::spawn(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            std::process::exit(0);
        });
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

/// The running baseline server; stopped when dropped.
pub struct BareServer {
    child: Child,
    pub addr: SocketAddr,
}

impl BareServer {
    /// Starts `exe __bare-server body` and waits for its port.
    pub fn start(exe: &Path, body: &str) -> Result<BareServer> {
        let mut child = Command::new(exe)
            .arg("__bare-server")
            .arg(body)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the baseline server {}", exe.display()))?;
        let stdout = child.stdout.take().context("baseline server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the baseline server's port")?;
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the baseline server did not print its port (got {line:?})");
        };
        Ok(BareServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
