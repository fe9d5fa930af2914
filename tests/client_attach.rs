//! `outpost attach -i` under a PTY the test drives (portable-pty): the local terminal
//! goes raw, typed text reaches a task running `cat` and comes back, Ctrl-] detaches
//! and leaves the task running, a window size change reaches `stty size` in the agent,
//! and the end of the task ends the attach with its exit code.

mod clientkit;
mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use portable_pty::{CommandBuilder, PtySize};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

struct Attached {
    master: Box<dyn portable_pty::MasterPty + Send>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    screen: Arc<Mutex<Vec<u8>>>,
    _home: tempfile::TempDir,
}

fn size(rows: u16, cols: u16) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

impl Attached {
    fn start(url: &str, id: &str) -> Attached {
        let pair = portable_pty::native_pty_system()
            .openpty(size(30, 100))
            .unwrap();
        let home = tempfile::tempdir().unwrap();
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(["attach", "-i", "--url", url, id]);
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
        let a = Attached {
            master: pair.master,
            writer,
            child,
            screen,
            _home: home,
        };
        a.wait_for("Ctrl-] detaches", 1);
        a
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until the screen shows `needle` at least `times` times.
    fn wait_for(&self, needle: &str, times: usize) {
        let end = Instant::now() + T;
        while Instant::now() < end {
            if self.text().matches(needle).count() >= times {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the screen never showed {needle:?} x{times}:\n{}",
            self.text()
        );
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.writer.write_all(keys).unwrap();
        self.writer.flush().unwrap();
    }

    fn wait_exit(&mut self) -> u32 {
        let end = Instant::now() + T;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.exit_code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("attach did not exit:\n{}", self.text());
    }
}

fn status_of(w: &Worker, id: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let v: Value = rt.block_on(get_json(&h1(), w.url(&format!("/work/{id}"))));
    v["status"].as_str().unwrap().to_string()
}

fn start_task(w: &Worker, prompt: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(submit(&h1(), w, json!({ "prompt": prompt })));
    let end = Instant::now() + T;
    while status_of(w, &id) != "working" {
        assert!(Instant::now() < end, "the task never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    id
}

#[test]
fn typed_text_reaches_cat_and_comes_back_and_ctrl_bracket_detaches() {
    let w = Worker::start(&[]);
    let id = start_task(&w, "cat");
    let mut a = Attached::start(&w.url(""), &id);
    a.type_keys(b"hello-outpost\r");
    // Once echoed by the agent's terminal, once written back by cat.
    a.wait_for("hello-outpost", 2);
    // Raw mode: Ctrl-C is a key for the agent, not a signal for the client.
    a.type_keys(b"second line\r");
    a.wait_for("second line", 2);
    a.type_keys(&[0x1d]);
    assert_eq!(a.wait_exit(), 130, "{}", a.text());
    assert!(a.text().contains("detached"), "{}", a.text());
    assert_eq!(
        status_of(&w, &id),
        "working",
        "detaching leaves the task running"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(cancel(&h1(), &w, &id));
    let log = rt.block_on(async {
        let v = wait_terminal(&h1(), &w, &id, T).await;
        assert_eq!(v["status"], "cancelled");
        h1().get(w.url(&format!("/work/{id}/log")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert_eq!(log.matches("hello-outpost").count(), 2, "{log:?}");
}

#[test]
fn a_window_size_change_reaches_stty_size_and_the_task_end_ends_the_attach() {
    let w = Worker::start(&[]);
    let id = start_task(
        &w,
        "while IFS= read -r l; do if [ \"$l\" = size ]; then stty size; else echo \"got:$l\"; fi; done; exit 4",
    );
    let mut a = Attached::start(&w.url(""), &id);
    // The size on attach is sent first.
    a.type_keys(b"size\r");
    a.wait_for("30 100", 1);
    a.master.resize(size(50, 132)).unwrap();
    // The resize and the next line travel separately: ask until the new size shows.
    let end = Instant::now() + T;
    while !a.text().contains("50 132") {
        assert!(
            Instant::now() < end,
            "the new size never arrived:\n{}",
            a.text()
        );
        a.type_keys(b"size\r");
        std::thread::sleep(Duration::from_millis(200));
    }
    a.type_keys(b"abc\r");
    a.wait_for("got:abc", 1);
    // EOF ends the loop and the task (exit 4): the attach ends with that code.
    a.type_keys(&[0x04]);
    assert_eq!(a.wait_exit(), 4, "{}", a.text());
    assert!(a.text().contains("failed · exit 4"), "{}", a.text());
}
