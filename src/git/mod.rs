//! Git: the shallow repository cache on the data dir, a worktree per task, commit and
//! push over a rustls smart-HTTP transport (libgit2 vendored, no OpenSSL).
//!
//! Everything here is blocking: call it from `spawn_blocking` or a thread. The flow of a
//! task: [`prepare`] (fetch into the cache under its lock, then a worktree on a new
//! branch), the agent runs in [`Workspace::path`], [`finish`] (commit what is left,
//! push when there are new commits), [`remove_worktree`]. [`checkpoint`] commits and
//! pushes mid-task (a SIGTERM drain). The beads repository uses [`prepare_beads`] /
//! [`finish_beads`]: its default branch, with one re-apply-and-retry on a
//! non-fast-forward rejection.
//!
//! The token is only ever put in the `Authorization` header of requests to the host of
//! the task's URL: never in a URL, a config file, a log line or an error.

mod ahead;
mod cache;
mod commit;
mod error;
mod index_stat;
mod lock;
mod progress;
pub(crate) mod remote_url;
mod spare;
mod template;
mod tls;
mod transport;
mod worktree;

use std::path::PathBuf;
use std::time::Duration;

use git2::{Oid, Reference, Repository};

pub use error::GitError;
pub use progress::{Phase, Progress};
pub use spare::settle as spares_settled;
pub use transport::install_transport;

/// Settings for the git module (the lead builds it from the process configuration).
/// Its `Debug` output hides the token.
#[derive(Clone)]
pub struct GitConfig {
    /// The data dir: the cache goes in `<data_dir>/git/cache`, worktrees in
    /// `<data_dir>/git/worktrees`.
    pub data_dir: PathBuf,
    /// `OUTPOST_GIT_TOKEN` / `GH_TOKEN`: sent as basic auth `x-access-token:<token>`.
    pub token: Option<String>,
    /// Allow `http://` URLs.
    pub allow_http: bool,
    /// Author and committer of the commits outpost makes.
    pub author_name: String,
    pub author_email: String,
    /// Push the work even when the agent failed (policy for the caller; carried here).
    pub push_on_failure: bool,
    /// Connect, read and write timeout of every network step.
    pub network_timeout: Duration,
    /// How long to wait for another task's fetch into the same cache.
    pub lock_timeout: Duration,
    /// A PEM file of extra trusted CAs, on top of the webpki roots and the system's (or
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR`, which are always honored).
    pub extra_ca_file: Option<PathBuf>,
    /// How many copies of a repository's current checkout are kept made ahead for the
    /// next tasks on it (`OUTPOST_SPARE_CHECKOUTS`; 0: every task copies its own).
    pub spare_checkouts: usize,
    /// Who spare checkouts are given to once made (the agent user of the slot that
    /// most likely runs the next task; a task of another slot's user re-gives them).
    pub spare_owner: Option<(u32, u32)>,
}

impl std::fmt::Debug for GitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitConfig")
            .field("data_dir", &self.data_dir)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("allow_http", &self.allow_http)
            .field("author_name", &self.author_name)
            .field("author_email", &self.author_email)
            .field("push_on_failure", &self.push_on_failure)
            .field("network_timeout", &self.network_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .field("extra_ca_file", &self.extra_ca_file)
            .field("spare_checkouts", &self.spare_checkouts)
            .field("spare_owner", &self.spare_owner)
            .finish()
    }
}

impl GitConfig {
    /// Defaults: no token, https only, author `outpost <outpost@localhost>`, 60 s network
    /// timeout, 10 min lock timeout, one spare checkout.
    pub fn new(data_dir: impl Into<PathBuf>) -> GitConfig {
        GitConfig {
            data_dir: data_dir.into(),
            token: None,
            allow_http: false,
            author_name: "outpost".to_string(),
            author_email: "outpost@localhost".to_string(),
            push_on_failure: false,
            network_timeout: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(600),
            extra_ca_file: None,
            spare_checkouts: 1,
            spare_owner: None,
        }
    }

    /// The same settings with `data_dir` made absolute (alternates need absolute paths,
    /// and the agent's working directory should be one too).
    fn absolute(&self) -> Result<GitConfig, GitError> {
        let data_dir = std::path::absolute(&self.data_dir).map_err(|e| {
            GitError::io(
                format!("resolving the data dir {}", self.data_dir.display()),
                e,
            )
        })?;
        Ok(GitConfig {
            data_dir,
            ..self.clone()
        })
    }
}

/// A task's worktree: where the agent works, and what to push. Serializable, so a task
/// journal can keep it across a restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Workspace {
    /// The worktree directory (absolute): the agent's working directory.
    pub path: PathBuf,
    /// The branch checked out and pushed (`polecat/gt-abc123`; the default branch for beads).
    pub branch: String,
    /// The commit the branch started from (hex).
    pub base_commit: String,
    /// The remote URL (no credentials).
    pub url: String,
    /// The remote ref the base came from (`refs/heads/main`, `refs/tags/v1`, or a commit id).
    pub remote_ref: String,
    /// How the checkout's files (all but `.git`) were made ahead, when they came from
    /// a spare (None: they are the worker's, as made, and the index has no stat data).
    #[serde(default)]
    pub made_ahead: Option<MadeAhead>,
}

/// A checkout whose files came from a spare made ahead (`spare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MadeAhead {
    /// The uid and gid its files were given to when the spare was made.
    pub owner: (u32, u32),
    /// The index already holds every file's stat data, as the files are now: the
    /// [`record_stat`] after a hand-over that changes none of them can be skipped.
    pub stat_recorded: bool,
}

/// Fetches `git_ref` of `url` into the cache (default: the remote's default branch) and
/// creates the task's worktree on a new branch `branch` at that commit.
pub fn prepare(
    cfg: &GitConfig,
    url: &str,
    git_ref: Option<&str>,
    branch: &str,
    task_id: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Workspace, GitError> {
    check_branch(branch)?;
    prepare_inner(cfg, url, git_ref, Some(branch), task_id, progress)
}

/// Like [`prepare`] for the beads repository: its default branch, checked out under that
/// name, in `<data>/git/worktrees/<task_id>.beads`.
pub fn prepare_beads(
    cfg: &GitConfig,
    url: &str,
    task_id: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Workspace, GitError> {
    prepare_inner(cfg, url, None, None, &format!("{task_id}.beads"), progress)
}

/// Commits every uncommitted change (author from `cfg`, `message`), and pushes the branch
/// if it has commits beyond the base. Returns the pushed commit, None when nothing changed.
pub fn finish(
    cfg: &GitConfig,
    ws: &Workspace,
    message: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Option<String>, GitError> {
    finish_inner(cfg, ws, message, progress, false)
}

/// Like [`finish`] for the beads workspace: pushes to its default branch and, when that
/// is rejected as non-fast-forward, fetches the new tip, re-applies this task's commits
/// on it and pushes once more.
pub fn finish_beads(
    cfg: &GitConfig,
    ws: &Workspace,
    message: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Option<String>, GitError> {
    finish_inner(cfg, ws, message, progress, true)
}

/// Commits and pushes the worktree as it is now (a checkpoint while the agent is being
/// stopped). Same contract as [`finish`]; give it a `cfg` with a short `network_timeout`
/// when the time left is short.
pub fn checkpoint(
    cfg: &GitConfig,
    ws: &Workspace,
    message: &str,
) -> Result<Option<String>, GitError> {
    finish_inner(cfg, ws, message, &mut |_| {}, false)
}

/// Records each file's stat data in the index of the worktree at `path` (a checkout
/// from a template has none, and the commit check would hash every file), then gives
/// the new index file to `owner`. Call it once the files are final (after their
/// hand-over to the agent user) and before the agent starts. Returns the entries
/// recorded.
pub fn record_stat(path: &std::path::Path, owner: Option<(u32, u32)>) -> Result<usize, GitError> {
    index_stat::record(path, owner)
}

/// Deletes the task's worktree (the cache stays).
pub fn remove_worktree(cfg: &GitConfig, ws: &Workspace) -> Result<(), GitError> {
    let cfg = cfg.absolute()?;
    let root = worktree::root(&cfg);
    if !ws.path.starts_with(&root) || ws.path == root {
        return Err(GitError::io(
            format!("removing {}", ws.path.display()),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("it is not a worktree under {}", root.display()),
            ),
        ));
    }
    // Renamed into the trash (its path is free at once), deleted in the background.
    crate::trash::discard(&crate::trash::dir(&cfg.data_dir), &ws.path)
        .map_err(|e| GitError::io(format!("removing the worktree {}", ws.path.display()), e))
}

fn prepare_inner(
    cfg: &GitConfig,
    url: &str,
    git_ref: Option<&str>,
    branch: Option<&str>,
    dir_name: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Workspace, GitError> {
    check_task_id(dir_name)?;
    install_transport();
    let cfg = cfg.absolute()?;
    let remote = remote_url::parse(url, cfg.allow_http)?;
    let path = worktree::root(&cfg).join(dir_name);
    // Made from the last fetch's commit while the server is asked (`ahead`).
    let mut begun = ahead::begin(&cfg, &remote, git_ref, branch, &path);
    let mut repaired = false;
    loop {
        let answer = cache::fetch(&cfg, &remote, git_ref, progress).and_then(|f| {
            let branch = match branch {
                Some(b) => b.to_string(),
                None => default_branch_name(&f.remote_ref, &remote)?,
            };
            Ok((f, branch))
        });
        let (fetched, branch) = match answer {
            Ok(a) => a,
            Err(e) => {
                if let Some(b) = begun.take() {
                    b.abandon(&cfg);
                }
                return Err(e);
            }
        };
        let kept = begun.take().and_then(|b| b.keep(&cfg, &fetched, &branch));
        let created = match kept {
            Some(made_ahead) => Ok(made_ahead),
            None => worktree::create(&cfg, &fetched, &remote, &branch, &path),
        };
        match created {
            Ok(made_ahead) => {
                return Ok(Workspace {
                    path,
                    branch,
                    base_commit: fetched.commit.to_string(),
                    url: remote.url.clone(),
                    remote_ref: fetched.remote_ref,
                    made_ahead,
                })
            }
            Err(worktree::CreateError::MissingObject(e)) if !repaired => {
                tracing::warn!(error = %e, "the repository cache lacks objects: rebuilding it");
                let _ = worktree::remove_dir(&path);
                cache::invalidate(&cfg, &remote)?;
                repaired = true;
            }
            Err(worktree::CreateError::MissingObject(e) | worktree::CreateError::Other(e)) => {
                let _ = worktree::remove_dir(&path);
                return Err(e);
            }
        }
    }
}

fn finish_inner(
    cfg: &GitConfig,
    ws: &Workspace,
    message: &str,
    progress: &mut dyn FnMut(Progress),
    reapply_on_reject: bool,
) -> Result<Option<String>, GitError> {
    install_transport();
    let remote = remote_url::parse(&ws.url, cfg.allow_http)?;
    let shown = ws.path.display().to_string();
    let git = |what: &str, e: git2::Error| GitError::git(format!("{what} in {shown}"), &e, None);
    worktree::sanitize(&ws.path)?;
    let repo = Repository::open(&ws.path).map_err(|e| git("opening the worktree", e))?;
    // The agent could have set core.worktree: the files committed are the worktree's.
    repo.set_workdir(&ws.path, false)
        .map_err(|e| git("setting the work tree", e))?;
    commit::commit_all(cfg, &repo, message)?;
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| git("reading HEAD", e))?
        .id();
    let base = Oid::from_str(&ws.base_commit).map_err(|e| git("reading the base commit id", e))?;
    if head == base {
        return Ok(None);
    }
    let branch_ref = format!("refs/heads/{}", ws.branch);
    // The agent may have left HEAD elsewhere (detached, another branch): push what it made.
    if repo.refname_to_id(&branch_ref).ok() != Some(head) {
        repo.reference(&branch_ref, head, true, "outpost: branch at HEAD")
            .map_err(|e| git(&format!("moving {} to HEAD", ws.branch), e))?;
    }
    match commit::push(cfg, &repo, &remote, &branch_ref, &ws.branch, progress) {
        Ok(()) => Ok(Some(head.to_string())),
        Err(GitError::NonFastForward { .. }) if reapply_on_reject => {
            tracing::info!(branch = %ws.branch, url = %remote.url, "push rejected as non-fast-forward: re-applying on the new tip");
            let new_head =
                commit::reapply_on_remote_tip(cfg, &repo, &remote, &ws.branch, base, progress)?;
            commit::push(cfg, &repo, &remote, &branch_ref, &ws.branch, progress)?;
            Ok(Some(new_head.to_string()))
        }
        Err(e) => Err(e),
    }
}

fn default_branch_name(
    remote_ref: &str,
    remote: &remote_url::RemoteUrl,
) -> Result<String, GitError> {
    remote_ref
        .strip_prefix("refs/heads/")
        .map(str::to_string)
        .ok_or_else(|| GitError::EmptyRepository {
            url: remote.url.clone(),
        })
}

fn check_branch(branch: &str) -> Result<(), GitError> {
    if branch.starts_with('-') || !Reference::is_valid_name(&format!("refs/heads/{branch}")) {
        return Err(GitError::InvalidBranch {
            branch: branch.to_string(),
        });
    }
    Ok(())
}

fn check_task_id(id: &str) -> Result<(), GitError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id != "."
        && id != ".."
        && !id.contains(['/', '\\', '\0']);
    if ok {
        Ok(())
    } else {
        Err(GitError::io(
            format!("creating a worktree for task '{id}'"),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a task id must be a single path component",
            ),
        ))
    }
}
