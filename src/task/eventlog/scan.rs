//! Finding records in an event log file: parse a record's head, read the line at an
//! offset, binary-search the offset after an id, and find the valid prefix of a file
//! (what survives a crash or a damaged block).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use super::Record;

/// Parses `{"id":N,"event":"T"` at the start of a line.
pub(super) fn parse_head(line: &[u8]) -> Option<(u64, &[u8])> {
    let rest = line.strip_prefix(b"{\"id\":")?;
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let id = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"event\":\"")?;
    let end = rest.iter().position(|&c| c == b'"')?;
    Some((id, &rest[..end]))
}

/// Reads the whole line that starts at `offset`.
pub(super) fn read_line_at(file: &File, offset: u64, len: u64) -> io::Result<Option<Record>> {
    read_line_sized(file, offset, len, 8192)
}

/// Reads the whole line that starts at `offset`, reading `first` bytes at first (a
/// reader following the log passes the size of the record before, so a run of 64 KiB
/// output records costs one read each rather than three).
pub(super) fn read_line_sized(
    file: &File,
    offset: u64,
    len: u64,
    first: usize,
) -> io::Result<Option<Record>> {
    let mut want = first.max(1);
    loop {
        let avail = (len - offset) as usize;
        let n = want.min(avail);
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, offset)?;
        if let Some(nl) = buf.iter().position(|&c| c == b'\n') {
            buf.truncate(nl + 1);
            let (id, event) = parse_head(&buf).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("event log damaged at byte {offset}"),
                )
            })?;
            let event = Bytes::copy_from_slice(event);
            return Ok(Some(Record {
                id,
                event,
                offset,
                line: Bytes::from(buf),
            }));
        }
        if n == avail {
            return Ok(None);
        }
        want = want.saturating_mul(4);
    }
}

/// Finds the offset of the first record whose id is greater than `after`, by binary
/// search over line starts (ids increase along the file).
pub(super) fn seek(file: &File, len: u64, after: u64) -> io::Result<u64> {
    let (mut lo, mut hi) = (0u64, len);
    // Invariant: the answer lies in [lo, hi] and lo is a line start.
    for _ in 0..64 {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        let start = next_line_start(file, mid, len)?;
        if start >= hi {
            // No line start in (mid, hi): scan linearly from lo.
            break;
        }
        match read_line_at(file, start, len)? {
            Some(r) if r.id <= after => lo = r.end(),
            Some(_) => hi = start,
            None => hi = start,
        }
    }
    let mut off = lo;
    while off < len {
        match read_line_at(file, off, len)? {
            Some(r) if r.id <= after => off = r.end(),
            _ => break,
        }
    }
    Ok(off)
}

/// The start of the first line that begins after `pos` (or at 0).
fn next_line_start(file: &File, pos: u64, len: u64) -> io::Result<u64> {
    if pos == 0 {
        return Ok(0);
    }
    let mut off = pos - 1;
    let mut buf = [0u8; 4096];
    while off < len {
        let n = buf.len().min((len - off) as usize);
        file.read_exact_at(&mut buf[..n], off)?;
        if let Some(i) = buf[..n].iter().position(|&c| c == b'\n') {
            return Ok(off + i as u64 + 1);
        }
        off += n as u64;
    }
    Ok(len)
}

/// The valid prefix of a log file: where it ends, and its last record. A line belongs to
/// it when it is complete (ends in `\n`), is UTF-8 and one JSON object whose head is
/// `{"id":N,"event":"T"` (saying its id and event once, as its head does), N is one
/// more than the line before's (1 for the first), and no `done` came before it. What a
/// crash (a torn write), a full disk or a damaged block leaves after that is not.
pub(super) fn valid_prefix(file: &File, len: u64) -> io::Result<(u64, Option<Record>)> {
    let mut reader = BufReader::with_capacity(256 * 1024, file.take(len));
    let (mut end, mut last): (u64, Option<Record>) = (0, None);
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            break;
        }
        if last.as_ref().is_some_and(Record::is_done) {
            break;
        }
        let want = last.as_ref().map_or(1, |r| r.id + 1);
        let Some(event) = record_event(&line, want) else {
            break;
        };
        let rec = Record {
            id: want,
            event,
            offset: end,
            line: Bytes::from(line),
        };
        end = rec.end();
        last = Some(rec);
    }
    Ok((end, last))
}

/// The event of `line` if it is a whole record with id `want` (see [`valid_prefix`]).
pub(super) fn record_event(line: &[u8], want: u64) -> Option<Bytes> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        id: u64,
        #[serde(borrow)]
        event: std::borrow::Cow<'a, str>,
    }
    let (id, event) = parse_head(line)?;
    // serde checks the whole line is JSON and rejects a repeated `id` or `event`, but
    // does not look at the UTF-8 of strings it skips.
    let text = std::str::from_utf8(line).ok()?;
    let head: Head<'_> = serde_json::from_str(text).ok()?;
    // Every client parses the whole record: a number out of range makes it not JSON.
    serde_json::from_str::<serde_json::Value>(text).ok()?;
    (id == want && head.id == id && head.event.as_bytes() == event)
        .then(|| Bytes::copy_from_slice(event))
}
