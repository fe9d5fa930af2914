//! Sessions per `issue_id`, kept on the data dir across tasks and workers:
//! `<data>/sessions/<issue key>/` holds
//! - `lock`: a file the task holding the issue keeps `flock`ed (exclusive) from its
//!   admission to its end, with its task id written in it. Two workers that share the
//!   data dir never run the same issue at once; the kernel drops the lock when the
//!   holder dies (kill -9, crash), so a dead worker never keeps an issue.
//! - `session.json`: the [`Record`] of the issue's last task: its id, how it ended
//!   (`running` while it runs), its branch, the agent's session id, the worktree name.
//! - `state/`: the agent's own session state (Claude Code's `CLAUDE_CONFIG_DIR`,
//!   opencode's `XDG_DATA_HOME` / `XDG_STATE_HOME`), given to the task's agent user.
//!
//! The first two are the worker's (mode 0711 directory, 0600 files): the agent owns
//! only `state/`. At admission, [`claim`] takes the lock and reads the record to decide
//! how the task starts ([`Start`]): a task whose predecessor was interrupted or failed
//! continues it (its branch, its session, its worktree path) unless the request says
//! `fresh`; otherwise a new session starts.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::agent::profile::{AgentProfile, SessionPlan};
use crate::process::ownership::{chown_tree, RootOwned};

/// How the issue's last task ended, as the record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It was running when the record was last written: if the lock is free now, its
    /// worker died (kill -9, crash, power loss) and the task counts as interrupted.
    Running,
    Done,
    Failed,
    Cancelled,
    Interrupted,
}

impl Outcome {
    /// Whether a later task continues the one that ended so.
    fn resumable(self) -> bool {
        matches!(
            self,
            Outcome::Running | Outcome::Failed | Outcome::Interrupted
        )
    }
}

/// `session.json`: the issue's last task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub issue_id: String,
    /// The last task of the issue.
    pub task_id: String,
    pub status: Outcome,
    /// The agent profile that ran it (`claude`, `opencode`, `shell`, a command's name).
    pub agent: String,
    /// The agent's session id (Claude Code: fixed before the start; opencode: read
    /// from its first line of output).
    #[serde(default)]
    pub session_id: Option<String>,
    pub branch: String,
    #[serde(default)]
    pub rig_url: Option<String>,
    /// The worktree's directory name under `<data>/git/worktrees` (kept by resumed
    /// tasks: opencode resumes a session only from the same directory).
    #[serde(default)]
    pub worktree: Option<String>,
    /// The last commit the issue's tasks pushed (a checkpoint or the final one).
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub resumed_from: Option<String>,
    pub updated_at: String,
}

/// How a task with an `issue_id` starts, decided at admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The earlier task this one continues.
    pub resumed_from: Option<String>,
    /// The agent's session: None for an agent without sessions (shell, command lines).
    pub plan: Option<SessionPlan>,
    /// The worktree's directory name under `<data>/git/worktrees`.
    pub worktree: String,
    /// Start the worktree from this branch of the rig as pushed (when it exists there).
    pub from_branch: Option<String>,
    /// The state dir is emptied before the agent starts (a new session).
    pub wipe_state: bool,
}

/// Why an issue could not be claimed.
#[derive(Debug)]
pub enum ClaimError {
    /// Another task holds the issue's lock (on this worker or another one sharing the
    /// data dir): its task id, when the lock file names it.
    Busy(Option<String>),
    /// The session dir could not be used.
    Io(anyhow::Error),
}

/// A task's hold on its issue: the lock (released by [`Claim::release`] or by dropping
/// it), the record, and how the task starts.
#[derive(Debug)]
pub struct Claim {
    dir: PathBuf,
    lock: Mutex<Option<Flock<File>>>,
    record: Mutex<Record>,
    pub start: Start,
}

/// `<data>/sessions/<key>`: the issue id, with every byte outside `[A-Za-z0-9._-]` as
/// `%XX` (issue ids are git ref components: no `/`, no `..`, no leading `.`).
pub fn session_dir(data_dir: &Path, issue_id: &str) -> PathBuf {
    let mut key = String::with_capacity(issue_id.len());
    for b in issue_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && !key.is_empty()) {
            key.push(b as char);
        } else {
            key.push_str(&format!("%{b:02X}"));
        }
    }
    data_dir.join("sessions").join(key)
}

/// What a new task of an issue brings to [`claim`].
pub struct Ask<'a> {
    pub issue_id: &'a str,
    pub task_id: &'a str,
    pub branch: &'a str,
    pub rig_url: Option<&'a str>,
    /// `"fresh": true` in the request: never continue.
    pub fresh: bool,
    pub profile: &'a AgentProfile,
}

/// Takes the issue's lock (without waiting) and decides how the task starts from the
/// record of the issue's last task ([`Claim::begin`] then writes this task's record).
/// Blocking (small files).
pub fn claim(data_dir: &Path, ask: &Ask<'_>) -> Result<Claim, ClaimError> {
    let dir = session_dir(data_dir, ask.issue_id);
    let io = |e: anyhow::Error| ClaimError::Io(e);
    worker_dir(&data_dir.join("sessions")).map_err(io)?;
    worker_dir(&dir).map_err(io)?;
    let lock_path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))
        .map_err(io)?;
    // A few tries: only an interrupted call (EINTR) comes round again.
    let mut tries = 0;
    let mut lock = loop {
        tries += 1;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((f, Errno::EINTR)) if tries < 5 => file = f,
            Err((mut f, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim();
                let known = holder.starts_with("t-")
                    && holder.len() <= 64
                    && holder
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                return Err(ClaimError::Busy(known.then(|| holder.to_string())));
            }
            Err((_, errno)) => {
                return Err(io(anyhow::Error::new(std::io::Error::from(errno)).context(
                    format!(
                        "locking {} (the data dir's file system must support flock)",
                        lock_path.display()
                    ),
                )))
            }
        }
    };
    // Ours: name the holder for the losers.
    let named = lock
        .set_len(0)
        .and_then(|_| lock.rewind())
        .and_then(|_| lock.write_all(ask.task_id.as_bytes()));
    if let Err(e) = named {
        tracing::warn!(path = %lock_path.display(), "writing the holder's task id into the lock file: {e}");
    }
    let record_path = dir.join("session.json");
    let previous: Option<Record> = match std::fs::read(&record_path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(path = %record_path.display(), "ignoring an unreadable session record: {e}");
                None
            }
        },
        Err(_) => None,
    };
    let start = decide(previous.as_ref(), ask);
    let record = Record {
        issue_id: ask.issue_id.to_string(),
        task_id: ask.task_id.to_string(),
        status: Outcome::Running,
        agent: ask.profile.name().to_string(),
        session_id: match &start.plan {
            Some(SessionPlan::New(id)) => id.clone(),
            Some(SessionPlan::Resume(id)) => Some(id.clone()),
            None => None,
        },
        branch: ask.branch.to_string(),
        rig_url: ask.rig_url.map(String::from),
        worktree: Some(start.worktree.clone()),
        commit: match (&start.resumed_from, &previous) {
            (Some(_), Some(p)) => p.commit.clone(),
            _ => None,
        },
        resumed_from: start.resumed_from.clone(),
        updated_at: crate::timefmt::now_rfc3339(),
    };
    Ok(Claim {
        dir,
        lock: Mutex::new(Some(lock)),
        record: Mutex::new(record),
        start,
    })
}

/// The rules: continue the previous task when the agent has sessions (Claude Code,
/// opencode), and the previous task was interrupted, failed, or its worker died
/// (`running` with the lock free), ran the same agent on the same rig, and the request
/// does not say `fresh`; else a new session (none for the shell agent).
fn decide(previous: Option<&Record>, ask: &Ask<'_>) -> Start {
    let profile = ask.profile;
    let continued = previous.filter(|p| {
        !ask.fresh
            && profile.resumes()
            && p.status.resumable()
            && p.agent == profile.name()
            && p.rig_url.as_deref() == ask.rig_url
            && p.task_id != ask.task_id
    });
    match continued {
        Some(p) => Start {
            resumed_from: Some(p.task_id.clone()),
            plan: Some(match &p.session_id {
                Some(id) => SessionPlan::Resume(id.clone()),
                None => new_plan(profile),
            }),
            worktree: p
                .worktree
                .clone()
                .filter(|w| usable_name(w))
                .unwrap_or_else(|| ask.task_id.to_string()),
            from_branch: ask.rig_url.map(|_| p.branch.clone()),
            // A session that never got an id has nothing worth keeping either.
            wipe_state: p.session_id.is_none(),
        },
        None => Start {
            resumed_from: None,
            plan: profile.resumes().then(|| new_plan(profile)),
            worktree: ask.task_id.to_string(),
            from_branch: None,
            wipe_state: true,
        },
    }
}

fn new_plan(profile: &AgentProfile) -> SessionPlan {
    SessionPlan::New(profile.fixes_session_id().then(new_uuid))
}

/// A worktree name from a record is one path component.
fn usable_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

impl Claim {
    /// Writes the record of this task (`running`): once the task exists, so that a
    /// refused admission leaves the issue's record as it was.
    pub fn begin(&self) -> anyhow::Result<()> {
        let r = self.record();
        write_record(&self.dir.join("session.json"), &r)
    }

    /// `<session dir>/state`: the agent's session state.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn record(&self) -> Record {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes the state dir (emptied first for a new session) and gives it to the agent
    /// user `owner` (None: the agent runs as the worker). Blocking.
    pub fn prepare_state(&self, owner: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
        let state = self.state_dir();
        if self.start.wipe_state && state.exists() {
            // remove_dir_all does not follow symbolic links.
            std::fs::remove_dir_all(&state)
                .with_context(|| format!("emptying {} for a new session", state.display()))?;
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state)
            .with_context(|| format!("creating {}", state.display()))?;
        if let Some((uid, gid)) = owner {
            // An earlier task of the issue may have run as another slot's uid.
            chown_tree(&state, uid, gid, 64, RootOwned::Keep)?;
        }
        Ok(state)
    }

    /// Notes the agent's session id as soon as its output names it (opencode picks its
    /// own), so that an interruption from now on can be resumed.
    pub fn note_session(&self, session_id: &str) {
        self.update(|r| {
            if r.session_id.as_deref() == Some(session_id) {
                return false;
            }
            r.session_id = Some(session_id.to_string());
            true
        });
    }

    /// Notes a pushed commit (a checkpoint while the task is being stopped).
    pub fn note_commit(&self, commit: &str) {
        self.update(|r| {
            r.commit = Some(commit.to_string());
            true
        });
    }

    /// Writes how the task ended (before its `done` event, while the lock is held).
    pub fn finish(&self, status: Outcome, commit: Option<&str>, session_id: Option<&str>) {
        self.update(|r| {
            r.status = status;
            if let Some(c) = commit {
                r.commit = Some(c.to_string());
            }
            if let Some(s) = session_id {
                r.session_id = Some(s.to_string());
            }
            true
        });
    }

    fn update(&self, change: impl FnOnce(&mut Record) -> bool) {
        let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        if !change(&mut r) {
            return;
        }
        r.updated_at = crate::timefmt::now_rfc3339();
        let path = self.dir.join("session.json");
        if let Err(e) = write_record(&path, &r) {
            tracing::error!(path = %path.display(), "writing the session record: {e:#}");
        }
    }

    /// Lets go of the issue (the lock file is closed: another task may take it).
    pub fn release(&self) {
        let held = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = held {
            // No stale holder for the next loser to name.
            let _ = f.set_len(0);
        }
    }
}

/// A directory of the worker's that agents may pass through but not list (0711).
fn worker_dir(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o711).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("creating {}", p.display()))),
    }
    let meta = std::fs::symlink_metadata(p).with_context(|| format!("reading {}", p.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", p.display());
    }
    if meta.mode() & 0o7777 != 0o711 {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("setting the mode of {}", p.display()))?;
    }
    Ok(())
}

/// The record, durably: a temporary file, synced, renamed over the old one.
fn write_record(path: &Path, r: &Record) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(r).context("encoding the session record")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_data())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

/// A random (version 4) UUID, for Claude Code's `--session-id`.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer we own.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if got != b.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask<'a>(p: &'a AgentProfile, task: &'a str, fresh: bool) -> Ask<'a> {
        Ask {
            issue_id: "gt-1",
            task_id: task,
            branch: "polecat/gt-1",
            rig_url: Some("https://h/r.git"),
            fresh,
            profile: p,
        }
    }

    #[test]
    fn keys_are_one_safe_path_component() {
        let d = Path::new("/d");
        assert_eq!(
            session_dir(d, "gt-abc_1.2"),
            Path::new("/d/sessions/gt-abc_1.2")
        );
        assert_eq!(session_dir(d, ".x y"), Path::new("/d/sessions/%2Ex%20y"));
        assert_eq!(new_uuid().len(), 36);
        assert_eq!(&new_uuid()[14..15], "4");
    }

    #[test]
    fn an_interrupted_task_is_continued_and_a_done_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let claude = AgentProfile::parse("claude", None).unwrap();
        let a = claim(tmp.path(), &ask(&claude, "t-a", false)).unwrap();
        a.begin().unwrap();
        let Some(SessionPlan::New(Some(id))) = a.start.plan.clone() else {
            panic!("{:?}", a.start)
        };
        assert!(a.start.resumed_from.is_none() && a.start.wipe_state);
        // A second claim while the first holds the lock: busy, naming the holder.
        match claim(tmp.path(), &ask(&claude, "t-b", false)) {
            Err(ClaimError::Busy(Some(h))) => assert_eq!(h, "t-a"),
            other => panic!("{other:?}"),
        }
        a.note_commit("c1");
        a.finish(Outcome::Interrupted, None, None);
        a.release();
        let b = claim(tmp.path(), &ask(&claude, "t-b", false)).unwrap();
        b.begin().unwrap();
        assert_eq!(b.start.resumed_from.as_deref(), Some("t-a"));
        assert_eq!(b.start.plan, Some(SessionPlan::Resume(id.clone())));
        assert_eq!(b.start.worktree, "t-a");
        assert_eq!(b.start.from_branch.as_deref(), Some("polecat/gt-1"));
        assert_eq!(b.record().commit.as_deref(), Some("c1"));
        // Its worker dies: the record still says running, the lock is free.
        drop(b);
        let c = claim(tmp.path(), &ask(&claude, "t-c", false)).unwrap();
        c.begin().unwrap();
        assert_eq!(c.start.resumed_from.as_deref(), Some("t-b"));
        assert_eq!(c.start.worktree, "t-a");
        c.finish(Outcome::Done, Some("c2"), Some(&id));
        c.release();
        let d = claim(tmp.path(), &ask(&claude, "t-d", false)).unwrap();
        d.begin().unwrap();
        assert!(d.start.resumed_from.is_none());
        assert!(matches!(d.start.plan, Some(SessionPlan::New(Some(ref n))) if *n != id));
        d.finish(Outcome::Failed, None, None);
        d.release();
        // fresh: a new session whatever came before.
        let e = claim(tmp.path(), &ask(&claude, "t-e", true)).unwrap();
        e.begin().unwrap();
        assert!(e.start.resumed_from.is_none() && e.start.wipe_state);
        e.finish(Outcome::Failed, None, None);
        e.release();
        // Another agent: nothing to continue.
        let oc = AgentProfile::parse("opencode", None).unwrap();
        let f = claim(tmp.path(), &ask(&oc, "t-f", false)).unwrap();
        f.begin().unwrap();
        assert_eq!(f.start.plan, Some(SessionPlan::New(None)));
        assert!(f.start.resumed_from.is_none());
        f.note_session("ses_1");
        f.finish(Outcome::Interrupted, None, None);
        f.release();
        let g = claim(tmp.path(), &ask(&oc, "t-g", false)).unwrap();
        g.begin().unwrap();
        assert_eq!(g.start.plan, Some(SessionPlan::Resume("ses_1".into())));
        // The shell agent has no session, but holds the lock all the same.
        let shell = AgentProfile::parse("shell", None).unwrap();
        g.release();
        let h = claim(tmp.path(), &ask(&shell, "t-h", false)).unwrap();
        h.begin().unwrap();
        assert!(h.start.plan.is_none());
        h.finish(Outcome::Interrupted, None, None);
        h.release();
        let i = claim(tmp.path(), &ask(&shell, "t-i", false)).unwrap();
        assert!(i.start.plan.is_none() && i.start.resumed_from.is_none());
        assert_eq!(i.start.worktree, "t-i");
    }
}
