//! The task's working directory: a scratch dir when there is no repository, or a git
//! worktree prepared by the `git` module (with a second one for `beads_url`). All git
//! work runs on blocking threads; progress goes into the task's event log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::model::{Status, WorkRequest};
use super::Task;
use crate::config::Config;
use crate::git::{self, GitConfig, MadeAhead, Progress};
use crate::process::ownership::{chown_tree, RootOwned};

/// Where the agent works.
pub enum Workspace {
    Scratch(PathBuf),
    Git(Box<GitWorkspace>),
}

/// A task's repositories: the rig and, with `beads_url`, the beads repository.
pub struct GitWorkspace {
    cfg: GitConfig,
    main: git::Workspace,
    beads: Option<git::Workspace>,
}

impl Workspace {
    pub fn path(&self) -> &Path {
        match self {
            Workspace::Scratch(p) => p,
            Workspace::Git(g) => &g.main.path,
        }
    }

    pub fn is_git(&self) -> bool {
        matches!(self, Workspace::Git(_))
    }

    pub fn beads_dir(&self) -> Option<&Path> {
        match self {
            Workspace::Git(g) => g.beads.as_ref().map(|b| b.path.as_path()),
            Workspace::Scratch(_) => None,
        }
    }

    /// The directories the agent works in (owned, to hand them over, on a thread).
    pub fn agent_paths(&self) -> AgentPaths {
        let (work_made_ahead, beads_made_ahead) = match self {
            Workspace::Git(g) => (
                g.main.made_ahead,
                g.beads.as_ref().and_then(|b| b.made_ahead),
            ),
            Workspace::Scratch(_) => (None, None),
        };
        AgentPaths {
            work: self.path().to_path_buf(),
            beads: self.beads_dir().map(Path::to_path_buf),
            git: self.is_git(),
            work_made_ahead,
            beads_made_ahead,
        }
    }
}

/// Where the agent works: its worktree (or scratch dir) and the beads worktree.
#[derive(Debug, Clone)]
pub struct AgentPaths {
    pub work: PathBuf,
    pub beads: Option<PathBuf>,
    /// Both are git worktrees (else `work` is a scratch dir).
    pub git: bool,
    /// How each worktree's checkout (all but its `.git`) was made ahead, if it was
    /// (`git::Workspace::made_ahead`).
    pub work_made_ahead: Option<MadeAhead>,
    pub beads_made_ahead: Option<MadeAhead>,
}

impl AgentPaths {
    /// The worktrees (`work`, then the beads one) with how each was made ahead.
    fn worktrees(&self) -> impl Iterator<Item = (&PathBuf, Option<MadeAhead>)> {
        let beads = self.beads.as_ref().map(|b| (b, self.beads_made_ahead));
        std::iter::once((&self.work, self.work_made_ahead)).chain(beads)
    }
}

/// What the agent gets besides its worktree: a HOME of its own (kept across tasks, per
/// slot), with its user name, a private temporary dir, and the context file.
#[derive(Debug, Clone)]
pub struct AgentDirs {
    pub home: Option<(PathBuf, String)>,
    pub tmp: PathBuf,
    pub context: Option<PathBuf>,
}

/// `<data>/run/<task id>`: the agent's per-task directory (scratch work dir, temporary
/// files, the context file), deleted when the task ends.
fn run_dir(cfg: &Config, task: &Task) -> PathBuf {
    cfg.data_dir.join("run").join(task.id())
}

/// Gives the agent user (`owner`; None: the agent runs as the worker) its directories:
/// the worktrees become its own, its HOME is made (or kept) on the data dir, and the
/// task's run dir holds its temporary files and the context file. Blocking.
pub fn hand_over(
    cfg: &Config,
    task: &Task,
    paths: &AgentPaths,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<AgentDirs> {
    let run = run_dir(cfg, task);
    let tmp = run.join("tmp");
    private_dir(&tmp)?;
    let context = match &task.meta.request.context {
        Some(ctx) => {
            let path = run.join("context.json");
            super::write_json_atomic(&path, ctx)
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let mut home = None;
    if let Some((uid, gid)) = owner {
        let h = cfg.data_dir.join("home").join(task.slot().to_string());
        private_dir(&h)?;
        // HOME is kept across tasks: what is in it the agents wrote.
        chown_tree(&h, uid, gid, 1, RootOwned::Keep)?;
        // The run dir and its entries: `tmp` (just made, empty), the context file, and
        // a scratch work dir, which the loop below walks whole.
        chown_tree(&run, uid, gid, 1, RootOwned::Give)?;
        for (p, made_ahead) in paths.worktrees() {
            if made_ahead.map(|m| m.owner) == Some((uid, gid)) {
                // The checkout came from a spare given to this very user when it was
                // made (`git::spare`): only the worktree itself and its `.git`, made
                // for this task, are still the worker's (its files, already the
                // agent's, are not touched: their ctime stays). The walk of a
                // 2,000-file checkout found nothing to give, at 2.5-5.5 ms of a ~20 ms
                // warm start (docs/bench.md).
                chown_tree(p, uid, gid, 1, RootOwned::Give)?;
                chown_tree(&p.join(".git"), uid, gid, 4096, RootOwned::Give)?;
            } else {
                chown_tree(p, uid, gid, 4096, RootOwned::Give)?;
            }
        }
        let user = crate::process::identity::name_of(uid).unwrap_or_else(|| uid.to_string());
        home = Some((h, user));
    }
    if paths.git {
        // Last, once the files' owner and ctime are final; not again where the index
        // came with them, recorded as they still are (nothing above changed them).
        for (p, made_ahead) in paths.worktrees() {
            let recorded =
                made_ahead.is_some_and(|m| m.stat_recorded && owner.is_none_or(|o| o == m.owner));
            if recorded {
                continue;
            }
            if let Err(e) = git::record_stat(p, owner) {
                tracing::warn!(task_id = %task.id(), "the index keeps no stat data ({e}): the commit check will read every file");
            }
        }
    }
    Ok(AgentDirs { home, tmp, context })
}

/// A directory the agent user may pass through (0711, whatever the umask).
fn passable_dir(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("setting the mode of {}", p.display()))
}

fn private_dir(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))
}

/// The git settings of a worker.
pub fn git_config(cfg: &Config) -> GitConfig {
    let mut g = GitConfig::new(cfg.data_dir.clone());
    g.token = cfg.git_token.clone();
    g.allow_http = cfg.allow_http;
    g.author_name = cfg.git_author_name.clone();
    g.author_email = cfg.git_author_email.clone();
    g.push_on_failure = cfg.push_on_failure;
    g.spare_checkouts = cfg.spare_checkouts;
    g
}

/// A progress callback that appends `progress` events to the task's log.
fn progress_sink(task: Arc<Task>) -> impl FnMut(Progress) {
    move |p: Progress| {
        if let Ok(v) = serde_json::to_value(&p) {
            let _ = task.emit("progress", v);
        }
    }
}

fn commit_message(task: &Task, what: &str) -> String {
    let req = &task.meta.request;
    let subject = match &req.issue_id {
        Some(issue) => format!("{what} {issue}"),
        None => format!("{what} task {}", task.id()),
    };
    let mut msg = format!("{subject}\n\nTask {} by outpost.", task.id());
    if let Some(p) = &req.prompt {
        let short: String = p.chars().take(500).collect();
        msg.push_str(&format!("\n\nPrompt: {short}"));
    }
    msg
}

/// Whether the task works in a scratch dir (no `rig_url`): nothing to clone, so
/// nothing keeps its agent from starting once it is admitted.
pub fn is_scratch(req: &WorkRequest) -> bool {
    req.rig_url.is_none()
}

/// Prepares the working directory: clones or fetches with `rig_url`, else a scratch dir.
/// `owner` is the agent user of the task's slot (the next spare checkout is made
/// ready for it: the next task on the repository likely runs in the same slot).
pub async fn prepare(
    cfg: &Config,
    task: &Arc<Task>,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<Workspace> {
    let req = task.meta.request.clone();
    let Some(url) = req.rig_url.clone() else {
        // A task that continues an earlier one works at the same path (opencode).
        let parent = match task.session() {
            Some(c) => cfg.data_dir.join("run").join(&c.start.worktree),
            None => run_dir(cfg, task),
        };
        if parent != run_dir(cfg, task) {
            // Not the task's own run dir (which becomes the agent's): the worker's,
            // for the agent to pass through.
            passable_dir(&parent)?;
        }
        let dir = parent.join("work");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the scratch dir {}", dir.display()))?;
        return Ok(Workspace::Scratch(dir));
    };
    task.set_status(Status::Cloning)
        .context("writing the event log")?;
    let mut gcfg = git_config(cfg);
    gcfg.spare_owner = owner;
    let t = task.clone();
    let branch = task.meta.branch.clone();
    // A task that continues an earlier one of its issue starts from that task's branch
    // as pushed, in a worktree at the same path (opencode resumes only from there).
    let (dir_name, from_branch) = match task.session() {
        Some(c) => (c.start.worktree.clone(), c.start.from_branch.clone()),
        None => (task.id().to_string(), None),
    };
    let joined = tokio::task::spawn_blocking(move || -> anyhow::Result<Workspace> {
        let mut progress = progress_sink(t.clone());
        let mut prepare = |git_ref: Option<&str>| {
            git::prepare(&gcfg, &url, git_ref, &branch, &dir_name, &mut progress)
        };
        let main = match from_branch {
            Some(b) => match prepare(Some(&format!("refs/heads/{b}"))) {
                Err(git::GitError::RefNotFound { .. }) => {
                    tracing::info!(task_id = %t.id(), branch = %b, "the branch of the task this one continues was never pushed: starting from the request's ref");
                    prepare(req.git_ref.as_deref())
                }
                r => r,
            },
            None => prepare(req.git_ref.as_deref()),
        }
        .with_context(|| "preparing the repository (rig_url)".to_string())?;
        let beads = match &req.beads_url {
            None => None,
            Some(b) => match git::prepare_beads(&gcfg, b, t.id(), &mut progress) {
                Ok(ws) => Some(ws),
                Err(e) => {
                    let _ = git::remove_worktree(&gcfg, &main);
                    return Err(
                        anyhow::Error::new(e).context("preparing the beads repository (beads_url)")
                    );
                }
            },
        };
        Ok(Workspace::Git(Box::new(GitWorkspace {
            cfg: gcfg,
            main,
            beads,
        })))
    })
    .await;
    joined.map_err(|e| anyhow::anyhow!("the git thread failed: {e}"))?
}

/// Commits and pushes after the agent; the commit pushed (of the main repository).
pub async fn finish(
    _cfg: &Config,
    ws: &Workspace,
    task: &Arc<Task>,
) -> anyhow::Result<Option<String>> {
    let Workspace::Git(g) = ws else {
        return Ok(None);
    };
    let (cfg, main, beads) = (g.cfg.clone(), g.main.clone(), g.beads.clone());
    let t = task.clone();
    let joined = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<String>> {
        let mut progress = progress_sink(t.clone());
        let msg = commit_message(&t, "Work on");
        let commit = git::finish(&cfg, &main, &msg, &mut progress).context("pushing the work")?;
        if let Some(b) = &beads {
            git::finish_beads(&cfg, b, &msg, &mut progress)
                .context("pushing the beads repository")?;
        }
        Ok(commit)
    })
    .await;
    joined.map_err(|e| anyhow::anyhow!("the git thread failed: {e}"))?
}

/// Commits and pushes work in progress as a checkpoint (shutdown), within a short
/// network timeout so the drain stays inside the platform's grace. Never fails the
/// caller: a checkpoint that cannot be pushed is logged and reported as none.
pub async fn checkpoint(cfg: &Config, ws: &Workspace, task: &Arc<Task>) -> Option<String> {
    let Workspace::Git(g) = ws else { return None };
    let mut gcfg = g.cfg.clone();
    let budget = cfg
        .grace
        .saturating_sub(Duration::from_secs(2))
        .max(Duration::from_secs(2));
    gcfg.network_timeout = budget;
    let main = g.main.clone();
    let t = task.clone();
    let job = tokio::task::spawn_blocking(move || {
        git::checkpoint(&gcfg, &main, &commit_message(&t, "Checkpoint of"))
    });
    match tokio::time::timeout(budget + Duration::from_secs(1), job).await {
        Ok(Ok(Ok(commit))) => commit,
        Ok(Ok(Err(e))) => {
            tracing::warn!(task_id = %task.id(), "checkpoint failed: {e}");
            None
        }
        _ => {
            tracing::warn!(task_id = %task.id(), "checkpoint did not finish in {} s", budget.as_secs());
            None
        }
    }
}

/// Removes the working directory and the task's run dir so the disk does not grow
/// without bound (on one blocking thread: one hand-off per task, not two). Each is
/// renamed into the trash, its path free at once, and deleted in the background.
pub async fn cleanup(cfg: &Config, ws: &Workspace, task: &Task) {
    let run = run_dir(cfg, task);
    let scratch = match ws {
        Workspace::Scratch(dir) => Some(dir.clone()),
        Workspace::Git(_) => None,
    };
    let git = match ws {
        Workspace::Git(g) => Some((g.cfg.clone(), g.main.clone(), g.beads.clone())),
        Workspace::Scratch(_) => None,
    };
    let trash = crate::trash::dir(&cfg.data_dir);
    let _ = tokio::task::spawn_blocking(move || {
        let discard = |dir: &Path| {
            if let Err(e) = crate::trash::discard(&trash, dir) {
                tracing::warn!(path = %dir.display(), "removing the task's files: {e}");
            }
        };
        discard(&run);
        if let Some(dir) = scratch {
            // Usually inside the run dir, so already gone.
            discard(&dir);
            // The run dir of the task it continued, if that is where it was: gone
            // once empty.
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        if let Some((cfg, main, beads)) = git {
            for ws in std::iter::once(&main).chain(beads.as_ref()) {
                if let Err(e) = git::remove_worktree(&cfg, ws) {
                    tracing::warn!(path = %ws.path.display(), "removing the worktree: {e}");
                }
            }
        }
    })
    .await;
}
