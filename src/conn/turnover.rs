//! One dial at a time for a pool key that speaks (or may speak) HTTP/2.
//!
//! hyper-util's pool can share an HTTP/2 connection among every request
//! for a pool key, but it learns that a new connection speaks HTTP/2 only
//! after the dial and its TLS handshake (ALPN). So when a key's HTTP/2
//! connection goes away (a `GOAWAY`, a close), every request waiting at
//! that moment dials a connection of its own, and all but one are closed
//! again: a TLS handshake per waiting request where one suffices.
//!
//! The [`Turnover`] lets one dial of such a key go ahead (the lead) and
//! holds the others. When the lead's connection shows it is HTTP/1 (its
//! first request is not the HTTP/2 preface), the others dial as usual.
//! When it carries its first HTTP/2 stream, hyper-util has already put it
//! in its pool and handed it to every request waiting for the key there;
//! the held dials then end with [`Coalesced`], which hyper-util drops (the
//! request it raced for was served by the pool) or, when a request did miss
//! the shared connection, the retry reads as "never sent". When the lead
//! fails or its connection ends before a stream, one held dial leads next.
//!
//! Which keys: those whose last connection spoke HTTP/2, and `https` keys
//! not heard from yet (ALPN may choose HTTP/2). A key whose last connection
//! spoke HTTP/1, or an `http` key not heard from (hyper-util itself dials
//! HTTP/2 with prior knowledge one at a time), is not held.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Keys remembered at most: beyond it, those with no dial under way are
/// forgotten.
const MAX_KEYS: usize = 4096;

/// The least streams per connection learnt as a server's limit.
pub(crate) const MIN_STREAMS_LIMIT: u32 = 8;

/// After how many streams a connection whose server takes `limit` leaves
/// the pool: early enough that the streams hyper writes before it reads
/// the server's `GOAWAY` stay within the limit, so none is refused.
pub(crate) fn rotate_at(limit: u32) -> u32 {
    limit.saturating_sub((limit / 4).min(128)).max(1)
}

/// What a key's last connection spoke.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Spoke {
    #[default]
    Unknown,
    Http1,
    Http2,
}

#[derive(Debug, Default)]
struct Entry {
    spoke: Spoke,
    /// A lead dial is under way.
    leading: bool,
    /// Lead connections that carried their first HTTP/2 stream.
    served: u64,
    /// Dials held.
    held: usize,
    notify: Arc<Notify>,
    /// Streams the server takes on a connection, as its `GOAWAY`s showed.
    streams_limit: Option<u32>,
}

/// What a dial of an entry's key does now.
enum Turn {
    /// Dial without a turn (HTTP/1, or plain `http` not heard from).
    Dial,
    /// Dial as the key's lead.
    Lead,
    /// Wait for the lead.
    Wait,
}

impl Entry {
    /// The turn of a dial (`tls`: `https`); takes the lead when free.
    fn turn(&mut self, tls: bool) -> Turn {
        match (self.spoke, tls) {
            (Spoke::Http1, _) | (Spoke::Unknown, false) => Turn::Dial,
            _ if !self.leading => {
                self.leading = true;
                Turn::Lead
            }
            _ => Turn::Wait,
        }
    }

    fn idle(&self) -> bool {
        !self.leading && self.held == 0 && self.streams_limit.is_none()
    }
}

/// The dials of the pool keys of one connector (shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct Turnover {
    keys: Mutex<HashMap<Arc<str>, Entry>>,
}

/// A dial not made because its request got a connection from the pool
/// meanwhile: the HTTP/2 connection another dial for its key was making,
/// an HTTP/1 connection coming back to the pool, or an HTTP/2 connection
/// just put in it.
///
/// Returned as the source of hyper-util's connect error, which hyper-util
/// drops when the request it raced for got the pooled connection. A request
/// that fails with it was never sent: poolguard's retry sends it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coalesced {
    pool_key: Arc<str>,
    /// The request took a connection from the pool (an HTTP/1 one coming
    /// back, or a live HTTP/2 one), not the new HTTP/2 one a dial it waited
    /// for made.
    pooled: bool,
}

impl Coalesced {
    /// A dial for `pool_key` not made: a connection of the key was coming
    /// back to (or going into) the pool, and the request took it.
    pub(crate) fn pooled(pool_key: Arc<str>) -> Self {
        Coalesced {
            pool_key,
            pooled: true,
        }
    }

    /// `scheme://authority` of the dial.
    pub fn pool_key(&self) -> &str {
        &self.pool_key
    }
}

impl fmt::Display for Coalesced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pooled {
            return write!(
                f,
                "dial to {} not made: the request took a connection from the pool",
                self.pool_key
            );
        }
        write!(
            f,
            "dial to {} not made: the connection just made to it speaks HTTP/2",
            self.pool_key
        )
    }
}

impl std::error::Error for Coalesced {}

/// Where a dial stands.
pub(crate) enum Entered {
    /// Dial now; with a lead, report what the connection turns out to be.
    Now(Option<Lead>),
    /// Wait for the key's lead.
    Held(Held),
}

impl Turnover {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A dial for `key` (`tls`: the scheme is `https`) asks to go ahead.
    pub(crate) fn enter(self: &Arc<Self>, key: &Arc<str>, tls: bool) -> Entered {
        let mut keys = self.lock();
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            keys.retain(|_, e| !e.idle());
        }
        let entry = keys.entry(key.clone()).or_default();
        match entry.turn(tls) {
            Turn::Dial => Entered::Now(None),
            Turn::Lead => Entered::Now(Some(self.lead(key))),
            Turn::Wait => {
                entry.held = entry.held.saturating_add(1);
                Entered::Held(Held {
                    turnover: self.clone(),
                    key: key.clone(),
                    tls,
                    served: entry.served,
                    notify: entry.notify.clone(),
                })
            }
        }
    }

    /// Streams the server of `key` takes on one connection before it ends
    /// it, if its `GOAWAY`s showed such a limit.
    pub(crate) fn streams_limit(&self, key: &str) -> Option<u32> {
        self.lock().get(key).and_then(|e| e.streams_limit)
    }

    /// A `GOAWAY` on a connection of `key` took `streams` streams and
    /// refused some the client had opened beyond: the server ends
    /// connections after so many requests (nginx's `keepalive_requests`,
    /// a load balancer's limit). Limits below [`MIN_STREAMS_LIMIT`] are not
    /// learnt; a later `GOAWAY` that refuses streams replaces the limit.
    pub(crate) fn learn_limit(&self, key: &str, streams: u32) {
        if streams < MIN_STREAMS_LIMIT {
            return;
        }
        if let Some(entry) = self.lock().get_mut(key) {
            entry.streams_limit = Some(streams);
        }
    }

    fn lead(self: &Arc<Self>, key: &Arc<str>) -> Lead {
        Lead {
            turnover: self.clone(),
            key: key.clone(),
            open: true,
        }
    }

    /// Changes the entry of `key` (if still there) and wakes its held
    /// dials.
    fn update(&self, key: &str, change: impl FnOnce(&mut Entry)) {
        let mut keys = self.lock();
        if let Some(entry) = keys.get_mut(key) {
            change(entry);
            entry.notify.notify_waiters();
        }
    }
}

/// The lead dial of a key: told what its connection turns out to be.
/// Dropped before it was told (the dial failed, or the connection ended
/// before it carried a stream), the next held dial leads.
pub(crate) struct Lead {
    turnover: Arc<Turnover>,
    key: Arc<str>,
    open: bool,
}

impl Lead {
    /// The connection speaks HTTP/1: the held dials go ahead.
    pub(crate) fn http1(mut self) {
        self.open = false;
        self.turnover.update(&self.key, |e| {
            e.spoke = Spoke::Http1;
            e.leading = false;
        });
    }

    /// The connection speaks HTTP/2 and carries its first stream: it is in
    /// hyper-util's pool, and the held dials end.
    pub(crate) fn http2_in_use(mut self) {
        self.open = false;
        self.turnover.update(&self.key, |e| {
            e.spoke = Spoke::Http2;
            e.leading = false;
            e.served = e.served.wrapping_add(1);
        });
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if self.open {
            self.turnover.update(&self.key, |e| e.leading = false);
        }
    }
}

impl fmt::Debug for Lead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lead").field("key", &self.key).finish()
    }
}

/// A dial held behind its key's lead (counted in its entry's `held`,
/// which keeps the entry, and so its `notify`, while the dial waits).
pub(crate) struct Held {
    turnover: Arc<Turnover>,
    key: Arc<str>,
    tls: bool,
    /// The key's `served` when the dial was held.
    served: u64,
    /// The entry's wake-up.
    notify: Arc<Notify>,
}

impl Held {
    /// Waits until the dial may go ahead (with a lead, when it leads now),
    /// or fails with [`Coalesced`] when a lead's connection took its place.
    pub(crate) async fn wait(self) -> Result<Option<Lead>, Coalesced> {
        loop {
            let notified = self.notify.notified();
            {
                let mut keys = self.turnover.lock();
                let entry = keys.entry(self.key.clone()).or_default();
                if entry.served != self.served {
                    return Err(Coalesced {
                        pool_key: self.key.clone(),
                        pooled: false,
                    });
                }
                match entry.turn(self.tls) {
                    Turn::Dial => return Ok(None),
                    Turn::Lead => return Ok(Some(self.turnover.lead(&self.key))),
                    // `notified` was made before this look, and a
                    // `Notified` hears every `notify_waiters` after it was
                    // made: no change after the look is missed.
                    Turn::Wait => {}
                }
            }
            notified.await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut keys = self.turnover.lock();
        if let Some(entry) = keys.get_mut(&self.key) {
            entry.held = entry.held.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn lead(e: Entered) -> Option<Lead> {
        match e {
            Entered::Now(lead) => lead,
            Entered::Held(_) => panic!("held"),
        }
    }

    fn held(e: Entered) -> Held {
        match e {
            Entered::Held(h) => h,
            Entered::Now(_) => panic!("not held"),
        }
    }

    #[tokio::test]
    async fn an_unknown_https_key_dials_once_then_coalesces_on_http2() {
        let t = Arc::new(Turnover::default());
        let k = key("https://a:443");
        let first = lead(t.enter(&k, true)).expect("leads");
        let mut waits: Vec<_> = (0..3)
            .map(|_| tokio_test::task::spawn(held(t.enter(&k, true)).wait()))
            .collect();
        for w in &mut waits {
            assert!(w.poll().is_pending());
        }
        first.http2_in_use();
        for w in &mut waits {
            assert!(w.is_woken());
            assert!(matches!(w.poll(), Poll::Ready(Err(Coalesced { .. }))));
        }
        // The next turnover: one leads again, the rest are held.
        let next = lead(t.enter(&k, true)).expect("leads");
        let mut w = tokio_test::task::spawn(held(t.enter(&k, true)).wait());
        assert!(w.poll().is_pending());
        drop(next);
        // The lead failed: the held dial leads.
        assert!(matches!(w.poll(), Poll::Ready(Ok(Some(_)))));
    }

    #[tokio::test]
    async fn an_http1_lead_lets_the_held_dials_go() {
        let t = Arc::new(Turnover::default());
        let k = key("https://b:443");
        let first = lead(t.enter(&k, true)).expect("leads");
        let mut w = tokio_test::task::spawn(held(t.enter(&k, true)).wait());
        assert!(w.poll().is_pending());
        first.http1();
        assert!(matches!(w.poll(), Poll::Ready(Ok(None))));
        // Now known as HTTP/1: nothing is held.
        assert!(lead(t.enter(&k, true)).is_none());
    }

    #[tokio::test]
    async fn plain_http_is_held_only_once_it_spoke_http2() {
        let t = Arc::new(Turnover::default());
        let k = key("http://c:80");
        assert!(lead(t.enter(&k, false)).is_none());
        assert!(lead(t.enter(&k, false)).is_none());
        // An `https` dial of the same key (never happens) learns it.
        let first = lead(t.enter(&k, true)).expect("leads");
        first.http2_in_use();
        let again = lead(t.enter(&k, false)).expect("known HTTP/2: leads");
        let h = held(t.enter(&k, false));
        drop(h);
        drop(again);
        let keys = t.lock();
        assert_eq!(keys.get("http://c:80").map(|e| e.held), Some(0));
    }

    #[tokio::test]
    async fn forgotten_keys_stay_bounded() {
        let t = Arc::new(Turnover::default());
        for i in 0..(MAX_KEYS * 2) {
            let k = key(&format!("https://h{i}:443"));
            if let Some(l) = lead(t.enter(&k, true)) {
                l.http1();
            }
        }
        assert!(t.lock().len() <= MAX_KEYS);
    }
}
