//! Latency samples and the few summary numbers taken from them.

use std::time::Duration;

/// A set of durations, in nanoseconds, summarised by percentiles.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    ns: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, d: Duration) {
        self.push_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn push_ns(&mut self, ns: u64) {
        self.ns.push(ns);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.ns.extend(other.ns);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// The p-th percentile (0..=100) in milliseconds, nearest-rank; None when empty.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.ns.is_empty() {
            return None;
        }
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * self.ns.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.ns.len()) - 1;
        Some(self.ns[idx] as f64 / 1e6)
    }

    pub fn p50(&mut self) -> Option<f64> {
        self.percentile_ms(50.0)
    }

    pub fn p99(&mut self) -> Option<f64> {
        self.percentile_ms(99.0)
    }

    pub fn max_ms(&mut self) -> Option<f64> {
        self.percentile_ms(100.0)
    }
}

/// Count per second over an elapsed time; None when nothing elapsed.
pub fn rate(count: f64, elapsed: Duration) -> Option<f64> {
    let s = elapsed.as_secs_f64();
    (s > 0.0).then(|| count / s)
}

pub const MIB: f64 = 1024.0 * 1024.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::new();
        for ms in 1..=100u64 {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.p50(), Some(50.0));
        assert_eq!(s.p99(), Some(99.0));
        assert_eq!(s.max_ms(), Some(100.0));
        assert_eq!(Samples::new().p50(), None);
    }

    #[test]
    fn rate_needs_time() {
        assert_eq!(rate(10.0, Duration::ZERO), None);
        assert_eq!(rate(10.0, Duration::from_secs(2)), Some(5.0));
    }
}
