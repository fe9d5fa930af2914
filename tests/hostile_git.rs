//! The agent against the repository cache: a worktree's objects are hard links to the
//! cache's files, which every later task on the repository (of any caller) starts
//! from. The agent may read them through its worktree and must change none of them,
//! against the real worker running as root with an unprivileged agent user and a real
//! `git http-backend`.

mod common;
mod gitserver;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use gitserver::{files_below, run_git, GitServer};
use serde_json::json;

/// Every file below `dir`, with its owner and mode.
fn owners_below(dir: &Path) -> Vec<(std::path::PathBuf, u32, u32)> {
    files_below(dir)
        .into_iter()
        .map(|(p, meta)| (p, meta.uid(), meta.mode() & 0o7777))
        .collect()
}

/// Runs a task to its end: (the task, its output as text).
async fn run(w: &Worker, body: serde_json::Value) -> (serde_json::Value, String) {
    let c = h1();
    let id = submit(&c, w, body).await;
    let t = wait_terminal(&c, w, &id, Duration::from_secs(60)).await;
    let out = String::from_utf8_lossy(&output_of(&events_of(&c, w, &id).await)).into_owned();
    (t, out)
}

#[test]
fn the_repository_cache_behind_a_worktree_cannot_be_changed_by_the_agent() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var("CI").is_err(), "this test needs root on CI");
        eprintln!("skipped: needs root");
        return;
    }
    let srv = GitServer::start(false);
    let base = srv.create_repo("r", &[("a.txt", "a\n"), ("d/b.txt", "b\n")]);
    let w = Worker::start(&[
        ("OUTPOST_AGENT_USER", "64500"),
        ("OUTPOST_ALLOW_HTTP", "1"),
        ("OUTPOST_ALLOWED_HOSTS", "127.0.0.1"),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Every object file the agent can see: make it writable, write into it, replace
    // its content through the link.
    // And the checkouts kept beside the cache (templates, spares made ahead, given to
    // the agent user of the slot that runs next) are out of its reach.
    let templates = w.data.join("git/templates");
    let attack = format!(
        "n=0; for f in $(find .git/objects -type f); do n=$((n+1)); \
        chmod u+w \"$f\" 2>/dev/null && echo CHMOD-OK \"$f\"; \
        echo junk >> \"$f\" 2>/dev/null && echo WRITE-OK \"$f\"; \
        truncate -s 0 \"$f\" 2>/dev/null && echo TRUNCATE-OK \"$f\"; done; \
        echo \"tried $n files\"; git cat-file -p HEAD:a.txt; \
        ls -R {t} 2>/dev/null && echo LIST-OK; touch {t}/x 2>/dev/null && echo TOUCH-OK; echo finished",
        t = templates.display()
    );
    let (t, out) = rt.block_on(run(
        &w,
        json!({"prompt": attack.as_str(), "rig_url": srv.url("r"), "ref": "main"}),
    ));
    assert_eq!(t["status"], "done", "{t}\n{out}");
    assert!(
        !out.contains("tried 0 files"),
        "the worktree had no objects:\n{out}"
    );
    assert!(out.contains("tried "), "{out}");
    for bad in ["CHMOD-OK", "WRITE-OK", "TRUNCATE-OK", "LIST-OK", "TOUCH-OK"] {
        assert!(
            !out.contains(bad),
            "the agent changed the cache's objects:\n{out}"
        );
    }
    assert!(
        out.contains("a\r\n"),
        "the agent could not read the objects:\n{out}"
    );

    // The cache's files are still the worker's, read-only, and whole.
    let cache = w.data.join("git/cache");
    let objects: Vec<_> = owners_below(&cache)
        .into_iter()
        .filter(|(p, _, _)| p.components().any(|c| c.as_os_str() == "objects"))
        .collect();
    assert!(
        !objects.is_empty(),
        "no cache objects under {}",
        cache.display()
    );
    for (p, uid, mode) in &objects {
        assert_eq!(*uid, 0, "{} was given to uid {uid}", p.display());
        assert_eq!(mode & 0o222, 0, "{} is writable: {mode:o}", p.display());
    }
    let repo = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    run_git(&repo, &["fsck", "--no-dangling"]);
    // A spare is made after the task started, given to the agent user of its slot.
    let spare = (0..100).find_map(|_| {
        let found = std::fs::read_dir(&templates)
            .ok()?
            .flatten()
            .flat_map(|k| std::fs::read_dir(k.path()).into_iter().flatten().flatten())
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains(".spare-"));
        if found.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        found
    });
    let spare = spare.expect("no spare checkout was made");
    for (p, uid, _) in owners_below(&spare) {
        assert_eq!(uid, 64500, "{} is not the slot's agent user's", p.display());
    }
    let meta = std::fs::metadata(&templates).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o700),
        "templates dir"
    );

    // The next task on the repository starts from the right files, from the spare, and
    // everything in its worktree but the cache's objects is the agent's, `.git` too.
    let prompt = "cat a.txt d/b.txt; git rev-parse HEAD; echo others:; \
                  find . ! -user \"$(id -u)\" ! -path './.git/objects/*' -print; echo end";
    let (t2, out2) = rt.block_on(run(
        &w,
        json!({"prompt": prompt, "rig_url": srv.url("r"), "ref": "main"}),
    ));
    assert_eq!(t2["status"], "done", "{t2}\n{out2}");
    assert!(
        out2.contains("a\r\nb\r\n") && out2.contains(&base),
        "{out2}"
    );
    assert!(
        out2.contains("others:\r\nend"),
        "files in the second task's worktree are not the agent's: {out2}"
    );
}
