//! `/etc/outpost/env`: the service's settings, one `KEY=VALUE` a line, read both by
//! systemd (`EnvironmentFile=`) and by the OpenRC script (`set -a; . /etc/outpost/env`).
//!
//! Values are written so that both readers agree: plain when they hold only safe
//! characters, otherwise in single quotes (literal in sh and in systemd alike). A value
//! that no single-quoted form can carry (a `'`, a newline, a NUL) is refused.

use anyhow::{bail, Result};

/// Characters that need no quoting in either reader.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./:,@%+=-".contains(c)
}

/// Refuses a variable name that sh or systemd would not accept.
pub fn check_key(key: &str) -> Result<()> {
    let mut chars = key.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        bail!(
            "invalid variable name {key:?}: use letters, digits and _, not starting with a digit"
        );
    }
    Ok(())
}

/// Refuses a value that cannot be written so both readers see the same string.
pub fn check_value(key: &str, value: &str) -> Result<()> {
    if value.contains(['\'', '\n', '\r', '\0']) {
        bail!(
            "the value of {key} contains a quote ('), a line break or a NUL, which \
             /etc/outpost/env cannot carry for both sh and systemd: choose a value without them"
        );
    }
    Ok(())
}

/// One value as written in the file.
pub fn quote(value: &str) -> String {
    if !value.is_empty() && value.chars().all(is_plain) {
        value.to_string()
    } else {
        format!("'{value}'")
    }
}

/// Reads the `KEY=VALUE` lines of an env file this module wrote (or a hand-edited one
/// in the same style: plain, single- or double-quoted values, optional `export`).
/// Comments and blank lines are skipped; a line that is not an assignment is an error
/// naming the line, so a typo is not silently dropped by a rewrite.
pub fn parse(text: &str, file: &str) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            bail!(
                "{file} line {}: {raw:?} is not KEY=VALUE: fix or delete that line and run again",
                n + 1
            );
        };
        let key = key.trim();
        check_key(key).map_err(|e| anyhow::anyhow!("{file} line {}: {e}", n + 1))?;
        let value = value.trim();
        let value = unquote(value).unwrap_or(value);
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

fn unquote(v: &str) -> Option<&str> {
    ['\'', '"'].into_iter().find_map(|q| {
        v.strip_prefix(q)
            .and_then(|rest| rest.strip_suffix(q))
            .filter(|inner| !inner.contains(q))
    })
}

/// Renders the file: a header saying who wrote it, then the entries in order.
pub fn render(entries: &[(String, String)], notes: &[String]) -> String {
    let mut s = String::from(
        "# Settings of the outpost service, one KEY=VALUE a line (see `outpost serve --help`).\n\
         # Written by `outpost install`; a rerun keeps the values it does not set.\n\
         # Restart the service after editing.\n",
    );
    for note in notes {
        s.push_str("# ");
        s.push_str(note);
        s.push('\n');
    }
    for (k, v) in entries {
        s.push_str(k);
        s.push('=');
        s.push_str(&quote(v));
        s.push('\n');
    }
    s
}

/// Sets `key` to `value` in `entries`, keeping its position when it was there;
/// an empty value removes the key.
pub fn set(entries: &mut Vec<(String, String)>, key: &str, value: &str) {
    if value.is_empty() {
        entries.retain(|(k, _)| k != key);
    } else if let Some(slot) = entries.iter_mut().find(|(k, _)| k == key) {
        slot.1 = value.to_string();
    } else {
        entries.push((key.to_string(), value.to_string()));
    }
}

/// The value of `key`, if set.
pub fn get<'a>(entries: &'a [(String, String)], key: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_through_parse() {
        let entries = vec![
            ("OUTPOST_DATA".to_string(), "/var/lib/outpost".to_string()),
            (
                "OUTPOST_AGENT".to_string(),
                "claude -p --dangerously-skip-permissions".to_string(),
            ),
            ("OUTPOST_X".to_string(), "a$b \"c\" `d`".to_string()),
        ];
        let text = render(&entries, &["a note".to_string()]);
        assert!(text.contains("OUTPOST_DATA=/var/lib/outpost\n"));
        assert!(text.contains("OUTPOST_AGENT='claude -p --dangerously-skip-permissions'\n"));
        assert_eq!(parse(&text, "env").unwrap(), entries);
    }

    #[test]
    fn bad_lines_and_values_are_refused() {
        assert!(parse("OUTPOST_A=1\nnot an assignment\n", "env").is_err());
        assert!(parse("1BAD=x\n", "env").is_err());
        assert!(check_value("K", "it's").is_err());
        assert!(check_value("K", "a\nb").is_err());
        assert!(check_key("GOOD_1").is_ok());
    }

    #[test]
    fn set_keeps_order_and_empty_removes() {
        let mut e = vec![("A".into(), "1".into()), ("B".into(), "2".into())];
        set(&mut e, "A", "3");
        set(&mut e, "C", "4");
        set(&mut e, "B", "");
        assert_eq!(
            e,
            vec![
                ("A".to_string(), "3".to_string()),
                ("C".to_string(), "4".to_string())
            ]
        );
    }
}
