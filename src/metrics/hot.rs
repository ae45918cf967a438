//! The per-request figures, kept in shards that threads add to without
//! sharing a cache line.

use std::cell::Cell;
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

/// Shards a thread can own: each is written by its one thread only.
const OWNED: usize = 8;
/// The shard of the threads beyond those, which add to it atomically.
const SHARED: usize = OWNED;
const SHARDS: usize = OWNED + 1;

/// The figures every request moves. One set of atomic counters that every
/// thread writes moves its cache line from core to core at each request;
/// here each thread adds to a shard of its own, and a read sums the
/// shards. Reads are for snapshots, not the request path.
///
/// A thread owns its shard (the first eight threads at a time; a thread
/// gives its shard back when it ends): no other thread writes it, so its
/// adds are a load and a store, not a locked read-modify-write (which
/// also waits for the core's pending stores). Threads beyond those share
/// one shard, with atomic adds.
#[derive(Debug, Default)]
pub(crate) struct Hot(Box<[Shard; SHARDS]>);

/// One thread's share of the figures (64 bytes), alone on its cache line
/// (128 bytes: adjacent lines are fetched in pairs on some CPUs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Shard {
    pub(crate) requests: AtomicU64,
    /// Responses on a connection's first exchange. Each response counts in
    /// one of `fresh`, `reused` and `reuse_unknown`, one add a response;
    /// the responses are their sum.
    pub(crate) fresh: AtomicU64,
    pub(crate) reused: AtomicU64,
    pub(crate) reuse_unknown: AtomicU64,
    /// Requests whose flight ended (in flight: `requests` less these).
    pub(crate) ended: AtomicU64,
    /// Drains completed in a task; those completed inline are
    /// `drains_inline` (completed: the sum, one add a drain).
    pub(crate) drains_tasked: AtomicU64,
    pub(crate) drains_inline: AtomicU64,
    pub(crate) bytes_drained: AtomicU64,
}

/// This thread's shard, to add to.
#[derive(Clone, Copy)]
pub(crate) struct Here<'a> {
    shard: &'a Shard,
    /// The thread owns the shard: it is the shard's one writer.
    owned: bool,
}

impl<'a> Here<'a> {
    /// Adds `n` to the figure `figure` picks of the shard (wrapping).
    #[inline]
    pub(crate) fn add(self, figure: impl FnOnce(&'a Shard) -> &'a AtomicU64, n: u64) {
        let counter = figure(self.shard);
        if self.owned {
            // No other thread writes this shard: the load sees the last
            // add, and a reader sees each store whole.
            counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
        } else {
            counter.fetch_add(n, Relaxed);
        }
    }
}

impl Hot {
    /// This thread's shard.
    #[inline]
    pub(crate) fn here(&self) -> Here<'_> {
        let at = shard();
        match self.0.get(at) {
            Some(shard) => Here {
                shard,
                owned: at < OWNED,
            },
            // `shard()` is below `SHARDS`.
            None => Here {
                shard: &self.0[SHARED],
                owned: false,
            },
        }
    }

    /// The sum of one figure over the shards (wrapping, as the adds do).
    pub(crate) fn sum(&self, figure: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.0.iter().fold(0u64, |sum, shard| {
            sum.wrapping_add(figure(shard).load(Relaxed))
        })
    }
}

/// Which owned shards a thread holds (the same index in every [`Hot`]).
static TAKEN: [AtomicBool; OWNED] = [const { AtomicBool::new(false) }; OWNED];

thread_local! {
    /// This thread's shard: `usize::MAX` until its first add.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Gives the thread's owned shard back when the thread ends.
    static CLAIM: Claim = const { Claim };
}

/// A thread's hold on its owned shard, let go when the thread ends.
struct Claim;

impl Drop for Claim {
    fn drop(&mut self) {
        // Adds made later in the thread's end (other thread-locals being
        // dropped) go to the shared shard: the next owner may be adding.
        let at = SHARD.with(|shard| shard.replace(SHARED));
        if let Some(taken) = TAKEN.get(at) {
            taken.store(false, Release);
        }
    }
}

/// This thread's shard, assigned at its first add.
#[inline]
fn shard() -> usize {
    SHARD.with(|shard| {
        let at = shard.get();
        if at <= SHARED {
            return at;
        }
        let at = claim();
        shard.set(at);
        at
    })
}

/// A free owned shard for this thread, or the shared one.
#[cold]
fn claim() -> usize {
    for (at, taken) in TAKEN.iter().enumerate() {
        // Acquire: the adds of the shard's last owner are seen.
        if taken
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
        {
            // The thread gives it back when it ends; a thread already
            // ending cannot, and takes the shared shard.
            if CLAIM.try_with(|_| ()).is_ok() {
                return at;
            }
            taken.store(false, Release);
            break;
        }
    }
    SHARED
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twelve threads at once, more than own a shard: the owners' plain
    /// adds and the others' atomic adds to the shared shard add up.
    #[test]
    fn the_shards_of_every_thread_add_up() {
        let hot = std::sync::Arc::new(Hot::default());
        let all_here = std::sync::Arc::new(std::sync::Barrier::new(12));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let (hot, all_here) = (hot.clone(), all_here.clone());
                std::thread::spawn(move || {
                    // Every thread takes its shard before any adds.
                    hot.here().add(|s| &s.requests, 0);
                    all_here.wait();
                    for _ in 0..1000 {
                        hot.here().add(|s| &s.requests, 1);
                    }
                    hot.here().add(|s| &s.bytes_drained, 5);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(hot.sum(|s| &s.requests), 12_000);
        assert_eq!(hot.sum(|s| &s.bytes_drained), 60);
        assert_eq!(hot.sum(|s| &s.fresh), 0);
        // Threads were spread over more than one shard.
        let used = hot
            .0
            .iter()
            .filter(|s| s.requests.load(Relaxed) > 0)
            .count();
        assert!(used > 1, "{used} shards used");
    }

    /// A thread that ends gives its shard back: more threads in turn own
    /// a shard than there are shards to own (never more than `OWNED`
    /// without it; other tests' threads may hold some shards meanwhile).
    #[test]
    fn threads_that_end_give_their_shards_back() {
        let hot = std::sync::Arc::new(Hot::default());
        let mut owned = 0;
        for _ in 0..20 * OWNED {
            let hot = hot.clone();
            let here_owned = std::thread::spawn(move || {
                let here = hot.here();
                here.add(|s| &s.requests, 1);
                here.owned
            })
            .join()
            .unwrap();
            owned += usize::from(here_owned);
            if owned > OWNED {
                break;
            }
        }
        assert!(owned > OWNED, "{owned} threads owned a shard");
        assert!(hot.sum(|s| &s.requests) > OWNED as u64);
    }

    /// Adds made while a thread ends, after its shard went back, go to
    /// the shared shard: the shard's next owner may be adding.
    #[test]
    fn adds_after_a_thread_let_go_of_its_shard_go_to_the_shared_shard() {
        let hot = std::sync::Arc::new(Hot::default());
        let seen = hot.clone();
        let first_owned = std::thread::spawn(move || {
            let first = hot.here();
            first.add(|s| &s.requests, 1);
            drop(Claim);
            let here = hot.here();
            assert!(!here.owned);
            here.add(|s| &s.requests, 1);
            first.owned
        })
        .join()
        .unwrap();
        assert_eq!(seen.sum(|s| &s.requests), 2);
        // The first add too, if every owned shard was held meanwhile.
        let shared = if first_owned { 1 } else { 2 };
        assert_eq!(seen.0[SHARED].requests.load(Relaxed), shared);
    }
}

#[cfg(test)]
mod sums {
    use std::time::Duration;

    use crate::drain::{DrainOutcome, OnDrain, SkipReason};
    use crate::Metrics;

    #[test]
    fn figures_kept_as_sums_read_as_their_parts_add_up() {
        let metrics = Metrics::new();
        let completed = |inline| DrainOutcome::Completed {
            bytes: 10,
            elapsed: Duration::ZERO,
            inline,
        };
        metrics.on_drain(&completed(true));
        metrics.on_drain(&completed(false));
        metrics.on_drain(&completed(true));
        metrics.on_drain(&DrainOutcome::Skipped(SkipReason::Http2));
        let snap = metrics.snapshot();
        assert_eq!(snap.drains_completed, 3);
        assert_eq!(snap.drains_inline, 2);
        assert_eq!(snap.bytes_drained, 30);
        assert_eq!(snap.drains_skipped.http2, 1);
    }
}
