//! `bench`: load-tests an outpost worker and prints each figure next to a baseline
//! measured in the same run (a bare hyper server, a raw PTY, a bare spawn).
//! See docs/bench.md for the scenarios, the goals, and the figures.

mod bare;
mod cli;
mod client;
mod gitserver;
mod procfs;
mod progress;
mod pty;
mod report;
mod scenarios;
mod spawner;
mod sse;
mod stats;
mod taskrun;
mod ticker;
mod worker;

use anyhow::{Context, Result};
use cli::{Args, Command};
use progress::Progress;
use scenarios::Ctx;
use serde::Serialize;
use std::path::PathBuf;
use worker::Target;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match argv.first().map(String::as_str) {
        // Helpers bench runs as child processes of itself.
        Some("__bare-server") => report_err(bare::main(&argv[1..])),
        Some("__ticker") => report_err(ticker::main(&argv[1..])),
        Some("__pty-spawn") => report_err(spawner::main(&argv[1..])),
        _ => match cli::parse(&argv) {
            Ok(Command::Help) => {
                print!("{}", cli::USAGE);
                0
            }
            Ok(Command::Bench(args)) => report_err(bench(args)),
            Err(e) => {
                eprintln!("bench: {e:#}");
                2
            }
        },
    };
    std::process::exit(code);
}

fn report_err(r: Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench: {e:#}");
            1
        }
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    machine: procfs::Machine,
    command: String,
    worker: String,
    rows: &'a [report::Row],
}

fn bench(args: Args) -> Result<()> {
    // Before anything is spawned, so the worker and the baselines inherit it.
    let want = (args.subscribers as u64)
        .saturating_mul(2)
        .saturating_add(4096);
    let nofile = procfs::raise_nofile(want).context("raising the open-file limit")?;
    if args.scenarios.iter().any(|s| s == "idle") && nofile < args.subscribers as u64 + 1024 {
        eprintln!(
            "bench: warning: open-file limit is {nofile}; {} subscribers may not all open (raise `ulimit -n`)",
            args.subscribers
        );
    }
    let exe = std::env::current_exe().context("finding the bench binary's own path")?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let (rows, worker) = rt.block_on(run(args.clone(), exe))?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if args.json {
        let out = JsonReport {
            machine: procfs::machine(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            worker,
            rows: &rows,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("encoding the JSON report")?
        );
    } else {
        let m = procfs::machine();
        println!(
            "machine: {} x {}, {} MiB, Linux {}",
            m.nproc, m.cpu, m.mem_total_mib, m.kernel
        );
        println!("worker: {worker}");
        print!("{}", report::table(&rows));
    }
    Ok(())
}

async fn run(args: Args, exe: PathBuf) -> Result<(Vec<report::Row>, String)> {
    let progress = Progress::new();
    let target = if args.spawn {
        let bin = worker::outpost_bin(args.outpost_bin.as_deref(), &exe)?;
        progress.say(&format!("starting {} serve ...", bin.display()));
        Target::spawn(&bin).await?
    } else {
        Target::attach(&args.url, args.pid).await?
    };
    let worker = format!(
        "{}{}{}",
        target.ep.base_url(),
        target
            .pid
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default(),
        if target.is_spawned() {
            ", spawned by bench"
        } else {
            ""
        }
    );
    let idle_rss_kib = target.pid.and_then(|p| procfs::rss_kib(p).ok());
    // A worker of our own, for `memory`: also its RSS once it has been left alone.
    let rest_rss_kib = match target.pid {
        Some(p) if target.is_spawned() && args.scenarios.iter().any(|s| s == "memory") => {
            scenarios::rss_at_rest(&progress, p).await.ok()
        }
        _ => None,
    };
    let ctx = Ctx {
        args,
        target,
        progress,
        exe,
        idle_rss_kib,
        rest_rss_kib,
    };
    let mut rows = Vec::new();
    let total = ctx.args.scenarios.len();
    let all = async {
        for (i, name) in ctx.args.scenarios.iter().enumerate() {
            ctx.progress.say(&format!("[{}/{total}] {name}", i + 1));
            let t = std::time::Instant::now();
            rows.extend(scenarios::run(name, &ctx).await);
            ctx.progress.say(&format!(
                "[{}/{total}] {name}: {:.1} s",
                i + 1,
                t.elapsed().as_secs_f64()
            ));
        }
    };
    // Ctrl-C: stop here, still stop a spawned worker and print what was measured.
    tokio::select! {
        _ = all => {}
        _ = tokio::signal::ctrl_c() => ctx.progress.say("interrupted: stopping"),
    }
    // Shown in the scenarios' own order, whatever order they ran in.
    rows.sort_by_key(|r| cli::SCENARIOS.iter().position(|s| *s == r.scenario));
    let mut target = ctx.target;
    // Stopping waits for the worker to exit: keep that off the runtime's threads.
    tokio::task::spawn_blocking(move || target.stop())
        .await
        .context("stopping the worker")?;
    Ok((rows, worker))
}
