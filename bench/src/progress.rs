//! The progress indicator on stderr: one live line per phase on a terminal, a start and
//! an end line per phase otherwise (CI logs), silent when asked.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Hands out phases; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    tty: bool,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// A heading between phases (the scenario being started).
    pub fn say(&self, msg: &str) {
        eprintln!("{msg}");
    }

    /// Starts a phase: `label`, a count with its `unit`, and its time budget.
    pub fn phase(&self, label: impl Into<String>, unit: &'static str, budget: Duration) -> Phase {
        let label = label.into();
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let ticker = if self.tty {
            let (label, count, stop) = (label.clone(), count.clone(), stop.clone());
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let line =
                            render(&label, count.load(Ordering::Relaxed), unit, started, budget);
                        let mut err = std::io::stderr().lock();
                        let _ = write!(err, "\r\x1b[2K{line}");
                        let _ = err.flush();
                        drop(err);
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
                .ok()
        } else {
            eprintln!("  {label} ...");
            None
        };
        Phase {
            label,
            unit,
            count,
            stop,
            started,
            ticker,
            tty: self.tty,
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

fn render(label: &str, count: u64, unit: &str, started: Instant, budget: Duration) -> String {
    let t = started.elapsed().as_secs_f64();
    let b = budget.as_secs_f64();
    let width = 20usize;
    let filled = if b > 0.0 {
        ((t / b).min(1.0) * width as f64) as usize
    } else {
        0
    };
    format!(
        "  [{}{}] {t:5.1}s/{b:.1}s  {label}: {count} {unit}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    )
}

/// One running phase; its counter is shared with the workers that advance it.
pub struct Phase {
    label: String,
    unit: &'static str,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    started: Instant,
    ticker: Option<JoinHandle<()>>,
    tty: bool,
}

impl Phase {
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        let secs = self.started.elapsed().as_secs_f64();
        let n = self.count.load(Ordering::Relaxed);
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        if self.unit.is_empty() {
            eprintln!("  {}: done in {secs:.1}s", self.label);
        } else {
            eprintln!("  {}: {n} {} in {secs:.1}s", self.label, self.unit);
        }
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.end();
    }
}
