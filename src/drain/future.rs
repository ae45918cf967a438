//! Future types of [`Drain`](super::Drain).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::layer::Shared;
use super::DrainBody;
use crate::key::HostKey;

pin_project! {
    /// Response future of [`Drain`](super::Drain): wraps the response body
    /// in a [`DrainBody`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        host: Option<HostKey>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, shared: Arc<Shared>, host: Option<HostKey>) -> Self {
        ResponseFuture {
            inner,
            shared,
            host,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body + Send + 'static,
{
    type Output = Result<Response<DrainBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(DrainBody::wrap(
            response,
            this.shared.clone(),
            this.host.take(),
        )))
    }
}
