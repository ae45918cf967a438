use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{header, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::hook::{DrainOutcome, SkipReason};
use super::layer::Shared;
use super::task::{DrainTask, Rent};
use crate::body_end::Polled;
use crate::conn::{Exchange, Stamp};
use crate::key::HostKey;

/// Frames read inline on drop, from what is already buffered, before the
/// rest is left to a background task. Bounds the work done on the caller's
/// thread even for a body that yields empty frames forever.
const INLINE_FRAMES: usize = 16;

/// A response body that, when dropped before its end, drains the rest so its
/// connection can be reused.
///
/// Made by [`Drain`](super::Drain); see the [module docs](super). It forwards
/// frames, [`size_hint`](Body::size_hint) and
/// [`is_end_stream`](Body::is_end_stream) of the body it wraps, and is `Send`
/// and `Sync` whenever that body is. The wrapped body lives in one heap
/// allocation, so that it can be moved into a drain task whatever its type.
pub struct DrainBody<B> {
    /// The wrapped body and what a drain needs, in the one allocation a
    /// drain task takes over (the body stays small to move: a response
    /// passes through many hands). `None` once the body is known to be
    /// complete, or has been handed to a drain.
    inner: Option<Pin<Box<Inner<B>>>>,
}

pin_project! {
    /// What a [`DrainBody`] holds: the body, and what a drain of it needs.
    pub(super) struct Inner<B> {
        #[pin]
        body: B,
        // Bytes of data the caller has read.
        read: u64,
        // The response's `Content-Length`, if any.
        content_length: Option<u64>,
        shared: Arc<Shared>,
        // The tracked connection the body arrives on, and the request it
        // answers there (taken when the response arrived), told how a
        // drain ends.
        conn: Option<Exchange>,
        // The host the body comes from, when the drain is priced.
        host: Host<B>,
        // An HTTP/2 response on a tracked connection, which leaves the
        // pool before h2's limit on resets: dropped early, its stream is
        // reset, not drained.
        reset: bool,
        // The drop logic, instantiated where `B: Body + Send + 'static`
        // holds, so that the type itself needs no bounds.
        on_drop: fn(Pin<Box<Inner<B>>>),
    }
}

impl<B> Inner<B> {
    /// The wrapped body, pinned where the allocation is (a drain task polls
    /// it there).
    pub(super) fn body_mut(self: Pin<&mut Self>) -> Pin<&mut B> {
        self.project().body
    }

    /// The wrapped body.
    pub(super) fn body(&self) -> &B {
        &self.body
    }
}

/// Where a priced drain finds the host its body comes from.
pub(crate) enum Host<B> {
    /// Not priced, or no host.
    None,
    Key(HostKey),
    /// Read off the wrapped body when it is dropped early (the guard's:
    /// the body holds its host's slot), so that a body read to its end
    /// never holds a copy of the key.
    Of(fn(&B) -> Option<HostKey>),
}

impl<B> Host<B> {
    /// The host, of `body` if it is to be read off it.
    fn of(self, body: &B) -> Option<HostKey> {
        match self {
            Host::None => None,
            Host::Key(key) => Some(key),
            Host::Of(of) => of(body),
        }
    }
}

impl<B> From<Option<HostKey>> for Host<B> {
    fn from(key: Option<HostKey>) -> Self {
        key.map_or(Host::None, Host::Key)
    }
}

impl<B> DrainBody<B>
where
    B: Body + Send + 'static,
{
    pub(crate) fn wrap(
        response: Response<B>,
        shared: Arc<Shared>,
        host: Option<HostKey>,
    ) -> Response<Self> {
        let head = Head::of(&response);
        response.map(|body| DrainBody::new(body, head, shared, host.into()))
    }

    /// Wraps `body`, of a response whose head was read into `head`.
    pub(crate) fn new(body: B, head: Head, shared: Arc<Shared>, host: Host<B>) -> Self {
        // A body already at its end when wrapped is complete from the
        // start: it never needs a drain.
        let inner = (!body.is_end_stream()).then(|| {
            Box::pin(Inner {
                body,
                read: 0,
                content_length: head.content_length,
                shared,
                conn: head.conn,
                host,
                reset: head.reset,
                on_drop: drop_early::<B>,
            })
        });
        DrainBody { inner }
    }
}

/// What a drain needs of a response's head.
pub(crate) struct Head {
    content_length: Option<u64>,
    conn: Option<Exchange>,
    reset: bool,
}

impl Head {
    /// Reads `response`'s head.
    pub(crate) fn of<B>(response: &Response<B>) -> Self {
        Head {
            content_length: response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(content_length),
            conn: crate::conn::LinkHandle::stamp_of(response.extensions()).map(Stamp::exchange),
            reset: resets_cheaply(response),
        }
    }
}

/// A `Content-Length` value as a number: digits, maybe with white space
/// around them.
fn content_length(value: &http::HeaderValue) -> Option<u64> {
    // The common form, digits only, read without a UTF-8 check and a trim.
    crate::conn::digits(value.as_bytes()).or_else(|| value.to_str().ok()?.trim().parse().ok())
}

impl<B> DrainBody<B> {
    /// Whether the wrapped body is known to have reached its end (and so
    /// will not be drained when dropped).
    pub fn is_complete(&self) -> bool {
        self.inner.is_none()
    }
}

impl<B> Body for DrainBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let inner = inner.as_mut().project();
        let mut body = inner.body;
        let polled = body.as_mut().poll_frame(cx);
        let step = Polled::of(&polled, || body.is_end_stream());
        *inner.read = inner.read.saturating_add(step.data());
        // At the end, or failed: either way there is nothing to drain.
        if step.is_done() {
            this.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|i| i.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.body.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl<B> Drop for DrainBody<B> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            (inner.on_drop)(inner);
        }
    }
}

impl<B> fmt::Debug for DrainBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A complete body let go of what it knew with its allocation.
        let mut f = f.debug_struct("DrainBody");
        match self.inner.as_deref() {
            Some(inner) => f
                .field("complete", &false)
                .field("read", &inner.read)
                .field("content_length", &inner.content_length),
            None => f.field("complete", &true),
        }
        .finish_non_exhaustive()
    }
}

/// Whether the response's stream may be reset rather than drained: it came
/// over HTTP/2 on a connection a [`GuardedConnector`](crate::GuardedConnector)
/// tracks, which counts the resets and leaves the pool long before h2's
/// limit on them would end it; or through a client whose retry resends
/// what that limit fails ([`ResetsResent`](crate::conn::ResetsResent)).
fn resets_cheaply<B>(response: &Response<B>) -> bool {
    #[cfg(feature = "hyper-util")]
    {
        let extensions = response.extensions();
        response.version() >= http::Version::HTTP_2
            && (extensions.get::<crate::conn::LinkHandle>().is_some()
                || extensions.get::<crate::conn::ResetsResent>().is_some())
    }
    #[cfg(not(feature = "hyper-util"))]
    {
        let _ = response;
        false
    }
}

/// Decides what to do with a body dropped before its end, and does it.
fn drop_early<B>(mut inner: Pin<Box<Inner<B>>>)
where
    B: Body + Send + 'static,
{
    let this = inner.as_mut().project();
    let (read, content_length, reset) = (*this.read, *this.content_length, *this.reset);
    let shared = &*this.shared;
    let conn = this.conn.take();
    let host = std::mem::replace(this.host, Host::None);
    let mut body = this.body;
    let report = |outcome: DrainOutcome| report_to(shared, conn.as_ref(), outcome);
    if body.is_end_stream() {
        return;
    }
    let config = shared.config;
    let known_remaining = content_length
        .map_or(0, |len| len.saturating_sub(read))
        .max(body.size_hint().lower());
    if known_remaining > config.max_bytes {
        return report(DrainOutcome::Skipped(SkipReason::TooLarge));
    }

    // Finish inline what is already buffered: a small body that arrived with
    // its headers needs no task. Those reads wait for nothing, and the
    // time a drain reports is the time it waited for the body: no clock is
    // read for them (a clock read costs more than a read of a buffered
    // frame).
    let mut bytes = 0u64;
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..INLINE_FRAMES {
        let polled = body.as_mut().poll_frame(&mut cx);
        let step = Polled::of(&polled, || body.is_end_stream());
        bytes = bytes.saturating_add(step.data());
        let elapsed = Duration::ZERO;
        match step {
            Polled::Pending => break,
            Polled::Error => return report(DrainOutcome::Failed { bytes, elapsed }),
            // The body ended: complete, even if its last frame crossed the
            // byte budget.
            done if done.is_done() => {
                return report(DrainOutcome::Completed {
                    bytes,
                    elapsed,
                    inline: true,
                })
            }
            _ if bytes > config.max_bytes => {
                return report(DrainOutcome::GaveUpBytes { bytes, elapsed })
            }
            _ => {}
        }
    }

    // HTTP/2 on a tracked connection: a reset costs no connection, nor
    // the time a drain takes (the connection leaves the pool before h2's
    // limit on resets would end it).
    if reset {
        return report(DrainOutcome::Skipped(SkipReason::Http2));
    }

    let remaining = content_length.map(|len| len.saturating_sub(read).saturating_sub(bytes));
    let rent = shared
        .pricing
        .as_ref()
        .and_then(|pricing| Some((host.of(&body)?, pricing)))
        .map(|(host, pricing)| Rent::new(host, remaining, pricing));
    if let (Some(rent), Some(pricing)) = (&rent, &shared.pricing) {
        if rent.buy_now(pricing) {
            return report(DrainOutcome::GaveUpCost {
                bytes,
                elapsed: Duration::ZERO,
            });
        }
    }

    // Dropping during a panic must not risk a second one.
    if std::thread::panicking() {
        return report(DrainOutcome::Skipped(SkipReason::NoRuntime));
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return report(DrainOutcome::Skipped(SkipReason::NoRuntime));
    };
    let acquired = shared
        .running
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
            (running < config.max_concurrent).then_some(running + 1)
        })
        .is_ok();
    if !acquired {
        return report(DrainOutcome::Skipped(SkipReason::TooManyDrains));
    }
    // The drain's clock starts here, where it starts to wait.
    let start = Instant::now();
    // The task takes the body's allocation over: what is reported if it
    // cannot be made is reported through owned copies.
    let shared = Arc::clone(shared);
    match DrainTask::new(inner, shared.clone(), conn.clone(), bytes, start, rent) {
        Some(task) => drop(handle.spawn(task)),
        // The runtime has no timer: a drain without a deadline is a hole.
        None => report_to(
            &shared,
            conn.as_ref(),
            DrainOutcome::Skipped(SkipReason::NoRuntime),
        ),
    }
}

/// Tells how a body dropped early ended: the connection it came on, and
/// the drain's hook.
fn report_to(shared: &Shared, conn: Option<&Exchange>, outcome: DrainOutcome) {
    if !outcome.is_completed() {
        tracing::debug!(?outcome, "response body dropped early and not drained");
    }
    if let Some(exchange) = conn {
        exchange.body_ended(outcome.body_end());
    }
    shared.hook.on_drain(&outcome);
}

#[cfg(test)]
mod tests {
    use super::content_length;
    use http::HeaderValue;

    #[test]
    fn content_length_reads_as_before_the_digits_only_fast_path() {
        let read = |v: &'static str| content_length(&HeaderValue::from_static(v));
        assert_eq!(read("16"), Some(16));
        assert_eq!(read("0"), Some(0));
        assert_eq!(read(" 16 "), Some(16));
        assert_eq!(read("+5"), Some(5), "as `str::parse` reads it");
        assert_eq!(read("18446744073709551615"), Some(u64::MAX));
        assert_eq!(read("18446744073709551616"), None);
        assert_eq!(read("1a"), None);
        assert_eq!(read(""), None);
        assert_eq!(read("1, 1"), None);
    }
}
