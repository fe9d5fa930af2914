//! The worker under test: one given by `--url`, or one bench starts itself (`--spawn`)
//! on a free loopback port with a temporary data dir, and stops (and cleans up) at the end.

use crate::client::{self, Endpoint};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Tasks at once allowed to a spawned worker (stream and tasks run several side by side).
pub const SPAWN_MAX_TASKS: usize = 64;

/// How a worker of bench's own is started: where its data dir goes and how many tasks
/// it runs at once.
#[derive(Debug, Clone)]
pub struct SpawnOpts {
    /// The directory its temporary dir is made in (default: the system's temp dir).
    pub under: Option<PathBuf>,
    pub max_tasks: usize,
    /// More settings for it (`OUTPOST_*` variables).
    pub env: Vec<(&'static str, String)>,
}

impl Default for SpawnOpts {
    fn default() -> Self {
        SpawnOpts {
            under: None,
            max_tasks: SPAWN_MAX_TASKS,
            env: Vec::new(),
        }
    }
}

/// The worker binary for `--spawn` (and the scenarios that start workers of their own):
/// `--outpost-bin`, else `outpost` next to the bench binary `exe`.
pub fn outpost_bin(given: Option<&Path>, exe: &Path) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => exe
            .parent()
            .map(|d| d.join("outpost"))
            .context("the bench binary has no directory"),
    }
}

/// A block of agent uids of its own for each worker bench starts (as root, agents run
/// as uid + task slot): two of one bench run's workers never share an agent uid (and two
/// bench runs at once only if their pids agree modulo 2048), so one worker's "kill every
/// process of this uid" (its `uid` containment) cannot reach another's agents. Far above
/// the uids accounts and systemd's dynamic users take; 1024 uids a block
/// (OUTPOST_MAX_TASKS' ceiling).
fn agent_uid_block() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let k = NEXT.fetch_add(1, Ordering::Relaxed) % 8;
    3_000_000 + ((std::process::id() % 2048) * 8 + k) * 1024
}

/// Drops the binary's pages from the page cache, so that the worker starts as a
/// deployed one does, its code read from disk (by the kernel's readahead, in small
/// folios). A binary just written by the linker sits in the page cache in large folios,
/// and since Linux 6.18 a fault maps a large folio whole: the same worker then reads
/// about 1 MiB more resident (docs/bench.md, "Code layout"). Best effort.
fn start_as_deployed(bin: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(bin) else {
        return;
    };
    // Dirty pages are not dropped: write them out first.
    let _ = f.sync_all();
    // SAFETY: a valid descriptor, a whole-file range and a known advice value.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// The worker bench talks to.
pub struct Target {
    pub ep: Endpoint,
    /// Its pid when visible (spawned, `--pid`, or found from the listening port).
    pub pid: Option<u32>,
    spawned: Option<Spawned>,
}

struct Spawned {
    child: Child,
    dir: PathBuf,
}

impl Target {
    /// A worker that is already running at `url`.
    pub async fn attach(url: &str, pid: Option<u32>) -> Result<Target> {
        let ep = Endpoint::from_url(url).await?;
        client::get_json(&ep, "/hello").await.with_context(|| {
            format!("no outpost worker answers GET {url}/hello (start one, or use --spawn)")
        })?;
        let pid = match pid {
            Some(p) => Some(p),
            None if ep.addr.ip().is_loopback() => {
                let port = ep.addr.port();
                // Walks /proc/*/fd: keep it off the runtime's threads.
                tokio::task::spawn_blocking(move || crate::procfs::pid_listening_on(port))
                    .await
                    .unwrap_or(None)
            }
            None => None,
        };
        Ok(Target {
            ep,
            pid,
            spawned: None,
        })
    }

    /// Starts `bin serve` on a free 127.0.0.1 port with a fresh data dir, and waits until
    /// it answers `/hello`. The open-file limit must be raised before (it is inherited).
    pub async fn spawn(bin: &Path) -> Result<Target> {
        Target::spawn_with(bin, &SpawnOpts::default()).await
    }

    /// As [`Target::spawn`], with the data dir and the task slots given.
    pub async fn spawn_with(bin: &Path, opts: &SpawnOpts) -> Result<Target> {
        if !bin.is_file() {
            bail!(
                "no worker binary at {} (build it: `cargo build --release -p outpost`, or pass --outpost-bin)",
                bin.display()
            );
        }
        start_as_deployed(bin);
        let port = free_port()?;
        let under = opts.under.clone().unwrap_or_else(std::env::temp_dir);
        let dir = under.join(format!(
            "outpost-bench-{}-{}",
            std::process::id(),
            crate::ticker::now_ns()
        ));
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let log =
            std::fs::File::create(dir.join("worker.log")).context("creating the worker log")?;
        let log2 = log.try_clone().context("sharing the worker log")?;
        let mut cmd = Command::new(bin);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.env("OUTPOST_AGENT_USER", agent_uid_block().to_string());
        } else {
            cmd.env_remove("OUTPOST_AGENT_USER");
        }
        let child = cmd
            .arg("serve")
            .arg("--port")
            .arg(port.to_string())
            .arg("--data")
            .arg(dir.join("data"))
            .env("OUTPOST_BIND", "127.0.0.1")
            .env("OUTPOST_MAX_TASKS", opts.max_tasks.to_string())
            // The clone scenario's git server is http://127.0.0.1:<port>.
            .env("OUTPOST_ALLOW_HTTP", "1")
            .env("OUTPOST_ALLOWED_HOSTS", "127.0.0.1")
            .env_remove("OUTPOST_AGENT")
            .env_remove("OUTPOST_TOKEN")
            .env_remove("OUTPOST_SWAP")
            .env_remove("K_SERVICE")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let pid = child.id();
        let mut target = Target {
            ep: Endpoint::local(([127, 0, 0, 1], port).into()),
            pid: Some(pid),
            spawned: Some(Spawned { child, dir }),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if client::get_json(&target.ep, "/hello").await.is_ok() {
                return Ok(target);
            }
            if let Some(s) = target.spawned.as_mut() {
                if let Ok(Some(status)) = s.child.try_wait() {
                    bail!(
                        "the worker exited at start ({status}); its log:\n{}",
                        s.log_tail()
                    );
                }
            }
            if Instant::now() > deadline {
                let tail = target
                    .spawned
                    .as_ref()
                    .map(Spawned::log_tail)
                    .unwrap_or_default();
                bail!("the worker did not answer /hello within 20 s; its log:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_spawned(&self) -> bool {
        self.spawned.is_some()
    }

    /// Stops a spawned worker (SIGTERM, then SIGKILL after 10 s) and removes its data.
    pub fn stop(&mut self) {
        if let Some(s) = self.spawned.take() {
            drop(s);
        }
    }
}

impl Spawned {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// Tasks the worker runs at once, as /hello tells (`maxTasks`), if it does.
pub async fn max_tasks(ep: &Endpoint) -> Option<usize> {
    let v = client::get_json(ep, "/hello").await.ok()?;
    v.get("maxTasks")
        .and_then(|m| m.as_u64())
        .map(|m| m as usize)
}
