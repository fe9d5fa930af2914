//! One agent process in a PTY: spawn (own session and process group, the PTY as its
//! controlling terminal), the output pump on a dedicated thread, input, resize, and
//! signals to the whole process group. Exit statuses come from the supervisor's reaper.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use portable_pty::{native_pty_system, MasterPty, PtySize};
use tokio::sync::oneshot;

use crate::process::exec::ExecPlan;
use crate::process::reaper::{reaper, Reaped};
use crate::process::spawn;

/// Environment variables that never reach an agent, besides every `OUTPOST_*` one of
/// the worker's (settings, tokens and the data dir's path).
const SECRET_ENV: &[&str] = &[
    "GH_TOKEN",
    "GITHUB_TOKEN",
    "GIT_ASKPASS",
    "SSH_AUTH_SOCK",
    "_",
];

/// What to run.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub cols: u16,
    pub rows: u16,
    /// What runs between the spawn and the agent (its cgroups, user and limits).
    pub plan: ExecPlan,
}

/// Where the pump sends the terminal's bytes (an empty slice marks the end).
pub type OutputSink = Box<dyn FnMut(&[u8]) + Send>;

/// Bytes the pump reads at once.
const READ_CHUNK: usize = 64 * 1024;

/// A running agent.
pub struct Agent {
    handle: AgentHandle,
    exit: Option<oneshot::Receiver<Reaped>>,
    stop_pump: Arc<AtomicBool>,
    pump_done: Option<oneshot::Receiver<io::Result<()>>>,
}

impl Agent {
    /// Spawns the agent; `sink` receives every byte it writes to its terminal, in order,
    /// on the pump thread, and then one empty slice when the output has ended.
    pub fn spawn(spec: AgentSpec, sink: OutputSink) -> anyhow::Result<Agent> {
        let program = spec
            .argv
            .first()
            .context("the agent command line is empty")?;
        let size = PtySize {
            rows: spec.rows,
            cols: spec.cols,
            pixel_width: 0,
            pixel_height: 0,
        };
        let pair = native_pty_system()
            .openpty(size)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("opening a PTY")?;
        let tty = pair
            .master
            .tty_name()
            .context("the PTY has no device name")?;
        let master_fd = pair
            .master
            .as_raw_fd()
            .context("the PTY has no file descriptor")?;
        // Our own handle on the master: portable-pty's writer injects a newline and EOF
        // when dropped, which would reach the agent's input.
        let fd = nix::fcntl::fcntl(master_fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
            .context("duplicating the PTY descriptor")?;
        // SAFETY: `fcntl` returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let reader = file.try_clone().context("duplicating the PTY descriptor")?;
        // Non-blocking (for the pump and the input alike: one open file): the pump
        // reads until the terminal is empty instead of polling before every read.
        set_nonblocking(&file).context("making the PTY non-blocking")?;
        let env = agent_env(&spec.env);
        if let Some((uid, gid)) = spec.plan.user {
            // The terminal is the agent's, as login makes it a user's.
            nix::unistd::chown(&tty, Some(uid.into()), Some(gid.into()))
                .with_context(|| format!("giving the terminal {} to uid {uid}", tty.display()))?;
        }
        let pid = spawn::spawn(&spawn::Spawn {
            program,
            argv: &spec.argv,
            env: &env,
            cwd: &spec.cwd,
            tty: &tty,
            plan: &spec.plan,
        })
        .with_context(|| format!("starting the agent `{program}`"))?;
        // The child has the terminal open now; ours would keep the output from ending.
        drop(pair.slave);
        let exit = reaper().watch(pid);
        crate::memory::set_oom_score_adj(pid, 500).ok();

        let stop_pump = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = oneshot::channel();
        start_pump(pid, reader, stop_pump.clone(), sink, done_tx)?;
        Ok(Agent {
            handle: AgentHandle {
                pid,
                master: Arc::new(Mutex::new(pair.master)),
                input: Arc::new(file),
            },
            exit: Some(exit),
            stop_pump,
            pump_done: Some(done_rx),
        })
    }

    pub fn pid(&self) -> i32 {
        self.handle.pid
    }

    /// A cheap handle for input, resize and signals, usable while the agent runs.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// Sends a signal to the agent's whole process group.
    pub fn signal_group(&self, sig: Signal) {
        signal_group(self.handle.pid, sig);
    }

    /// Waits for the agent's leader process to exit: its status and resource usage.
    pub async fn wait(&mut self) -> Reaped {
        match self.exit.as_mut() {
            Some(rx) => {
                let r = rx.await.unwrap_or_else(|_| Reaped::lost());
                self.exit = None;
                r
            }
            None => Reaped::lost(),
        }
    }

    /// After the leader exited: stops what is left of its group, reads the output that
    /// is still in the terminal (waiting at most `linger` for the last writers), and
    /// returns once every byte has reached the sink.
    pub async fn finish_output(&mut self, linger: Duration) -> io::Result<()> {
        self.signal_group(Signal::SIGKILL);
        let Some(mut rx) = self.pump_done.take() else {
            return Ok(());
        };
        match tokio::time::timeout(linger, &mut rx).await {
            Ok(r) => r.unwrap_or(Ok(())),
            Err(_) => {
                // Something outside the group still holds the terminal open.
                self.stop_pump.store(true, Ordering::SeqCst);
                rx.await.unwrap_or(Ok(()))
            }
        }
    }
}

/// Input, resize and signals for a running agent.
#[derive(Clone)]
pub struct AgentHandle {
    pid: i32,
    master: Arc<Mutex<Box<dyn MasterPty + Send>>>,
    input: Arc<File>,
}

impl AgentHandle {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Writes bytes to the agent's terminal (blocking: call from a blocking thread),
    /// waiting while the terminal is full, at most `INPUT_STALL` without progress.
    pub fn write_input(&self, mut bytes: &[u8]) -> io::Result<()> {
        let mut w: &File = &self.input;
        let mut waited = Duration::ZERO;
        while !bytes.is_empty() {
            match w.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    waited = Duration::ZERO;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if waited >= INPUT_STALL {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the agent has not read its input for 30 s",
                        ));
                    }
                    let mut fds = [PollFd::new(w.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                    waited += Duration::from_millis(100);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Changes the terminal size (the agent gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> anyhow::Result<()> {
        let m = self.master.lock().unwrap_or_else(|e| e.into_inner());
        m.resize(PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("resizing the terminal")
    }

    /// Sends a signal to the agent's whole process group.
    pub fn signal_group(&self, sig: Signal) {
        signal_group(self.pid, sig);
    }
}

/// The agent's environment: ours without the secrets and the worker's own settings,
/// `TERM`, then the task's own.
fn agent_env(extra: &[(String, String)]) -> Vec<(OsString, OsString)> {
    // The worker's environment does not change once it runs (nothing sets a variable):
    // filtered once, not on every task start.
    static BASE: std::sync::OnceLock<BTreeMap<OsString, OsString>> = std::sync::OnceLock::new();
    let mut env = BASE
        .get_or_init(|| {
            std::env::vars_os()
                .filter(|(k, _)| {
                    !SECRET_ENV.iter().any(|s| k == s)
                        && !k.as_encoded_bytes().starts_with(b"OUTPOST_")
                })
                .collect()
        })
        .clone();
    env.insert("TERM".into(), "xterm-256color".into());
    for (k, v) in extra {
        env.insert(k.into(), v.into());
    }
    env.into_iter().collect()
}

/// Sends `sig` to process group `pgid`; a group already gone is not an error.
pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// How long input may wait for an agent that does not read its terminal.
const INPUT_STALL: Duration = Duration::from_secs(30);

fn set_nonblocking(f: &File) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(f.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// Chunks in flight from the reading thread to the writing one.
const IN_FLIGHT: usize = 3;
/// Chunks at least this big go to the writing thread; smaller ones (a prompt, a line:
/// a fast writer fills the terminal 4 KiB at a time), while it has nothing queued, are
/// written by the reader itself, without the hand-off's added latency.
const HANDOFF_MIN: usize = 2 * 1024;

/// Starts the thread that carries the terminal's output to `sink`; `done` gets the
/// read's result once every byte has reached the sink and the sink has had its final
/// empty slice.
fn start_pump(
    pid: i32,
    reader: File,
    stop: Arc<AtomicBool>,
    sink: OutputSink,
    done: oneshot::Sender<io::Result<()>>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name(format!("pty-{pid}"))
        .spawn(move || {
            let mut out = Delivery::new(pid, sink);
            let r = pump(reader, &stop, &mut |bytes: &[u8]| out.deliver(bytes));
            out.finish();
            let _ = done.send(r);
        })
        .context("starting the output thread")?;
    Ok(())
}

/// Hands the chunks the reader gathers to the sink, in order. A fast writer fills the
/// terminal faster than the log takes it: its chunks go to a second thread (started
/// on first need), so the reader keeps the terminal drained while the log is written
/// (one thread doing both delivered half as much); that thread writes what queued up
/// meanwhile as one piece, up to `READ_CHUNK`. Quiet output is written directly.
struct Delivery {
    pid: i32,
    sink: Arc<Mutex<OutputSink>>,
    /// Chunks handed to the writer and not yet written.
    queued: Arc<AtomicUsize>,
    writer: Option<Writer>,
}

struct Writer {
    full: std::sync::mpsc::SyncSender<Vec<u8>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<()>,
}

impl Delivery {
    fn new(pid: i32, sink: OutputSink) -> Delivery {
        Delivery {
            pid,
            sink: Arc::new(Mutex::new(sink)),
            queued: Arc::new(AtomicUsize::new(0)),
            writer: None,
        }
    }

    fn write_now(&self, bytes: &[u8]) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        (*sink)(bytes);
    }

    fn deliver(&mut self, bytes: &[u8]) {
        // Nothing queued means every earlier chunk is written: order is kept.
        if bytes.len() < HANDOFF_MIN && self.queued.load(Ordering::Acquire) == 0 {
            return self.write_now(bytes);
        }
        if self.writer.is_none() {
            self.writer = self.start_writer();
        }
        let Some(w) = &self.writer else {
            return self.write_now(bytes);
        };
        let mut chunk = w.empty.try_recv().unwrap_or_default();
        chunk.clear();
        chunk.extend_from_slice(bytes);
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = w.full.send(chunk) {
            // The writer is gone (it cannot be, short of a panic): write here instead.
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.write_now(&e.0);
        }
    }

    fn start_writer(&self) -> Option<Writer> {
        let (full, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (empty_tx, empty) = std::sync::mpsc::channel::<Vec<u8>>();
        let (sink, queued) = (self.sink.clone(), self.queued.clone());
        let thread = std::thread::Builder::new()
            .name(format!("pty-out-{}", self.pid))
            .spawn(move || {
                // A chunk taken from the queue that did not fit in the last write.
                let mut next: Option<Vec<u8>> = None;
                // Bounded by the reader: it ends when the reader drops its sender.
                while let Some(mut chunk) = next.take().or_else(|| full_rx.recv().ok()) {
                    // What queued behind it goes into the same write: one record, one
                    // wake-up of each subscriber, instead of one per chunk.
                    let mut taken = 1;
                    while let Ok(more) = full_rx.try_recv() {
                        if chunk.len() + more.len() > READ_CHUNK {
                            next = Some(more);
                            break;
                        }
                        chunk.extend_from_slice(&more);
                        taken += 1;
                        let _ = empty_tx.send(more);
                    }
                    {
                        let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                        (*sink)(&chunk);
                    }
                    queued.fetch_sub(taken, Ordering::AcqRel);
                    let _ = empty_tx.send(chunk);
                }
            });
        match thread {
            Ok(thread) => Some(Writer {
                full,
                empty,
                thread,
            }),
            Err(e) => {
                tracing::warn!(
                    pid = self.pid,
                    "no second output thread ({e}): writing the output from the reader"
                );
                None
            }
        }
    }

    /// Waits until everything queued is written, then ends the stream (empty slice).
    fn finish(mut self) {
        if let Some(w) = self.writer.take() {
            drop(w.full);
            let _ = w.thread.join();
        }
        self.write_now(&[]);
    }
}

/// Reads the terminal until EOF (EIO once every writer has closed it) or until asked
/// to stop, in which case it drains what is readable now and returns. The terminal is
/// non-blocking: each wake-up reads until it is empty (a fast writer fills it 4 KiB at
/// a time), so one event carries up to 64 KiB, and a full buffer reads on at once.
fn pump(mut reader: File, stop: &AtomicBool, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut more = false;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if !more {
            let fd = reader.as_fd();
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            let timeout = if stopping {
                PollTimeout::ZERO
            } else {
                PollTimeout::from(200u16)
            };
            match poll(&mut fds, timeout) {
                Ok(0) if stopping => return Ok(()),
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        let (n, end) = drain(&mut reader, &mut buf)?;
        if n > 0 {
            sink(&buf[..n]);
        }
        if end {
            return Ok(());
        }
        // A full buffer: more is likely there already.
        more = n == buf.len();
        if n == 0 && stopping {
            return Ok(());
        }
    }
}

/// Reads until the terminal is empty or `buf` is full; returns the bytes read and
/// whether the output has ended (EOF, or EIO: Linux reports it on the master once the
/// last slave descriptor closes).
fn drain(reader: &mut File, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut n = 0;
    // Bounded: every turn fills part of `buf` or returns.
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => return Ok((n, true)),
            Ok(m) => n += m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok((n, true)),
            Err(e) if n > 0 => {
                // Deliver what was read; the error comes back on the next read.
                tracing::debug!("reading the terminal: {e}");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((n, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes `delay` per write and keeps every piece it was given.
    fn slow_sink(delay: Duration) -> (OutputSink, Arc<Mutex<Vec<Vec<u8>>>>) {
        let seen = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let sink_seen = seen.clone();
        let sink: OutputSink = Box::new(move |b: &[u8]| {
            std::thread::sleep(delay);
            sink_seen.lock().unwrap().push(b.to_vec());
        });
        (sink, seen)
    }

    /// Small and big chunks, a slow sink (so chunks queue up behind the writer thread):
    /// the sink sees every byte once, in order, then one empty slice.
    #[test]
    fn delivery_keeps_order_across_the_hand_off() {
        let (sink, seen) = slow_sink(Duration::from_micros(200));
        let mut d = Delivery::new(1, sink);
        let mut sent = Vec::new();
        for i in 0..200u32 {
            let len = match i % 4 {
                0 => 10,
                1 => HANDOFF_MIN,
                2 => 100,
                _ => 40_000,
            };
            let chunk: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
            sent.extend_from_slice(&chunk);
            d.deliver(&chunk);
        }
        assert!(
            d.writer.is_some(),
            "big chunks should have started the writer"
        );
        d.finish();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.last().map(Vec::len), Some(0), "no final empty slice");
        assert_eq!(seen.iter().filter(|c| c.is_empty()).count(), 1);
        assert_eq!(seen.concat(), sent);
    }

    /// Chunks that queue behind a slow sink reach it together, in order, none of the
    /// pieces over `READ_CHUNK`.
    #[test]
    fn chunks_queued_behind_the_writer_are_written_together() {
        let (sink, seen) = slow_sink(Duration::from_millis(2));
        let mut d = Delivery::new(1, sink);
        let mut sent = Vec::new();
        for i in 0..100u32 {
            let chunk = vec![i as u8; 3 * 1024 + i as usize];
            sent.extend_from_slice(&chunk);
            d.deliver(&chunk);
        }
        d.finish();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.concat(), sent);
        assert!(seen.iter().all(|c| c.len() <= READ_CHUNK));
        // 100 chunks and the end: far fewer writes (each 2 ms write lets three queue).
        assert!(seen.len() < 60, "{} writes for 100 chunks", seen.len());
    }
}
