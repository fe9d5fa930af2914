//! Where the filesystem puts the trees outpost creates and deletes by the thousand
//! (task directories, worktrees, checkout templates, caches): each directory that holds
//! independent trees
//! is marked "top of a hierarchy" (`chattr +T`, `FS_TOPDIR_FL`), so that ext4's Orlov
//! allocator spreads its children over block groups instead of packing every new tree
//! into its parent's group.
//!
//! Why it matters: a task deletes its worktree when it ends, and old task directories
//! are pruned as new ones are made. Without a journal, ext4 will not reuse an inode freed in
//! the last minute or more, and it finds the next free one by checking every recently
//! freed inode of the group in turn, for each file it creates. Packed into one group,
//! a 2,000-file checkout after a 2,000-file delete spent most of its time there (0.4 to
//! 0.7 s instead of 0.15 s, measured by `bench clone`), and so did creating each new
//! task's directory and files once 1,000 old ones were being pruned (`bench tasks`).
//! With the hint, each new tree starts in a group with room and no recent deletes.
//!
//! It is only a hint: filesystems without the flag (tmpfs, overlayfs, xfs) refuse the
//! ioctl, and nothing changes there.
//!
//! It also tells whether a directory is held in memory (tmpfs, ramfs): nothing there
//! needs syncing, and every byte written there is memory.

use std::os::fd::AsRawFd;
use std::path::Path;

/// `FS_TOPDIR_FL` from `linux/fs.h` (not exported by libc).
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Whether `dir` is on a filesystem held in memory (tmpfs, ramfs); None when it
/// cannot be told.
pub(crate) fn filesystem_in_memory(dir: &Path) -> Option<bool> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let st = nix::sys::statfs::statfs(dir).ok()?;
    // The field's type differs between libcs (i64 on glibc, c_ulong on musl).
    #[allow(clippy::unnecessary_cast)]
    let kind = st.filesystem_type().0 as i64;
    Some(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}

/// Whether `dir` (or, before it exists, its nearest existing ancestor) is held in
/// memory: there every byte on "disk" is memory an agent cannot have.
pub(crate) fn in_memory(dir: &Path) -> bool {
    dir.ancestors()
        .find_map(filesystem_in_memory)
        .unwrap_or(false)
}

/// Marks the existing directory `dir` as the top of independent hierarchies, if the
/// filesystem supports it and it is not marked already. Never fails: a filesystem
/// that refuses is left as it is.
pub(crate) fn spread_children(dir: &Path) {
    if let Err(e) = set_topdir(dir) {
        tracing::debug!(dir = %dir.display(), "no placement hint: {e}");
    }
}

fn set_topdir(dir: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(dir)?;
    let fd = file.as_raw_fd();
    // The kernel reads and writes an int, whatever the ioctl's declared size (as chattr).
    let mut flags: libc::c_int = 0;
    // SAFETY: `fd` is open for the duration of the call and `flags` outlives it.
    if unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(());
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: as above; the kernel only reads `flags`.
    if unsafe { libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_a_directory_once_and_never_fails() {
        let dir = std::env::temp_dir().join(format!("outpost-placement-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        spread_children(&dir);
        spread_children(&dir);
        // ext2/3/4 (as the test machines' /tmp is) have the flag: it is now set.
        let fs = nix::sys::statfs::statfs(&dir).unwrap();
        if fs.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC {
            let file = std::fs::File::open(&dir).unwrap();
            let mut flags: libc::c_int = 0;
            // SAFETY: as in set_topdir.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
            assert_eq!(rc, 0);
            assert_ne!(flags & FS_TOPDIR_FL, 0, "flags {flags:#x}");
        }
        // A missing directory is not an error for the caller.
        spread_children(&dir.join("missing"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
