//! Runs an HTTP/2 connection's streams inside the connection's own task.
//!
//! hyper hands every new h2 stream to its executor; with tokio's that is a task per
//! stream, and each stream's answer wakes the connection task on its own, so ten
//! streams arriving in one read leave as ten `writev`s (measured: one per request at
//! 50 connections x 10 streams, docs/bench.md). Here the executor only collects the
//! stream futures; the connection's driver polls them right after the connection, then
//! polls the connection again, so the answers of one batch leave in one write, and no
//! stream needs a task, a cross-thread wake or a steal.
//!
//! A panicking stream is contained to that stream (its h2 stream is reset when its
//! handle drops), as a task of its own would be.

use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

type StreamFut = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// The stream futures handed over while a driver polls its connection on this
    /// thread; `None` outside a driver's poll.
    static COLLECTED: RefCell<Option<Vec<StreamFut>>> = const { RefCell::new(None) };
}

/// hyper's executor for h2 streams: inside [`drive`], the stream joins its connection's
/// task; anywhere else (never on the server's paths, but hyper may call it) it is
/// spawned as a tokio task.
#[derive(Clone, Copy, Debug, Default)]
pub struct InlineExec;

impl<F> hyper::rt::Executor<F> for InlineExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let left = COLLECTED.with(move |c| match c.borrow_mut().as_mut() {
            Some(v) => {
                v.push(Box::pin(AssertUnwindSafe(fut).catch_unwind().map(|_| ())));
                None
            }
            None => Some(fut),
        });
        if let Some(fut) = left {
            tokio::spawn(fut);
        }
    }
}

/// Puts `buf` in place as the collector for the duration of `f`, and takes it back
/// (with what `f` added) even if `f` panics.
fn collecting<R>(buf: &mut Vec<StreamFut>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a mut Vec<StreamFut>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            *self.0 = COLLECTED
                .with(|c| c.borrow_mut().take())
                .unwrap_or_default();
        }
    }
    COLLECTED.with(|c| *c.borrow_mut() = Some(std::mem::take(buf)));
    let _restore = Restore(buf);
    f()
}

/// How many times one wake-up may go round connection -> new streams -> connection
/// before it yields to the other tasks.
const ROUNDS: usize = 4;

/// Drives `conn` (a connection served with [`InlineExec`]) and the streams it starts,
/// until the connection ends. Streams still running then are dropped: their
/// connection is gone.
pub fn drive<C: Future>(conn: C) -> Driven<C> {
    Driven {
        conn: Box::pin(conn),
        streams: FuturesUnordered::new(),
        fresh: Vec::new(),
    }
}

/// The future [`drive`] returns.
pub struct Driven<C> {
    conn: Pin<Box<C>>,
    streams: FuturesUnordered<StreamFut>,
    fresh: Vec<StreamFut>,
}

impl<C: Future> Future for Driven<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        for _ in 0..ROUNDS {
            // Streams first: what they send is written by the connection's poll below.
            // (The set returns Pending once it has polled each of its futures.)
            while let Poll::Ready(Some(())) =
                collecting(&mut this.fresh, || this.streams.poll_next_unpin(cx))
            {}
            let out = collecting(&mut this.fresh, || this.conn.as_mut().poll(cx));
            if let Poll::Ready(out) = out {
                return Poll::Ready(out);
            }
            if this.fresh.is_empty() {
                return Poll::Pending;
            }
            this.streams.extend(this.fresh.drain(..));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
