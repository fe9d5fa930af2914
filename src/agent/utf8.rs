//! Splits a terminal's raw byte stream into text and non-text pieces without losing or
//! mangling a byte: a UTF-8 character split across two reads is carried over to the
//! next read, and bytes that are not UTF-8 come out as a bytes piece (sent as `b64`).

/// One piece of output, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// A text run shorter than this between two invalid runs is folded into the bytes, so
/// binary output does not become thousands of tiny events.
const MIN_TEXT_RUN: usize = 32;

/// Carries an incomplete UTF-8 sequence from one read to the next.
#[derive(Debug, Default)]
pub struct Utf8Splitter {
    carry: Vec<u8>,
}

impl Utf8Splitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one read's bytes; `out` receives the pieces that are complete.
    pub fn push(&mut self, input: &[u8], out: &mut dyn FnMut(Piece<'_>)) {
        if self.carry.is_empty() {
            let keep = split(input, out);
            self.carry.extend_from_slice(&input[keep..]);
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(input);
            let keep = split(&joined, out);
            self.carry = joined[keep..].to_vec();
        }
    }

    /// Ends the stream: bytes still carried (an incomplete character) come out as bytes.
    pub fn finish(&mut self, out: &mut dyn FnMut(Piece<'_>)) {
        if !self.carry.is_empty() {
            let rest = std::mem::take(&mut self.carry);
            out(Piece::Bytes(&rest));
        }
    }
}

/// Emits the pieces of `s`; returns where an incomplete trailing character starts
/// (`s.len()` when there is none).
fn split(s: &[u8], out: &mut dyn FnMut(Piece<'_>)) -> usize {
    let mut pos = 0;
    // Start of a run of bytes not yet emitted that will go out as Bytes.
    let mut pending: Option<usize> = None;
    while pos < s.len() {
        let (valid, bad) = match std::str::from_utf8(&s[pos..]) {
            Ok(_) => (s.len() - pos, None),
            Err(e) => (e.valid_up_to(), Some(e.error_len())),
        };
        let text_end = pos + valid;
        let last_run = !matches!(bad, Some(Some(_)));
        if valid > 0 {
            if valid >= MIN_TEXT_RUN || last_run || pending.is_none() {
                if let Some(start) = pending.take() {
                    out(Piece::Bytes(&s[start..pos]));
                }
                // The run is valid UTF-8 by construction.
                if let Ok(text) = std::str::from_utf8(&s[pos..text_end]) {
                    out(Piece::Text(text));
                }
            } else if pending.is_none() {
                pending = Some(pos);
            }
        }
        match bad {
            None => return finish_pending(s, pending, s.len(), out),
            Some(None) => return finish_pending(s, pending, text_end, out),
            Some(Some(n)) => {
                pending.get_or_insert(text_end);
                pos = text_end + n;
            }
        }
    }
    finish_pending(s, pending, s.len(), out)
}

fn finish_pending(
    s: &[u8],
    pending: Option<usize>,
    end: usize,
    out: &mut dyn FnMut(Piece<'_>),
) -> usize {
    if let Some(start) = pending {
        if start < end {
            out(Piece::Bytes(&s[start..end]));
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
        let mut sp = Utf8Splitter::new();
        let mut bytes = Vec::new();
        let mut texts = Vec::new();
        let mut sink = |p: Piece<'_>| match p {
            Piece::Text(t) => {
                bytes.extend_from_slice(t.as_bytes());
                texts.push(t.to_string());
            }
            Piece::Bytes(b) => bytes.extend_from_slice(b),
        };
        for c in chunks {
            sp.push(c, &mut sink);
        }
        sp.finish(&mut sink);
        (bytes, texts)
    }

    #[test]
    fn multibyte_split_at_every_offset_is_text_and_lossless() {
        let s = "héllo wörld — ✓ 𝄞 end".as_bytes();
        for cut in 0..=s.len() {
            let (bytes, texts) = run(&[&s[..cut], &s[cut..]]);
            assert_eq!(bytes, s, "cut at {cut}");
            assert_eq!(texts.concat().as_bytes(), s, "all text at cut {cut}");
        }
    }

    #[test]
    fn invalid_bytes_come_out_as_bytes() {
        let input: &[u8] = b"ok \xff\xfe then text that is long enough to stand alone";
        let mut pieces = Vec::new();
        let mut sp = Utf8Splitter::new();
        sp.push(input, &mut |p| {
            pieces.push(match p {
                Piece::Text(t) => format!("T:{t}"),
                Piece::Bytes(b) => format!("B:{b:?}"),
            })
        });
        assert_eq!(pieces[0], "T:ok ");
        assert_eq!(pieces[1], "B:[255, 254]");
        assert!(pieces[2].starts_with("T: then"));
    }

    #[test]
    fn binary_is_lossless_and_not_shredded() {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut count = 0;
        let mut out = Vec::new();
        let mut sp = Utf8Splitter::new();
        for chunk in data.chunks(777) {
            sp.push(chunk, &mut |p| {
                count += 1;
                match p {
                    Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                    Piece::Bytes(b) => out.extend_from_slice(b),
                }
            });
        }
        sp.finish(&mut |p| match p {
            Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
            Piece::Bytes(b) => out.extend_from_slice(b),
        });
        assert_eq!(out, data);
        assert!(count < 100, "{count} pieces for 4 KiB of binary");
    }

    #[test]
    fn truncated_character_at_end_of_stream_is_kept() {
        let (bytes, _) = run(&[b"abc\xe2\x9c"]);
        assert_eq!(bytes, b"abc\xe2\x9c");
    }
}
