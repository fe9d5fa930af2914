//! A worktree's index learns each file's stat data, once the files are final.
//!
//! A worktree's files come from a template copy (or a spare made ahead), not from a
//! checkout, so its index is built from the tree alone: every entry has zero stat
//! data. Git then cannot tell an untouched file from a changed one without reading it,
//! and the commit check after the agent hashed every file of the checkout (and loaded
//! its attributes), twice: 0.4 s of a warm task on a 2,000-file repository
//! (docs/bench.md). [`record`] fills each entry's stat data from the file, the way a
//! checkout does, so that check (and the agent's own `git status`) reads only what
//! changed.
//!
//! It must run after the last change to the files' metadata before the agent starts
//! (their hand-over to the agent user changes owner and ctime), and it never guesses:
//! an entry whose file is missing or is not of the entry's type and mode keeps zero
//! stat data and is hashed, as before. A file changed later, even to the same size in
//! the same second, has a new ctime (nobody can set it back), and git's racy-entry
//! rule hashes whatever is as new as the index.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use git2::{IndexEntry, IndexTime, Repository};

use super::error::GitError;

/// Git's entry modes.
const MODE_FILE: u32 = 0o100644;
const MODE_EXEC: u32 = 0o100755;
const MODE_LINK: u32 = 0o120000;

/// Records the stat data of every file of the worktree at `path` in its index, and
/// gives the new index file to `owner` (the agent user) as the one it replaces was.
/// Returns how many entries now have stat data.
pub(crate) fn record(path: &Path, owner: Option<(u32, u32)>) -> Result<usize, GitError> {
    let shown = path.display();
    let git = |what: &str, e: git2::Error| GitError::git(format!("{what} in {shown}"), &e, None);
    let repo = Repository::open(path).map_err(|e| git("opening the worktree", e))?;
    let mut index = repo.index().map_err(|e| git("reading the index", e))?;
    let recorded = fill_entries(&mut index, path, |_| true)
        .map_err(|e| git("recording a file's stat data", e))?;
    index.write().map_err(|e| git("writing the index", e))?;
    if let Some((uid, gid)) = owner {
        let file = path.join(".git").join("index");
        std::os::unix::fs::lchown(&file, Some(uid), Some(gid))
            .map_err(|e| GitError::io(format!("giving {} to uid {uid}", file.display()), e))?;
    }
    Ok(recorded)
}

/// Fills the stat data of the entries of `index` whose path `pick` selects from their
/// files under `root` (in memory: the caller writes the index). An entry whose file is
/// missing or not what the entry says keeps what it had. Returns how many were filled.
pub(crate) fn fill_entries(
    index: &mut git2::Index,
    root: &Path,
    pick: impl Fn(&[u8]) -> bool,
) -> Result<usize, git2::Error> {
    let entries: Vec<IndexEntry> = index.iter().filter(|e| pick(&e.path)).collect();
    let mut recorded = 0;
    for mut entry in entries {
        let file = root.join(OsStr::from_bytes(&entry.path));
        let Ok(meta) = std::fs::symlink_metadata(&file) else {
            continue;
        };
        if !fill(&mut entry, &meta) {
            continue;
        }
        index.add(&entry)?;
        recorded += 1;
    }
    Ok(recorded)
}

/// Fills `entry`'s stat data from `meta`, as a checkout would; false (and `entry` left
/// alone) when the file is not what the entry says: another type, another exec bit, or
/// too big for the index's 32-bit size.
fn fill(entry: &mut IndexEntry, meta: &std::fs::Metadata) -> bool {
    let ft = meta.file_type();
    let matches = match entry.mode {
        MODE_FILE => ft.is_file() && meta.mode() & 0o100 == 0,
        MODE_EXEC => ft.is_file() && meta.mode() & 0o100 != 0,
        MODE_LINK => ft.is_symlink(),
        _ => false,
    };
    let Ok(size) = u32::try_from(meta.size()) else {
        return false;
    };
    if !matches {
        return false;
    }
    // The index keeps seconds and nanoseconds in 32 bits each, as git does.
    entry.ctime = IndexTime::new(meta.ctime() as i32, meta.ctime_nsec() as u32);
    entry.mtime = IndexTime::new(meta.mtime() as i32, meta.mtime_nsec() as u32);
    entry.dev = meta.dev() as u32;
    entry.ino = meta.ino() as u32;
    entry.uid = meta.uid();
    entry.gid = meta.gid();
    entry.file_size = size;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mode: u32) -> IndexEntry {
        IndexEntry {
            ctime: IndexTime::new(0, 0),
            mtime: IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode,
            uid: 0,
            gid: 0,
            file_size: 0,
            id: git2::Oid::zero(),
            flags: 0,
            flags_extended: 0,
            path: b"f".to_vec(),
        }
    }

    #[test]
    fn a_file_of_another_kind_or_mode_keeps_no_stat_data() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"hello").expect("write");
        let exec = dir.path().join("exec");
        std::fs::write(&exec, b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&exec, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("plain", &link).expect("symlink");
        let meta = |p: &Path| std::fs::symlink_metadata(p).expect("stat");

        let mut e = entry(MODE_FILE);
        assert!(fill(&mut e, &meta(&plain)));
        assert_eq!(e.file_size, 5);
        assert_ne!(e.ino, 0);
        assert_ne!(e.mtime.seconds(), 0);
        for (mode, path) in [
            (MODE_FILE, &exec),
            (MODE_EXEC, &plain),
            (MODE_FILE, &link),
            (MODE_LINK, &plain),
            (MODE_FILE, &dir.path().to_path_buf()),
            (0o160000, &plain),
        ] {
            let mut e = entry(mode);
            assert!(!fill(&mut e, &meta(path)), "{mode:o} {}", path.display());
            assert_eq!((e.file_size, e.ino, e.mtime.seconds()), (0, 0, 0));
        }
        let mut e = entry(MODE_EXEC);
        assert!(fill(&mut e, &meta(&exec)));
        let mut e = entry(MODE_LINK);
        assert!(fill(&mut e, &meta(&link)));
        assert_eq!(e.file_size, 5, "a symlink's size is its target's length");
    }
}
