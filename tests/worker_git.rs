//! Git end to end through the worker's HTTP API, against a real `git http-backend`
//! (plain and TLS) and checked with the real git CLI: the branch is pushed with the
//! right parent, `done` carries branch and commit, progress and status events appear,
//! a failing push fails the task clearly, the token never reaches the event log, and a
//! SIGTERM mid-task pushes a checkpoint and ends `interrupted` well inside 10 s.

mod common;
mod gitserver;

use std::time::{Duration, Instant};

use common::*;
use gitserver::{files_below, GitServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn git_worker(extra: &[(&str, &str)]) -> Worker {
    let mut env = vec![
        ("OUTPOST_ALLOW_HTTP", "1"),
        ("OUTPOST_ALLOWED_HOSTS", "127.0.0.1"),
        ("OUTPOST_MAX_TASKS", "4"),
    ];
    env.extend_from_slice(extra);
    Worker::start(&env)
}

#[test]
fn a_task_clones_works_commits_and_pushes_its_branch() {
    let srv = GitServer::start(false);
    let base = srv.create_repo("rig", &[("README.md", "hello\n")]);
    let w = git_worker(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = rt.block_on(async {
        let r = post_work(
            &h1(),
            &w,
            json!({
                "issue_id": "gt-abc123",
                "rig_url": srv.url("rig"),
                "ref": "main",
                "prompt": "echo change >> README.md; echo new > added.txt; git status --short"
            }),
        )
        .await;
        Sse::new(r).collect(T).await
    });
    assert_complete(&events, 1);
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| e.data["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["queued", "cloning", "working", "pushing", "done"]
    );
    assert!(events
        .iter()
        .any(|e| e.event == "progress" && e.data["phase"] == "clone"));
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["branch"], "polecat/gt-abc123");
    let commit = done["commit"].as_str().unwrap();
    // The server has the branch at that commit, whose parent is main's commit.
    assert_eq!(
        srv.git("rig", &["rev-parse", "refs/heads/polecat/gt-abc123"]),
        commit
    );
    assert_eq!(srv.git("rig", &["rev-parse", &format!("{commit}^")]), base);
    let files = srv.git("rig", &["show", "--name-only", "--format=", commit]);
    assert!(
        files.contains("README.md") && files.contains("added.txt"),
        "{files}"
    );
    assert!(srv
        .git("rig", &["log", "-1", "--format=%s", commit])
        .contains("gt-abc123"));
    // The cache on the data dir is shallow.
    let cache_root = w.data.join("git/cache");
    let cache = std::fs::read_dir(&cache_root)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    assert!(
        cache.join("shallow").exists() || cache.join(".git/shallow").exists(),
        "cache is not shallow"
    );
}

#[test]
fn nothing_changed_means_done_without_push_and_failures_are_plain() {
    let srv = GitServer::start(false);
    srv.create_repo("rig", &[("a.txt", "a\n")]);
    let w = git_worker(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = h1();
        let id = submit(
            &c,
            &w,
            json!({"issue_id": "gt-none", "rig_url": srv.url("rig"), "prompt": "cat a.txt"}),
        )
        .await;
        let t = wait_terminal(&c, &w, &id, T).await;
        assert_eq!(t["status"], "done");
        assert!(t["commit"].is_null());
        // A repository that does not exist: failed with the git error in plain words.
        let id = submit(
            &c,
            &w,
            json!({"issue_id": "gt-404", "rig_url": srv.url("missing"), "prompt": "true"}),
        )
        .await;
        let t = wait_terminal(&c, &w, &id, T).await;
        assert_eq!(t["status"], "failed");
        assert!(
            t["error"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("not found"),
            "{t}"
        );
    });
    let out = std::process::Command::new("git")
        .args(["ls-remote", "--heads", &srv.url("rig")])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("polecat/gt-none"));
    // A rejected push fails the task and says why.
    srv.reject_pushes("rig", "pushes are frozen today");
    rt.block_on(async {
        let c = h1();
        let id = submit(
            &c,
            &w,
            json!({"issue_id": "gt-rej", "rig_url": srv.url("rig"), "prompt": "echo x > b.txt"}),
        )
        .await;
        let t = wait_terminal(&c, &w, &id, T).await;
        assert_eq!(t["status"], "failed");
        assert!(t["error"].as_str().unwrap().contains("frozen"), "{t}");
    });
}

#[test]
fn tls_and_token_with_the_token_kept_out_of_the_log() {
    let srv = GitServer::start(true);
    srv.create_repo("rig", &[("a.txt", "a\n")]);
    srv.require_auth("x-access-token", "tok-SECRET-42");
    let cert = srv.cert_pem_path();
    let w = Worker::start(&[
        ("OUTPOST_ALLOWED_HOSTS", "127.0.0.1"),
        ("OUTPOST_GIT_TOKEN", "tok-SECRET-42"),
        ("SSL_CERT_FILE", cert.to_str().unwrap()),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = rt.block_on(async {
        let r = post_work(&h1(), &w, json!({"issue_id": "gt-tls", "rig_url": srv.url("rig"), "prompt": "echo b > b.txt; env | grep -c SECRET || true"})).await;
        Sse::new(r).collect(T).await
    });
    let done = &events.last().unwrap().data;
    assert_eq!(done["status"], "done", "{done}");
    let commit = done["commit"].as_str().unwrap();
    assert_eq!(
        srv.git("rig", &["rev-parse", "refs/heads/polecat/gt-tls"]),
        commit
    );
    // The token is in no file of the data dir and in no log line.
    for (p, _) in files_below(&w.data) {
        if let Ok(bytes) = std::fs::read(&p) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains("tok-SECRET-42"),
                "token in {}",
                p.display()
            );
        }
    }
    assert!(!w.log_text().contains("tok-SECRET-42"));
}

#[test]
fn sigterm_mid_task_pushes_a_checkpoint_and_exits_inside_10_s() {
    let srv = GitServer::start(false);
    let base = srv.create_repo("rig", &[("a.txt", "a\n")]);
    let mut w = git_worker(&[("OUTPOST_GRACE_S", "8")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (events, elapsed, status) = rt.block_on(async {
        let r = post_work(&h1(), &w, json!({"issue_id": "gt-ckpt", "rig_url": srv.url("rig"), "prompt": "echo wip > wip.txt; echo started; sleep 300"})).await;
        let mut sse = Sse::new(r);
        let mut evs = Vec::new();
        loop {
            let e = sse.next(T).await.unwrap();
            let started = e.event == "output" && String::from_utf8_lossy(&e.output_bytes().unwrap()).contains("started");
            evs.push(e);
            if started {
                break;
            }
        }
        let t0 = Instant::now();
        unsafe { libc::kill(w.pid(), libc::SIGTERM) };
        while let Some(e) = sse.next(T).await {
            evs.push(e);
        }
        let st = tokio::task::block_in_place(|| w.signal_and_wait(0, Duration::from_secs(12)));
        (evs, t0.elapsed(), st)
    });
    let st = status.expect("the worker exited");
    assert_eq!(st.code(), Some(0));
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let done: &Value = &events.last().unwrap().data;
    assert_eq!(done["status"], "interrupted", "{done}");
    let commit = done["commit"].as_str().expect("checkpoint commit");
    assert_eq!(
        srv.git("rig", &["rev-parse", "refs/heads/polecat/gt-ckpt"]),
        commit
    );
    assert_eq!(srv.git("rig", &["rev-parse", &format!("{commit}^")]), base);
    assert_eq!(
        srv.git("rig", &["show", &format!("{commit}:wip.txt")]),
        "wip"
    );
}

#[test]
fn beads_repository_and_push_on_failure() {
    let srv = GitServer::start(false);
    let base = srv.create_repo("rig", &[("a.txt", "a\n")]);
    let beads_base = srv.create_repo("beads", &[("issues.jsonl", "{}\n")]);
    let w = git_worker(&[("OUTPOST_PUSH_ON_FAILURE", "1")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let done = rt.block_on(async {
        let r = post_work(&h1(), &w, json!({
                "issue_id": "gt-beads",
                "rig_url": srv.url("rig"),
                "beads_url": srv.url("beads"),
                "prompt": "echo half > half.txt; echo '{\"closed\":true}' >> \"$BEADS_DIR/issues.jsonl\"; exit 2"
            })).await;
        Sse::new(r).collect(T).await.last().unwrap().data.clone()
    });
    // The agent failed, but its work was pushed to its branch (OUTPOST_PUSH_ON_FAILURE=1).
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["exit_code"], 2);
    let commit = done["commit"].as_str().expect("pushed despite the failure");
    assert_eq!(
        srv.git("rig", &["rev-parse", "refs/heads/polecat/gt-beads"]),
        commit
    );
    assert_eq!(srv.git("rig", &["rev-parse", &format!("{commit}^")]), base);
    // The beads change went to the beads repository's default branch.
    let tip = srv.git("beads", &["rev-parse", "refs/heads/main"]);
    assert_ne!(tip, beads_base);
    assert_eq!(
        srv.git("beads", &["rev-parse", &format!("{tip}^")]),
        beads_base
    );
    assert!(srv
        .git("beads", &["show", &format!("{tip}:issues.jsonl")])
        .contains("closed"));
}

/// A warm task's worktree comes from a copy, not a checkout; the worker then records
/// each file's stat data in its index, so the commit check (and the agent's `git
/// status`) reads only what changed. Nothing may be missed for it: a change of the
/// same size with the old mtime put back is still committed, and the agent user can
/// still stage through the index.
#[test]
fn a_warm_task_s_index_knows_its_files_and_a_same_size_change_is_still_committed() {
    let srv = GitServer::start(false);
    let files: Vec<(String, String)> = (0..30)
        .map(|i| (format!("d/f{i:02}.txt"), format!("content {i:02}\n")))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let base = srv.create_repo("rig", &refs);
    let w = git_worker(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |prompt: &str| {
        rt.block_on(async {
            let c = h1();
            let body = json!({"rig_url": srv.url("rig"), "ref": "main", "prompt": prompt});
            let id = submit(&c, &w, body).await;
            let t = wait_terminal(&c, &w, &id, T).await;
            let out = String::from_utf8_lossy(&output_of(&events_of(&c, &w, &id).await))
                .replace('\r', "");
            (t, out)
        })
    };
    let (t, out) = run("true");
    assert_eq!(t["status"], "done", "{t}\n{out}");
    // The second task on the commit starts from the template (or a spare of it).
    let prompt = "git ls-files --debug d/f00.txt; \
        echo \"STATUS-LINES $(git status --porcelain | wc -l)\"; \
        old=$(stat -c %y d/f01.txt); printf 'CHANGED 01\\n' > d/f01.txt; touch -d \"$old\" d/f01.txt; \
        echo \"SIZE $(stat -c %s d/f01.txt)\"; \
        echo staged > d/f02.txt && git add d/f02.txt && echo ADDED; \
        git status --porcelain";
    let (t, out) = run(prompt);
    assert_eq!(t["status"], "done", "{t}\n{out}");
    assert!(
        !out.contains("mtime: 0:0") && out.contains("size: 11"),
        "the index has no stat data for d/f00.txt:\n{out}"
    );
    assert!(out.contains("STATUS-LINES 0"), "not clean at start:\n{out}");
    assert!(
        out.contains("SIZE 11"),
        "the change is not of the same size:\n{out}"
    );
    assert!(out.contains("ADDED"), "the agent could not stage:\n{out}");
    assert!(
        out.contains(" M d/f01.txt") && out.contains("M  d/f02.txt"),
        "git status missed a change:\n{out}"
    );
    let commit = t["commit"].as_str().expect("a commit");
    assert_eq!(srv.git("rig", &["rev-parse", &format!("{commit}^")]), base);
    let changed = srv.git("rig", &["show", "--name-only", "--format=", commit]);
    assert_eq!(changed, "d/f01.txt\nd/f02.txt", "{out}");
    assert_eq!(
        srv.git("rig", &["show", &format!("{commit}:d/f01.txt")]),
        "CHANGED 01"
    );
}

/// The worktree and the run dir of an ended task are out of the way before its
/// `done` (moved to the trash) and deleted soon after; what a crash left in the trash
/// (today's, `<data>/trash`, and earlier versions', `<data>/git/trash`) goes at
/// start-up.
#[test]
fn an_ended_task_s_worktree_is_gone_and_a_crash_s_trash_is_swept_at_start() {
    let srv = GitServer::start(false);
    let files: Vec<(String, String)> = (0..200)
        .map(|i| (format!("d{}/f{i}.txt", i % 10), format!("file {i}\n")))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    srv.create_repo("rig", &refs);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let trashes = [data.join("trash"), data.join("git/trash")];
    // A crash's leftovers, as a worker half through deleting them would leave them.
    for trash in &trashes {
        let left = trash.join("t-old-1-0/d0");
        std::fs::create_dir_all(&left).unwrap();
        std::fs::write(left.join("f.txt"), "x").unwrap();
    }
    let env = [
        ("OUTPOST_ALLOW_HTTP", "1"),
        ("OUTPOST_ALLOWED_HOSTS", "127.0.0.1"),
    ];
    let w = Worker::start_on(&data, free_port(), &env);
    let in_trash = || -> Vec<std::path::PathBuf> {
        trashes
            .iter()
            .flat_map(|t| std::fs::read_dir(t).into_iter().flatten().flatten())
            .map(|e| e.path())
            .collect()
    };
    let trash_empty = || {
        (0..300).any(|_| {
            let n = in_trash().len();
            if n > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            n == 0
        })
    };
    // Before any task ended: the start-up sweep.
    assert!(
        trash_empty(),
        "a crash's leftover is still in the trash: {:?}",
        in_trash()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listed = |dir: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(data.join(dir))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for body in [
        json!({"rig_url": srv.url("rig"), "ref": "main", "prompt": "ls d0 | wc -l"}),
        json!({"prompt": "mkdir -p a/b && echo x > a/b/f && ls a"}),
    ] {
        let (t, worktrees, runs) = rt.block_on(async {
            let c = h1();
            let id = submit(&c, &w, body.clone()).await;
            let t = wait_terminal(&c, &w, &id, T).await;
            // Read at once: the task's files were moved away before the end was written.
            (t, listed("git/worktrees"), listed("run"))
        });
        assert_eq!(t["status"], "done", "{t}");
        assert!(worktrees.is_empty(), "left at done: {worktrees:?}");
        assert!(runs.is_empty(), "run dirs left at done: {runs:?}");
        let emptied = trash_empty();
        assert!(emptied, "the trash is not emptied: {:?}", in_trash());
    }
}
