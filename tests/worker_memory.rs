//! Memory and housekeeping through the real worker: inside a real cgroup v1 memory group
//! of 300 MiB an agent holding 90 % turns `/hello` to `pressure` and new work gets 503
//! until it clears; an agent asking for 1.5 GiB is killed, its task says memory, and
//! the worker lives on and takes the next task. Agents get a high OOM score; the swap
//! file is made at start (OUTPOST_SWAP) and shows in /hello; idle shutdown runs its
//! command. Cgroups, swap and processes are removed by Drop guards.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(tag: &str, limit: u64) -> Cgroup {
        assert!(
            Path::new(V1_MEMORY).join("memory.limit_in_bytes").exists(),
            "needs the cgroup v1 memory controller"
        );
        let dir = Path::new(V1_MEMORY).join(format!("outpost-wtest-{tag}-{}", std::process::id()));
        let _ = fs::create_dir(&dir);
        fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        if dir.join("memory.memsw.limit_in_bytes").exists() {
            fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string()).unwrap();
        }
        Cgroup { dir }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..200 {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() && remove_cgroup_tree(&self.dir) {
                return;
            }
            for p in procs_below(&self.dir) {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// The worker started inside the cgroup (the shell moves itself in, then execs).
struct CgWorker {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for CgWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let status = self.child.wait();
        // A failed test shows what the worker said (it may have died under it).
        if std::thread::panicking() {
            eprintln!(
                "worker exit: {status:?}; its log:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = fs::remove_file(&self.log);
    }
}

fn start_in(cg: &Cgroup, env: &[(&str, &str)]) -> CgWorker {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = data.path().with_extension("log");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" serve",
            cg.dir.display()
        ))
        .arg(env!("CARGO_BIN_EXE_outpost"))
        .env("PORT", port.to_string())
        .env("OUTPOST_DATA", data.path())
        .env("OUTPOST_MAX_TASKS", "3")
        .env("OUTPOST_GRACE_S", "1")
        .env_remove("OUTPOST_TOKEN")
        .env_remove("K_SERVICE")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let w = CgWorker {
        child: cmd.spawn().unwrap(),
        port,
        _data: data,
        log,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return w;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("worker did not start in the cgroup");
}

async fn hello(c: &reqwest::Client, port: u16) -> Value {
    get_json(c, format!("http://127.0.0.1:{port}/hello")).await
}

async fn wait_hello(c: &reqwest::Client, port: u16, status: &str) -> Value {
    for _ in 0..300 {
        let v = hello(c, port).await;
        if v["status"] == status {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/hello never said {status}: {}", hello(c, port).await);
}

#[test]
fn pressure_refuses_work_and_an_oversized_agent_dies_before_the_worker() {
    let cg = Cgroup::new("mem", 300 << 20);
    // No task limit below the worker's own: this test is about the worker's policy.
    let w = start_in(&cg, &[("OUTPOST_TASK_MEMORY", "1G")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = h1();
        let base = format!("http://127.0.0.1:{}", w.port);
        let v = wait_hello(&c, w.port, "available").await;
        for _ in 0..40 {
            if hello(&c, w.port).await["memory"]["limit"].is_u64() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let v2 = hello(&c, w.port).await;
        assert_eq!(v2["memory"]["limit"], 300u64 << 20, "{v} {v2}");
        assert_eq!(v2["memory"]["source"], "cgroup1");
        // An agent holding 90 % of the limit.
        let hold = "python3 -c \"import time; b = b'\\x01' * (270 << 20); print('holding', flush=True); time.sleep(20)\"";
        let r = c.post(format!("{base}/work")).header("accept", "application/json").json(&json!({ "prompt": hold })).send().await.unwrap();
        let holder: Value = r.json().await.unwrap();
        let holder_id = holder["id"].as_str().unwrap().to_string();
        let v = wait_hello(&c, w.port, "pressure").await;
        assert!(v["memory"]["available"].as_u64().unwrap() < 30 << 20, "{v}");
        let r = c.post(format!("{base}/work")).json(&json!({"prompt": "true"})).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().get("retry-after").is_some());
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "memory_pressure");
        let r = c.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        // The agent has a high OOM score; the worker does not.
        // The agent lives in its task's cgroup, below the worker's.
        let agent_pid = procs_below(&cg.dir).into_iter().filter(|p| *p != w.child.id() as i32).collect::<Vec<_>>();
        let scores: Vec<i32> = agent_pid.iter().filter_map(|p| fs::read_to_string(format!("/proc/{p}/oom_score_adj")).ok()).filter_map(|s| s.trim().parse().ok()).collect();
        assert!(scores.contains(&500), "agent oom_score_adj: {scores:?}");
        // Pressure clears by itself once the agent is gone.
        c.delete(format!("{base}/work/{holder_id}")).send().await.unwrap();
        wait_hello(&c, w.port, "available").await;

        // An agent asking for 1.5 GiB dies; its task says memory; the worker lives.
        let hog = "python3 -c \"b = b'\\x01' * (1536 << 20); print(len(b))\"";
        let r = c.post(format!("{base}/work")).json(&json!({ "prompt": hog })).send().await.unwrap();
        let evs = Sse::new(r).collect(T).await;
        let done = &evs.last().unwrap().data;
        assert_eq!(done["status"], "failed", "{done}");
        assert!(done["error"].as_str().unwrap().contains("memory"), "{done}");
        wait_hello(&c, w.port, "available").await;

        // An agent that grows slowly is stopped by outpost itself once memory is
        // critical, before the kernel has to pick.
        let grow = "python3 -c \"import time\nb = [b'\\x01' * (250 << 20)]\nfor i in range(400):\n    b.append(b'\\x01' * (1 << 20)); time.sleep(0.05)\n\"";
        let r = c.post(format!("{base}/work")).json(&json!({ "prompt": grow })).send().await.unwrap();
        let evs = Sse::new(r).collect(T).await;
        let done = &evs.last().unwrap().data;
        assert_eq!(done["status"], "failed", "{done}");
        assert!(done["error"].as_str().unwrap().contains("stopped by outpost: memory"), "{done}");
        wait_hello(&c, w.port, "available").await;
        let r = c.post(format!("{base}/work")).json(&json!({"prompt": "echo still here"})).send().await.unwrap();
        let evs = Sse::new(r).collect(T).await;
        assert_eq!(evs.last().unwrap().data["status"], "done");
        assert_eq!(output_of(&evs), b"still here\r\n");
    });
    drop(w);
}

struct SwapOff(PathBuf);

impl Drop for SwapOff {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.0).status();
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn swap_is_ensured_at_start_reused_on_restart_and_reported() {
    // A data dir on a real disk filesystem (tmpfs refuses swap files).
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("swap-worker-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    let swapfile = base.join("swapfile");
    let _guard = SwapOff(swapfile.clone());
    let port = free_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for round in 0..2 {
        let w = Worker::start_on(&base, port, &[("OUTPOST_SWAP", "64M")]);
        let swaps = fs::read_to_string("/proc/swaps").unwrap();
        assert!(
            swaps.contains(swapfile.to_str().unwrap()),
            "round {round}: {swaps}"
        );
        let meta = fs::metadata(&swapfile).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(meta.blocks() * 512 >= 64 << 20, "the swap file has holes");
        let log = w.log_text();
        let want = if round == 0 { "Created" } else { "Reused" };
        assert!(
            log.contains("swap") && log.to_lowercase().contains(&want.to_lowercase()),
            "round {round}: {log}"
        );
        rt.block_on(async {
            let c = h1();
            for _ in 0..40 {
                let v: Value = get_json(&c, w.url("/hello")).await;
                if v["memory"]["swap_total"].as_u64().unwrap_or(0) >= 60 << 20 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("/hello does not report the swap");
        });
    }
}

#[test]
fn idle_shutdown_runs_its_command_after_the_idle_time() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("powered-off");
    let cmd = format!("touch {}", marker.display());
    let w = Worker::start(&[
        ("OUTPOST_IDLE_SHUTDOWN", "2s"),
        ("OUTPOST_IDLE_SHUTDOWN_CMD", cmd.as_str()),
    ]);
    for _ in 0..200 {
        if marker.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        marker.exists(),
        "the idle command did not run; log:\n{}",
        w.log_text()
    );
    assert!(w.log_text().contains("idle"));
}

/// Every pid in the cgroup `dir` and the cgroups below it.
fn procs_below(dir: &std::path::Path) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Removes a cgroup and the (empty) cgroups the worker made below it, deepest first.
fn remove_cgroup_tree(dir: &std::path::Path) -> bool {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            remove_cgroup_tree(&e.path());
        }
    }
    fs::remove_dir(dir).is_ok()
}
