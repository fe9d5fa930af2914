//! The latest memory reading, shared without a lock: one writer (the memory watch, once
//! a second) stores each figure in its own atomic; readers (`/hello`, `/metrics`, on
//! every request) load them. A reader may see figures from two consecutive readings,
//! which is harmless for figures a second apart, and never contends with other readers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};

use crate::memory::{Level, Snapshot, Source};

/// `None` in an optional figure.
const NONE: u64 = u64::MAX;

#[derive(Default)]
pub struct LatestReading {
    set: AtomicBool,
    generation: AtomicU64,
    total: AtomicU64,
    available: AtomicU64,
    limit: AtomicU64,
    usage: AtomicU64,
    swap_total: AtomicU64,
    swap_free: AtomicU64,
    psi_bits: AtomicU64,
    source: AtomicU8,
    level: AtomicU8,
}

impl LatestReading {
    pub fn store(&self, s: &Snapshot, level: Level) {
        self.total.store(s.total, Relaxed);
        self.available.store(s.available, Relaxed);
        self.limit.store(s.limit.unwrap_or(NONE), Relaxed);
        self.usage.store(s.usage.unwrap_or(NONE), Relaxed);
        self.swap_total.store(s.swap_total, Relaxed);
        self.swap_free.store(s.swap_free, Relaxed);
        self.psi_bits
            .store(s.psi_some_avg10.map(f64::to_bits).unwrap_or(NONE), Relaxed);
        let source = match s.source {
            Source::Cgroup2 => 2,
            Source::Cgroup1 => 1,
            Source::Meminfo => 0,
        };
        self.source.store(source, Relaxed);
        let level = match level {
            Level::Ok => 0,
            Level::Pressure => 1,
            Level::Critical => 2,
        };
        self.level.store(level, Relaxed);
        self.set.store(true, std::sync::atomic::Ordering::Release);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Changes with every stored reading.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn load(&self) -> Option<(Snapshot, Level)> {
        if !self.set.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let opt = |a: &AtomicU64| Some(a.load(Relaxed)).filter(|v| *v != NONE);
        let snapshot = Snapshot {
            total: self.total.load(Relaxed),
            available: self.available.load(Relaxed),
            limit: opt(&self.limit),
            usage: opt(&self.usage),
            swap_total: self.swap_total.load(Relaxed),
            swap_free: self.swap_free.load(Relaxed),
            psi_some_avg10: opt(&self.psi_bits).map(f64::from_bits),
            source: match self.source.load(Relaxed) {
                2 => Source::Cgroup2,
                1 => Source::Cgroup1,
                _ => Source::Meminfo,
            },
        };
        let level = match self.level.load(Relaxed) {
            2 => Level::Critical,
            1 => Level::Pressure,
            _ => Level::Ok,
        };
        Some((snapshot, level))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let l = LatestReading::default();
        assert!(l.load().is_none());
        let s = Snapshot {
            total: 10,
            available: 5,
            limit: Some(10),
            usage: None,
            swap_total: 1,
            swap_free: 1,
            psi_some_avg10: Some(1.5),
            source: Source::Cgroup2,
        };
        l.store(&s, Level::Pressure);
        assert_eq!(l.load(), Some((s, Level::Pressure)));
    }
}
