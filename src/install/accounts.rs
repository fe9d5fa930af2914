//! The agents' account `outpost-agent` (user and group, uid and gid 61184: the first
//! id of the range systemd keeps for dynamic users, which no account is given): the
//! worker runs as root and starts every agent as this user (task slot k as 61184 + k).
//! Nothing logs in as it: no login shell, a locked password, its home
//! `/var/lib/outpost/home` (the worker gives each slot `home/<k>`, kept across tasks).
//!
//! On the live root (`--root /`) the system's own tool makes it (`groupadd`/`useradd`,
//! or busybox `addgroup`/`adduser` on Alpine), so locks, nscd and the like are
//! honoured. Into another root, or where no tool exists, `/etc/passwd`, `/etc/group`
//! and, when present, `/etc/shadow` and `/etc/gshadow` are edited directly. An existing
//! `outpost-agent` is kept as it is; an id of ours held by another account is refused.
//!
//! `outpost`, the user earlier versions ran the service as, is no longer made (nothing
//! runs as it now); one left by an earlier install is kept, since files in the data dir
//! may still carry its uid, until `uninstall --purge` removes it with the data.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::fsops::{self, Change};
use super::system;

/// The agents' account name (user and group).
pub const NAME: &str = crate::process::identity::DEFAULT_USER;
/// Its uid and gid.
pub const ID: u32 = crate::process::identity::DEFAULT_UID;
/// Its home: below the data dir, where the worker keeps each slot's HOME.
pub const HOME: &str = "/var/lib/outpost/home";
/// The service user of earlier versions, removed by `uninstall --purge`.
pub const LEGACY_NAME: &str = "outpost";
const COMMENT: &str = "outpost agents";

/// The ids of the account once it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// `name:...:id:...` records of a passwd-style file: (name, field 2, field 3).
fn records(text: &str) -> Vec<(String, Option<u32>, Option<u32>)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse().ok());
            (f[0].to_string(), num(2), num(3))
        })
        .collect()
}

fn read(root: &Path, rel: &str) -> Result<Option<String>> {
    fsops::read_optional(&root.join(rel))
}

fn passwd(root: &Path) -> Result<String> {
    Ok(read(root, "etc/passwd")?.unwrap_or_default())
}

fn group(root: &Path) -> Result<String> {
    Ok(read(root, "etc/group")?.unwrap_or_default())
}

/// Looks `name` up in `<root>/etc/passwd`.
pub fn lookup(root: &Path, name: &str) -> Result<Option<Account>> {
    Ok(records(&passwd(root)?)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .and_then(|(_, uid, gid)| {
            Some(Account {
                uid: uid?,
                gid: gid?,
            })
        }))
}

fn group_gid(group: &str, name: &str) -> Option<u32> {
    records(group)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .and_then(|(_, gid, _)| gid)
}

/// The account other than `name` that holds `id` in a passwd- or group-style text.
fn holder(text: &str, id: u32, name: &str) -> Option<String> {
    records(text)
        .into_iter()
        .find(|(n, i, _)| *i == Some(id) && n != name)
        .map(|(n, _, _)| n)
}

/// The login shell that refuses logins, as the target system spells it.
fn nologin(root: &Path) -> &'static str {
    ["/sbin/nologin", "/usr/sbin/nologin"]
        .into_iter()
        .find(|p| root.join(&p[1..]).exists())
        .unwrap_or("/bin/false")
}

fn with_line(text: &str, line: &str) -> String {
    let mut s = text.to_string();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(line);
    s.push('\n');
    s
}

fn without_account(text: &str, name: &str) -> String {
    let prefix = format!("{name}:");
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .flat_map(|l| [l, "\n"])
        .collect();
    if text.is_empty() {
        out.clear();
    }
    out
}

/// Refuses when our uid or gid belongs to another account.
fn check_ids_free(root: &Path) -> Result<()> {
    let taken = |what: &str, other: String| {
        anyhow::anyhow!(
            "{what} {ID}, which outpost install gives the agents' user {NAME}, belongs to \
             {other:?}: pick another unprivileged id for the agents with \
             `outpost install --env OUTPOST_AGENT_USER=UID[:GID]` (a free range of \
             OUTPOST_MAX_TASKS ids, not root, not a person) or an existing user's name, \
             and run again"
        )
    };
    if let Some(other) = holder(&passwd(root)?, ID, NAME) {
        return Err(taken("uid", format!("user {other}")));
    }
    if group_gid(&group(root)?, NAME).is_none() {
        if let Some(other) = holder(&group(root)?, ID, NAME) {
            return Err(taken("gid", format!("group {other}")));
        }
    }
    Ok(())
}

/// Makes the agents' user and group, returning their ids (and reporting the files
/// changed). An existing `outpost-agent` is kept whatever its ids.
pub fn ensure(root: &Path, live: bool, report: &mut dyn FnMut(Change, &Path)) -> Result<Account> {
    let passwd_path = root.join("etc/passwd");
    if read(root, "etc/passwd")?.is_none() {
        bail!(
            "{} does not exist: --root must point at a system root (with etc/passwd)",
            passwd_path.display()
        );
    }
    if let Some(acct) = lookup(root, NAME)? {
        report(Change::Unchanged, &passwd_path);
        return Ok(acct);
    }
    check_ids_free(root)?;
    if live && make_with_tool(root)? {
        report(Change::Updated, &passwd_path);
    } else {
        edit_files(root, report)?;
    }
    lookup(root, NAME)?.with_context(|| {
        format!(
            "the user {NAME} is still missing from {} after creating it: create it by hand \
             (uid and gid {ID}, group {NAME}, home {HOME}, no login shell) and run again",
            passwd_path.display()
        )
    })
}

/// Refuses when a task slot's uid (`uid` + k, k < `slots`) belongs to another user:
/// the worker would refuse to start.
pub fn check_slots(root: &Path, name: &str, uid: u32, slots: u32) -> Result<()> {
    let text = passwd(root)?;
    for k in 1..slots {
        let want = uid.saturating_add(k);
        if let Some(other) = holder(&text, want, name) {
            bail!(
                "task slot {k} of OUTPOST_MAX_TASKS={slots} would run as uid {want}, which \
                 belongs to the user {other:?}: lower OUTPOST_MAX_TASKS or choose agent ids with \
                 {slots} free uids from them (--env OUTPOST_AGENT_USER=UID[:GID])"
            );
        }
    }
    Ok(())
}

/// Makes (or checks) who the agents run as: `outpost-agent` unless the env file's
/// `OUTPOST_AGENT_USER` names another; each task slot's uid must be free.
pub fn ensure_agent_user(
    root: &Path,
    live: bool,
    env: &[(String, String)],
    report: &mut dyn FnMut(Change, &Path),
) -> Result<()> {
    let slots = match super::envfile::get(env, "OUTPOST_MAX_TASKS") {
        Some(v) => v.trim().parse::<u32>().map_err(|_| {
            anyhow::anyhow!(
                "invalid OUTPOST_MAX_TASKS={v:?}: expected a whole number from 1 to 1024"
            )
        })?,
        None => 1,
    };
    let spec = super::envfile::get(env, "OUTPOST_AGENT_USER").map(str::trim);
    match spec {
        None | Some("") | Some(NAME) => {
            let acct = ensure(root, live, report)?;
            check_slots(root, NAME, acct.uid, slots)
        }
        Some("root" | "0" | "0:0") => {
            println!(
                "note: OUTPOST_AGENT_USER=root: agents run as root, with the worker's rights \
                 (no separation); the user {} is not made",
                NAME
            );
            Ok(())
        }
        Some(ids)
            if ids
                .split(':')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Ok(())
        }
        Some(name) => match lookup(root, name)? {
            Some(acct) => check_slots(root, name, acct.uid, slots),
            None => bail!(
                "OUTPOST_AGENT_USER={name}: there is no such user in {}: create it, give \
                 uid[:gid], or remove the setting (--env OUTPOST_AGENT_USER=) for {}",
                root.join("etc/passwd").display(),
                NAME
            ),
        },
    }
}

/// Runs the system's user tools; false when there are none.
fn make_with_tool(root: &Path) -> Result<bool> {
    let shell = nologin(root);
    let id = ID.to_string();
    let has_group = group_gid(&group(root)?, NAME).is_some();
    if let (Some(useradd), Some(groupadd)) = (system::which("useradd"), system::which("groupadd")) {
        if !has_group {
            system::run(Command::new(groupadd).args(["--system", "--gid", &id, NAME]))?;
        }
        let mut cmd = Command::new(useradd);
        cmd.args(["--system", "--uid", &id, "--gid", NAME, "--home-dir", HOME]);
        cmd.args(["--no-create-home", "--shell", shell, "--comment", COMMENT]);
        system::run(cmd.arg(NAME))?;
        return Ok(true);
    }
    if let (Some(adduser), Some(addgroup)) = (system::which("adduser"), system::which("addgroup")) {
        // busybox (Alpine): -S system, -D no password, -H no home dir.
        if !has_group {
            system::run(Command::new(addgroup).args(["-S", "-g", &id, NAME]))?;
        }
        let mut cmd = Command::new(adduser);
        cmd.args(["-S", "-D", "-H", "-u", &id, "-G", NAME, "-h", HOME]);
        cmd.args(["-s", shell, "-g", COMMENT]);
        system::run(cmd.arg(NAME))?;
        return Ok(true);
    }
    Ok(false)
}

/// Appends the records to the account files of `root`.
fn edit_files(root: &Path, report: &mut dyn FnMut(Change, &Path)) -> Result<()> {
    let passwd = passwd(root)?;
    let group = group(root)?;
    let gid = group_gid(&group, NAME).unwrap_or(ID);
    let shell = nologin(root);
    let line = format!("{NAME}:x:{ID}:{gid}:{COMMENT}:{HOME}:{shell}");
    let path = root.join("etc/passwd");
    report(
        fsops::rewrite_text(&path, &with_line(&passwd, &line), 0o644)?,
        &path,
    );
    if group_gid(&group, NAME).is_none() {
        let path = root.join("etc/group");
        let text = with_line(&group, &format!("{NAME}:x:{gid}:"));
        report(fsops::rewrite_text(&path, &text, 0o644)?, &path);
    }
    for (rel, line) in [
        ("etc/shadow", format!("{NAME}:!::0:99999:7:::")),
        ("etc/gshadow", format!("{NAME}:!::")),
    ] {
        if let Some(text) = read(root, rel)? {
            if !text.lines().any(|l| l.starts_with(&format!("{NAME}:"))) {
                let path = root.join(rel);
                report(
                    fsops::rewrite_text(&path, &with_line(&text, &line), 0o640)?,
                    &path,
                );
            }
        }
    }
    Ok(())
}

/// Removes the agents' user and group, and the service user of earlier versions
/// (`uninstall --purge`).
pub fn remove(root: &Path, live: bool, report: &mut dyn FnMut(Change, &Path)) -> Result<()> {
    let passwd_path = root.join("etc/passwd");
    let mut any = false;
    for name in [NAME, LEGACY_NAME] {
        let has_user = lookup(root, name)?.is_some();
        let has_group = group_gid(&group(root)?, name).is_some();
        any |= has_user || has_group;
        if live {
            if let Some(userdel) = system::which("userdel").filter(|_| has_user) {
                system::run(Command::new(userdel).arg(name))?;
            } else if let Some(deluser) = system::which("deluser").filter(|_| has_user) {
                system::run(Command::new(deluser).arg(name))?;
            }
            if group_gid(&group(root)?, name).is_some() {
                if let Some(groupdel) =
                    system::which("groupdel").or_else(|| system::which("delgroup"))
                {
                    system::run(Command::new(groupdel).arg(name))?;
                }
            }
            if has_user && lookup(root, name)?.is_none() {
                report(Change::Removed, &passwd_path);
            }
        }
    }
    if !any {
        report(Change::Absent, &passwd_path);
        return Ok(());
    }
    // Whatever is left (no tools, or another root): edit the files.
    for (rel, mode) in [
        ("etc/passwd", 0o644),
        ("etc/group", 0o644),
        ("etc/shadow", 0o640),
        ("etc/gshadow", 0o640),
    ] {
        if let Some(text) = read(root, rel)? {
            let stripped = without_account(&without_account(&text, NAME), LEGACY_NAME);
            if stripped != text {
                let path = root.join(rel);
                report(fsops::rewrite_text(&path, &stripped, mode)?, &path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_removal() {
        let text = "root:x:0:0:root:/root:/bin/sh\n\
                    outpost-agent:x:61184:61184::/var/lib/outpost/home:/sbin/nologin\n";
        let r = records(text);
        assert_eq!(
            r[1],
            ("outpost-agent".to_string(), Some(61184), Some(61184))
        );
        assert_eq!(
            without_account(text, NAME),
            "root:x:0:0:root:/root:/bin/sh\n"
        );
        assert_eq!(
            without_account(text, LEGACY_NAME),
            text,
            "a prefix is no match"
        );
        assert_eq!(with_line("a", "b"), "a\nb\n");
        assert_eq!(holder(text, 61184, NAME), None);
        assert_eq!(holder(text, 0, NAME), Some("root".to_string()));
    }
}
