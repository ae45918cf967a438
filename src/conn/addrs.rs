//! Reuse from socket addresses, for clients without a tracking connector.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

const SHARDS: usize = 16;

#[cfg(test)]
thread_local! {
    /// Pairs recorded on this thread (tests only).
    pub(crate) static LOOKUPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}
/// Address pairs remembered per shard; the oldest are forgotten first.
const PER_SHARD: usize = 4096;

#[derive(Default)]
struct Shard {
    seen: HashSet<(SocketAddr, SocketAddr), PairState>,
    order: VecDeque<(SocketAddr, SocketAddr)>,
}

/// A fast hash for address pairs (looked up on every response), keyed per
/// process. Not SipHash: the pairs are this process's own connections (a
/// peer cannot choose the local port), and a shard holds at most
/// [`PER_SHARD`] of them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairState(u64);

impl Default for PairState {
    fn default() -> Self {
        use std::hash::BuildHasher;
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        PairState(*SEED.get_or_init(|| {
            std::collections::hash_map::RandomState::new().hash_one(0x9e37_79b9_u64)
        }))
    }
}

impl std::hash::BuildHasher for PairState {
    type Hasher = PairHasher;

    fn build_hasher(&self) -> PairHasher {
        PairHasher(self.0)
    }
}

pub(crate) struct PairHasher(u64);

impl PairHasher {
    fn mix(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for PairHasher {
    fn finish(&self) -> u64 {
        // A final avalanche: the map takes its bucket from the top bits.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (to, from) in word.iter_mut().zip(chunk) {
                *to = *from;
            }
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.mix(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

/// The (local, remote) address pairs of connections seen before. A response
/// whose pair was seen before came on a reused connection.
///
/// A closed connection's local port can be taken again by a later one; the
/// kernel avoids that while the old socket is in `TIME_WAIT`, and the
/// bounded memory forgets old pairs, so the error is small but not zero:
/// prefer a tracking `GuardedConnector` where exact figures matter.
#[derive(Default)]
pub(crate) struct AddrTracker {
    shards: [Mutex<Shard>; SHARDS],
}

impl std::fmt::Debug for AddrTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddrTracker").finish_non_exhaustive()
    }
}

impl AddrTracker {
    /// Forgets the pair: its connection is closing.
    pub(crate) fn forget(&self, local: SocketAddr, remote: SocketAddr) {
        let shard = &self.shards[usize::from(local.port()) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let pair = (local, remote);
        if shard.seen.remove(&pair) {
            // Out of the order too: left there, it would later evict the
            // pair again when a new connection has taken it.
            shard.order.retain(|p| *p != pair);
        }
    }

    /// Whether the pair was seen before (without recording it).
    pub(crate) fn contains(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        let shard = &self.shards[usize::from(local.port()) % SHARDS];
        let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        shard.seen.contains(&(local, remote))
    }

    /// Records the pair and returns whether it was seen before.
    pub(crate) fn seen_before(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        #[cfg(test)]
        LOOKUPS.with(|n| n.set(n.get() + 1));
        let shard = &self.shards[usize::from(local.port()) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let pair = (local, remote);
        if shard.seen.contains(&pair) {
            return true;
        }
        while shard.order.len() >= PER_SHARD {
            match shard.order.pop_front() {
                Some(old) => {
                    shard.seen.remove(&old);
                }
                None => break,
            }
        }
        shard.seen.insert(pair);
        shard.order.push_back(pair);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_pair_seen_again_is_not_evicted_by_its_old_entry() {
        let tracker = AddrTracker::default();
        // Distinct pairs whose local ports all fall in one shard.
        let pair = |i: usize| -> (SocketAddr, SocketAddr) {
            let port = u16::try_from(1024 + (i % 1000) * SHARDS).unwrap();
            let remote = u8::try_from(1 + i / 1000).unwrap();
            (
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from(([127, 0, 0, remote], 80)),
            )
        };
        let (local, remote) = pair(0);
        assert!(!tracker.seen_before(local, remote));
        tracker.forget(local, remote);
        // A new connection takes the same local port.
        assert!(!tracker.seen_before(local, remote));
        // Fill the shard to its bound: the live pair must stay.
        for i in 1..PER_SHARD {
            let (l, r) = pair(i);
            assert!(!tracker.seen_before(l, r));
        }
        assert!(tracker.contains(local, remote), "a live pair was evicted");
        // One more evicts the oldest, the live pair itself.
        let (l, r) = pair(PER_SHARD);
        assert!(!tracker.seen_before(l, r));
        assert!(!tracker.contains(local, remote));
    }
}
