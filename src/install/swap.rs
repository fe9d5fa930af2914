//! The VM's swap file, owned by the system rather than by the worker: `outpost install`
//! makes `/var/lib/outpost.swap` (zero-filled, mode 0600, root, with a swap header) and
//! a `/etc/fstab` line so the boot turns it on (OpenRC's `swap` service, systemd's
//! fstab generator); on the live root it is also turned on at once.
//!
//! Why not `OUTPOST_SWAP` in `outpost serve`: the service runs as the unprivileged
//! `outpost` user (agents such as Claude Code refuse to skip permissions as root), and
//! only root may `swapon`. The file also stays outside the data dir: `outpost` can
//! rename entries there, and root must never swap onto a file its user could replace.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::fsops::{self, Change};

/// Where the swap file lives, as seen from inside the target root.
pub const SWAP_FILE: &str = "/var/lib/outpost.swap";
/// The comment line written above the fstab entry.
const FSTAB_TAG: &str = "# outpost swap file (written by outpost install)";
/// The smallest swap file accepted.
pub const MIN_SIZE: u64 = 1 << 20;

const MAGIC: &[u8; 10] = b"SWAPSPACE2";

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// The size actually used: `size` rounded down to whole pages.
pub fn rounded(size: u64) -> u64 {
    size / page_size() * page_size()
}

/// The fstab line for the swap file.
pub fn fstab_line() -> String {
    format!("{SWAP_FILE} none swap sw,nofail 0 0")
}

/// Checks the first page of an existing swap file: magic, version 1, page count.
fn header_ok(path: &Path, size: u64) -> Result<bool> {
    let page = page_size();
    let mut f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut buf = vec![0u8; page as usize];
    if f.read_exact(&mut buf).is_err() {
        return Ok(false);
    }
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    Ok(&buf[page as usize - 10..] == MAGIC
        && word(1024) == 1
        && u64::from(word(1028)) == size / page - 1)
}

/// Writes the swap header (what `mkswap` writes) into page 0 of a zero-filled file.
fn write_header(f: &mut fs::File, size: u64) -> std::io::Result<()> {
    let page = page_size();
    let last_page = u32::try_from(size / page - 1).unwrap_or(u32::MAX);
    let mut hdr = Vec::with_capacity(12);
    hdr.extend_from_slice(&1u32.to_ne_bytes()); // version
    hdr.extend_from_slice(&last_page.to_ne_bytes());
    hdr.extend_from_slice(&0u32.to_ne_bytes()); // no bad pages
    f.seek(SeekFrom::Start(1024))?;
    f.write_all(&hdr)?;
    f.seek(SeekFrom::Start(page - 10))?;
    f.write_all(MAGIC)
}

/// True when the kernel lists `path` in /proc/swaps (live root only).
pub fn is_active(path: &Path) -> bool {
    let Ok(swaps) = fs::read_to_string("/proc/swaps") else {
        return false;
    };
    let want = path.to_string_lossy();
    swaps
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().next() == Some(want.as_ref()))
}

fn c_path(path: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

/// Turns the swap file on.
pub fn swapon(path: &Path) -> Result<()> {
    let c = c_path(path)?;
    // SAFETY: c is a valid NUL-terminated path; flags 0.
    if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cannot turn swap on with {}: {e}", path.display());
    }
    Ok(())
}

/// Turns the swap file off (needed before it is resized or removed).
pub fn swapoff(path: &Path) -> Result<()> {
    let c = c_path(path)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "cannot turn swap off on {}: {e} (not enough free memory to take its pages back? \
             stop the service and try again)",
            path.display()
        );
    }
    Ok(())
}

/// Makes `path` a swap file of `size` bytes (a multiple of the page size).
pub fn ensure_file(path: &Path, size: u64, live: bool) -> Result<Change> {
    let existing = match fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if let Some(meta) = &existing {
        if !meta.file_type().is_file() {
            bail!("{} exists but is not a regular file: move it away and run again", path.display());
        }
        let owner_ok = !nix::unistd::geteuid().is_root() || (meta.uid() == 0 && meta.gid() == 0);
        if meta.len() == size && meta.mode() & 0o7777 == 0o600 && owner_ok && header_ok(path, size)? {
            return Ok(Change::Unchanged);
        }
        if live && is_active(path) {
            swapoff(path)?;
        }
    }
    let tmp = path.with_extension("swap.outpost-new");
    let result = (|| -> Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        // Zero-filled, never sparse: swapon refuses files with holes.
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])
                .with_context(|| format!("cannot write {} (disk full?)", tmp.display()))?;
            left -= n as u64;
        }
        write_header(&mut f, size).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot flush {}", tmp.display()))?;
        drop(f);
        if let Some((u, g)) = fsops::root_owner() {
            std::os::unix::fs::chown(&tmp, Some(u), Some(g))
                .with_context(|| format!("cannot give {} to root", tmp.display()))?;
        }
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    Ok(if existing.is_some() { Change::Updated } else { Change::Created })
}

/// Adds (`want`) or removes our line in the fstab text; other lines stay as they are.
pub fn fstab_with(text: &str, want: bool) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let ours = line == FSTAB_TAG || line.split_whitespace().next() == Some(SWAP_FILE);
        if !ours {
            out.push_str(line);
            out.push('\n');
        }
    }
    if want {
        out.push_str(FSTAB_TAG);
        out.push('\n');
        out.push_str(&fstab_line());
        out.push('\n');
    }
    out
}

/// Puts the fstab entry in `<root>/etc/fstab` (or takes it out).
pub fn ensure_fstab(root: &Path, want: bool) -> Result<Change> {
    let path = root.join("etc/fstab");
    let current = fsops::read_optional(&path)?;
    let Some(text) = current else {
        if !want {
            return Ok(Change::Absent);
        }
        return fsops::rewrite_text(&path, &fstab_with("", true), 0o644);
    };
    let ours = text
        .lines()
        .any(|l| l == FSTAB_TAG || l.split_whitespace().next() == Some(SWAP_FILE));
    if want && text.lines().any(|l| l == fstab_line()) && fstab_with(&text, true).len() == text.len() {
        return Ok(Change::Unchanged);
    }
    if !want && !ours {
        return Ok(Change::Absent);
    }
    fsops::rewrite_text(&path, &fstab_with(&text, want), 0o644)
}

/// Removes the swap file: off first when live.
pub fn remove_file(path: &Path, live: bool) -> Result<Change> {
    if live && is_active(path) {
        swapoff(path)?;
    }
    fsops::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_block_is_added_once_and_removed() {
        let base = "/dev/sda1 / ext4 defaults 0 1\n";
        let with = fstab_with(base, true);
        assert!(with.starts_with(base));
        assert_eq!(fstab_with(&with, true), with);
        assert_eq!(fstab_with(&with, false), base);
    }

    #[test]
    fn header_is_what_mkswap_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.swap");
        assert_eq!(ensure_file(&p, 2 << 20, false).unwrap(), Change::Created);
        assert!(header_ok(&p, 2 << 20).unwrap());
        assert_eq!(ensure_file(&p, 2 << 20, false).unwrap(), Change::Unchanged);
        assert_eq!(ensure_file(&p, 3 << 20, false).unwrap(), Change::Updated);
    }
}
