//! Cloning into the cache and preparing worktrees against a real `git http-backend`
//! (plain HTTP and TLS): shallow cache, reuse, refs, progress, retries and plain errors.

mod gitserver;

use std::path::{Path, PathBuf};
use std::time::Duration;

use gitserver::{run_git, GitServer};
use outpost::git::{self, GitConfig, GitError, Phase, Progress};

fn cfg(data: &Path) -> GitConfig {
    let mut c = GitConfig::new(data);
    c.allow_http = true;
    c.network_timeout = Duration::from_secs(30);
    c.lock_timeout = Duration::from_secs(120);
    c
}

fn cache_dirs(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("git/cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect()
}

fn posts(server: &GitServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count()
}

#[test]
fn clone_over_http_is_shallow_and_checked_out() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "one\n"), ("dir/b.txt", "b\n")]);
    let head = server.commit("r", "main", &[("a.txt", "two\n")], "second");
    let data = tempfile::tempdir().unwrap();
    let mut reports: Vec<Progress> = Vec::new();
    let ws = git::prepare(
        &cfg(data.path()),
        &server.url("r"),
        None,
        "polecat/t1",
        "t1",
        &mut |p| reports.push(p),
    )
    .unwrap();

    assert_eq!(ws.base_commit, head);
    assert_eq!(ws.branch, "polecat/t1");
    assert_eq!(ws.remote_ref, "refs/heads/main");
    assert_eq!(ws.path, data.path().join("git/worktrees/t1"));
    assert_eq!(
        std::fs::read_to_string(ws.path.join("a.txt")).unwrap(),
        "two\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path.join("dir/b.txt")).unwrap(),
        "b\n"
    );
    // The agent's own git sees a normal, clean, shallow clone on its branch.
    assert_eq!(run_git(&ws.path, &["rev-parse", "HEAD"]), head);
    assert_eq!(
        run_git(&ws.path, &["branch", "--show-current"]),
        "polecat/t1"
    );
    assert_eq!(run_git(&ws.path, &["status", "--porcelain"]), "");
    assert_eq!(run_git(&ws.path, &["rev-list", "--count", "HEAD"]), "1");
    assert_eq!(
        run_git(&ws.path, &["remote", "get-url", "origin"]),
        server.url("r")
    );

    let caches = cache_dirs(data.path());
    assert_eq!(caches.len(), 1);
    let cache = &caches[0];
    assert!(cache.join("shallow").is_file(), "the cache is shallow");
    assert_eq!(
        run_git(cache, &["rev-list", "--count", "refs/heads/main"]),
        "1"
    );
    assert_eq!(
        run_git(cache, &["rev-parse", "--is-bare-repository"]),
        "true"
    );

    assert!(!reports.is_empty(), "clone progress was reported");
    assert!(reports.iter().all(|p| p.phase == Phase::Clone));
    let last = reports.last().unwrap();
    assert!(last.total_objects > 0 && last.received_objects == last.total_objects);
    assert!(last.bytes > 0);
}

#[test]
fn clone_over_tls_trusts_the_configured_ca_only() {
    let server = GitServer::start(true);
    let head = server.create_repo("r", &[("a.txt", "tls\n")]);
    let data = tempfile::tempdir().unwrap();
    let mut c = cfg(data.path());
    c.allow_http = false;

    let err = git::prepare(&c, &server.url("r"), None, "b", "untrusted", &mut |_| {}).unwrap_err();
    assert!(matches!(err, GitError::Tls { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("TLS: ") && msg.contains("SSL_CERT_FILE"),
        "{msg}"
    );

    c.extra_ca_file = Some(server.cert_pem_path());
    let ws = server.prepare(&c, "r", "b", "trusted");
    assert_eq!(ws.base_commit, head);
    assert_eq!(
        std::fs::read_to_string(ws.path.join("a.txt")).unwrap(),
        "tls\n"
    );
    std::fs::write(ws.path.join("new.txt"), "pushed over tls\n").unwrap();
    let pushed = git::finish(&c, &ws, "over tls", &mut |_| {})
        .unwrap()
        .unwrap();
    assert_eq!(server.git("r", &["rev-parse", "refs/heads/b"]), pushed);
}

#[test]
fn later_tasks_reuse_the_cache_and_see_new_commits() {
    let server = GitServer::start(false);
    let first = server.create_repo("r", &[("a.txt", "1\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let url = server.url("r");
    let ws1 = git::prepare(&c, &url, None, "b1", "t1", &mut |_| {}).unwrap();
    assert_eq!(ws1.base_commit, first);

    let second = server.commit("r", "main", &[("a.txt", "2\n")], "upstream change");
    let ws2 = git::prepare(&c, &url, Some("main"), "b2", "t2", &mut |_| {}).unwrap();
    assert_eq!(ws2.base_commit, second);
    assert_eq!(
        std::fs::read_to_string(ws2.path.join("a.txt")).unwrap(),
        "2\n"
    );
    // The first task's worktree is untouched by the second fetch.
    assert_eq!(
        std::fs::read_to_string(ws1.path.join("a.txt")).unwrap(),
        "1\n"
    );
    assert_eq!(run_git(&ws1.path, &["rev-parse", "HEAD"]), first);

    let caches = cache_dirs(data.path());
    assert_eq!(caches.len(), 1, "one cache per repository");
    assert_eq!(
        run_git(&caches[0], &["rev-list", "--count", "refs/heads/main"]),
        "1"
    );

    // Nothing new upstream: the warm path lists refs and fetches nothing.
    let before = posts(&server);
    let ws3 = git::prepare(&c, &format!("{url}/"), None, "b3", "t3", &mut |_| {}).unwrap();
    assert_eq!(ws3.base_commit, second);
    assert_eq!(
        posts(&server),
        before,
        "no upload-pack request on a cache hit"
    );

    git::remove_worktree(&c, &ws3).unwrap();
    assert!(!ws3.path.exists());
    assert!(ws2.path.exists());
}

#[test]
fn ref_selects_a_branch_a_tag_or_fails_plainly() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "main\n")]);
    let dev = server.commit("r", "dev", &[("a.txt", "dev\n")], "on dev");
    server.git("r", &["tag", "-a", "v1", "-m", "release", "refs/heads/dev"]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let url = server.url("r");

    let ws = git::prepare(&c, &url, Some("dev"), "from-dev", "t1", &mut |_| {}).unwrap();
    assert_eq!(
        (ws.base_commit.as_str(), ws.remote_ref.as_str()),
        (dev.as_str(), "refs/heads/dev")
    );
    let ws = git::prepare(&c, &url, Some("v1"), "from-tag", "t2", &mut |_| {}).unwrap();
    assert_eq!(
        ws.base_commit, dev,
        "an annotated tag is peeled to its commit"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path.join("a.txt")).unwrap(),
        "dev\n"
    );

    let err = git::prepare(&c, &url, Some("nope"), "x", "t3", &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("ref 'nope' not found in {url}: check the branch or tag name")
    );
    assert!(!data.path().join("git/worktrees/t3").exists());

    let err = git::prepare(&c, &url, None, "bad..branch", "t4", &mut |_| {}).unwrap_err();
    assert!(matches!(err, GitError::InvalidBranch { .. }), "{err}");
}

#[test]
fn http_needs_allow_http() {
    let server = GitServer::start(false);
    server.create_repo("r", &[("a.txt", "x\n")]);
    let data = tempfile::tempdir().unwrap();
    let mut c = cfg(data.path());
    c.allow_http = false;
    let err = git::prepare(&c, &server.url("r"), None, "b", "t", &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("OUTPOST_ALLOW_HTTP=1"), "{err}");
    assert!(server.requests().is_empty(), "nothing was sent");
}

#[test]
fn refused_connection_fails_after_three_tries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let data = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/r.git");
    let err = git::prepare(&cfg(data.path()), &url, None, "b", "t", &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("network: connection refused talking to {url} after 3 tries")
    );
}

#[test]
fn server_errors_are_retried_then_reported() {
    let server = GitServer::start(false);
    let head = server.create_repo("r", &[("a.txt", "x\n")]);
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path());
    let url = server.url("r");

    server.fail_next(&[503, 502]);
    let ws = git::prepare(&c, &url, None, "b", "t1", &mut |_| {}).unwrap();
    assert_eq!(ws.base_commit, head);
    let log = server.requests();
    assert!(
        log[0].ends_with("-> 503") && log[1].ends_with("-> 502"),
        "{log:?}"
    );
    assert!(
        log[2].starts_with("GET /r.git/info/refs?service=git-upload-pack"),
        "{log:?}"
    );

    server.fail_next(&[500, 500, 500]);
    let err = git::prepare(&c, &url, None, "b", "t2", &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the git server answered HTTP 500 for {url} after 3 tries")
    );
}

#[test]
fn an_empty_repository_is_reported() {
    let server = GitServer::start(false);
    let bare = server.repo_path("empty");
    run_git(
        Path::new("/"),
        &["init", "-q", "--bare", bare.to_str().unwrap()],
    );
    let data = tempfile::tempdir().unwrap();
    let url = server.url("empty");
    let err = git::prepare(&cfg(data.path()), &url, None, "b", "t", &mut |_| {}).unwrap_err();
    assert!(matches!(err, GitError::EmptyRepository { .. }), "{err:?}");
    assert!(
        err.to_string().contains("push an initial commit first"),
        "{err}"
    );
}

#[test]
fn a_stalled_transfer_times_out_and_leaves_a_usable_cache() {
    let server = GitServer::start(false);
    let head = server.create_repo("r", &[("a.txt", &"0123456789".repeat(1000))]);
    let data = tempfile::tempdir().unwrap();
    let mut c = cfg(data.path());
    c.network_timeout = Duration::from_secs(1);
    let url = server.url("r");

    server.set_stall(true);
    let err = git::prepare(&c, &url, None, "b", "t1", &mut |_| {}).unwrap_err();
    server.set_stall(false);
    assert!(matches!(err, GitError::Network { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");

    let ws = git::prepare(&c, &url, None, "b", "t2", &mut |_| {}).unwrap();
    assert_eq!(ws.base_commit, head);
}

const CHILD_URL: &str = "OUTPOST_TEST_TLS_URL";
const CHILD_DATA: &str = "OUTPOST_TEST_TLS_DATA";

#[test]
#[ignore = "helper: run as a child process by tls_trusts_the_ca_in_ssl_cert_file"]
fn child_prepare_over_tls() {
    let (Ok(url), Ok(data)) = (std::env::var(CHILD_URL), std::env::var(CHILD_DATA)) else {
        return;
    };
    let mut c = cfg(Path::new(&data));
    c.allow_http = false;
    assert!(c.extra_ca_file.is_none());
    git::prepare(&c, &url, None, "b", "env-ca", &mut |_| {}).unwrap();
}

#[test]
fn tls_trusts_the_ca_in_ssl_cert_file() {
    let server = GitServer::start(true);
    let head = server.create_repo("r", &[("a.txt", "env\n")]);
    let data = tempfile::tempdir().unwrap();
    // A separate process, so the variable is set before anything reads it.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_prepare_over_tls",
            "--ignored",
            "--test-threads=1",
            "-q",
        ])
        .env("SSL_CERT_FILE", server.cert_pem_path())
        .env(CHILD_URL, server.url("r"))
        .env(CHILD_DATA, data.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "prepare over TLS with SSL_CERT_FILE failed"
    );
    let ws = data.path().join("git/worktrees/env-ca");
    assert_eq!(run_git(&ws, &["rev-parse", "HEAD"]), head);
}
