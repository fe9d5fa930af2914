//! The VM's swap file under `outpost install`: made and turned on by the init system
//! just before each start of the service — `outpost swap ensure SIZE --path
//! /var/lib/outpost.swap` (the memory module's code, as `outpost serve` would run it)
//! in OpenRC's `start_pre` or systemd's `ExecStartPre=`.
//!
//! Why not `OUTPOST_SWAP` in the worker itself: one place owns the swap file, the
//! service definition, so `--swap` (and a rerun that keeps it) is the only setting and
//! the env file says `OUTPOST_SWAP=0`; the swap is on before the worker sizes its
//! memory plan. Why not in the data dir: agents own parts of it (worktrees, HOMEs), and
//! root must never swap onto a file anyone else could swap out for another. Why not at
//! install time: an image built with `--root` or `--no-start` then carries no gigabyte
//! of zeros; the first boot makes it.

use std::path::Path;

use anyhow::{bail, Result};

use super::fsops::{self, Change};

/// Where the swap file lives, as seen from inside the target root.
pub const SWAP_FILE: &str = "/var/lib/outpost.swap";
/// The smallest swap file accepted (the memory module's floor is 10 pages).
pub const MIN_SIZE: u64 = 1 << 20;

/// The swap a service definition sets up before each start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapPlan {
    /// Bytes; 0 for none.
    pub size: u64,
    pub swappiness: Option<u32>,
}

impl SwapPlan {
    /// Checks the size and swappiness given to install.
    pub fn new(size: u64, swappiness: Option<u32>) -> Result<SwapPlan> {
        if size != 0 && size < MIN_SIZE {
            bail!("invalid --swap: {size} bytes is too small; use 0 for none or at least 1M");
        }
        if let Some(s) = swappiness.filter(|s| *s > 200) {
            bail!("invalid OUTPOST_SWAPPINESS={s}: use 0 to 200 (the kernel default is 60)");
        }
        Ok(SwapPlan { size, swappiness })
    }

    /// The arguments of `outpost` that ensure the swap file, or None for no swap.
    pub fn ensure_args(&self) -> Option<String> {
        if self.size == 0 {
            return None;
        }
        let mut s = format!("swap ensure {} --path {SWAP_FILE}", human(self.size));
        if let Some(v) = self.swappiness {
            s.push_str(&format!(" --swappiness {v}"));
        }
        Some(s)
    }
}

/// A size as `outpost swap ensure` reads it, exactly: 1G, 512M, or bytes.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b => b.to_string(),
    }
}

/// Takes the swap file away: turned off first on the live root.
pub fn remove(root: &Path, live: bool) -> Result<Change> {
    let path = root.join(SWAP_FILE.trim_start_matches('/'));
    if !live || fs_absent(&path) {
        return fsops::remove_file(&path);
    }
    crate::memory::swap::remove(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Change::Removed)
}

fn fs_absent(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_renders_the_command() {
        let p = SwapPlan::new(1 << 30, None).unwrap();
        assert_eq!(
            p.ensure_args().unwrap(),
            "swap ensure 1G --path /var/lib/outpost.swap"
        );
        let p = SwapPlan::new(512 << 20, Some(10)).unwrap();
        assert!(p.ensure_args().unwrap().ends_with("--swappiness 10"));
        assert_eq!(SwapPlan::new(0, None).unwrap().ensure_args(), None);
        assert!(SwapPlan::new(4096, None).is_err());
        assert!(SwapPlan::new(1 << 30, Some(300)).is_err());
    }
}
