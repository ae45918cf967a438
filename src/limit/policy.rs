//! The seam between the limiter's mechanism and the policy that decides how
//! many requests a host may have in flight.
//!
//! The registry keeps the mechanism: the FIFO queue, the slot carried in
//! the body, the cap across hosts and the connector's connection cap. A
//! policy only answers "how many for this host now", below the host's
//! ceiling (`max_per_host`, its override, or `max_streams_per_host` once the
//! host speaks HTTP/2), and is told how each request that held a slot went.

use std::fmt;
use std::time::Duration;

use crate::key::HostKey;

/// Decides the limit of each host, within its ceiling.
///
/// The registry asks [`limit`](LimitPolicy::limit) when it starts to track
/// a host, and applies what [`sample`](LimitPolicy::sample) returns at once:
/// a higher limit hands slots to waiters, a lower one takes slots back only
/// as requests in flight finish (none is cut). A policy that moves limits
/// on its own (the fleet's, after each renewal of its permits) calls the
/// registry's `set_cap`, and reads its `demand`. A limit may be 0 (no slot
/// for now: requests queue).
pub(crate) trait LimitPolicy: Send + Sync + fmt::Debug + 'static {
    /// The limit of `key` now, from 0 to `ceiling`.
    fn limit(&self, key: &HostKey, ceiling: usize) -> usize;

    /// One request that held a slot of `key` got its response head: the
    /// host's new limit if it changed (from 1 to `ceiling`).
    fn sample(&self, key: &HostKey, sample: &Sample, ceiling: usize) -> Option<usize>;

    /// Whether [`sample`](LimitPolicy::sample) wants to hear of each
    /// request (a policy that moves limits on its own, as the fleet's, does
    /// not, and its requests read no clock for it).
    fn wants_samples(&self) -> bool {
        true
    }

    /// A request of `key` found every slot taken and queued.
    fn queued(&self, _key: &HostKey) {}

    /// A request of `key` left the queue after `waited`: with a slot, or at
    /// its deadline.
    fn waited(&self, _key: &HostKey, _waited: Duration) {}

    /// Why `key` had no slot for a request whose queue deadline passed, if
    /// the policy knows better than "the queue timed out" (a fleet budget
    /// that cannot be reached).
    fn refusal(&self, _key: &HostKey) -> Option<crate::BoxError> {
        None
    }
}

/// How one request that held a slot went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    /// From the moment it got its slot (its wait in poolguard's queue left
    /// out) to its response head.
    pub(crate) latency: Duration,
    /// Requests of the host in flight when it got its slot, itself
    /// included.
    pub(crate) in_flight: usize,
    /// The attempt paid for a new connection (a dial, a TLS handshake):
    /// its latency says nothing of the server's queue.
    pub(crate) dialed: bool,
    /// The server said it is overloaded: `429 Too Many Requests` or `503
    /// Service Unavailable`.
    pub(crate) overloaded: bool,
    /// The server's `Retry-After`, in seconds, on such a response.
    pub(crate) retry_after: Option<Duration>,
}

impl Sample {
    /// What a response with `status` and `headers` says beyond its latency.
    pub(crate) fn read(
        status: http::StatusCode,
        headers: &http::HeaderMap,
    ) -> (bool, Option<Duration>) {
        let overloaded = status == http::StatusCode::TOO_MANY_REQUESTS
            || status == http::StatusCode::SERVICE_UNAVAILABLE;
        if !overloaded {
            return (false, None);
        }
        // Only the delay-seconds form: an HTTP date needs a wall clock,
        // which the limit does not read.
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        (true, retry_after)
    }
}
