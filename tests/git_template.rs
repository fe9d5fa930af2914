//! Checkout templates: the first task on a commit checks out into its worktree while a
//! template is built beside the cache in the background; every later task copies its
//! files from there (or takes a copy made ahead) instead of checking out.
//! Checked with the real git CLI: the copied worktree is clean, modes and symlinks are
//! right, and a change commits and pushes only that change. A template that does not
//! match its tree is not used; a new commit replaces the old template.

mod common;
mod gitserver;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gitserver::{run_git, GitServer};
use outpost::git::{self, GitConfig};

fn cfg(data: &Path) -> GitConfig {
    let mut c = GitConfig::new(data);
    c.allow_http = true;
    c.network_timeout = Duration::from_secs(30);
    c
}

/// Everything beside the templates: `git/templates/<cache key>/*` (once no spare
/// checkout is being made).
fn template_entries(data: &Path) -> Vec<PathBuf> {
    assert!(
        git::spares_settled(Duration::from_secs(60)),
        "a spare is still being made"
    );
    let mut out = Vec::new();
    for key in std::fs::read_dir(data.join("git/templates")).unwrap() {
        for t in std::fs::read_dir(key.unwrap().path()).unwrap() {
            out.push(t.unwrap().path());
        }
    }
    out
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every template under the data dir: `git/templates/<cache key>/<commit>`.
fn templates(data: &Path) -> Vec<PathBuf> {
    let mut out = template_entries(data);
    out.retain(|p| !name_of(p).contains('.'));
    out
}

/// The spare checkouts made ahead: `<commit>.spare-<files>-...` beside the templates.
fn spares(data: &Path) -> Vec<PathBuf> {
    let mut out = template_entries(data);
    out.retain(|p| name_of(p).contains(".spare-"));
    out
}

/// The index entry of `rel` in the worktree at `wt` holds the file's stat data as it is
/// now (what git compares to tell an untouched file without reading it).
fn assert_index_has_stat(wt: &Path, rel: &str) {
    use std::os::unix::fs::MetadataExt;
    let debug = run_git(wt, &["ls-files", "--debug", rel]);
    let m = std::fs::symlink_metadata(wt.join(rel)).unwrap();
    let want = [
        format!("ctime: {}:{}", m.ctime(), m.ctime_nsec()),
        format!("mtime: {}:{}", m.mtime(), m.mtime_nsec()),
        format!("ino: {}", m.ino()),
        format!("uid: {}\tgid: {}", m.uid(), m.gid()),
        format!("size: {}\t", m.size()),
    ];
    for w in want {
        assert!(debug.contains(&w), "{rel}: no {w:?} in {debug}");
    }
}

/// The template of `commit` (the first task on a commit leaves one).
fn template_of(data: &Path, commit: &str) -> PathBuf {
    let found = templates(data)
        .into_iter()
        .find(|t| t.file_name().unwrap() == commit);
    found.unwrap_or_else(|| panic!("no template for {commit} under {}", data.display()))
}

#[test]
fn a_warm_task_copies_the_template_and_git_sees_a_clean_tree() {
    let server = GitServer::start(false);
    let files: Vec<(String, String)> = (0..50)
        .map(|i| (format!("d{}/f{i}.txt", i % 5), format!("file {i}\n")))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let base = server.create_repo("r", &refs);
    // An executable script and a symlink, committed with the git CLI.
    let work = server.scratch("w");
    run_git(&work, &["clone", "-q", server.url("r").as_str(), "."]);
    std::fs::write(work.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("d0/f0.txt", work.join("link")).unwrap();
    run_git(&work, &["add", "-A"]);
    run_git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "modes",
        ],
    );
    run_git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let head = run_git(&work, &["rev-parse", "HEAD"]);
    assert_ne!(head, base);

    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let first = server.prepare(&c, "r", "polecat/a", "ta");
    let template = template_of(data.path(), &head);
    assert!(!template.join(".git").exists());

    // The second task's files come from the spare made after the first: its index came
    // with it, every file's stat data recorded as the files are now (the top-level
    // ones again after their move), so git reads none of them to see the tree clean.
    let second = server.prepare(&c, "r", "polecat/b", "tb");
    assert_eq!(second.base_commit, head);
    let me = nix::unistd::geteuid().as_raw();
    assert_eq!(
        second.made_ahead,
        Some(git::MadeAhead {
            owner: (me, me),
            stat_recorded: true
        })
    );
    for rel in ["d0/f0.txt", "d4/f9.txt", "run.sh", "link"] {
        assert_index_has_stat(&second.path, rel);
    }
    assert_eq!(run_git(&second.path, &["status", "--porcelain"]), "");
    assert_eq!(run_git(&second.path, &["ls-files"]).lines().count(), 52);

    // With no spare left, a task copies the template: its index was built from the
    // tree, with no stat data yet (a checkout records each file's stat).
    for spare in spares(data.path()) {
        std::fs::remove_dir_all(spare).unwrap();
    }
    let third = server.prepare(&c, "r", "polecat/c", "tc");
    assert_eq!(third.made_ahead, None);
    let debug = run_git(&third.path, &["ls-files", "--debug", "d0/f0.txt"]);
    assert!(debug.contains("mtime: 0:0"), "{debug}");
    let status = run_git(&third.path, &["status", "--porcelain"]);
    assert_eq!(status, "", "the copied worktree is not clean");
    let mode = std::fs::metadata(third.path.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "run.sh lost its exec bits");
    assert_eq!(
        std::fs::read_link(third.path.join("link")).unwrap(),
        Path::new("d0/f0.txt")
    );
    assert_eq!(run_git(&third.path, &["ls-files"]).lines().count(), 52);
    // The worker records the files' stat data once they are final: every entry, the
    // script and the symlink too, and the tree stays clean.
    assert_eq!(git::record_stat(&third.path, None).unwrap(), 52);
    for rel in ["d0/f0.txt", "run.sh", "link"] {
        assert_index_has_stat(&third.path, rel);
    }
    let status = run_git(&third.path, &["status", "--porcelain"]);
    assert_eq!(status, "", "not clean once the stat data is recorded");
    git::remove_worktree(&c, &third).unwrap();

    // A change in the copied worktree commits and pushes only that change.
    std::fs::write(second.path.join("d1/f1.txt"), "changed\n").unwrap();
    let pushed = git::finish(&c, &second, "change one file", &mut |_| {})
        .unwrap()
        .expect("a commit");
    let changed = server.git("r", &["show", "--name-only", "--format=", &pushed]);
    assert_eq!(changed, "d1/f1.txt");
    assert_eq!(server.git("r", &["rev-parse", &format!("{pushed}^")]), head);
    git::remove_worktree(&c, &first).unwrap();
    git::remove_worktree(&c, &second).unwrap();
    let mut dirs = vec![
        data.path().join("git/worktrees"),
        data.path().join("git/templates"),
        data.path().join("git/cache"),
    ];
    dirs.extend(
        templates(data.path())
            .iter()
            .filter_map(|t| t.parent().map(Path::to_path_buf)),
    );
    for dir in dirs {
        common::assert_spreads_children(&dir);
    }
}

#[test]
fn a_damaged_template_is_not_used_and_a_new_commit_replaces_it() {
    let server = GitServer::start(false);
    let base = server.create_repo("r", &[("a.txt", "a\n"), ("b.txt", "b\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    server.prepare(&c, "r", "polecat/a", "ta");
    let template = template_of(data.path(), &base);
    assert_eq!(
        spares(data.path()).len(),
        1,
        "{:?}",
        template_entries(data.path())
    );
    // A file goes missing from the template: no task may inherit the hole, neither
    // the next (from the spare made before) nor the one after (whose spare is copied
    // from the damaged template).
    std::fs::remove_file(template.join("b.txt")).unwrap();
    for task in ["tb", "tb2"] {
        let ws = server.prepare(&c, "r", &format!("polecat/{task}"), task);
        assert_eq!(run_git(&ws.path, &["status", "--porcelain"]), "", "{task}");
        assert_eq!(
            std::fs::read_to_string(ws.path.join("b.txt")).unwrap(),
            "b\n",
            "{task}"
        );
    }

    // Upstream moves on: the next template is for the new commit and the old one goes.
    let next = server.commit("r", "main", &[("c.txt", "c\n")], "next");
    server.prepare(&c, "r", "polecat/c", "tc");
    let left = templates(data.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].to_string_lossy().ends_with(&next));
    // The old commit's spares went with its template; the new one has its own.
    let all = template_entries(data.path());
    assert!(all.iter().all(|p| name_of(p).starts_with(&next)), "{all:?}");
    assert_eq!(spares(data.path()).len(), 1, "{all:?}");
}

/// The copy of a checkout is most of a warm start: it is made ahead, after a task
/// started, and the next task's files are that copy moved in (the same inodes), its
/// own to change, with a new copy made for the one after.
#[test]
fn the_next_task_gets_a_checkout_copied_ahead_and_a_new_one_is_made() {
    use std::os::unix::fs::MetadataExt;
    let server = GitServer::start(false);
    let base = server.create_repo("r", &[("a.txt", "a\n"), ("d/b.txt", "b\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let first = server.prepare(&c, "r", "polecat/a", "ta");
    let made = spares(data.path());
    assert_eq!(made.len(), 1, "no spare after the first task");
    assert!(
        name_of(&made[0]).starts_with(&format!("{base}.spare-2-")),
        "{made:?}"
    );
    let ino = std::fs::metadata(made[0].join("d/b.txt")).unwrap().ino();

    let second = server.prepare(&c, "r", "polecat/b", "tb");
    assert_eq!(
        std::fs::metadata(second.path.join("d/b.txt"))
            .unwrap()
            .ino(),
        ino
    );
    assert_eq!(run_git(&second.path, &["status", "--porcelain"]), "");
    assert_eq!(run_git(&second.path, &["rev-parse", "HEAD"]), base);
    let again = spares(data.path());
    assert_eq!(again.len(), 1, "no new spare after the second task");
    assert_ne!(again[0], made[0]);

    // The moved files are the task's own: a change reaches neither the template nor
    // the next spare, and commits as itself.
    std::fs::write(second.path.join("d/b.txt"), "changed\n").unwrap();
    let template = template_of(data.path(), &base);
    assert_eq!(
        std::fs::read_to_string(template.join("d/b.txt")).unwrap(),
        "b\n"
    );
    assert_eq!(
        std::fs::read_to_string(again[0].join("d/b.txt")).unwrap(),
        "b\n"
    );
    let pushed = git::finish(&c, &second, "change", &mut |_| {})
        .unwrap()
        .expect("a commit");
    assert_eq!(
        server.git("r", &["show", "--name-only", "--format=", &pushed]),
        "d/b.txt"
    );

    // Two tasks at once never share one: one gets the spare, the other a copy.
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| server.prepare(&c, "r", "polecat/x", "tx"));
        let y = s.spawn(|| server.prepare(&c, "r", "polecat/y", "ty"));
        (x.join().unwrap(), y.join().unwrap())
    });
    let (ix, iy) = (
        std::fs::metadata(x.path.join("d/b.txt")).unwrap().ino(),
        std::fs::metadata(y.path.join("d/b.txt")).unwrap().ino(),
    );
    assert_ne!(ix, iy);
    for ws in [&x, &y] {
        assert_eq!(run_git(&ws.path, &["status", "--porcelain"]), "");
        assert_eq!(
            std::fs::read_to_string(ws.path.join("d/b.txt")).unwrap(),
            "b\n"
        );
    }

    // None wanted: none made, and a task copies its files.
    let data0 = tempfile::tempdir().unwrap();
    let mut c0 = cfg(data0.path());
    c0.spare_checkouts = 0;
    let ws = server.prepare(&c0, "r", "polecat/z", "tz");
    assert_eq!(run_git(&ws.path, &["status", "--porcelain"]), "");
    assert!(spares(data0.path()).is_empty());
    for ws in [first, second, x, y] {
        git::remove_worktree(&c, &ws).unwrap();
    }
}
