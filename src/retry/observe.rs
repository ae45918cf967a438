//! What the retry reports, and to whom.

use std::fmt;

/// Told of each retry and of how it ended. [`Metrics`](crate::Metrics)
/// counts them; the retry knows nothing of what its observer does.
pub(crate) trait RetryObserver: fmt::Debug + Send + Sync + 'static {
    /// A request is being sent again.
    fn retried(&self);
    /// The last attempt of a retried request ended: with a response (`ok`)
    /// or an error.
    fn retry_ended(&self, ok: bool);
}
