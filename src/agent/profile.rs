//! Agent profiles: what outpost knows about each agent it can run. A profile builds the
//! command line of one task (the profile's own flags, the session and budget flags, the
//! user's extra flags from `OUTPOST_AGENT_ARGS`, then the prompt), names the structured
//! output format to parse, the environment the agent needs (where its session state
//! lives, what stops it from asking or phoning home), and how it resumes a session and
//! caps its spend. Pure functions, but for `claude_transcript_exists`, which looks in the
//! state dir; nothing here spawns anything.
//!
//! The facts behind each profile were checked against the pinned CLIs (see
//! docs/agents.md and tests/agents_cli.rs).

use std::path::Path;

use super::{split_words, AgentCommand};

/// The structured output an agent prints, one JSON object a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Raw terminal output only: nothing to parse.
    None,
    /// Claude Code's `--output-format stream-json --verbose`.
    ClaudeStreamJson,
    /// opencode's `run --format json` envelopes.
    OpencodeJson,
}

/// How the session of one run is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPlan {
    /// A new session; with `Some(id)` under that id, where the agent lets the caller fix
    /// it (Claude Code: a UUID). opencode picks its own id: read it from the output.
    New(Option<String>),
    /// Continue the session with this id (the agent's own id, as it reported it).
    Resume(String),
}

/// Where an agent keeps its sessions, so that a session can be resumed later: the
/// directory the worker gives the agent per issue (see [`AgentProfile::env`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStore {
    /// No sessions (shell, custom command lines).
    None,
    /// Claude Code: `CLAUDE_CONFIG_DIR=<dir>`; transcripts in
    /// `<dir>/projects/<cwd with / and . as ->/<session id>.jsonl`.
    ClaudeConfigDir,
    /// opencode: `XDG_DATA_HOME=<dir>/data` (the session database
    /// `<dir>/data/opencode/opencode.db`) and `XDG_STATE_HOME=<dir>/state`.
    OpencodeXdgDirs,
}

/// One agent as outpost runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentProfile {
    command: AgentCommand,
    /// The program to run in place of the profile's default (`claude`, `opencode`).
    program: Option<String>,
    /// The user's extra flags (`OUTPOST_AGENT_ARGS`), after the profile's own.
    extra_args: Vec<String>,
}

impl AgentProfile {
    /// The profile for `OUTPOST_AGENT` (`shell`, `claude`, `opencode` or a command
    /// line) with the user's extra flags (`OUTPOST_AGENT_ARGS`, shell-like quoting).
    pub fn parse(agent: &str, extra_args: Option<&str>) -> Result<AgentProfile, String> {
        let command = AgentCommand::parse(agent)?;
        let extra_args = match extra_args.map(str::trim) {
            None | Some("") => Vec::new(),
            Some(line) => split_words(line).map_err(|e| format!("OUTPOST_AGENT_ARGS: {e}"))?,
        };
        if command == AgentCommand::Shell && !extra_args.is_empty() {
            return Err(
                "OUTPOST_AGENT_ARGS has no meaning for the shell agent (it runs `/bin/sh -c \
                 <prompt>`): unset it, or set OUTPOST_AGENT to a command line"
                    .into(),
            );
        }
        Ok(AgentProfile {
            command,
            program: None,
            extra_args,
        })
    }

    /// The profile of an already parsed command, with no extra flags.
    pub fn from_command(command: AgentCommand) -> AgentProfile {
        AgentProfile {
            command,
            program: None,
            extra_args: Vec::new(),
        }
    }

    /// Runs `program` (a path) instead of the profile's default program name. Only
    /// meaningful for `claude` and `opencode`; command lines name their own program.
    pub fn with_program(mut self, program: impl Into<String>) -> AgentProfile {
        self.program = Some(program.into());
        self
    }

    /// The command this profile runs.
    pub fn command(&self) -> &AgentCommand {
        &self.command
    }

    /// A short name for logs, `/hello` and the task's `agent.name`.
    pub fn name(&self) -> &str {
        self.command.name()
    }

    /// The structured output format to parse from the agent's output.
    pub fn format(&self) -> OutputFormat {
        match self.command {
            AgentCommand::Claude => OutputFormat::ClaudeStreamJson,
            AgentCommand::Opencode => OutputFormat::OpencodeJson,
            AgentCommand::Shell | AgentCommand::Argv(_) => OutputFormat::None,
        }
    }

    /// Where the agent keeps its sessions.
    pub fn session_store(&self) -> SessionStore {
        match self.command {
            AgentCommand::Claude => SessionStore::ClaudeConfigDir,
            AgentCommand::Opencode => SessionStore::OpencodeXdgDirs,
            AgentCommand::Shell | AgentCommand::Argv(_) => SessionStore::None,
        }
    }

    /// Whether the caller can fix a new session's id up front (`SessionPlan::New(Some)`);
    /// otherwise the id is read from the agent's output.
    pub fn fixes_session_id(&self) -> bool {
        self.command == AgentCommand::Claude
    }

    /// Whether the agent can resume a session (`SessionPlan::Resume`).
    pub fn resumes(&self) -> bool {
        self.session_store() != SessionStore::None
    }

    /// Whether the agent caps its own spend (`budget` in [`AgentProfile::argv`] becomes
    /// a flag). Where it does not, the worker enforces the cap from the streamed usage
    /// (`structured::Totals`).
    pub fn caps_budget(&self) -> bool {
        self.command == AgentCommand::Claude
    }

    /// Whether the agent may keep running after it reported the end of its run, so the
    /// worker must stop it once the parser says the run is over (opencode).
    pub fn may_hang_after_result(&self) -> bool {
        self.command == AgentCommand::Opencode
    }

    /// Whether the agent refuses to run as root with the flags of this profile (Claude
    /// Code: `--dangerously-skip-permissions cannot be used with root/sudo privileges`).
    /// Run it as the agent user; [`AgentProfile::root_env`] lifts the refusal where the
    /// operator chose `OUTPOST_AGENT_USER=root`.
    pub fn refuses_root(&self) -> bool {
        self.command == AgentCommand::Claude
    }

    /// The argument vector of one run: `prompt`, the session to start or resume, and the
    /// spend cap in USD (ignored where the agent has no flag for it: see
    /// [`AgentProfile::caps_budget`]).
    pub fn argv(
        &self,
        prompt: &str,
        session: Option<&SessionPlan>,
        budget: Option<f64>,
    ) -> Vec<String> {
        let program = |default: &str| self.program.clone().unwrap_or_else(|| default.to_string());
        match &self.command {
            AgentCommand::Shell => vec!["/bin/sh".into(), "-c".into(), prompt.to_string()],
            AgentCommand::Argv(words) => {
                let mut words = words.clone();
                words.extend(self.extra_args.iter().cloned());
                fill_prompt(&words, prompt)
            }
            AgentCommand::Claude => {
                let mut v = vec![program("claude")];
                v.extend(
                    [
                        "-p",
                        "--output-format",
                        "stream-json",
                        "--verbose",
                        "--dangerously-skip-permissions",
                    ]
                    .map(String::from),
                );
                match session {
                    Some(SessionPlan::New(Some(id))) => {
                        v.extend(["--session-id".into(), id.clone()])
                    }
                    Some(SessionPlan::Resume(id)) => v.extend(["--resume".into(), id.clone()]),
                    Some(SessionPlan::New(None)) | None => {}
                }
                if let Some(usd) = budget {
                    v.extend(["--max-budget-usd".into(), format_usd(usd)]);
                }
                v.extend(self.extra_args.iter().cloned());
                // `--` so that a prompt starting with `-` is not read as a flag.
                v.extend(["--".into(), prompt.to_string()]);
                v
            }
            AgentCommand::Opencode => {
                let mut v = vec![
                    program("opencode"),
                    "run".into(),
                    "--format".into(),
                    "json".into(),
                ];
                if let Some(SessionPlan::Resume(id)) = session {
                    v.extend(["--session".into(), id.clone()]);
                }
                v.extend(self.extra_args.iter().cloned());
                v.extend(["--".into(), prompt.to_string()]);
                v
            }
        }
    }

    /// The environment the agent needs beside the worker's usual agent environment:
    /// where its session state lives (`state_dir`, one per issue, owned by the agent
    /// user) and the switches that keep it from asking for permission or sending
    /// telemetry. The API key and base URL (`ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`)
    /// pass through from the worker's configuration as for any agent.
    pub fn env(&self, state_dir: &Path) -> Vec<(String, String)> {
        let dir = |sub: &str| {
            let p = if sub.is_empty() {
                state_dir.to_path_buf()
            } else {
                state_dir.join(sub)
            };
            p.to_string_lossy().into_owned()
        };
        let pairs: Vec<(&str, String)> = match self.command {
            AgentCommand::Shell | AgentCommand::Argv(_) => Vec::new(),
            AgentCommand::Claude => vec![
                ("CLAUDE_CONFIG_DIR", dir("")),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
                ("DISABLE_TELEMETRY", "1".into()),
                ("DISABLE_ERROR_REPORTING", "1".into()),
                ("DISABLE_AUTOUPDATER", "1".into()),
            ],
            AgentCommand::Opencode => vec![
                ("XDG_DATA_HOME", dir("data")),
                ("XDG_STATE_HOME", dir("state")),
                ("OPENCODE_PERMISSION", r#"{"*":"allow"}"#.into()),
                ("OPENCODE_DISABLE_AUTOUPDATE", "1".into()),
                ("OPENCODE_DISABLE_SHARE", "1".into()),
                // No external plugins: else each run starts a background `npm install`
                // in its config dir, which offline holds the exit for ~45 s.
                ("OPENCODE_PURE", "1".into()),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Extra environment for an agent that must run as root (`OUTPOST_AGENT_USER=root`):
    /// Claude Code accepts `--dangerously-skip-permissions` as root with `IS_SANDBOX=1`.
    pub fn root_env(&self) -> Vec<(String, String)> {
        match self.command {
            AgentCommand::Claude => vec![("IS_SANDBOX".to_string(), "1".to_string())],
            _ => Vec::new(),
        }
    }
}

/// Whether Claude Code has a transcript of `session_id` under its config dir
/// (`<state_dir>/projects/<any cwd>/<session_id>.jsonl`): then the session is continued
/// with `--resume`; else it is started with `--session-id` (which refuses an id that has
/// a transcript, and `--resume` fails on one that has none). Reads the directory: call
/// it off the async runtime.
pub fn claude_transcript_exists(state_dir: &Path, session_id: &str) -> bool {
    let name = format!("{session_id}.jsonl");
    std::fs::read_dir(state_dir.join("projects"))
        .map(|dirs| dirs.flatten().any(|d| d.path().join(&name).is_file()))
        .unwrap_or(false)
}

/// Words with the prompt where `{prompt}` stands, else appended.
pub(crate) fn fill_prompt(words: &[String], prompt: &str) -> Vec<String> {
    let mut out: Vec<String> = words
        .iter()
        .map(|w| w.replace("{prompt}", prompt))
        .collect();
    if !words.iter().any(|w| w.contains("{prompt}")) {
        out.push(prompt.to_string());
    }
    out
}

/// A dollar amount for a command line: plain decimal, no exponent, no trailing zeros.
fn format_usd(usd: f64) -> String {
    let s = format!("{:.6}", usd.max(0.0));
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(agent: &str, args: Option<&str>) -> AgentProfile {
        AgentProfile::parse(agent, args).unwrap()
    }

    #[test]
    fn claude_command_line() {
        let c = p("claude", Some("--model claude-sonnet-4-5"));
        assert_eq!(c.name(), "claude");
        assert_eq!(c.format(), OutputFormat::ClaudeStreamJson);
        let id = "6f1c2a4e-8d3b-4c9a-9e2f-1a2b3c4d5e6f".to_string();
        assert_eq!(
            c.argv(
                "-fix it",
                Some(&SessionPlan::New(Some(id.clone()))),
                Some(0.25)
            ),
            vec![
                "claude",
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--dangerously-skip-permissions",
                "--session-id",
                &id,
                "--max-budget-usd",
                "0.25",
                "--model",
                "claude-sonnet-4-5",
                "--",
                "-fix it"
            ]
        );
        let v = c.argv("go on", Some(&SessionPlan::Resume(id.clone())), None);
        let at = v.iter().position(|w| w == "--resume").unwrap();
        assert_eq!(v[at + 1], id);
        assert!(!v.iter().any(|w| w == "--max-budget-usd"));
        let c = c.with_program("/opt/outpost-agents/bin/claude");
        assert_eq!(c.argv("x", None, None)[0], "/opt/outpost-agents/bin/claude");
        assert!(c.fixes_session_id() && c.caps_budget() && c.refuses_root());
    }

    #[test]
    fn opencode_command_line() {
        let o = p("opencode", None);
        assert_eq!(o.format(), OutputFormat::OpencodeJson);
        assert_eq!(
            o.argv(
                "fix",
                Some(&SessionPlan::New(Some("ignored".into()))),
                Some(1.0)
            ),
            vec!["opencode", "run", "--format", "json", "--", "fix"]
        );
        assert_eq!(
            o.argv("more", Some(&SessionPlan::Resume("ses_1".into())), None),
            vec![
                "opencode",
                "run",
                "--format",
                "json",
                "--session",
                "ses_1",
                "--",
                "more"
            ]
        );
        assert!(!o.fixes_session_id() && !o.caps_budget() && o.may_hang_after_result());
    }

    #[test]
    fn env_points_session_state_at_the_state_dir() {
        let env = p("claude", None).env(Path::new("/data/agents/issue-7"));
        assert!(env.contains(&("CLAUDE_CONFIG_DIR".into(), "/data/agents/issue-7".into())));
        assert!(env.contains(&(
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
            "1".into()
        )));
        let env = p("opencode", None).env(Path::new("/s"));
        assert!(env.contains(&("XDG_DATA_HOME".into(), "/s/data".into())));
        assert!(env.contains(&("OPENCODE_PERMISSION".into(), r#"{"*":"allow"}"#.into())));
        assert!(p("shell", None).env(Path::new("/s")).is_empty());
        assert_eq!(
            p("claude", None).root_env(),
            vec![("IS_SANDBOX".into(), "1".into())]
        );
    }

    #[test]
    fn shell_and_command_lines_keep_their_behaviour() {
        let s = p("", None);
        assert_eq!(
            s.argv("echo hi", None, Some(1.0)),
            vec!["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(s.format(), OutputFormat::None);
        assert!(!s.resumes());
        let c = p("mytool --fast", Some("--x 'a b'"));
        assert_eq!(
            c.argv("do", None, None),
            vec!["mytool", "--fast", "--x", "a b", "do"]
        );
        let c = p("mytool --msg {prompt}", Some("--y"));
        assert_eq!(
            c.argv("do", None, None),
            vec!["mytool", "--msg", "do", "--y"]
        );
        assert!(AgentProfile::parse("shell", Some("--x")).is_err());
        assert!(AgentProfile::parse("claude", Some("'open")).is_err());
    }

    #[test]
    fn usd_amounts_are_plain_decimals() {
        assert_eq!(format_usd(0.25), "0.25");
        assert_eq!(format_usd(1.0), "1");
        assert_eq!(format_usd(0.000_001), "0.000001");
        assert_eq!(format_usd(-3.0), "0");
    }
}
