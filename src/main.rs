//! The `outpost` command: parses the subcommand and hands over to the library.

/// musl's allocator is slow and loose with memory under many connections; jemalloc is
/// what the static binary uses (as ripgrep's musl builds do).
#[cfg(all(target_env = "musl", target_pointer_width = "64"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them). One arena instead of 4 per CPU: 470 KiB less idle RSS and the same
/// instructions per h2 request (callgrind); the per-thread caches stay on (turning them
/// off saved 200 KiB more but cost 17-43% more instructions per request). docs/bench.md.
#[cfg(all(target_env = "musl", target_pointer_width = "64"))]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

/// musl's memcpy and memmove are slow for small copies; fastmem's replace them.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
extern crate fastmem;

fn main() {
    // The uid killer (see outpost::process::exec) runs before anything else: no
    // runtime, no logging, no threads.
    let mut raw = std::env::args_os().skip(1);
    if raw.next().as_ref().and_then(|a| a.to_str()) == Some(outpost::process::exec::KILL_UID_ARG) {
        let rest: Vec<_> = raw.collect();
        std::process::exit(outpost::process::exec::kill_uid_main(&rest));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = outpost::cli::run(args);
    std::process::exit(code);
}
