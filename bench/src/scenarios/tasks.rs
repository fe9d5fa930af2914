//! `tasks`: trivial tasks (`true`) back to back and several at a time: tasks/s and
//! POST-to-done latency, next to spawning the same command in a PTY with nothing else
//! (from a small helper process, so the baseline does not depend on what ran before).

use super::Ctx;
use crate::client::{Endpoint, Proto};
use crate::report::{Goal, Row};
use crate::spawner;
use crate::stats::{rate, Samples};
use crate::taskrun;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Goals (issue 15): tasks/s back to back and several at a time against the bare PTY
/// spawn, and back to back p99 at most 3x the spawn's.
const GOAL_ONE: f64 = 0.7;
const GOAL_MANY: f64 = 0.9;
const GOAL_ONE_P99: f64 = 3.0;
const COMMAND: &str = "true";

/// What one side did in one phase.
pub(super) struct Batch {
    pub(super) done: u64,
    pub(super) failed: u64,
    pub(super) busy: u64,
    pub(super) first_error: Option<String>,
    pub(super) elapsed: Duration,
    pub(super) lat: Samples,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let ep = &ctx.target.ep;
    let max_count: u64 = if ctx.args.quick { 50 } else { 2000 };
    let time = ctx.args.duration;
    let n = match crate::worker::max_tasks(ep).await {
        Some(m) => ctx.args.concurrency.min(m),
        None => ctx.args.concurrency,
    };
    let mut rows = Vec::new();
    for (lanes, name) in [
        (1usize, "back to back".to_string()),
        (n, format!("{n} at a time")),
    ] {
        let phase = ctx
            .progress
            .phase(format!("{name}, outpost"), "tasks", time);
        let mut o = outpost(ep, lanes, max_count, time, phase.counter()).await?;
        drop(phase);
        let phase = ctx
            .progress
            .phase(format!("{name}, PTY spawn"), "tasks", time);
        let mut b = bare(ctx, lanes, max_count, time, phase.counter()).await?;
        drop(phase);
        let mut row = Row::new("tasks", format!("{name}: tasks/s"), "tasks/s")
            .outpost(rate(o.done as f64, o.elapsed))
            .baseline(rate(b.done as f64, b.elapsed))
            .goal(Goal::RatioAtLeast(if lanes == 1 {
                GOAL_ONE
            } else {
                GOAL_MANY
            }));
        if o.failed > 0 {
            row = row.note(format!(
                "{} outpost tasks failed: {}",
                o.failed,
                o.first_error.take().unwrap_or_default()
            ));
        }
        if o.busy > 0 {
            row = row.note(format!("{} POSTs refused as busy and retried", o.busy));
        }
        if b.failed > 0 {
            row = row.note(format!("{} baseline spawns failed", b.failed));
        }
        rows.push(row);
        rows.push(
            Row::new("tasks", format!("{name}: p50 POST to done"), "ms")
                .outpost(o.lat.p50())
                .baseline(b.lat.p50()),
        );
        let mut p99 = Row::new("tasks", format!("{name}: p99 POST to done"), "ms")
            .outpost(o.lat.p99())
            .baseline(b.lat.p99());
        if lanes == 1 {
            p99 = p99.goal(Goal::RatioAtMost(GOAL_ONE_P99));
        }
        rows.push(p99);
    }
    Ok(rows)
}

/// Trivial tasks on `lanes` connections, each one after the other, until `time` is
/// up or `max_count` were issued.
pub(super) async fn outpost(
    ep: &Endpoint,
    lanes: usize,
    max_count: u64,
    time: Duration,
    counter: Arc<AtomicU64>,
) -> Result<Batch> {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + time;
    let mut handles = Vec::new();
    for _ in 0..lanes {
        let (ep, issued, counter) = (ep.clone(), issued.clone(), counter.clone());
        handles.push(tokio::spawn(async move {
            let mut b = Batch {
                done: 0,
                failed: 0,
                busy: 0,
                first_error: None,
                elapsed: Duration::ZERO,
                lat: Samples::new(),
            };
            let mut conn = None;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_count {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(ep.connect(Proto::H1).await?),
                };
                let t = Instant::now();
                match taskrun::run(c, COMMAND, None, &|_| {}).await {
                    Ok(r) if r.status.as_deref() == Some("done") => {
                        b.lat.push(t.elapsed());
                        b.done += 1;
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        b.failed += 1;
                        b.first_error
                            .get_or_insert_with(|| format!("ended {:?}", r.status));
                    }
                    Err(e) if taskrun::is_busy(&e) => {
                        b.busy += 1;
                        issued.fetch_sub(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => {
                        b.failed += 1;
                        b.first_error.get_or_insert_with(|| format!("{e:#}"));
                        conn = None; // the connection may be gone; open another
                    }
                }
            }
            Ok::<_, anyhow::Error>(b)
        }));
    }
    collect(handles, start).await
}

/// The baseline, in a helper process of its own (see `spawner`).
async fn bare(
    ctx: &Ctx,
    lanes: usize,
    max_count: u64,
    time: Duration,
    counter: Arc<AtomicU64>,
) -> Result<Batch> {
    let s = spawner::run(&ctx.exe, lanes, max_count, time, COMMAND, counter).await?;
    let mut lat = Samples::new();
    for ns in s.lat_ns {
        lat.push_ns(ns);
    }
    Ok(Batch {
        done: s.done,
        failed: s.failed,
        busy: 0,
        first_error: s.first_error,
        elapsed: Duration::from_nanos(s.elapsed_ns),
        lat,
    })
}

async fn collect(
    handles: Vec<tokio::task::JoinHandle<Result<Batch>>>,
    start: Instant,
) -> Result<Batch> {
    let mut total = Batch {
        done: 0,
        failed: 0,
        busy: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        lat: Samples::new(),
    };
    for h in handles {
        let b = h.await.context("task lane")??;
        total.done += b.done;
        total.failed += b.failed;
        total.busy += b.busy;
        if total.first_error.is_none() {
            total.first_error = b.first_error;
        }
        total.lat.extend(b.lat);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}
