//! A real cgroup v1 memory group (run as root where v1 memory is mounted): a child
//! holding 90 % of a 300 MiB limit shows in the memory view (limit, usage, pressure
//! level, detection from the child's own /proc entries) and in its process group's
//! resident memory; a child going over the limit is OOM-killed and counted. Cgroups
//! and children are removed by Drop guards, whatever happens.

use outpost::memory::{group_rss, largest_group, Level, MemoryView, Policy, Source};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const MIB: u64 = 1 << 20;
const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// A memory cgroup with a limit; on drop its processes are killed and it is removed.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn new(limit: u64) -> TestCgroup {
        static N: AtomicUsize = AtomicUsize::new(0);
        assert!(
            Path::new(V1_MEMORY).join("memory.limit_in_bytes").exists(),
            "this test needs the cgroup v1 memory controller at {V1_MEMORY}"
        );
        let name = format!(
            "outpost-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = Path::new(V1_MEMORY).join(name);
        fs::create_dir(&dir).unwrap();
        let cgroup = TestCgroup { dir };
        cgroup.write("memory.limit_in_bytes", limit);
        // No escape into swap (another test may have swap on): memory+swap = memory.
        if cgroup.dir.join("memory.memsw.limit_in_bytes").exists() {
            cgroup.write("memory.memsw.limit_in_bytes", limit);
        }
        cgroup
    }
    fn write(&self, file: &str, value: impl ToString) {
        fs::write(self.dir.join(file), value.to_string())
            .unwrap_or_else(|e| panic!("writing {file}: {e}"));
    }
    fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..200 {
            let procs = self.procs();
            if procs.is_empty() && fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            for pid in procs {
                // SAFETY: kill sends a signal; these are processes this test moved here.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// A child in its own process group; killed (the whole group) and reaped on drop.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// Python: touch every page of `argv[1]` MiB, say "ready", hold it until stdin closes.
const HOLD: &str = "import sys
n = int(sys.argv[1]) << 20
b = bytearray(n)
for i in range(0, n, 4096):
    b[i] = 1
print('ready', flush=True)
sys.stdin.read()
";

impl Holder {
    /// Starts `sh`, moves it into `cgroup`, then lets it exec python holding `mib`
    /// MiB, so everything python uses is charged to the cgroup.
    fn start(cgroup: &TestCgroup, mib: u64) -> Holder {
        let mut child = Command::new("sh")
            .args(["-c", "read go && exec python3 -c \"$1\" \"$2\"", "sh", HOLD])
            .arg(mib.to_string())
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh and python3 are installed");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut holder = Holder {
            child,
            stdin,
            stdout,
        };
        cgroup.write("cgroup.procs", holder.pid());
        let input = holder.stdin.as_mut().unwrap();
        input.write_all(b"go\n").unwrap();
        input.flush().unwrap();
        holder
    }
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// The line python prints once it holds the memory; empty if it died first.
    fn wait_ready(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stdin = None;
        // SAFETY: signals the process group this test created.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[test]
fn ninety_percent_of_a_300_mib_limit_is_pressure() {
    let limit = 300 * MIB;
    let cgroup = TestCgroup::new(limit);
    let mut holder = Holder::start(&cgroup, 270);
    assert_eq!(holder.wait_ready().trim(), "ready", "python holds 270 MiB");

    let view = MemoryView::for_cgroup_v1(&cgroup.dir);
    let snap = view.snapshot().unwrap();
    eprintln!("{snap:?}");
    assert_eq!(snap.source, Source::Cgroup1);
    assert_eq!(snap.limit, Some(limit));
    assert_eq!(snap.total, limit);
    let usage = snap.usage.unwrap();
    assert!(
        (270 * MIB..=limit).contains(&usage),
        "usage {usage} should be the 270 MiB held plus python itself"
    );
    assert!(snap.available < limit / 10, "available {}", snap.available);
    let policy = Policy::for_snapshot(&snap, None);
    assert_eq!(
        policy.level(&snap),
        Level::Pressure,
        "{snap:?} under {policy:?}"
    );
    // An override that asks for less headroom calls the same state fine.
    assert_eq!(
        Policy::for_snapshot(&snap, Some(MIB)).level(&snap),
        Level::Ok
    );

    // The process group's resident memory is the held memory.
    let pgid = holder.pid();
    let rss = group_rss(pgid);
    assert!((270 * MIB..=limit).contains(&rss), "group rss {rss}");
    let own_pgid = nix::unistd::getpgrp().as_raw();
    assert_eq!(largest_group(&[own_pgid, pgid]).map(|(g, _)| g), Some(pgid));

    // Detection from the child's own /proc entries finds the same cgroup.
    let fake_proc = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(format!("/proc/{pgid}"), fake_proc.path().join("self")).unwrap();
    std::os::unix::fs::symlink("/proc/meminfo", fake_proc.path().join("meminfo")).unwrap();
    let detected = MemoryView::with_roots(fake_proc.path(), "/sys/fs/cgroup");
    assert_eq!(detected.cgroup_dir(), Some(cgroup.dir.as_path()));
    let again = detected.snapshot().unwrap();
    assert_eq!(again.source, Source::Cgroup1);
    assert_eq!(again.limit, Some(limit));
}

#[test]
fn going_over_the_limit_is_an_oom_kill_the_view_counts() {
    let cgroup = TestCgroup::new(100 * MIB);
    let view = MemoryView::for_cgroup_v1(&cgroup.dir);
    assert_eq!(view.oom_kills(), Some(0));
    let mut holder = Holder::start(&cgroup, 200);
    assert_eq!(
        holder.wait_ready(),
        "",
        "python cannot hold 200 MiB in 100 MiB"
    );
    let status = holder.child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(view.oom_kills(), Some(1));
}
