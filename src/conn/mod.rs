//! What a connection is: its exchanges, read off the bytes that cross it,
//! the handle other parts of the crate use to see and steer it, and the
//! record of a tracked connection (its responses, why it closed).
//!
//! Depends on nothing else in the crate but `key`: the connector's IO feeds
//! the [`Tracker`] (HTTP/1) and the `http2` frame-header reader (streams,
//! their ends, `GOAWAY`), publishes what it learns in the connection's
//! [`Link`]; the `turnover` lets one dial at a time go ahead for a pool key
//! that speaks HTTP/2;
//! the per-host registry and the retry read the `Link`; the drain and the
//! metrics layer report a response's fate to its connection's [`Record`],
//! which tells its [`ConnObserver`] (the metrics) when it closes and why.
//!
//! # hyper is the authority
//!
//! What the tracker decides never depends on reading bytes differently from
//! hyper (see the `http1` module for the details):
//!
//! - exchange boundaries, and so whether a connection was reused, come
//!   from the requests hyper writes (it writes the next only once it has
//!   read the whole response to the last);
//! - a request is answered once any byte was read after it went out, with
//!   no parsing at all;
//! - "idle", which lets the guard retire a connection, comes from reading
//!   responses with hyper's own rules and default parser configuration.
//!   The client builder's parser options are not visible to the guard, and
//!   need not be: a lenient option only makes hyper accept a head that the
//!   tracker, reading strictly, is unsure of (and then decides nothing
//!   until hyper's next request), and a stricter one only makes hyper reject
//!   and close a connection the tracker took as idle;
//! - a retirement fails hyper's idle read with [`Retired`] rather than an
//!   end of file, so that even a disagreement could fail a body, never cut
//!   it short; and the retry reads hyper's errors ("canceled", `Retired`)
//!   for requests that never left.

// Without hyper-util there are no tracked connections: the drain and the
// metrics still look for their records, which never come.
#![cfg_attr(not(feature = "hyper-util"), allow(dead_code))]

#[cfg(feature = "hyper-util")]
pub(crate) mod addrs;
mod cost;
#[cfg(feature = "hyper-util")]
pub(crate) mod http1;
#[cfg(feature = "hyper-util")]
pub(crate) mod http2;
#[cfg(feature = "hyper-util")]
pub(crate) mod keep_alive;
pub(crate) mod lifecycle;
mod phase;
mod reason;
mod record;
#[cfg(feature = "hyper-util")]
pub(crate) mod turnover;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;

pub(crate) use self::cost::{Demand, DialCosts, Pricing};
#[cfg(feature = "hyper-util")]
pub(crate) use self::http1::{Event, Tracker};
pub(crate) use self::phase::Phase;
pub use self::reason::CloseReason;
pub(crate) use self::record::{BodyEnd, ConnObserver, Exchange, Record, Stamp};

thread_local! {
    /// How many request futures' polls under the guard's layer this thread
    /// is inside: a dial polled outside them was left to finish in the
    /// background (its request got a pooled connection). A plain
    /// thread-local count, not a task-local: a poll is synchronous, and this
    /// costs two increments where a task-local's scope swaps a value in and
    /// out.
    static IN_REQUEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `poll`, one poll of a request's future, marked as such for the
/// dials it makes ([`polled_for_a_request`]).
#[inline(always)]
pub(crate) fn in_request<R>(poll: impl FnOnce() -> R) -> R {
    /// Counts the poll out again, also when it unwinds.
    struct Out;
    impl Drop for Out {
        fn drop(&mut self) {
            IN_REQUEST.with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
    IN_REQUEST.with(|n| n.set(n.get().saturating_add(1)));
    let _out = Out;
    poll()
}

/// Whether the current poll is one of a request's future, under the
/// guard's layer.
pub(crate) fn polled_for_a_request() -> bool {
    IN_REQUEST.with(|n| n.get() > 0)
}

/// hyper's `from_digits`: a decimal number without sign, at most
/// `u64::MAX` (a `Content-Length` value as hyper reads it).
pub(crate) fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// The task of a connection's IO while it waits on a read, to wake when
/// something it must act on changed elsewhere.
#[derive(Debug, Default)]
pub(crate) struct ReadWaker(Mutex<Option<Waker>>);

impl ReadWaker {
    /// Remembers `waker` (unless it would wake the same task already).
    pub(crate) fn park(&self, waker: &Waker) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// Wakes the remembered task, if any. The task stays remembered: its
    /// IO, which remembers what it parked, parks again only with another
    /// task (no lock on every read of an idle connection).
    pub(crate) fn wake(&self) {
        let waker = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Forgets the remembered task (its IO is gone).
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// What one connection shows the rest of the crate: its phase and the
/// exchanges it completed (published by its IO after every read and
/// write), the pool key it was dialed for, and the task to wake to make it
/// look at itself again.
#[derive(Debug)]
pub(crate) struct Link {
    /// The phase (low 8 bits) and the exchanges completed (the rest), in
    /// one word so that a reader never sees one without the other.
    state: AtomicU64,
    /// A request or a final response said the connection ends after it.
    closing: AtomicBool,
    /// `scheme://authority` as the client dialed it, in lower case: the
    /// key under which hyper-util pools the connection.
    pool_key: Arc<str>,
    /// The IO's task while it waits on an idle read.
    waker: ReadWaker,
    /// When the connection last finished an exchange (or opened), on a
    /// process-wide logical clock: the least recently used idle
    /// connection is the one with the smallest stamp.
    used: AtomicU64,
    /// When the connection was made.
    born: tokio::time::Instant,
    /// The connection is to take no new request (a `GOAWAY`, or nearly
    /// as many streams as its server takes).
    gone_away: AtomicBool,
    /// The last stream id of the server's first `GOAWAY` (`u32::MAX`:
    /// none yet).
    first_goaway: AtomicU32,
    /// The connection's read ended (end of file or an error) while an
    /// HTTP/2 stream the server took had not ended.
    ended: AtomicBool,
    /// The connection's IO was dropped: hyper is done with it.
    closed: AtomicBool,
    /// `close_idle` asked the connection to close if it is idle.
    evict: AtomicBool,
    /// Takes the connection out of its client's pool (hyper-util's
    /// `Connected::poison`, which only a request can reach): armed by the
    /// first request that learns its connection, called on `GOAWAY`.
    poison: PoisonSlot,
}

/// What takes a connection out of its client's pool.
pub(crate) type Poison = Box<dyn FnOnce() + Send>;

/// Where a connection's poison stands.
#[derive(Default)]
enum PoisonState {
    /// No request learnt the connection yet.
    #[default]
    Unarmed,
    /// Ready for a `GOAWAY`.
    Armed(Poison),
    /// Given.
    Given,
}

#[derive(Default)]
struct PoisonSlot(Mutex<PoisonState>);

impl PoisonSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoisonState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for PoisonSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match *self.lock() {
            PoisonState::Unarmed => "unarmed",
            PoisonState::Armed(_) => "armed",
            PoisonState::Given => "given",
        })
    }
}

/// How long a connection that has carried no request yet is left alone:
/// hyper-util writes a dial's request right after its handshake, and ending
/// a fresh connection before that fails the request (not retried). A fresh
/// connection idle for longer is one nobody waited for (its dial lost the
/// race to a pooled connection), which may make room like any idle one.
pub(crate) const FRESH_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// The logical clock of [`Link::touch`]: one tick per exchange completed
/// or connection opened, process-wide.
static USE_CLOCK: AtomicU64 = AtomicU64::new(0);

impl Link {
    /// The link of a new connection dialed for `pool_key`.
    pub(crate) fn new(pool_key: Arc<str>) -> Arc<Self> {
        Arc::new(Link {
            state: AtomicU64::new(Phase::Idle as u64),
            closing: AtomicBool::new(false),
            pool_key,
            waker: ReadWaker::default(),
            used: AtomicU64::new(USE_CLOCK.fetch_add(1, Relaxed)),
            born: tokio::time::Instant::now(),
            gone_away: AtomicBool::new(false),
            first_goaway: AtomicU32::new(u32::MAX),
            ended: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            evict: AtomicBool::new(false),
            poison: PoisonSlot::default(),
        })
    }

    /// Whether a request already armed the connection's poison (or gave
    /// it).
    pub(crate) fn poison_armed(&self) -> bool {
        !matches!(*self.poison.lock(), PoisonState::Unarmed)
    }

    /// `poison` takes the connection out of its client's pool: given now
    /// if the connection already went away (a `GOAWAY` before any
    /// response), else when it does.
    pub(crate) fn arm_poison(&self, poison: Poison) {
        let mut slot = self.poison.lock();
        if !matches!(*slot, PoisonState::Unarmed) {
            return;
        }
        if self.gone_away.load(Relaxed) {
            *slot = PoisonState::Given;
            drop(slot);
            poison();
        } else {
            *slot = PoisonState::Armed(poison);
        }
    }

    /// The server said `GOAWAY`, or the connection carried nearly as many
    /// streams as its server takes: no new request is to go to it. Streams
    /// under way finish on it; a new request would race hyper's shutdown of the
    /// connection (and fail, or, with hyper 1.12, wait for ever: see the
    /// `retry` module).
    pub(crate) fn went_away(&self) {
        let poison = {
            let mut slot = self.poison.lock();
            self.gone_away.store(true, Relaxed);
            match std::mem::take(&mut *slot) {
                PoisonState::Armed(poison) => {
                    *slot = PoisonState::Given;
                    Some(poison)
                }
                state => {
                    *slot = state;
                    None
                }
            }
        };
        if let Some(poison) = poison {
            poison();
        }
    }

    /// The server said `GOAWAY` with `last_stream`: the connection leaves
    /// the pool ([`went_away`](Link::went_away)), and the first `GOAWAY` is
    /// kept.
    pub(crate) fn goaway(&self, last_stream: u32) {
        let _ = self
            .first_goaway
            .compare_exchange(u32::MAX, last_stream, Relaxed, Relaxed);
        self.went_away();
    }

    /// hyper dropped the connection's IO.
    pub(crate) fn close(&self) {
        self.closed.store(true, Relaxed);
        self.waker.clear();
    }

    /// Whether hyper dropped the connection's IO: every HTTP/2 stream on it
    /// has ended, with a response or an error.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// The connection's read ended (an end of file, or an error); `open`:
    /// with an HTTP/2 stream the server took still without its whole
    /// response (or, not HTTP/2, whatever was under way).
    pub(crate) fn read_ended(&self, open: bool) {
        if open {
            self.ended.store(true, Relaxed);
        }
    }

    /// Whether an HTTP/2 request that failed with this connection's
    /// `GOAWAY` was surely not processed. h2 keeps the server's first
    /// `GOAWAY` as the connection's error: it fails with it the streams
    /// above its last stream id (which the server did not process, RFC
    /// 9113 §6.8) and every request handed to it later (never sent). The
    /// exceptions: a first `GOAWAY` with the largest id (a graceful
    /// shutdown's "all, for now", after which the real last id comes in a
    /// second one), and a connection whose read then ended with streams the
    /// server took still open, which h2 fails, processed or not, with the
    /// same error.
    pub(crate) fn goaway_refused(&self) -> bool {
        self.first_goaway.load(Relaxed) < 0x7fff_ffff && !self.ended.load(Relaxed)
    }

    /// When a connection that has carried no request may make room for a
    /// dial ([`FRESH_GRACE`] after it was made).
    pub(crate) fn fresh_until(&self) -> Option<tokio::time::Instant> {
        self.born.checked_add(FRESH_GRACE)
    }

    /// Whether the connection may be closed to make room for a dial, if
    /// idle: it completed an exchange, or was made more than
    /// [`FRESH_GRACE`] ago.
    pub(crate) fn may_retire(&self, now: tokio::time::Instant) -> bool {
        self.completed() > 0 || self.fresh_until().is_none_or(|until| now >= until)
    }

    /// The connection finished an exchange: it is now the most recently
    /// used.
    pub(crate) fn touch(&self) {
        self.used.store(USE_CLOCK.fetch_add(1, Relaxed), Relaxed);
    }

    /// When the connection was last used, on the logical clock of
    /// [`touch`](Link::touch): smaller is longer ago.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// What the connection is doing, as its IO last published.
    pub(crate) fn phase(&self) -> Phase {
        Self::phase_of(self.state.load(Relaxed))
    }

    /// [`phase`](Link::phase) for a dial choosing the idle connections to
    /// close: in one total order with the idle phase's publication and the
    /// dial's count (see [`publish`](Link::publish)).
    #[cfg(feature = "hyper-util")]
    pub(crate) fn phase_for_dial(&self) -> Phase {
        Self::phase_of(self.state.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Exchanges the connection completed.
    pub(crate) fn completed(&self) -> u64 {
        self.state.load(Relaxed) >> 8
    }

    /// The exchange the connection is on: the one under way, else the last
    /// it completed (0 before its first). Not meaningful once the
    /// connection stopped being HTTP/1.
    pub(crate) fn latest(&self) -> u64 {
        let state = self.state.load(Relaxed);
        let busy = !matches!(Self::phase_of(state), Phase::Idle);
        (state >> 8).saturating_add(u64::from(busy))
    }

    fn phase_of(state: u64) -> Phase {
        Phase::from_u8((state & 0xff) as u8)
    }

    /// Whether the connection is to take no new request (a `GOAWAY`, its
    /// server's stream limit, or a retirement).
    pub(crate) fn gone_away(&self) -> bool {
        self.gone_away.load(Relaxed)
    }

    /// Whether the HTTP/1 connection, idle between exchanges, is about to
    /// be (or is) in its pool, ready for a request: it served, and nothing
    /// ends it.
    pub(crate) fn reusable_idle(&self) -> bool {
        self.phase() == Phase::Idle
            && self.completed() >= 1
            && !self.closing()
            && !self.gone_away()
            && !self.is_closed()
    }

    /// Whether the connection speaks HTTP/2 and takes new streams: hyper-
    /// util's pool shares it with every request of its key (nothing ends
    /// it: no `GOAWAY`, no retirement, not closed).
    pub(crate) fn live_http2(&self) -> bool {
        self.phase() == Phase::Http2 && !self.closing() && !self.gone_away() && !self.is_closed()
    }

    /// Whether a request or a final response said the connection ends
    /// after its exchange.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    /// The pool key the connection was dialed for.
    pub(crate) fn pool_key(&self) -> &Arc<str> {
        &self.pool_key
    }

    /// Publishes what `tracker` says now.
    #[cfg(feature = "hyper-util")]
    pub(crate) fn publish(&self, tracker: &Tracker) {
        if tracker.closing() && !self.closing.load(Relaxed) {
            self.closing.store(true, Relaxed);
        }
        // Exchanges beyond 2^56 saturate there.
        let completed = tracker.completed().min(u64::MAX >> 8);
        let state = (completed << 8) | tracker.phase() as u64;
        if tracker.phase() == Phase::Idle {
            // In one total order with a queuing dial's count and its read
            // of this phase (`Registry::acquire_for`), before this
            // connection reads that count: the dial sees the connection
            // idle, or the connection sees the dial. Once an exchange (an
            // `xchg` on x86, where a store is a plain move).
            self.state.swap(state, std::sync::atomic::Ordering::SeqCst);
        } else {
            self.state.store(state, Relaxed);
        }
    }

    /// Whether a request that failed on this connection got no byte of a
    /// response, on a connection that had completed an exchange before it:
    /// such a request never reached a server that answered it. Never for a
    /// connection that is not (or no longer) plain HTTP/1.
    ///
    /// Only a request hyper began to write counts (its bytes, or a write
    /// that failed): on an idle connection the failed request is the last
    /// one, whose response was read. A request hyper never wrote fails as
    /// "canceled", or with [`Retired`], which the retry reads from the
    /// error.
    pub(crate) fn failed_unanswered_on_reused(&self) -> bool {
        self.phase().unanswered() && self.completed() >= 1
    }

    /// `close_idle`: the connection is to close if it is idle when its IO
    /// next looks (at once: the IO is woken).
    pub(crate) fn evict(&self) {
        self.evict.store(true, Relaxed);
        self.wake();
    }

    /// Whether `close_idle` asked the connection to close since the IO
    /// last looked; the request is taken.
    pub(crate) fn take_evict(&self) -> bool {
        // One load in the common case.
        self.evict.load(Relaxed) && self.evict.swap(false, Relaxed)
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

/// The error a [`GuardedIo`](crate::GuardedIo) gives hyper's read of an
/// idle connection it retires (a `Keep-Alive` limit, or room for a dial).
///
/// An error, not an end of file: were hyper reading a body after all, an
/// end of file could end a body delimited by the close short without a
/// word, while an error fails it. And it tells the retry that the request
/// it failed, if any, was never written: the connection was retired only
/// while no byte of a request was on it.
#[derive(Debug)]
pub(crate) struct Retired;

impl std::fmt::Display for Retired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("poolguard retired the idle connection")
    }
}

impl std::error::Error for Retired {}

impl Retired {
    /// The IO error to give hyper.
    pub(crate) fn error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, Retired)
    }

    /// Whether `error` is a [`Retired`], or an IO error made of one (its
    /// sources are not looked at: `io::Error::source` skips the error it
    /// wraps, so the caller walks the chain and asks of each).
    pub(crate) fn is(error: &(dyn std::error::Error + 'static)) -> bool {
        error.is::<Retired>()
            || error
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<Retired>())
    }
}

/// hyper-util copies it into the extensions of every response on the
/// connection, and into the `Connected` of its errors: what the retry reads,
/// and, with metrics, the response's exchange. One extra, not two: hyper-util
/// inserts each extra into every response's extensions.
#[derive(Clone, Debug)]
pub(crate) struct LinkHandle {
    pub(crate) link: Arc<Link>,
    /// The exchange stamp (a connection tracked for metrics).
    pub(crate) stamp: Option<Stamp>,
}

impl LinkHandle {
    /// The stamp of the response these extensions belong to, if its
    /// connection is tracked.
    pub(crate) fn stamp_of(extensions: &http::Extensions) -> Option<&Stamp> {
        extensions.get::<LinkHandle>()?.stamp.as_ref()
    }
}

/// Response extension, put by a client whose HTTP/2 connections the guard
/// cannot take out of the pool (reqwest): a body of this response dropped
/// early may have its stream reset rather than drained, because the
/// client's retry resends the idempotent requests that a connection ended
/// by h2's own limit on resets fails (`ENHANCE_YOUR_CALM`,
/// `too_many_internal_resets`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResetsResent;

/// Response extension: the request paid for a new connection (a dial, a
/// TLS handshake), set by reqwest's guard, whose connections carry no
/// [`Stamp`]; its latency says nothing of the server's queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dialed;

/// Whether a head's `Connection` fields list `close` (hyper's
/// `connection_has`): the connection ends after the exchange.
pub(crate) fn says_close(headers: &http::HeaderMap) -> bool {
    !headers.is_empty()
        && headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| list_has(v.as_bytes(), "close"))
}

/// A field value as `HeaderValue::to_str` gives it: only when every byte
/// is visible ASCII or a tab.
fn visible(value: &[u8]) -> Option<&[u8]> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then_some(value)
}

/// Whether a comma-separated field value lists `token` (hyper's
/// `connection_has`). The only white space a visible value can hold is a
/// space or a tab, so an ASCII trim is `str::trim` here.
fn list_has(value: &[u8], token: &str) -> bool {
    visible(value).is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::ReadWaker;

    /// Counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The IO parks its task again only when the task changed, so a task
    /// parked once must be woken by every later wake, not only the first.
    #[test]
    fn a_parked_task_is_woken_by_every_wake_until_cleared() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let read = ReadWaker::default();
        read.wake();
        read.park(&waker);
        read.wake();
        read.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        read.clear();
        read.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 2, "cleared: forgotten");
    }
}
