use std::sync::{Arc, OnceLock};

use tower_layer::Layer;

use super::attempts::Rules;
use super::budget::{BudgetConfig, Budgets};
use super::{OnRetry, RetryHook, RetryStale};

/// Retries of requests that fail on a stale pooled connection; makes
/// [`RetryStale`].
///
/// See the [module docs](super) for what is retried and how a stale
/// connection is told apart.
///
/// Every service the layer makes (and every clone of them) shares what it
/// learnt of the connections its responses came on.
#[derive(Clone, Debug)]
#[must_use]
pub struct RetryStaleLayer {
    pub(crate) max_retries: u32,
    pub(crate) observer: Option<RetryHook>,
    pub(crate) seen: OnceLock<Arc<Seen>>,
    pub(crate) budget: BudgetConfig,
    pub(crate) budgets: OnceLock<Arc<Budgets>>,
    /// The client below resends HTTP/2 protocol NACKs itself (reqwest's
    /// retry): they are not resent here too.
    pub(crate) nacks_below: bool,
    /// The client below hands a request's extensions to hyper-util, so
    /// that a request can learn its connection (`capture_connection`);
    /// reqwest does not.
    pub(crate) captures: bool,
}

/// The connections a retry layer's responses came on, for clients whose
/// connections it cannot see (reqwest): by socket address pair.
#[cfg(feature = "hyper-util")]
pub(crate) type Seen = crate::conn::addrs::AddrTracker;
#[cfg(not(feature = "hyper-util"))]
pub(crate) type Seen = ();

impl RetryStaleLayer {
    /// Retries once, without metrics.
    pub const fn new() -> Self {
        RetryStaleLayer {
            max_retries: 1,
            observer: None,
            seen: OnceLock::new(),
            budget: BudgetConfig::DEFAULT,
            budgets: OnceLock::new(),
            nacks_below: false,
            captures: true,
        }
    }

    /// How many times one request may be sent again (default 1; 0 turns
    /// retries off and takes no copy of requests).
    pub const fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Tells `hook` of each retry and of how each retried request ended. A
    /// [`Metrics`](crate::Metrics) is one: `.on_retry(metrics.clone())`
    /// counts retries, and those that succeeded and failed.
    pub fn on_retry(mut self, hook: impl OnRetry) -> Self {
        self.observer = Some(RetryHook::new(hook));
        self
    }

    /// The retry budget of each host: retries stay within `percent` of the
    /// host's requests over the last 10 s, plus `min_per_sec` a second
    /// (tower's [`TpsBudget`](tower::retry::budget::TpsBudget), one per
    /// host). Default: 20 % plus 10 a second. A retry the budget does not
    /// allow is not made: the error goes back to the caller, and the hook
    /// is told [`RetryEvent::BudgetExhausted`](super::RetryEvent). Every
    /// retry draws from it, stale and not processed alike. `percent` is
    /// taken between 0 and 100,000 (NaN as 0); `min_per_sec(0)` with
    /// `percent` 0 allows no retry at all. Requests are deposited a batch
    /// at a time (8 at the default share), each thread paying for its next
    /// requests ahead, so that most requests take no lock: a host's share
    /// is counted at most a batch ahead per thread (at 20 %, 1.6 retries
    /// a thread).
    pub fn budget(mut self, percent: f32, min_per_sec: u32) -> Self {
        self.budget = BudgetConfig::new(percent, min_per_sec);
        self.budgets = OnceLock::new();
        self
    }

    /// The shared budgets, made on first use.
    fn budgets(&self) -> Arc<Budgets> {
        self.budgets
            .get_or_init(|| Arc::new(Budgets::new(self.budget)))
            .clone()
    }

    /// What every service of this layer applies to its requests.
    pub(crate) fn rules(&self) -> Rules {
        Rules {
            max_retries: self.max_retries,
            observer: self.observer.clone(),
            seen: self.seen(),
            budgets: self.budgets(),
            nacks_below: self.nacks_below,
            captures: self.captures,
        }
    }

    /// The shared record of connections, made on first use.
    fn seen(&self) -> Arc<Seen> {
        self.seen.get_or_init(Arc::default).clone()
    }

    /// Records connections by address in `metrics`' own record (a guard's
    /// retry and metrics: one look-up a response for both).
    pub(crate) fn recording_in(self, metrics: &crate::Metrics) -> Self {
        #[cfg(feature = "hyper-util")]
        {
            let mut this = self;
            this.seen = OnceLock::from(metrics.inner.addrs.clone());
            this
        }
        #[cfg(not(feature = "hyper-util"))]
        {
            let _ = metrics;
            self
        }
    }
}

impl Default for RetryStaleLayer {
    fn default() -> Self {
        RetryStaleLayer::new()
    }
}

impl<S> Layer<S> for RetryStaleLayer {
    type Service = RetryStale<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryStale {
            inner,
            shared: Arc::new(super::service::Shared {
                rules: self.rules(),
                spare: Default::default(),
            }),
        }
    }
}
