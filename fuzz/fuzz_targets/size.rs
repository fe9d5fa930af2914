//! Human sizes. Input starting with 0x00 and 8 more bytes: a byte count to format and
//! parse back, and to write in each unit; anything else: text to parse. Properties: a
//! formatted size parses back, never to more than it was and within a tenth of its unit;
//! exact multiples round-trip exactly; `<n>`, `<n>K`... parse to n times the unit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::memory::{format_size, parse_size};

const UNITS: [(&str, u64); 5] = [
    ("", 1),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
];

fn check_count(n: u64) {
    let shown = format_size(n);
    let back = parse_size(&shown)
        .unwrap_or_else(|e| panic!("format_size({n}) = {shown:?} does not parse: {e}"));
    let unit = UNITS
        .iter()
        .rev()
        .map(|u| u.1)
        .find(|&u| n >= u)
        .unwrap_or(1);
    assert!(
        back <= n,
        "{n} shown as {shown:?} reads back as more: {back}"
    );
    assert!(
        u128::from(n - back) * 10 <= u128::from(unit) + 10,
        "{n} shown as {shown:?} reads back as {back}"
    );
    if n.is_multiple_of(unit) {
        assert_eq!(back, n, "{shown:?}");
    }
    for (name, mult) in UNITS {
        let text = format!("{n}{name}");
        match n.checked_mul(mult) {
            Some(v) => assert_eq!(parse_size(&text), Ok(v), "{text:?}"),
            None => assert!(parse_size(&text).is_err(), "{text:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let [0, rest @ ..] = data {
        if let Ok(b) = <[u8; 8]>::try_from(&rest[..rest.len().min(8)]) {
            check_count(u64::from_le_bytes(b));
            return;
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_size(text) {
        Ok(n) => check_count(n),
        Err(e) => assert!(e.contains("512M"), "an error without the hint: {e}"),
    }
});
