//! What the retry reports, and to whom.

use std::fmt;
use std::sync::Arc;

/// Something a retry did, told to an [`OnRetry`] hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryEvent {
    /// A request that failed on a stale pooled connection is being sent
    /// again.
    Retrying {
        /// Which retry of the request this is, from 1.
        attempt: u32,
        /// Why the request may be sent again.
        cause: RetryCause,
    },
    /// The last attempt of a retried request got a response.
    Succeeded,
    /// The last attempt of a retried request failed too.
    Failed,
    /// A request could have been sent again, but its host's retry budget
    /// was spent: its error went back to the caller.
    BudgetExhausted {
        /// Why it could have been sent again.
        cause: RetryCause,
    },
}

/// Why a request is sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryCause {
    /// It failed on a reused HTTP/1 connection before any byte of a
    /// response came: the server had closed the idle connection.
    StaleConnection,
    /// It was not processed: an HTTP/2 server refused its stream
    /// (`REFUSED_STREAM`) or hyper never sent it, whatever its method (RFC
    /// 9113 §8.7); or, for an idempotent request, it failed with the
    /// server's `GOAWAY` (which hyper can also report for a request that
    /// was sent: see the [module docs](super)).
    NotProcessed,
}

/// A hook told of each retry and of how it ended, set with
/// [`RetryStaleLayer::on_retry`](super::RetryStaleLayer::on_retry).
/// [`Metrics`](crate::Metrics) is one; the retry knows nothing of what its
/// hook does.
///
/// It is implemented for `()` (does nothing) and for any
/// `Fn(RetryEvent) + Send + Sync + 'static` closure; keep it short and never
/// block in it.
pub trait OnRetry: Send + Sync + 'static {
    /// Called for every retry, and once when a retried request ends.
    fn on_retry(&self, event: RetryEvent);
}

impl OnRetry for () {
    #[inline]
    fn on_retry(&self, _event: RetryEvent) {}
}

impl<F> OnRetry for F
where
    F: Fn(RetryEvent) + Send + Sync + 'static,
{
    #[inline]
    fn on_retry(&self, event: RetryEvent) {
        self(event)
    }
}

/// A shared [`OnRetry`] hook.
#[derive(Clone)]
pub(crate) struct RetryHook(Arc<dyn OnRetry>);

impl RetryHook {
    pub(crate) fn new(hook: impl OnRetry) -> Self {
        RetryHook(Arc::new(hook))
    }

    #[inline]
    pub(crate) fn tell(&self, event: RetryEvent) {
        self.0.on_retry(event);
    }
}

impl fmt::Debug for RetryHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnRetry")
    }
}
