//! The agent: which program runs for a task (the built-in `shell` agent or a configured
//! command line) and how its argument vector is built from the prompt.

pub mod pty;
pub mod utf8;

pub use pty::{Agent, AgentSpec, OutputSink};

/// The configured agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    /// `/bin/sh -c "<prompt>"`.
    Shell,
    /// A command line; the prompt goes where `{prompt}` stands, else last.
    Argv(Vec<String>),
}

impl AgentCommand {
    /// Parses a command line with shell-like quoting (`'...'`, `"..."`, `\`).
    pub fn parse(line: &str) -> Result<AgentCommand, String> {
        let line = line.trim();
        if line.is_empty() || line == "shell" {
            return Ok(AgentCommand::Shell);
        }
        let words = split_words(line)?;
        if words.is_empty() {
            return Ok(AgentCommand::Shell);
        }
        Ok(AgentCommand::Argv(words))
    }

    /// The argument vector for one task.
    pub fn argv(&self, prompt: &str) -> Vec<String> {
        match self {
            AgentCommand::Shell => vec!["/bin/sh".into(), "-c".into(), prompt.to_string()],
            AgentCommand::Argv(words) => {
                let mut out: Vec<String> = words
                    .iter()
                    .map(|w| w.replace("{prompt}", prompt))
                    .collect();
                if !words.iter().any(|w| w.contains("{prompt}")) {
                    out.push(prompt.to_string());
                }
                out
            }
        }
    }

    /// A short name for logs and `/hello`.
    pub fn name(&self) -> &str {
        match self {
            AgentCommand::Shell => "shell",
            AgentCommand::Argv(w) => w.first().map(String::as_str).unwrap_or(""),
        }
    }
}

fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err("unterminated ' quote in the command line".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch) => cur.push(ch),
                            None => return Err("command line ends with a backslash".into()),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err("unterminated \" quote in the command line".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next().ok_or("command line ends with a backslash")?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_lines() {
        assert_eq!(AgentCommand::parse("").unwrap(), AgentCommand::Shell);
        assert_eq!(AgentCommand::parse("shell").unwrap(), AgentCommand::Shell);
        let c = AgentCommand::parse("claude -p --dangerously-skip-permissions").unwrap();
        assert_eq!(
            c.argv("fix it"),
            vec!["claude", "-p", "--dangerously-skip-permissions", "fix it"]
        );
        let c = AgentCommand::parse(r#"opencode run --msg "{prompt}" 'a b'"#).unwrap();
        assert_eq!(c.argv("go"), vec!["opencode", "run", "--msg", "go", "a b"]);
        assert!(AgentCommand::parse("x 'open").is_err());
        assert_eq!(
            AgentCommand::Shell.argv("echo hi"),
            vec!["/bin/sh", "-c", "echo hi"]
        );
    }
}
