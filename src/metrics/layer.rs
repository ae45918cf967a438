use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::conn::ConnInfo;
use super::Metrics;
use crate::body_end::Polled;
use crate::conn::{BodyEnd, Exchange, Stamp};
use crate::limit::QueueWait;

/// Counts requests, responses and connection reuse into a [`Metrics`].
///
/// See the [module docs](super).
#[derive(Clone, Debug)]
#[must_use]
pub struct ReuseMetricsLayer {
    metrics: Metrics,
}

impl ReuseMetricsLayer {
    /// A layer that reports to `metrics` (and so to all its clones).
    pub fn new(metrics: Metrics) -> Self {
        ReuseMetricsLayer { metrics }
    }

    /// The handle this layer reports to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl<S> Layer<S> for ReuseMetricsLayer {
    type Service = ReuseMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReuseMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Counts requests, responses and connection reuse; made by
/// [`ReuseMetricsLayer`]. Errors of the inner service pass through
/// unchanged.
#[derive(Clone, Debug)]
pub struct ReuseMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> ReuseMetrics<S> {
    /// Wraps `inner`, reporting to `metrics`.
    pub fn new(inner: S, metrics: Metrics) -> Self {
        ReuseMetricsLayer::new(metrics).layer(inner)
    }

    /// A [`ReuseMetricsLayer`] reporting to `metrics`.
    pub fn layer(metrics: Metrics) -> ReuseMetricsLayer {
        ReuseMetricsLayer::new(metrics)
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

impl<S, ReqB, B> Service<Request<ReqB>> for ReuseMetrics<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: Body,
{
    type Response = Response<ResponseBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let started = Started::new(&self.metrics, &req);
        ResponseFuture {
            inner: self.inner.call(req),
            started: Some(started),
        }
    }
}

/// A request counted in: in flight until its body ends, and what its
/// response is read against.
#[derive(Debug)]
pub(crate) struct Started {
    flight: Flight,
    /// When the request started, on the metrics' clock (0: not read, no
    /// tracked connection seen yet).
    started: u64,
    /// The request says `Connection: close`.
    close: bool,
}

impl Started {
    /// Counts `req` in.
    pub(crate) fn new<B>(metrics: &Metrics, req: &Request<B>) -> Self {
        let inner = &metrics.inner;
        // In flight from here: counted as `requests` less `ended`.
        inner.hot.here().add(|s| &s.requests, 1);
        #[cfg(feature = "metrics")]
        inner.emit.request();
        Started {
            flight: Flight {
                metrics: metrics.clone(),
                conn: None,
            },
            started: if inner.timed.load(Relaxed) {
                inner.now()
            } else {
                0
            },
            close: crate::conn::says_close(req.headers()),
        }
    }

    /// Counts the request's outcome: an error, or a response whose
    /// connection and reuse are read and whose body keeps the request in
    /// flight.
    pub(crate) fn finish<B: Body, E>(
        self,
        result: Result<Response<B>, E>,
    ) -> Result<Response<ResponseBody<B>>, E> {
        match result {
            Ok(mut response) => {
                let flight = self.answered(&mut response, None);
                Ok(response.map(|b| ResponseBody::new(b, Some(flight))))
            }
            Err(e) => {
                self.failed();
                Err(e)
            }
        }
    }

    /// Counts the request as failed.
    pub(crate) fn failed(self) {
        let inner = &self.flight.metrics.inner;
        inner.errors.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        inner.emit.error();
    }

    /// Counts the request as answered with `response`, whose connection and
    /// reuse are read (into a [`ConnInfo`] extension for a tracked
    /// connection): the flight to keep in the response's body.
    /// `seen_before`: whether the metrics' record of address pairs had the
    /// response's pair, as the guard's retry found when it recorded it
    /// (`None`: not recorded yet).
    pub(crate) fn answered<B>(
        self,
        response: &mut Response<B>,
        seen_before: Option<bool>,
    ) -> Flight {
        let Started {
            flight: mut f,
            started,
            close,
        } = self;
        let inner = &f.metrics.inner;
        let close = close || crate::conn::says_close(response.headers());
        let queue_wait = response
            .extensions()
            .get::<QueueWait>()
            .map_or(Duration::ZERO, |q| q.0);
        let reused = if let Some(info) = response.extensions().get::<ConnInfo>() {
            Some(info.reused)
        } else if let Some(exchange) =
            crate::conn::LinkHandle::stamp_of(response.extensions()).map(Stamp::exchange)
        {
            let retries = response
                .extensions()
                .get::<crate::retry::Retried>()
                .map_or(0, |r| r.retries);
            if !inner.timed.load(Relaxed) {
                inner.timed.store(true, Relaxed);
            }
            let seen = exchange.respond(started);
            let info = ConnInfo {
                id: exchange.id(),
                reused: seen.reused,
                requests: seen.requests,
                idle_for: seen.idle_for,
                queue_wait,
                retries,
            };
            response.extensions_mut().insert(info);
            f.conn = Some(exchange);
            Some(info.reused)
        } else {
            reused_by_address(&f.metrics, response, close, seen_before)
        };
        let inner = &f.metrics.inner;
        #[cfg(feature = "metrics")]
        inner.emit.response(reused == Some(true));
        trace_response(response, reused, queue_wait);
        // The thread's shard, found once for the response's figures.
        // One add: the responses are the sum of the three.
        inner.hot.here().add(
            |hot| match reused {
                Some(true) => &hot.reused,
                Some(false) => &hot.fresh,
                None => &hot.reuse_unknown,
            },
            1,
        );
        f
    }
}

/// A request in flight: counted down when dropped, and tells its connection
/// how its body ended.
#[derive(Debug)]
pub(crate) struct Flight {
    metrics: Metrics,
    /// The response's exchange on its tracked connection.
    conn: Option<Exchange>,
}

impl Flight {
    fn body_ended(mut self) {
        if let Some(exchange) = self.conn.take() {
            exchange.body_ended(BodyEnd::Complete);
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.metrics.inner.hot.here().add(|s| &s.ended, 1);
        // Still here: the body was dropped before its end.
        if let Some(exchange) = self.conn.take() {
            exchange.body_ended(BodyEnd::Dropped);
        }
    }
}

pin_project! {
    /// Response future of [`ReuseMetrics`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(match this.started.take() {
            Some(started) => started.finish(result),
            None => result.map(|r| r.map(|b| ResponseBody::new(b, None))),
        })
    }
}

/// Tells tracing what the guard knows of a response: fields recorded on the
/// current span (where it declares them) and one debug event.
fn trace_response<B>(response: &Response<B>, reused: Option<bool>, queue_wait: Duration) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let info = response.extensions().get::<ConnInfo>();
    let id = info.map(|i| i.id);
    let resends = info.map_or(0, |i| i.retries);
    let wait = queue_wait.as_secs_f64();
    let span = tracing::Span::current();
    if let Some(reused) = reused {
        span.record("poolguard.connection.reused", reused);
    }
    if let Some(id) = id {
        span.record("poolguard.connection.id", id);
    }
    span.record("http.client.request.time_in_queue", wait);
    if resends > 0 {
        span.record("http.request.resend_count", resends);
    }
    tracing::debug!(
        poolguard.connection.reused = ?reused,
        poolguard.connection.id = ?id,
        http.client.request.time_in_queue = wait,
        http.request.resend_count = resends,
        "poolguard: response"
    );
}

/// Reuse from hyper-util's `HttpInfo`: the address pair was seen before
/// (`seen_before`, when a guard's retry already looked it up in the same
/// record). A connection that will close (`Connection: close`) is
/// forgotten, so that a later connection on the same local port counts as
/// new. (Without hyper-util there is no `HttpInfo`: `None`.)
fn reused_by_address<B>(
    metrics: &Metrics,
    response: &Response<B>,
    close: bool,
    seen_before: Option<bool>,
) -> Option<bool> {
    #[cfg(feature = "hyper-util")]
    {
        let info = response
            .extensions()
            .get::<hyper_util::client::legacy::connect::HttpInfo>()?;
        let addrs = &metrics.inner.addrs;
        let pair = (info.local_addr(), info.remote_addr());
        let seen = seen_before.unwrap_or_else(|| addrs.seen_before(pair.0, pair.1));
        if close {
            addrs.forget(pair.0, pair.1);
        }
        Some(seen)
    }
    #[cfg(not(feature = "hyper-util"))]
    {
        let _ = (metrics, response, close, seen_before);
        None
    }
}

pin_project! {
    /// Response body of [`ReuseMetrics`]: counts the request in flight until
    /// the body ends or is dropped, and tells a tracked connection which.
    /// `Send` and `Sync` whenever the body it wraps is.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        // Declared first so that it is dropped first: an early drop is
        // recorded before a drain inside reports how it ended.
        flight: Option<Flight>,
        #[pin]
        inner: B,
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(inner: B, flight: Option<Flight>) -> Self {
        let flight = match flight {
            Some(f) if inner.is_end_stream() => {
                f.body_ended();
                None
            }
            other => other,
        };
        ResponseBody { inner, flight }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        match Polled::of(&polled, || inner.is_end_stream()) {
            Polled::Error => {
                // A failed body is no early drop: the connection's IO tells
                // what happened to it.
                if let Some(mut f) = this.flight.take() {
                    f.conn = None;
                }
            }
            done if done.is_done() => {
                if let Some(f) = this.flight.take() {
                    f.body_ended();
                }
            }
            _ => {}
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
