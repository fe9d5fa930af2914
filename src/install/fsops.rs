//! Idempotent file-system steps of `outpost install`: write a file, make a directory,
//! copy the binary, remove a path. Each step looks at what is there first and reports
//! whether it changed anything, so a second run with the same inputs touches nothing:
//! contents, modes, owners and mtimes stay exactly as they were.
//!
//! New contents are written to a temporary file beside the target and renamed over it,
//! so a crash never leaves a half-written file and a running binary can be replaced.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What a step did to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
    Removed,
    /// Nothing to remove: the path was not there.
    Absent,
}

impl Change {
    /// True when the step modified the system.
    pub fn changed(self) -> bool {
        matches!(self, Change::Created | Change::Updated | Change::Removed)
    }

    /// The word printed in front of the path.
    pub fn word(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
            Change::Removed => "removed",
            Change::Absent => "absent",
        }
    }
}

/// A numeric owner (uid, gid). `None` where ownership is left as the process makes it.
pub type Owner = Option<(u32, u32)>;

/// The owner for root-owned files: root when we run as root, else left alone (a
/// non-root `--root` install into a scratch directory cannot chown to root anyway).
pub fn root_owner() -> Owner {
    nix::unistd::geteuid().is_root().then_some((0, 0))
}

fn lstat(path: &Path) -> Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
}

fn owner_matches(meta: &fs::Metadata, owner: Owner) -> bool {
    owner.is_none_or(|(u, g)| meta.uid() == u && meta.gid() == g)
}

fn set_owner(path: &Path, owner: Owner) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| {
            format!(
                "cannot give {} to uid {uid} gid {gid}: run outpost install as root",
                path.display()
            )
        })?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", path.display()))
}

fn temp_beside(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".outpost-new");
    Ok(path.with_file_name(tmp))
}

/// Makes the parent directories of `path` (mode 0755, as `mkdir -p` with umask 022).
fn make_parents(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .with_context(|| format!("cannot create directory {}", parent.display()))?;
        }
    }
    Ok(())
}

/// Writes `fill` into a new temporary file beside `path`, fixes mode and owner, and
/// renames it over `path`.
fn replace_with(
    path: &Path,
    mode: u32,
    owner: Owner,
    fill: &mut dyn FnMut(&mut fs::File) -> std::io::Result<()>,
) -> Result<()> {
    make_parents(path)?;
    let tmp = temp_beside(path)?;
    let result = (|| -> Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        fill(&mut file).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot flush {}", tmp.display()))?;
        drop(file);
        set_owner(&tmp, owner)?;
        set_mode(&tmp, mode)?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn check_regular(path: &Path, meta: &fs::Metadata) -> Result<()> {
    if !meta.file_type().is_file() {
        bail!(
            "{} exists but is not a regular file: move it out of the way and run again",
            path.display()
        );
    }
    Ok(())
}

/// Makes `path` hold exactly `content` with `mode` and `owner`.
pub fn write_file(path: &Path, content: &[u8], mode: u32, owner: Owner) -> Result<Change> {
    let Some(meta) = lstat(path)? else {
        replace_with(path, mode, owner, &mut |f| f.write_all(content))?;
        return Ok(Change::Created);
    };
    check_regular(path, &meta)?;
    let current = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if current != content {
        replace_with(path, mode, owner, &mut |f| f.write_all(content))?;
        return Ok(Change::Updated);
    }
    fix_mode_owner(path, &meta, mode, owner)
}

fn fix_mode_owner(path: &Path, meta: &fs::Metadata, mode: u32, owner: Owner) -> Result<Change> {
    let mut change = Change::Unchanged;
    if !owner_matches(meta, owner) {
        set_owner(path, owner)?;
        change = Change::Updated;
    }
    // chown may clear set-id bits, so the mode goes second.
    if meta.mode() & 0o7777 != mode || change == Change::Updated {
        if meta.mode() & 0o7777 != mode {
            change = Change::Updated;
        }
        set_mode(path, mode)?;
    }
    Ok(change)
}

/// Makes `path` a directory with `mode` and `owner` (parents: 0755, as they are).
pub fn ensure_dir(path: &Path, mode: u32, owner: Owner) -> Result<Change> {
    match lstat(path)? {
        None => {
            make_parents(path)?;
            fs::DirBuilder::new()
                .mode(mode)
                .create(path)
                .with_context(|| format!("cannot create directory {}", path.display()))?;
            set_owner(path, owner)?;
            set_mode(path, mode)?;
            Ok(Change::Created)
        }
        Some(meta) if meta.file_type().is_dir() => fix_mode_owner(path, &meta, mode, owner),
        Some(_) => bail!(
            "{} exists but is not a directory: move it out of the way and run again",
            path.display()
        ),
    }
}

/// True when the two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| fs::File::open(p).with_context(|| format!("cannot read {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    if la != lb {
        return Ok(false);
    }
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let n = fa
            .read(&mut ba)
            .with_context(|| format!("cannot read {}", a.display()))?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])
            .with_context(|| format!("cannot read {}", b.display()))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Makes `dst` a copy of the file `src` with `mode` and `owner`. When both name the
/// same file (the installed binary running `install` on itself) nothing is copied.
pub fn copy_file(src: &Path, dst: &Path, mode: u32, owner: Owner) -> Result<Change> {
    let src_meta = fs::metadata(src).with_context(|| {
        format!(
            "cannot read the binary {}: pass --binary PATH",
            src.display()
        )
    })?;
    if !src_meta.is_file() {
        bail!(
            "{} is not a file: pass --binary PATH to the outpost binary",
            src.display()
        );
    }
    let existing = lstat(dst)?;
    if let Some(meta) = &existing {
        check_regular(dst, meta)?;
        let same_inode = meta.dev() == src_meta.dev() && meta.ino() == src_meta.ino();
        if same_inode || same_bytes(src, dst)? {
            return fix_mode_owner(dst, meta, mode, owner);
        }
    }
    let mut input =
        fs::File::open(src).with_context(|| format!("cannot read the binary {}", src.display()))?;
    replace_with(dst, mode, owner, &mut |f| {
        std::io::copy(&mut input, f).map(|_| ())
    })?;
    Ok(if existing.is_some() {
        Change::Updated
    } else {
        Change::Created
    })
}

/// Removes the file (or symlink) at `path`.
pub fn remove_file(path: &Path) -> Result<Change> {
    match lstat(path)? {
        None => Ok(Change::Absent),
        Some(meta) if meta.file_type().is_dir() => bail!(
            "{} is a directory where a file was expected: remove it by hand",
            path.display()
        ),
        Some(_) => {
            fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
            Ok(Change::Removed)
        }
    }
}

/// Removes the directory `path` and everything in it.
pub fn remove_tree(path: &Path) -> Result<Change> {
    match lstat(path)? {
        None => Ok(Change::Absent),
        Some(meta) if meta.file_type().is_dir() => {
            fs::remove_dir_all(path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            Ok(Change::Removed)
        }
        Some(_) => remove_file(path),
    }
}

/// Removes the directory `path` when it is empty; leaves it (Unchanged) otherwise.
pub fn remove_dir_if_empty(path: &Path) -> Result<Change> {
    match lstat(path)? {
        None => Ok(Change::Absent),
        Some(meta) if meta.file_type().is_dir() => {
            let empty = fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .next()
                .is_none();
            if !empty {
                return Ok(Change::Unchanged);
            }
            fs::remove_dir(path).with_context(|| format!("cannot remove {}", path.display()))?;
            Ok(Change::Removed)
        }
        Some(_) => Ok(Change::Unchanged),
    }
}

/// Reads a text file, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Rewrites an existing text file (passwd, group, fstab...) with new contents, keeping
/// its mode and owner; creates it with `mode` (root-owned) when it did not exist.
pub fn rewrite_text(path: &Path, content: &str, new_mode: u32) -> Result<Change> {
    match lstat(path)? {
        Some(meta) => {
            check_regular(path, &meta)?;
            let mode = meta.mode() & 0o7777;
            write_file(
                path,
                content.as_bytes(),
                mode,
                Some((meta.uid(), meta.gid())),
            )
        }
        None => write_file(path, content.as_bytes(), new_mode, root_owner()),
    }
}
