//! The per-request figures, kept in shards that threads add to without
//! sharing a cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Shards of the per-request figures; a thread adds to one, a read sums
/// them.
const SHARDS: usize = 8;

/// The figures every request moves. One set of atomic counters that every
/// thread writes moves its cache line from core to core at each request;
/// here each thread adds to a shard of its own (threads spread over the
/// shards in turn, each shard alone on its cache lines), and a read sums
/// the shards. Reads are for snapshots, not the request path.
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

impl Hot {
    /// This thread's shard.
    #[inline]
    pub(crate) fn here(&self) -> &Shard {
        let at = shard();
        match self.0.get(at) {
            Some(shard) => shard,
            // `shard()` is below `SHARDS`.
            None => &self.0[0],
        }
    }

    /// The sum of one figure over the shards (wrapping, as the adds do).
    pub(crate) fn sum(&self, figure: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.0.iter().fold(0u64, |sum, shard| {
            sum.wrapping_add(figure(shard).load(Relaxed))
        })
    }
}

/// This thread's shard, assigned at its first add.
#[inline]
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        let at = shard.get();
        if at < SHARDS {
            return at;
        }
        let at = NEXT.fetch_add(1, Relaxed) % SHARDS;
        shard.set(at);
        at
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shards_of_every_thread_add_up() {
        let hot = std::sync::Arc::new(Hot::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let hot = hot.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        hot.here().requests.fetch_add(1, Relaxed);
                    }
                    hot.here().bytes_drained.fetch_add(5, Relaxed);
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
