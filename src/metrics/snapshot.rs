use std::time::Duration;

use super::CloseReason;
use crate::key::HostKey;

/// The figures of a [`Metrics`](super::Metrics) at one moment: plain data.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Requests passed to the inner service.
    pub requests: u64,
    /// Responses received (headers).
    pub responses: u64,
    /// Requests that ended in an error instead of a response.
    pub errors: u64,
    /// Responses served on a connection that had served a request before.
    pub reused: u64,
    /// Responses whose connection could not be told (neither a tracking
    /// connector nor a socket address): counted neither as reused nor new.
    pub reuse_unknown: u64,
    /// Connections opened (with a tracking `GuardedConnector`).
    pub connections_opened: u64,
    /// Connections closed (with a tracking `GuardedConnector`).
    pub connections_closed: u64,
    /// Closed connections by reason.
    pub closes: CloseCounts,
    /// Drains that read their body to the end.
    pub drains_completed: u64,
    /// Of the completed drains, those finished inline on drop.
    pub drains_inline: u64,
    /// Drains that gave up over `max_bytes`.
    pub drains_gave_up_bytes: u64,
    /// Drains that gave up over `max_time`.
    pub drains_gave_up_time: u64,
    /// Drains that gave up because going on would have cost more than a
    /// new connection while requests waited (a guard's drains).
    pub drains_gave_up_cost: u64,
    /// Drains whose body failed.
    pub drains_failed: u64,
    /// Drains cut short by their runtime shutting down.
    pub drains_aborted: u64,
    /// Bodies dropped early and not drained, by reason.
    pub drains_skipped: DrainSkips,
    /// Bytes read and discarded by drains.
    pub bytes_drained: u64,
    /// Requests that waited in a per-host queue and then got their slot.
    pub queue_waited: u64,
    /// Total time those requests waited.
    pub queue_wait_total: Duration,
    /// Requests refused because their host's queue was full.
    pub queue_full: u64,
    /// Requests that waited longer than the queue timeout.
    pub queue_timeout: u64,
    /// Requests dropped by their caller while they waited.
    pub queue_cancelled: u64,
    /// Requests in flight now: from the call until the body is done.
    pub in_flight: u64,
    /// Requests waiting in per-host queues now.
    pub queued: u64,
    /// Requests sent again after failing on a stale pooled connection, or
    /// because an HTTP/2 server did not process them (see
    /// [`RetryStaleLayer`](crate::retry::RetryStaleLayer)).
    pub retries: u64,
    /// Of those, retries that got a response.
    pub retries_succeeded: u64,
    /// Of those, retries that failed too.
    pub retries_failed: u64,
    /// Retries not made because the host's retry budget was spent (see
    /// [`RetryStaleLayer::budget`](crate::retry::RetryStaleLayer::budget)):
    /// each is an error returned to its caller.
    pub retries_budget_exhausted: u64,
    /// Of all retries, those of requests an HTTP/2 server refused or left
    /// above its `GOAWAY`'s last stream id.
    pub retries_not_processed: u64,
    /// Per-host connection figures: at most a fixed number of hosts, the
    /// rest folded into one row whose `host` is `None`.
    pub hosts: Vec<HostSnapshot>,
    /// Renewals of fleet permit blocks that reached Redis (`fleet`
    /// module, feature `redis`).
    pub fleet_renewals: u64,
    /// Renewals that could not reach Redis (an error or no answer in
    /// time): each put its host on the fallback for a while.
    pub fleet_errors: u64,
    /// Requests of budgeted hosts that waited in the queue, and how long
    /// all of them waited, in total (the time spent waiting for the fleet's
    /// permits, or for the process's own slots).
    pub fleet_waited: u64,
    /// See `fleet_waited`.
    pub fleet_wait_total: std::time::Duration,
    /// Each budgeted host's permits.
    pub fleet: Vec<FleetHost>,
}

/// One host's fleet budget, as this process holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetHost {
    /// The host name the budget is for (every port and scheme).
    pub host: String,
    /// The budget across the fleet.
    pub budget: usize,
    /// The permits this process holds now (its block; while Redis cannot be
    /// reached, its fallback).
    pub permits: usize,
    /// Whether the last renewal reached Redis.
    pub available: bool,
}

impl Snapshot {
    /// Reused responses over responses whose connection is known; 0 when no
    /// connection is known.
    pub fn reuse_rate(&self) -> f64 {
        let known = self.responses.saturating_sub(self.reuse_unknown);
        if known == 0 {
            0.0
        } else {
            self.reused as f64 / known as f64
        }
    }

    /// Drains that ran (completed, gave up, failed or aborted).
    pub fn drains_started(&self) -> u64 {
        self.drains_completed
            .saturating_add(self.drains_gave_up_bytes)
            .saturating_add(self.drains_gave_up_time)
            .saturating_add(self.drains_gave_up_cost)
            .saturating_add(self.drains_failed)
            .saturating_add(self.drains_aborted)
    }
}

/// Closed connections, one count per [`CloseReason`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseCounts {
    counts: [u64; CloseReason::ALL.len()],
}

impl CloseCounts {
    /// Connections closed for `reason`.
    pub fn get(&self, reason: CloseReason) -> u64 {
        self.counts[reason.index()]
    }

    pub(crate) fn set(&mut self, reason: CloseReason, n: u64) {
        self.counts[reason.index()] = n;
    }

    /// Every reason with its count, in the order of [`CloseReason::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (CloseReason, u64)> + '_ {
        CloseReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    /// All closes.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Bodies dropped early and not drained, by [`SkipReason`](crate::drain::SkipReason).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainSkips {
    /// HTTP/2 responses.
    pub http2: u64,
    /// Remaining length over `max_bytes`.
    pub too_large: u64,
    /// No runtime (or no timer) on the dropping thread.
    pub no_runtime: u64,
    /// `max_concurrent` drains were running.
    pub too_many_drains: u64,
}

impl DrainSkips {
    /// All skipped drains.
    pub fn total(&self) -> u64 {
        self.http2 + self.too_large + self.no_runtime + self.too_many_drains
    }
}

/// Connection figures of one host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostSnapshot {
    /// The host, or `None` for the row of all hosts past the table's size.
    pub host: Option<HostKey>,
    /// Responses on tracked connections to this host.
    pub responses: u64,
    /// Of those, responses on a reused connection.
    pub reused: u64,
    /// Connections opened.
    pub connections_opened: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// The host's request limit now, under an adaptive limit
    /// ([`Adaptive`](crate::limit::Adaptive)); `None` without one.
    pub limit: Option<usize>,
    /// What a new connection to this host costs, as the connector timed
    /// its dials (connect and TLS handshake; an exponentially weighted
    /// mean), if one was timed: the price a guard's drain weighs.
    pub dial_cost: Option<std::time::Duration>,
}
