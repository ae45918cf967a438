//! What a connection is: its exchanges, read off the bytes that cross it,
//! and the handle other parts of the crate use to see and steer it.
//!
//! Depends on nothing else in the crate: the connector's IO feeds the
//! [`Tracker`], publishes what it learns in the connection's [`Link`], and
//! the per-host registry and the retry read the `Link`.

#[cfg(feature = "hyper-util")]
pub(crate) mod addrs;
#[cfg(feature = "hyper-util")]
pub(crate) mod http1;
#[cfg(feature = "hyper-util")]
pub(crate) mod keep_alive;

#[cfg(feature = "hyper-util")]
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
#[cfg(feature = "hyper-util")]
use std::sync::{Arc, Mutex, PoisonError};
#[cfg(feature = "hyper-util")]
use std::task::Waker;

#[cfg(feature = "hyper-util")]
pub(crate) use self::http1::{Event, Phase, Tracker};

/// The task of a connection's IO while it waits on a read, to wake when
/// something it must act on changed elsewhere.
#[cfg(feature = "hyper-util")]
#[derive(Debug, Default)]
pub(crate) struct ReadWaker(Mutex<Option<Waker>>);

#[cfg(feature = "hyper-util")]
impl ReadWaker {
    /// Remembers `waker` (unless it would wake the same task already).
    pub(crate) fn park(&self, waker: &Waker) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// Wakes the remembered task, if any.
    pub(crate) fn wake(&self) {
        let waker = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(feature = "hyper-util")]
/// What one connection shows the rest of the crate: its phase and the
/// exchanges it completed (published by its IO after every read and
/// write), the pool key it was dialed for, and the task to wake to make it
/// look at itself again.
#[derive(Debug)]
pub(crate) struct Link {
    phase: AtomicU8,
    completed: AtomicU64,
    /// `scheme://authority` as the client dialed it, in lower case: the
    /// key under which hyper-util pools the connection.
    pool_key: Arc<str>,
    /// The IO's task while it waits on an idle read.
    waker: ReadWaker,
}

#[cfg(feature = "hyper-util")]
impl Link {
    /// The link of a new connection dialed for `pool_key`.
    pub(crate) fn new(pool_key: Arc<str>) -> Arc<Self> {
        Arc::new(Link {
            phase: AtomicU8::new(Phase::Idle as u8),
            completed: AtomicU64::new(0),
            pool_key,
            waker: ReadWaker::default(),
        })
    }

    /// What the connection is doing, as its IO last published.
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Relaxed))
    }

    /// Exchanges the connection completed.
    pub(crate) fn completed(&self) -> u64 {
        self.completed.load(Relaxed)
    }

    /// The pool key the connection was dialed for.
    pub(crate) fn pool_key(&self) -> &Arc<str> {
        &self.pool_key
    }

    /// Publishes what `tracker` says now.
    pub(crate) fn publish(&self, tracker: &Tracker) {
        self.phase.store(tracker.phase() as u8, Relaxed);
        self.completed.store(tracker.completed(), Relaxed);
    }

    /// Whether a request that failed on this connection got no byte of a
    /// response, on a connection that had completed an exchange before it:
    /// such a request never reached a server that answered it. Never for a
    /// connection that is not (or no longer) plain HTTP/1.
    pub(crate) fn failed_unanswered_on_reused(&self) -> bool {
        let phase = self.phase();
        let completed = self.completed();
        // Idle: not written (hyper found the connection closed first).
        // Requesting or awaiting: written in part or whole, unanswered.
        phase.unanswered() && completed >= 1
    }

    /// Remembers the task of the IO's idle read.
    pub(crate) fn park(&self, waker: &Waker) {
        self.waker.park(waker);
    }

    /// Wakes the IO's idle read, if it waits, so that it looks again at
    /// whether to retire the connection.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }
}
