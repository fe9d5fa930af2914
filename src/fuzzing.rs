//! Entry points for the fuzz targets (`fuzz/`): thin, public wrappers over internals that
//! the rest of the crate keeps private (the remote URL checks of `git`, the ref rule git
//! itself applies), so that fuzzing widens no module. Nothing in the worker calls these.

use crate::task::model::WorkRequest;

/// What `POST /work` (or, with `run_compat`, `POST /run`) does with a body: parse it as
/// JSON, then check every field ([`crate::validate::parse_request`]). The URLs' hosts are
/// not resolved (that needs DNS and is checked apart).
pub fn work_body(body: &[u8], run_compat: bool) -> Result<WorkRequest, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let value = if run_compat {
        let prompt = value
            .get("prompt")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        serde_json::json!({ "prompt": prompt })
    } else {
        value
    };
    crate::validate::parse_request(&value).map_err(|e| e.to_string())
}

/// Whether git (libgit2) takes `name` as a branch, as the git layer checks it before it
/// creates the branch: `refs/heads/<name>` must be a valid ref name and not start with '-'.
pub fn git_accepts_branch(name: &str) -> bool {
    !name.starts_with('-') && git2::Reference::is_valid_name(&format!("refs/heads/{name}"))
}

/// A remote URL as the git layer accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The URL as stored (trimmed, no trailing '/').
    pub url: String,
    /// `host[:port]`, lowercased: the only origin a token is sent to.
    pub origin: String,
    /// The name of the repository's cache directory.
    pub cache_key: String,
}

/// The git layer's check of a remote URL (`https`, `http` only when allowed, no
/// credentials, no query or fragment).
pub fn remote_url(url: &str, allow_http: bool) -> Result<Remote, String> {
    let r = crate::git::remote_url::parse(url, allow_http).map_err(|e| e.to_string())?;
    let cache_key = crate::git::remote_url::cache_key(&r);
    Ok(Remote {
        url: r.url,
        origin: r.origin,
        cache_key,
    })
}

/// The `host[:port]` the transport compares against a remote's origin before it sends
/// the token.
pub fn origin_of(url: &str) -> Option<String> {
    crate::git::remote_url::origin_of(url)
}

/// A URL as error messages show it (user name and password removed).
pub fn display_safe(url: &str) -> String {
    crate::git::remote_url::display_safe(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrappers_follow_the_real_checks() {
        let req = work_body(br#"{"prompt":"echo hi","branch":"a/b"}"#, false).unwrap();
        assert_eq!(req.branch.as_deref(), Some("a/b"));
        assert!(work_body(br#"{"prompt":"x","branch":"a//b"}"#, false).is_err());
        assert!(work_body(br#"{"prompt":"x","branch":"a//b"}"#, true).is_ok());
        assert!(work_body(b"{", false).unwrap_err().contains("JSON"));
        assert!(git_accepts_branch("polecat/gt-1"));
        assert!(!git_accepts_branch("a..b"));
        let r = remote_url("https://H/o/r.git/", false).unwrap();
        assert_eq!(r.origin, "h");
        assert_eq!(origin_of(&r.url).as_deref(), Some("h"));
        assert!(!display_safe("https://u:secret@h/x").contains("secret"));
    }
}
