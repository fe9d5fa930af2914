//! A pool of outposts in order of preference (local first, then a VM, then Cloud Run
//! for bursts): where a task is placed, how a live `issue_id` is found again, and the
//! pool file that lists them.
//!
//! Placement: with an `issue_id`, a task already live on any outpost is attached to,
//! never started twice. Otherwise the first outpost whose `/hello` has room gets the
//! `POST /work`; one that answers 429/503 is skipped until its `Retry-After` has passed,
//! one that cannot be reached is skipped, and when all are full the pool waits for room
//! (bounded by `wait`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::ConnectOptions;
use super::error::ClientError;
use super::outpost::Outpost;
use super::types::{Task, WorkRequest};

/// Outposts in order of preference.
pub struct Pool {
    pub outposts: Vec<Outpost>,
}

/// Where a task went.
#[derive(Debug)]
pub enum Placement {
    /// Started on `outposts[index]`.
    Started { index: usize, task: Box<Task> },
    /// A task with this `issue_id` was already live there: this is its id.
    Attached { index: usize, id: String },
}

/// Why a task went nowhere.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// An outpost refused the request itself (a bad field, a refused URL).
    #[error("refused: {0}")]
    Refused(ClientError),
    /// Every reachable outpost stayed full for the whole wait.
    #[error("no outpost had room within {waited:?} ({reasons}); retry later or raise --wait")]
    Full { waited: Duration, reasons: String },
    /// None could be reached, or none would take work from this client.
    #[error("no outpost took the task: {0}")]
    Unavailable(String),
}

impl Pool {
    /// The outpost at `index`.
    pub fn get(&self, index: usize) -> &Outpost {
        &self.outposts[index]
    }

    /// Places `req` (see the module doc); `note` hears each outpost skipped and why.
    pub async fn place(
        &self,
        req: &WorkRequest,
        wait: Duration,
        note: &mut dyn FnMut(&str),
    ) -> Result<Placement, PlaceError> {
        let start = Instant::now();
        let mut not_before: Vec<Option<Instant>> = vec![None; self.outposts.len()];
        if let Some(issue) = &req.issue_id {
            if let Some((index, id)) = self.find_live_issue(issue).await {
                return Ok(Placement::Attached { index, id });
            }
        }
        // Bounded by `wait`: each round tries every outpost once, then sleeps.
        loop {
            let mut reasons = Vec::new();
            let mut any_full = false;
            for (index, o) in self.outposts.iter().enumerate() {
                if not_before[index].is_some_and(|t| Instant::now() < t) {
                    any_full = true;
                    reasons.push(format!("{}: waiting out Retry-After", o.url()));
                    continue;
                }
                match o.hello().await {
                    Err(e) => {
                        note(&format!("skipping {}", e));
                        reasons.push(e.to_string());
                        continue;
                    }
                    Ok(h) if !h.has_room() && req.issue_id.is_none() => {
                        any_full = true;
                        let why = format!(
                            "{}: {} ({}/{} tasks)",
                            o.url(),
                            h.status,
                            h.active_tasks.unwrap_or(0),
                            h.max_tasks.map_or("?".into(), |m| m.to_string())
                        );
                        note(&format!("skipping {why}"));
                        reasons.push(why);
                        continue;
                    }
                    Ok(_) => {}
                }
                match o.submit(req).await {
                    Ok(task) => {
                        return Ok(Placement::Started {
                            index,
                            task: Box::new(task),
                        })
                    }
                    Err(ClientError::Api {
                        status: 409,
                        id: Some(id),
                        ..
                    }) => return Ok(Placement::Attached { index, id }),
                    Err(
                        e @ ClientError::Api {
                            status: 429 | 503, ..
                        },
                    ) => {
                        any_full = true;
                        if let ClientError::Api {
                            retry_after: Some(s),
                            ..
                        } = &e
                        {
                            not_before[index] = Some(Instant::now() + Duration::from_secs(*s));
                        }
                        note(&format!("skipping {e}"));
                        reasons.push(e.to_string());
                    }
                    Err(
                        e @ ClientError::Api {
                            status: 400 | 413 | 415,
                            ..
                        },
                    ) => return Err(PlaceError::Refused(e)),
                    Err(e) => {
                        note(&format!("skipping {e}"));
                        reasons.push(e.to_string());
                    }
                }
            }
            let waited = start.elapsed();
            if !any_full {
                return Err(PlaceError::Unavailable(reasons.join("; ")));
            }
            if waited >= wait {
                return Err(PlaceError::Full {
                    waited,
                    reasons: reasons.join("; "),
                });
            }
            let next_free = not_before
                .iter()
                .flatten()
                .map(|t| t.saturating_duration_since(Instant::now()))
                .filter(|d| !d.is_zero())
                .min()
                .unwrap_or(Duration::from_secs(2));
            let pause = next_free
                .min(Duration::from_secs(5))
                .min(wait - waited)
                .max(Duration::from_millis(100));
            note(&format!("every outpost is full; trying again in {pause:?}"));
            tokio::time::sleep(pause).await;
        }
    }

    /// A live task with `issue` on any reachable outpost (first in preference order).
    pub async fn find_live_issue(&self, issue: &str) -> Option<(usize, String)> {
        for (index, o) in self.outposts.iter().enumerate() {
            let Ok(tasks) = o.list(1000).await else {
                continue;
            };
            let live = tasks
                .into_iter()
                .find(|t| t.issue_id.as_deref() == Some(issue) && !t.status.is_terminal());
            if let Some(t) = live {
                return Some((index, t.id));
            }
        }
        None
    }

    /// The outpost that knows task `id`, and the task.
    pub async fn find_task(&self, id: &str) -> Result<(usize, Task), ClientError> {
        let mut last = None;
        for (index, o) in self.outposts.iter().enumerate() {
            match o.task(id).await {
                Ok(t) => return Ok((index, t)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Setup("no outpost given (--url)".into())))
    }
}

/// Where an outpost's token comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TokenSource {
    #[default]
    None,
    Literal(String),
    File(PathBuf),
    Env(String),
}

impl TokenSource {
    /// The token, read now.
    pub fn resolve(&self) -> Result<Option<String>, ClientError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Literal(t) => Ok(Some(t.clone())),
            TokenSource::File(p) => std::fs::read_to_string(p)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|e| {
                    ClientError::Setup(format!("reading the token file {}: {e}", p.display()))
                }),
            TokenSource::Env(v) => std::env::var(v)
                .map(Some)
                .map_err(|_| ClientError::Setup(format!("the token variable {v} is not set"))),
        }
    }
}

/// One outpost of a pool file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolEntry {
    pub url: String,
    pub token: TokenSource,
    pub ca_file: Option<PathBuf>,
    pub http2: Option<bool>,
}

impl PoolEntry {
    /// A client for this entry; `http2` and `ca_file` default to `defaults`.
    pub fn connect(&self, defaults: &ConnectOptions) -> Result<Outpost, ClientError> {
        let opts = ConnectOptions {
            http2: self.http2.unwrap_or(defaults.http2),
            ca_file: self.ca_file.clone().or_else(|| defaults.ca_file.clone()),
        };
        Outpost::new(&self.url, self.token.resolve()?, &opts)
    }
}

/// Reads a pool file: a small TOML subset, one `[[outpost]]` table per outpost in
/// order of preference, with `url`, and optionally `token`, `token_file`, `token_env`,
/// `cacert` (strings) and `http2` (true/false). Relative paths are relative to the
/// file's directory; `~/` is the home directory.
pub fn parse_pool_file(text: &str, dir: &Path) -> Result<Vec<PoolEntry>, String> {
    let mut out: Vec<PoolEntry> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        let at = |msg: &str| format!("line {}: {msg}: {raw:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if line == "[[outpost]]" {
            out.push(PoolEntry::default());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| at("expected key = value or [[outpost]]"))?;
        let entry = out
            .last_mut()
            .ok_or_else(|| at("a key before the first [[outpost]]"))?;
        let (key, value) = (key.trim(), value.trim());
        let string = || {
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .filter(|v| !v.contains('"'))
                .map(str::to_string)
                .ok_or_else(|| at("expected a \"quoted string\""))
        };
        let path = |s: String| expand_path(&s, dir);
        match key {
            "url" => entry.url = string()?,
            "token" => entry.token = TokenSource::Literal(string()?),
            "token_file" => entry.token = TokenSource::File(path(string()?)),
            "token_env" => entry.token = TokenSource::Env(string()?),
            "cacert" => entry.ca_file = Some(path(string()?)),
            "http2" => {
                entry.http2 = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(at("expected true or false")),
                })
            }
            _ => {
                return Err(at(
                    "unknown key (url, token, token_file, token_env, cacert, http2)",
                ))
            }
        }
    }
    if let Some(i) = out.iter().position(|e| e.url.is_empty()) {
        return Err(format!("outpost #{} has no url", i + 1));
    }
    Ok(out)
}

fn strip_comment(line: &str) -> &str {
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            _ => {}
        }
    }
    line
}

fn expand_path(s: &str, dir: &Path) -> PathBuf {
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let p = PathBuf::from(s);
    if p.is_relative() {
        dir.join(p)
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_file_in_order_with_token_sources() {
        let text = r#"
# local first
[[outpost]]
url = "http://127.0.0.1:8080"   # the laptop
token_file = "local.token"

[[outpost]]
url = "https://vm.example:8443"
token_env = "VM_TOKEN"
cacert = "/etc/outpost/ca.pem"
http2 = true

[[outpost]]
url = "https://run.example"
token = "a#b"
"#;
        let e = parse_pool_file(text, Path::new("/cfg")).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].token, TokenSource::File("/cfg/local.token".into()));
        assert_eq!(e[1].token, TokenSource::Env("VM_TOKEN".into()));
        assert_eq!(e[1].http2, Some(true));
        assert_eq!(e[1].ca_file, Some(PathBuf::from("/etc/outpost/ca.pem")));
        assert_eq!(e[2].token, TokenSource::Literal("a#b".into()));
    }

    #[test]
    fn pool_file_errors_name_the_line() {
        for (text, want) in [
            ("url = \"x\"", "line 1"),
            ("[[outpost]]\nport = 1", "unknown key"),
            ("[[outpost]]\nurl = x", "quoted"),
            ("[[outpost]]\nhttp2 = yes", "true or false"),
            ("[[outpost]]\n[[outpost]]\nurl = \"u\"", "#1 has no url"),
        ] {
            let err = parse_pool_file(text, Path::new("/")).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
