//! Git names and URLs on their own: `issue_id`, `branch` and `ref` checks, the git
//! layer's remote URL parser, the origin the token goes to, the cache directory name and
//! the URL shown in messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::fuzzing::{display_safe, git_accepts_branch, origin_of, remote_url};
use outpost::validate::check_ref_part;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // issue_id: one component; it becomes `polecat/<issue_id>`.
    if check_ref_part("issue_id", s, 128, false).is_ok() {
        assert!(!s.contains('/'));
        assert!(git_accepts_branch(s), "issue_id {s:?}");
        assert!(
            git_accepts_branch(&format!("polecat/{s}")),
            "issue_id {s:?}"
        );
    }
    if check_ref_part("branch", s, 200, true).is_ok() {
        assert!(git_accepts_branch(s), "branch {s:?}");
    }
    for allow_http in [false, true] {
        let Ok(r) = remote_url(s, allow_http) else {
            continue;
        };
        assert!(
            r.url.starts_with("https://") || (allow_http && r.url.starts_with("http://")),
            "{r:?}"
        );
        assert!(!r.origin.is_empty(), "{r:?}");
        assert!(
            !r.origin.contains(['@', '/', '?', '#', ' '])
                && r.origin == r.origin.to_ascii_lowercase(),
            "origin {:?} of {s:?}",
            r.origin
        );
        // The transport finds the same origin in the stored URL.
        assert_eq!(
            origin_of(&r.url).as_deref(),
            Some(r.origin.as_str()),
            "{s:?}"
        );
        // The stored URL is accepted again as itself.
        let again =
            remote_url(&r.url, allow_http).unwrap_or_else(|e| panic!("{s:?} -> {r:?}: {e}"));
        assert_eq!(again, r, "{s:?}");
        // The cache directory is one safe path component (`.` in it is harmless: it
        // always ends in `-<hash>`, so it is never `.` or `..`).
        let k = &r.cache_key;
        assert!(k.len() > 17 && k.len() <= 80, "{k:?}");
        assert!(k.as_bytes()[k.len() - 17] == b'-', "{k:?}");
        assert!(
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'),
            "{k:?}"
        );
    }
    // Messages never show a user name or password.
    let shown = display_safe(s);
    if let Ok(u) = url::Url::parse(&shown) {
        if url::Url::parse(s).is_ok_and(|o| o.password().is_some() || !o.username().is_empty()) {
            assert!(
                u.username().is_empty() && u.password().is_none(),
                "{s:?} shown as {shown:?}"
            );
        }
    }
});
