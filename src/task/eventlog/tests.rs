//! The event log against real files: appends, reads, seeks, reopen and damage.
use super::*;

/// Reopens a log this process dropped: a syncer thread may hold the dropped log's file
/// (and so its lock) a moment longer.
fn reopen(dir: &Path) -> (EventLog, Option<Record>) {
    for _ in 0..200 {
        match EventLog::reopen(dir) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => return r.unwrap(),
        }
    }
    panic!("the dropped log's file stayed locked for 2 s");
}

/// A second process holding a live log's lock (as another worker sharing the data
/// dir does) keeps this one from reopening it; once it is gone, it reopens.
#[test]
fn a_log_held_by_another_process_is_not_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::create(dir.path()).unwrap();
    log.append("status", r#"{"status":"queued"}"#).unwrap();
    let path = dir.path().join(EVENTS_FILE);
    // flock(1) holds the lock from another process while it sleeps (`-o`: the sleep
    // itself does not inherit it, so killing flock(1) drops the lock).
    let mut holder = std::process::Command::new("flock")
        .args(["-x", "-o"])
        .arg(&path)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) from util-linux");
    drop(log);
    // Bounded: until flock(1) holds the lock (it waits for ours to go, which a sync in
    // flight on a loaded disk keeps for a while: 5 s was not always enough in CI).
    for _ in 0..3000 {
        if super::held_elsewhere(dir.path()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(super::held_elsewhere(dir.path()));
    let err = EventLog::reopen(dir.path())
        .err()
        .expect("reopened a held log");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    assert!(err.to_string().contains("another worker"), "{err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let (log, last) = reopen(dir.path());
    assert_eq!(last.unwrap().id, 1);
    assert_eq!(log.last_id(), 1);
}

fn ids(r: Read) -> Vec<u64> {
    match r {
        Read::Records(v) => v.iter().map(|r| r.id).collect(),
        other => panic!("expected records, got {other:?}"),
    }
}

#[test]
fn append_read_seek_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::create(dir.path()).unwrap();
    assert_eq!(log.append("status", r#"{"status":"working"}"#).unwrap(), 1);
    let mut total_text = 0u64;
    for i in 0..2000 {
        let text = format!("line {i} {}\r\n", "x".repeat(300 + i % 300));
        total_text += text.len() as u64;
        log.append_output_text(&text).unwrap();
    }
    log.sync().unwrap();
    // From memory: only the newest records are there.
    let mut c = Cursor::after(1995);
    assert_eq!(
        ids(log.read_memory(&mut c, 1 << 20).unwrap()),
        vec![1996, 1997, 1998, 1999, 2000, 2001]
    );
    assert!(matches!(
        log.read_memory(&mut c, 1 << 20).unwrap(),
        Read::Idle
    ));
    // Old records are not in memory; the file has them, found by binary search.
    let mut c = Cursor::after(10);
    assert!(log.read_memory(&mut c, 1 << 20).is_none());
    for after in [0u64, 1, 2, 10, 999, 1500, 2000, 2001] {
        let mut c = Cursor::after(after);
        match log.read_file(&mut c, 1 << 16).unwrap() {
            Read::Records(v) => assert_eq!(v[0].id, after + 1),
            Read::Idle => assert_eq!(after, 2001),
            Read::End => panic!("not closed"),
        }
    }
    log.append("done", r#"{"status":"done"}"#).unwrap();
    assert!(log.append("output", "{}").is_err());
    let mut c = Cursor::after(2001);
    let recs = ids(log.read_memory(&mut c, 1 << 20).unwrap());
    assert_eq!(recs, vec![2002]);
    assert!(matches!(
        log.read_memory(&mut c, 1 << 20).unwrap(),
        Read::End
    ));
    drop(log);

    let (log, last) = reopen(dir.path());
    assert!(last.unwrap().is_done());
    assert!(log.is_closed());
    assert_eq!(log.last_id(), 2002);
    assert_eq!(log.output_bytes(), total_text);
}

#[test]
fn torn_last_line_is_cut_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::create(dir.path()).unwrap();
    log.append("status", r#"{"status":"queued"}"#).unwrap();
    log.append("status", r#"{"status":"working"}"#).unwrap();
    drop(log);
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.path().join(EVENTS_FILE))
        .unwrap();
    f.write_all(b"{\"id\":3,\"event\":\"out").unwrap();
    let (log, last) = reopen(dir.path());
    assert_eq!(last.unwrap().id, 2);
    assert_eq!(
        log.append("status", r#"{"status":"interrupted"}"#).unwrap(),
        3
    );
    log.sync().unwrap();
    let mut c = Cursor::after(0);
    assert_eq!(ids(log.read_file(&mut c, 1 << 20).unwrap()), vec![1, 2, 3]);
}

#[test]
fn damage_anywhere_keeps_the_valid_prefix_on_reopen() {
    let good: &[u8] = b"{\"id\":1,\"event\":\"status\",\"status\":\"queued\"}\n\
                        {\"id\":2,\"event\":\"output\",\"data\":\"a\"}\n";
    // What follows the two good records: a damaged middle line (a flipped byte makes
    // it not JSON), a repeated id, a gap, a repeated key, a byte that is not UTF-8, a
    // complete but garbage last line (this made reopen fail, and the task vanish),
    // records after done.
    let done3: &[u8] = b"{\"id\":3,\"event\":\"done\"}\n";
    for rest in [
        &b"{\"id\":3,\"event\":\"output\",\"data\":\"b}\n{\"id\":4,\"event\":\"done\"}\n"[..],
        b"{\"id\":2,\"event\":\"output\",\"data\":\"b\"}\n",
        b"{\"id\":5,\"event\":\"output\",\"data\":\"b\"}\n",
        b"{\"id\":3,\"event\":\"output\",\"id\":9}\n",
        b"{\"id\":3,\"event\":\"output\",\"data\":\"\xe2\x9d\"}\n",
        b"\0\0\0\n",
        &[done3, b"{\"id\":4,\"event\":\"output\"}\n"].concat(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(EVENTS_FILE), [good, rest].concat()).unwrap();
        let (log, last) = reopen(dir.path());
        let kept = if rest.starts_with(done3) { 3 } else { 2 };
        assert_eq!(last.unwrap().id, kept, "{rest:?}");
        let cut = std::fs::read(dir.path().join("events.ndjson.cut")).unwrap();
        assert!(rest.ends_with(&cut), "{rest:?}");
        if kept == 2 {
            assert_eq!(std::fs::read(log.dir().join(EVENTS_FILE)).unwrap(), good);
            assert_eq!(
                log.append("done", r#"{"status":"interrupted"}"#).unwrap(),
                3
            );
        }
        let mut c = Cursor::after(0);
        let v = ids(log.read_file(&mut c, 1 << 20).unwrap());
        assert_eq!(v, vec![1, 2, 3], "{rest:?}");
    }
}

#[test]
fn empty_payload_makes_valid_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::create(dir.path()).unwrap();
    log.append("ping", "").unwrap();
    let mut c = Cursor::after(0);
    log.sync().unwrap();
    let Read::Records(v) = log.read_memory(&mut c, 100).unwrap() else {
        panic!()
    };
    let parsed: serde_json::Value = serde_json::from_slice(v[0].json()).unwrap();
    assert_eq!(parsed["event"], "ping");
}

#[test]
fn records_are_served_once_synced_and_at_once_on_tmpfs() {
    // On a disk: appended records reach readers through the syncer.
    let dir = tempfile::tempdir().unwrap();
    assert!(super::durable::needs_sync(dir.path()));
    let log = EventLog::create(dir.path()).unwrap();
    for i in 0..50 {
        log.append_output_text(&format!("line {i}\r\n")).unwrap();
    }
    let mut c = Cursor::after(0);
    let mut seen = Vec::new();
    for _ in 0..500 {
        if let Some(Read::Records(v)) = log.read_memory(&mut c, 1 << 20) {
            seen.extend(v.iter().map(|r| r.id));
        }
        if seen.len() == 50 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(seen, (1..=50).collect::<Vec<u64>>());
    // In memory (tmpfs): nothing to sync, served at once.
    if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
        assert!(!super::durable::needs_sync(shm.path()));
        let log = EventLog::create(shm.path()).unwrap();
        log.append("status", r#"{"status":"working"}"#).unwrap();
        let mut c = Cursor::after(0);
        assert_eq!(ids(log.read_memory(&mut c, 1 << 20).unwrap()), vec![1]);
    }
}

#[test]
fn a_record_with_a_number_out_of_range_is_not_served() {
    // Found by fuzz/eventlog_reopen: valid JSON syntax that no JSON reader accepts.
    let dir = tempfile::tempdir().unwrap();
    let line = format!(
        "{{\"id\":1,\"event\":\"status\",\"x\":7.7E{}}}\n",
        "7".repeat(40)
    );
    std::fs::write(dir.path().join(EVENTS_FILE), line).unwrap();
    let (log, last) = reopen(dir.path());
    assert!(last.is_none());
    assert_eq!(log.last_id(), 0);
}

#[test]
fn a_new_logs_directory_is_synced_before_its_first_record_is_served() {
    // The syncer syncs the directory (and its parent) before it serves record 1.
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("t-1");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("meta.json"), "{}").unwrap();
    let log = EventLog::create(&dir).unwrap();
    assert!(log.lock().unsynced_dir.is_some());
    log.append("status", r#"{"status":"queued"}"#).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(30), log.first_durable())
            .await
            .expect("the first record became durable");
    });
    let g = log.lock();
    assert!(g.unsynced_dir.is_none() && !g.dir_syncing());
    assert!(g.durable > 0);
    drop(g);
    // A log that ends at once syncs its directory itself (or waits for the syncer)
    // before its end is served.
    let dir2 = parent.path().join("t-2");
    std::fs::create_dir(&dir2).unwrap();
    let log2 = EventLog::create(&dir2).unwrap();
    log2.append("status", r#"{"status":"queued"}"#).unwrap();
    log2.append("done", r#"{"status":"done"}"#).unwrap();
    let g = log2.lock();
    assert!(g.unsynced_dir.is_none() && g.closed);
    assert_eq!(g.durable, g.len);
}

#[test]
fn the_last_status_and_done_go_in_one_write_served_together_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::create(dir.path()).unwrap();
    log.append("status", r#"{"status":"working"}"#).unwrap();
    let done = log
        .append_all(&[
            ("status", r#"{"status":"done"}"#),
            ("done", r#"{"status":"done","exit_code":0}"#),
        ])
        .unwrap();
    assert_eq!(done, 3);
    // Durable (and so served) when append_all returns: no wait for a syncer.
    let mut c = Cursor::after(1);
    let recs = match log.read_file(&mut c, 1 << 20).unwrap() {
        Read::Records(v) => v,
        other => panic!("expected records, got {other:?}"),
    };
    let events: Vec<(u64, &[u8])> = recs.iter().map(|r| (r.id, &r.event[..])).collect();
    assert_eq!(events, vec![(2, &b"status"[..]), (3, &b"done"[..])]);
    assert!(recs[1].is_done());
    assert!(
        log.append_all(&[("status", "{}"), ("done", "{}")]).is_err(),
        "appended after done"
    );
    drop(log);
    let text = std::fs::read_to_string(dir.path().join(EVENTS_FILE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].starts_with(r#"{"id":2,"event":"status""#),
        "{text}"
    );
    assert!(lines[2].starts_with(r#"{"id":3,"event":"done""#), "{text}");
    let (log, last) = reopen(dir.path());
    assert!(last.unwrap().is_done());
    assert_eq!(log.last_id(), 3);
}

#[test]
fn a_follower_live_at_the_end_gets_the_last_records_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::create(dir.path()).unwrap();
    log.append("status", r#"{"status":"working"}"#).unwrap();
    log.append_output_bytes(b"hello").unwrap();
    log.append_all(&[
        ("status", r#"{"status":"done"}"#),
        ("done", r#"{"status":"done","exit_code":0}"#),
    ])
    .unwrap();
    // Caught up to the output when the task ended: the final status and done are
    // still in memory.
    let mut live = Cursor::after(2);
    let recs = match log.read_memory(&mut live, 1 << 20) {
        Some(Read::Records(v)) => v,
        other => panic!("expected records from memory, got {other:?}"),
    };
    let events: Vec<(u64, &[u8])> = recs.iter().map(|r| (r.id, &r.event[..])).collect();
    assert_eq!(events, vec![(3, &b"status"[..]), (4, &b"done"[..])]);
    // Only those: a follower further behind reads the file.
    assert!(log.read_memory(&mut Cursor::after(1), 1 << 20).is_none());
    assert_eq!(log.lock().tail.len(), 2);
}

#[test]
fn records_appended_together_are_one_write_and_served_together_with_the_dirs_sync() {
    // A scratch task's `queued` and `working`: the new log's first sync covers both.
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("t-1");
    std::fs::create_dir(&dir).unwrap();
    let log = EventLog::create(&dir).unwrap();
    let mut rx = log.subscribe();
    let last = log
        .append_all(&[
            ("status", r#"{"status":"queued"}"#),
            ("status", r#"{"status":"working"}"#),
        ])
        .unwrap();
    assert_eq!(last, 2);
    let len = log.lock().len;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // The durable length goes from nothing to both records, never to the first alone.
    let seen = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            rx.wait_for(|&d| d > 0).await.map(|d| *d).unwrap()
        })
        .await
        .expect("the records became durable")
    });
    assert_eq!(seen, len);
    let g = log.lock();
    assert!(g.unsynced_dir.is_none());
    drop(g);
    let mut c = Cursor::after(0);
    assert_eq!(ids(log.read_memory(&mut c, 1 << 20).unwrap()), vec![1, 2]);
    let text = std::fs::read_to_string(dir.join(EVENTS_FILE)).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
}
