//! An incremental Server-Sent Events parser (the WHATWG rules): bytes in, in any
//! chunking, events out. Lines end with LF, CR or CRLF (a CR at the end of one chunk and
//! an LF at the start of the next are one ending); `data` lines join with LF; a blank
//! line dispatches; `:` starts a comment; `id` and `retry` are kept across events. A
//! partial event at the end of a dropped connection is never dispatched.

use serde_json::Value;

use super::types::Event;

/// One dispatched SSE event, before its data is read as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The last `id` seen (SSE keeps it across events), if any.
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// The parser's state. Feed it bytes; take events out.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    skip_lf: bool,
    last_id: Option<String>,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// The last `retry:` value (milliseconds), if the server sent one.
    pub retry_ms: Option<u64>,
    /// Comment lines seen (`: keep-alive`).
    pub comments: u64,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Parses `chunk`, appending each complete event to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<RawEvent>) {
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    start = i + 1;
                    continue;
                }
            }
            if b == b'\n' || b == b'\r' {
                self.line.extend_from_slice(&chunk[start..i]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, out);
                self.skip_lf = b == b'\r';
                start = i + 1;
            }
        }
        self.line.extend_from_slice(&chunk[start..]);
    }

    /// Forgets a partial event (call when the connection drops): the next connection
    /// starts clean. The last id and retry stay, as in EventSource.
    pub fn reset_partial(&mut self) {
        self.line.clear();
        self.skip_lf = false;
        self.event = None;
        self.data.clear();
        self.has_data = false;
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<RawEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(RawEvent {
                    id: self.last_id.clone(),
                    event: self.event.take().unwrap_or_else(|| "message".into()),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event = None;
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.find(':') {
            Some(i) => {
                let v = &text[i + 1..];
                (&text[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&text[..], ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
    }
}

impl RawEvent {
    /// The outpost event this carries: the data is the JSON object; the id comes from
    /// the `id:` field, or else the object's own `id`.
    pub fn into_event(self) -> Result<Event, String> {
        let data: Value = serde_json::from_str(&self.data)
            .map_err(|e| format!("an event's data is not JSON ({e}): {:.200}", self.data))?;
        let id = match &self.id {
            Some(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("an event id is not a number: {s:?}"))?,
            None => data
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("an event has no id: {:.200}", self.data))?,
        };
        let event = match data.get("event").and_then(Value::as_str) {
            Some(e) if self.event == "message" => e.to_string(),
            _ => self.event,
        };
        Ok(Event { id, event, data })
    }
}

/// Reads one NDJSON event line (the same objects, with `id` and `event` inside).
pub fn ndjson_event(line: &[u8]) -> Result<Event, String> {
    let data: Value =
        serde_json::from_slice(line).map_err(|e| format!("an NDJSON line is not JSON ({e})"))?;
    let id = data
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("an NDJSON event has no id")?;
    let event = data
        .get("event")
        .and_then(Value::as_str)
        .ok_or("an NDJSON event has no event type")?
        .to_string();
    Ok(Event { id, event, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<RawEvent>, Parser) {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        (out, p)
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let text: &[u8] = b": keep-alive\n\nid: 1\nevent: output\ndata: {\"data\":\"h\xc3\xa9\"}\n\nid: 2\r\nevent: done\r\ndata: {\"a\":1}\r\n\r\nretry: 1500\n\n";
        let (whole, p) = parse_chunks(&[text]);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].id.as_deref(), Some("1"));
        assert_eq!(whole[0].event, "output");
        assert_eq!(whole[1].event, "done");
        assert_eq!(p.retry_ms, Some(1500));
        assert_eq!(p.comments, 1);
        for cut in 0..text.len() {
            let (parts, _) = parse_chunks(&[&text[..cut], &text[cut..]]);
            assert_eq!(parts, whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes).0, whole);
    }

    #[test]
    fn multi_line_data_and_bare_cr() {
        let (ev, _) = parse_chunks(&[b"data: a\rdata:b\r\rdata\n\n"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, "a\nb");
        assert_eq!(ev[0].event, "message");
        assert_eq!(ev[1].data, "");
    }

    #[test]
    fn a_partial_event_is_dropped_on_reset() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"id: 5\nevent: output\ndata: {\"data\":\"x", &mut out);
        assert!(out.is_empty());
        p.reset_partial();
        p.feed(
            b"id: 5\nevent: output\ndata: {\"data\":\"y\"}\n\n",
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let e = out.remove(0).into_event().unwrap();
        assert_eq!(e.id, 5);
        assert_eq!(e.output_bytes().unwrap(), b"y");
    }

    #[test]
    fn ids_come_from_the_field_or_the_object() {
        let raw = RawEvent {
            id: None,
            event: "message".into(),
            data: r#"{"id":9,"event":"status","status":"working"}"#.into(),
        };
        let e = raw.into_event().unwrap();
        assert_eq!((e.id, e.event.as_str()), (9, "status"));
        assert_eq!(e.status(), Some("working"));
        assert!(ndjson_event(br#"{"id":3,"event":"done","status":"done"}"#)
            .unwrap()
            .is_done());
    }
}
