//! `scale`: 256 tasks alive at once on one worker of bench's own (a fresh data dir,
//! `OUTPOST_MAX_TASKS=256`, so no earlier scenario's freed memory hides what they cost).
//! Each task is a sleeping agent followed by one subscriber: its `POST /work` event
//! stream, held open the way a controller holds it. Measured: the worker's RSS, threads
//! and CPU while they all idle (against the same worker with no task), how long the
//! 256th takes to be admitted and to start (against the first few), and the RSS each
//! live task costs beyond its subscriber: a second subscriber per task, opened last,
//! gives a subscriber's own cost, which is taken off the per-task figure.

use super::Ctx;
use crate::client::{self, Endpoint, Proto};
use crate::procfs;
use crate::report::{Goal, Row};
use crate::sse::{self, Flow};
use crate::stats::Samples;
use crate::worker::{self, SpawnOpts, Target};
use anyhow::{bail, Context, Result};
use hyper::{Method, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Tasks alive at once (`--quick`: a smoke of the same shape).
const TASKS: usize = 256;
const QUICK_TASKS: usize = 32;
/// Goal (issue 15): worker memory per live task beyond its subscriber.
const GOAL_KIB_PER_TASK: f64 = 64.0;
/// The admissions the last one is compared with.
const FIRST: usize = 8;
/// The agent: asleep for longer than any run; cancelled at the end.
const PROMPT: &str = "sleep 3600";

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n = if ctx.args.quick { QUICK_TASKS } else { TASKS };
    let bin = worker::outpost_bin(ctx.args.outpost_bin.as_deref(), &ctx.exe)?;
    let opts = SpawnOpts {
        max_tasks: n,
        ..SpawnOpts::default()
    };
    ctx.progress
        .say(&format!("  starting a worker with OUTPOST_MAX_TASKS={n}"));
    let mut t = Target::spawn_with(&bin, &opts).await?;
    let mut live = Live::default();
    let res = measure(ctx, &t, n, &mut live).await;
    live.end(ctx, &t.ep).await;
    // Stopping waits for the worker to exit: keep that off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || t.stop()).await;
    res
}

/// The tasks started and the subscribers following them.
#[derive(Default)]
struct Live {
    ids: Vec<String>,
    subs: Vec<JoinHandle<()>>,
}

impl Live {
    /// Cancels every task, then drops the subscribers.
    async fn end(&mut self, ctx: &Ctx, ep: &Endpoint) {
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        let mut cancels = Vec::new();
        for id in self.ids.drain(..) {
            let (ep, gate) = (ep.clone(), gate.clone());
            cancels.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                client::cancel_task(&ep, &id).await
            }));
        }
        let mut failed = 0;
        for c in cancels {
            if !matches!(c.await, Ok(Ok(()))) {
                failed += 1;
            }
        }
        if failed > 0 {
            ctx.progress.say(&format!(
                "  {failed} scale tasks could not be cancelled (the worker's stop ends them)"
            ));
        }
        for s in self.subs.drain(..) {
            s.abort();
            let _ = s.await;
        }
    }
}

/// What the subscribers have seen, shared with their tasks.
#[derive(Default)]
struct Seen {
    working: AtomicU64,
    ended: AtomicU64,
    /// Per task: POST to the `working` status event.
    started: Mutex<Vec<Option<Duration>>>,
    /// Per task: the newest event id.
    last_id: Mutex<Vec<u64>>,
}

async fn measure(ctx: &Ctx, t: &Target, n: usize, live: &mut Live) -> Result<Vec<Row>> {
    let ep = &t.ep;
    let pid = t.pid.context("the scale worker has no pid")?;
    let window = if ctx.args.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = procfs::rss_kib(pid)?;
    let threads0 = procfs::threads(pid)?;
    let cpu0 = cpu_share(pid, window).await?;

    let seen = Arc::new(Seen {
        started: Mutex::new(vec![None; n]),
        last_id: Mutex::new(vec![0; n]),
        ..Seen::default()
    });
    let mut admit = Vec::with_capacity(n);
    let phase = ctx.progress.phase(
        format!("admitting {n} sleeping tasks"),
        "tasks",
        Duration::from_secs(30),
    );
    let counter = phase.counter();
    for i in 0..n {
        let (id, took, sub) = start(ep, i, seen.clone()).await?;
        admit.push(took);
        live.ids.push(id);
        live.subs.push(sub);
        counter.fetch_add(1, Ordering::Relaxed);
    }
    drop(phase);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.working.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        if seen.ended.load(Ordering::Relaxed) > 0 {
            bail!("a sleeping task ended before it was cancelled");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let working = seen.working.load(Ordering::Relaxed) as usize;
    if working < n {
        bail!("only {working} of {n} tasks were working within 60 s");
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss1 = procfs::rss_kib(pid)?;
    let threads1 = procfs::threads(pid)?;
    let cpu1 = cpu_share(pid, window).await?;

    // A second subscriber per task: what one subscriber costs by itself.
    let opened = Arc::new(AtomicU64::new(0));
    let last: Vec<u64> = seen.last_id.lock().map(|v| v.clone()).unwrap_or_default();
    for (id, after) in live.ids.iter().zip(last) {
        let (ep, opened) = (ep.clone(), opened.clone());
        let path = format!("/work/{id}/events?after={after}");
        live.subs.push(tokio::spawn(async move {
            if let Ok(body) = ep.events(&path).await.map(|r| r.into_body()) {
                opened.fetch_add(1, Ordering::Relaxed);
                let _ = sse::follow(body, |_| Ok(Flow::Continue)).await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (opened.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let extra = opened.load(Ordering::Relaxed) as usize;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss2 = procfs::rss_kib(pid)?;
    if seen.ended.load(Ordering::Relaxed) > 0 {
        bail!("a sleeping task ended while it was measured");
    }

    let per_task = (rss1 as f64 - rss0 as f64) / n as f64;
    let per_sub = (extra > 0).then(|| (rss2 as f64 - rss1 as f64) / extra as f64);
    let mut first = Samples::new();
    for d in admit.iter().take(FIRST.min(n - 1)) {
        first.push(*d);
    }
    let started: Vec<Option<Duration>> = seen.started.lock().map(|v| v.clone()).unwrap_or_default();
    let mut first_start = Samples::new();
    for d in started.iter().take(FIRST.min(n - 1)).flatten() {
        first_start.push(*d);
    }
    let last_admit = admit.last().map(|d| d.as_secs_f64() * 1e3);
    let last_start = started
        .last()
        .copied()
        .flatten()
        .map(|d| d.as_secs_f64() * 1e3);
    let total_admit: Duration = admit.iter().sum();
    let mib = |k: u64| Some(k as f64 / 1024.0);

    let mut rows = vec![
        Row::new(
            "scale",
            "live tasks (a sleeping agent and a subscriber each)",
            "",
        )
        .outpost(Some(working as f64)),
        Row::new("scale", format!("worker RSS, {n} live tasks"), "MiB")
            .outpost(mib(rss1))
            .baseline(mib(rss0))
            .note("baseline: the same worker before its first task"),
        Row::new("scale", "RSS per live task, its subscriber included", "KiB")
            .outpost(Some(per_task)),
    ];
    let mut sub_row =
        Row::new("scale", "RSS per subscriber (a second one per task)", "KiB").outpost(per_sub);
    if extra < n {
        sub_row = sub_row.note(format!("only {extra} of {n} second subscribers opened"));
    }
    rows.push(sub_row);
    rows.push(
        Row::new("scale", "RSS per live task beyond its subscriber", "KiB")
            .outpost(per_sub.map(|s| per_task - s))
            .goal(Goal::AtMost(GOAL_KIB_PER_TASK)),
    );
    rows.push(
        Row::new("scale", "worker CPU while they idle", "% of a CPU")
            .outpost(Some(cpu1))
            .baseline(Some(cpu0))
            .note(format!(
                "over {} s; baseline: the same worker with no task",
                window.as_secs()
            )),
    );
    rows.push(
        Row::new("scale", "worker threads", "")
            .outpost(Some(threads1 as f64))
            .baseline(Some(threads0 as f64)),
    );
    rows.push(
        Row::new(
            "scale",
            format!("admit the {}: POST to response", ordinal(n)),
            "ms",
        )
        .outpost(last_admit)
        .baseline(first.p50())
        .note(format!(
            "baseline: p50 of the first {} admissions; all {n} took {} ms, one after another",
            FIRST.min(n - 1),
            total_admit.as_millis()
        )),
    );
    rows.push(
        Row::new(
            "scale",
            format!("start the {}: POST to working", ordinal(n)),
            "ms",
        )
        .outpost(last_start)
        .baseline(first_start.p50())
        .note("a task without rig_url is `working` from its admission (docs/api.md): its agent starts about a millisecond later"),
    );
    Ok(rows)
}

/// 1st, 2nd, 3rd, 4th, ..., 11th, ..., 256th.
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// The worker's CPU use over `window`, in % of one CPU.
async fn cpu_share(pid: u32, window: Duration) -> Result<f64> {
    let a = procfs::cpu_secs(pid)?;
    tokio::time::sleep(window).await;
    let b = procfs::cpu_secs(pid)?;
    Ok((b - a) / window.as_secs_f64() * 100.0)
}

/// `POST /work` with an event-stream reply; returns the task id, the time to the
/// response, and the subscriber following the stream (it notes `working` and the end).
async fn start(
    ep: &Endpoint,
    i: usize,
    seen: Arc<Seen>,
) -> Result<(String, Duration, JoinHandle<()>)> {
    let mut c = ep.connect(Proto::H1).await?;
    let req = c.request(
        Method::POST,
        "/work",
        client::work_body(PROMPT),
        &[
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ],
    )?;
    let t0 = Instant::now();
    let resp = c.send(req).await?;
    let took = t0.elapsed();
    let status = resp.status();
    if status != StatusCode::OK {
        bail!(
            "POST /work for live task {}: {status} (is OUTPOST_MAX_TASKS high enough?)",
            i + 1
        );
    }
    let id = resp
        .headers()
        .get("x-task-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .context("POST /work: the stream has no X-Task-Id")?;
    let body = resp.into_body();
    let sub = tokio::spawn(async move {
        // Keeps the connection (and so the stream) open while it follows.
        let _conn = c;
        let mut working = false;
        let _ = sse::follow(body, |e| {
            if let Some(id) = e.id {
                if let Ok(mut v) = seen.last_id.lock() {
                    v[i] = v[i].max(id);
                }
            }
            if e.event == "status" && !working {
                let v: serde_json::Value = serde_json::from_slice(&e.data).unwrap_or_default();
                if v.get("status").and_then(|s| s.as_str()) == Some("working") {
                    working = true;
                    if let Ok(mut v) = seen.started.lock() {
                        v[i] = Some(t0.elapsed());
                    }
                    seen.working.fetch_add(1, Ordering::Relaxed);
                }
            }
            if e.event == "done" {
                seen.ended.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Flow::Continue)
        })
        .await;
    });
    Ok((id, took, sub))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ordinals_read_right() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 32, 256]
            .into_iter()
            .map(super::ordinal)
            .collect();
        assert_eq!(
            got,
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "32nd", "256th"]
        );
    }
}
