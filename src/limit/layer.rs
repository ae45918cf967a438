use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::registry::{Bounds, QueueObserver, Registry};
use super::service::PerHostLimit;
use crate::metrics::Metrics;

/// Default bound on requests waiting per host.
pub(crate) const DEFAULT_MAX_QUEUED: usize = 1024;
/// Default longest wait in a host's queue.
pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits the requests in flight to each host, queueing the surplus.
///
/// Clones of a layer, and every service made from it, share one set of
/// per-host slots. A setter returns a layer with slots of its own, so
/// configure the layer before you clone it.
///
/// See the [module docs](super) for the behaviour.
#[derive(Clone)]
#[must_use]
pub struct PerHostLimitLayer {
    pub(crate) registry: Arc<Registry>,
    pub(crate) queue_timeout: Option<Duration>,
}

impl PerHostLimitLayer {
    /// At most `max_per_host` requests in flight to each host (a value of 0
    /// is taken as 1), at most 1024 waiting per host, each for at most 30 s.
    pub fn new(max_per_host: usize) -> Self {
        Self::with(
            Bounds {
                max_per_host,
                max_queued: DEFAULT_MAX_QUEUED,
            },
            Some(DEFAULT_QUEUE_TIMEOUT),
        )
    }

    fn with(bounds: Bounds, queue_timeout: Option<Duration>) -> Self {
        Self::build(bounds, queue_timeout, None)
    }

    fn build(
        bounds: Bounds,
        queue_timeout: Option<Duration>,
        observer: Option<Arc<dyn QueueObserver>>,
    ) -> Self {
        PerHostLimitLayer {
            registry: Arc::new(Registry::new(bounds, observer)),
            queue_timeout,
        }
    }

    fn rebuild(self, bounds: Bounds, queue_timeout: Option<Duration>) -> Self {
        let observer = self.registry.observer().cloned();
        Self::build(bounds, queue_timeout, observer)
    }

    /// Reports queue figures (waited, wait time, queue full, timeouts,
    /// cancellations, the queued gauge) to `metrics`.
    pub fn metrics(self, metrics: Metrics) -> Self {
        Self::build(
            self.registry.bounds(),
            self.queue_timeout,
            Some(Arc::new(metrics)),
        )
    }

    /// The most requests waiting for each host; one more fails at once with
    /// [`QueueFull`](super::QueueFull). 0 means never wait. Default: 1024.
    pub fn max_queued(self, max_queued: usize) -> Self {
        let bounds = Bounds {
            max_queued,
            ..self.registry.bounds()
        };
        let queue_timeout = self.queue_timeout;
        self.rebuild(bounds, queue_timeout)
    }

    /// The longest a request waits for its host's slot before it fails with
    /// [`QueueTimeout`](super::QueueTimeout). Default: 30 s.
    pub fn queue_timeout(self, queue_timeout: Duration) -> Self {
        let bounds = self.registry.bounds();
        self.rebuild(bounds, Some(queue_timeout))
    }

    /// Requests in flight now (holding a slot), across hosts.
    pub fn in_flight(&self) -> usize {
        self.registry.in_flight()
    }

    /// Requests waiting now, across hosts.
    pub fn queued(&self) -> usize {
        self.registry.queued()
    }

    /// Hosts with requests in flight or queued. A host with neither is
    /// forgotten, so this stays bounded however many hosts are contacted.
    pub fn hosts_tracked(&self) -> usize {
        self.registry.hosts_tracked()
    }
}

impl fmt::Debug for PerHostLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bounds = self.registry.bounds();
        f.debug_struct("PerHostLimitLayer")
            .field("max_per_host", &bounds.max_per_host)
            .field("max_queued", &bounds.max_queued)
            .field("queue_timeout", &self.queue_timeout)
            .finish()
    }
}

impl<S> Layer<S> for PerHostLimitLayer {
    type Service = PerHostLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PerHostLimit::from_layer(inner, self.clone())
    }
}
