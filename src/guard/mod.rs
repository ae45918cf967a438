//! The one-stop builder: all the protections, in the right order, with
//! one shared state, as one service.
//!
//! [`PoolGuard::layer`] makes a [`Guarded`] client: what
//! [`ReuseMetrics`](crate::metrics::ReuseMetrics) over
//! [`RetryStale`](crate::retry::RetryStale) over
//! [`Drain`](crate::drain::Drain) over
//! [`PerHostLimit`](crate::limit::PerHostLimit) would do (see
//! [`PoolGuardLayer`] for that order), fused into one service and one
//! [`future::ResponseFuture`]: the request's host is found once, a copy of
//! the request is kept only when it may be sent again, and the response's
//! head is read by each protection in place before its body is wrapped.
//! The four layers stay available on their own.

use std::fmt;
use std::time::Duration;

use tower_layer::Layer;

use crate::drain::DrainLayer;
use crate::limit::PerHostLimitLayer;
use crate::metrics::{Metrics, ReuseMetricsLayer};
use crate::retry::RetryStaleLayer;

pub mod future;
mod service;

pub use self::service::Guarded;

/// The response body a [`Guarded`] client gives for a client body `B`:
/// name it in your own types (`http::Response<GuardedBody<Incoming>>`).
pub type GuardedBody<B> =
    crate::metrics::ResponseBody<crate::DrainBody<crate::limit::ResponseBody<B>>>;

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
    #[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
    honor_keep_alive: bool,
    /// The age and the requests after which a connection retires.
    #[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
    pub(crate) lifecycle: crate::conn::lifecycle::Lifecycle,
    #[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
    queue_timeout: Duration,
    #[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
    max_queued: usize,
    #[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
    overrides: Option<std::sync::Arc<crate::limit::registry::Overrides>>,
    metrics: Metrics,
    layer: PoolGuardLayer,
    #[cfg(feature = "hyper-util")]
    connections: std::sync::Arc<crate::limit::registry::Registry>,
    /// The connectors' slots of the cap across hosts, and the cap.
    #[cfg(feature = "hyper-util")]
    total_connections: (
        std::sync::Arc<crate::limit::registry::Registry>,
        Option<usize>,
    ),
}

impl PoolGuard {
    /// A builder with the defaults of every layer: 10 per host, 1024
    /// queued, 30 s queue timeout, drains of 64 KiB within 100 ms, 256 at
    /// once, one retry of a request that failed on a stale connection, and
    /// `Keep-Alive` headers honoured.
    pub fn builder() -> PoolGuardBuilder {
        PoolGuardBuilder::default()
    }

    /// The layer to put on the client: metrics, then the stale-connection
    /// retry, then drain, then the per-host limit, around the client. See [`PoolGuardLayer`] for why
    /// that order.
    pub fn layer(&self) -> PoolGuardLayer {
        self.layer.clone()
    }

    /// The shared figures.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Wraps a hyper-util connector: at most `max_per_host` connections per
    /// host, tracked in [`PoolGuard::metrics`], retired on the server's
    /// `Keep-Alive` limits unless [`honor_keep_alive(false)`](PoolGuardBuilder::honor_keep_alive).
    /// Every connector made by one guard (and its clones) shares the same
    /// connection slots.
    #[cfg(feature = "hyper-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
    pub fn connector<C>(&self, inner: C) -> crate::GuardedConnector<C> {
        crate::GuardedConnector::from_parts(
            inner,
            self.connections.clone(),
            crate::limit::registry::Bounds {
                max_per_host: self.max_per_host,
                max_queued: self.max_queued,
                max_streams: None,
            },
            Some(self.metrics.clone()),
            self.honor_keep_alive,
            self.queue_timeout,
            self.overrides.clone(),
            self.total_connections.clone(),
            self.lifecycle,
        )
    }

    /// Closes every connection of this guard's connectors that is idle
    /// now, as Go's `Transport.CloseIdleConnections` and OkHttp's
    /// `evictAll` do: for a program that knows its upstream changed (a
    /// configuration reload, a DNS change, a failover). Connections busy
    /// now are left to finish and stay pooled; the next request for a host
    /// whose connections were all closed dials a new one.
    ///
    /// An HTTP/1 connection between exchanges closes at once; an HTTP/2
    /// one with no stream open leaves hyper-util's pool and closes at once.
    /// A connection dialed less than 250 ms ago that has carried no
    /// request yet is left alone (its dial's request is about to use it).
    /// Closes count as [`CloseReason::Evicted`](crate::CloseReason::Evicted).
    ///
    /// Covers the connectors of [`connector`](PoolGuard::connector); for
    /// reqwest, whose pool the guard cannot reach, see the
    /// [`reqwest`](crate::reqwest) module.
    #[cfg(feature = "hyper-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
    pub fn close_idle(&self) {
        let asked = self.connections.close_idle();
        tracing::debug!(asked, "close_idle");
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
    name: Option<String>,
    overrides: Option<crate::limit::registry::Overrides>,
    max_total: Option<usize>,
    max_streams_per_host: usize,
    max_queued: usize,
    queue_timeout: Duration,
    drain_max_bytes: u64,
    drain_max_time: Duration,
    drain_max_concurrent: usize,
    retry_stale: bool,
    retry_budget: (f32, u32),
    honor_keep_alive: bool,
    lifecycle: crate::conn::lifecycle::Lifecycle,
    adaptive: Option<crate::limit::Adaptive>,
    #[cfg(feature = "redis")]
    fleet: Option<crate::fleet::FleetBudget>,
}

impl Default for PoolGuardBuilder {
    fn default() -> Self {
        PoolGuardBuilder {
            max_per_host: 10,
            name: None,
            overrides: None,
            max_total: None,
            max_streams_per_host: crate::limit::layer::DEFAULT_MAX_STREAMS,
            max_queued: crate::limit::layer::DEFAULT_MAX_QUEUED,
            queue_timeout: crate::limit::layer::DEFAULT_QUEUE_TIMEOUT,
            drain_max_bytes: crate::drain::layer::DEFAULT_MAX_BYTES,
            drain_max_time: crate::drain::layer::DEFAULT_MAX_TIME,
            drain_max_concurrent: crate::drain::layer::DEFAULT_MAX_CONCURRENT,
            retry_stale: true,
            retry_budget: (
                crate::retry::budget::DEFAULT_PERCENT,
                crate::retry::budget::DEFAULT_MIN_PER_SEC,
            ),
            honor_keep_alive: true,
            lifecycle: crate::conn::lifecycle::Lifecycle::default(),
            adaptive: None,
            #[cfg(feature = "redis")]
            fleet: None,
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

    /// Requests in flight to `host`, and (through [`PoolGuard::connector`])
    /// connections to it, instead of `max_per_host`: `host` is a name or an
    /// IP literal as in a URI, every port and scheme of it (a value of 0 is
    /// taken as 1; called again for the same host, the last value holds).
    /// An internal API may take 100 while a partner allows 4. Once the host
    /// speaks HTTP/2, its requests are limited by
    /// [`max_streams_per_host`](PoolGuardBuilder::max_streams_per_host) like
    /// any host's, and its connections still by this value.
    pub fn max_per_host_for(mut self, host: &str, n: usize) -> Self {
        self.overrides
            .get_or_insert_with(Default::default)
            .set(host, n);
        self
    }

    /// A name for this guard: with the `metrics` feature, every metric it
    /// emits carries the attribute `poolguard.guard = name`, so that two
    /// guards in one process (say, one per upstream) can be told apart.
    /// Unnamed guards' counts add up. Default: none.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// At most `n` requests in flight across all hosts (a value of 0 is
    /// taken as 1), besides each host's limit: what a crawler needs, whose
    /// per-host limit alone allows `max_per_host` times the number of
    /// hosts. Requests wait FIFO (host's slot first, then the total's),
    /// within the same `queue_timeout` and `max_queued`, failing with the
    /// same [`QueueFull`](crate::QueueFull) and
    /// [`QueueTimeout`](crate::QueueTimeout). With the guard's
    /// [`connector`](PoolGuard::connector), also at most `n` connections
    /// across all hosts, idle ones included: a dial beyond it closes the
    /// least recently used idle connection of another host rather than
    /// wait for it. With reqwest the cap is on requests only (reqwest's
    /// pool keeps its idle connections; bound them with its
    /// `pool_max_idle_per_host` and `pool_idle_timeout`). Default: no cap.
    pub fn max_total(mut self, n: usize) -> Self {
        self.max_total = Some(n);
        self
    }

    /// Requests in flight per host that speaks HTTP/2, where they multiplex
    /// on one connection and `max_per_host` would only throttle them.
    /// Default: 256. See
    /// [`PerHostLimitLayer::max_streams_per_host`] for how a host's protocol
    /// is learnt, and how a TLS host's first burst is held until then.
    pub fn max_streams_per_host(mut self, n: usize) -> Self {
        self.max_streams_per_host = n;
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

    /// Whether to send a request once more when it failed on a stale pooled
    /// connection (the server closed it as the request went out), when that
    /// is safe: see [`retry`](crate::retry). Default: yes.
    pub fn retry_stale(mut self, yes: bool) -> Self {
        self.retry_stale = yes;
        self
    }

    /// The retry budget of each host: retries (stale and not processed
    /// alike) stay within `percent` of the host's requests over the last
    /// 10 s, plus `min_per_sec` a second; past it the error goes back to
    /// the caller and counts in
    /// [`Snapshot::retries_budget_exhausted`](crate::Snapshot). Default:
    /// 20 % plus 10 a second. See
    /// [`RetryStaleLayer::budget`](crate::retry::RetryStaleLayer::budget).
    pub fn retry_budget(mut self, percent: f32, min_per_sec: u32) -> Self {
        self.retry_budget = (percent, min_per_sec);
        self
    }

    /// Retires each connection once it is `age` old, give or take up to
    /// 10 % (each connection draws its own, so that connections opened
    /// together do not retire together), as .NET's
    /// `PooledConnectionLifetime`, Envoy's `max_connection_duration` and
    /// gRPC's `MAX_CONNECTION_AGE` do: behind a load balancer or a
    /// Kubernetes Service, a client otherwise keeps the connections it
    /// first made, and backends added later get none of its traffic.
    /// Default: no limit.
    ///
    /// Retiring never fails a request:
    ///
    /// - an HTTP/1 connection past its age takes no new request (it leaves
    ///   hyper-util's pool) and closes after its exchange under way, at
    ///   once if idle;
    /// - an HTTP/2 connection takes no new stream and closes once its open
    ///   streams have ended; its replacement is dialed by the next request
    ///   (make before break). Both count against the host's connection
    ///   cap until the old one closes: at the cap, the replacement waits
    ///   for it, and the cap stays a bound on open sockets.
    ///
    /// Closes count as [`CloseReason::MaxAge`](crate::CloseReason::MaxAge).
    /// Works for hyper-util through [`PoolGuard::connector`], with
    /// [`PoolGuard::layer`] on the client (its requests take HTTP/2
    /// connections out of the pool); for reqwest, see the
    /// [`reqwest`](crate::reqwest) module.
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        self.lifecycle.max_age = Some(age);
        self
    }

    /// Retires each connection once it has carried `n` requests (a value
    /// of 0 is taken as 1), as Envoy's `max_requests_per_connection`
    /// does, in the same way as
    /// [`max_connection_age`](PoolGuardBuilder::max_connection_age): an
    /// HTTP/1 connection closes after its `n`th exchange, an HTTP/2 one
    /// opens no stream past its `n`th and closes when its streams end.
    /// Closes count as [`CloseReason::MaxRequests`](crate::CloseReason::MaxRequests).
    /// Default: no limit.
    pub fn max_requests_per_connection(mut self, n: u64) -> Self {
        self.lifecycle.max_requests = Some(n.max(1));
        self
    }

    /// Whether connections made by [`PoolGuard::connector`] are retired
    /// before the server's advertised `Keep-Alive: timeout=N, max=M` would
    /// close them: see
    /// [`GuardedConnector::honor_keep_alive`](crate::GuardedConnector::honor_keep_alive).
    /// Default: yes.
    pub fn honor_keep_alive(mut self, yes: bool) -> Self {
        self.honor_keep_alive = yes;
        self
    }

    /// Each host's request limit adapts between `adaptive`'s minimum and
    /// `max_per_host` (or its override, or `max_streams_per_host` once the
    /// host speaks HTTP/2), which stays the ceiling and, through
    /// [`PoolGuard::connector`], the connection cap. See
    /// [`Adaptive`](crate::limit::Adaptive) for how it moves; each host's
    /// limit shows in [`HostSnapshot::limit`](crate::metrics::HostSnapshot::limit)
    /// and, under the `metrics` feature, the `poolguard.limit` gauge.
    pub fn adaptive(mut self, adaptive: crate::limit::Adaptive) -> Self {
        self.adaptive = Some(adaptive);
        self
    }

    /// The hosts `fleet` names get at most their budget in flight across
    /// every process sharing its Redis: this guard holds a block of each
    /// host's permits, leased and renewed there (see
    /// [`fleet`](crate::fleet)). The fleet only decides how many requests a
    /// host may have in flight from this process: the queue, its timeout and
    /// its errors are the guard's, and `max_per_host` stays the ceiling
    /// (with [`adaptive`](Self::adaptive), the lower of the two limits
    /// applies). Each host's permits show in
    /// [`Snapshot::fleet`](crate::Snapshot::fleet). Needs a tokio runtime
    /// (the renewals run as a task on it, from the first request).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn fleet(mut self, fleet: crate::fleet::FleetBudget) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Builds the guard and its shared state.
    pub fn build(self) -> PoolGuard {
        let metrics = match self.name {
            Some(name) => Metrics::named(name),
            None => Metrics::new(),
        };
        let overrides = self.overrides.map(std::sync::Arc::new);
        let limit = PerHostLimitLayer::new(self.max_per_host)
            .with_overrides(overrides.clone())
            .max_queued(self.max_queued)
            .queue_timeout(self.queue_timeout)
            .max_streams_per_host(self.max_streams_per_host)
            .on_queue(metrics.clone());
        let limit = match self.max_total {
            Some(n) => limit.max_total(n),
            None => limit,
        };
        let decider = self.adaptive.as_ref().map(|adaptive| {
            let metrics = metrics.clone();
            let policy = adaptive
                .policy()
                .on_change(std::sync::Arc::new(move |host, n| {
                    metrics.limit_changed(host, n)
                }));
            std::sync::Arc::new(policy) as std::sync::Arc<dyn crate::limit::policy::LimitPolicy>
        });
        #[cfg(feature = "redis")]
        let (decider, fleet) = match self.fleet {
            Some(budget) => {
                let fleet = crate::fleet::FleetPolicy::new(budget, decider, metrics.clone());
                (Some(std::sync::Arc::new(fleet.clone()) as _), Some(fleet))
            }
            None => (decider, None),
        };
        let limit = match decider {
            Some(decider) => limit.with_policy(decider),
            None => limit,
        };
        #[cfg(feature = "redis")]
        if let Some(fleet) = &fleet {
            fleet.bind(&limit.registry());
        }
        #[cfg(feature = "hyper-util")]
        let connections = std::sync::Arc::<crate::limit::registry::Registry>::default();
        #[cfg(feature = "hyper-util")]
        let total_connections = std::sync::Arc::<crate::limit::registry::Registry>::default();
        // A drain weighs the dial costs the connectors report against the
        // requests and dials waiting for its host's slots (or, with a cap
        // across hosts, for the cap's).
        let mut demand: Vec<std::sync::Arc<dyn crate::conn::Demand>> = vec![limit.registry()];
        #[cfg(feature = "hyper-util")]
        demand.push(connections.clone());
        if self.max_total.is_some() {
            use crate::limit::total::TotalDemand;
            demand.push(std::sync::Arc::new(TotalDemand(limit.total.clone())));
            #[cfg(feature = "hyper-util")]
            demand.push(std::sync::Arc::new(TotalDemand(total_connections.clone())));
        }
        let pricing = crate::conn::Pricing {
            costs: metrics.dial_costs().clone(),
            demand,
        };
        let layer = PoolGuardLayer {
            metrics: ReuseMetricsLayer::new(metrics.clone()),
            retry: {
                let retry = RetryStaleLayer::new()
                    .max_retries(u32::from(self.retry_stale))
                    .budget(self.retry_budget.0, self.retry_budget.1)
                    .on_retry(metrics.clone())
                    .recording_in(&metrics);
                // Made now, so that every `layer()` of the guard shares
                // its hosts' budgets and what it learnt of connections
                // (the layer makes them on first use, per copy).
                let _ = retry.rules();
                retry
            },
            drain: DrainLayer::new()
                .max_bytes(self.drain_max_bytes)
                .max_time(self.drain_max_time)
                .max_concurrent(self.drain_max_concurrent)
                .on_drain(metrics.clone())
                .priced(pricing),
            limit,
        };
        PoolGuard {
            max_per_host: self.max_per_host,
            honor_keep_alive: self.honor_keep_alive,
            lifecycle: self.lifecycle,
            queue_timeout: self.queue_timeout,
            max_queued: self.max_queued,
            overrides,
            #[cfg(feature = "hyper-util")]
            connections,
            #[cfg(feature = "hyper-util")]
            total_connections: (total_connections, self.max_total),
            metrics,
            layer,
        }
    }
}

/// The layers of a [`PoolGuard`], in this order from the caller in:
///
/// 1. [`ReuseMetricsLayer`], outermost: it counts every request, including
///    those the limit refuses or times out, keeps a request in flight while
///    it waits in a queue, and reads the queue wait and the connection the
///    response came on. A retried request counts once.
/// 2. [`RetryStaleLayer`]: a retry goes through the per-host limit like any
///    request (it takes a slot, and may queue), and its response through
///    the drain.
/// 3. [`DrainLayer`], outside the limit: the limit's body is inside the
///    [`DrainBody`](crate::DrainBody), so a body dropped early keeps its
///    per-host slot until the background drain ends (the connection is busy
///    until then), and the drain's outcome reaches the metrics through the
///    shared [`Metrics`] hook.
/// 4. [`PerHostLimitLayer`], innermost: its slot covers the client's call,
///    and its queue time is measured next to the client.
///
/// The layer makes one [`Guarded`] service that does all four, in that
/// order, rather than four nested services.
#[derive(Clone, Debug)]
#[must_use]
pub struct PoolGuardLayer {
    metrics: ReuseMetricsLayer,
    retry: RetryStaleLayer,
    drain: DrainLayer,
    limit: PerHostLimitLayer,
}

impl PoolGuardLayer {
    /// This stack over reqwest: reqwest resends HTTP/2 protocol NACKs
    /// itself (the retry leaves them to it), and does not hand a request's
    /// extensions to hyper-util (a request cannot learn its connection, so
    /// none is made to try: `capture_connection` costs two allocations and
    /// an extension map a request).
    #[cfg(feature = "reqwest")]
    pub(crate) fn over_reqwest(mut self) -> Self {
        self.retry.nacks_below = true;
        self.retry.captures = false;
        self
    }

    /// The budget of the stack's retry.
    #[cfg(feature = "reqwest")]
    pub(crate) fn retry_budget(&self) -> crate::retry::budget::BudgetConfig {
        self.retry.budget
    }

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
        Guarded::new(
            inner,
            service::Shared {
                metrics: self.metrics.metrics().clone(),
                rules: self.retry.rules(),
                limit: self.limit.clone(),
                drain: self.drain.shared().clone(),
                spare: Default::default(),
            },
        )
    }
}
