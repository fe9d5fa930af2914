//! Transfer progress reported to the caller (object counts from libgit2's callbacks),
//! throttled to at most ~10 reports a second plus the final one.

use std::time::{Duration, Instant};

use git2::{AutotagOption, FetchOptions, RemoteCallbacks};
use serde::Serialize;

/// Which transfer a [`Progress`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Receiving objects (clone or fetch).
    Clone,
    /// Sending objects.
    Push,
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub received_objects: usize,
    pub total_objects: usize,
    pub bytes: usize,
}

const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Drops reports that come sooner than 100 ms after the previous one, except the
/// first and the final (`received == total`) report.
pub(crate) struct Throttle {
    last: Option<Instant>,
    final_sent: bool,
}

impl Throttle {
    pub(crate) fn new() -> Throttle {
        Throttle {
            last: None,
            final_sent: false,
        }
    }

    /// True when `p` should be passed on.
    pub(crate) fn admit(&mut self, p: &Progress) -> bool {
        self.admit_at(p, Instant::now())
    }

    fn admit_at(&mut self, p: &Progress, now: Instant) -> bool {
        let done = p.total_objects > 0 && p.received_objects >= p.total_objects;
        if done {
            if self.final_sent {
                return false;
            }
            self.final_sent = true;
            self.last = Some(now);
            return true;
        }
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_INTERVAL);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Fetch options for a shallow (depth 1) fetch without tags, reporting throttled
/// `clone` progress to `progress`.
pub(crate) fn shallow_fetch_options<'a>(progress: &'a mut dyn FnMut(Progress)) -> FetchOptions<'a> {
    let mut throttle = Throttle::new();
    let mut callbacks = RemoteCallbacks::new();
    callbacks.transfer_progress(move |s| {
        let p = Progress {
            phase: Phase::Clone,
            received_objects: s.received_objects(),
            total_objects: s.total_objects(),
            bytes: s.received_bytes(),
        };
        if throttle.admit(&p) {
            progress(p);
        }
        true
    });
    let mut opts = FetchOptions::new();
    opts.depth(1)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false)
        .remote_callbacks(callbacks);
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(received: usize, total: usize) -> Progress {
        Progress {
            phase: Phase::Clone,
            received_objects: received,
            total_objects: total,
            bytes: 0,
        }
    }

    #[test]
    fn burst_is_thinned_but_first_and_final_pass() {
        let mut t = Throttle::new();
        let start = Instant::now();
        // 1001 callbacks, one every millisecond: one second of transfer.
        let passed: Vec<bool> = (0..=1000)
            .map(|i| t.admit_at(&p(i, 1000), start + Duration::from_millis(i as u64)))
            .collect();
        assert!(passed[0]);
        assert!(passed[1000]);
        assert!(!passed[1] && passed[100] && !passed[150] && passed[200]);
        assert_eq!(passed.iter().filter(|x| **x).count(), 11);
        assert!(!t.admit(&p(1000, 1000)), "final is reported once");
        assert_eq!(
            serde_json::to_string(&p(1, 2)).unwrap(),
            r#"{"phase":"clone","received_objects":1,"total_objects":2,"bytes":0}"#
        );
    }
}
