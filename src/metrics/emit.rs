//! Events as they happen, to the [`metrics`](https://docs.rs/metrics)
//! facade, under OpenTelemetry's HTTP client names and poolguard's own.
//!
//! | name | kind | unit | attributes |
//! |---|---|---|---|
//! | `http.client.open_connections` | gauge (up-down) | `{connection}` | `http.connection.state` (`active`, `idle`), `server.address`, `server.port`, `url.scheme`, `network.protocol.version` |
//! | `http.client.connection.duration` | histogram | `s` | as above, without the state |
//! | `http.client.request.time_in_queue` | histogram | `s` | — |
//! | `poolguard.requests` / `.responses` / `.errors` / `.reused` | counter | `{request}` | — |
//! | `poolguard.connections.opened` | counter | `{connection}` | — |
//! | `poolguard.connections.closed` | counter | `{connection}` | `poolguard.close.reason` |
//! | `poolguard.drains` | counter | `{drain}` | `poolguard.drain.outcome` |
//! | `poolguard.drain.bytes` | counter | `By` | — |
//! | `poolguard.drain.duration` | histogram | `s` | `poolguard.drain.outcome` (the time a drain waited for the body: 0 for one finished on drop) |
//! | `poolguard.retries` | counter | `{request}` | `poolguard.retry.result` (`retrying`, `succeeded`, `failed`) |
//! | `poolguard.retries.not_processed` | counter | `{request}` | — |
//! | `poolguard.queue.full` / `.timeouts` / `.cancelled` | counter | `{request}` | — |
//! | `poolguard.limit` | gauge | `{request}` | `server.address`, `server.port`, `url.scheme` (under an adaptive limit: the host's limit now) |
//! | `poolguard.fleet.permits` | gauge | `{request}` | `server.address` (the budgeted host name: permits of its fleet budget this process holds) |
//! | `poolguard.fleet.renewals` / `.errors` | counter | `{renewal}` | — |
//! | `poolguard.fleet.wait` | histogram | `s` | — (queue wait of requests to budgeted hosts) |
//!
//! Every metric also carries `poolguard.guard` when the guard has a name
//! ([`Metrics::named`](super::Metrics::named)). Counters are incremented,
//! never set: two guards in one process add up (or stay apart by name).
//! `server.address` is the host's for the first 64 hosts a guard sees and
//! `other` after, so that a crawler cannot grow the label set without
//! bound.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label, SharedString, Unit};

use crate::conn::CloseReason;
use crate::drain::DrainOutcome;
use crate::key::HostKey;

const OPEN_CONNECTIONS: &str = "http.client.open_connections";
const CONNECTION_DURATION: &str = "http.client.connection.duration";
const TIME_IN_QUEUE: &str = "http.client.request.time_in_queue";
const REQUESTS: &str = "poolguard.requests";
const RESPONSES: &str = "poolguard.responses";
const ERRORS: &str = "poolguard.errors";
const REUSED: &str = "poolguard.reused";
const OPENED: &str = "poolguard.connections.opened";
const CLOSED: &str = "poolguard.connections.closed";
const DRAINS: &str = "poolguard.drains";
const DRAIN_BYTES: &str = "poolguard.drain.bytes";
const DRAIN_DURATION: &str = "poolguard.drain.duration";
const RETRIES: &str = "poolguard.retries";
const RETRIES_NOT_PROCESSED: &str = "poolguard.retries.not_processed";
const QUEUE_FULL: &str = "poolguard.queue.full";
const QUEUE_TIMEOUTS: &str = "poolguard.queue.timeouts";
const QUEUE_CANCELLED: &str = "poolguard.queue.cancelled";
const LIMIT: &str = "poolguard.limit";
const FLEET_PERMITS: &str = "poolguard.fleet.permits";
const FLEET_RENEWALS: &str = "poolguard.fleet.renewals";
const FLEET_ERRORS: &str = "poolguard.fleet.errors";
const FLEET_WAIT: &str = "poolguard.fleet.wait";

/// Describes every metric (name, unit, help) to the installed recorder.
/// Done by each guard at its first event (describing again is harmless):
/// a recorder installed after that guard's first event hears no
/// description from it.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        LIMIT,
        Unit::Count,
        "Requests a host may have in flight now, under an adaptive limit."
    );
    describe_gauge!(
        FLEET_PERMITS,
        Unit::Count,
        "Permits of a host's fleet budget this process holds now."
    );
    describe_counter!(
        FLEET_RENEWALS,
        Unit::Count,
        "Renewals of fleet permit blocks that reached Redis."
    );
    describe_counter!(
        FLEET_ERRORS,
        Unit::Count,
        "Renewals of fleet permit blocks that could not reach Redis."
    );
    describe_histogram!(
        FLEET_WAIT,
        Unit::Seconds,
        "How long requests to budgeted hosts waited in the queue."
    );
    describe_gauge!(
        OPEN_CONNECTIONS,
        Unit::Count,
        "Outbound HTTP connections open now, active (carrying a request) or idle."
    );
    describe_histogram!(
        CONNECTION_DURATION,
        Unit::Seconds,
        "How long outbound HTTP connections were open."
    );
    describe_histogram!(
        TIME_IN_QUEUE,
        Unit::Seconds,
        "Time requests waited in poolguard's queues for a slot (host or total)."
    );
    describe_counter!(REQUESTS, Unit::Count, "Requests that entered the guard.");
    describe_counter!(
        RESPONSES,
        Unit::Count,
        "Responses that came back through the guard."
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Requests that failed without a response."
    );
    describe_counter!(
        REUSED,
        Unit::Count,
        "Responses that came on a reused connection."
    );
    describe_counter!(OPENED, Unit::Count, "Connections opened (dials).");
    describe_counter!(CLOSED, Unit::Count, "Connections closed, by reason.");
    describe_counter!(
        DRAINS,
        Unit::Count,
        "Bodies dropped early, by how the drain ended."
    );
    describe_counter!(
        DRAIN_BYTES,
        Unit::Bytes,
        "Bytes read and discarded by drains."
    );
    describe_histogram!(
        DRAIN_DURATION,
        Unit::Seconds,
        "How long drains ran, by outcome."
    );
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Requests sent again after a stale pooled connection, and how the retry ended."
    );
    describe_counter!(
        RETRIES_NOT_PROCESSED,
        Unit::Count,
        "Retries of requests the server did not process (refused stream, GOAWAY)."
    );
    describe_counter!(
        QUEUE_FULL,
        Unit::Count,
        "Requests refused: the queue was full."
    );
    describe_counter!(
        QUEUE_TIMEOUTS,
        Unit::Count,
        "Requests that waited past queue_timeout."
    );
    describe_counter!(
        QUEUE_CANCELLED,
        Unit::Count,
        "Requests dropped while they waited."
    );
}

/// One guard's emitter: its name, and the handles of the metrics without
/// per-host attributes, registered at the first event (so that a recorder
/// installed after the guard was built, but before it was used, is the one
/// that hears them).
#[derive(Debug, Default)]
pub(crate) struct Emitter {
    name: Option<SharedString>,
    handles: OnceLock<Handles>,
}

#[derive(Debug)]
struct Handles {
    requests: Counter,
    responses: Counter,
    errors: Counter,
    reused: Counter,
    opened: Counter,
    closed: Vec<Counter>,
    time_in_queue: Histogram,
    drain_bytes: Counter,
    /// By [`DrainOutcome::index`]: how many, and how long they ran.
    drains: Vec<(Counter, Histogram)>,
    retries_retrying: Counter,
    retries_succeeded: Counter,
    retries_failed: Counter,
    retries_budget_exhausted: Counter,
    retries_not_processed: Counter,
    queue_full: Counter,
    queue_timeouts: Counter,
    queue_cancelled: Counter,
}

impl Emitter {
    pub(crate) fn named(name: impl Into<String>) -> Self {
        Emitter {
            name: Some(SharedString::from(name.into())),
            handles: OnceLock::new(),
        }
    }

    /// The attributes every metric of this guard carries.
    fn base(&self) -> Vec<Label> {
        self.name
            .iter()
            .map(|name| Label::new("poolguard.guard", name.clone()))
            .collect()
    }

    fn with(&self, key: &'static str, value: impl Into<SharedString>) -> Vec<Label> {
        let mut labels = self.base();
        labels.push(Label::new(key, value.into()));
        labels
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            describe();
            let base = self.base();
            let counter = |name: &'static str| metrics::counter!(name, base.iter());
            let retries = |result: &'static str| {
                metrics::counter!(RETRIES, self.with("poolguard.retry.result", result).iter())
            };
            Handles {
                requests: counter(REQUESTS),
                responses: counter(RESPONSES),
                errors: counter(ERRORS),
                reused: counter(REUSED),
                opened: counter(OPENED),
                closed: CloseReason::ALL
                    .iter()
                    .map(|r| {
                        metrics::counter!(
                            CLOSED,
                            self.with("poolguard.close.reason", r.as_str()).iter()
                        )
                    })
                    .collect(),
                time_in_queue: metrics::histogram!(TIME_IN_QUEUE, base.iter()),
                drain_bytes: counter(DRAIN_BYTES),
                drains: crate::drain::OUTCOME_NAMES
                    .iter()
                    .map(|name| {
                        let labels = self.with("poolguard.drain.outcome", *name);
                        (
                            metrics::counter!(DRAINS, labels.iter()),
                            metrics::histogram!(DRAIN_DURATION, labels.iter()),
                        )
                    })
                    .collect(),
                retries_retrying: retries("retrying"),
                retries_succeeded: retries("succeeded"),
                retries_failed: retries("failed"),
                retries_budget_exhausted: retries("budget_exhausted"),
                retries_not_processed: counter(RETRIES_NOT_PROCESSED),
                queue_full: counter(QUEUE_FULL),
                queue_timeouts: counter(QUEUE_TIMEOUTS),
                queue_cancelled: counter(QUEUE_CANCELLED),
            }
        })
    }

    pub(crate) fn request(&self) {
        self.handles().requests.increment(1);
    }

    pub(crate) fn response(&self, reused: bool) {
        let h = self.handles();
        h.responses.increment(1);
        if reused {
            h.reused.increment(1);
        }
    }

    pub(crate) fn error(&self) {
        self.handles().errors.increment(1);
    }

    pub(crate) fn queue_admitted(&self, waited: Duration) {
        self.handles().time_in_queue.record(waited.as_secs_f64());
    }

    pub(crate) fn queue_full(&self) {
        self.handles().queue_full.increment(1);
    }

    pub(crate) fn queue_timed_out(&self) {
        self.handles().queue_timeouts.increment(1);
    }

    pub(crate) fn queue_cancelled(&self) {
        self.handles().queue_cancelled.increment(1);
    }

    pub(crate) fn retry(&self, event: crate::retry::RetryEvent) {
        use crate::retry::{RetryCause, RetryEvent};
        let h = self.handles();
        match event {
            RetryEvent::Retrying { cause, .. } => {
                h.retries_retrying.increment(1);
                if cause == RetryCause::NotProcessed {
                    h.retries_not_processed.increment(1);
                }
            }
            RetryEvent::Succeeded => h.retries_succeeded.increment(1),
            RetryEvent::Failed => h.retries_failed.increment(1),
            RetryEvent::BudgetExhausted { .. } => h.retries_budget_exhausted.increment(1),
        }
    }

    pub(crate) fn drain(&self, outcome: &DrainOutcome) {
        let h = self.handles();
        h.drain_bytes.increment(outcome.bytes());
        if let Some((count, duration)) = h.drains.get(outcome.index()) {
            count.increment(1);
            if let Some(elapsed) = outcome.elapsed() {
                duration.record(elapsed.as_secs_f64());
            }
        }
    }

    /// A fleet renewal reached Redis.
    pub(crate) fn fleet_renewed(&self) {
        let _ = self.handles();
        metrics::counter!(FLEET_RENEWALS, self.base().iter()).increment(1);
    }

    /// A fleet renewal could not reach Redis.
    pub(crate) fn fleet_error(&self) {
        let _ = self.handles();
        metrics::counter!(FLEET_ERRORS, self.base().iter()).increment(1);
    }

    /// A request of a budgeted host waited `waited` in the queue.
    pub(crate) fn fleet_waited(&self, waited: std::time::Duration) {
        let _ = self.handles();
        metrics::histogram!(FLEET_WAIT, self.base().iter()).record(waited.as_secs_f64());
    }

    /// This process holds `permits` of `host`'s fleet budget.
    pub(crate) fn fleet_permits(&self, host: &str, permits: usize) {
        let _ = self.handles();
        let mut labels = self.base();
        labels.push(Label::new("server.address", host.to_owned()));
        metrics::gauge!(FLEET_PERMITS, labels.iter()).set(permits as f64);
    }

    /// `host`'s adaptive limit is `limit` now.
    pub(crate) fn limit(&self, host: &HostKey, own_row: bool, limit: usize) {
        // Describes the metrics at the guard's first event.
        let _ = self.handles();
        let labels = self.host_labels(host, own_row);
        // Changes at most once per window (25 ms) per host: a key per
        // change is cheap enough.
        metrics::gauge!(LIMIT, labels.iter()).set(limit as f64);
    }

    /// The guard's labels and `host`'s: `server.address` (the host, or
    /// `other` past the bound), `server.port`, `url.scheme`.
    fn host_labels(&self, host: &HostKey, own_row: bool) -> Vec<Label> {
        let mut labels = self.base();
        let address = if own_row { host.host() } else { "other" };
        labels.push(Label::new("server.address", address.to_owned()));
        labels.push(Label::new("server.port", host.port().to_string()));
        labels.push(Label::new("url.scheme", host.scheme().to_owned()));
        labels
    }

    /// A connection was dialed whose life is not followed (reqwest's).
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn dialed(&self) {
        self.handles().opened.increment(1);
    }

    /// A connection to `host` opened; `address` is the `server.address` it
    /// is counted under (the host, or `other` past the bound).
    pub(crate) fn opened(&self, host: &HostKey, own_row: bool) -> ConnEmit {
        self.handles().opened.increment(1);
        let labels = self.host_labels(host, own_row);
        ConnEmit {
            labels: Arc::from(labels),
            closed: self.handles().closed.clone(),
            gauges: Default::default(),
            durations: Default::default(),
        }
    }
}

/// One connection's emitter: its attributes, where its close counts, and
/// its `open_connections` series (registered at first use: a state change
/// per exchange must not build a key).
#[derive(Debug)]
pub(crate) struct ConnEmit {
    labels: Arc<[Label]>,
    closed: Vec<Counter>,
    /// By state (active, idle) and version (1.1, 2).
    gauges: [[OnceLock<Gauge>; 2]; 2],
    /// By version (1.1, 2).
    durations: [OnceLock<Histogram>; 2],
}

/// Where a connection stands in `http.client.open_connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    Active,
    Idle,
}

impl ConnEmit {
    fn gauge(&self, state: ConnState, version: &'static str) -> &Gauge {
        let s = match state {
            ConnState::Active => 0,
            ConnState::Idle => 1,
        };
        let v = usize::from(version != "1.1");
        self.gauges[s][v].get_or_init(|| {
            let mut labels = self.labels.to_vec();
            labels.push(Label::new(
                "http.connection.state",
                match state {
                    ConnState::Active => "active",
                    ConnState::Idle => "idle",
                },
            ));
            labels.push(Label::new("network.protocol.version", version));
            metrics::gauge!(OPEN_CONNECTIONS, labels.iter())
        })
    }

    /// The connection moved from `from` (if it was counted) to `to` (if it
    /// still is), speaking `version`.
    pub(crate) fn moved(
        &self,
        from: Option<(ConnState, &'static str)>,
        to: Option<(ConnState, &'static str)>,
    ) {
        if let Some((state, version)) = from {
            self.gauge(state, version).decrement(1.0);
        }
        if let Some((state, version)) = to {
            self.gauge(state, version).increment(1.0);
        }
    }

    /// The connection closed for `reason`, after `open` seconds, speaking
    /// `version`.
    pub(crate) fn closed(&self, reason: CloseReason, open: Duration, version: &'static str) {
        if let Some(counter) = self.closed.get(reason.index()) {
            counter.increment(1);
        }
        let v = usize::from(version != "1.1");
        self.durations[v]
            .get_or_init(|| {
                let mut labels = self.labels.to_vec();
                labels.push(Label::new("network.protocol.version", version));
                metrics::histogram!(CONNECTION_DURATION, labels.iter())
            })
            .record(open.as_secs_f64());
    }
}
