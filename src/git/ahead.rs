//! A warm task's worktree, begun before the server has answered. The fetch check (one
//! ref listing over the network) is most of a warm start, and its answer is almost
//! always what the last fetch of the same ref found ([`cache::last_fetched`]). So the
//! worktree is made from that guess on a thread of its own while [`cache::fetch`] asks
//! the server, and kept only when the answer names the same commit from the same ref:
//! otherwise it goes to the trash and the worktree is made again from the answer. A task
//! never starts on anything but what the server said.
//!
//! Only a commit whose template is made already is guessed at, so a wrong guess costs
//! a spare's few renames, never a checkout.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use git2::Oid;

use super::cache::{self, Fetched};
use super::remote_url::RemoteUrl;
use super::worktree::{self, CreateError};
use super::{default_branch_name, template, GitConfig, MadeAhead};

/// A worktree being made from a guess.
pub(super) struct Begun {
    commit: Oid,
    remote_ref: String,
    branch: String,
    path: PathBuf,
    thread: JoinHandle<Result<Option<MadeAhead>, CreateError>>,
}

/// Begins the worktree at `path` from the last fetch of `git_ref`, on branch `branch`
/// (None: the remote's default branch, as last fetched). None when there is nothing to
/// guess from, its template is not made yet, or no thread could be started.
pub(super) fn begin(
    cfg: &GitConfig,
    remote: &RemoteUrl,
    git_ref: Option<&str>,
    branch: Option<&str>,
    path: &Path,
) -> Option<Begun> {
    let guess = cache::last_fetched(cfg, remote, git_ref)?;
    if !template::path_of(&guess.cache_dir, guess.commit).is_dir() {
        return None;
    }
    let branch = match branch {
        Some(b) => b.to_string(),
        None => default_branch_name(&guess.remote_ref, remote).ok()?,
    };
    let (commit, remote_ref) = (guess.commit, guess.remote_ref.clone());
    let (cfg2, remote2, branch2, path2) = (
        cfg.clone(),
        remote.clone(),
        branch.clone(),
        path.to_path_buf(),
    );
    let thread = std::thread::Builder::new()
        .name("git-ahead".to_string())
        .spawn(move || worktree::create(&cfg2, &guess, &remote2, &branch2, &path2));
    match thread {
        Ok(thread) => Some(Begun {
            commit,
            remote_ref,
            branch,
            path: path.to_path_buf(),
            thread,
        }),
        Err(e) => {
            tracing::debug!("no thread to make the worktree ahead ({e}): made after the fetch");
            None
        }
    }
}

impl Begun {
    /// The worktree, made, when the fetch's answer is the guess and the branch is the
    /// one asked for: `Some` with how its files were made. Otherwise it is thrown away
    /// (the path is free again) and this is None.
    pub(super) fn keep(
        self,
        cfg: &GitConfig,
        fetched: &Fetched,
        branch: &str,
    ) -> Option<Option<MadeAhead>> {
        let same = self.commit == fetched.commit
            && self.remote_ref == fetched.remote_ref
            && self.branch == branch;
        let path = self.path.clone();
        match self.thread.join() {
            Ok(Ok(made_ahead)) if same => return Some(made_ahead),
            Ok(Ok(_)) => tracing::info!(
                worktree = %path.display(),
                "the branch moved since the last fetch: the worktree made ahead is thrown away"
            ),
            Ok(Err(CreateError::MissingObject(e) | CreateError::Other(e))) => tracing::debug!(
                worktree = %path.display(),
                "the worktree made ahead failed ({e}): made again from the fetch"
            ),
            Err(_) => tracing::warn!(
                worktree = %path.display(),
                "the thread making the worktree ahead panicked: made again from the fetch"
            ),
        }
        discard(cfg, &path);
        None
    }

    /// Throws the worktree away (the fetch failed): waits for its thread, then frees
    /// the path.
    pub(super) fn abandon(self, cfg: &GitConfig) {
        let _ = self.thread.join();
        discard(cfg, &self.path);
    }
}

fn discard(cfg: &GitConfig, path: &Path) {
    if let Err(e) = crate::trash::discard(&crate::trash::dir(&cfg.data_dir), path) {
        tracing::warn!(worktree = %path.display(), "removing a worktree made ahead: {e}");
    }
}
