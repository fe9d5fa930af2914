//! The scenarios: what each measures against its baseline, and the shared context.

mod clone;
mod hello;
mod idle;
mod latency;
mod memory;
mod peers;
mod scale;
mod stream;
mod sync;
mod tasks;

use crate::cli::Args;
use crate::progress::Progress;
use crate::report::{self, Row};
use crate::worker::Target;
use std::path::PathBuf;
use std::time::Duration;

/// What every scenario gets.
pub struct Ctx {
    pub args: Args,
    pub target: Target,
    pub progress: Progress,
    /// This binary (the baseline server and the ticker agent run from it).
    pub exe: PathBuf,
    /// Worker RSS in KiB measured before the first scenario.
    pub idle_rss_kib: Option<u64>,
    /// A spawned worker's RSS in KiB after [`REST`] alone, before the first scenario
    /// (only when `memory` runs).
    pub rest_rss_kib: Option<u64>,
}

/// How long a worker is left alone before its RSS at rest is read: its quiet spell
/// (5 s, `supervise::memwatch::QUIET_SHED`), plus a tick of its memory watch.
pub const REST: Duration = Duration::from_millis(6_500);

/// Leaves the worker `pid` alone for [`REST`] (saying so), then reads its RSS in KiB.
pub async fn rss_at_rest(progress: &Progress, pid: u32) -> anyhow::Result<u64> {
    progress.say(&format!(
        "  leaving the worker alone {:.1} s for its RSS at rest",
        REST.as_secs_f64()
    ));
    tokio::time::sleep(REST).await;
    crate::procfs::rss_kib(pid)
}

impl Ctx {
    /// Upper bound on one scenario's wall time.
    fn budget(&self, name: &str) -> Duration {
        let d = self.args.duration.as_secs_f64();
        let secs = match (name, self.args.quick) {
            ("hello", _) => 12.0 * (d + 0.5) + 30.0,
            ("stream", true) => 60.0,
            ("stream", false) => 300.0,
            ("latency", true) => 30.0,
            ("latency", false) => 60.0,
            ("tasks", _) => 4.0 * d + 60.0,
            ("idle", true) => 60.0,
            ("idle", false) => 180.0,
            ("sync", true) => 60.0,
            ("sync", false) => 24.0 * d + 240.0,
            ("scale", _) => 180.0,
            ("peers", _) => 3600.0, // installs, then four servers one after another
            _ => 60.0,
        };
        Duration::from_secs_f64(secs)
    }
}

/// Runs one scenario within its time budget; failures become rows that say why.
pub async fn run(name: &str, ctx: &Ctx) -> Vec<Row> {
    let budget = ctx.budget(name);
    let fut = async {
        match name {
            "hello" => hello::run(ctx).await,
            "stream" => stream::run(ctx).await,
            "latency" => latency::run(ctx).await,
            "tasks" => tasks::run(ctx).await,
            "idle" => idle::run(ctx).await,
            "clone" => clone::run(ctx).await,
            "memory" => memory::run(ctx).await,
            "sync" => sync::run(ctx).await,
            "scale" => scale::run(ctx).await,
            "peers" => peers::run(ctx).await,
            other => Err(anyhow::anyhow!("unknown scenario {other:?}")),
        }
    };
    match tokio::time::timeout(budget, fut).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => vec![report::failed(name, &format!("error: {e:#}"))],
        Err(_) => vec![report::failed(
            name,
            &format!("did not finish within its {} s budget", budget.as_secs()),
        )],
    }
}

/// Single-quotes `s` for `sh -c`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
