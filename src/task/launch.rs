//! What the agent of a task runs: its command line from the agent profile (the
//! prompt, the spend cap where the agent has a flag for it, the session to start or
//! resume), its environment, and where its session state lives (the issue's session
//! dir, else the agent's HOME, else a directory of the task's run dir).

use super::workspace::{self, AgentDirs};
use super::Task;
use crate::agent::profile::{AgentProfile, SessionPlan};
use crate::agent::AgentSpec;

/// The session of a task with an `issue_id` run by an agent with sessions: its state
/// dir (`<data>/sessions/<issue>/state`, given to the agent user) and the plan. A
/// Claude Code session to resume that has no transcript (killed before it wrote one)
/// starts under the same id instead (`--resume` would fail, `--session-id` works).
pub(super) fn session_of(
    task: &Task,
    profile: &AgentProfile,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<Option<(std::path::PathBuf, SessionPlan)>> {
    let Some(claim) = task.session() else {
        return Ok(None);
    };
    let Some(plan) = claim.start.plan.clone() else {
        return Ok(None);
    };
    let state = claim.prepare_state(owner)?;
    let plan = match plan {
        SessionPlan::Resume(id)
            if profile.fixes_session_id()
                && !crate::agent::profile::claude_transcript_exists(&state, &id) =>
        {
            tracing::info!(task_id = %task.id(), session_id = %id, "no transcript of the session to resume: starting it under the same id");
            SessionPlan::New(Some(id))
        }
        p => p,
    };
    Ok(Some((state, plan)))
}

/// What the agent runs: the profile's command line (with the spend cap where the agent
/// has a flag for it, and the session to start or resume), the task's environment, and
/// the profile's own (its state dir: the issue's session state, else the agent's HOME,
/// else a directory of the task's run dir).
pub(super) fn agent_spec(
    task: &Task,
    paths: &workspace::AgentPaths,
    dirs: &AgentDirs,
    profile: &AgentProfile,
    budget: Option<f64>,
    as_root: bool,
    session: Option<(std::path::PathBuf, SessionPlan)>,
) -> anyhow::Result<AgentSpec> {
    use anyhow::Context;
    let req = &task.meta.request;
    let prompt = req
        .prompt
        .clone()
        .unwrap_or_else(|| format!("Work on issue {}", req.issue_id.as_deref().unwrap_or("")));
    let mut env = vec![("OUTPOST_TASK_ID".to_string(), task.id().to_string())];
    if let Some(issue) = &req.issue_id {
        env.push(("OUTPOST_ISSUE_ID".into(), issue.clone()));
    }
    if let Some(ctx) = &dirs.context {
        env.push(("OUTPOST_CONTEXT".into(), ctx.display().to_string()));
    }
    if let Some(beads) = &paths.beads {
        env.push(("BEADS_DIR".into(), beads.display().to_string()));
    }
    env.push(("TMPDIR".into(), dirs.tmp.display().to_string()));
    // The worker's own PWD would name the wrong directory (opencode works there).
    env.push(("PWD".into(), paths.work.display().to_string()));
    if let Some((home, user)) = &dirs.home {
        env.push(("HOME".into(), home.display().to_string()));
        env.push(("USER".into(), user.clone()));
        env.push(("LOGNAME".into(), user.clone()));
    }
    let (state, plan) = match session {
        Some((state, plan)) => (Some(state), Some(plan)),
        None => (None, None),
    };
    if profile.format() != crate::agent::profile::OutputFormat::None {
        let state = match (state, &dirs.home) {
            (Some(state), _) => state,
            (None, Some((home, _))) => home.clone(),
            (None, None) => {
                let d = dirs.tmp.join("agent-state");
                std::fs::create_dir_all(&d)
                    .with_context(|| format!("creating the agent's state dir {}", d.display()))?;
                d
            }
        };
        env.extend(profile.env(&state));
        if as_root {
            env.extend(profile.root_env());
        }
    }
    let budget = budget.filter(|_| profile.caps_budget());
    Ok(AgentSpec {
        argv: profile.argv(&prompt, plan.as_ref(), budget),
        cwd: paths.work.clone(),
        env,
        cols: 120,
        rows: 40,
        plan: Default::default(),
    })
}
