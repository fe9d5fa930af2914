//! Pristine checkouts of fetched commits ("templates"), kept beside the cache as
//! `<data>/git/templates/<cache key>/<commit>`. Every task copies the template's files
//! into its worktree, which is several times faster than checking the commit out again
//! (no inflating, no filters, no per-file object lookups). The first task on a commit
//! checks out into its own worktree, as `git clone` does, and the template is built
//! beside it in the background (`spare::build_template`); later tasks copy it, or take a
//! copy of it made ahead (`spare`).
//!
//! A template is checked out into a temporary directory renamed into place, so it is
//! either complete or absent; older templates of the same cache (and their spares,
//! see `spare`) are removed then. A
//! template is named by its commit, so it stays valid whatever happens to the cache.
//! Any failure to build or use one falls back to a plain checkout.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::build::CheckoutBuilder;
use git2::{Oid, Repository};

use super::spare;
use crate::placement;

/// Directories deeper than this are not copied (a template comes from a git tree).
const MAX_DEPTH: usize = 512;

/// Where the templates of the cache at `cache_dir` (`<data>/git/cache/<key>`) live.
fn dir_of(cache_dir: &Path) -> PathBuf {
    let git_dir = cache_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(cache_dir);
    git_dir.join("templates").join(file_name(cache_dir))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copies the template's files into `dest` (which exists; its `.git` is left alone).
/// Returns how many files and symlinks it copied.
pub(crate) fn copy_into(template: &Path, dest: &Path) -> io::Result<usize> {
    let mut copied = 0;
    let mut stack = vec![(template.to_path_buf(), dest.to_path_buf(), 0usize)];
    while let Some((from, to, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "{} is nested too deeply",
                from.display()
            )));
        }
        for entry in fs::read_dir(&from)? {
            let entry = entry?;
            let (src, dst) = (entry.path(), to.join(entry.file_name()));
            let kind = entry.file_type()?;
            if kind.is_dir() {
                let mode = entry.metadata()?.permissions().mode();
                fs::DirBuilder::new().mode(mode).create(&dst)?;
                stack.push((src, dst, depth + 1));
            } else if kind.is_symlink() {
                symlink(fs::read_link(&src)?, &dst)?;
                copied += 1;
            } else {
                fs::copy(&src, &dst)?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

/// Removes everything in `dir` but its `.git` (after a failed copy).
pub(crate) fn clear_worktree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == ".git" {
            continue;
        }
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Where the template of `commit` is (or would be).
pub(crate) fn path_of(cache_dir: &Path, commit: Oid) -> PathBuf {
    dir_of(cache_dir).join(commit.to_string())
}

/// The template of `commit`, built from the cache's objects if it is not there yet;
/// None when it cannot be built (the caller checks out instead).
pub(crate) fn ensure(cache_dir: &Path, commit: Oid) -> Option<PathBuf> {
    let dir = dir_of(cache_dir);
    let target = path_of(cache_dir, commit);
    if target.is_dir() {
        return Some(target);
    }
    for d in [dir.parent(), Some(dir.as_path())].into_iter().flatten() {
        if fs::create_dir_all(d).is_ok() {
            placement::spread_children(d);
        }
    }
    let tmp = dir.join(format!(
        "{commit}.tmp-{}-{}",
        std::process::id(),
        crate::timefmt::now_unix_ms()
    ));
    let built = checkout_to(cache_dir, commit, &tmp);
    let placed = built.and_then(|()| match fs::rename(&tmp, &target) {
        Ok(()) => Ok(()),
        // Another task put the same template in place first: use that one.
        Err(_) if target.is_dir() => Ok(()),
        Err(e) => Err(format!("renaming {} into place: {e}", tmp.display())),
    });
    let _ = fs::remove_dir_all(&tmp);
    match placed {
        Ok(()) => {
            prune_others(&dir, &target);
            Some(target)
        }
        Err(e) => {
            tracing::debug!(cache = %cache_dir.display(), "no checkout template: {e}");
            None
        }
    }
}

fn checkout_to(cache_dir: &Path, commit: Oid, dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let repo = Repository::open_bare(cache_dir).map_err(|e| e.message().to_string())?;
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| e.message().to_string())?;
    let mut opts = CheckoutBuilder::new();
    opts.target_dir(dir).force().update_index(false);
    repo.checkout_tree(tree.as_object(), Some(&mut opts))
        .map_err(|e| e.message().to_string())
}

/// A `.tmp-` directory this old is left by a worker that stopped while building: a
/// template or a spare takes seconds.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// Removes the other templates and their spares (and leftovers of interrupted builds)
/// of the same cache.
fn prune_others(dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let keep_name = file_name(keep);
    for entry in entries.flatten() {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if p == keep || spare::is_spare_of(&name, &keep_name) {
            continue;
        }
        // Builds still running (`.tmp-`) are not ours to remove; ones left long ago are.
        if name.contains(".tmp-") {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if stale {
                let _ = fs::remove_dir_all(&p);
            }
            continue;
        }
        // Renamed away first: a task copying from it then fails outright (and checks
        // out instead) rather than copying a half-deleted tree.
        let trash = dir.join(format!("{name}.trash-{}", std::process::id()));
        if name.contains(".trash-") {
            let _ = fs::remove_dir_all(&p);
        } else if fs::rename(&p, &trash).is_ok() {
            let _ = fs::remove_dir_all(&trash);
        }
    }
}
