//! outpost: a worker runtime that runs AI coding agents in a PTY on remote compute,
//! streams every byte of their output over SSE (HTTP/1.1 and HTTP/2), and pushes
//! their branch when they are done.
//!
//! The data path of one task: `http` admits a request, `task` owns its lifecycle and
//! its event log, `git` prepares and pushes the worktree, `agent` runs the program in
//! a PTY; `process` starts, contains, reaps and kills the agent's processes;
//! `supervise` owns signals and the drain, `memory` owns limits and pressure.

pub mod agent;
mod background;
pub mod cli;
pub mod client;
pub mod config;
/// Entry points for the fuzz targets (`fuzz/`).
pub mod fuzzing;
pub mod git;
pub mod http;
pub mod install;
pub mod logging;
pub mod memory;
mod placement;
pub mod process;
pub mod serve;
pub mod supervise;
pub mod task;
pub mod timefmt;
pub mod trash;
pub mod validate;
