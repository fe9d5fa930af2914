//! Every setting of `outpost serve`: read once from the environment and the command
//! line (a flag wins over its variable), validated, and handed out as one `Config`.
//! A bad value stops the start with one line naming the variable, the value and what
//! is allowed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::profile::AgentProfile;
use crate::agent::AgentCommand;
use crate::process::Kind;

mod source;
pub use source::help;
use source::{parse_flags, Source, SETTINGS};

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
    /// The agent's profile: `agent` with the user's extra flags (`OUTPOST_AGENT_ARGS`).
    pub agent_profile: AgentProfile,
    /// `OUTPOST_MAX_COST_USD`: the spend cap of a task that sends no `max_cost_usd`.
    pub max_cost_usd: Option<f64>,
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
    /// `OUTPOST_STREAM_MAX_S`: how long one event-stream response may last before the
    /// worker ends it cleanly (SSE: with a `retry:` hint) for the client to resume.
    pub stream_max: Duration,
    pub log_format: LogFormat,
    pub min_available: Option<u64>,
    pub keep_tasks: usize,
    /// `OUTPOST_SPARE_CHECKOUTS`: copies of a repository's checkout made ahead.
    pub spare_checkouts: usize,
    pub idle_shutdown: Option<Duration>,
    pub idle_shutdown_cmd: String,
    pub on_cloud_run: bool,
    /// `OUTPOST_AGENT_USER` as given (resolved at start by `process::identity`).
    pub agent_user: Option<String>,
    /// `OUTPOST_CONTAINMENT`: None is automatic (a cgroup per task where possible).
    pub containment: Option<Kind>,
    pub limits: TaskLimits,
    pub min_free_disk: u64,
    pub pricing: Pricing,
}

/// Limits of one task.
#[derive(Debug, Clone, Copy)]
pub struct TaskLimits {
    /// None: the worker's memory limit minus a reserve (decided at start).
    pub memory: Option<u64>,
    pub pids: u64,
    pub max_output: u64,
}

/// What a task's compute costs: the instance's size (None: found at start) and prices.
#[derive(Debug, Clone, Copy)]
pub struct Pricing {
    pub instance_cpu: Option<f64>,
    pub instance_memory: Option<u64>,
    pub usd_per_vcpu_s: f64,
    pub usd_per_gib_s: f64,
}

/// Default of `OUTPOST_STREAM_MAX_S`: half a minute under Cloud Run's longest request
/// timeout (3600 s), so a stream ends on the worker's terms, between events.
pub const DEFAULT_STREAM_MAX_S: u64 = 3570;

/// Cloud Run's list prices (request-based billing, Tier 1 regions), per vCPU-second and
/// per GiB-second; see docs/api.md.
pub const CLOUD_RUN_USD_PER_VCPU_S: f64 = 0.000_024;
pub const CLOUD_RUN_USD_PER_GIB_S: f64 = 0.000_002_5;

/// A setting that could not be accepted; its Display is the one line the user sees.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: {allowed}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub allowed: String,
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
        let token = src.secret("OUTPOST_TOKEN", "OUTPOST_TOKEN_FILE")?;
        let insecure_no_auth = src.flag("OUTPOST_INSECURE_NO_AUTH")?;
        let agent = match src.string("OUTPOST_AGENT") {
            None => AgentCommand::Shell,
            Some(v) => AgentCommand::parse(&v).map_err(|e| src.err("OUTPOST_AGENT", &e))?,
        };
        let agent_profile = AgentProfile::parse(
            &src.string("OUTPOST_AGENT").unwrap_or_default(),
            src.string("OUTPOST_AGENT_ARGS").as_deref(),
        )
        .map_err(|e| src.err("OUTPOST_AGENT_ARGS", &e))?;
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
            .secret("OUTPOST_GIT_TOKEN", "OUTPOST_GIT_TOKEN_FILE")?
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
        // Cloud Run cuts a request at its timeout (at most 3600 s): end first, cleanly.
        let stream_max = Duration::from_secs(src.number::<u64>(
            "OUTPOST_STREAM_MAX_S",
            DEFAULT_STREAM_MAX_S,
            1,
            7 * 24 * 3600,
        )?);
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
        // A spare checkout held in memory (tmpfs: Cloud Run's disk) is memory the agent
        // cannot have: none there unless asked for.
        let spares_default = if crate::placement::in_memory(&data_dir) {
            0
        } else {
            1
        };
        let spare_checkouts =
            src.number::<usize>("OUTPOST_SPARE_CHECKOUTS", spares_default, 0, 8)?;
        let idle_shutdown_cmd = src
            .string("OUTPOST_IDLE_SHUTDOWN_CMD")
            .unwrap_or_else(|| "poweroff".into());
        let containment = match src.string("OUTPOST_CONTAINMENT") {
            None => None,
            Some(v) => Kind::parse(&v.to_ascii_lowercase())
                .map_err(|e| src.err("OUTPOST_CONTAINMENT", &e))?,
        };
        let limits = TaskLimits {
            memory: src.size("OUTPOST_TASK_MEMORY")?.filter(|m| *m > 0),
            pids: src.number::<u64>("OUTPOST_TASK_PIDS", 512, 8, 1 << 22)?,
            max_output: src.size("OUTPOST_TASK_MAX_OUTPUT")?.unwrap_or(1 << 30),
        };
        if limits.max_output == 0 {
            return Err(src.err(
                "OUTPOST_TASK_MAX_OUTPUT",
                "expected a size above 0, such as 1G",
            ));
        }
        let min_free_disk = src.size("OUTPOST_MIN_FREE_DISK")?.unwrap_or(512 << 20);
        let instance_cpu = src.decimal("OUTPOST_INSTANCE_CPU")?;
        if instance_cpu == Some(0.0) {
            return Err(src.err(
                "OUTPOST_INSTANCE_CPU",
                "expected vCPUs above 0, such as 1 or 0.5",
            ));
        }
        let pricing = Pricing {
            instance_cpu,
            instance_memory: src.size("OUTPOST_INSTANCE_MEMORY")?.filter(|m| *m > 0),
            usd_per_vcpu_s: src
                .decimal("OUTPOST_PRICE_VCPU_S")?
                .unwrap_or(CLOUD_RUN_USD_PER_VCPU_S),
            usd_per_gib_s: src
                .decimal("OUTPOST_PRICE_GIB_S")?
                .unwrap_or(CLOUD_RUN_USD_PER_GIB_S),
        };
        let agent_user = src.string("OUTPOST_AGENT_USER");
        let max_cost_usd = src.decimal("OUTPOST_MAX_COST_USD")?;
        if max_cost_usd.is_some_and(|c| !(c > 0.0 && c <= 1_000_000.0)) {
            return Err(src.err(
                "OUTPOST_MAX_COST_USD",
                "expected US dollars above 0 and at most 1000000, such as 2.5",
            ));
        }

        Ok(Config {
            port,
            bind,
            data_dir,
            token,
            insecure_no_auth,
            agent,
            agent_profile,
            max_cost_usd,
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
            stream_max,
            log_format,
            min_available,
            keep_tasks,
            spare_checkouts,
            idle_shutdown,
            idle_shutdown_cmd,
            on_cloud_run,
            agent_user,
            containment,
            limits,
            min_free_disk,
            pricing,
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
    fn spare_checkouts_default_to_none_where_the_data_dir_is_in_memory() {
        let on_disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let data = on_disk.path().join("not/yet");
        let c = Config::from_parts(&env(&[("OUTPOST_DATA", data.to_str().unwrap())]), &[]).unwrap();
        assert_eq!(
            c.spare_checkouts,
            usize::from(!crate::placement::in_memory(on_disk.path()))
        );
        if crate::placement::in_memory(std::path::Path::new("/dev/shm")) {
            let c = Config::from_parts(&env(&[("OUTPOST_DATA", "/dev/shm/outpost-x/data")]), &[])
                .unwrap();
            assert_eq!(c.spare_checkouts, 0);
            let asked = env(&[
                ("OUTPOST_DATA", "/dev/shm/outpost-x/data"),
                ("OUTPOST_SPARE_CHECKOUTS", "2"),
            ]);
            assert_eq!(Config::from_parts(&asked, &[]).unwrap().spare_checkouts, 2);
        }
        let e = Config::from_parts(&env(&[("OUTPOST_SPARE_CHECKOUTS", "9")]), &[]).unwrap_err();
        assert!(e.to_string().contains("OUTPOST_SPARE_CHECKOUTS"), "{e}");
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
    fn secrets_from_files_and_task_limits() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = Config::from_parts(
            &env(&[
                ("OUTPOST_TOKEN_FILE", f.to_str().unwrap()),
                ("OUTPOST_GIT_TOKEN_FILE", f.to_str().unwrap()),
                ("OUTPOST_TASK_MEMORY", "300M"),
                ("OUTPOST_PRICE_VCPU_S", "0.5"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        assert_eq!(c.git_token.as_deref(), Some("s3cret"));
        assert_eq!(c.limits.memory, Some(300 << 20));
        assert_eq!(c.limits.pids, 512);
        assert_eq!(c.limits.max_output, 1 << 30);
        assert_eq!(c.pricing.usd_per_vcpu_s, 0.5);
        assert_eq!(c.pricing.usd_per_gib_s, CLOUD_RUN_USD_PER_GIB_S);
        assert_eq!(c.max_cost_usd, None);
        let c = Config::from_parts(&env(&[("OUTPOST_MAX_COST_USD", "2.5")]), &[]).unwrap();
        assert_eq!(c.max_cost_usd, Some(2.5));
        let c = Config::from_parts(
            &env(&[
                ("OUTPOST_AGENT", "claude"),
                ("OUTPOST_AGENT_ARGS", "--model 'claude-sonnet-4-5'"),
            ]),
            &[],
        )
        .unwrap();
        let argv = c.agent_profile.argv("go", None, None);
        assert_eq!(argv[0], "claude");
        let at = argv.iter().position(|w| w == "--model").unwrap();
        assert_eq!(argv[at + 1], "claude-sonnet-4-5");
        let e = Config::from_parts(&env(&[("OUTPOST_AGENT_ARGS", "-x")]), &[]).unwrap_err();
        assert!(e.to_string().contains("OUTPOST_AGENT_ARGS"), "{e}");
        let e = Config::from_parts(&env(&[("OUTPOST_MAX_COST_USD", "0")]), &[]).unwrap_err();
        assert!(e.to_string().contains("OUTPOST_MAX_COST_USD"), "{e}");
        let e =
            Config::from_parts(&env(&[("OUTPOST_TOKEN_FILE", "/nonexistent/t")]), &[]).unwrap_err();
        assert!(e.to_string().contains("OUTPOST_TOKEN_FILE"), "{e}");
        let e = Config::from_parts(&env(&[("OUTPOST_CONTAINMENT", "jail")]), &[]).unwrap_err();
        assert!(
            e.to_string().contains("auto, cgroup, uid or session"),
            "{e}"
        );
        let e = Config::from_parts(&env(&[("OUTPOST_PRICE_GIB_S", "-1")]), &[]).unwrap_err();
        assert!(e.to_string().contains("OUTPOST_PRICE_GIB_S"), "{e}");
    }

    #[test]
    fn git_token_falls_back_to_gh_token() {
        let c = Config::from_parts(&env(&[("GH_TOKEN", "ghp_x")]), &[]).unwrap();
        assert_eq!(c.git_token.as_deref(), Some("ghp_x"));
    }
}
