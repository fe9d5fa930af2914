//! The worker's life: harden the process (private files, not dumpable), lay out the
//! data dir with its permissions, choose who agents run as and how they are
//! contained, open the registry, serve, and drain on SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::process::{identity, Containment, Identity};
use crate::supervise;
use crate::task::cost::Instance;
use crate::task::Registry;

/// `outpost serve`: returns the process exit code.
pub fn serve(args: &[String]) -> i32 {
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
        // Idle blocking threads end before the quiet spell that hands memory back
        // (supervise::memwatch, 5 s): a thread's allocator cache goes with it.
        .thread_keep_alive(Duration::from_secs(4))
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
    // Agents are started without closing descriptors in the child (see process::spawn).
    crate::process::mark_inherited_cloexec();
    let oom = crate::memory::protect_self();
    harden_self();
    crate::process::reaper::spawn_reaper().context("installing the SIGCHLD handler")?;
    lay_out_data_dir(&cfg.data_dir)?;
    if cfg.swap > 0 {
        ensure_swap(&cfg).await;
    }
    let (containment, instance) = contain(&cfg).await?;
    let reg = Registry::open(cfg.clone(), containment.clone(), instance)?;
    crate::trash::sweep_data_dir(&cfg.data_dir);
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
        isolation = containment.identity().isolation(),
        containment = containment.kind().name(),
        "outpost {} listening",
        env!("CARGO_PKG_VERSION")
    );
    // The state lives as long as the process: leaked once, shared by reference.
    let state: &'static AppState = Box::leak(Box::new(AppState {
        cfg: cfg.clone(),
        reg: reg.clone(),
        metrics: Default::default(),
    }));
    // Quiet means no request and no change in the registry.
    let activity = move || {
        state
            .reg
            .generation()
            .wrapping_add(state.metrics.requests())
    };
    supervise::memwatch::spawn(
        reg.clone(),
        cfg.min_available,
        Duration::from_secs(1),
        activity,
    );
    // Start-up is over: drop the code pages only it touched (memory::shed). Read
    // in place (well under a millisecond, before serving): a blocking-pool thread would
    // cost more resident memory than the call saves.
    match crate::memory::shed::file_pages() {
        Ok(n) => tracing::debug!(bytes = n, "start-up pages shed"),
        Err(e) => tracing::debug!("start-up pages not shed: {e}"),
    }
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
    let c = containment.clone();
    let _ = tokio::task::spawn_blocking(move || c.close()).await;
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

/// Files the worker creates are its own (0600 / 0700), and no other process of the
/// same uid may trace it or read its memory, environment or descriptors.
fn harden_self() {
    // SAFETY: umask and prctl take integers and cannot fail in a way that matters here.
    unsafe {
        libc::umask(0o077);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// Creates the data dir and its parts with the modes that keep agents out of all but
/// their own: 0711 where an agent must pass through to its worktree or HOME, 0700
/// (root's alone) for task logs, the repository cache and the templates.
fn lay_out_data_dir(data: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let parts: [(&str, u32); 8] = [
        ("", 0o711),
        ("tasks", 0o700),
        ("git", 0o711),
        ("git/cache", 0o700),
        ("git/templates", 0o700),
        ("git/worktrees", 0o711),
        ("home", 0o711),
        ("run", 0o711),
    ];
    for (rel, mode) in parts {
        let dir = data.join(rel);
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating {} (set OUTPOST_DATA to a writable path)",
                dir.display()
            )
        })?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {} to {mode:o}", dir.display()))?;
    }
    Ok(())
}

/// Who agents run as, how tasks are contained and limited, and the instance's size.
async fn contain(cfg: &Config) -> anyhow::Result<(Arc<Containment>, Instance)> {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let who = identity::resolve(
        cfg.agent_user.as_deref(),
        uid,
        gid,
        cfg.max_tasks,
        &identity::read_passwd(),
    )
    .map_err(|e| anyhow::anyhow!("OUTPOST_AGENT_USER: {e}"))?;
    match &who {
        Identity::Same { why, .. } => {
            tracing::warn!("agents are not separated from the worker: {why}")
        }
        Identity::User { name, uid, gid } => tracing::info!(
            user = %name, uid, gid, slots = cfg.max_tasks,
            "agents run as an unprivileged user (task slot k as uid + k)"
        ),
    }
    let snap = tokio::task::spawn_blocking(|| crate::memory::MemoryView::detect().snapshot())
        .await
        .ok()
        .and_then(Result::ok);
    let machine = snap.as_ref().map(|s| s.limit.unwrap_or(s.total));
    let mut limits = crate::process::cgroup::Limits {
        memory: cfg.limits.memory.or(machine.map(task_memory_default)),
        pids: Some(cfg.limits.pids),
    };
    if limits.memory == Some(0) {
        limits.memory = None;
    }
    let key = data_dir_key(&cfg.data_dir);
    let forced = cfg.containment;
    // A task cgroup whose task another worker on this data dir runs is not a leftover.
    let tasks_dir = cfg.data_dir.join("tasks");
    let live_elsewhere: crate::process::containment::LiveElsewhere =
        Box::new(move |name| crate::task::eventlog::held_elsewhere(&tasks_dir.join(name)));
    let c = tokio::task::spawn_blocking(move || {
        Containment::setup(who, &key, limits, forced, live_elsewhere)
    })
    .await
    .context("setting up containment")?;
    if let Some(note) = &c.note {
        tracing::warn!(containment = c.kind().name(), "{note}");
    }
    if c.kind() == crate::process::Kind::Session {
        tracing::warn!("containment is only the agent's session: a process that calls setsid can outlive its task (run the worker as root, or give it a cgroup)");
    }
    let cpu = crate::process::cgroup::own_cpu_limit();
    let instance = Instance::detect(&cfg.pricing, cpu, machine);
    Ok((Arc::new(c), instance))
}

/// A task's default memory limit: the worker's limit minus a reserve that keeps the
/// worker (and the git work it does) alive: an eighth of it, from 64 MiB to 256 MiB.
pub fn task_memory_default(limit: u64) -> u64 {
    let reserve = (limit / 8).clamp(64 << 20, 256 << 20);
    limit.saturating_sub(reserve).max(32 << 20)
}

/// A short stable name for this data dir (its cgroup parent is named after it).
fn data_dir_key(data: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let path = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn task_memory_leaves_the_worker_a_reserve() {
        use super::task_memory_default as f;
        assert_eq!(f(614 << 20), (614u64 << 20) - (614u64 << 20) / 8);
        assert_eq!(f(24 << 30), (24 << 30) - (256 << 20));
        assert_eq!(f(256 << 20), 192 << 20);
    }
}
