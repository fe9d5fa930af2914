//! Test support for the client: runs the real `outpost` client subcommands as
//! processes (stdout and stderr collected as they come), and a TCP proxy on 127.0.0.1
//! that cuts connections mid-stream, and the client on a PTY the test drives.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{CommandBuilder, PtySize};

const PTY_WAIT: Duration = Duration::from_secs(30);

/// A client process with its output collected.
pub struct Client {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<u8>>>,
    pub stderr: Arc<Mutex<Vec<u8>>>,
    _home: tempfile::TempDir,
}

/// The client binary with a clean environment (no token, no pool file, no URL).
pub fn command(args: &[&str]) -> (Command, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.args(args)
        .env_remove("OUTPOST_TOKEN")
        .env_remove("OUTPOST_POOL")
        .env_remove("OUTPOST_URL")
        .env("HOME", home.path());
    (cmd, home)
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        // Bounded by the pipe: ends at EOF when the child exits.
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    buf
}

impl Client {
    pub fn spawn(args: &[&str]) -> Client {
        let (mut cmd, home) = command(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Client {
            child,
            stdout,
            stderr,
            _home: home,
        }
    }

    /// Waits (bounded) for the exit code; panics with the stderr after `max`.
    pub fn wait(&mut self, max: Duration) -> i32 {
        let end = Instant::now() + max;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return st.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!(
            "client did not exit within {max:?}; stderr:\n{}",
            self.stderr_text()
        );
    }

    pub fn stdout_bytes(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until stdout holds `needle`.
    pub fn wait_stdout(&self, needle: &[u8], max: Duration) {
        let end = Instant::now() + max;
        while Instant::now() < end {
            if find(&self.stdout.lock().unwrap(), needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "stdout never held {:?} within {max:?}; stderr:\n{}",
            String::from_utf8_lossy(needle),
            self.stderr_text()
        );
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs a client to its end; returns (exit code, stdout, stderr).
pub fn run(args: &[&str], max: Duration) -> (i32, Vec<u8>, String) {
    let mut c = Client::spawn(args);
    let code = c.wait(max);
    (code, c.stdout_bytes(), c.stderr_text())
}

/// A TCP proxy on 127.0.0.1 to `upstream`. Each of the first `cuts` connections that
/// carries more than `after_bytes` towards the client is cut there (both ways shut).
pub struct Proxy {
    pub port: u16,
    pub cut: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(upstream: u16, cuts: usize, after_bytes: usize) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (c, n) = (cut.clone(), connections.clone());
        std::thread::spawn(move || {
            // Lives as long as the test process; each connection ends with its peers.
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let c = c.clone();
                let (c_in, s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(c_in, s_out, None));
                std::thread::spawn(move || pump(server, client, Some((c, cuts, after_bytes))));
            }
        });
        Proxy {
            port,
            cut,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cuts(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Option<(Arc<AtomicUsize>, usize, usize)>) {
    let mut buf = [0u8; 1024];
    let mut passed = 0usize;
    // Bounded by the connection: ends at EOF, an error, or the cut.
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut n_send = n;
        let mut cutting = false;
        if let Some((count, cuts, after)) = &cut {
            if passed + n > *after && count.load(Ordering::SeqCst) < *cuts {
                count.fetch_add(1, Ordering::SeqCst);
                n_send = after.saturating_sub(passed);
                cutting = true;
            }
        }
        if to.write_all(&buf[..n_send]).is_err() {
            break;
        }
        passed += n_send;
        if cutting {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// A client process on a PTY the test holds (its stdin, stdout and stderr).
pub struct Pty {
    master: Box<dyn portable_pty::MasterPty + Send>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    screen: Arc<Mutex<Vec<u8>>>,
    _home: tempfile::TempDir,
}

pub fn size(rows: u16, cols: u16) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

impl Pty {
    /// Starts the client with `args` on a 30x100 terminal.
    pub fn start(args: &[&str]) -> Pty {
        let pair = portable_pty::native_pty_system()
            .openpty(size(30, 100))
            .unwrap();
        let home = tempfile::tempdir().unwrap();
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(args);
        cmd.env_remove("OUTPOST_TOKEN");
        cmd.env_remove("OUTPOST_POOL");
        cmd.env("HOME", home.path());
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let s = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Bounded by the PTY: ends when the client side closes.
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => s.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        Pty {
            master: pair.master,
            writer,
            child,
            screen,
            _home: home,
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        self.master.resize(size(rows, cols)).unwrap();
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until the screen shows `needle` at least `times` times.
    pub fn wait_for(&self, needle: &str, times: usize) {
        let end = Instant::now() + PTY_WAIT;
        while Instant::now() < end {
            if self.text().matches(needle).count() >= times {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the screen never showed {needle:?} x{times} within {PTY_WAIT:?}:\n{}",
            self.text()
        );
    }

    pub fn type_keys(&mut self, keys: &[u8]) {
        self.writer.write_all(keys).unwrap();
        self.writer.flush().unwrap();
    }

    pub fn wait_exit(&mut self) -> u32 {
        let end = Instant::now() + PTY_WAIT;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last bytes off the PTY.
                std::thread::sleep(Duration::from_millis(200));
                return st.exit_code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("attach did not exit:\n{}", self.text());
    }
}
