//! What a task cost: the instance's size (vCPUs and memory, set or found at start),
//! compute priced as Cloud Run bills it (wall time x vCPUs x price per vCPU-second, plus
//! wall time x GiB x price per GiB-second), and the sums `/metrics` reports.

use std::sync::atomic::{AtomicU64, Ordering};

use super::model::{Cost, Resources};
use crate::config::Pricing;

/// The size billed for this instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Instance {
    pub vcpu: f64,
    pub memory_bytes: u64,
    pub usd_per_vcpu_s: f64,
    pub usd_per_gib_s: f64,
}

impl Instance {
    /// The instance: what `pricing` sets, else the cgroup's CPU limit (or the CPUs)
    /// and the memory limit (`memory_limit`, or RAM).
    pub fn detect(
        pricing: &Pricing,
        cpu_limit: Option<f64>,
        memory_limit: Option<u64>,
    ) -> Instance {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        Instance {
            vcpu: pricing.instance_cpu.or(cpu_limit).unwrap_or(cpus),
            memory_bytes: pricing.instance_memory.or(memory_limit).unwrap_or(0),
            usd_per_vcpu_s: pricing.usd_per_vcpu_s,
            usd_per_gib_s: pricing.usd_per_gib_s,
        }
    }

    /// The compute cost of holding the instance for `wall_seconds`.
    pub fn compute_usd(&self, wall_seconds: f64) -> f64 {
        let gib = self.memory_bytes as f64 / (1u64 << 30) as f64;
        wall_seconds * (self.vcpu * self.usd_per_vcpu_s + gib * self.usd_per_gib_s)
    }

    /// The cost of a task that used `r`, with the model's own figure when known.
    pub fn cost(&self, r: &Resources, model_usd: Option<f64>) -> Cost {
        let compute_usd = self.compute_usd(r.wall_seconds);
        Cost {
            compute_usd,
            model_usd,
            total_usd: compute_usd + model_usd.unwrap_or(0.0),
        }
    }
}

/// Sums over the tasks that ended since start (micro-units, so atomics suffice).
#[derive(Default)]
pub struct Totals {
    cpu_us: AtomicU64,
    wall_ms: AtomicU64,
    compute_micro_usd: AtomicU64,
    model_micro_usd: AtomicU64,
}

impl Totals {
    pub fn add(&self, r: &Resources, c: &Cost) {
        let micro = |x: f64| (x * 1e6).round().max(0.0) as u64;
        self.cpu_us
            .fetch_add(micro(r.cpu_seconds), Ordering::Relaxed);
        self.wall_ms.fetch_add(
            (r.wall_seconds * 1e3).round().max(0.0) as u64,
            Ordering::Relaxed,
        );
        self.compute_micro_usd
            .fetch_add(micro(c.compute_usd), Ordering::Relaxed);
        self.model_micro_usd
            .fetch_add(micro(c.model_usd.unwrap_or(0.0)), Ordering::Relaxed);
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn wall_seconds(&self) -> f64 {
        self.wall_ms.load(Ordering::Relaxed) as f64 / 1e3
    }

    pub fn compute_usd(&self) -> f64 {
        self.compute_micro_usd.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn model_usd(&self) -> f64 {
        self.model_micro_usd.load(Ordering::Relaxed) as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_cost_is_wall_time_at_size_and_price() {
        let p = Pricing {
            instance_cpu: Some(2.0),
            instance_memory: Some(1 << 30),
            usd_per_vcpu_s: 0.000_024,
            usd_per_gib_s: 0.000_002_5,
        };
        let i = Instance::detect(&p, Some(8.0), Some(4 << 30));
        assert_eq!((i.vcpu, i.memory_bytes), (2.0, 1 << 30));
        let r = Resources {
            cpu_seconds: 1.0,
            memory_peak_bytes: 0,
            wall_seconds: 100.0,
        };
        let c = i.cost(&r, Some(0.5));
        assert!((c.compute_usd - 100.0 * (2.0 * 0.000_024 + 0.000_002_5)).abs() < 1e-12);
        assert!((c.total_usd - c.compute_usd - 0.5).abs() < 1e-12);
        let t = Totals::default();
        t.add(&r, &c);
        t.add(&r, &c);
        assert!((t.cpu_seconds() - 2.0).abs() < 1e-9);
        assert!((t.model_usd() - 1.0).abs() < 1e-9);
        let found = Instance::detect(
            &Pricing {
                instance_cpu: None,
                instance_memory: None,
                ..p
            },
            Some(0.5),
            Some(512 << 20),
        );
        assert_eq!((found.vcpu, found.memory_bytes), (0.5, 512 << 20));
    }
}
