//! What a new connection to a host costs, and whether anyone waits for one
//! of the host's slots: the two facts a drain weighs before it goes on.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::key::{HostKey, HostMemo};

/// What a new connection costs before any was seen to a host: a TLS
/// handshake to a nearby host (loopback measures ~0.1 ms plain, ~1 ms with
/// TLS; a host 10 ms away costs 20 ms and more).
pub(crate) const DEFAULT_DIAL_COST: Duration = Duration::from_millis(5);

/// Hosts whose dial cost is remembered (by the 64-bit hash of their key).
const MAX_HOSTS: usize = 4096;

/// Per-host estimates of what a new connection costs: an exponentially
/// weighted mean (weight 1/4) of the dials the connectors timed, connect
/// and TLS handshake included; for a host never dialed, the same mean over
/// every dial.
#[derive(Debug)]
pub(crate) struct DialCosts {
    hosts: Mutex<Means>,
}

impl Default for DialCosts {
    fn default() -> Self {
        DialCosts {
            hosts: Mutex::new(Means {
                hosts: HostMemo::new(MAX_HOSTS),
                any: None,
            }),
        }
    }
}

#[derive(Debug)]
struct Means {
    hosts: HostMemo<Duration>,
    any: Option<Duration>,
}

/// `mean` moved a quarter of the way to `took`, saturating.
fn ewma(mean: Option<Duration>, took: Duration) -> Duration {
    match mean {
        Some(mean) => mean.saturating_mul(3).saturating_add(took) / 4,
        None => took,
    }
}

impl DialCosts {
    fn means(&self) -> std::sync::MutexGuard<'_, Means> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A dial to `key` took `took`.
    pub(crate) fn record(&self, key: &HostKey, took: Duration) {
        let mut means = self.means();
        means.any = Some(ewma(means.any, took));
        match means.hosts.get_mut(key) {
            Some(mean) => *mean = ewma(Some(*mean), took),
            None => means.hosts.insert(key, took),
        }
    }

    /// A dial to a host that cannot be named took `took` (reqwest's
    /// connector does not show the host it dials): counts in the mean over
    /// every dial only.
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn record_any(&self, took: Duration) {
        let mut means = self.means();
        means.any = Some(ewma(means.any, took));
    }

    /// What a new connection to `key` is expected to cost: its own mean,
    /// else the mean over every dial, else [`DEFAULT_DIAL_COST`].
    pub(crate) fn estimate(&self, key: &HostKey) -> Duration {
        let means = self.means();
        means
            .hosts
            .get(key)
            .copied()
            .or(means.any)
            .unwrap_or(DEFAULT_DIAL_COST)
    }

    /// The estimate for `key`, if a dial to it was timed.
    pub(crate) fn measured(&self, key: &HostKey) -> Option<Duration> {
        self.means().hosts.get(key).copied()
    }
}

/// Whether anything waits for one of a host's slots now: a request in a
/// per-host queue, or a dial under a connection cap.
pub(crate) trait Demand: fmt::Debug + Send + Sync + 'static {
    /// Whether something waits for a slot of `key`.
    fn waiting(&self, key: &HostKey) -> bool;
}

/// What a drain prices its work with: the hosts' dial costs and the queues
/// that may wait on the slots the drain holds.
#[derive(Clone, Debug)]
pub(crate) struct Pricing {
    pub(crate) costs: Arc<DialCosts>,
    pub(crate) demand: Vec<Arc<dyn Demand>>,
}

impl Pricing {
    /// Whether anything waits for a slot of `key`.
    pub(crate) fn wanted(&self, key: &HostKey) -> bool {
        self.demand.iter().any(|d| d.waiting(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> HostKey {
        HostKey::from_uri(&s.parse().unwrap()).unwrap()
    }

    #[test]
    fn the_estimate_follows_the_dials() {
        let costs = DialCosts::default();
        let h = key("https://a.example/");
        assert_eq!(costs.estimate(&h), DEFAULT_DIAL_COST);
        assert_eq!(costs.measured(&h), None);
        costs.record(&h, Duration::from_millis(40));
        assert_eq!(costs.estimate(&h), Duration::from_millis(40));
        costs.record(&h, Duration::from_millis(0));
        assert_eq!(costs.estimate(&h), Duration::from_millis(30));
        assert_eq!(
            costs.estimate(&key("https://b.example/")),
            Duration::from_millis(30),
            "a host never dialed: the mean over every dial"
        );
        assert_eq!(costs.measured(&key("https://b.example/")), None);
        // Extreme values neither overflow nor panic.
        costs.record(&h, Duration::MAX);
        assert!(costs.estimate(&h) > Duration::from_secs(1));
    }
}
