//! The cgroup code against sample trees: plain directories laid out as cgroupfs is.
//! (Real v1 cgroups are exercised by the integration tests; real v2 in the VM test.)

use super::*;

fn sample_v2(controllers: &str, procs: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let proc_self = t.path().join("proc");
    let root = t.path().join("cg");
    fs::create_dir_all(&proc_self).unwrap();
    fs::write(
        proc_self.join("cgroup"),
        "0::/system.slice/outpost.service\n",
    )
    .unwrap();
    let own = root.join("system.slice/outpost.service");
    fs::create_dir_all(&own).unwrap();
    fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    fs::write(own.join("cgroup.controllers"), controllers).unwrap();
    fs::write(own.join("cgroup.procs"), procs).unwrap();
    (t, proc_self, root)
}

#[test]
fn v2_parent_gets_controllers_and_tasks_get_limits() {
    let (_t, proc_self, root) = sample_v2("cpu memory pids\n", "");
    let cg = Cgroups::setup_at(&proc_self, &root, "k1").unwrap();
    assert_eq!(cg.version(), Version::V2);
    let own = root.join("system.slice/outpost.service");
    assert_eq!(
        fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
        "+memory +pids +cpu"
    );
    let parent = own.join("outpost-k1");
    assert_eq!(
        fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(),
        "+memory +pids +cpu"
    );
    let limits = Limits {
        memory: Some(300 << 20),
        pids: Some(64),
    };
    let task = cg.create("t-1", limits).unwrap();
    let dir = parent.join("t-1");
    assert_eq!(
        fs::read_to_string(dir.join("memory.max")).unwrap(),
        "314572800"
    );
    assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "64");
    assert_eq!(
        fs::read_to_string(dir.join("memory.swap.max")).unwrap(),
        "0"
    );
    assert_eq!(task.procs_files(), vec![dir.join("cgroup.procs")]);

    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 1500000\nuser_usec 1000000\n",
    )
    .unwrap();
    fs::write(dir.join("memory.peak"), "262144000\n").unwrap();
    fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    )
    .unwrap();
    assert_eq!(
        task.usage(),
        Usage {
            cpu_us: 1_500_000,
            memory_peak: 262_144_000
        }
    );
    assert!(task.oom_killed());
    // An empty sample cgroup is empty at once.
    assert!(task.kill_all().empty);
    assert_eq!(fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "1");
}

#[test]
fn v2_without_memory_controller_is_refused_with_advice() {
    let (_t, proc_self, root) = sample_v2("cpu\n", "");
    let e = Cgroups::setup_at(&proc_self, &root, "k").unwrap_err();
    assert!(e.contains("Delegate=yes"), "{e}");
}

#[test]
fn v1_uses_each_hierarchys_own_path() {
    let (_t, cg, root) = sample_v1(
        "8:pids:/\n6:freezer:/\n4:memory:/box/abc\n2:cpu,cpuacct:/\n0::/\n",
        &["pids", "freezer", "memory/box/abc", "cpuacct"],
        "k2",
    );
    assert_eq!(cg.version(), Version::V1);
    let task = cg
        .create(
            "t-9",
            Limits {
                memory: Some(1 << 30),
                pids: Some(100),
            },
        )
        .unwrap();
    let mem = root.join("memory/box/abc/outpost-k2/t-9");
    assert_eq!(
        fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
        "1073741824"
    );
    assert_eq!(
        fs::read_to_string(root.join("pids/outpost-k2/t-9/pids.max")).unwrap(),
        "100"
    );
    // v1: the one-thread `tasks` file of every hierarchy (the fast move).
    let files = task.procs_files();
    assert_eq!(files.len(), 4);
    assert!(files.iter().all(|f| f.ends_with("tasks")), "{files:?}");
    fs::write(
        root.join("cpuacct/outpost-k2/t-9/cpuacct.usage"),
        "2000000000\n",
    )
    .unwrap();
    fs::write(mem.join("memory.max_usage_in_bytes"), "5000\n").unwrap();
    assert_eq!(task.usage().cpu_us, 2_000_000);
    assert_eq!(task.usage().memory_peak, 5000);
    // Sweeping finds the task cgroup an earlier run left behind.
    assert_eq!(cg.sweep(&|_| false), 1);
}

/// A v1 sample tree: `/proc/self/cgroup` says `table`, the hierarchies' directories
/// are `dirs`, and the parent is set up with `key`.
fn sample_v1(table: &str, dirs: &[&str], key: &str) -> (tempfile::TempDir, Cgroups, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let proc_self = t.path().join("proc");
    let root = t.path().join("cg");
    fs::create_dir_all(&proc_self).unwrap();
    fs::write(proc_self.join("cgroup"), table).unwrap();
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let cg = Cgroups::setup_at(&proc_self, &root, key).unwrap();
    (t, cg, root)
}

/// The four hierarchies at `/`.
fn plain_v1() -> (tempfile::TempDir, Cgroups, PathBuf) {
    sample_v1(
        "8:pids:/\n6:freezer:/\n4:memory:/\n2:cpu,cpuacct:/\n",
        &V1_CONTROLLERS,
        "k3",
    )
}

#[test]
fn v1_a_clean_cgroup_is_renamed_for_the_next_task_with_its_counters_reset() {
    let (_t, cg, root) = plain_v1();
    let limits = Limits {
        memory: Some(1 << 30),
        pids: Some(100),
    };
    let a = cg.create("t-a", limits).unwrap();
    let at = |ctl: &str, name: &str| root.join(ctl).join("outpost-k3").join(name);
    fs::write(at("cpuacct", "t-a").join("cpuacct.usage"), "7000\n").unwrap();
    fs::write(at("memory", "t-a").join("memory.max_usage_in_bytes"), "9\n").unwrap();
    fs::write(at("memory", "t-a").join("memory.usage_in_bytes"), "4096\n").unwrap();
    cg.release(&a, Ended::default());
    assert!(at("pids", "t-a").is_dir(), "kept while idle");

    let b = cg.create("t-b", limits).unwrap();
    for ctl in V1_CONTROLLERS {
        assert!(!at(ctl, "t-a").exists(), "{ctl}: still under A's name");
        assert!(at(ctl, "t-b").is_dir(), "{ctl}: not renamed after B");
    }
    assert_eq!(b.usage(), Usage::default(), "A's counters were not reset");
    // The limits came along with the directory.
    assert_eq!(
        fs::read_to_string(at("pids", "t-b").join("pids.max")).unwrap(),
        "100"
    );
}

#[test]
fn v1_a_cgroup_is_not_reused_after_processes_were_killed_an_oom_or_a_large_charge() {
    let (_t, cg, root) = plain_v1();
    let at = |name: &str| root.join("memory/outpost-k3").join(name);
    let limits = Limits::default();
    // Processes left behind.
    let a = cg.create("t-a", limits).unwrap();
    fs::write(at("t-a").join("memory.usage_in_bytes"), "0\n").unwrap();
    let left = Ended {
        left_behind: true,
        oom_killed: false,
    };
    cg.release(&a, left);
    // An OOM kill.
    let b = cg.create("t-b", limits).unwrap();
    fs::write(at("t-b").join("memory.oom_control"), "oom_kill 1\n").unwrap();
    let oom = Ended {
        left_behind: false,
        oom_killed: b.oom_killed(),
    };
    assert!(oom.oom_killed);
    cg.release(&b, oom);
    // More than the most a reused cgroup may hold.
    let c = cg.create("t-c", limits).unwrap();
    let big = (REUSE_MAX_CHARGE + 1).to_string();
    fs::write(at("t-c").join("memory.usage_in_bytes"), big).unwrap();
    cg.release(&c, Ended::default());
    // None was kept: the next task's cgroup is new. (Their memory directories hold the
    // files written above, so removing them failed and they are still there: a kept
    // one would have been renamed to t-d.)
    cg.create("t-d", limits).unwrap();
    for name in ["t-a", "t-b", "t-c", "t-d"] {
        assert!(at(name).is_dir(), "{name}");
    }
    assert!(!root.join("pids/outpost-k3/t-c").exists(), "not removed");
}

#[test]
fn v2_cgroups_are_not_reused() {
    let (_t, proc_self, root) = sample_v2("cpu memory pids\n", "");
    let cg = Cgroups::setup_at(&proc_self, &root, "k4").unwrap();
    let a = cg.create("t-a", Limits::default()).unwrap();
    fs::remove_dir_all(root.join("system.slice/outpost.service/outpost-k4/t-a")).unwrap();
    cg.release(&a, Ended::default());
    cg.create("t-b", Limits::default()).unwrap();
    let parent = root.join("system.slice/outpost.service/outpost-k4");
    assert!(!parent.join("t-a").exists());
    assert!(parent.join("t-b").is_dir());
}
