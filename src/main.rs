//! The `outpost` command: parses the subcommand and hands over to the library.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = outpost::cli::run(args);
    std::process::exit(code);
}
