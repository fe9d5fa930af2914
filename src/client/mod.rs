//! The client side of the contract, as a library (the `outpost` binary's `run`,
//! `attach`, `ls`, `logs`, `cancel` and `status` are a thin layer on it): the contract's
//! shapes as types ([`types`]), one outpost over HTTP/1.1, h2c or TLS ([`Outpost`]), an
//! SSE parser ([`sse`]), a task's events resumed by themselves across drops and worker
//! restarts ([`Follow`]), and a pool of outposts in order of preference ([`Pool`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use outpost::client::{ConnectOptions, Follow, Item, Outpost, Reconnect, WorkRequest};
//! let o = Outpost::new("http://127.0.0.1:8080", None, &ConnectOptions::default())?;
//! let task = o
//!     .submit(&WorkRequest { prompt: Some("echo hi".into()), ..Default::default() })
//!     .await?;
//! let mut events = Follow::new(&o, &task.id, 0, Reconnect::default());
//! while let Some(item) = events.next().await? {
//!     if let Item::Event(ev) = item {
//!         print!("{}", String::from_utf8_lossy(&ev.output_bytes()?));
//!     }
//! }
//! # Ok(()) }
//! ```

mod args;
pub mod commands;
pub mod conn;
pub mod error;
pub mod events;
pub mod outpost;
pub mod pool;
pub mod render;
pub mod sse;
pub mod term;
pub mod types;
pub mod watch;

pub use conn::ConnectOptions;
pub use error::ClientError;
pub use events::{EventStream, Follow, FollowError, Item, Reconnect};
pub use outpost::Outpost;
pub use pool::{Placement, Pool};
pub use types::{Done, Event, Hello, Task, WorkRequest};

/// Exit codes of `outpost run` and `outpost attach`. A task that failed exits with its
/// own exit code (1 when it has none).
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 2;
    /// Ctrl-C detached from a task that goes on (128 + SIGINT).
    pub const DETACHED: i32 = 130;
    /// No outpost took the task (a bad request, or all full for the whole wait).
    pub const REFUSED: i32 = 200;
    /// The task ended `cancelled`.
    pub const CANCELLED: i32 = 201;
    /// The task ended `interrupted` (its worker stopped under it).
    pub const INTERRUPTED: i32 = 202;
    /// The stream could not be resumed within the reconnect window.
    pub const LOST: i32 = 203;
}
