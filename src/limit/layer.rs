use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::observe::{OnQueue, QueueHook};
use super::registry::{Bounds, Overrides, Policy, Registry};
use super::service::PerHostLimit;
use super::total::TotalCap;

/// Default bound on requests waiting per host.
pub(crate) const DEFAULT_MAX_QUEUED: usize = 1024;
/// Default longest wait in a host's queue.
/// Requests in flight per HTTP/2 host unless configured: more than common
/// servers allow at once (nginx, Go: 128 and 250 streams per connection),
/// so that the limit never throttles a normal server.
pub(crate) const DEFAULT_MAX_STREAMS: usize = 256;

pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits the requests in flight to each host, queueing the surplus.
///
/// Clones of a layer, and every service made from it, share one set of
/// per-host slots. Setters change the configuration of the layer they are
/// called on (copied on write, as hyper-util's connectors do) and keep its
/// slots: a layer configured after it was cloned still shares its slots
/// with its clones.
///
/// See the [module docs](super) for the behaviour.
#[derive(Clone)]
#[must_use]
pub struct PerHostLimitLayer {
    pub(crate) registry: Arc<Registry>,
    /// The slots of the cap across hosts, under one key.
    pub(crate) total: Arc<Registry>,
    pub(crate) config: Arc<Config>,
}

/// What a [`PerHostLimitLayer`] is configured with.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) policy: Policy,
    /// Requests in flight across all hosts (`None`: no cap).
    pub(crate) max_total: Option<usize>,
    pub(crate) queue_timeout: Option<Duration>,
}

impl PerHostLimitLayer {
    /// At most `max_per_host` requests in flight to each host (a value of 0
    /// is taken as 1), at most 1024 waiting per host, each for at most 30 s.
    pub fn new(max_per_host: usize) -> Self {
        PerHostLimitLayer {
            registry: Arc::new(Registry::new()),
            total: Arc::new(Registry::new()),
            config: Arc::new(Config {
                max_total: None,
                policy: Policy {
                    bounds: Bounds {
                        max_per_host,
                        max_queued: DEFAULT_MAX_QUEUED,
                        max_streams: Some(DEFAULT_MAX_STREAMS),
                    },
                    observer: None,
                    overrides: None,
                    decider: None,
                },
                queue_timeout: Some(DEFAULT_QUEUE_TIMEOUT),
            }),
        }
    }

    /// The cap across hosts, for one request, if one is set.
    pub(crate) fn total_cap(&self) -> Option<TotalCap> {
        let config = &self.config;
        let max = config.max_total?;
        TotalCap::new(
            self.total.clone(),
            max,
            config.policy.bounds.max_queued,
            config.policy.observer.clone(),
        )
    }

    /// The per-host slots every clone shares.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Tells `hook` what happens in the queues: requests refused, waiting,
    /// admitted after a wait, timed out or cancelled. A
    /// [`Metrics`](crate::Metrics) is one: `.on_queue(metrics.clone())`
    /// counts them all.
    pub fn on_queue(mut self, hook: impl OnQueue) -> Self {
        self.config_mut().policy.observer = Some(QueueHook::new(hook));
        self
    }

    /// At most `n` requests in flight to `host` (a name or an IP literal, as
    /// in a URI: every port and scheme of it), instead of `max_per_host`; a
    /// value of 0 is taken as 1. Called again for the same host, the last
    /// value holds. Once the host speaks HTTP/2, `max_streams_per_host`
    /// applies to it like to any host.
    pub fn max_per_host_for(mut self, host: &str, n: usize) -> Self {
        Overrides::with(&mut self.config_mut().policy.overrides, host, n);
        self
    }

    /// Sets every host's override at once (a guard's).
    pub(crate) fn with_overrides(
        mut self,
        overrides: Option<Arc<super::registry::Overrides>>,
    ) -> Self {
        self.config_mut().policy.overrides = overrides;
        self
    }

    /// At most `max_total` requests in flight across all hosts (a value of
    /// 0 is taken as 1), besides each host's limit: a crawler's bound on
    /// what it holds open at once. A request takes its host's slot first,
    /// then one of the total, waiting FIFO for each; it waits at most
    /// `queue_timeout` for both together, and fails with
    /// [`QueueFull`](super::QueueFull) when `max_queued` requests already
    /// wait for the total. Default: no cap.
    pub fn max_total(mut self, max_total: usize) -> Self {
        self.config_mut().max_total = Some(max_total);
        self
    }

    /// At most `max_streams` requests in flight to each host that speaks
    /// HTTP/2 (a value of 0 is taken as 1). Default: 256.
    ///
    /// A host's protocol comes from the version of its responses:
    /// `max_per_host` applies to an HTTP/1 host, `max_streams` to an HTTP/2
    /// one, whose requests multiplex on one connection (hyper's HTTP/2
    /// client also waits for the server's `SETTINGS_MAX_CONCURRENT_STREAMS`
    /// itself, so requests beyond it queue inside hyper rather than fail).
    /// Until an `https` host's first response shows its protocol, one
    /// request at a time goes to it: ALPN may pick HTTP/2, and each request
    /// let through before then would open a connection (and a TLS
    /// handshake) of its own. Plain `http` hosts start at `max_per_host`.
    /// The protocol of up to 4096 hosts with nothing in flight is
    /// remembered.
    pub fn max_streams_per_host(mut self, max_streams: usize) -> Self {
        self.config_mut().policy.bounds.max_streams = Some(max_streams);
        self
    }

    /// Each host's limit adapts between `adaptive`'s minimum and the host's
    /// `max_per_host` (or its override, or `max_streams_per_host` once it
    /// speaks HTTP/2), which stays its ceiling: see [`Adaptive`](super::Adaptive).
    /// Clones of the layer made after this call share the hosts' limits.
    pub fn adaptive(self, adaptive: super::Adaptive) -> Self {
        self.with_policy(Arc::new(adaptive.policy()))
    }

    /// Each host's limit decided by `decider`, within its bounds.
    pub(crate) fn with_policy(mut self, decider: Arc<dyn super::policy::LimitPolicy>) -> Self {
        self.config_mut().policy.decider = Some(decider);
        self
    }

    /// The most requests waiting for each host; one more fails at once with
    /// [`QueueFull`](super::QueueFull). 0 means never wait. Default: 1024.
    pub fn max_queued(mut self, max_queued: usize) -> Self {
        self.config_mut().policy.bounds.max_queued = max_queued;
        self
    }

    /// The longest a request waits for its host's slot before it fails with
    /// [`QueueTimeout`](super::QueueTimeout). `Duration::MAX` means no
    /// limit. Default: 30 s.
    pub fn queue_timeout(mut self, queue_timeout: Duration) -> Self {
        self.config_mut().queue_timeout = Some(queue_timeout);
        self
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
        let bounds = self.config.policy.bounds;
        f.debug_struct("PerHostLimitLayer")
            .field("max_per_host", &bounds.slots())
            .field("max_queued", &bounds.max_queued)
            .field("queue_timeout", &self.config.queue_timeout)
            .field("max_total", &self.config.max_total)
            .finish()
    }
}

impl<S> Layer<S> for PerHostLimitLayer {
    type Service = PerHostLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PerHostLimit::from_layer(inner, self.clone())
    }
}
