//! Per-host slots: a count and a FIFO queue of waiters per host, and a map
//! of hosts that holds the hosts with something in flight or queued (and a
//! few idle ones, kept for their next request).
//!
//! A host's count lives in its [`Gate`], one atomic word: while the host
//! has no waiters, a request takes a free slot and gives it back without
//! the registry's lock, having found the gate in its thread's cache
//! (the last hosts it sent to). Queueing, handing slots to waiters, new
//! limits and forgetting hosts take the lock. A slot given back goes
//! straight to the first waiter (FIFO), so a host with waiters always has
//! all its slots taken: no request can pass the queue.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::gate::{Gate, Taken};
use super::observe::{QueueEvent, QueueHook};
use super::policy::{LimitPolicy, Sample};
#[cfg(feature = "hyper-util")]
use crate::conn::{Link, Phase};
use crate::key::{BuildKeyHasher, HostKey, HostMemo, Recent};

/// The bounds a request (or dial) is admitted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Slots per host (at least 1).
    pub(crate) max_per_host: usize,
    /// Waiters per host.
    pub(crate) max_queued: usize,
    /// Requests in flight per host once the host is known to speak HTTP/2
    /// (at least 1); `None` where the protocol changes nothing (a
    /// connector's connection slots).
    pub(crate) max_streams: Option<usize>,
}

impl Bounds {
    /// At least one slot per host.
    pub(crate) fn slots(self) -> usize {
        self.max_per_host.max(1)
    }

    /// Slots of a host that speaks `proto`. A host reached over TLS whose
    /// protocol is not known yet gets one: ALPN may choose HTTP/2 on its
    /// first connection, and every request let through before the first
    /// response would dial a connection of its own.
    fn slots_for(self, proto: Proto, tls: bool) -> usize {
        match (self.max_streams, proto) {
            (None, _) | (Some(_), Proto::Http1) => self.slots(),
            (Some(streams), Proto::Http2) => streams.max(1),
            (Some(_), Proto::Unknown) if tls => 1,
            (Some(_), Proto::Unknown) => self.slots(),
        }
    }
}

/// What a host speaks, from the responses that came from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Proto {
    /// No response yet.
    #[default]
    Unknown,
    /// HTTP/1.x: one request at a time per connection.
    Http1,
    /// HTTP/2 or later: requests multiplex on one connection.
    Http2,
}

impl Proto {
    /// The protocol a response of `version` came over.
    pub(crate) fn of(version: http::Version) -> Proto {
        if version >= http::Version::HTTP_2 {
            Proto::Http2
        } else {
            Proto::Http1
        }
    }
}

/// What an acquirer brings: its bounds, and who is told of queue events.
/// Configuration, kept by each layer or connector (copied on write); the
/// slots live in the [`Registry`] its clones share.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) bounds: Bounds,
    pub(crate) observer: Option<QueueHook>,
    /// `max_per_host` of named hosts, every port and scheme of them.
    pub(crate) overrides: Option<Arc<Overrides>>,
    /// What decides each host's limit below its bounds (`None`: the
    /// bounds themselves, the static policy).
    pub(crate) decider: Option<Arc<dyn LimitPolicy>>,
}

/// Per-host limits of named hosts, by the host part of their key.
#[derive(Clone, Debug, Default)]
pub(crate) struct Overrides(HashMap<Box<str>, usize>);

impl Overrides {
    /// `host` (a name or an IP literal, as in a URI) gets `n` slots. A host
    /// that is no valid URI host matches nothing.
    pub(crate) fn set(&mut self, host: &str, n: usize) {
        let uri = format!("http://{host}/");
        if let Some(key) = uri.parse().ok().as_ref().and_then(HostKey::from_uri) {
            self.0.insert(key.host().into(), n);
        }
    }

    /// `overrides` (shared, copied on write) with `host` at `n` slots.
    pub(crate) fn with(overrides: &mut Option<Arc<Overrides>>, host: &str, n: usize) {
        Arc::make_mut(overrides.get_or_insert_with(Arc::default)).set(host, n);
    }

    fn get(&self, key: &HostKey) -> Option<usize> {
        self.0.get(key.host()).copied()
    }
}

impl Policy {
    /// The bounds that apply to `key`.
    fn bounds_for(&self, key: &HostKey) -> Bounds {
        let mut bounds = self.bounds;
        if let Some(n) = self.overrides.as_ref().and_then(|o| o.get(key)) {
            bounds.max_per_host = n;
        }
        bounds
    }
}

/// Slots per host, shared by every clone of a layer or connector.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
    queued: AtomicUsize,
}

#[derive(Debug)]
struct Host {
    /// Slots taken (by requests, or handed to waiters not yet woken), and
    /// what a request needs to take one without the lock: the bounds of
    /// the last request admitted (clones of a layer share the registry and
    /// may differ), what the host speaks as far as its responses showed,
    /// and the limit these make.
    gate: Arc<HostGate>,
    /// Reached over TLS (`https`).
    tls: bool,
    /// Waiters, first come first served; empty whenever a slot is free.
    waiters: Waiters,
    /// The limit a policy set below the bounds, plus one (0: none; 1: no
    /// slot at all, as a fleet without permits for the host sets).
    cap: u32,
    /// A connector's connections to the host (none for a request limit's
    /// host: its 8 bytes stay empty).
    #[cfg(feature = "hyper-util")]
    conns: Option<Box<Conns>>,
}

/// A host's [`Gate`], and the registry it is of: a request's slot holds
/// the gate alone, and reaches the registry through it only when the slot
/// goes back through the lock (held weakly: a registry gone has nobody to
/// hand a slot to, and its waiters hold it).
#[derive(Debug)]
pub(crate) struct HostGate {
    gate: Gate,
    registry: Weak<Registry>,
}

impl std::ops::Deref for HostGate {
    type Target = Gate;

    fn deref(&self) -> &Gate {
        &self.gate
    }
}

/// A host's waiters: 8 bytes and no allocation until one queues (every
/// tracked host has this; few ever have waiters). A `VecDeque` alone takes
/// 32 bytes of every host's entry.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
struct Waiters(Option<Box<VecDeque<Arc<Grant>>>>);

impl Waiters {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, grant: Arc<Grant>) {
        self.0.get_or_insert_with(Box::default).push_back(grant);
    }

    fn pop_front(&mut self) -> Option<Arc<Grant>> {
        self.0.as_mut()?.pop_front()
    }

    fn remove(&mut self, at: usize) -> Option<Arc<Grant>> {
        self.0.as_mut()?.remove(at)
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Grant>> {
        self.0.iter().flat_map(|q| q.iter())
    }
}

/// A connector's connections to a host.
#[cfg(feature = "hyper-util")]
#[derive(Debug, Default)]
struct Conns {
    /// Its connections (one per slot that has one), to wake when a dial
    /// for another pool key must wait.
    links: Vec<Arc<Link>>,
    /// Idle connections closing (or chosen to close) to make room for a
    /// waiting dial.
    retiring: usize,
    /// Connections chosen to close for a waiting dial that have not yet
    /// looked (counted in `retiring`).
    chosen: Vec<Arc<Link>>,
}

#[cfg(feature = "hyper-util")]
static NO_CONNS: Conns = Conns {
    links: Vec::new(),
    retiring: 0,
    chosen: Vec::new(),
};

/// One waiter's cell: set, under the registry lock, when a slot is handed
/// to it.
#[derive(Debug, Default)]
struct Grant {
    granted: AtomicBool,
    notify: Notify,
    /// For a connector's dial: the pool key it dials for.
    #[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
    pool_key: Option<Arc<str>>,
    /// Dropped from a full queue to make room for a newer dial.
    evicted: AtomicBool,
    /// The host's limit when the slot was handed over (its in flight then,
    /// with this one), for the sample a policy is told of.
    limit: AtomicUsize,
}

impl Grant {
    /// Hands this waiter a slot of a host whose limit is `limit` (its in
    /// flight then, with this slot), and wakes it. Under the registry lock.
    fn hand(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
        self.granted.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// One host's demand on its slots ([`Registry::demand`]).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Clone, Debug)]
pub(crate) struct Demand {
    pub(crate) key: HostKey,
    pub(crate) taken: usize,
    pub(crate) waiting: usize,
    pub(crate) ceiling: usize,
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
    pub(crate) fn new() -> Self {
        Registry::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        #[cfg(test)]
        LOCKS_TAKEN.with(|n| n.set(n.get().saturating_add(1)));
        // The map is consistent after every statement that touches it, so a
        // panic elsewhere while it was held leaves nothing to repair.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `key`, or a place in its queue: without the lock
    /// when this thread knows the host's gate, the host has a free slot
    /// and no waiters, and no policy decides its limit.
    #[inline]
    pub(crate) fn acquire(self: &Arc<Self>, key: HostKey, policy: &Policy) -> Acquire {
        match self.acquire_unlocked(key, policy) {
            Ok(slot) => Acquire::Ready(slot),
            Err(key) => self.acquire_for(key, None, policy),
        }
    }

    /// A slot of `key` taken without the lock, or the key back.
    #[inline]
    fn acquire_unlocked(self: &Arc<Self>, key: HostKey, policy: &Policy) -> Result<Slot, HostKey> {
        if policy.decider.is_some() {
            return Err(key);
        }
        let Some(gate) = cached_gate(self, &key) else {
            return Err(key);
        };
        // Under the bounds the host's limit was published for.
        if gate.slots() != HostSlots::of(policy.bounds_for(&key)).packed() {
            return Err(key);
        }
        match gate.try_take() {
            Some(proto) => {
                // Built whole: a field written after the struct, then the
                // struct moved, makes the move wait for that store.
                Ok(Slot::new(key, None, gate, Duration::ZERO, proto))
            }
            None => Err(key),
        }
    }

    /// [`acquire`](Registry::acquire) for a connector's dial for
    /// `pool_key`. When the dial must wait, the host's idle connections
    /// pooled under another key are woken to retire: the pool will never
    /// hand them to this dial's request, so waiting on them could be for
    /// ever.
    #[cfg(feature = "hyper-util")]
    pub(crate) fn acquire_dial(
        self: &Arc<Self>,
        key: HostKey,
        pool_key: Arc<str>,
        policy: &Policy,
    ) -> Acquire {
        self.acquire_for(key, Some(pool_key), policy)
    }

    fn acquire_for(
        self: &Arc<Self>,
        key: HostKey,
        pool_key: Option<Arc<str>>,
        policy: &Policy,
    ) -> Acquire {
        let bounds = policy.bounds_for(&key);
        let mut guard = self.state();
        let state = &mut *guard;
        let host = match state.hosts.get_mut(&key) {
            Some(host) => host,
            None => state.open(&key, self),
        };
        if host.idle() {
            // New, or kept while idle (see `MAX_IDLE`): taken into use.
            host.ask(policy, &key, bounds);
        }
        let proto = host.proto();
        host.publish_as(HostSlots::of(bounds), proto);
        let limit = host.limit();
        // No slot while others wait: they exist only while every slot is
        // taken.
        let taken = match host.waiters.is_empty() {
            true => host.gate.take_or_close(limit),
            false => Taken::Closed,
        };
        if let Taken::Slot(in_flight) = taken {
            let ceiling = host.ceiling();
            let gate = host.gate.clone();
            drop(guard);
            // Remembered for the requests that may take the next slot
            // without the lock (not a connector's dials, which never do).
            if policy.decider.is_none() && pool_key.is_none() {
                remember_gate(self, &key, &gate);
            }
            // A dial's slot, held by its connection and asked at each of
            // its idle times whether a dial waits, keeps the registry.
            let registry = pool_key.is_some().then(|| self.clone());
            let mut slot = Slot::new(key, registry, gate, Duration::ZERO, proto);
            slot.sampling = Sampling::of(policy.decider.as_ref(), in_flight, ceiling);
            return Acquire::Ready(slot);
        }
        let ceiling = host.ceiling();
        // A connector's queue drops its oldest dial instead: hyper-util
        // leaves a dial that lost the race to a pool checkout running in
        // the background, waiting here for nobody, and the oldest waiter
        // is the likeliest of those.
        if pool_key.is_some() && bounds.max_queued > 0 && host.waiters.len() >= bounds.max_queued {
            if let Some(oldest) = host.waiters.pop_front() {
                oldest.evicted.store(true, Ordering::Release);
                oldest.notify.notify_one();
            }
            if let Some(m) = &policy.observer {
                m.tell(QueueEvent::Full);
            }
        }
        if host.waiters.len() >= bounds.max_queued {
            // No waiter after all: the gate opens again if none waits.
            host.publish();
            drop(guard);
            if let Some(m) = &policy.observer {
                m.tell(QueueEvent::Full);
            }
            return Acquire::Full(key);
        }
        // Counted before the connections' phases are read, and both in one
        // total order (`SeqCst`), as a connection going idle publishes its
        // phase and then reads this count (`Link::publish`,
        // `Slot::dial_waits`): one of the two sees the other. Counted
        // after, a connection could go idle between the two steps, unseen,
        // and see no dial: never chosen nor woken, it would hold its slot
        // while the dial waited for the pool's idle timeout. Under the
        // lock: a connection that sees the count and looks at the waiters
        // finds this one among them.
        self.queued.fetch_add(1, Ordering::SeqCst);
        #[cfg(feature = "hyper-util")]
        let wake = match &pool_key {
            Some(pool_key) => host.choose_retirees(pool_key),
            None => Vec::new(),
        };
        #[cfg(all(test, feature = "hyper-util"))]
        hook::after_choosing();
        let grant = Arc::new(Grant {
            pool_key,
            ..Grant::default()
        });
        host.waiters.push_back(grant.clone());
        host.publish();
        let gate = host.gate.clone();
        drop(guard);
        #[cfg(feature = "hyper-util")]
        for link in wake {
            link.wake();
        }
        if let Some(m) = &policy.observer {
            m.tell(QueueEvent::Entered);
        }
        if let Some(decider) = &policy.decider {
            decider.queued(&key);
        }
        Acquire::Queued(Waiter {
            grant,
            gate,
            key,
            queued: true,
            timed_out: false,
            registry: self.clone(),
            observer: policy.observer.clone(),
            since: Instant::now(),
            decider: policy.decider.clone(),
            ceiling,
        })
    }

    /// A slot of `key` is given back: it goes to the first waiter, or the
    /// host forgets it, and the host itself when it has nothing left.
    fn release(&self, key: &HostKey) {
        let mut state = self.state();
        Self::hand_on(&mut state, key);
    }

    fn hand_on(state: &mut MutexGuard<'_, State>, key: &HostKey) {
        let Some(host) = state.hosts.get_mut(key) else {
            return;
        };
        // A slot goes to the first waiter, unless the host holds more than
        // it may now (its protocol changed).
        let limit = host.limit();
        if host.taken() <= limit {
            if let Some(next) = host.waiters.pop_front() {
                next.hand(limit);
                host.publish();
                return;
            }
        }
        host.gate.sub_taken();
        host.publish();
        if host.idle() {
            state.went_idle(key);
        }
    }

    /// A response showed that `key` speaks `proto`: when that lets more
    /// requests in, waiters get the new slots at once.
    fn learn(&self, key: &HostKey, proto: Proto) {
        let mut state = self.state();
        let Some(host) = state.hosts.get_mut(key) else {
            return;
        };
        if host.proto() == proto {
            return;
        }
        host.publish_as(host.slots(), proto);
        host.admit_waiters();
    }

    /// A policy set `key`'s limit to `limit`: when that lets more requests
    /// in, waiters get the new slots at once; a lower limit takes slots
    /// back as requests end (none is cut).
    pub(crate) fn set_cap(&self, key: &HostKey, limit: usize) {
        let mut state = self.state();
        let Some(host) = state.hosts.get_mut(key) else {
            return;
        };
        host.cap = cap_of(limit);
        host.admit_waiters();
    }

    /// Every tracked host whose name `wanted` accepts: its key, slots taken
    /// and requests waiting, and its ceiling (a policy's bound).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn demand(&self, wanted: impl Fn(&str) -> bool) -> Vec<Demand> {
        let state = self.state();
        state
            .hosts
            .iter()
            .filter(|(key, host)| !host.idle() && wanted(key.host()))
            .map(|(key, host)| Demand {
                key: key.clone(),
                taken: host.taken(),
                waiting: host.waiters.len(),
                ceiling: host.ceiling(),
            })
            .collect()
    }

    /// `close_idle`: every connection of the registry that is idle now is
    /// asked to close (HTTP/1 connections between exchanges, and HTTP/2
    /// ones, which close if no stream is open when they look). Returns how
    /// many were asked.
    #[cfg(feature = "hyper-util")]
    pub(crate) fn close_idle(&self) -> usize {
        let state = self.state();
        let mut asked = 0usize;
        for host in state.hosts.values() {
            for link in &host.conns().links {
                if matches!(link.phase(), Phase::Idle | Phase::Http2) {
                    link.evict();
                    asked = asked.saturating_add(1);
                }
            }
        }
        asked
    }

    /// A connection of `key` pooled under `pool_key` that a request of the
    /// key can take, not chosen to close: an HTTP/1 one idle and reusable
    /// ([`Link::reusable_idle`]), which hyper-util is about to hand back to
    /// its pool, or else a live HTTP/2 one ([`Link::live_http2`]), which its
    /// pool shares.
    #[cfg(feature = "hyper-util")]
    pub(crate) fn reusable(&self, key: &HostKey, pool_key: &Arc<str>) -> Option<Reusable> {
        let state = self.state();
        let host = state.hosts.get(key)?;
        let conns = host.conns();
        let links = conns.links.iter().filter(|l| {
            l.pool_key() == pool_key && !conns.chosen.iter().any(|c| Arc::ptr_eq(c, l))
        });
        let mut http2 = false;
        for link in links {
            if link.reusable_idle() {
                return Some(Reusable::Http1);
            }
            http2 = http2 || link.live_http2();
        }
        http2.then_some(Reusable::Http2)
    }

    /// Hosts with requests in flight or waiting (those kept while idle are
    /// not counted).
    pub(crate) fn hosts_tracked(&self) -> usize {
        let state = self.state();
        state.hosts.values().filter(|host| !host.idle()).count()
    }

    /// Slots held now, across hosts.
    pub(crate) fn in_flight(&self) -> usize {
        let state = self.state();
        state
            .hosts
            .values()
            .fold(0usize, |n, host| n.saturating_add(host.taken()))
    }

    /// Waiters now, across hosts. `SeqCst`: a connection that went idle
    /// reads it to look for a waiting dial (see `acquire_for`); a plain
    /// load on x86.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// A test's hook into a dial's queuing, to force an interleaving.
#[cfg(all(test, feature = "hyper-util"))]
pub(crate) mod hook {
    use std::cell::RefCell;

    thread_local! {
        static AFTER_CHOOSING: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    /// `f` runs (once, on this thread, under the registry's lock) when
    /// the next dial that must wait has chosen the idle connections to
    /// wake.
    pub(crate) fn set_after_choosing(f: impl FnOnce() + 'static) {
        AFTER_CHOOSING.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    pub(super) fn after_choosing() {
        if let Some(f) = AFTER_CHOOSING.with(|h| h.borrow_mut().take()) {
            f();
        }
    }
}

impl crate::conn::Demand for Registry {
    fn waiting(&self, key: &HostKey) -> bool {
        self.state()
            .hosts
            .get(key)
            .is_some_and(|host| !host.waiters.is_empty())
    }
}

/// What [`Registry::reusable`] found.
#[cfg(feature = "hyper-util")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reusable {
    /// An idle HTTP/1 connection, coming back to the pool.
    Http1,
    /// A live HTTP/2 connection, in the pool.
    Http2,
}

/// The hosts with something in flight or queued.
#[derive(Debug)]
struct State {
    hosts: HashMap<HostKey, Host, BuildKeyHasher>,
    /// Hosts in `hosts` kept while idle, for their next request (at most
    /// [`MAX_IDLE`], the longest kept first): their gates let a request
    /// give their last slot back without the lock.
    kept: VecDeque<HostKey>,
    /// What hosts no longer tracked were last seen to speak, where it
    /// changes their limit (HTTP/2, or HTTP/1 over TLS), so that a host that
    /// goes quiet keeps its protocol (at most [`MAX_KNOWN`] hosts).
    known: HostMemo<Proto>,
}

/// Hosts whose protocol is remembered while they have nothing in flight.
const MAX_KNOWN: usize = 4096;

/// Idle hosts kept whole in the map: a host with one request at a time
/// then costs no map insertion and removal per request. Few, so that a
/// burst of hosts leaves little behind.
const MAX_IDLE: usize = 64;

impl Default for State {
    fn default() -> Self {
        State {
            hosts: HashMap::default(),
            kept: VecDeque::new(),
            known: HostMemo::new(MAX_KNOWN),
        }
    }
}

impl Host {
    /// A host taken into use (new, or kept while idle) takes its limit
    /// from the policy, if any.
    fn ask(&mut self, policy: &Policy, key: &HostKey, bounds: Bounds) -> &mut Host {
        if let Some(decider) = &policy.decider {
            let ceiling = bounds.slots_for(self.proto(), self.tls);
            self.cap = cap_of(decider.limit(key, ceiling));
        }
        self
    }

    /// Slots taken now (by requests, or handed to waiters not yet woken).
    fn taken(&self) -> usize {
        self.gate.load().taken()
    }

    /// Nothing in flight and nothing waiting.
    fn idle(&self) -> bool {
        self.taken() == 0 && self.waiters.is_empty()
    }

    /// The bounds of the last request admitted.
    fn slots(&self) -> HostSlots {
        HostSlots::unpacked(self.gate.slots())
    }

    /// What the host speaks, as far as its responses showed.
    fn proto(&self) -> Proto {
        self.gate.load().proto()
    }

    /// Under the lock, after a change of the host's policy limit or
    /// waiters: tells its gate.
    fn publish(&self) {
        self.publish_as(self.slots(), self.proto());
    }

    /// Under the lock: the host's bounds are `slots` and it speaks
    /// `proto` now; its gate is told, with the limit they make.
    fn publish_as(&self, slots: HostSlots, proto: Proto) {
        let limit = self.limit_below(slots.for_proto(proto, self.tls));
        let waiters = !self.waiters.is_empty();
        self.gate.publish(slots.packed(), limit, proto, waiters);
    }

    /// Chooses the idle connections to close for one more dial for
    /// `pool_key` that must wait, and returns them to be woken: the least
    /// recently used first, as many as dials waiting (with a pool key)
    /// outnumber connections already retiring. Only connections pooled
    /// under another key (the pool would hand one of `pool_key`'s own to
    /// the dial's request instead) that have completed an exchange (a
    /// fresh one may be about to carry its first request). A chosen
    /// connection closes when it next looks, if a dial still waits then
    /// ([`Slot::should_retire`]).
    #[cfg(feature = "hyper-util")]
    fn choose_retirees(&mut self, pool_key: &Arc<str>) -> Vec<Arc<Link>> {
        self.forget_busy_choices();
        let dials = self
            .waiters
            .iter()
            .filter(|g| g.pool_key.is_some())
            .count()
            .saturating_add(1);
        let conns = self.conns();
        let wanted = dials.saturating_sub(conns.retiring);
        if wanted == 0 {
            return Vec::new();
        }
        let chosen = &conns.chosen;
        let now = Instant::now();
        let (mut idle, fresh): (Vec<&Arc<Link>>, Vec<&Arc<Link>>) = conns
            .links
            .iter()
            .filter(|l| {
                l.pool_key() != pool_key
                    && l.phase_for_dial() == Phase::Idle
                    && !chosen.iter().any(|c| Arc::ptr_eq(c, l))
            })
            .partition(|l| l.may_retire(now));
        if idle.len() > wanted {
            idle.select_nth_unstable_by_key(wanted - 1, |l| l.used());
            idle.truncate(wanted);
        }
        let idle: Vec<Arc<Link>> = idle.into_iter().cloned().collect();
        let fresh: Vec<Arc<Link>> = fresh.into_iter().cloned().collect();
        let conns = self.conns_mut();
        conns.retiring = conns.retiring.saturating_add(idle.len());
        conns.chosen.extend(idle.iter().cloned());
        // Fresh connections are woken too, unchosen: each sets a timer for
        // the end of its grace and then looks by itself.
        idle.into_iter().chain(fresh).collect()
    }

    /// Forgets the chosen connections that are busy again (the pool handed
    /// them a request before they looked): a busy connection that the
    /// pool keeps busy might never look while idle, and the dial it was
    /// chosen for would wait on it. Another idle connection, chosen or
    /// looking by itself, makes room instead.
    #[cfg(feature = "hyper-util")]
    fn forget_busy_choices(&mut self) {
        let Some(conns) = self.conns.as_deref_mut() else {
            return;
        };
        let before = conns.chosen.len();
        conns.chosen.retain(|l| l.phase() == Phase::Idle);
        let forgotten = before.saturating_sub(conns.chosen.len());
        conns.retiring = conns.retiring.saturating_sub(forgotten);
    }

    /// The host's connections (none yet: empty).
    #[cfg(feature = "hyper-util")]
    fn conns(&self) -> &Conns {
        self.conns.as_deref().unwrap_or(&NO_CONNS)
    }

    #[cfg(feature = "hyper-util")]
    fn conns_mut(&mut self) -> &mut Conns {
        self.conns.get_or_insert_with(Box::default)
    }

    /// Takes `link` off the host's connections.
    #[cfg(feature = "hyper-util")]
    fn detach(&mut self, link: &Arc<Link>) {
        if let Some(conns) = self.conns.as_deref_mut() {
            if let Some(at) = conns.links.iter().position(|l| Arc::ptr_eq(l, link)) {
                conns.links.swap_remove(at);
            }
        }
    }

    /// One connection less is retiring.
    #[cfg(feature = "hyper-util")]
    fn retired_one(&mut self) {
        if let Some(conns) = self.conns.as_deref_mut() {
            conns.retiring = conns.retiring.saturating_sub(1);
        }
    }

    /// Takes `link` off the chosen list; whether it was on it.
    #[cfg(feature = "hyper-util")]
    fn unchoose(&mut self, link: &Arc<Link>) -> bool {
        let Some(conns) = self.conns.as_deref_mut() else {
            return false;
        };
        match conns.chosen.iter().position(|c| Arc::ptr_eq(c, link)) {
            Some(at) => {
                conns.chosen.swap_remove(at);
                true
            }
            None => false,
        }
    }

    /// Hands the slots the host's limit allows beyond those taken to its
    /// first waiters (its limit rose: its protocol, or its policy).
    fn admit_waiters(&mut self) {
        let limit = self.limit();
        while self.taken() < limit {
            let Some(next) = self.waiters.pop_front() else {
                break;
            };
            self.gate.add_taken();
            next.hand(limit);
        }
        self.publish();
    }

    /// Slots the host may hold now: its bounds, and below them its
    /// policy's limit.
    fn limit(&self) -> usize {
        self.limit_below(self.ceiling())
    }

    /// `ceiling`, or the policy's limit below it.
    fn limit_below(&self, ceiling: usize) -> usize {
        match self.cap {
            0 => ceiling,
            cap => ceiling.min(usize::try_from(cap - 1).unwrap_or(usize::MAX)),
        }
    }

    /// Slots the host's bounds allow (a policy's ceiling).
    fn ceiling(&self) -> usize {
        self.slots().for_proto(self.proto(), self.tls)
    }
}

/// A policy's limit `n` (0 included) as a host's `cap`.
fn cap_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX).saturating_add(1)
}

/// A host's slot counts of [`Bounds`], kept small: they live in every
/// tracked host. Counts past `u32::MAX` are taken as `u32::MAX`.
#[derive(Clone, Copy, Debug, Default)]
struct HostSlots {
    per_host: u32,
    /// 0: the protocol changes nothing.
    streams: u32,
}

impl HostSlots {
    fn of(bounds: Bounds) -> Self {
        let small = |n: usize| u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        HostSlots {
            per_host: small(bounds.max_per_host),
            streams: bounds.max_streams.map_or(0, small),
        }
    }

    /// Both counts in one word, as a [`Gate`] keeps them.
    fn packed(self) -> u64 {
        (u64::from(self.per_host) << 32) | u64::from(self.streams)
    }

    /// The counts of a [`packed`](HostSlots::packed) word.
    fn unpacked(word: u64) -> Self {
        HostSlots {
            per_host: u32::try_from(word >> 32).unwrap_or(u32::MAX),
            streams: u32::try_from(word & 0xFFFF_FFFF).unwrap_or(u32::MAX),
        }
    }

    fn for_proto(self, proto: Proto, tls: bool) -> usize {
        let wide = |n: u32| usize::try_from(n.max(1)).unwrap_or(usize::MAX);
        let bounds = Bounds {
            max_per_host: wide(self.per_host),
            max_queued: 0,
            max_streams: (self.streams > 0).then(|| wide(self.streams)),
        };
        bounds.slots_for(proto, tls)
    }
}

impl State {
    /// Starts tracking `key`, with the protocol it was last seen to speak.
    fn open(&mut self, key: &HostKey, registry: &Arc<Registry>) -> &mut Host {
        let proto = self.known.remove(key).unwrap_or_default();
        let tls = key.scheme() == "https";
        self.hosts.entry(key.clone()).or_insert_with(|| {
            let host = Host {
                tls,
                gate: Arc::new(HostGate {
                    gate: Gate::default(),
                    registry: Arc::downgrade(registry),
                }),
                waiters: Waiters::default(),
                cap: 0,
                #[cfg(feature = "hyper-util")]
                conns: None,
            };
            host.publish_as(HostSlots::default(), proto);
            host
        })
    }

    /// `key`'s host has just gone idle (its last slot given back through
    /// the lock): it is kept for its next request, and the host kept
    /// longest gives way if [`MAX_IDLE`] are kept already. A host with one
    /// request at a time would otherwise be made and forgotten for every
    /// request, and a kept host's last slot is given back without the
    /// lock.
    fn went_idle(&mut self, key: &HostKey) {
        let Some(host) = self.hosts.get(key) else {
            return;
        };
        if host.gate.load().kept() {
            return;
        }
        host.gate.set_kept(true);
        if self.kept.len() >= MAX_IDLE {
            if let Some(oldest) = self.kept.pop_front() {
                self.unkeep(&oldest);
            }
        }
        self.kept.push_back(key.clone());
    }

    /// `key`'s host is no longer kept while idle: forgotten if idle now,
    /// or else when it next goes idle (its last slot then goes through the
    /// lock).
    fn unkeep(&mut self, key: &HostKey) {
        let Some(host) = self.hosts.get(key) else {
            return;
        };
        host.gate.set_kept(false);
        // Retired in the same step that finds nothing taken, so that no
        // request takes a slot of a host no longer tracked.
        if host.waiters.is_empty() && host.gate.retire() {
            self.remove(key);
        }
    }

    /// Forgets `key` (retired: idle, and its gate closed for good), and
    /// gives memory back after a burst of hosts: a map at a quarter of its
    /// capacity is halved (amortised, O(1) per removal).
    fn remove(&mut self, key: &HostKey) {
        if let Some(host) = self.hosts.remove(key) {
            let proto = host.proto();
            let matters = match proto {
                Proto::Unknown => false,
                Proto::Http1 => host.tls,
                Proto::Http2 => true,
            };
            if matters {
                // A host forgotten when full costs one held burst.
                self.known.insert(key, proto);
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
    key: HostKey,
    /// The registry, held by a dial's slot; a request's slot reaches it
    /// through its gate (one reference count less to change a request).
    registry: Option<Arc<Registry>>,
    /// The host's gate (the host stays tracked while the slot is held).
    gate: Arc<HostGate>,
    waited: Duration,
    /// A slot of the cap across hosts, given back with this one.
    total: Option<Box<Slot>>,
    /// The host's protocol when the slot was taken.
    proto: Proto,
    /// The start of the sample a policy is told of (only under a policy
    /// that reads samples).
    sampling: Option<Box<Sampling>>,
    /// The connection holding the slot (a connector's slot).
    #[cfg(feature = "hyper-util")]
    link: Option<Arc<Link>>,
    /// The connection is closing to make room for a waiting dial.
    #[cfg(feature = "hyper-util")]
    retiring: bool,
}

impl Slot {
    fn new(
        key: HostKey,
        registry: Option<Arc<Registry>>,
        gate: Arc<HostGate>,
        waited: Duration,
        proto: Proto,
    ) -> Self {
        Slot {
            key,
            registry,
            gate,
            waited,
            total: None,
            proto,
            sampling: None,
            #[cfg(feature = "hyper-util")]
            link: None,
            #[cfg(feature = "hyper-util")]
            retiring: false,
        }
    }

    /// The host the slot is of.
    pub(crate) fn key(&self) -> &HostKey {
        &self.key
    }

    /// The slot's registry, unless it is gone (then nobody waits for the
    /// slot: waiters hold the registry).
    fn registry(&self) -> Option<std::borrow::Cow<'_, Arc<Registry>>> {
        match &self.registry {
            Some(registry) => Some(std::borrow::Cow::Borrowed(registry)),
            None => self.gate.registry.upgrade().map(std::borrow::Cow::Owned),
        }
    }

    /// How long the slot's holder waited in the queues for it (its host's
    /// and the cap's across hosts).
    #[inline]
    pub(crate) fn waited(&self) -> Duration {
        let total = self.total.as_ref().map_or(Duration::ZERO, |t| t.waited);
        self.waited.saturating_add(total)
    }

    /// Holds `total`, a slot of the cap across hosts, until this one is
    /// given back.
    pub(crate) fn with_total(mut self, total: Slot) -> Slot {
        self.total = Some(Box::new(total));
        self
    }

    /// The response to the slot's request came over `version`: the host's
    /// limit follows its protocol. Takes the lock only when the protocol
    /// is news to this slot (inlined: most responses are not news).
    #[inline]
    pub(crate) fn learn(&mut self, version: http::Version) {
        let proto = Proto::of(version);
        if proto != self.proto {
            self.learn_news(proto);
        }
    }

    #[cold]
    fn learn_news(&mut self, proto: Proto) {
        self.proto = proto;
        if let Some(registry) = self.registry() {
            registry.learn(&self.key, proto);
        }
    }

    /// The slot's request got its response head: the host's policy, if it
    /// reads samples, is told how long the request took since it got the
    /// slot, and its answer applies at once. `dialed`: whether the request
    /// paid for a new connection (asked only for a sample). Inlined down
    /// to the look for a sampling policy: most slots have none.
    #[inline]
    pub(crate) fn sample(
        &mut self,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        dialed: impl FnOnce() -> bool,
    ) {
        if let Some(start) = self.sampling.take() {
            self.take_sample(*start, status, headers, dialed());
        }
    }

    fn take_sample(
        &mut self,
        start: Sampling,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        dialed: bool,
    ) {
        let key = &self.key;
        let (overloaded, retry_after) = Sample::read(status, headers);
        let sample = Sample {
            latency: start.granted.elapsed(),
            in_flight: start.in_flight,
            dialed,
            overloaded,
            retry_after,
        };
        if let Some(limit) = start.decider.sample(key, &sample, start.ceiling) {
            if let Some(registry) = self.registry() {
                registry.set_cap(key, limit);
            }
        }
    }

    /// The slot is held by the connection `link`: it is woken when a dial
    /// for another pool key must wait.
    #[cfg(feature = "hyper-util")]
    pub(crate) fn attach(&mut self, link: Arc<Link>) {
        if let Some(total) = self.total.as_mut() {
            total.attach(link.clone());
        }
        if let Some(registry) = self.registry() {
            let mut state = registry.state();
            if let Some(host) = state.hosts.get_mut(&self.key) {
                host.conns_mut().links.push(link.clone());
            }
        }
        self.link = Some(link);
    }

    /// Whether the idle connection holding this slot should close to make
    /// room for a dial that waits for another pool key: the pool would
    /// never hand this connection to that dial's request. At most one
    /// connection retires per such dial.
    ///
    /// With a cap across hosts, the same holds for a dial of any host that
    /// waits for the cap.
    #[cfg(feature = "hyper-util")]
    pub(crate) fn should_retire(&mut self) -> bool {
        if self.retiring || self.total.as_ref().is_some_and(|t| t.retiring) {
            return true;
        }
        self.retire_here() || self.total.as_mut().is_some_and(|t| t.retire_here())
    }

    /// Whether the connection holding this slot (or the cap's) was chosen
    /// to close for a waiting dial.
    #[cfg(feature = "hyper-util")]
    pub(crate) fn retiring(&self) -> bool {
        self.retiring || self.total.as_ref().is_some_and(|t| t.retiring)
    }

    /// Whether a dial waits in this slot's registry or the cap's.
    #[cfg(feature = "hyper-util")]
    pub(crate) fn dial_waits(&self) -> bool {
        self.queued_here() > 0 || self.total.as_deref().is_some_and(|t| t.queued_here() > 0)
    }

    /// Dials waiting in this slot's registry: one load for a dial's slot,
    /// which holds its registry.
    #[cfg(feature = "hyper-util")]
    #[inline]
    fn queued_here(&self) -> usize {
        self.registry().map_or(0, |r| r.queued())
    }

    /// [`should_retire`](Slot::should_retire) for this slot's registry.
    #[cfg(feature = "hyper-util")]
    fn retire_here(&mut self) -> bool {
        // One load when no dial waits: the common case.
        if self.queued_here() == 0 {
            return false;
        }
        let Some(registry) = self.registry().map(std::borrow::Cow::into_owned) else {
            return false;
        };
        let (key, Some(link)) = (&self.key, &self.link) else {
            return false;
        };
        let mut state = registry.state();
        let Some(host) = state.hosts.get_mut(key) else {
            return false;
        };
        let foreign = host
            .waiters
            .iter()
            .filter(|g| g.pool_key.as_ref().is_some_and(|k| k != link.pool_key()))
            .count();
        if host.unchoose(link) {
            // Chosen (and counted) when the dial queued: it retires if a
            // dial it can make room for still waits.
            if foreign > 0 {
                self.retiring = true;
            } else {
                host.retired_one();
            }
        } else if foreign > {
            host.forget_busy_choices();
            host.conns().retiring
        } {
            // A dial waits that no idle connection was there for when it
            // queued: this one, idle now, makes room.
            let conns = host.conns_mut();
            conns.retiring = conns.retiring.saturating_add(1);
            self.retiring = true;
        }
        if self.retiring {
            // Leaving: never chosen again (which would count it twice).
            host.detach(link);
        }
        self.retiring
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A connection's slot has its link to detach under the lock.
        #[cfg(feature = "hyper-util")]
        let linked = self.link.is_some();
        #[cfg(not(feature = "hyper-util"))]
        let linked = false;
        if !linked && self.gate.try_give_back() {
            return;
        }
        let Some(registry) = self.registry().map(std::borrow::Cow::into_owned) else {
            return;
        };
        let key = &self.key;
        let mut state = registry.state();
        #[cfg(feature = "hyper-util")]
        if let Some(link) = self.link.take() {
            if let Some(host) = state.hosts.get_mut(key) {
                host.detach(&link);
                if host.unchoose(&link) || self.retiring {
                    host.retired_one();
                }
            }
        }
        Registry::hand_on(&mut state, key);
    }
}

/// A place in a host's queue. Dropping it leaves the queue.
#[derive(Debug)]
pub(crate) struct Waiter {
    grant: Arc<Grant>,
    /// The host's gate (the host stays tracked while it has waiters).
    gate: Arc<HostGate>,
    key: HostKey,
    /// Still counted as a waiter of its host.
    queued: bool,
    /// Left the queue because its deadline passed.
    timed_out: bool,
    registry: Arc<Registry>,
    observer: Option<QueueHook>,
    since: Instant,
    /// The policy the slot's sample goes to.
    decider: Option<Arc<dyn LimitPolicy>>,
    /// The host's ceiling when it queued.
    ceiling: usize,
}

/// Where a sample for a host's policy starts.
struct Sampling {
    decider: Arc<dyn LimitPolicy>,
    granted: Instant,
    in_flight: usize,
    ceiling: usize,
}

impl std::fmt::Debug for Sampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampling")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Sampling {
    /// A sample that starts now, under a policy (none: nothing to tell,
    /// and no clock read).
    fn of(
        decider: Option<&Arc<dyn LimitPolicy>>,
        in_flight: usize,
        ceiling: usize,
    ) -> Option<Box<Self>> {
        let decider = decider.filter(|d| d.wants_samples())?;
        Some(Box::new(Sampling {
            decider: decider.clone(),
            granted: Instant::now(),
            in_flight,
            ceiling,
        }))
    }
}

/// Why a waiter got no slot.
#[derive(Debug)]
pub(crate) struct TimedOut {
    pub(crate) key: HostKey,
    pub(crate) waited: Duration,
    /// Dropped from a full queue (or found the queue full), not timed out.
    pub(crate) evicted: bool,
    /// What the host's policy says of why it had no slot (a fleet whose
    /// budget is unavailable), told instead of a queue timeout.
    pub(crate) refusal: Option<crate::BoxError>,
}

impl TimedOut {
    /// A full queue met by a request for `key`.
    pub(crate) fn full(key: HostKey) -> Self {
        TimedOut {
            key,
            waited: Duration::ZERO,
            evicted: true,
            refusal: None,
        }
    }

    /// The same, told of the request's host rather than of the queue's key
    /// (the cap across hosts has a key of its own).
    pub(crate) fn for_host(self, key: HostKey) -> Self {
        TimedOut { key, ..self }
    }
}

impl Waiter {
    /// Waits for a slot, at most until `deadline`. Cancel-safe: dropping the
    /// future leaves the queue at once (or passes on a slot handed to it in
    /// the meantime).
    ///
    /// Without a timer on the runtime, the deadline is not enforced.
    pub(crate) async fn wait(mut self, deadline: Option<Instant>) -> Result<Slot, TimedOut> {
        let grant = self.grant.clone();
        let granted = async move {
            // `notify_one` keeps a permit when no one waits yet: no wake-up
            // is lost between the check and the wait.
            while !grant.granted.load(Ordering::Acquire) {
                if grant.evicted.load(Ordering::Acquire) {
                    return false;
                }
                grant.notify.notified().await;
            }
            true
        };
        let mut granted = std::pin::pin!(granted);
        let mut sleep = std::pin::pin!(deadline.and_then(crate::timer::sleep_until));
        let got = std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(got) = granted.as_mut().poll(cx) {
                return std::task::Poll::Ready(got);
            }
            match sleep.as_mut().as_pin_mut().map(|s| s.poll(cx)) {
                Some(std::task::Poll::Ready(())) => std::task::Poll::Ready(false),
                _ => std::task::Poll::Pending,
            }
        })
        .await;
        let waited = self.since.elapsed();
        if got {
            Ok(self.into_slot(waited))
        } else {
            // Dropping `self` leaves the queue, or hands on a slot granted
            // just as the deadline passed.
            let evicted = self.grant.evicted.load(Ordering::Acquire);
            self.timed_out = !evicted;
            let decider = self.decider.as_ref().filter(|_| !evicted);
            if let Some(decider) = decider {
                decider.waited(&self.key, waited);
            }
            Err(TimedOut {
                key: self.key.clone(),
                waited,
                evicted,
                refusal: decider.and_then(|d| d.refusal(&self.key)),
            })
        }
    }

    /// The host the waiter waits for.
    pub(crate) fn key(&self) -> &HostKey {
        &self.key
    }

    fn into_slot(mut self, waited: Duration) -> Slot {
        // The host counted the slot as taken when it granted it.
        self.queued = false;
        self.registry.queued.fetch_sub(1, Ordering::Relaxed);
        if let Some(m) = &self.observer {
            m.tell(QueueEvent::Admitted { waited });
        }
        if let Some(decider) = &self.decider {
            decider.waited(&self.key, waited);
        }
        // A dial's slot keeps the registry (see `acquire_for`).
        let registry = self.grant.pool_key.is_some().then(|| self.registry.clone());
        let mut slot = Slot::new(
            self.key.clone(),
            registry,
            self.gate.clone(),
            waited,
            Proto::Unknown,
        );
        // Handed on a full host: its in flight was its limit.
        let in_flight = self.grant.limit.load(Ordering::Relaxed);
        slot.sampling = Sampling::of(self.decider.as_ref(), in_flight, self.ceiling);
        slot
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        self.registry.queued.fetch_sub(1, Ordering::Relaxed);
        if let Some(m) = &self.observer {
            let waited = self.since.elapsed();
            m.tell(if self.timed_out {
                QueueEvent::TimedOut { waited }
            } else {
                QueueEvent::Cancelled { waited }
            });
        }
        let registry = &self.registry;
        let mut state = registry.state();
        // Granted (under this lock) but not taken: hand the slot on.
        if self.grant.granted.load(Ordering::Acquire) {
            drop(state);
            registry.release(&self.key);
            return;
        }
        if let Some(host) = state.hosts.get_mut(&self.key) {
            let at = host
                .waiters
                .iter()
                .position(|g| Arc::ptr_eq(g, &self.grant));
            if let Some(at) = at {
                host.waiters.remove(at);
            }
            // The gate opens again once no one waits.
            host.publish();
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Lock sections this thread entered, for the tests of the lock-free
    /// path.
    pub(crate) static LOCKS_TAKEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The gates a thread took slots of last, by registry and host: a request
/// finds its host's gate here without the lock. A cached gate of a host
/// since forgotten is marked so, and sends its request to the lock.
type Gates = Recent<Cached, CACHED_GATES>;

struct Cached {
    key: HostKey,
    /// The gate, which holds its registry weakly (so the registry's
    /// address stays its own while the entry is kept).
    gate: Arc<HostGate>,
}

/// Gates remembered per thread.
const CACHED_GATES: usize = 4;

thread_local! {
    static GATES: RefCell<Gates> = const { RefCell::new(Gates::new()) };
}

impl Cached {
    fn is(&self, registry: &Arc<Registry>, key: &HostKey) -> bool {
        std::ptr::eq(self.gate.registry.as_ptr(), Arc::as_ptr(registry)) && self.key == *key
    }
}

/// The gate of `key` in `registry`, if this thread remembers it.
#[inline]
fn cached_gate(registry: &Arc<Registry>, key: &HostKey) -> Option<Arc<HostGate>> {
    GATES
        .try_with(|gates| {
            let gates = gates.try_borrow().ok()?;
            gates.find(|c| c.is(registry, key)).map(|c| c.gate.clone())
        })
        .ok()
        .flatten()
}

/// Remembers `gate` as `key`'s in `registry` on this thread.
fn remember_gate(registry: &Arc<Registry>, key: &HostKey, gate: &Arc<HostGate>) {
    let _ = GATES.try_with(|gates| {
        let Ok(mut gates) = gates.try_borrow_mut() else {
            return;
        };
        let remembered = gates.find(|c| c.is(registry, key) && Arc::ptr_eq(&c.gate, gate));
        if remembered.is_some() {
            return;
        }
        let entry = Cached {
            key: key.clone(),
            gate: gate.clone(),
        };
        // The entry it replaces is dropped after the borrow ends.
        let old = gates.put(entry, |c| c.is(registry, key));
        drop(gates);
        drop(old);
    });
}
