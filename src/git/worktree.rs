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
use git2::{ErrorClass, ErrorCode, Repository};

use super::cache::Fetched;
use super::error::GitError;
use super::remote_url::RemoteUrl;
use super::{spare, template};
use super::{GitConfig, MadeAhead};
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
/// was left at `path` by an earlier run of the same task id). Returns how its files
/// were made ahead when they came from a spare (None: they are the worker's, as made,
/// and the index has no stat data).
pub(crate) fn create(
    cfg: &GitConfig,
    fetched: &Fetched,
    remote: &RemoteUrl,
    branch: &str,
    path: &Path,
) -> Result<Option<MadeAhead>, CreateError> {
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
    let git_dir = path.join(".git");
    write_git_dir(&git_dir, cfg, remote, branch, fetched.commit)?;

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
    let commit = repo
        .find_commit(fetched.commit)
        .map_err(|e| git("reading the base commit", e))?;
    // The files come from the commit's template; the first task on a commit checks
    // out (as `git clone` does) while the template and a spare are made in the
    // background for the tasks after it. A plain checkout too when a template is not
    // usable.
    let template = template::path_of(&fetched.cache_dir, fetched.commit);
    let source = spare::IndexSource {
        cache_dir: fetched.cache_dir.clone(),
        commit: fetched.commit,
    };
    let first_on_commit = !template.is_dir();
    if !first_on_commit {
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
        spare::replenish(
            &template,
            Some(source.clone()),
            cfg.spare_checkouts,
            cfg.spare_owner,
        );
        let copied = if taken.is_some() {
            Ok(expected)
        } else {
            template::copy_into(&template, path)
        };
        match copied {
            Ok(n) if n == expected => {
                let stat_recorded = match taken {
                    Some(t) if t.index => adopt_index(&mut index, &tree, path)
                        .map_err(|e| git("taking the spare's index", e))?,
                    _ => false,
                };
                index.write().map_err(|e| git("writing the index", e))?;
                return Ok(taken.map(|t| MadeAhead {
                    owner: t.owner,
                    stat_recorded,
                }));
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
    if first_on_commit {
        // Once this task's own checkout is done: the two would share the CPUs and disk.
        spare::build_template(source, cfg.spare_checkouts, cfg.spare_owner);
    }
    Ok(None)
}

/// Writes a new worktree's `.git` as `git init` and `git checkout -b` leave it: HEAD on
/// `refs/heads/<branch>` at `commit`, the remote `origin`, the worker's author, the
/// branch's upstream. One write per file: libgit2's init probed the file system and
/// rewrote `config` for each setting, 3.5-4 ms of a warm start (docs/bench.md).
fn write_git_dir(
    git_dir: &Path,
    cfg: &GitConfig,
    remote: &RemoteUrl,
    branch: &str,
    commit: git2::Oid,
) -> Result<(), GitError> {
    let branch_ref = format!("refs/heads/{branch}");
    let config = format!(
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\
         \tlogallrefupdates = true\n\
         [remote \"origin\"]\n\turl = {}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n\
         [user]\n\tname = {}\n\temail = {}\n\
         [branch {}]\n\tremote = origin\n\tmerge = {}\n",
        config_value(&remote.url),
        config_value(&cfg.author_name),
        config_value(&cfg.author_email),
        config_value(branch),
        config_value(&branch_ref),
    );
    for dir in ["objects/info", "objects/pack", "refs/tags"] {
        let d = git_dir.join(dir);
        std::fs::create_dir_all(&d)
            .map_err(|e| GitError::io(format!("creating {}", d.display()), e))?;
    }
    write(&git_dir.join("config"), config.as_bytes())?;
    write(&git_dir.join(&branch_ref), format!("{commit}\n").as_bytes())?;
    write(
        &git_dir.join("HEAD"),
        format!("ref: {branch_ref}\n").as_bytes(),
    )
}

/// `v` as a quoted git config value (or subsection name): `"` and `\` escaped, a
/// newline as `\n`.
fn config_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Takes the index a spare brought to `root/.git/index` (its files' stat data recorded
/// when it was made) in place of `index` (the worktree's, built from `tree` and not yet
/// written), if it lists the very same entries; then records the stat data of the
/// top-level entries again, since their move into the worktree changed their ctime.
/// Ok(false), with `index` built from `tree` again, when it does not match.
fn adopt_index(
    index: &mut git2::Index,
    tree: &git2::Tree,
    root: &Path,
) -> Result<bool, git2::Error> {
    let listing = |index: &git2::Index| -> Vec<(Vec<u8>, git2::Oid, u32)> {
        index.iter().map(|e| (e.path, e.id, e.mode)).collect()
    };
    let from_tree = listing(index);
    // `index` is bound to `.git/index`: read it again, from the file the spare brought.
    if index.read(true).is_err() || listing(index) != from_tree {
        tracing::warn!(worktree = %root.display(), "a spare's index does not match its tree: not used");
        index.read_tree(tree)?;
        return Ok(false);
    }
    super::index_stat::fill_entries(index, root, |p| !p.contains(&b'/'))?;
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn git_cli(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .expect("running git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim_end()
            .to_string()
    }

    /// The `.git` written by hand is one git reads as `init` + `checkout -b` leave it,
    /// values that need quoting included.
    #[test]
    fn the_git_dir_written_by_hand_reads_back_in_git() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let wt = tmp.path().join("wt");
        let mut cfg = GitConfig::new(tmp.path());
        cfg.author_name = "A \"quoted\" name; # not a comment \\ end".into();
        cfg.author_email = "a@b.c".into();
        let remote =
            super::super::remote_url::parse("https://example.com/o/r;x.git", false).expect("url");
        let commit = git2::Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid");
        write_git_dir(&wt.join(".git"), &cfg, &remote, "polecat/t-1", commit).expect("write");

        assert_eq!(git_cli(&wt, &["config", "user.name"]), cfg.author_name);
        assert_eq!(git_cli(&wt, &["config", "user.email"]), "a@b.c");
        assert_eq!(git_cli(&wt, &["config", "remote.origin.url"]), remote.url);
        assert_eq!(
            git_cli(&wt, &["config", "branch.polecat/t-1.merge"]),
            "refs/heads/polecat/t-1"
        );
        assert_eq!(
            git_cli(&wt, &["config", "branch.polecat/t-1.remote"]),
            "origin"
        );
        assert_eq!(git_cli(&wt, &["config", "core.bare"]), "false");
        assert_eq!(
            git_cli(&wt, &["symbolic-ref", "HEAD"]),
            "refs/heads/polecat/t-1"
        );
        assert_eq!(
            git_cli(
                &wt,
                &["rev-parse", "--verify", "-q", "refs/heads/polecat/t-1"]
            ),
            commit.to_string()
        );
        let repo = Repository::open(&wt).expect("libgit2 opens it");
        assert!(!repo.is_bare());
        assert_eq!(
            repo.config()
                .and_then(|c| c.get_string("user.name"))
                .expect("user.name"),
            cfg.author_name
        );
        assert_eq!(config_value("a\nb"), "\"a\\nb\"");
    }
}
