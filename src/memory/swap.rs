//! Swap files: make one without holes (fallocate, else zeros), mode 0600, with a v1 swap
//! header written by hand, and `swapon` it; idempotent across restarts (an active file
//! of the right size is reused, a wrong-sized one replaced). Also `swapoff`, the list of
//! active swap areas from /proc/swaps, vm.swappiness, and the `outpost swap` command.

mod cli;
mod header;

pub use cli::swap_cli;

use super::size::format_size;
use super::view::unescape_octal;
use serde::Serialize;
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// What [`ensure`] did.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SwapOutcome {
    /// A new swap file was made and turned on.
    Created,
    /// The file was already active with the right size, or an intact file of the right
    /// size was turned on again (after a reboot).
    Reused,
    /// A file of the wrong size (or a broken one) was turned off, remade and turned on.
    Replaced,
    /// Size 0: any swap file at the path was turned off and deleted.
    Disabled,
    /// Swap cannot be used here (no CAP_SYS_ADMIN, kernel without swap, data dir in
    /// memory); nothing was changed. Log `reason` once and run on.
    NotPermitted { reason: String },
}

impl fmt::Display for SwapOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwapOutcome::Created => f.write_str("created"),
            SwapOutcome::Reused => f.write_str("reused"),
            SwapOutcome::Replaced => f.write_str("replaced"),
            SwapOutcome::Disabled => f.write_str("disabled"),
            SwapOutcome::NotPermitted { reason } => write!(f, "not permitted: {reason}"),
        }
    }
}

/// Why [`ensure`] or [`off`] failed. The message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}{hint}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
        /// Empty, or "; what to do".
        hint: String,
    },
}

/// One line of /proc/swaps; sizes in bytes.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ActiveSwap {
    pub path: PathBuf,
    /// "file" or "partition".
    pub kind: String,
    /// Usable size (the header page not counted).
    pub size: u64,
    pub used: u64,
    pub priority: i32,
}

/// The active swap areas, from /proc/swaps (empty when it cannot be read).
pub fn status() -> Vec<ActiveSwap> {
    fs::read_to_string("/proc/swaps")
        .map(|text| parse_proc_swaps(&text))
        .unwrap_or_default()
}

fn parse_proc_swaps(text: &str) -> Vec<ActiveSwap> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let path = PathBuf::from(unescape_octal(fields.next()?));
            let kind = fields.next()?.to_string();
            let size_kib: u64 = fields.next()?.parse().ok()?;
            let used_kib: u64 = fields.next()?.parse().ok()?;
            let priority = fields.next()?.parse().ok()?;
            Some(ActiveSwap {
                path,
                kind,
                size: size_kib * 1024,
                used: used_kib * 1024,
                priority,
            })
        })
        .collect()
}

/// Makes sure a swap file of `size` bytes (rounded down to whole pages) is active at
/// `path`, and sets vm.swappiness when given. Size 0 turns off and deletes it.
pub fn ensure(path: &Path, size: u64, swappiness: Option<u32>) -> Result<SwapOutcome, SwapError> {
    let path = absolute(path)?;
    let page = page_size();
    if size == 0 {
        if let Some(reason) = lacks_cap_sys_admin() {
            if active_entry(&path).is_some() {
                return Ok(SwapOutcome::NotPermitted { reason });
            }
        }
        return match remove(&path) {
            Ok(()) => Ok(SwapOutcome::Disabled),
            Err(e) => not_permitted_or(e),
        };
    }
    let size = size / page * page;
    let pages = size / page;
    if pages < header::MIN_PAGES {
        return Err(SwapError::Invalid(format!(
            "a swap file of {} is too small: use at least {} (e.g. 512M or 1G)",
            format_size(size),
            format_size(header::MIN_PAGES * page)
        )));
    }
    if let Some(reason) = lacks_cap_sys_admin() {
        return Ok(SwapOutcome::NotPermitted { reason });
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    // Check the filesystem before creating anything on it.
    let existing_dir = dir
        .ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/"));
    if let Some(reason) = unsuitable_filesystem(existing_dir) {
        return Ok(SwapOutcome::NotPermitted { reason });
    }
    fs::create_dir_all(dir)
        .map_err(|e| io_err(format!("cannot create {}", dir.display()), e, ""))?;
    if let Some(value) = swappiness {
        set_swappiness(value)?;
    }

    let existing_len = fs::symlink_metadata(&path).ok().map(|m| m.len());
    let outcome = if let Some(active) = active_entry(&path) {
        if existing_len == Some(size) && active.size <= size {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| io_err(format!("cannot chmod 600 {}", path.display()), e, ""))?;
            return Ok(SwapOutcome::Reused);
        }
        if let Err(e) = swapoff(&path) {
            return not_permitted_or(e);
        }
        SwapOutcome::Replaced
    } else if existing_len.is_some() {
        if is_intact(&path, size, page) {
            match swapon(&path) {
                Ok(()) => return Ok(SwapOutcome::Reused),
                Err(e) if is_permission_error(&e) => return not_permitted_or(e),
                // Refused as it is: make it anew below.
                Err(_) => {}
            }
        }
        SwapOutcome::Replaced
    } else {
        SwapOutcome::Created
    };
    create(&path, size, page)?;
    if let Err(e) = swapon(&path) {
        let _ = fs::remove_file(&path);
        return not_permitted_or(e);
    }
    Ok(outcome)
}

/// Turns off the swap file at `path` if it is active; true if it was. Keeps the file.
pub fn off(path: &Path) -> Result<bool, SwapError> {
    let path = absolute(path)?;
    if active_entry(&path).is_none() {
        return Ok(false);
    }
    swapoff(&path)?;
    Ok(true)
}

/// Turns off the swap file at `path` if active and deletes it (no error if absent).
pub fn remove(path: &Path) -> Result<(), SwapError> {
    let path = absolute(path)?;
    off(&path)?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("cannot delete {}", path.display()), e, "")),
    }
}

/// Writes /proc/sys/vm/swappiness (0-200; how readily the kernel swaps).
pub fn set_swappiness(value: u32) -> Result<(), SwapError> {
    if value > 200 {
        return Err(SwapError::Invalid(format!(
            "swappiness {value} is out of range: use 0 to 200 (the kernel default is 60)"
        )));
    }
    fs::write("/proc/sys/vm/swappiness", value.to_string()).map_err(|e| {
        io_err(
            format!("cannot set vm.swappiness to {value}"),
            e,
            "; /proc/sys is read-only in most containers: set it on the host, or leave the swappiness out",
        )
    })
}

/// Reads /proc/sys/vm/swappiness.
pub fn swappiness() -> io::Result<u32> {
    let text = fs::read_to_string("/proc/sys/vm/swappiness")?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("swappiness {text:?}")))
}

fn io_err(context: String, source: io::Error, hint: &str) -> SwapError {
    SwapError::Io {
        context,
        source,
        hint: hint.to_string(),
    }
}

/// A permission or missing-feature failure becomes `NotPermitted`; others stay errors.
fn not_permitted_or(e: SwapError) -> Result<SwapOutcome, SwapError> {
    match &e {
        SwapError::Io {
            context, source, ..
        } if is_permission(source) => {
            let why = if source.raw_os_error() == Some(libc::ENOSYS) {
                "this kernel has no swap support"
            } else {
                "swapon/swapoff need CAP_SYS_ADMIN, which this process lacks (Cloud Run never grants it)"
            };
            Ok(SwapOutcome::NotPermitted {
                reason: format!("{context}: {why}"),
            })
        }
        _ => Err(e),
    }
}

fn is_permission_error(e: &SwapError) -> bool {
    matches!(e, SwapError::Io { source, .. } if is_permission(source))
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS))
}

fn absolute(path: &Path) -> Result<PathBuf, SwapError> {
    if path.as_os_str().is_empty() {
        return Err(SwapError::Invalid(
            "the swap file path is empty: give a file path such as /var/lib/outpost/swapfile"
                .into(),
        ));
    }
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| {
        io_err(
            "cannot resolve the swap file path".into(),
            e,
            "; give an absolute path",
        )
    })?;
    Ok(cwd.join(path))
}

/// The /proc/swaps entry for `path` (compared after resolving symlinks).
fn active_entry(path: &Path) -> Option<ActiveSwap> {
    let resolved = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    status()
        .into_iter()
        .find(|s| s.path == resolved || s.path == path)
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let value = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(value)
        .ok()
        .filter(|&v| v >= 4096)
        .unwrap_or(4096)
}

/// Some(reason) when this thread's CapEff lacks CAP_SYS_ADMIN (bit 21); the kernel
/// checks the calling thread, so /proc/thread-self first.
fn lacks_cap_sys_admin() -> Option<String> {
    let status = fs::read_to_string("/proc/thread-self/status")
        .or_else(|_| fs::read_to_string("/proc/self/status"))
        .ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    if caps & (1 << 21) != 0 {
        return None;
    }
    Some(
        "swap needs CAP_SYS_ADMIN, which this process lacks (Cloud Run never grants it; \
         on a VM run outpost as root)"
            .into(),
    )
}

/// Some(reason) when `dir` is on a filesystem that cannot usefully hold swap.
#[allow(clippy::unnecessary_cast)]
fn unsuitable_filesystem(dir: &Path) -> Option<String> {
    let fs_type = nix::sys::statfs::statfs(dir).ok()?.filesystem_type().0 as u64;
    let name = match fs_type {
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0x794c_7630 => "overlayfs",
        _ => return None,
    };
    Some(format!(
        "{} is on {name}, which cannot hold a working swap file (tmpfs/ramfs live in memory, \
         overlayfs refuses swapon): point OUTPOST_DATA or --path at a disk",
        dir.display()
    ))
}

/// Whether an inactive file at `path` is a complete swap file of `size` bytes.
fn is_intact(path: &Path, size: u64, page: u64) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    let mut first = vec![0u8; page as usize];
    meta.is_file()
        && meta.len() == size
        && meta.mode() & 0o777 == 0o600
        && meta.blocks() * 512 >= size
        && File::open(path)
            .and_then(|mut f| f.read_exact(&mut first))
            .is_ok()
        && header::is_valid(&first, page as usize, size / page)
}

/// Writes a new swap file: allocated without holes, mode 0600, header on page 0.
#[allow(clippy::unnecessary_cast)] // statvfs field types differ between libcs
fn create(path: &Path, size: u64, page: u64) -> Result<(), SwapError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io_err(
                format!("cannot delete the old {}", path.display()),
                e,
                "",
            ))
        }
    }
    if let Ok(vfs) = nix::sys::statvfs::statvfs(path.parent().unwrap_or(Path::new("/"))) {
        let free = (vfs.blocks_available() as u64).saturating_mul(vfs.fragment_size() as u64);
        if free < size {
            return Err(SwapError::Invalid(format!(
                "only {} free where {} goes, not enough for {} of swap: free disk space or ask for less",
                format_size(free),
                path.display(),
                format_size(size)
            )));
        }
    }
    let result = write_swap_file(path, size, page);
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

fn write_swap_file(path: &Path, size: u64, page: u64) -> Result<(), SwapError> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_err(ctx("cannot create"), e, "; check the directory is writable"))?;
    // The umask cannot widen 0600, but make sure of the exact mode.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err(ctx("cannot chmod 600"), e, ""))?;
    allocate(&mut file, size, false).map_err(|e| {
        let hint = no_space_hint(&e);
        io_err(ctx("cannot allocate"), e, hint)
    })?;
    let first = header::build(page as usize, size / page, header::new_uuid()).map_err(|e| {
        SwapError::Invalid(format!(
            "cannot make a swap header for {}: {e}",
            path.display()
        ))
    })?;
    file.write_all_at(&first, 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let hint = no_space_hint(&e);
            io_err(ctx("cannot write the swap header to"), e, hint)
        })
}

fn no_space_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        "; the disk is full: free space or ask for less swap"
    } else {
        ""
    }
}

/// Gives `file` `size` bytes of real blocks: fallocate, or where the filesystem does not
/// support it (or `zeros` is set) by writing zeros.
pub(crate) fn allocate(file: &mut File, size: u64, zeros: bool) -> io::Result<()> {
    if !zeros {
        let len = libc::off_t::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
        // SAFETY: fallocate on an fd we own; mode 0 allocates blocks and extends the size.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(err);
        }
    }
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    file.set_len(0)?;
    let mut written = 0u64;
    for _ in 0..size.div_ceil(CHUNK) {
        let n = CHUNK.min(size - written);
        file.write_all(&zeros[..n as usize])?;
        written += n;
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, SwapError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SwapError::Invalid(format!("{} holds a NUL byte", path.display())))
}

fn swapon(path: &Path) -> Result<(), SwapError> {
    let c = c_path(path)?;
    // SAFETY: swapon reads the NUL-terminated path; flags 0 = default priority.
    if unsafe { libc::swapon(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    let hint = match e.raw_os_error() {
        Some(libc::EINVAL) => {
            "; the kernel refused the file: its filesystem may not support swap files \
             (btrfs needs a nodatacow file, NFS and overlayfs cannot): put the data dir on ext4 or xfs"
        }
        Some(libc::EBUSY) => "; it is already in use as swap (under another name?)",
        _ => "",
    };
    Err(io_err(format!("swapon {} failed", path.display()), e, hint))
}

fn swapoff(path: &Path) -> Result<(), SwapError> {
    let c = c_path(path)?;
    // SAFETY: swapoff reads the NUL-terminated path.
    if unsafe { libc::swapoff(c.as_ptr()) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    let hint = if e.raw_os_error() == Some(libc::ENOMEM) {
        "; there is not enough free memory to take the swapped-out pages back: stop some work first"
    } else {
        ""
    };
    Err(io_err(
        format!("swapoff {} failed", path.display()),
        e,
        hint,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_swaps_with_escaped_names() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /work/a\\040b/swapfile                 file\t\t65532\t\t12\t\t-2\n\
                    /dev/vdb                                partition\t1048572\t\t0\t\t10\n";
        let swaps = parse_proc_swaps(text);
        assert_eq!(
            swaps,
            vec![
                ActiveSwap {
                    path: PathBuf::from("/work/a b/swapfile"),
                    kind: "file".into(),
                    size: 65532 * 1024,
                    used: 12 * 1024,
                    priority: -2,
                },
                ActiveSwap {
                    path: PathBuf::from("/dev/vdb"),
                    kind: "partition".into(),
                    size: 1048572 * 1024,
                    used: 0,
                    priority: 10,
                },
            ]
        );
        assert!(parse_proc_swaps("Filename Type Size Used Priority\n").is_empty());
    }

    #[test]
    fn writing_zeros_leaves_no_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("zeros");
        let mut file = File::create(&path).unwrap();
        let size = (3 << 20) + 4096;
        allocate(&mut file, size, true).unwrap();
        file.sync_all().unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(meta.blocks() * 512 >= size, "blocks {}", meta.blocks());
    }

    #[test]
    fn bad_sizes_and_swappiness_are_refused_with_advice() {
        let tmp = tempfile::tempdir().unwrap();
        let err = ensure(&tmp.path().join("s"), 4096, None).unwrap_err();
        assert!(err.to_string().contains("at least"), "{err}");
        assert!(!tmp.path().join("s").exists());
        let err = set_swappiness(201).unwrap_err();
        assert!(err.to_string().contains("0 to 200"), "{err}");
        assert!(ensure(Path::new(""), 1 << 20, None).is_err());
    }

    #[test]
    fn outcomes_serialize_for_logs_and_json() {
        let np = SwapOutcome::NotPermitted {
            reason: "no".into(),
        };
        assert_eq!(np.to_string(), "not permitted: no");
        let json = serde_json::to_value(&np).unwrap();
        assert_eq!(json["outcome"], "not_permitted");
        assert_eq!(json["reason"], "no");
    }
}
