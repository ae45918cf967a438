//! Setters of other layers that took a [`Metrics`] by name, kept for the
//! code written against them. They live here so that the layers depend on
//! their hooks only, never on the metrics.

use super::Metrics;
use crate::limit::PerHostLimitLayer;
use crate::retry::RetryStaleLayer;

impl PerHostLimitLayer {
    /// Reports queue figures to `metrics`.
    #[deprecated(
        since = "0.1.0",
        note = "use `on_queue(metrics)`: `metrics()` is a getter elsewhere (`PoolGuard::metrics`)"
    )]
    pub fn metrics(self, metrics: Metrics) -> Self {
        self.on_queue(metrics)
    }
}

impl RetryStaleLayer {
    /// Counts retries, and those that succeeded and failed, into `metrics`.
    #[deprecated(
        since = "0.1.0",
        note = "use `on_retry(metrics)`: `metrics()` is a getter elsewhere (`PoolGuard::metrics`)"
    )]
    pub fn metrics(self, metrics: Metrics) -> Self {
        self.on_retry(metrics)
    }
}
