//! Who agents run as. When the worker is root, every agent runs as an unprivileged
//! user (`OUTPOST_AGENT_USER`: a name from /etc/passwd or `uid[:gid]`); task slot `k`
//! of `OUTPOST_MAX_TASKS` runs as that uid + `k`, so two live tasks never share a uid
//! and cannot signal, trace or read each other. `root` turns the separation off. When
//! the worker is not root it cannot change users: agents run as its own.

use std::fs;

/// The default agent user's name; when /etc/passwd has no such user, the default is
/// [`DEFAULT_UID`] (the first uid of the range systemd keeps for dynamic users, which
/// no account is given).
pub const DEFAULT_USER: &str = "outpost-agent";
pub const DEFAULT_UID: u32 = 61184;

/// Who agents run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An unprivileged user: slot `k` runs as `uid + k`, group `gid`.
    User { name: String, uid: u32, gid: u32 },
    /// The worker's own identity (it is not root, or `OUTPOST_AGENT_USER=root`).
    Same {
        uid: u32,
        gid: u32,
        why: &'static str,
    },
}

impl Identity {
    /// The uid and gid of task slot `slot`.
    pub fn for_slot(&self, slot: usize) -> (u32, u32) {
        match self {
            Identity::User { uid, gid, .. } => (uid + slot as u32, *gid),
            Identity::Same { uid, gid, .. } => (*uid, *gid),
        }
    }

    /// `/hello`'s `isolation`: `user` when agents run as another user.
    pub fn isolation(&self) -> &'static str {
        match self {
            Identity::User { .. } => "user",
            Identity::Same { .. } => "none",
        }
    }

    pub fn separated(&self) -> bool {
        matches!(self, Identity::User { .. })
    }
}

/// Resolves `OUTPOST_AGENT_USER` (None: the default) for a worker running as
/// `worker_uid`/`worker_gid` with `slots` task slots, reading `passwd` (the text of
/// /etc/passwd, empty when there is none).
pub fn resolve(
    spec: Option<&str>,
    worker_uid: u32,
    worker_gid: u32,
    slots: usize,
    passwd: &str,
) -> Result<Identity, String> {
    if worker_uid != 0 {
        return Ok(Identity::Same {
            uid: worker_uid,
            gid: worker_gid,
            why: "the worker is not root, so agents run as its own user",
        });
    }
    let users = parse_passwd(passwd);
    let (name, uid, gid) = match spec.map(str::trim) {
        Some("root") | Some("0") | Some("0:0") => {
            return Ok(Identity::Same {
                uid: 0,
                gid: 0,
                why: "OUTPOST_AGENT_USER=root: agents run as root, with the worker's privileges",
            })
        }
        None | Some("") => match users.iter().find(|u| u.0 == DEFAULT_USER) {
            Some((n, u, g)) => (n.clone(), *u, *g),
            None => (DEFAULT_USER.to_string(), DEFAULT_UID, DEFAULT_UID),
        },
        Some(s) => match parse_ids(s)? {
            Some((uid, gid)) => {
                let name = users
                    .iter()
                    .find(|u| u.1 == uid)
                    .map(|u| u.0.clone())
                    .unwrap_or_else(|| uid.to_string());
                (name, uid, gid.unwrap_or(uid))
            }
            None => match users.iter().find(|u| u.0 == s) {
                Some((n, u, g)) => (n.clone(), *u, *g),
                None => {
                    return Err(format!(
                        "no user {s:?} in /etc/passwd: create it (outpost install does) or give uid[:gid]"
                    ))
                }
            },
        },
    };
    if uid == 0 {
        return Err("the agent user must not be root: use OUTPOST_AGENT_USER=root to turn the separation off on purpose".into());
    }
    // Every slot's uid must be free of other accounts: a task must not act as a person.
    for k in 1..slots as u32 {
        let want = uid
            .checked_add(k)
            .ok_or("the agent uid is too large for OUTPOST_MAX_TASKS slots")?;
        if let Some(other) = users.iter().find(|u| u.1 == want && u.0 != name) {
            return Err(format!(
                "task slot {k} would run as uid {want}, which belongs to user {:?}: choose an agent uid with {} unused uids from it (e.g. {DEFAULT_UID}) or fewer OUTPOST_MAX_TASKS",
                other.0, slots
            ));
        }
    }
    Ok(Identity::User { name, uid, gid })
}

/// `uid`, `uid:gid`; None when `s` is not numeric (a name).
fn parse_ids(s: &str) -> Result<Option<(u32, Option<u32>)>, String> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if !u.chars().all(|c| c.is_ascii_digit()) {
        return Ok(None);
    }
    let bad = || format!("{s:?} is not uid[:gid] with whole numbers");
    let uid = u.parse().map_err(|_| bad())?;
    let gid = match g {
        Some(g) => Some(g.parse().map_err(|_| bad())?),
        None => None,
    };
    Ok(Some((uid, gid)))
}

/// (name, uid, gid) of each well-formed line.
fn parse_passwd(text: &str) -> Vec<(String, u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _pw = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some((name.to_string(), uid, gid))
        })
        .collect()
}

/// The name /etc/passwd gives `uid`, if any. Looked up once per uid while the file is
/// unchanged (same modification time and size): it is asked on every task start.
pub fn name_of(uid: u32) -> Option<String> {
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    type Seen = (Option<(i64, i64, u64)>, BTreeMap<u32, Option<String>>);
    static CACHE: Mutex<Seen> = Mutex::new((None, BTreeMap::new()));
    let stamp = fs::metadata("/etc/passwd")
        .ok()
        .map(|m| (m.mtime(), m.mtime_nsec(), m.size()));
    let mut g = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if g.0 != stamp || stamp.is_none() {
        *g = (stamp, BTreeMap::new());
    }
    g.1.entry(uid)
        .or_insert_with(|| {
            parse_passwd(&read_passwd())
                .into_iter()
                .find(|u| u.1 == uid)
                .map(|u| u.0)
        })
        .clone()
}

/// The text of /etc/passwd, or nothing (a `FROM scratch` image may have none).
pub fn read_passwd() -> String {
    fs::read_to_string("/etc/passwd").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\noutpost-agent:x:61184:61184::/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn defaults_names_and_numbers() {
        let id = resolve(None, 0, 0, 2, PASSWD).unwrap();
        assert_eq!(id.for_slot(0), (61184, 61184));
        assert_eq!(id.for_slot(1), (61185, 61184));
        assert_eq!(id.isolation(), "user");
        let id = resolve(None, 0, 0, 1, "").unwrap();
        assert_eq!(id.for_slot(0), (DEFAULT_UID, DEFAULT_UID));
        assert_eq!(
            resolve(Some("alice"), 0, 0, 1, PASSWD).unwrap().for_slot(0),
            (1000, 1000)
        );
        assert_eq!(
            resolve(Some("5000:6000"), 0, 0, 1, PASSWD)
                .unwrap()
                .for_slot(0),
            (5000, 6000)
        );
        assert_eq!(
            resolve(Some("5000"), 0, 0, 1, PASSWD).unwrap().for_slot(0),
            (5000, 5000)
        );
    }

    #[test]
    fn root_not_root_and_collisions() {
        assert!(!resolve(Some("root"), 0, 0, 1, PASSWD).unwrap().separated());
        let same = resolve(Some("alice"), 1000, 1000, 1, PASSWD).unwrap();
        assert_eq!(same.isolation(), "none");
        assert_eq!(same.for_slot(3), (1000, 1000));
        assert!(resolve(Some("bob"), 0, 0, 1, PASSWD)
            .unwrap_err()
            .contains("no user"));
        assert!(resolve(Some("12x:3"), 0, 0, 1, PASSWD).is_err());
        // Slot 1 of uid 999 would be alice's 1000.
        let e = resolve(Some("999"), 0, 0, 2, PASSWD).unwrap_err();
        assert!(e.contains("alice"), "{e}");
    }
}
