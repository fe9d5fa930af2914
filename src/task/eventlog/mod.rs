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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

mod crew;
mod durable;
mod encode;
mod fanout;
use encode::Payload;
mod owner;
mod read;
pub use owner::held_elsewhere;
mod scan;
use scan::{read_line_at, valid_prefix};

/// The file of records.
pub const EVENTS_FILE: &str = "events.ndjson";
/// Where output bytes were kept (a second time) before they lived only in the records;
/// still read for the size of logs written then.
const OLD_OUTPUT_FILE: &str = "output.raw";

/// The in-memory tail is trimmed back to `TAIL_KEEP` bytes of served (durable)
/// records when it passes `TAIL_MAX`. Records still waiting for their sync are kept
/// too, up to `TAIL_UNSYNCED` bytes: a fast writer gets well ahead of a slow sync, and
/// its readers would otherwise find their next records gone from memory the moment
/// they are served, and read them back from the file.
const TAIL_MAX: usize = 512 * 1024;
const TAIL_KEEP: usize = 256 * 1024;
const TAIL_UNSYNCED: usize = 4 * 1024 * 1024;
/// Output records up to this size are synced by the thread appending them when no
/// sync is under way (see `append_payload`).
const INLINE_SYNC_MAX: usize = 2 * 1024;
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
    events: Option<Arc<File>>,
    next_id: u64,
    len: u64,
    /// How much of the file is on stable storage: readers are served up to here only.
    durable: u64,
    /// Whether the file system needs syncs (not on tmpfs: there is nothing to sync).
    needs_sync: bool,
    /// Whether the syncer has this log queued.
    sync_queued: bool,
    /// A syncer is syncing this log now: no second one starts on it meanwhile (it
    /// would sync the same files at the same time); the one at it queues the log
    /// again when more came.
    syncing: bool,
    /// A new log's directory (its files, itself, its entry in the parent) is not known
    /// to be on stable storage yet: nothing is served before it is (see `durable`).
    unsynced_dir: Option<PathBuf>,
    output_bytes: u64,
    tail: VecDeque<Record>,
    tail_bytes: usize,
    closed: bool,
}

impl Inner {
    /// A syncer is syncing the new log's directory now (a sync begun while it was
    /// unsynced, and not yet through it).
    fn dir_syncing(&self) -> bool {
        self.syncing && self.unsynced_dir.is_some()
    }
}

/// The log of one task. Appends come from one writer at a time (the lock orders them);
/// reads may come from any number of subscribers.
pub struct EventLog {
    dir: PathBuf,
    shared: Arc<Shared>,
}

/// What the log and its syncer share: the state, and the durable length readers follow.
pub(super) struct Shared {
    inner: Mutex<Inner>,
    tx: watch::Sender<u64>,
    /// Signalled when the syncer has synced a new log's directory.
    dir_done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (appends are whole).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For the syncer: `len` bytes are on stable storage; returns whether more came
    /// meanwhile (so it queues the log again).
    pub(super) fn synced(&self, len: u64) -> bool {
        self.served_up_to(self.lock(), len)
    }

    /// For the syncer: its sync (begun by `to_sync`) is over and covered `len` bytes;
    /// returns whether more came meanwhile, as [`Shared::synced`].
    pub(super) fn sync_ended(&self, len: u64) -> bool {
        let mut g = self.lock();
        g.syncing = false;
        self.served_up_to(g, len)
    }

    fn served_up_to(&self, mut g: MutexGuard<'_, Inner>, len: u64) -> bool {
        if len > g.durable {
            g.durable = len.min(g.len);
            // What a slow sync kept in memory (see `TAIL_UNSYNCED`) is served now: the
            // tail goes back to its usual size here, not at some later append (a burst
            // followed by silence would hold megabytes until the task ends).
            if g.tail_bytes > TAIL_MAX {
                trim_served(&mut g);
            }
            self.tx.send_replace(g.durable);
        }
        let again = g.durable < g.len && !g.sync_queued && g.events.is_some();
        if again {
            g.sync_queued = true;
        }
        again
    }
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
        if !owner::claim(&events)? {
            return Err(owner::held_error(&dir.join(EVENTS_FILE)));
        }
        // The task's directory (its files so far, such as meta.json, and its entry in
        // the parent) must survive a power loss too, or its synced events would belong
        // to a task that is not there after a reboot. The syncer does that before it
        // serves the first record (with the parents of every new log it has at the
        // time synced once), so the caller does not wait for four syncs in a row.
        let needs_sync = durable::needs_sync(dir);
        let log = Self::from_parts(dir, Some(events), 1, 0, 0, needs_sync);
        if needs_sync {
            log.lock().unsynced_dir = Some(dir.to_path_buf());
        }
        Ok(log)
    }

    /// Opens the log of a task from an earlier run, keeping its valid prefix: a torn last
    /// line (the process died mid-write) and anything after a damaged line are cut off
    /// (and kept aside in `events.ndjson.cut`). Returns the log (open for appends) and
    /// its last record.
    pub fn reopen(dir: &Path) -> io::Result<(EventLog, Option<Record>)> {
        let path = dir.join(EVENTS_FILE);
        let events = OpenOptions::new().read(true).append(true).open(&path)?;
        // Before anything is cut or written: a log another worker writes is not ours.
        if !owner::claim(&events)? {
            return Err(owner::held_error(&path));
        }
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
        let needs_sync = durable::needs_sync(dir);
        if needs_sync && !closed {
            // What a crash left in the page cache is served from now on: make it stay.
            events.sync_data()?;
        }
        let log = Self::from_parts(dir, Some(events), next_id, len, output_bytes, needs_sync);
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
        needs_sync: bool,
    ) -> EventLog {
        let (tx, _) = watch::channel(len);
        EventLog {
            dir: dir.to_path_buf(),
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    events: events.map(Arc::new),
                    next_id,
                    len,
                    durable: len,
                    needs_sync,
                    sync_queued: false,
                    syncing: false,
                    unsynced_dir: None,
                    output_bytes,
                    tail: VecDeque::new(),
                    tail_bytes: 0,
                    closed: false,
                }),
                tx,
                dir_done: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
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

    /// Appends several events (ids in order) with one write and, where the log syncs,
    /// one sync before any of them is served; a last `done` closes the log. Each
    /// payload is a JSON object (`{...}`) or empty. Returns the last one's id.
    pub fn append_all(&self, events: &[(&'static str, &str)]) -> io::Result<u64> {
        let records: Vec<_> = events
            .iter()
            .map(|&(event, payload)| (event, Payload::Object(payload)))
            .collect();
        self.append_records(&records)
    }

    fn append_payload(&self, event: &'static str, payload: Payload<'_>) -> io::Result<u64> {
        self.append_records(&[(event, payload)])
    }

    /// Appends `records` (ids in order) with one write; how they are served follows the
    /// last one. Returns its id.
    fn append_records(&self, records: &[(&'static str, Payload<'_>)]) -> io::Result<u64> {
        let Some(&(event, _)) = records.last() else {
            return Err(io::Error::other("no record to append"));
        };
        let mut g = self.lock();
        if g.closed {
            return Err(io::Error::other(
                "the task's event log is closed: it already ended",
            ));
        }
        let first_id = g.next_id;
        let mut lines = Vec::with_capacity(records.len());
        let mut raw_len = 0;
        for (i, (event, payload)) in records.iter().enumerate() {
            let (line, raw) = payload.record(first_id + i as u64, event);
            raw_len += raw.len();
            lines.push(line);
        }
        let f = g
            .events
            .as_ref()
            .ok_or_else(|| io::Error::other("event log is not open"))?;
        match lines.as_slice() {
            [one] => (&**f).write_all(one)?,
            many => (&**f).write_all(&many.concat())?,
        }
        g.output_bytes += raw_len as u64;
        let mut id = first_id;
        let mut rec_len = 0;
        for ((event, _), line) in records.iter().zip(lines) {
            id = g.next_id;
            rec_len = line.len();
            let rec = Record {
                id,
                event: Bytes::from_static(event.as_bytes()),
                offset: g.len,
                line: Bytes::from(line),
            };
            g.len += rec_len as u64;
            g.next_id += 1;
            g.tail_bytes += rec_len;
            g.tail.push_back(rec);
        }
        if g.tail_bytes > TAIL_MAX {
            trim_served(&mut g);
        }
        if event == "done" {
            // The end is on stable storage before anyone is told of it (and the
            // directory too, if it is not yet).
            if g.unsynced_dir.is_some() {
                g = self.shared.ensure_dir_synced(g)?;
            }
            if g.needs_sync {
                if let Some(f) = g.events.as_ref() {
                    f.sync_data()?;
                }
            }
            g.durable = g.len;
            g.closed = true;
            g.events = None;
            // Only this append's records (the final `status` and `done`) stay in
            // memory: thousands of finished tasks cost next to nothing, and a follower
            // that was live at the end is served them from here, not from the file
            // (a blocking hand-off, an open and two reads before a trivial `done`).
            trim_tail(&mut g, 0, records.len());
            // A finished task stays listed for long (OUTPOST_KEEP_TASKS): its tail's
            // room for thousands of records goes, not just the records.
            g.tail.shrink_to_fit();
        } else if !g.needs_sync {
            g.durable = g.len;
        } else {
            // Served once it is on disk (one sync covers every append made meanwhile,
            // so a fast writer costs few syncs). A little output with no sync under
            // way (a prompt, a line) is synced here, on the agent's output thread
            // (never the runtime's: only output comes from there), which saves the
            // hand-off to a syncer before a client sees it; bulk output goes to the
            // syncers so that the output thread keeps reading the terminal.
            let idle = !g.sync_queued;
            let inline = idle && event == "output" && rec_len < INLINE_SYNC_MAX;
            if !inline {
                g.sync_queued = true;
            }
            drop(g);
            if inline {
                durable::sync_here(&self.shared);
            } else if idle {
                durable::queue(self.shared.clone());
            }
            return Ok(id);
        }
        let durable = g.durable;
        drop(g);
        self.shared.tx.send_replace(durable);
        Ok(id)
    }

    /// Marks the log closed without a new record (used when reopening a finished log).
    fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.events = None;
    }

    /// Flushes appended records to stable storage now (and serves them).
    pub fn sync(&self) -> io::Result<()> {
        let (file, len) = {
            let mut g = self.lock();
            if g.unsynced_dir.is_some() {
                g = self.shared.ensure_dir_synced(g)?;
            }
            match g.events.as_ref() {
                Some(f) => (f.clone(), g.len),
                None => return Ok(()),
            }
        };
        file.sync_data()?;
        self.shared.synced(len);
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
        self.shared.tx.subscribe()
    }

    /// Waits until the first record is on stable storage, and with it the log's
    /// directory (at once where nothing needs syncing).
    pub async fn first_durable(&self) {
        let mut rx = self.shared.tx.subscribe();
        // Err: the log is gone, nothing more will become durable.
        let _ = rx.wait_for(|durable| *durable > 0).await;
    }

    /// Readers following this log right now.
    pub fn subscribers(&self) -> usize {
        self.shared.tx.receiver_count()
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

/// Trims the tail to `TAIL_KEEP` bytes of durable records plus those not yet durable
/// (at most `TAIL_UNSYNCED` of them: past that they are read back once synced).
fn trim_served(g: &mut Inner) {
    let unsynced = usize::try_from(g.len - g.durable).unwrap_or(usize::MAX);
    let keep = TAIL_KEEP.saturating_add(unsynced.min(TAIL_UNSYNCED));
    trim_tail(g, keep, 1);
}

/// Drops the oldest records until the tail holds at most `keep` bytes, keeping at
/// least the last `min_records`.
fn trim_tail(g: &mut Inner, keep: usize, min_records: usize) {
    while g.tail_bytes > keep && g.tail.len() > min_records {
        if let Some(r) = g.tail.pop_front() {
            g.tail_bytes -= r.line.len();
        }
    }
}

#[cfg(test)]
mod tests;
