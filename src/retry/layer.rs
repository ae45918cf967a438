use tower_layer::Layer;

use super::RetryStale;
use crate::metrics::Metrics;

/// Retries of requests that fail on a stale pooled connection; makes
/// [`RetryStale`].
///
/// See the [module docs](super) for what is retried and how a stale
/// connection is told apart.
#[derive(Clone, Debug)]
#[must_use]
pub struct RetryStaleLayer {
    pub(crate) max_retries: u32,
    pub(crate) metrics: Option<Metrics>,
}

impl RetryStaleLayer {
    /// Retries once, without metrics.
    pub const fn new() -> Self {
        RetryStaleLayer {
            max_retries: 1,
            metrics: None,
        }
    }

    /// How many times one request may be sent again (default 1; 0 turns
    /// retries off and takes no copy of requests).
    pub const fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Counts retries into `metrics`; with a
    /// [`ReuseMetricsLayer`](crate::ReuseMetricsLayer) on the same
    /// `metrics`, the socket addresses it sees on responses also tell
    /// reused connections of clients without a tracking connector
    /// (reqwest).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
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
            max_retries: self.max_retries,
            metrics: self.metrics.clone(),
        }
    }
}
