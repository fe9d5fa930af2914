//! Supervision: PID-1 and subreaper duty, the signal plan, graceful drain, and idle
//! shutdown. The reaper owns the process table; the memory watch owns pressure.
//!
//! Signal plan: SIGTERM or SIGINT starts a drain (no new work, agents get SIGTERM, work
//! in progress is checkpointed, SIGKILL after `OUTPOST_GRACE_S`, tasks end
//! `interrupted`, open streams get their `done`, exit 0). A second one during the drain
//! kills every agent group at once. SIGHUP is forwarded to every agent's process group.

mod latest;
pub mod memwatch;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use crate::task::Registry;

/// Makes orphans come back to this process: as PID 1 they do anyway; otherwise set
/// PR_SET_CHILD_SUBREAPER. Returns a word for the log.
pub fn adopt_orphans() -> &'static str {
    if std::process::id() == 1 {
        return "pid 1";
    }
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r == 0 {
        "child subreaper"
    } else {
        "plain process (PR_SET_CHILD_SUBREAPER refused)"
    }
}

/// Waits for SIGTERM or SIGINT, forwarding SIGHUP to agents meanwhile.
pub async fn wait_for_stop(reg: Arc<Registry>) -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = hup.recv() => {
                for t in reg.live() {
                    if let Some(a) = t.agent() {
                        a.signal_group(Signal::SIGHUP);
                    }
                }
            }
        }
    }
}

/// During a drain: a second SIGTERM/SIGINT kills every agent group now.
pub fn spawn_second_signal_killer(reg: Arc<Registry>) {
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second stop signal: killing every agent now");
        for t in reg.live() {
            if let Some(a) = t.agent() {
                a.signal_group(Signal::SIGKILL);
            }
        }
    });
}

/// After `after` with no live task, runs `command` (default `poweroff`) once.
pub fn spawn_idle_shutdown(reg: Arc<Registry>, after: Duration, command: String) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5).min(after));
        loop {
            tick.tick().await;
            if reg.idle_for().is_some_and(|d| d >= after) && !reg.is_draining() {
                tracing::warn!(command = %command, "idle for {} s: running the idle shutdown command", after.as_secs());
                let spawned = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .spawn();
                match spawned {
                    Ok(child) => {
                        let exit = crate::process::reaper::reaper()
                            .watch(child.id() as i32)
                            .await;
                        let exit = exit.map(|r| r.exit);
                        tracing::info!(?exit, "idle shutdown command finished");
                    }
                    Err(e) => tracing::error!("idle shutdown command could not start: {e}"),
                }
                return;
            }
        }
    });
}
