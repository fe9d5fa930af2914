//! The pressure policy: turns a [`Snapshot`] into a [`Level`] (ok, pressure, critical)
//! from thresholds on available memory and PSI. Pure; the server decides what each level
//! means (refuse new work under pressure, stop the largest agent when critical).

use super::view::Snapshot;
use serde::Serialize;

const MIB: u64 = 1 << 20;

/// How tight memory is.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Plenty available.
    Ok,
    /// Below `min_available`, or PSI above its threshold: take no new work.
    Pressure,
    /// Below `critical_available`: stop the largest agent before the kernel OOM-kills.
    Critical,
}

/// Thresholds, all in bytes except the PSI percentage.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Policy {
    /// Pressure below this much available (default 10 % of the effective limit, as
    /// earlyoom does).
    pub min_available: u64,
    /// Pressure when PSI `some avg10` is above this percentage.
    pub psi_some_avg10_max: f64,
    /// Critical below this much available: 3 % of the limit or 32 MiB, whichever is
    /// larger, but never more than half of `min_available`.
    pub critical_available: u64,
}

impl Policy {
    /// Default PSI `some avg10` threshold (percent).
    pub const DEFAULT_PSI_SOME_AVG10_MAX: f64 = 40.0;

    /// The default policy for an effective limit (e.g. [`Snapshot::total`]), with
    /// `min_available` overridden when given (`OUTPOST_MIN_AVAILABLE`).
    pub fn from_limit(effective_limit: u64, min_available: Option<u64>) -> Policy {
        let min_available = min_available.unwrap_or(effective_limit / 10);
        let critical_available = (effective_limit / 100 * 3)
            .max(32 * MIB)
            .min(min_available / 2);
        Policy {
            min_available,
            psi_some_avg10_max: Self::DEFAULT_PSI_SOME_AVG10_MAX,
            critical_available,
        }
    }

    /// [`Policy::from_limit`] for the snapshot's effective limit (`total`).
    pub fn for_snapshot(snapshot: &Snapshot, min_available: Option<u64>) -> Policy {
        Policy::from_limit(snapshot.total, min_available)
    }

    /// The level a snapshot is at under this policy.
    pub fn level(&self, snapshot: &Snapshot) -> Level {
        if snapshot.available < self.critical_available {
            Level::Critical
        } else if snapshot.available < self.min_available
            || snapshot
                .psi_some_avg10
                .is_some_and(|psi| psi > self.psi_some_avg10_max)
        {
            Level::Pressure
        } else {
            Level::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::view::Source;

    fn snap(total: u64, available: u64, psi: Option<f64>) -> Snapshot {
        Snapshot {
            total,
            available,
            limit: Some(total),
            usage: Some(total - available),
            swap_total: 0,
            swap_free: 0,
            psi_some_avg10: psi,
            source: Source::Cgroup1,
        }
    }

    #[test]
    fn defaults_scale_with_the_limit() {
        let p = Policy::from_limit(1 << 30, None);
        assert_eq!(p.min_available, (1 << 30) / 10);
        assert_eq!(p.critical_available, 32 * MIB);
        assert_eq!(p.psi_some_avg10_max, 40.0);
        let big = Policy::from_limit(10 << 30, None);
        assert_eq!(big.critical_available, (10u64 << 30) / 100 * 3);
        // A small limit: critical stays below pressure.
        let small = Policy::from_limit(300 * MIB, None);
        assert_eq!(small.min_available, 30 * MIB);
        assert_eq!(small.critical_available, 15 * MIB);
    }

    #[test]
    fn override_of_min_available() {
        let p = Policy::from_limit(1 << 30, Some(200 * MIB));
        assert_eq!(p.min_available, 200 * MIB);
        assert_eq!(p.critical_available, 32 * MIB);
        let tiny = Policy::from_limit(1 << 30, Some(10 * MIB));
        assert_eq!(tiny.critical_available, 5 * MIB);
    }

    #[test]
    fn levels_by_available_memory() {
        let total = 300 * MIB;
        let p = Policy::from_limit(total, None);
        assert_eq!(p.level(&snap(total, 200 * MIB, Some(0.0))), Level::Ok);
        assert_eq!(p.level(&snap(total, 30 * MIB, None)), Level::Ok);
        assert_eq!(p.level(&snap(total, 30 * MIB - 1, None)), Level::Pressure);
        // 90 % of a 300 MiB limit held: pressure, not yet critical.
        assert_eq!(p.level(&snap(total, 21 * MIB, None)), Level::Pressure);
        assert_eq!(p.level(&snap(total, 15 * MIB, None)), Level::Pressure);
        assert_eq!(p.level(&snap(total, 15 * MIB - 1, None)), Level::Critical);
        assert_eq!(p.level(&snap(total, 0, None)), Level::Critical);
    }

    #[test]
    fn psi_alone_raises_pressure_but_not_critical() {
        let total = 1 << 30;
        let p = Policy::from_limit(total, None);
        assert_eq!(p.level(&snap(total, 900 * MIB, Some(40.0))), Level::Ok);
        assert_eq!(
            p.level(&snap(total, 900 * MIB, Some(40.01))),
            Level::Pressure
        );
        assert_eq!(
            p.level(&snap(total, 900 * MIB, Some(100.0))),
            Level::Pressure
        );
        assert_eq!(p.level(&snap(total, 10 * MIB, Some(0.0))), Level::Critical);
        assert!(Level::Critical > Level::Pressure && Level::Pressure > Level::Ok);
        assert_eq!(
            serde_json::to_string(&Level::Pressure).unwrap(),
            "\"pressure\""
        );
    }
}
