//! The `outpost` command: parses the subcommand and hands over to the library.

/// musl's allocator is slow and loose with memory under many connections; jemalloc is
/// what the static binary uses (as ripgrep's musl builds do).
#[cfg(all(target_env = "musl", target_pointer_width = "64"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them). One arena instead of 4 per CPU: 470 KiB less idle RSS and the same
/// instructions per h2 request (callgrind). The per-thread caches stay on (turning them
/// off saved 200 KiB more but cost 17-43% more instructions per request), but hold at
/// most 16 objects of a small size (200 by default) and 2 of a large one (20): 150 KiB
/// less just started and 280 KiB less after a task, for 1.5% more instructions per h2
/// `/hello` and 1% fewer per task (callgrind). docs/bench.md.
#[cfg(all(target_env = "musl", target_pointer_width = "64"))]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 85] =
    b"narenas:1,tcache_nslots_small_max:16,tcache_nslots_small_min:4,tcache_nslots_large:2\0";

/// musl's memcpy and memmove are slow for small copies; fastmem's replace them.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
extern crate fastmem;

/// tokio's multi-threaded scheduler calls `pow` each time a worker ends a batch of polls
/// (its poll-time average, `1 - 0.9^n`): on an idle worker that is the one call into
/// glibc's libm, and each brings back the 64 KiB windows of libm's code and tables
/// around it that `memory::shed` dropped (about 340 KiB resident, docs/bench.md). The
/// binary's own `pow` (the libm crate's, a port of musl's) takes the calls instead and
/// sits with the rest of the hot code. The static build has musl's in the binary
/// already.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

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

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// The binary's `pow` is the one tokio's scheduler calls: it must be libm's answer.
    #[test]
    fn the_binary_s_pow_answers_as_libm_does() {
        assert_eq!(super::pow(0.9, 1.0), 0.9);
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(4.0, 0.5), 2.0);
        assert!((super::pow(0.9, 3.0) - 0.729).abs() < 1e-15);
        assert!(super::pow(-1.0, 0.5).is_nan());
        assert_eq!(super::pow(0.0, 0.0), 1.0);
    }
}
