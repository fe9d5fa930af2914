//! The `bench` binary end to end, on real sockets: its bare hyper server (HTTP/1.1 and
//! h2c) measured through `bench hello` with the table and `--json` output (every shape,
//! the worst one first), and its refusals (unknown scenario, missing worker binary).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

/// `bench __bare-server`, killed on drop.
struct Bare {
    child: Child,
    port: u16,
}

impl Bare {
    fn start(body: &str) -> Bare {
        let mut child = Command::new(BENCH)
            .args(["__bare-server", body])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap();
        Bare { child, port }
    }
}

/// Runs bench with `args` (and, when given, `--url` of a bare server); it must succeed.
fn bench_ok(args: &[&str], bare: Option<&Bare>) -> std::process::Output {
    let url = bare.map(|b| format!("http://127.0.0.1:{}", b.port));
    let mut cmd = Command::new(BENCH);
    cmd.args(args);
    if let Some(url) = &url {
        cmd.args(["--url", url]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hello_against_a_bare_server_gives_rows_for_both_protocols_in_json() {
    let bare = Bare::start(r#"{"status":"available","maxTasks":4}"#);
    let out = bench_ok(
        &[
            "hello,memory",
            "--json",
            "--duration",
            "0.2",
            "--connections",
            "2",
        ],
        Some(&bare),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    for proto in ["h1", "h2c"] {
        let row = rows
            .iter()
            .find(|r| {
                r["metric"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{proto} req/s"))
            })
            .unwrap_or_else(|| panic!("no {proto} row in {v}"));
        assert!(row["outpost"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["baseline"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["ratio"].as_f64().is_some(), "{row}");
        assert_eq!(row["goal"], ">= 0.95x");
    }
    // The many-streams shape is always there, with its own goal.
    let wide = rows
        .iter()
        .find(|r| r["metric"] == "h2c req/s (50 conns x 10 streams)")
        .unwrap_or_else(|| panic!("no 50 x 10 row in {v}"));
    assert_eq!(wide["goal"], ">= 0.9x");
    // The headline comes first: the shape with the lowest ratio.
    let ratios: Vec<f64> = rows
        .iter()
        .filter(|r| r["metric"].as_str().unwrap().contains(" req/s ("))
        .filter(|r| !r["metric"].as_str().unwrap().starts_with("worst"))
        .map(|r| r["ratio"].as_f64().unwrap())
        .collect();
    assert_eq!(ratios.len(), 3, "{v}");
    let head = &rows[0];
    assert!(
        head["metric"]
            .as_str()
            .unwrap()
            .starts_with("worst shape: "),
        "{head}"
    );
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(head["ratio"].as_f64().unwrap(), lowest, "{v}");
    // The memory rows find the server's pid from its listening port.
    let idle = rows
        .iter()
        .find(|r| r["metric"] == "idle RSS just started")
        .unwrap();
    assert!(idle["outpost"].as_f64().unwrap() > 0.0, "{idle}");
    assert!(v["machine"]["nproc"].as_u64().unwrap() >= 1);
}

#[test]
fn the_table_has_its_header_and_the_progress_goes_to_stderr() {
    let bare = Bare::start(r#"{"status":"available"}"#);
    let out = bench_ok(
        &[
            "hello",
            "--duration",
            "0.2",
            "--connections",
            "1",
            "--streams",
            "2",
        ],
        Some(&bare),
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| scenario | metric"), "{table}");
    assert!(table.contains("h2c req/s (1 conns x 2 streams)"), "{table}");
    let progress = String::from_utf8(out.stderr).unwrap();
    assert!(progress.contains("[1/1] hello"), "{progress}");
}

#[test]
fn refusals_say_what_to_do() {
    let out = Command::new(BENCH).arg("nope").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario"));

    let out = Command::new(BENCH)
        .args(["hello", "--spawn", "--outpost-bin", "/nonexistent/outpost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build --release -p outpost"), "{err}");

    // Nothing listens on port 1.
    let out = Command::new(BENCH)
        .args(["hello", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spawn"));
}

#[test]
fn the_pty_spawn_helper_runs_each_command_and_sums_up() {
    let out = bench_ok(&["__pty-spawn", "2", "6", "20000", "true"], None);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // One `+` per run, then the summary.
    assert_eq!(lines.iter().filter(|l| **l == "+").count(), 6, "{text}");
    let summary: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(summary["done"], 6);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["lat_ns"].as_array().unwrap().len(), 6);
    // A failing command is counted as failed, not done.
    let out = bench_ok(&["__pty-spawn", "1", "2", "20000", "exit 1"], None);
    let text = String::from_utf8(out.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        (summary["done"].as_u64(), summary["failed"].as_u64()),
        (Some(0), Some(2))
    );
}
