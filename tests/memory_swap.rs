//! Real swap files on the real kernel (run as root): made without holes, mode 0600,
//! active in /proc/swaps, reused, replaced when the size changes, re-activated after a
//! swapoff, refused on tmpfs, and driven through `outpost swap`. Every swap file made
//! here is turned off and deleted by a Drop guard, whatever happens.

use outpost::memory::swap::{self, SwapOutcome};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// A directory on a real disk (the cargo target dir: /tmp may be tmpfs) whose swap
/// file is turned off and deleted on drop.
struct SwapDir {
    dir: PathBuf,
}

impl SwapDir {
    fn new(name: &str) -> SwapDir {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("memory-swap-{name}-{}", std::process::id()));
        let guard = SwapDir { dir };
        guard.cleanup();
        fs::create_dir_all(&guard.dir).unwrap();
        guard
    }
    fn file(&self) -> PathBuf {
        self.dir.join("swapfile")
    }
    fn cleanup(&self) {
        for entry in swap::status() {
            if entry.path.starts_with(&self.dir) {
                let _ = swap::off(&entry.path);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for SwapDir {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The /proc/swaps entry for `path`, if active.
fn active(path: &Path) -> Option<swap::ActiveSwap> {
    let real = fs::canonicalize(path).ok()?;
    swap::status().into_iter().find(|s| s.path == real)
}

fn assert_solid_0600_file(path: &Path, size: u64) {
    let meta = fs::metadata(path).unwrap();
    assert_eq!(meta.len(), size, "file length");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode");
    assert!(
        meta.blocks() * 512 >= size,
        "the file has holes: {} blocks of 512 for {size} bytes",
        meta.blocks()
    );
}

#[test]
fn swap_file_is_created_reused_replaced_and_disabled() {
    let guard = SwapDir::new("cycle");
    let path = guard.file();
    // Set swappiness to what it is already: exercises the write without changing it.
    let swappiness = swap::swappiness().unwrap();

    let outcome = swap::ensure(&path, 16 * MIB, Some(swappiness)).unwrap();
    assert_eq!(
        outcome,
        SwapOutcome::Created,
        "swapon must work here (root, ext4 target dir)"
    );
    assert_solid_0600_file(&path, 16 * MIB);
    let entry = active(&path).expect("the new swap file is in /proc/swaps");
    assert_eq!(entry.kind, "file");
    assert_eq!(
        entry.size,
        16 * MIB - PAGE,
        "usable size: all pages but the header"
    );
    assert_eq!(swap::swappiness().unwrap(), swappiness);

    // A restart: same size, already active.
    assert_eq!(
        swap::ensure(&path, 16 * MIB, None).unwrap(),
        SwapOutcome::Reused
    );
    assert_eq!(active(&path).unwrap().size, 16 * MIB - PAGE);

    // A different size: turned off, remade, turned on.
    assert_eq!(
        swap::ensure(&path, 24 * MIB, None).unwrap(),
        SwapOutcome::Replaced
    );
    assert_solid_0600_file(&path, 24 * MIB);
    assert_eq!(active(&path).unwrap().size, 24 * MIB - PAGE);

    // After a reboot the file is there but off: it is turned on again as it is.
    assert!(swap::off(&path).unwrap());
    assert!(active(&path).is_none());
    assert!(!swap::off(&path).unwrap(), "a second off has nothing to do");
    let inode = fs::metadata(&path).unwrap().ino();
    assert_eq!(
        swap::ensure(&path, 24 * MIB, None).unwrap(),
        SwapOutcome::Reused
    );
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "the same file");
    assert!(active(&path).is_some());

    // Size 0: off and deleted.
    assert_eq!(swap::ensure(&path, 0, None).unwrap(), SwapOutcome::Disabled);
    assert!(active(&path).is_none());
    assert!(!path.exists());
}

#[test]
fn a_broken_inactive_file_is_replaced() {
    let guard = SwapDir::new("broken");
    let path = guard.file();
    // Right length, no header: what `truncate` alone leaves (and full of holes).
    fs::write(&path, b"").unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(12 * MIB)
        .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        swap::ensure(&path, 12 * MIB, None).unwrap(),
        SwapOutcome::Replaced
    );
    assert_solid_0600_file(&path, 12 * MIB);
    assert_eq!(active(&path).unwrap().size, 12 * MIB - PAGE);
}

#[test]
fn size_is_rounded_down_to_whole_pages() {
    let guard = SwapDir::new("round");
    let path = guard.file();
    let asked = 10 * MIB + 1000;
    assert_eq!(
        swap::ensure(&path, asked, None).unwrap(),
        SwapOutcome::Created
    );
    assert_solid_0600_file(&path, 10 * MIB);
    assert_eq!(
        swap::ensure(&path, asked, None).unwrap(),
        SwapOutcome::Reused
    );
}

#[test]
fn tmpfs_is_refused_without_touching_it() {
    let dir = Path::new("/dev/shm").join(format!("outpost-swap-test-{}", std::process::id()));
    let fs_type = std::process::Command::new("stat")
        .args(["-f", "-c", "%T", "/dev/shm"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fs_type.stdout).trim(), "tmpfs");
    let outcome = swap::ensure(&dir.join("swapfile"), 16 * MIB, None).unwrap();
    let exists = dir.exists();
    let _ = fs::remove_dir_all(&dir);
    match outcome {
        SwapOutcome::NotPermitted { reason } => assert!(reason.contains("tmpfs"), "{reason}"),
        other => panic!("swap on tmpfs gave {other:?}"),
    }
    assert!(!exists, "nothing is created on an unsuitable filesystem");
}

#[test]
fn the_swap_command_turns_it_on_and_off() {
    let guard = SwapDir::new("cli");
    let path = guard.file();
    let args = |text: &str| -> Vec<String> { text.split_whitespace().map(String::from).collect() };
    let p = path.display().to_string();
    swap::swap_cli(&args(&format!("ensure 12M --path {p}"))).unwrap();
    assert_eq!(active(&path).unwrap().size, 12 * MIB - PAGE);
    swap::swap_cli(&args("status")).unwrap();
    swap::swap_cli(&args(&format!("off --path={p}"))).unwrap();
    assert!(active(&path).is_none());
    assert!(!path.exists());
    let err = swap::swap_cli(&args(&format!("ensure 4K --path {p}"))).unwrap_err();
    assert!(format!("{err:#}").contains("at least"), "{err:#}");
}

/// Drops CAP_SYS_ADMIN from the calling thread's effective set (capabilities are per
/// thread, so the rest of the test process keeps it).
fn drop_cap_sys_admin_in_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the ABI wants.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << 21);
        assert_eq!(libc::syscall(libc::SYS_capset, &header, data.as_ptr()), 0);
    }
}

#[test]
fn without_cap_sys_admin_it_is_not_permitted_and_touches_nothing() {
    let guard = SwapDir::new("nocap");
    let path = guard.file();
    let p = path.clone();
    let outcome = std::thread::spawn(move || {
        drop_cap_sys_admin_in_this_thread();
        swap::ensure(&p, 16 * MIB, None)
    })
    .join()
    .unwrap()
    .unwrap();
    match outcome {
        SwapOutcome::NotPermitted { reason } => {
            assert!(reason.contains("CAP_SYS_ADMIN"), "{reason}")
        }
        other => panic!("without CAP_SYS_ADMIN ensure gave {other:?}"),
    }
    assert!(!path.exists(), "no file is made when swap is not permitted");
}
