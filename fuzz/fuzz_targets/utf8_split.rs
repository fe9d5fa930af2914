//! The PTY output splitter. Input: a few cut points, then the bytes. Properties: the
//! pieces, concatenated, are exactly the input bytes whatever the cuts; no piece is
//! empty; input that is valid UTF-8 comes out as text only (a character split by a cut
//! is never turned into bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::agent::utf8::{Piece, Utf8Splitter};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, input) = rest.split_at(n);
    let mut cuts: Vec<usize> = cuts
        .iter()
        .map(|&c| {
            if input.is_empty() {
                0
            } else {
                usize::from(c) % (input.len() + 1)
            }
        })
        .collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(input.len());
    let mut bytes_pieces = 0usize;
    let mut empty = false;
    let mut sink = |p: Piece<'_>| match p {
        Piece::Text(t) => {
            empty |= t.is_empty();
            out.extend_from_slice(t.as_bytes());
        }
        Piece::Bytes(b) => {
            empty |= b.is_empty();
            bytes_pieces += 1;
            out.extend_from_slice(b);
        }
    };
    let mut sp = Utf8Splitter::new();
    let mut at = 0;
    for c in cuts {
        sp.push(&input[at..c], &mut sink);
        at = c;
    }
    sp.push(&input[at..], &mut sink);
    sp.finish(&mut sink);
    assert!(!empty, "an empty piece for {input:?}");
    assert_eq!(out, input, "pieces do not add up to the input");
    if std::str::from_utf8(input).is_ok() {
        assert_eq!(
            bytes_pieces, 0,
            "valid UTF-8 {input:?} came out partly as bytes"
        );
    }
});
