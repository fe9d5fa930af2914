//! `peers`: outpost next to the servers it is measured against — ttyd, SWE-ReX's
//! remote server and OpenHands' agent-server — each installed from PyPI at a pinned
//! version into bench's cache dir and run one at a time on the same work: small commands
//! per second, a 256 MiB stream (MiB/s, first byte, peak RSS), idle RSS, memory per
//! open stream, and replay after a disconnect and after a restart. Memory counts every
//! process a server forked. A peer that cannot be installed or started is a row saying
//! why. It installs from a registry, so it runs only when named (`bench peers`).

mod install;
mod openhands;
mod outpost;
mod proc;
mod rows;
mod swerex;
mod ttyd;

use super::Ctx;
use crate::report::Row;
use crate::stats::{Samples, MIB};
use anyhow::{bail, Context, Result};
use proc::{PeakSampler, Server};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The small command: with output, as an agent's commands have (ttyd takes 5 s to close
/// the socket of a command that printed nothing, e.g. `true`).
pub const SMALL: &str = "echo hi";

/// Output of one stream, timed from just before the request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Streamed {
    pub bytes: u64,
    pub first_byte: Option<Duration>,
    pub last_byte: Option<Duration>,
}

/// Whatever keeps an open stream open (connections, reader tasks); dropped to close it.
pub type Held = Box<dyn std::any::Any>;

/// What the harness asks of each server, all through its own API.
pub trait Peer {
    fn server(&self) -> &Server;
    /// Runs `cmd` to completion.
    async fn command(&mut self, cmd: &str) -> Result<()>;
    /// Runs `cmd` and reads its output to the end, adding each chunk's length to `counter`.
    async fn stream(&mut self, cmd: &str, counter: &AtomicU64) -> Result<Streamed>;
    /// Starts `cmd` and opens a stream on its output; returns once output has come.
    /// `Ok(None)`: this peer has no way to stream output.
    async fn open(&mut self, cmd: &str) -> Result<Option<Held>>;
    /// What an open stream means for this peer, when it is not "output has come".
    fn open_note(&self) -> Option<&'static str> {
        None
    }
    /// After the open streams were dropped: waits until their commands are gone.
    async fn closed(&mut self) -> Result<()> {
        Ok(())
    }
    /// Runs `cmd` (see [`replay_command`]), disconnects once `run1-line2` has come,
    /// reconnects the peer's way and returns what the new connection got; then restarts
    /// the server and asks again. Returns the two transcripts.
    async fn replay(&mut self, cmd: &str) -> Result<(String, String)>;
}

/// One peer's figures (None: not measured, with the reason in `notes`).
#[derive(Debug, Default)]
pub struct Figures {
    pub label: String,
    pub cmds_per_s: Option<f64>,
    pub mib_s: Option<f64>,
    pub first_byte_ms: Option<f64>,
    pub stream_peak_mib: Option<f64>,
    pub idle_mib: Option<f64>,
    pub per_stream_kib: Option<f64>,
    pub replay_disconnect: Option<bool>,
    pub replay_restart: Option<bool>,
    /// Per figure (by its row name), why it is missing or what it means.
    pub notes: Vec<(&'static str, String)>,
}

impl Figures {
    fn note(&mut self, figure: &'static str, n: impl Into<String>) {
        self.notes.push((figure, n.into()));
    }
}

/// Sizes of the work, from `--quick` and `--duration`.
pub struct Work {
    pub stream_bytes: u64,
    pub rounds: usize,
    pub cmd_time: Duration,
    pub open_streams: usize,
    pub dir: PathBuf,
}

impl Work {
    fn new(ctx: &Ctx, dir: PathBuf) -> Work {
        let quick = ctx.args.quick;
        Work {
            stream_bytes: if quick { 16 } else { 256 } * 1024 * 1024,
            rounds: if quick { 1 } else { 3 },
            cmd_time: ctx.args.duration,
            open_streams: if quick { 8 } else { 32 },
            dir,
        }
    }
}

/// The command streamed: `bytes` of `a`s through a pipe, as the `stream` scenario does.
pub fn stream_command(bytes: u64) -> String {
    format!("head -c {bytes} /dev/zero | tr '\\0' a")
}

/// A command that counts its runs in `file` and prints `run<N>-line1..6`, then
/// `run<N>-end`, 0.3 s apart: a reconnect that gets `run1-end` got the first run's output,
/// one that gets `run2` ran the command again.
pub fn replay_command(file: &std::path::Path) -> String {
    let f = super::shell_quote(&file.display().to_string());
    format!(
        "n=$(( $(cat {f} 2>/dev/null || echo 0) + 1 )); echo $n > {f}; \
         for i in 1 2 3 4 5 6; do echo run$n-line$i; sleep 0.3; done; echo run$n-end"
    )
}

/// Reads a replay transcript: yes when the first run's end came back.
fn judge(text: &str) -> (bool, String) {
    let rerun = text.split("run").skip(1).find_map(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok().filter(|n| *n > 1)
    });
    if text.contains("run1-end") {
        (true, "the first run's output came back".into())
    } else if let Some(n) = rerun {
        (
            false,
            format!("asking again ran the command again (run {n})"),
        )
    } else if text.trim().is_empty() {
        (false, "nothing came back".into())
    } else {
        (false, "the first run's end did not come back".into())
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Polls `ready` every 100 ms until it succeeds, the server exits, or `limit` passes.
pub async fn wait_ready<F, Fut>(server: &mut Server, limit: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(5), ready()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "no answer in 5 s".to_string(),
        };
        if let Some(status) = server.exited() {
            bail!("exited at start ({status}): {}", server.log_tail());
        }
        if Instant::now() > deadline {
            bail!(
                "not ready within {} s ({last}); its log: {}",
                limit.as_secs(),
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
}

/// Measures one started peer through the whole work.
async fn measure<P: Peer>(ctx: &Ctx, p: &mut P, w: &Work, f: &mut Figures) -> Result<()> {
    let name = f.label.clone();
    // Idle: after one command, so lazy start-up work is done, and a second to settle.
    p.command(SMALL).await.context("a first command")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.idle_mib = Some(p.server().memory().rss_kib as f64 / 1024.0);

    // Memory per open stream.
    let before = p.server().memory();
    let mut held = Vec::new();
    let open_cmd = "echo ready; exec sleep 120";
    let phase = ctx.progress.phase(
        format!("{name}: open streams"),
        "streams",
        Duration::from_secs(60),
    );
    let mut none = false;
    for _ in 0..w.open_streams {
        match tokio::time::timeout(Duration::from_secs(20), p.open(open_cmd)).await {
            Ok(Ok(Some(h))) => {
                held.push(h);
                phase.counter().fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(None)) => {
                none = true;
                break;
            }
            Ok(Err(e)) => {
                f.note(
                    "per stream",
                    format!("stream {} failed: {e:#}", held.len() + 1),
                );
                break;
            }
            Err(_) => {
                f.note(
                    "per stream",
                    format!("stream {} did not open in 20 s", held.len() + 1),
                );
                break;
            }
        }
    }
    drop(phase);
    if none {
        f.note(
            "per stream",
            "no streaming API: output comes back when the command ends",
        );
    } else if !held.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = p.server().memory();
        let n = held.len() as f64;
        f.per_stream_kib = Some(after.rss_kib.saturating_sub(before.rss_kib) as f64 / n);
        f.note(
            "per stream",
            format!(
                "{} streams, {} processes; by Pss {:.0} KiB each",
                held.len(),
                after.procs,
                after.pss_kib.saturating_sub(before.pss_kib) as f64 / n
            ),
        );
    }
    if let (Some(n), false) = (p.open_note(), none) {
        f.note("per stream", n);
    }
    drop(held);
    p.closed().await.context("closing the open streams")?;

    // Small commands per second: back to back, `--duration` per round, median of rounds.
    let mut rates = Vec::new();
    let mut each = Samples::new();
    let mut slow = 0usize;
    let mut retried = Vec::new();
    for round in 0..w.rounds {
        let phase = ctx.progress.phase(
            format!("{name}: commands (round {}/{})", round + 1, w.rounds),
            "cmds",
            w.cmd_time,
        );
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < w.cmd_time && n < 100_000 {
            let t = Instant::now();
            if let Err(e) = p.command(SMALL).await {
                // A kept connection the server closed: once more on a new one.
                retried.push(format!("{e:#}"));
                p.command(SMALL)
                    .await
                    .context("a small command, tried twice")?;
            }
            slow += usize::from(t.elapsed() > Duration::from_secs(1));
            each.push(t.elapsed());
            n += 1;
            phase.counter().fetch_add(1, Ordering::Relaxed);
        }
        rates.push(n as f64 / t0.elapsed().as_secs_f64());
    }
    f.cmds_per_s = median(rates);
    let total = each.len();
    let mut note = format!(
        "{total} commands, p50 {:.2} ms, p99 {:.1} ms",
        each.p50().unwrap_or(0.0),
        each.p99().unwrap_or(0.0)
    );
    if slow > 0 {
        note.push_str(&format!(", {slow} over 1 s"));
    }
    if let Some(first) = retried.first() {
        note.push_str(&format!(", {} retried ({first})", retried.len()));
    }
    f.note("commands", note);

    // The big stream: median MiB/s and first byte, the highest tree RSS over all rounds.
    let cmd = stream_command(w.stream_bytes);
    let (mut rates, mut firsts, mut short) = (Vec::new(), Vec::new(), Vec::new());
    let sampler = PeakSampler::start(p.server());
    for round in 0..w.rounds {
        let phase = ctx.progress.phase(
            format!(
                "{name}: {} MiB (round {}/{})",
                w.stream_bytes >> 20,
                round + 1,
                w.rounds
            ),
            "bytes",
            Duration::from_secs(60),
        );
        let s = p
            .stream(&cmd, &phase.counter())
            .await
            .context("the big stream")?;
        if s.bytes < w.stream_bytes {
            // Counted at the rate of what came; a short stream is said, not hidden.
            if s.bytes < w.stream_bytes / 2 {
                bail!(
                    "the stream delivered {} of {} bytes",
                    s.bytes,
                    w.stream_bytes
                );
            }
            short.push(w.stream_bytes - s.bytes);
        }
        if let Some(last) = s.last_byte.filter(|d| !d.is_zero()) {
            rates.push(s.bytes.min(w.stream_bytes) as f64 / MIB / last.as_secs_f64());
        }
        if let Some(first) = s.first_byte {
            firsts.push(first.as_secs_f64() * 1e3);
        }
    }
    f.stream_peak_mib = Some(sampler.finish().rss_kib as f64 / 1024.0);
    if !short.is_empty() {
        f.note(
            "stream",
            format!(
                "{} of {} rounds lost the stream's last bytes ({:?} bytes short)",
                short.len(),
                w.rounds,
                short
            ),
        );
    }
    f.mib_s = median(rates);
    f.first_byte_ms = median(firsts);

    // Replay, tested: a disconnect mid-stream, then a restart.
    let file = w.dir.join(format!("replay-{}", crate::ticker::now_ns()));
    let (after_drop, after_restart) = p.replay(&replay_command(&file)).await?;
    let (yes, why) = judge(&after_drop);
    f.replay_disconnect = Some(yes);
    f.note("replay disconnect", why);
    let (yes, why) = judge(&after_restart);
    f.replay_restart = Some(yes);
    f.note("replay restart", why);
    Ok(())
}

/// Installs, starts, measures and stops one peer; whatever fails becomes notes.
async fn one<P, S>(ctx: &Ctx, w: &Work, label: &str, start: S) -> Figures
where
    P: Peer,
    S: std::future::Future<Output = Result<P>>,
{
    let mut f = Figures {
        label: label.to_string(),
        ..Figures::default()
    };
    ctx.progress
        .say(&format!("  {label}: installing and starting"));
    let mut p = match tokio::time::timeout(Duration::from_secs(1200), start).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            f.note("skipped", format!("{label} skipped: {e:#}"));
            return f;
        }
        Err(_) => {
            f.note(
                "skipped",
                format!("{label} skipped: install and start took over 1200 s"),
            );
            return f;
        }
    };
    match tokio::time::timeout(Duration::from_secs(600), measure(ctx, &mut p, w, &mut f)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => f.note("failed", format!("{label} stopped early: {e:#}")),
        Err(_) => f.note(
            "failed",
            format!("{label} stopped early: over its 600 s budget"),
        ),
    }
    drop(p); // stops the server
    f
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = std::env::temp_dir().join(format!("outpost-bench-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let w = Work::new(ctx, dir.clone());
    let bin = match &ctx.args.outpost_bin {
        Some(p) => p.clone(),
        None => ctx
            .exe
            .parent()
            .map(|d| d.join("outpost"))
            .context("bench has no directory")?,
    };
    // BENCH_PEERS=ttyd,swe-rex,openhands picks some (outpost is always measured).
    let only = std::env::var("BENCH_PEERS").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|n| n.trim() == name);
    let o = one(ctx, &w, "outpost", outpost::Outpost::start(&bin, &w)).await;
    let mut peers = Vec::new();
    if wanted("ttyd") {
        peers.push(one(ctx, &w, ttyd::LABEL, ttyd::Ttyd::start(&w)).await);
    }
    if wanted("swe-rex") {
        peers.push(one(ctx, &w, swerex::LABEL, swerex::SweRex::start(&w)).await);
    }
    if wanted("openhands") {
        peers.push(one(ctx, &w, openhands::LABEL, openhands::OpenHands::start(&w)).await);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows::rows(&o, &peers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replay command run for real, twice: the judge tells the first run's output
    /// from a second run's.
    #[test]
    fn the_replay_command_counts_its_runs_and_the_judge_reads_them() {
        let dir = std::env::temp_dir().join(format!("peers-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cmd = replay_command(&dir.join("runs"));
        let run = || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let first = run();
        assert!(first.starts_with("run1-line1\n"), "{first}");
        assert!(judge(&first).0);
        let second = run();
        let (yes, why) = judge(&second);
        assert!(!yes && why.contains("run 2"), "{second}: {why}");
        let (yes, why) = judge("run1-line3\n");
        assert!(!yes && why.contains("did not come back"), "{why}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
