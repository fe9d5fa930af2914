//! The baselines' PTY: runs `sh -c <command>` in a fresh pseudo-terminal with nothing
//! else around it and reads its output straight off the master, as outpost's agent does.
//! Blocking: call from a thread or `spawn_blocking`.

use anyhow::{Context, Result};
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use std::io::Read;
use std::time::{Duration, Instant};

/// What one PTY run did, timed from just before the spawn.
#[derive(Debug, Clone)]
pub struct PtyRun {
    pub bytes: u64,
    pub first_byte: Option<Duration>,
    pub last_byte: Option<Duration>,
    /// Spawn to exit status collected.
    pub elapsed: Duration,
    pub success: bool,
}

/// Runs `sh -c command` in a PTY, handing every chunk read to `on_chunk`, until the
/// program exits and its output is drained.
pub fn run(command: &str, mut on_chunk: impl FnMut(&[u8])) -> Result<PtyRun> {
    let t0 = Instant::now();
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: 24,
            cols: 80,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("opening a PTY for the baseline")?;
    let mut cmd = CommandBuilder::new("sh");
    cmd.arg("-c");
    cmd.arg(command);
    let mut child = pair
        .slave
        .spawn_command(cmd)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("spawning the baseline command in a PTY")?;
    drop(pair.slave);
    let mut reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("reading the baseline PTY")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    let mut first_byte = None;
    let mut last_byte = None;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let at = t0.elapsed();
                first_byte.get_or_insert(at);
                last_byte = Some(at);
                bytes += n as u64;
                on_chunk(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: every slave fd is closed (the program exited); the output is drained.
            Err(_) => break,
        }
    }
    let status = child.wait().context("waiting for the baseline command")?;
    Ok(PtyRun {
        bytes,
        first_byte,
        last_byte,
        elapsed: t0.elapsed(),
        success: status.success(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_byte_a_program_writes() {
        let mut seen = 0usize;
        let r = run("head -c 100000 /dev/zero | tr '\\0' a", |c| seen += c.len()).unwrap();
        assert_eq!(r.bytes, 100_000);
        assert_eq!(seen, 100_000);
        assert!(r.success);
        assert!(r.first_byte.is_some());
    }

    #[test]
    fn exit_status_is_reported() {
        let r = run("exit 3", |_| {}).unwrap();
        assert!(!r.success);
        assert_eq!(r.bytes, 0);
    }
}
