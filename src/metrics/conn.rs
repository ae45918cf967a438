//! What poolguard knows of one connection, shared by the connector's IO
//! wrapper, the metrics layer and the drain.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::hosts::HostCounters;
use super::{CloseReason, Metrics};
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
    /// poolguard ended the connection itself, before the server would.
    retired: AtomicBool,
    /// A response on it was HTTP/2: the counters above describe no single
    /// request.
    http2: AtomicBool,
}

/// A handle to a tracked connection; hyper-util copies it into the
/// extensions of every response on the connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle(pub(crate) Arc<ConnState>);

impl ConnState {
    pub(crate) fn open(metrics: &Metrics, host: HostKey) -> Arc<Self> {
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
            retired: AtomicBool::new(false),
            http2: AtomicBool::new(false),
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

    /// The IO ends the connection on a `Keep-Alive` limit.
    pub(crate) fn retire(&self) {
        if !self.retired.swap(true, Relaxed) {
            tracing::debug!(connection = self.id, host = %self.host, "connection retired (Keep-Alive)");
        }
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
