//! The command line: `outpost serve`, `outpost swap ...`, `outpost install`,
//! `outpost uninstall`, `outpost version`, and the client commands (`run`, `attach`,
//! `ls`, `logs`, `cancel`, `status`; see `client::commands`). Errors print one line that
//! says what to do.

const USAGE: &str = "\
outpost: runs AI coding agents in a PTY and streams their output over HTTP.

Usage:
  outpost serve [--flag VALUE]...     run the worker (see `outpost serve --help`)
  outpost swap ensure SIZE [--path P] [--swappiness N]
  outpost swap off [--path P] | outpost swap status
  outpost install [--root DIR] [--init openrc|systemd|auto] [...]
  outpost uninstall [--root DIR] [--purge]
  outpost version
  outpost run | attach | ls | logs | cancel | status ...   (the client; `outpost run --help`)
";

/// Runs a subcommand; returns the process exit code.
pub fn run(args: Vec<String>) -> i32 {
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return 2;
    };
    let rest = &args[1..];
    if let Some(code) = crate::client::commands::dispatch(cmd, rest) {
        return code;
    }
    let result = match cmd.as_str() {
        "serve" => {
            if rest.iter().any(|a| a == "--help" || a == "-h") {
                print!("{}", crate::config::help());
                return 0;
            }
            return crate::serve::serve(rest);
        }
        "swap" => crate::memory::swap::swap_cli(rest),
        "install" => crate::install::install_cli(rest),
        "uninstall" => crate::install::uninstall_cli(rest),
        "version" | "--version" | "-V" => {
            println!("outpost {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("outpost: unknown command {other:?}\n");
            eprint!("{USAGE}");
            return 2;
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("outpost {cmd}: {e:#}");
            1
        }
    }
}
