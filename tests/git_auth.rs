//! Tokens against a real `git http-backend` behind basic auth: clone and push work with
//! the token, fail plainly without it or with a wrong one, and the token is written
//! nowhere (no file under the data dir, no error message). Also: 404 in plain words.

mod gitserver;

use std::path::Path;
use std::time::Duration;

use gitserver::{files_below, run_git, GitServer};
use outpost::git::{self, GitConfig, GitError};

const TOKEN: &str = "ghp_TEST0123456789abcdefSECRET";

fn cfg(data: &Path, token: Option<&str>) -> GitConfig {
    let mut c = GitConfig::new(data);
    c.allow_http = true;
    c.token = token.map(str::to_string);
    c.network_timeout = Duration::from_secs(30);
    c.lock_timeout = Duration::from_secs(120);
    c
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    files_below(dir)
        .into_iter()
        .filter(|(path, _)| {
            std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        })
        .map(|(path, _)| path.display().to_string())
        .collect()
}

#[test]
fn token_opens_a_protected_repository_and_is_never_written() {
    let server = GitServer::start(false);
    let base = server.create_repo("private", &[("a.txt", "secret stuff\n")]);
    server.require_auth("x-access-token", TOKEN);
    let data = tempfile::tempdir().unwrap();
    let url = server.url("private");

    let c = cfg(data.path(), Some(TOKEN));
    let ws = git::prepare(&c, &url, None, "polecat/auth", "t1", &mut |_| {}).unwrap();
    assert_eq!(ws.base_commit, base);
    std::fs::write(ws.path.join("b.txt"), "new\n").unwrap();
    let pushed = git::finish(&c, &ws, "with token", &mut |_| {})
        .unwrap()
        .unwrap();
    assert_eq!(
        server.git("private", &["rev-parse", "refs/heads/polecat/auth"]),
        pushed
    );

    assert_eq!(
        files_containing(data.path(), TOKEN.as_bytes()),
        Vec::<String>::new()
    );
    assert_eq!(
        files_containing(data.path(), b"x-access-token"),
        Vec::<String>::new()
    );
    assert_eq!(run_git(&ws.path, &["remote", "get-url", "origin"]), url);
    assert!(!format!("{ws:?}").contains(TOKEN));
    assert!(
        !format!("{c:?}").contains(TOKEN),
        "Debug of the config hides the token"
    );
}

#[test]
fn missing_or_wrong_token_fails_plainly() {
    let server = GitServer::start(false);
    server.create_repo("private", &[("a.txt", "x\n")]);
    server.require_auth("x-access-token", TOKEN);
    let data = tempfile::tempdir().unwrap();
    let url = server.url("private");

    let err =
        git::prepare(&cfg(data.path(), None), &url, None, "b", "t1", &mut |_| {}).unwrap_err();
    assert!(matches!(err, GitError::Auth { status: 401, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("authentication failed (HTTP 401) for {url}: set OUTPOST_GIT_TOKEN (or GH_TOKEN) to a token that can access this repository")
    );

    let wrong = "ghp_WRONG_TOKEN_value_42";
    let err = git::prepare(
        &cfg(data.path(), Some(wrong)),
        &url,
        None,
        "b",
        "t2",
        &mut |_| {},
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "authentication failed (HTTP 401) for {url}: the server refused the token"
        )),
        "{msg}"
    );
    assert!(
        !msg.contains(wrong) && !format!("{err:?}").contains(wrong),
        "{msg}"
    );
    assert_eq!(
        files_containing(data.path(), wrong.as_bytes()),
        Vec::<String>::new()
    );
}

#[test]
fn token_is_not_leaked_by_a_failed_push() {
    let server = GitServer::start(false);
    server.create_repo("private", &[("a.txt", "x\n")]);
    server.require_auth("x-access-token", TOKEN);
    server.reject_pushes("private", &format!("hook saw {TOKEN}"));
    let data = tempfile::tempdir().unwrap();
    let c = cfg(data.path(), Some(TOKEN));
    let ws = server.prepare(&c, "private", "polecat/x", "t1");
    std::fs::write(ws.path.join("a.txt"), "y\n").unwrap();
    let err = git::finish(&c, &ws, "change", &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("hook saw [redacted]"), "{msg}");
    assert!(
        !msg.contains(TOKEN) && !format!("{err:?}").contains(TOKEN),
        "{msg}"
    );
}

#[test]
fn unknown_repository_is_a_plain_404() {
    let server = GitServer::start(false);
    let data = tempfile::tempdir().unwrap();
    let url = server.url("does-not-exist");
    let err =
        git::prepare(&cfg(data.path(), None), &url, None, "b", "t1", &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("repository not found (HTTP 404) at {url}: check the URL; a private repository also answers 404 without a token: set OUTPOST_GIT_TOKEN")
    );
}

#[test]
fn credentials_inside_the_url_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let err = git::prepare(
        &cfg(data.path(), None),
        "https://user:hunter2@example.com/o/r.git",
        None,
        "b",
        "t1",
        &mut |_| {},
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("OUTPOST_GIT_TOKEN") && !msg.contains("hunter2"),
        "{msg}"
    );
}
