//! When a body's stream ends, judged from one poll: the completion signal
//! every body wrapper of this crate (drain, limit, metrics) shares.

use std::task::Poll;

use bytes::Buf;
use http_body::Frame;

/// What one `poll_frame` said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Polled {
    /// Nothing yet.
    Pending,
    /// A frame with `data` bytes of data (0 for trailers); `last` when the
    /// body reports `is_end_stream()` after it.
    Frame { data: u64, last: bool },
    /// The stream ended (`None`).
    End,
    /// The body failed.
    Error,
}

impl Polled {
    /// Judges `polled`; `at_end` is the body's `is_end_stream`, asked only
    /// after a frame.
    pub(crate) fn of<D: Buf, E>(
        polled: &Poll<Option<Result<Frame<D>, E>>>,
        at_end: impl FnOnce() -> bool,
    ) -> Self {
        match polled {
            Poll::Pending => Polled::Pending,
            Poll::Ready(None) => Polled::End,
            Poll::Ready(Some(Err(_))) => Polled::Error,
            Poll::Ready(Some(Ok(frame))) => Polled::Frame {
                data: frame.data_ref().map_or(0, |d| d.remaining() as u64),
                last: at_end(),
            },
        }
    }

    /// Whether the body is done with: ended, failed, or at its end after a
    /// frame.
    pub(crate) fn is_done(self) -> bool {
        matches!(
            self,
            Polled::End | Polled::Error | Polled::Frame { last: true, .. }
        )
    }

    /// Whether the body reached its end (not failed): ended, or at its end
    /// after a frame.
    #[cfg(feature = "reqwest")]
    pub(crate) fn is_end(self) -> bool {
        matches!(self, Polled::End | Polled::Frame { last: true, .. })
    }

    /// Bytes of data in the frame.
    pub(crate) fn data(self) -> u64 {
        match self {
            Polled::Frame { data, .. } => data,
            _ => 0,
        }
    }
}
