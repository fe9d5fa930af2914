//! Unit tests of the memory view on sample /proc and /sys/fs/cgroup trees (cgroup v2,
//! v1, hybrid, container mount roots, no cgroup).

use super::*;
use std::fs;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A fake machine: `<tmp>/proc` and `<tmp>/sys` (standing for /sys/fs/cgroup).
struct Fake {
    tmp: TempDir,
}

impl Fake {
    fn new() -> Fake {
        let fake = Fake {
            tmp: tempfile::tempdir().unwrap(),
        };
        fake.write(
            "proc/meminfo",
            "MemTotal:        8388608 kB\nMemFree:         1000 kB\n\
             MemAvailable:    6291456 kB\nSwapTotal:       1048576 kB\n\
             SwapFree:         524288 kB\n",
        );
        fake
    }
    fn write(&self, rel: &str, text: &str) {
        let path = self.tmp.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    fn remove(&self, rel: &str) {
        fs::remove_file(self.tmp.path().join(rel)).unwrap();
    }
    fn view(&self) -> MemoryView {
        MemoryView::with_roots(self.tmp.path().join("proc"), self.tmp.path().join("sys"))
    }
    fn sys(&self, rel: &str) -> PathBuf {
        self.tmp.path().join("sys").join(rel)
    }
}

const V2_MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

fn v2_machine() -> Fake {
    let f = Fake::new();
    f.write("proc/self/cgroup", "0::/user.slice/app.service\n");
    f.write("proc/self/mountinfo", V2_MOUNTINFO);
    f.write(
        "sys/cgroup.controllers",
        "cpuset cpu io memory hugetlb pids\n",
    );
    f.write("sys/cgroup.procs", "1\n");
    f.write("sys/user.slice/memory.max", &format!("{}\n", GIB));
    f.write(
        "sys/user.slice/app.service/memory.max",
        &format!("{}\n", 2 * GIB),
    );
    f.write(
        "sys/user.slice/app.service/memory.current",
        &format!("{}\n", 600 * MIB),
    );
    f.write(
        "sys/user.slice/app.service/memory.stat",
        &format!(
            "anon {}\nfile {}\nactive_file {}\ninactive_file {}\n",
            400 * MIB,
            200 * MIB,
            100 * MIB,
            100 * MIB
        ),
    );
    f.write(
        "sys/user.slice/app.service/memory.pressure",
        "some avg10=12.50 avg60=3.00 avg300=1.00 total=12345\n\
         full avg10=2.00 avg60=0.00 avg300=0.00 total=100\n",
    );
    f.write(
        "sys/user.slice/app.service/memory.events",
        "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
    );
    f
}

#[test]
fn v2_reads_lowest_ancestor_limit_usage_cache_and_psi() {
    let f = v2_machine();
    let view = f.view();
    assert_eq!(
        view.cgroup_dir(),
        Some(f.sys("user.slice/app.service").as_path())
    );
    let s = view.snapshot().unwrap();
    assert_eq!(s.source, Source::Cgroup2);
    assert_eq!(s.limit, Some(GIB));
    assert_eq!(s.usage, Some(600 * MIB));
    assert_eq!(s.total, GIB);
    // 1 GiB - (600 MiB - 100 MiB inactive file cache)
    assert_eq!(s.available, 524 * MIB);
    assert_eq!(s.psi_some_avg10, Some(12.5));
    assert_eq!(s.swap_total, GIB);
    assert_eq!(s.swap_free, 512 * MIB);
    assert_eq!(view.oom_kills(), Some(2));
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["source"], "cgroup2");
    assert_eq!(json["limit"], GIB);
}

#[test]
fn v2_without_any_limit_uses_meminfo_for_total_and_available() {
    let f = v2_machine();
    f.write("sys/user.slice/memory.max", "max\n");
    f.write("sys/user.slice/app.service/memory.max", "max\n");
    let s = f.view().snapshot().unwrap();
    assert_eq!(s.source, Source::Cgroup2);
    assert_eq!(s.limit, None);
    assert_eq!(s.usage, Some(600 * MIB));
    assert_eq!(s.total, 8 * GIB);
    assert_eq!(s.available, 6 * GIB);
}

#[test]
fn available_is_the_smaller_of_cgroup_and_machine() {
    let f = v2_machine();
    f.write(
        "proc/meminfo",
        "MemTotal: 8388608 kB\nMemAvailable: 102400 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
    );
    let s = f.view().snapshot().unwrap();
    assert_eq!(s.limit, Some(GIB));
    assert_eq!(s.available, 100 * MIB);
}

#[test]
fn v2_psi_falls_back_to_proc_pressure_then_none() {
    let f = v2_machine();
    f.remove("sys/user.slice/app.service/memory.pressure");
    f.write(
        "proc/pressure/memory",
        "some avg10=0.75 avg60=0.00 avg300=0.00 total=9\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    );
    assert_eq!(f.view().snapshot().unwrap().psi_some_avg10, Some(0.75));
    f.remove("proc/pressure/memory");
    assert_eq!(f.view().snapshot().unwrap().psi_some_avg10, None);
}

#[test]
fn v2_in_a_namespace_whose_cgroup_is_the_mount_root() {
    let f = Fake::new();
    f.write("proc/self/cgroup", "0::/\n");
    f.write(
        "proc/self/mountinfo",
        "600 500 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n",
    );
    f.write("sys/cgroup.controllers", "cpu memory pids\n");
    f.write("sys/memory.max", &format!("{}\n", 512 * MIB));
    f.write("sys/memory.current", &format!("{}\n", 100 * MIB));
    f.write("sys/memory.stat", "inactive_file 0\n");
    let s = f.view().snapshot().unwrap();
    assert_eq!(s.source, Source::Cgroup2);
    assert_eq!(s.limit, Some(512 * MIB));
    assert_eq!(s.available, 412 * MIB);
}

const HYBRID_CGROUP: &str = "\
9:name=systemd:/
4:memory:/process_api/7a01
3:cpuset:/
1:cpu:/
0::/
";
const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

fn v1_machine() -> Fake {
    let f = Fake::new();
    f.write("proc/self/cgroup", HYBRID_CGROUP);
    f.write("proc/self/mountinfo", HYBRID_MOUNTINFO);
    f.write("sys/unified/cgroup.controllers", "hugetlb\n");
    f.write(
        "sys/unified/memory.pressure",
        "some avg10=99.00 avg60=0 avg300=0 total=0\n",
    );
    let dir = "sys/memory/process_api/7a01";
    f.write(
        &format!("{dir}/memory.limit_in_bytes"),
        &format!("{}\n", 300 * MIB),
    );
    f.write(
        &format!("{dir}/memory.usage_in_bytes"),
        &format!("{}\n", 280 * MIB),
    );
    f.write(
        &format!("{dir}/memory.stat"),
        &format!(
            "cache 1000\nrss 2000\ninactive_file 1\nhierarchical_memory_limit 9223372036854771712\n\
             total_cache 1000\ntotal_inactive_file {}\n",
            10 * MIB
        ),
    );
    f.write(
        &format!("{dir}/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    );
    f.write(
        "proc/pressure/memory",
        "some avg10=3.00 avg60=0.00 avg300=0.00 total=1\n",
    );
    f
}

#[test]
fn v1_memory_controller_wins_over_a_hybrid_unified_mount() {
    let f = v1_machine();
    let view = f.view();
    assert_eq!(
        view.cgroup_dir(),
        Some(f.sys("memory/process_api/7a01").as_path())
    );
    let s = view.snapshot().unwrap();
    assert_eq!(s.source, Source::Cgroup1);
    assert_eq!(s.limit, Some(300 * MIB));
    assert_eq!(s.usage, Some(280 * MIB));
    assert_eq!(s.total, 300 * MIB);
    // 300 MiB - (280 MiB - 10 MiB total_inactive_file)
    assert_eq!(s.available, 30 * MIB);
    // The cgroup has no memory.pressure: the machine's PSI.
    assert_eq!(s.psi_some_avg10, Some(3.0));
    assert_eq!(view.oom_kills(), Some(3));
}

#[test]
fn v1_page_counter_max_means_no_limit() {
    let f = v1_machine();
    f.write(
        "sys/memory/process_api/7a01/memory.limit_in_bytes",
        "9223372036854771712\n",
    );
    let s = f.view().snapshot().unwrap();
    assert_eq!(s.source, Source::Cgroup1);
    assert_eq!(s.limit, None);
    assert_eq!(s.total, 8 * GIB);
    assert_eq!(s.available, 6 * GIB);
}

#[test]
fn v1_hierarchical_limit_of_a_parent_applies() {
    let f = v1_machine();
    f.write(
        "sys/memory/process_api/7a01/memory.limit_in_bytes",
        "9223372036854771712\n",
    );
    f.write(
        "sys/memory/process_api/7a01/memory.stat",
        &format!(
            "hierarchical_memory_limit {}\ntotal_inactive_file 0\n",
            400 * MIB
        ),
    );
    let s = f.view().snapshot().unwrap();
    assert_eq!(s.limit, Some(400 * MIB));
    assert_eq!(s.available, 120 * MIB);
}

#[test]
fn v1_container_whose_mount_root_is_its_cgroup() {
    let f = Fake::new();
    f.write("proc/self/cgroup", "5:memory:/docker/abc\n");
    f.write(
        "proc/self/mountinfo",
        "40 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n",
    );
    f.write("sys/memory/memory.limit_in_bytes", &format!("{}\n", GIB));
    f.write(
        "sys/memory/memory.usage_in_bytes",
        &format!("{}\n", 24 * MIB),
    );
    let view = f.view();
    assert_eq!(view.cgroup_dir(), Some(f.sys("memory").as_path()));
    let s = view.snapshot().unwrap();
    assert_eq!(s.source, Source::Cgroup1);
    assert_eq!(s.available, 1000 * MIB);
}

#[test]
fn mount_points_with_escaped_spaces_are_unescaped() {
    let mounts =
        parse_mountinfo("40 31 0:32 / /mnt/my\\040cgroups rw - cgroup cgroup rw,memory,nosuid\n");
    assert_eq!(mounts[0].mount_point, "/mnt/my cgroups");
    assert_eq!(mounts[0].super_options, "rw,memory,nosuid");
    assert_eq!(unescape_octal("a\\134b\\0"), "a\\b\\0");
}

#[test]
fn no_cgroup_reads_meminfo_only() {
    let f = Fake::new();
    let view = f.view();
    assert_eq!(view.cgroup_dir(), None);
    let s = view.snapshot().unwrap();
    assert_eq!(
        s,
        Snapshot {
            total: 8 * GIB,
            available: 6 * GIB,
            limit: None,
            usage: None,
            swap_total: GIB,
            swap_free: 512 * MIB,
            psi_some_avg10: None,
            source: Source::Meminfo,
        }
    );
}

#[test]
fn hybrid_without_memory_controller_anywhere_is_meminfo() {
    let f = Fake::new();
    f.write("proc/self/cgroup", "1:cpu:/\n0::/\n");
    f.write("proc/self/mountinfo", HYBRID_MOUNTINFO);
    f.write("sys/unified/cgroup.controllers", "hugetlb\n");
    assert_eq!(f.view().snapshot().unwrap().source, Source::Meminfo);
}

#[test]
fn a_vanished_cgroup_degrades_to_meminfo() {
    let f = Fake::new();
    let s = MemoryView {
        proc_root: f.tmp.path().join("proc"),
        cgroup: Cgroup::V1 {
            dir: f.sys("memory/gone"),
        },
    }
    .snapshot()
    .unwrap();
    assert_eq!(s.source, Source::Meminfo);
}

#[test]
fn missing_meminfo_is_an_error_naming_the_file() {
    let f = Fake::new();
    f.remove("proc/meminfo");
    let err = f.view().snapshot().unwrap_err();
    assert!(err.to_string().contains("meminfo"), "{err}");
}

#[test]
fn old_meminfo_without_memavailable_estimates_it() {
    let mi = parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n");
    assert_eq!(mi.total, 1000 * 1024);
    assert_eq!(mi.available, 310 * 1024);
}

#[test]
fn psi_line_parsing() {
    assert_eq!(
        parse_psi_some_avg10("some avg10=40.10 avg60=1 avg300=0 total=5\n"),
        Some(40.1)
    );
    assert_eq!(parse_psi_some_avg10("full avg10=1.00\n"), None);
    assert_eq!(parse_psi_some_avg10(""), None);
}

#[test]
fn the_real_machine_gives_a_sane_snapshot() {
    let s = MemoryView::detect().snapshot().unwrap();
    assert!(s.total > 0);
    assert!(s.available <= s.total);
    assert!(s.swap_free <= s.swap_total);
}
