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
//! The book is kept without limits too, for the dials: it knows each
//! connection from its dial on, and counts the requests awaiting their
//! response heads. When a request must dial (no idle connection in the
//! pool) and the host has as many connections known, being dialed, or
//! forgotten while idle as such requests, one is on its way back to the
//! pool (hyper-util returns an HTTP/1 connection from a task of its own
//! after its body ended): the dial waits 10 ms for it if the host answered
//! within the last 50 ms, and on, 10 ms at a time and 100 ms at most,
//! while a response of the host that answered within the last 50 ms on a
//! connection that stays open was read to its end (the guarded reqwest
//! body tells the book, [`Returning`]; the return of its connection may
//! run late on a busy scheduler); it ends unmade if its request took one
//! (see the connector layer). With fewer, none is coming for it, and it
//! dials at once; so does a dial of a host that answered nothing lately
//! (what it missed in the pool was closed). A wait that saw no connection
//! come back counts one forgotten connection fewer (it was closed), and
//! the host's dials go at once for a second after it (bodies dropped early
//! and not drained close their connections unseen). A response that says
//! `Connection: close` takes its connection out of the book.

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
    /// Dials of the host's requests under way.
    dialing: usize,
    /// Connections forgotten (not seen for a while) and not seen again:
    /// closed, or idle behind busier ones in the pool.
    dormant: usize,
    /// A clock of the host's responses, for "seen longest ago".
    tick: u64,
    /// When the host last answered over an HTTP/1 connection that stays
    /// open: the connections that come back to the pool come back soon
    /// after.
    answered_at: Option<Instant>,
    /// When a dial last waited in vain for a connection coming back: the
    /// connections the book knows are closing unseen (bodies dropped before
    /// their end and not drained close theirs), and the host's dials go at
    /// once for [`VAIN_FOR`].
    vain_at: Option<Instant>,
    /// When the latest of the host's responses whose bodies were read to
    /// their ends on HTTP/1 connections that stay open answered: their
    /// connections are on their way back to the pool.
    ended_at: Option<Instant>,
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

/// What a response tells the book of its connection.
#[derive(Clone, Copy, Debug)]
struct Answer {
    /// It came over HTTP/1 (an HTTP/2 connection is no connection to
    /// rotate or to wait for).
    http1: bool,
    /// It said `Connection: close`: hyper closes its connection after it.
    closes: bool,
    /// Its connection's socket addresses, if known.
    pair: Option<Pair>,
}

/// A response whose HTTP/1 connection stays open: when its body ends,
/// the connection goes back to the pool, and the book is told
/// ([`Returning::ended`]).
#[derive(Debug)]
pub(crate) struct Returning {
    book: Arc<Book>,
    /// The response's host, and when it answered.
    kept: Kept,
}

/// An answer whose HTTP/1 connection stays open: its host, and when it
/// came.
#[derive(Debug)]
struct Kept {
    key: HostKey,
    at: Instant,
}

impl Returning {
    /// The response's body was read to its end: its connection is on its
    /// way back to the pool (a dial of the host waiting for one waits on,
    /// see [`Book::still_returning`]). The end counts from when the
    /// response answered: no clock is read for it.
    pub(crate) fn ended(self) {
        let Kept { key, at } = self.kept;
        let mut hosts = self.book.lock();
        if let Some(host) = hosts.get_mut(&key) {
            host.ended_at = host.ended_at.max(Some(at));
        }
    }
}

/// What a request took from the book.
#[derive(Debug)]
pub(crate) struct Ticket {
    key: HostKey,
    /// The request was asked to close its connection.
    close: bool,
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

    /// [`after`](Book::after) for what a reqwest request ended with; for
    /// a response whose HTTP/1 connection stays open, what its body tells
    /// the book when it ends.
    pub(crate) fn settle(
        self: &Arc<Self>,
        ticket: Option<Ticket>,
        response: Option<&::reqwest::Response>,
    ) -> Option<Returning> {
        let kept = self.after(
            ticket?,
            response.map(|r| (r.version(), r.headers(), r.extensions())),
        )?;
        Some(Returning {
            book: self.clone(),
            kept,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostKey, Host, BuildKeyHasher>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request for the host `key` is about to go out: whether it is to
    /// close its connection (then the header is set).
    pub(crate) fn before(&self, key: HostKey, headers: &mut http::HeaderMap) -> Ticket {
        let mut ticket = Ticket { key, close: false };
        let mut hosts = self.lock();
        let host = Self::host(&mut hosts, &ticket.key);
        let recent = host.recent();
        // Every request awaiting its head counts: a dial of the host
        // weighs them against its connections (`hold_or_dial`).
        host.in_flight = host.in_flight.saturating_add(1);
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
    /// carry its connection's addresses (HTTP/1 only) if it got one: if
    /// that HTTP/1 connection stays open, its host and when it answered.
    fn after(
        &self,
        ticket: Ticket,
        response: Option<(http::Version, &http::HeaderMap, &http::Extensions)>,
    ) -> Option<Kept> {
        let answer = match response {
            Some((version, headers, extensions)) => Answer {
                http1: matches!(version, http::Version::HTTP_10 | http::Version::HTTP_11),
                closes: crate::conn::says_close(headers),
                pair: extensions
                    .get::<HttpInfo>()
                    .map(|info| (info.local_addr(), info.remote_addr())),
            },
            None => Answer {
                http1: false,
                closes: false,
                pair: None,
            },
        };
        self.answered(ticket, answer)
    }

    /// [`after`](Book::after), with what the response said of its
    /// connection: if it stays open, the host and when it answered.
    fn answered(&self, ticket: Ticket, answer: Answer) -> Option<Kept> {
        // Read before the lock, which every request of the client takes,
        // and only for an answer that may keep its HTTP/1 connection (none
        // over HTTP/2).
        let now = (answer.http1 && answer.pair.is_some() && !answer.closes && !ticket.close)
            .then(Instant::now);
        let mut hosts = self.lock();
        let host = Self::host(&mut hosts, &ticket.key);
        if ticket.close {
            host.closing = host.closing.saturating_sub(1);
        }
        host.in_flight = host.in_flight.saturating_sub(1);
        let pair = answer.pair?;
        if !answer.http1 {
            // An HTTP/2 connection without ALPN (prior knowledge), known
            // from its dial as a connection like any other: it is no
            // HTTP/1 connection to rotate or to wait for.
            host.conns.remove(&pair);
            return None;
        }
        host.tick = host.tick.saturating_add(1);
        let tick = host.tick;
        if tick % SWEEP_EVERY == 0 {
            let recent = host.recent();
            let before = host.conns.len();
            host.conns.retain(|_, c| c.seen >= recent);
            // Forgotten, but maybe idle behind busier ones in the pool:
            // still counted by a dial's choice until seen again or until a
            // dial waited for a connection in vain.
            let forgotten = before.saturating_sub(host.conns.len());
            host.dormant = host.dormant.saturating_add(forgotten);
        }
        if ticket.close || answer.closes {
            // That connection closes after this response (on a due one or
            // not: a due one the pool did not hand out stays due; or the
            // server said so): it is not coming back to the pool.
            host.conns.remove(&pair);
            return None;
        }
        if !host.conns.contains_key(&pair) {
            // Every connection is known from its dial on: one seen anew was
            // forgotten while idle.
            host.dormant = host.dormant.saturating_sub(1);
        }
        host.answered_at = now;
        let conn = host.know(pair, self.life);
        conn.requests = conn.requests.saturating_add(1);
        conn.seen = tick;
        drop(hosts);
        Some(Kept {
            key: ticket.key,
            at: now?,
        })
    }

    /// `key`'s host in `hosts`, made if new (a client talking to more than
    /// [`MAX_HOSTS`] forgets them all and starts again).
    fn host<'a>(
        hosts: &'a mut HashMap<HostKey, Host, BuildKeyHasher>,
        key: &HostKey,
    ) -> &'a mut Host {
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(key) {
            hosts.clear();
        }
        hosts.entry(key.clone()).or_default()
    }

    /// A request of the host `key` is about to dial, its connector ready:
    /// `false` when it is to wait a moment first for a connection coming
    /// back to the pool, `true` when it dials now (and the dial is counted
    /// under way, see [`dial_ended`](Book::dial_ended)).
    ///
    /// A connection comes back for it when the host has as many
    /// connections known, being dialed, or forgotten while idle as
    /// requests awaiting their response heads (each of those holds one, or
    /// waits for one; this one among them), and answered within the last
    /// [`RETURN_RECENT`]: hyper-util hands an HTTP/1 connection back to its
    /// pool from a task of its own after its body ended, so a request sent
    /// meanwhile finds none idle and dials, and the dial, when the request
    /// then gets the returning connection, still pools one more. With
    /// fewer connections than such requests, the dial is needed, and
    /// waiting would keep the host on fewer connections than its requests;
    /// a host that answered nothing lately has nothing on its way back (the
    /// connections known that are not in the pool were closed: a server's
    /// idle timeout, between two requests of a quiet client); and so has a
    /// host whose last wait, within [`VAIN_FOR`], saw none come back. The
    /// decision and the count of dials under way change under one lock, so
    /// that requests dialing at once do not all dial for one missing
    /// connection.
    pub(crate) fn hold_or_dial(&self, key: &HostKey) -> bool {
        let now = Instant::now();
        let mut hosts = self.lock();
        let host = Self::host(&mut hosts, key);
        if host.one_coming_back(now) {
            return false;
        }
        host.dialing = host.dialing.saturating_add(1);
        true
    }

    /// Whether a dial of the host `key` would wait for a connection coming
    /// back now (as [`hold_or_dial`](Book::hold_or_dial) decides, without
    /// counting a dial).
    #[cfg(test)]
    fn still_coming(&self, key: &HostKey) -> bool {
        let now = Instant::now();
        let mut hosts = self.lock();
        Self::host(&mut hosts, key).one_coming_back(now)
    }

    /// Whether a dial of the host `key` that waited for a connection coming
    /// back is to wait on: the host has as many connections as requests
    /// awaiting their heads (as [`hold_or_dial`](Book::hold_or_dial)
    /// counts), and a response of the host that answered within the last
    /// [`RETURN_RECENT`] on a connection that stays open was read to its
    /// end.
    ///
    /// hyper-util hands that connection back from a task of its own, which
    /// a busy scheduler may run later than the first wait; a connection
    /// closed unseen (a body dropped early and not drained) comes with no
    /// such end, and its host's dials do not wait on.
    pub(crate) fn still_returning(&self, key: &HostKey) -> bool {
        let now = Instant::now();
        let mut hosts = self.lock();
        let host = Self::host(&mut hosts, key);
        host.enough_coming(now) && recent(host.ended_at, now)
    }

    /// When the latest of the host `key`'s responses read to their ends on
    /// connections that stay open answered, if one was.
    #[cfg(test)]
    pub(crate) fn ended_at(&self, key: &HostKey) -> Option<Instant> {
        self.lock().get(key).and_then(|host| host.ended_at)
    }

    /// A request of the host `key` dials (whatever the connections known);
    /// `in_vain`: after waiting for a connection coming back, and none came
    /// (one connection fewer is counted for the host's dials, of those
    /// forgotten while idle: it was closed).
    pub(crate) fn dial_started(&self, key: &HostKey, in_vain: bool) {
        let now = in_vain.then(Instant::now);
        let mut hosts = self.lock();
        let host = Self::host(&mut hosts, key);
        if in_vain {
            host.dormant = host.dormant.saturating_sub(1);
            host.vain_at = now;
        }
        host.dialing = host.dialing.saturating_add(1);
    }

    /// A dial of the host `key` counted under way ended: with the HTTP/1
    /// connection whose socket addresses are `pair`, known from now on as
    /// if seen (its age counts from its dial), or with none.
    pub(crate) fn dial_ended(&self, key: &HostKey, pair: Option<Pair>) {
        let mut hosts = self.lock();
        let host = Self::host(&mut hosts, key);
        host.dialing = host.dialing.saturating_sub(1);
        if let Some(pair) = pair {
            host.know(pair, self.life);
        }
    }
}

/// How long after its host's last answer a connection may still be on its
/// way back to the pool (hyper-util's return runs on a task of its own,
/// which a busy scheduler may run tens of milliseconds late).
const RETURN_RECENT: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether `at` is within [`RETURN_RECENT`] before `now`.
fn recent(at: Option<Instant>, now: Instant) -> bool {
    at.is_some_and(|at| now.saturating_duration_since(at) < RETURN_RECENT)
}

/// How long a host's dials go at once after one waited in vain for a
/// connection coming back: bodies dropped early and not drained (an
/// endless stream, a body past the drain's budget) close their connections
/// where the book cannot see it, and a wait before each dial cost every
/// such request 10 ms (600 req/s where bare reqwest made 2,000).
const VAIN_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a host's connections not seen recently are forgotten (in
/// responses of the host).
const SWEEP_EVERY: u64 = 256;

impl Host {
    /// Whether a connection is coming back to the pool for a request that
    /// found none idle, at `now` (see [`Book::hold_or_dial`]).
    fn one_coming_back(&self, now: Instant) -> bool {
        self.enough_coming(now) && recent(self.answered_at, now)
    }

    /// Whether the host's connections known, being dialed, or forgotten
    /// while idle are as many as its requests awaiting their response
    /// heads (one of them is coming back for a request that found none
    /// idle), and no wait for one was in vain within [`VAIN_FOR`].
    fn enough_coming(&self, now: Instant) -> bool {
        let coming = self
            .conns
            .len()
            .saturating_add(self.dormant)
            .saturating_add(self.dialing);
        coming > 0
            && coming >= self.in_flight
            && self
                .vain_at
                .is_none_or(|at| now.saturating_duration_since(at) >= VAIN_FOR)
    }

    /// The connection `pair`, made known (seen now) if it was not, the
    /// one seen longest ago forgotten past [`MAX_CONNS`].
    fn know(&mut self, pair: Pair, life: Lifecycle) -> &mut Conn {
        if self.conns.len() >= MAX_CONNS && !self.conns.contains_key(&pair) {
            let stalest = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.seen)
                .map(|(p, _)| *p);
            if let Some(stalest) = stalest {
                self.conns.remove(&stalest);
            }
        }
        let tick = self.tick;
        self.conns.entry(pair).or_insert_with(|| Conn {
            deadline: life
                .age_of_one()
                .and_then(|age| Instant::now().checked_add(age)),
            requests: 0,
            seen: tick,
        })
    }

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
    use std::time::Duration;

    /// A book that knows one HTTP/1 connection of `http://a:80`, from its
    /// dial (no request under way).
    fn one_connection() -> (Arc<Book>, HostKey, Pair) {
        let book = Book::new(Lifecycle::default());
        let key = HostKey::from_uri(&"http://a:80".parse().unwrap()).unwrap();
        let pair: Pair = (
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        assert!(book.hold_or_dial(&key), "nothing known: the dial goes");
        book.dial_ended(&key, Some(pair));
        (book, key, pair)
    }

    /// An HTTP/1 answer on `pair` that keeps its connection.
    fn kept(pair: Pair) -> Answer {
        Answer {
            http1: true,
            closes: false,
            pair: Some(pair),
        }
    }

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
            Some((
                http::Version::HTTP_11,
                &http::HeaderMap::new(),
                &http::Extensions::new(),
            )),
        );
        let ticket = book.before(key, &mut headers);
        assert!(!ticket.close);
        assert!(headers.get(http::header::CONNECTION).is_none());
    }

    /// A dial waits for a connection coming back only soon after its host
    /// answered: the connection a quiet client finds gone from the pool
    /// was closed by the server's idle timeout, and waiting for it cost
    /// each of its requests 10 ms.
    #[tokio::test(start_paused = true)]
    async fn a_dial_waits_for_a_connection_only_soon_after_its_host_answered() {
        let (book, key, pair) = one_connection();
        let ask = || book.before(key.clone(), &mut http::HeaderMap::new());
        book.answered(ask(), kept(pair));
        // A request just after finds the connection out of the pool: it is
        // coming back.
        let waiting = ask();
        assert!(!book.hold_or_dial(&key), "coming back: the dial waits");
        tokio::time::advance(Duration::from_millis(40)).await;
        assert!(book.still_coming(&key));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!book.still_coming(&key), "60 ms without an answer");
        // More requests awaiting heads than connections: none comes back
        // for this one.
        let other = ask();
        assert!(!book.still_coming(&key));
        book.answered(other, kept(pair));
        assert!(book.still_coming(&key), "answered again, one request waits");
        book.answered(waiting, kept(pair));
        // A quiet client: the next request, 100 ms after the last answer,
        // dials at once.
        tokio::time::advance(Duration::from_millis(100)).await;
        let _next = ask();
        assert!(book.hold_or_dial(&key), "nothing answered lately: dial now");
    }

    /// A response that says `Connection: close` ends its connection: a
    /// dial of the host then waits for no connection coming back (it held
    /// 10 ms for each such response before, for every request to a server
    /// that closes each connection).
    #[tokio::test(start_paused = true)]
    async fn a_connection_its_server_closes_is_not_waited_for() {
        let (book, key, pair) = one_connection();
        let first = book.before(key.clone(), &mut http::HeaderMap::new());
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("keep-alive, Close"),
        );
        book.answered(
            first,
            Answer {
                closes: crate::conn::says_close(&headers),
                ..kept(pair)
            },
        );
        let _next = book.before(key.clone(), &mut http::HeaderMap::new());
        assert!(book.hold_or_dial(&key), "no connection left to wait for");
    }

    /// A dial that waited its first 10 ms waits on while a body of its host
    /// ended lately with its connection kept: that connection is coming
    /// back, and hyper-util's return of it may run late (11–14 dials for
    /// ten slots in 5 of 60 runs of the bursty test beside four busy
    /// loops). A body dropped before its end tells nothing, and the dial
    /// goes.
    #[tokio::test(start_paused = true)]
    async fn a_dial_waits_on_while_its_host_s_bodies_end_with_connections_kept() {
        let (book, key, pair) = one_connection();
        let ask = || book.before(key.clone(), &mut http::HeaderMap::new());
        let answered = book.answered(ask(), kept(pair));
        let returning = Returning {
            book: book.clone(),
            kept: answered.expect("its connection stays open"),
        };
        let _waiting = ask();
        assert!(!book.hold_or_dial(&key), "coming back: the dial waits");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!book.still_returning(&key), "no body ended: the dial goes");
        returning.ended();
        assert!(
            book.still_returning(&key),
            "a body ended: its connection comes"
        );
        // Counted from the answer, 10 ms before the end.
        tokio::time::advance(Duration::from_millis(30)).await;
        assert!(book.still_returning(&key));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!book.still_returning(&key), "60 ms since: none is coming");
        // An answer that closes its connection, or one over HTTP/2, has no
        // body end to tell.
        let closes = Answer {
            closes: true,
            ..kept(pair)
        };
        assert!(book.answered(ask(), closes).is_none());
        let http2 = Answer {
            http1: false,
            ..kept(pair)
        };
        assert!(book.answered(ask(), http2).is_none());
    }

    /// A dial that waited in vain (the connection it waited for was closed
    /// unseen: a body dropped early and not drained) lets the host's next
    /// dials go at once for a second; before, each of them waited 10 ms.
    #[tokio::test(start_paused = true)]
    async fn after_a_wait_in_vain_the_host_s_dials_go_at_once_for_a_while() {
        let (book, key, pair) = one_connection();
        let ask = || book.before(key.clone(), &mut http::HeaderMap::new());
        book.answered(ask(), kept(pair));
        let _waiting = ask();
        assert!(!book.hold_or_dial(&key), "coming back: the dial waits");
        tokio::time::advance(Duration::from_millis(10)).await;
        book.dial_started(&key, true);
        book.answered(ask(), kept(pair));
        assert!(!book.still_coming(&key), "waited in vain: dials go at once");
        tokio::time::advance(Duration::from_secs(1)).await;
        book.answered(ask(), kept(pair));
        assert!(book.still_coming(&key), "a second later, dials wait again");
    }
}
