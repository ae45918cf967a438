//! A budget for the whole fleet: per-host limits on requests in flight,
//! shared by every process that points at the same Redis.
//!
//! poolguard's other limits cap one process. A fleet of P processes sends up
//! to P × N to one upstream, so a partner API that allows 50 requests at
//! once from the whole company cannot be protected by any per-process
//! setting. A [`FleetBudget`] names hosts and their budgets; each process
//! then holds a **block** of each host's permits, leased from Redis.
//!
//! # How the permits move
//!
//! - A process takes, renews and gives back its block in one atomic Lua
//!   script, on Redis's own clock (`TIME`): holders whose lease ran out are
//!   removed first, then the process is granted at most what the others
//!   leave free. Most requests cost no Redis round trip: they take a slot of
//!   the process's block, in the guard's own queue.
//! - The block follows the process's demand (its requests in flight and
//!   queued for the host, and a quarter more): it grows when requests wait,
//!   and shrinks by half at each renewal while the host is idle, down to
//!   nothing. When the processes together want more than the budget, each
//!   is granted its max-min fair share; one that holds more shrinks at its
//!   next renewal (renewals come every 25 ms while anyone waits or the
//!   budget is contended, and every quarter of the lease otherwise).
//! - Permits in use are never granted to another process: a process records
//!   at least what it may have in flight (its block before the renewal, or
//!   its requests in flight, whichever is more), and a lower block takes
//!   slots back only as requests end; a request in flight is never cut.
//! - A process that vanishes (`kill -9`, a lost host) stops renewing: its
//!   permits come back to the others when its lease ends.
//!
//! Keys are `poolguard:{host}:…`, hash-tagged by host, so that a Redis
//! Cluster keeps each host's keys on one node; they expire two leases after
//! the last holder's renewal.
//!
//! # What it does not promise
//!
//! - **A process paused past its lease** (a stopped VM, a long GC-like
//!   stall) loses its record; when it wakes, its requests in flight are
//!   still in flight, and it records them again at its next renewal even if
//!   others took its permits meanwhile: the fleet can overshoot by what
//!   that process had in flight, until those requests end.
//! - **Redis restarted without persistence** forgets every block. Each key
//!   set carries an epoch (when it was made); a process that held permits
//!   under another epoch starts a learning window of one lease from the new
//!   epoch, during which nobody's block grows beyond what it has in use, so
//!   that every live process can record its requests in flight before
//!   anyone takes more. A process new to the fleet that renews first after
//!   the restart, before any process that knew the old epoch, is not held
//!   back: until the others' next renewal (at most a quarter of the lease),
//!   the fleet can overshoot by what they had in flight (at most the
//!   budget).
//! - **Redis unreachable**: see [`Unavailable`]. While it is, each process
//!   falls back to its own limit (or refuses); requests in flight go on.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use poolguard::fleet::{FleetBudget, Unavailable};
//! use poolguard::PoolGuard;
//!
//! # fn main() -> Result<(), poolguard::fleet::Error> {
//! let fleet = FleetBudget::redis("redis://127.0.0.1:6379/")?
//!     .limit_for("api.partner.example", 50)
//!     .lease(Duration::from_secs(3))
//!     .on_unavailable(Unavailable::Local(5));
//! let guard = PoolGuard::builder().max_per_host(50).fleet(fleet).build();
//! # drop(guard);
//! # Ok(())
//! # }
//! ```

mod policy;
mod renew;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use policy::FleetPolicy;

/// The lease a process's block outlives it by, by default.
const DEFAULT_LEASE: Duration = Duration::from_secs(3);
/// The shortest lease taken (renewals come every quarter of it).
const MIN_LEASE: Duration = Duration::from_millis(200);

/// Per-host budgets shared across processes through Redis; given to
/// [`PoolGuardBuilder::fleet`](crate::PoolGuardBuilder::fleet).
///
/// Clones share nothing: each guard built with one holds its own blocks
/// (as one process of the fleet).
#[derive(Clone)]
#[must_use]
pub struct FleetBudget {
    pub(crate) client: redis::Client,
    pub(crate) limits: HashMap<Box<str>, usize>,
    pub(crate) lease: Duration,
    pub(crate) unavailable: Unavailable,
}

impl fmt::Debug for FleetBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: not shown.
        f.debug_struct("FleetBudget")
            .field("limits", &self.limits)
            .field("lease", &self.lease)
            .field("unavailable", &self.unavailable)
            .finish_non_exhaustive()
    }
}

impl FleetBudget {
    /// A fleet budget kept on the Redis at `url` (`redis://`, `rediss://`
    /// where the redis crate was built with TLS, or `redis+unix:///path`).
    /// The URL is checked now; the connection is made when the guard first
    /// needs a permit, and made again after a failure.
    pub fn redis(url: &str) -> Result<FleetBudget, Error> {
        let client = redis::Client::open(url).map_err(|e| Error(e.to_string().into()))?;
        Ok(FleetBudget {
            client,
            limits: HashMap::new(),
            lease: DEFAULT_LEASE,
            unavailable: Unavailable::default(),
        })
    }

    /// At most `n` requests in flight to `host` (a name or an IP literal,
    /// every port and scheme of it) across every process sharing this
    /// Redis. Hosts not named here are not limited by the fleet. Every
    /// process must give a host the same budget.
    pub fn limit_for(mut self, host: &str, n: usize) -> Self {
        self.limits
            .insert(host.trim_end_matches('.').to_ascii_lowercase().into(), n);
        self
    }

    /// How long a vanished process's permits stay taken (at least 200 ms).
    /// Default: 3 s. Renewals come every quarter of it, or every 25 ms while
    /// requests wait or the budget is contended.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(MIN_LEASE);
        self
    }

    /// What a process does while Redis cannot be reached. Default:
    /// [`Unavailable::Local(1)`](Unavailable::Local).
    pub fn on_unavailable(mut self, unavailable: Unavailable) -> Self {
        self.unavailable = unavailable;
        self
    }
}

/// What a process does with a host's budget while Redis cannot be reached
/// (an error or no answer within a quarter of the lease, at most 1 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// At most this many requests in flight to the host from this process
    /// (and never more than its budget). Requests keep flowing; P processes
    /// send up to P × this. The default, with 1: the upstream sees at most
    /// one request per process.
    Local(usize),
    /// No new request to the host: requests queue, and those still queued
    /// at the queue timeout fail with [`BudgetUnavailable`] (requests in
    /// flight go on).
    FailClosed,
}

impl Default for Unavailable {
    fn default() -> Self {
        Unavailable::Local(1)
    }
}

/// A fleet budget's Redis URL was not valid.
#[derive(Debug)]
pub struct Error(Box<str>);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid fleet budget: {}", self.0)
    }
}

impl std::error::Error for Error {}

/// A request queued for a host whose fleet budget could not be reached
/// (Redis down, under [`Unavailable::FailClosed`]) until its queue timeout.
/// Recover it with `downcast_ref`.
#[derive(Debug, Clone)]
pub struct BudgetUnavailable {
    host: Arc<str>,
}

impl BudgetUnavailable {
    /// The host the request was for.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Display for BudgetUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fleet budget for {} unavailable", self.host)
    }
}

impl std::error::Error for BudgetUnavailable {}

#[cfg(test)]
mod tests;
