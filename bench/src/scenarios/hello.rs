//! `hello`: requests/s and latency on `GET /hello` over HTTP/1.1 and h2c with many
//! connections (and on h2c many streams on each), next to a bare hyper server answering
//! the same JSON in the same run. The headline is the shape outpost does worst on.

use super::Ctx;
use crate::bare::BareServer;
use crate::client::{Endpoint, Proto};
use crate::report::{Goal, Row};
use crate::stats::{rate, Samples};
use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::Method;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Measured rounds per side and shape (the order alternates).
const ROUNDS: usize = 2;
/// The many-streams shape (`h2load -c50 -m10`): Cloud Run's front end multiplexes many
/// streams on few connections. Measured whatever `--connections`/`--streams` say.
const WIDE: (usize, usize) = (50, 10);

/// One load shape: protocol, connections, streams per connection, goal (issue 15).
struct Shape {
    proto: Proto,
    conns: usize,
    per_conn: usize,
    goal: f64,
}

impl Shape {
    fn long(&self) -> String {
        if self.proto == Proto::H2c {
            format!("{} conns x {} streams", self.conns, self.per_conn)
        } else {
            format!("{} conns", self.conns)
        }
    }

    fn short(&self) -> String {
        if self.proto == Proto::H2c {
            format!("h2c {}x{}", self.conns, self.per_conn)
        } else {
            "h1".to_string()
        }
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let ep = &ctx.target.ep;
    let mut c = ep.connect(Proto::H1).await?;
    let (_, body) = c.get("/hello").await.context("GET /hello")?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let exe = ctx.exe.clone();
    let bare = tokio::task::spawn_blocking(move || BareServer::start(&exe, &body))
        .await
        .context("baseline server thread")??;
    let bare_ep = Endpoint::local(bare.addr);
    let (conns, streams) = (ctx.args.connections, ctx.args.streams);
    let mut shapes = vec![
        Shape {
            proto: Proto::H1,
            conns,
            per_conn: 1,
            goal: 0.95,
        },
        Shape {
            proto: Proto::H2c,
            conns,
            per_conn: streams,
            goal: 0.95,
        },
    ];
    if (conns, streams) != WIDE {
        shapes.push(Shape {
            proto: Proto::H2c,
            conns: WIDE.0,
            per_conn: WIDE.1,
            goal: 0.9,
        });
    }
    let mut rows = Vec::new();
    // The headline: the shape outpost does worst on, against the bare server.
    let mut worst: Option<(f64, Row)> = None;
    for shape in &shapes {
        let (proto, per_conn) = (shape.proto, shape.per_conn);
        let mut o = Load::default();
        let mut b = Load::default();
        // Alternate the order between rounds so neither side always goes first.
        for round in 0..ROUNDS {
            let mut sides = [("outpost", ep, &mut o), ("bare hyper", &bare_ep, &mut b)];
            if round % 2 == 1 {
                sides.reverse();
            }
            for (who, target, total) in sides {
                let label = format!("{} {who} (round {}/{ROUNDS})", shape.short(), round + 1);
                let warm = Duration::from_millis(300).min(ctx.args.duration);
                load(target, proto, shape.conns, per_conn, warm, None).await?;
                let phase = ctx.progress.phase(label, "req", ctx.args.duration);
                let r = load(
                    target,
                    proto,
                    shape.conns,
                    per_conn,
                    ctx.args.duration,
                    Some(phase.counter()),
                )
                .await?;
                drop(phase);
                total.add(r);
            }
        }
        let name = proto.name();
        let mut row = Row::new("hello", format!("{name} req/s ({})", shape.long()), "req/s")
            .outpost(rate(o.ok as f64, o.elapsed))
            .baseline(rate(b.ok as f64, b.elapsed))
            .goal(Goal::RatioAtLeast(shape.goal));
        if o.errors > 0 {
            row = row.note(format!(
                "{} outpost requests failed ({})",
                o.errors,
                o.first_error.unwrap_or_default()
            ));
        }
        if let Some(r) = row.ratio {
            if worst.as_ref().is_none_or(|(w, _)| r < *w) {
                let mut head = row.clone();
                head.metric = format!("worst shape: {}", row.metric);
                worst = Some((r, head));
            }
        }
        rows.push(row);
        rows.push(
            Row::new("hello", format!("{} p50", shape.short()), "ms")
                .outpost(o.lat.p50())
                .baseline(b.lat.p50()),
        );
        rows.push(
            Row::new("hello", format!("{} p99", shape.short()), "ms")
                .outpost(o.lat.p99())
                .baseline(b.lat.p99()),
        );
    }
    drop(bare);
    if let Some((_, head)) = worst {
        rows.insert(0, head);
    }
    Ok(rows)
}

#[derive(Default)]
struct Load {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    lat: Samples,
}

impl Load {
    fn add(&mut self, r: Load) {
        self.ok += r.ok;
        self.errors += r.errors;
        if self.first_error.is_none() {
            self.first_error = r.first_error;
        }
        self.elapsed += r.elapsed;
        self.lat.extend(r.lat);
    }
}

async fn load(
    ep: &Endpoint,
    proto: Proto,
    conns: usize,
    per_conn: usize,
    duration: Duration,
    counter: Option<Arc<AtomicU64>>,
) -> Result<Load> {
    let mut handles = Vec::new();
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(ep.connect(proto).await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    for conn in opened {
        let mut lanes = vec![];
        for _ in 1..per_conn {
            if let Some(c) = conn.another_stream() {
                lanes.push(c);
            }
        }
        lanes.push(conn);
        for mut c in lanes {
            let counter = counter.clone();
            handles.push(tokio::spawn(async move {
                let mut lat = Samples::new();
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let res = async {
                        let req = c.request(Method::GET, "/hello", Bytes::new(), &[])?;
                        let resp = c.send(req).await?;
                        let status = resp.status();
                        http_body_util::BodyExt::collect(resp.into_body()).await?;
                        anyhow::ensure!(status.is_success(), "GET /hello: {status}");
                        Ok::<_, anyhow::Error>(())
                    }
                    .await;
                    match res {
                        Ok(()) => {
                            lat.push(t.elapsed());
                            ok += 1;
                            if let Some(c) = &counter {
                                c.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                            break;
                        }
                    }
                }
                (ok, errors, first_error, lat)
            }));
        }
    }
    let mut total = Load::default();
    for h in handles {
        let (ok, errors, first_error, lat) = h.await.context("load task")?;
        total.ok += ok;
        total.errors += errors;
        if total.first_error.is_none() {
            total.first_error = first_error;
        }
        total.lat.extend(lat);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}
