//! The worktree of one task: `<data>/git/worktrees/<task_id>/`, an ordinary (non-bare)
//! repository whose object store holds hard links to the cache's (read-only) object
//! files, so the agent's own git can read them while the cache itself stays out of its
//! reach, and whose `shallow` file is a copy of the cache's, checked out on a new branch
//! at the fetched commit. Before the worker commits in a worktree the agent had,
//! [`sanitize`] undoes what the agent could have pointed elsewhere. Tasks share no refs, index or config with each other or with the
//! cache, so concurrent tasks cannot step on each other; the agent's own `git` works in
//! it as in any clone. Removing it is removing the directory. The files come from a
//! spare copy of the commit's checkout template made ahead (see `spare`), else from a
//! copy of the template when there is one (see `template`).

use std::path::{Path, PathBuf};

use git2::build::CheckoutBuilder;
use git2::{ErrorClass, ErrorCode, Repository, RepositoryInitOptions};

use super::cache::Fetched;
use super::error::GitError;
use super::remote_url::RemoteUrl;
use super::GitConfig;
use super::{spare, template};
use crate::placement;

/// How creating a worktree failed.
pub(crate) enum CreateError {
    /// An object the cache should have is missing: the cache is damaged.
    MissingObject(GitError),
    /// Anything else.
    Other(GitError),
}

impl From<GitError> for CreateError {
    fn from(e: GitError) -> Self {
        CreateError::Other(e)
    }
}

/// `<data>/git/worktrees`.
pub(crate) fn root(cfg: &GitConfig) -> PathBuf {
    cfg.data_dir.join("git").join("worktrees")
}

/// Creates the worktree at `path` on `branch` at `fetched.commit` (replacing whatever
/// was left at `path` by an earlier run of the same task id). Returns the owner its
/// files (all but `.git`) were given to ahead when they came from a spare (None: they
/// are the worker's, as made).
pub(crate) fn create(
    cfg: &GitConfig,
    fetched: &Fetched,
    remote: &RemoteUrl,
    branch: &str,
    path: &Path,
) -> Result<Option<(u32, u32)>, CreateError> {
    remove_dir(path)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| GitError::io(format!("creating {}", parent.display()), e))?;
        placement::spread_children(parent);
    }
    let shown = path.display().to_string();
    let git = |what: &str, e: git2::Error| -> CreateError {
        let err = GitError::git(format!("{what} in the worktree {shown}"), &e, None);
        if e.class() == ErrorClass::Odb && e.code() == ErrorCode::NotFound {
            CreateError::MissingObject(err)
        } else {
            CreateError::Other(err)
        }
    };
    let branch_ref = format!("refs/heads/{branch}");
    let mut opts = RepositoryInitOptions::new();
    opts.no_reinit(true)
        .mkpath(true)
        .external_template(false)
        .initial_head(&branch_ref)
        .origin_url(&remote.url);
    let repo = Repository::init_opts(path, &opts).map_err(|e| git("creating the repository", e))?;
    let git_dir = repo.path().to_path_buf();
    drop(repo);

    let cache_objects = std::fs::canonicalize(fetched.cache_dir.join("objects")).map_err(|e| {
        GitError::io(
            format!("resolving {}/objects", fetched.cache_dir.display()),
            e,
        )
    })?;
    link_objects(&cache_objects, &git_dir.join("objects"))?;
    if let Some(shallow) = &fetched.shallow {
        write(&git_dir.join("shallow"), shallow)?;
    }

    let repo = Repository::open(path).map_err(|e| git("opening the repository", e))?;
    {
        let mut config = repo.config().map_err(|e| git("opening the config", e))?;
        let settings = [
            ("user.name", cfg.author_name.as_str()),
            ("user.email", cfg.author_email.as_str()),
            (&format!("branch.{branch}.remote"), "origin"),
            (&format!("branch.{branch}.merge"), branch_ref.as_str()),
        ];
        for (key, value) in settings {
            config
                .set_str(key, value)
                .map_err(|e| git(&format!("setting {key}"), e))?;
        }
    }
    let commit = repo
        .find_commit(fetched.commit)
        .map_err(|e| git("reading the base commit", e))?;
    repo.reference(&branch_ref, commit.id(), true, "outpost: task branch")
        .map_err(|e| git(&format!("creating the branch {branch}"), e))?;
    repo.set_head(&branch_ref)
        .map_err(|e| git(&format!("switching to {branch}"), e))?;
    // The files come from the commit's template (built now if this is the first task
    // on this commit); a plain checkout when that is not possible.
    if let Some(template) = template::ensure(&fetched.cache_dir, fetched.commit) {
        let tree = commit.tree().map_err(|e| git("reading the base tree", e))?;
        let mut index = repo.index().map_err(|e| git("opening the index", e))?;
        index
            .read_tree(&tree)
            .map_err(|e| git("building the index", e))?;
        // Files and symlinks; submodules (gitlinks) have no file in a checkout.
        let entries: Vec<git2::Oid> = index
            .iter()
            .filter(|e| e.mode != 0o160000)
            .map(|e| e.id)
            .collect();
        let expected = entries.len();
        // The copy must not hide a damaged cache, which the worktree borrows objects
        // from: every blob must be there, as a checkout would require.
        let odb = repo.odb().map_err(|e| git("opening the object store", e))?;
        if let Some(missing) = entries.iter().find(|id| !odb.exists(**id)) {
            let e = git2::Error::new(
                ErrorCode::NotFound,
                ErrorClass::Odb,
                format!("object {missing} is missing"),
            );
            return Err(git("checking the cache's objects", e));
        }
        // A spare copied ahead is a few renames; else the files are copied now. Either
        // way the next spare is begun right after the take, off this task's path: when
        // this task copies, beside its copy (a task on the same commit that comes as
        // this one ends then finds it made, or nearly: docs/bench.md, tenth session).
        let taken = match spare::take(&template, path, expected) {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!(template = %template.display(), "a spare checkout could not be moved in ({e}); copying instead");
                template::clear_worktree(path).map_err(|e| {
                    GitError::io(format!("clearing {shown} after a failed move"), e)
                })?;
                None
            }
        };
        spare::replenish(&template, cfg.spare_checkouts, cfg.spare_owner);
        let copied = if taken.is_some() {
            Ok(expected)
        } else {
            template::copy_into(&template, path)
        };
        match copied {
            Ok(n) if n == expected => {
                index.write().map_err(|e| git("writing the index", e))?;
                return Ok(taken.map(|t| t.owner));
            }
            result => {
                let e = match result {
                    Ok(n) => format!("{n} files where the tree has {expected}"),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(template = %template.display(), "the checkout template is unusable ({e}); checking out instead");
                template::clear_worktree(path).map_err(|e| {
                    GitError::io(format!("clearing {shown} after a failed copy"), e)
                })?;
            }
        }
    }
    let mut checkout = CheckoutBuilder::new();
    checkout.force();
    repo.checkout_head(Some(&mut checkout))
        .map_err(|e| git("checking out the files", e))?;
    Ok(None)
}

/// Hard-links every object file of the cache (packs, their indexes, loose objects)
/// into the worktree's object store, made read-only for everyone first: the agent may
/// read this repository's objects through its worktree, and can change none of them.
fn link_objects(cache_objects: &Path, objects: &Path) -> Result<(), GitError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: String| move |e: std::io::Error| GitError::io(what, e);
    let rd = std::fs::read_dir(cache_objects)
        .map_err(io(format!("reading {}", cache_objects.display())))?;
    for dir in rd.flatten() {
        let name = dir.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_fanout = name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit());
        if !(is_fanout || name == "pack") || !dir.path().is_dir() {
            continue;
        }
        let to_dir = objects.join(name);
        std::fs::create_dir_all(&to_dir).map_err(io(format!("creating {}", to_dir.display())))?;
        let files = std::fs::read_dir(dir.path())
            .map_err(io(format!("reading {}", dir.path().display())))?;
        for f in files.flatten() {
            let (from, to) = (f.path(), to_dir.join(f.file_name()));
            if !f.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o444))
                .map_err(io(format!("making {} read-only", from.display())))?;
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(io(format!("copying {}", from.display())))?;
            }
        }
    }
    Ok(())
}

/// Makes a worktree the agent had safe for the worker's git: `.git` must be a real
/// directory, and links out of it (alternates, a common dir) are removed, so the
/// worker reads and pushes this task's objects only.
pub(crate) fn sanitize(path: &Path) -> Result<(), GitError> {
    let git_dir = path.join(".git");
    let meta = std::fs::symlink_metadata(&git_dir)
        .map_err(|e| GitError::io(format!("looking at {}", git_dir.display()), e))?;
    if !meta.is_dir() {
        return Err(GitError::io(
            format!("using {}", git_dir.display()),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the agent replaced .git with something that is not a directory: nothing was committed",
            ),
        ));
    }
    for rel in [
        "objects/info/alternates",
        "objects/info/http-alternates",
        "commondir",
        "gitdir",
    ] {
        let _ = std::fs::remove_file(git_dir.join(rel));
    }
    Ok(())
}

/// Deletes a worktree directory; a missing one is fine.
pub(crate) fn remove_dir(path: &Path) -> Result<(), GitError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GitError::io(
            format!("removing the worktree {}", path.display()),
            e,
        )),
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), GitError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| GitError::io(format!("creating {}", parent.display()), e))?;
    }
    std::fs::write(path, bytes).map_err(|e| GitError::io(format!("writing {}", path.display()), e))
}
