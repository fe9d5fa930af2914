//! `outpost install` / `outpost uninstall`: set a VM up to run the worker as a service,
//! and take it down again.
//!
//! `install` makes the agents' user and group `outpost-agent` (uid and gid 61184, see
//! `accounts`), the data dir `/var/lib/outpost` (root's, 0711: the worker sets the
//! modes of its parts at start), `/etc/outpost/env` (0600, the service's settings) and
//! the token files it names (0600, see `secrets`), the binary `/usr/local/bin/outpost`,
//! and the service: an OpenRC script (Alpine) or a systemd unit, which runs the worker
//! as root (it starts each agent as `outpost-agent`, in a cgroup of its own) and, just
//! before, turns the swap file on (see `swap`). With `--root DIR` it writes into
//! another root (an image being built, a test) and only prints how to enable the
//! service. Every step compares first, so a second run with the same inputs changes
//! nothing.

mod accounts;
mod envfile;
mod fsops;
mod secrets;
mod service;
mod swap;
mod system;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use fsops::Change;
use service::Init;

/// The installed binary, inside the root.
pub const BINARY: &str = "/usr/local/bin/outpost";
/// The settings file, inside the root.
pub const ENV_FILE: &str = "/etc/outpost/env";
/// The data dir (`OUTPOST_DATA`), inside the root.
pub const DATA_DIR: &str = "/var/lib/outpost";

const INSTALL_HELP: &str = "\
Usage: outpost install [options]

Sets this machine (or the root given) up to run `outpost serve` as a service, as
root, with every agent as the user outpost-agent (uid and gid 61184, made here
unless OUTPOST_AGENT_USER names another): /var/lib/outpost, /etc/outpost/env, a
swap file, and an OpenRC script or a systemd unit. Running it again changes only
what differs.

  --root DIR          write into DIR instead of / (does not enable or start anything)
  --init KIND         openrc, systemd or auto (default: auto; OpenRC when DIR has
                      /sbin/openrc-run or /etc/alpine-release)
  --binary PATH       the outpost binary to install (default: this one)
  --swap SIZE         swap file size, e.g. 1G; 0 for none (default: what an earlier
                      install set, else 1G under 2 GiB of memory, else 0)
  --token TOKEN       bearer token for the API, kept in /etc/outpost/token (0600)
                      which the env file names (OUTPOST_TOKEN_FILE)
  --token-file PATH   OUTPOST_TOKEN_FILE: read the API token from this file instead
  --git-token TOKEN   the git token, kept in /etc/outpost/git-token (0600)
                      which the env file names (OUTPOST_GIT_TOKEN_FILE)
  --git-token-file P  OUTPOST_GIT_TOKEN_FILE: read the git token from this file instead
  --agent CMD         OUTPOST_AGENT: agent command line
  --idle-shutdown D   OUTPOST_IDLE_SHUTDOWN: power off after D without a task (30m)
  --env KEY=VALUE     any other setting of `outpost serve --help` (repeatable;
                      KEY= removes it)
  --no-start          enable the service but do not start it now (image builds)
";

const UNINSTALL_HELP: &str = "\
Usage: outpost uninstall [--root DIR] [--purge]

Stops and removes the service, /etc/outpost, the swap file and
/usr/local/bin/outpost. --purge also removes /var/lib/outpost (every task's data),
/var/log/outpost, the user and group outpost-agent, and the user and group outpost
an earlier version ran the service as.
";

/// What `outpost install` was asked to do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub root: PathBuf,
    pub init: String,
    pub binary: Option<PathBuf>,
    pub swap: Option<String>,
    pub env: Vec<(String, String)>,
    pub no_start: bool,
}

/// What `outpost uninstall` was asked to do.
#[derive(Debug, Clone)]
pub struct UninstallOptions {
    pub root: PathBuf,
    pub purge: bool,
}

/// Splits `--flag value` / `--flag=value` arguments; `flags_with_value` take one.
fn parse_flags(
    args: &[String],
    with_value: &[&str],
    plain: &[&str],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if with_value.contains(&name.as_str()) {
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .with_context(|| format!("{name} needs a value (see --help)"))?
                    .clone(),
            };
            out.push((name, value));
        } else if plain.contains(&name.as_str()) && inline.is_none() {
            out.push((name, String::new()));
        } else {
            bail!("unknown argument {arg:?} (see --help)");
        }
    }
    Ok(out)
}

impl InstallOptions {
    /// Reads the command line of `outpost install`; `None` for --help.
    pub fn parse(args: &[String]) -> Result<Option<InstallOptions>> {
        let flags = parse_flags(
            args,
            &[
                "--root",
                "--init",
                "--binary",
                "--swap",
                "--token",
                "--token-file",
                "--git-token",
                "--git-token-file",
                "--agent",
                "--idle-shutdown",
                "--env",
            ],
            &["--no-start", "--help", "-h"],
        )?;
        let mut o = InstallOptions {
            root: PathBuf::from("/"),
            init: "auto".into(),
            binary: None,
            swap: None,
            env: Vec::new(),
            no_start: false,
        };
        for (name, value) in flags {
            match name.as_str() {
                "--help" | "-h" => return Ok(None),
                "--root" => o.root = PathBuf::from(value),
                "--init" => o.init = value,
                "--binary" => o.binary = Some(PathBuf::from(value)),
                "--swap" => o.swap = Some(value),
                "--token" => o.env.push(("OUTPOST_TOKEN".into(), value)),
                "--token-file" => o.env.push(("OUTPOST_TOKEN_FILE".into(), value)),
                "--git-token" => o.env.push(("OUTPOST_GIT_TOKEN".into(), value)),
                "--git-token-file" => o.env.push(("OUTPOST_GIT_TOKEN_FILE".into(), value)),
                "--agent" => o.env.push(("OUTPOST_AGENT".into(), value)),
                "--idle-shutdown" => o.env.push(("OUTPOST_IDLE_SHUTDOWN".into(), value)),
                "--no-start" => o.no_start = true,
                _ => {
                    let (k, v) = value
                        .split_once('=')
                        .with_context(|| format!("--env {value:?}: expected KEY=VALUE"))?;
                    o.env.push((k.to_string(), v.to_string()));
                }
            }
        }
        Ok(Some(o))
    }
}

impl UninstallOptions {
    /// Reads the command line of `outpost uninstall`; `None` for --help.
    pub fn parse(args: &[String]) -> Result<Option<UninstallOptions>> {
        let flags = parse_flags(args, &["--root"], &["--purge", "--help", "-h"])?;
        let mut o = UninstallOptions {
            root: PathBuf::from("/"),
            purge: false,
        };
        for (name, value) in flags {
            match name.as_str() {
                "--help" | "-h" => return Ok(None),
                "--root" => o.root = PathBuf::from(value),
                _ => o.purge = true,
            }
        }
        Ok(Some(o))
    }
}

/// The target root, and whether it is the running system.
struct Target {
    root: PathBuf,
    live: bool,
    /// Install does not list paths it found absent and left absent.
    installing: bool,
    changed: usize,
    unchanged: usize,
}

impl Target {
    fn new(root: &Path, installing: bool) -> Result<Target> {
        let canonical = root
            .canonicalize()
            .with_context(|| format!("--root {}: no such directory", root.display()))?;
        if !canonical.is_dir() {
            bail!("--root {}: not a directory", root.display());
        }
        let live = canonical == Path::new("/");
        if live && !nix::unistd::geteuid().is_root() {
            bail!("outpost install changes /etc and creates a user: run it as root (sudo or doas)");
        }
        Ok(Target {
            root: canonical,
            live,
            installing,
            changed: 0,
            unchanged: 0,
        })
    }

    /// The host path of `abs`, a path inside the target root.
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn note(&mut self, change: Change, path: &Path) {
        if change == Change::Absent && self.installing {
            return;
        }
        if change.changed() {
            self.changed += 1;
        } else {
            self.unchanged += 1;
        }
        println!("{:<9} {}", change.word(), path.display());
    }
}

/// MemTotal of this machine, in bytes.
fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The swap size asked for; else what the installed service definition turns on (a
/// rerun keeps it); else the default: 1G under 2 GiB of memory, none above.
fn swap_size(flag: Option<&str>, target: &Target) -> Result<u64> {
    let size = match flag {
        Some(v) => parse_swap(v).map_err(|e| anyhow::anyhow!("invalid --swap {v:?}: {e}"))?,
        None => match installed_swap(target)? {
            Some(size) => size,
            None if mem_total().is_some_and(|m| m < 2 << 30) => 1 << 30,
            None => 0,
        },
    };
    // Whole pages, as the kernel counts them.
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .unwrap_or(4096)
        .max(1);
    Ok(size / page * page)
}

fn parse_swap(v: &str) -> Result<u64, String> {
    crate::config::parse_size(v)
}

/// The swap size in an existing service definition: Some(0) when it has no swap step.
fn installed_swap(target: &Target) -> Result<Option<u64>> {
    for init in [Init::OpenRc, Init::Systemd] {
        let Some(text) = fsops::read_optional(&target.path(init.definition().0))? else {
            continue;
        };
        let size = text
            .split("swap ensure ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|word| parse_swap(word).ok());
        return Ok(Some(size.unwrap_or(0)));
    }
    Ok(None)
}

/// The env file's entries: what is there now, then our defaults, then the flags.
fn env_entries(target: &Target, opts: &InstallOptions) -> Result<Vec<(String, String)>> {
    let path = target.path(ENV_FILE);
    let mut entries = match fsops::read_optional(&path)? {
        Some(text) => envfile::parse(&text, &path.display().to_string())?,
        None => Vec::new(),
    };
    for (k, v) in &opts.env {
        envfile::check_key(k)?;
        envfile::check_value(k, v)?;
        if k == "OUTPOST_SWAP" && !v.is_empty() && v != "0" {
            bail!(
                "OUTPOST_SWAP cannot be set in /etc/outpost/env: the service definition turns \
                 swap on before each start; use --swap {v}"
            );
        }
    }
    let mut merged = vec![
        ("OUTPOST_DATA".to_string(), DATA_DIR.to_string()),
        ("OUTPOST_SWAP".to_string(), "0".to_string()),
    ];
    for (k, v) in entries.drain(..) {
        envfile::set(&mut merged, &k, &v);
    }
    envfile::set(&mut merged, "OUTPOST_SWAP", "0");
    for (k, v) in &opts.env {
        secrets::set_flag(&mut merged, k, v);
    }
    // What earlier versions set for the service user `outpost`; the worker, root now,
    // powers off with its default.
    if envfile::get(&merged, "OUTPOST_IDLE_SHUTDOWN_CMD")
        .is_some_and(|c| LEGACY_POWEROFF_CMDS.contains(&c))
    {
        envfile::set(&mut merged, "OUTPOST_IDLE_SHUTDOWN_CMD", "");
    }
    if let Some(bind) = envfile::get(&merged, "OUTPOST_BIND") {
        let ip: std::net::IpAddr = bind.trim().parse().map_err(|_| {
            anyhow::anyhow!("invalid OUTPOST_BIND={bind:?}: expected an IP address")
        })?;
        let guarded = secrets::has_api_token(&merged)
            || envfile::get(&merged, "OUTPOST_INSECURE_NO_AUTH") == Some("1");
        if !ip.is_loopback() && !guarded {
            bail!(
                "OUTPOST_BIND={bind} reaches beyond this machine but no token is set: \
                 add --token TOKEN (or --env OUTPOST_INSECURE_NO_AUTH=1 when a firewall or proxy \
                 guards the port), or the service would refuse to start"
            );
        }
    }
    if let Some(v) = envfile::get(&merged, "OUTPOST_GRACE_S") {
        v.trim().parse::<u64>().map_err(|_| {
            anyhow::anyhow!("invalid OUTPOST_GRACE_S={v:?}: expected whole seconds")
        })?;
    }
    if let Some(v) = envfile::get(&merged, "OUTPOST_IDLE_SHUTDOWN") {
        crate::config::parse_duration(v)
            .map_err(|e| anyhow::anyhow!("invalid OUTPOST_IDLE_SHUTDOWN={v:?}: {e}"))?;
    }
    Ok(merged)
}

/// The doas and sudo rules earlier versions wrote so the service user `outpost` could
/// power off when idle; the worker runs as root now, so install removes them.
const POWEROFF_RULES: [&str; 2] = ["/etc/doas.d/outpost.conf", "/etc/sudoers.d/outpost"];
/// The `OUTPOST_IDLE_SHUTDOWN_CMD` values those versions set beside the rules.
const LEGACY_POWEROFF_CMDS: [&str; 2] = ["doas -n /sbin/poweroff", "sudo -n /sbin/poweroff"];

/// Runs `outpost install` with parsed options.
pub fn install(opts: &InstallOptions) -> Result<()> {
    let mut t = Target::new(&opts.root, true)?;
    let init = Init::choose(&opts.init, &t.root)?;
    let mut env = env_entries(&t, opts)?;
    let token_steps = secrets::plan(&mut env, &|p| t.path(p).exists())?;
    let swappiness = match envfile::get(&env, "OUTPOST_SWAPPINESS") {
        Some(v) => Some(v.trim().parse::<u32>().map_err(|_| {
            anyhow::anyhow!("invalid OUTPOST_SWAPPINESS={v:?}: use a whole number from 0 to 200")
        })?),
        None => None,
    };
    let swap = swap::SwapPlan::new(swap_size(opts.swap.as_deref(), &t)?, swappiness)?;
    let root_owner = fsops::root_owner();

    let root = t.root.clone();
    accounts::ensure_agent_user(&root, t.live, &env, &mut |c, p| t.note(c, p))?;

    let binary = match &opts.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this binary: pass --binary PATH")?,
    };
    let dst = t.path(BINARY);
    let c = fsops::copy_file(&binary, &dst, 0o755, root_owner)?;
    t.note(c, &dst);

    for (dir, mode) in [
        (DATA_DIR, 0o711),
        (service::LOG_DIR, 0o750),
        ("/etc/outpost", 0o755),
    ] {
        if dir == service::LOG_DIR && init != Init::OpenRc {
            continue;
        }
        let p = t.path(dir);
        let c = fsops::ensure_dir(&p, mode, root_owner)?;
        t.note(c, &p);
    }

    for step in &token_steps {
        let (p, c) = secrets::apply(step, &t.root, root_owner)?;
        t.note(c, &p);
    }
    for p in secrets::missing_own_files(&env, &t.root) {
        println!(
            "note: {p} does not exist in the root yet: the service will not start until it does"
        );
    }

    let swap_note = match swap.ensure_args() {
        Some(_) => format!(
            "Swap ({}, {}) is turned on before each start by the service definition \
             (outpost install --swap), so OUTPOST_SWAP stays 0.",
            swap::human(swap.size),
            swap::SWAP_FILE
        ),
        None => "No swap (outpost install --swap 0); OUTPOST_SWAP stays 0: swap is the \
                 service definition's job."
            .into(),
    };
    let p = t.path(ENV_FILE);
    let c = fsops::write_file(
        &p,
        envfile::render(&env, &[swap_note]).as_bytes(),
        0o600,
        root_owner,
    )?;
    t.note(c, &p);

    if swap.size == 0 {
        let c = swap::remove(&t.root, t.live)?;
        t.note(c, &t.path(swap::SWAP_FILE));
    }

    for path in POWEROFF_RULES {
        let p = t.path(path);
        t.note(fsops::remove_file(&p)?, &p);
    }

    // One service definition: drop the other init system's, left by an earlier run.
    for other in [Init::OpenRc, Init::Systemd]
        .into_iter()
        .filter(|i| *i != init)
    {
        let p = t.path(other.definition().0);
        t.note(fsops::remove_file(&p)?, &p);
    }
    let grace: u64 = envfile::get(&env, "OUTPOST_GRACE_S")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(8);
    let (def, mode) = init.definition();
    let p = t.path(def);
    let text = init.render(service::stop_timeout(grace), swap);
    let c = fsops::write_file(&p, text.as_bytes(), mode, root_owner)?;
    t.note(c, &p);

    let mut advice = Vec::new();
    if t.live {
        advice.extend(service::activate(init, t.changed > 0, opts.no_start)?);
    } else {
        advice.push(format!(
            "{} was not enabled (--root is not /); in the image run:",
            init.name()
        ));
        advice.extend(
            service::manual_steps(init, &t.root)
                .into_iter()
                .map(|s| format!("  {s}")),
        );
    }
    println!(
        "outpost install: {} changed, {} unchanged ({} service)",
        t.changed,
        t.unchanged,
        init.name()
    );
    for line in advice {
        println!("{line}");
    }
    Ok(())
}

/// Runs `outpost uninstall` with parsed options.
pub fn uninstall(opts: &UninstallOptions) -> Result<()> {
    let mut t = Target::new(&opts.root, false)?;
    for init in [Init::OpenRc, Init::Systemd] {
        let (def, _) = init.definition();
        let p = t.path(def);
        if t.live && p.exists() {
            service::deactivate(init)?;
        }
        let c = fsops::remove_file(&p)?;
        t.note(c, &p);
        if t.live
            && c == Change::Removed
            && init == Init::Systemd
            && Path::new("/run/systemd/system").is_dir()
        {
            if let Some(systemctl) = system::which("systemctl") {
                system::run(std::process::Command::new(systemctl).arg("daemon-reload"))?;
            }
        }
    }
    let c = swap::remove(&t.root, t.live)?;
    t.note(c, &t.path(swap::SWAP_FILE));
    let mut paths: Vec<&str> = POWEROFF_RULES.to_vec();
    paths.extend(secrets::SECRETS.iter().map(|s| s.path));
    paths.extend([ENV_FILE, BINARY]);
    for path in paths {
        let p = t.path(path);
        let c = fsops::remove_file(&p)?;
        t.note(c, &p);
    }
    let p = t.path("/etc/outpost");
    let c = fsops::remove_dir_if_empty(&p)?;
    t.note(c, &p);
    if opts.purge {
        for dir in [DATA_DIR, service::LOG_DIR] {
            let p = t.path(dir);
            let c = fsops::remove_tree(&p)?;
            t.note(c, &p);
        }
        accounts::remove(&t.root.clone(), t.live, &mut |c, p| t.note(c, p))?;
    }
    println!(
        "outpost uninstall: {} changed, {} already gone or kept",
        t.changed, t.unchanged
    );
    if !opts.purge {
        println!(
            "kept {DATA_DIR} and the user {} (--purge removes them)",
            accounts::NAME
        );
    }
    Ok(())
}

/// Entry point of `outpost install`.
pub fn install_cli(args: &[String]) -> Result<()> {
    match InstallOptions::parse(args)? {
        None => {
            print!("{INSTALL_HELP}");
            Ok(())
        }
        Some(opts) => install(&opts),
    }
}

/// Entry point of `outpost uninstall`.
pub fn uninstall_cli(args: &[String]) -> Result<()> {
    match UninstallOptions::parse(args)? {
        None => {
            print!("{UNINSTALL_HELP}");
            Ok(())
        }
        Some(opts) => uninstall(&opts),
    }
}
