//! The agent: which program runs for a task (the built-in `shell` agent, the `claude` and
//! `opencode` profiles, or a configured command line), how its argument vector is built
//! from the prompt (`profile`), and how its structured output is read (`structured`).

pub mod profile;
pub mod pty;
pub mod run;
pub mod structured;
pub mod utf8;

pub use pty::{Agent, AgentSpec, OutputSink};

/// The configured agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    /// `/bin/sh -c "<prompt>"`.
    Shell,
    /// A command line; the prompt goes where `{prompt}` stands, else last.
    Argv(Vec<String>),
    /// Claude Code (`OUTPOST_AGENT=claude`): see [`profile::AgentProfile`].
    Claude,
    /// opencode (`OUTPOST_AGENT=opencode`): see [`profile::AgentProfile`].
    Opencode,
}

impl AgentCommand {
    /// Parses `shell`, `claude`, `opencode` (the profiles, as single words) or a command
    /// line with shell-like quoting (`'...'`, `"..."`, `\`).
    pub fn parse(line: &str) -> Result<AgentCommand, String> {
        let line = line.trim();
        match line {
            "" | "shell" => return Ok(AgentCommand::Shell),
            "claude" => return Ok(AgentCommand::Claude),
            "opencode" => return Ok(AgentCommand::Opencode),
            _ => {}
        }
        let words = split_words(line)?;
        if words.is_empty() {
            return Ok(AgentCommand::Shell);
        }
        Ok(AgentCommand::Argv(words))
    }

    /// The argument vector for one task (a new session, no budget, no extra flags: the
    /// full choice is [`profile::AgentProfile::argv`]).
    pub fn argv(&self, prompt: &str) -> Vec<String> {
        profile::AgentProfile::from_command(self.clone()).argv(prompt, None, None)
    }

    /// A short name for logs and `/hello`.
    pub fn name(&self) -> &str {
        match self {
            AgentCommand::Shell => "shell",
            AgentCommand::Claude => "claude",
            AgentCommand::Opencode => "opencode",
            AgentCommand::Argv(w) => w.first().map(String::as_str).unwrap_or(""),
        }
    }
}

pub(crate) fn split_words(line: &str) -> Result<Vec<String>, String> {
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
            AgentCommand::parse(" claude ").unwrap(),
            AgentCommand::Claude
        );
        assert_eq!(AgentCommand::parse("opencode").unwrap().name(), "opencode");
        assert_eq!(
            AgentCommand::Shell.argv("echo hi"),
            vec!["/bin/sh", "-c", "echo hi"]
        );
    }
}
