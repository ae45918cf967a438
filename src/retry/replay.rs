use std::convert::Infallible;

use bytes::Buf;
use http_body::Body;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Either, Empty, Full};

/// A request body that can be sent again: the rule by which
/// [`RetryStale`](super::RetryStale) decides whether a request can be
/// retried at all.
///
/// `replay` is called on the body before the first attempt; it returns a
/// body that yields the same bytes, or `None` when that cannot be done
/// without reading `self` (a stream). Implemented for the usual request
/// bodies:
///
/// | body | replayable |
/// |------|------------|
/// | `()` (a bodiless request, as in mocks) | always |
/// | `Empty<D>` | always |
/// | `Full<D>` (`D: Clone`, such as `Bytes`) | always (a clone: no copy of the bytes for `Bytes`) |
/// | `String` | always (a copy) |
/// | `BoxBody`, `UnsyncBoxBody` | when empty (`is_end_stream`) |
/// | `Either<L, R>` | when the side it holds is |
/// | `hyper::body::Incoming` (a proxied body) | never |
/// | `reqwest::Body` | when it is bytes, not a stream (a copy) |
///
/// Implement it for a body type of your own; `None` is always a correct
/// answer.
pub trait ReplayBody: Sized {
    /// A body yielding the same bytes as `self` from its start, if one can
    /// be made without consuming `self`.
    fn replay(&self) -> Option<Self>;
}

impl ReplayBody for () {
    fn replay(&self) -> Option<Self> {
        Some(())
    }
}

impl<D: Buf> ReplayBody for Empty<D> {
    fn replay(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl<D: Buf + Clone> ReplayBody for Full<D> {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for String {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D, E> ReplayBody for BoxBody<D, E>
where
    D: Buf + Send + 'static,
    E: 'static,
{
    fn replay(&self) -> Option<Self> {
        self.is_end_stream()
            .then(|| Empty::<D>::new().map_err(never).boxed())
    }
}

impl<D, E> ReplayBody for UnsyncBoxBody<D, E>
where
    D: Buf + Send + 'static,
    E: 'static,
{
    fn replay(&self) -> Option<Self> {
        self.is_end_stream()
            .then(|| Empty::<D>::new().map_err(never).boxed_unsync())
    }
}

fn never<E>(never: Infallible) -> E {
    match never {}
}

impl<L: ReplayBody, R: ReplayBody> ReplayBody for Either<L, R> {
    fn replay(&self) -> Option<Self> {
        match self {
            Either::Left(l) => l.replay().map(Either::Left),
            Either::Right(r) => r.replay().map(Either::Right),
        }
    }
}

#[cfg(feature = "hyper-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
impl ReplayBody for hyper::body::Incoming {
    /// Never: an incoming body is a stream, read once.
    fn replay(&self) -> Option<Self> {
        None
    }
}

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl ReplayBody for ::reqwest::Body {
    fn replay(&self) -> Option<Self> {
        self.as_bytes()
            .map(|b| ::reqwest::Body::from(bytes::Bytes::copy_from_slice(b)))
    }
}
