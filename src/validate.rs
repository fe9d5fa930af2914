//! Input validation for `POST /work`: field types, git ref names, and the URL policy
//! (https only by default; never `file://`, `ext::`, credentials in the URL, or hosts
//! that resolve to link-local / metadata addresses; private and loopback addresses only
//! for allow-listed hosts). Every refusal names the field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde_json::Value;

use crate::task::model::WorkRequest;

/// A refused field: its name and a sentence saying why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// The URL policy of the worker.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    pub allow_http: bool,
    pub allowed_hosts: Vec<String>,
}

const MAX_ISSUE_ID: usize = 128;
const MAX_BRANCH: usize = 200;
const MAX_PROMPT: usize = 512 * 1024;

/// The JSON type of a value, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON whole number (`5` or `5.0`, as JSON Schema's `integer` allows), if `v` is one
/// that fits a u64.
pub fn whole_number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
            .map(|f| f as u64)
    })
}

/// A whole number within `range` in a JSON field, or a refusal that says what is allowed.
pub fn whole_in(
    field: &'static str,
    v: &Value,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> Result<u64, FieldError> {
    match whole_number(v) {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(bad(
            field,
            format!(
                "expected a whole number{unit} from {} to {}, got {}",
                range.start(),
                range.end(),
                shown(v)
            ),
        )),
    }
}

/// The largest spend cap accepted, in US dollars.
pub const MAX_USD: f64 = 1_000_000.0;

/// A dollar amount in a JSON field: a number above 0 and at most [`MAX_USD`].
pub fn usd_amount(field: &'static str, v: &Value) -> Result<f64, FieldError> {
    match v.as_f64() {
        Some(x) if x > 0.0 && x <= MAX_USD => Ok(x),
        _ => Err(bad(
            field,
            format!(
                "expected a number of US dollars above 0 and at most {MAX_USD}, got {}",
                shown(v)
            ),
        )),
    }
}

/// A value as a short text for a message (long ones are cut).
fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// A whole number in a query parameter or header: ASCII digits only, within `range`.
pub fn query_number(
    field: &'static str,
    s: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, FieldError> {
    let n = (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse::<u64>().ok())
        .flatten();
    match n {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(bad(
            field,
            format!(
                "expected a whole number from {} to {} (digits only), got {:?}",
                range.start(),
                range.end(),
                s.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// `POST /run` (ClaudeCluster's shape): `prompt` (required), `priority` 1..10,
/// `workerId` and `metadata`, which are checked and then not used (there is no queue).
pub fn parse_run_request(body: &Value) -> Result<WorkRequest, FieldError> {
    let obj = object(body)?;
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(bad("prompt", "required: a non-empty string"))
        }
        Some(v) => {
            return Err(bad(
                "prompt",
                format!("expected a non-empty string, got {}", kind(v)),
            ))
        }
    };
    if let Some(v) = obj.get("priority").filter(|v| !v.is_null()) {
        whole_in("priority", v, 1..=10, "")?;
    }
    for (field, fits, what) in [
        (
            "workerId",
            Value::is_string as fn(&Value) -> bool,
            "a string",
        ),
        ("metadata", Value::is_object, "an object"),
    ] {
        if let Some(v) = obj.get(field).filter(|v| !v.is_null() && !fits(v)) {
            return Err(bad(field, format!("expected {what}, got {}", kind(v))));
        }
    }
    parse_request(&serde_json::json!({ "prompt": prompt }))
}

/// The body as a JSON object, or a refusal naming `body`.
fn object(body: &Value) -> Result<&serde_json::Map<String, Value>, FieldError> {
    body.as_object().ok_or_else(|| {
        bad(
            "body",
            format!("expected a JSON object, got {}", kind(body)),
        )
    })
}

/// Turns a JSON body into a request, checking every field's type and shape (but not
/// URLs' hosts, which needs DNS: see [`check_url`]).
pub fn parse_request(body: &Value) -> Result<WorkRequest, FieldError> {
    let obj = object(body)?;
    let string = |field: &'static str| -> Result<Option<String>, FieldError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(bad(
                field,
                format!("expected a string (or null), got {}", kind(v)),
            )),
        }
    };
    let mut req = WorkRequest {
        issue_id: string("issue_id")?,
        rig_url: string("rig_url")?,
        beads_url: string("beads_url")?,
        git_ref: string("ref")?,
        branch: string("branch")?,
        prompt: string("prompt")?,
        context: obj.get("context").filter(|v| !v.is_null()).cloned(),
        timeout_s: None,
        max_cost_usd: None,
        fresh: false,
    };
    req.timeout_s = match obj.get("timeout_s") {
        None | Some(Value::Null) => None,
        Some(v) => Some(whole_in("timeout_s", v, 1..=7 * 86_400, " of seconds")?),
    };
    req.max_cost_usd = match obj.get("max_cost_usd") {
        None | Some(Value::Null) => None,
        Some(v) => Some(usd_amount("max_cost_usd", v)?),
    };
    req.fresh = match obj.get("fresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(bad(
                "fresh",
                format!("expected true or false (or null), got {}", kind(v)),
            ))
        }
    };
    if req.prompt.as_deref().is_none_or(str::is_empty) && req.issue_id.is_none() {
        return Err(bad(
            "prompt",
            "a task needs a non-empty prompt or an issue_id (send at least one)",
        ));
    }
    if req
        .prompt
        .as_ref()
        .is_some_and(|p| p.chars().count() > MAX_PROMPT)
    {
        return Err(bad(
            "prompt",
            format!(
                "longer than {MAX_PROMPT} characters: shorten it, or put the material in `context`"
            ),
        ));
    }
    if let Some(id) = &req.issue_id {
        check_ref_part("issue_id", id, MAX_ISSUE_ID, false)?;
    }
    if let Some(b) = &req.branch {
        check_ref_part("branch", b, MAX_BRANCH, true)?;
    }
    if let Some(r) = &req.git_ref {
        check_ref_part("ref", r, MAX_BRANCH, true)?;
    }
    for (field, url) in [("rig_url", &req.rig_url), ("beads_url", &req.beads_url)] {
        if let Some(u) = url {
            check_url_shape(field, u)?;
        }
    }
    Ok(req)
}

/// Git's rules for ref names (git-check-ref-format), plus a length cap and no leading
/// `-`. `slashes` allows `a/b` hierarchies.
pub fn check_ref_part(
    field: &'static str,
    s: &str,
    max: usize,
    slashes: bool,
) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(bad(field, "must not be empty: leave it out instead"));
    }
    if s.chars().count() > max {
        return Err(bad(field, format!("longer than {max} characters")));
    }
    if s.starts_with('-') {
        return Err(bad(field, "must not start with '-'"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() || " ~^:?*[\\".contains(*c))
    {
        return Err(bad(
            field,
            format!(
                "must not contain {c:?} (git ref rules: no spaces, control characters or ~^:?*[\\)"
            ),
        ));
    }
    if !slashes && s.contains('/') {
        return Err(bad(
            field,
            "must not contain '/' (it names one ref component)",
        ));
    }
    if s.contains("..") || s.contains("@{") || s.contains("//") || s == "@" {
        return Err(bad(field, "must not contain '..', '@{' or '//'"));
    }
    if s.ends_with('/') || s.ends_with('.') || s.starts_with('/') {
        return Err(bad(field, "must not start or end with '/' or end with '.'"));
    }
    if s.split('/')
        .any(|part| part.starts_with('.') || part.ends_with(".lock"))
    {
        return Err(bad(
            field,
            "no component may start with '.' or end with '.lock'",
        ));
    }
    Ok(())
}

/// What can be checked of a URL without the network.
fn check_url_shape(field: &'static str, s: &str) -> Result<url::Url, FieldError> {
    if s.starts_with("ext::") || s.contains("::") {
        return Err(bad(
            field,
            "transport helpers (ext::, fd::) are not allowed",
        ));
    }
    let u = url::Url::parse(s).map_err(|e| {
        bad(
            field,
            format!("not a URL ({e}): expected https://host/owner/repo"),
        )
    })?;
    match u.scheme() {
        "https" | "http" => {}
        other => {
            return Err(bad(
                field,
                format!("{other}:// is not allowed: use https://"),
            ))
        }
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            field,
            "credentials in the URL are not allowed: set OUTPOST_GIT_TOKEN instead",
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad(field, "the URL has no host"));
    }
    // A URL the git layer would refuse (a query, a space...) is refused now, with the
    // field's name, instead of failing the task after it was accepted.
    crate::git::remote_url::parse(s, true).map_err(|e| bad(field, e.to_string()))?;
    Ok(u)
}

/// Checks a URL against the policy, resolving its host (with a timeout).
pub async fn check_url(field: &'static str, s: &str, policy: &UrlPolicy) -> Result<(), FieldError> {
    let u = check_url_shape(field, s)?;
    if u.scheme() == "http" && !policy.allow_http {
        return Err(bad(
            field,
            "http:// is not allowed: use https:// (or set OUTPOST_ALLOW_HTTP=1)",
        ));
    }
    let host = u
        .host_str()
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    let port = u.port_or_known_default().unwrap_or(443);
    let with_port = format!("{host}:{port}");
    let listed = policy
        .allowed_hosts
        .iter()
        .any(|h| *h == host || *h == with_port);
    if !policy.allowed_hosts.is_empty() && !listed {
        return Err(bad(
            field,
            format!(
                "host {host} is not in OUTPOST_ALLOWED_HOSTS: use one of the hosts listed there"
            ),
        ));
    }
    if host == "metadata.google.internal" || host == "metadata" {
        return Err(bad(field, "the cloud metadata server is never a git host"));
    }
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let lookup = tokio::net::lookup_host((host.as_str(), port));
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(it)) => it.map(|a| a.ip()).collect(),
                Ok(Err(e)) => {
                    return Err(bad(field, format!("host {host} does not resolve ({e})")))
                }
                Err(_) => {
                    return Err(bad(
                        field,
                        format!("host {host} did not resolve within 5 s"),
                    ))
                }
            }
        }
    };
    if addrs.is_empty() {
        return Err(bad(field, format!("host {host} has no address")));
    }
    for ip in addrs {
        if is_metadata_or_link_local(ip) {
            return Err(bad(
                field,
                format!("host {host} resolves to {ip}, a link-local or metadata address"),
            ));
        }
        if is_internal(ip) && !listed {
            return Err(bad(
                field,
                format!("host {host} resolves to the private or loopback address {ip}: add it to OUTPOST_ALLOWED_HOSTS to allow it"),
            ));
        }
    }
    Ok(())
}

fn is_metadata_or_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

fn is_internal(ip: IpAddr) -> bool {
    let v4_internal = |v4: Ipv4Addr| {
        v4.is_private()
            || v4.is_loopback()
            || v4.is_unspecified()
            || v4.is_broadcast()
            || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
    };
    match ip {
        IpAddr::V4(v4) => v4_internal(v4),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || v6.to_ipv4_mapped().is_some_and(v4_internal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn needs_prompt_or_issue() {
        assert_eq!(parse_request(&json!({})).unwrap_err().field, "prompt");
        assert!(parse_request(&json!({"prompt": "echo hi"})).is_ok());
        assert!(parse_request(&json!({"issue_id": "gt-1"})).is_ok());
        assert_eq!(
            parse_request(&json!({"prompt": 5})).unwrap_err().field,
            "prompt"
        );
        assert_eq!(
            parse_request(&json!({"prompt": "x", "timeout_s": -1}))
                .unwrap_err()
                .field,
            "timeout_s"
        );
        assert_eq!(parse_request(&json!([1])).unwrap_err().field, "body");
    }

    #[test]
    fn fresh_is_a_boolean() {
        assert!(
            parse_request(&json!({"prompt": "x", "fresh": true}))
                .unwrap()
                .fresh
        );
        assert!(
            !parse_request(&json!({"prompt": "x", "fresh": null}))
                .unwrap()
                .fresh
        );
        assert!(!parse_request(&json!({"prompt": "x"})).unwrap().fresh);
        let e = parse_request(&json!({"prompt": "x", "fresh": "yes"})).unwrap_err();
        assert_eq!(e.field, "fresh");
    }

    #[test]
    fn max_cost_is_a_positive_number_of_dollars() {
        let ok = parse_request(&json!({"prompt": "x", "max_cost_usd": 0.25})).unwrap();
        assert_eq!(ok.max_cost_usd, Some(0.25));
        let none = parse_request(&json!({"prompt": "x", "max_cost_usd": null})).unwrap();
        assert_eq!(none.max_cost_usd, None);
        for bad_value in [json!(-1), json!(0), json!("1"), json!(true), json!(2e6)] {
            let e = parse_request(&json!({"prompt": "x", "max_cost_usd": bad_value})).unwrap_err();
            assert_eq!(e.field, "max_cost_usd", "{bad_value}");
        }
    }

    #[test]
    fn refs_follow_git_rules() {
        for bad_id in [
            "-x", "a..b", "a b", "a~1", "a:b", "x.lock", ".hidden", "a/b", "", "a@{1}",
        ] {
            assert!(
                check_ref_part("issue_id", bad_id, 128, false).is_err(),
                "{bad_id}"
            );
        }
        assert!(check_ref_part("issue_id", &"a".repeat(129), 128, false).is_err());
        for good in ["gt-abc123", "ISSUE_42", "v1.2"] {
            assert!(
                check_ref_part("issue_id", good, 128, false).is_ok(),
                "{good}"
            );
        }
        assert!(check_ref_part("branch", "polecat/gt-abc123", 200, true).is_ok());
        assert!(check_ref_part("branch", "polecat//x", 200, true).is_err());
    }

    #[tokio::test]
    async fn url_policy() {
        let p = UrlPolicy::default();
        let e = |u: &str| parse_request(&json!({"prompt": "x", "rig_url": u})).map(|_| ());
        assert!(e("file:///etc").is_err());
        assert!(e("ext::sh -c touch% /tmp/pwned").is_err());
        assert!(e("https://user:pw@github.com/o/r").is_err());
        assert!(e("ssh://github.com/o/r").is_err());
        // Accepted here but refused by the git layer when the task ran (fuzz/work_body).
        for u in [
            "https://h/o/r?x=1",
            "https://h/o/r#f",
            "https://gith\tub.com/o/r",
        ] {
            assert_eq!(e(u).unwrap_err().field, "rig_url", "{u}");
        }
        assert!(check_url("rig_url", "http://1.1.1.1/o/r", &p)
            .await
            .is_err());
        assert!(check_url("rig_url", "https://169.254.169.254/x", &p)
            .await
            .is_err());
        assert!(check_url("rig_url", "https://[fd00:ec2::254]/x", &p)
            .await
            .is_err());
        assert!(
            check_url("rig_url", "https://metadata.google.internal/x", &p)
                .await
                .is_err()
        );
        assert!(check_url("rig_url", "https://127.0.0.1/x", &p)
            .await
            .is_err());
        assert!(check_url("rig_url", "https://10.1.2.3/x", &p)
            .await
            .is_err());
        assert!(check_url("rig_url", "https://1.1.1.1/o/r", &p)
            .await
            .is_ok());
        let listed = UrlPolicy {
            allow_http: true,
            allowed_hosts: vec!["127.0.0.1".into()],
        };
        assert!(check_url("rig_url", "http://127.0.0.1:9/x", &listed)
            .await
            .is_ok());
        assert!(check_url("rig_url", "https://1.1.1.1/o/r", &listed)
            .await
            .is_err());
        let meta = UrlPolicy {
            allow_http: false,
            allowed_hosts: vec!["169.254.169.254".into()],
        };
        assert!(check_url("rig_url", "https://169.254.169.254/x", &meta)
            .await
            .is_err());
    }
}
