//! Every setting of `outpost serve`: read once from the environment and the command
//! line (a flag wins over its variable), validated, and handed out as one `Config`.
//! A bad value stops the start with one line naming the variable, the value and what
//! is allowed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::AgentCommand;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Cloud Logging JSON: `severity`, `message`, `time`.
    Json,
    /// Human-readable text.
    Text,
}

/// The validated settings of a running worker.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub bind: IpAddr,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    pub insecure_no_auth: bool,
    pub agent: AgentCommand,
    pub max_tasks: usize,
    pub worker_id: String,
    pub allowed_hosts: Vec<String>,
    pub allow_http: bool,
    pub git_token: Option<String>,
    pub git_author_name: String,
    pub git_author_email: String,
    pub push_on_failure: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub swap: u64,
    pub swappiness: Option<u32>,
    pub grace: Duration,
    pub heartbeat: Duration,
    pub log_format: LogFormat,
    pub min_available: Option<u64>,
    pub keep_tasks: usize,
    pub idle_shutdown: Option<Duration>,
    pub idle_shutdown_cmd: String,
    pub on_cloud_run: bool,
}

/// One setting: its variable, its flag, and a line of help.
struct Setting {
    var: &'static str,
    flag: &'static str,
    help: &'static str,
}

#[rustfmt::skip]
const SETTINGS: &[Setting] = &[
    Setting { var: "PORT", flag: "--port", help: "listen port (default 8080)" },
    Setting { var: "OUTPOST_BIND", flag: "--bind", help: "listen address (default 127.0.0.1; 0.0.0.0 on Cloud Run)" },
    Setting { var: "OUTPOST_DATA", flag: "--data", help: "data dir: repo cache, worktrees, task logs (default ./.outpost)" },
    Setting { var: "OUTPOST_TOKEN", flag: "--token", help: "bearer token required on every route but /hello and /healthz" },
    Setting { var: "OUTPOST_INSECURE_NO_AUTH", flag: "--insecure-no-auth", help: "1: allow a non-loopback bind without a token" },
    Setting { var: "OUTPOST_AGENT", flag: "--agent", help: "agent command line (default: shell, i.e. sh -c \"<prompt>\")" },
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
    Setting { var: "OUTPOST_HEARTBEAT_S", flag: "--heartbeat-s", help: "SSE keep-alive interval in seconds (default 15)" },
    Setting { var: "OUTPOST_LOG_FORMAT", flag: "--log-format", help: "json or text (default json on Cloud Run, else text)" },
    Setting { var: "OUTPOST_MIN_AVAILABLE", flag: "--min-available", help: "memory below which new work is refused (default 10% of the limit)" },
    Setting { var: "OUTPOST_KEEP_TASKS", flag: "--keep-tasks", help: "finished tasks kept (logs on disk, objects in /work); older ones are deleted (default 1000)" },
    Setting { var: "OUTPOST_IDLE_SHUTDOWN", flag: "--idle-shutdown", help: "run the idle command after this long without a task (30m); off by default" },
    Setting { var: "OUTPOST_IDLE_SHUTDOWN_CMD", flag: "--idle-shutdown-cmd", help: "command run on idle shutdown (default poweroff)" },
];

/// A setting that could not be accepted; its Display is the one line the user sees.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: {allowed}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub allowed: String,
}

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
struct Source {
    /// (variable, value, how the user named it)
    values: Vec<(&'static str, String, String)>,
}

impl Source {
    fn get(&self, var: &str) -> Option<(&str, &str)> {
        self.values
            .iter()
            .rev()
            .find(|(v, _, _)| *v == var)
            .map(|(_, val, origin)| (val.as_str(), origin.as_str()))
    }

    fn err(&self, var: &str, allowed: &str) -> ConfigError {
        let (value, origin) = self.get(var).unwrap_or(("", var));
        ConfigError {
            name: origin.to_string(),
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }

    fn string(&self, var: &str) -> Option<String> {
        self.get(var)
            .map(|(v, _)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, var: &str) -> Result<bool, ConfigError> {
        match self.get(var).map(|(v, _)| v.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "" | "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(self.err(var, "expected 1 or 0")),
            },
        }
    }

    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
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

    fn path(&self, var: &str) -> Option<PathBuf> {
        self.string(var).map(PathBuf::from)
    }
}

impl Config {
    /// Reads the process environment and the `serve` arguments.
    pub fn from_env_and_args(args: &[String]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_parts(&env, args)
    }

    /// Builds a config from explicit environment pairs and arguments (tests use this).
    pub fn from_parts(env: &[(String, String)], args: &[String]) -> Result<Config, ConfigError> {
        let mut values = Vec::new();
        for st in SETTINGS {
            if let Some((_, v)) = env.iter().find(|(k, _)| k == st.var) {
                values.push((st.var, v.clone(), st.var.to_string()));
            }
        }
        let has = |k: &str| env.iter().any(|(key, v)| key == k && !v.is_empty());
        let gh_token = env
            .iter()
            .find(|(k, _)| k == "GH_TOKEN")
            .map(|(_, v)| v.clone());
        parse_flags(args, &mut values)?;
        let src = Source { values };
        let on_cloud_run = has("K_SERVICE");

        let port = src.number::<u16>("PORT", 8080, 1, 65535)?;
        let bind = match src.string("OUTPOST_BIND") {
            None if on_cloud_run => IpAddr::from([0, 0, 0, 0]),
            None => IpAddr::from([127, 0, 0, 1]),
            Some(v) => v
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| {
                    src.err(
                        "OUTPOST_BIND",
                        "expected an IP address such as 127.0.0.1 or 0.0.0.0",
                    )
                })?,
        };
        let data_dir = src
            .path("OUTPOST_DATA")
            .unwrap_or_else(|| PathBuf::from("./.outpost"));
        let token = src.string("OUTPOST_TOKEN");
        let insecure_no_auth = src.flag("OUTPOST_INSECURE_NO_AUTH")?;
        let agent = match src.string("OUTPOST_AGENT") {
            None => AgentCommand::Shell,
            Some(v) => AgentCommand::parse(&v).map_err(|e| src.err("OUTPOST_AGENT", &e))?,
        };
        let max_tasks = src.number::<usize>("OUTPOST_MAX_TASKS", 1, 1, 1024)?;
        let worker_id = src.string("OUTPOST_WORKER_ID").unwrap_or_else(hostname);
        let allowed_hosts = src
            .string("OUTPOST_ALLOWED_HOSTS")
            .map(|v| {
                v.split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let allow_http = src.flag("OUTPOST_ALLOW_HTTP")?;
        let git_token = src
            .string("OUTPOST_GIT_TOKEN")
            .or(gh_token.filter(|t| !t.is_empty()));
        let (git_author_name, git_author_email) = match src.string("OUTPOST_GIT_AUTHOR") {
            None => ("outpost".to_string(), "outpost@localhost".to_string()),
            Some(v) => parse_author(&v)
                .ok_or_else(|| src.err("OUTPOST_GIT_AUTHOR", "expected \"Name <email>\""))?,
        };
        let push_on_failure = src.flag("OUTPOST_PUSH_ON_FAILURE")?;
        let tls_cert = src.path("OUTPOST_TLS_CERT");
        let tls_key = src.path("OUTPOST_TLS_KEY");
        if tls_cert.is_some() != tls_key.is_some() {
            let var = if tls_cert.is_some() {
                "OUTPOST_TLS_KEY"
            } else {
                "OUTPOST_TLS_CERT"
            };
            return Err(ConfigError {
                name: var.into(),
                value: String::new(),
                allowed: "OUTPOST_TLS_CERT and OUTPOST_TLS_KEY must be set together".into(),
            });
        }
        let swap = match src.string("OUTPOST_SWAP") {
            None => 0,
            Some(v) => parse_size(&v).map_err(|e| src.err("OUTPOST_SWAP", &e))?,
        };
        let swappiness = match src.string("OUTPOST_SWAPPINESS") {
            None => None,
            Some(_) => Some(src.number::<u32>("OUTPOST_SWAPPINESS", 60, 0, 200)?),
        };
        let grace = Duration::from_secs(src.number::<u64>("OUTPOST_GRACE_S", 8, 0, 3600)?);
        let heartbeat =
            Duration::from_secs(src.number::<u64>("OUTPOST_HEARTBEAT_S", 15, 1, 3600)?);
        let log_format = match src
            .string("OUTPOST_LOG_FORMAT")
            .map(|v| v.to_ascii_lowercase())
        {
            None if on_cloud_run => LogFormat::Json,
            None => LogFormat::Text,
            Some(v) if v == "json" => LogFormat::Json,
            Some(v) if v == "text" => LogFormat::Text,
            Some(_) => return Err(src.err("OUTPOST_LOG_FORMAT", "expected json or text")),
        };
        let min_available = match src.string("OUTPOST_MIN_AVAILABLE") {
            None => None,
            Some(v) => Some(parse_size(&v).map_err(|e| src.err("OUTPOST_MIN_AVAILABLE", &e))?),
        };
        let idle_shutdown = match src.string("OUTPOST_IDLE_SHUTDOWN") {
            None => None,
            Some(v) => {
                match parse_duration(&v).map_err(|e| src.err("OUTPOST_IDLE_SHUTDOWN", &e))? {
                    d if d.is_zero() => None,
                    d => Some(d),
                }
            }
        };
        let keep_tasks = src.number::<usize>("OUTPOST_KEEP_TASKS", 1000, 1, 1_000_000)?;
        let idle_shutdown_cmd = src
            .string("OUTPOST_IDLE_SHUTDOWN_CMD")
            .unwrap_or_else(|| "poweroff".into());

        Ok(Config {
            port,
            bind,
            data_dir,
            token,
            insecure_no_auth,
            agent,
            max_tasks,
            worker_id,
            allowed_hosts,
            allow_http,
            git_token,
            git_author_name,
            git_author_email,
            push_on_failure,
            tls_cert,
            tls_key,
            swap,
            swappiness,
            grace,
            heartbeat,
            log_format,
            min_available,
            keep_tasks,
            idle_shutdown,
            idle_shutdown_cmd,
            on_cloud_run,
        })
    }

    /// The refusal to serve beyond loopback without a token, unless opted out.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.token.is_none() && !self.bind.is_loopback() && !self.insecure_no_auth {
            return Err(ConfigError {
                name: "OUTPOST_BIND".into(),
                value: self.bind.to_string(),
                allowed: "binding beyond loopback needs OUTPOST_TOKEN, or OUTPOST_INSECURE_NO_AUTH=1 when something else (Cloud Run IAM) guards the port".into(),
            });
        }
        Ok(())
    }
}

/// Collects `--flag value` and `--flag=value` pairs; boolean flags may stand alone.
fn parse_flags(
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

fn parse_author(v: &str) -> Option<(String, String)> {
    let (name, rest) = v.split_once('<')?;
    let email = rest.strip_suffix('>')?.trim();
    let name = name.trim();
    (!name.is_empty() && email.contains('@')).then(|| (name.to_string(), email.to_string()))
}

/// Sizes (`1G`, `512M`, `300MiB`, `0`) are parsed by the memory module.
pub use crate::memory::parse_size;

/// Parses a duration such as `30m`, `90s`, `2h`, `45` (seconds).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a duration such as 30m, 90s or 2h".to_string())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err("expected a duration such as 30m, 90s or 2h".into()),
    };
    Ok(Duration::from_secs(secs))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "outpost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_loopback_shell_one_task() {
        let c = Config::from_parts(&[], &[]).unwrap();
        assert_eq!(c.port, 8080);
        assert!(c.bind.is_loopback());
        assert_eq!(c.max_tasks, 1);
        assert!(matches!(c.agent, AgentCommand::Shell));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.check_exposure().is_ok());
    }

    #[test]
    fn cloud_run_binds_wide_and_logs_json() {
        let c = Config::from_parts(&env(&[("K_SERVICE", "svc"), ("PORT", "9000")]), &[]).unwrap();
        assert_eq!(c.bind.to_string(), "0.0.0.0");
        assert_eq!(c.port, 9000);
        assert_eq!(c.log_format, LogFormat::Json);
        let e = c.check_exposure().unwrap_err();
        assert!(e.to_string().contains("OUTPOST_INSECURE_NO_AUTH"));
    }

    #[test]
    fn flag_wins_and_bad_values_name_the_variable() {
        let c = Config::from_parts(
            &env(&[("OUTPOST_MAX_TASKS", "3")]),
            &["--max-tasks".into(), "5".into()],
        )
        .unwrap();
        assert_eq!(c.max_tasks, 5);
        let e = Config::from_parts(&env(&[("OUTPOST_MAX_TASKS", "lots")]), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid OUTPOST_MAX_TASKS=\"lots\": expected a whole number from 1 to 1024"
        );
        let e = Config::from_parts(&[], &["--port=0".into()]).unwrap_err();
        assert!(e.to_string().starts_with("invalid --port=\"0\""));
        let e = Config::from_parts(&env(&[("OUTPOST_SWAP", "1X")]), &[]).unwrap_err();
        assert!(e.to_string().contains("OUTPOST_SWAP"));
        let e = Config::from_parts(&[], &["--nope".into()]).unwrap_err();
        assert!(e.to_string().contains("unknown flag"));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("300MiB").unwrap(), 300 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn git_token_falls_back_to_gh_token() {
        let c = Config::from_parts(&env(&[("GH_TOKEN", "ghp_x")]), &[]).unwrap();
        assert_eq!(c.git_token.as_deref(), Some("ghp_x"));
    }
}
