//! The `outpost swap` command: `ensure <SIZE> [--path P] [--swappiness N]`,
//! `off [--path P]` and `status`.

use super::{ensure, remove, status, swappiness, SwapOutcome};
use crate::memory::size::{format_size, parse_size};
use anyhow::{anyhow, bail, Context};
use std::path::PathBuf;

const USAGE: &str = "\
usage: outpost swap ensure <SIZE> [--path P] [--swappiness N]
       outpost swap off [--path P]
       outpost swap status

  ensure  make a swap file of SIZE (e.g. 512M, 1G; 0 removes it) and turn it on;
          an active file of the right size is reused, a wrong-sized one replaced
  off     turn the swap file off and delete it
  status  list the active swap areas

  --path P        the swap file (default $OUTPOST_DATA/swapfile, OUTPOST_DATA
                  defaulting to ./.outpost)
  --swappiness N  also set vm.swappiness (0-200)";

/// Runs `outpost swap ...`; `args` are the words after `swap` (a leading `swap` is
/// skipped too).
pub fn swap_cli(args: &[String]) -> anyhow::Result<()> {
    let args = match args.first() {
        Some(first) if first == "swap" => &args[1..],
        _ => args,
    };
    let Some(command) = args.first() else {
        bail!("say what to do with swap\n{USAGE}");
    };
    let options = Options::parse(&args[1..])?;
    match command.as_str() {
        "ensure" => run_ensure(options),
        "off" => run_off(options),
        "status" => {
            if !options.positional.is_empty() || options.path.is_some() {
                bail!("`outpost swap status` takes no arguments\n{USAGE}");
            }
            print_status();
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown swap command {other:?}\n{USAGE}"),
    }
}

#[derive(Default)]
struct Options {
    positional: Vec<String>,
    path: Option<PathBuf>,
    swappiness: Option<u32>,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut options = Options::default();
        let mut words = args.iter();
        while let Some(word) = words.next() {
            let (flag, inline) = match word.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (word.as_str(), None),
            };
            let mut value = |name: &str| -> anyhow::Result<String> {
                inline
                    .clone()
                    .or_else(|| words.next().cloned())
                    .ok_or_else(|| anyhow!("{name} needs a value\n{USAGE}"))
            };
            match flag {
                "--path" => options.path = Some(PathBuf::from(value("--path")?)),
                "--swappiness" => {
                    let text = value("--swappiness")?;
                    let n = text.parse().map_err(|_| {
                        anyhow!("--swappiness {text:?} is not a number: use 0 to 200")
                    })?;
                    options.swappiness = Some(n);
                }
                f if f.starts_with('-') => bail!("unknown option {f:?}\n{USAGE}"),
                _ => options.positional.push(word.clone()),
            }
        }
        Ok(options)
    }

    fn path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(default_path)
    }
}

/// `$OUTPOST_DATA/swapfile`, OUTPOST_DATA defaulting to `./.outpost`.
pub fn default_path() -> PathBuf {
    let data = std::env::var_os("OUTPOST_DATA")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("./.outpost"));
    data.join("swapfile")
}

fn run_ensure(options: Options) -> anyhow::Result<()> {
    let [size] = options.positional.as_slice() else {
        bail!("`outpost swap ensure` needs exactly one SIZE, e.g. 1G\n{USAGE}");
    };
    let size = parse_size(size).map_err(|e| anyhow!(e))?;
    let path = options.path();
    let outcome = ensure(&path, size, options.swappiness)
        .with_context(|| format!("cannot set up swap at {}", path.display()))?;
    match &outcome {
        SwapOutcome::NotPermitted { reason } => bail!("swap not enabled: {reason}"),
        SwapOutcome::Disabled => {
            println!("swap {}: {} is off and deleted", outcome, path.display())
        }
        _ => println!(
            "swap {}: {} ({}) is on",
            outcome,
            path.display(),
            format_size(size)
        ),
    }
    print_status();
    Ok(())
}

fn run_off(options: Options) -> anyhow::Result<()> {
    if !options.positional.is_empty() || options.swappiness.is_some() {
        bail!("`outpost swap off` takes only --path\n{USAGE}");
    }
    let path = options.path();
    remove(&path).with_context(|| format!("cannot turn off swap at {}", path.display()))?;
    println!("swap off: {} is off and deleted", path.display());
    Ok(())
}

fn print_status() {
    let active = status();
    if active.is_empty() {
        println!("no swap active");
    }
    for s in active {
        println!(
            "{}  {}  size {}  used {}  priority {}",
            s.path.display(),
            s.kind,
            format_size(s.size),
            format_size(s.used),
            s.priority
        );
    }
    if let Ok(value) = swappiness() {
        println!("vm.swappiness {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_parse_both_flag_forms() {
        let o = Options::parse(&words("1G --path /x/s --swappiness=10")).unwrap();
        assert_eq!(o.positional, ["1G"]);
        assert_eq!(o.path, Some(PathBuf::from("/x/s")));
        assert_eq!(o.swappiness, Some(10));
        let o = Options::parse(&words("--path=/y 2G")).unwrap();
        assert_eq!(o.path, Some(PathBuf::from("/y")));
        assert_eq!(o.positional, ["2G"]);
    }

    #[test]
    fn mistakes_are_explained() {
        let msg = |a: &str| swap_cli(&words(a)).unwrap_err().to_string();
        assert!(msg("").contains("usage"));
        assert!(msg("frobnicate").contains("unknown swap command"));
        assert!(msg("ensure").contains("exactly one SIZE"));
        assert!(msg("ensure 1Q --path /nonexistent/x").contains("512M"));
        assert!(msg("ensure 1G --path").contains("--path needs a value"));
        assert!(msg("ensure 1G --swappiness lots").contains("0 to 200"));
        assert!(msg("swap off --bogus").contains("unknown option"));
        assert!(msg("status extra").contains("no arguments"));
        assert!(swap_cli(&words("swap help")).is_ok());
    }

    #[test]
    fn default_path_is_under_the_data_dir() {
        assert!(default_path().ends_with("swapfile"));
    }
}
