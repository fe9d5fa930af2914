//! An event log read back from arbitrary file bytes (what a crash, a full disk or a bad
//! block can leave). Properties: reopening never fails; what is kept is a prefix of the
//! file; every record served parses as JSON and says the id and event it is served
//! under; ids run 1, 2, 3... without gaps; nothing follows `done`; a reader can start
//! after any id; a log left open takes new records after the kept ones.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost::task::eventlog::{Cursor, EventLog, Read, Record, EVENTS_FILE};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("outpost-fuzz-eventlog-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn read_all(log: &EventLog, after: u64) -> Vec<Record> {
    let mut c = Cursor::after(after);
    let mut out = Vec::new();
    // Bounded: every turn moves past at least one record or ends.
    for _ in 0..1_000_000 {
        match log.read_file(&mut c, 4096).expect("reading a reopened log") {
            Read::Records(v) => out.extend(v),
            Read::Idle | Read::End => return out,
        }
    }
    panic!("reading never ended");
}

fn check_records(recs: &[Record]) {
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.id, i as u64 + 1, "ids must run 1, 2, 3...");
        let v: serde_json::Value = serde_json::from_slice(r.json())
            .unwrap_or_else(|e| panic!("record {} served is not JSON ({e}): {:?}", r.id, r.line));
        assert_eq!(v["id"].as_u64(), Some(r.id), "{:?}", r.line);
        assert_eq!(
            v["event"].as_str().map(str::as_bytes),
            Some(&r.event[..]),
            "{:?}",
            r.line
        );
        assert!(r.line.ends_with(b"\n"));
        if i + 1 < recs.len() {
            assert!(!r.is_done(), "a record after done");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    std::fs::write(d.join(EVENTS_FILE), data).unwrap();
    let (log, last) = EventLog::reopen(d).unwrap_or_else(|e| panic!("reopen failed: {e}"));
    let kept = std::fs::read(d.join(EVENTS_FILE)).unwrap();
    assert!(
        data.starts_with(&kept),
        "what is kept is not a prefix of the file"
    );
    let recs = read_all(&log, 0);
    check_records(&recs);
    assert_eq!(recs.iter().map(|r| r.line.len()).sum::<usize>(), kept.len());
    assert_eq!(last.as_ref().map(|r| r.id), recs.last().map(|r| r.id));
    assert_eq!(log.last_id(), recs.len() as u64);
    assert_eq!(log.is_closed(), recs.last().is_some_and(Record::is_done));
    for after in [1, recs.len() as u64 / 2, recs.len() as u64] {
        let tail = read_all(&log, after);
        assert_eq!(
            tail.first().map(|r| r.id),
            recs.get(after as usize).map(|r| r.id),
            "after {after}"
        );
    }
    if !log.is_closed() {
        let n = recs.len() as u64;
        assert_eq!(
            log.append("status", r#"{"status":"interrupted"}"#).unwrap(),
            n + 1
        );
        assert_eq!(
            log.append("done", r#"{"status":"interrupted"}"#).unwrap(),
            n + 2
        );
        let all = read_all(&log, 0);
        check_records(&all);
        assert_eq!(all.len() as u64, n + 2);
        assert!(all.last().unwrap().is_done());
    }
});
