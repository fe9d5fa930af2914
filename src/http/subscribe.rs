//! HTTP/1.1 event-stream subscriptions served without hyper, so that an idle subscriber
//! costs little more than its place in the task's event log.
//!
//! hyper's HTTP/1.1 server keeps, for the whole life of a response, an 8 KiB read buffer
//! and an 8 KiB write buffer per connection (`proto/h1/io.rs`, not configurable below
//! 8 KiB for servers). An idle SSE subscriber (a browser's `EventSource`, a controller
//! following a task) holds its connection for minutes to hours, so with hyper each one
//! cost 14.6 KiB of worker RSS on glibc and 11.4 KiB on musl (`bench idle`, 10,000
//! subscribers; issue 15's goal is 8 KiB). Here the common case, `GET /work/<id>/events`
//! over cleartext HTTP/1.1, is answered by hand: the connection keeps only its socket,
//! the event stream's own state and a graceful-shutdown watcher, and no buffer between
//! frames: 2.49 KiB per subscriber on glibc, 2.44 KiB on musl (docs/bench.md, "Fifth
//! session").
//!
//! It decides by peeking (`MSG_PEEK`, nothing consumed) at the request head and takes
//! the connection only when all of this holds: `GET`, HTTP/1.1, no body, nothing sent
//! after the head, the route is `Op::Events`, the bearer token is right, and
//! `routes::events` answers (the task exists, the cursor is valid). It reuses the
//! router, auth and the stream body; every other request, every error and every answer
//! other than a stream goes to hyper on the untouched connection, so the contract's
//! shapes come from one place. TLS connections always go to hyper (nothing is peeked
//! under TLS), as do h2c ones.
//!
//! The answer is chunked with `connection: close`: the stream is the connection's last
//! response, and the connection closes after the final chunk. A client that goes away
//! is noticed while the stream waits for its next frame, not at the next heartbeat.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Method, Request, Uri, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::errors::Resp;
use super::routes::{self, Lookup, Op};
use super::{check_auth, AppState};

/// The largest request head looked at; a longer one goes to hyper.
const HEAD_MAX: usize = 8 * 1024;
/// The most request headers looked at (hyper's default limit).
const MAX_HEADERS: usize = 100;
/// What every taken request starts with; anything else is declined at the first peek.
const PREFIX: &[u8] = b"GET /work/";

/// Takes the connection when it carries an event-stream subscription this module
/// serves (see the module doc): the request head is then consumed and the answer is
/// returned, for [`serve`]. `None`: nothing was read, and the connection is hyper's.
/// `first` is what the listener already peeked; `deadline` bounds the wait for the
/// whole head.
pub async fn take(
    state: &AppState,
    stream: &mut TcpStream,
    first: &[u8],
    deadline: Instant,
) -> Option<Resp> {
    // Most connections are not subscriptions: their first bytes tell, before any buffer
    // for a whole head is allocated.
    if !may_be_one(first) {
        return None;
    }
    // On the heap and freed on return: the long-lived stream state never holds it.
    let mut buf = vec![0u8; HEAD_MAX];
    let n = tokio::time::timeout_at(deadline, peek_head(stream, &mut buf))
        .await
        .ok()??;
    let resp = accept(state, &buf[..n])?;
    // The peeked bytes are in the socket's buffer: this returns at once.
    if let Err(e) = stream.read_exact(&mut buf[..n]).await {
        tracing::debug!("reading a peeked request head: {e}");
        return None;
    }
    Some(resp)
}

/// Peeks until the bytes hold a whole head; its length, or `None` when it cannot be one
/// this module takes. A head that arrives in pieces is peeked again every 10 ms.
async fn peek_head(stream: &TcpStream, buf: &mut [u8]) -> Option<usize> {
    let mut seen = 0;
    loop {
        let n = stream.peek(buf).await.ok()?;
        if !may_be_one(&buf[..n]) {
            return None;
        }
        if let Some(end) = head_end(&buf[..n], seen) {
            // Bytes after the head (a pipelined request, a body): hyper's.
            return (end == n).then_some(n);
        }
        if n == buf.len() {
            return None;
        }
        seen = n;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Whether a connection whose first bytes are `bytes` may carry a subscription: they
/// are some, and begin as every taken request does.
fn may_be_one(bytes: &[u8]) -> bool {
    let k = bytes.len().min(PREFIX.len());
    k > 0 && bytes[..k] == PREFIX[..k]
}

/// Where the head ends (just past `\r\n\r\n`), searching from a little before `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf[start..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| start + i + 4)
}

/// Parses a whole head and runs the router's checks on it; the answer when every
/// condition of the module doc holds.
fn accept(state: &AppState, head: &[u8]) -> Option<Resp> {
    let req = parse(head)?;
    let path = req.uri().path();
    let Lookup::Found(route, Some(id)) = routes::lookup(req.method().as_str(), path) else {
        return None;
    };
    if route.op != Op::Events || (!route.open && check_auth(&state.cfg, &req).is_err()) {
        return None;
    }
    let resp = routes::events(state, id, &req).ok()?;
    // Counted here as `handle` counts what hyper serves (a declined request is counted
    // there).
    state.metrics.request();
    Some(resp)
}

/// The request of a head: `GET`, HTTP/1.1, no body; `None` for anything else.
fn parse(head: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let uri = Uri::try_from(parsed.path?).ok()?;
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let map = req.headers_mut();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        let body =
            name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && value.as_bytes() != b"0");
        if body {
            return None;
        }
        map.append(name, value);
    }
    Some(req)
}

/// Sends `resp` (from [`take`]) on the connection, chunked, to the end of its body or
/// until the client goes; then closes the connection.
pub async fn serve(mut stream: TcpStream, resp: Resp, peer: SocketAddr) {
    match send_all(&mut stream, resp).await {
        Ok(true) => {
            // The write side is shut so the client sees the end at once.
            if let Err(e) = stream.shutdown().await {
                tracing::debug!(%peer, "closing an event stream: {e}");
            }
        }
        Ok(false) => tracing::debug!(%peer, "event stream ended: the client went away"),
        Err(e) => tracing::debug!(%peer, "event stream ended: {e}"),
    }
}

/// The head, then the body's frames as chunks: true once the last chunk is written,
/// false when the client went away first.
async fn send_all(stream: &mut TcpStream, resp: Resp) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_str(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    drop(parts);
    // Records already there (a resume) leave with the head, in one write.
    let ended = match body.frame().now_or_never() {
        Some(frame) => send(stream, &head, frame).await?,
        None => {
            write_all(stream, &mut [IoSlice::new(&head)]).await?;
            false
        }
    };
    drop(head);
    if ended {
        return Ok(true);
    }
    // Bounded by the body: each turn sends a frame, or ends.
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            gone = client_gone(stream) => {
                if gone {
                    return Ok(false);
                }
                continue;
            }
        };
        if send(stream, &[], frame).await? {
            return Ok(true);
        }
    }
}

/// Writes `before` and one frame of the body as a chunk; true once the body has ended
/// (its last chunk is written then).
async fn send(
    stream: &mut TcpStream,
    before: &[u8],
    frame: Option<Result<Frame<Bytes>, std::convert::Infallible>>,
) -> io::Result<bool> {
    let data = match frame {
        None => {
            return write_all(
                stream,
                &mut [IoSlice::new(before), IoSlice::new(b"0\r\n\r\n")],
            )
            .await
            .map(|()| true)
        }
        Some(Ok(f)) => f.into_data().unwrap_or_default(),
        Some(Err(never)) => match never {},
    };
    if data.is_empty() {
        // An empty chunk would end the body; a trailers frame has nothing to send.
        return write_all(stream, &mut [IoSlice::new(before)])
            .await
            .map(|()| false);
    }
    let mut size = [0u8; 18];
    let size = chunk_size(data.len(), &mut size);
    let mut bufs = [
        IoSlice::new(before),
        IoSlice::new(size),
        IoSlice::new(&data),
        IoSlice::new(b"\r\n"),
    ];
    write_all(stream, &mut bufs).await.map(|()| false)
}

/// `{len:x}\r\n` in `out`.
fn chunk_size(len: usize, out: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    let mut n = len;
    loop {
        i -= 1;
        out[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out[16] = b'\r';
    out[17] = b'\n';
    &out[i..]
}

/// Writes every slice, in as few `writev`s as the socket takes.
async fn write_all(stream: &mut TcpStream, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut bufs = bufs;
    IoSlice::advance_slices(&mut bufs, 0);
    // Bounded: each turn writes at least one byte, or fails.
    while bufs.iter().any(|b| !b.is_empty()) {
        let n = stream.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Waits until the socket has something to read: true when that is the client's end
/// (or an error), false for bytes, which are read and dropped (nothing more is served).
async fn client_gone(stream: &TcpStream) -> bool {
    if stream.readable().await.is_err() {
        return true;
    }
    let mut scrap = [0u8; 64];
    match stream.try_read(&mut scrap) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = [0u8; 18];
        assert_eq!(chunk_size(0, &mut out), b"0\r\n");
        assert_eq!(chunk_size(14, &mut out), b"e\r\n");
        assert_eq!(chunk_size(0x2_0000, &mut out), b"20000\r\n");
        assert_eq!(chunk_size(usize::MAX, &mut out), b"ffffffffffffffff\r\n");
    }

    #[test]
    fn head_end_is_found_across_peeks() {
        let head = b"GET /work/a/events HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(head_end(head, 0), Some(head.len()));
        assert_eq!(head_end(head, head.len() - 2), Some(head.len()));
        assert_eq!(head_end(&head[..head.len() - 1], 0), None);
    }

    #[test]
    fn only_bodiless_http11_gets_parse() {
        let ok = parse(b"GET /work/a/events?after=3 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 4\r\nContent-Length: 0\r\n\r\n")
            .expect("a plain subscription parses");
        assert_eq!(ok.uri().query(), Some("after=3"));
        assert_eq!(ok.headers()["last-event-id"], "4");
        for head in [
            &b"GET /work/a/events HTTP/1.0\r\n\r\n"[..],
            b"HEAD /work/a/events HTTP/1.1\r\n\r\n",
            b"GET /work/a/events HTTP/1.1\r\ncontent-length: 2\r\n\r\n",
            b"GET /work/a/events HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET /work/a/events HTTP/1.1\r\nhost: x\r\n\r\nGET /",
            b"GET /work/a/events HTTP/1.1\r\nhost: x\r\n",
        ] {
            assert!(parse(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
    }
}
