//! What poolguard knows of one connection, shared by the connector's IO
//! wrapper, the metrics layer and the drain.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
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
}

const PHASE_IDLE: u8 = 0;
const PHASE_BUSY: u8 = 1;
const PHASE_BODY: u8 = 2;

const IO_NONE: u8 = 0;
const IO_EOF: u8 = 1;
const IO_ERROR: u8 = 2;

const NO_REASON: u8 = u8::MAX;

/// Shared state of one tracked connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) id: u64,
    host: HostKey,
    metrics: Metrics,
    counters: Arc<HostCounters>,
    requests: AtomicU64,
    /// Idle in the pool, busy with a request, or streaming a response body.
    phase: AtomicU8,
    /// An explicit reason the connection is about to close, reset by each
    /// new response.
    pending: AtomicU8,
    /// What the IO saw: end of file or an error.
    io: AtomicU8,
    /// When the connection last became idle (`Metrics` clock, 0 = never).
    idle_since: AtomicU64,
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
            // Idle until hyper writes a request: a connection that loses the
            // pool's checkout race goes to the pool unused.
            phase: AtomicU8::new(PHASE_IDLE),
            pending: AtomicU8::new(NO_REASON),
            io: AtomicU8::new(IO_NONE),
            idle_since: AtomicU64::new(0),
        })
    }

    /// The IO wrote bytes: an idle connection is busy with a new request.
    #[inline]
    pub(crate) fn on_write(&self) {
        let _ = self
            .phase
            .compare_exchange(PHASE_IDLE, PHASE_BUSY, Relaxed, Relaxed);
    }

    /// Whether reads should be watched for an end of file: not while a
    /// response body streams, when the copy would cost the most.
    #[inline]
    pub(crate) fn watches_reads(&self) -> bool {
        self.phase.load(Relaxed) != PHASE_BODY
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
    pub(crate) fn on_response(&self, started: u64, close: bool, queue_wait: Duration) -> ConnInfo {
        let previous = self.requests.fetch_add(1, Relaxed);
        self.phase.store(PHASE_BODY, Relaxed);
        self.pending.store(
            if close {
                CloseReason::ConnectionClose.index() as u8
            } else {
                NO_REASON
            },
            Relaxed,
        );
        let idle_since = self.idle_since.load(Relaxed);
        let idle_for = (previous > 0 && idle_since > 0)
            .then(|| Duration::from_nanos(started.saturating_sub(idle_since)));
        self.counters.responses.fetch_add(1, Relaxed);
        if previous > 0 {
            self.counters.reused.fetch_add(1, Relaxed);
        }
        ConnInfo {
            id: self.id,
            reused: previous > 0,
            requests: previous + 1,
            idle_for,
            queue_wait,
        }
    }

    /// The response body reached its end: the connection goes back to the
    /// pool.
    pub(crate) fn on_body_end(&self) {
        self.idle_since.store(self.metrics.inner.now(), Relaxed);
        self.phase.store(PHASE_IDLE, Relaxed);
    }

    /// The caller dropped the body before its end. A drain, if one runs,
    /// reports later through [`ConnState::on_drain`].
    pub(crate) fn on_body_dropped(&self) {
        self.set_pending(CloseReason::BodyDroppedUnread);
    }

    /// How the drain of a body on this connection ended.
    pub(crate) fn on_drain(&self, outcome: &DrainOutcome) {
        match outcome {
            DrainOutcome::Completed { .. } => {
                self.pending.store(NO_REASON, Relaxed);
                self.on_body_end();
            }
            DrainOutcome::GaveUpBytes { .. }
            | DrainOutcome::GaveUpTime { .. }
            | DrainOutcome::Failed { .. } => self.set_pending(CloseReason::DrainGaveUp),
            DrainOutcome::Aborted { .. } | DrainOutcome::Skipped(_) => {
                self.set_pending(CloseReason::BodyDroppedUnread)
            }
        }
    }

    fn set_pending(&self, reason: CloseReason) {
        // `Connection: close` was said first and stays the reason.
        let close = CloseReason::ConnectionClose.index() as u8;
        let _ = self.pending.fetch_update(Relaxed, Relaxed, |p| {
            (p != close).then_some(reason.index() as u8)
        });
    }

    /// Why the connection closed, from what was seen last.
    pub(crate) fn reason(&self) -> CloseReason {
        if let Some(reason) = CloseReason::from_index(self.pending.load(Relaxed)) {
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

    /// The connection is gone: count it once.
    pub(crate) fn on_close(&self) {
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
