//! The API token and the git token under `outpost install`: each kept in a file of
//! root's (`/etc/outpost/token`, `/etc/outpost/git-token`, mode 0600) that the env file
//! names (`OUTPOST_TOKEN_FILE`, `OUTPOST_GIT_TOKEN_FILE`), so that neither sits in the
//! worker's environment or on a command line. A token given inline (`--token`,
//! `--git-token`, `--env OUTPOST_TOKEN=...`, or an env file of an earlier version) moves
//! into its file; `--token-file PATH` names a file of the user's own instead (ours is
//! then removed); `--env OUTPOST_TOKEN=` removes the token.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::envfile;
use super::fsops::{self, Change, Owner};

/// One secret setting: the variable, its `_FILE` variable, and our file for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secret {
    pub var: &'static str,
    pub file_var: &'static str,
    pub path: &'static str,
}

pub const SECRETS: [Secret; 2] = [
    Secret {
        var: "OUTPOST_TOKEN",
        file_var: "OUTPOST_TOKEN_FILE",
        path: "/etc/outpost/token",
    },
    Secret {
        var: "OUTPOST_GIT_TOKEN",
        file_var: "OUTPOST_GIT_TOKEN_FILE",
        path: "/etc/outpost/git-token",
    },
];

/// Sets `key` from the command line: the later of a secret and its `_FILE` form wins.
pub fn set_flag(entries: &mut Vec<(String, String)>, key: &str, value: &str) {
    for s in SECRETS {
        if key == s.var {
            envfile::set(entries, s.file_var, "");
        } else if key == s.file_var {
            envfile::set(entries, s.var, "");
        }
    }
    envfile::set(entries, key, value);
}

/// What becomes of our file for one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this token into it.
    Write(Secret, String),
    /// It holds the token already.
    Keep(Secret),
    /// The token is gone or comes from another file: remove ours.
    Remove(Secret),
}

/// Moves inline tokens out of `entries` into our files (the env file names them) and
/// says what to do with each file. `exists` tells whether a path inside the root exists.
pub fn plan(
    entries: &mut Vec<(String, String)>,
    exists: &dyn Fn(&str) -> bool,
) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for s in SECRETS {
        let inline = envfile::get(entries, s.var).map(str::to_string);
        let named = envfile::get(entries, s.file_var).map(str::to_string);
        let step = match (inline, named) {
            (Some(token), _) => {
                envfile::set(entries, s.var, "");
                envfile::set(entries, s.file_var, s.path);
                Step::Write(s, token)
            }
            (None, Some(p)) if p == s.path => {
                if !exists(s.path) {
                    bail!(
                        "{}={} but that file is missing: give the token again (--{}) or \
                         remove the setting (--env {}=)",
                        s.file_var,
                        s.path,
                        flag(s),
                        s.file_var
                    );
                }
                Step::Keep(s)
            }
            _ => Step::Remove(s),
        };
        steps.push(step);
    }
    Ok(steps)
}

/// Carries out one step in `root` (files 0600, `owner`'s); returns the path it touched
/// and what changed.
pub fn apply(step: &Step, root: &Path, owner: Owner) -> Result<(PathBuf, Change)> {
    let (s, token) = match step {
        Step::Write(s, token) => (s, Some(token.clone())),
        Step::Keep(s) => (s, None),
        Step::Remove(s) => {
            let p = root.join(s.path.trim_start_matches('/'));
            let c = fsops::remove_file(&p)?;
            return Ok((p, c));
        }
    };
    let p = root.join(s.path.trim_start_matches('/'));
    // Keep: the same bytes, so only a wrong mode or owner is fixed.
    let text = match token {
        Some(t) => t,
        None => fsops::read_optional(&p)?.unwrap_or_default(),
    };
    let c = fsops::write_file(&p, text.as_bytes(), 0o600, owner)?;
    Ok((p, c))
}

/// The install flag that gives the secret inline.
pub fn flag(s: Secret) -> &'static str {
    match s.var {
        "OUTPOST_TOKEN" => "token TOKEN",
        _ => "git-token TOKEN",
    }
}

/// Whether the API is guarded by a token (inline or from a file).
pub fn has_api_token(entries: &[(String, String)]) -> bool {
    envfile::get(entries, SECRETS[0].var).is_some()
        || envfile::get(entries, SECRETS[0].file_var).is_some()
}

/// A file named by a `_FILE` setting that is not ours and not in the root yet.
pub fn missing_own_files(entries: &[(String, String)], root: &Path) -> Vec<String> {
    SECRETS
        .iter()
        .filter_map(|s| envfile::get(entries, s.file_var).filter(|p| *p != s.path))
        .filter(|p| !root.join(p.trim_start_matches('/')).exists())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn inline_tokens_move_into_files_and_the_last_flag_wins() {
        let mut e = entries(&[("OUTPOST_TOKEN", "t0k"), ("OUTPOST_DATA", "/d")]);
        let steps = plan(&mut e, &|_| false).unwrap();
        assert_eq!(steps[0], Step::Write(SECRETS[0], "t0k".into()));
        assert_eq!(steps[1], Step::Remove(SECRETS[1]));
        assert_eq!(
            e,
            entries(&[
                ("OUTPOST_DATA", "/d"),
                ("OUTPOST_TOKEN_FILE", "/etc/outpost/token")
            ])
        );
        // A rerun keeps the file; its absence is an error that says what to do.
        assert_eq!(
            plan(&mut e.clone(), &|_| true).unwrap()[0],
            Step::Keep(SECRETS[0])
        );
        let err = plan(&mut e.clone(), &|_| false).unwrap_err().to_string();
        assert!(err.contains("--token TOKEN"), "{err}");

        set_flag(&mut e, "OUTPOST_TOKEN_FILE", "/run/secrets/api");
        set_flag(&mut e, "OUTPOST_GIT_TOKEN", "g1t");
        let steps = plan(&mut e, &|_| false).unwrap();
        assert_eq!(steps[0], Step::Remove(SECRETS[0]), "the user's own file");
        assert_eq!(steps[1], Step::Write(SECRETS[1], "g1t".into()));
        assert_eq!(
            envfile::get(&e, "OUTPOST_TOKEN_FILE"),
            Some("/run/secrets/api")
        );
        assert!(has_api_token(&e));

        set_flag(&mut e, "OUTPOST_TOKEN", "");
        assert!(
            !has_api_token(&e),
            "OUTPOST_TOKEN= removes the token in both forms"
        );
    }
}
