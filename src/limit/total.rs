//! The cap across hosts: one more registry, whose slots every host shares
//! under one key, joined to a host's slot by the request or dial that
//! holds both.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

use super::observe::QueueHook;
use super::registry::{Acquire, Bounds, Policy, Registry, Slot, TimedOut, Waiter};
use crate::key::HostKey;

/// A wait for a slot (a host's, then the cap's).
pub(crate) type Wait = Pin<Box<dyn Future<Output = Result<Slot, TimedOut>> + Send>>;

/// The cap across hosts: its slots, under one key, and the bounds to take
/// one with.
#[derive(Clone, Debug)]
pub(crate) struct TotalCap {
    pub(crate) registry: Arc<Registry>,
    pub(crate) key: HostKey,
    pub(crate) policy: Policy,
}

impl TotalCap {
    /// A cap of `max` of `registry`'s slots, with at most `max_queued`
    /// waiters, told to `observer`; `None` if the shared key cannot be made.
    pub(crate) fn new(
        registry: Arc<Registry>,
        max: usize,
        max_queued: usize,
        observer: Option<QueueHook>,
    ) -> Option<Self> {
        Some(TotalCap {
            registry,
            key: total_key()?,
            policy: Policy {
                bounds: Bounds {
                    max_per_host: max,
                    max_queued,
                    max_streams: None,
                },
                observer,
                overrides: None,
                decider: None,
            },
        })
    }
}

/// A host's slot joined with one of the cap across hosts.
pub(crate) enum Joined {
    /// At once (or there is no cap).
    Now(Slot),
    /// The cap's queue is full; the host's slot was given back.
    Full,
    /// After a wait in the cap's queue.
    Later(Wait),
}

/// A wait in `host`'s queue (`waiter`), then for a slot of `total` if
/// there is a cap, both ending at `deadline`; `pool_key` as for [`join`].
/// What a request and a connector's dial that must queue both wait for.
pub(crate) fn queued(
    waiter: Waiter,
    total: Option<TotalCap>,
    host: HostKey,
    pool_key: Option<Arc<str>>,
    deadline: Option<Instant>,
) -> Wait {
    Box::pin(async move {
        let slot = waiter.wait(deadline).await?;
        match join(total.as_ref(), slot, &host, pool_key, || deadline) {
            Joined::Now(slot) => Ok(slot),
            Joined::Full => Err(TimedOut::full(host)),
            Joined::Later(wait) => wait.await,
        }
    })
}

/// Joins `slot` (of `host`) with a slot of `total`, if there is a cap; a
/// wait for it ends at `deadline`. `pool_key` is that of a connector's
/// dial: while it waits, an idle connection pooled under another key (of
/// any host, the least recently used first) is closed to make room.
pub(crate) fn join(
    total: Option<&TotalCap>,
    slot: Slot,
    host: &HostKey,
    pool_key: Option<Arc<str>>,
    deadline: impl FnOnce() -> Option<Instant>,
) -> Joined {
    let Some(total) = total else {
        return Joined::Now(slot);
    };
    let acquired = match pool_key {
        #[cfg(feature = "hyper-util")]
        Some(pool_key) => total
            .registry
            .acquire_dial(total.key.clone(), pool_key, &total.policy),
        _ => total.registry.acquire(total.key.clone(), &total.policy),
    };
    match acquired {
        Acquire::Ready(t) => Joined::Now(slot.with_total(t)),
        Acquire::Full(_) => Joined::Full,
        Acquire::Queued(waiter) => {
            let (host, deadline) = (host.clone(), deadline());
            Joined::Later(Box::pin(async move {
                let t = waiter
                    .wait(deadline)
                    .await
                    .map_err(|no| no.for_host(host))?;
                Ok(slot.with_total(t))
            }))
        }
    }
}

/// The key every request shares under the cap across hosts.
fn total_key() -> Option<HostKey> {
    static KEY: OnceLock<Option<HostKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        HostKey::from_uri(&http::Uri::from_static("http://total.poolguard.invalid/"))
    })
    .clone()
}

/// Something waits for a slot of the cap: every host's drains are wanted
/// then, since any slot given back may be the one that lets it in.
#[derive(Debug)]
pub(crate) struct TotalDemand(pub(crate) Arc<Registry>);

impl crate::conn::Demand for TotalDemand {
    fn waiting(&self, _key: &HostKey) -> bool {
        self.0.queued() > 0
    }
}
