//! The service definition `outpost install` writes — an OpenRC script using
//! `supervise-daemon` (Alpine) or a systemd unit (elsewhere) — and, on the live root,
//! enabling and starting it.
//!
//! Both run `outpost serve` as root (the worker starts every agent as the unprivileged
//! `outpost-agent`, in a cgroup of its own) with the settings of `/etc/outpost/env`,
//! restart it whenever it dies, keep it away from the OOM killer (oom_score_adj -1000;
//! its agents raise their own score), and on stop send SIGTERM to the worker alone,
//! waiting longer than `OUTPOST_GRACE_S` so agents get their grace and the worker can
//! push a checkpoint before anything is killed. On cgroup v2 the worker gets the
//! service's cgroup to make task cgroups below: systemd hands it over (`Delegate=yes`);
//! under OpenRC the worker, root, may write the cgroup OpenRC made for the service, and
//! `start_pre` only makes sure the memory, pids and cpu controllers reach it (OpenRC
//! enables only those of `rc_cgroup_controllers`). No chown is needed: nothing runs as
//! another user but the agents, which must not own any cgroup.

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
            "\t# Swap, made and turned on before the worker starts.\n\
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
# As root (no command_user): the worker starts each agent as the user outpost-agent,
# in a cgroup of its own, and keeps its tokens and task logs out of the agents' reach.
directory="/var/lib/outpost"
output_log="{LOG_DIR}/outpost.log"
error_log="{LOG_DIR}/outpost.log"
# Come back after a crash, {respawn_delay} s later, forever (respawn_max=0: no limit).
respawn_delay={respawn_delay}
respawn_max=0
# Stop: SIGTERM to the worker, which ends its agents; SIGKILL only after {stop_timeout_s} s.
retry="TERM/{stop_timeout_s}/KILL/5"
# The worker is the last process the OOM killer may pick (its agents raise theirs).
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
{swap_step}	checkpath --directory --owner root:root --mode 0711 /var/lib/outpost
	checkpath --directory --owner root:root --mode 0750 {LOG_DIR}
	# cgroup v2: the worker makes one cgroup per task below the one OpenRC made for this
	# service, which it may write as root; the controllers must reach that cgroup, so
	# enable them in each cgroup above it, top down (a failure only means a weaker
	# containment, which the worker names in /hello).
	cg="$(sed -n 's/^0:://p' /proc/$$/cgroup)"
	if [ -n "$cg" ] && [ "$cg" != / ] && [ -f /sys/fs/cgroup/cgroup.subtree_control ]; then
		dir=/sys/fs/cgroup
		rest="${{cg%/*}}"
		while :; do
			for c in memory pids cpu; do
				grep -qw "$c" "$dir/cgroup.controllers" 2>/dev/null \
					&& echo "+$c" >"$dir/cgroup.subtree_control" 2>/dev/null
			done
			rest="${{rest#/}}"
			[ -z "$rest" ] && break
			dir="$dir/${{rest%%/*}}"
			case "$rest" in */*) rest="${{rest#*/}}" ;; *) rest= ;; esac
		done
		grep -qw memory "/sys/fs/cgroup$cg/cgroup.controllers" 2>/dev/null \
			&& grep -qw pids "/sys/fs/cgroup$cg/cgroup.controllers" \
			|| ewarn "outpost: no memory and pids controllers in /sys/fs/cgroup$cg"
	fi
}}
"#,
        respawn_delay = 2,
    )
}

fn systemd_unit(stop_timeout_s: u64, swap: SwapPlan) -> String {
    let swap_step = match swap.ensure_args() {
        Some(args) => format!(
            "# Swap, made and turned on before each start; a failure (-) only means running\n\
             # without it.\n\
             ExecStartPre=-{BINARY} {args}\n"
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
# As root (no User=): the worker starts each agent as the user outpost-agent, in a
# cgroup of its own, and keeps its tokens and task logs out of the agents' reach.
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
# Hand the worker its cgroup (v2): it makes one cgroup per task below it (memory and
# pids limits, accounting, and killing every process of a task).
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
