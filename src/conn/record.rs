//! The record of a tracked connection: which exchange each response
//! answers, how each body ended, and why the connection closed.
//!
//! The connector's IO keeps the connection's [`Link`] exact (phase,
//! exchanges completed, whether either side said `Connection: close`); the
//! drain and the metrics layer say how the body of the exchange they hold
//! ended. When the connection closes, its reason comes from the two, and
//! the [`ConnObserver`] (the metrics) is told. No other layer needs to be
//! present for the reason to be right, and none changes how it is computed.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::{CloseReason, Link, Phase};
use crate::key::HostKey;

/// Told what a tracked connection does: its responses and its close.
pub(crate) trait ConnObserver: fmt::Debug + Send + Sync + 'static {
    /// A monotonic clock in nanoseconds, never 0.
    fn now(&self) -> u64;
    /// A response arrived on the connection; `reused` if the connection
    /// had served one before.
    fn responded(&self, reused: bool);
    /// The connection closed, for `reason`.
    fn closed(&self, reason: CloseReason);
    /// The connection's IO saw it start carrying a request (`busy`) or
    /// fall idle, over HTTP/1 (`http1`) or, once its bytes stopped being
    /// HTTP/1, something else (HTTP/2: busy for the rest of its life).
    fn state(&self, busy: bool, http1: bool) {
        let _ = (busy, http1);
    }
}

/// How the body of a response ended, as the layer holding it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Read to its end, by the caller or by a drain.
    Complete,
    /// Dropped before its end (a drain, if one runs, says later how it
    /// ended).
    Dropped,
    /// A drain gave up on it (budget spent, or the body failed).
    DrainGaveUp,
}

const IO_NONE: u8 = 0;
const IO_EOF: u8 = 1;
const IO_ERROR: u8 = 2;

/// No reason pending (no exchange has number 0).
const NO_PENDING: u64 = 0;

/// [`Record::retire`] was not called.
const NOT_RETIRED: u8 = u8::MAX;

fn tag(seq: u64, reason: CloseReason) -> u64 {
    (seq << 8) | reason.index() as u64
}

/// The record of one tracked connection.
#[derive(Debug)]
pub(crate) struct Record {
    id: u64,
    host: HostKey,
    link: Arc<Link>,
    observer: Box<dyn ConnObserver>,
    /// Responses the metrics layer saw.
    responses: AtomicU64,
    /// A reason the connection closes, if it does before its exchange
    /// moves on, tagged with the exchange it belongs to (`seq << 8 |
    /// reason`), so that a late event of an earlier exchange cannot stand
    /// for a later one.
    pending: AtomicU64,
    /// What the IO saw: end of file or an error.
    io: AtomicU8,
    /// When the connection last became idle (the observer's clock, 0 =
    /// never).
    idle_since: AtomicU64,
    /// poolguard ended the connection itself, and why (the index of a
    /// [`CloseReason`]; [`NOT_RETIRED`]: it did not).
    retired: AtomicU8,
    /// The close was counted.
    counted: AtomicBool,
}

/// What a response learns of its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Responded {
    /// The connection had served a response before this one.
    pub(crate) reused: bool,
    /// Responses on the connection so far, this one included.
    pub(crate) requests: u64,
    /// How long the connection was idle before the request.
    pub(crate) idle_for: Option<Duration>,
}

impl Record {
    /// The record of connection `id` to `host`, whose IO publishes in
    /// `link`.
    pub(crate) fn new(
        id: u64,
        host: HostKey,
        link: Arc<Link>,
        observer: Box<dyn ConnObserver>,
    ) -> Arc<Self> {
        Arc::new(Record {
            id,
            host,
            link,
            observer,
            responses: AtomicU64::new(0),
            pending: AtomicU64::new(NO_PENDING),
            io: AtomicU8::new(IO_NONE),
            idle_since: AtomicU64::new(0),
            retired: AtomicU8::new(NOT_RETIRED),
            counted: AtomicBool::new(false),
        })
    }

    /// The connection's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether the connection still speaks HTTP/1 as its bytes show, so
    /// that each response answers one exchange.
    fn is_http1(&self) -> bool {
        self.link.phase().is_http1()
    }

    /// Which request of the connection the response to exchange `seq`
    /// answers, `previous` responses having come before it: on HTTP/1 the
    /// exchange's number says it all; once the connection multiplexes (or
    /// left HTTP), the responses seen count.
    fn request_number(&self, seq: u64, previous: u64) -> u64 {
        if self.is_http1() && seq > 0 {
            seq
        } else {
            previous.saturating_add(1)
        }
    }

    /// The IO saw the connection start an exchange (`busy`) or fall idle,
    /// speaking HTTP/1 or not (`http1`).
    pub(crate) fn on_state(&self, busy: bool, http1: bool) {
        self.observer.state(busy, http1);
    }

    /// The IO read end of file.
    pub(crate) fn on_eof(&self) {
        let _ = self.io.compare_exchange(IO_NONE, IO_EOF, Relaxed, Relaxed);
    }

    /// The IO failed; a reset or broken pipe is the peer closing.
    pub(crate) fn on_io_error(&self, error: &std::io::Error) {
        use std::io::ErrorKind::*;
        let seen = match error.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => IO_EOF,
            _ => IO_ERROR,
        };
        let _ = self.io.compare_exchange(IO_NONE, seen, Relaxed, Relaxed);
    }

    /// The IO ends the connection itself for `reason` (a `Keep-Alive`
    /// limit, its age or its count of requests, `close_idle`): the close
    /// event that follows names it, whatever else is seen meanwhile. The
    /// first reason given stands.
    pub(crate) fn retire(&self, reason: CloseReason) {
        // Indexes are below `CloseReason::ALL.len()`, far below 255.
        let index = u8::try_from(reason.index()).unwrap_or(NOT_RETIRED);
        let _ = self
            .retired
            .compare_exchange(NOT_RETIRED, index, Relaxed, Relaxed);
    }

    /// hyper dropped the connection: counts its close, once.
    pub(crate) fn on_close(&self) {
        if self.counted.swap(true, Relaxed) {
            return;
        }
        let reason = self.reason();
        let responses = self.responses.load(Relaxed);
        self.observer.closed(reason);
        tracing::debug!(
            connection = self.id,
            host = %self.host,
            %reason,
            requests = responses,
            "connection closed"
        );
    }

    fn set_pending(&self, seq: u64, reason: CloseReason) {
        self.pending.store(tag(seq, reason), Relaxed);
    }

    /// The reason pending for the exchange the connection is on, if any.
    fn pending(&self) -> Option<CloseReason> {
        let p = self.pending.load(Relaxed);
        if p == NO_PENDING || p >> 8 != self.link.latest() {
            return None;
        }
        CloseReason::from_index((p & 0xff) as u8)
    }

    /// Why the connection closed, from what was seen last.
    fn reason(&self) -> CloseReason {
        if let Some(reason) = CloseReason::from_index(self.retired.load(Relaxed)) {
            return reason;
        }
        if self.link.closing() {
            // Said by the request or the response: it ends the connection
            // whatever else happens to the exchange.
            return CloseReason::ConnectionClose;
        }
        let phase = self.link.phase();
        if phase == Phase::Responding {
            // The body was unfinished: how the layer holding it let go of
            // it says why. Once an exchange is complete, a drop or a drain
            // of its body cost the connection nothing, whatever the order
            // in which their reports arrive.
            if let Some(reason) = self.pending() {
                return reason;
            }
        }
        match self.io.load(Relaxed) {
            IO_EOF => return CloseReason::PeerClosed,
            IO_ERROR => return CloseReason::IoError,
            _ => {}
        }
        match phase {
            Phase::Idle => CloseReason::ClosedIdle,
            // Written, and no byte of a response came, with no error or end
            // of file: its caller went away.
            Phase::Requesting | Phase::Awaiting => CloseReason::RequestCancelled,
            // hyper closes a connection in the middle of a body only when
            // the body is dropped.
            Phase::Responding => CloseReason::BodyDroppedUnread,
            Phase::Upgraded | Phase::Http2 | Phase::Unknown => CloseReason::Unknown,
        }
    }
}

/// hyper-util copies it into the extensions of every response on its
/// connection (from `Connected::extra`), and does so while the response's
/// request still holds the connection: no other request can be on an
/// HTTP/1 connection then. So the copy takes the exchange the connection is
/// on at that moment, which is exactly the exchange the response answers,
/// whatever order callers' tasks later poll their responses in.
#[derive(Debug)]
pub(crate) struct Stamp {
    record: Arc<Record>,
    seq: u64,
}

impl Stamp {
    /// The stamp a connection gives hyper-util.
    pub(crate) fn new(record: Arc<Record>) -> Self {
        Stamp { record, seq: 0 }
    }

    /// Whether the response this stamp was copied into is its
    /// connection's first: its request paid for the dial (and any TLS
    /// handshake). Read before the metrics layer counts the response.
    pub(crate) fn first_exchange(&self) -> bool {
        let r = &self.record;
        r.request_number(self.seq, r.responses.load(Relaxed)) <= 1
    }

    /// The exchange of the response this stamp was copied into.
    pub(crate) fn exchange(&self) -> Exchange {
        Exchange {
            record: self.record.clone(),
            seq: self.seq,
        }
    }
}

impl Clone for Stamp {
    /// Takes the exchange the connection is on now (see [`Stamp`]).
    fn clone(&self) -> Self {
        Stamp {
            record: self.record.clone(),
            seq: self.record.link.latest(),
        }
    }
}

/// One response's exchange on a tracked connection: what the metrics
/// layer and the drain report its body's end to.
#[derive(Clone, Debug)]
pub(crate) struct Exchange {
    record: Arc<Record>,
    seq: u64,
}

impl Exchange {
    /// The connection's id.
    pub(crate) fn id(&self) -> u64 {
        self.record.id
    }

    /// Whether the connection is still on this exchange.
    fn is_current(&self) -> bool {
        self.record.link.latest() == self.seq
    }

    /// The response arrived, for a request that started at `started` (the
    /// observer's clock; 0 when unknown). Called once per response, by the
    /// metrics layer.
    pub(crate) fn respond(&self, started: u64) -> Responded {
        let r = &self.record;
        let previous = r.responses.fetch_add(1, Relaxed);
        let requests = r.request_number(self.seq, previous);
        let reused = requests > 1;
        let idle_since = r.idle_since.load(Relaxed);
        // `started` 0: the request did not read the clock (the first
        // requests of a metrics handle, before it saw a tracked connection).
        let idle_for = (reused && idle_since > 0 && started > 0)
            .then(|| Duration::from_nanos(started.saturating_sub(idle_since)));
        r.observer.responded(reused);
        Responded {
            reused,
            requests,
            idle_for,
        }
    }

    /// How the response's body ended. Ignored once the connection moved on
    /// to a later exchange.
    pub(crate) fn body_ended(&self, end: BodyEnd) {
        if !self.is_current() {
            return;
        }
        let r = &self.record;
        match end {
            BodyEnd::Complete => {
                // A drain that completed takes back the drop it followed.
                let _ = r.pending.compare_exchange(
                    tag(self.seq, CloseReason::BodyDroppedUnread),
                    NO_PENDING,
                    Relaxed,
                    Relaxed,
                );
                r.idle_since.store(r.observer.now(), Relaxed);
            }
            // A drain that gave up already said more.
            BodyEnd::Dropped => {
                let gave_up = tag(self.seq, CloseReason::DrainGaveUp);
                let _ = r.pending.fetch_update(Relaxed, Relaxed, |p| {
                    (p != gave_up).then_some(tag(self.seq, CloseReason::BodyDroppedUnread))
                });
            }
            BodyEnd::DrainGaveUp => r.set_pending(self.seq, CloseReason::DrainGaveUp),
        }
    }
}
