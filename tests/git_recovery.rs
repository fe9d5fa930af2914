//! A cache left broken is rebuilt, not trusted: a worker killed in the middle of a fetch
//! (a real SIGKILL of a child process while the server holds the pack halfway), a cache
//! whose objects were deleted; and a cache lock held too long fails with a plain error.

mod gitserver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gitserver::{run_git, GitServer};
use outpost::git::{self, GitConfig, GitError};

const CHILD_URL: &str = "OUTPOST_TEST_CHILD_URL";
const CHILD_DATA: &str = "OUTPOST_TEST_CHILD_DATA";

fn cfg(data: &Path) -> GitConfig {
    let mut c = GitConfig::new(data);
    c.allow_http = true;
    c.network_timeout = Duration::from_secs(120);
    c.lock_timeout = Duration::from_secs(120);
    c
}

fn cache_dir(data: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data.join("git/cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1);
    dirs.remove(0)
}

/// Incompressible bytes, so the pack is big enough to be cut in half.
fn noise(len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// Kills and reaps the child even when the test fails.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this test binary again, running only [`child_prepare`], which fetches `url`
/// into the cache under `data`.
fn spawn_child(url: &str, data: &Path) -> ChildGuard {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--exact",
            "child_prepare",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_DATA, data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

#[test]
#[ignore = "helper: run as a child process by killed_fetch_is_repaired"]
fn child_prepare() {
    let (Ok(url), Ok(data)) = (std::env::var(CHILD_URL), std::env::var(CHILD_DATA)) else {
        return;
    };
    let _ = git::prepare(
        &cfg(Path::new(&data)),
        &url,
        None,
        "polecat/child",
        "child",
        &mut |_| {},
    );
}

/// How many files the caches under `data` hold in `objects/pack`.
fn pack_files(data: &Path) -> usize {
    let Ok(caches) = std::fs::read_dir(data.join("git/cache")) else {
        return 0;
    };
    caches
        .flatten()
        .filter_map(|cache| std::fs::read_dir(cache.path().join("objects/pack")).ok())
        .map(|d| d.count())
        .sum()
}

/// Runs a child that starts fetching, and SIGKILLs it once it is writing the pack it is
/// receiving (the server holds the second half of the pack).
fn kill_mid_fetch(server: &GitServer, data: &Path) {
    let before = pack_files(data);
    server.set_stall(true);
    let mut child = spawn_child(&server.url("r"), data);
    assert!(
        server.wait_stalled(Duration::from_secs(120)),
        "the child never fetched"
    );
    let writing = (0..1200).any(|_| {
        let started = pack_files(data) > before;
        if !started {
            std::thread::sleep(Duration::from_millis(50));
        }
        started
    });
    assert!(writing, "the child never started writing the pack");
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    server.set_stall(false);
}

#[test]
fn killed_fetch_is_repaired() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("big.txt", &noise(400_000, 1))]);
    let head = server.commit("r", "main", &[("big.txt", &noise(400_000, 2))], "second");
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());

    // Cold cache, killed mid-clone.
    kill_mid_fetch(&server, data.path());
    let cache = cache_dir(data.path());
    assert!(
        cache.join("outpost-fetch-in-progress").exists(),
        "the kill left the fetch marked"
    );
    let ws = server.prepare(&c, "r", "b1", "t1");
    assert_eq!(ws.base_commit, head);
    assert_eq!(
        std::fs::read_to_string(ws.path.join("big.txt")).unwrap(),
        noise(400_000, 2)
    );
    assert!(!cache.join("outpost-fetch-in-progress").exists());
    assert_eq!(
        run_git(&cache, &["rev-list", "--count", "refs/heads/main"]),
        "1"
    );
    assert_eq!(
        run_git(&cache, &["fsck", "--no-progress", "--connectivity-only"]),
        ""
    );

    // Warm cache, killed while fetching a new upstream commit.
    let newer = server.commit("r", "main", &[("big.txt", &noise(400_000, 3))], "third");
    kill_mid_fetch(&server, data.path());
    assert!(cache.join("outpost-fetch-in-progress").exists());
    let ws2 = server.prepare(&c, "r", "b2", "t2");
    assert_eq!(ws2.base_commit, newer);
    assert_eq!(
        std::fs::read_to_string(ws2.path.join("big.txt")).unwrap(),
        noise(400_000, 3)
    );
    assert_eq!(run_git(&ws2.path, &["status", "--porcelain"]), "");
}

#[test]
fn cache_with_deleted_objects_is_rebuilt() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "a\n")]);
    let head = server.commit("r", "main", &[("a.txt", "b\n")], "second");
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    server.prepare(&c, "r", "b1", "t1");

    let cache = cache_dir(data.path());
    let packs = cache.join("objects/pack");
    let mut removed = 0;
    for entry in std::fs::read_dir(&packs).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
        removed += 1;
    }
    assert!(removed > 0, "the fetch wrote a pack");

    let ws = server.prepare(&c, "r", "b2", "t2");
    assert_eq!(ws.base_commit, head);
    assert_eq!(
        std::fs::read_to_string(ws.path.join("a.txt")).unwrap(),
        "b\n"
    );
    assert_eq!(run_git(&cache, &["rev-parse", "refs/heads/main"]), head);
    assert_eq!(
        run_git(&ws.path, &["fsck", "--no-progress", "--connectivity-only"]),
        ""
    );
}

#[test]
fn a_held_cache_lock_times_out_plainly() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "a\n")]);
    let data = tempfile::tempdir().unwrap();
    let mut c = cfg(data.path());
    server.prepare(&c, "r", "b1", "t1");

    let lock_path = PathBuf::from(format!("{}.lock", cache_dir(data.path()).display()));
    assert!(lock_path.is_file());
    let file = std::fs::File::open(&lock_path).unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
    c.lock_timeout = Duration::from_millis(300);
    let err = git::prepare(&c, &server.url("r"), None, "b2", "t2", &mut |_| {}).unwrap_err();
    assert!(matches!(err, GitError::LockTimeout { .. }), "{err:?}");
    assert!(
        err.to_string().contains("another task is still fetching"),
        "{err}"
    );
    drop(held);
    server.prepare(&c, "r", "b2", "t2");
}

#[test]
fn cache_missing_one_file_is_rebuilt_on_checkout() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "a\n"), ("b.txt", "b\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let head = server.prepare(&c, "r", "b1", "t1").base_commit;

    // Explode the cache's pack into loose objects, then lose one file's blob: the refs,
    // the commit and the tree are all still there.
    let cache = cache_dir(data.path());
    let scratch = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(cache.join("objects/pack")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::rename(&path, scratch.path().join(path.file_name().unwrap())).unwrap();
    }
    for entry in std::fs::read_dir(scratch.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pack") {
            let out = Command::new("git")
                .args(["unpack-objects", "-q"])
                .current_dir(&cache)
                .stdin(std::fs::File::open(&path).unwrap())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let blob = run_git(&cache, &["rev-parse", "refs/heads/main:b.txt"]);
    std::fs::remove_file(cache.join("objects").join(&blob[..2]).join(&blob[2..])).unwrap();

    let ws = server.prepare(&c, "r", "b2", "t2");
    assert_eq!(ws.base_commit, head);
    assert_eq!(
        std::fs::read_to_string(ws.path.join("b.txt")).unwrap(),
        "b\n"
    );
    assert_eq!(run_git(&cache, &["cat-file", "-t", &blob]), "blob");
}
