//! A task's events: [`EventStream`] reads one SSE response; [`Follow`] is the stream a
//! user wants, which resumes by itself. On a dropped connection, a silent one, a clean
//! end before `done` (the worker's stream time limit) or a worker restart, `Follow`
//! reconnects with `Last-Event-ID` set to the last event it handed out, with backoff,
//! and gives up only after `give_up_after` without getting through. Each event is
//! handed out exactly once, in order: a replayed id at or below the last one is dropped.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::error::ClientError;
use super::outpost::Outpost;
use super::sse::{Parser, RawEvent};
use super::types::Event;

/// One SSE response being read.
pub struct EventStream {
    url: String,
    body: Incoming,
    parser: Parser,
    ready: std::collections::VecDeque<RawEvent>,
    ended: bool,
}

/// Why an [`EventStream`] stopped giving events.
#[derive(Debug)]
pub enum StreamEnd {
    /// The response ended cleanly; `retry_ms` is the server's `retry:` hint.
    Closed { retry_ms: Option<u64> },
    /// The connection broke, or nothing (not even a keep-alive) came for too long.
    Broken(String),
}

impl EventStream {
    pub(crate) fn new(url: String, body: Incoming) -> EventStream {
        EventStream {
            url,
            body,
            parser: Parser::new(),
            ready: Default::default(),
            ended: false,
        }
    }

    /// The next event; `Err(StreamEnd)` once the response is over. Waiting longer than
    /// `idle` for any byte counts as broken.
    pub async fn next(&mut self, idle: Duration) -> Result<Event, StreamEnd> {
        // Bounded: each turn either returns or reads one more frame of a finite body.
        loop {
            if let Some(raw) = self.ready.pop_front() {
                return raw
                    .into_event()
                    .map_err(|e| StreamEnd::Broken(format!("{}: {e}", self.url)));
            }
            if self.ended {
                return Err(StreamEnd::Closed {
                    retry_ms: self.parser.retry_ms,
                });
            }
            match tokio::time::timeout(idle, self.body.frame()).await {
                Err(_) => return Err(StreamEnd::Broken(format!("nothing arrived for {idle:?}"))),
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => return Err(StreamEnd::Broken(format!("{e}"))),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let mut out = Vec::new();
                        self.parser.feed(&data, &mut out);
                        self.ready.extend(out);
                    }
                }
            }
        }
    }
}

/// How [`Follow`] reconnects.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// First wait after a failure; doubled each time up to `max_delay`.
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Give up after this long without a working connection.
    pub give_up_after: Duration,
    /// A stream silent this long (no event, no keep-alive) is treated as dropped.
    pub idle: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            give_up_after: Duration::from_secs(300),
            // Three default heartbeats (15 s).
            idle: Duration::from_secs(45),
        }
    }
}

/// What [`Follow::next`] hands out.
#[derive(Debug)]
pub enum Item {
    Event(Event),
    /// The stream dropped; the next attempt comes after `delay`.
    Reconnecting {
        after_id: u64,
        reason: String,
        delay: Duration,
    },
    /// A new stream is open again after a drop.
    Resumed {
        after_id: u64,
    },
}

/// Why [`Follow`] stopped before `done`.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// No working connection for the whole reconnect window.
    #[error("gave up reconnecting after {waited:?} (last event {last_id}): {reason}")]
    Lost {
        last_id: u64,
        waited: Duration,
        reason: String,
    },
    /// An answer that reconnecting cannot fix (401, 404, a bad id).
    #[error(transparent)]
    Fatal(ClientError),
}

/// A task's events from `after` to `done`, across drops and restarts.
pub struct Follow<'a> {
    outpost: &'a Outpost,
    id: String,
    last_id: u64,
    policy: Reconnect,
    stream: Option<EventStream>,
    /// When the current run of failures started.
    failing_since: Option<Instant>,
    delay: Duration,
    pending_resumed: bool,
    finished: bool,
    /// The backoff to sleep before the next attempt.
    sleep_before: Option<Duration>,
    /// When the current stream was opened.
    opened_at: Option<Instant>,
}

/// A stream that stayed open this long before dropping counts as a working connection.
const STABLE: Duration = Duration::from_secs(10);

impl<'a> Follow<'a> {
    pub fn new(outpost: &'a Outpost, id: &str, after: u64, policy: Reconnect) -> Follow<'a> {
        Follow {
            outpost,
            id: id.to_string(),
            last_id: after,
            delay: policy.initial_delay,
            policy,
            stream: None,
            failing_since: None,
            pending_resumed: false,
            finished: false,
            sleep_before: None,
            opened_at: None,
        }
    }

    /// The id of the last event handed out.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// The next item; `Ok(None)` after `done`.
    pub async fn next(&mut self) -> Result<Option<Item>, FollowError> {
        // Bounded: every turn hands out an item, or waits (with a growing delay) inside
        // the give-up window, which ends the loop when it runs out.
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(d) = self.sleep_before.take() {
                tokio::time::sleep(d).await;
            }
            let Some(stream) = self.stream.as_mut() else {
                let open = self.outpost.events(&self.id, self.last_id);
                let opened = match tokio::time::timeout(self.policy.idle, open).await {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Unreachable {
                        url: self.outpost.url().to_string(),
                        message: format!("no reply within {:?}", self.policy.idle),
                    }),
                };
                match opened {
                    Ok(s) => {
                        self.stream = Some(s);
                        self.opened_at = Some(Instant::now());
                        if self.pending_resumed {
                            self.pending_resumed = false;
                            return Ok(Some(Item::Resumed {
                                after_id: self.last_id,
                            }));
                        }
                        continue;
                    }
                    Err(e) if e.is_transient() => {
                        let reason = e.to_string();
                        return self.failed(reason, None).map(Some);
                    }
                    Err(e) => return Err(FollowError::Fatal(e)),
                }
            };
            match stream.next(self.policy.idle).await {
                Ok(ev) => {
                    self.failing_since = None;
                    self.delay = self.policy.initial_delay;
                    if ev.id <= self.last_id {
                        continue;
                    }
                    self.last_id = ev.id;
                    self.finished = ev.is_done();
                    return Ok(Some(Item::Event(ev)));
                }
                Err(StreamEnd::Closed { retry_ms }) => {
                    self.stream = None;
                    let hint = retry_ms.map(Duration::from_millis);
                    return self
                        .failed("the stream ended before done".into(), hint)
                        .map(Some);
                }
                Err(StreamEnd::Broken(reason)) => {
                    self.stream = None;
                    return self.failed(reason, None).map(Some);
                }
            }
        }
    }

    /// Records a failure and says so; the backoff delay is slept on the next call.
    fn failed(&mut self, reason: String, hint: Option<Duration>) -> Result<Item, FollowError> {
        let now = Instant::now();
        if self.opened_at.take().is_some_and(|t| now - t >= STABLE) {
            self.failing_since = None;
            self.delay = self.policy.initial_delay;
        }
        let since = *self.failing_since.get_or_insert(now);
        let waited = now - since;
        if waited >= self.policy.give_up_after {
            return Err(FollowError::Lost {
                last_id: self.last_id,
                waited,
                reason,
            });
        }
        let delay = hint
            .unwrap_or(self.delay)
            .min(self.policy.give_up_after - waited);
        self.delay = (self.delay * 2).min(self.policy.max_delay);
        self.pending_resumed = true;
        self.sleep_before = Some(delay);
        Ok(Item::Reconnecting {
            after_id: self.last_id,
            reason,
            delay,
        })
    }
}
