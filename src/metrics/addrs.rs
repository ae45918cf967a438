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
        shard.seen.remove(&(local, remote));
        // The stale entry in `order` is skipped when it comes up.
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
