//! Crash consistency, seen as a client sees it: the real worker is killed with SIGKILL at
//! random moments while tasks write text and binary output fast and real SSE clients
//! follow them, and restarted on the same data dir each time; then logs damaged at
//! random bytes are served again. The seed is printed; `CRASH_SEED=<n>` repeats a run.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Most kills, and the most time the kill loop may take (whichever comes first).
const MAX_KILLS: usize = 300;
const MAX_TIME: Duration = Duration::from_secs(150);
/// Finished tasks the worker keeps; tasks checked again in later rounds are newer.
const KEEP_TASKS: &str = "40";
/// How many past rounds' tasks are checked again after each restart.
const RECHECK_ROUNDS: usize = 3;
const T: Duration = Duration::from_secs(30);

/// splitmix64: a small seeded generator, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn seeded(name: &str) -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{name}: seed {seed} (repeat with CRASH_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Text lines, numbered, as fast as the shell writes them (bounded: it ends by itself
/// long after any round).
const TEXT: &str = "i=0; while [ $i -lt 3000000 ]; do echo \"line $i\"; i=$((i+1)); done";
/// Binary bytes (not UTF-8), fast, bounded the same way.
const BINARY: &str = "i=0; while [ $i -lt 100000 ]; do head -c 3000 /dev/urandom; i=$((i+1)); done";
/// A task that ends by itself at once: its outcome must survive every later kill.
const QUICK: &str = "echo quick";

/// A task this test submitted and was given the id of.
struct Tracked {
    id: String,
    /// Whether it can end by itself within a round (else a kill must interrupt it).
    quick: bool,
    /// What its client was sent before the kill.
    seen: Arc<Mutex<Vec<Event>>>,
    /// Its whole replay once it ended: later replays must be the same.
    ended: Option<Vec<(u64, String, Value)>>,
}

/// Follows a POST /work stream until the connection breaks; returns the task's id.
async fn submit_and_follow(
    c: &reqwest::Client,
    w: &Worker,
    prompt: &str,
    seen: Arc<Mutex<Vec<Event>>>,
) -> Option<String> {
    let resp = c
        .post(w.url("/work"))
        .json(&json!({ "prompt": prompt }))
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    let id = resp.headers().get("x-task-id")?.to_str().ok()?.to_string();
    tokio::spawn(async move {
        let mut sse = Sse::new(resp);
        // Bounded by the worker's death (the test kills it within a second or so).
        while let Ok(Some(e)) = sse.try_next(T).await {
            seen.lock().unwrap().push(e);
        }
    });
    Some(id)
}

/// Requests whose connection was reset before any answer came (the client retries them,
/// as EventSource does; see `open_events_retrying`).
static RESETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// GET /work/<id>/events; a connection reset before any answer is retried (at most
/// twice), counted in [`RESETS`] and reported with who listens on the port.
async fn open_events_retrying(
    c: &reqwest::Client,
    w: &Worker,
    id: &str,
    ctx: &str,
) -> reqwest::Response {
    let mut last = None;
    for _ in 0..3 {
        match c.get(w.url(&format!("/work/{id}/events"))).send().await {
            Ok(r) => return r,
            Err(e) if e.is_request() || e.is_connect() => {
                RESETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let ss = std::process::Command::new("ss")
                    .args(["-tanp", &format!("sport = :{}", w.port)])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                eprintln!(
                    "{ctx}: asking for {id} (worker pid {}, {}): {e:?}; retrying\nsockets:\n{ss}",
                    w.pid(),
                    exit_of(w.pid())
                );
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "{ctx}: asking for {id}: {e:?}\nworker log:\n{}",
                w.log_text()
            ),
        }
    }
    panic!(
        "{ctx}: asking for {id}: {last:?} three times\nworker log:\n{}",
        w.log_text()
    )
}

/// Who listens on the worker's port, when it is not the worker.
fn listener_not_ours(w: &Worker) -> Option<String> {
    let out = std::process::Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{}", w.port)])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (!text.contains(&format!("pid={},", w.pid()))).then_some(text)
}

/// How a child process ended, without reaping it ("running" while it runs).
fn exit_of(pid: i32) -> String {
    // SAFETY: `info` is a plain struct the call fills in; WNOWAIT leaves the child as is.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if rc != 0 || info.si_pid() == 0 {
            return "running".into();
        }
        match info.si_code {
            libc::CLD_EXITED => format!("exited with {}", info.si_status()),
            _ => format!("killed by signal {}", info.si_status()),
        }
    }
}

/// The task's whole stream from id 0, checked: JSON records, ids 1, 2, 3... without
/// gaps, ending with `done`.
async fn replay(c: &reqwest::Client, w: &Worker, id: &str, ctx: &str) -> Vec<Event> {
    let r = open_events_retrying(c, w, id, ctx).await;
    assert_eq!(r.status(), 200, "{ctx}: task {id} not served after restart");
    let mut sse = Sse::new(r);
    let mut out = Vec::new();
    // Bounded: a finished task's stream ends; `try_next` gives up after T of silence.
    loop {
        match sse.try_next(T).await {
            Ok(Some(e)) => out.push(e),
            Ok(None) => break,
            Err(e) => panic!("{ctx}: replay of {id} broke (a half-written record?): {e}"),
        }
    }
    for (i, e) in out.iter().enumerate() {
        assert_eq!(e.id, i as u64 + 1, "{ctx}: {id}: ids must run 1, 2, 3...");
        assert!(
            e.data.is_object(),
            "{ctx}: {id}: record {} is not an object",
            e.id
        );
    }
    assert_eq!(
        out.last().map(|e| e.event.as_str()),
        Some("done"),
        "{ctx}: {id}: a task of a killed worker must end with done"
    );
    out
}

fn triples(evs: &[Event]) -> Vec<(u64, String, Value)> {
    evs.iter()
        .map(|e| (e.id, e.event.clone(), e.data.clone()))
        .collect()
}

/// Every check after a restart, for one task.
async fn check_task(c: &reqwest::Client, w: &Worker, t: &mut Tracked, ctx: &str) {
    let evs = replay(c, w, &t.id, ctx).await;
    let got = triples(&evs);
    if let Some(ended) = &t.ended {
        assert_eq!(&got, ended, "{ctx}: {} changed after it had ended", t.id);
        return;
    }
    let seen = triples(&t.seen.lock().unwrap());
    assert!(
        seen.len() <= got.len() && got[..seen.len()] == seen[..],
        "{ctx}: {}: what the client was sent ({} events) is not what is served now ({} events)",
        t.id,
        seen.len(),
        got.len()
    );
    let end = &evs[evs.len() - 1].data;
    if !t.quick {
        assert_eq!(end["status"], "interrupted", "{ctx}: {}: {end}", t.id);
        let view: Value = get_json(c, w.url(&format!("/work/{}", t.id))).await;
        assert_eq!(view["status"], "interrupted", "{ctx}: {}", t.id);
    } else {
        let s = end["status"].as_str().unwrap_or("");
        assert!(
            matches!(s, "done" | "interrupted"),
            "{ctx}: {}: {end}",
            t.id
        );
    }
    t.ended = Some(got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let mut rng = Rng::seeded("sigkill_at_random_moments_loses_nothing");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let env = [
        ("OUTPOST_KEEP_TASKS", KEEP_TASKS),
        ("OUTPOST_MAX_TASKS", "4"),
    ];
    let started = Instant::now();
    let mut rounds: Vec<Vec<Tracked>> = Vec::new();
    let (mut kills, mut events_seen) = (0usize, 0usize);
    // Time spent starting the worker, checking, and running tasks until the kill.
    let mut spent = [Duration::ZERO; 3];
    while kills < MAX_KILLS && started.elapsed() < MAX_TIME {
        let ctx = format!("after kill {kills}");
        // The worker starts every time (start_on fails the test if it does not listen).
        let t0 = Instant::now();
        // A new port each time: while a killed worker's port is free, another test
        // process probing for a free port may listen on it for a moment.
        let port = free_port();
        let mut w = Worker::start_on(&data, port, &env);
        if let Some(other) = listener_not_ours(&w) {
            eprintln!(
                "{ctx}: port {port} answered but is not held by the worker (pid {}): {other}",
                w.pid()
            );
        }
        spent[0] += t0.elapsed();
        let t0 = Instant::now();
        let c = h1();
        let from = rounds.len().saturating_sub(RECHECK_ROUNDS);
        for round in &mut rounds[from..] {
            for t in round.iter_mut() {
                check_task(&c, &w, t, &ctx).await;
            }
        }
        spent[1] += t0.elapsed();
        // New tasks with clients following them, then a kill at a random moment:
        // during admission, at the first bytes, or in full flow.
        let mut round = Vec::new();
        for _ in 0..=rng.below(2) {
            let (prompt, quick) = match rng.below(5) {
                0 => (QUICK, true),
                1 | 2 => (BINARY, false),
                _ => (TEXT, false),
            };
            let seen = Arc::new(Mutex::new(Vec::new()));
            if let Some(id) = submit_and_follow(&c, &w, prompt, seen.clone()).await {
                round.push(Tracked {
                    id,
                    quick,
                    seen,
                    ended: None,
                });
            }
        }
        let wait = match rng.below(4) {
            0 => rng.below(20),
            _ => 20 + rng.below(300),
        };
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(wait)).await;
        spent[2] += t0.elapsed();
        w.signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
            .expect("the worker dies of SIGKILL");
        kills += 1;
        // The clients' connections break with the worker; let them take what they got.
        tokio::time::sleep(Duration::from_millis(20)).await;
        for t in &round {
            events_seen += t.seen.lock().unwrap().len();
        }
        drop(w);
        rounds.push(round);
    }
    // One last restart checks the last round.
    let w = Worker::start_on(&data, free_port(), &env);
    let c = h1();
    let from = rounds.len().saturating_sub(RECHECK_ROUNDS);
    for round in &mut rounds[from..] {
        for t in round.iter_mut() {
            check_task(&c, &w, t, "after the last kill").await;
        }
    }
    let tasks: usize = rounds.iter().map(Vec::len).sum();
    eprintln!(
        "{kills} kills in {:.1} s ({:.1} s starting, {:.1} s checking, {:.1} s running), \
         {tasks} tasks, {events_seen} events seen by clients",
        started.elapsed().as_secs_f64(),
        spent[0].as_secs_f64(),
        spent[1].as_secs_f64(),
        spent[2].as_secs_f64(),
    );
    let resets = RESETS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("connections reset before an answer (retried): {resets}");
    assert!(
        resets * 20 <= kills,
        "{resets} connection resets in {kills} rounds"
    );
    assert!(kills >= 100, "only {kills} kills in {MAX_TIME:?}");
    assert!(events_seen > 1000, "clients saw only {events_seen} events");
}

/// Where the records of an events file end (offsets just past each `\n`).
fn line_ends(bytes: &[u8]) -> Vec<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect()
}

#[tokio::test]
async fn a_log_cut_or_damaged_anywhere_keeps_its_valid_prefix() {
    let mut rng = Rng::seeded("a_log_cut_or_damaged_anywhere_keeps_its_valid_prefix");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let w = Worker::start_on(&data, free_port(), &[]);
    let c = h1();
    // Small pauses, so that the output comes in many events.
    let prompt = "i=0; while [ $i -lt 60 ]; do echo \"line $i ✓\"; printf '\\377\\376'; \
                  sleep 0.02; i=$((i+1)); done";
    let id = submit(&c, &w, json!({ "prompt": prompt })).await;
    wait_terminal(&c, &w, &id, T).await;
    let original = triples(&events_of(&c, &w, &id).await);
    assert!(original.len() > 20, "{original:?}");
    drop(w);
    let path = data.join("tasks").join(&id).join("events.ndjson");
    let pristine = std::fs::read(&path).unwrap();
    let ends = line_ends(&pristine);
    assert_eq!(ends.len(), original.len(), "one line per event");
    let mut cases: HashMap<&str, usize> = HashMap::new();
    for round in 0..40 {
        let at = rng.below(pristine.len() as u64) as usize;
        let mut damaged = pristine.clone();
        let kind = match rng.below(3) {
            0 => {
                damaged.truncate(at);
                "cut"
            }
            1 => {
                damaged[at] ^= 1 << rng.below(8);
                "flipped bit"
            }
            _ => {
                let n = (1 + rng.below(64) as usize).min(damaged.len() - at);
                for b in &mut damaged[at..at + n] {
                    *b = rng.below(256) as u8;
                }
                "garbage"
            }
        };
        *cases.entry(kind).or_default() += 1;
        // Records wholly before the damage are the valid prefix.
        let whole = ends.iter().filter(|&&e| e <= at).count();
        std::fs::write(&path, &damaged).unwrap();
        let ctx = format!("round {round}: {kind} at byte {at} of {}", pristine.len());
        let w = Worker::start_on(&data, free_port(), &[]);
        let c = h1();
        let got = triples(&replay(&c, &w, &id, &ctx).await);
        assert_eq!(
            got[..whole],
            original[..whole],
            "{ctx}: the valid prefix is not served as it was"
        );
        let view: Value = get_json(&c, w.url(&format!("/work/{id}"))).await;
        let status = view["status"].as_str().unwrap_or("");
        assert!(
            matches!(status, "done" | "interrupted"),
            "{ctx}: status {status}"
        );
        // Past the valid prefix: the ending the worker wrote on restart (status, done),
        // or, where the damage left the record valid JSON with its own id (a changed
        // letter in its text), that record, the rest as it was, and an ending of the
        // worker's where the change took the log's `done` away (`done` -> `fone`).
        let rest = &got[whole..];
        let is_ending = |(_, ev, _): &(u64, String, Value)| ev == "status" || ev == "done";
        let ending = rest.iter().all(is_ending);
        let after = &original[whole + 1..];
        let undetectable = !rest.is_empty()
            && rest[0].0 == original[whole].0
            && rest[1..].starts_with(after)
            && rest[1 + after.len()..].iter().all(is_ending);
        assert!(ending || undetectable, "{ctx}: after the prefix: {rest:?}");
        drop(w);
    }
    eprintln!("damaged logs served: {cases:?}");
}
