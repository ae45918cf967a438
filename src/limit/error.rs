//! Errors of [`PerHostLimit`](super::PerHostLimit).

use std::fmt;
use std::time::Duration;

use crate::key::HostKey;

/// A request was refused because its host's queue was full.
///
/// Returned as a [`BoxError`](crate::BoxError); recover it with
/// `err.downcast_ref::<QueueFull>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueFull {
    host: HostKey,
}

impl QueueFull {
    pub(crate) fn new(host: HostKey) -> Self {
        QueueFull { host }
    }

    /// The host whose queue was full.
    pub fn host(&self) -> &HostKey {
        &self.host
    }
}

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "per-host queue full for {}", self.host)
    }
}

impl std::error::Error for QueueFull {}

/// A request waited in its host's queue longer than the queue timeout.
///
/// Returned as a [`BoxError`](crate::BoxError); recover it with
/// `err.downcast_ref::<QueueTimeout>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueTimeout {
    host: HostKey,
    waited: Duration,
}

impl QueueTimeout {
    pub(crate) fn new(host: HostKey, waited: Duration) -> Self {
        QueueTimeout { host, waited }
    }

    /// The host whose queue the request waited in.
    pub fn host(&self) -> &HostKey {
        &self.host
    }

    /// How long the request waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Display for QueueTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} in the per-host queue for {}",
            self.waited, self.host
        )
    }
}

impl std::error::Error for QueueTimeout {}
