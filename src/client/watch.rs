//! Watching a task: its output bytes to stdout exactly as the agent wrote them (or its
//! events as NDJSON), progress and notices on stderr, the summary at the end, and the
//! exit code that says how it ended. `attach -i` adds the other direction: the local
//! terminal in raw mode, keystrokes to `/input`, window sizes to `/resize`, Ctrl-]
//! to detach.

use std::io::Write as _;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::events::{Follow, FollowError, Item, Reconnect};
use super::exit;
use super::outpost::Outpost;
use super::render::{self, ProgressView};
use super::term;
use super::types::{Done, Event, Status};

/// The detach key of `attach -i`: Ctrl-] (as telnet).
pub const DETACH_KEY: u8 = 0x1d;

/// How a watch shows things.
pub struct View {
    pub json: bool,
    pub quiet: bool,
    /// Raw mode is on: lines on stderr need `\r\n`.
    pub raw: bool,
    pub progress: ProgressView,
}

impl View {
    pub fn new(json: bool, quiet: bool) -> View {
        View {
            json,
            quiet,
            raw: false,
            progress: ProgressView::new(term::stderr_is_tty()),
        }
    }

    /// A line on stderr (not with `--quiet`).
    pub fn note(&mut self, msg: &str) {
        if !self.quiet {
            self.say(msg);
        }
    }

    /// A line on stderr, always.
    pub fn say(&mut self, msg: &str) {
        self.progress.clear();
        let end = if self.raw { "\r\n" } else { "\n" };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "outpost: {msg}{end}");
        let _ = err.flush();
    }
}

/// The exit code for a finished task.
pub fn exit_code(d: &Done) -> i32 {
    match d.status {
        Status::Done => exit::OK,
        Status::Failed => d.exit_code.filter(|c| (1..=255).contains(c)).unwrap_or(1),
        Status::Cancelled => exit::CANCELLED,
        Status::Interrupted => exit::INTERRUPTED,
        _ => 1,
    }
}

/// Something that can stop a watch early.
pub enum Interrupt {
    /// Ctrl-C detaches.
    Detach,
    /// Ctrl-C cancels the task, then the watch goes on to its end.
    Cancel,
}

/// Shows one event; returns the task's exit code at `done`.
async fn show(
    ev: &Event,
    id: &str,
    view: &mut View,
    out: &mut tokio::io::Stdout,
) -> Result<Option<i32>, String> {
    if view.json {
        let mut line = serde_json::to_vec(&ev.data).map_err(|e| e.to_string())?;
        line.push(b'\n');
        write_out(out, &line).await?;
    } else if ev.event == "output" {
        let bytes = ev.output_bytes()?;
        view.progress.clear();
        write_out(out, &bytes).await?;
    } else if let Some(p) = ev.progress() {
        if !view.quiet {
            view.progress.update(&p);
        }
    }
    if let Some(done) = ev.done() {
        view.progress.clear();
        let line = render::summary(id, &done);
        view.say(&line);
        return Ok(Some(exit_code(&done)));
    }
    Ok(None)
}

async fn write_out(out: &mut tokio::io::Stdout, bytes: &[u8]) -> Result<(), String> {
    out.write_all(bytes)
        .await
        .map_err(|e| format!("writing to stdout: {e}"))?;
    out.flush()
        .await
        .map_err(|e| format!("writing to stdout: {e}"))
}

/// What to say about a reconnect.
fn reconnect_note(view: &mut View, item: &Item) {
    match item {
        Item::Reconnecting {
            after_id,
            reason,
            delay,
        } => view.note(&format!(
            "stream lost ({reason}); resuming after event {after_id} in {delay:?}"
        )),
        Item::Resumed { after_id } => view.note(&format!("resumed after event {after_id}")),
        Item::Event(_) => {}
    }
}

fn lost(view: &mut View, e: FollowError) -> i32 {
    match e {
        FollowError::Lost { .. } => {
            view.say(&format!("{e}"));
            exit::LOST
        }
        FollowError::Fatal(e) => {
            view.say(&format!("{e}"));
            1
        }
    }
}

/// Streams task `id` of `o` from after event `after` to its end; returns the exit code.
pub async fn watch(
    o: &Outpost,
    id: &str,
    after: u64,
    policy: Reconnect,
    interrupt: Interrupt,
    view: &mut View,
) -> i32 {
    let mut follow = Follow::new(o, id, after, policy);
    let mut out = tokio::io::stdout();
    let mut ctrl_c_armed = true;
    // Bounded by the task's stream (which ends at done) and the reconnect window.
    loop {
        let item = tokio::select! {
            item = follow.next() => item,
            _ = tokio::signal::ctrl_c(), if ctrl_c_armed => {
                match interrupt {
                    Interrupt::Detach => {
                        view.say(&format!(
                            "detached; the task goes on. Re-attach: outpost attach --url {} {id} --after {}",
                            o.url(), follow.last_id()
                        ));
                        return exit::DETACHED;
                    }
                    Interrupt::Cancel => {
                        ctrl_c_armed = false;
                        match o.cancel(id).await {
                            Ok(_) => view.note(&format!("cancelling {id}")),
                            Err(e) => view.say(&format!("cancelling {id}: {e}")),
                        }
                        continue;
                    }
                }
            }
        };
        match item {
            Ok(None) => return 1,
            Ok(Some(Item::Event(ev))) => match show(&ev, id, view, &mut out).await {
                Ok(Some(code)) => return code,
                Ok(None) => {}
                Err(e) => {
                    view.say(&e);
                    return 1;
                }
            },
            Ok(Some(other)) => reconnect_note(view, &other),
            Err(e) => return lost(view, e),
        }
    }
}

/// What the stdin thread sends.
enum Key {
    Bytes(Vec<u8>),
    Detach,
    Eof,
}

/// Reads stdin on a thread of its own (a blocking read cannot run on the runtime);
/// the thread ends at EOF, at the detach key, or when the receiver is gone.
fn spawn_stdin_reader() -> mpsc::Receiver<Key> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Bounded by stdin: ends at EOF, an error, the detach key or a closed channel.
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                let _ = tx.blocking_send(Key::Eof);
                return;
            }
            let chunk = &buf[..n as usize];
            if let Some(pos) = chunk.iter().position(|&b| b == DETACH_KEY) {
                if pos > 0 {
                    let _ = tx.blocking_send(Key::Bytes(chunk[..pos].to_vec()));
                }
                let _ = tx.blocking_send(Key::Detach);
                return;
            }
            if tx.blocking_send(Key::Bytes(chunk.to_vec())).is_err() {
                return;
            }
        }
    });
    rx
}

/// `attach -i`: the stream plus keystrokes and window sizes; Ctrl-] detaches.
pub async fn interactive(
    o: &Outpost,
    id: &str,
    after: u64,
    policy: Reconnect,
    view: &mut View,
) -> i32 {
    let tty = term::stdin_is_tty();
    let raw = if tty {
        match term::RawMode::enable() {
            Ok(r) => Some(r),
            Err(e) => {
                view.say(&e);
                return 1;
            }
        }
    } else {
        None
    };
    view.raw = raw.is_some();
    view.note(&format!("attached to {id} on {}; Ctrl-] detaches", o.url()));
    let mut winch =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) {
            Ok(s) => Some(s),
            Err(e) => {
                view.note(&format!("window size changes will not be sent: {e}"));
                None
            }
        };
    if let Some((cols, rows)) = term::window_size() {
        if let Err(e) = o.resize(id, cols, rows).await {
            view.note(&format!("sending the window size: {e}"));
        }
    }
    let mut keys = spawn_stdin_reader();
    let mut stdin_open = true;
    let mut follow = Follow::new(o, id, after, policy);
    let mut out = tokio::io::stdout();
    // Bounded by the task's stream (which ends at done), the reconnect window, and the
    // detach key.
    let code = loop {
        tokio::select! {
            item = follow.next() => match item {
                Ok(None) => break 1,
                Ok(Some(Item::Event(ev))) => match show(&ev, id, view, &mut out).await {
                    Ok(Some(code)) => break code,
                    Ok(None) => {}
                    Err(e) => { view.say(&e); break 1; }
                },
                Ok(Some(other)) => reconnect_note(view, &other),
                Err(e) => break lost(view, e),
            },
            key = keys.recv(), if stdin_open => match key {
                Some(Key::Bytes(b)) => {
                    if let Err(e) = o.input(id, Bytes::from(b)).await {
                        view.note(&format!("input not delivered: {e}"));
                    }
                }
                Some(Key::Detach) => {
                    view.say(&format!(
                        "detached; the task goes on. Re-attach: outpost attach -i --url {} {id}",
                        o.url()
                    ));
                    break exit::DETACHED;
                }
                Some(Key::Eof) | None => stdin_open = false,
            },
            _ = next_winch(&mut winch) => {
                if let Some((cols, rows)) = term::window_size() {
                    if let Err(e) = o.resize(id, cols, rows).await {
                        view.note(&format!("sending the window size: {e}"));
                    }
                }
            }
        }
    };
    drop(raw);
    view.raw = false;
    code
}

async fn next_winch(w: &mut Option<tokio::signal::unix::Signal>) {
    match w {
        Some(s) => {
            if s.recv().await.is_none() {
                *w = None;
            }
        }
        None => std::future::pending().await,
    }
}
