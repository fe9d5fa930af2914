//! `clone`: task start with a `rig_url`, cold (a repository the worker has never seen)
//! and warm (the same one again: the cache is reused), against `git clone --depth 1
//! --single-branch` from the same local `git http-backend`. Task start is the time from
//! `POST /work` to the agent's first output (it prints a word at once): the worktree
//! made and handed to the agent user, the agent running in it. (Until the fourteenth
//! session it ended at the `working` status event, which comes before the hand-over and
//! the agent's start, so their cost went unseen: 11 ms of a warm start then.)

use super::Ctx;
use crate::client::Proto;
use crate::gitserver::{self, GitServer};
use crate::report::{Goal, Row};
use crate::stats::Samples;
use crate::taskrun;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// Goals (issue 15): beat `git clone --depth 1` cold; warm at most 5% of cold.
const GOAL_COLD: f64 = 0.9;
const GOAL_WARM: f64 = 0.05;
/// Warm tasks per repository after its cold one.
const WARM_PER_REPO: usize = 5;
/// The agent: says it runs, at once.
const PROMPT: &str = "echo started";
/// The pause before each warm task after the first.
const WARM_SPACING: Duration = Duration::from_millis(500);
const GIT_ISSUE: &str = "needs git support in the worker (issue 3)";

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let runs = if ctx.args.quick { 1 } else { 3 };
    let (files, size) = if ctx.args.quick {
        (200, 4096)
    } else {
        (2000, 8192)
    };
    let dir = TempDir::new()?;
    let phase = ctx.progress.phase(
        format!("making a repo of {files} files, {} bare copies", 2 * runs),
        "",
        Duration::from_secs(30),
    );
    // Copies 0..runs for the baseline, runs..2*runs for outpost: each clone is cold.
    gitserver::make_repos(&dir.0, files, size, 2 * runs).await?;
    drop(phase);
    let server = GitServer::start(dir.0.clone()).await?;

    // The baseline's clones and outpost's tasks take turns, repository by repository,
    // the order alternating: both see the disk as the other left it (a run that made
    // or deleted thousands of files slows the next writes for a while).
    let warm_runs = if ctx.args.quick { 1 } else { WARM_PER_REPO };
    let phase = ctx.progress.phase(
        "git clone --depth 1, then outpost's cold and warm starts, in turn",
        "clones and tasks",
        Duration::from_secs(35 * runs as u64),
    );
    let mut base = Samples::new();
    let mut starts = Starts::default();
    let mut conn = ctx.target.ep.connect(Proto::H1).await?;
    for i in 0..runs {
        let clone_url = server.url(&format!("repo-{i}.git"));
        let task_url = server.url(&format!("repo-{}.git", runs + i));
        let dest = dir.0.join(format!("clone-{i}"));
        if i % 2 == 0 {
            base.push(git_clone(&dir.0, &clone_url, &dest).await?);
            starts.repo(&mut conn, &task_url, warm_runs).await?;
        } else {
            starts.repo(&mut conn, &task_url, warm_runs).await?;
            base.push(git_clone(&dir.0, &clone_url, &dest).await?);
        }
        phase
            .counter()
            .fetch_add(2 + warm_runs as u64, std::sync::atomic::Ordering::Relaxed);
    }
    let Starts {
        mut cold,
        mut warm,
        mut warm_end,
    } = starts;
    drop(phase);
    drop(server);
    // Removing the repositories is blocking work.
    let _ = tokio::task::spawn_blocking(move || drop(dir)).await;

    let cold_p50 = cold.p50();
    Ok(vec![
        Row::new("clone", "cold task start (p50)", "ms")
            .outpost(cold_p50)
            .baseline(base.p50())
            .goal(Goal::RatioAtMost(GOAL_COLD))
            .note(format!(
                "baseline: git clone --depth 1 --single-branch, in turn with outpost's tasks; {files} files, {runs} runs, each cold task followed by {} warm ones ({} ms apart)", if ctx.args.quick { 1 } else { WARM_PER_REPO }, WARM_SPACING.as_millis()
            )),
        Row::new("clone", "warm task start vs cold (p50)", "ms")
            .outpost(warm.p50())
            .baseline(cold_p50)
            .goal(Goal::RatioAtMost(GOAL_WARM)),
        Row::new("clone", "warm task: agent's output to done (p50)", "ms")
            .outpost(warm_end.p50())
            .note(format!(
                "the agent's end, the commit check of {files} files, the end of the log"
            )),
    ])
}

/// The baseline's clone of `url` into `dest`: how long it took.
async fn git_clone(cwd: &std::path::Path, url: &str, dest: &std::path::Path) -> Result<Duration> {
    let dest = dest.to_str().context("temp dir path is not UTF-8")?;
    let t = Instant::now();
    gitserver::shallow_clone(cwd, url, dest).await?;
    Ok(t.elapsed())
}

/// Outpost's task starts: POST to the agent's first output, cold and warm, and a warm
/// task's end (from the agent's output to `done`: the agent, then the commit check of
/// every file of the checkout, then the end of the log).
#[derive(Default)]
struct Starts {
    cold: Samples,
    warm: Samples,
    warm_end: Samples,
}

impl Starts {
    /// One cold task on `url`, then `warm_runs` warm ones (each ~20 ms, so their p50 is
    /// steady), spaced as tasks that come one after another rather than at once: the
    /// worker copies the next checkout ahead in the background after each start, which
    /// tasks arriving back to back would wait for.
    async fn repo(
        &mut self,
        conn: &mut crate::client::Conn,
        url: &str,
        warm_runs: usize,
    ) -> Result<()> {
        for (n, is_warm) in std::iter::once(false)
            .chain(std::iter::repeat_n(true, warm_runs))
            .enumerate()
        {
            if n > 1 {
                tokio::time::sleep(WARM_SPACING).await;
            }
            let body =
                serde_json::json!({ "rig_url": url, "ref": "main", "prompt": PROMPT }).to_string();
            let r = match taskrun::run_body(conn, Bytes::from(body), None, &|_| {}).await {
                Ok(r) => r,
                Err(e) => bail!("{GIT_ISSUE}? POST /work with a rig_url: {e:#}"),
            };
            match (r.first_output, r.status.as_deref()) {
                (Some(w), Some("done")) => {
                    if is_warm {
                        self.warm.push(w);
                        if let Some(d) = r.done {
                            self.warm_end.push(d.saturating_sub(w));
                        }
                    } else {
                        self.cold.push(w);
                    }
                }
                (None, Some("done")) => {
                    bail!("the task ended done without its agent's output ({PROMPT:?})")
                }
                _ => bail!(
                    "{GIT_ISSUE}? the task ended {:?}: {}",
                    r.status,
                    r.error.unwrap_or_default()
                ),
            }
        }
        Ok(())
    }
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!(
            "outpost-bench-git-{}-{}",
            std::process::id(),
            crate::ticker::now_ns()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
