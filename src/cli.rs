//! The command line: `outpost serve`, `outpost swap ...`, `outpost install`,
//! `outpost uninstall`, `outpost version`, and the client commands (`run`, `attach`,
//! `ls`, `logs`, `cancel`, `status`; see `client::commands`). Errors print one line that
//! says what to do.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::supervise;
use crate::task::Registry;

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
            return serve(rest);
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

fn serve(args: &[String]) -> i32 {
    let cfg = match Config::from_env_and_args(args).and_then(|c| c.check_exposure().map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outpost serve: {e}");
            return 2;
        }
    };
    crate::logging::init(cfg.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_keep_alive(Duration::from_secs(10))
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost serve: starting the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(serve_async(cfg)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("outpost serve: {e:#}");
            1
        }
    }
}

async fn serve_async(cfg: Config) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let mode = supervise::adopt_orphans();
    // Agents are started without closing descriptors in the child (see agent::spawn).
    crate::agent::spawn::mark_inherited_cloexec();
    let oom = crate::memory::protect_self();
    supervise::reaper::spawn_reaper().context("installing the SIGCHLD handler")?;
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "creating the data dir {} (set OUTPOST_DATA to a writable path)",
            cfg.data_dir.display()
        )
    })?;
    if cfg.swap > 0 {
        ensure_swap(&cfg).await;
    }
    let reg = Registry::open(cfg.clone())?;
    supervise::memwatch::spawn(reg.clone(), cfg.min_available, Duration::from_secs(1));
    if let Some(after) = cfg.idle_shutdown {
        supervise::spawn_idle_shutdown(reg.clone(), after, cfg.idle_shutdown_cmd.clone());
    }
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(http::server::tls_acceptor(c, k)?),
        _ => None,
    };
    let addr = std::net::SocketAddr::new(cfg.bind, cfg.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (is the port in use? set PORT or --port)"))?;
    let local = listener
        .local_addr()
        .context("reading the listen address")?;
    if !cfg.bind.is_loopback() && cfg.token.is_none() {
        tracing::warn!(
            "SERVING WITHOUT AUTH on {local}: OUTPOST_INSECURE_NO_AUTH=1 and no OUTPOST_TOKEN; anything that reaches this port can run commands"
        );
    }
    tracing::info!(
        addr = %local,
        tls = tls.is_some(),
        data = %cfg.data_dir.display(),
        agent = %cfg.agent.name(),
        max_tasks = cfg.max_tasks,
        supervisor = mode,
        oom_score_adj = oom,
        "outpost {} listening",
        env!("CARGO_PKG_VERSION")
    );
    // The state lives as long as the process: leaked once, shared by reference.
    let state: &'static AppState = Box::leak(Box::new(AppState {
        cfg: cfg.clone(),
        reg: reg.clone(),
        metrics: Default::default(),
    }));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(http::server::serve(
        state,
        listener,
        tls,
        stop_rx,
        Duration::from_millis(500),
    ));

    let sig = supervise::wait_for_stop(reg.clone())
        .await
        .context("installing signal handlers")?;
    let live = reg.live_count();
    tracing::info!(
        signal = sig,
        live_tasks = live,
        "draining: no new work; stopping agents"
    );
    supervise::spawn_second_signal_killer(reg.clone());
    reg.drain();
    let deadline = tokio::time::Instant::now() + cfg.grace + Duration::from_millis(1200);
    if !reg.wait_idle(deadline).await {
        tracing::warn!("tasks still live at the drain deadline");
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    tracing::info!("drained; exiting");
    Ok(())
}

async fn ensure_swap(cfg: &Config) {
    let path = cfg.data_dir.join("swapfile");
    let (size, swappiness) = (cfg.swap, cfg.swappiness);
    let p = path.clone();
    let r = tokio::task::spawn_blocking(move || crate::memory::swap::ensure(&p, size, swappiness))
        .await;
    match r {
        Ok(Ok(outcome)) => tracing::info!(path = %path.display(), "swap: {outcome:?}"),
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), "swap could not be set up: {e}; running without it")
        }
        Err(e) => tracing::warn!("swap setup did not finish: {e}"),
    }
}
