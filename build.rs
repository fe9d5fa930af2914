//! The release binary's code layout. An idle worker's resident memory is mostly its own
//! code: the kernel maps a binary's pages 64 KiB at a time around each fault, and the
//! code a serving worker runs (accepting, HTTP, routing, the event log, a task's life)
//! is strewn over megabytes of text among code that only start-up or rare errors run.
//! `link/hot-<env>.txt` (gnu, musl) lists the functions serving runs, in the order a
//! worker first needs them; the linker (lld, the one rustc ships) places them first,
//! together, so serving touches a few hundred KiB of text instead of most of it. The
//! lists are made by `link/profile-layout` (docs/bench.md, "Code layout"). Symbol
//! names carry hashes of the build's settings: a name the linker no longer finds is
//! skipped, so a stale list costs memory, never correctness.
//!
//! Only release builds for x86_64 Linux, and only where rustc's own lld is there (the
//! `gcc-ld` wrapper in its sysroot); anything else links as it always did.
//! `OUTPOST_LINK_MAP=<file>` also writes the linker's map (the profiler's way from
//! addresses back to names); `OUTPOST_NO_CODE_LAYOUT=1` links without the list.

use std::path::{Path, PathBuf};

fn main() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let list = PathBuf::from(format!("link/hot-{}.txt", var("CARGO_CFG_TARGET_ENV")));
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=OUTPOST_NO_CODE_LAYOUT");
    println!("cargo:rerun-if-env-changed=OUTPOST_LINK_MAP");
    if var("PROFILE") != "release"
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ARCH") != "x86_64"
    {
        return;
    }
    let Some(gcc_ld) = rust_lld_wrapper(&var("RUSTC"), &var("HOST")) else {
        println!(
            "cargo:warning=rustc's lld (lib/rustlib/<host>/bin/gcc-ld) was not found: the binary links without its code layout"
        );
        return;
    };
    let mut args = vec![format!("-B{}", gcc_ld.display()), "-fuse-ld=lld".into()];
    if list.is_file() && std::env::var_os("OUTPOST_NO_CODE_LAYOUT").is_none() {
        let list = Path::new(&var("CARGO_MANIFEST_DIR")).join(&list);
        args.push(format!("-Wl,--symbol-ordering-file={}", list.display()));
        args.push("-Wl,--no-warn-symbol-ordering".into());
    }
    if let Some(map) = std::env::var_os("OUTPOST_LINK_MAP") {
        args.push(format!("-Wl,-Map={}", Path::new(&map).display()));
    }
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}

/// The directory holding rustc's `ld.lld` wrapper for the C compiler driver.
fn rust_lld_wrapper(rustc: &str, host: &str) -> Option<PathBuf> {
    let rustc = if rustc.is_empty() { "rustc" } else { rustc };
    let out = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let dir = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld");
    dir.join("ld.lld").is_file().then_some(dir)
}
