//! `outpost install --root` / `outpost uninstall --root` into a scratch system root, for
//! both init systems: the files, modes, owners, user entries, env file and swap step are
//! right; a second run changes nothing (bytes, modes and mtimes identical); the OpenRC
//! script passes `busybox sh -n`; the systemd unit passes `systemd-analyze verify`;
//! uninstall takes it all away again. Runs as root (the data dir is chowned to outpost).

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// A scratch system root with the account files of a small Alpine or Debian system.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        assert!(
            nix::unistd::geteuid().is_root(),
            "tests/install.rs must run as root: install chowns the data dir to the outpost user"
        );
        let dir = tempfile::tempdir().unwrap();
        let r = Root { dir };
        r.write(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nbin:x:100:1:bin:/bin:/sbin/nologin\n",
            0o644,
        );
        r.write(
            "etc/group",
            "root:x:0:root\nbin:x:1:\nusers:x:100:\n",
            0o644,
        );
        r.write(
            "etc/shadow",
            "root:*:19000:0:::::\nbin:!:19000:0:::::\n",
            0o640,
        );
        r.write("etc/gshadow", "root:*::\n", 0o640);
        r.write("etc/fstab", "/dev/sda1 / ext4 defaults 0 1\n", 0o644);
        r.write("sbin/nologin", "", 0o755);
        r
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }

    fn write(&self, rel: &str, text: &str, mode: u32) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    fn mode(&self, rel: &str) -> u32 {
        fs::symlink_metadata(self.path(rel)).unwrap().mode() & 0o7777
    }

    fn owner(&self, rel: &str) -> (u32, u32) {
        let m = fs::symlink_metadata(self.path(rel)).unwrap();
        (m.uid(), m.gid())
    }

    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    /// Every path under the root with its type, mode, owner, mtime and content hash.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, u32, u32, i64, i64, u64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        for _ in 0..10_000 {
            let Some(dir) = stack.pop() else { break };
            for entry in fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                if m.is_file() {
                    fs::read(&p).unwrap().hash(&mut h);
                } else if m.is_dir() {
                    stack.push(p.clone());
                }
                out.insert(
                    p,
                    (
                        m.mode(),
                        m.uid(),
                        m.gid(),
                        m.mtime(),
                        m.mtime_nsec(),
                        h.finish(),
                    ),
                );
            }
        }
        out
    }

    fn outpost(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .args(args)
            .arg("--root")
            .arg(self.dir.path())
            .output()
            .unwrap();
        eprintln!(
            "$ outpost {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.outpost(args);
        assert!(out.status.success(), "outpost {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.outpost(args);
        assert!(!out.status.success(), "outpost {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    /// (uid, gid) of the outpost user in etc/passwd.
    fn outpost_ids(&self) -> (u32, u32) {
        let passwd = self.read("etc/passwd");
        let line = passwd
            .lines()
            .find(|l| l.starts_with("outpost:"))
            .expect("outpost in passwd");
        let f: Vec<&str> = line.split(':').collect();
        (f[2].parse().unwrap(), f[3].parse().unwrap())
    }
}

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox is needed to check the OpenRC script: apt-get install busybox-static")
}

fn install_args<'a>(init: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "install",
        "--init",
        init,
        "--binary",
        BIN,
        "--swap",
        "1G",
        "--token",
        "s3cret-token",
        "--agent",
        "claude -p --dangerously-skip-permissions",
        "--env",
        "OUTPOST_MAX_TASKS=2",
    ];
    v.extend_from_slice(extra);
    v
}

/// What both init systems share: user, dirs, env file, binary.
fn check_common(r: &Root) {
    let (uid, gid) = r.outpost_ids();
    assert!(
        (100..1000).contains(&uid) && uid != 100,
        "a free system uid, got {uid}"
    );
    assert!(r.read("etc/passwd").contains(&format!(
        "outpost:x:{uid}:{gid}:outpost worker:/var/lib/outpost:/sbin/nologin\n"
    )));
    assert!(r.read("etc/group").contains(&format!("outpost:x:{gid}:\n")));
    assert!(
        r.read("etc/shadow").contains("outpost:!:"),
        "locked password in shadow"
    );
    assert!(r.read("etc/gshadow").contains("outpost:!::"));
    assert_eq!(r.mode("etc/shadow"), 0o640, "shadow keeps its mode");
    assert!(
        r.read("etc/passwd").starts_with("root:x:0:0:"),
        "existing entries kept"
    );

    assert_eq!(r.mode("var/lib/outpost"), 0o750);
    assert_eq!(r.owner("var/lib/outpost"), (uid, gid));

    assert_eq!(r.mode("etc/outpost/env"), 0o600);
    assert_eq!(r.owner("etc/outpost/env"), (0, 0));
    let env = r.read("etc/outpost/env");
    for line in [
        "OUTPOST_DATA=/var/lib/outpost\n",
        "OUTPOST_SWAP=0\n",
        "OUTPOST_TOKEN=s3cret-token\n",
        "OUTPOST_AGENT='claude -p --dangerously-skip-permissions'\n",
        "OUTPOST_MAX_TASKS=2\n",
    ] {
        assert!(env.contains(line), "env file lacks {line:?}:\n{env}");
    }

    assert_eq!(r.mode("usr/local/bin/outpost"), 0o755);
    assert_eq!(
        fs::read(r.path("usr/local/bin/outpost")).unwrap(),
        fs::read(BIN).unwrap()
    );
    // Swap is made at service start, not written into the image.
    assert!(!r.exists("var/lib/outpost.swap"));
    assert_eq!(
        r.read("etc/fstab"),
        "/dev/sda1 / ext4 defaults 0 1\n",
        "fstab untouched"
    );
}

fn check_idempotent_and_uninstall(r: &Root, args: &[&str], definition: &str) {
    let before = r.snapshot();
    let out = r.ok(args);
    assert!(
        out.contains(" 0 changed"),
        "second run changed something:\n{out}"
    );
    assert!(
        !out.contains("created") && !out.contains("updated"),
        "{out}"
    );
    assert_eq!(
        before,
        r.snapshot(),
        "second install must leave every byte, mode and mtime alone"
    );

    // A rerun without --token keeps the token; a changed flag updates only the env file.
    let out = r.ok(&[
        "install",
        "--init",
        args[2],
        "--binary",
        BIN,
        "--swap",
        "1G",
        "--env",
        "OUTPOST_MAX_TASKS=3",
    ]);
    assert!(
        out.contains("updated") && out.contains("etc/outpost/env"),
        "{out}"
    );
    let env = r.read("etc/outpost/env");
    assert!(
        env.contains("OUTPOST_TOKEN=s3cret-token\n") && env.contains("OUTPOST_MAX_TASKS=3\n"),
        "{env}"
    );

    let out = r.ok(&["uninstall"]);
    assert!(out.contains("removed"), "{out}");
    for gone in [
        definition,
        "etc/outpost/env",
        "etc/outpost",
        "usr/local/bin/outpost",
    ] {
        assert!(!r.exists(gone), "uninstall left {gone}");
    }
    assert!(r.exists("var/lib/outpost"), "data kept without --purge");
    assert!(
        r.read("etc/passwd").contains("outpost:"),
        "user kept without --purge"
    );

    r.ok(&["uninstall", "--purge"]);
    assert!(!r.exists("var/lib/outpost"));
    for file in ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"] {
        assert!(
            !r.read(file).contains("outpost:"),
            "{file} still has outpost"
        );
    }
    assert_eq!(
        r.read("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nbin:x:100:1:bin:/bin:/sbin/nologin\n"
    );
    let settled = r.snapshot();
    let out = r.ok(&["uninstall", "--purge"]);
    assert!(out.contains(" 0 changed"), "{out}");
    assert_eq!(settled, r.snapshot());
}

#[test]
fn openrc_install_is_complete_idempotent_and_undone() {
    let r = Root::new();
    let args = install_args("openrc", &[]);
    let out = r.ok(&args);
    assert!(
        out.contains("rc-update add outpost default"),
        "tells what to run in the image:\n{out}"
    );
    check_common(&r);

    let script = r.read("etc/init.d/outpost");
    assert_eq!(r.mode("etc/init.d/outpost"), 0o755);
    assert!(script.starts_with("#!/sbin/openrc-run\n"));
    for needle in [
        "supervisor=\"supervise-daemon\"",
        "command=\"/usr/local/bin/outpost\"",
        "command_args=\"serve\"",
        "command_user=\"outpost:outpost\"",
        "respawn_delay=2",
        "respawn_max=0",
        "retry=\"TERM/30/KILL/5\"",
        "export SSD_OOM_SCORE_ADJ=-1000",
        "need net",
        ". /etc/outpost/env",
        "/usr/local/bin/outpost swap ensure 1G --path /var/lib/outpost.swap",
        // cgroup v2 delegation, as systemd's Delegate=yes (the worker makes task cgroups).
        "chown outpost:outpost \"/sys/fs/cgroup$cg\" \"/sys/fs/cgroup$cg/cgroup.procs\"",
    ] {
        assert!(
            script.contains(needle),
            "OpenRC script lacks {needle:?}:\n{script}"
        );
    }
    assert_eq!(r.mode("var/log/outpost"), 0o750);
    assert_eq!(r.owner("var/log/outpost"), r.outpost_ids());
    let sh = Command::new(busybox())
        .args(["sh", "-n"])
        .arg(r.path("etc/init.d/outpost"))
        .output()
        .unwrap();
    assert!(
        sh.status.success(),
        "busybox sh -n: {}",
        String::from_utf8_lossy(&sh.stderr)
    );

    check_idempotent_and_uninstall(&r, &args, "etc/init.d/outpost");
    assert!(!r.exists("var/log/outpost"), "--purge removes the log dir");
}

#[test]
fn systemd_install_is_complete_idempotent_and_undone() {
    let r = Root::new();
    let args = install_args("systemd", &["--env", "OUTPOST_GRACE_S=20"]);
    let out = r.ok(&args);
    assert!(
        out.contains("systemctl --root="),
        "tells what to run:\n{out}"
    );
    check_common(&r);

    let unit = r.read("etc/systemd/system/outpost.service");
    assert_eq!(r.mode("etc/systemd/system/outpost.service"), 0o644);
    for needle in [
        "User=outpost\n",
        "EnvironmentFile=/etc/outpost/env\n",
        "ExecStart=/usr/local/bin/outpost serve\n",
        "ExecStartPre=-+/usr/local/bin/outpost swap ensure 1G --path /var/lib/outpost.swap\n",
        "Restart=always\n",
        "OOMScoreAdjust=-1000\n",
        "KillMode=mixed\n",
        "TimeoutStopSec=42\n",
        "WantedBy=multi-user.target\n",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle:?}:\n{unit}");
    }
    assert!(!r.exists("var/log/outpost"), "systemd logs to the journal");
    verify_unit(&unit);

    check_idempotent_and_uninstall(&r, &args, "etc/systemd/system/outpost.service");
}

/// `systemd-analyze verify` on the unit, its binary path pointed at the built one (the
/// check wants the executable to exist); any warning about our file fails the test.
fn verify_unit(unit: &str) {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "systemd-analyze not installed: unit syntax not verified (apt-get install systemd)"
        );
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("outpost.service");
    fs::write(&p, unit.replace("/usr/local/bin/outpost", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&p)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("outpost.service"),
        "systemd-analyze warns: {stderr}"
    );
}

#[test]
fn auto_picks_the_init_system_and_switching_replaces_the_other() {
    let r = Root::new();
    r.ok(&["install", "--binary", BIN, "--swap", "0"]);
    assert!(
        r.exists("etc/systemd/system/outpost.service"),
        "no OpenRC marks: systemd"
    );
    assert!(
        !r.read("etc/systemd/system/outpost.service")
            .contains("swap ensure"),
        "--swap 0: no swap step"
    );
    r.write("etc/alpine-release", "3.20.3\n", 0o644);
    r.ok(&["install", "--binary", BIN, "--swap", "0"]);
    assert!(
        r.exists("etc/init.d/outpost"),
        "/etc/alpine-release: OpenRC"
    );
    assert!(
        !r.exists("etc/systemd/system/outpost.service"),
        "one service definition at a time"
    );
}

#[test]
fn a_rerun_keeps_the_swap_size_it_is_not_given() {
    let r = Root::new();
    r.ok(&[
        "install", "--init", "openrc", "--binary", BIN, "--swap", "512M",
    ]);
    let out = r.ok(&["install", "--init", "openrc", "--binary", BIN]);
    assert!(out.contains(" 0 changed"), "{out}");
    assert!(r
        .read("etc/init.d/outpost")
        .contains("swap ensure 512M --path /var/lib/outpost.swap"));
    r.ok(&[
        "install", "--init", "openrc", "--binary", BIN, "--swap", "0",
    ]);
    r.ok(&["install", "--init", "openrc", "--binary", BIN]);
    assert!(
        !r.read("etc/init.d/outpost").contains("swap ensure"),
        "0 is kept too"
    );
}

#[test]
fn idle_shutdown_gets_a_poweroff_rule_for_the_service_user() {
    let r = Root::new();
    let err = r.fails(&[
        "install",
        "--init",
        "openrc",
        "--binary",
        BIN,
        "--swap",
        "0",
        "--idle-shutdown",
        "30m",
    ]);
    assert!(err.contains("doas or sudo"), "{err}");
    r.write("usr/bin/doas", "", 0o755);
    r.ok(&[
        "install",
        "--init",
        "openrc",
        "--binary",
        BIN,
        "--swap",
        "0",
        "--idle-shutdown",
        "30m",
    ]);
    assert_eq!(
        r.read("etc/doas.d/outpost.conf").lines().last(),
        Some("permit nopass outpost as root cmd /sbin/poweroff")
    );
    assert_eq!(r.mode("etc/doas.d/outpost.conf"), 0o600);
    let env = r.read("etc/outpost/env");
    assert!(
        env.contains("OUTPOST_IDLE_SHUTDOWN=30m\n")
            && env.contains("OUTPOST_IDLE_SHUTDOWN_CMD='doas -n /sbin/poweroff'\n"),
        "{env}"
    );
    // Taking the setting away takes the rule away.
    r.ok(&[
        "install",
        "--init",
        "openrc",
        "--binary",
        BIN,
        "--swap",
        "0",
        "--env",
        "OUTPOST_IDLE_SHUTDOWN=",
        "--env",
        "OUTPOST_IDLE_SHUTDOWN_CMD=",
    ]);
    assert!(!r.exists("etc/doas.d/outpost.conf"));

    let r = Root::new();
    r.write("usr/bin/sudo", "", 0o755);
    r.ok(&[
        "install",
        "--init",
        "systemd",
        "--binary",
        BIN,
        "--swap",
        "0",
        "--idle-shutdown",
        "45m",
    ]);
    assert_eq!(r.mode("etc/sudoers.d/outpost"), 0o440);
    if Path::new("/usr/sbin/visudo").exists() {
        let out = Command::new("/usr/sbin/visudo")
            .arg("-c")
            .arg("-f")
            .arg(r.path("etc/sudoers.d/outpost"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "visudo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn mistakes_are_refused_with_what_to_do() {
    let r = Root::new();
    let base = [
        "install", "--init", "openrc", "--binary", BIN, "--swap", "0",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |v: Vec<String>| r.fails(&v.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run(with(&["--env", "OUTPOST_SWAP=1G"])).contains("--swap 1G"));
    assert!(run(with(&["--agent", "it's"])).contains("quote"));
    assert!(run(with(&["--env", "1BAD=x"])).contains("invalid variable name"));
    assert!(run(with(&["--init", "runit"])).contains("openrc, systemd or auto"));
    assert!(run(with(&["--swap", "lots"])).contains("--swap"));
    assert!(run(with(&["--frobnicate"])).contains("unknown argument"));
    assert!(run(with(&["--env", "OUTPOST_BIND=0.0.0.0"])).contains("--token"));
    assert!(
        !r.exists("etc/outpost/env"),
        "nothing written after a refused command line"
    );

    r.write(
        "etc/outpost/env",
        "OUTPOST_TOKEN=x\nthis is not an assignment\n",
        0o600,
    );
    let err = r.fails(&base);
    assert!(err.contains("etc/outpost/env line 2"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["install", "--root"])
        .arg(empty.path())
        .args(["--binary", BIN])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("etc/passwd"), "{err}");
}
