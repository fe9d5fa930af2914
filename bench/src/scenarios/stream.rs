//! `stream`: one task writing a large amount to its terminal; MiB/s delivered to an SSE
//! client (decoded `output` bytes) and time to first byte, next to the same command read
//! straight off a PTY by bench. Then several such streams at once (aggregate MiB/s).

use super::Ctx;
use crate::client::{Endpoint, Proto};
use crate::pty;
use crate::report::{Goal, Row};
use crate::stats::{Samples, MIB};
use crate::taskrun::{self, TaskRun};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Goals (issue 15): one stream, and several at once, against the raw PTY.
const GOAL_ONE: f64 = 0.9;
const GOAL_MANY: f64 = 0.8;
/// Output is stored once (its records); the JSON framing and the partial page a sync
/// leaves to be written again are the rest.
const DISK_GOAL: f64 = 1.1;

pub(super) fn command(bytes: u64) -> String {
    format!("head -c {bytes} /dev/zero | tr '\\0' a")
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let ep = &ctx.target.ep;
    let one = if ctx.args.quick { 16 } else { 256 } * 1024 * 1024u64;
    let each = if ctx.args.quick { 4 } else { 64 } * 1024 * 1024u64;
    // PTY throughput swings a lot on a shared machine (72 to 214 MiB/s from one run to
    // the next here): best of 3 rounds per side, the order alternating.
    let rounds = 3;
    let n = match crate::worker::max_tasks(ep).await {
        Some(m) => ctx.args.concurrency.min(m),
        None => ctx.args.concurrency,
    };
    let mut rows = Vec::new();

    let (o, b) = measure(ctx, 1, one, rounds).await?;
    let mut row = Row::new(
        "stream",
        format!("1 stream, {} MiB, best of {rounds}", one >> 20),
        "MiB/s",
    )
    .outpost(o.mib_s())
    .baseline(b.mib_s())
    .goal(Goal::RatioAtLeast(GOAL_ONE));
    if o.bytes != one * rounds as u64 {
        row = row.note(format!(
            "outpost delivered {} of {} bytes",
            o.bytes,
            one * rounds as u64
        ));
    }
    rows.push(row);
    rows.extend(worker_rows(&o, one >> 20));
    let (mut ot, mut bt) = (o.ttfb, b.ttfb);
    rows.push(
        Row::new("stream", "time to first byte (p50)", "ms")
            .outpost(ot.p50())
            .baseline(bt.p50()),
    );

    let (o, b) = measure(ctx, n, each, rounds).await?;
    let total = each * n as u64 * rounds as u64;
    let mut row = Row::new(
        "stream",
        format!(
            "{n} streams x {} MiB, aggregate, best of {rounds}",
            each >> 20
        ),
        "MiB/s",
    )
    .outpost(o.mib_s())
    .baseline(b.mib_s())
    .goal(Goal::RatioAtLeast(GOAL_MANY));
    if o.bytes != total {
        row = row.note(format!("outpost delivered {} of {total} bytes", o.bytes));
    }
    if n < ctx.args.concurrency {
        row = row.note(format!("only {n} at once: the worker's maxTasks"));
    }
    rows.push(row);
    Ok(rows)
}

/// Rounds of one shape: the best round's MiB/s, every round's first-byte time.
#[derive(Default)]
struct Total {
    bytes: u64,
    best: Option<f64>,
    ttfb: Samples,
    /// The worker's own figures over the outpost rounds (when its pid is known).
    worker: Option<WorkerUse>,
}

/// What the worker process spent: bytes it sent to storage (`write_bytes` of
/// /proc/<pid>/io: pages it dirtied, so a partial page rewritten after a sync counts
/// again) and CPU time (utime + stime of /proc/<pid>/stat, every thread).
#[derive(Debug, Default, Clone, Copy)]
struct WorkerUse {
    disk_bytes: u64,
    cpu_ticks: u64,
}

impl WorkerUse {
    fn read(pid: u32) -> Option<WorkerUse> {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
        let disk_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command (which may hold spaces): state is field 3, utime 14.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let cpu_ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(WorkerUse {
            disk_bytes,
            cpu_ticks,
        })
    }

    fn since(self, before: WorkerUse) -> WorkerUse {
        WorkerUse {
            disk_bytes: self.disk_bytes.saturating_sub(before.disk_bytes),
            cpu_ticks: self.cpu_ticks.saturating_sub(before.cpu_ticks),
        }
    }
}

/// Disk bytes per output byte and worker CPU per MiB over the outpost rounds.
fn worker_rows(o: &Total, mib: u64) -> Vec<Row> {
    let Some(w) = o.worker.filter(|_| o.bytes > 0) else {
        return Vec::new();
    };
    let tick_ms = 1000.0 / clock_ticks_per_sec();
    vec![
        Row::new(
            "stream",
            format!("1 x {mib} MiB: bytes written to disk per output byte"),
            "x",
        )
        .outpost(Some(w.disk_bytes as f64 / o.bytes as f64))
        .goal(Goal::AtMost(DISK_GOAL))
        .note("worker write_bytes (/proc/<pid>/io) over the outpost rounds / output bytes delivered; on tmpfs 0"),
        Row::new("stream", format!("1 x {mib} MiB: worker CPU per MiB"), "ms")
            .outpost(Some(w.cpu_ticks as f64 * tick_ms / (o.bytes as f64 / MIB))),
    ]
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl Total {
    fn add(&mut self, d: Delivered) {
        self.bytes += d.bytes;
        let rate = d
            .last_byte
            .map(|t| t.as_secs_f64())
            .filter(|s| *s > 0.0)
            .map(|s| d.bytes as f64 / MIB / s);
        self.best = match (self.best, rate) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(f) = d.first_byte {
            self.ttfb.push(f);
        }
    }

    /// The best round: what each side can do when the machine lets it.
    fn mib_s(&self) -> Option<f64> {
        self.best
    }
}

/// `rounds` rounds of `n` streams of `bytes` each, through outpost and off a raw PTY.
async fn measure(ctx: &Ctx, n: usize, bytes: u64, rounds: usize) -> Result<(Total, Total)> {
    let budget = Duration::from_secs(if ctx.args.quick { 10 } else { 60 });
    let shape = format!("{n} x {} MiB", bytes >> 20);
    let (mut o, mut b) = (Total::default(), Total::default());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for via_outpost in order {
            let who = if via_outpost { "outpost" } else { "raw PTY" };
            let label = format!("{shape}, {who} (round {}/{rounds})", round + 1);
            let phase = ctx.progress.phase(label, "bytes", budget);
            if via_outpost {
                let before = ctx.target.pid.and_then(WorkerUse::read);
                o.add(outpost_streams(&ctx.target.ep, n, bytes, phase.counter()).await?);
                let after = ctx.target.pid.and_then(WorkerUse::read);
                if let (Some(a), Some(b)) = (after, before) {
                    let d = a.since(b);
                    let w = o.worker.get_or_insert_with(WorkerUse::default);
                    w.disk_bytes += d.disk_bytes;
                    w.cpu_ticks += d.cpu_ticks;
                }
            } else {
                b.add(pty_streams(n, bytes, phase.counter()).await?);
            }
        }
    }
    Ok((o, b))
}

/// Bytes delivered by a set of streams started together, and when.
pub(super) struct Delivered {
    pub(super) bytes: u64,
    pub(super) first_byte: Option<Duration>,
    pub(super) last_byte: Option<Duration>,
}

impl Delivered {
    fn merge(runs: impl Iterator<Item = (u64, Option<Duration>, Option<Duration>)>) -> Delivered {
        let mut d = Delivered {
            bytes: 0,
            first_byte: None,
            last_byte: None,
        };
        for (bytes, first, last) in runs {
            d.bytes += bytes;
            d.first_byte = match (d.first_byte, first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            d.last_byte = d.last_byte.max(last);
        }
        d
    }
}

/// `n` tasks each writing `bytes`, started together, each followed by its own client.
pub(super) async fn outpost_streams(
    ep: &Endpoint,
    n: usize,
    bytes: u64,
    counter: Arc<AtomicU64>,
) -> Result<Delivered> {
    let cmd = command(bytes);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(ep.connect(Proto::H1).await?);
    }
    let mut handles = Vec::new();
    for mut conn in conns {
        let (cmd, counter) = (cmd.clone(), counter.clone());
        handles.push(tokio::spawn(async move {
            let tick = move |n: u64| {
                counter.fetch_add(n, Ordering::Relaxed);
            };
            taskrun::run(&mut conn, &cmd, None, &tick).await
        }));
    }
    let mut runs: Vec<TaskRun> = Vec::new();
    for h in handles {
        runs.push(h.await.context("stream task")??);
    }
    if let Some(bad) = runs.iter().find(|r| r.status.as_deref() != Some("done")) {
        anyhow::bail!("a stream task ended {:?}, not done", bad.status);
    }
    Ok(Delivered::merge(
        runs.iter()
            .map(|r| (r.output_bytes, r.first_output, r.last_output)),
    ))
}

async fn pty_streams(n: usize, bytes: u64, counter: Arc<AtomicU64>) -> Result<Delivered> {
    let cmd = command(bytes);
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let mut handles = Vec::new();
    for _ in 0..n {
        let (cmd, counter, barrier) = (cmd.clone(), counter.clone(), barrier.clone());
        handles.push(tokio::task::spawn_blocking(move || {
            barrier.wait();
            let t0 = std::time::Instant::now();
            let r = pty::run(&cmd, |c| {
                counter.fetch_add(c.len() as u64, Ordering::Relaxed);
            })?;
            // Time from the common start, like the outpost side.
            let shift = t0.elapsed().saturating_sub(r.elapsed);
            Ok::<_, anyhow::Error>((
                r.bytes,
                r.first_byte.map(|d| d + shift),
                r.last_byte.map(|d| d + shift),
            ))
        }));
    }
    let mut runs = Vec::new();
    for h in handles {
        runs.push(h.await.context("PTY baseline thread")??);
    }
    Ok(Delivered::merge(runs.into_iter()))
}
