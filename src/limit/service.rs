use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::PerHostLimitLayer;
use super::registry::{Acquire, Bounds, Policy, TimedOut};
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
        let config = &self.layer.config;
        // `Duration::MAX` (past the end of time) is no deadline.
        let deadline = || config.queue_timeout.and_then(crate::timer::deadline_in);
        let total = config.max_total.and_then(|max| {
            let policy = Policy {
                bounds: Bounds {
                    max_per_host: max,
                    max_queued: config.policy.bounds.max_queued,
                    max_streams: None,
                },
                observer: config.policy.observer.clone(),
                overrides: None,
            };
            Some((self.layer.total.clone(), total_key()?, policy))
        });
        let wait = match self.layer.registry.acquire(key.clone(), &config.policy) {
            Acquire::Full(key) => return ResponseFuture::failed(QueueFull::new(key).into()),
            Acquire::Ready(slot) => match total {
                None => return ResponseFuture::called(self.inner.call(req), Some(slot)),
                Some((registry, total_key, policy)) => match registry.acquire(total_key, &policy) {
                    Acquire::Ready(t) => {
                        return ResponseFuture::called(
                            self.inner.call(req),
                            Some(slot.with_total(t)),
                        )
                    }
                    // The host's slot goes back as `slot` drops.
                    Acquire::Full(_) => return ResponseFuture::failed(QueueFull::new(key).into()),
                    Acquire::Queued(waiter) => {
                        let deadline = deadline();
                        let wait: super::future::Wait = Box::pin(async move {
                            let t = waiter.wait(deadline).await.map_err(|no| no.for_host(key))?;
                            Ok(slot.with_total(t))
                        });
                        wait
                    }
                },
            },
            Acquire::Queued(waiter) => {
                let deadline = deadline();
                Box::pin(async move {
                    let slot = waiter.wait(deadline).await?;
                    let Some((registry, total_key, policy)) = total else {
                        return Ok(slot);
                    };
                    match registry.acquire(total_key, &policy) {
                        Acquire::Ready(t) => Ok(slot.with_total(t)),
                        Acquire::Full(_) => Err(TimedOut::full(key)),
                        Acquire::Queued(waiter) => {
                            let t = waiter.wait(deadline).await.map_err(|no| no.for_host(key))?;
                            Ok(slot.with_total(t))
                        }
                    }
                })
            }
        };
        // Take the service that was made ready into the future, and leave
        // a fresh clone behind for the next `poll_ready`.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::queued(wait, ready, req)
    }
}

/// The key every request shares under the cap across hosts.
fn total_key() -> Option<HostKey> {
    static KEY: std::sync::OnceLock<Option<HostKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        HostKey::from_uri(&http::Uri::from_static("http://total.poolguard.invalid/"))
    })
    .clone()
}
