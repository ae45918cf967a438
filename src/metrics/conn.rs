//! What poolguard knows of one connection, shared by the connector's IO
//! wrapper, the metrics layer and the drain.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use http::HeaderMap;

use super::hosts::HostCounters;
use super::{CloseReason, Metrics};
use crate::conn::ReadWaker;
use crate::drain::DrainOutcome;
use crate::key::HostKey;

/// Response extension: the connection a response came on. Present when the
/// client was built with a `GuardedConnector` that has a
/// [`Metrics`](super::Metrics) and the stack has a
/// [`ReuseMetricsLayer`](super::ReuseMetricsLayer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnInfo {
    /// The connection's id, unique within its `Metrics`, from 1.
    pub id: u64,
    /// Whether the connection had served a request before this one.
    pub reused: bool,
    /// Requests served on the connection so far, this one included.
    pub requests: u64,
    /// How long the connection sat idle in the pool before this request
    /// (`None` for a new connection).
    pub idle_for: Option<Duration>,
    /// How long the request waited in its host's queue.
    pub queue_wait: Duration,
    /// Attempts before this one that failed on a stale pooled connection
    /// and were retried (see [`RetryStaleLayer`](crate::retry::RetryStaleLayer)).
    pub retries: u32,
}

const PHASE_IDLE: u8 = 0;
const PHASE_BUSY: u8 = 1;
const PHASE_BODY: u8 = 2;

const IO_NONE: u8 = 0;
const IO_EOF: u8 = 1;
const IO_ERROR: u8 = 2;

/// No reason pending (no request has sequence number 0).
const NO_PENDING: u64 = 0;

/// No `Keep-Alive` limit of this kind was advertised.
const NO_LIMIT: u64 = u64::MAX;

/// What a `Keep-Alive` response header advertises: how long the server
/// keeps an idle connection, and how many more requests it takes on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeepAlive {
    pub(crate) timeout: Option<Duration>,
    pub(crate) max: Option<u64>,
}

impl KeepAlive {
    /// Reads `Keep-Alive: timeout=N, max=M` (RFC 2068, as Apache and
    /// nginx send it). Unknown or malformed parameters are ignored.
    pub(crate) fn parse(headers: &HeaderMap) -> Option<KeepAlive> {
        let mut ka = KeepAlive::default();
        static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
        for value in headers.get_all(&KEEP_ALIVE) {
            let Ok(value) = value.to_str() else { continue };
            for param in value.split(',') {
                let Some((name, n)) = param.split_once('=') else {
                    continue;
                };
                let Ok(n) = n.trim().trim_matches('"').parse::<u64>() else {
                    continue;
                };
                let name = name.trim();
                if name.eq_ignore_ascii_case("timeout") {
                    ka.timeout = Some(Duration::from_secs(n));
                } else if name.eq_ignore_ascii_case("max") {
                    ka.max = Some(n);
                }
            }
        }
        (ka != KeepAlive::default()).then_some(ka)
    }

    /// How long a connection may sit idle before poolguard retires it: the
    /// advertised timeout less a margin of a quarter of it, at most 1 s,
    /// for the next request to reach the server before its timer fires.
    pub(crate) fn retire_after(timeout: Duration) -> Duration {
        timeout - (timeout / 4).min(Duration::from_secs(1))
    }
}

/// What the IO should do about a `Keep-Alive` limit now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retire {
    /// No limit applies: read on.
    Keep,
    /// The connection is idle and past its limit: end it.
    Now,
    /// Idle, to be retired at this time (`Metrics` clock).
    At(u64),
    /// A request or response is under way; check again when it is idle.
    Later,
}

fn tag(seq: u64, reason: CloseReason) -> u64 {
    (seq << 8) | reason.index() as u64
}

/// Shared state of one tracked connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) id: u64,
    host: HostKey,
    metrics: Metrics,
    counters: Arc<HostCounters>,
    requests: AtomicU64,
    /// Requests written, counted by the IO: a write after a read (or the
    /// first write) starts a new request. Events of a response's body
    /// count only while no later request was written.
    written: AtomicU64,
    /// The last IO operation was a read that returned data.
    read_last: AtomicBool,
    /// Idle in the pool, busy with a request, or streaming a response body.
    phase: AtomicU8,
    /// An explicit reason the connection is about to close, reset by each
    /// new response.
    /// Tagged with the request it belongs to (`seq << 8 | reason`), so that
    /// a late event of an earlier response cannot stand for a later one.
    pending: AtomicU64,
    /// What the IO saw: end of file or an error.
    io: AtomicU8,
    /// When the connection last became idle (`Metrics` clock, 0 = never).
    idle_since: AtomicU64,
    /// A request or response on it said `Connection: close`: it is the last
    /// one, whichever order the metrics layer saw the responses in.
    close_said: AtomicBool,
    /// hyper dropped the connection.
    closed: AtomicBool,
    /// The close was counted.
    counted: AtomicBool,
    /// Honour `Keep-Alive` response headers (set by the connector).
    honor_keep_alive: bool,
    /// A `Keep-Alive` limit was advertised: the IO checks the two below.
    ka_rule: AtomicBool,
    /// Retire after this long idle (nanoseconds; `NO_LIMIT` for none).
    ka_idle: AtomicU64,
    /// Retire once this many responses were seen (`NO_LIMIT` for none).
    ka_last: AtomicU64,
    /// poolguard ended the connection itself, before the server would.
    retired: AtomicBool,
    /// A response on it was HTTP/2: the counters above describe no single
    /// request.
    http2: AtomicBool,
    /// The IO's task, to wake when the connection goes idle with a
    /// `Keep-Alive` limit pending.
    idle_waker: ReadWaker,
}

/// A handle to a tracked connection; hyper-util copies it into the
/// extensions of every response on the connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle(pub(crate) Arc<ConnState>);

impl ConnState {
    pub(crate) fn open(metrics: &Metrics, host: HostKey, honor_keep_alive: bool) -> Arc<Self> {
        let inner = &metrics.inner;
        let counters = inner.hosts.counters(&host);
        inner.connections_opened.fetch_add(1, Relaxed);
        counters.opened.fetch_add(1, Relaxed);
        Arc::new(ConnState {
            id: inner.next_connection.fetch_add(1, Relaxed),
            host,
            metrics: metrics.clone(),
            counters,
            requests: AtomicU64::new(0),
            written: AtomicU64::new(0),
            read_last: AtomicBool::new(true),
            // Idle until hyper writes a request: a connection that loses the
            // pool's checkout race goes to the pool unused.
            phase: AtomicU8::new(PHASE_IDLE),
            pending: AtomicU64::new(NO_PENDING),
            io: AtomicU8::new(IO_NONE),
            idle_since: AtomicU64::new(0),
            close_said: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            counted: AtomicBool::new(false),
            honor_keep_alive,
            ka_rule: AtomicBool::new(false),
            ka_idle: AtomicU64::new(NO_LIMIT),
            ka_last: AtomicU64::new(NO_LIMIT),
            retired: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_waker: ReadWaker::default(),
        })
    }

    /// hyper is about to write. The first write after a read (or the first
    /// of all) starts a new request, whether or not the write succeeds: the
    /// connection is busy, and whatever was pending from the last response
    /// is stale (the connection outlived it).
    #[inline]
    pub(crate) fn on_write(&self) {
        if self.read_last.swap(false, Relaxed) {
            self.written.fetch_add(1, Relaxed);
            self.phase.store(PHASE_BUSY, Relaxed);
        }
    }

    /// The IO read some bytes.
    #[inline]
    pub(crate) fn on_read(&self) {
        if !self.read_last.load(Relaxed) {
            self.read_last.store(true, Relaxed);
        }
    }

    /// Whether `Keep-Alive` headers are honoured on this connection.
    pub(crate) fn honors_keep_alive(&self) -> bool {
        self.honor_keep_alive
    }

    /// A response said `Keep-Alive: ..` after `served` responses on the
    /// connection (this one included).
    pub(crate) fn on_keep_alive(&self, served: u64, ka: KeepAlive) {
        if !self.honor_keep_alive {
            return;
        }
        if let Some(timeout) = ka.timeout {
            let after = super::handle::nanos(KeepAlive::retire_after(timeout));
            self.ka_idle.store(after, Relaxed);
        }
        if let Some(max) = ka.max {
            // `max` more requests are allowed after this one (Apache counts
            // down to 1 and then says `Connection: close`).
            self.ka_last.store(served.saturating_add(max), Relaxed);
        }
        self.ka_rule.store(true, Relaxed);
    }

    /// Whether a `Keep-Alive` limit may retire the connection: one load,
    /// on every read.
    #[inline]
    pub(crate) fn has_keep_alive_limit(&self) -> bool {
        self.ka_rule.load(Relaxed)
    }

    /// What the `Keep-Alive` limit says now.
    pub(crate) fn retire_check(&self) -> Retire {
        if !self.ka_rule.load(Relaxed) || self.retired.load(Relaxed) {
            return Retire::Keep;
        }
        if self.phase.load(Relaxed) != PHASE_IDLE {
            return Retire::Later;
        }
        if self.requests.load(Relaxed) >= self.ka_last.load(Relaxed) {
            return Retire::Now;
        }
        let idle = self.ka_idle.load(Relaxed);
        let since = self.idle_since.load(Relaxed);
        if idle == NO_LIMIT || since == 0 {
            return Retire::Keep;
        }
        let at = since.saturating_add(idle);
        if self.metrics.inner.now() >= at {
            Retire::Now
        } else {
            Retire::At(at)
        }
    }

    /// The IO's read is pending: remember its task, to wake it when the
    /// connection goes idle with a `Keep-Alive` limit (hyper reads an idle
    /// connection once and waits; the limit may be learnt after that read).
    /// Nothing to do when `Keep-Alive` is not honoured.
    pub(crate) fn park_reader(&self, waker: &Waker) {
        if !self.honor_keep_alive {
            return;
        }
        self.idle_waker.park(waker);
    }

    /// The IO ends the connection on a `Keep-Alive` limit.
    pub(crate) fn retire(&self) {
        if !self.retired.swap(true, Relaxed) {
            tracing::debug!(connection = self.id, host = %self.host, "connection retired (Keep-Alive)");
        }
    }

    /// The `Metrics` this connection reports to.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A response on the connection was HTTP/2.
    pub(crate) fn on_http2(&self) {
        if !self.http2.load(Relaxed) {
            self.http2.store(true, Relaxed);
        }
    }

    /// The request a response arriving now answers: the latest written,
    /// unless fewer responses than writes have been seen, when a caller's
    /// task polls its response late (a small body can be read whole and its
    /// connection handed to the next request first): a late response must
    /// not claim the next request's events. `seen` counts this response if
    /// `on_response` already did.
    pub(crate) fn response_seq(&self, seen: u64) -> u64 {
        self.written.load(Relaxed).min(seen)
    }

    /// Responses seen so far.
    pub(crate) fn responses(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Whether response `seq` is still the connection's latest request:
    /// the pool may hand the connection to the next request before the
    /// last body's reader has seen its end.
    fn is_current(&self, seq: u64) -> bool {
        self.written.load(Relaxed) == seq
    }

    /// The IO read end of file.
    pub(crate) fn on_eof(&self) {
        let _ = self.io.compare_exchange(IO_NONE, IO_EOF, Relaxed, Relaxed);
    }

    /// The IO failed; a reset or broken pipe is the peer closing.
    pub(crate) fn on_io_error(&self, error: &std::io::Error) {
        use std::io::ErrorKind::*;
        let seen = match error.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => IO_EOF,
            _ => IO_ERROR,
        };
        let _ = self.io.compare_exchange(IO_NONE, seen, Relaxed, Relaxed);
    }

    /// A response arrived on this connection: returns what the metrics layer
    /// reports of it, with `started` the request's start on the `Metrics`
    /// clock and `close` whether either side said `Connection: close`.
    pub(crate) fn on_response(
        &self,
        started: u64,
        close: bool,
        queue_wait: Duration,
        retries: u32,
    ) -> ConnInfo {
        let previous = self.requests.fetch_add(1, Relaxed);
        if close {
            self.close_said.store(true, Relaxed);
        }
        // If a later request is already on the wire, this response's events
        // no longer describe the connection.
        let _ = self
            .phase
            .compare_exchange(PHASE_BUSY, PHASE_BODY, Relaxed, Relaxed);
        let idle_since = self.idle_since.load(Relaxed);
        let idle_for = (previous > 0 && idle_since > 0)
            .then(|| Duration::from_nanos(started.saturating_sub(idle_since)));
        self.counters.responses.fetch_add(1, Relaxed);
        if previous > 0 {
            self.counters.reused.fetch_add(1, Relaxed);
        }
        self.settle();
        ConnInfo {
            id: self.id,
            reused: previous > 0,
            requests: previous + 1,
            idle_for,
            queue_wait,
            retries,
        }
    }

    /// The body of response `seq` reached its end: the connection goes back
    /// to the pool. Ignored if a later request already uses the connection.
    pub(crate) fn on_body_end(&self, seq: u64) {
        if self.is_current(seq)
            && self
                .phase
                .compare_exchange(PHASE_BODY, PHASE_IDLE, Relaxed, Relaxed)
                .is_ok()
        {
            self.idle_since.store(self.metrics.inner.now(), Relaxed);
            if self.ka_rule.load(Relaxed) {
                // The IO checks the limit, and arms its timer, on its next
                // read.
                self.idle_waker.wake();
            }
        }
        self.settle();
    }

    /// The caller dropped the body of response `seq` before its end. A
    /// drain, if one runs, reports later through [`ConnState::on_drain`].
    pub(crate) fn on_body_dropped(&self, seq: u64) {
        if self.is_current(seq) {
            self.set_pending(seq, CloseReason::BodyDroppedUnread);
        }
        self.settle();
    }

    /// How the drain of the body of response `seq` ended.
    pub(crate) fn on_drain(&self, seq: u64, outcome: &DrainOutcome) {
        if !self.is_current(seq) {
            return;
        }
        match outcome {
            DrainOutcome::Completed { .. } => {
                let _ = self.pending.compare_exchange(
                    tag(seq, CloseReason::BodyDroppedUnread),
                    NO_PENDING,
                    Relaxed,
                    Relaxed,
                );
                self.on_body_end(seq);
            }
            DrainOutcome::GaveUpBytes { .. }
            | DrainOutcome::GaveUpTime { .. }
            | DrainOutcome::Failed { .. } => self.set_pending(seq, CloseReason::DrainGaveUp),
            DrainOutcome::Aborted { .. } | DrainOutcome::Skipped(_) => {
                self.set_pending(seq, CloseReason::BodyDroppedUnread)
            }
        }
        self.settle();
    }

    fn set_pending(&self, seq: u64, reason: CloseReason) {
        // `Connection: close` was said first and stays the reason.
        let close = tag(seq, CloseReason::ConnectionClose);
        let _ = self.pending.fetch_update(Relaxed, Relaxed, |p| {
            (p != close).then_some(tag(seq, reason))
        });
    }

    /// The reason pending for the current request, if any.
    fn pending(&self) -> Option<CloseReason> {
        if self.close_said.load(Relaxed) {
            return Some(CloseReason::ConnectionClose);
        }
        let p = self.pending.load(Relaxed);
        let seq = p >> 8;
        if p == NO_PENDING || !self.is_current(seq) {
            return None;
        }
        CloseReason::from_index((p & 0xff) as u8)
    }

    /// Why the connection closed, from what was seen last.
    pub(crate) fn reason(&self) -> CloseReason {
        if self.retired.load(Relaxed) {
            return CloseReason::Retired;
        }
        if let Some(reason) = self.pending() {
            return reason;
        }
        match self.io.load(Relaxed) {
            IO_EOF => return CloseReason::PeerClosed,
            IO_ERROR => return CloseReason::IoError,
            _ => {}
        }
        match self.phase.load(Relaxed) {
            PHASE_IDLE => CloseReason::ClosedIdle,
            // A request was written and no response came, with no error or
            // end of file: its caller went away.
            // Only a metrics layer sees responses: without one, a busy
            // connection tells nothing.
            PHASE_BUSY if self.metrics.inner.layer_attached.load(Relaxed) => {
                CloseReason::RequestCancelled
            }
            _ => CloseReason::Unknown,
        }
    }

    /// hyper dropped the connection. While a request or its response body
    /// is still on its way through the metrics layer (hyper may close the
    /// socket as soon as it has read a `Connection: close` response, or the
    /// pool may close it before the caller polled the body's end), counting
    /// waits for what the metrics layer will say, or for the last handle.
    pub(crate) fn on_close(&self) {
        self.closed.store(true, Relaxed);
        self.settle();
    }

    /// Counts the close once its reason is known.
    fn settle(&self) {
        if !self.closed.load(Relaxed) {
            return;
        }
        let known = !self.metrics.inner.layer_attached.load(Relaxed)
            || self.pending().is_some()
            || self.io.load(Relaxed) != IO_NONE
            || self.phase.load(Relaxed) == PHASE_IDLE;
        if known {
            self.count_close();
        }
    }

    /// Counts the close, once.
    fn count_close(&self) {
        if self.counted.swap(true, Relaxed) {
            return;
        }
        let reason = self.reason();
        self.metrics.inner.closed(reason);
        self.counters.closed.fetch_add(1, Relaxed);
        tracing::debug!(
            connection = self.id,
            host = %self.host,
            %reason,
            requests = self.requests.load(Relaxed),
            "connection closed"
        );
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        // The last handle is gone: a response that never came will not.
        self.count_close();
    }
}
