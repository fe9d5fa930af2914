//! `memory`: the worker's idle RSS (before the first scenario: just started, after
//! bench's readiness `/hello`, and at rest, once left alone for [`REST`]: a quiet worker
//! hands back what its start and first requests faulted in, `memory::shed`), its RSS
//! at rest after the run, and its peak (VmHWM) over the run, from /proc; the bare hyper
//! server's idle RSS beside it for scale.

use super::{Ctx, REST};
use crate::bare::BareServer;
use crate::client::{Endpoint, Proto};
use crate::procfs;
use crate::report::{Goal, Row};
use anyhow::{Context, Result};

/// Goal (issue 15): ttyd's idle RSS, about.
const GOAL_IDLE_MIB: f64 = 3.0;

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let Some(pid) = ctx.target.pid else {
        return Ok(vec![crate::report::failed(
            "memory",
            "worker pid unknown: pass --pid or run bench on the worker's machine",
        )]);
    };
    let idle = match ctx.idle_rss_kib {
        Some(k) => k,
        None => procfs::rss_kib(pid)?,
    };
    let peak = procfs::hwm_kib(pid)?;
    let rest = super::rss_at_rest(&ctx.progress, pid).await?;
    let exe = ctx.exe.clone();
    let bare = tokio::task::spawn_blocking(move || BareServer::start(&exe, "{}"))
        .await
        .context("baseline server thread")??;
    let mut c = Endpoint::local(bare.addr).connect(Proto::H1).await?;
    c.get("/hello").await?;
    let bare_idle = procfs::rss_kib(bare.pid())?;
    drop(bare);
    let mib = |k: u64| Some(k as f64 / 1024.0);
    let mut idle_row = Row::new("memory", "idle RSS just started", "MiB")
        .outpost(mib(idle))
        .baseline(mib(bare_idle))
        .goal(Goal::AtMost(GOAL_IDLE_MIB))
        .note("baseline: the bare hyper server after one request");
    if !ctx.target.is_spawned() {
        idle_row = idle_row
            .note("--url worker: idle figure taken when bench started, not at worker start");
    }
    let mut rows = vec![idle_row];
    if let Some(k) = ctx.rest_rss_kib {
        rows.push(
            Row::new("memory", "idle RSS at rest", "MiB")
                .outpost(mib(k))
                .baseline(mib(bare_idle))
                .goal(Goal::AtMost(GOAL_IDLE_MIB))
                .note(format!(
                    "the new worker left alone {:.1} s before the first scenario",
                    REST.as_secs_f64()
                )),
        );
    }
    rows.extend([
        Row::new("memory", "RSS at rest after the run", "MiB")
            .outpost(mib(rest))
            .baseline(mib(bare_idle))
            .goal(Goal::AtMost(GOAL_IDLE_MIB))
            .note(format!(
                "read after {:.1} s left alone (no request, no task started or ended)",
                REST.as_secs_f64()
            )),
        Row::new("memory", "peak RSS (VmHWM) over the run", "MiB").outpost(mib(peak)),
    ]);
    Ok(rows)
}
