//! The event log of one task: the single source of truth for what happened.
//!
//! Every event (status, output, progress, done) is appended to `events.ndjson` in the
//! task's directory, one JSON object a line (`{"id":N,"event":"...",...}`), *before*
//! any client can see it. Ids start at 1 and strictly increase. Readers keep their own
//! cursor: recent records are served from a bounded in-memory tail shared by every
//! reader (zero-copy `Bytes`), older ones are read back from the file, found by binary
//! search on the ids. Output is stored once, in its records (`/log` decodes them).
//!
//! What is served is what the worker wrote: reads stop at the length the worker knows,
//! every record read back must parse and carry the next id in sequence, and anything
//! else is reported as damage (the stream then ends with an error), never served.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

mod scan;
use scan::{read_line_at, seek, valid_prefix};

/// The file of records.
pub const EVENTS_FILE: &str = "events.ndjson";
/// Where output bytes were kept (a second time) before they lived only in the records;
/// still read for the size of logs written then.
const OLD_OUTPUT_FILE: &str = "output.raw";

/// The in-memory tail is trimmed back to `TAIL_KEEP` bytes when it passes `TAIL_MAX`.
const TAIL_MAX: usize = 512 * 1024;
const TAIL_KEEP: usize = 256 * 1024;
/// What is kept in memory once the log is closed: only the `done` record, so that
/// thousands of finished tasks cost next to nothing.
const TAIL_CLOSED: usize = 0;

/// One record of the log, as stored (a JSON line ending in `\n`).
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub event: Bytes,
    pub offset: u64,
    pub line: Bytes,
}

impl Record {
    /// The JSON object without its trailing newline.
    pub fn json(&self) -> &[u8] {
        self.line.strip_suffix(b"\n").unwrap_or(&self.line)
    }

    pub fn is_done(&self) -> bool {
        &self.event[..] == b"done"
    }

    fn end(&self) -> u64 {
        self.offset + self.line.len() as u64
    }
}

/// Where a reader is: the last id it has, and (once known) the byte offset after it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor {
    pub after: u64,
    pub offset: Option<u64>,
}

impl Cursor {
    pub fn after(id: u64) -> Self {
        Cursor {
            after: id,
            offset: if id == 0 { Some(0) } else { None },
        }
    }
}

/// What a read found.
#[derive(Debug)]
pub enum Read {
    /// Records after the cursor (the cursor has moved past them).
    Records(Vec<Record>),
    /// Nothing new yet; the log is still open.
    Idle,
    /// Nothing new and the log is closed: the reader has seen everything.
    End,
}

struct Inner {
    events: Option<File>,
    next_id: u64,
    len: u64,
    output_bytes: u64,
    tail: VecDeque<Record>,
    tail_bytes: usize,
    closed: bool,
}

/// The log of one task. Appends come from one writer at a time (the lock orders them);
/// reads may come from any number of subscribers.
pub struct EventLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
    tx: watch::Sender<u64>,
}

impl EventLog {
    /// Creates a new, empty log in `dir` (which must exist).
    pub fn create(dir: &Path) -> io::Result<EventLog> {
        let open = |name: &str| {
            OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(dir.join(name))
        };
        let events = open(EVENTS_FILE)?;
        Ok(Self::from_parts(dir, Some(events), 1, 0, 0, false))
    }

    /// Opens the log of a task from an earlier run, keeping its valid prefix: a torn last
    /// line (the process died mid-write) and anything after a damaged line are cut off
    /// (and kept aside in `events.ndjson.cut`). Returns the log (open for appends) and
    /// its last record.
    pub fn reopen(dir: &Path) -> io::Result<(EventLog, Option<Record>)> {
        let path = dir.join(EVENTS_FILE);
        let events = OpenOptions::new().read(true).append(true).open(&path)?;
        let mut len = events.metadata()?.len();
        let (good_end, last) = valid_prefix(&events, len)?;
        if good_end < len {
            keep_cut(&events, &path, good_end, len)?;
            events.set_len(good_end)?;
            len = good_end;
        }
        let closed = last.as_ref().is_some_and(|r| r.is_done());
        // A closed log's done says how much output it holds (older logs: output.raw).
        let output_bytes = match last.as_ref().filter(|_| closed) {
            Some(done) => done_output_bytes(done).or_else(|| {
                std::fs::metadata(dir.join(OLD_OUTPUT_FILE))
                    .ok()
                    .map(|m| m.len())
            }),
            None => None,
        };
        let output_bytes = match output_bytes {
            Some(n) => n,
            None => count_output(&events, len)?,
        };
        let next_id = last.as_ref().map(|r| r.id + 1).unwrap_or(1);
        let log = Self::from_parts(dir, Some(events), next_id, len, output_bytes, false);
        if closed {
            log.close();
        }
        Ok((log, last))
    }

    fn from_parts(
        dir: &Path,
        events: Option<File>,
        next_id: u64,
        len: u64,
        output_bytes: u64,
        closed: bool,
    ) -> EventLog {
        let (tx, _) = watch::channel(len);
        EventLog {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                events,
                next_id,
                len,
                output_bytes,
                tail: VecDeque::new(),
                tail_bytes: 0,
                closed,
            }),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (appends are whole).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one event; `payload` is a JSON object (`{...}`) or empty. Returns its id.
    pub fn append(&self, event: &'static str, payload: &str) -> io::Result<u64> {
        self.append_payload(event, Payload::Object(payload))
    }

    /// Appends an `output` event carrying `text`, escaped straight into the record.
    pub fn append_output_text(&self, text: &str) -> io::Result<u64> {
        self.append_payload("output", Payload::Text(text))
    }

    /// Appends an `output` event carrying bytes that are not UTF-8 (as `b64`).
    pub fn append_output_bytes(&self, bytes: &[u8]) -> io::Result<u64> {
        self.append_payload("output", Payload::Bytes(bytes))
    }

    fn append_payload(&self, event: &'static str, payload: Payload<'_>) -> io::Result<u64> {
        let mut g = self.lock();
        if g.closed {
            return Err(io::Error::other(
                "the task's event log is closed: it already ended",
            ));
        }
        let id = g.next_id;
        let (line, raw) = payload.record(id, event)?;
        let f = g
            .events
            .as_mut()
            .ok_or_else(|| io::Error::other("event log is not open"))?;
        f.write_all(&line)?;
        let offset = g.len;
        g.len += line.len() as u64;
        g.output_bytes += raw.len() as u64;
        g.next_id += 1;
        let rec = Record {
            id,
            event: Bytes::from_static(event.as_bytes()),
            offset,
            line: Bytes::from(line),
        };
        g.tail_bytes += rec.line.len();
        g.tail.push_back(rec);
        if g.tail_bytes > TAIL_MAX {
            trim_tail(&mut g, TAIL_KEEP);
        }
        let len = g.len;
        if event == "done" {
            g.closed = true;
            g.events = None;
            trim_tail(&mut g, TAIL_CLOSED);
        }
        drop(g);
        self.tx.send_replace(len);
        Ok(id)
    }

    /// Marks the log closed without a new record (used when reopening a finished log).
    fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.events = None;
    }

    /// Flushes appended records to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        let g = self.lock();
        if let Some(f) = g.events.as_ref() {
            f.sync_data()?;
        }
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub fn last_id(&self) -> u64 {
        self.lock().next_id - 1
    }

    pub fn output_bytes(&self) -> u64 {
        self.lock().output_bytes
    }

    /// The last id and the output bytes up to it, read together (for `/log`).
    pub fn output_mark(&self) -> (u64, u64) {
        let g = self.lock();
        (g.next_id - 1, g.output_bytes)
    }

    /// A receiver that changes whenever a record is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Readers following this log right now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Reads what is after `cursor` from memory, if the memory tail covers it; `None`
    /// means the caller must call [`EventLog::read_file`] (off the async runtime).
    pub fn read_memory(&self, cursor: &mut Cursor, max_bytes: usize) -> Option<Read> {
        let g = self.lock();
        let front = g.tail.front();
        let covered = match (cursor.offset, front) {
            (Some(off), _) if off >= g.len => true,
            (Some(off), Some(f)) => off >= f.offset,
            (None, Some(f)) => cursor.after + 1 >= f.id,
            (None, None) => cursor.after + 1 >= g.next_id,
            (Some(_), None) => false,
        };
        if !covered {
            return None;
        }
        let start = g.tail.partition_point(|r| r.id <= cursor.after);
        if cursor.offset.is_none() {
            cursor.offset = Some(g.tail.get(start).map(|r| r.offset).unwrap_or(g.len));
        }
        let mut out = Vec::new();
        let mut size = 0;
        for r in g.tail.iter().skip(start) {
            if size > 0 && size + r.line.len() > max_bytes {
                break;
            }
            size += r.line.len();
            out.push(r.clone());
        }
        Some(finish_read(cursor, out, g.closed, g.len))
    }

    /// Reads what is after `cursor` from the file (blocking: call from a blocking thread).
    pub fn read_file(&self, cursor: &mut Cursor, max_bytes: usize) -> io::Result<Read> {
        let (len, closed) = {
            let g = self.lock();
            (g.len, g.closed)
        };
        let file = File::open(self.dir.join(EVENTS_FILE))?;
        let mut offset = match cursor.offset {
            Some(o) => o,
            None => seek(&file, len, cursor.after)?,
        };
        let mut out = Vec::new();
        let mut size = 0;
        let mut expect = cursor.after + 1;
        while offset < len && size < max_bytes {
            let Some(rec) = read_line_at(&file, offset, len)? else {
                return Err(damaged(offset, "a record without its end"));
            };
            if serde_json::from_slice::<serde::de::IgnoredAny>(rec.json()).is_err() {
                return Err(damaged(offset, "a record that is not JSON"));
            }
            offset = rec.end();
            if rec.id > cursor.after {
                if rec.id != expect {
                    return Err(damaged(
                        rec.offset,
                        &format!("record {} where {expect} was next", rec.id),
                    ));
                }
                expect += 1;
                size += rec.line.len();
                out.push(rec);
            }
        }
        if out.is_empty() {
            cursor.offset = Some(offset);
        }
        Ok(finish_read(cursor, out, closed, len))
    }
}

/// What follows `"event":"..."` in a record.
enum Payload<'a> {
    /// The fields of a JSON object (`{...}`), or nothing.
    Object(&'a str),
    /// Output text: `"data":"<escaped>"`.
    Text(&'a str),
    /// Output bytes that are not UTF-8: `"b64":"<base64>"`.
    Bytes(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// The record's line and the raw output bytes it carries.
    fn record(&self, id: u64, event: &str) -> io::Result<(Vec<u8>, &'a [u8])> {
        let extra = match self {
            Payload::Object(s) | Payload::Text(s) => s.len() + s.len() / 8,
            Payload::Bytes(b) => b.len() * 4 / 3 + 4,
        };
        let mut line = Vec::with_capacity(extra + event.len() + 40);
        line.extend_from_slice(b"{\"id\":");
        line.extend_from_slice(id.to_string().as_bytes());
        line.extend_from_slice(b",\"event\":\"");
        line.extend_from_slice(event.as_bytes());
        line.push(b'"');
        let raw: &'a [u8] = match *self {
            Payload::Object(body) => {
                let inner = body
                    .trim()
                    .strip_prefix('{')
                    .and_then(|b| b.strip_suffix('}'))
                    .unwrap_or("")
                    .trim();
                if !inner.is_empty() {
                    line.push(b',');
                    line.extend_from_slice(inner.as_bytes());
                }
                &[]
            }
            Payload::Text(text) => {
                line.extend_from_slice(b",\"data\":");
                serde_json::to_writer(&mut line, text).map_err(io::Error::other)?;
                text.as_bytes()
            }
            Payload::Bytes(bytes) => {
                use base64::Engine;
                line.extend_from_slice(b",\"b64\":\"");
                let mut enc = String::with_capacity(bytes.len() * 4 / 3 + 4);
                base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut enc);
                line.extend_from_slice(enc.as_bytes());
                line.push(b'"');
                bytes
            }
        };
        line.extend_from_slice(b"}\n");
        Ok((line, raw))
    }
}

fn damaged(offset: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the event log is damaged at byte {offset}: {what}"),
    )
}

/// The `output_bytes` a `done` record carries (logs written since it does).
fn done_output_bytes(done: &Record) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(done.json()).ok()?;
    v.get("output_bytes")?.as_u64()
}

/// The bytes an `output` record carries (its `data` text or its `b64` bytes).
pub fn output_of(rec: &Record) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Out<'a> {
        #[serde(borrow)]
        data: Option<std::borrow::Cow<'a, str>>,
        b64: Option<&'a str>,
    }
    if &rec.event[..] != b"output" {
        return None;
    }
    let o: Out<'_> = serde_json::from_slice(rec.json()).ok()?;
    match (o.data, o.b64) {
        (Some(t), _) => Some(t.into_owned().into_bytes()),
        (None, Some(b)) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        }
        (None, None) => None,
    }
}

/// The output bytes the records of the (valid) log `[0, len)` carry.
fn count_output(file: &File, len: u64) -> io::Result<u64> {
    let mut total = 0;
    let mut offset = 0;
    // Bounded by the file: every turn moves past one whole record.
    while offset < len {
        let Some(rec) = read_line_at(file, offset, len)? else {
            break;
        };
        offset = rec.end();
        total += output_of(&rec).map_or(0, |b| b.len() as u64);
    }
    Ok(total)
}

/// Copies the bytes `[from, len)` that reopening cuts off to `<log>.cut` (replacing an
/// older one), so that a damaged log can still be looked at.
fn keep_cut(events: &File, path: &Path, from: u64, len: u64) -> io::Result<()> {
    use std::io::{Read as _, Seek, SeekFrom};
    let cut_path = path.with_extension("ndjson.cut");
    let mut src = events.try_clone()?;
    src.seek(SeekFrom::Start(from))?;
    let mut cut = File::create(&cut_path)?;
    io::copy(&mut src.take(len - from), &mut cut)?;
    tracing::warn!(
        log = %path.display(),
        kept_bytes = from,
        cut_bytes = len - from,
        "the event log ends in a torn or damaged record: kept its valid prefix, the rest is in {}",
        cut_path.display()
    );
    Ok(())
}

fn trim_tail(g: &mut Inner, keep: usize) {
    while g.tail_bytes > keep && g.tail.len() > 1 {
        if let Some(r) = g.tail.pop_front() {
            g.tail_bytes -= r.line.len();
        }
    }
}

fn finish_read(cursor: &mut Cursor, out: Vec<Record>, closed: bool, len: u64) -> Read {
    if let Some(last) = out.last() {
        cursor.after = last.id;
        cursor.offset = Some(last.end());
        return Read::Records(out);
    }
    let at_end = cursor.offset.is_some_and(|o| o >= len);
    if closed && at_end {
        Read::End
    } else {
        Read::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let (log, last) = EventLog::reopen(dir.path()).unwrap();
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
        let (log, last) = EventLog::reopen(dir.path()).unwrap();
        assert_eq!(last.unwrap().id, 2);
        assert_eq!(
            log.append("status", r#"{"status":"interrupted"}"#).unwrap(),
            3
        );
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
            let (log, last) = EventLog::reopen(dir.path()).unwrap();
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
        let Read::Records(v) = log.read_memory(&mut c, 100).unwrap() else {
            panic!()
        };
        let parsed: serde_json::Value = serde_json::from_slice(v[0].json()).unwrap();
        assert_eq!(parsed["event"], "ping");
    }
}
