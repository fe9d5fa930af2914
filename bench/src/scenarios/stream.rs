//! `stream`: one task writing a large amount to its terminal; MiB/s delivered to an SSE
//! client (decoded `output` bytes) and time to first byte, next to the same command read
//! straight off a PTY by bench. Then several such streams at once (aggregate MiB/s).

use super::Ctx;
use crate::client::{Endpoint, Proto};
use crate::pty;
use crate::report::{Goal, Row};
use crate::stats::MIB;
use crate::taskrun::{self, TaskRun};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const GOAL: f64 = 0.5;

fn command(bytes: u64) -> String {
    format!("head -c {bytes} /dev/zero | tr '\\0' a")
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let ep = &ctx.target.ep;
    let one = if ctx.args.quick { 16 } else { 256 } * 1024 * 1024u64;
    let each = if ctx.args.quick { 4 } else { 64 } * 1024 * 1024u64;
    let n = match crate::worker::max_tasks(ep).await {
        Some(m) => ctx.args.concurrency.min(m),
        None => ctx.args.concurrency,
    };
    let mut rows = Vec::new();

    // One stream.
    let budget = Duration::from_secs(if ctx.args.quick { 10 } else { 60 });
    let phase = ctx.progress.phase(
        format!("1 stream of {} MiB, outpost", one >> 20),
        "bytes",
        budget,
    );
    let o = outpost_streams(ep, 1, one, phase.counter()).await?;
    drop(phase);
    let phase = ctx.progress.phase(
        format!("1 stream of {} MiB, raw PTY", one >> 20),
        "bytes",
        budget,
    );
    let b = pty_streams(1, one, phase.counter()).await?;
    drop(phase);
    let mut row = Row::new("stream", format!("1 stream, {} MiB", one >> 20), "MiB/s")
        .outpost(o.mib_s())
        .baseline(b.mib_s())
        .goal(Goal::RatioAtLeast(GOAL));
    if o.bytes != one {
        row = row.note(format!("outpost delivered {} of {one} bytes", o.bytes));
    }
    rows.push(row);
    rows.push(
        Row::new("stream", "time to first byte", "ms")
            .outpost(o.first_byte.map(|d| d.as_secs_f64() * 1e3))
            .baseline(b.first_byte.map(|d| d.as_secs_f64() * 1e3)),
    );

    // Several at once.
    let phase = ctx.progress.phase(
        format!("{n} streams of {} MiB, outpost", each >> 20),
        "bytes",
        budget,
    );
    let o = outpost_streams(ep, n, each, phase.counter()).await?;
    drop(phase);
    let phase = ctx.progress.phase(
        format!("{n} streams of {} MiB, raw PTY", each >> 20),
        "bytes",
        budget,
    );
    let b = pty_streams(n, each, phase.counter()).await?;
    drop(phase);
    let mut row = Row::new(
        "stream",
        format!("{n} streams x {} MiB, aggregate", each >> 20),
        "MiB/s",
    )
    .outpost(o.mib_s())
    .baseline(b.mib_s())
    .goal(Goal::RatioAtLeast(GOAL));
    if o.bytes != each * n as u64 {
        row = row.note(format!(
            "outpost delivered {} of {} bytes",
            o.bytes,
            each * n as u64
        ));
    }
    if n < ctx.args.concurrency {
        row = row.note(format!("only {n} at once: the worker's maxTasks"));
    }
    rows.push(row);
    Ok(rows)
}

/// Bytes delivered by a set of streams started together, and when.
struct Delivered {
    bytes: u64,
    first_byte: Option<Duration>,
    last_byte: Option<Duration>,
}

impl Delivered {
    fn mib_s(&self) -> Option<f64> {
        let s = self.last_byte?.as_secs_f64();
        (s > 0.0).then(|| self.bytes as f64 / MIB / s)
    }

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

async fn outpost_streams(
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
