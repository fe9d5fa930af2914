//! Reading an SSE response: an incremental parser for `text/event-stream` and the
//! decoding of outpost's `output` payloads ({"data": "..."} or {"b64": "..."}).

use anyhow::{bail, Context, Result};
use base64::Engine;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use std::borrow::Cow;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Option<u64>,
    pub event: String,
    pub data: Vec<u8>,
}

/// Incremental `text/event-stream` parser: feed it chunks, it hands out whole events.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    id: Option<u64>,
    event: String,
    data: Vec<u8>,
    has_data: bool,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; calls `on_event` for each event completed by it.
    pub fn push(&mut self, chunk: &[u8], on_event: &mut impl FnMut(Event)) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
            let end = start + nl;
            let line_end = if end > start && buf[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            self.line(&buf[start..line_end], on_event);
            start = end + 1;
        }
        buf.drain(..start);
        self.buf = buf;
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(Event)) {
        if line.is_empty() {
            if self.has_data || !self.event.is_empty() {
                on_event(Event {
                    id: self.id,
                    event: if self.event.is_empty() {
                        "message".to_string()
                    } else {
                        std::mem::take(&mut self.event)
                    },
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return; // comment (heartbeat)
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"id" => {
                if let Some(n) = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()) {
                    self.id = Some(n);
                }
            }
            _ => {}
        }
    }
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    b64: Option<Cow<'a, str>>,
}

/// The bytes an `output` event carries.
pub fn output_bytes(data: &[u8]) -> Result<Vec<u8>> {
    let o: Output = serde_json::from_slice(data).context("output event: data is not JSON")?;
    match (o.data, o.b64) {
        (Some(s), _) => Ok(s.into_owned().into_bytes()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .context("output event: bad base64 in \"b64\""),
        (None, None) => bail!("output event has neither \"data\" nor \"b64\""),
    }
}

/// How many bytes an `output` event carries, without keeping them.
pub fn output_len(data: &[u8]) -> Result<usize> {
    let o: Output = serde_json::from_slice(data).context("output event: data is not JSON")?;
    match (o.data, o.b64) {
        (Some(s), _) => Ok(s.len()),
        (None, Some(b)) => {
            let b = b.trim_end_matches('=');
            Ok(b.len() * 3 / 4)
        }
        (None, None) => bail!("output event has neither \"data\" nor \"b64\""),
    }
}

/// What to do after an event.
pub enum Flow {
    Continue,
    Stop,
}

/// Reads an SSE body, handing each event to `on_event`, until a `done` event (which is
/// handed over too), `Flow::Stop`, or the end of the body. Returns whether `done` came.
pub async fn follow(
    body: Incoming,
    mut on_event: impl FnMut(&Event) -> Result<Flow>,
) -> Result<bool> {
    let mut body = body;
    let mut parser = Parser::new();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the event stream")?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        parser.push(&chunk, &mut |e| pending.push(e));
        for e in pending.drain(..) {
            let is_done = e.event == "done";
            if let Flow::Stop = on_event(&e)? {
                return Ok(is_done);
            }
            if is_done {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut |e| out.push(e));
        }
        out
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream = b": keep-alive\n\nid: 1\nevent: status\ndata: {\"status\":\"working\"}\n\nid: 2\r\nevent: output\r\ndata: {\"data\":\"hi\\r\\n\"}\r\n\r\n";
        let whole = parse_all(&[stream]);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1].id, Some(2));
        assert_eq!(whole[1].event, "output");
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(parse_all(&[a, b]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn multi_line_data_joins_with_newline() {
        let e = parse_all(&[b"data: a\ndata: b\n\n"]);
        assert_eq!(e[0].data, b"a\nb");
        assert_eq!(e[0].event, "message");
    }

    #[test]
    fn output_payloads_decode() {
        assert_eq!(
            output_bytes(br#"{"data":"h\u00e9\r\n"}"#).unwrap(),
            "hé\r\n".as_bytes()
        );
        assert_eq!(output_bytes(br#"{"b64":"/w=="}"#).unwrap(), vec![0xff]);
        assert_eq!(output_len(br#"{"data":"h\u00e9"}"#).unwrap(), 3);
        assert_eq!(output_len(br#"{"b64":"/w=="}"#).unwrap(), 1);
        assert_eq!(output_len(br#"{"b64":"YWJj"}"#).unwrap(), 3);
        assert!(output_bytes(br#"{"x":1}"#).is_err());
    }
}
