//! The git module's error type: every variant reads as a plain sentence that says what
//! failed, where, and what the user can do about it. No variant ever carries the token:
//! messages that come from outside (libgit2, the network, the server) pass through
//! [`redact`] before they are stored.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while cloning, committing or pushing.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The URL is not one outpost can use (scheme, credentials in it, syntax).
    #[error("invalid git URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// A plain `http://` URL while `OUTPOST_ALLOW_HTTP` is off.
    #[error(
        "refusing the plain http:// URL {url}: set OUTPOST_ALLOW_HTTP=1 to allow unencrypted git traffic, or use https://"
    )]
    HttpNotAllowed { url: String },

    /// The branch name cannot be a git ref.
    #[error("invalid branch name '{branch}': it is not a valid git ref name")]
    InvalidBranch { branch: String },

    /// HTTP 401 or 403.
    #[error("authentication failed (HTTP {status}) for {url}: {hint}")]
    Auth {
        url: String,
        status: u16,
        hint: &'static str,
    },

    /// HTTP 404.
    #[error("repository not found (HTTP 404) at {url}: check the URL{hint}")]
    NotFound { url: String, hint: &'static str },

    /// Any other HTTP status that ended the operation (5xx after the retries, 4xx).
    #[error("the git server answered HTTP {status} for {url}{}", after(*tries))]
    Http {
        url: String,
        status: u16,
        tries: u32,
    },

    /// Connection refused/reset, DNS, timeouts: after the bounded retries.
    #[error("network: {detail} talking to {url}{}", after(*tries))]
    Network {
        url: String,
        detail: String,
        tries: u32,
    },

    /// The TLS handshake failed (most often: a certificate nobody trusts).
    #[error(
        "TLS: {detail} for {url}: if the server uses a private CA, add it to the file named by SSL_CERT_FILE"
    )]
    Tls { url: String, detail: String },

    /// The server answered, but not with git's smart HTTP protocol.
    #[error(
        "the server at {url} does not speak git smart HTTP (it answered with content-type '{content_type}'): check the URL"
    )]
    NotSmartHttp { url: String, content_type: String },

    /// The repository has no branch or tag of that name.
    #[error("ref '{git_ref}' not found in {url}: check the branch or tag name")]
    RefNotFound { url: String, git_ref: String },

    /// The repository has no commits at all.
    #[error(
        "the repository at {url} is empty (it has no default branch): push an initial commit first"
    )]
    EmptyRepository { url: String },

    /// The remote branch has commits the local one does not contain.
    #[error(
        "push to {url} rejected: non-fast-forward: the remote branch '{branch}' has commits this worktree does not have (someone else pushed to it); use another branch name or delete the remote branch"
    )]
    NonFastForward { url: String, branch: String },

    /// The server refused the update (hook, protected branch, ...).
    #[error("push to {url} rejected for branch '{branch}': {reason}")]
    Rejected {
        url: String,
        branch: String,
        reason: String,
    },

    /// The beads push was rejected, and replaying the local commits on the new tip conflicts.
    #[error(
        "push to {url} was rejected as non-fast-forward, and re-applying this task's commits on the new tip of '{branch}' conflicts in: {paths}"
    )]
    ReapplyConflict {
        url: String,
        branch: String,
        paths: String,
    },

    /// Another task holds the cache lock for too long.
    #[error(
        "timed out after {waited:?} waiting for the lock on the repository cache {path}: another task is still fetching this repository; try again later"
    )]
    LockTimeout { path: PathBuf, waited: Duration },

    /// A file-system operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// libgit2 reported an error.
    #[error("{what}: {message}")]
    Git { what: String, message: String },
}

impl GitError {
    /// Wraps an I/O error with what was being done (name the path in `what`).
    pub fn io(what: impl Into<String>, source: std::io::Error) -> GitError {
        GitError::Io {
            what: what.into(),
            source,
        }
    }

    /// Wraps a libgit2 error with what was being done; the message is redacted.
    pub fn git(what: impl Into<String>, err: &git2::Error, token: Option<&str>) -> GitError {
        GitError::Git {
            what: what.into(),
            message: redact(err.message(), token),
        }
    }

    /// True for errors that the same request may not hit again (network, 5xx): the caller
    /// may decide to retry the whole task later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitError::Network { .. } | GitError::Http { .. } | GitError::LockTimeout { .. }
        )
    }
}

/// " after N tries" when the request was retried.
fn after(tries: u32) -> String {
    if tries > 1 {
        format!(" after {tries} tries")
    } else {
        String::new()
    }
}

/// Replaces every occurrence of the token (and of its basic-auth encoding) in `text`.
pub fn redact(text: &str, token: Option<&str>) -> String {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return text.to_string();
    };
    let mut out = text.replace(token, "[redacted]");
    let basic = basic_auth_value(token);
    if let Some(encoded) = basic.strip_prefix("Basic ") {
        out = out.replace(encoded, "[redacted]");
    }
    out
}

/// The `Authorization` header value for a token: GitHub's `x-access-token:<token>` form.
pub(crate) fn basic_auth_value(token: &str) -> String {
    use base64::Engine as _;
    let raw = format!("x-access-token:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_token_and_its_encoding() {
        let token = "s3cr3t-token";
        let header = basic_auth_value(token);
        let text = format!("failed with {token} and {header}");
        let out = redact(&text, Some(token));
        assert!(!out.contains(token), "{out}");
        assert!(!out.contains(header.trim_start_matches("Basic ")), "{out}");
        assert_eq!(redact("plain", None), "plain");
    }

    #[test]
    fn auth_message_names_the_variable() {
        let e = GitError::Auth {
            url: "https://h/o/r".into(),
            status: 401,
            hint: "set OUTPOST_GIT_TOKEN",
        };
        assert_eq!(
            e.to_string(),
            "authentication failed (HTTP 401) for https://h/o/r: set OUTPOST_GIT_TOKEN"
        );
    }
}
