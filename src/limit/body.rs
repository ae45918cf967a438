use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::key::HostKey;

use super::registry::Slot;
use crate::body_end::Polled;

pin_project! {
    /// Response body of [`PerHostLimit`](super::PerHostLimit): holds the
    /// request's slot until the body reaches its end, fails, or is dropped.
    ///
    /// Inside a [`DrainLayer`](crate::DrainLayer), a body dropped early is
    /// moved into the background drain with its slot, so the slot comes back
    /// when the drain ends and the connection is free again. It forwards
    /// frames, `size_hint` and `is_end_stream`, and is `Send` and `Sync`
    /// whenever the body it wraps is.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        slot: Option<Slot>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, slot: Option<Slot>) -> Self
    where
        B: Body,
    {
        // A body already at its end holds nothing.
        let slot = if inner.is_end_stream() { None } else { slot };
        ResponseBody { inner, slot }
    }

    /// Whether the body still holds its host's slot.
    pub fn holds_slot(&self) -> bool {
        self.slot.is_some()
    }

    /// A reference to the wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The host whose slot the body holds, if it holds one.
    pub(crate) fn host(&self) -> Option<HostKey> {
        self.slot.as_ref().map(|slot| slot.key().clone())
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        if Polled::of(&polled, || inner.is_end_stream()).is_done() {
            this.slot.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
