//! Per-host slots: a FIFO semaphore per host, a bounded queue, and a map of
//! hosts that holds only hosts with something in flight or queued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::key::{BuildKeyHasher, HostKey};
use crate::metrics::Metrics;

/// The bounds of one registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Slots per host (at least 1).
    pub(crate) max_per_host: usize,
    /// Waiters per host.
    pub(crate) max_queued: usize,
}

/// Slots per host, shared by every clone of a layer or connector.
#[derive(Debug)]
pub(crate) struct Registry {
    bounds: Bounds,
    /// Told of queue events, if set.
    observer: Option<Metrics>,
    state: Mutex<State>,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
}

#[derive(Debug)]
struct Host {
    /// tokio's semaphore is fair: permits go to waiters in FIFO order, and a
    /// dropped `acquire` leaves the queue at once.
    semaphore: Arc<Semaphore>,
    /// Slots held plus waiters: the entry is removed when it reaches 0.
    users: usize,
    /// Waiters.
    queued: usize,
}

/// The result of [`Registry::acquire`].
pub(crate) enum Acquire {
    /// A slot was free.
    Ready(Slot),
    /// Every slot is taken: wait in the queue.
    Queued(Waiter),
    /// Every slot is taken and the queue is full; the key is handed back.
    Full(HostKey),
}

impl Registry {
    pub(crate) fn new(bounds: Bounds, observer: Option<Metrics>) -> Self {
        Registry {
            bounds: Bounds {
                max_per_host: bounds.max_per_host.clamp(1, Semaphore::MAX_PERMITS),
                max_queued: bounds.max_queued,
            },
            observer,
            state: Mutex::new(State::default()),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        }
    }

    pub(crate) fn bounds(&self) -> Bounds {
        self.bounds
    }

    pub(crate) fn observer(&self) -> Option<&Metrics> {
        self.observer.as_ref()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The map is consistent after every statement that touches it, so a
        // panic elsewhere while it was held leaves nothing to repair.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `key`, or a place in its queue.
    pub(crate) fn acquire(self: &Arc<Self>, key: HostKey) -> Acquire {
        let mut state = self.state();
        let State { hosts, spare } = &mut *state;
        let host = hosts.entry(key.clone()).or_insert_with(|| Host {
            semaphore: spare
                .pop()
                .unwrap_or_else(|| Arc::new(Semaphore::new(self.bounds.max_per_host))),
            users: 0,
            queued: 0,
        });
        if let Ok(permit) = host.semaphore.clone().try_acquire_owned() {
            host.users += 1;
            drop(state);
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            return Acquire::Ready(Slot {
                permit: Some(permit),
                key: Some(key),
                registry: self.clone(),
                waited: Duration::ZERO,
            });
        }
        if host.queued >= self.bounds.max_queued {
            if host.users == 0 {
                state.remove(&key, self.bounds.max_per_host);
            }
            drop(state);
            if let Some(m) = &self.observer {
                m.inner.queue_full.fetch_add(1, Ordering::Relaxed);
            }
            return Acquire::Full(key);
        }
        host.users += 1;
        host.queued += 1;
        let semaphore = host.semaphore.clone();
        drop(state);
        self.queued.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.observer {
            m.inner.queue_entered();
        }
        Acquire::Queued(Waiter {
            semaphore,
            key,
            queued: true,
            timed_out: false,
            registry: self.clone(),
            since: Instant::now(),
        })
    }

    /// One user of `key` is gone; forget the host when it was the last.
    fn leave(&self, key: &HostKey, was_queued: bool) {
        let mut state = self.state();
        if let Some(host) = state.hosts.get_mut(key) {
            host.users = host.users.saturating_sub(1);
            if was_queued {
                host.queued = host.queued.saturating_sub(1);
            }
            if host.users == 0 {
                state.remove(key, self.bounds.max_per_host);
            }
        }
    }

    /// Hosts with something in flight or queued.
    pub(crate) fn hosts_tracked(&self) -> usize {
        self.state().hosts.len()
    }

    /// Slots held now, across hosts.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Waiters now, across hosts.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// The hosts, and semaphores of forgotten hosts kept for the next ones: a
/// host that comes and goes with every request costs no allocation.
#[derive(Debug, Default)]
struct State {
    hosts: HashMap<HostKey, Host, BuildKeyHasher>,
    spare: Vec<Arc<Semaphore>>,
}

/// Semaphores kept for reuse.
const SPARE: usize = 64;

impl State {
    /// Forgets `key`, keeps its semaphore if it is whole and unshared, and
    /// gives memory back after a burst of hosts: a map at a quarter of its
    /// capacity is halved (amortised, O(1) per removal).
    fn remove(&mut self, key: &HostKey, max_per_host: usize) {
        if let Some(host) = self.hosts.remove(key) {
            if self.spare.len() < SPARE
                && Arc::strong_count(&host.semaphore) == 1
                && host.semaphore.available_permits() == max_per_host
            {
                self.spare.push(host.semaphore);
            }
        }
        const MIN_CAPACITY: usize = 64;
        let hosts = &mut self.hosts;
        if hosts.capacity() > MIN_CAPACITY && hosts.len() < hosts.capacity() / 4 {
            hosts.shrink_to((hosts.len() * 2).max(MIN_CAPACITY));
        }
    }
}

/// One slot of a host, released when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    key: Option<HostKey>,
    registry: Arc<Registry>,
    waited: Duration,
}

impl Slot {
    /// How long the slot's holder waited in the queue for it.
    pub(crate) fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Give the permit back first: it goes straight to the next waiter,
        // which keeps the host's entry alive.
        drop(self.permit.take());
        self.registry.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(key) = self.key.take() {
            self.registry.leave(&key, false);
        }
    }
}

/// A place in a host's queue. Dropping it leaves the queue.
#[derive(Debug)]
pub(crate) struct Waiter {
    semaphore: Arc<Semaphore>,
    key: HostKey,
    /// Still counted as a waiter of its host.
    queued: bool,
    /// Left the queue because its deadline passed.
    timed_out: bool,
    registry: Arc<Registry>,
    since: Instant,
}

/// Why a waiter got no slot.
#[derive(Debug)]
pub(crate) struct TimedOut {
    pub(crate) key: HostKey,
    pub(crate) waited: Duration,
}

impl Waiter {
    /// Waits for a slot, at most until `deadline`. Cancel-safe: dropping the
    /// future leaves the queue at once.
    pub(crate) async fn wait(mut self, deadline: Option<Instant>) -> Result<Slot, TimedOut> {
        let acquire = self.semaphore.clone().acquire_owned();
        let permit = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire).await.ok(),
            None => Some(acquire.await),
        };
        let waited = self.since.elapsed();
        // The semaphore is never closed, so `acquire_owned` cannot fail;
        // were it to, the request times out rather than panics.
        match permit.and_then(Result::ok) {
            Some(permit) => Ok(self.into_slot(permit, waited)),
            None => {
                self.timed_out = true;
                Err(TimedOut {
                    key: self.key.clone(),
                    waited,
                })
            }
        }
    }

    fn into_slot(mut self, permit: OwnedSemaphorePermit, waited: Duration) -> Slot {
        self.queued = false;
        {
            let mut state = self.registry.state();
            if let Some(host) = state.hosts.get_mut(&self.key) {
                host.queued = host.queued.saturating_sub(1);
            }
        }
        self.registry.queued.fetch_sub(1, Ordering::Relaxed);
        self.registry.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.registry.observer {
            m.inner.queue_left(Some(waited), false);
        }
        // The host's `users` count passes from the waiter to the slot.
        Slot {
            permit: Some(permit),
            key: Some(self.key.clone()),
            registry: self.registry.clone(),
            waited,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.queued {
            self.registry.queued.fetch_sub(1, Ordering::Relaxed);
            if let Some(m) = &self.registry.observer {
                m.inner.queue_left(None, self.timed_out);
            }
            self.registry.leave(&self.key, true);
        }
    }
}
