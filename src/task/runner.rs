//! The runner: drives one task from `queued` to its `done` event. Prepare the working
//! directory (a git worktree or a scratch dir), run the agent in a PTY with its output
//! appended to the event log, stop it on cancel / timeout / shutdown / memory, then
//! commit and push, and end the task with what happened.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::launch::{agent_spec, session_of};
use super::model::{Ending, Resources, Status};
use super::session::Outcome;
use super::workspace::{self, Workspace};
use super::{Registry, StopReason, Task};
use crate::agent::run::RunWatch;
use crate::agent::structured::{ErrorCode, RunResult};
use crate::agent::utf8::{Piece, Utf8Splitter};
use crate::agent::{Agent, OutputSink};
use crate::process::reaper::{Exit, Reaped};
use crate::process::Jail;

/// How long output may still arrive after the agent's leader exited.
const OUTPUT_LINGER: Duration = Duration::from_secs(2);

/// How long an agent may keep running after it reported the end of its run (opencode
/// may never exit) before the worker stops it.
const AFTER_RESULT_GRACE: Duration = Duration::from_secs(5);

/// How often (in output bytes) the sink looks at the data dir's free space.
const DISK_CHECK_EVERY: u64 = 16 << 20;

/// Starts the task on the runtime; it releases its registry slot when it ends.
pub fn spawn(reg: Arc<Registry>, task: Arc<Task>) {
    tokio::spawn(async move {
        let end = drive(&reg, &task).await;
        // On a blocking thread: the end's sync, task.json, the session record and the
        // slot's release are disk work that must not stall the runtime's other
        // connections (a sync can take tens of ms), and the log's followers, woken from
        // there, are served by the runtime while task.json is still being written.
        let t = task.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || conclude(&reg, &t, end)).await {
            tracing::error!(task_id = %task.id(), "ending the task failed: {e}");
        }
    });
}

/// Writes the task's end (its cost, its session record, the final events) and releases
/// its registry slot.
fn conclude(reg: &Registry, task: &Task, mut end: Ending) {
    let _span = tracing::info_span!("task", task_id = %task.id()).entered();
    let resources = end.resources.get_or_insert_with(Resources::default);
    resources.wall_seconds =
        crate::timefmt::now_unix_ms().saturating_sub(task.meta.created_unix_ms) as f64 / 1e3;
    let model_usd = end.agent.as_ref().map(|a| a.cost_usd);
    let cost = reg.instance.cost(resources, model_usd);
    reg.totals.add(resources, &cost);
    end.cost = Some(cost);
    if let Some(c) = task.session() {
        let session = end.agent.as_ref().and_then(|a| a.session_id.as_deref());
        c.finish(outcome(end.status()), end.commit.as_deref(), session);
    }
    match &end.error {
        Some(e) => tracing::info!(status = end.status().as_str(), "task ended: {e}"),
        None => tracing::info!(status = end.status().as_str(), "task ended"),
    }
    if let Err(e) = task.finish(end) {
        tracing::error!(task_id = %task.id(), "could not write the end of the task's log: {e}");
    }
    reg.release(task);
}

/// How the session record says a task ended.
fn outcome(status: Status) -> Outcome {
    match status {
        Status::Done => Outcome::Done,
        Status::Cancelled => Outcome::Cancelled,
        Status::Interrupted => Outcome::Interrupted,
        _ => Outcome::Failed,
    }
}

async fn drive(reg: &Arc<Registry>, task: &Arc<Task>) -> Ending {
    let cfg = reg.cfg.clone();
    let owner = reg.containment.agent_user(task.slot());
    let ws = match workspace::prepare(&cfg, task, owner).await {
        Ok(ws) => ws,
        Err(e) => {
            return match task.stop_reason() {
                Some(r) => stopped(r, None, None, &cfg, task),
                None => Ending::failed("prepare_failed", format!("{e:#}")),
            };
        }
    };
    let end = run_in_workspace(reg, task, &ws).await;
    workspace::cleanup(&cfg, &ws, task).await;
    end
}

async fn run_in_workspace(reg: &Arc<Registry>, task: &Arc<Task>, ws: &Workspace) -> Ending {
    let cfg = reg.cfg.clone();
    if let Some(r) = task.stop_reason() {
        return stopped(r, None, None, &cfg, task);
    }
    if let Err(e) = task.set_status(Status::Working) {
        return Ending::failed("log_failed", format!("writing the event log: {e}"));
    }
    let (reg2, task2) = (reg.clone(), task.clone());
    let paths = ws.agent_paths();
    let started = tokio::task::spawn_blocking(move || start_agent(&reg2, &task2, &paths)).await;
    let (jail, mut agent, structured) = match started {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => return Ending::failed("agent_start", format!("{e:#}")),
        Err(e) => return Ending::failed("agent_start", format!("starting the agent: {e}")),
    };
    task.set_agent(Some(agent.handle()));
    task.set_jail(Some(jail.clone()));
    tracing::info!(task_id = %task.id(), pid = agent.pid(), uid = jail.uid(), "agent started");

    let ended = structured.as_ref().map(|s| s.finished.clone());
    let (reaped, checkpoint, after_result) =
        supervise_agent(&mut agent, &jail, task, &cfg, ws, ended).await;
    // The task is over for every process in it, whatever it started.
    kill_all(&jail).await;
    if let Err(e) = agent.finish_output(OUTPUT_LINGER).await {
        tracing::warn!(task_id = %task.id(), "reading the agent's last output: {e}");
    }
    task.set_agent(None);
    task.set_jail(None);
    let (cpu_us, memory_peak) = jail.usage(Some(&reaped));
    let oom = jail.oom_killed();
    let j = jail.clone();
    let _ = tokio::task::spawn_blocking(move || j.release()).await;

    let result = structured.as_ref().and_then(|s| s.lock().result().cloned());
    let mut end = match task.stop_reason() {
        Some(reason) => stopped(reason, Some(reaped.exit), checkpoint, &cfg, task),
        None => {
            let verdict = Verdict {
                exit: reaped.exit,
                oom_in_task: oom,
                result,
                after_result,
            };
            finish_normally(task, &cfg, ws, verdict).await
        }
    };
    end.agent = structured.as_ref().map(|s| s.lock().report());
    end.resources = Some(Resources {
        cpu_seconds: cpu_us as f64 / 1e6,
        memory_peak_bytes: memory_peak,
        wall_seconds: 0.0,
    });
    end
}

/// The structured side of a running agent: its parser's state, shared with the output
/// sink, and a flag the sink raises when the agent reported the end of its run.
struct Structured {
    watch: Arc<Mutex<RunWatch>>,
    finished: watch::Receiver<bool>,
}

impl Structured {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunWatch> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The output sink's end of [`Structured`].
type StructuredFeed = (Arc<Mutex<RunWatch>>, watch::Sender<bool>);

/// On a blocking thread: the task's containment, its directories handed to the agent
/// user, and the agent started inside it (with the structured side of its output, for
/// a profile that has one).
fn start_agent(
    reg: &Registry,
    task: &Arc<Task>,
    paths: &workspace::AgentPaths,
) -> anyhow::Result<(Arc<Jail>, Agent, Option<Structured>)> {
    use anyhow::Context;
    let cfg = &reg.cfg;
    let mut jail = reg
        .containment
        .enter(task.id(), task.slot())
        .context("setting up the task's containment")?;
    let owner = jail.plan().user;
    let dirs = workspace::hand_over(cfg, task, paths, owner)?;
    let profile = cfg.agent_profile.clone();
    let session = match session_of(task, &profile, owner) {
        Ok(s) => s,
        Err(e) => {
            jail.release();
            return Err(e);
        }
    };
    let budget = task.meta.request.max_cost_usd.or(cfg.max_cost_usd);
    // Agents that refuse root get their exemption only where they do run as root.
    let as_root = owner.is_none_or(|(uid, _)| uid == 0) && nix::unistd::geteuid().is_root();
    let mut spec = match agent_spec(task, paths, &dirs, &profile, budget, as_root, session) {
        Ok(s) => s,
        Err(e) => {
            jail.release();
            return Err(e);
        }
    };
    spec.plan = jail.plan().clone();
    let (structured, feed) = match RunWatch::new(&profile, budget) {
        Some(w) => {
            let w = Arc::new(Mutex::new(w));
            let (tx, rx) = watch::channel(false);
            let s = Structured {
                watch: w.clone(),
                finished: rx,
            };
            (Some(s), Some((w, tx)))
        }
        None => (None, None),
    };
    let sink = output_sink(task.clone(), cfg, feed);
    let agent = match Agent::spawn(spec, sink) {
        Ok(a) => a,
        Err(e) => {
            jail.release();
            return Err(e);
        }
    };
    jail.set_leader(agent.pid());
    Ok((Arc::new(jail), agent, structured))
}

async fn kill_all(jail: &Arc<Jail>) {
    let j = jail.clone();
    if let Ok(false) = tokio::task::spawn_blocking(move || j.kill_all()).await {
        tracing::warn!(
            uid = jail.uid(),
            "processes of the task are still alive after killing them all"
        );
    }
}

/// Waits for the agent, or stops it when asked (cancel, timeout, shutdown, memory,
/// output, disk, budget) or when it reported the end of its run (`ended`) and has not
/// exited [`AFTER_RESULT_GRACE`] later. On shutdown the work in progress is
/// checkpointed while the agent is stopping. Returns how it ended, the checkpoint, and
/// whether the worker stopped it after its result.
async fn supervise_agent(
    agent: &mut Agent,
    jail: &Arc<Jail>,
    task: &Arc<Task>,
    cfg: &crate::config::Config,
    ws: &Workspace,
    ended: Option<watch::Receiver<bool>>,
) -> (Reaped, Option<String>, bool) {
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
    let lingering = async {
        if let Some(mut e) = ended {
            if e.wait_for(|done| *done).await.is_ok() {
                return tokio::time::sleep(AFTER_RESULT_GRACE).await;
            }
        }
        // No structured output, or the output ended: the agent exits by itself.
        std::future::pending().await
    };
    let mut after_result = false;
    tokio::select! {
        r = agent.wait() => return (r, None, false),
        _ = task.stop_requested() => {}
        _ = timer => { task.request_stop(StopReason::Timeout); }
        _ = lingering => { after_result = true; }
    }
    if after_result && task.stop_reason().is_none() {
        tracing::info!(task_id = %task.id(), "the agent reported the end of its run but did not exit: stopping it");
        kill_all(jail).await;
        return (agent.wait().await, None, true);
    }
    let reason = task.stop_reason();
    tracing::info!(task_id = %task.id(), reason = ?reason, "stopping the agent");
    if matches!(
        reason,
        Some(StopReason::Memory | StopReason::OutputLimit | StopReason::DiskFull)
    ) {
        // No grace: memory or disk is running out now.
        kill_all(jail).await;
        return (agent.wait().await, None, false);
    }
    agent.signal_group(Signal::SIGTERM);
    let grace = tokio::time::sleep(cfg.grace);
    tokio::pin!(grace);
    let mut checkpoint = None;
    if reason == Some(StopReason::Shutdown) && ws.is_git() {
        // Give the agent a moment to save, then checkpoint while the grace runs.
        let early = tokio::time::sleep(cfg.grace.min(Duration::from_secs(1)));
        tokio::select! {
            r = agent.wait() => {
                kill_all(jail).await;
                let c = workspace::checkpoint(cfg, ws, task).await;
                return (r, c, false);
            }
            _ = early => {}
        }
        checkpoint = workspace::checkpoint(cfg, ws, task).await;
    }
    if let (Some(c), Some(claim)) = (&checkpoint, task.session()) {
        claim.note_commit(c);
    }
    let r = tokio::select! {
        r = agent.wait() => r,
        _ = &mut grace => {
            kill_all(jail).await;
            agent.wait().await
        }
    };
    (r, checkpoint, false)
}

/// What decides how an agent that was not stopped from outside ended.
struct Verdict {
    exit: Exit,
    /// The task's memory cgroup OOM-killed a process.
    oom_in_task: bool,
    /// The end of the run as the agent reported it (structured output only).
    result: Option<RunResult>,
    /// The worker stopped the agent a grace after its result.
    after_result: bool,
}

async fn finish_normally(
    task: &Arc<Task>,
    cfg: &crate::config::Config,
    ws: &Workspace,
    v: Verdict,
) -> Ending {
    let (exit, oom_in_task) = (v.exit, v.oom_in_task);
    // Killed by the worker after the end of the run: the run is what the result says.
    let judged = match &v.result {
        Some(_) if v.after_result => Exit::Code(0),
        _ => exit,
    };
    // A SIGKILL (or a shell reporting one as 137) while the memory cgroup OOM-killed.
    let killed = matches!(judged, Exit::Signal(9) | Exit::Code(137));
    let (mut code, mut error) = match judged {
        Exit::Code(0) => (None, None),
        _ if killed && (oom_in_task || crate::supervise::memwatch::watch().oom_suspected()) => (
            Some("out_of_memory"),
            Some(format!(
                "the agent ran out of memory: the kernel's OOM killer stopped it at the task's limit{} (raise OUTPOST_TASK_MEMORY, or add OUTPOST_SWAP)",
                cfg.limits
                    .memory
                    .map(|m| format!(" of {}", crate::memory::format_size(m)))
                    .unwrap_or_default()
            )),
        ),
        Exit::Code(c) => (Some("agent_exit"), Some(format!("the agent exited with code {c}"))),
        Exit::Signal(s) => (
            Some("agent_signal"),
            Some(format!("the agent was killed by signal {s}")),
        ),
    };
    // A failure the agent reported names its reason better than its exit.
    if let Some(r) = v.result.as_ref().filter(|r| r.is_error) {
        if matches!(code, None | Some("agent_exit" | "agent_signal")) {
            let c = r.error.unwrap_or(ErrorCode::AgentError).as_str();
            code = Some(c);
            error = Some(format!("the agent reported a failure ({c}): {}", r.text));
        }
    }
    let mut out = Ending {
        status: Some(if error.is_none() {
            Status::Done
        } else {
            Status::Failed
        }),
        exit_code: Some(exit.code()),
        error,
        error_code: code,
        ..Ending::default()
    };
    if ws.is_git() && (out.error.is_none() || cfg.push_on_failure) {
        task.set_status(Status::Pushing).ok();
        match workspace::finish(cfg, ws, task).await {
            Ok(commit) => out.commit = commit,
            Err(e) => {
                out.status = Some(Status::Failed);
                out.error_code = out.error_code.or(Some("push_failed"));
                out.error = Some(match out.error {
                    Some(prev) => format!("{prev}; then pushing failed: {e:#}"),
                    None => format!("{e:#}"),
                });
            }
        }
    }
    out
}

fn stopped(
    reason: StopReason,
    exit: Option<Exit>,
    checkpoint: Option<String>,
    cfg: &crate::config::Config,
    task: &Task,
) -> Ending {
    let (status, code, error) = match reason {
        StopReason::Cancel => (
            Status::Cancelled,
            "cancelled",
            "cancelled by DELETE /work/<id>".to_string(),
        ),
        StopReason::Timeout => (
            Status::Failed,
            "timeout",
            format!(
                "timed out after {} s (timeout_s); the agent was stopped",
                task.meta.request.timeout_s.unwrap_or(0)
            ),
        ),
        StopReason::Shutdown => (
            Status::Interrupted,
            "interrupted",
            match &checkpoint {
                Some(c) => format!("the worker shut down; work in progress was pushed as checkpoint {c}"),
                None => "the worker shut down while this task was running".to_string(),
            },
        ),
        StopReason::Memory => (
            Status::Failed,
            "memory_critical",
            "stopped by outpost: memory was critical and this task used the most (every process of it was killed)".to_string(),
        ),
        StopReason::OutputLimit => (
            Status::Failed,
            "output_limit",
            format!(
                "stopped by outpost: the agent wrote more than OUTPOST_TASK_MAX_OUTPUT ({}) of output",
                crate::memory::format_size(cfg.limits.max_output)
            ),
        ),
        StopReason::BudgetExceeded => (
            Status::Failed,
            "budget_exceeded",
            format!(
                "stopped by outpost: the agent spent more than its budget of ${} (max_cost_usd, else OUTPOST_MAX_COST_USD)",
                task.meta.request.max_cost_usd.or(cfg.max_cost_usd).unwrap_or(0.0)
            ),
        ),
        StopReason::DiskFull => (
            Status::Failed,
            "disk_full",
            format!(
                "stopped by outpost: the data dir has less than half of OUTPOST_MIN_FREE_DISK ({}) free",
                crate::memory::format_size(cfg.min_free_disk)
            ),
        ),
    };
    Ending {
        status: Some(status),
        exit_code: exit.map(Exit::code),
        commit: checkpoint,
        error: Some(error),
        error_code: Some(code),
        ..Ending::default()
    }
}

/// The sink the PTY pump writes into: split into text / bytes and append to the log,
/// up to the task's output limit (past it the task is stopped and the rest dropped),
/// watching the data dir's free space as the output grows.
///
/// For an agent with structured output, the same bytes then go to its parser, and each
/// `agent` event follows the raw `output` events of the bytes that completed it.
fn output_sink(
    task: Arc<Task>,
    cfg: &crate::config::Config,
    structured: Option<StructuredFeed>,
) -> OutputSink {
    let mut splitter = Utf8Splitter::new();
    let mut failed = false;
    let (max, min_free) = (cfg.limits.max_output, cfg.min_free_disk);
    let mut written: u64 = 0;
    let mut next_disk_check = DISK_CHECK_EVERY;
    Box::new(move |bytes: &[u8]| {
        if written >= max && !bytes.is_empty() {
            return;
        }
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
            feed_structured(&task, structured.as_ref(), bytes);
            return;
        }
        splitter.push(bytes, &mut append);
        written += bytes.len() as u64;
        if written >= max {
            task.request_stop(StopReason::OutputLimit);
            splitter.finish(&mut append);
            feed_structured(&task, structured.as_ref(), bytes);
            feed_structured(&task, structured.as_ref(), &[]);
            return;
        }
        feed_structured(&task, structured.as_ref(), bytes);
        if written >= next_disk_check {
            next_disk_check = written + DISK_CHECK_EVERY;
            let free = nix::sys::statvfs::statvfs(task.dir())
                .map(|s| s.blocks_available().saturating_mul(s.fragment_size()));
            if free.is_ok_and(|f| f < min_free / 2) {
                task.request_stop(StopReason::DiskFull);
            }
        }
    })
}

/// Feeds output bytes (an empty slice: the end) to the agent's parser and logs its
/// `agent` events; stops the agent over the worker-enforced budget, and raises the
/// `finished` flag when the agent reported the end of its run.
fn feed_structured(task: &Task, structured: Option<&StructuredFeed>, bytes: &[u8]) {
    let Some((watch, finished)) = structured else {
        return;
    };
    let fed = {
        let mut w = watch.lock().unwrap_or_else(|e| e.into_inner());
        let fed = w.feed(bytes);
        if let (Some(claim), Some(id)) = (task.session(), w.session_id()) {
            // Written once: later calls find the same id in the record.
            claim.note_session(id);
        }
        fed
    };
    for ev in &fed.events {
        if let Err(e) = task.emit("agent", ev.to_json()) {
            tracing::error!(task_id = %task.id(), "an agent event could not be written to the event log: {e}");
            break;
        }
    }
    if fed.over_budget {
        task.request_stop(StopReason::BudgetExceeded);
    }
    if fed.finished {
        finished.send_replace(true);
    }
}
