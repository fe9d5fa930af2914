//! The service definition `outpost install` writes — an OpenRC script using
//! `supervise-daemon` (Alpine) or a systemd unit (elsewhere) — and, on the live root,
//! enabling and starting it.
//!
//! Both run `outpost serve` as the unprivileged user `outpost` with the settings of
//! `/etc/outpost/env`, restart it whenever it dies, keep it away from the OOM killer
//! (oom_score_adj -1000, set by the init system before it drops root; the agents it
//! starts may raise their own score), and on stop send SIGTERM to the worker alone,
//! waiting longer than `OUTPOST_GRACE_S` so agents get their grace and the worker can
//! push a checkpoint before anything is killed. On cgroup v2 both hand the worker its
//! own cgroup (systemd `Delegate=yes`; OpenRC: `start_pre` chowns the service's cgroup)
//! so it can put each task in a cgroup of its own below it.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use super::swap::SwapPlan;
use super::system;
use super::BINARY;

/// Which init system the target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    OpenRc,
    Systemd,
}

/// Where each init system's definition lives inside the root.
pub const OPENRC_SCRIPT: &str = "/etc/init.d/outpost";
pub const SYSTEMD_UNIT: &str = "/etc/systemd/system/outpost.service";
/// Where OpenRC's supervise-daemon writes the worker's output (systemd: the journal).
pub const LOG_DIR: &str = "/var/log/outpost";

impl Init {
    /// Parses `--init`; `auto` looks at the root: OpenRC when `/sbin/openrc-run` or
    /// `/etc/alpine-release` is there, else systemd.
    pub fn choose(flag: &str, root: &Path) -> Result<Init> {
        match flag {
            "openrc" => Ok(Init::OpenRc),
            "systemd" => Ok(Init::Systemd),
            "auto" => {
                let openrc = root.join("sbin/openrc-run").exists()
                    || root.join("etc/alpine-release").exists();
                Ok(if openrc { Init::OpenRc } else { Init::Systemd })
            }
            other => bail!("invalid --init {other:?}: use openrc, systemd or auto"),
        }
    }

    /// The path of the service definition inside the root, and its mode.
    pub fn definition(self) -> (&'static str, u32) {
        match self {
            Init::OpenRc => (OPENRC_SCRIPT, 0o755),
            Init::Systemd => (SYSTEMD_UNIT, 0o644),
        }
    }

    /// The text of the service definition.
    pub fn render(self, stop_timeout_s: u64, swap: SwapPlan) -> String {
        match self {
            Init::OpenRc => openrc_script(stop_timeout_s, swap),
            Init::Systemd => systemd_unit(stop_timeout_s, swap),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Init::OpenRc => "openrc",
            Init::Systemd => "systemd",
        }
    }
}

/// Seconds the init system waits after SIGTERM before it kills everything: the
/// agents' grace plus time for the worker to commit and push a checkpoint.
pub fn stop_timeout(grace_s: u64) -> u64 {
    grace_s + 22
}

fn openrc_script(stop_timeout_s: u64, swap: SwapPlan) -> String {
    let swap_step = match swap.ensure_args() {
        Some(args) => format!(
            "\t# Swap, made and turned on with root rights (the worker runs as outpost).\n\
             \t{BINARY} {args} >/dev/null \\\n\
             \t\t|| ewarn \"outpost: starting without swap (see the message above)\"\n"
        ),
        None => String::new(),
    };
    format!(
        r#"#!/sbin/openrc-run
# outpost worker service. Written by `outpost install`; rerun it rather than editing.
# Settings: /etc/outpost/env (KEY=VALUE lines). Output: {LOG_DIR}/outpost.log.

name="outpost"
description="outpost worker: runs AI coding agents in a PTY and streams their output"

supervisor="supervise-daemon"
command="{BINARY}"
command_args="serve"
# Unprivileged: agents run as this user too. Swap: start_pre, as root.
command_user="outpost:outpost"
directory="/var/lib/outpost"
output_log="{LOG_DIR}/outpost.log"
error_log="{LOG_DIR}/outpost.log"
# Come back after a crash, {respawn_delay} s later, forever (respawn_max=0: no limit).
respawn_delay={respawn_delay}
respawn_max=0
# Stop: SIGTERM to the worker, which ends its agents; SIGKILL only after {stop_timeout_s} s.
retry="TERM/{stop_timeout_s}/KILL/5"
# The worker is the last process the OOM killer may pick (set before dropping root).
export SSD_OOM_SCORE_ADJ=-1000
rc_ulimit="-n 65536"

depend() {{
	need net
	use dns logger
	after firewall
}}

start_pre() {{
	if [ ! -r /etc/outpost/env ]; then
		eerror "/etc/outpost/env is missing: run outpost install"
		return 1
	fi
	set -a
	. /etc/outpost/env
	set +a
{swap_step}	checkpath --directory --owner outpost:outpost --mode 0750 /var/lib/outpost {LOG_DIR}
	# cgroup v2: hand the worker the cgroup OpenRC made for this service, as systemd's
	# Delegate=yes does, so it can make one cgroup per task below its own.
	cg="$(sed -n 's/^0:://p' /proc/$$/cgroup)"
	if [ -n "$cg" ] && [ "$cg" != / ] && [ -f "/sys/fs/cgroup$cg/cgroup.procs" ]; then
		chown outpost:outpost "/sys/fs/cgroup$cg" "/sys/fs/cgroup$cg/cgroup.procs" \
			"/sys/fs/cgroup$cg/cgroup.subtree_control" "/sys/fs/cgroup$cg/cgroup.threads" \
			|| ewarn "outpost: cannot delegate /sys/fs/cgroup$cg to the worker"
	fi
}}
"#,
        respawn_delay = 2,
    )
}

fn systemd_unit(stop_timeout_s: u64, swap: SwapPlan) -> String {
    let swap_step = match swap.ensure_args() {
        Some(args) => format!(
            "# Swap, made and turned on with root rights (+) before each start; a failure (-)\n\
             # only means running without it.\n\
             ExecStartPre=-+{BINARY} {args}\n"
        ),
        None => String::new(),
    };
    format!(
        r#"# outpost worker service. Written by `outpost install`; rerun it rather than editing.
# Settings: /etc/outpost/env (KEY=VALUE lines). Output: journalctl -u outpost.
[Unit]
Description=outpost worker: runs AI coding agents in a PTY and streams their output
Wants=network-online.target
After=network-online.target
# Never give up restarting.
StartLimitIntervalSec=0

[Service]
Type=simple
# Unprivileged: agents run as this user too.
User=outpost
Group=outpost
EnvironmentFile=/etc/outpost/env
WorkingDirectory=/var/lib/outpost
{swap_step}ExecStart={BINARY} serve
Restart=always
RestartSec=2
# Stop: SIGTERM to the worker alone, which ends its agents; SIGKILL to all that is
# left only after TimeoutStopSec (above OUTPOST_GRACE_S, room for a checkpoint push).
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout_s}
# The worker is the last process the OOM killer may pick; its agents may raise theirs.
OOMScoreAdjust=-1000
# Let the worker manage cgroups below its own (memory limits for agents).
Delegate=yes
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"#
    )
}

/// What to run by hand when the root is not the live system.
pub fn manual_steps(init: Init, root: &Path) -> Vec<String> {
    let r = root.display();
    match init {
        Init::OpenRc => vec![format!("chroot {r} rc-update add outpost default")],
        Init::Systemd => vec![format!("systemctl --root={r} enable outpost.service")],
    }
}

/// Enables (and unless `no_start`, starts) the service on the live system. Returns
/// lines of advice for what it could not or would not do.
pub fn activate(init: Init, changed: bool, no_start: bool) -> Result<Vec<String>> {
    match init {
        Init::OpenRc => activate_openrc(changed, no_start),
        Init::Systemd => activate_systemd(changed, no_start),
    }
}

fn activate_openrc(changed: bool, no_start: bool) -> Result<Vec<String>> {
    let mut advice = Vec::new();
    let (Some(rc_update), Some(rc_service)) =
        (system::which("rc-update"), system::which("rc-service"))
    else {
        advice.push(
            "OpenRC tools not found: run `rc-update add outpost default` on the booted system"
                .into(),
        );
        return Ok(advice);
    };
    if !Path::new("/etc/runlevels/default/outpost").exists() {
        system::run(Command::new(&rc_update).args(["add", "outpost", "default"]))?;
    }
    let running = system::succeeds(Command::new(&rc_service).args(["outpost", "status"]));
    if no_start {
        advice.push("not started (--no-start); it starts at the next boot".into());
    } else if !running {
        system::run(Command::new(&rc_service).args(["outpost", "start"]))?;
    } else if changed {
        advice.push(
            "running with the old settings: `rc-service outpost restart` applies them".into(),
        );
    }
    Ok(advice)
}

fn activate_systemd(changed: bool, no_start: bool) -> Result<Vec<String>> {
    let mut advice = Vec::new();
    let Some(systemctl) = system::which("systemctl") else {
        advice.push("systemctl not found: enable outpost.service on the booted system".into());
        return Ok(advice);
    };
    let booted = Path::new("/run/systemd/system").is_dir();
    if booted && changed {
        system::run(Command::new(&systemctl).arg("daemon-reload"))?;
    }
    if !system::succeeds(Command::new(&systemctl).args([
        "is-enabled",
        "--quiet",
        "outpost.service",
    ])) {
        system::run(Command::new(&systemctl).args(["enable", "outpost.service"]))?;
    }
    if !booted {
        advice.push("systemd is not running here: the service starts at the next boot".into());
        return Ok(advice);
    }
    let running = system::succeeds(Command::new(&systemctl).args([
        "is-active",
        "--quiet",
        "outpost.service",
    ]));
    if no_start {
        advice.push("not started (--no-start); it starts at the next boot".into());
    } else if !running {
        system::run(Command::new(&systemctl).args(["start", "outpost.service"]))?;
    } else if changed {
        advice
            .push("running with the old settings: `systemctl restart outpost` applies them".into());
    }
    Ok(advice)
}

/// Stops and disables the service on the live system before its files go.
pub fn deactivate(init: Init) -> Result<()> {
    match init {
        Init::OpenRc => {
            if let Some(rc_service) = system::which("rc-service") {
                if system::succeeds(Command::new(&rc_service).args(["outpost", "status"])) {
                    system::run(Command::new(&rc_service).args(["outpost", "stop"]))?;
                }
            }
            if Path::new("/etc/runlevels/default/outpost").exists() {
                if let Some(rc_update) = system::which("rc-update") {
                    system::run(Command::new(rc_update).args(["del", "outpost", "default"]))?;
                }
            }
        }
        Init::Systemd => {
            if let Some(systemctl) = system::which("systemctl") {
                if system::succeeds(Command::new(&systemctl).args([
                    "is-active",
                    "--quiet",
                    "outpost.service",
                ])) {
                    system::run(Command::new(&systemctl).args(["stop", "outpost.service"]))?;
                }
                if system::succeeds(Command::new(&systemctl).args([
                    "is-enabled",
                    "--quiet",
                    "outpost.service",
                ])) {
                    system::run(Command::new(&systemctl).args(["disable", "outpost.service"]))?;
                }
            }
        }
    }
    Ok(())
}
