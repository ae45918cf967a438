use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::PerHostLimitLayer;

use super::registry::{Acquire, Slot};
use super::total::{join, queued, Joined, Wait};
use super::{QueueFull, ResponseBody};
use crate::key::HostKey;
use crate::BoxError;

/// Limits the requests in flight to each host; made by
/// [`PerHostLimitLayer`].
///
/// `poll_ready` reflects the inner service only: the host is unknown until
/// `call`, so a full host cannot push back there (hyper-util's pool map says
/// the same of its per-key state). A request that must wait does so in its
/// response future, holding a clone of the inner service that was ready.
#[derive(Clone, Debug)]
pub struct PerHostLimit<S> {
    inner: S,
    layer: PerHostLimitLayer,
}

impl<S> PerHostLimit<S> {
    /// Wraps `inner`, with at most `max_per_host` requests in flight to each
    /// host and the other defaults of [`PerHostLimitLayer::new`].
    pub fn new(inner: S, max_per_host: usize) -> Self {
        Self::from_layer(inner, PerHostLimitLayer::new(max_per_host))
    }

    /// A [`PerHostLimitLayer`]; see [`PerHostLimitLayer::new`].
    pub fn layer(max_per_host: usize) -> PerHostLimitLayer {
        PerHostLimitLayer::new(max_per_host)
    }

    pub(crate) fn from_layer(inner: S, layer: PerHostLimitLayer) -> Self {
        PerHostLimit { inner, layer }
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for PerHostLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<ReqB>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // A request without a host cannot be sent anyway; the inner service
        // rejects it with its own error.
        let Some(key) = HostKey::from_request(&req) else {
            return ResponseFuture::called(self.inner.call(req), None);
        };
        match self.layer.admit(key) {
            Admit::Now(slot) => ResponseFuture::called(self.inner.call(req), Some(slot)),
            Admit::Refused(error) => ResponseFuture::failed(error),
            Admit::Wait(wait) => {
                // Take the service that was made ready into the future, and
                // leave a fresh clone behind for the next `poll_ready`.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::queued(wait, ready, req)
            }
        }
    }
}

/// How a request to a host gets its slot.
pub(crate) enum Admit {
    /// At once.
    Now(Slot),
    /// After a wait in the host's queue (or the cap's).
    Wait(Wait),
    /// Never: the queue is full.
    Refused(BoxError),
}

impl PerHostLimitLayer {
    /// A slot of `key`'s host (and of the cap across hosts) for one
    /// request, now or after a wait.
    #[inline]
    pub(crate) fn admit(&self, key: HostKey) -> Admit {
        let config = &self.config;
        // `Duration::MAX` (past the end of time) is no deadline. Read the
        // clock only for a request that waits.
        let deadline = || config.queue_timeout.and_then(crate::timer::deadline_in);
        let total = self.total_cap();
        let total = total.as_ref();
        match self.registry.acquire(key, &config.policy) {
            Acquire::Full(key) => Admit::Refused(QueueFull::new(key).into()),
            // No cap across hosts: the host's slot is all it takes.
            Acquire::Ready(slot) if total.is_none() => Admit::Now(slot),
            Acquire::Ready(slot) => {
                let key = slot.key().clone();
                match join(total, slot, &key, None, deadline) {
                    Joined::Now(slot) => Admit::Now(slot),
                    // The host's slot went back as it dropped.
                    Joined::Full => Admit::Refused(QueueFull::new(key).into()),
                    Joined::Later(wait) => Admit::Wait(wait),
                }
            }
            Acquire::Queued(waiter) => {
                let key = waiter.key().clone();
                Admit::Wait(queued(waiter, total.cloned(), key, None, deadline()))
            }
        }
    }
}
