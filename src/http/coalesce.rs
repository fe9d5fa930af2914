//! The socket an HTTP/2 connection writes to, shaped so that many small frames leave in
//! one syscall.
//!
//! h2 copies a DATA frame's payload into its own 16 KiB write buffer only when the
//! payload is under 1 KiB on a socket without vectored writes, and under 256 bytes on
//! one with them; a larger payload is chained, and a chained frame must be written out
//! before the next frame is encoded. On a plain `TcpStream` (vectored) every `/hello`
//! answer (~500 bytes) therefore cost a `writev` of its own, however many were ready
//! (docs/bench.md). This wrapper says it has no vectored writes, so h2 packs small
//! payloads into its buffer, and it keeps the one case that costs a second syscall
//! without vectored writes cheap: h2 writing its buffer and then a chained (large)
//! payload. A small write is held back (copied) and leaves with the next large one in
//! one `writev`, or at the next flush.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes up to this size are held back (copied); larger ones go out at once, after
/// what is held, in one `writev`. h2's own buffer of a few frames is small; a chained
/// payload is over 1 KiB and usually 16 KiB, and is not copied.
const HOLD_SMALL: usize = 4 * 1024;

/// See the module doc.
pub struct Coalesce<T> {
    io: T,
    /// Off: every call goes straight through (HTTP/1.1, where hyper buffers and
    /// writes vectored itself).
    on: bool,
    /// Bytes accepted but not yet written; empty (and unallocated) between flushes.
    held: Vec<u8>,
}

impl<T> Coalesce<T> {
    pub fn new(io: T, on: bool) -> Self {
        Coalesce {
            io,
            on,
            held: Vec::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes the held bytes out; Ready once there are none.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        // Free it: an idle connection keeps no write buffer here.
        self.held = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.on {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        if buf.len() <= HOLD_SMALL && this.held.len() + buf.len() <= 2 * HOLD_SMALL {
            if this.held.is_empty() {
                this.held.reserve_exact(2 * HOLD_SMALL);
            }
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // Bounded: each round writes at least one byte of what is held, or returns.
        while !this.held.is_empty() {
            let held = this.held.len();
            let iov = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &iov))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= held {
                this.held = Vec::new();
                if n > held {
                    return Poll::Ready(Ok(n - held));
                }
            } else {
                this.held.drain(..n);
            }
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.on {
            // Not called while `is_write_vectored` is false; write the first slice.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        !self.on && self.io.is_write_vectored()
    }
}
