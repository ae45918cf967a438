//! The one-stop builder: all three protections, in the right order, with
//! one shared state.

use std::fmt;
use std::time::Duration;

use tower_layer::Layer;

use crate::drain::{Drain, DrainLayer};
use crate::limit::{PerHostLimit, PerHostLimitLayer};
use crate::metrics::{Metrics, ReuseMetrics, ReuseMetricsLayer};

/// The service [`PoolGuard::layer`] makes of a client `S`.
pub type Guarded<S> = ReuseMetrics<Drain<PerHostLimit<S>>>;

/// Drain-on-drop bodies, a per-host limit and reuse metrics for one client,
/// sharing one state.
///
/// Built by [`PoolGuard::builder`]. Cheap to clone; clones share the
/// per-host slots, the drain bound and the [`Metrics`].
///
/// # Example
///
/// ```
/// # #[cfg(feature = "hyper-util")]
/// # fn main() {
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
///
/// let guard = poolguard::PoolGuard::builder()
///     .max_per_host(10) // request limit and connection cap
///     .max_queued(1024)
///     .queue_timeout(Duration::from_secs(30))
///     .drain_max_bytes(64 * 1024)
///     .drain_max_time(Duration::from_millis(100))
///     .build();
/// let client = Client::builder(TokioExecutor::new())
///     .pool_max_idle_per_host(10)
///     .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
/// let svc = tower::ServiceBuilder::new().layer(guard.layer()).service(client);
/// # drop(svc);
/// let snap = guard.metrics().snapshot();
/// assert_eq!(snap.requests, 0);
/// # }
/// # #[cfg(not(feature = "hyper-util"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct PoolGuard {
    pub(crate) max_per_host: usize,
    metrics: Metrics,
    layer: PoolGuardLayer,
    #[cfg(feature = "hyper-util")]
    connections: std::sync::Arc<crate::limit::registry::Registry>,
}

impl PoolGuard {
    /// A builder with the defaults of every layer: 10 per host, 1024
    /// queued, 30 s queue timeout, drains of 64 KiB within 100 ms, 256 at
    /// once.
    pub fn builder() -> PoolGuardBuilder {
        PoolGuardBuilder::default()
    }

    /// The layer to put on the client: metrics, then drain, then the
    /// per-host limit, around the client. See [`PoolGuardLayer`] for why
    /// that order.
    pub fn layer(&self) -> PoolGuardLayer {
        self.layer.clone()
    }

    /// The shared figures.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Wraps a hyper-util connector: at most `max_per_host` connections per
    /// host, tracked in [`PoolGuard::metrics`]. Every connector made by one
    /// guard (and its clones) shares the same connection slots.
    #[cfg(feature = "hyper-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
    pub fn connector<C>(&self, inner: C) -> crate::GuardedConnector<C> {
        crate::GuardedConnector::from_parts(
            inner,
            self.connections.clone(),
            Some(self.metrics.clone()),
        )
    }
}

impl fmt::Debug for PoolGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolGuard")
            .field("max_per_host", &self.max_per_host)
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

/// Builder of a [`PoolGuard`].
#[derive(Clone, Debug)]
#[must_use]
pub struct PoolGuardBuilder {
    max_per_host: usize,
    max_queued: usize,
    queue_timeout: Duration,
    drain_max_bytes: u64,
    drain_max_time: Duration,
    drain_max_concurrent: usize,
}

impl Default for PoolGuardBuilder {
    fn default() -> Self {
        PoolGuardBuilder {
            max_per_host: 10,
            max_queued: crate::limit::layer::DEFAULT_MAX_QUEUED,
            queue_timeout: crate::limit::layer::DEFAULT_QUEUE_TIMEOUT,
            drain_max_bytes: crate::drain::layer::DEFAULT_MAX_BYTES,
            drain_max_time: crate::drain::layer::DEFAULT_MAX_TIME,
            drain_max_concurrent: crate::drain::layer::DEFAULT_MAX_CONCURRENT,
        }
    }
}

impl PoolGuardBuilder {
    /// Requests in flight per host, and (through
    /// [`PoolGuard::connector`]) connections per host. Default: 10.
    pub fn max_per_host(mut self, n: usize) -> Self {
        self.max_per_host = n;
        self
    }

    /// Requests waiting per host. Default: 1024.
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n;
        self
    }

    /// Longest wait in a host's queue. Default: 30 s.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// Byte budget of one drain. Default: 64 KiB.
    pub fn drain_max_bytes(mut self, n: u64) -> Self {
        self.drain_max_bytes = n;
        self
    }

    /// Time budget of one drain. Default: 100 ms.
    pub fn drain_max_time(mut self, t: Duration) -> Self {
        self.drain_max_time = t;
        self
    }

    /// Drains running at once. Default: 256.
    pub fn drain_max_concurrent(mut self, n: usize) -> Self {
        self.drain_max_concurrent = n;
        self
    }

    /// Builds the guard and its shared state.
    pub fn build(self) -> PoolGuard {
        let metrics = Metrics::new();
        let layer = PoolGuardLayer {
            metrics: ReuseMetricsLayer::new(metrics.clone()),
            drain: DrainLayer::new()
                .max_bytes(self.drain_max_bytes)
                .max_time(self.drain_max_time)
                .max_concurrent(self.drain_max_concurrent)
                .on_drain(metrics.clone()),
            limit: PerHostLimitLayer::new(self.max_per_host)
                .max_queued(self.max_queued)
                .queue_timeout(self.queue_timeout)
                .metrics(metrics.clone()),
        };
        PoolGuard {
            max_per_host: self.max_per_host,
            #[cfg(feature = "hyper-util")]
            connections: std::sync::Arc::new(crate::limit::registry::Registry::new(
                crate::limit::registry::Bounds {
                    max_per_host: self.max_per_host,
                    max_queued: usize::MAX,
                },
                None,
            )),
            metrics,
            layer,
        }
    }
}

/// The three layers of a [`PoolGuard`], in this order from the caller in:
///
/// 1. [`ReuseMetricsLayer`], outermost: it counts every request, including
///    those the limit refuses or times out, keeps a request in flight while
///    it waits in a queue, and reads the queue wait and the connection the
///    response came on.
/// 2. [`DrainLayer`], outside the limit: the limit's body is inside the
///    [`DrainBody`](crate::DrainBody), so a body dropped early keeps its
///    per-host slot until the background drain ends (the connection is busy
///    until then), and the drain's outcome reaches the metrics through the
///    shared [`Metrics`] hook.
/// 3. [`PerHostLimitLayer`], innermost: its slot covers the client's call,
///    and its queue time is measured next to the client.
#[derive(Clone, Debug)]
#[must_use]
pub struct PoolGuardLayer {
    metrics: ReuseMetricsLayer,
    drain: DrainLayer,
    limit: PerHostLimitLayer,
}

impl PoolGuardLayer {
    /// The per-host limit layer of this stack (to read its gauges).
    pub fn limit(&self) -> &PerHostLimitLayer {
        &self.limit
    }

    /// The drain layer of this stack (to read how many drains run).
    pub fn drain(&self) -> &DrainLayer {
        &self.drain
    }
}

impl<S> Layer<S> for PoolGuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.metrics
            .layer(self.drain.layer(self.limit.layer(inner)))
    }
}
