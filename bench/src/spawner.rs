//! The `tasks` baseline's process: `bench __pty-spawn LANES MAX MILLIS COMMAND` runs
//! COMMAND in a fresh PTY over and over on LANES threads (at most MAX runs, for at most
//! MILLIS), printing `+` per run done and then one JSON summary line.
//!
//! It runs as a child of bench, not inside it, so that the baseline is the same in
//! every run: spawning forks the spawning process, and forking bench after the `idle`
//! scenario (10,000 connections' worth of memory) once cost it two thirds of its rate,
//! which flattered outpost.

use crate::pty;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the helper reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub done: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub elapsed_ns: u64,
    /// Spawn to exit collected, per successful run.
    pub lat_ns: Vec<u64>,
}

const USAGE: &str = "usage: bench __pty-spawn LANES MAX MILLIS COMMAND";

pub fn main(args: &[String]) -> Result<()> {
    let num = |i: usize| -> Result<u64> { args.get(i).and_then(|s| s.parse().ok()).context(USAGE) };
    let (lanes, max, millis) = (num(0)?.max(1), num(1)?, num(2)?);
    let command = args.get(3).context(USAGE)?.clone();
    let issued = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(Summary::default()));
    let start = Instant::now();
    let deadline = start + Duration::from_millis(millis);
    let threads: Vec<_> = (0..lanes)
        .map(|_| {
            let (issued, out, command) = (issued.clone(), out.clone(), command.clone());
            std::thread::spawn(move || {
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                    let t = Instant::now();
                    let r = pty::run(&command, |_| {});
                    let mut s = out.lock().unwrap_or_else(|e| e.into_inner());
                    match r {
                        Ok(r) if r.success => {
                            s.done += 1;
                            s.lat_ns
                                .push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                            drop(s);
                            let mut o = std::io::stdout().lock();
                            let _ = o.write_all(b"+\n").and_then(|_| o.flush());
                        }
                        Ok(_) => s.failed += 1,
                        Err(e) => {
                            s.failed += 1;
                            s.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        if t.join().is_err() {
            bail!("a spawning thread panicked");
        }
    }
    let mut s = out.lock().unwrap_or_else(|e| e.into_inner());
    s.elapsed_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    println!(
        "{}",
        serde_json::to_string(&*s).context("encoding the summary")?
    );
    Ok(())
}

/// Runs the helper (`exe` is bench itself) and waits for its summary; `counter` counts
/// the runs as they finish.
pub async fn run(
    exe: &std::path::Path,
    lanes: usize,
    max: u64,
    time: Duration,
    command: &str,
    counter: Arc<AtomicU64>,
) -> Result<Summary> {
    let exe = exe.to_path_buf();
    let args = [
        "__pty-spawn".to_string(),
        lanes.to_string(),
        max.to_string(),
        time.as_millis().to_string(),
        command.to_string(),
    ];
    // Reading its output line by line is blocking work.
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(&exe)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} __pty-spawn", exe.display()))?;
        let stdout = child.stdout.take().context("the helper has no stdout")?;
        let mut summary = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.context("reading the helper's output")?;
            if line == "+" {
                counter.fetch_add(1, Ordering::Relaxed);
            } else if let Ok(s) = serde_json::from_str::<Summary>(&line) {
                summary = Some(s);
            }
        }
        let status = child.wait().context("waiting for the helper")?;
        match summary {
            Some(s) if status.success() => Ok(s),
            _ => bail!("the PTY spawn helper failed ({status})"),
        }
    })
    .await
    .context("the helper's reader")?
}
