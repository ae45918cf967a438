//! The retry budget: how many retries a host's requests may cause.
//!
//! tower's [`TpsBudget`], one per host: every request (while retries are
//! on) deposits, every retry withdraws. A retry is made only when it can
//! withdraw; otherwise the error goes back to the caller. So retries stay
//! within `percent` of the host's requests over the last 10 s, plus
//! `min_per_sec` a second (a floor, for hosts with little traffic and for
//! the burst that follows a server closing every idle connection at once).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::key::{HostKey, HostMemo};

/// How long a deposit counts (tower's default).
const TTL: Duration = Duration::from_secs(10);

/// Hosts whose budgets are kept; past that, an arbitrary one is forgotten
/// (and starts afresh, with its floor).
const MAX_HOSTS: usize = 4096;

/// The default share of requests that may be retried, in percent.
pub(crate) const DEFAULT_PERCENT: f32 = 20.0;

/// The default floor of retries a second.
pub(crate) const DEFAULT_MIN_PER_SEC: u32 = 10;

/// What a budget allows, as set (already made valid for tower).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BudgetConfig {
    /// Retries per request, as a ratio (0.2 for 20 %).
    ratio: f32,
    min_per_sec: u32,
}

impl BudgetConfig {
    /// 20 % plus 10 a second.
    pub(crate) const DEFAULT: BudgetConfig = BudgetConfig {
        ratio: DEFAULT_PERCENT / 100.0,
        min_per_sec: DEFAULT_MIN_PER_SEC,
    };

    /// A budget of this share and floor (tower's, 10 s window).
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn tps_budget(self) -> TpsBudget {
        TpsBudget::new(TTL, self.min_per_sec, self.ratio)
    }

    /// `percent` of requests (0 to 100,000; NaN counts as 0) plus
    /// `min_per_sec` a second (at most `i32::MAX - 1`): the bounds tower's
    /// `TpsBudget` asserts, so that no setting can make it panic.
    pub(crate) fn new(percent: f32, min_per_sec: u32) -> Self {
        let percent = if percent.is_nan() {
            0.0
        } else {
            percent.clamp(0.0, 100_000.0)
        };
        BudgetConfig {
            ratio: percent / 100.0,
            min_per_sec: min_per_sec.min(i32::MAX as u32 - 1),
        }
    }
}

/// What the retry keeps of a host: its budget, and whether it speaks
/// HTTP/2.
pub(crate) struct HostRetry {
    budget: TpsBudget,
    /// The host's last response came over HTTP/2: its requests learn their
    /// connection, so that a `GOAWAY` can take it out of the pool.
    http2: AtomicBool,
}

/// The budgets of every host, shared by a layer's services and their
/// clones.
pub(crate) struct Budgets {
    config: BudgetConfig,
    hosts: Mutex<HostMemo<Arc<HostRetry>>>,
    /// The budget of requests without a host.
    hostless: OnceLock<Arc<HostRetry>>,
}

impl Budgets {
    pub(crate) fn new(config: BudgetConfig) -> Self {
        Budgets {
            config,
            hosts: Mutex::new(HostMemo::new(MAX_HOSTS)),
            hostless: OnceLock::new(),
        }
    }

    /// The budget of `key`'s host, made on first use. Requests without a
    /// host share one budget.
    pub(crate) fn of(&self, key: Option<&HostKey>) -> Arc<HostRetry> {
        let Some(key) = key else {
            return self
                .hostless
                .get_or_init(|| Arc::new(self.budget()))
                .clone();
        };
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(budget) = hosts.get(key) {
            return budget.clone();
        }
        let budget = Arc::new(self.budget());
        hosts.insert(key, budget.clone());
        budget
    }

    fn budget(&self) -> HostRetry {
        HostRetry {
            budget: self.config.tps_budget(),
            http2: AtomicBool::new(false),
        }
    }
}

impl fmt::Debug for Budgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budgets")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One request's budget: deposits when made, withdraws for each retry.
#[derive(Clone)]
pub(crate) struct RequestBudget(Arc<HostRetry>);

impl RequestBudget {
    /// The budget of the request's host, with the request deposited.
    pub(crate) fn deposit(budgets: &Budgets, key: Option<&HostKey>) -> Self {
        let host = budgets.of(key);
        host.budget.deposit();
        RequestBudget(host)
    }

    /// Takes one retry; `false` when the budget is spent.
    pub(crate) fn withdraw(&self) -> bool {
        self.0.budget.withdraw()
    }

    /// Whether the host's last response came over HTTP/2.
    pub(crate) fn http2(&self) -> bool {
        self.0.http2.load(Relaxed)
    }

    /// A response of the host came over `version`.
    pub(crate) fn answered(&self, version: http::Version) {
        let http2 = version >= http::Version::HTTP_2;
        if self.0.http2.load(Relaxed) != http2 {
            self.0.http2.store(http2, Relaxed);
        }
    }
}

impl fmt::Debug for RequestBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.budget.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str) -> HostKey {
        HostKey::from_uri(&format!("http://{host}/").parse().expect("uri")).expect("key")
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_the_share_and_the_floor() {
        let budgets = Budgets::new(BudgetConfig::new(20.0, 1));
        let a = key("a");
        let mut allowed = 0;
        for _ in 0..100 {
            let b = RequestBudget::deposit(&budgets, Some(&a));
            if b.withdraw() {
                allowed += 1;
            }
        }
        // 20 % of 100, plus 1 a second over the 10 s window.
        assert_eq!(allowed, 30);
        // Another host has a budget of its own.
        let other = RequestBudget::deposit(&budgets, Some(&key("b")));
        assert!(other.withdraw());
        // The window passes: the spent retries count no more.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(RequestBudget::deposit(&budgets, Some(&a)).withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_allows_no_retry() {
        let budgets = Budgets::new(BudgetConfig::new(0.0, 0));
        let b = RequestBudget::deposit(&budgets, Some(&key("a")));
        assert!(!b.withdraw());
    }

    #[test]
    fn no_setting_makes_tower_panic() {
        for (percent, min) in [
            (f32::NAN, 0),
            (-1.0, u32::MAX),
            (f32::INFINITY, 5),
            (1e9, 1),
            (0.001, 0),
        ] {
            let budgets = Budgets::new(BudgetConfig::new(percent, min));
            let _ = RequestBudget::deposit(&budgets, None).withdraw();
        }
    }
}
