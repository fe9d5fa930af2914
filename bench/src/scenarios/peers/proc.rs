//! The peers' processes: a server started in its own process group with a marker in its
//! environment, stopped (group SIGTERM, then SIGKILL) whatever happens; the memory of a
//! server and everything it forked (descendants by parent pid, plus any process that
//! carries the marker, e.g. one that daemonized); and bounded runs of setup commands.

use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Name of the environment variable that marks a peer's processes.
pub const MARKER_VAR: &str = "OUTPOST_BENCH_PEER";

/// One server process started by the peers scenario.
pub struct Server {
    child: Child,
    stopped: bool,
    pub marker: String,
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` in a process group of its own, with the marker set and its output in
    /// `log`.
    pub fn start(mut cmd: Command, log: &Path, marker: &str) -> Result<Server> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("creating the server log {}", log.display()))?;
        let err = out.try_clone().context("sharing the server log")?;
        let child = cmd
            .env(MARKER_VAR, marker)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Server {
            child,
            stopped: false,
            marker: marker.to_string(),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// Memory of the server and all its processes now.
    pub fn memory(&self) -> TreeMem {
        tree_memory(self.pid(), &self.marker)
    }

    /// Stops the server: SIGTERM to its group, SIGKILL after 10 s, then SIGKILL to any
    /// process left with its marker (one that left the group). Idempotent.
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let pid = self.child.id() as i32;
        if self.exited().is_none() {
            // SAFETY: kill(2) on the process group we created for our own child.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // SAFETY: as above; the group may be gone already (ESRCH is fine).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in marked(&self.marker) {
            // SAFETY: a process that carries the marker we gave our own server.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident memory of a process tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeMem {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub procs: usize,
}

/// The pids carrying `marker` in their environment.
fn marked(marker: &str) -> Vec<u32> {
    let want = format!("{MARKER_VAR}={marker}");
    pids()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .map(|e| e.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `root`, its descendants, and every process with `marker`: their summed VmRSS and Pss.
pub fn tree_memory(root: u32, marker: &str) -> TreeMem {
    let all = pids();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for &p in &all {
        if let Some(pp) = ppid(p) {
            children.entry(pp).or_default().push(p);
        }
    }
    let mut members: HashSet<u32> = marked(marker).into_iter().collect();
    let mut stack = vec![root];
    members.insert(root);
    // Descendants of the root and of every marked process.
    stack.extend(members.iter().copied());
    let mut seen = HashSet::new();
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        members.insert(p);
        if let Some(c) = children.get(&p) {
            stack.extend(c.iter().copied());
        }
    }
    let mut m = TreeMem::default();
    for p in members {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        let Some(rss) = kib_field(&status, "VmRSS") else {
            continue; // a zombie, or a kernel thread
        };
        m.rss_kib += rss;
        m.pss_kib += std::fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
            .ok()
            .and_then(|s| kib_field(&s, "Pss"))
            .unwrap_or(rss);
        m.procs += 1;
    }
    m
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Samples a server's tree memory every 250 ms on a thread of its own; the peak comes back
/// when the sampler is finished.
pub struct PeakSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<TreeMem>>,
}

impl PeakSampler {
    pub fn start(server: &Server) -> PeakSampler {
        let (root, marker) = (server.pid(), server.marker.clone());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("peak-rss".into())
            .spawn(move || {
                let mut peak = TreeMem::default();
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let m = tree_memory(root, &marker);
                    if m.rss_kib > peak.rss_kib {
                        peak = m;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                peak
            })
            .ok();
        PeakSampler { stop, handle }
    }

    /// Stops sampling; the highest tree RSS seen.
    pub fn finish(mut self) -> TreeMem {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs a setup command (venv, pip) to its end within `limit`, in a process group that is
/// killed if it runs over or the caller goes away. Fails with the output's tail.
pub async fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> Result<String> {
    let mut cmd = tokio::process::Command::from({
        cmd.stdin(Stdio::null()).process_group(0);
        cmd
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("{what}: cannot start"))?;
    let group = child.id();
    let mut guard = GroupGuard(group);
    let out = tokio::time::timeout(limit, child.wait_with_output()).await;
    if out.is_ok() {
        guard.0 = None; // ended by itself: its group is gone
    }
    drop(guard);
    let out = match out {
        Ok(o) => o.with_context(|| format!("{what}: waiting"))?,
        Err(_) => bail!("{what}: did not finish within {} s", limit.as_secs()),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{what}: {}: {}",
            out.status,
            lines[lines.len().saturating_sub(3)..].join(" / ")
        );
    }
    Ok(text)
}

/// Kills a process group when dropped (a setup command cut short).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on the group of a child we started; ESRCH once it is gone.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
    }
}
