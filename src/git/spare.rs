//! Checkouts copied ahead ("spares"): beside the template of a commit,
//! `<templates>/<key>/<commit>.spare-<files>-<pid>-<n>` is a whole copy of its files
//! (`<files>` files and symlinks), so that the next task on the commit gets its files
//! by renames instead of a copy (the copy of a checkout is most of a warm start).
//!
//! A spare is copied on a background thread into a `.tmp-` directory and renamed into
//! place once whole. A task takes one by renaming it to a name of its own, so no two
//! tasks ever share one, then moves its top-level entries into the worktree; and asks
//! for a new one, begun as soon as its own files are taken or being copied (a task that
//! finds none while one is being made waits for it, unless another task already does).
//! Spares sit beside their template, out of every agent's reach, and go with it
//! (`template::prune_others`).
//!
//! A spare also brings its worktree's index, made once its files were final (copied,
//! given to their owner): `.git/index`, built from the commit's tree with every file's
//! stat data. The task then need not look at its 2,000 files again before the agent
//! starts (`index_stat`); only the top-level entries, whose move changed their ctime.
//! This module owns the set of spare makers running now.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use git2::Oid;

use super::{index_stat, template};
use crate::process::ownership::{chown_tree, RootOwned};

/// A spare maker running now.
struct Maker {
    template: PathBuf,
    /// A task found no spare and waits for this maker's (the others copy).
    awaited: bool,
    /// Its thread, once started: it runs at a background priority, given back the
    /// normal one when a task waits for it.
    tid: Option<i32>,
}

/// The spare makers running now, and a signal each time one makes a spare or ends.
static MAKERS: Mutex<Vec<Maker>> = Mutex::new(Vec::new());
static MADE: Condvar = Condvar::new();

fn makers() -> MutexGuard<'static, Vec<Maker>> {
    MAKERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wakes the tasks waiting on [`MADE`], under the lock: a task checking for spares
/// right now then sees the change or is already waiting for it.
fn announce() {
    let _held = makers();
    MADE.notify_all();
}

/// How long a task waits for a spare being made rather than copying its own.
const AWAIT_MAX: Duration = Duration::from_secs(5);

/// `(the template's directory, the template's name)`.
fn split(template: &Path) -> Option<(&Path, String)> {
    let dir = template.parent()?;
    let name = template.file_name()?.to_str()?.to_string();
    Some((dir, name))
}

/// The spares of `template` now: `(path, files)`.
fn spares(template: &Path) -> Vec<(PathBuf, usize)> {
    let Some((dir, name)) = split(template) else {
        return Vec::new();
    };
    let prefix = format!("{name}.spare-");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let files = n
                .to_str()?
                .strip_prefix(&prefix)?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            Some((e.path(), files))
        })
        .collect()
}

/// Whether `name` (an entry beside a template) is a spare of the template `keep`.
pub(crate) fn is_spare_of(name: &str, keep: &str) -> bool {
    name.strip_prefix(keep)
        .is_some_and(|rest| rest.starts_with(".spare-"))
}

/// A spare moved into a worktree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// The uid and gid its files were given to when it was made: the owner of its top
    /// directory, since `make` gives the whole tree or renames none of it (made with
    /// no owner, they are the worker's).
    pub owner: (u32, u32),
    /// Its index (stat data recorded) was moved to the worktree's `.git/index`.
    pub index: bool,
}

/// Moves the files of a spare of `template` with `files` files into `dest` (a new
/// worktree: its `.git` only). `Ok(None)`: there was none to take. On `Err` some
/// files may have been moved: the caller clears `dest` before copying instead.
pub(crate) fn take(template: &Path, dest: &Path, files: usize) -> io::Result<Option<Taken>> {
    use std::os::unix::fs::MetadataExt;
    let Some((dir, name)) = split(template) else {
        return Ok(None);
    };
    let mut found = spares(template);
    if found.is_empty() {
        found = await_one(template);
    }
    for (spare, n) in found {
        let taken = dir.join(format!("{name}.tmp-{}-taken", crate::trash::unique()));
        // Another task may take the same one first: then this rename fails.
        if fs::rename(&spare, &taken).is_err() {
            continue;
        }
        if n != files {
            // Copied from a template that did not match its tree: never used.
            let _ = fs::remove_dir_all(&taken);
            continue;
        }
        let moved = fs::symlink_metadata(&taken).and_then(|m| {
            move_entries(&taken, dest).map(|index| Taken {
                owner: (m.uid(), m.gid()),
                index,
            })
        });
        let _ = fs::remove_dir_all(&taken);
        return moved.map(Some);
    }
    Ok(None)
}

/// Where a spare of `template` is being made and no other task waits for it: waits
/// until it is there (the rest of a copy under way is quicker than a copy), at most
/// [`AWAIT_MAX`].
fn await_one(template: &Path) -> Vec<(PathBuf, usize)> {
    let deadline = Instant::now() + AWAIT_MAX;
    let mut running = makers();
    match running.iter_mut().find(|m| m.template == template) {
        Some(m) if !m.awaited => {
            m.awaited = true;
            if let Some(tid) = m.tid {
                crate::background::restore_priority(tid);
            }
        }
        _ => return Vec::new(),
    }
    let found = loop {
        let found = spares(template);
        let making = running.iter().any(|m| m.template == template);
        let left = deadline.checked_duration_since(Instant::now());
        match left {
            Some(left) if found.is_empty() && making => {
                running = MADE
                    .wait_timeout(running, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            _ => break found,
        }
    };
    if let Some(m) = running.iter_mut().find(|m| m.template == template) {
        m.awaited = false;
    }
    found
}

/// Moves the spare's files into the worktree `to`, and its index (a tree never has a
/// top-level `.git`) into `to/.git`. Returns whether the index was moved.
fn move_entries(from: &Path, to: &Path) -> io::Result<bool> {
    let mut index = false;
    for e in fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == ".git" {
            index = fs::rename(e.path().join("index"), to.join(".git").join("index")).is_ok();
            continue;
        }
        fs::rename(e.path(), to.join(e.file_name()))?;
    }
    Ok(index)
}

/// Where a spare's index comes from: the cache (bare) and the template's commit.
#[derive(Debug, Clone)]
pub(crate) struct IndexSource {
    pub cache_dir: PathBuf,
    pub commit: Oid,
}

/// Starts making spares of `template` in the background until `keep` are there,
/// unless a maker for it runs already. Never blocks on the copy.
pub(crate) fn replenish(
    template: &Path,
    index: Option<IndexSource>,
    keep: usize,
    owner: Option<(u32, u32)>,
) {
    if keep == 0 || spares(template).len() >= keep {
        return;
    }
    let t = template.to_path_buf();
    start_maker(template, move || {
        make_spares(&t, index.as_ref(), keep, owner)
    });
}

/// Builds the template of `src.commit` in the background, then its spares as
/// [`replenish`] does, unless a maker for it runs already: the first task on a commit
/// checks out into its own worktree, as `git clone` would, instead of checking out
/// into the template and then copying it.
pub(crate) fn build_template(src: IndexSource, keep: usize, owner: Option<(u32, u32)>) {
    let template = template::path_of(&src.cache_dir, src.commit);
    start_maker(&template, move || {
        if let Some(t) = template::ensure(&src.cache_dir, src.commit) {
            make_spares(&t, Some(&src), keep, owner);
        }
    });
}

/// Runs `work` on a thread of its own as the maker for `template`, unless one runs.
fn start_maker(template: &Path, work: impl FnOnce() + Send + 'static) {
    let mut running = makers();
    if running.iter().any(|m| m.template == template) {
        return;
    }
    running.push(Maker {
        template: template.to_path_buf(),
        awaited: false,
        tid: None,
    });
    let t = template.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("outpost-spare".into())
        .spawn(move || {
            // Under the lock: a task that waits for this maker sees its thread, or has
            // already marked it awaited (then it keeps the normal priority).
            if let Some(m) = makers().iter_mut().find(|m| m.template == t) {
                m.tid = Some(nix::unistd::gettid().as_raw());
                if !m.awaited {
                    crate::background::lower_priority("copying a checkout ahead");
                }
            }
            work();
            makers().retain(|m| m.template != t);
            announce();
        });
    if let Err(e) = spawned {
        tracing::debug!(template = %template.display(), "no spare checkout: starting a thread: {e}");
        running.retain(|m| m.template != template);
    }
}

/// Makes spares of `template` until `keep` are there; bounded: at most `keep` copies,
/// and the first failure ends it.
fn make_spares(
    template: &Path,
    index: Option<&IndexSource>,
    keep: usize,
    owner: Option<(u32, u32)>,
) {
    for _ in 0..keep {
        if spares(template).len() >= keep {
            break;
        }
        let made = make(template, index, owner);
        announce();
        if let Err(e) = made {
            tracing::debug!(template = %template.display(), "no spare checkout: {e}");
            break;
        }
    }
}

/// One spare of `template`: copied whole into a `.tmp-` directory (given to `owner`),
/// its index written from `index` (a spare without one still serves), then renamed.
fn make(template: &Path, index: Option<&IndexSource>, owner: Option<(u32, u32)>) -> io::Result<()> {
    let Some((dir, name)) = split(template) else {
        return Err(io::Error::other("a template without a parent"));
    };
    let id = crate::trash::unique();
    let tmp = dir.join(format!("{name}.tmp-{id}-spare"));
    let made = fs::create_dir(&tmp)
        .and_then(|()| template::copy_into(template, &tmp))
        .and_then(|files| match owner {
            Some((uid, gid)) => {
                chown_tree(&tmp, uid, gid, usize::MAX, RootOwned::Give).map(|()| files)
            }
            None => Ok(files),
        })
        .inspect(|_| {
            if let Some(src) = index {
                if let Err(e) = write_index(&tmp, src, owner) {
                    tracing::debug!(template = %template.display(), "a spare without its index: {e}");
                    let _ = fs::remove_dir_all(tmp.join(".git"));
                }
            }
        })
        .and_then(|files| fs::rename(&tmp, dir.join(format!("{name}.spare-{files}-{id}"))));
    if made.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    made
}

/// Writes `spare/.git/index` (given to `owner`, as the whole spare is): the tree of
/// `src.commit` with the stat data of the spare's files, which are final (copied and
/// given to their owner).
fn write_index(
    spare: &Path,
    src: &IndexSource,
    owner: Option<(u32, u32)>,
) -> Result<usize, git2::Error> {
    let repo = git2::Repository::open_bare(&src.cache_dir)?;
    let tree = repo.find_commit(src.commit)?.tree()?;
    let git = spare.join(".git");
    fs::create_dir(&git).map_err(|e| git2::Error::from_str(&format!("creating .git: {e}")))?;
    let mut index = git2::Index::open(&git.join("index"))?;
    index.read_tree(&tree)?;
    let recorded = index_stat::fill_entries(&mut index, spare, |_| true)?;
    index.write()?;
    if let Some((uid, gid)) = owner {
        chown_tree(&git, uid, gid, 1, RootOwned::Give)
            .map_err(|e| git2::Error::from_str(&e.to_string()))?;
    }
    Ok(recorded)
}

/// Waits until no spare is being made (at most `timeout`); false if one still is.
pub fn settle(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut running = makers();
    while !running.is_empty() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        running = MADE
            .wait_timeout(running, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template_with(dir: &Path, files: usize) -> PathBuf {
        let t = dir.join("0123abcd");
        fs::create_dir_all(t.join("sub")).unwrap();
        for i in 0..files {
            fs::write(t.join("sub").join(format!("f{i}")), format!("{i}\n")).unwrap();
        }
        t
    }

    /// A template of `files` files in a new temporary directory, with its spare made.
    fn with_spare(files: usize) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let t = template_with(tmp.path(), files);
        replenish(&t, None, 1, None);
        assert!(settle(Duration::from_secs(30)));
        (tmp, t)
    }

    #[test]
    fn a_spare_is_made_taken_once_and_made_again() {
        let (tmp, t) = with_spare(3);
        assert_eq!(spares(&t).iter().map(|s| s.1).collect::<Vec<_>>(), [3]);

        let dest = tmp.path().join("wt");
        fs::create_dir_all(dest.join(".git")).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let Some(taken) = take(&t, &dest, 3).unwrap() else {
            panic!("the spare was not taken");
        };
        assert_eq!(taken.owner.0, me, "made by this process, for no one else");
        assert_eq!(fs::read_to_string(dest.join("sub/f2")).unwrap(), "2\n");
        assert!(dest.join(".git").is_dir());
        // Taken: nothing left to take, and nothing left behind beside the template.
        let other = tmp.path().join("wt2");
        fs::create_dir_all(&other).unwrap();
        assert_eq!(take(&t, &other, 3).unwrap(), None);
        let names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
        // The worktree's files are its own: changing one leaves the template alone.
        fs::write(dest.join("sub/f0"), "changed\n").unwrap();
        assert_eq!(fs::read_to_string(t.join("sub/f0")).unwrap(), "0\n");

        replenish(&t, None, 1, None);
        replenish(&t, None, 1, None);
        assert!(settle(Duration::from_secs(30)));
        assert_eq!(spares(&t).len(), 1, "one maker at a time, up to `keep`");
    }

    #[test]
    fn a_spare_that_does_not_match_the_tree_is_thrown_away_not_used() {
        let (tmp, t) = with_spare(2);
        let dest = tmp.path().join("wt");
        fs::create_dir_all(&dest).unwrap();
        // The tree has 3 files: the spare (2) came from a damaged template.
        assert_eq!(take(&t, &dest, 3).unwrap(), None);
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
        assert!(spares(&t).is_empty());
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            2,
            "only the template and the worktree"
        );
    }

    /// A maker runs at the background priority until a task waits for it.
    #[test]
    fn a_maker_a_task_waits_for_runs_at_the_normal_priority() {
        let tmp = tempfile::tempdir().unwrap();
        let t = template_with(tmp.path(), 1);
        // A maker whose work lasts until the test lets it end.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        start_maker(&t, move || {
            let _ = wait.recv();
        });
        let tid_of = || {
            makers()
                .iter()
                .find(|m| m.template == t)
                .and_then(|m| m.tid)
        };
        let mut tid = None;
        for _ in 0..5000 {
            tid = tid_of();
            if tid.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let tid = tid.expect("the maker's thread never started");
        // Its priority was lowered under the lock its tid was recorded under.
        assert_eq!(
            crate::background::nice_of(tid),
            Some(crate::background::NICE)
        );

        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || await_one(&t))
        };
        let mut awaited = false;
        for _ in 0..5000 {
            awaited = makers().iter().any(|m| m.template == t && m.awaited);
            if awaited {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(awaited, "the task never waited for the maker");
        // Raising a priority takes CAP_SYS_NICE: a worker run as root has it.
        let want = if nix::unistd::geteuid().is_root() {
            0
        } else {
            crate::background::NICE
        };
        assert_eq!(crate::background::nice_of(tid), Some(want));
        go.send(()).unwrap();
        assert!(waiter.join().unwrap().is_empty(), "no spare was made");
        assert!(settle(Duration::from_secs(30)));
    }

    #[test]
    fn none_are_made_when_none_are_wanted() {
        let tmp = tempfile::tempdir().unwrap();
        let t = template_with(tmp.path(), 1);
        replenish(&t, None, 0, None);
        assert!(settle(Duration::from_secs(30)));
        assert!(spares(&t).is_empty());
        assert!(is_spare_of("0123abcd.spare-1-2-3", "0123abcd"));
        assert!(!is_spare_of("0123abcd.tmp-2-3-spare", "0123abcd"));
        assert!(!is_spare_of("99.spare-1-2-3", "0123abcd"));
    }
}
