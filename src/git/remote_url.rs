//! Remote URLs: which ones outpost accepts (https, http only when allowed, never with
//! credentials inside), the host a token may be sent to, and the cache directory name
//! derived from a URL.

use super::error::GitError;

/// A validated remote URL.
#[derive(Debug, Clone)]
pub(crate) struct RemoteUrl {
    /// The URL as the user gave it (trimmed), safe to store and to show.
    pub url: String,
    /// `host[:port]`, lowercased: the only origin the token is sent to.
    pub origin: String,
}

/// Checks `url`: http(s) only, `http` only with `allow_http`, no user:password part.
pub(crate) fn parse(url: &str, allow_http: bool) -> Result<RemoteUrl, GitError> {
    let trimmed = url.trim();
    let invalid = |reason: &str| GitError::InvalidUrl {
        url: display_safe(trimmed),
        reason: reason.to_string(),
    };
    // The URL parser would drop tabs and newlines anywhere and control characters at the
    // ends, so the text git is given would not be the URL that was checked.
    if trimmed.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            "it contains a space or a control character: percent-encode it (%20)",
        ));
    }
    let parsed = url::Url::parse(trimmed).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => {
            invalid("it is not an https:// URL (SSH and local paths are not supported)")
        }
        other => invalid(&other.to_string()),
    })?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(GitError::HttpNotAllowed {
                url: display_safe(trimmed),
            })
        }
        other => {
            return Err(invalid(&format!(
                "the scheme '{other}' is not supported: use an https:// URL"
            )))
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "it contains a user name or password: remove it and put the token in OUTPOST_GIT_TOKEN",
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| invalid("it has no host"))?
        .to_ascii_lowercase();
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            "git URLs cannot carry a query string or a fragment",
        ));
    }
    let origin = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    // Stored (and given to git) as the parser wrote it back: `https:H/o` and
    // `https://h/o/` become the same `https://h/o` that the origin was taken from.
    Ok(RemoteUrl {
        url: parsed.as_str().trim_end_matches('/').to_string(),
        origin,
    })
}

/// The `host[:port]` of any http(s) URL, lowercased; None when it cannot be parsed.
pub(crate) fn origin_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_ascii_lowercase();
    Some(match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

/// The cache directory name for a URL: a readable prefix plus a hash of the normalized
/// URL, so `https://h/o/r`, `https://h/o/r.git` and `https://H/o/r/` share one cache.
pub(crate) fn cache_key(remote: &RemoteUrl) -> String {
    let scheme_end = remote.url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &remote.url[scheme_end..];
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let normalized = format!("{}{}{}", &remote.url[..scheme_end], remote.origin, path);
    let hash = git2::Oid::hash_object(git2::ObjectType::Blob, normalized.as_bytes())
        .map(|oid| oid.to_string())
        .unwrap_or_else(|_| fallback_hash(&normalized));
    let readable: String = format!("{}{}", remote.origin, path)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    format!("{readable}-{}", &hash[..16])
}

/// A URL for messages: the user-info part (if any) replaced, so a password typed into a
/// URL by mistake is not echoed back.
pub(crate) fn display_safe(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// FNV-1a, only used if libgit2 cannot hash (it always can).
fn fallback_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_https_and_rejects_others() {
        assert_eq!(
            parse("https://GitHub.com/o/r", false).unwrap().origin,
            "github.com"
        );
        assert!(matches!(
            parse("http://h/o/r", false),
            Err(GitError::HttpNotAllowed { .. })
        ));
        assert_eq!(
            parse("http://h:8080/o/r/", true).unwrap().url,
            "http://h:8080/o/r"
        );
        assert!(parse("ssh://git@h/o/r", true).is_err());
        assert!(parse("git@github.com:o/r", true).is_err());
        let err = parse("https://user:pw@h/o/r", false)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn stored_url_is_the_checked_one() {
        // Found by fuzzing (fuzz/git_names): the text was stored as given, so git was
        // handed `http:''''''''''` and four NUL bytes, not the URL whose host was checked.
        assert!(parse("http:''''''''''\0\0\0\0", true).is_err());
        assert!(parse("https://gith\tub.com/o/r", false).is_err());
        assert!(parse("https://h/o r", false).is_err());
        let r = parse("https:H:8443/o/r", false).unwrap();
        assert_eq!(
            (r.url.as_str(), r.origin.as_str()),
            ("https://h:8443/o/r", "h:8443")
        );
        assert_eq!(origin_of(&r.url).as_deref(), Some("h:8443"));
    }

    #[test]
    fn cache_key_normalizes() {
        let a = cache_key(&parse("https://h/o/r", false).unwrap());
        let b = cache_key(&parse("https://H/o/r.git/", false).unwrap());
        let c = cache_key(&parse("https://h/o/other", false).unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("h_o_r-"), "{a}");
    }
}
