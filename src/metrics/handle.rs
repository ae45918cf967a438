use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::hosts::HostTable;
use super::hot::Hot;
use super::snapshot::{CloseCounts, DrainSkips, Snapshot};
use super::CloseReason;
use crate::drain::{DrainOutcome, OnDrain, SkipReason};
use crate::limit::QueueEvent;

/// The shared figures of poolguard: a cheap, cloneable handle.
///
/// All clones see the same figures. Give clones to
/// [`ReuseMetricsLayer`](super::ReuseMetricsLayer), to
/// [`DrainLayer::on_drain`](crate::DrainLayer::on_drain) (a `Metrics` is an
/// [`OnDrain`] hook), to
/// [`PerHostLimitLayer::metrics`](crate::PerHostLimitLayer::metrics) and, with
/// the `hyper-util` feature, to `GuardedConnector::track`; read them with
/// [`Metrics::snapshot`]. Every update is an atomic add: no lock is taken per
/// request.
#[derive(Clone, Default)]
pub struct Metrics {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    epoch: Instant,
    /// A response came on a tracked connection: requests read the clock
    /// when they start (for `ConnInfo::idle_for`). Until then (reqwest, a
    /// client without a `GuardedConnector`) they do not.
    pub(crate) timed: std::sync::atomic::AtomicBool,
    /// The figures every request moves, sharded by thread.
    pub(crate) hot: Hot,
    pub(crate) errors: AtomicU64,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
    pub(crate) closes: [AtomicU64; CloseReason::ALL.len()],
    pub(crate) drains_gave_up_bytes: AtomicU64,
    pub(crate) drains_gave_up_time: AtomicU64,
    pub(crate) drains_gave_up_cost: AtomicU64,
    pub(crate) drains_failed: AtomicU64,
    pub(crate) drains_aborted: AtomicU64,
    pub(crate) drains_skipped: [AtomicU64; 4],
    pub(crate) queue_waited: AtomicU64,
    pub(crate) queue_wait_nanos: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) queue_timeout: AtomicU64,
    pub(crate) queue_cancelled: AtomicU64,
    pub(crate) queued: AtomicUsize,
    pub(crate) retries: AtomicU64,
    pub(crate) retries_succeeded: AtomicU64,
    pub(crate) retries_failed: AtomicU64,
    pub(crate) retries_budget_exhausted: AtomicU64,
    pub(crate) retries_not_processed: AtomicU64,
    pub(crate) fleet_renewals: AtomicU64,
    pub(crate) fleet_errors: AtomicU64,
    pub(crate) fleet_waited: AtomicU64,
    pub(crate) fleet_wait_nanos: AtomicU64,
    /// Each budgeted host's permits, by name.
    pub(crate) fleet: std::sync::Mutex<std::collections::BTreeMap<Box<str>, super::FleetHost>>,
    pub(crate) next_connection: AtomicU64,
    /// A `ReuseMetricsLayer` reports responses to this handle.
    pub(crate) hosts: HostTable,
    /// What a new connection to each host costs, as the connectors timed
    /// their dials.
    pub(crate) dial_costs: Arc<crate::conn::DialCosts>,
    /// The connections of responses without a tracked connection, by
    /// address pair (shared with a guard's retry, which records them).
    #[cfg(feature = "hyper-util")]
    pub(crate) addrs: Arc<crate::conn::addrs::AddrTracker>,
    /// Events as they happen, to the `metrics` facade.
    #[cfg(feature = "metrics")]
    pub(crate) emit: super::emit::Emitter,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            epoch: Instant::now(),
            timed: std::sync::atomic::AtomicBool::new(false),
            hot: Hot::default(),
            errors: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            closes: Default::default(),
            drains_gave_up_bytes: AtomicU64::new(0),
            drains_gave_up_time: AtomicU64::new(0),
            drains_gave_up_cost: AtomicU64::new(0),
            drains_failed: AtomicU64::new(0),
            drains_aborted: AtomicU64::new(0),
            drains_skipped: Default::default(),
            queue_waited: AtomicU64::new(0),
            queue_wait_nanos: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            queue_timeout: AtomicU64::new(0),
            queue_cancelled: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            retries: AtomicU64::new(0),
            retries_succeeded: AtomicU64::new(0),
            retries_failed: AtomicU64::new(0),
            retries_budget_exhausted: AtomicU64::new(0),
            retries_not_processed: AtomicU64::new(0),
            fleet_renewals: AtomicU64::new(0),
            fleet_errors: AtomicU64::new(0),
            fleet_waited: AtomicU64::new(0),
            fleet_wait_nanos: AtomicU64::new(0),
            fleet: Default::default(),
            next_connection: AtomicU64::new(1),
            hosts: HostTable::default(),
            dial_costs: Arc::default(),
            #[cfg(feature = "hyper-util")]
            addrs: Default::default(),
            #[cfg(feature = "metrics")]
            emit: Default::default(),
        }
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Inner {
    /// Nanoseconds since this handle was made: a timestamp that fits an
    /// atomic. 0 is never returned, so that it can mean "unset".
    pub(crate) fn now(&self) -> u64 {
        nanos(self.epoch.elapsed()).max(1)
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.connections_closed.fetch_add(1, Relaxed);
        self.closes[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn queue_event(&self, event: QueueEvent) {
        let counter = match event {
            QueueEvent::Full => &self.queue_full,
            QueueEvent::Entered => {
                self.queued.fetch_add(1, Relaxed);
                return;
            }
            QueueEvent::Admitted { waited } => {
                self.queue_wait_nanos.fetch_add(nanos(waited), Relaxed);
                #[cfg(feature = "metrics")]
                {
                    super::export::record_queue_wait(waited);
                    self.emit.queue_admitted(waited);
                }
                &self.queue_waited
            }
            QueueEvent::TimedOut { .. } => &self.queue_timeout,
            QueueEvent::Cancelled { .. } => &self.queue_cancelled,
        };
        #[cfg(feature = "metrics")]
        match event {
            QueueEvent::Full => self.emit.queue_full(),
            QueueEvent::TimedOut { .. } => self.emit.queue_timed_out(),
            QueueEvent::Cancelled { .. } => self.emit.queue_cancelled(),
            QueueEvent::Entered | QueueEvent::Admitted { .. } => {}
        }
        if !matches!(event, QueueEvent::Full) {
            self.queued.fetch_sub(1, Relaxed);
        }
        counter.fetch_add(1, Relaxed);
    }
}

impl Metrics {
    /// A new handle with every figure at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new handle whose events carry the attribute `poolguard.guard =
    /// name` in the `metrics` facade (feature `metrics`), so that two
    /// guards in one process can be told apart; without a name, their
    /// counts add up. The name changes nothing else.
    pub fn named(name: impl Into<String>) -> Self {
        #[cfg(feature = "metrics")]
        {
            Metrics {
                inner: Arc::new(Inner {
                    emit: super::emit::Emitter::named(name),
                    ..Inner::default()
                }),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name.into();
            Self::default()
        }
    }

    /// `host`'s adaptive limit moved to `limit`: in its row of the
    /// snapshot, and in the `poolguard.limit` gauge.
    pub(crate) fn limit_changed(&self, host: &crate::HostKey, limit: usize) {
        let (row, own) = self.inner.hosts.row(host);
        row.limit.store(limit, std::sync::atomic::Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.inner.emit.limit(host, own, limit);
        #[cfg(not(feature = "metrics"))]
        let _ = own;
    }

    /// A fleet renewal reached Redis.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_renewed(&self) {
        self.inner.fleet_renewals.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.inner.emit.fleet_renewed();
    }

    /// A fleet renewal could not reach Redis.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_error(&self) {
        self.inner.fleet_errors.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.inner.emit.fleet_error();
    }

    /// A request of a budgeted host left the queue after `waited`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_waited(&self, waited: Duration) {
        self.inner.fleet_waited.fetch_add(1, Relaxed);
        self.inner
            .fleet_wait_nanos
            .fetch_add(nanos(waited), Relaxed);
        #[cfg(feature = "metrics")]
        self.inner.emit.fleet_waited(waited);
    }

    /// This process holds `permits` of `host`'s fleet `budget`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_permits(&self, host: &str, budget: usize, permits: usize, available: bool) {
        let row = super::FleetHost {
            host: host.to_owned(),
            budget,
            permits,
            available,
        };
        self.inner
            .fleet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(host.into(), row);
        #[cfg(feature = "metrics")]
        self.inner.emit.fleet_permits(host, permits);
    }

    /// The per-host dial costs the connectors report here.
    pub(crate) fn dial_costs(&self) -> &Arc<crate::conn::DialCosts> {
        &self.inner.dial_costs
    }

    /// The figures now. Each figure is read atomically; figures that move
    /// together (say `requests` and `responses`) may be a request apart.
    pub fn snapshot(&self) -> Snapshot {
        let i = &*self.inner;
        let load = |a: &AtomicU64| a.load(Relaxed);
        let mut closes = CloseCounts::default();
        for reason in CloseReason::ALL {
            closes.set(reason, load(&i.closes[reason.index()]));
        }
        // Ended first: a request ends after it starts, so in flight is
        // never read below what it was when `ended` was read.
        let ended = i.hot.sum(|s| &s.ended);
        let requests = i.hot.sum(|s| &s.requests);
        let drains_inline = i.hot.sum(|s| &s.drains_inline);
        let reused = i.hot.sum(|s| &s.reused);
        let reuse_unknown = i.hot.sum(|s| &s.reuse_unknown);
        // Each response counts in one of the three (one add a response).
        let responses = i
            .hot
            .sum(|s| &s.fresh)
            .wrapping_add(reused)
            .wrapping_add(reuse_unknown);
        Snapshot {
            requests,
            responses,
            errors: load(&i.errors),
            reused,
            reuse_unknown,
            connections_opened: load(&i.connections_opened),
            connections_closed: load(&i.connections_closed),
            closes,
            drains_completed: drains_inline.wrapping_add(i.hot.sum(|s| &s.drains_tasked)),
            drains_inline,
            drains_gave_up_bytes: load(&i.drains_gave_up_bytes),
            drains_gave_up_time: load(&i.drains_gave_up_time),
            drains_gave_up_cost: load(&i.drains_gave_up_cost),
            drains_failed: load(&i.drains_failed),
            drains_aborted: load(&i.drains_aborted),
            drains_skipped: DrainSkips {
                http2: load(&i.drains_skipped[skip_index(SkipReason::Http2)]),
                too_large: load(&i.drains_skipped[skip_index(SkipReason::TooLarge)]),
                no_runtime: load(&i.drains_skipped[skip_index(SkipReason::NoRuntime)]),
                too_many_drains: load(&i.drains_skipped[skip_index(SkipReason::TooManyDrains)]),
            },
            bytes_drained: i.hot.sum(|s| &s.bytes_drained),
            queue_waited: load(&i.queue_waited),
            queue_wait_total: Duration::from_nanos(load(&i.queue_wait_nanos)),
            queue_full: load(&i.queue_full),
            queue_timeout: load(&i.queue_timeout),
            queue_cancelled: load(&i.queue_cancelled),
            in_flight: requests.saturating_sub(ended),
            queued: i.queued.load(Relaxed) as u64,
            retries: load(&i.retries),
            retries_succeeded: load(&i.retries_succeeded),
            retries_failed: load(&i.retries_failed),
            retries_budget_exhausted: load(&i.retries_budget_exhausted),
            retries_not_processed: load(&i.retries_not_processed),
            hosts: i.hosts.snapshot(&i.dial_costs),
            fleet_renewals: load(&i.fleet_renewals),
            fleet_errors: load(&i.fleet_errors),
            fleet_waited: load(&i.fleet_waited),
            fleet_wait_total: Duration::from_nanos(load(&i.fleet_wait_nanos)),
            fleet: i
                .fleet
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .cloned()
                .collect(),
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Metrics").field(&self.snapshot()).finish()
    }
}

fn skip_index(reason: SkipReason) -> usize {
    match reason {
        SkipReason::Http2 => 0,
        SkipReason::TooLarge => 1,
        SkipReason::NoRuntime => 2,
        SkipReason::TooManyDrains => 3,
    }
}

impl OnDrain for Metrics {
    fn on_drain(&self, outcome: &DrainOutcome) {
        let i = &*self.inner;
        let hot = i.hot.here();
        let bytes = outcome.bytes();
        if bytes > 0 {
            hot.add(|s| &s.bytes_drained, bytes);
        }
        let counter = match outcome {
            DrainOutcome::Completed { inline, .. } => {
                // One add: completed drains are the sum of the two.
                hot.add(
                    |s| match inline {
                        true => &s.drains_inline,
                        false => &s.drains_tasked,
                    },
                    1,
                );
                #[cfg(feature = "metrics")]
                i.emit.drain(outcome);
                return;
            }
            DrainOutcome::GaveUpBytes { .. } => &i.drains_gave_up_bytes,
            DrainOutcome::GaveUpTime { .. } => &i.drains_gave_up_time,
            DrainOutcome::GaveUpCost { .. } => &i.drains_gave_up_cost,
            DrainOutcome::Failed { .. } => &i.drains_failed,
            DrainOutcome::Aborted { .. } => &i.drains_aborted,
            DrainOutcome::Skipped(reason) => &i.drains_skipped[skip_index(*reason)],
        };
        counter.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        i.emit.drain(outcome);
    }
}

impl crate::retry::OnRetry for Metrics {
    fn on_retry(&self, event: crate::retry::RetryEvent) {
        use crate::retry::RetryEvent;
        let i = &self.inner;
        let counter = match event {
            RetryEvent::Retrying { cause, .. } => {
                if cause == crate::retry::RetryCause::NotProcessed {
                    i.retries_not_processed.fetch_add(1, Relaxed);
                }
                &i.retries
            }
            RetryEvent::Succeeded => &i.retries_succeeded,
            RetryEvent::Failed => &i.retries_failed,
            RetryEvent::BudgetExhausted { .. } => &i.retries_budget_exhausted,
        };
        counter.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        i.emit.retry(event);
    }
}

impl crate::limit::OnQueue for Metrics {
    fn on_queue(&self, event: crate::limit::QueueEvent) {
        self.inner.queue_event(event);
    }
}
