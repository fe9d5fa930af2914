//! The deployables, for real: `image/build` makes the minimal image (<= 10 MiB), which
//! podman runs as Cloud Run would (PORT, K_SERVICE, 512 MiB) — /hello, a /run task
//! streamed to its `done` event, Cloud Logging JSON lines, and `podman stop -t 10`
//! ending it with exit code 0 (not SIGKILL's 137); `Dockerfile.cloudrun` builds offline
//! from local bases and runs; every `#cloud-config` file passes `cloud-init schema`;
//! the Packer template passes `packer validate`.
//!
//! Needs podman (+ runc), busybox-static, cloud-init and packer (Debian packages); a
//! missing tool fails the test with what to install. Containers are removed even when
//! a test fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const MINIMAL: &str = "localhost/outpost:latest";
const CLOUDRUN: &str = "localhost/outpost-cloudrun-test:latest";
const MUSL_BINARY: &str = "target/x86_64-unknown-linux-musl/release/outpost";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require(tool: &str, install: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is needed by tests/images.rs and was not found: {install}"
    );
}

/// podman with the flags this kernel and CI need: runc (crun is not there), cgroupfs
/// and a file event log (no systemd).
fn podman() -> Command {
    require("podman", "apt-get install podman runc");
    let mut c = Command::new("podman");
    if Path::new("/usr/sbin/runc").exists() {
        c.args(["--runtime", "/usr/sbin/runc"]);
    }
    c.args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
    c
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// Builds the minimal image once per test run (image/build reuses an unchanged one).
fn minimal_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        require("podman", "apt-get install podman runc");
        let out = Command::new(repo().join("image/build"))
            .current_dir(repo())
            .env("ENGINE", "podman")
            .output()
            .map_err(|e| format!("cannot run image/build: {e}"))?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{log}");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("image/build failed:\n{log}"))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A container that is removed when the test ends, however it ends.
struct Container {
    name: String,
    port: u16,
}

impl Container {
    fn start(image: &str, env: &[(&str, &str)]) -> Container {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("outpost-test-{}-{n}", std::process::id());
        let c = Container { name, port };
        let mut cmd = podman();
        cmd.args(["run", "-d", "--name", &c.name, "--memory", "512m"]);
        cmd.args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        cmd.args(["-p", &format!("127.0.0.1:{port}:8080")]);
        cmd.args(["-e", "PORT=8080", "-e", "K_SERVICE=outpost-test"]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        run(cmd.arg(image));
        c
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Polls /hello until the worker answers (bounded; fails with the container's log).
    async fn hello(&self, client: &reqwest::Client) -> serde_json::Value {
        for _ in 0..200 {
            if let Ok(resp) = client.get(self.url("/hello")).send().await {
                if resp.status().is_success() {
                    return resp.json().await.unwrap();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "the container never answered /hello; its log:\n{}",
            self.logs()
        );
    }

    fn logs(&self) -> String {
        let out = podman().args(["logs", &self.name]).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `podman stop -t 10`, then the exit code.
    fn stop(&self) -> i64 {
        run(podman().args(["stop", "-t", "10", &self.name]));
        stdout(podman().args(["inspect", "--format", "{{.State.ExitCode}}", &self.name]))
            .parse()
            .unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.name]).output();
    }
}

/// Removes the Cloud Run test image, and the untagged build-stage images made from
/// the minimal one, when the test ends.
struct ImageCleanup;

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        let _ = podman().args(["rmi", "-f", CLOUDRUN]).output();
        let _ = podman()
            .args([
                "image",
                "prune",
                "-f",
                "--filter",
                "label=org.outpost.inputs",
            ])
            .output();
    }
}

/// Everything the agent wrote: the `output` events of an SSE body, in order.
fn agent_output(sse: &str) -> String {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["event"] == "output")
        .filter_map(|v| v["data"].as_str().map(str::to_string))
        .collect()
}

fn image_size(image: &str) -> u64 {
    stdout(podman().args(["image", "inspect", "--format", "{{.Size}}", image]))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_image_is_small_and_serves_like_cloud_run() {
    minimal_image();
    let size = image_size(MINIMAL);
    assert!(
        size <= 10 << 20,
        "{MINIMAL} is {size} bytes, over the 10 MiB target"
    );
    let user = stdout(podman().args(["image", "inspect", "--format", "{{.Config.User}}", MINIMAL]));
    assert_eq!(
        user, "0:0",
        "the worker runs as root, agents as outpost-agent"
    );

    let c = Container::start(MINIMAL, &[("OUTPOST_TOKEN", "test-token")]);
    let client = reqwest::Client::new();
    let hello = c.hello(&client).await;
    assert_eq!(hello["status"], "available", "{hello}");
    assert_eq!(
        hello["memory"]["limit"],
        512u64 << 20,
        "sees the 512 MiB limit: {hello}"
    );

    let unauthorized = client
        .post(c.url("/run"))
        .body(r#"{"prompt":"echo hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401, "the token guards /run");
    let stream = client
        .post(c.url("/run"))
        .bearer_auth("test-token")
        .body(r#"{"prompt":"echo hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let body = stream.text().await.unwrap();
    assert_eq!(
        agent_output(&body),
        "hi\r\n",
        "the output event carries hi:\n{body}"
    );
    let done = body
        .split("event: done\n")
        .nth(1)
        .expect("a done event ends the stream");
    assert!(
        done.contains(r#""status":"done""#) && done.contains(r#""exit_code":0"#),
        "{body}"
    );

    assert_eq!(
        c.stop(),
        0,
        "SIGTERM must end it cleanly, not by SIGKILL (137); log:\n{}",
        c.logs()
    );
    let logs = c.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() >= 3,
        "a start line, the task, the drain:\n{logs}"
    );
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["severity"].is_string() && v["message"].is_string() && v["time"].is_string(),
            "{line}"
        );
    }
    assert!(
        !logs.contains("test-token"),
        "the token never appears in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudrun_dockerfile_builds_from_local_bases() {
    minimal_image();
    assert!(
        repo().join(MUSL_BINARY).is_file(),
        "image/build leaves {MUSL_BINARY}"
    );
    // The minimal image has a shell, so it serves as both bases; no network needed.
    let _cleanup = ImageCleanup;
    run(podman().current_dir(repo()).args([
        "build",
        "-f",
        "Dockerfile.cloudrun",
        "--build-arg",
        &format!("BUILDER_IMAGE={MINIMAL}"),
        "--build-arg",
        &format!("BASE_IMAGE={MINIMAL}"),
        "--build-arg",
        &format!("PREBUILT={MUSL_BINARY}"),
        "--build-arg",
        "AGENT_NPM_PACKAGE=",
        "--build-arg",
        "AGENT=",
        "--build-arg",
        "APT_PACKAGES=",
        "-t",
        CLOUDRUN,
        ".",
    ]));
    let config =
        stdout(podman().args(["image", "inspect", "--format", "{{json .Config}}", CLOUDRUN]));
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "0:0");
    let env: Vec<String> = serde_json::from_value(config["Env"].clone()).unwrap();
    assert!(env.contains(&"OUTPOST_DATA=/data".to_string()), "{env:?}");
    assert!(
        !env.iter()
            .any(|e| e.starts_with("OUTPOST_TOKEN=") || e.starts_with("OUTPOST_GIT_TOKEN=")),
        "no secret baked in: {env:?}"
    );

    // Behind Cloud Run IAM: no token, the explicit opt-out.
    let c = Container::start(CLOUDRUN, &[("OUTPOST_INSECURE_NO_AUTH", "1")]);
    let client = reqwest::Client::new();
    let hello = c.hello(&client).await;
    assert_eq!(hello["status"], "available");
    assert_eq!(hello["isolation"], "user", "{hello}");
    assert!(hello["containment"].is_string(), "{hello}");
    let body = client
        .post(c.url("/run"))
        .body(r#"{"prompt":"id -u; test -w /data || echo data-private; test -w $HOME && echo home-writable"}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        agent_output(&body),
        "61184\r\ndata-private\r\nhome-writable\r\n",
        "the agent runs as outpost-agent, owns its HOME, and cannot write OUTPOST_DATA:\n{body}"
    );
    assert_eq!(c.stop(), 0, "log:\n{}", c.logs());
}

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox is needed: apt-get install busybox-static")
}

fn sh_n(script: &Path) {
    let out = Command::new(busybox())
        .args(["sh", "-n"])
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

const BODY_MARK: &str = "# ---- nothing to change below this line ----";

#[test]
fn cloud_init_user_data_is_valid_and_both_variants_agree() {
    require("cloud-init", "apt-get install cloud-init");
    let dir = repo().join("cloud-init");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.starts_with("#cloud-config") {
            continue;
        }
        let out = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.contains("Valid"),
            "{}: {said}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 1, "no #cloud-config file in cloud-init/");

    // The setup script inside user-data.yaml, as cloud-init will write it (python3-yaml
    // comes with cloud-init).
    let script = stdout(Command::new("python3").arg("-c").arg(
        "import sys, yaml\n\
         d = yaml.safe_load(open(sys.argv[1]))\n\
         print(next(f['content'] for f in d['write_files'] if f['path'].endswith('setup.sh')), end='')",
    ).arg(dir.join("user-data.yaml")));
    let tmp = tempfile::tempdir().unwrap();
    let setup = tmp.path().join("setup.sh");
    std::fs::write(&setup, &script).unwrap();
    sh_n(&setup);
    let tiny = dir.join("alpine-tiny-cloud.sh");
    sh_n(&tiny);
    let tiny_text = std::fs::read_to_string(&tiny).unwrap();
    let body = |s: &str| {
        s.split_once(BODY_MARK)
            .map(|(_, b)| b.trim().to_string())
            .expect("the body marker")
    };
    assert_eq!(
        body(&script),
        body(&tiny_text),
        "the two variants' setup code drifted apart"
    );
    assert!(
        tiny_text.starts_with("#!/bin/sh\n"),
        "tiny-cloud runs user-data scripts that start with #!"
    );
}

/// The agent CLIs the images install are the versions the agent tests drive: the pins of
/// tests/setup/20-agents.sh appear in Dockerfile.cloudrun's default and in both
/// cloud-init variants' examples, and the Dockerfile's default agent is the profile.
#[test]
fn image_agent_pins_are_the_tested_versions() {
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    let setup = read("tests/setup/20-agents.sh");
    let pin = |var: &str| {
        setup
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!("no {var}= in tests/setup/20-agents.sh"))
            .trim()
            .to_string()
    };
    let claude = format!("@anthropic-ai/claude-code@{}", pin("CLAUDE_VERSION"));
    let opencode = format!("opencode-ai@{}", pin("OPENCODE_VERSION"));
    let dockerfile = read("Dockerfile.cloudrun");
    assert!(
        dockerfile.contains(&format!("ARG AGENT_NPM_PACKAGE={claude}\n")),
        "Dockerfile.cloudrun's default agent package is not {claude}"
    );
    assert!(dockerfile.contains("ARG AGENT=claude\n"));
    assert!(dockerfile.contains(&format!(
        "AGENT_NPM_PACKAGE={opencode} --build-arg AGENT=opencode"
    )));
    for f in [
        "cloud-init/user-data.yaml",
        "cloud-init/alpine-tiny-cloud.sh",
        "cloud-init/README.md",
    ] {
        let text = read(f);
        assert!(
            text.contains(&claude) && text.contains(&opencode),
            "{f} names other versions"
        );
    }
}

#[test]
fn packer_template_validates() {
    require("packer", "apt-get install packer");
    // Debian's Packer 1.6.6 has googlecompute built in but predates `required_plugins`
    // (Packer 1.7), which packer/plugins.pkr.hcl declares for `packer init`: validate
    // the template and its variables without that file.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["outpost.pkr.hcl", "variables.pkr.hcl"] {
        std::fs::copy(repo().join("packer").join(f), tmp.path().join(f)).unwrap();
    }
    let binary = env!("CARGO_BIN_EXE_outpost");
    let validate = |extra: &[&str]| {
        let out = Command::new("packer")
            .current_dir(repo())
            .arg("validate")
            .args(extra)
            .args(["-var", &format!("binary={binary}")])
            .arg(tmp.path())
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "packer validate {extra:?}: {said}");
    };
    validate(&["-var", "project_id=outpost-test"]);
    let vars = repo().join("packer/example.pkrvars.hcl");
    validate(&["-var-file", vars.to_str().unwrap()]);

    // And it refuses what it should: no project.
    let out = Command::new("packer")
        .current_dir(repo())
        .arg("validate")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "project_id has no default and must be given"
    );
}

/// `outpost install` on a live root (`--root /`), as root inside the minimal image: no
/// user tools and no init system there, so the account files are edited directly (the
/// agents' user outpost-agent, 61184, taken out of the image first) and the service,
/// run as root, is left for the boot; a rerun changes nothing; uninstall --purge
/// removes it all.
#[test]
fn install_works_on_a_live_root_in_a_container() {
    minimal_image();
    let script = r#"set -e
        sed -i '/^outpost/d' /etc/passwd /etc/group
        touch /etc/alpine-release /etc/shadow
        mkdir -p /sbin && ln -s /bin/busybox /sbin/nologin
        /outpost install --binary /outpost --swap 1G --token t0k --no-start
        echo "== passwd"; grep '^outpost' /etc/passwd
        echo "== shadow"; grep '^outpost' /etc/shadow
        echo "== data"; stat -c '%a %u' /var/lib/outpost
        echo "== env"; stat -c '%a %u' /etc/outpost/env; grep -c t0k /etc/outpost/env || true
        echo "== token"; stat -c '%a %u' /etc/outpost/token; cat /etc/outpost/token; echo
        echo "== script"; head -1 /etc/init.d/outpost; grep -c '^command_user' /etc/init.d/outpost || true
        echo "== again"; /usr/local/bin/outpost install --swap 1G --no-start
        echo "== uninstall"; /usr/local/bin/outpost uninstall --purge
        echo "== left"; grep -c '^outpost' /etc/passwd || true
        ls /etc/init.d /usr/local/bin /var/lib
    "#;
    let out = run(podman().args([
        "run",
        "--rm",
        "--user",
        "0",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--entrypoint",
        "/bin/sh",
        MINIMAL,
        "-c",
        script,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}");
    let section = |name: &str| -> String {
        let start = text
            .find(&format!("== {name}\n"))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        let rest = &text[start + name.len() + 4..];
        rest.split("\n== ").next().unwrap().trim().to_string()
    };
    assert_eq!(
        section("passwd"),
        "outpost-agent:x:61184:61184:outpost agents:/var/lib/outpost/home:/sbin/nologin",
        "only the agents' user: the worker runs as root"
    );
    assert!(section("shadow").starts_with("outpost-agent:!:"));
    assert_eq!(section("data"), "711 0");
    assert_eq!(
        section("env"),
        "600 0\n0",
        "the token is not in the env file"
    );
    assert_eq!(section("token"), "600 0\nt0k");
    assert_eq!(
        section("script"),
        "#!/sbin/openrc-run\n0",
        "no command_user"
    );
    let again = section("again");
    assert!(again.contains("0 changed"), "{again}");
    assert!(
        again.contains("OpenRC tools not found"),
        "says what it could not do: {again}"
    );
    assert!(section("uninstall").contains("removed"));
    let left = section("left");
    assert!(left.starts_with('0'), "{left}");
    assert!(
        !left.lines().skip(1).any(|l| l.contains("outpost")),
        "uninstall left files: {left}"
    );
}
