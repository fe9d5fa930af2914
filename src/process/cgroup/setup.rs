//! Finding the worker's own cgroup and making the parent of its task cgroups (v2, or
//! the v1 hierarchies), and the CPU limit the worker itself runs under.

use std::fs;
use std::path::Path;

use super::{mkdir, write, Cgroups, Version, MEMORY, PIDS, V1_CONTROLLERS};

impl Cgroups {
    /// Sets up the parent of task cgroups on this machine (`/proc` and `/sys/fs/cgroup`),
    /// or says why cgroups cannot be used.
    pub fn setup(key: &str) -> Result<Cgroups, String> {
        Self::setup_at(Path::new("/proc/self"), Path::new("/sys/fs/cgroup"), key)
    }

    /// As [`Cgroups::setup`], with the process's `/proc/self` and the cgroup root given
    /// (tests use sample trees).
    pub fn setup_at(proc_self: &Path, root: &Path, key: &str) -> Result<Cgroups, String> {
        let table = fs::read_to_string(proc_self.join("cgroup"))
            .map_err(|e| format!("reading {}/cgroup: {e}", proc_self.display()))?;
        let unified = root.join("cgroup.controllers").exists();
        if unified {
            let own = table
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
            return setup_v2(&root.join(own.trim_start_matches('/')), key);
        }
        let mut parents = Vec::new();
        for ctl in V1_CONTROLLERS {
            let mount = root.join(ctl);
            let own = table.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
                ctls.split(',').any(|c| c == ctl).then_some(path)
            });
            match own {
                Some(path) if mount.is_dir() => {
                    let parent = mount
                        .join(path.trim_start_matches('/'))
                        .join(parent_name(key));
                    mkdir(&parent)?;
                    parents.push(Some(parent));
                }
                _ => parents.push(None),
            }
        }
        if parents[MEMORY].is_none() && parents[PIDS].is_none() {
            return Err("neither the memory nor the pids cgroup v1 hierarchy is mounted".into());
        }
        Ok(Cgroups::new(Version::V1, parents))
    }
}

/// The CPU limit of this process's cgroup in CPUs (v2 `cpu.max`, v1 CFS quota), None
/// when there is none.
pub fn own_cpu_limit() -> Option<f64> {
    cpu_limit_at(Path::new("/proc/self"), Path::new("/sys/fs/cgroup"))
}

fn cpu_limit_at(proc_self: &Path, root: &Path) -> Option<f64> {
    let table = fs::read_to_string(proc_self.join("cgroup")).ok()?;
    let ratio = |quota: &str, period: &str| -> Option<f64> {
        let (q, p) = (
            quota.trim().parse::<f64>().ok()?,
            period.trim().parse::<f64>().ok()?,
        );
        (q > 0.0 && p > 0.0).then_some(q / p)
    };
    if root.join("cgroup.controllers").exists() {
        let own = table.lines().find_map(|l| l.strip_prefix("0::"))?;
        let text =
            fs::read_to_string(root.join(own.trim_start_matches('/')).join("cpu.max")).ok()?;
        let (q, p) = text.trim().split_once(' ')?;
        return ratio(q, p);
    }
    let own = table.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctls.split(',').any(|c| c == "cpu").then_some(path)
    })?;
    let dir = root.join("cpu").join(own.trim_start_matches('/'));
    ratio(
        &fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?,
        &fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?,
    )
}

fn parent_name(key: &str) -> String {
    format!("outpost-{key}")
}

fn setup_v2(own: &Path, key: &str) -> Result<Cgroups, String> {
    let want = ["memory", "pids", "cpu"];
    let available = fs::read_to_string(own.join("cgroup.controllers"))
        .map_err(|e| format!("reading {}/cgroup.controllers: {e}", own.display()))?;
    let enable: Vec<&str> = want
        .iter()
        .copied()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    if !enable.contains(&"memory") || !enable.contains(&"pids") {
        return Err(format!(
            "the worker's cgroup {} does not offer the memory and pids controllers (has: {}); give the service a delegated subtree (systemd Delegate=yes)",
            own.display(),
            available.trim()
        ));
    }
    let line: String = enable.iter().map(|c| format!("+{c} ")).collect();
    // The parent must hold no processes of its own to pass controllers down.
    if let Err(first) = write(&own.join("cgroup.subtree_control"), line.trim()) {
        let leaf = own.join("outpost-supervisor");
        mkdir(&leaf)?;
        let procs = fs::read_to_string(own.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            // A process that exits meanwhile cannot be moved; that is fine.
            let _ = write(&leaf.join("cgroup.procs"), pid);
        }
        write(&own.join("cgroup.subtree_control"), line.trim()).map_err(|e| {
            format!(
                "enabling {line}in {}: {e} (before moving into {}: {first})",
                own.display(),
                leaf.display()
            )
        })?;
    }
    let parent = own.join(parent_name(key));
    mkdir(&parent)?;
    write(&parent.join("cgroup.subtree_control"), line.trim())
        .map_err(|e| format!("enabling {line}in {}: {e}", parent.display()))?;
    Ok(Cgroups::new(Version::V2, vec![Some(parent)]))
}
