//! Committing and pushing against a real `git http-backend`: the pushed branch and its
//! parent, nothing-changed, concurrent tasks, rejected pushes, checkpoints, and the beads
//! repository's re-apply-and-retry on a moved default branch.

mod gitserver;

use std::path::Path;
use std::time::Duration;

use gitserver::{run_git, GitServer};
use outpost::git::{self, GitConfig, GitError, Phase};

fn cfg(data: &Path) -> GitConfig {
    let mut c = GitConfig::new(data);
    c.allow_http = true;
    c.author_name = "Outpost Test".into();
    c.author_email = "outpost@test.invalid".into();
    c.network_timeout = Duration::from_secs(30);
    c.lock_timeout = Duration::from_secs(120);
    c
}

#[test]
fn finish_commits_everything_and_pushes_the_branch() {
    let server = GitServer::start(false);
    let base = server.create_repo(
        "r",
        &[
            ("keep.txt", "k\n"),
            ("edit.txt", "a\n"),
            ("gone.txt", "g\n"),
        ],
    );
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let ws = server.prepare(&c, "r", "polecat/gt-1", "t1");

    std::fs::write(ws.path.join("edit.txt"), "b\n").unwrap();
    std::fs::remove_file(ws.path.join("gone.txt")).unwrap();
    std::fs::create_dir_all(ws.path.join("new")).unwrap();
    std::fs::write(ws.path.join("new/file.txt"), "n\n").unwrap();
    std::fs::write(ws.path.join(".gitignore"), "*.log\n").unwrap();
    std::fs::write(ws.path.join("noise.log"), "ignored\n").unwrap();

    let mut reports = Vec::new();
    let pushed = git::finish(&c, &ws, "gt-1: the agent's work", &mut |p| reports.push(p))
        .unwrap()
        .expect("a commit was pushed");

    assert_eq!(
        server.git("r", &["rev-parse", "refs/heads/polecat/gt-1"]),
        pushed
    );
    assert_eq!(server.git("r", &["rev-parse", &format!("{pushed}^")]), base);
    assert_eq!(
        server.git("r", &["log", "-1", "--format=%an <%ae>|%s", &pushed]),
        "Outpost Test <outpost@test.invalid>|gt-1: the agent's work"
    );
    let changes = server.git("r", &["diff", "--name-status", &base, &pushed]);
    assert_eq!(
        changes,
        "A\t.gitignore\nM\tedit.txt\nD\tgone.txt\nA\tnew/file.txt"
    );
    assert_eq!(
        server.git("r", &["rev-parse", "refs/heads/main"]),
        base,
        "main untouched"
    );
    assert!(!reports.is_empty() && reports.iter().all(|p| p.phase == Phase::Push));
    // The worktree is clean afterwards (the index was written).
    assert_eq!(run_git(&ws.path, &["status", "--porcelain"]), "");
}

#[test]
fn nothing_changed_pushes_nothing() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "x\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let ws = server.prepare(&c, "r", "polecat/idle", "t1");
    assert_eq!(git::finish(&c, &ws, "nothing", &mut |_| {}).unwrap(), None);
    assert_eq!(server.git("r", &["branch", "--list", "polecat/idle"]), "");
}

#[test]
fn commits_made_by_the_agent_are_pushed_too() {
    let server = GitServer::start(false);
    let base = server.create_repo("r", &[("a.txt", "x\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let ws = server.prepare(&c, "r", "polecat/self", "t1");
    std::fs::write(ws.path.join("a.txt"), "agent\n").unwrap();
    run_git(&ws.path, &["commit", "-q", "-am", "agent commit"]);
    let agent_commit = run_git(&ws.path, &["rev-parse", "HEAD"]);
    let pushed = git::finish(&c, &ws, "unused", &mut |_| {}).unwrap();
    assert_eq!(pushed.as_deref(), Some(agent_commit.as_str()));
    assert_eq!(
        server.git("r", &["rev-parse", &format!("{agent_commit}^")]),
        base
    );
}

#[test]
fn concurrent_tasks_on_one_repository_all_push() {
    let server = GitServer::start(false);
    let base = server.create_repo("r", &[("a.txt", "x\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let url = server.url("r");
    let results: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (c, url) = (&c, &url);
                s.spawn(move || {
                    let branch = format!("polecat/gt-{i}");
                    let ws =
                        git::prepare(c, url, None, &branch, &format!("t{i}"), &mut |_| {}).unwrap();
                    std::fs::write(ws.path.join(format!("task{i}.txt")), format!("{i}\n")).unwrap();
                    let pushed = git::finish(c, &ws, &format!("task {i}"), &mut |_| {})
                        .unwrap()
                        .unwrap();
                    (branch, pushed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (branch, pushed) in &results {
        assert_eq!(
            &server.git("r", &["rev-parse", &format!("refs/heads/{branch}")]),
            pushed
        );
        assert_eq!(server.git("r", &["rev-parse", &format!("{pushed}^")]), base);
    }
    assert_eq!(server.git("r", &["fsck", "--no-progress"]), "");
}

#[test]
fn a_diverged_remote_branch_rejects_the_push_plainly() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "x\n")]);
    server.commit(
        "r",
        "polecat/taken",
        &[("other.txt", "o\n")],
        "someone else's work",
    );
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let url = server.url("r");
    let ws = git::prepare(&c, &url, None, "polecat/taken", "t1", &mut |_| {}).unwrap();
    std::fs::write(ws.path.join("mine.txt"), "m\n").unwrap();
    let err = git::finish(&c, &ws, "mine", &mut |_| {}).unwrap_err();
    assert!(matches!(err, GitError::NonFastForward { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("push to {url} rejected: non-fast-forward")),
        "{msg}"
    );
    assert!(msg.contains("'polecat/taken'"), "{msg}");
}

#[test]
fn a_hook_rejection_is_reported_with_the_servers_words() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "x\n")]);
    server.reject_pushes("r", "branch creation is frozen");
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let url = server.url("r");
    let ws = git::prepare(&c, &url, None, "polecat/hook", "t1", &mut |_| {}).unwrap();
    std::fs::write(ws.path.join("a.txt"), "y\n").unwrap();
    let err = git::finish(&c, &ws, "change", &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "push to {url} rejected for branch 'polecat/hook': "
        )),
        "{msg}"
    );
    assert!(msg.contains("branch creation is frozen"), "{msg}");
    assert_eq!(server.git("r", &["branch", "--list", "polecat/hook"]), "");
}

#[test]
fn checkpoint_pushes_work_in_progress_and_finish_builds_on_it() {
    let server = GitServer::start(false);
    let base = server.create_repo("r", &[("a.txt", "x\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let ws = server.prepare(&c, "r", "polecat/ckpt", "t1");
    std::fs::write(ws.path.join("half.txt"), "half\n").unwrap();
    let ckpt = git::checkpoint(&c, &ws, "checkpoint").unwrap().unwrap();
    assert_eq!(
        server.git("r", &["rev-parse", "refs/heads/polecat/ckpt"]),
        ckpt
    );
    assert_eq!(server.git("r", &["rev-parse", &format!("{ckpt}^")]), base);

    std::fs::write(ws.path.join("rest.txt"), "rest\n").unwrap();
    let done = git::finish(&c, &ws, "done", &mut |_| {}).unwrap().unwrap();
    assert_eq!(server.git("r", &["rev-parse", &format!("{done}^")]), ckpt);
    assert_eq!(
        server.git("r", &["rev-parse", "refs/heads/polecat/ckpt"]),
        done
    );
}

#[test]
fn beads_push_is_reapplied_on_a_moved_default_branch() {
    let server = GitServer::start(false);
    server.create_repo(
        "beads",
        &[("issues.jsonl", "{\"id\":1}\n"), ("other.txt", "o\n")],
    );
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let url = server.url("beads");
    let ws = git::prepare_beads(&c, &url, "t1", &mut |_| {}).unwrap();
    assert_eq!(ws.branch, "main");
    assert_eq!(ws.path, data.path().join("git/worktrees/t1.beads"));
    std::fs::write(ws.path.join("issues.jsonl"), "{\"id\":1}\n{\"id\":2}\n").unwrap();

    let moved = server.commit(
        "beads",
        "main",
        &[("other.txt", "changed upstream\n")],
        "meanwhile",
    );
    let pushed = git::finish_beads(&c, &ws, "beads: gt-1", &mut |_| {})
        .unwrap()
        .unwrap();
    assert_eq!(
        server.git("beads", &["rev-parse", "refs/heads/main"]),
        pushed
    );
    assert_eq!(
        server.git("beads", &["rev-parse", &format!("{pushed}^")]),
        moved
    );
    assert_eq!(
        server.git("beads", &["show", "main:issues.jsonl"]),
        "{\"id\":1}\n{\"id\":2}"
    );
    assert_eq!(
        server.git("beads", &["show", "main:other.txt"]),
        "changed upstream"
    );
    assert_eq!(
        server.git("beads", &["log", "-1", "--format=%s", "main"]),
        "beads: gt-1"
    );
    // The worktree follows the re-applied branch.
    assert_eq!(run_git(&ws.path, &["rev-parse", "HEAD"]), pushed);
}

#[test]
fn beads_reapply_conflict_is_reported() {
    let server = GitServer::start(false);
    server.create_repo("beads", &[("issues.jsonl", "{\"id\":1}\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let url = server.url("beads");
    let ws = git::prepare_beads(&c, &url, "t1", &mut |_| {}).unwrap();
    std::fs::write(ws.path.join("issues.jsonl"), "{\"id\":1,\"s\":\"mine\"}\n").unwrap();
    let theirs = server.commit(
        "beads",
        "main",
        &[("issues.jsonl", "{\"id\":1,\"s\":\"theirs\"}\n")],
        "x",
    );
    let err = git::finish_beads(&c, &ws, "beads", &mut |_| {}).unwrap_err();
    assert!(matches!(err, GitError::ReapplyConflict { .. }), "{err:?}");
    assert!(
        err.to_string().ends_with("conflicts in: issues.jsonl"),
        "{err}"
    );
    assert_eq!(
        server.git("beads", &["rev-parse", "refs/heads/main"]),
        theirs
    );
}
