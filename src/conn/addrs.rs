//! Reuse from socket addresses, for clients without a tracking connector.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

const SHARDS: usize = 16;
/// Address pairs remembered per shard; the oldest are forgotten first.
const PER_SHARD: usize = 4096;

#[derive(Default)]
struct Shard {
    seen: HashSet<(SocketAddr, SocketAddr)>,
    order: VecDeque<(SocketAddr, SocketAddr)>,
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
