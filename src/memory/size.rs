//! Human sizes: parsing "1G", "512M", "300MiB", "1.5GiB", "0" or plain bytes into a
//! byte count, and formatting a byte count back into a short binary-unit string.
//!
//! Units are binary throughout (K = KiB = 1024, M = MiB, G = GiB, T = TiB), the way
//! docker, earlyoom and `fallocate -l` read them; "KB"/"MB"/"GB"/"TB" are read the same.

const UNITS: [(&str, u64); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// What a size may look like, for error messages.
const ALLOWED: &str = "use a whole number of bytes, or a number with a binary unit \
K, M, G or T (also written KiB/MiB/GiB/TiB), e.g. 0, 4096, 512M, 300MiB, 1G, 1.5GiB";

/// Parses a size such as `1G`, `512M`, `300MiB`, `1.5GiB`, `0` or `1048576` into bytes.
/// Units are binary and case-insensitive; a space between number and unit is allowed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let bad = |why: &str| format!("invalid size {text:?}: {why}; {ALLOWED}");
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad(&format!("unknown unit {:?}", unit.trim()))),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad("there is no number"));
    }
    if fraction.contains('.') {
        return Err(bad("the number has more than one '.'"));
    }
    if fraction.len() > 9 {
        return Err(bad("too many decimal places (at most 9)"));
    }
    if number.contains('.') && multiplier == 1 {
        return Err(bad("a number of bytes must be whole"));
    }
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad("the number is too large"))?
    };
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction
            .parse()
            .map_err(|_| bad("the fraction is not a number"))?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let bytes = whole_value
        .checked_mul(u128::from(multiplier))
        .and_then(|b| b.checked_add(fraction_value * u128::from(multiplier) / scale))
        .ok_or_else(|| bad("the size is too large"))?;
    u64::try_from(bytes).map_err(|_| bad("the size is too large"))
}

/// Formats bytes with the largest binary unit that fits: `0`, `512B`, `300MiB`, `1.5GiB`.
/// Exact multiples print without a fraction; others are cut (not rounded) to a tenth of
/// the unit, so every result reads back with [`parse_size`], never to more than it was.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    for (name, unit) in UNITS {
        if bytes >= unit {
            if bytes.is_multiple_of(unit) {
                return format!("{}{name}", bytes / unit);
            }
            let tenths = u128::from(bytes) * 10 / u128::from(unit);
            return format!("{}.{}{name}", tenths / 10, tenths % 10);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_plain_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("300MiB"), Ok(300 << 20));
        assert_eq!(parse_size("300 MiB"), Ok(300 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(".5M"), Ok(1 << 19));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size(" 1G "), Ok(1 << 30));
    }

    #[test]
    fn rejects_bad_sizes_with_a_hint() {
        for bad in [
            "",
            "G",
            "-1G",
            "1X",
            "1.2.3G",
            "1.5",
            "abc",
            "1e9",
            "99999999999T",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("512M"), "{bad:?} -> {err}");
        }
        assert!(parse_size("1X").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(512), "512B");
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(300 << 20), "300MiB");
        assert_eq!(format_size(3 << 29), "1.5GiB");
        for n in [1u64 << 10, 7 << 20, 3 << 30, 5 << 40] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }

    #[test]
    fn formatted_sizes_never_read_back_as_more() {
        // Found by fuzzing (fuzz/size): 113333 bytes printed as "110.7KiB", which reads
        // back as 113356; u64::MAX printed as "16777216.0TiB", which does not read back.
        assert_eq!(format_size(113_333), "110.6KiB");
        assert_eq!(format_size((1 << 30) - 1), "1023.9MiB");
        for n in [113_333u64, (1 << 30) - 1, u64::MAX, u64::MAX - (1 << 39)] {
            let back = parse_size(&format_size(n)).unwrap();
            assert!(back <= n && n - back <= (1 << 40) / 10 + 1, "{n}");
        }
    }
}
