//! What the metrics learn of tracked connections: the [`ConnInfo`] of each
//! response, and the counters a connection's record reports to.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::hosts::HostCounters;
use super::{CloseReason, Metrics};
use crate::conn::{ConnObserver, Link, Record};
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
    /// (`None` for a new connection, and for a request that started
    /// before its `Metrics` saw its first response on a tracked
    /// connection: until then requests do not read the clock).
    pub idle_for: Option<Duration>,
    /// How long the request waited in its host's queue.
    pub queue_wait: Duration,
    /// Attempts before this one that failed on a stale pooled connection
    /// and were retried (see [`RetryStaleLayer`](crate::retry::RetryStaleLayer)).
    pub retries: u32,
}

/// Where one tracked connection's events are counted.
#[derive(Debug)]
struct Counting {
    metrics: Metrics,
    host: Arc<HostCounters>,
    /// Its events in the `metrics` facade, and where it stands there.
    #[cfg(feature = "metrics")]
    emit: super::emit::ConnEmit,
    #[cfg(feature = "metrics")]
    standing: std::sync::Mutex<Option<Standing>>,
    #[cfg(feature = "metrics")]
    /// When the connection opened, on the handle's clock (tokio's).
    opened_at: u64,
}

/// Where a connection is counted in `http.client.open_connections`.
#[cfg(feature = "metrics")]
type Standing = (super::emit::ConnState, &'static str);

#[cfg(feature = "metrics")]
fn version(http1: bool) -> &'static str {
    if http1 {
        "1.1"
    } else {
        "2"
    }
}

impl ConnObserver for Counting {
    fn now(&self) -> u64 {
        self.metrics.inner.now()
    }

    fn responded(&self, reused: bool) {
        self.host.responses.fetch_add(1, Relaxed);
        if reused {
            self.host.reused.fetch_add(1, Relaxed);
        }
    }

    fn closed(&self, reason: CloseReason) {
        self.metrics.inner.closed(reason);
        self.host.closed.fetch_add(1, Relaxed);
        tracing::debug!(reason = reason.as_str(), "poolguard: connection closed");
        #[cfg(feature = "metrics")]
        {
            let was = self
                .standing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            self.emit.moved(was, None);
            let version = was.map_or("1.1", |(_, v)| v);
            let open = self.metrics.inner.now().saturating_sub(self.opened_at);
            self.emit
                .closed(reason, Duration::from_nanos(open), version);
        }
    }

    fn state(&self, busy: bool, http1: bool) {
        #[cfg(feature = "metrics")]
        {
            use super::emit::ConnState;
            let to = (
                if busy {
                    ConnState::Active
                } else {
                    ConnState::Idle
                },
                version(http1),
            );
            let mut standing = self
                .standing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Closed already (counted out), or no change.
            if standing.is_none() || *standing == Some(to) {
                return;
            }
            let was = standing.replace(to);
            drop(standing);
            self.emit.moved(was, Some(to));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (busy, http1);
    }
}

impl Metrics {
    /// Counts a new connection to `host`, whose IO publishes in `link`, and
    /// returns its record, which reports its responses and its close here.
    #[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
    pub(crate) fn open_connection(&self, host: HostKey, link: Arc<Link>) -> Arc<Record> {
        let inner = &self.inner;
        let (counters, _own_row) = inner.hosts.row(&host);
        inner.connections_opened.fetch_add(1, Relaxed);
        counters.opened.fetch_add(1, Relaxed);
        let id = inner.next_connection.fetch_add(1, Relaxed);
        // Counted idle over HTTP/1.1 until its bytes say otherwise.
        #[cfg(feature = "metrics")]
        let (emit, standing) = {
            let emit = inner.emit.opened(&host, _own_row);
            let idle = (super::emit::ConnState::Idle, version(true));
            emit.moved(None, Some(idle));
            (emit, std::sync::Mutex::new(Some(idle)))
        };
        let counting = Counting {
            metrics: self.clone(),
            host: counters,
            #[cfg(feature = "metrics")]
            emit,
            #[cfg(feature = "metrics")]
            standing,
            #[cfg(feature = "metrics")]
            opened_at: inner.now(),
        };
        Record::new(id, host, link, Box::new(counting))
    }
}
