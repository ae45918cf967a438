//! A host's slot count in one atomic word, so that a request can take a
//! slot and give it back without the registry's lock.
//!
//! The word holds the slots taken, the host's limit and protocol as the
//! registry last published them, and three flags. A request takes a slot
//! by compare-and-swap while the host has no waiters and a slot is free
//! ([`Gate::try_take`]), and gives it back the same way while no waiter
//! could want it and the host stays tracked ([`Gate::try_give_back`]).
//! Everything else — queueing, handing a slot to a waiter, a new limit or
//! protocol, forgetting the host — happens under the registry's lock,
//! which changes the word by compare-and-swap as well
//! ([`Gate::update`]), so that it never loses a concurrent lock-free
//! step. Once [`WAITERS`] is set, only the lock's holder changes the
//! word: a slot given back goes to the first waiter, as with the lock
//! alone (a host with waiters has every slot taken).

use std::sync::atomic::{AtomicU64, Ordering};

use super::registry::Proto;

/// Bits of the slots taken.
const TAKEN: u64 = 0xFFFF_FFFF;
/// Where the limit starts, and its width: a limit past [`MAX_LIMIT`] is
/// published as `MAX_LIMIT` (the lock-free path stops there, the locked
/// one goes on to the real limit).
const LIMIT_SHIFT: u32 = 32;
const MAX_LIMIT: u64 = (1 << 26) - 1;
/// Where the protocol is (two bits).
const PROTO_SHIFT: u32 = 58;
/// The host has waiters (or the lock's holder is about to queue one):
/// every change goes through the lock.
const WAITERS: u64 = 1 << 60;
/// The host is one of the few kept while idle: a slot that leaves it with
/// none taken may be given back without the lock.
const KEPT: u64 = 1 << 61;
/// The host is no longer tracked: a request that finds this gate goes to
/// the lock, and finds or makes the host's current one.
const GONE: u64 = 1 << 62;

/// A host's slot count, limit, protocol and flags; see the module docs.
/// A new gate has a limit of 0: every request takes the lock until the
/// registry publishes the host's.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    word: AtomicU64,
    /// The bounds (`max_per_host`, `max_streams`) the published limit was
    /// worked out from, packed: a request under other bounds (a clone of a
    /// layer may differ) takes the lock.
    slots: AtomicU64,
}

/// A snapshot of a gate's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word(u64);

impl Word {
    /// Slots taken.
    pub(crate) fn taken(self) -> usize {
        usize::try_from(self.0 & TAKEN).unwrap_or(usize::MAX)
    }

    fn limit(self) -> u64 {
        (self.0 >> LIMIT_SHIFT) & MAX_LIMIT
    }

    /// The host's protocol as last published.
    pub(crate) fn proto(self) -> Proto {
        match (self.0 >> PROTO_SHIFT) & 0b11 {
            1 => Proto::Http1,
            2 => Proto::Http2,
            _ => Proto::Unknown,
        }
    }

    /// Whether the host is kept while idle.
    pub(crate) fn kept(self) -> bool {
        self.0 & KEPT != 0
    }

    #[cfg(test)]
    fn gone(self) -> bool {
        self.0 & GONE != 0
    }

    fn with_taken(self, taken: u64) -> Word {
        Word((self.0 & !TAKEN) | (taken & TAKEN))
    }

    /// The same word with `limit`, `proto` and the flags given.
    fn published(self, limit: usize, proto: Proto, waiters: bool) -> Word {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX).min(MAX_LIMIT);
        let proto: u64 = match proto {
            Proto::Unknown => 0,
            Proto::Http1 => 1,
            Proto::Http2 => 2,
        };
        let kept_and_gone = self.0 & (KEPT | GONE);
        let waiters = if waiters { WAITERS } else { 0 };
        Word(
            (self.0 & TAKEN)
                | (limit << LIMIT_SHIFT)
                | (proto << PROTO_SHIFT)
                | waiters
                | kept_and_gone,
        )
    }

    fn with(self, flag: u64, on: bool) -> Word {
        if on {
            Word(self.0 | flag)
        } else {
            Word(self.0 & !flag)
        }
    }
}

/// What [`Gate::take_or_close`] did.
pub(crate) enum Taken {
    /// A slot: the host's slots taken, with this one.
    Slot(usize),
    /// No slot was free: the gate is closed to the lock-free path until
    /// the lock's holder publishes again.
    Closed,
}

impl Gate {
    /// The word now.
    pub(crate) fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    /// The packed bounds the limit was published for.
    pub(crate) fn slots(&self) -> u64 {
        self.slots.load(Ordering::Relaxed)
    }

    /// Takes a slot without the lock: the host's protocol as published,
    /// or `None` when the lock must decide (waiters, no free slot below
    /// the published limit, or the host no longer tracked).
    #[inline]
    pub(crate) fn try_take(&self) -> Option<Proto> {
        let mut now = self.word.load(Ordering::Relaxed);
        loop {
            let word = Word(now);
            if now & (WAITERS | GONE) != 0 || (now & TAKEN) >= word.limit() {
                return None;
            }
            // `taken < limit <= MAX_LIMIT`: the add stays in its bits.
            match self.word.compare_exchange_weak(
                now,
                now.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(word.proto()),
                Err(seen) => now = seen,
            }
        }
    }

    /// Gives a slot back without the lock: `false` when the lock must do
    /// it (waiters to hand it to, or the last slot of a host not kept
    /// while idle, which the registry may forget).
    #[inline]
    pub(crate) fn try_give_back(&self) -> bool {
        let mut now = self.word.load(Ordering::Relaxed);
        loop {
            let taken = now & TAKEN;
            let last = taken <= 1 && now & KEPT == 0;
            if now & (WAITERS | GONE) != 0 || taken == 0 || last {
                return false;
            }
            match self.word.compare_exchange_weak(
                now,
                now.wrapping_sub(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    /// Under the registry's lock: applies `change` to the word, again if
    /// a lock-free step came between; returns the new word.
    fn update(&self, mut change: impl FnMut(Word) -> Word) -> Word {
        let mut now = self.word.load(Ordering::Acquire);
        loop {
            let new = change(Word(now));
            match self
                .word
                .compare_exchange_weak(now, new.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return new,
                Err(seen) => now = seen,
            }
        }
    }

    /// Under the lock: publishes the host's limit, protocol and whether it
    /// has waiters, and the bounds they come from.
    pub(crate) fn publish(&self, slots: u64, limit: usize, proto: Proto, waiters: bool) {
        self.slots.store(slots, Ordering::Relaxed);
        self.update(|w| w.published(limit, proto, waiters));
    }

    /// Under the lock: takes a slot if fewer than `limit` are taken
    /// (the real limit, not the published one), or else closes the gate
    /// to the lock-free path, in one step, so that no slot given back
    /// without the lock in between is missed.
    pub(crate) fn take_or_close(&self, limit: usize) -> Taken {
        let mut taken = None;
        self.update(|w| {
            if w.taken() < limit && w.0 & TAKEN < TAKEN {
                taken = Some(w.taken().saturating_add(1));
                w.with_taken((w.0 & TAKEN).saturating_add(1))
            } else {
                taken = None;
                w.with(WAITERS, true)
            }
        });
        match taken {
            Some(n) => Taken::Slot(n),
            None => Taken::Closed,
        }
    }

    /// Under the lock: one slot more taken (handed to a waiter).
    pub(crate) fn add_taken(&self) {
        self.update(|w| w.with_taken((w.0 & TAKEN).saturating_add(1).min(TAKEN)));
    }

    /// Under the lock: one slot fewer taken; returns the new word.
    pub(crate) fn sub_taken(&self) -> Word {
        self.update(|w| w.with_taken((w.0 & TAKEN).saturating_sub(1)))
    }

    /// Under the lock: whether the host is kept while idle.
    pub(crate) fn set_kept(&self, kept: bool) {
        self.update(|w| w.with(KEPT, kept));
    }

    /// Under the lock: marks the host no longer tracked, if it has no slot
    /// taken and no waiter now; whether it did.
    pub(crate) fn retire(&self) -> bool {
        let mut retired = false;
        self.update(|w| {
            retired = w.taken() == 0 && w.0 & WAITERS == 0;
            w.with(GONE, retired)
        });
        retired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limit: usize) -> Gate {
        let gate = Gate::default();
        gate.publish(7, limit, Proto::Http1, false);
        gate
    }

    #[test]
    fn a_new_gate_sends_every_request_to_the_lock() {
        let gate = Gate::default();
        assert_eq!(gate.try_take(), None);
        assert!(!gate.try_give_back());
    }

    #[test]
    fn slots_are_taken_up_to_the_published_limit_and_no_further() {
        let gate = gate(3);
        assert_eq!(gate.slots(), 7);
        for n in 1..=3 {
            assert_eq!(gate.try_take(), Some(Proto::Http1));
            assert_eq!(gate.load().taken(), n);
        }
        assert_eq!(gate.try_take(), None);
        assert_eq!(gate.load().taken(), 3);
        // A lower limit (a protocol learnt, a policy's cap) stops the
        // lock-free path below the slots already taken.
        gate.publish(7, 1, Proto::Http2, false);
        assert_eq!(gate.try_take(), None);
        assert_eq!(gate.load().proto(), Proto::Http2);
        assert_eq!(gate.load().taken(), 3);
    }

    #[test]
    fn the_last_slot_of_a_host_not_kept_goes_back_through_the_lock() {
        let gate = gate(3);
        assert!(gate.try_take().is_some());
        assert!(gate.try_take().is_some());
        assert!(gate.try_give_back());
        assert!(!gate.try_give_back(), "the registry may forget the host");
        assert_eq!(gate.load().taken(), 1);
        gate.set_kept(true);
        assert!(gate.try_give_back());
        assert_eq!(gate.load().taken(), 0);
        assert!(!gate.try_give_back(), "nothing taken");
        assert_eq!(gate.load().taken(), 0);
    }

    #[test]
    fn a_full_host_is_closed_in_the_step_that_finds_it_full() {
        let gate = gate(2);
        gate.set_kept(true);
        assert!(matches!(gate.take_or_close(2), Taken::Slot(1)));
        assert!(matches!(gate.take_or_close(2), Taken::Slot(2)));
        assert!(matches!(gate.take_or_close(2), Taken::Closed));
        // Closed: a slot given back now goes through the lock, to the
        // waiter about to queue; none is taken past it either.
        assert!(!gate.try_give_back());
        assert_eq!(gate.try_take(), None);
        assert_eq!(gate.load().taken(), 2);
        // The lock's holder hands the slot on and publishes that no one
        // waits any more: the gate opens again.
        gate.publish(7, 2, Proto::Http1, false);
        assert!(gate.try_give_back());
        assert_eq!(gate.try_take(), Some(Proto::Http1));
    }

    #[test]
    fn the_real_limit_past_the_published_one_is_the_locks_to_give() {
        let big = usize::try_from(MAX_LIMIT).unwrap_or(usize::MAX) + 10;
        let gate = Gate::default();
        gate.publish(0, big, Proto::Unknown, false);
        gate.update(|w| w.with_taken(MAX_LIMIT));
        assert_eq!(gate.try_take(), None);
        assert!(matches!(gate.take_or_close(big), Taken::Slot(_)));
        assert_eq!(
            gate.load().taken(),
            usize::try_from(MAX_LIMIT + 1).unwrap_or(usize::MAX)
        );
    }

    #[test]
    fn a_host_is_retired_only_with_nothing_taken_and_no_waiter() {
        let gate = gate(2);
        assert!(gate.try_take().is_some());
        assert!(!gate.retire());
        assert!(!gate.load().gone());
        assert!(matches!(gate.sub_taken().taken(), 0));
        gate.publish(7, 2, Proto::Http1, true);
        assert!(!gate.retire(), "a waiter");
        gate.publish(7, 2, Proto::Http1, false);
        assert!(gate.retire());
        assert!(gate.load().gone());
        // Gone for good: no slot taken, the request goes to the lock and
        // finds the host's new gate.
        assert_eq!(gate.try_take(), None);
        gate.publish(7, 2, Proto::Http1, false);
        assert_eq!(gate.try_take(), None);
    }

    #[test]
    fn slots_taken_and_given_back_on_many_threads_add_up() {
        let gate = std::sync::Arc::new(gate(1_000_000));
        gate.set_kept(true);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        assert!(gate.try_take().is_some());
                        assert!(gate.try_take().is_some());
                        assert!(gate.try_give_back());
                        assert!(gate.try_give_back());
                    }
                })
            })
            .collect();
        // The lock's holder changes the word meanwhile, and loses nothing.
        for n in 0..1_000 {
            gate.set_kept(true);
            gate.publish(7, 1_000_000 - n, Proto::Http1, false);
        }
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert_eq!(gate.load().taken(), 0);
        assert_eq!(gate.load().limit(), 1_000_000 - 999);
    }
}
