//! `latency`: an agent printing its wall-clock time every 10 ms; how long each line takes
//! from the agent's write to the SSE client's receipt, next to the same ticker read
//! straight off a PTY by bench.

use super::{shell_quote, Ctx};
use crate::client::{Endpoint, Proto};
use crate::pty;
use crate::report::{Goal, Row};
use crate::stats::Samples;
use crate::taskrun::{self, TaskRun};
use crate::ticker::{now_ns, Lines};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(super) const INTERVAL_MS: u64 = 10;
/// p50 and p99 at most this many times the raw PTY's (issue 15).
const GOAL_RATIO: f64 = 2.0;

/// The ticker agent's command line: `count` lines, one every [`INTERVAL_MS`].
pub(super) fn ticker_command(exe: &str, count: u64) -> String {
    format!("{} __ticker {count} {INTERVAL_MS}", shell_quote(exe))
}

/// Runs the ticker as a task; every line's write-to-receipt time, and the run. The
/// client runs on a thread of its own with a single-threaded runtime, as the PTY
/// baseline reads on a thread of its own: the connection and the reader of its events
/// share that thread, so a line's receipt costs the client one wake-up, as it costs
/// the baseline. (On bench's main runtime it cost two: the worker thread driving the
/// connection, then the main thread awaiting the body, 70-100 µs more per line.)
pub(super) async fn outpost_ticker(
    ep: &Endpoint,
    cmd: &str,
    counter: Arc<AtomicU64>,
) -> Result<(Samples, TaskRun)> {
    let (ep, cmd) = (ep.clone(), cmd.to_string());
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the ticker client's runtime")?;
        rt.block_on(async move {
            let mut lines = Lines::default();
            let mut o = Samples::new();
            let mut on_output = |chunk: &[u8]| {
                let now = now_ns();
                lines.push(chunk, |ns| {
                    o.push_ns(now.saturating_sub(ns));
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            };
            let mut conn = ep.connect(Proto::H1).await?;
            let r = taskrun::run(&mut conn, &cmd, Some(&mut on_output), &|_| {}).await?;
            Ok((o, r))
        })
    })
    .await
    .context("the ticker client's thread")?
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let count: u64 = if ctx.args.quick { 200 } else { 1000 };
    let exe = ctx
        .exe
        .to_str()
        .context("the bench binary's path is not UTF-8")?;
    let cmd = ticker_command(exe, count);
    let budget = Duration::from_millis(count * INTERVAL_MS);

    let phase = ctx.progress.phase("ticker via outpost", "lines", budget);
    let (mut o, r) = outpost_ticker(&ctx.target.ep, &cmd, phase.counter()).await?;
    drop(phase);

    let phase = ctx.progress.phase("ticker via raw PTY", "lines", budget);
    let counter = phase.counter();
    let b = tokio::task::spawn_blocking(move || {
        let mut lines = Lines::default();
        let mut b = Samples::new();
        pty::run(&cmd, |chunk| {
            let now = now_ns();
            lines.push(chunk, |ns| {
                b.push_ns(now.saturating_sub(ns));
                counter.fetch_add(1, Ordering::Relaxed);
            });
        })?;
        Ok::<_, anyhow::Error>(b)
    })
    .await
    .context("PTY baseline thread")??;
    drop(phase);
    let mut b = b;

    let mut p99 = Row::new(
        "latency",
        format!("p99 write to receipt ({count} lines)"),
        "ms",
    )
    .outpost(o.p99())
    .baseline(b.p99())
    .goal(Goal::RatioAtMost(GOAL_RATIO));
    if o.len() as u64 != count {
        p99 = p99.note(format!(
            "outpost delivered {} of {count} lines (task {:?})",
            o.len(),
            r.status
        ));
    }
    Ok(vec![
        Row::new("latency", "p50 write to receipt", "ms")
            .outpost(o.p50())
            .baseline(b.p50())
            .goal(Goal::RatioAtMost(GOAL_RATIO)),
        p99,
        Row::new("latency", "max write to receipt", "ms")
            .outpost(o.max_ms())
            .baseline(b.max_ms()),
    ])
}
