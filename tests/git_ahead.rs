//! A warm task's worktree is made from the last fetch's commit while the server is asked
//! which commit the branch is at, and kept only when the answer is the same. The server
//! holds its ref listing (the warm fetch's check) so each case is seen as it happens:
//! the worktree appears before the answer; a moved branch gets the new commit, with
//! nothing left of the guess; a failed check leaves no worktree at all.

mod gitserver;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gitserver::{run_git, GitServer};
use outpost::git::{self, GitConfig, GitError};

fn cfg(data: &Path) -> GitConfig {
    let mut c = GitConfig::new(data);
    c.allow_http = true;
    c.network_timeout = Duration::from_secs(30);
    c
}

/// A first task on `main` (which leaves the commit's template and a spare behind),
/// once the spare is made.
fn first_task(server: &GitServer, c: &GitConfig) -> git::Workspace {
    let ws = server.prepare(c, "r", "polecat/t1", "t1");
    assert!(
        git::spares_settled(Duration::from_secs(60)),
        "a spare is still being made"
    );
    ws
}

/// Waits (at most 30 s) until `file` exists: true if it does.
fn appears(file: &Path) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if file.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The worktrees under the data dir, by name.
fn worktrees(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("git/worktrees"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Starts the second task's prepare on a thread, with the server holding its ref
/// listing; returns once the worktree made ahead has its files, before any answer.
fn second_task_held(
    server: &GitServer,
    c: &GitConfig,
) -> (
    PathBuf,
    std::thread::JoinHandle<Result<git::Workspace, GitError>>,
) {
    server.hold_listings(true);
    let (c2, url) = (c.clone(), server.url("r"));
    let prepare =
        std::thread::spawn(move || git::prepare(&c2, &url, None, "polecat/t2", "t2", &mut |_| {}));
    assert!(
        server.wait_listing_held(Duration::from_secs(30)),
        "the warm fetch never asked for the refs"
    );
    let path = c.data_dir.join("git/worktrees/t2");
    assert!(
        appears(&path.join("a.txt")),
        "no worktree was made while the server was asked"
    );
    assert!(!prepare.is_finished(), "prepare returned before the answer");
    (path, prepare)
}

#[test]
fn a_warm_worktree_is_made_while_the_server_is_asked() {
    let server = GitServer::start(false);
    let head = server.create_repo("r", &[("a.txt", "a\n"), ("d/b.txt", "b\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let first = first_task(&server, &c);

    let (path, prepare) = second_task_held(&server, &c);
    server.hold_listings(false);
    let ws = prepare.join().unwrap().unwrap();
    assert_eq!(ws.path, path);
    assert_eq!(ws.base_commit, head);
    assert_eq!(ws.branch, "polecat/t2");
    assert_eq!(run_git(&ws.path, &["rev-parse", "HEAD"]), head);
    assert_eq!(
        run_git(&ws.path, &["symbolic-ref", "HEAD"]),
        "refs/heads/polecat/t2"
    );
    assert_eq!(run_git(&ws.path, &["status", "--porcelain"]), "");
    assert_eq!(worktrees(data.path()), ["t1", "t2"]);

    // It commits and pushes like any other.
    std::fs::write(ws.path.join("d/b.txt"), "changed\n").unwrap();
    let pushed = git::finish(&c, &ws, "change", &mut |_| {})
        .unwrap()
        .expect("a commit");
    assert_eq!(
        server.git("r", &["show", "--name-only", "--format=", &pushed]),
        "d/b.txt"
    );
    for ws in [first, ws] {
        git::remove_worktree(&c, &ws).unwrap();
    }
}

#[test]
fn a_worktree_made_ahead_is_thrown_away_when_the_branch_moved() {
    let server = GitServer::start(false);
    let old = server.create_repo("r", &[("a.txt", "old\n"), ("kept.txt", "x\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let first = first_task(&server, &c);
    assert_eq!(first.base_commit, old);

    let new = server.commit("r", "main", &[("a.txt", "new\n")], "upstream change");
    let (path, prepare) = second_task_held(&server, &c);
    // What was made ahead is the old commit's.
    assert_eq!(
        std::fs::read_to_string(path.join("a.txt")).unwrap(),
        "old\n"
    );
    server.hold_listings(false);
    let ws = prepare.join().unwrap().unwrap();
    assert_eq!(ws.base_commit, new);
    assert_eq!(run_git(&ws.path, &["rev-parse", "HEAD"]), new);
    assert_eq!(
        std::fs::read_to_string(ws.path.join("a.txt")).unwrap(),
        "new\n"
    );
    assert!(ws.path.join("kept.txt").exists());
    assert_eq!(run_git(&ws.path, &["status", "--porcelain"]), "");
    assert_eq!(worktrees(data.path()), ["t1", "t2"]);
    for ws in [first, ws] {
        git::remove_worktree(&c, &ws).unwrap();
    }
}

#[test]
fn a_failed_check_leaves_no_worktree_made_ahead() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "a\n")]);
    let data = tempfile::tempdir().unwrap();
    let mut c = cfg(data.path());
    let first = first_task(&server, &c);

    c.network_timeout = Duration::from_secs(1);
    let (path, prepare) = second_task_held(&server, &c);
    let err = prepare.join().unwrap().unwrap_err();
    server.hold_listings(false);
    assert!(matches!(err, GitError::Network { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(!path.exists(), "the worktree made ahead is still there");
    assert_eq!(worktrees(data.path()), ["t1"]);
    git::remove_worktree(&c, &first).unwrap();
}
