//! The read side of a log: subscribers take records after their cursor from the
//! memory tail when it covers them, else from the file (on a blocking thread), and
//! only up to what is durable; every record read back from the file must be JSON with
//! the next id, or the read fails as damage.

use std::fs::File;
use std::io;

use super::scan::{self, read_line_sized, seek};
use super::{damaged, Cursor, EventLog, Read, Record, EVENTS_FILE};

impl EventLog {
    /// Reads what is after `cursor` from memory, if the memory tail covers it; `None`
    /// means the caller must call [`EventLog::read_file`] (off the async runtime).
    pub fn read_memory(&self, cursor: &mut Cursor, max_bytes: usize) -> Option<Read> {
        let g = self.lock();
        let front = g.tail.front();
        let covered = match (cursor.offset, front) {
            (Some(off), _) if off >= g.durable => true,
            (Some(off), Some(f)) => off >= f.offset,
            (None, Some(f)) => cursor.after.saturating_add(1) >= f.id,
            (None, None) => cursor.after.saturating_add(1) >= g.next_id,
            (Some(_), None) => false,
        };
        if !covered {
            return None;
        }
        let start = g.tail.partition_point(|r| r.id <= cursor.after);
        if cursor.offset.is_none() {
            cursor.offset = Some(
                g.tail
                    .get(start)
                    .map(|r| r.offset)
                    .unwrap_or(g.durable)
                    .min(g.durable),
            );
        }
        let mut out = Vec::new();
        let mut size = 0;
        for r in g.tail.iter().skip(start) {
            if r.end() > g.durable || (size > 0 && size + r.line.len() > max_bytes) {
                break;
            }
            size += r.line.len();
            out.push(r.clone());
        }
        Some(finish_read(cursor, out, g.closed, g.durable))
    }

    /// Reads what is after `cursor` from the file (blocking: call from a blocking thread).
    pub fn read_file(&self, cursor: &mut Cursor, max_bytes: usize) -> io::Result<Read> {
        let (len, closed) = {
            let g = self.lock();
            (g.durable, g.closed)
        };
        let file = File::open(self.dir.join(EVENTS_FILE))?;
        let mut offset = match cursor.offset {
            Some(o) => o,
            None => seek(&file, len, cursor.after)?,
        };
        let mut out = Vec::new();
        let mut size = 0;
        let mut expect = cursor.after.saturating_add(1);
        // The first read's size for each record: the one before's, with room to spare.
        let mut first = 8192;
        while offset < len && size < max_bytes {
            let Some(rec) = read_line_sized(&file, offset, len, first)? else {
                return Err(damaged(offset, "a record without its end"));
            };
            first = (rec.line.len() + 1024).clamp(8192, 1 << 20);
            if scan::record_event(&rec.line, rec.id).is_none() {
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
