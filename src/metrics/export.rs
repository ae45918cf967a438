//! Export to the [`metrics`](https://docs.rs/metrics) facade crate.

use std::time::Duration;

use super::{Metrics, Snapshot};

/// Histogram of the time requests waited in a per-host queue, in seconds.
pub(crate) fn record_queue_wait(waited: Duration) {
    ::metrics::histogram!("poolguard_queue_wait_seconds").record(waited.as_secs_f64());
}

impl Metrics {
    /// Publishes the figures to the `metrics` facade: counters
    /// (`poolguard_requests_total`, `poolguard_connections_closed_total` with
    /// a `reason` label, ...) set to their absolute values, and gauges
    /// (`poolguard_in_flight`, `poolguard_queued`). With `per_host`, also
    /// the per-host connection figures with a `host` label: at most one
    /// label value per row of [`Snapshot::hosts`], so cardinality is bounded.
    ///
    /// The histograms `poolguard_queue_wait_seconds` and
    /// `poolguard_drain_seconds` are recorded as events happen. Call this
    /// periodically, for instance from the task that serves your scrape
    /// endpoint, or spawn [`Metrics::exporter`].
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn publish(&self, per_host: bool) {
        publish(&self.snapshot(), per_host);
    }

    /// A future that calls [`Metrics::publish`] every `every` (at least
    /// 10 ms), and ends once every other clone of this `Metrics` (the
    /// guard's, its layers' and connectors') is dropped: spawn it on the
    /// runtime of your choice with `tokio::spawn(metrics.exporter(..))`.
    /// It publishes a last time before it ends. `Duration::MAX` (or any
    /// interval over 30 years) never ticks again after the first.
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn exporter(
        &self,
        every: Duration,
        per_host: bool,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let weak = std::sync::Arc::downgrade(&self.inner);
        async move {
            let mut tick = tokio::time::interval(every.clamp(MIN_INTERVAL, MAX_INTERVAL));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let metrics = Metrics { inner };
                metrics.publish(per_host);
                if std::sync::Arc::strong_count(&metrics.inner) == 1 {
                    // Every producer is gone, and the last figures are out.
                    return;
                }
            }
        }
    }

    /// Spawns [`Metrics::exporter`] on the current tokio runtime; the task
    /// ends when every other clone of this `Metrics` is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`: prefer spawning
    /// [`Metrics::exporter`] yourself.
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    #[deprecated(
        since = "0.1.0",
        note = "panics outside a tokio runtime; use `tokio::spawn(metrics.exporter(every, per_host))`"
    )]
    pub fn spawn_exporter(&self, every: Duration, per_host: bool) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.exporter(every, per_host))
    }
}

/// The shortest export interval.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest export interval: tokio adds the period to an instant, which
/// must not overflow; 30 years is "never" (tokio's own far future).
const MAX_INTERVAL: Duration = Duration::from_secs(86_400 * 365 * 30);

fn publish(s: &Snapshot, per_host: bool) {
    use ::metrics::{counter, gauge};
    counter!("poolguard_requests_total").absolute(s.requests);
    counter!("poolguard_responses_total").absolute(s.responses);
    counter!("poolguard_errors_total").absolute(s.errors);
    counter!("poolguard_reused_total").absolute(s.reused);
    counter!("poolguard_reuse_unknown_total").absolute(s.reuse_unknown);
    counter!("poolguard_connections_opened_total").absolute(s.connections_opened);
    for (reason, n) in s.closes.iter() {
        counter!("poolguard_connections_closed_total", "reason" => reason.as_str()).absolute(n);
    }
    for (outcome, n) in [
        ("completed", s.drains_completed),
        ("gave_up_bytes", s.drains_gave_up_bytes),
        ("gave_up_time", s.drains_gave_up_time),
        ("gave_up_cost", s.drains_gave_up_cost),
        ("failed", s.drains_failed),
        ("aborted", s.drains_aborted),
        ("skipped_http2", s.drains_skipped.http2),
        ("skipped_too_large", s.drains_skipped.too_large),
        ("skipped_no_runtime", s.drains_skipped.no_runtime),
        ("skipped_too_many", s.drains_skipped.too_many_drains),
    ] {
        counter!("poolguard_drains_total", "outcome" => outcome).absolute(n);
    }
    counter!("poolguard_drained_bytes_total").absolute(s.bytes_drained);
    counter!("poolguard_queue_waited_total").absolute(s.queue_waited);
    counter!("poolguard_queue_full_total").absolute(s.queue_full);
    counter!("poolguard_queue_timeout_total").absolute(s.queue_timeout);
    counter!("poolguard_queue_cancelled_total").absolute(s.queue_cancelled);
    counter!("poolguard_retries_total").absolute(s.retries);
    counter!("poolguard_retries_succeeded_total").absolute(s.retries_succeeded);
    counter!("poolguard_retries_failed_total").absolute(s.retries_failed);
    counter!("poolguard_retries_budget_exhausted_total").absolute(s.retries_budget_exhausted);
    counter!("poolguard_retries_not_processed_total").absolute(s.retries_not_processed);
    gauge!("poolguard_in_flight").set(s.in_flight as f64);
    gauge!("poolguard_queued").set(s.queued as f64);
    gauge!("poolguard_reuse_rate").set(s.reuse_rate());
    if per_host {
        for row in &s.hosts {
            let host = row
                .host
                .as_ref()
                .map_or_else(|| "other".to_owned(), |h| h.to_string());
            counter!("poolguard_host_responses_total", "host" => host.clone())
                .absolute(row.responses);
            counter!("poolguard_host_reused_total", "host" => host.clone()).absolute(row.reused);
            counter!("poolguard_host_connections_opened_total", "host" => host.clone())
                .absolute(row.connections_opened);
            if let Some(cost) = row.dial_cost {
                gauge!("poolguard_host_dial_cost_seconds", "host" => host.clone())
                    .set(cost.as_secs_f64());
            }
            counter!("poolguard_host_connections_closed_total", "host" => host)
                .absolute(row.connections_closed);
        }
    }
}
