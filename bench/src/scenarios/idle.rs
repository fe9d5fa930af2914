//! `idle`: many SSE subscribers on one long task; the worker's RSS before and after
//! (KiB per connection), and whether the agent's output still reaches a new subscriber
//! and the crowd while they are all attached.

use super::{shell_quote, Ctx};
use crate::client::{self, Endpoint};
use crate::procfs;
use crate::report::{Goal, Row};
use crate::sse::{self, Flow};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Goal (issue 15): worker memory per idle SSE subscriber.
const GOAL_KIB: f64 = 8.0;
/// The long task prints a line this often (rarely: the subscribers are meant to idle).
const TICK_MS: u64 = 1000;
/// Connections being opened at once.
const OPENING: usize = 256;

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let ep = &ctx.target.ep;
    let exe = ctx
        .exe
        .to_str()
        .context("the bench binary's path is not UTF-8")?;
    // Long enough for any run of this scenario; cancelled at the end.
    let cmd = format!("{} __ticker 900 {TICK_MS}", shell_quote(exe));
    let id = client::start_task(ep, &cmd).await?;
    let res = measure(ctx, ep, &id).await;
    if let Err(e) = client::cancel_task(ep, &id).await {
        ctx.progress
            .say(&format!("  could not cancel the idle task {id}: {e:#}"));
    }
    res
}

async fn measure(ctx: &Ctx, ep: &Endpoint, id: &str) -> Result<Vec<Row>> {
    let n = ctx.args.subscribers;
    let (last, _) = probe(ep, id, None, Duration::from_secs(10))
        .await
        .context("the long task printed nothing within 10 s")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = ctx.target.pid;
    let before = pid.map(procfs::rss_kib).transpose()?;

    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    let newest = Arc::new(AtomicU64::new(last));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let gate = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let path = format!("/work/{id}/events?after={last}");
    let open_budget = Duration::from_secs(if ctx.args.quick { 20 } else { 90 });
    let phase = ctx
        .progress
        .phase(format!("opening {n} subscribers"), "open", open_budget);
    let counter = phase.counter();
    let mut subs = Vec::with_capacity(n);
    for _ in 0..n {
        let (ep, path, gate) = (ep.clone(), path.clone(), gate.clone());
        let (opened, failed, events, newest, first_error, counter) = (
            opened.clone(),
            failed.clone(),
            events.clone(),
            newest.clone(),
            first_error.clone(),
            counter.clone(),
        );
        subs.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let resp = ep.events(&path).await;
            drop(permit);
            match resp {
                Ok(resp) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    counter.fetch_add(1, Ordering::Relaxed);
                    let _ = sse::follow(resp.into_body(), |e| {
                        if e.event == "output" {
                            events.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(id) = e.id {
                            newest.fetch_max(id, Ordering::Relaxed);
                        }
                        Ok(Flow::Continue)
                    })
                    .await;
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + open_budget;
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(phase);
    let open_now = opened.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = pid.map(procfs::rss_kib).transpose()?;

    // Does output still flow, to a new subscriber and to the crowd?
    let window_start = events.load(Ordering::Relaxed);
    // After the newest event the crowd has seen: the probe waits for fresh output.
    let fresh = newest.load(Ordering::Relaxed);
    let probe_res = probe(ep, id, Some(fresh), Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(2 * TICK_MS)).await;
    let crowd = events.load(Ordering::Relaxed) - window_start;
    for s in &subs {
        s.abort();
    }
    for s in subs {
        let _ = s.await;
    }

    let per_conn = match (before, after) {
        (Some(b), Some(a)) if open_now > 0 => Some((a as f64 - b as f64) / open_now as f64),
        _ => None,
    };
    let mut rows = Vec::new();
    let mut open_row = Row::new("idle", "subscribers open", "").outpost(Some(open_now as f64));
    let fails = failed.load(Ordering::Relaxed);
    if fails > 0 || open_now < n as u64 {
        let why = first_error
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or_else(|| "not opened in time".to_string());
        open_row = open_row.note(format!(
            "{} of {n} did not open: {why}",
            n as u64 - open_now
        ));
    }
    rows.push(open_row);
    let mut rss = |label: &str, v: Option<u64>| {
        let mut r = Row::new("idle", label, "MiB").outpost(v.map(|k| k as f64 / 1024.0));
        if v.is_none() {
            r = r.note("worker pid unknown: pass --pid or run on the worker's machine");
        }
        rows.push(r);
    };
    rss("worker RSS before", before);
    rss("worker RSS with subscribers", after);
    rows.push(
        Row::new("idle", "RSS per subscriber", "KiB")
            .outpost(per_conn)
            .goal(Goal::AtMost(GOAL_KIB)),
    );
    let (flows, why) = match probe_res {
        Ok((_, delay)) if crowd > 0 => (
            true,
            format!(
                "a new subscriber saw output after {} ms; the crowd got {crowd} output events in {} s",
                delay.as_millis(),
                2 * TICK_MS / 1000
            ),
        ),
        Ok((_, delay)) => (false, format!("a new subscriber saw output after {} ms but the crowd got none", delay.as_millis())),
        Err(e) => (false, format!("no output reached a new subscriber: {e:#}")),
    };
    rows.push(
        Row::new("idle", "agent output still flows", "yes/no")
            .outpost(Some(if flows { 1.0 } else { 0.0 }))
            .goal(Goal::Yes)
            .note(why),
    );
    Ok(rows)
}

/// Subscribes (after event `after`, or from the start) and waits for one `output`
/// event; returns its id and how long it took.
async fn probe(
    ep: &Endpoint,
    id: &str,
    after: Option<u64>,
    within: Duration,
) -> Result<(u64, Duration)> {
    let path = match after {
        Some(a) => format!("/work/{id}/events?after={a}"),
        None => format!("/work/{id}/events"),
    };
    let t0 = Instant::now();
    let fut = async {
        let resp = ep.events(&path).await?;
        let mut seen = None;
        sse::follow(resp.into_body(), |e| {
            if e.event == "output" {
                seen = Some(e.id.unwrap_or(0));
                return Ok(Flow::Stop);
            }
            Ok(Flow::Continue)
        })
        .await?;
        seen.context("the event stream ended without output")
    };
    let id = tokio::time::timeout(within, fut)
        .await
        .with_context(|| format!("no output event within {} s", within.as_secs()))??;
    Ok((id, t0.elapsed()))
}
