//! `sync`: what it costs that an event reaches a client only once it is on stable
//! storage (the worker's group-commit syncer, `src/task/eventlog/durable.rs`). Two
//! workers of bench's own, the same binary and settings, one with its data dir on a disk
//! (every event waits for an `fdatasync` covering it) and one on tmpfs (`/dev/shm`:
//! nothing to sync, events are served as soon as they are written), do the same work in
//! turn: one stream, several at once, the latency ticker, trivial tasks back to back.
//! Several rounds, the order alternating; each figure is the median of the rounds, the
//! disk worker's against the tmpfs worker's as its baseline.
//!
//! The tmpfs side differs in one more way than the syncs: its files cost no disk file
//! system work either (block allocation, writeback). The ratio is therefore an upper
//! bound on what the syncs cost; the worker has no switch that turns syncs off on a disk.

use super::{latency, stream, tasks, Ctx};
use crate::procfs;
use crate::report::Row;
use crate::stats::{rate, MIB};
use crate::worker::{self, SpawnOpts, Target};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How much work one round is.
struct Plan {
    rounds: usize,
    one: u64,
    many: usize,
    each: u64,
    lines: u64,
    tasks_time: Duration,
    tasks_max: u64,
}

/// The workers' `OUTPOST_MIN_FREE_DISK`, in bytes.
const MIN_FREE: u64 = 16 << 20;

impl Plan {
    /// The output of every round's streams.
    fn bytes(&self) -> u64 {
        self.rounds as u64 * (self.one + self.many as u64 * self.each)
    }

    fn new(ctx: &Ctx) -> Plan {
        let quick = ctx.args.quick;
        Plan {
            rounds: if quick { 2 } else { 3 },
            one: if quick { 8 } else { 64 } * 1024 * 1024,
            many: ctx.args.concurrency.min(worker::SPAWN_MAX_TASKS),
            each: if quick { 1 } else { 16 } * 1024 * 1024,
            lines: if quick { 60 } else { 300 },
            tasks_time: ctx.args.duration,
            tasks_max: if quick { 30 } else { 2000 },
        }
    }
}

/// One round's figures on one worker.
#[derive(Default)]
struct Round {
    one_mib_s: Option<f64>,
    many_mib_s: Option<f64>,
    /// Bytes the worker wrote to storage per output byte delivered (both stream phases).
    disk_per_byte: Option<f64>,
    lat_p50: Option<f64>,
    lat_p99: Option<f64>,
    lines_short: Option<String>,
    tasks_s: Option<f64>,
    tasks_p99: Option<f64>,
    tasks_failed: u64,
    tasks_error: Option<String>,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let bin = worker::outpost_bin(ctx.args.outpost_bin.as_deref(), &ctx.exe)?;
    let (disk_dir, disk_fs) = disk_dir()?;
    let shm = PathBuf::from("/dev/shm");
    match procfs::fs_kind(&shm) {
        Ok((_, true)) => {}
        Ok((name, false)) => bail!("/dev/shm is {name}, not a file system in memory"),
        Err(e) => bail!("no /dev/shm for the tmpfs worker: {e:#}"),
    }
    // Every round's output stays in the tmpfs worker's log until the end (a container's
    // /dev/shm may be 64 MiB).
    let plan = Plan::new(ctx);
    let need = plan.bytes() + plan.bytes() / 8 + 2 * MIN_FREE;
    for (dir, what) in [(&disk_dir, "the disk worker"), (&shm, "the tmpfs worker")] {
        let free = procfs::free_bytes(dir)?;
        if free < need {
            bail!(
                "{} has {} MiB free; {what} needs about {} MiB",
                dir.display(),
                free >> 20,
                need >> 20
            );
        }
    }
    ctx.progress.say(&format!(
        "  starting two workers: data on {} ({disk_fs}) and on /dev/shm (tmpfs)",
        disk_dir.display()
    ));
    let spawn = |under: PathBuf| {
        let bin = bin.clone();
        async move {
            let opts = SpawnOpts {
                under: Some(under),
                // The same on both: a small /dev/shm must not refuse the work.
                env: vec![("OUTPOST_MIN_FREE_DISK", MIN_FREE.to_string())],
                ..SpawnOpts::default()
            };
            Target::spawn_with(&bin, &opts).await
        }
    };
    let disk = spawn(disk_dir.clone()).await.context("the disk worker")?;
    let mem = spawn(shm).await.context("the tmpfs worker")?;
    let res = measure(ctx, plan, &disk, &mem).await;
    for mut t in [disk, mem] {
        // Stopping waits for the worker to exit: keep that off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || t.stop()).await;
    }
    let (d, m, plan) = res?;
    Ok(rows(&plan, d, m, &disk_dir, disk_fs))
}

/// The first of the temp dir, /var/tmp and the working directory that is on a disk.
fn disk_dir() -> Result<(PathBuf, &'static str)> {
    let mut tried = Vec::new();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    for dir in [std::env::temp_dir(), PathBuf::from("/var/tmp"), cwd] {
        match procfs::fs_kind(&dir) {
            Ok((name, false)) => return Ok((dir, name)),
            Ok((name, true)) => tried.push(format!("{} is {name}", dir.display())),
            Err(e) => tried.push(format!("{e:#}")),
        }
    }
    bail!(
        "no directory on a disk for the disk worker ({})",
        tried.join("; ")
    )
}

async fn measure(
    ctx: &Ctx,
    plan: Plan,
    disk: &Target,
    mem: &Target,
) -> Result<(Vec<Round>, Vec<Round>, Plan)> {
    let (mut d, mut m) = (Vec::new(), Vec::new());
    for round in 0..plan.rounds {
        let disk_first = round % 2 == 0;
        for on_disk in [disk_first, !disk_first] {
            let (target, who) = if on_disk {
                (disk, "disk")
            } else {
                (mem, "tmpfs")
            };
            let label = format!("{who} (round {}/{})", round + 1, plan.rounds);
            let r = one_round(ctx, target, &plan, &label).await?;
            if on_disk {
                d.push(r);
            } else {
                m.push(r);
            }
        }
    }
    Ok((d, m, plan))
}

async fn one_round(ctx: &Ctx, t: &Target, plan: &Plan, label: &str) -> Result<Round> {
    let ep = &t.ep;
    let budget = Duration::from_secs(if ctx.args.quick { 10 } else { 60 });
    let written = || t.pid.and_then(|p| procfs::write_bytes(p).ok());
    let mut r = Round::default();
    let w0 = written();

    let phase = ctx.progress.phase(
        format!("{label}: 1 x {} MiB", plan.one >> 20),
        "bytes",
        budget,
    );
    let one = stream::outpost_streams(ep, 1, plan.one, phase.counter()).await?;
    drop(phase);
    r.one_mib_s = mib_s(&one);

    let phase = ctx.progress.phase(
        format!("{label}: {} x {} MiB", plan.many, plan.each >> 20),
        "bytes",
        budget,
    );
    let many = stream::outpost_streams(ep, plan.many, plan.each, phase.counter()).await?;
    drop(phase);
    r.many_mib_s = mib_s(&many);
    let out = one.bytes + many.bytes;
    r.disk_per_byte = match (w0, written()) {
        (Some(a), Some(b)) if out > 0 => Some(b.saturating_sub(a) as f64 / out as f64),
        _ => None,
    };

    let exe = ctx
        .exe
        .to_str()
        .context("the bench binary's path is not UTF-8")?;
    let cmd = latency::ticker_command(exe, plan.lines);
    let phase = ctx.progress.phase(
        format!("{label}: ticker"),
        "lines",
        Duration::from_millis(plan.lines * latency::INTERVAL_MS),
    );
    let (mut lat, run) = latency::outpost_ticker(ep, &cmd, phase.counter()).await?;
    drop(phase);
    r.lat_p50 = lat.p50();
    r.lat_p99 = lat.p99();
    if lat.len() as u64 != plan.lines {
        r.lines_short = Some(format!(
            "{label}: {} of {} lines (task {:?})",
            lat.len(),
            plan.lines,
            run.status
        ));
    }

    let phase = ctx
        .progress
        .phase(format!("{label}: tasks"), "tasks", plan.tasks_time);
    let mut b = tasks::outpost(ep, 1, plan.tasks_max, plan.tasks_time, phase.counter()).await?;
    drop(phase);
    r.tasks_s = rate(b.done as f64, b.elapsed);
    r.tasks_p99 = b.lat.p99();
    r.tasks_failed = b.failed;
    r.tasks_error = b.first_error.take();
    Ok(r)
}

fn mib_s(d: &stream::Delivered) -> Option<f64> {
    d.last_byte
        .map(|t| t.as_secs_f64())
        .filter(|s| *s > 0.0)
        .map(|s| d.bytes as f64 / MIB / s)
}

/// The median of the figures that were measured.
fn median(rounds: &[Round], pick: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = rounds.iter().filter_map(pick).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn rows(plan: &Plan, d: Vec<Round>, m: Vec<Round>, dir: &Path, fs: &str) -> Vec<Row> {
    let row = |metric: String, unit: &str, pick: &dyn Fn(&Round) -> Option<f64>| {
        Row::new("sync", metric, unit)
            .outpost(median(&d, pick))
            .baseline(median(&m, pick))
    };
    let first = row(
        format!("1 stream, {} MiB", plan.one >> 20),
        "MiB/s",
        &|r| r.one_mib_s,
    )
    .note(format!(
        "outpost: data dir on {fs} ({}); baseline: on tmpfs (/dev/shm); median of {} rounds each, the order alternating",
        dir.display(),
        plan.rounds
    ));
    let short: Vec<&String> = d
        .iter()
        .chain(m.iter())
        .filter_map(|r| r.lines_short.as_ref())
        .collect();
    let mut p99 = row(
        format!("p99 write to receipt ({} lines a round)", plan.lines),
        "ms",
        &|r| r.lat_p99,
    );
    if !short.is_empty() {
        p99 = p99.note(format!(
            "lines missing: {}",
            short
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let mut tasks_row = row("tasks back to back".into(), "tasks/s", &|r| r.tasks_s);
    let failed: u64 = d.iter().chain(m.iter()).map(|r| r.tasks_failed).sum();
    if failed > 0 {
        let why = d
            .iter()
            .chain(m.iter())
            .find_map(|r| r.tasks_error.clone())
            .unwrap_or_default();
        tasks_row = tasks_row.note(format!("{failed} tasks failed: {why}"));
    }
    vec![
        first,
        row(
            format!(
                "{} streams x {} MiB, aggregate",
                plan.many,
                plan.each >> 20
            ),
            "MiB/s",
            &|r| r.many_mib_s,
        ),
        row("p50 write to receipt".into(), "ms", &|r| r.lat_p50),
        p99,
        tasks_row,
        row("tasks back to back: p99 POST to done".into(), "ms", &|r| {
            r.tasks_p99
        }),
        Row::new("sync", "bytes to disk per output byte", "")
            .outpost(median(&d, |r| r.disk_per_byte))
            .note("write_bytes of the disk worker's /proc/<pid>/io over the stream phases, per output byte delivered (the event log's JSON framing and every re-written partial page included)"),
    ]
}
