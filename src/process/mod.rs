//! The agent's processes: start them (as the agent user, inside the task's
//! containment, on the PTY), reap every child of the worker, kill a whole task, and
//! account what it used. Nothing here knows about tasks' logs or HTTP: the agent and
//! task modules above ask for these services.

pub mod cgroup;
pub mod containment;
mod direct;
pub mod exec;
pub mod identity;
pub mod ownership;
pub mod reaper;
pub(crate) mod spawn;

pub use containment::{Containment, Jail, Kind};
pub use identity::Identity;
pub use spawn::mark_inherited_cloexec;
