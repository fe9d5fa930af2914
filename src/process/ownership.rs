//! Giving trees of files the worker made to the agent user: a checkout, a run dir, a
//! spare checkout made ahead. Never through a symbolic link, and never a file that has
//! other hard links (it is shared with something outside the tree).

use std::io;
use std::path::Path;

fn giving(p: &Path, uid: u32, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("giving {} to uid {uid}: {e}", p.display()),
    )
}

/// What [`chown_tree`] does with what root owns below the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOwned {
    /// Give it too (a tree the worker has just made as root: a checkout, a run dir).
    Give,
    /// Leave it alone (a tree an agent wrote before: an agent cannot have made a
    /// root-owned entry, so one there is a hard link to a file of the worker's, which
    /// must not change hands).
    Keep,
}

/// Makes `root` and everything below it (to `depth` levels) owned by uid:gid, never
/// following a symbolic link and never giving a file that has other hard links;
/// entries that already are are not touched.
pub fn chown_tree(
    root: &Path,
    uid: u32,
    gid: u32,
    depth: usize,
    root_owned: RootOwned,
) -> io::Result<()> {
    use nix::fcntl::AtFlags;
    use nix::unistd::{fchownat, Gid, Uid};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let (owner, group) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    std::os::unix::fs::lchown(root, Some(uid), Some(gid)).map_err(|e| giving(root, uid, e))?;
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    // Bounded by the tree: each directory is visited once (links are not followed).
    // Entries are looked at and given relative to their directory (no path walks).
    while let Some((dir, level)) = stack.pop() {
        if level >= depth {
            continue;
        }
        let (Ok(handle), Ok(rd)) = (std::fs::File::open(&dir), std::fs::read_dir(&dir)) else {
            continue;
        };
        for e in rd.flatten() {
            // fstatat on the directory's own descriptor, never following a link.
            let Ok(meta) = e.metadata() else {
                continue;
            };
            if meta.uid() == 0 && root_owned == RootOwned::Keep {
                continue;
            }
            // A file with other names is shared with something outside the tree: a
            // worktree's objects are hard links to the repository cache's (read-only)
            // files, and giving one away would give the cache's file to the agent.
            if !meta.is_dir() && meta.nlink() > 1 {
                continue;
            }
            if meta.uid() != uid || meta.gid() != gid {
                let name = e.file_name();
                fchownat(
                    Some(handle.as_raw_fd()),
                    name.as_os_str(),
                    owner,
                    group,
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|err| giving(&e.path(), uid, err.into()))?;
            }
            if meta.is_dir() {
                stack.push((e.path(), level + 1));
            }
        }
    }
    Ok(())
}
