//! What a connection is doing, as its bytes show it.

/// What a connection is doing, as the bytes show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// No exchange under way: a new connection, or one whose last request
    /// and response are both complete.
    Idle = 0,
    /// A request is being written; no byte of a response has arrived.
    Requesting = 1,
    /// The request is written; no byte of a response has arrived.
    Awaiting = 2,
    /// Bytes of a response (an interim 1xx included) have arrived.
    Responding = 3,
    /// A `101 Switching Protocols` or a `CONNECT` tunnel: no longer HTTP.
    Upgraded = 4,
    /// The HTTP/2 preface was written (or ALPN chose `h2`): the connection
    /// multiplexes, and no single exchange describes it.
    Http2 = 5,
    /// Bytes the tracker could not frame, or a response delimited by the
    /// connection's close: nothing more is known of it.
    Unknown = 6,
}

impl Phase {
    /// The phase stored as `n` by `Phase as u8`.
    pub(crate) fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Idle,
            1 => Phase::Requesting,
            2 => Phase::Awaiting,
            3 => Phase::Responding,
            4 => Phase::Upgraded,
            5 => Phase::Http2,
            _ => Phase::Unknown,
        }
    }

    /// Whether the connection still speaks HTTP/1 as its bytes show: not
    /// upgraded, not HTTP/2, nothing it could not frame.
    pub(crate) fn is_http1(self) -> bool {
        !matches!(self, Phase::Upgraded | Phase::Http2 | Phase::Unknown)
    }

    /// Whether hyper began to write the current request and no byte of a
    /// response to it has arrived (and the connection is still HTTP/1 as
    /// far as the bytes show).
    pub(crate) fn unanswered(self) -> bool {
        matches!(self, Phase::Requesting | Phase::Awaiting)
    }
}
