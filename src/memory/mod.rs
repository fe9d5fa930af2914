//! Memory: the view of limits and pressure (cgroup v2/v1, PSI, /proc/meminfo), the
//! pressure policy, per-process-group resident memory, OOM scores, human sizes, and swap
//! files. Everything here is synchronous and std-only: call it from a thread or
//! `spawn_blocking`, not on the async runtime.

mod oom;
mod policy;
mod procs;
pub mod shed;
mod size;
pub mod swap;
mod view;

pub use oom::{arm_oom_watch, oom_killed_recently, oom_score_adj, protect_self, set_oom_score_adj};
pub use policy::{Level, Policy};
pub use procs::{group_rss, largest_group};
pub use size::{format_size, parse_size};
pub use view::{MemoryView, Snapshot, Source};
