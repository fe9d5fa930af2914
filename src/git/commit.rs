//! After the agent: commit everything the agent left in the worktree, push the branch
//! (reading the server's per-ref verdict), and, for the beads repository, re-apply the
//! task's commits on a remote tip that moved meanwhile.

use std::cell::RefCell;

use git2::build::CheckoutBuilder;
use git2::{
    ErrorCode, IndexAddOption, Oid, PushOptions, RemoteCallbacks, Repository, Signature, Sort,
};

use super::error::{redact, GitError};
use super::progress::{shallow_fetch_options, Phase, Progress, Throttle};
use super::remote_url::RemoteUrl;
use super::{transport, GitConfig};

/// Lines of the server's own messages (hooks) kept for an error.
const REMOTE_LINES: usize = 6;

/// Commits all changes (new, modified and deleted files; `.gitignore` respected) on HEAD.
/// Returns the new commit, or None when the tree did not change.
pub(crate) fn commit_all(
    cfg: &GitConfig,
    repo: &Repository,
    message: &str,
) -> Result<Option<Oid>, GitError> {
    let at = || repo.workdir().unwrap_or(repo.path()).display().to_string();
    let git = |what: &str, e: git2::Error| GitError::git(format!("{what} in {}", at()), &e, None);
    let mut index = repo.index().map_err(|e| git("reading the index", e))?;
    index
        .update_all(["*"], None)
        .map_err(|e| git("staging changes", e))?;
    index
        .add_all(["*"], IndexAddOption::DEFAULT, None)
        .map_err(|e| git("staging new files", e))?;
    let tree_id = index.write_tree().map_err(|e| git("writing the tree", e))?;
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| git("reading HEAD", e))?;
    if head.tree_id() == tree_id {
        return Ok(None);
    }
    let tree = repo
        .find_tree(tree_id)
        .map_err(|e| git("reading the tree", e))?;
    let sig = Signature::now(&cfg.author_name, &cfg.author_email).map_err(|e| {
        git(
            "making the author signature (check the author name and email)",
            e,
        )
    })?;
    let oid = repo
        .commit(Some("HEAD"), &sig, &sig, message, &tree, &[&head])
        .map_err(|e| git("committing", e))?;
    // The commit is what matters; a stale index.lock left by a killed agent must not
    // turn a saved commit into a failure.
    if let Err(e) = index.write() {
        tracing::warn!(error = %e.message(), "could not write the index after committing");
    }
    Ok(Some(oid))
}

/// Pushes `local_ref` to `refs/heads/<branch>` on `remote`.
pub(crate) fn push(
    cfg: &GitConfig,
    repo: &Repository,
    remote: &RemoteUrl,
    local_ref: &str,
    branch: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), GitError> {
    let token = cfg.token.as_deref();
    let session = transport::begin(cfg, remote)?;
    let mut origin = repo
        .remote_anonymous(&remote.url)
        .map_err(|e| GitError::git(format!("setting up the remote {}", remote.url), &e, token))?;
    let rejected: RefCell<Option<String>> = RefCell::new(None);
    let server_text: RefCell<String> = RefCell::new(String::new());
    let mut throttle = Throttle::new();
    let mut callbacks = RemoteCallbacks::new();
    callbacks.push_update_reference(|_refname, status| {
        if let Some(status) = status {
            *rejected.borrow_mut() = Some(status.to_string());
        }
        Ok(())
    });
    callbacks.sideband_progress(|data| {
        let mut text = server_text.borrow_mut();
        if text.len() < 16 * 1024 {
            text.push_str(&String::from_utf8_lossy(data));
        }
        true
    });
    callbacks.push_transfer_progress(|current, total, bytes| {
        let p = Progress {
            phase: Phase::Push,
            received_objects: current,
            total_objects: total,
            bytes,
        };
        if throttle.admit(&p) {
            progress(p);
        }
    });
    let mut opts = PushOptions::new();
    opts.remote_callbacks(callbacks);
    let refspec = format!("{local_ref}:refs/heads/{branch}");
    let result = origin.push(&[refspec.as_str()], Some(&mut opts));
    drop(opts);
    let server_lines = last_lines(&server_text.borrow(), token);
    match result {
        Err(e) if e.code() == ErrorCode::NotFastForward => Err(GitError::NonFastForward {
            url: remote.url.clone(),
            branch: branch.to_string(),
        }),
        Err(e) => Err(session.map_err("pushing to", &e)),
        Ok(()) => match rejected.into_inner() {
            None => Ok(()),
            Some(status)
                if status.contains("non-fast-forward") || status.contains("fetch first") =>
            {
                Err(GitError::NonFastForward {
                    url: remote.url.clone(),
                    branch: branch.to_string(),
                })
            }
            Some(status) => {
                let mut reason = redact(&status, token);
                if !server_lines.is_empty() {
                    reason = format!("{reason} (the server said: {server_lines})");
                }
                Err(GitError::Rejected {
                    url: remote.url.clone(),
                    branch: branch.to_string(),
                    reason,
                })
            }
        },
    }
}

/// Fetches the remote `branch` (depth 1) and replays the commits `base..HEAD` on its tip,
/// moving `refs/heads/<branch>` (HEAD) to the result and checking it out.
pub(crate) fn reapply_on_remote_tip(
    cfg: &GitConfig,
    repo: &Repository,
    remote: &RemoteUrl,
    branch: &str,
    base: Oid,
    progress: &mut dyn FnMut(Progress),
) -> Result<Oid, GitError> {
    let token = cfg.token.as_deref();
    let git = |what: &str, e: git2::Error| GitError::git(what.to_string(), &e, token);
    let tracking = format!("refs/remotes/origin/{branch}");
    {
        let session = transport::begin(cfg, remote)?;
        let mut origin = repo
            .remote_anonymous(&remote.url)
            .map_err(|e| git(&format!("setting up the remote {}", remote.url), e))?;
        let mut opts = shallow_fetch_options(progress);
        let refspec = format!("+refs/heads/{branch}:{tracking}");
        origin
            .fetch(
                &[refspec.as_str()],
                Some(&mut opts),
                Some("outpost: fetch new tip"),
            )
            .map_err(|e| session.map_err(&format!("fetching {branch} from"), &e))?;
    }
    let tip = repo
        .refname_to_id(&tracking)
        .map_err(|e| git(&format!("reading the fetched tip of {branch}"), e))?;

    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| git("reading HEAD", e))?;
    let mut walk = repo
        .revwalk()
        .map_err(|e| git("listing the task's commits", e))?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
        .and_then(|_| walk.push(head.id()))
        .and_then(|_| walk.hide(base))
        .map_err(|e| git("listing the task's commits", e))?;
    let ids: Vec<Oid> = walk
        .collect::<Result<_, _>>()
        .map_err(|e| git("listing the task's commits", e))?;

    let committer = Signature::now(&cfg.author_name, &cfg.author_email)
        .map_err(|e| git("making the committer signature", e))?;
    let mut onto = repo
        .find_commit(tip)
        .map_err(|e| git(&format!("reading the new tip of {branch}"), e))?;
    for id in ids {
        let commit = repo
            .find_commit(id)
            .map_err(|e| git("reading a task commit", e))?;
        if commit.parent_count() > 1 {
            return Err(GitError::ReapplyConflict {
                url: remote.url.clone(),
                branch: branch.to_string(),
                paths: format!("(merge commit {id} cannot be re-applied)"),
            });
        }
        let mut index = repo
            .cherrypick_commit(&commit, &onto, 0, None)
            .map_err(|e| git(&format!("re-applying {id}"), e))?;
        if index.has_conflicts() {
            let paths: Vec<String> = index
                .conflicts()
                .map(|it| {
                    it.filter_map(Result::ok)
                        .filter_map(|c| c.our.or(c.their).or(c.ancestor))
                        .map(|entry| String::from_utf8_lossy(&entry.path).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            return Err(GitError::ReapplyConflict {
                url: remote.url.clone(),
                branch: branch.to_string(),
                paths: paths.join(", "),
            });
        }
        let tree_id = index
            .write_tree_to(repo)
            .map_err(|e| git("writing a re-applied tree", e))?;
        let tree = repo
            .find_tree(tree_id)
            .map_err(|e| git("reading a re-applied tree", e))?;
        let message = commit.message().unwrap_or("outpost: re-applied commit");
        let new_id = repo
            .commit(None, &commit.author(), &committer, message, &tree, &[&onto])
            .map_err(|e| git("committing a re-applied change", e))?;
        onto = repo
            .find_commit(new_id)
            .map_err(|e| git("reading a re-applied commit", e))?;
    }
    let branch_ref = format!("refs/heads/{branch}");
    repo.reference(
        &branch_ref,
        onto.id(),
        true,
        "outpost: re-applied on the new tip",
    )
    .and_then(|_| repo.set_head(&branch_ref))
    .map_err(|e| git(&format!("moving {branch} to the re-applied commits"), e))?;
    let mut checkout = CheckoutBuilder::new();
    checkout.force();
    repo.checkout_head(Some(&mut checkout))
        .map_err(|e| git("checking out the re-applied commits", e))?;
    Ok(onto.id())
}

/// The last few non-empty lines of what the server printed (hook output), one line.
fn last_lines(text: &str, token: Option<&str>) -> String {
    let lines: Vec<&str> = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(REMOTE_LINES);
    redact(&lines[start..].join(" / "), token)
}
