use std::fmt;
use std::time::Duration;

use crate::conn::BodyEnd;

/// How a drain ended, reported to an [`OnDrain`] hook once per body dropped
/// before its end.
///
/// `elapsed` is the time the drain waited for the body. What had already
/// arrived is read on drop, on the dropping thread, and waits for nothing:
/// a drain that ends there (`Completed` with `inline: true`, and the
/// `GaveUpBytes`, `GaveUpCost` or `Failed` decided there) reports zero, and
/// reads no clock; a drain that goes on in a task counts from the end of
/// those reads.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainOutcome {
    /// The body was read to its end: the connection can be reused.
    Completed {
        /// Bytes read and discarded.
        bytes: u64,
        /// Time from the drop to the end of the body (zero when
        /// `inline`).
        elapsed: Duration,
        /// `true` when the body was finished on drop, from what was already
        /// buffered, without spawning a task.
        inline: bool,
    },
    /// More than `max_bytes` would have been read: the body was dropped.
    GaveUpBytes {
        /// Bytes read and discarded before giving up.
        bytes: u64,
        /// Time from the drop to giving up.
        elapsed: Duration,
    },
    /// `max_time` elapsed before the end of the body: the body was dropped.
    GaveUpTime {
        /// Bytes read and discarded before giving up.
        bytes: u64,
        /// Time from the drop to giving up.
        elapsed: Duration,
    },
    /// Going on would have cost more than a new connection to the host
    /// while something waited for the host's slots: the drain ran as long
    /// as a new connection costs (see the [module docs](super)), then the
    /// body was dropped.
    GaveUpCost {
        /// Bytes read and discarded before giving up.
        bytes: u64,
        /// Time from the drop to giving up.
        elapsed: Duration,
    },
    /// The body returned an error while it was drained.
    Failed {
        /// Bytes read and discarded before the error.
        bytes: u64,
        /// Time from the drop to the error.
        elapsed: Duration,
    },
    /// The drain task was dropped before it finished, because its runtime
    /// shut down.
    Aborted {
        /// Bytes read and discarded before the task was dropped.
        bytes: u64,
        /// Time from the drop to the abort.
        elapsed: Duration,
    },
    /// No drain was attempted; the body was dropped at once.
    Skipped(SkipReason),
}

/// The names of [`DrainOutcome::as_str`], by [`DrainOutcome::index`].
pub(crate) const OUTCOME_NAMES: [&str; 10] = [
    "completed",
    "gave_up_bytes",
    "gave_up_time",
    "gave_up_cost",
    "failed",
    "aborted",
    "skipped_http2",
    "skipped_too_large",
    "skipped_no_runtime",
    "skipped_too_many",
];

impl DrainOutcome {
    /// Whether the body reached its end, so that its connection can be reused.
    pub fn is_completed(&self) -> bool {
        matches!(self, DrainOutcome::Completed { .. })
    }

    /// How the body ended, as its connection's record takes it.
    pub(crate) fn body_end(&self) -> BodyEnd {
        match self {
            DrainOutcome::Completed { .. } => BodyEnd::Complete,
            DrainOutcome::GaveUpBytes { .. }
            | DrainOutcome::GaveUpTime { .. }
            | DrainOutcome::GaveUpCost { .. }
            | DrainOutcome::Failed { .. } => BodyEnd::DrainGaveUp,
            DrainOutcome::Aborted { .. } | DrainOutcome::Skipped(_) => BodyEnd::Dropped,
        }
    }

    /// How long the drain ran (`None` when skipped).
    pub fn elapsed(&self) -> Option<std::time::Duration> {
        self.progress().map(|(_, elapsed)| elapsed)
    }

    /// Bytes read and time spent by the drain (`None` when skipped).
    fn progress(&self) -> Option<(u64, std::time::Duration)> {
        match self {
            DrainOutcome::Completed { bytes, elapsed, .. }
            | DrainOutcome::GaveUpBytes { bytes, elapsed }
            | DrainOutcome::GaveUpTime { bytes, elapsed }
            | DrainOutcome::GaveUpCost { bytes, elapsed }
            | DrainOutcome::Failed { bytes, elapsed }
            | DrainOutcome::Aborted { bytes, elapsed } => Some((*bytes, *elapsed)),
            DrainOutcome::Skipped(_) => None,
        }
    }

    /// A short, stable name of the outcome, for metric attributes:
    /// `completed`, `gave_up_bytes`, `gave_up_time`, `gave_up_cost`,
    /// `failed`, `aborted`, or `skipped_` and the reason (`skipped_http2`,
    /// `skipped_too_large`, `skipped_no_runtime`, `skipped_too_many`).
    pub fn as_str(&self) -> &'static str {
        OUTCOME_NAMES[self.index()]
    }

    /// The outcome's place in [`OUTCOME_NAMES`].
    pub(crate) fn index(&self) -> usize {
        match self {
            DrainOutcome::Completed { .. } => 0,
            DrainOutcome::GaveUpBytes { .. } => 1,
            DrainOutcome::GaveUpTime { .. } => 2,
            DrainOutcome::GaveUpCost { .. } => 3,
            DrainOutcome::Failed { .. } => 4,
            DrainOutcome::Aborted { .. } => 5,
            DrainOutcome::Skipped(SkipReason::Http2) => 6,
            DrainOutcome::Skipped(SkipReason::TooLarge) => 7,
            DrainOutcome::Skipped(SkipReason::NoRuntime) => 8,
            DrainOutcome::Skipped(SkipReason::TooManyDrains) => 9,
        }
    }

    /// Bytes read and discarded by the drain (0 when skipped).
    pub fn bytes(&self) -> u64 {
        self.progress().map_or(0, |(bytes, _)| bytes)
    }
}

/// Why a body dropped before its end was not drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SkipReason {
    /// An HTTP/2 response on a connection a
    /// [`GuardedConnector`](crate::GuardedConnector) tracks: its stream is
    /// reset, which costs no connection (the connector takes the
    /// connection out of the pool after 768 resets h2 wrote itself, before h2's own limit
    /// on a connection's resets would end it and fail every request on
    /// it). Over reqwest, whose connections the guard cannot take out of
    /// the pool, the stream is reset too, and the guard's retry resends the
    /// idempotent requests that h2's limit then fails.
    Http2,
    /// The known remaining length of the body exceeds `max_bytes`.
    TooLarge,
    /// No tokio runtime was current on the thread that dropped the body.
    NoRuntime,
    /// `max_concurrent` drains were already running.
    TooManyDrains,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Http2 => "http/2 response",
            SkipReason::TooLarge => "remaining body larger than max_bytes",
            SkipReason::NoRuntime => "no tokio runtime",
            SkipReason::TooManyDrains => "max_concurrent drains running",
        })
    }
}

/// A hook told how each drain ended.
///
/// It is implemented for `()` (does nothing) and for any
/// `Fn(&DrainOutcome) + Send + Sync + 'static` closure. It is called on the
/// thread that dropped the body (skips and inline completions) or on the
/// drain task; keep it short and never block in it.
pub trait OnDrain: Send + Sync + 'static {
    /// Called once for every body dropped before its end.
    fn on_drain(&self, outcome: &DrainOutcome);
}

impl OnDrain for () {
    #[inline]
    fn on_drain(&self, _outcome: &DrainOutcome) {}
}

impl<F> OnDrain for F
where
    F: Fn(&DrainOutcome) + Send + Sync + 'static,
{
    #[inline]
    fn on_drain(&self, outcome: &DrainOutcome) {
        self(outcome)
    }
}
