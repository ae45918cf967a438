//! The fleet budget as a limit policy: each host's limit is the share of
//! the process's block of permits that its key holds; the renewer (in
//! `renew`) moves the blocks.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::{BudgetUnavailable, FleetBudget, Unavailable};
use crate::key::HostKey;
use crate::limit::policy::{LimitPolicy, Sample};
use crate::limit::registry::Registry;
use crate::metrics::Metrics;
use crate::BoxError;

/// A [`FleetBudget`] at work in one guard (one process of the fleet).
#[derive(Clone)]
pub(crate) struct FleetPolicy {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for FleetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetPolicy")
            .field("budget", &self.shared.budget)
            .finish_non_exhaustive()
    }
}

/// What the policy and its renewer share.
pub(super) struct Shared {
    pub(super) budget: FleetBudget,
    /// This process's name among the holders.
    pub(super) holder: String,
    pub(super) names: Mutex<HashMap<Box<str>, Name>>,
    /// The request registry the blocks apply to.
    pub(super) registry: OnceLock<Weak<Registry>>,
    /// Wakes the renewer: a request queued for a fleet host.
    pub(super) wake: Notify,
    started: AtomicBool,
    /// A policy beneath the fleet's (adaptive limits): a host's limit is
    /// the lower of the two.
    pub(super) inner: Option<Arc<dyn LimitPolicy>>,
    pub(super) metrics: Metrics,
}

/// One budgeted host name: this process's block, and how it is spread over
/// the name's keys (ports and schemes).
#[derive(Debug, Default)]
pub(super) struct Name {
    /// Permits this process may use now (the block Redis granted, or the
    /// fallback while it cannot be reached).
    pub(super) granted: usize,
    /// The block's share of each key; they add up to at most `granted`.
    pub(super) alloc: HashMap<HostKey, usize>,
    /// The epoch of the keys this process last saw ("" for none).
    pub(super) epoch: String,
    /// The fleet wants more than the budget.
    pub(super) contended: bool,
    /// Redis answered the last renewal (or none was tried yet).
    pub(super) available: bool,
    /// Redis holds a record of this process for the name.
    pub(super) recorded: bool,
}

impl Name {
    /// `granted` less what the keys hold.
    pub(super) fn unallocated(&self) -> usize {
        let held: usize = self.alloc.values().sum();
        self.granted.saturating_sub(held)
    }
}

impl FleetPolicy {
    pub(crate) fn new(
        budget: FleetBudget,
        inner: Option<Arc<dyn LimitPolicy>>,
        metrics: Metrics,
    ) -> Self {
        let names = budget
            .limits
            .keys()
            .map(|host| {
                let name = Name {
                    available: true,
                    ..Name::default()
                };
                (host.clone(), name)
            })
            .collect();
        for (host, &n) in &budget.limits {
            metrics.fleet_permits(host, n, 0, true);
        }
        FleetPolicy {
            shared: Arc::new(Shared {
                budget,
                holder: holder_id(),
                names: Mutex::new(names),
                registry: OnceLock::new(),
                wake: Notify::new(),
                started: AtomicBool::new(false),
                inner,
                metrics,
            }),
        }
    }

    /// The registry whose hosts' limits this policy sets.
    pub(crate) fn bind(&self, registry: &Arc<Registry>) {
        let _ = self.shared.registry.set(Arc::downgrade(registry));
    }

    /// Starts the renewer on the current runtime, once.
    fn start(&self) {
        if self.shared.started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.shared.started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(super::renew::run(Arc::downgrade(&self.shared)));
    }
}

impl Shared {
    pub(super) fn names(&self) -> MutexGuard<'_, HashMap<Box<str>, Name>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn budgeted(&self, key: &HostKey) -> bool {
        self.budget.limits.contains_key(key.host())
    }

    /// `key`'s limit under the policy beneath, if any.
    pub(super) fn inner_limit(&self, key: &HostKey, ceiling: usize) -> usize {
        match &self.inner {
            Some(inner) => inner.limit(key, ceiling),
            None => ceiling,
        }
    }

    /// The fallback block while Redis cannot be reached.
    pub(super) fn fallback(&self, budget: usize) -> usize {
        match self.budget.unavailable {
            Unavailable::Local(n) => n.min(budget),
            Unavailable::FailClosed => 0,
        }
    }
}

impl LimitPolicy for FleetPolicy {
    fn limit(&self, key: &HostKey, ceiling: usize) -> usize {
        let below = self.shared.inner_limit(key, ceiling);
        if !self.shared.budgeted(key) {
            return below;
        }
        self.start();
        // Under the registry's lock: the renewer never holds this lock
        // while it takes the registry's.
        let mut names = self.shared.names();
        let Some(name) = names.get_mut(key.host()) else {
            return below;
        };
        let share = match name.alloc.get(key) {
            Some(&n) => n,
            None => {
                let free = name.unallocated();
                name.alloc.insert(key.clone(), free);
                free
            }
        };
        share.min(below)
    }

    fn sample(&self, key: &HostKey, sample: &Sample, ceiling: usize) -> Option<usize> {
        let limit = self.shared.inner.as_ref()?.sample(key, sample, ceiling)?;
        if !self.shared.budgeted(key) {
            return Some(limit);
        }
        let names = self.shared.names();
        let share = names
            .get(key.host())
            .and_then(|name| name.alloc.get(key).copied())
            .unwrap_or(0);
        Some(limit.min(share))
    }

    fn wants_samples(&self) -> bool {
        self.shared
            .inner
            .as_ref()
            .is_some_and(|i| i.wants_samples())
    }

    fn queued(&self, key: &HostKey) {
        if self.shared.budgeted(key) {
            self.start();
            self.shared.wake.notify_one();
        }
    }

    fn waited(&self, key: &HostKey, waited: Duration) {
        if self.shared.budgeted(key) {
            self.shared.metrics.fleet_waited(waited);
        }
    }

    fn refusal(&self, key: &HostKey) -> Option<BoxError> {
        if !self.shared.budgeted(key) || self.shared.budget.unavailable != Unavailable::FailClosed {
            return None;
        }
        let names = self.shared.names();
        let name = names.get(key.host())?;
        (!name.available).then(|| {
            BudgetUnavailable {
                host: key.host().into(),
            }
            .into()
        })
    }
}

/// A holder id unlikely to be another process's: the process id, the time,
/// and the standard library's random hash keys.
fn holder_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(since.as_nanos());
    format!("{}-{:016x}", std::process::id(), hasher.finish())
}
