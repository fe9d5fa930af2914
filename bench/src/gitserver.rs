//! The `clone` baseline's server: `git http-backend` behind a small CGI bridge on
//! 127.0.0.1, serving bare repositories under one root (smart HTTP, protocol v2, push
//! enabled), so that outpost and `git clone` fetch from the very same server.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running bridge; stops when dropped.
pub struct GitServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl GitServer {
    pub async fn start(root: PathBuf) -> Result<GitServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the git server")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let root = root.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| cgi(root.clone(), peer, req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(GitServer { addr, task })
    }

    pub fn url(&self, repo: &str) -> String {
        format!("http://{}/{repo}", self.addr)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn cgi(
    root: PathBuf,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>> {
    match run_backend(&root, peer, req).await {
        Ok(r) => Ok(r),
        Err(e) => Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Full::new(Bytes::from(format!(
                "git http-backend bridge: {e:#}\n"
            ))))?),
    }
}

async fn run_backend(
    root: &Path,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .context("reading the request body")?
        .to_bytes();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", peer.ip().to_string())
        .env("REMOTE_USER", "bench")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in &parts.headers {
        let Ok(v) = value.to_str() else { continue };
        if name == hyper::header::CONTENT_TYPE {
            cmd.env("CONTENT_TYPE", v);
        }
        cmd.env(
            format!(
                "HTTP_{}",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            ),
            v,
        );
    }
    let mut child = cmd.spawn().context("starting `git http-backend`")?;
    let mut stdin = child.stdin.take().context("http-backend stdin")?;
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("http-backend stdout")?
        .read_to_end(&mut out)
        .await
        .context("reading http-backend output")?;
    let _ = writer.await;
    child.wait().await.context("waiting for http-backend")?;
    parse_cgi(&out)
}

/// Turns a CGI response (headers, blank line, body) into an HTTP response.
fn parse_cgi(out: &[u8]) -> Result<Response<Full<Bytes>>> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        });
    let Some((head_end, body_start)) = split else {
        bail!("http-backend printed no header block");
    };
    let head = String::from_utf8_lossy(&out[..head_end]);
    let mut resp = Response::builder();
    let mut status = StatusCode::OK;
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v.split_whitespace().next().unwrap_or("500");
            status = code.parse().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else {
            resp = resp.header(k.trim(), v);
        }
    }
    Ok(resp
        .status(status)
        .body(Full::new(Bytes::copy_from_slice(&out[body_start..])))?)
}

/// Runs `git args...` in `dir`, failing with its stderr.
pub async fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `git clone --depth 1 --single-branch --branch main url dest` in `dir` (the clone
/// scenario's baseline).
pub async fn shallow_clone(dir: &Path, url: &str, dest: &str) -> Result<()> {
    git(
        dir,
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            "--single-branch",
            "--branch",
            "main",
            url,
            dest,
        ],
    )
    .await
}

/// Makes a repository with `files` files of `size` bytes each on branch `main`, and
/// `copies` bare clones of it under `root` named `repo-<i>.git` (push enabled).
pub async fn make_repos(root: &Path, files: usize, size: usize, copies: usize) -> Result<()> {
    let work = root.join("src");
    let dir = work.join("files");
    tokio::task::spawn_blocking(move || write_files(&dir, files, size))
        .await
        .context("the file-writing thread")??;
    git(&work, &["init", "-q", "-b", "main"]).await?;
    git(&work, &["add", "-A"]).await?;
    git(
        &work,
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-q",
            "-m",
            "bench repo",
        ],
    )
    .await?;
    // Packed, as a git host serves its repositories: a server left with loose objects
    // spends ~2 s per clone compressing and delta-searching them (`pack-objects`), the
    // same for both clients, which hid every difference between them.
    git(&work, &["repack", "-adq"]).await?;
    for i in 0..copies {
        let name = format!("repo-{i}.git");
        git(root, &["clone", "-q", "--bare", "src", &name]).await?;
        git(&root.join(&name), &["config", "http.receivepack", "true"]).await?;
    }
    Ok(())
}

/// Writes `files` files of about `size` bytes of source-like text into `dir` (blocking).
fn write_files(dir: &Path, files: usize, size: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..files {
        let mut text = String::with_capacity(size + 32);
        while text.len() < size {
            // xorshift: varied text that compresses like source code does, roughly.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(&format!("let v{} = {};\n", seed % 1000, seed >> 40));
        }
        std::fs::write(dir.join(format!("f{i:04}.rs")), &text).context("writing a source file")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn git_clones_and_pushes_through_the_bridge() {
        let dir =
            Dir(std::env::temp_dir().join(format!("bench-gitserver-test-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        make_repos(&dir.0, 3, 100, 1).await.unwrap();
        let server = GitServer::start(dir.0.clone()).await.unwrap();
        let url = server.url("repo-0.git");
        shallow_clone(&dir.0, &url, "c").await.unwrap();
        assert!(dir.0.join("c/files/f0002.rs").is_file());
        let c = dir.0.join("c");
        std::fs::write(c.join("new.txt"), "x").unwrap();
        git(&c, &["add", "new.txt"]).await.unwrap();
        git(
            &c,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                "n",
            ],
        )
        .await
        .unwrap();
        git(&c, &["push", "-q", "origin", "HEAD:refs/heads/topic"])
            .await
            .unwrap();
        git(
            &dir.0.join("repo-0.git"),
            &["rev-parse", "--verify", "refs/heads/topic"],
        )
        .await
        .unwrap();
    }
}
