//! HTTP/1.1 event streams served without hyper (`src/http/subscribe.rs`), through the
//! real binary and a hand-written client on a raw socket: the chunked framing a strict
//! decoder accepts, the end and close after `done`, a head sent in pieces, every error
//! still answered as before (by hyper), the requests it must leave to hyper (pipelined,
//! over 8 KiB, `HEAD`, HTTP/1.0), a subscriber that vanishes while the task idles being
//! let go at once, and a drain ending the stream with `done`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// Connects to the worker with a bounded read timeout.
fn connect(w: &Worker) -> TcpStream {
    let s = TcpStream::connect((w.host, w.port)).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// Sends `request` as one write and reads until the worker closes the connection.
fn exchange(w: &Worker, request: &str) -> Vec<u8> {
    let mut s = connect(w);
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("the connection was not closed within {T:?}: {e}"));
    out
}

/// A response's status line, its headers (names lowercased) and the rest.
fn split_head(resp: &[u8]) -> (String, Vec<(String, String)>, &[u8]) {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end in {:?}", String::from_utf8_lossy(resp)));
    let head = std::str::from_utf8(&resp[..end]).expect("the head is text");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header {l:?}"));
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    (status, headers, &resp[end + 4..])
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Decodes a chunked body strictly (RFC 9112 7.1: hex size, CRLF, data, CRLF; the last
/// chunk `0` with no trailers); returns the data and whatever follows the last chunk.
fn dechunk(mut body: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = std::str::from_utf8(&body[..eol]).expect("a chunk size is text");
        assert!(
            !size.is_empty() && size.bytes().all(|b| b.is_ascii_hexdigit()),
            "bad chunk size {size:?}"
        );
        let n = usize::from_str_radix(size, 16).unwrap();
        body = &body[eol + 2..];
        if n == 0 {
            assert!(body.starts_with(b"\r\n"), "the last chunk has trailers");
            return (out, &body[2..]);
        }
        assert!(body.len() >= n + 2, "a chunk is cut off");
        out.extend_from_slice(&body[..n]);
        assert_eq!(
            &body[n..n + 2],
            b"\r\n",
            "a chunk's data does not end with CRLF"
        );
        body = &body[n + 2..];
    }
}

fn sse_events(data: &[u8]) -> Vec<Event> {
    let mut parser = outpost::client::sse::Parser::new();
    let mut raw = Vec::new();
    parser.feed(data, &mut raw);
    raw.into_iter()
        .map(|r| r.into_event().expect("a well-formed event"))
        .collect()
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{extra}\r\n")
}

#[tokio::test]
async fn a_raw_subscriber_gets_strict_chunks_then_the_end_and_a_close() {
    let w = Worker::start(&[]);
    let c = h1();
    let id = submit(
        &c,
        &w,
        json!({"prompt": "for i in $(seq 1 20); do echo line$i; sleep 0.02; done"}),
    )
    .await;
    // Live (from the start while the task runs) and replayed (from a cursor, after it).
    let live = tokio::task::spawn_blocking({
        let (host, port, id) = (w.host, w.port, id.clone());
        move || {
            let mut s = TcpStream::connect((host, port)).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            s.write_all(get(&format!("/work/{id}/events?after=0"), "").as_bytes())
                .unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            out
        }
    });
    wait_terminal(&c, &w, &id, T).await;
    let live = live.await.unwrap();
    let replay = exchange(&w, &get(&format!("/work/{id}/events?after=3"), ""));
    let mut all = Vec::new();
    for (resp, first) in [(&live, 1), (&replay, 4)] {
        let (status, headers, body) = split_head(resp);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
        assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
        assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
        assert_eq!(header(&headers, "connection"), Some("close"));
        assert!(header(&headers, "content-length").is_none());
        let (data, after) = dechunk(body);
        assert!(after.is_empty(), "bytes after the last chunk: {after:?}");
        let events = sse_events(&data);
        assert_complete(&events, first);
        all.push(events);
    }
    let text = String::from_utf8(output_of(&all[0])).unwrap();
    let expected: String = (1..=20).map(|i| format!("line{i}\r\n")).collect();
    assert_eq!(text, expected);
    assert_eq!(
        all[0][3..],
        all[1][..],
        "the replay differs from the live stream"
    );
}

#[tokio::test]
async fn a_head_sent_in_pieces_is_still_served_by_hand() {
    let w = Worker::start(&[]);
    let c = h1();
    let id = submit(&c, &w, json!({"prompt": "echo hi"})).await;
    wait_terminal(&c, &w, &id, T).await;
    let req = get(&format!("/work/{id}/events"), "");
    let mut s = connect(&w);
    s.set_nodelay(true).unwrap();
    for part in [
        &req[..7],
        &req[7..20],
        &req[20..req.len() - 1],
        &req[req.len() - 1..],
    ] {
        s.write_all(part.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let (status, headers, body) = split_head(&resp);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert_complete(&sse_events(&dechunk(body).0), 1);
}

#[tokio::test]
async fn refused_subscriptions_answer_as_before() {
    let w = Worker::start(&[("OUTPOST_TOKEN", "s3cret-token")]);
    let c = h1();
    let auth = "Bearer s3cret-token";
    let id = submit_as(&c, &w, Some("s3cret-token"), json!({"prompt": "echo hi"})).await;
    let cases = [
        (format!("/work/{id}/events"), None, 401, "unauthorized"),
        (
            format!("/work/{id}/events"),
            Some("Bearer wrong"),
            401,
            "unauthorized",
        ),
        (
            "/work/no-such-task/events".to_string(),
            Some(auth),
            404,
            "not_found",
        ),
        (
            format!("/work/{id}/events?after=x"),
            Some(auth),
            400,
            "invalid_field",
        ),
        (
            format!("/work/{id}/events?after=-1"),
            Some(auth),
            400,
            "invalid_field",
        ),
    ];
    for (path, token, status, code) in cases {
        let mut req = c.get(w.url(&path));
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {token:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path} {token:?}: {v}");
    }
    // Last-Event-ID is checked as before too.
    let r = c
        .get(w.url(&format!("/work/{id}/events")))
        .header("authorization", auth)
        .header("last-event-id", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // And with the token the stream is served by hand (it closes after `done`).
    let resp = exchange(
        &w,
        &get(
            &format!("/work/{id}/events"),
            &format!("Authorization: {auth}\r\n"),
        ),
    );
    let (status, headers, body) = split_head(&resp);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert_complete(&sse_events(&dechunk(body).0), 1);
}

#[tokio::test]
async fn pipelined_oversized_head_and_http10_requests_are_left_to_hyper() {
    let w = Worker::start(&[]);
    let c = h1();
    let id = submit(&c, &w, json!({"prompt": "echo hi"})).await;
    wait_terminal(&c, &w, &id, T).await;
    let events = format!("/work/{id}/events");

    // A second request right behind the first: both answered, in order, on one
    // connection kept alive between them (hyper's keep-alive, not a hand-served close).
    let two = format!(
        "{}GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        get(&events, "")
    );
    let resp = exchange(&w, &two);
    let (status, headers, body) = split_head(&resp);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    assert!(header(&headers, "connection").is_none(), "{headers:?}");
    let (data, rest) = dechunk(body);
    assert_complete(&sse_events(&data), 1);
    let (status, _, _) = split_head(rest);
    assert_eq!(status, "HTTP/1.1 200 OK", "the pipelined /healthz");

    // A head over 8 KiB: hyper's too (kept alive, so sent with `Connection: close`).
    let big = format!("X-Padding: {}\r\nConnection: close\r\n", "p".repeat(9000));
    let resp = exchange(&w, &get(&events, &big));
    let (status, headers, body) = split_head(&resp);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert!(header(&headers, "date").is_some());
    assert_complete(&sse_events(&dechunk(body).0), 1);

    // HEAD: the route answers GET only, as before.
    let resp = exchange(
        &w,
        &format!("HEAD {events} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    );
    let (status, headers, _) = split_head(&resp);
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    assert_eq!(header(&headers, "allow"), Some("GET"));

    // HTTP/1.0: no chunks; the body ends with the connection.
    let resp = exchange(&w, &format!("GET {events} HTTP/1.0\r\n\r\n"));
    let (status, headers, body) = split_head(&resp);
    assert!(status.ends_with(" 200 OK"), "{status}");
    assert!(
        header(&headers, "transfer-encoding").is_none(),
        "{headers:?}"
    );
    assert_complete(&sse_events(body), 1);
}

/// `outpost_stream_subscribers` from `/metrics`.
async fn subscribers(c: &reqwest::Client, w: &Worker) -> u64 {
    let text = text_of(c.get(w.url("/metrics"))).await;
    text.lines()
        .find_map(|l| l.strip_prefix("outpost_stream_subscribers "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no outpost_stream_subscribers in {text}"))
}

/// Waits (bounded by `max`) until the subscriber count is `want`.
async fn wait_subscribers(c: &reqwest::Client, w: &Worker, want: u64, max: Duration) {
    let start = Instant::now();
    let mut now = subscribers(c, w).await;
    while now != want {
        assert!(
            start.elapsed() < max,
            "{now} subscribers after {max:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = subscribers(c, w).await;
    }
}

#[tokio::test]
async fn a_subscriber_that_goes_away_while_the_task_idles_is_let_go_at_once() {
    // Heartbeats an hour apart: only noticing the close can free the subscriber.
    let w = Worker::start(&[("OUTPOST_HEARTBEAT_S", "3600")]);
    let c = h1();
    let id = submit(&c, &w, json!({"prompt": "echo started; sleep 60"})).await;
    wait_subscribers(&c, &w, 0, T).await;
    let mut s = connect(&w);
    s.write_all(get(&format!("/work/{id}/events"), "").as_bytes())
        .unwrap();
    // The head and the events so far arrive; then the task is quiet.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("started") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("connection: close"));
    wait_subscribers(&c, &w, 1, T).await;
    drop(s);
    wait_subscribers(&c, &w, 0, Duration::from_secs(5)).await;
    assert_eq!(cancel(&c, &w, &id).await.status(), 202);
}

#[tokio::test]
async fn a_drain_ends_a_hand_served_stream_with_done_and_the_worker_exits() {
    let mut w = Worker::start(&[]);
    let c = h1();
    let id = submit(&c, &w, json!({"prompt": "echo started; sleep 60"})).await;
    let mut s = connect(&w);
    s.write_all(get(&format!("/work/{id}/events"), "").as_bytes())
        .unwrap();
    wait_subscribers(&c, &w, 1, T).await;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        s.read_to_end(&mut out).map(|_| out)
    });
    let st = w
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(30))
        .expect("the worker did not exit within 30 s of SIGTERM");
    assert!(st.success(), "{st:?}\n{}", w.log_text());
    let resp = reader.join().unwrap().expect("the stream ended cleanly");
    let (status, _, body) = split_head(&resp);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (data, after) = dechunk(body);
    assert!(after.is_empty());
    let events = sse_events(&data);
    assert_complete(&events, 1);
}
