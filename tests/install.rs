//! `outpost install --root` / `outpost uninstall --root` into a scratch system root, for
//! both init systems: the files, modes, owners, the agents' user `outpost-agent`
//! (61184), the env file, the token files and the swap step are right; the service runs
//! the worker as root; a second run changes nothing (bytes, modes and mtimes
//! identical); an id of ours held by another account is refused; an earlier version's
//! install (service user `outpost`, inline token, poweroff rule) is brought up to date;
//! the OpenRC script passes `busybox sh -n`; the systemd unit passes `systemd-analyze
//! verify`; uninstall takes it all away again. Runs as root (install chowns to root).

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
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
            "tests/install.rs must run as root: install gives its files and the data dir to root"
        );
        let dir = tempfile::tempdir().unwrap();
        let r = Root { dir };
        r.write("etc/passwd", PASSWD, 0o644);
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

    /// The lines of the account files naming `name`.
    fn account_lines(&self, name: &str) -> Vec<String> {
        ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"]
            .iter()
            .flat_map(|f| self.read(f).lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| l.starts_with(&format!("{name}:")))
            .collect()
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nbin:x:100:1:bin:/bin:/sbin/nologin\n";

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox is needed to check the OpenRC script: apt-get install busybox-static")
}

/// `base` followed by `extra`.
fn plus<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
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

/// What both init systems share: the agents' user, dirs, env file, token, binary.
fn check_common(r: &Root) {
    assert!(r.read("etc/passwd").contains(
        "outpost-agent:x:61184:61184:outpost agents:/var/lib/outpost/home:/sbin/nologin\n"
    ));
    assert!(r.read("etc/group").contains("outpost-agent:x:61184:\n"));
    assert!(
        r.read("etc/shadow").contains("outpost-agent:!:"),
        "locked password in shadow"
    );
    assert!(r.read("etc/gshadow").contains("outpost-agent:!::"));
    assert_eq!(r.account_lines("outpost-agent").len(), 4);
    assert!(
        r.account_lines("outpost").is_empty(),
        "no service user: the worker runs as root"
    );
    assert_eq!(r.mode("etc/shadow"), 0o640, "shadow keeps its mode");
    assert!(
        r.read("etc/passwd").starts_with(PASSWD),
        "existing entries kept"
    );

    assert_eq!(r.mode("var/lib/outpost"), 0o711);
    assert_eq!(r.owner("var/lib/outpost"), (0, 0));

    assert_eq!(r.mode("etc/outpost/env"), 0o600);
    assert_eq!(r.owner("etc/outpost/env"), (0, 0));
    let env = r.read("etc/outpost/env");
    for line in [
        "OUTPOST_DATA=/var/lib/outpost\n",
        "OUTPOST_SWAP=0\n",
        "OUTPOST_TOKEN_FILE=/etc/outpost/token\n",
        "OUTPOST_AGENT='claude -p --dangerously-skip-permissions'\n",
        "OUTPOST_MAX_TASKS=2\n",
    ] {
        assert!(env.contains(line), "env file lacks {line:?}:\n{env}");
    }
    assert!(
        !env.contains("s3cret-token") && !env.contains("OUTPOST_TOKEN="),
        "the token is not in the environment:\n{env}"
    );
    assert_eq!(r.read("etc/outpost/token"), "s3cret-token");
    assert_eq!(r.mode("etc/outpost/token"), 0o600);
    assert_eq!(r.owner("etc/outpost/token"), (0, 0));
    assert!(!r.exists("etc/outpost/git-token"), "no git token given");

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
        env.contains("OUTPOST_TOKEN_FILE=/etc/outpost/token\n")
            && env.contains("OUTPOST_MAX_TASKS=3\n"),
        "{env}"
    );
    assert_eq!(r.read("etc/outpost/token"), "s3cret-token");

    let out = r.ok(&["uninstall"]);
    assert!(out.contains("removed"), "{out}");
    for gone in [
        definition,
        "etc/outpost/env",
        "etc/outpost/token",
        "etc/outpost",
        "usr/local/bin/outpost",
    ] {
        assert!(!r.exists(gone), "uninstall left {gone}");
    }
    assert!(r.exists("var/lib/outpost"), "data kept without --purge");
    assert_eq!(
        r.account_lines("outpost-agent").len(),
        4,
        "user kept without --purge"
    );

    r.ok(&["uninstall", "--purge"]);
    assert!(!r.exists("var/lib/outpost"));
    for file in ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"] {
        assert!(
            !r.read(file).contains("outpost"),
            "{file} still has outpost"
        );
    }
    assert_eq!(r.read("etc/passwd"), PASSWD);
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
        "respawn_delay=2",
        "respawn_max=0",
        "retry=\"TERM/30/KILL/5\"",
        "export SSD_OOM_SCORE_ADJ=-1000",
        "need net",
        ". /etc/outpost/env",
        "/usr/local/bin/outpost swap ensure 1G --path /var/lib/outpost.swap",
        "checkpath --directory --owner root:root --mode 0711 /var/lib/outpost\n",
        "checkpath --directory --owner root:root --mode 0750 /var/log/outpost\n",
        // cgroup v2: the controllers reach the service's cgroup, which the root worker
        // writes itself (no chown: nothing but the agents runs as another user).
        "echo \"+$c\" >\"$dir/cgroup.subtree_control\"",
    ] {
        assert!(
            script.contains(needle),
            "OpenRC script lacks {needle:?}:\n{script}"
        );
    }
    for absent in ["command_user=", "chown ", "outpost:outpost"] {
        assert!(
            !script
                .lines()
                .any(|l| !l.starts_with('#') && l.contains(absent)),
            "the worker runs as root: {absent:?} in\n{script}"
        );
    }
    assert_eq!(r.mode("var/log/outpost"), 0o750);
    assert_eq!(r.owner("var/log/outpost"), (0, 0));
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
        "EnvironmentFile=/etc/outpost/env\n",
        "ExecStart=/usr/local/bin/outpost serve\n",
        "ExecStartPre=-/usr/local/bin/outpost swap ensure 1G --path /var/lib/outpost.swap\n",
        "Delegate=yes\n",
        "Restart=always\n",
        "OOMScoreAdjust=-1000\n",
        "KillMode=mixed\n",
        "TimeoutStopSec=42\n",
        "WantedBy=multi-user.target\n",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle:?}:\n{unit}");
    }
    for absent in ["User=", "Group=", "DynamicUser=", "s3cret-token"] {
        assert!(
            !unit
                .lines()
                .any(|l| !l.starts_with('#') && l.contains(absent)),
            "the worker runs as root, the token stays in its file: {absent:?} in\n{unit}"
        );
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

/// What an earlier version left: the service user `outpost`, the data dir its own, the
/// token inline in the env file, and a doas rule with its poweroff command.
fn earlier_install(r: &Root) {
    r.write(
        "etc/passwd",
        &format!("{PASSWD}outpost:x:101:101:outpost worker:/var/lib/outpost:/sbin/nologin\n"),
        0o644,
    );
    r.write(
        "etc/group",
        "root:x:0:root\nbin:x:1:\nusers:x:100:\noutpost:x:101:\n",
        0o644,
    );
    fs::create_dir_all(r.path("var/lib/outpost/tasks")).unwrap();
    std::os::unix::fs::chown(r.path("var/lib/outpost"), Some(101), Some(101)).unwrap();
    fs::set_permissions(r.path("var/lib/outpost"), fs::Permissions::from_mode(0o750)).unwrap();
    r.write(
        "etc/outpost/env",
        "OUTPOST_DATA=/var/lib/outpost\nOUTPOST_SWAP=0\nOUTPOST_TOKEN=old-token\n\
         OUTPOST_IDLE_SHUTDOWN=30m\nOUTPOST_IDLE_SHUTDOWN_CMD='doas -n /sbin/poweroff'\n",
        0o600,
    );
    r.write(
        "etc/doas.d/outpost.conf",
        "permit nopass outpost as root cmd /sbin/poweroff\n",
        0o600,
    );
    r.write("usr/bin/doas", "", 0o755);
}

#[test]
fn an_earlier_install_is_brought_up_to_date() {
    let r = Root::new();
    earlier_install(&r);
    let args = [
        "install", "--init", "openrc", "--binary", BIN, "--swap", "0",
    ];
    r.ok(&args);
    let env = r.read("etc/outpost/env");
    assert!(
        env.contains("OUTPOST_TOKEN_FILE=/etc/outpost/token\n") && !env.contains("old-token"),
        "the inline token moved into its file:\n{env}"
    );
    assert_eq!(r.read("etc/outpost/token"), "old-token");
    assert!(
        env.contains("OUTPOST_IDLE_SHUTDOWN=30m\n") && !env.contains("OUTPOST_IDLE_SHUTDOWN_CMD"),
        "the worker, root, powers off with its default:\n{env}"
    );
    assert!(
        !r.exists("etc/doas.d/outpost.conf"),
        "no poweroff rule is needed"
    );
    assert_eq!(r.mode("var/lib/outpost"), 0o711);
    assert_eq!(r.owner("var/lib/outpost"), (0, 0));
    assert_eq!(
        r.account_lines("outpost-agent").len(),
        4,
        "passwd, group, shadow, gshadow"
    );
    assert_eq!(
        r.account_lines("outpost").len(),
        2,
        "the old service user is kept while its files may be in the data dir"
    );
    // Settled: a rerun changes nothing.
    let before = r.snapshot();
    let out = r.ok(&args);
    assert!(out.contains(" 0 changed"), "{out}");
    assert_eq!(before, r.snapshot());

    r.ok(&["uninstall", "--purge"]);
    assert!(r.account_lines("outpost").is_empty());
    assert!(r.account_lines("outpost-agent").is_empty());
    assert_eq!(r.read("etc/passwd"), PASSWD);
    assert_eq!(
        r.read("etc/group"),
        "root:x:0:root\nbin:x:1:\nusers:x:100:\n"
    );
}

#[test]
fn idle_shutdown_needs_no_poweroff_rule() {
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
    let env = r.read("etc/outpost/env");
    assert!(
        env.contains("OUTPOST_IDLE_SHUTDOWN=45m\n") && !env.contains("OUTPOST_IDLE_SHUTDOWN_CMD"),
        "{env}"
    );
    assert!(!r.exists("etc/sudoers.d/outpost") && !r.exists("etc/doas.d/outpost.conf"));
}

#[test]
fn tokens_live_in_root_files_the_env_file_names() {
    let r = Root::new();
    let base = [
        "install", "--init", "systemd", "--binary", BIN, "--swap", "0",
    ];
    let run = |extra: &[&str]| r.ok(&plus(&base, extra));
    run(&["--token", "api-1", "--git-token", "git-1"]);
    let env = r.read("etc/outpost/env");
    assert!(
        env.contains("OUTPOST_TOKEN_FILE=/etc/outpost/token\n")
            && env.contains("OUTPOST_GIT_TOKEN_FILE=/etc/outpost/git-token\n")
            && !env.contains("api-1")
            && !env.contains("git-1"),
        "{env}"
    );
    for (file, token) in [
        ("etc/outpost/token", "api-1"),
        ("etc/outpost/git-token", "git-1"),
    ] {
        assert_eq!(r.read(file), token);
        assert_eq!((r.mode(file), r.owner(file)), (0o600, (0, 0)));
    }

    // A rerun keeps the token file, and puts its mode right.
    fs::set_permissions(
        r.path("etc/outpost/token"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = run(&[]);
    assert!(
        out.contains("updated") && out.contains("etc/outpost/token"),
        "{out}"
    );
    assert_eq!(r.mode("etc/outpost/token"), 0o600);
    assert_eq!(r.read("etc/outpost/token"), "api-1");

    // The user's own file instead: the env file names it, ours goes.
    let out = run(&["--token-file", "/run/secrets/outpost-token"]);
    assert!(
        out.contains("/run/secrets/outpost-token does not exist"),
        "says the service needs it:\n{out}"
    );
    let env = r.read("etc/outpost/env");
    assert!(
        env.contains("OUTPOST_TOKEN_FILE=/run/secrets/outpost-token\n"),
        "{env}"
    );
    assert!(!r.exists("etc/outpost/token"));
    assert_eq!(r.read("etc/outpost/git-token"), "git-1", "kept");

    // Inline again, then removed.
    run(&["--env", "OUTPOST_TOKEN=api-2", "--git-token", "git-2"]);
    assert_eq!(r.read("etc/outpost/token"), "api-2");
    assert_eq!(r.read("etc/outpost/git-token"), "git-2");
    assert!(r
        .read("etc/outpost/env")
        .contains("OUTPOST_TOKEN_FILE=/etc/outpost/token\n"));
    run(&[
        "--env",
        "OUTPOST_TOKEN=",
        "--env",
        "OUTPOST_GIT_TOKEN_FILE=",
    ]);
    let env = r.read("etc/outpost/env");
    assert!(!env.contains("TOKEN"), "{env}");
    assert!(!r.exists("etc/outpost/token") && !r.exists("etc/outpost/git-token"));

    // Our file named but gone: refused, with what to do.
    run(&["--token", "api-3"]);
    fs::remove_file(r.path("etc/outpost/token")).unwrap();
    let out = r.outpost(&base);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token TOKEN"), "{err}");
}

#[test]
fn the_agents_ids_must_be_free() {
    let base = [
        "install", "--init", "openrc", "--binary", BIN, "--swap", "0",
    ];

    // uid 61184 is someone's: refused before anything is written.
    let r = Root::new();
    r.write(
        "etc/passwd",
        &format!("{PASSWD}alice:x:61184:100::/home/alice:/bin/sh\n"),
        0o644,
    );
    let before = r.snapshot();
    let err = r.fails(&base);
    assert!(
        err.contains("uid 61184") && err.contains("alice") && err.contains("OUTPOST_AGENT_USER"),
        "{err}"
    );
    assert_eq!(before, r.snapshot(), "nothing written");
    // Another id, as the message says: no outpost-agent is made.
    r.ok(&plus(&base, &["--env", "OUTPOST_AGENT_USER=62000:62000"]));
    assert!(r.account_lines("outpost-agent").is_empty());
    assert!(r
        .read("etc/outpost/env")
        .contains("OUTPOST_AGENT_USER=62000:62000\n"));
    // A name that is not there is refused.
    let err = r.fails(&plus(&base, &["--env", "OUTPOST_AGENT_USER=nobody-here"]));
    assert!(err.contains("no such user"), "{err}");

    // gid 61184 is another group's.
    let r = Root::new();
    r.write("etc/group", "root:x:0:root\nteam:x:61184:\n", 0o644);
    let err = r.fails(&base);
    assert!(err.contains("gid 61184") && err.contains("team"), "{err}");

    // A task slot's uid (61184 + 2 with three slots) is someone's.
    let r = Root::new();
    r.write(
        "etc/passwd",
        &format!("{PASSWD}bob:x:61186:100::/home/bob:/bin/sh\n"),
        0o644,
    );
    let err = r.fails(&plus(&base, &["--env", "OUTPOST_MAX_TASKS=3"]));
    assert!(
        err.contains("slot 2") && err.contains("61186") && err.contains("bob"),
        "{err}"
    );
    r.ok(&plus(&base, &["--env", "OUTPOST_MAX_TASKS=2"]));

    // An outpost-agent made by hand is kept as it is.
    let r = Root::new();
    let line = "outpost-agent:x:70000:70000:mine:/srv/agent:/bin/false\n";
    r.write("etc/passwd", &format!("{PASSWD}{line}"), 0o644);
    r.ok(&base);
    assert_eq!(r.read("etc/passwd"), format!("{PASSWD}{line}"));
}

#[test]
fn mistakes_are_refused_with_what_to_do() {
    let r = Root::new();
    let base = [
        "install", "--init", "openrc", "--binary", BIN, "--swap", "0",
    ];
    let run = |extra: &[&str]| r.fails(&plus(&base, extra));
    assert!(run(&["--env", "OUTPOST_SWAP=1G"]).contains("--swap 1G"));
    assert!(run(&["--agent", "it's"]).contains("quote"));
    assert!(run(&["--env", "1BAD=x"]).contains("invalid variable name"));
    assert!(run(&["--init", "runit"]).contains("openrc, systemd or auto"));
    assert!(run(&["--swap", "lots"]).contains("--swap"));
    assert!(run(&["--frobnicate"]).contains("unknown argument"));
    assert!(run(&["--env", "OUTPOST_BIND=0.0.0.0"]).contains("--token"));
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
