//! Command-line parsing for the client subcommands, by hand: each subcommand declares
//! its options (with a value or a switch, with short aliases); `--opt value`,
//! `--opt=value`, repeated options and `--` are understood; an unknown option is named
//! with the closest known one.

use std::collections::HashMap;

/// One option a subcommand takes.
#[derive(Clone, Copy)]
pub struct Opt {
    pub long: &'static str,
    pub short: Option<&'static str>,
    /// Takes a value (else a switch).
    pub value: bool,
}

pub const fn value(long: &'static str) -> Opt {
    Opt {
        long,
        short: None,
        value: true,
    }
}

pub const fn switch(long: &'static str) -> Opt {
    Opt {
        long,
        short: None,
        value: false,
    }
}

pub const fn short(mut o: Opt, s: &'static str) -> Opt {
    o.short = Some(s);
    o
}

/// Parsed arguments.
#[derive(Debug, Default)]
pub struct Parsed {
    values: HashMap<&'static str, Vec<String>>,
    pub positional: Vec<String>,
}

impl Parsed {
    /// The last value of `--long`.
    pub fn get(&self, long: &str) -> Option<&str> {
        self.values
            .get(long)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Every value of a repeated `--long`.
    pub fn all(&self, long: &str) -> &[String] {
        self.values.get(long).map_or(&[], Vec::as_slice)
    }

    pub fn has(&self, long: &str) -> bool {
        self.values.contains_key(long)
    }

    /// `--long` as a number; an error names the option.
    pub fn number<T: std::str::FromStr>(&self, long: &str) -> Result<Option<T>, String> {
        match self.get(long) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("--{long}: {v:?} is not a number")),
        }
    }
}

/// Parses `args` against `opts`.
pub fn parse(args: &[String], opts: &[Opt]) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let mut it = args.iter();
    // Bounded by the argument list.
    while let Some(a) = it.next() {
        if a == "--" {
            p.positional.extend(it.by_ref().cloned());
            break;
        }
        if !a.starts_with('-') || a == "-" {
            p.positional.push(a.clone());
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let opt = opts
            .iter()
            .find(|o| name.strip_prefix("--") == Some(o.long) || o.short == Some(name))
            .ok_or_else(|| unknown(name, opts))?;
        let v = if opt.value {
            match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("--{} needs a value", opt.long))?,
            }
        } else {
            if inline.is_some() {
                return Err(format!("--{} takes no value", opt.long));
            }
            String::new()
        };
        p.values.entry(opt.long).or_default().push(v);
    }
    Ok(p)
}

fn unknown(name: &str, opts: &[Opt]) -> String {
    let bare = name.trim_start_matches('-');
    let best = opts
        .iter()
        .map(|o| (distance(bare, o.long), o.long))
        .min()
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, long)) => format!("unknown option {name}; did you mean --{long}?"),
        None => format!("unknown option {name}; see --help"),
    }
}

/// Levenshtein distance (short strings only).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    const OPTS: &[Opt] = &[
        value("url"),
        value("after"),
        short(switch("interactive"), "-i"),
    ];

    #[test]
    fn values_switches_repeats_and_positionals() {
        let p = parse(
            &s(&["--url", "a", "--url=b", "-i", "t-1", "--", "--after"]),
            OPTS,
        )
        .unwrap();
        assert_eq!(p.all("url"), ["a", "b"]);
        assert_eq!(p.get("url"), Some("b"));
        assert!(p.has("interactive"));
        assert_eq!(p.positional, ["t-1", "--after"]);
    }

    #[test]
    fn errors_say_what_to_do() {
        assert!(parse(&s(&["--ur", "x"]), OPTS)
            .unwrap_err()
            .contains("did you mean --url"));
        assert!(parse(&s(&["--after"]), OPTS)
            .unwrap_err()
            .contains("needs a value"));
        let p = parse(&s(&["--after", "x"]), OPTS).unwrap();
        assert!(p
            .number::<u64>("after")
            .unwrap_err()
            .contains("not a number"));
    }
}
