//! OOM killer scores and kills: protect the supervisor (oom_score_adj -1000, or as low as
//! allowed), offer agents first (+500), and tell whether the kernel OOM-killed something
//! since the last look (so a SIGKILLed agent is reported as out of memory, not "137").

use super::view::MemoryView;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

const OOM_ADJ_MIN: i32 = -1000;
const OOM_ADJ_MAX: i32 = 1000;

/// Makes the kernel's OOM killer spare this process: sets /proc/self/oom_score_adj to
/// -1000, or where that is not allowed (no CAP_SYS_RESOURCE) to the lowest value that
/// is. Returns the value now in effect; never fails (0 if it cannot even be read).
/// Children inherit it: raise each agent's score after spawning it.
pub fn protect_self() -> i32 {
    arm_if_unarmed();
    let path = Path::new("/proc/self/oom_score_adj");
    if write_adj(path, OOM_ADJ_MIN).is_ok() {
        return read_adj(path).unwrap_or(OOM_ADJ_MIN);
    }
    let current = read_adj(path).unwrap_or(0);
    // Lowering is allowed down to a floor the kernel does not show; find it by
    // bisection (allowed iff value >= floor). `low` is refused, `high` is allowed.
    let (mut low, mut high) = (OOM_ADJ_MIN, current);
    for _ in 0..16 {
        if high - low <= 1 {
            break;
        }
        let mid = low + (high - low) / 2;
        if write_adj(path, mid).is_ok() {
            high = mid;
        } else {
            low = mid;
        }
    }
    read_adj(path).unwrap_or(high)
}

/// Sets `pid`'s OOM score adjustment (-1000 never killed .. 1000 killed first), e.g.
/// +500 on each agent so the kernel picks an agent rather than the supervisor.
pub fn set_oom_score_adj(pid: i32, adj: i32) -> io::Result<()> {
    if !(OOM_ADJ_MIN..=OOM_ADJ_MAX).contains(&adj) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("oom_score_adj {adj} is out of range: use -1000 to 1000"),
        ));
    }
    arm_if_unarmed();
    let path = format!("/proc/{pid}/oom_score_adj");
    write_adj(Path::new(&path), adj).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot set {path} to {adj}: {e} (has the process exited? lowering needs CAP_SYS_RESOURCE)"),
        )
    })
}

/// The OOM score adjustment of `pid`.
pub fn oom_score_adj(pid: i32) -> io::Result<i32> {
    let path = format!("/proc/{pid}/oom_score_adj");
    read_adj(Path::new(&path))
}

fn write_adj(path: &Path, adj: i32) -> io::Result<()> {
    fs::write(path, adj.to_string())
}

fn read_adj(path: &Path) -> io::Result<i32> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds {text:?}, not a number", path.display()),
        )
    })
}

/// The OOM kill count last seen by [`oom_killed_recently`] (None until armed).
static SEEN_OOM_KILLS: Mutex<Option<u64>> = Mutex::new(None);

fn own_view() -> &'static MemoryView {
    static VIEW: OnceLock<MemoryView> = OnceLock::new();
    VIEW.get_or_init(MemoryView::detect)
}

/// Starts watching OOM kills (this process's cgroup, else the machine): later calls to
/// [`oom_killed_recently`] compare against the count now. [`protect_self`] and
/// [`set_oom_score_adj`] arm it if it is not yet armed.
pub fn arm_oom_watch() {
    let now = own_view().oom_kills();
    let mut seen = SEEN_OOM_KILLS.lock().unwrap_or_else(|p| p.into_inner());
    *seen = now;
}

fn arm_if_unarmed() {
    let mut seen = SEEN_OOM_KILLS.lock().unwrap_or_else(|p| p.into_inner());
    if seen.is_none() {
        *seen = own_view().oom_kills();
    }
}

/// Whether the kernel's OOM killer fired in this process's cgroup (or, without one, on
/// the machine) since the watch was armed or this was last called. Call it when an agent
/// ended by SIGKILL: true means the kernel killed it for memory. False when unarmed or
/// when the kernel does not report OOM kills.
pub fn oom_killed_recently() -> bool {
    let now = own_view().oom_kills();
    let mut seen = SEEN_OOM_KILLS.lock().unwrap_or_else(|p| p.into_inner());
    let killed = matches!((*seen, now), (Some(before), Some(now)) if now > before);
    if now.is_some() {
        *seen = now;
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn scores_of_a_real_process() {
        let child = Kill(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id() as i32;
        set_oom_score_adj(pid, 500).unwrap();
        assert_eq!(oom_score_adj(pid).unwrap(), 500);
        let err = set_oom_score_adj(pid, 1001).unwrap_err();
        assert!(err.to_string().contains("-1000 to 1000"), "{err}");
        let err = set_oom_score_adj(i32::MAX, 0).unwrap_err();
        assert!(err.to_string().contains("oom_score_adj"), "{err}");
    }

    /// The result is the lowest value the kernel lets this process have: -1000 with
    /// CAP_SYS_RESOURCE, else its floor (here usually the inherited value).
    #[test]
    fn protect_self_reaches_the_lowest_allowed_score() {
        let me = std::process::id() as i32;
        let before = oom_score_adj(me).unwrap();
        let set = protect_self();
        let now = oom_score_adj(me).unwrap();
        let lower = if set > -1000 {
            fs::write("/proc/self/oom_score_adj", (set - 1).to_string())
        } else {
            Err(io::Error::other("already at -1000"))
        };
        let after_lower = oom_score_adj(me).unwrap();
        // Put it back (raising is always allowed) before asserting.
        set_oom_score_adj(me, before).unwrap();
        assert_eq!(set, now);
        assert!(set <= before);
        assert!(lower.is_err(), "{} was allowed below {set}", set - 1);
        assert_eq!(after_lower, set);
    }

    #[test]
    fn no_oom_kill_since_arming_means_false() {
        arm_oom_watch();
        // Nothing in this test process's cgroup is being OOM-killed right now.
        assert!(
            own_view().oom_kills().is_some(),
            "this kernel reports oom_kill"
        );
        assert!(!oom_killed_recently());
    }
}
