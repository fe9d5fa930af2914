//! `bench __ticker COUNT INTERVAL_MS`: the latency agent. Prints the wall-clock time in
//! nanoseconds, one line every INTERVAL_MS, COUNT times, so that a reader can tell how
//! long each line took to reach it.

use anyhow::{Context, Result};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn main(args: &[String]) -> Result<()> {
    let count: u64 = args
        .first()
        .and_then(|s| s.parse().ok())
        .context("usage: bench __ticker COUNT INTERVAL_MS")?;
    let interval_ms: u64 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .context("usage: bench __ticker COUNT INTERVAL_MS")?;
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        // A closed terminal ends the ticker quietly.
        if writeln!(out, "{}", now_ns())
            .and_then(|_| out.flush())
            .is_err()
        {
            break;
        }
        let next = start + Duration::from_millis(interval_ms * (i + 1));
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// Splits a byte stream into timestamp lines; each complete line yields its nanoseconds.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    pub fn push(&mut self, chunk: &[u8], mut on_line: impl FnMut(u64)) {
        self.partial.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &self.partial[start..]) {
            let line = &self.partial[start..start + nl];
            if let Some(ns) = std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                on_line(ns);
            }
            start += nl + 1;
        }
        self.partial.drain(..start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut l = Lines::default();
        let mut got = Vec::new();
        l.push(b"12\r\n3", |n| got.push(n));
        l.push(b"4\r\nx\r\n56\r\n", |n| got.push(n));
        assert_eq!(got, vec![12, 34, 56]);
    }
}
