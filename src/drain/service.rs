use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::{DrainLayer, Shared};
use super::DrainBody;
use crate::key::HostKey;

/// Wraps each response body of the inner service in a
/// [`DrainBody`](super::DrainBody).
///
/// Made by [`DrainLayer`]; see the [module docs](super). Errors of the inner
/// service pass through unchanged.
#[derive(Clone, Debug)]
pub struct Drain<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Drain<S> {
    /// Wraps `inner` with the default budgets (see [`DrainLayer::new`]).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&DrainLayer::new(), inner)
    }

    /// A [`DrainLayer`] with the default budgets.
    pub fn layer() -> DrainLayer {
        DrainLayer::new()
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Drain { inner, shared }
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

impl<S, ReqB, B> Service<Request<ReqB>> for Drain<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: http_body::Body + Send + 'static,
{
    type Response = Response<DrainBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The host's key, to price the drain of its body: only when a
        // pricing is set (a guard's drain), so a plain drain costs nothing.
        let host = self
            .shared
            .pricing
            .as_ref()
            .and_then(|_| HostKey::from_request(&req));
        ResponseFuture::new(self.inner.call(req), self.shared.clone(), host)
    }
}
