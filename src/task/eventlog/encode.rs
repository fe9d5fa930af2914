//! How a record is written: `{"id":N,"event":"...",<payload>}\n`. Output text is the
//! bulk of every log, so its JSON string is escaped here, eight bytes at a time where
//! nothing needs escaping (a terminal's text mostly does not), with exactly the
//! escapes serde_json writes, so logs read the same whichever wrote them.

/// What follows `"event":"..."` in a record.
pub(super) enum Payload<'a> {
    /// The fields of a JSON object (`{...}`), or nothing.
    Object(&'a str),
    /// Output text: `"data":"<escaped>"`.
    Text(&'a str),
    /// Output bytes that are not UTF-8: `"b64":"<base64>"`.
    Bytes(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// The record's line and the raw output bytes it carries.
    pub(super) fn record(&self, id: u64, event: &str) -> (Vec<u8>, &'a [u8]) {
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
                push_json_str(&mut line, text);
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
        (line, raw)
    }
}

/// Appends `s` as a JSON string, quotes included, escaped as serde_json escapes it:
/// `"` and `\` with a backslash, the five control characters that have one as `\b`,
/// `\t`, `\n`, `\f`, `\r`, the other ones below 0x20 as `\u00XX`; nothing else.
pub(super) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    // `b[start..i]` is plain text not yet copied out.
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        // Eight bytes at a time while none needs escaping; a word that has one (or
        // the last few bytes) is gone through byte by byte.
        let end = match b.get(i..i + 8) {
            Some(word) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(word);
                if !needs_escape(u64::from_le_bytes(w)) {
                    i += 8;
                    continue;
                }
                i + 8
            }
            None => b.len(),
        };
        for (j, &c) in b.iter().enumerate().take(end).skip(i) {
            let Some(esc) = escape_of(c) else { continue };
            out.extend_from_slice(&b[start..j]);
            match esc {
                Escape::Short(e) => out.extend_from_slice(&[b'\\', e]),
                Escape::Unicode => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(c >> 4)]);
                    out.push(HEX[usize::from(c & 0xf)]);
                }
            }
            start = j + 1;
        }
        i = end;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

enum Escape {
    /// A backslash and this byte.
    Short(u8),
    /// `\u00XX`.
    Unicode,
}

fn escape_of(c: u8) -> Option<Escape> {
    Some(match c {
        b'"' => Escape::Short(b'"'),
        b'\\' => Escape::Short(b'\\'),
        0x08 => Escape::Short(b'b'),
        b'\t' => Escape::Short(b't'),
        b'\n' => Escape::Short(b'n'),
        0x0c => Escape::Short(b'f'),
        b'\r' => Escape::Short(b'r'),
        0..=0x1f => Escape::Unicode,
        _ => return None,
    })
}

/// Whether any of the eight bytes in `w` needs escaping: one below 0x20, a `"` or a
/// `\`. (The classic tests: a byte of `x` is zero iff `(x - 0x01..) & !x & 0x80..`
/// marks it, and below `n` (n <= 0x80) iff `(x - n..) & !x & 0x80..` does; any false
/// mark sits above a true one, so "any" is exact.)
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let zero = |x: u64| below(x, 1);
    (below(w, 0x20) | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        push_json_str(&mut out, s);
        String::from_utf8(out).expect("escaped text stays UTF-8")
    }

    /// Every byte value in every position of an eight-byte word (and around it), and
    /// text of every length up to three words: the same bytes as serde_json writes.
    #[test]
    fn escapes_exactly_as_serde_json() {
        let mut cases: Vec<String> = Vec::new();
        for c in 0u8..0x80 {
            for pos in 0..17 {
                let mut s = "abcdefghijklmnopq".to_string().into_bytes();
                s[pos] = c;
                cases.push(String::from_utf8(s).expect("ASCII"));
            }
        }
        for len in 0..25 {
            cases.push("x".repeat(len));
            cases.push("\u{1b}[1m".repeat(len));
        }
        cases.push("héllo wörld ✓ — 日本語 \u{7f} \u{80} \u{2028} 🦀\r\n".repeat(3));
        for s in &cases {
            let want = serde_json::to_string(s).expect("serde_json writes any str");
            assert_eq!(ours(s), want, "for {s:?}");
        }
    }

    #[test]
    fn a_word_is_flagged_exactly_when_one_of_its_bytes_needs_escaping() {
        for c in 0u8..=255 {
            for pos in 0..8 {
                let mut w = [b'a'; 8];
                w[pos] = c;
                let want = c < 0x20 || c == b'"' || c == b'\\';
                assert_eq!(needs_escape(u64::from_le_bytes(w)), want, "{c:#x} at {pos}");
            }
        }
    }
}
