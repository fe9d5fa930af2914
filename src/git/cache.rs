//! The repository cache on the data dir: `<data>/git/cache/<key>/`, one bare, shallow
//! (depth 1) repository per remote URL, shared by every task on that repository.
//!
//! Everything here runs under the cache's lock. A fetch is bracketed by a marker file
//! written before and removed after, so a cache whose fetch was killed halfway is
//! recognized on the next use and rebuilt from scratch rather than trusted; so is one
//! that cannot be opened or whose refs point at missing objects.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use git2::{Direction, Oid, Repository};

use super::error::GitError;
use super::lock::CacheLock;
use super::progress::{shallow_fetch_options, Progress};
use super::remote_url::{cache_key, RemoteUrl};
use super::{transport, GitConfig};
use crate::placement;

/// Present while a fetch into the cache is under way.
const MARKER: &str = "outpost-fetch-in-progress";

/// What a task needs from the cache to build its worktree.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The cache repository (its `objects` directory becomes the task's alternate).
    pub cache_dir: PathBuf,
    /// The commit the task starts from.
    pub commit: Oid,
    /// The remote ref it came from (`refs/heads/main`), or the hex id when fetched by id.
    pub remote_ref: String,
    /// The cache's `shallow` file at the time of the fetch, if it has one.
    pub shallow: Option<Vec<u8>>,
}

/// What the last fetch of each (cache, asked-for ref) found: the remote ref and its
/// commit. A guess for the next task on it, made before the server is asked
/// ([`last_fetched`]); never trusted without that answer.
static LAST: Mutex<Vec<Last>> = Mutex::new(Vec::new());

struct Last {
    dir: PathBuf,
    asked: Option<String>,
    remote_ref: String,
    commit: Oid,
}

/// Guesses kept at most (a worker sees few repositories; past this they start over).
const LAST_MAX: usize = 256;

/// The ref as asked for, for [`LAST`]: blank means the default branch.
fn asked(git_ref: Option<&str>) -> Option<String> {
    git_ref
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

fn remember(dir: &Path, git_ref: Option<&str>, remote_ref: &str, commit: Oid) {
    let key = asked(git_ref);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    last.retain(|l| !(l.dir == dir && l.asked == key));
    if last.len() >= LAST_MAX {
        last.clear();
    }
    last.push(Last {
        dir: dir.to_path_buf(),
        asked: key,
        remote_ref: remote_ref.to_string(),
        commit,
    });
}

/// What the last [`fetch`] of `git_ref` from `remote` in this process found, with the
/// cache's `shallow` file as it is now: the likely answer of the next fetch, read
/// without the network or the cache's lock. None when nothing was fetched yet.
pub(crate) fn last_fetched(
    cfg: &GitConfig,
    remote: &RemoteUrl,
    git_ref: Option<&str>,
) -> Option<Fetched> {
    let (dir, _) = paths(cfg, remote);
    let key = asked(git_ref);
    let (remote_ref, commit) = {
        let last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let l = last.iter().find(|l| l.dir == dir && l.asked == key)?;
        (l.remote_ref.clone(), l.commit)
    };
    let shallow = read_shallow(&dir).ok()?;
    Some(Fetched {
        cache_dir: dir,
        commit,
        remote_ref,
        shallow,
    })
}

/// The cache's `shallow` file, if it has one.
fn read_shallow(dir: &Path) -> Result<Option<Vec<u8>>, GitError> {
    match std::fs::read(dir.join("shallow")) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GitError::io(
            format!("reading {}/shallow", dir.display()),
            e,
        )),
    }
}

/// Where the cache for `remote` lives, and its lock file.
fn paths(cfg: &GitConfig, remote: &RemoteUrl) -> (PathBuf, PathBuf) {
    let root = cfg.data_dir.join("git").join("cache");
    let key = cache_key(remote);
    (root.join(&key), root.join(format!("{key}.lock")))
}

/// Brings the cache for `remote` up to date with `git_ref` (default: the remote HEAD's
/// branch), fetching shallowly only when the commit is not there yet.
pub(crate) fn fetch(
    cfg: &GitConfig,
    remote: &RemoteUrl,
    git_ref: Option<&str>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fetched, GitError> {
    let (dir, lock_path) = paths(cfg, remote);
    let _lock = CacheLock::acquire(&lock_path, cfg.lock_timeout)?;
    let repo = open_healthy(&dir, remote)?;
    let token = cfg.token.as_deref();

    let session = transport::begin(cfg, remote)?;
    let mut origin = repo
        .remote_anonymous(&remote.url)
        .map_err(|e| GitError::git(format!("setting up the remote {}", remote.url), &e, token))?;
    let mut conn = origin
        .connect_auth(Direction::Fetch, None, None)
        .map_err(|e| session.map_err("connecting to", &e))?;
    let target = {
        let heads = conn
            .list()
            .map_err(|e| session.map_err("listing the refs of", &e))?;
        let heads: Vec<(String, Oid)> = heads
            .iter()
            .map(|h| (h.name().to_string(), h.oid()))
            .collect();
        let default = conn
            .default_branch()
            .ok()
            .and_then(|b| b.as_str().map(str::to_string));
        resolve(&heads, default.as_deref(), git_ref, remote)?
    };

    if peel_commit(&repo, target.oid).is_none() {
        let marker = dir.join(MARKER);
        std::fs::write(&marker, b"")
            .map_err(|e| GitError::io(format!("writing {}", marker.display()), e))?;
        let mut opts = shallow_fetch_options(progress);
        let refspec = format!("+{}:{}", target.remote_ref, target.local_ref);
        let fetched =
            conn.remote()
                .fetch(&[refspec.as_str()], Some(&mut opts), Some("outpost: fetch"));
        // An error return (not a kill) leaves libgit2's state consistent: clear the marker.
        let cleared = std::fs::remove_file(&marker);
        fetched.map_err(|e| session.map_err(&format!("fetching {} from", target.shown), &e))?;
        cleared.map_err(|e| GitError::io(format!("removing {}", marker.display()), e))?;
    } else if repo.refname_to_id(&target.local_ref).ok() != Some(target.oid) {
        // Up to date but for the ref (a warm start on an unchanged branch writes nothing).
        repo.reference(&target.local_ref, target.oid, true, "outpost: up to date")
            .map_err(|e| {
                GitError::git(
                    format!("updating {} in the cache", target.local_ref),
                    &e,
                    token,
                )
            })?;
    }
    drop(conn);

    let commit = peel_commit(&repo, target.oid).ok_or_else(|| GitError::Git {
        what: format!("fetching {} from {}", target.shown, remote.url),
        message: "the server did not send the commit".to_string(),
    })?;
    let shallow = read_shallow(&dir)?;
    remember(&dir, git_ref, &target.remote_ref, commit);
    Ok(Fetched {
        cache_dir: dir,
        commit,
        remote_ref: target.remote_ref,
        shallow,
    })
}

/// Marks the cache for `remote` as broken so that the next [`fetch`] rebuilds it (used
/// when a checkout finds objects missing).
pub(crate) fn invalidate(cfg: &GitConfig, remote: &RemoteUrl) -> Result<(), GitError> {
    let (dir, lock_path) = paths(cfg, remote);
    let _lock = CacheLock::acquire(&lock_path, cfg.lock_timeout)?;
    if dir.exists() {
        let marker = dir.join(MARKER);
        std::fs::write(&marker, b"")
            .map_err(|e| GitError::io(format!("writing {}", marker.display()), e))?;
    }
    Ok(())
}

/// The ref to fetch: where it is on the remote, where it goes in the cache, its id.
#[derive(Debug)]
struct Target {
    remote_ref: String,
    local_ref: String,
    oid: Oid,
    /// How to name it in messages.
    shown: String,
}

fn resolve(
    heads: &[(String, Oid)],
    default_branch: Option<&str>,
    git_ref: Option<&str>,
    remote: &RemoteUrl,
) -> Result<Target, GitError> {
    let find = |name: &str| heads.iter().find(|(n, _)| n == name).map(|(_, oid)| *oid);
    let target = |name: &str, oid: Oid| Target {
        remote_ref: name.to_string(),
        local_ref: name.to_string(),
        oid,
        shown: name.to_string(),
    };
    let Some(wanted) = git_ref.map(str::trim).filter(|r| !r.is_empty()) else {
        if heads.is_empty() {
            return Err(GitError::EmptyRepository {
                url: remote.url.clone(),
            });
        }
        if let Some(name) = default_branch {
            if let Some(oid) = find(name) {
                return Ok(target(name, oid));
            }
        }
        // No symref advertised: the branch HEAD points at, preferring main/master.
        let head = find("HEAD").ok_or_else(|| GitError::EmptyRepository {
            url: remote.url.clone(),
        })?;
        let mut branches: Vec<&(String, Oid)> = heads
            .iter()
            .filter(|(n, oid)| n.starts_with("refs/heads/") && *oid == head)
            .collect();
        branches
            .sort_by_key(|(n, _)| (n != "refs/heads/main", n != "refs/heads/master", n.clone()));
        return match branches.first() {
            Some((name, oid)) => Ok(target(name, *oid)),
            None => Err(GitError::EmptyRepository {
                url: remote.url.clone(),
            }),
        };
    };
    let candidates: Vec<String> = if wanted.starts_with("refs/") {
        vec![wanted.to_string()]
    } else {
        vec![
            format!("refs/heads/{wanted}"),
            format!("refs/tags/{wanted}"),
        ]
    };
    for name in &candidates {
        if let Some(oid) = find(name) {
            return Ok(target(name, oid));
        }
    }
    if wanted.len() == 40 && wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let Ok(oid) = Oid::from_str(wanted) {
            return Ok(Target {
                remote_ref: wanted.to_ascii_lowercase(),
                local_ref: format!("refs/outpost/commits/{}", wanted.to_ascii_lowercase()),
                oid,
                shown: format!("commit {wanted}"),
            });
        }
    }
    Err(GitError::RefNotFound {
        url: remote.url.clone(),
        git_ref: wanted.to_string(),
    })
}

/// The commit `oid` names (peeling an annotated tag), if the cache has it.
fn peel_commit(repo: &Repository, oid: Oid) -> Option<Oid> {
    let commit = repo.find_object(oid, None).ok()?.peel_to_commit().ok()?;
    commit.tree().ok()?;
    Some(commit.id())
}

/// Whether `oid` is there, and for a commit its tree, for a tag what it points to.
fn object_complete(repo: &Repository, oid: Oid) -> bool {
    let mut oid = oid;
    // Tags of tags are rare; a few levels is plenty.
    for _ in 0..8 {
        let Ok(object) = repo.find_object(oid, None) else {
            return false;
        };
        match object.kind() {
            Some(git2::ObjectType::Commit) => {
                return object.as_commit().is_some_and(|c| c.tree().is_ok());
            }
            Some(git2::ObjectType::Tag) => match object.as_tag() {
                Some(tag) => oid = tag.target_id(),
                None => return false,
            },
            _ => return true,
        }
    }
    false
}

/// Opens the cache, rebuilding it when it is missing or not trustworthy.
fn open_healthy(dir: &Path, remote: &RemoteUrl) -> Result<Repository, GitError> {
    if dir.exists() {
        match check(dir) {
            Ok(repo) => return Ok(repo),
            Err(reason) => {
                tracing::warn!(cache = %dir.display(), %reason, "rebuilding the repository cache");
                std::fs::remove_dir_all(dir).map_err(|e| {
                    GitError::io(format!("removing the broken cache {}", dir.display()), e)
                })?;
            }
        }
    }
    if let Some(root) = dir.parent() {
        std::fs::create_dir_all(root)
            .map_err(|e| GitError::io(format!("creating {}", root.display()), e))?;
        placement::spread_children(root);
    }
    let mut opts = git2::RepositoryInitOptions::new();
    opts.bare(true)
        .mkpath(true)
        .no_reinit(true)
        .external_template(false);
    let repo = Repository::init_opts(dir, &opts).map_err(|e| {
        GitError::git(
            format!("creating the repository cache {}", dir.display()),
            &e,
            None,
        )
    })?;
    // For people inspecting the data dir; fetches use the URL directly. No token here.
    if let Ok(mut config) = repo.config() {
        let _ = config.set_str("outpost.url", &remote.url);
    }
    Ok(repo)
}

/// Why the cache at `dir` cannot be trusted, if it cannot.
fn check(dir: &Path) -> Result<Repository, String> {
    if dir.join(MARKER).exists() {
        return Err("a fetch into it was interrupted".to_string());
    }
    let repo =
        Repository::open_bare(dir).map_err(|e| format!("it does not open: {}", e.message()))?;
    let refs = repo
        .references()
        .map_err(|e| format!("its refs cannot be read: {}", e.message()))?;
    for reference in refs {
        let reference = reference.map_err(|e| format!("a ref cannot be read: {}", e.message()))?;
        let name = reference.name().unwrap_or("?").to_string();
        let Some(oid) = reference.target() else {
            continue;
        };
        if !object_complete(&repo, oid) {
            return Err(format!("{name} points to a missing object"));
        }
    }
    Ok(repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    #[test]
    fn resolves_default_branch_names_tags_and_ids() {
        let remote = super::super::remote_url::parse("https://h/o/r", false).unwrap();
        let heads = vec![
            ("HEAD".to_string(), oid(1)),
            ("refs/heads/dev".to_string(), oid(2)),
            ("refs/heads/main".to_string(), oid(1)),
            ("refs/tags/v1".to_string(), oid(3)),
        ];
        let t = resolve(&heads, Some("refs/heads/main"), None, &remote).unwrap();
        assert_eq!((t.remote_ref.as_str(), t.oid), ("refs/heads/main", oid(1)));
        let t = resolve(&heads, None, None, &remote).unwrap();
        assert_eq!(t.remote_ref, "refs/heads/main");
        assert_eq!(
            resolve(&heads, None, Some("dev"), &remote).unwrap().oid,
            oid(2)
        );
        assert_eq!(
            resolve(&heads, None, Some("v1"), &remote)
                .unwrap()
                .remote_ref,
            "refs/tags/v1"
        );
        let id = "ab".repeat(20);
        let t = resolve(&heads, None, Some(&id), &remote).unwrap();
        assert_eq!(t.local_ref, format!("refs/outpost/commits/{id}"));
        let err = resolve(&heads, None, Some("nope"), &remote).unwrap_err();
        assert!(matches!(err, GitError::RefNotFound { .. }), "{err}");
        assert!(matches!(
            resolve(&[], None, None, &remote),
            Err(GitError::EmptyRepository { .. })
        ));
    }
}
