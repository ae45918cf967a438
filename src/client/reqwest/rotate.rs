//! Rotation of reqwest's HTTP/1 connections by age and by count of
//! requests, from outside its pool.
//!
//! reqwest's connections are out of reach (its connector layer must return
//! reqwest's sealed `Conn`, and request extensions do not reach hyper), so
//! a connection cannot be told to close. What reaches it is the request: an
//! HTTP/1 request that says `Connection: close` makes hyper close its
//! connection after the response (RFC 9112 §9.6), and the response's
//! `HttpInfo` (its socket addresses) names the connection it came on.
//!
//! So the book keeps, per connection seen (by its address pair), when it
//! was first seen and how many responses it carried; a connection whose
//! next request would be its last, or whose age ran out, is due. While a
//! host has more due connections than requests already asked to close
//! one, the next request for the host says `Connection: close`. The pool
//! chooses the connection, not the guard: a request asked to close lands
//! on the due connection when it is the one the pool hands out (always,
//! for sequential requests on one connection); on another, it retires that
//! one early, and the due connection stays due. A connection not seen for
//! a while (8 responses of its host per connection known, at least 64) is
//! taken as closed: it no longer makes requests close, and is forgotten.
//!
//! The book is kept without limits too: when a request starts for a host
//! with an HTTP/1 connection known, one may be on its way back to the pool
//! (hyper-util returns an HTTP/1 connection from a task of its own after
//! its body ended, and which requests still read their bodies cannot be
//! seen from here), so a dial the request makes waits 10 ms for it and
//! ends unmade if its request took one (see the connector layer). A dial
//! that was needed costs those 10 ms once.

use std::collections::HashMap;

use crate::conn::addrs::PairState;
use crate::key::{BuildKeyHasher, HostKey};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use hyper_util::client::legacy::connect::HttpInfo;
use tokio::time::Instant;

use crate::conn::lifecycle::Lifecycle;

/// Hosts remembered at most (a client talking to more forgets them all
/// and starts again).
const MAX_HOSTS: usize = 4096;

/// Connections remembered at most per host; past it, the one seen longest
/// ago is forgotten.
const MAX_CONNS: usize = 1024;

/// A connection by its socket addresses (local, remote).
type Pair = (SocketAddr, SocketAddr);

/// The connections of one client, per host, against the guard's
/// [`Lifecycle`].
#[derive(Debug)]
pub(crate) struct Book {
    life: Lifecycle,
    hosts: Mutex<HashMap<HostKey, Host, BuildKeyHasher>>,
}

#[derive(Debug, Default)]
struct Host {
    conns: HashMap<Pair, Conn, PairState>,
    /// Requests under way that were asked to close their connection.
    closing: usize,
    /// Requests under way (before their response head).
    in_flight: usize,
    /// A clock of the host's responses, for "seen longest ago".
    tick: u64,
}

#[derive(Debug)]
struct Conn {
    /// When the connection's age runs out.
    deadline: Option<Instant>,
    /// Responses it carried.
    requests: u64,
    /// The host's tick when it was last seen.
    seen: u64,
}

/// What a request took from the book.
#[derive(Debug)]
pub(crate) struct Ticket {
    key: HostKey,
    /// The request was asked to close its connection.
    close: bool,
    /// Counted in its host's `in_flight`.
    counted: bool,
    /// When it started, an HTTP/1 connection of the host was known: one
    /// may be coming back to the pool.
    pub(crate) idle_known: bool,
}

impl Book {
    /// A book for `life` (kept without limits too: the connections it
    /// knows tell a dial that one may be coming back to the pool).
    pub(crate) fn new(life: Lifecycle) -> Arc<Book> {
        Arc::new(Book {
            life,
            hosts: Mutex::default(),
        })
    }

    /// [`before`](Book::before) for a reqwest request whose pool key is
    /// `key` (none without a host).
    pub(crate) fn ticket(
        &self,
        key: Option<HostKey>,
        request: &mut ::reqwest::Request,
    ) -> Option<Ticket> {
        Some(self.before(key?, request.headers_mut()))
    }

    /// Tells the request's dial scope what the ticket knows: an HTTP/1
    /// connection of its host may be coming back to the pool.
    pub(crate) fn tell(ticket: Option<&Ticket>, scope: Option<&super::scope::DialScope>) {
        if let (Some(ticket), Some(scope)) = (ticket, scope) {
            if ticket.idle_known {
                scope.expect_a_return();
            }
        }
    }

    /// [`after`](Book::after) for what a reqwest request ended with.
    pub(crate) fn settle(&self, ticket: Option<Ticket>, response: Option<&::reqwest::Response>) {
        if let Some(ticket) = ticket {
            self.after(ticket, response.map(|r| (r.version(), r.extensions())));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostKey, Host, BuildKeyHasher>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request for the host `key` is about to go out: whether it is to
    /// close its connection (then the header is set).
    pub(crate) fn before(&self, key: HostKey, headers: &mut http::HeaderMap) -> Ticket {
        let mut ticket = Ticket {
            key,
            close: false,
            counted: false,
            idle_known: false,
        };
        let mut hosts = self.lock();
        let Some(host) = hosts.get_mut(&ticket.key) else {
            return ticket;
        };
        let recent = host.recent();
        let known = host.conns.values().filter(|c| c.seen >= recent).count();
        ticket.idle_known = known > 0;
        host.in_flight = host.in_flight.saturating_add(1);
        ticket.counted = true;
        if !self.life.any() || headers.contains_key(http::header::CONNECTION) {
            // No limit; or the caller's own header (a close, an upgrade),
            // left alone.
            return ticket;
        }
        let now = Instant::now();
        let max = self.life.max_requests;
        let due = host
            .conns
            .values()
            .filter(|c| c.due(max, now) && c.seen >= recent)
            .count();
        if due > host.closing {
            host.closing = host.closing.saturating_add(1);
            ticket.close = true;
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        ticket
    }

    /// The request of `ticket` ended, with a response whose `extensions`
    /// carry its connection's addresses (HTTP/1 only) if it got one.
    pub(crate) fn after(
        &self,
        ticket: Ticket,
        response: Option<(http::Version, &http::Extensions)>,
    ) {
        let pair = response.and_then(|(version, extensions)| {
            let http1 = matches!(version, http::Version::HTTP_10 | http::Version::HTTP_11);
            let info = extensions.get::<HttpInfo>()?;
            http1.then(|| (info.local_addr(), info.remote_addr()))
        });
        if !ticket.close && !ticket.counted && pair.is_none() {
            return;
        }
        let mut hosts = self.lock();
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(&ticket.key) {
            hosts.clear();
        }
        let host = hosts.entry(ticket.key).or_default();
        if ticket.close {
            host.closing = host.closing.saturating_sub(1);
        }
        if ticket.counted {
            host.in_flight = host.in_flight.saturating_sub(1);
        }
        let Some(pair) = pair else { return };
        host.tick = host.tick.saturating_add(1);
        let tick = host.tick;
        if tick % SWEEP_EVERY == 0 {
            let recent = host.recent();
            host.conns.retain(|_, c| c.seen >= recent);
        }
        if ticket.close {
            // That connection closes after this response (on a due one or
            // not: a due one the pool did not hand out stays due).
            host.conns.remove(&pair);
            return;
        }
        if host.conns.len() >= MAX_CONNS && !host.conns.contains_key(&pair) {
            let stalest = host
                .conns
                .iter()
                .min_by_key(|(_, c)| c.seen)
                .map(|(p, _)| *p);
            if let Some(stalest) = stalest {
                host.conns.remove(&stalest);
            }
        }
        let life = self.life;
        let conn = host.conns.entry(pair).or_insert_with(|| Conn {
            deadline: life
                .age_of_one()
                .and_then(|age| Instant::now().checked_add(age)),
            requests: 0,
            seen: tick,
        });
        conn.requests = conn.requests.saturating_add(1);
        conn.seen = tick;
    }
}

/// How often a host's connections not seen recently are forgotten (in
/// responses of the host).
const SWEEP_EVERY: u64 = 256;

impl Host {
    /// The tick from which a connection counts as seen recently: within
    /// the last 8 responses per connection known, and at least 64. A
    /// connection the pool hands out comes back well within that; one not
    /// seen for longer has closed (or sits idle behind busier ones), and
    /// no request is asked to close for it.
    fn recent(&self) -> u64 {
        let window = u64::try_from(self.conns.len())
            .unwrap_or(u64::MAX)
            .saturating_mul(8)
            .max(64);
        self.tick.saturating_sub(window)
    }
}

impl Conn {
    /// Whether the connection's next request is to be its last: it would
    /// reach `max`, or its age ran out.
    fn due(&self, max: Option<u64>, now: Instant) -> bool {
        max.is_some_and(|max| self.requests.saturating_add(1) >= max)
            || self.deadline.is_some_and(|at| now >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_host_never_answered_over_http1_is_never_asked_to_close() {
        let book = Book::new(Lifecycle {
            max_age: None,
            max_requests: Some(1),
        });
        let key = HostKey::from_uri(&"http://a:80".parse().unwrap()).unwrap();
        let mut headers = http::HeaderMap::new();
        let ticket = book.before(key.clone(), &mut headers);
        assert!(!ticket.close);
        // A response without socket addresses (not hyper-util's): nothing
        // learnt, nothing due.
        book.after(
            ticket,
            Some((http::Version::HTTP_11, &http::Extensions::new())),
        );
        let ticket = book.before(key, &mut headers);
        assert!(!ticket.close);
        assert!(headers.get(http::header::CONNECTION).is_none());
    }
}
