//! schemathesis (PyPI, the version pinned by tests/setup/10-schemathesis.sh) against a
//! live worker with a token on loopback: every check it has, all four phases (examples,
//! coverage, fuzzing, stateful via the document's links), bounded example counts and
//! request timeouts, and it must find nothing: no 5xx, no response outside the schema,
//! no refused valid request, no accepted invalid one, auth honoured on every route.
//!
//! Skipped, loudly, only when schemathesis is not installed and `CI` is not `true`;
//! on CI its absence fails the test.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "schemathesis-token";

/// Hooks for the run: `rig_url` / `beads_url` strings are sent as null, since any URL
/// the document allows is refused here by the URL policy (no network in tests; the
/// worker below allows no host), which the document says but a generator cannot know;
/// URL refusals are tested in worker_http.rs and validate.rs. And a deserializer for
/// NDJSON replies, read as the array of their lines as the document says.
const HOOKS: &str = r#"
import json
import schemathesis

@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if isinstance(body, dict):
        for key in ("rig_url", "beads_url"):
            if isinstance(body.get(key), str):
                body[key] = None

@schemathesis.deserializer("application/x-ndjson")
def ndjson(ctx, response):
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]
"#;

/// schemathesis' configuration: its default list of refusals a negative case may get,
/// plus 413 (a body over the 1 MiB limit, which an over-long `prompt` is).
const CONFIG: &str = r#"
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"#;

/// Where schemathesis is: `OUTPOST_SCHEMATHESIS`, the venv tests/setup makes, or PATH.
fn find_schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTPOST_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let venv = std::env::var_os("OUTPOST_TEST_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/outpost-test/venv"))
        });
    if let Some(bin) = venv
        .map(|v| v.join("bin/schemathesis"))
        .filter(|b| b.exists())
    {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("schemathesis"))
        .find(|b| b.exists())
}

#[test]
fn schemathesis_finds_nothing() {
    let Some(bin) = find_schemathesis() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "schemathesis is not installed: tests/setup/10-schemathesis.sh installs it"
        );
        eprintln!(
            "\n\n!!!!!! SKIPPED: schemathesis is not installed. Run ./test (or bash \
             tests/setup/10-schemathesis.sh) to install it; on CI this fails. !!!!!!\n\n"
        );
        return;
    };
    let w = Worker::start(&[
        ("OUTPOST_TOKEN", TOKEN),
        // Prompts are generated text: the agent only prints them.
        ("OUTPOST_AGENT", "echo"),
        ("OUTPOST_MAX_TASKS", "8"),
        ("OUTPOST_KEEP_TASKS", "100000"),
        // No git host is allowed, so no URL is ever looked up or fetched.
        ("OUTPOST_ALLOWED_HOSTS", "127.0.0.1:9"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("outpost_hooks.py"), HOOKS).unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let doc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let examples = std::env::var("OUTPOST_SCHEMATHESIS_EXAMPLES").unwrap_or("60".into());
    let seed = std::env::var("OUTPOST_SCHEMATHESIS_SEED").unwrap_or("1".into());
    let mut child = Command::new(&bin)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&doc)
        .args(["--url", &w.url("")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &examples, "--seed", &seed])
        // Streams end after `done` (the agent is echo); a stuck one fails the request.
        .args(["--request-timeout", "30", "--workers", "1"])
        .args(["--generation-database", "none", "--no-color"])
        .current_dir(dir.path())
        .env("PYTHONPATH", dir.path())
        .env("SCHEMATHESIS_HOOKS", "outpost_hooks")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    // Read the output on threads so a full pipe cannot stall it; bounded in time.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stdout, stderr) = (out_t.join().unwrap(), err_t.join().unwrap());
    let report = format!(
        "{}\n{}\n--- worker log (tail) ---\n{}",
        tail(&stdout),
        tail(&stderr),
        tail(&w.log_text())
    );
    let status = status.unwrap_or_else(|| panic!("schemathesis ran over 10 minutes:\n{report}"));
    assert!(status.success(), "schemathesis found failures:\n{report}");
    // It really ran every phase, and the worker never panicked.
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(
            stdout.contains(&format!("✅ {phase}")),
            "phase {phase} did not pass:\n{report}"
        );
    }
    assert!(stdout.contains(" passed"), "{report}");
    assert!(!w.log_text().contains("panicked"), "{report}");
    eprintln!("{}", tail(&stdout));
}

/// The last lines of a text, each cut to 400 characters (a failing case can be megabytes).
fn tail(s: &str) -> String {
    let lines: Vec<String> = s
        .lines()
        .map(|l| match l.char_indices().nth(400) {
            Some((i, _)) => format!("{}...", &l[..i]),
            None => l.to_string(),
        })
        .collect();
    lines[lines.len().saturating_sub(300)..].join("\n")
}
