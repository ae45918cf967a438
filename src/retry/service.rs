use std::task::{Context, Poll};

use http::{header::HeaderName, Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use std::sync::Arc;

use super::attempts::{Attempts, Rules};
use super::future::ResponseFuture;
use super::{ReplayBody, RetryStaleLayer};
use crate::BoxError;

/// Retries requests that fail on a stale pooled connection; made by
/// [`RetryStaleLayer`].
///
/// Clones share the [`Metrics`](crate::Metrics), if any, and what was
/// learnt of connections. Errors are boxed; an error that is not retried,
/// or the last one, is the inner service's, unchanged.
#[derive(Clone, Debug)]
pub struct RetryStale<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<S>>,
}

/// What a [`RetryStale`] and its clones share, and each request reads.
#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub(crate) rules: Rules,
    /// A clone of the inner service, made at the first request that may
    /// be retried: a retry clones its service from it, so that such a
    /// request takes no clone of the whole client stack.
    pub(crate) spare: Spare<S>,
}

/// The spare copy of a [`RetryStale`]'s inner service, cloned for retries.
#[derive(Debug)]
pub(crate) struct Spare<S>(std::sync::OnceLock<std::sync::Mutex<S>>);

impl<S> Default for Spare<S> {
    fn default() -> Self {
        Spare(std::sync::OnceLock::new())
    }
}

impl<S: Clone> Spare<S> {
    /// Keeps a clone of `inner` if none is kept yet.
    pub(crate) fn keep(&self, inner: &S) {
        self.0.get_or_init(|| std::sync::Mutex::new(inner.clone()));
    }

    /// A fresh clone of the service, to be made ready for a retry.
    pub(crate) fn service(&self) -> Option<S> {
        let kept = self.0.get()?;
        let service = kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Some(service)
    }
}

impl<S> RetryStale<S> {
    /// Wraps `inner`: one retry, without metrics.
    pub fn new(inner: S) -> Self {
        RetryStaleLayer::new().layer(inner)
    }

    /// A [`RetryStaleLayer`] with its defaults.
    pub fn layer() -> RetryStaleLayer {
        RetryStaleLayer::new()
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

impl<S, B, ResB> Service<Request<B>> for RetryStale<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let host = crate::key::HostKey::from_request(&req).map(|k| k.memo());
        let attempts = Attempts::start(
            &self.shared.rules,
            &mut req,
            host,
            &self.shared.spare,
            &self.inner,
        );
        ResponseFuture::new(self.inner.call(req), attempts, self.shared.clone())
    }
}

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static X_IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("x-idempotency-key");

/// Whether sending the request twice means the same as sending it once:
/// the methods RFC 9110 calls idempotent (`CONNECT` and `PATCH` and `POST`
/// are not), or a request the caller marked with an idempotency key.
pub(crate) fn is_idempotent<B>(req: &Request<B>) -> bool {
    idempotent(req.method(), req.headers())
}

/// [`is_idempotent`] of a request's method and headers.
pub(crate) fn idempotent(method: &Method, headers: &http::HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key(&IDEMPOTENCY_KEY)
        || headers.contains_key(&X_IDEMPOTENCY_KEY)
}

/// A copy of a request to send again: its head, field by field, and its
/// body replayed.
///
/// Not a `Request`: most requests are never sent again, and a `Request`
/// made for the copy would build a default head only to replace each
/// field of it, then carry an empty header map to drop. The `Request` is
/// made when a retry sends the copy.
pub(crate) struct Resend<B> {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    /// The request's headers, each value with its name, in order: one
    /// allocation (a `HeaderMap`'s clone makes two) and 16 bytes in the
    /// request's future (a `HeaderMap` is 96), made into a map again only
    /// for a retry. `None`: the request had no header.
    headers: Option<Box<[(http::HeaderName, http::HeaderValue)]>>,
    extensions: http::Extensions,
    body: B,
}

impl<B: ReplayBody> Resend<B> {
    /// A copy of `req`, if its body can be replayed.
    #[inline(always)]
    pub(crate) fn of(req: &Request<B>) -> Option<Self> {
        let body = req.body().replay()?;
        Some(Resend {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: (!req.headers().is_empty()).then(|| {
                let mut pairs = Vec::with_capacity(req.headers().len());
                pairs.extend(req.headers().iter().map(|(n, v)| (n.clone(), v.clone())));
                pairs.into_boxed_slice()
            }),
            extensions: req.extensions().clone(),
            body,
        })
    }
}

impl<B> Resend<B> {
    /// The request to send.
    pub(crate) fn into_request(self) -> Request<B> {
        let mut req = Request::new(self.body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        if let Some(pairs) = self.headers {
            let headers = req.headers_mut();
            for (name, value) in pairs.into_vec() {
                // Appended: a name's values stay in their order. The names
                // were a map's entries already: no more than its limit.
                headers.append(name, value);
            }
        }
        *req.extensions_mut() = self.extensions;
        req
    }
}
