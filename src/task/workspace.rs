//! The task's working directory: a scratch dir when there is no repository, or a git
//! worktree prepared by the `git` module (with a second one for `beads_url`). All git
//! work runs on blocking threads; progress goes into the task's event log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::Task;
use crate::config::Config;

/// Where the agent works.
pub enum Workspace {
    Scratch(PathBuf),
}

impl Workspace {
    pub fn path(&self) -> &Path {
        match self {
            Workspace::Scratch(p) => p,
        }
    }

    pub fn is_git(&self) -> bool {
        false
    }

    pub fn beads_dir(&self) -> Option<&Path> {
        None
    }
}

/// Prepares the working directory.
pub async fn prepare(_cfg: &Config, task: &Arc<Task>) -> anyhow::Result<Workspace> {
    if task.meta.request.rig_url.is_some() {
        anyhow::bail!("git repositories are not supported by this build yet");
    }
    let dir = task.dir().join("work");
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the scratch dir {}", dir.display()))?;
    Ok(Workspace::Scratch(dir))
}

/// Commits and pushes after a successful agent; the commit pushed, if any.
pub async fn finish(
    _cfg: &Config,
    _ws: &Workspace,
    _task: &Arc<Task>,
) -> anyhow::Result<Option<String>> {
    Ok(None)
}

/// Commits and pushes work in progress as a checkpoint (shutdown).
pub async fn checkpoint(_cfg: &Config, _ws: &Workspace, _task: &Arc<Task>) -> Option<String> {
    None
}

/// Removes the working directory so the disk does not grow without bound.
pub async fn cleanup(_cfg: &Config, ws: &Workspace) {
    let Workspace::Scratch(dir) = ws;
    let dir = dir.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}
