//! What the per-host limit reports, and to whom.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Something that happened in a host's queue, told to an [`OnQueue`] hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueEvent {
    /// A request was refused at once: its host's queue was full
    /// ([`QueueFull`](super::QueueFull)).
    Full,
    /// A request started waiting for a slot.
    Entered,
    /// A waiting request got its slot.
    Admitted {
        /// How long it waited.
        waited: Duration,
    },
    /// A waiting request gave up at its queue timeout
    /// ([`QueueTimeout`](super::QueueTimeout)).
    TimedOut {
        /// How long it waited.
        waited: Duration,
    },
    /// A waiting request left the queue before its timeout: its caller
    /// dropped it.
    Cancelled {
        /// How long it waited.
        waited: Duration,
    },
}

/// A hook told what happens in the per-host queues, set with
/// [`PerHostLimitLayer::on_queue`](super::PerHostLimitLayer::on_queue).
/// [`Metrics`](crate::Metrics) is one; the limit knows nothing of what its
/// hook does.
///
/// It is implemented for `()` (does nothing) and for any
/// `Fn(QueueEvent) + Send + Sync + 'static` closure. It is called on the
/// thread of the request concerned, sometimes under no lock but always on
/// the request's path: keep it short and never block in it.
pub trait OnQueue: Send + Sync + 'static {
    /// Called for every event of every host's queue.
    fn on_queue(&self, event: QueueEvent);
}

impl OnQueue for () {
    #[inline]
    fn on_queue(&self, _event: QueueEvent) {}
}

impl<F> OnQueue for F
where
    F: Fn(QueueEvent) + Send + Sync + 'static,
{
    #[inline]
    fn on_queue(&self, event: QueueEvent) {
        self(event)
    }
}

/// A shared [`OnQueue`] hook.
#[derive(Clone)]
pub(crate) struct QueueHook(Arc<dyn OnQueue>);

impl QueueHook {
    pub(crate) fn new(hook: impl OnQueue) -> Self {
        QueueHook(Arc::new(hook))
    }

    #[inline]
    pub(crate) fn tell(&self, event: QueueEvent) {
        self.0.on_queue(event);
    }
}

impl fmt::Debug for QueueHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnQueue")
    }
}
