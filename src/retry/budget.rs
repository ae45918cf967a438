//! The retry budget: how many retries a host's requests may cause.
//!
//! tower's [`TpsBudget`], one per host: every request (while retries are
//! on) deposits, every retry withdraws. A retry is made only when it can
//! withdraw; otherwise the error goes back to the caller. So retries stay
//! within `percent` of the host's requests over the last 10 s, plus
//! `min_per_sec` a second (a floor, for hosts with little traffic and for
//! the burst that follows a server closing every idle connection at once).
//!
//! Requests are deposited a batch at a time: a batch is 8 to 64 requests
//! (the fewest that keep the share within 1 % of tower's own rounding),
//! and the request that opens one deposits the whole batch's share. A
//! thread holds the rest of the batch it opened, its lease of the host's
//! budget: its next requests to the host are paid from the lease without
//! a lock, an atomic operation or a clock read (a thread keeps leases of
//! the last four hosts it sent to). A lease let go (its thread sent to four
//! other hosts since, or ended) hands what is left of it to the host's
//! next requests, on any thread, before another batch is deposited. A
//! host's share is so counted at most a batch ahead per thread (at 20 %,
//! 1.4 retries a thread more than per-request deposits would allow). A
//! share that no batch keeps that close (above 125 %, below about 1.6 %)
//! is deposited request by request; a share of 0 deposits nothing (tower's
//! deposit of nothing).

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::key::{HostMemo, MemoKey, Recent};

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

    /// A budget of this share and floor (tower's, 10 s window), deposited
    /// once per request.
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

    /// How many requests each deposit counts (0: none is needed, the share
    /// being 0): the fewest of 8, 16, 32 and 64 whose share tower keeps
    /// within 1 % of the share it keeps per request, or 1.
    fn batch(self) -> u32 {
        let per_request = tower_share(self.ratio);
        if per_request == 0.0 {
            return 0;
        }
        for batch in [8u32, 16, 32, 64] {
            let ratio = self.ratio * batch as f32;
            if ratio > MAX_TOWER_RATIO {
                break;
            }
            let share = tower_share(ratio) / f64::from(batch);
            if (share - per_request).abs() <= per_request / 100.0 {
                return batch;
            }
        }
        1
    }

    /// Tower's budget for deposits of `batch` requests each.
    fn batched(self, batch: u32) -> TpsBudget {
        if batch <= 1 {
            return self.tps_budget();
        }
        TpsBudget::new(TTL, self.min_per_sec, self.ratio * batch as f32)
    }
}

/// The largest share tower's `TpsBudget` takes (it asserts the bound).
const MAX_TOWER_RATIO: f32 = 1000.0;

/// The share of deposits tower's `TpsBudget` allows as retries for
/// `ratio`: its own arithmetic (`TpsBudget::new`), which rounds the price
/// of a retry down to a whole number of deposit units.
fn tower_share(ratio: f32) -> f64 {
    if ratio <= 0.0 {
        0.0
    } else if ratio <= 1.0 {
        let withdraw = (1.0 / ratio) as i64;
        1.0 / withdraw.max(1) as f64
    } else {
        let withdraw = (1000.0 / ratio) as i64;
        1000.0 / withdraw.max(1) as f64
    }
}

/// What the retry keeps of a host: its budget, and whether it speaks
/// HTTP/2. Shared by the map of hosts and the threads' leases.
struct HostRetry {
    budget: TpsBudget,
    /// Requests deposited for that no request has taken yet: what leases
    /// let go had left.
    credit: AtomicU32,
    /// The host's last response came over HTTP/2: its requests learn their
    /// connection, so that a `GOAWAY` can take it out of the pool.
    http2: AtomicBool,
    /// The map forgot the host (see [`MAX_HOSTS`]): a lease of it is let
    /// go, and the host's requests deposit into its new budget.
    forgotten: AtomicBool,
}

/// A host in the map of hosts: marks it forgotten when the map lets it go.
struct Kept(Arc<HostRetry>);

impl Drop for Kept {
    fn drop(&mut self) {
        self.0.forgotten.store(true, Relaxed);
    }
}

/// The budgets of every host, shared by a layer's services and their
/// clones.
pub(crate) struct Budgets {
    /// Which budgets a thread's lease is of (unique in the process).
    id: u64,
    config: BudgetConfig,
    /// Requests a deposit counts (0: none deposits).
    batch: u32,
    /// Looked up by a request without a lease of its host, and for the
    /// rare retry (a request holds no reference to its host's budget).
    hosts: Mutex<Hosts>,
}

struct Hosts {
    memo: HostMemo<Kept>,
    /// The budget of requests without a host.
    hostless: Option<Kept>,
}

impl Budgets {
    pub(crate) fn new(config: BudgetConfig) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Budgets {
            id: NEXT_ID.fetch_add(1, Relaxed),
            config,
            batch: config.batch(),
            hosts: Mutex::new(Hosts {
                memo: HostMemo::new(MAX_HOSTS),
                hostless: None,
            }),
        }
    }

    /// The budget of `host`, made on first use (and made afresh for a host
    /// forgotten meanwhile). Requests without a host share one.
    fn host(&self, host: Option<MemoKey>) -> Arc<HostRetry> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let hosts = &mut *hosts;
        let make = || {
            Kept(Arc::new(HostRetry {
                budget: self.config.batched(self.batch),
                credit: AtomicU32::new(0),
                http2: AtomicBool::new(false),
                forgotten: AtomicBool::new(false),
            }))
        };
        let kept = match host {
            Some(memo) => hosts.memo.get_or_insert_with(memo, make),
            None => hosts.hostless.get_or_insert_with(make),
        };
        kept.0.clone()
    }
}

/// A thread's lease of a host's budget: the requests of the batch it
/// deposited last that none of its requests took yet.
struct Lease {
    budgets: u64,
    host: Option<MemoKey>,
    retry: Arc<HostRetry>,
    left: u32,
}

impl Lease {
    fn is(&self, budgets: &Budgets, host: Option<MemoKey>) -> bool {
        self.budgets == budgets.id && self.host == host
    }

    /// Pays for one request of the host: from the lease, else from what
    /// leases let go, else with a new batch deposited (the lease holding
    /// the rest).
    fn pay(&mut self, batch: u32) {
        match batch {
            0 => {}
            1 => self.retry.budget.deposit(),
            batch => {
                if self.left > 0 {
                    self.left = self.left.saturating_sub(1);
                } else if self
                    .retry
                    .credit
                    .fetch_update(Relaxed, Relaxed, |c| c.checked_sub(1))
                    .is_err()
                {
                    self.retry.budget.deposit();
                    self.left = batch.saturating_sub(1);
                }
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // What is left goes to the host's next requests.
        if self.left > 0 {
            self.retry.credit.fetch_add(self.left, Relaxed);
        }
    }
}

/// Leases a thread holds.
const LEASES: usize = 4;

thread_local! {
    static THREAD_LEASES: RefCell<Recent<Lease, LEASES>> = const { RefCell::new(Recent::new()) };
}

impl fmt::Debug for Budgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budgets")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One request's budget: deposits when made, withdraws for each retry.
/// Its host, not a reference to the host's budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestBudget {
    host: Option<MemoKey>,
    /// The host's last response had come over HTTP/2 when the request was
    /// made.
    http2: bool,
}

impl RequestBudget {
    /// The budget of the request's host, with the request deposited (as
    /// the first of a batch, or counted in the batch already deposited).
    #[inline]
    pub(crate) fn deposit(budgets: &Budgets, host: Option<MemoKey>) -> Self {
        let batch = budgets.batch;
        // The thread's lease of the host, if it holds one.
        let leased = THREAD_LEASES
            .try_with(|leases| {
                let mut leases = leases.try_borrow_mut().ok()?;
                let lease = leases.find_mut(|l| l.is(budgets, host))?;
                if lease.retry.forgotten.load(Relaxed) {
                    return None;
                }
                lease.pay(batch);
                Some(lease.retry.http2.load(Relaxed))
            })
            .ok()
            .flatten();
        if let Some(http2) = leased {
            return RequestBudget { host, http2 };
        }
        let mut lease = Lease {
            budgets: budgets.id,
            host,
            retry: budgets.host(host),
            left: 0,
        };
        lease.pay(batch);
        let http2 = lease.retry.http2.load(Relaxed);
        // Kept for the thread's next requests to the host; the lease it
        // replaces (or this one, if the thread keeps none) is let go after
        // the borrow ends.
        let _let_go = THREAD_LEASES
            .try_with(|leases| {
                let mut leases = leases.try_borrow_mut().ok()?;
                leases.put(lease, |l| l.is(budgets, host))
            })
            .ok()
            .flatten();
        RequestBudget { host, http2 }
    }

    /// Takes one retry; `false` when the budget is spent.
    pub(crate) fn withdraw(&self, budgets: &Budgets) -> bool {
        budgets.host(self.host).budget.withdraw()
    }

    /// Whether the host's last response had come over HTTP/2 when the
    /// request was made.
    pub(crate) fn http2(&self) -> bool {
        self.http2
    }

    /// A response of the host came over `version` (the host's budget is
    /// looked up only when that changes what it speaks).
    pub(crate) fn answered(&self, budgets: &Budgets, version: http::Version) {
        let http2 = version >= http::Version::HTTP_2;
        if self.http2 != http2 {
            budgets.host(self.host).http2.store(http2, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::HostKey;

    fn key(host: &str) -> HostKey {
        HostKey::from_uri(&format!("http://{host}/").parse().expect("uri")).expect("key")
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_the_share_and_the_floor() {
        let budgets = Budgets::new(BudgetConfig::new(20.0, 1));
        let a = key("a");
        let mut allowed = 0;
        for _ in 0..100 {
            let b = RequestBudget::deposit(&budgets, Some(a.memo()));
            if b.withdraw(&budgets) {
                allowed += 1;
            }
        }
        // 20 % of 100, plus 1 a second over the 10 s window.
        assert_eq!(allowed, 30);
        // Another host has a budget of its own.
        let other = RequestBudget::deposit(&budgets, Some(key("b").memo()));
        assert!(other.withdraw(&budgets));
        // The window passes: the spent retries count no more.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(RequestBudget::deposit(&budgets, Some(a.memo())).withdraw(&budgets));
    }

    /// Retries a budget allows after `requests` deposits: ours (batched),
    /// and tower's deposited once per request.
    fn allowed(percent: f32, min_per_sec: u32, requests: usize) -> (usize, usize) {
        let config = BudgetConfig::new(percent, min_per_sec);
        let budgets = Budgets::new(config);
        let a = key("a");
        let mut ours = None;
        for _ in 0..requests {
            ours = Some(RequestBudget::deposit(&budgets, Some(a.memo())));
        }
        let tower = config.tps_budget();
        for _ in 0..requests {
            tower.deposit();
        }
        let count = |withdraw: &dyn Fn() -> bool| (0..100_000).take_while(|_| withdraw()).count();
        let ours = ours.map_or(0, |b| count(&|| b.withdraw(&budgets)));
        (ours, count(&|| tower.withdraw()))
    }

    #[test]
    fn batched_deposits_allow_the_share_tower_allows_per_request() {
        for percent in [
            0.0, 1.0, 2.0, 5.0, 10.0, 12.5, 20.0, 33.0, 50.0, 100.0, 150.0, 1000.0,
        ] {
            for min_per_sec in [0, 3] {
                // Whole batches: the same retries, within tower's rounding.
                let (ours, tower) = allowed(percent, min_per_sec, 640);
                assert!(
                    ours.abs_diff(tower) <= (tower / 100).max(1),
                    "{percent} % + {min_per_sec}/s: {ours} retries allowed, tower {tower}"
                );
                // Part of a batch: counted ahead, never behind, and by less
                // than a batch's share.
                let (ours, tower) = allowed(percent, min_per_sec, 3);
                let batch_share = (percent / 100.0 * 64.0).ceil() as usize;
                assert!(
                    ours >= tower && ours <= tower + batch_share.max(1),
                    "{percent} % + {min_per_sec}/s after 3 requests: {ours}, tower {tower}"
                );
            }
        }
    }

    #[test]
    fn the_default_share_is_deposited_eight_requests_at_a_time() {
        assert_eq!(BudgetConfig::DEFAULT.batch(), 8);
        assert_eq!(BudgetConfig::new(0.0, 10).batch(), 0);
        // Tower's rounding at 10 % per batch of 8 (0.8: a retry per 1.25
        // deposits, rounded to 1) would be 25 % too generous: 16 it is.
        assert_eq!(BudgetConfig::new(10.0, 10).batch(), 16);
    }

    /// Retries `host`'s budget allows now.
    fn retries_left(budgets: &Budgets, host: Option<MemoKey>) -> usize {
        let b = RequestBudget { host, http2: false };
        (0..100_000).take_while(|_| b.withdraw(budgets)).count()
    }

    #[test]
    fn leases_let_go_hand_their_requests_on() {
        // More hosts than a thread holds leases of, in turn: every lease is
        // let go before its batch is used up, and what is left of it pays
        // for the host's next requests (not another batch deposited).
        let config = BudgetConfig::new(20.0, 0);
        let budgets = Budgets::new(config);
        let hosts: Vec<_> = (0..10).map(|i| key(&format!("h{i}")).memo()).collect();
        for _ in 0..640 {
            for host in &hosts {
                RequestBudget::deposit(&budgets, Some(*host));
            }
        }
        let tower = config.tps_budget();
        for _ in 0..640 {
            tower.deposit();
        }
        let expected = (0..100_000).take_while(|_| tower.withdraw()).count();
        for host in &hosts {
            let allowed = retries_left(&budgets, Some(*host));
            assert!(
                allowed.abs_diff(expected) <= (expected / 100).max(1),
                "{allowed} retries allowed, tower {expected}"
            );
        }
    }

    #[test]
    fn each_thread_counts_at_most_a_batch_ahead() {
        const THREADS: usize = 4;
        let config = BudgetConfig::new(20.0, 0);
        let budgets = Arc::new(Budgets::new(config));
        let a = key("a").memo();
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let budgets = budgets.clone();
                std::thread::spawn(move || {
                    for _ in 0..163 {
                        RequestBudget::deposit(&budgets, Some(a));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let tower = config.tps_budget();
        for _ in 0..THREADS * 163 {
            tower.deposit();
        }
        let expected = (0..100_000).take_while(|_| tower.withdraw()).count();
        let allowed = retries_left(&budgets, Some(a));
        // A batch of 8 at 20 %: 1.6 retries, so at most 2 a thread ahead.
        assert!(
            allowed >= expected && allowed <= expected + 2 * THREADS,
            "{allowed} retries allowed, tower {expected}"
        );
    }

    #[test]
    fn a_forgotten_hosts_lease_is_let_go() {
        let config = BudgetConfig::new(20.0, 0);
        let budgets = Budgets::new(config);
        let a = key("a");
        RequestBudget::deposit(&budgets, Some(a.memo()));
        // The map forgets the host (as past `MAX_HOSTS`): the thread's
        // lease must not keep paying into the budget no retry reads.
        drop(
            budgets
                .hosts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .memo
                .remove(&a),
        );
        for _ in 0..80 {
            RequestBudget::deposit(&budgets, Some(a.memo()));
        }
        // 80 requests at 20 %: 16 retries, all in the host's new budget.
        assert_eq!(retries_left(&budgets, Some(a.memo())), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_allows_no_retry() {
        let budgets = Budgets::new(BudgetConfig::new(0.0, 0));
        let b = RequestBudget::deposit(&budgets, Some(key("a").memo()));
        assert!(!b.withdraw(&budgets));
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
            let _ = RequestBudget::deposit(&budgets, None).withdraw(&budgets);
        }
    }
}
