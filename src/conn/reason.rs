use std::fmt;

/// Why a connection was closed: from the connection's own bytes (the
/// phase it was in, a `Connection: close` either side said) and from how
/// the layers holding the body of an unfinished response let go of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CloseReason {
    /// A response body was dropped before its end and not drained: the
    /// connection closed with the body unfinished. (hyper reads once more
    /// when a body is dropped and keeps the connection if that finished the
    /// body; such a connection closes later for another reason.)
    BodyDroppedUnread,
    /// A response body was dropped before its end and the drain gave up
    /// (over its byte or time budget, or the body failed).
    DrainGaveUp,
    /// The peer closed the connection (end of file, or a reset).
    PeerClosed,
    /// The request or the response said `Connection: close`.
    ConnectionClose,
    /// The pool closed the connection while it was idle (idle timeout, or
    /// more idle connections than the pool keeps).
    ClosedIdle,
    /// Reading or writing the connection failed.
    IoError,
    /// The caller dropped the request before its response arrived.
    RequestCancelled,
    /// poolguard retired the idle connection before the server would close
    /// it: past the timeout, or after the last request, that the server's
    /// `Keep-Alive` header advertised.
    Retired,
    /// The connection reached the age the guard lets a connection live
    /// (`max_connection_age`, with its jitter): it took no new request and
    /// closed once its exchanges under way had ended.
    MaxAge,
    /// The connection carried as many requests as the guard lets one carry
    /// (`max_requests_per_connection`), and closed after the last.
    MaxRequests,
    /// [`PoolGuard::close_idle`](crate::PoolGuard::close_idle) closed the
    /// connection while it was idle.
    Evicted,
    /// None of the above could be told.
    Unknown,
}

impl CloseReason {
    /// Every reason, in a fixed order.
    pub const ALL: [CloseReason; 12] = [
        CloseReason::BodyDroppedUnread,
        CloseReason::DrainGaveUp,
        CloseReason::PeerClosed,
        CloseReason::ConnectionClose,
        CloseReason::ClosedIdle,
        CloseReason::IoError,
        CloseReason::RequestCancelled,
        CloseReason::Retired,
        CloseReason::MaxAge,
        CloseReason::MaxRequests,
        CloseReason::Evicted,
        CloseReason::Unknown,
    ];

    /// A dense index, for arrays of counters.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_index(i: u8) -> Option<CloseReason> {
        CloseReason::ALL.get(usize::from(i)).copied()
    }

    /// A short snake_case name, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::BodyDroppedUnread => "body_dropped_unread",
            CloseReason::DrainGaveUp => "drain_gave_up",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::ConnectionClose => "connection_close",
            CloseReason::ClosedIdle => "closed_idle",
            CloseReason::IoError => "io_error",
            CloseReason::RequestCancelled => "request_cancelled",
            CloseReason::Retired => "retired",
            CloseReason::MaxAge => "max_age",
            CloseReason::MaxRequests => "max_requests",
            CloseReason::Evicted => "evicted",
            CloseReason::Unknown => "unknown",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
