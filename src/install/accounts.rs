//! The `outpost` system user and group that own the data dir and run the service.
//!
//! On the live root (`--root /`) the system's own tool makes them (`useradd`, or
//! busybox `addgroup`/`adduser` on Alpine), so locks, nscd and the like are honoured.
//! Into another root, or where no tool exists, `/etc/passwd`, `/etc/group` and, when
//! present, `/etc/shadow` and `/etc/gshadow` are edited directly. An existing user or
//! group is kept as it is.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::fsops::{self, Change};
use super::system;

/// The account name (user and group).
pub const NAME: &str = "outpost";
/// Its home: the data dir, where agents' tool configs (~/.claude ...) end up.
pub const HOME: &str = "/var/lib/outpost";

/// System ids are picked from this range, lowest free first (as adduser -S does).
const FIRST_ID: u32 = 100;
const LAST_ID: u32 = 999;

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

/// Looks the account up in `<root>/etc/passwd`.
pub fn lookup(root: &Path) -> Result<Option<Account>> {
    let Some(passwd) = read(root, "etc/passwd")? else {
        return Ok(None);
    };
    Ok(records(&passwd)
        .into_iter()
        .find(|(n, _, _)| n == NAME)
        .and_then(|(_, uid, gid)| {
            Some(Account {
                uid: uid?,
                gid: gid?,
            })
        }))
}

fn group_gid(group: &str) -> Option<u32> {
    records(group)
        .into_iter()
        .find(|(n, _, _)| n == NAME)
        .and_then(|(_, gid, _)| gid)
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

fn without_account(text: &str) -> String {
    let prefix = format!("{NAME}:");
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

/// Makes the user and group, returning their ids and the files changed.
pub fn ensure(root: &Path, live: bool, report: &mut dyn FnMut(Change, &Path)) -> Result<Account> {
    let passwd_path = root.join("etc/passwd");
    if read(root, "etc/passwd")?.is_none() {
        bail!(
            "{} does not exist: --root must point at a system root (with etc/passwd)",
            passwd_path.display()
        );
    }
    if let Some(acct) = lookup(root)? {
        report(Change::Unchanged, &passwd_path);
        return Ok(acct);
    }
    if live && make_with_tool(root)? {
        report(Change::Updated, &passwd_path);
    } else {
        edit_files(root, report)?;
    }
    lookup(root)?.with_context(|| {
        format!(
            "the user {NAME} is still missing from {} after creating it: create it by hand \
             (a system user with group {NAME}, home {HOME}) and run again",
            passwd_path.display()
        )
    })
}

/// Runs the system's user tool; false when there is none.
fn make_with_tool(root: &Path) -> Result<bool> {
    let shell = nologin(root);
    if let Some(useradd) = system::which("useradd") {
        let group_exists = read(root, "etc/group")?
            .as_deref()
            .and_then(group_gid)
            .is_some();
        let mut cmd = Command::new(useradd);
        cmd.args([
            "--system",
            "--home-dir",
            HOME,
            "--no-create-home",
            "--shell",
            shell,
        ]);
        cmd.args(["--comment", "outpost worker"]);
        if group_exists {
            cmd.args(["--gid", NAME]);
        } else {
            cmd.arg("--user-group");
        }
        system::run(cmd.arg(NAME))?;
        return Ok(true);
    }
    if let Some(adduser) = system::which("adduser") {
        // busybox (Alpine): adduser -S system, -D no password, -H no home dir.
        if read(root, "etc/group")?
            .as_deref()
            .and_then(group_gid)
            .is_none()
        {
            let addgroup = system::which("addgroup").context(
                "adduser exists but addgroup does not: create the group outpost by hand",
            )?;
            system::run(Command::new(addgroup).args(["-S", NAME]))?;
        }
        let mut cmd = Command::new(adduser);
        cmd.args([
            "-S",
            "-D",
            "-H",
            "-h",
            HOME,
            "-s",
            shell,
            "-G",
            NAME,
            "-g",
            "outpost worker",
        ]);
        system::run(cmd.arg(NAME))?;
        return Ok(true);
    }
    Ok(false)
}

/// Appends the records to the account files of `root`.
fn edit_files(root: &Path, report: &mut dyn FnMut(Change, &Path)) -> Result<()> {
    let passwd = read(root, "etc/passwd")?.unwrap_or_default();
    let group = read(root, "etc/group")?.unwrap_or_default();
    let used_uids: Vec<u32> = records(&passwd).iter().filter_map(|r| r.1).collect();
    let used_gids: Vec<u32> = records(&group).iter().filter_map(|r| r.1).collect();
    let gid = match group_gid(&group) {
        Some(gid) => gid,
        None => (FIRST_ID..=LAST_ID)
            .find(|id| !used_gids.contains(id) && !used_uids.contains(id))
            .or_else(|| (FIRST_ID..=LAST_ID).find(|id| !used_gids.contains(id)))
            .context("no free group id between 100 and 999: create the group outpost by hand")?,
    };
    let uid = if used_uids.contains(&gid) {
        (FIRST_ID..=LAST_ID)
            .find(|id| !used_uids.contains(id))
            .context("no free user id between 100 and 999: create the user outpost by hand")?
    } else {
        gid
    };
    let shell = nologin(root);
    let line = format!("{NAME}:x:{uid}:{gid}:outpost worker:{HOME}:{shell}");
    let path = root.join("etc/passwd");
    report(
        fsops::rewrite_text(&path, &with_line(&passwd, &line), 0o644)?,
        &path,
    );
    if group_gid(&group).is_none() {
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

/// Removes the user and group (`uninstall --purge`).
pub fn remove(root: &Path, live: bool, report: &mut dyn FnMut(Change, &Path)) -> Result<()> {
    let passwd_path = root.join("etc/passwd");
    let has_user = lookup(root)?.is_some();
    let has_group = read(root, "etc/group")?
        .as_deref()
        .and_then(group_gid)
        .is_some();
    if !has_user && !has_group {
        report(Change::Absent, &passwd_path);
        return Ok(());
    }
    if live {
        if let Some(userdel) = system::which("userdel").filter(|_| has_user) {
            system::run(Command::new(userdel).arg(NAME))?;
        } else if let Some(deluser) = system::which("deluser").filter(|_| has_user) {
            system::run(Command::new(deluser).arg(NAME))?;
        }
        let group_left = read(root, "etc/group")?
            .as_deref()
            .and_then(group_gid)
            .is_some();
        if group_left {
            if let Some(groupdel) = system::which("groupdel").or_else(|| system::which("delgroup"))
            {
                system::run(Command::new(groupdel).arg(NAME))?;
            }
        }
        if has_user && lookup(root)?.is_none() {
            report(Change::Removed, &passwd_path);
        }
    }
    // Whatever is left (no tools, or another root): edit the files.
    for (rel, mode) in [
        ("etc/passwd", 0o644),
        ("etc/group", 0o644),
        ("etc/shadow", 0o640),
        ("etc/gshadow", 0o640),
    ] {
        if let Some(text) = read(root, rel)? {
            let stripped = without_account(&text);
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
        let text =
            "root:x:0:0:root:/root:/bin/sh\noutpost:x:100:101::/var/lib/outpost:/sbin/nologin\n";
        let r = records(text);
        assert_eq!(r[1], ("outpost".to_string(), Some(100), Some(101)));
        assert_eq!(without_account(text), "root:x:0:0:root:/root:/bin/sh\n");
        assert_eq!(with_line("a", "b"), "a\nb\n");
    }
}
