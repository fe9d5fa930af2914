//! Where setting values come from: the table of settings (variable, flag, help), the
//! environment, and `--flag value` pairs; and the typed readers that turn a raw value
//! into a setting or into the one-line error that names it.

use std::path::PathBuf;

use super::ConfigError;

/// One setting: its variable, its flag, and a line of help.
pub(super) struct Setting {
    pub var: &'static str,
    pub flag: &'static str,
    pub help: &'static str,
}

#[rustfmt::skip]
pub(super) const SETTINGS: &[Setting] = &[
    Setting { var: "PORT", flag: "--port", help: "listen port (default 8080)" },
    Setting { var: "OUTPOST_BIND", flag: "--bind", help: "listen address (default 127.0.0.1; 0.0.0.0 on Cloud Run)" },
    Setting { var: "OUTPOST_DATA", flag: "--data", help: "data dir: repo cache, worktrees, task logs (default ./.outpost)" },
    Setting { var: "OUTPOST_TOKEN", flag: "--token", help: "bearer token required on every route but /hello and /healthz" },
    Setting { var: "OUTPOST_INSECURE_NO_AUTH", flag: "--insecure-no-auth", help: "1: allow a non-loopback bind without a token" },
    Setting { var: "OUTPOST_AGENT", flag: "--agent", help: "agent: shell (sh -c \"<prompt>\", the default), claude, opencode, or a command line" },
    Setting { var: "OUTPOST_AGENT_ARGS", flag: "--agent-args", help: "extra flags for the claude / opencode agent, after the profile's own (shell-like quoting)" },
    Setting { var: "OUTPOST_MAX_COST_USD", flag: "--max-cost-usd", help: "spend cap of a task's model in USD when POST /work sends no max_cost_usd (default none)" },
    Setting { var: "OUTPOST_MAX_TASKS", flag: "--max-tasks", help: "tasks at once (default 1)" },
    Setting { var: "OUTPOST_WORKER_ID", flag: "--worker-id", help: "workerId in /hello (default: hostname)" },
    Setting { var: "OUTPOST_ALLOWED_HOSTS", flag: "--allowed-hosts", help: "comma list of git hosts allowed (default: any public host)" },
    Setting { var: "OUTPOST_ALLOW_HTTP", flag: "--allow-http", help: "1: allow http:// git URLs" },
    Setting { var: "OUTPOST_GIT_TOKEN", flag: "--git-token", help: "token for git over HTTPS (also GH_TOKEN)" },
    Setting { var: "OUTPOST_GIT_AUTHOR", flag: "--git-author", help: "commit author, \"Name <email>\" (default outpost <outpost@localhost>)" },
    Setting { var: "OUTPOST_PUSH_ON_FAILURE", flag: "--push-on-failure", help: "1: push the branch even when the agent fails" },
    Setting { var: "OUTPOST_TLS_CERT", flag: "--tls-cert", help: "PEM certificate chain: serve TLS (ALPN h2, http/1.1)" },
    Setting { var: "OUTPOST_TLS_KEY", flag: "--tls-key", help: "PEM private key for --tls-cert" },
    Setting { var: "OUTPOST_SWAP", flag: "--swap", help: "swap file size to ensure at start (1G), 0 off (default off)" },
    Setting { var: "OUTPOST_SWAPPINESS", flag: "--swappiness", help: "vm.swappiness to set with the swap file (0-200)" },
    Setting { var: "OUTPOST_GRACE_S", flag: "--grace-s", help: "seconds between SIGTERM and SIGKILL for agents (default 8)" },
    Setting { var: "OUTPOST_STREAM_MAX_S", flag: "--stream-max-s", help: "seconds one event stream may last before it ends cleanly with a retry: hint for the client to resume (default 3570, under Cloud Run's 3600)" },
    Setting { var: "OUTPOST_HEARTBEAT_S", flag: "--heartbeat-s", help: "SSE keep-alive interval in seconds (default 15)" },
    Setting { var: "OUTPOST_LOG_FORMAT", flag: "--log-format", help: "json or text (default json on Cloud Run, else text)" },
    Setting { var: "OUTPOST_MIN_AVAILABLE", flag: "--min-available", help: "memory below which new work is refused (default 10% of the limit)" },
    Setting { var: "OUTPOST_SPARE_CHECKOUTS", flag: "--spare-checkouts", help: "checkouts of each repository's current commit copied ahead for the next task (0-8; default 1, 0 where the data dir is in memory, as tmpfs; each costs the checkout's size there)" },
    Setting { var: "OUTPOST_KEEP_TASKS", flag: "--keep-tasks", help: "finished tasks kept (logs on disk, objects in /work); older ones are deleted (default 1000)" },
    Setting { var: "OUTPOST_IDLE_SHUTDOWN", flag: "--idle-shutdown", help: "run the idle command after this long without a task (30m); off by default" },
    Setting { var: "OUTPOST_IDLE_SHUTDOWN_CMD", flag: "--idle-shutdown-cmd", help: "command run on idle shutdown (default poweroff)" },
    Setting { var: "OUTPOST_TOKEN_FILE", flag: "--token-file", help: "read OUTPOST_TOKEN from this file (keeps it out of the environment and the command line)" },
    Setting { var: "OUTPOST_GIT_TOKEN_FILE", flag: "--git-token-file", help: "read OUTPOST_GIT_TOKEN from this file" },
    Setting { var: "OUTPOST_AGENT_USER", flag: "--agent-user", help: "user agents run as when the worker is root: name or uid[:gid]; root turns it off (default outpost-agent, else uid 61184)" },
    Setting { var: "OUTPOST_CONTAINMENT", flag: "--containment", help: "auto (a cgroup per task where possible), uid or session (default auto)" },
    Setting { var: "OUTPOST_TASK_MEMORY", flag: "--task-memory", help: "memory limit of one task (default: the worker's limit minus a reserve)" },
    Setting { var: "OUTPOST_TASK_PIDS", flag: "--task-pids", help: "processes one task may have at once (default 512)" },
    Setting { var: "OUTPOST_TASK_MAX_OUTPUT", flag: "--task-max-output", help: "output one task may write before it is stopped (default 1G)" },
    Setting { var: "OUTPOST_MIN_FREE_DISK", flag: "--min-free-disk", help: "free space on the data dir below which new work is refused (default 512M)" },
    Setting { var: "OUTPOST_INSTANCE_CPU", flag: "--instance-cpu", help: "vCPUs billed for this instance (default: the cgroup's CPU limit, else the CPUs)" },
    Setting { var: "OUTPOST_INSTANCE_MEMORY", flag: "--instance-memory", help: "memory billed for this instance (default: the memory limit, else RAM)" },
    Setting { var: "OUTPOST_PRICE_VCPU_S", flag: "--price-vcpu-s", help: "USD per vCPU-second (default 0.000024, Cloud Run)" },
    Setting { var: "OUTPOST_PRICE_GIB_S", flag: "--price-gib-s", help: "USD per GiB-second (default 0.0000025, Cloud Run)" },
];

/// The help text for `outpost serve --help`.
pub fn help() -> String {
    let mut s = String::from(
        "Usage: outpost serve [--flag VALUE]...\n\nEvery flag has a matching environment variable; the flag wins.\n\n",
    );
    for st in SETTINGS {
        s.push_str(&format!("  {:<22} {:<26} {}\n", st.flag, st.var, st.help));
    }
    s
}

/// Where the raw values come from: the environment plus `--flag value` pairs.
pub(super) struct Source {
    /// (variable, value, how the user named it)
    pub values: Vec<(&'static str, String, String)>,
}

impl Source {
    pub(super) fn get(&self, var: &str) -> Option<(&str, &str)> {
        self.values
            .iter()
            .rev()
            .find(|(v, _, _)| *v == var)
            .map(|(_, val, origin)| (val.as_str(), origin.as_str()))
    }

    pub(super) fn err(&self, var: &str, allowed: &str) -> ConfigError {
        let (value, origin) = self.get(var).unwrap_or(("", var));
        ConfigError {
            name: origin.to_string(),
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }

    pub(super) fn string(&self, var: &str) -> Option<String> {
        self.get(var)
            .map(|(v, _)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn flag(&self, var: &str) -> Result<bool, ConfigError> {
        match self.get(var).map(|(v, _)| v.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "" | "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(self.err(var, "expected 1 or 0")),
            },
        }
    }

    pub(super) fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &self,
        var: &str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError> {
        match self.string(var) {
            None => Ok(default),
            Some(v) => match v.parse::<T>() {
                Ok(n) if n >= min && n <= max => Ok(n),
                _ => Err(self.err(var, &format!("expected a whole number from {min} to {max}"))),
            },
        }
    }

    pub(super) fn path(&self, var: &str) -> Option<PathBuf> {
        self.string(var).map(PathBuf::from)
    }
}

/// Collects `--flag value` and `--flag=value` pairs; boolean flags may stand alone.
pub(super) fn parse_flags(
    args: &[String],
    values: &mut Vec<(&'static str, String, String)>,
) -> Result<(), ConfigError> {
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let Some(st) = SETTINGS.iter().find(|s| s.flag == name) else {
            return Err(ConfigError {
                name: "argument".into(),
                value: arg.clone(),
                allowed: "unknown flag; see `outpost serve --help`".into(),
            });
        };
        let boolean = matches!(
            st.var,
            "OUTPOST_INSECURE_NO_AUTH" | "OUTPOST_ALLOW_HTTP" | "OUTPOST_PUSH_ON_FAILURE"
        );
        let value = match inline {
            Some(v) => v,
            None if boolean && args.get(i + 1).is_none_or(|n| n.starts_with("--")) => {
                "1".to_string()
            }
            None => {
                i += 1;
                args.get(i).cloned().ok_or_else(|| ConfigError {
                    name: st.flag.into(),
                    value: String::new(),
                    allowed: format!("{} needs a value: {}", st.flag, st.help),
                })?
            }
        };
        values.push((st.var, value, st.flag.to_string()));
        i += 1;
    }
    Ok(())
}

impl Source {
    /// A size such as `512M`, or None when unset.
    pub(super) fn size(&self, var: &str) -> Result<Option<u64>, ConfigError> {
        match self.string(var) {
            None => Ok(None),
            Some(v) => super::parse_size(&v)
                .map(Some)
                .map_err(|e| self.err(var, &e)),
        }
    }

    /// A positive decimal number such as `0.000024`, or None when unset.
    pub(super) fn decimal(&self, var: &str) -> Result<Option<f64>, ConfigError> {
        match self.string(var) {
            None => Ok(None),
            Some(v) => match v.parse::<f64>() {
                Ok(n) if n.is_finite() && n >= 0.0 => Ok(Some(n)),
                _ => Err(self.err(var, "expected a number such as 0.5 (zero or more)")),
            },
        }
    }

    /// A secret: from `file_var`'s file when set (trimmed), else from `var`.
    pub(super) fn secret(&self, var: &str, file_var: &str) -> Result<Option<String>, ConfigError> {
        match self.path(file_var) {
            None => Ok(self.string(var)),
            Some(p) => match std::fs::read_to_string(&p) {
                Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
                Ok(_) => Err(self.err(file_var, "the file is empty")),
                Err(e) => Err(self.err(file_var, &format!("cannot read it: {e}"))),
            },
        }
    }
}
