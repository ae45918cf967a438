//! The guard's service: the four layers' work for one request in one
//! service and one future.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::GuardedBody;
use crate::drain::layer::Shared as DrainShared;
use crate::limit::PerHostLimitLayer;
use crate::metrics::Metrics;
use crate::retry::attempts::Rules;
use crate::retry::service::Spare;
use crate::retry::ReplayBody;
use crate::BoxError;

/// A client behind a [`PoolGuard`](crate::PoolGuard)'s protections: made
/// by [`PoolGuardLayer`](crate::PoolGuardLayer).
///
/// It does what [`ReuseMetrics`](crate::metrics::ReuseMetrics) over
/// [`RetryStale`](crate::retry::RetryStale) over
/// [`Drain`](crate::drain::Drain) over
/// [`PerHostLimit`](crate::limit::PerHostLimit) would, in that order (see
/// [`PoolGuardLayer`](crate::PoolGuardLayer) for why), as one service: a
/// request's host is found once, its response passes through one future,
/// and a retry's copy of the request is made only when the request may be
/// sent again.
///
/// `poll_ready` is the client's. Errors are boxed: the guard's own
/// ([`QueueFull`](crate::QueueFull), [`QueueTimeout`](crate::QueueTimeout),
/// [`Stranded`](crate::Stranded)) and the client's, recovered with
/// `downcast_ref`. Clones share the guard's state; a retry sends its
/// request through a clone of the client.
#[derive(Clone, Debug)]
pub struct Guarded<S> {
    inner: S,
    shared: Arc<Shared<S>>,
}

/// What a guard's service and its clones share, and each request reads.
#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub(crate) metrics: Metrics,
    pub(crate) rules: Rules,
    pub(crate) limit: PerHostLimitLayer,
    pub(crate) drain: Arc<DrainShared>,
    /// The clone of the client that retries are cloned from, made at the
    /// first request that may be retried.
    pub(crate) spare: Spare<S>,
}

impl<S> Guarded<S> {
    pub(crate) fn new(inner: S, shared: Shared<S>) -> Self {
        Guarded {
            inner,
            shared: Arc::new(shared),
        }
    }

    /// A reference to the client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the client.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the client.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for Guarded<S>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody,
    B: http_body::Body + Send + 'static,
{
    type Response = Response<GuardedBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        ResponseFuture::start(&mut self.inner, req, &self.shared)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tower_layer::Layer;
    use tower_service::Service;

    #[test]
    fn the_services_of_one_guard_share_its_retry_budgets() {
        let guard = crate::PoolGuard::builder().build();
        let a = guard.layer().layer(());
        let b = guard.layer().layer(());
        assert!(std::sync::Arc::ptr_eq(
            &a.shared.rules.budgets,
            &b.shared.rules.budgets
        ));
        assert!(std::sync::Arc::ptr_eq(
            &a.shared.rules.seen,
            &b.shared.rules.seen
        ));
        let other = crate::PoolGuard::builder().build().layer().layer(());
        assert!(!std::sync::Arc::ptr_eq(
            &a.shared.rules.budgets,
            &other.shared.rules.budgets
        ));
    }

    /// A response passes through many hands (the client's futures, the
    /// caller's): its body moves at each, and a body of more than a few
    /// words is moved with a call to `memcpy`, not in registers. What a
    /// drain needs lives in the body's one allocation.
    #[test]
    fn a_guarded_body_is_a_few_words() {
        type Body = crate::GuardedBody<http_body_util::Full<bytes::Bytes>>;
        assert!(
            std::mem::size_of::<Body>() <= 4 * 8,
            "{}",
            std::mem::size_of::<Body>()
        );
    }

    #[tokio::test]
    async fn a_future_polled_after_it_completed_errs_without_polling_the_client() {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let client = tower::service_fn(move |_req: http::Request<()>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            )))
        });
        let mut svc = crate::PoolGuard::builder().build().layer().layer(client);
        let future = svc.call(http::Request::get("http://h/").body(()).unwrap());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut future = std::pin::pin!(future);
        assert!(matches!(
            future.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Ok(_))
        ));
        assert!(matches!(
            future.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Err(_))
        ));
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}

#[cfg(all(test, feature = "hyper-util"))]
mod one_record {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::ServiceExt;
    use tower_layer::Layer;

    /// Over a client without a tracking connector, a response's connection
    /// is known by its address pair: the guard's retry and metrics share
    /// one record of the pairs and look each response's pair up once.
    #[tokio::test]
    async fn a_responses_address_pair_is_looked_up_once() {
        let server = poolguard_testkit::serve().await;
        for retry in [true, false] {
            let guard = crate::PoolGuard::builder().retry_stale(retry).build();
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
            let svc = guard.layer().layer(client);
            // One record, the metrics': the retry's is the same.
            assert!(std::sync::Arc::ptr_eq(
                &svc.shared.rules.seen,
                &guard.metrics().inner.addrs
            ));
            let before = crate::conn::addrs::LOOKUPS.with(std::cell::Cell::get);
            for _ in 0..3 {
                let request = http::Request::get(server.uri("/bytes/10"))
                    .body(Empty::new())
                    .unwrap();
                let response = svc.clone().oneshot(request).await.unwrap();
                response.into_body().collect().await.unwrap();
            }
            let lookups = crate::conn::addrs::LOOKUPS.with(std::cell::Cell::get) - before;
            assert_eq!(lookups, 3, "retry {retry}: one look-up a response");
            let snap = guard.metrics().snapshot();
            assert_eq!((snap.responses, snap.reused), (3, 2), "retry {retry}");
            assert_eq!(server.stats.accepted(), if retry { 1 } else { 2 });
        }
    }
}
