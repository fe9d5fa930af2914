//! The client subcommands of the `outpost` binary: `run`, `attach`, `ls`, `logs`,
//! `cancel`, `status`. Each parses its options, builds the pool of outposts (from
//! `--url`, `OUTPOST_POOL` or `~/.config/outpost/pool.toml`) and returns an exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::args::{self, short, switch, value, Opt, Parsed};
use super::conn::ConnectOptions;
use super::error::ClientError;
use super::events::Reconnect;
use super::exit;
use super::pool::{self, Placement, Pool, PoolEntry, TokenSource};
use super::types::WorkRequest;
use super::watch::{self, Interrupt, View};

pub const USAGE: &str = "\
Client commands (each talks to one or more outposts):
  outpost run [--issue ID] [--repo URL] [--ref REF] [--branch B] [--beads URL]
              [--timeout S] [--max-cost USD] [--context FILE|-] [--fresh] [--wait S]
              [--json] [--cancel-on-interrupt] PROMPT...
  outpost attach ID [--from-start | --after N] [-i | --interactive] [--json]
  outpost ls [--limit N] [--json]
  outpost logs ID
  outpost cancel ID
  outpost status [--json]
Common options: --url URL (repeatable; in order of preference), --token T,
  --token-file F (or OUTPOST_TOKEN), --http2 (h2c), --cacert FILE, --quiet,
  --reconnect-for S (default 300), --wait S (run: wait for room, default 300).
Without --url: the pool file OUTPOST_POOL or ~/.config/outpost/pool.toml, else
  OUTPOST_URL, else http://127.0.0.1:8080. See docs/client.md.
Exit codes of run / attach: 0 done; the task's own code when it failed; 130 detached;
  200 refused; 201 cancelled; 202 interrupted; 203 lost (gave up reconnecting).
";

const COMMON: &[Opt] = &[
    value("url"),
    value("token"),
    value("token-file"),
    switch("http2"),
    value("cacert"),
    switch("quiet"),
    value("reconnect-for"),
    short(switch("help"), "-h"),
];

/// Runs client subcommand `cmd`; `None` when `cmd` is not one.
pub fn dispatch(cmd: &str, rest: &[String]) -> Option<i32> {
    let (own, needs_id): (&[Opt], bool) = match cmd {
        "run" => (RUN_OPTS, false),
        "attach" => (ATTACH_OPTS, true),
        "ls" => (LS_OPTS, false),
        "logs" | "cancel" => (&[], true),
        "status" => (STATUS_OPTS, false),
        _ => return None,
    };
    let all: Vec<Opt> = COMMON.iter().chain(own).copied().collect();
    let p = match args::parse(rest, &all) {
        Ok(p) => p,
        Err(e) => return Some(usage_error(cmd, &e)),
    };
    if p.has("help") {
        print!("{USAGE}");
        return Some(exit::OK);
    }
    if needs_id && p.positional.len() != 1 {
        return Some(usage_error(cmd, "give one task id (see `outpost ls`)"));
    }
    // Files (pool, tokens, CAs, the context) are read before the runtime starts.
    let pool = match build_pool(&p) {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("outpost {cmd}: {e}");
            return Some(exit::USAGE);
        }
    };
    let request = if cmd == "run" {
        match run_request(&p) {
            Ok(Some(r)) => Some(r),
            Ok(None) => return Some(usage_error(cmd, "give a PROMPT or an --issue")),
            Err(e) => {
                eprintln!("outpost {cmd}: {e}");
                return Some(exit::USAGE);
            }
        }
    } else {
        None
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost {cmd}: starting the runtime: {e}");
            return Some(1);
        }
    };
    Some(rt.block_on(async {
        let result = match (cmd, request) {
            ("run", Some(req)) => run(&pool, &p, req).await,
            ("attach", _) => attach(&pool, &p).await,
            ("ls", _) => ls(&pool, &p).await,
            ("logs", _) => logs(&pool, &p.positional[0]).await,
            ("cancel", _) => cancel(&pool, &p.positional[0]).await,
            _ => status(&pool, &p).await,
        };
        result.unwrap_or_else(|e| {
            eprintln!("outpost {cmd}: {e}");
            1
        })
    }))
}

fn usage_error(cmd: &str, e: &str) -> i32 {
    eprintln!("outpost {cmd}: {e}\n\n{USAGE}");
    exit::USAGE
}

/// The pool: `--url`s, or the pool file, or `OUTPOST_URL`, or the local default.
fn build_pool(p: &Parsed) -> Result<Pool, ClientError> {
    let defaults = ConnectOptions {
        http2: p.has("http2"),
        ca_file: p.get("cacert").map(PathBuf::from),
    };
    let token = if let Some(t) = p.get("token") {
        TokenSource::Literal(t.to_string())
    } else if let Some(f) = p.get("token-file") {
        TokenSource::File(f.into())
    } else if std::env::var_os("OUTPOST_TOKEN").is_some() {
        TokenSource::Env("OUTPOST_TOKEN".into())
    } else {
        TokenSource::None
    };
    let entries: Vec<PoolEntry> = if !p.all("url").is_empty() {
        p.all("url")
            .iter()
            .map(|u| PoolEntry {
                url: u.clone(),
                token: token.clone(),
                ..Default::default()
            })
            .collect()
    } else if let Some(file) = pool_file() {
        let text = std::fs::read_to_string(&file).map_err(|e| {
            ClientError::Setup(format!("reading the pool file {}: {e}", file.display()))
        })?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let entries = pool::parse_pool_file(&text, dir)
            .map_err(|e| ClientError::Setup(format!("the pool file {}: {e}", file.display())))?;
        if entries.is_empty() {
            return Err(ClientError::Setup(format!(
                "the pool file {} lists no [[outpost]]",
                file.display()
            )));
        }
        entries
    } else {
        let url = std::env::var("OUTPOST_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
        vec![PoolEntry {
            url,
            token,
            ..Default::default()
        }]
    };
    let outposts = entries
        .iter()
        .map(|e| e.connect(&defaults))
        .collect::<Result<_, _>>()?;
    Ok(Pool { outposts })
}

fn pool_file() -> Option<PathBuf> {
    if let Some(f) = std::env::var_os("OUTPOST_POOL").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(f));
    }
    let home = std::env::var_os("HOME")?;
    let f = PathBuf::from(home).join(".config/outpost/pool.toml");
    f.is_file().then_some(f)
}

fn reconnect(p: &Parsed) -> Result<Reconnect, ClientError> {
    let mut r = Reconnect::default();
    if let Some(s) = p
        .number::<f64>("reconnect-for")
        .map_err(ClientError::Setup)?
    {
        r.give_up_after = Duration::from_secs_f64(s.max(0.0));
    }
    Ok(r)
}

const RUN_OPTS: &[Opt] = &[
    value("issue"),
    value("repo"),
    value("beads"),
    value("ref"),
    value("branch"),
    value("timeout"),
    value("max-cost"),
    value("context"),
    value("wait"),
    switch("fresh"),
    switch("json"),
    switch("cancel-on-interrupt"),
];

/// The `POST /work` body from `run`'s options; `None` without a prompt or an issue.
fn run_request(p: &Parsed) -> Result<Option<WorkRequest>, ClientError> {
    let setup = ClientError::Setup;
    let prompt = p.positional.join(" ");
    if prompt.is_empty() && p.get("issue").is_none() {
        return Ok(None);
    }
    let context = match p.get("context") {
        None => None,
        Some(f) => {
            let text = if f == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(f)
            }
            .map_err(|e| setup(format!("reading the context file {f}: {e}")))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| setup(format!("the context file {f} is not JSON: {e}")))?,
            )
        }
    };
    let req = WorkRequest {
        issue_id: p.get("issue").map(str::to_string),
        rig_url: p.get("repo").map(str::to_string),
        beads_url: p.get("beads").map(str::to_string),
        git_ref: p.get("ref").map(str::to_string),
        branch: p.get("branch").map(str::to_string),
        prompt: (!prompt.is_empty()).then_some(prompt),
        context,
        timeout_s: p.number("timeout").map_err(setup)?,
        max_cost_usd: p.number("max-cost").map_err(setup)?,
        fresh: p.has("fresh").then_some(true),
    };
    Ok(Some(req))
}

async fn run(pool: &Pool, p: &Parsed, req: WorkRequest) -> Result<i32, ClientError> {
    let setup = ClientError::Setup;
    let wait = Duration::from_secs_f64(
        p.number::<f64>("wait")
            .map_err(setup)?
            .unwrap_or(300.0)
            .max(0.0),
    );
    let policy = reconnect(p)?;
    let mut view = View::new(p.has("json"), p.has("quiet"));
    let placed = {
        let mut note = |m: &str| view.note(m);
        pool.place(&req, wait, &mut note).await
    };
    let (index, id) = match placed {
        Ok(Placement::Started { index, task }) => {
            view.note(&format!(
                "task {} started on {} (branch {})",
                task.id,
                pool.get(index).url(),
                task.branch.as_deref().unwrap_or("-")
            ));
            (index, task.id)
        }
        Ok(Placement::Attached { index, id }) => {
            view.note(&format!(
                "issue {} is already live as {id} on {}: attaching",
                req.issue_id.as_deref().unwrap_or(""),
                pool.get(index).url()
            ));
            (index, id)
        }
        Err(e) => {
            view.say(&e.to_string());
            return Ok(exit::REFUSED);
        }
    };
    let interrupt = if p.has("cancel-on-interrupt") {
        Interrupt::Cancel
    } else {
        Interrupt::Detach
    };
    Ok(watch::watch(pool.get(index), &id, 0, policy, interrupt, &mut view).await)
}

const ATTACH_OPTS: &[Opt] = &[
    switch("from-start"),
    value("after"),
    short(switch("interactive"), "-i"),
    switch("json"),
];

async fn attach(pool: &Pool, p: &Parsed) -> Result<i32, ClientError> {
    let (index, task) = pool.find_task(&p.positional[0]).await?;
    let last = task.last_event_id.unwrap_or(0);
    let after = if p.has("from-start") {
        0
    } else if let Some(n) = p.number::<u64>("after").map_err(ClientError::Setup)? {
        n
    } else if task.status.is_terminal() {
        // Only the end: the `done` event, for the summary and the exit code.
        last.saturating_sub(1)
    } else {
        last
    };
    let policy = reconnect(p)?;
    let mut view = View::new(p.has("json"), p.has("quiet"));
    let o = pool.get(index);
    Ok(if p.has("interactive") {
        watch::interactive(o, &task.id, after, policy, &mut view).await
    } else {
        watch::watch(o, &task.id, after, policy, Interrupt::Detach, &mut view).await
    })
}

const LS_OPTS: &[Opt] = &[value("limit"), switch("json")];

async fn ls(pool: &Pool, p: &Parsed) -> Result<i32, ClientError> {
    let limit = p
        .number::<usize>("limit")
        .map_err(ClientError::Setup)?
        .unwrap_or(20);
    let many = pool.outposts.len() > 1;
    let mut rows = vec![vec![
        "ID", "STATUS", "ISSUE", "BRANCH", "CREATED", "EXIT", "OUTPOST",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    let mut json = Vec::new();
    let mut code = exit::OK;
    for o in &pool.outposts {
        let tasks = match o.list(limit).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("outpost ls: {e}");
                code = 1;
                continue;
            }
        };
        for t in tasks {
            rows.push(vec![
                t.id.clone(),
                t.status.to_string(),
                t.issue_id.clone().unwrap_or_else(|| "-".into()),
                t.branch.clone().unwrap_or_else(|| "-".into()),
                t.created_at.clone().unwrap_or_else(|| "-".into()),
                t.exit_code.map_or("-".into(), |c| c.to_string()),
                o.url().to_string(),
            ]);
            json.push(t);
        }
    }
    if p.has("json") {
        println!("{}", serde_json::to_string(&json).unwrap_or_default());
    } else {
        if !many {
            rows.iter_mut().for_each(|r| {
                r.pop();
            });
        }
        print!("{}", table(&rows));
    }
    Ok(code)
}

async fn logs(pool: &Pool, id: &str) -> Result<i32, ClientError> {
    let (index, _) = pool.find_task(id).await?;
    let o = pool.get(index);
    let mut body = o.log(id).await?;
    let mut out = tokio::io::stdout();
    // Bounded by the body, which is the log's length when asked.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Unreachable {
            url: o.url().into(),
            message: format!("reading the log: {e}"),
        })?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data)
                .await
                .map_err(|e| ClientError::Setup(format!("writing to stdout: {e}")))?;
        }
    }
    out.flush()
        .await
        .map_err(|e| ClientError::Setup(format!("writing to stdout: {e}")))?;
    Ok(exit::OK)
}

async fn cancel(pool: &Pool, id: &str) -> Result<i32, ClientError> {
    let (index, _) = pool.find_task(id).await?;
    let t = pool.get(index).cancel(id).await?;
    println!("{}: cancelling (was {})", t.id, t.status);
    Ok(exit::OK)
}

const STATUS_OPTS: &[Opt] = &[switch("json")];

async fn status(pool: &Pool, p: &Parsed) -> Result<i32, ClientError> {
    let mut rows = vec![[
        "OUTPOST", "STATUS", "WORKER", "TASKS", "AGENT", "VERSION", "UPTIME",
    ]
    .map(String::from)
    .to_vec()];
    let mut json = Vec::new();
    let mut errors = Vec::new();
    let mut code = exit::OK;
    for o in &pool.outposts {
        match o.hello().await {
            Ok(h) => {
                rows.push(vec![
                    o.url().to_string(),
                    h.status.clone(),
                    h.worker_id.clone().unwrap_or_else(|| "-".into()),
                    format!(
                        "{}/{}",
                        h.active_tasks.unwrap_or(0),
                        h.max_tasks.map_or("?".into(), |m| m.to_string())
                    ),
                    h.agent.clone().unwrap_or_else(|| "-".into()),
                    h.version.clone().unwrap_or_else(|| "-".into()),
                    h.uptime.map_or("-".into(), |ms| format!("{}s", ms / 1000)),
                ]);
                json.push(serde_json::json!({"url": o.url(), "hello": h}));
            }
            Err(e) => {
                code = 1;
                rows.push(vec![o.url().to_string(), "unreachable".into()]);
                errors.push(e.to_string());
                json.push(serde_json::json!({"url": o.url(), "error": e.to_string()}));
            }
        }
    }
    if p.has("json") {
        println!("{}", serde_json::Value::Array(json));
    } else {
        print!("{}", table(&rows));
        for e in errors {
            eprintln!("outpost status: {e}");
        }
    }
    Ok(code)
}

/// Left-aligned columns, two spaces apart; a short row just ends early.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
