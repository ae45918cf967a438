//! Per-host connection figures for a bounded number of hosts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use super::snapshot::HostSnapshot;
use crate::key::HostKey;

/// Hosts that get a row of their own; later hosts share the "other" row, so
/// that label cardinality stays bounded whatever a crawler contacts.
pub(crate) const MAX_HOSTS: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct HostCounters {
    pub(crate) responses: AtomicU64,
    pub(crate) reused: AtomicU64,
    pub(crate) opened: AtomicU64,
    pub(crate) closed: AtomicU64,
    /// The host's adaptive limit (0: none).
    pub(crate) limit: std::sync::atomic::AtomicUsize,
}

/// The first [`MAX_HOSTS`] hosts seen, each with its counters, and one row
/// for the rest. Looked up once per connection, never per request.
#[derive(Debug, Default)]
pub(crate) struct HostTable {
    rows: Mutex<Vec<(HostKey, Arc<HostCounters>)>>,
    other: Arc<HostCounters>,
}

impl HostTable {
    /// The counters of `key`, and whether they are its own (not the
    /// shared "other" row).
    pub(crate) fn row(&self, key: &HostKey) -> (Arc<HostCounters>, bool) {
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, c)) = rows.iter().find(|(k, _)| k == key) {
            return (c.clone(), true);
        }
        if rows.len() < MAX_HOSTS {
            let c = Arc::new(HostCounters::default());
            rows.push((key.clone(), c.clone()));
            return (c, true);
        }
        (self.other.clone(), false)
    }

    pub(crate) fn snapshot(&self, costs: &crate::conn::DialCosts) -> Vec<HostSnapshot> {
        let row = |host: Option<HostKey>, c: &HostCounters| HostSnapshot {
            dial_cost: host.as_ref().and_then(|h| costs.measured(h)),
            host,
            responses: c.responses.load(Relaxed),
            reused: c.reused.load(Relaxed),
            connections_opened: c.opened.load(Relaxed),
            connections_closed: c.closed.load(Relaxed),
            limit: Some(c.limit.load(Relaxed)).filter(|n| *n > 0),
        };
        let rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<HostSnapshot> =
            rows.iter().map(|(k, c)| row(Some(k.clone()), c)).collect();
        drop(rows);
        let other = row(None, &self.other);
        if other.connections_opened > 0 {
            out.push(other);
        }
        out.sort_by_key(|row| std::cmp::Reverse(row.responses));
        out
    }
}
