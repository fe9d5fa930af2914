"""The checks of image/vm/test (issue 14), one function per group, against a running VM.

Each check records PASS, FAIL or NOT-YET under a dotted name. NOT-YET is for what needs
the isolation work (issue 10: per-task cgroups and limits, `/hello`'s `isolation` and
`containment`) on a worker that does not have it yet, detected by `/hello` lacking
`containment`; once that field exists the same checks report PASS or FAIL. INFO lines
carry the figures (docs/deploy-vm.md).
"""

import json
import re
import time

from worker import ApiError

TERMINAL = ("done", "failed", "cancelled", "interrupted")


class Report:
    def __init__(self):
        self.results = []
        self.figures = {}

    def record(self, name, status, detail=""):
        self.results.append({"name": name, "status": status, "detail": detail})
        print(f"{status:<8} {name}  {detail}", flush=True)

    def check(self, name, ok, detail="", gated=False, ready=True):
        """PASS when ok; else NOT-YET when the check is `gated` on issue 10 and the
        worker is not `ready` for it, else FAIL."""
        if ok:
            self.record(name, "PASS", detail)
        elif gated and not ready:
            self.record(name, "NOT-YET", detail)
        else:
            self.record(name, "FAIL", detail)

    def figure(self, name, value, unit=""):
        self.figures[name] = value
        print(f"INFO     {name} = {value}{unit}", flush=True)

    def failed(self):
        return [r["name"] for r in self.results if r["status"] == "FAIL"]


def contained(hello):
    """Whether the worker says it contains agents (issue 10 has landed)."""
    return "containment" in hello


def main_pid(vm):
    _, out = vm.guest("systemctl show -p MainPID --value outpost")
    return int(out.strip() or 0)


def rss_kib(vm, pid):
    code, out = vm.guest(f"ps -o rss= -p {pid}", check=False)
    return int(out.strip()) if code == 0 and out.strip().isdigit() else None


def run_task(w, prompt, timeout_s=60, wait_s=120, every=None, **extra):
    t = w.start(prompt=prompt, timeout_s=timeout_s, **extra)
    return w.wait_terminal(t["id"], wait_s, every=every)


def fields(text):
    """KEY=VALUE lines the agents print (PTY output: \\r\\n)."""
    out = {}
    for line in text.replace("\r", "").splitlines():
        k, sep, v = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", k):
            out[k] = v
    return out


# --- point 2: the recipe -------------------------------------------------------------
def recipe(vm, w, rep, boot_s):
    rep.figure("boot_to_hello_s", round(boot_s, 1), " s")
    hello = w.hello()
    rep.check("recipe.hello_from_host", hello.get("status") == "available", json.dumps(hello))
    ready = contained(hello)
    _, out = vm.guest("systemctl is-active outpost; systemctl show -p User -p Delegate outpost")
    # Which user the worker runs as is the isolation work's choice; agents' uid is
    # checked below.
    rep.check("recipe.service_active", out.split()[0] == "active", out.replace("\n", " "))
    rep.check("recipe.service_delegated", "Delegate=yes" in out, out.replace("\n", " "))
    _, fs = vm.guest("stat -fc %T /sys/fs/cgroup")
    rep.check("recipe.cgroup2_unified", fs.strip() == "cgroup2fs", fs.strip())
    _, swaps = vm.guest("cat /proc/swaps; stat -c 'SIZE=%s BLOCKS=%b UNIT=%B' /var/lib/outpost.swap")
    f = dict(kv.split("=") for kv in re.findall(r"[A-Z]+=\d+", swaps))
    on = re.search(r"^/var/lib/outpost\.swap\s+file\s+(\d+)", swaps, re.M)
    no_holes = bool(f) and int(f["BLOCKS"]) * int(f["UNIT"]) >= int(f["SIZE"])
    rep.check("recipe.swap_1g_on_no_holes",
              bool(on) and int(on.group(1)) >= 1024 * 1024 - 4 and int(f["SIZE"]) == 1 << 30 and no_holes,
              swaps.replace("\n", " | ").strip())
    rep.check("isolation.hello_fields",
              hello.get("isolation") == "user" and hello.get("containment") == "cgroup2",
              f"isolation={hello.get('isolation')!r} containment={hello.get('containment')!r}",
              gated=True, ready=ready)

    pid = main_pid(vm)
    _, worker_cg = vm.guest(f"cut -d: -f3 /proc/{pid}/cgroup")
    worker_cg = worker_cg.strip()
    t = run_task(w, "echo UID=$(id -u); cg=$(cut -d: -f3 /proc/self/cgroup); echo CG=$cg; "
                    "echo MEMMAX=$(cat /sys/fs/cgroup$cg/memory.max 2>&1); "
                    "echo PIDSMAX=$(cat /sys/fs/cgroup$cg/pids.max 2>&1)")
    f = fields(w.log(t["id"]))
    rep.check("isolation.agent_not_root", f.get("UID", "0") != "0" and t["status"] == "done",
              f"uid {f.get('UID')!r}, task {t['status']}")
    agent_cg = f.get("CG", "")
    # The service's cgroup (systemd's outpost.service), below which the worker keeps
    # itself and one cgroup per task.
    service_cg = worker_cg if worker_cg.endswith(".service") else worker_cg.rsplit("/", 1)[0]
    own = agent_cg.startswith(service_cg + "/") and agent_cg != worker_cg
    rep.check("isolation.agent_own_cgroup", own,
              f"agent {agent_cg!r}, worker {worker_cg!r}", gated=True, ready=ready)
    # The limits must be the task's own (the service's TasksMax does not count).
    mem = f.get("MEMMAX", "")
    rep.check("isolation.task_memory_limit", own and mem.isdigit() and int(mem) < 614 << 20,
              f"memory.max {mem!r} in {agent_cg!r}", gated=True, ready=ready)
    rep.check("isolation.task_pids_limit", own and f.get("PIDSMAX", "").isdigit(),
              f"pids.max {f.get('PIDSMAX')!r} in {agent_cg!r}", gated=True, ready=ready)
    if mem.isdigit():
        rep.figure("task_memory_limit_mib", int(mem) >> 20, " MiB")

    # point 6: what is left to an agent with the worker and the OS running, at idle.
    time.sleep(3)
    rss = rss_kib(vm, pid)
    _, meminfo = vm.guest("cat /proc/meminfo")
    m = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", meminfo, re.M)}
    rep.figure("worker_rss_idle_mib", round((rss or 0) / 1024, 1), " MiB")
    rep.figure("mem_total_mib", m["MemTotal"] >> 10, " MiB")
    rep.figure("mem_available_idle_mib", m["MemAvailable"] >> 10, " MiB")
    rep.figure("swap_free_mib", m["SwapFree"] >> 10, " MiB")
    return ready


# --- point 3: starvation -------------------------------------------------------------
HOG = ("python3 -c \"import time\nl = []\nfor i in range(96):\n"
       "    l.append(b'x' * (16 << 20)); print(16 * (i + 1), 'MiB', flush=True); time.sleep(0.05)\n"
       "time.sleep(120)\"")
FORK_BOMB = "bomb() { bomb | bomb; }; bomb"
FLOOD = "yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde | head -c 2G"


def starve(vm, w, rep, name, prompt, timeout_s, wait_s, error_re, gated, ready):
    """One starvation case: the task fails with the right error, the worker never
    restarts, /hello shows pressure during and available after, the next task runs.
    Returns False when the VM had to be given up (it no longer answers)."""
    pid = main_pid(vm)
    before = w.hello()
    started = time.monotonic()
    statuses = set()
    unanswered = [0]

    def watch(h):
        if h is None:
            unanswered[0] += 1
        else:
            statuses.add(h.get("status"))

    try:
        t = run_task(w, prompt, timeout_s=timeout_s, wait_s=wait_s, every=watch)
        detail = f"status {t['status']}, error {t.get('error')!r}, exit {t.get('exit_code')}"
        ok = t["status"] == "failed" and re.search(error_re, t.get("error") or "", re.I)
    except ApiError as e:
        t, detail, ok = None, str(e), False
    rep.check(f"starve.{name}.task_failed", bool(ok), detail, gated=gated, ready=ready)
    rep.figure(f"starve.{name}.seconds", round(time.monotonic() - started, 1), " s")
    rep.figure(f"starve.{name}.hello_statuses_seen", sorted(s for s in statuses if s))
    rep.figure(f"starve.{name}.hello_unanswered_polls", unanswered[0])
    # Pressure is what /hello says while system memory is short; a task held by its own
    # cgroup limit may never make the whole VM short, so this is reported, not required.
    rep.figure(f"starve.{name}.pressure_seen", "pressure" in statuses)

    after = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            after = w.hello(timeout=5)
            if after.get("status") == "available":
                break
        except (ApiError, ValueError):
            pass
        time.sleep(1)
    rep.check(f"starve.{name}.available_after", bool(after) and after.get("status") == "available",
              json.dumps(after))
    if after is None:
        rep.record(f"starve.{name}.worker_survived", "FAIL", "/hello no longer answers")
        return False
    try:
        now_pid = main_pid(vm)
        rss = rss_kib(vm, now_pid)
    except Exception as e:  # noqa: BLE001 - the guest may be wedged: report it
        rep.record(f"starve.{name}.worker_survived", "FAIL", f"guest agent: {e}")
        return False
    survived = now_pid == pid and after["uptime"] > before["uptime"]
    rep.check(f"starve.{name}.worker_survived", survived and rss is not None and rss < 150 * 1024,
              f"pid {pid} -> {now_pid}, uptime {before['uptime']} -> {after['uptime']} ms, "
              f"rss {rss} KiB")
    try:
        nxt = run_task(w, "echo next-task-ran", timeout_s=60, wait_s=90)
        ran = nxt["status"] == "done" and "next-task-ran" in w.log(nxt["id"])
        rep.check(f"starve.{name}.next_task_runs", ran, f"status {nxt['status']}")
    except ApiError as e:
        rep.check(f"starve.{name}.next_task_runs", False, str(e))
    return True


def starvation(vm, w, rep, ready, cases):
    table = {
        "memory": (HOG, 180, 300, r"memory|oom", False),
        # A fork bomb fails however it is stopped (its own fork errors, a pids limit,
        # the timeout): what matters is that the worker and the next task are fine.
        "fork_bomb": (FORK_BOMB, 60, 150, r"", False),
        "output_flood": (FLOOD, 150, 270, r"output", True),
    }
    for name in cases:
        prompt, timeout_s, wait_s, error_re, gated = table[name]
        if not starve(vm, w, rep, name, prompt, timeout_s, wait_s, error_re, gated, ready):
            return False
    return True


# --- point 3: poweroff through the init system with a live task -----------------------
def poweroff_with_checkpoint(vm, w, rep, git, host):
    bare = git.create("checkpoint")
    branch = "polecat/vm-checkpoint"
    t = w.start(prompt="echo checkpoint-data > vm-checkpoint.txt; echo READY; sleep 600",
                rig_url=git.url("checkpoint", host), ref="main", branch=branch, timeout_s=900)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "READY" not in w.log(t["id"]):
        time.sleep(0.5)
    rep.check("shutdown.task_running", "READY" in w.log(t["id"]), w.task(t["id"])["status"])
    vm.guest_detach("systemctl poweroff")
    off = vm.wait_exit(120)
    rep.check("shutdown.vm_powered_off", off, "qemu exited" if off else "still running after 120 s")
    if not off:
        vm.kill()
    from gitserver import git as run_git
    try:
        head = run_git("rev-parse", f"refs/heads/{branch}", cwd=bare)
        content = run_git("show", f"{branch}:vm-checkpoint.txt", cwd=bare)
    except RuntimeError as e:
        head, content = None, str(e)
    rep.check("shutdown.checkpoint_pushed", content == "checkpoint-data", f"{branch} at {head}: {content!r}")
    return t["id"], head


def after_poweroff(vm, w, rep, task_id, head):
    """On the next boot: the service stopped cleanly, the task is interrupted at the
    checkpoint."""
    _, journal = vm.guest("journalctl -b -1 -u outpost -o cat --no-pager | tail -n 40", check=False)
    # systemd's own words for a stop that went wrong (the worker's lines may mention
    # SIGKILL: that is the agents' grace, not the service's).
    unclean = re.search(r"State '[a-z-]+' timed out|Killing process|Failed with result|"
                        r"Main process exited, code=killed", journal)
    rep.check("shutdown.service_stopped_cleanly",
              ("Stopped outpost" in journal or "Deactivated successfully" in journal) and not unclean,
              (unclean.group(0) if unclean else "") + " | " + " | ".join(journal.strip().splitlines()[-4:]))
    t = w.task(task_id)
    rep.check("shutdown.task_interrupted_at_checkpoint",
              t["status"] == "interrupted" and head is not None and t.get("commit") == head,
              f"status {t['status']}, commit {t.get('commit')}, branch head {head}")


# --- point 5: power loss --------------------------------------------------------------
STREAM = 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo "line $i"; sleep 0.01; done'


def power_cut(vm, w, rep, want=300):
    """Streams a task's events and pulls the plug (SIGKILL qemu) right after the
    `want`-th event arrives; returns (task id, the events the client saw)."""
    t = w.start(prompt=STREAM, timeout_s=900)
    seen = []
    try:
        for ev in w.events(t["id"], timeout=30):
            seen.append(ev)
            if len(seen) >= want:
                vm.kill()
                break
    finally:
        vm.kill()
    rep.figure("powerloss.events_seen_before_kill", len(seen))
    return t["id"], seen


def after_power_cut(w, rep, task_id, seen):
    last = seen[-1]["id"] if seen else 0
    try:
        full = list(w.events(task_id, timeout=60))
        resumed = list(w.events(task_id, last_event_id=last, timeout=60))
    except ApiError as e:
        rep.record("powerloss.seen_events_kept", "FAIL", str(e))
        rep.record("powerloss.no_hidden_events", "FAIL", str(e))
        return
    by_id = {e["id"]: e for e in full}
    missing = [e["id"] for e in seen if by_id.get(e["id"]) != e]
    rep.check("powerloss.seen_events_kept", not missing,
              f"{len(seen)} seen (last id {last}); log after reboot has {len(full)} events, "
              f"ids {full[0]['id'] if full else '-'}..{full[-1]['id'] if full else '-'}; "
              f"missing or different: {missing[:5]}{'...' if len(missing) > 5 else ''}")
    later = [e for e in full if e["id"] > last]
    ids_ok = [e["id"] for e in full] == list(range(1, len(full) + 1))
    rep.check("powerloss.no_hidden_events", resumed == later and ids_ok and bool(later),
              f"resume after {last} gave {len(resumed)} events, the log has {len(later)} after it; "
              f"ids 1..n without gaps: {ids_ok}; last event: "
              f"{full[-1]['event'] if full else None}")


# --- point 4: idle shutdown -----------------------------------------------------------
def idle_shutdown(vm, w, rep, idle="20s"):
    vm.guest(f"outpost install --idle-shutdown {idle} >/dev/null && systemctl restart outpost", timeout_s=60)
    off = vm.wait_exit(20 + 120)
    rep.check("idle.vm_powers_itself_off", off,
              f"OUTPOST_IDLE_SHUTDOWN={idle}: " + ("qemu exited" if off else "still running after 140 s"))
