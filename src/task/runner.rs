//! The runner: drives one task from `queued` to its `done` event. Prepare the working
//! directory (a git worktree or a scratch dir), run the agent in a PTY with its output
//! appended to the event log, stop it on cancel / timeout / shutdown / memory, then
//! commit and push, and end the task with what happened.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::model::Status;
use super::workspace::{self, Workspace};
use super::{Registry, StopReason, Task};
use crate::agent::utf8::{Piece, Utf8Splitter};
use crate::agent::{Agent, AgentSpec, OutputSink};
use crate::supervise::reaper::Exit;

/// How long output may still arrive after the agent's leader exited.
const OUTPUT_LINGER: Duration = Duration::from_secs(2);

/// How a task ended.
pub struct Outcome {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub commit: Option<String>,
    pub error: Option<String>,
}

impl Outcome {
    fn failed(error: impl Into<String>) -> Self {
        Outcome {
            status: Status::Failed,
            exit_code: None,
            commit: None,
            error: Some(error.into()),
        }
    }
}

/// Starts the task on the runtime; it releases its registry slot when it ends.
pub fn spawn(reg: Arc<Registry>, task: Arc<Task>) {
    tokio::spawn(async move {
        let out = drive(&reg, &task).await;
        let _span = tracing::info_span!("task", task_id = %task.id()).entered();
        match &out.error {
            Some(e) => tracing::info!(status = out.status.as_str(), "task ended: {e}"),
            None => tracing::info!(status = out.status.as_str(), "task ended"),
        }
        if let Err(e) = task.finish(out.status, out.exit_code, out.commit, out.error) {
            tracing::error!(task_id = %task.id(), "could not write the end of the task's log: {e}");
        }
        reg.release(&task);
    });
}

async fn drive(reg: &Arc<Registry>, task: &Arc<Task>) -> Outcome {
    let cfg = reg.cfg.clone();
    let ws = match workspace::prepare(&cfg, task).await {
        Ok(ws) => ws,
        Err(e) => {
            let reason = task.stop_reason();
            return match reason {
                Some(r) => stopped_outcome(r, None, None, &cfg, task),
                None => Outcome::failed(format!("{e:#}")),
            };
        }
    };
    if let Some(r) = task.stop_reason() {
        workspace::cleanup(&cfg, &ws).await;
        return stopped_outcome(r, None, None, &cfg, task);
    }
    if let Err(e) = task.set_status(Status::Working) {
        return Outcome::failed(format!("writing the event log: {e}"));
    }
    let spec = match agent_spec(&cfg, task, &ws) {
        Ok(s) => s,
        Err(e) => return Outcome::failed(format!("{e:#}")),
    };
    let sink = output_sink(task.clone());
    let spawned = tokio::task::spawn_blocking(move || Agent::spawn(spec, sink)).await;
    let mut agent = match spawned {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Outcome::failed(format!("{e:#}")),
        Err(e) => return Outcome::failed(format!("starting the agent: {e}")),
    };
    task.set_agent(Some(agent.handle()));
    tracing::info!(task_id = %task.id(), pid = agent.pid(), "agent started");

    let (exit, checkpoint) = supervise_agent(&mut agent, task, &cfg, &ws).await;
    if let Err(e) = agent.finish_output(OUTPUT_LINGER).await {
        tracing::warn!(task_id = %task.id(), "reading the agent's last output: {e}");
    }
    task.set_agent(None);

    let outcome = match task.stop_reason() {
        Some(reason) => stopped_outcome(reason, Some(exit), checkpoint, &cfg, task),
        None => finish_normally(task, &cfg, &ws, exit).await,
    };
    workspace::cleanup(&cfg, &ws).await;
    outcome
}

/// Waits for the agent, or stops it when asked (cancel, timeout, shutdown, memory).
/// On shutdown the work in progress is checkpointed while the agent is stopping.
async fn supervise_agent(
    agent: &mut Agent,
    task: &Arc<Task>,
    cfg: &crate::config::Config,
    ws: &Workspace,
) -> (Exit, Option<String>) {
    let mut stop = task.stop_watch();
    let timeout = task
        .meta
        .request
        .timeout_s
        .map(Duration::from_secs)
        .unwrap_or(Duration::MAX);
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    let timer = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        exit = agent.wait() => return (exit, None),
        _ = stop.wait_for(|r| r.is_some()) => {}
        _ = timer => { task.request_stop(StopReason::Timeout); }
    }
    let reason = task.stop_reason();
    tracing::info!(task_id = %task.id(), reason = ?reason, "stopping the agent's process group");
    agent.signal_group(Signal::SIGTERM);
    let grace = tokio::time::sleep(cfg.grace);
    tokio::pin!(grace);
    let mut checkpoint = None;
    if reason == Some(StopReason::Shutdown) && ws.is_git() {
        // Give the agent a moment to save, then checkpoint while the grace runs.
        let early = tokio::time::sleep(cfg.grace.min(Duration::from_secs(1)));
        tokio::select! {
            exit = agent.wait() => {
                let c = workspace::checkpoint(cfg, ws, task).await;
                return (exit, c);
            }
            _ = early => {}
        }
        checkpoint = workspace::checkpoint(cfg, ws, task).await;
    }
    let exit = tokio::select! {
        exit = agent.wait() => exit,
        _ = &mut grace => {
            agent.signal_group(Signal::SIGKILL);
            agent.wait().await
        }
    };
    (exit, checkpoint)
}

async fn finish_normally(
    task: &Arc<Task>,
    cfg: &crate::config::Config,
    ws: &Workspace,
    exit: Exit,
) -> Outcome {
    // A SIGKILL (or a shell reporting one as 137) while the memory cgroup OOM-killed.
    let killed = matches!(exit, Exit::Signal(9) | Exit::Code(137));
    let error = match exit {
        Exit::Code(0) => None,
        _ if killed && crate::supervise::memwatch::watch().oom_suspected() => Some(
            "the agent was killed by the kernel's OOM killer: memory was at its limit (raise the memory limit or OUTPOST_SWAP)".to_string(),
        ),
        Exit::Code(c) => Some(format!("the agent exited with code {c}")),
        Exit::Signal(s) => Some(format!("the agent was killed by signal {s}")),
    };
    let status = if error.is_none() {
        Status::Done
    } else {
        Status::Failed
    };
    let mut out = Outcome {
        status,
        exit_code: Some(exit.code()),
        commit: None,
        error,
    };
    if ws.is_git() && (exit.success() || cfg.push_on_failure) {
        task.set_status(Status::Pushing).ok();
        match workspace::finish(cfg, ws, task).await {
            Ok(commit) => out.commit = commit,
            Err(e) => {
                out.status = Status::Failed;
                out.error = Some(match out.error {
                    Some(prev) => format!("{prev}; then pushing failed: {e:#}"),
                    None => format!("{e:#}"),
                });
            }
        }
    }
    out
}

fn stopped_outcome(
    reason: StopReason,
    exit: Option<Exit>,
    checkpoint: Option<String>,
    cfg: &crate::config::Config,
    task: &Task,
) -> Outcome {
    let exit_code = exit.map(Exit::code);
    let (status, error) = match reason {
        StopReason::Cancel => (Status::Cancelled, "cancelled by DELETE /work/<id>".to_string()),
        StopReason::Timeout => (
            Status::Failed,
            format!("timed out after {} s (timeout_s); the agent was stopped", task.meta.request.timeout_s.unwrap_or(0)),
        ),
        StopReason::Shutdown => (
            Status::Interrupted,
            match &checkpoint {
                Some(c) => format!("the worker shut down; work in progress was pushed as checkpoint {c}"),
                None => "the worker shut down while this task was running".to_string(),
            },
        ),
        StopReason::Memory => (
            Status::Failed,
            format!(
                "stopped by outpost: memory was critical and this agent used the most (grace {} s, then SIGKILL)",
                cfg.grace.as_secs()
            ),
        ),
    };
    Outcome {
        status,
        exit_code,
        commit: checkpoint,
        error: Some(error),
    }
}

fn agent_spec(
    cfg: &crate::config::Config,
    task: &Task,
    ws: &Workspace,
) -> anyhow::Result<AgentSpec> {
    let req = &task.meta.request;
    let prompt = req
        .prompt
        .clone()
        .unwrap_or_else(|| format!("Work on issue {}", req.issue_id.as_deref().unwrap_or("")));
    let mut env = vec![("OUTPOST_TASK_ID".to_string(), task.id().to_string())];
    if let Some(issue) = &req.issue_id {
        env.push(("OUTPOST_ISSUE_ID".into(), issue.clone()));
    }
    if let Some(ctx) = &req.context {
        let path: PathBuf = task.dir().join("context.json");
        super::write_json_atomic(&path, ctx)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        env.push(("OUTPOST_CONTEXT".into(), path.display().to_string()));
    }
    if let Some(beads) = ws.beads_dir() {
        env.push(("BEADS_DIR".into(), beads.display().to_string()));
    }
    Ok(AgentSpec {
        argv: cfg.agent.argv(&prompt),
        cwd: ws.path().to_path_buf(),
        env,
        cols: 120,
        rows: 40,
    })
}

/// The sink the PTY pump writes into: split into text / bytes and append to the log.
fn output_sink(task: Arc<Task>) -> OutputSink {
    let mut splitter = Utf8Splitter::new();
    let mut failed = false;
    Box::new(move |bytes: &[u8]| {
        let mut append = |p: Piece<'_>| {
            let r = match p {
                Piece::Text(t) => task.log.append_output_text(t),
                Piece::Bytes(b) => task.log.append_output_bytes(b),
            };
            if let Err(e) = r {
                if !failed {
                    failed = true;
                    tracing::error!(task_id = %task.id(), "output could not be written to the event log: {e}");
                }
            }
        };
        if bytes.is_empty() {
            splitter.finish(&mut append);
        } else {
            splitter.push(bytes, &mut append);
        }
    })
}
