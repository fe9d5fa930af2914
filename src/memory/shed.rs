//! Sheds the worker's own executable pages (its binary's and its shared libraries')
//! that only start-up touched.
//!
//! Most of an idle worker's resident memory is its code: the kernel maps file pages
//! 64 KiB at a time around each fault, so parsing the config, opening the registry and
//! the rest of start-up leave megabytes of code and read-only data mapped that the
//! serving loop never runs (3.6 of 4.7 MiB in the static build, docs/bench.md); so do
//! a task's admission, start and clean-up. Once start-up is over, and again whenever
//! the worker has been quiet a while (supervise::memwatch), [`file_pages`] unmaps the
//! read-only, unmodified file mappings (the executable, and in the glibc build libc,
//! libm and the loader: 2 MiB more) with `MADV_DONTNEED`: the pages stay in the page
//! cache, and what the worker runs again faults back in (a minor fault, no I/O).
//!
//! Only mappings that are not writable and hold no anonymous (copied-on-write) page are
//! touched, so relocated data (RELRO) and `.data` are never reset to the file's bytes.
//!
//! [`heap`] does the same for the allocator: memory freed after a burst (a stream's
//! buffers, a crowd of subscribers) stays resident in the allocator's caches until it
//! decides to return it, which on a quiet worker may be never (jemalloc purges as it
//! allocates; glibc trims only the top of its main heap). After a 256 MiB stream run
//! the static build rested at 12-25 MiB instead of 4 (docs/bench.md).

use std::io::{BufRead, BufReader};

/// One file mapping that may be shed.
struct Span {
    start: usize,
    len: usize,
}

/// Drops the clean read-only pages of the files this process maps (its executable and
/// shared libraries) from its page tables. Returns the bytes of mappings advised; best
/// effort (errors are only reported).
pub fn file_pages() -> std::io::Result<usize> {
    let spans = clean_file_spans()?;
    let mut total = 0;
    for s in spans {
        // SAFETY: the range is a whole private mapping of a file that is read-only and
        // holds only unmodified file pages; MADV_DONTNEED on it drops page-table
        // entries, and a later access reads the same bytes back from the file.
        let r = unsafe { libc::madvise(s.start as *mut libc::c_void, s.len, libc::MADV_DONTNEED) };
        if r == 0 {
            total += s.len;
        }
    }
    Ok(total)
}

/// Hands the memory the allocator holds free back to the kernel: jemalloc's dirty and
/// muzzy pages of every arena (the static build), glibc's free chunks of every arena.
/// Best effort; returns whether the allocator said it did.
pub fn heap() -> bool {
    #[cfg(all(target_env = "musl", target_pointer_width = "64"))]
    {
        // "arena.<MALLCTL_ARENAS_ALL>.purge": every arena's unused dirty pages.
        // SAFETY: a NUL-terminated name and no old or new value, as mallctl's purge
        // takes them.
        let r = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        r == 0
    }
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes an integer and only touches the allocator's state.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(any(
        all(target_env = "musl", target_pointer_width = "64"),
        target_env = "gnu"
    )))]
    {
        false
    }
}

/// The private file mappings without `w` whose smaps entry says `Anonymous: 0 kB`.
fn clean_file_spans() -> std::io::Result<Vec<Span>> {
    let f = std::fs::File::open("/proc/self/smaps")?;
    let mut out = Vec::new();
    // The mapping being read: (span, eligible so far).
    let mut cur: Option<(Span, bool)> = None;
    for line in BufReader::new(f).lines() {
        let line = line?;
        if let Some((span, ok)) = parse_header(&line) {
            if let Some((s, true)) = cur.take() {
                out.push(s);
            }
            cur = Some((span, ok));
            continue;
        }
        if let Some(rest) = line.strip_prefix("Anonymous:") {
            if let Some((_, ok)) = cur.as_mut() {
                *ok &= rest.trim() == "0 kB";
            }
        }
    }
    if let Some((s, true)) = cur {
        out.push(s);
    }
    Ok(out)
}

/// A mapping's header line (`start-end perms offset dev inode path`): its span, and
/// whether it is a read-only private mapping of a regular file (not of a device, not
/// `[vdso]` or another of the kernel's). None for the other lines.
fn parse_header(line: &str) -> Option<(Span, bool)> {
    let mut parts = line.split_ascii_whitespace();
    let range = parts.next()?;
    let (a, b) = range.split_once('-')?;
    let start = usize::from_str_radix(a, 16).ok()?;
    let end = usize::from_str_radix(b, 16).ok()?;
    let perms = parts.next()?;
    if perms.len() != 4 {
        return None;
    }
    let path = parts.nth(3).unwrap_or("");
    let file = path.starts_with('/') && !path.starts_with("/dev/");
    let ok = perms.starts_with('r') && !perms.contains('w') && perms.ends_with('p') && file;
    Some((
        Span {
            start,
            len: end.saturating_sub(start),
        },
        ok,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_from_fields() {
        let (s, ok) = parse_header("5555-7777 r-xp 00043000 fe:00 712 /usr/bin/outpost").unwrap();
        assert!(ok);
        assert_eq!((s.start, s.len), (0x5555, 0x2222));
        let ok = |line: &str| parse_header(line).unwrap().1;
        assert!(!ok("5555-7777 rw-p 00043000 fe:00 712 /usr/bin/outpost"));
        assert!(ok("5555-7777 r--p 00000000 fe:00 713 /usr/lib/libc.so.6"));
        assert!(!ok("5555-7777 r--s 00000000 fe:00 713 /usr/lib/libc.so.6"));
        assert!(!ok("5555-7777 r--p 00000000 00:00 0 "));
        assert!(!ok("5555-7777 r-xp 00000000 00:00 0 [vdso]"));
        assert!(!ok("5555-7777 r--p 00000000 00:05 3 /dev/zero"));
        assert!(parse_header("Anonymous:             0 kB").is_none());
        assert!(parse_header("VmFlags: rd mr mw me sd").is_none());
    }

    #[test]
    fn shedding_keeps_the_process_working() {
        // Our own test binary: shed its clean pages, then run code and read data again.
        let advised = file_pages().unwrap();
        assert!(
            advised > 0,
            "the test binary has read-only mappings to shed"
        );
        let v: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        assert_eq!(v.iter().sum::<u64>(), 1_498_500);
        assert_eq!(format!("{:?}", Some("still here")), "Some(\"still here\")");
    }

    #[test]
    fn the_heap_is_handed_back_and_still_works() {
        // A burst freed, then trimmed: the allocator keeps working afterwards.
        let burst: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(burst);
        heap();
        let again = vec![7u8; 1 << 20];
        assert_eq!(again.iter().map(|&b| b as u64).sum::<u64>(), 7 << 20);
    }
}
