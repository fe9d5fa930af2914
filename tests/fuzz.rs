//! Runs each coverage-guided fuzz target (`fuzz/`, cargo fuzz + libFuzzer) for a bounded
//! time from its seed corpus (`fuzz/corpus/<target>/`, read only: new inputs go to a
//! temporary directory), and fails on any crash, printing the input. A crash found is
//! kept as a plain regression test beside the code it broke, and its input in the seed
//! corpus.
//!
//! Needs cargo-fuzz (`tests/setup/40-fuzz.sh` installs it). The toolchain is stable:
//! `RUSTC_BOOTSTRAP=1` lets cargo-fuzz pass its `-Z` flags. `FUZZ_SECONDS` sets the time
//! of each target (default 25).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// `cargo fuzz <args>` in `fuzz/`: stable toolchain with bootstrap, no sanitizer (the
/// targets are safe Rust; panics and overflow checks are what they find), debug
/// assertions on.
fn cargo_fuzz(args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("fuzz")
        .args(args)
        .current_dir(fuzz_dir())
        .env("RUSTC_BOOTSTRAP", "1")
        // The fuzz crate has its own target dir (other flags than the main build).
        .env_remove("CARGO_TARGET_DIR");
    cmd.output()
        .unwrap_or_else(|e| panic!("running cargo fuzz: {e}"))
}

const BUILD_FLAGS: [&str; 3] = ["-s", "none", "--debug-assertions"];

/// Builds every target once per test run.
fn build() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let v = cargo_fuzz(&["--version"]);
        if !v.status.success() {
            return Err(
                "cargo-fuzz is not installed: run `bash tests/setup/40-fuzz.sh` (or ./test)".into(),
            );
        }
        let started = std::time::Instant::now();
        let mut args = vec!["build"];
        args.extend(BUILD_FLAGS);
        let out = cargo_fuzz(&args);
        eprintln!("cargo fuzz build: {:.0} s", started.elapsed().as_secs_f64());
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "cargo fuzz build failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one target for `FUZZ_SECONDS`; on a crash, fails with its input (and keeps the
/// input in `fuzz/artifacts/<target>/`).
fn fuzz(target: &str) {
    build();
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let tmp = tempfile::tempdir().unwrap();
    let found = tmp.path().join("corpus");
    std::fs::create_dir(&found).unwrap();
    let seeds = fuzz_dir().join("corpus").join(target);
    assert!(seeds.is_dir(), "no seed corpus {}", seeds.display());
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(BUILD_FLAGS.iter().map(|s| s.to_string()));
    args.extend([
        target.to_string(),
        found.display().to_string(),
        seeds.display().to_string(),
        "--".into(),
        format!("-max_total_time={seconds}"),
        // A fixed seed: the suite explores the same inputs on every run (FUZZ_SEED=0
        // lets libFuzzer pick one, for fuzzing by hand).
        format!(
            "-seed={}",
            std::env::var("FUZZ_SEED").unwrap_or_else(|_| "1".to_string())
        ),
        format!("-artifact_prefix={}/", tmp.path().display()),
        "-timeout=10".into(),
        "-rss_limit_mb=2048".into(),
        "-print_final_stats=1".into(),
    ]);
    let dict = fuzz_dir().join("dicts").join(format!("{target}.dict"));
    if dict.exists() {
        args.push(format!("-dict={}", dict.display()));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cargo_fuzz(&argv);
    let log = String::from_utf8_lossy(&out.stderr);
    let runs = log
        .lines()
        .find(|l| l.starts_with("stat::number_of_executed_units"))
        .unwrap_or("stat::number_of_executed_units: ?");
    eprintln!("{target}: {seconds} s, {runs}");
    if out.status.success() {
        assert!(
            log.contains("Done "),
            "{target}: the fuzzer did not finish its run:\n{log}"
        );
        return;
    }
    let kept = fuzz_dir().join("artifacts").join(target);
    let mut inputs = String::new();
    for e in std::fs::read_dir(tmp.path()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if ["crash-", "oom-", "timeout-", "leak-"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            let bytes = std::fs::read(e.path()).unwrap();
            std::fs::create_dir_all(&kept).unwrap();
            std::fs::copy(e.path(), kept.join(&name)).unwrap();
            inputs.push_str(&format!(
                "\n{name}: {:?}\n  hex {}",
                String::from_utf8_lossy(&bytes),
                hex(&bytes)
            ));
        }
    }
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    panic!(
        "{target}: the fuzzer found a failing input (kept in {}); fix it, add a \
         regression test over it, and put it in fuzz/corpus/{target}/:{inputs}\n\n{}",
        kept.display(),
        tail.join("\n")
    );
}

#[test]
fn fuzz_work_body() {
    fuzz("work_body");
}

#[test]
fn fuzz_git_names() {
    fuzz("git_names");
}

#[test]
fn fuzz_eventlog_reopen() {
    fuzz("eventlog_reopen");
}

#[test]
fn fuzz_utf8_split() {
    fuzz("utf8_split");
}

#[test]
fn fuzz_size() {
    fuzz("size");
}
