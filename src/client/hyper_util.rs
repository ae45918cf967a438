//! The connection-level half of the per-host limit for hyper-util's legacy
//! client.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower_service::Service;

use crate::conn::http2::Frames;
use crate::conn::keep_alive::Limits;
use crate::conn::lifecycle::{Lifecycle, Rotation};
use crate::conn::turnover::{Entered, Lead, Turnover};
use crate::conn::{CloseReason, Event, Link, LinkHandle, Phase, Record, Retired, Stamp, Tracker};
use crate::key::HostKey;
use crate::limit::registry::{
    Acquire, Bounds, Overrides, Policy, Registry, Reusable, Slot, TimedOut,
};
use crate::limit::total::{join, queued, Joined, TotalCap, Wait};
use crate::limit::{QueueFull, QueueTimeout};
use crate::metrics::Metrics;
use crate::BoxError;

/// A connector for hyper-util's legacy `Client` that never has more than
/// `max_per_host` connections to a host: dialing, in use and idle together.
///
/// Wrap the connector you would give the client. A dial beyond the cap waits
/// (FIFO, each for at most [`queue_timeout`](GuardedConnector::queue_timeout))
/// until one of the host's connections closes. At most
/// [`max_queued`](GuardedConnector::max_queued) dials wait per host; a new
/// dial beyond that drops the *oldest* waiting dial, which fails with
/// [`QueueFull`]: hyper-util races a pool checkout against each dial and,
/// when the checkout wins, leaves the dial running in the background with
/// nobody waiting for it, so the oldest dial is the likeliest to be such a
/// leftover. The slot is held by the
/// [`GuardedIo`] and released when hyper drops the connection, or when the
/// connection is upgraded (a `101` response or a `CONNECT` tunnel: it has
/// left the pool for good, so it no longer counts against the host).
///
/// A dial never waits on an idle connection it cannot use. hyper-util pools
/// connections by scheme and authority *as written*, while the cap counts
/// per [`HostKey`](crate::HostKey) (`http://u@Host:080` and `http://host`
/// are one host): a connection idle under one spelling is never handed to a
/// request made with another. When such a dial must wait, the least
/// recently used idle connection of the host pooled under another spelling
/// is closed to make room, as Go's transport does when it needs a slot.
/// With [`max_total`](GuardedConnector::max_total), the same holds across
/// hosts: a dial waiting for the cap closes the least recently used idle
/// connection of another host. A connection that has carried no request
/// is left alone for its first 250 ms (hyper fails a request whose fresh
/// connection ends before it is written). The connector knows
/// when a connection is idle by following the HTTP/1 framing of the bytes
/// that cross it; HTTP/2 connections are never closed this way.
///
/// HTTP/2 connections that turn over: the connector dials one connection at
/// a time for a pool key whose last connection spoke HTTP/2 (or an `https`
/// key not heard from, where ALPN may choose it), and holds the other dials
/// until that connection carries its first stream (hyper-util has then
/// handed it to every request waiting for the key: the held dials end with
/// [`Coalesced`](crate::Coalesced)) or shows it speaks HTTP/1 (they dial).
/// Its IO reads the HTTP/2 frame headers above TLS: a `GOAWAY` takes the
/// connection out of hyper-util's pool at once (through requests that pass
/// a [`RetryStaleLayer`](crate::RetryStaleLayer), which reach its
/// `Connected::poison`), a `GOAWAY` that refused streams teaches the
/// server's streams per connection (later connections leave the pool at
/// 3/4 of it), and after 768 resets h2 wrote by itself (its answers to
/// frames of streams it forgot; not the `CANCEL`s of dropped bodies) a connection
/// leaves the pool before h2's own limit on resets would end it.
///
/// Errors of the wait are typed, recovered with `downcast_ref` from the
/// source of hyper-util's error: [`QueueFull`], [`QueueTimeout`],
/// [`ClientDropped`] and [`Coalesced`](crate::Coalesced). The inner
/// connector's errors pass through.
///
/// Why a connector, and not only a request limit: the legacy client races a
/// pool checkout against a new connect, and when the checkout wins, the
/// started connect still completes and is pooled. With
/// [`PerHostLimitLayer`](crate::PerHostLimitLayer) at `N`, this connector at
/// `N` and `pool_max_idle_per_host(N)` or more, the client never opens more
/// than `N` connections to a host.
///
/// Clones share one set of per-host slots, as the client's clones share
/// one pool.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
/// use poolguard::{GuardedConnector, PerHostLimitLayer};
///
/// # fn main() {
/// let client = Client::builder(TokioExecutor::new())
///     .pool_max_idle_per_host(10)
///     .build::<_, Empty<Bytes>>(GuardedConnector::new(HttpConnector::new(), 10));
/// let client = tower::ServiceBuilder::new()
///     .layer(PerHostLimitLayer::new(10))
///     .service(client);
/// # drop(client);
/// # }
/// ```
#[derive(Clone)]
pub struct GuardedConnector<C> {
    inner: C,
    /// What clones share, and every dial reads: one reference count a
    /// clone (hyper-util clones its connector for every request).
    shared: Arc<Shared>,
}

/// The settings and state of a [`GuardedConnector`] and its clones.
#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    bounds: Bounds,
    metrics: Option<Metrics>,
    honor_keep_alive: bool,
    /// The longest a dial waits for a slot; `None`: no limit.
    queue_timeout: Option<Duration>,
    /// Connection caps of named hosts.
    overrides: Option<Arc<Overrides>>,
    /// The slots of the cap across hosts, shared by clones.
    total: Arc<Registry>,
    /// Connections across all hosts (`None`: no cap).
    max_total: Option<usize>,
    life: Arc<Life>,
    /// One dial at a time for pool keys that speak HTTP/2, shared by
    /// clones.
    turnover: Arc<Turnover>,
    /// The age and the requests after which a connection retires.
    lifecycle: Lifecycle,
}

/// A dial was waiting for a connection slot when every clone of the client
/// (and of its connector) was dropped.
///
/// Returned as the source of hyper-util's connect error; recover it with
/// `downcast_ref::<ClientDropped>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientDropped {
    host: HostKey,
}

impl ClientDropped {
    /// The host the dial was for.
    pub fn host(&self) -> &HostKey {
        &self.host
    }
}

impl fmt::Display for ClientDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client dropped while a dial to {} waited", self.host)
    }
}

impl std::error::Error for ClientDropped {}

/// Default bound on dials waiting per host.
const DEFAULT_MAX_QUEUED: usize = crate::limit::layer::DEFAULT_MAX_QUEUED;

/// Alive while a client holds a clone of the connector. A dial waiting for
/// a slot does not keep it alive: hyper-util's pool races a checkout
/// against a connect and lets the started connect run in the background,
/// holding the pool; were that dial to wait for ever, the pool, and its
/// connections, would outlive the client.
#[derive(Debug, Default)]
struct Life {
    gone: Arc<tokio::sync::Notify>,
}

impl Drop for Life {
    fn drop(&mut self) {
        self.gone.notify_waiters();
    }
}

impl<C> GuardedConnector<C> {
    /// Wraps `inner` with a cap of `max_per_host` connections per host (a
    /// value of 0 is taken as 1), at most 1024 dials waiting per host, each
    /// for at most 30 s.
    pub fn new(inner: C, max_per_host: usize) -> Self {
        GuardedConnector {
            inner,
            shared: Arc::new(Shared {
                registry: Arc::new(Registry::new()),
                bounds: Bounds {
                    max_per_host,
                    max_queued: DEFAULT_MAX_QUEUED,
                    max_streams: None,
                },
                metrics: None,
                honor_keep_alive: true,
                queue_timeout: Some(crate::limit::layer::DEFAULT_QUEUE_TIMEOUT),
                overrides: None,
                total: Arc::default(),
                max_total: None,
                life: Arc::default(),
                turnover: Arc::default(),
                lifecycle: Lifecycle::default(),
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        inner: C,
        registry: Arc<Registry>,
        bounds: Bounds,
        metrics: Option<Metrics>,
        honor_keep_alive: bool,
        queue_timeout: Duration,
        overrides: Option<Arc<Overrides>>,
        total: (Arc<Registry>, Option<usize>),
        lifecycle: Lifecycle,
    ) -> Self {
        GuardedConnector {
            inner,
            shared: Arc::new(Shared {
                registry,
                bounds,
                metrics,
                honor_keep_alive,
                queue_timeout: Some(queue_timeout),
                overrides,
                total: total.0,
                max_total: total.1,
                life: Arc::default(),
                turnover: Arc::default(),
                lifecycle,
            }),
        }
    }

    /// At most `n` connections across all hosts (a value of 0 is taken as
    /// 1), dialing, in use and idle together, besides each host's cap.
    /// A dial beyond it first takes its host's slot, then waits (FIFO,
    /// within the same [`queue_timeout`](GuardedConnector::queue_timeout),
    /// at most [`max_queued`](GuardedConnector::max_queued) dials) for one
    /// of the total; meanwhile the least recently used idle connection of
    /// another host (pooled under another key) is closed to make room,
    /// rather than waiting for the pool to let it go. Default: no cap.
    pub fn max_total(mut self, n: usize) -> Self {
        Arc::make_mut(&mut self.shared).max_total = Some(n);
        self
    }

    /// The cap across hosts, for one dial, if one is set.
    fn total_cap(&self) -> Option<TotalCap> {
        let max = self.shared.max_total?;
        TotalCap::new(
            self.shared.total.clone(),
            max,
            self.shared.bounds.max_queued,
            None,
        )
    }

    /// At most `n` connections to `host` (a name or an IP literal, as in a
    /// URI: every port and scheme of it), instead of `max_per_host`; a
    /// value of 0 is taken as 1. Called again for the same host, the last
    /// value holds.
    pub fn max_per_host_for(mut self, host: &str, n: usize) -> Self {
        Overrides::with(&mut Arc::make_mut(&mut self.shared).overrides, host, n);
        self
    }

    /// The longest a dial waits for a connection slot before it fails with
    /// [`QueueTimeout`]. `Duration::MAX` means no limit. Default: 30 s.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.shared).queue_timeout = Some(timeout);
        self
    }

    /// The most dials waiting for each host; one more makes the oldest
    /// waiting dial fail with [`QueueFull`] (0: a dial never waits, and
    /// fails at once). Default: 1024.
    pub fn max_queued(mut self, max_queued: usize) -> Self {
        Arc::make_mut(&mut self.shared).bounds.max_queued = max_queued;
        self
    }

    /// Tracks every connection in `metrics`: counts connections opened and
    /// closed with a [`CloseReason`](crate::CloseReason) each, and gives
    /// every response a [`ConnInfo`](crate::ConnInfo) (with a
    /// [`ReuseMetricsLayer`](crate::ReuseMetricsLayer) reporting to the same
    /// `metrics`).
    pub fn track(mut self, metrics: Metrics) -> Self {
        Arc::make_mut(&mut self.shared).metrics = Some(metrics);
        self
    }

    /// Tracks every connection in `metrics`.
    #[deprecated(
        since = "0.1.0",
        note = "use `track(metrics)`: `metrics()` is a getter elsewhere (`PoolGuard::metrics`)"
    )]
    pub fn metrics(self, metrics: Metrics) -> Self {
        self.track(metrics)
    }

    /// Retires each connection once it is `age` old, give or take up to
    /// 10 % (each connection draws its own, so that connections opened
    /// together do not retire together), so that connections turn over
    /// behind a load balancer: see [`PoolGuardBuilder::max_connection_age`](crate::PoolGuardBuilder::max_connection_age)
    /// for what retiring does. Default: no limit.
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        Arc::make_mut(&mut self.shared).lifecycle.max_age = Some(age);
        self
    }

    /// Retires each connection once it has carried `n` requests (a value
    /// of 0 is taken as 1): see
    /// [`PoolGuardBuilder::max_requests_per_connection`](crate::PoolGuardBuilder::max_requests_per_connection).
    /// Default: no limit.
    pub fn max_requests_per_connection(mut self, n: u64) -> Self {
        Arc::make_mut(&mut self.shared).lifecycle.max_requests = Some(n.max(1));
        self
    }

    /// Closes every connection of this connector (and its clones) that is
    /// idle now: see [`PoolGuard::close_idle`](crate::PoolGuard::close_idle).
    pub fn close_idle(&self) {
        let asked = self.shared.registry.close_idle();
        tracing::debug!(asked, "close_idle");
    }

    /// Whether to honour `Keep-Alive: timeout=N, max=M` response headers
    /// (default: yes): an HTTP/1 connection is closed before it has been
    /// idle for the advertised timeout (less a margin of a quarter of it,
    /// at most 1 s), and after the last request the server said it would
    /// take, so that the pool never hands out a connection the server is
    /// about to close. The connection reads the header off the responses
    /// that cross it: no other layer is needed. With
    /// [`track`](GuardedConnector::track), retired connections count as
    /// [`CloseReason::Retired`](crate::CloseReason::Retired).
    pub fn honor_keep_alive(mut self, yes: bool) -> Self {
        Arc::make_mut(&mut self.shared).honor_keep_alive = yes;
        self
    }

    /// Host connection slots held now, across hosts: connections open or
    /// being dialed, and dials that hold their host's slot while they wait
    /// for one of [`max_total`](GuardedConnector::max_total).
    pub fn connections(&self) -> usize {
        self.shared.registry.in_flight()
    }

    /// Dials waiting for a free slot now, across hosts.
    pub fn waiting(&self) -> usize {
        self.shared.registry.queued()
    }

    /// Hosts with connections open, dialing or waiting.
    pub fn hosts_tracked(&self) -> usize {
        self.shared.registry.hosts_tracked()
    }

    /// A reference to the inner connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// Consumes `self`, returning the inner connector.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C: fmt::Debug> fmt::Debug for GuardedConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedConnector")
            .field("inner", &self.inner)
            .field("max_per_host", &self.shared.bounds.slots())
            .field("max_queued", &self.shared.bounds.max_queued)
            .field("max_total", &self.shared.max_total)
            .field("queue_timeout", &self.shared.queue_timeout)
            .field("connections", &self.shared.registry.in_flight())
            .finish()
    }
}

impl<C: Clone> GuardedConnector<C> {
    /// The connector that was made ready, taken for a dial that waits
    /// before it dials (a fresh clone left behind for the next
    /// `poll_ready`).
    fn take_ready(&mut self) -> Self {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        GuardedConnector {
            inner: ready,
            ..self.clone()
        }
    }
}

impl<C> Service<Uri> for GuardedConnector<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = GuardedIo<C::Response>;
    type Error = BoxError;
    type Future = ConnectFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let pool_key = pool_key(&dst);
        let tls = dst.scheme_str() == Some("https");
        match self.shared.turnover.enter(&pool_key, tls) {
            Entered::Now(lead) => match self.races_a_return(&dst, &pool_key) {
                None => self.dial(dst, pool_key, lead),
                Some(race) => {
                    let mut this = self.take_ready();
                    ConnectFuture::new(async move {
                        // An HTTP/1 connection comes back when hyper-util's
                        // task for it gets to it; a pooled HTTP/2 one was
                        // handed to the request before its dial began, which
                        // the request's next poll sees.
                        let hold = match race {
                            Reusable::Http1 => RETURN_HOLD,
                            Reusable::Http2 => Duration::ZERO,
                        };
                        hold_for_a_return(&pool_key, crate::conn::polled_for_a_request, hold)
                            .await?;
                        let dial = this.dial(dst, pool_key, lead);
                        // A dial waiting for a slot ends when the client is
                        // dropped: this clone of the client's connector must
                        // not keep the client alive while the dial waits.
                        drop(this);
                        dial.await
                    })
                }
            },
            Entered::Held(held) => {
                let mut this = self.take_ready();
                ConnectFuture::new(async move {
                    let lead = held.wait().await?;
                    let dial = this.dial(dst, pool_key, lead);
                    // (As above.)
                    drop(this);
                    dial.await
                })
            }
        }
    }
}

/// How long a dial waits for an HTTP/1 connection of its pool key coming
/// back to the pool (see [`GuardedConnector::races_a_return`]).
pub(crate) const RETURN_HOLD: Duration = Duration::from_millis(10);

/// Holds a dial for `pool_key` while a connection of the key is coming
/// back to (or being put in) the pool: if the dial's request gets it,
/// hyper-util leaves the dial to finish in the background, polled outside
/// the request (`for_a_request` says whether a poll is one of the
/// request's), and the dial ends there with [`Coalesced`](crate::Coalesced)
/// (which hyper-util drops) instead of making a connection nobody asked
/// for. Otherwise the dial goes ahead after `hold` ([`RETURN_HOLD`] for
/// an HTTP/1 connection; zero: after the request's next poll).
pub(crate) async fn hold_for_a_return(
    pool_key: &Arc<str>,
    for_a_request: impl Fn() -> bool,
    hold: Duration,
) -> Result<(), crate::Coalesced> {
    let mut sleep = (!hold.is_zero())
        .then(|| crate::timer::deadline_in(hold).and_then(crate::timer::sleep_until))
        .flatten()
        .map(Box::pin);
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if !for_a_request() {
            return Poll::Ready(Err(crate::Coalesced::pooled(pool_key.clone())));
        }
        match sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx).map(Ok),
            None if hold.is_zero() && !yielded => {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => Poll::Ready(Ok(())),
        }
    })
    .await
}

impl<C> GuardedConnector<C> {
    /// Whether a dial for `dst` races a connection of its pool key going
    /// into the pool:
    ///
    /// - an HTTP/1 connection coming back: hyper-util hands one back to
    ///   its pool only once its dispatcher is ready again, from a task of
    ///   its own, after the response's body ended; a request sent meanwhile
    ///   (the next of a sequence, typically) finds no idle connection and
    ///   dials, and the dial, when its request then gets the returning
    ///   connection, still finishes and pools one more connection;
    /// - a live HTTP/2 connection: hyper-util looks for a pooled
    ///   connection and then takes the key's "connecting" lock in two
    ///   steps, and another task can pool the key's new HTTP/2 connection
    ///   (and let go of the lock) between them; the request then dials
    ///   although the connection is there, gets it, and the dial's
    ///   connection is made only to be dropped (seen as a second
    ///   connection, closed unused, in about 4 runs of 1,000 of
    ///   `tests/adversarial.rs` `http2_prior_knowledge`).
    ///
    /// Only for a dial under the guard's layer (which marks a request's
    /// polls).
    fn races_a_return(&self, dst: &Uri, pool_key: &Arc<str>) -> Option<Reusable> {
        if !crate::conn::polled_for_a_request() {
            return None;
        }
        let key = HostKey::from_uri(dst)?;
        self.shared.registry.reusable(&key, pool_key)
    }
}

impl<C> GuardedConnector<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    /// Dials `dst` (the connector is ready) once its turn came: waits for
    /// a slot of its host (and of the total), then calls the inner
    /// connector.
    fn dial(
        &mut self,
        dst: Uri,
        pool_key: Arc<str>,
        lead: Option<Lead>,
    ) -> ConnectFuture<C::Response> {
        let Some(key) = HostKey::from_uri(&dst) else {
            // The client rejects such a URI before it dials; pass it on.
            let connect = self.inner.call(dst);
            return ConnectFuture::new(async move {
                let io = connect.await.map_err(Into::into)?;
                Ok(GuardedIo::new(io, None, Link::new(pool_key), Track::NONE))
            });
        };
        let track = Track {
            metrics: self.shared.metrics.clone().map(|m| (m, key.clone())),
            honor_keep_alive: self.shared.honor_keep_alive,
            lead,
            turnover: Some(self.shared.turnover.clone()),
            lifecycle: self.shared.lifecycle,
        };
        let link = Link::new(pool_key);
        let policy = Policy {
            bounds: self.shared.bounds,
            observer: None,
            overrides: self.shared.overrides.clone(),
            decider: None,
        };
        let pool_key = link.pool_key().clone();
        let total = self.total_cap();
        let queue_timeout = self.shared.queue_timeout;
        let deadline = move || queue_timeout.and_then(crate::timer::deadline_in);
        let wait: Wait =
            match self
                .shared
                .registry
                .acquire_dial(key.clone(), pool_key.clone(), &policy)
            {
                Acquire::Ready(slot) => {
                    match join(total.as_ref(), slot, &key, Some(pool_key), deadline) {
                        Joined::Now(slot) => {
                            let started = tokio::time::Instant::now();
                            let connect = self.inner.call(dst);
                            return ConnectFuture::new(async move {
                                let io = connect.await.map_err(Into::into)?;
                                track.dialed(started.elapsed());
                                Ok(GuardedIo::new(io, Some(slot), link, track))
                            });
                        }
                        // The host's slot went back as it dropped.
                        Joined::Full => {
                            return ConnectFuture::new(
                                async move { Err(QueueFull::new(key).into()) },
                            )
                        }
                        Joined::Later(wait) => wait,
                    }
                }
                Acquire::Queued(waiter) => {
                    queued(waiter, total, key.clone(), Some(pool_key), deadline())
                }
                Acquire::Full(key) => {
                    return ConnectFuture::new(async move { Err(QueueFull::new(key).into()) })
                }
            };
        // Take the connector that was made ready into the future.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let life = Arc::downgrade(&self.shared.life);
        let gone = self.shared.life.gone.clone();
        ConnectFuture::new(async move {
            let mut notified = std::pin::pin!(gone.notified());
            notified.as_mut().enable();
            if life.upgrade().is_none() {
                return Err(ClientDropped { host: key }.into());
            }
            let mut wait = wait;
            let slot = std::future::poll_fn(|cx| {
                if let Poll::Ready(slot) = wait.as_mut().poll(cx) {
                    return Poll::Ready(slot.map_err(|no| match no {
                        TimedOut {
                            key, evicted: true, ..
                        } => BoxError::from(QueueFull::new(key)),
                        TimedOut { key, waited, .. } => {
                            BoxError::from(QueueTimeout::new(key, waited))
                        }
                    }));
                }
                if notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(ClientDropped { host: key.clone() }.into()));
                }
                Poll::Pending
            })
            .await?;
            let started = tokio::time::Instant::now();
            let io = ready.call(dst).await.map_err(Into::into)?;
            track.dialed(started.elapsed());
            Ok(GuardedIo::new(io, Some(slot), link, track))
        })
    }
}

/// hyper-util's pool key of a destination: scheme and authority as
/// written (compared without regard to case, as `http` compares them).
fn pool_key(dst: &Uri) -> Arc<str> {
    let scheme = dst.scheme_str().unwrap_or("");
    let authority = dst.authority().map_or("", |a| a.as_str());
    let mut key = String::with_capacity(scheme.len() + 3 + authority.len());
    key.push_str(scheme);
    key.push_str("://");
    key.push_str(authority);
    key.make_ascii_lowercase();
    Arc::from(key)
}

/// Future of [`GuardedConnector`]: waits for a slot, then dials.
pub struct ConnectFuture<T> {
    inner: Pin<Box<dyn Future<Output = Result<GuardedIo<T>, BoxError>> + Send>>,
}

impl<T> ConnectFuture<T> {
    fn new(f: impl Future<Output = Result<GuardedIo<T>, BoxError>> + Send + 'static) -> Self {
        ConnectFuture { inner: Box::pin(f) }
    }
}

impl<T> Future for ConnectFuture<T> {
    type Output = Result<GuardedIo<T>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> fmt::Debug for ConnectFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectFuture").finish_non_exhaustive()
    }
}

/// Resets h2 writes by itself (any error code but `CANCEL`: its answers to
/// frames of streams it already forgot) before an HTTP/2 connection leaves
/// the pool: 3/4 of h2's default limit on those over a connection's life
/// (1024), which ends the connection and fails every request on it. The
/// `CANCEL`s of bodies dropped early are not counted by h2, nor here.
pub(crate) const RESETS_BEFORE_ROTATION: u32 = 768;

/// How a new connection is to be tracked: the metrics it reports to (with
/// its host), and whether `Keep-Alive` headers are honoured.
struct Track {
    metrics: Option<(Metrics, HostKey)>,
    honor_keep_alive: bool,
    /// The dial leads its pool key's turnover: the connection tells it
    /// what it speaks.
    lead: Option<Lead>,
    /// The connector's turnover, which learns the streams its servers take
    /// per connection.
    turnover: Option<Arc<Turnover>>,
    /// How long the connection may live and how many requests it carries.
    lifecycle: Lifecycle,
}

impl Track {
    const NONE: Track = Track {
        metrics: None,
        honor_keep_alive: false,
        lead: None,
        turnover: None,
        lifecycle: Lifecycle {
            max_age: None,
            max_requests: None,
        },
    };

    /// A dial (connect and TLS handshake, whatever the inner connector
    /// does) took `took`: the host's dial cost, which a guard's drains
    /// weigh.
    fn dialed(&self, took: std::time::Duration) {
        if let Some((metrics, key)) = &self.metrics {
            metrics.dial_costs().record(key, took);
        }
    }
}

/// A connection made by [`GuardedConnector`]: holds its host's connection
/// slot until hyper drops it (or it is upgraded), follows the HTTP/1
/// exchanges on it, and, when tracked, tells its [`Metrics`] what it sees
/// and when it closes.
///
/// After an upgrade, `hyper::upgrade::Upgraded::downcast::<GuardedIo<T>>()`
/// gives this type back, and [`into_inner`](GuardedIo::into_inner) the
/// connection it wraps.
pub struct GuardedIo<T> {
    io: T,
    guard: IoGuard,
}

/// Everything of a [`GuardedIo`] but the connection, with the drop logic,
/// so that the connection can be moved out.
struct IoGuard {
    slot: Option<Slot>,
    link: Arc<Link>,
    /// The task last parked with the link (which keeps it across wakes):
    /// the same task parks again without the link's lock.
    parked: Option<Waker>,
    tracker: Tracker,
    conn: Option<Arc<Record>>,
    honor_keep_alive: bool,
    /// The server's `Keep-Alive` limits, as its last header said.
    limits: Limits,
    /// When the connection last became idle.
    idle_since: Option<tokio::time::Instant>,
    /// When the `Keep-Alive` timeout retires the idle connection.
    retire_at: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The end of a fresh connection's grace, armed while a dial waits
    /// (`Some(None)`: the runtime has no timer).
    fresh_timer: Option<Option<Pin<Box<tokio::time::Sleep>>>>,
    /// The connection leads its pool key's turnover, until it shows what
    /// it speaks.
    lead: Option<Lead>,
    /// The frames hyper writes, while the connection is (or may be)
    /// HTTP/2.
    h2_out: Option<Frames>,
    /// The frames the server sends, once the connection is HTTP/2.
    h2_in: Option<Frames>,
    /// HTTP/2: the streams opened on the connection, against what its
    /// server takes.
    streams: Streams,
    /// The connection's age and requests, against the connector's
    /// `max_connection_age` and `max_requests_per_connection`.
    rotation: Rotation,
    /// HTTP/2, retired: since when no stream has been open (with the
    /// count of streams opened then), to end the connection once that
    /// lasted [`FRESH_GRACE`](crate::conn::FRESH_GRACE).
    quiet: Option<(u32, Pin<Box<tokio::time::Sleep>>)>,
}

/// The streams of an HTTP/2 connection, against what its server takes.
#[derive(Default)]
struct Streams {
    /// The connector's turnover, which learns the limit.
    turnover: Option<Arc<Turnover>>,
    opened: u32,
    /// Streams whose response ended (`END_STREAM` or a reset).
    ended: u32,
    /// The least last stream id of the server's `GOAWAY`s.
    goaway: Option<u32>,
    /// Streams h2 reset by itself (`RST_STREAM` written, but `CANCEL`).
    resets: u32,
    /// After how many streams the connection leaves the pool: read at its
    /// first stream (`None` inside: no limit known).
    rotate_at: Option<Option<u32>>,
}

impl<T> GuardedIo<T> {
    fn new(io: T, mut slot: Option<Slot>, link: Arc<Link>, track: Track) -> Self {
        let conn = track
            .metrics
            .map(|(metrics, key)| metrics.open_connection(key, link.clone()));
        if let Some(slot) = slot.as_mut() {
            slot.attach(link.clone());
        }
        GuardedIo {
            io,
            guard: IoGuard {
                slot,
                link,
                parked: None,
                tracker: Tracker::new(),
                conn,
                honor_keep_alive: track.honor_keep_alive,
                limits: Limits::default(),
                idle_since: None,
                retire_at: None,
                fresh_timer: None,
                lead: track.lead,
                h2_out: Some(Frames::client()),
                h2_in: None,
                streams: Streams {
                    turnover: track.turnover,
                    ..Streams::default()
                },
                rotation: Rotation::new(track.lifecycle, tokio::time::Instant::now()),
                quiet: None,
            },
        }
    }

    /// A reference to the wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// A mutable reference to the wrapped connection. Bytes read or written
    /// through it are not seen by the connection's tracking.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Consumes `self`, returning the wrapped connection; its host's
    /// connection slot is given back.
    pub fn into_inner(self) -> T {
        self.io
    }

    /// Whether the connection still holds a connection slot of its host.
    pub fn holds_slot(&self) -> bool {
        self.guard.slot.is_some()
    }
}

impl<T: fmt::Debug> fmt::Debug for GuardedIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedIo")
            .field("io", &self.io)
            .field("holds_slot", &self.guard.slot.is_some())
            .field("phase", &self.guard.tracker.phase())
            .field("connection", &self.guard.conn.as_ref().map(|c| c.id()))
            .finish()
    }
}

impl IoGuard {
    /// Follows what a write did.
    fn wrote<'a>(
        &mut self,
        polled: &Poll<io::Result<usize>>,
        bufs: impl Iterator<Item = &'a [u8]>,
    ) {
        match polled {
            Poll::Ready(Ok(n)) => {
                let mut left = *n;
                for buf in bufs {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(buf.len());
                    left -= take;
                    let event = self.tracker.wrote(&buf[..take]);
                    self.on_event(event);
                    self.wrote_h2(&buf[..take]);
                }
            }
            Poll::Ready(Err(e)) => {
                if let Some(conn) = &self.conn {
                    conn.on_io_error(e);
                }
                let event = self.tracker.write_failed();
                self.on_event(event);
            }
            Poll::Pending => {}
        }
    }

    /// Follows the HTTP/2 frames among `bytes` written, while the
    /// connection is (or may still be) HTTP/2; tells the turnover's lead
    /// what the connection speaks.
    fn wrote_h2(&mut self, bytes: &[u8]) {
        let Some(frames) = self.h2_out.as_mut() else {
            return;
        };
        if self.tracker.phase() == Phase::Http2 || self.tracker.maybe_http2() {
            let seen = frames.feed(bytes);
            self.streams.ended = self.streams.ended.saturating_add(seen.ended);
            if seen.errors > 0 {
                self.reset_streams(seen.errors);
            }
            let opened = seen.opened;
            if opened > 0 {
                if let Some(lead) = self.lead.take() {
                    lead.http2_in_use();
                }
                self.opened_streams(opened);
            }
        } else {
            self.h2_out = None;
            if let Some(lead) = self.lead.take() {
                lead.http1();
            }
        }
    }

    /// h2 reset `n` more streams by itself (its answers to frames of
    /// streams it already forgot, after bodies dropped before their end):
    /// once [`RESETS_BEFORE_ROTATION`], the connection leaves the
    /// pool, well before h2's own limit on a connection's resets ends it
    /// and fails every request on it (`too_many_internal_resets`, 1024 by
    /// default over the connection's life).
    fn reset_streams(&mut self, n: u32) {
        let before = self.streams.resets;
        self.streams.resets = before.saturating_add(n);
        if before < RESETS_BEFORE_ROTATION && self.streams.resets >= RESETS_BEFORE_ROTATION {
            tracing::debug!(pool = %self.link.pool_key(), resets = self.streams.resets, "connection leaves the pool before h2's reset limit");
            self.link.went_away();
        }
    }

    /// `n` more streams were opened: once nearly as many as the server
    /// takes (as its earlier connections showed), the connection leaves the
    /// pool before the server refuses a stream.
    fn opened_streams(&mut self, n: u32) {
        let streams = &mut self.streams;
        let before = streams.opened;
        streams.opened = streams.opened.saturating_add(n);
        if self.rotation.any() {
            let opened = u64::from(streams.opened);
            if let Some(reason) = self.rotation.check(opened, tokio::time::Instant::now()) {
                self.retire_for(reason);
            }
        }
        let streams = &mut self.streams;
        let Some(turnover) = streams.turnover.as_ref() else {
            return;
        };
        let rotate_at = *streams.rotate_at.get_or_insert_with(|| {
            turnover
                .streams_limit(self.link.pool_key())
                .map(crate::conn::turnover::rotate_at)
        });
        // Once, as the count passes the mark (a write may open several).
        if rotate_at.is_some_and(|at| before < at && streams.opened >= at) {
            tracing::debug!(pool = %self.link.pool_key(), streams = streams.opened, "connection leaves the pool before its server's stream limit");
            self.link.went_away();
        }
    }

    /// The connection's read ended: whether a stream the server took was
    /// still without its whole response then (h2 fails it, processed or
    /// not). Streams above a `GOAWAY`'s last id were refused, not taken.
    fn read_ended(&mut self) {
        let streams = &self.streams;
        let refused = match (streams.goaway, self.h2_out.as_ref()) {
            (Some(last), Some(out)) => out.last_stream().saturating_sub(last) / 2,
            _ => 0,
        };
        let open = streams
            .opened
            .saturating_sub(streams.ended)
            .saturating_sub(refused);
        self.link.read_ended(open > 0);
    }

    /// Follows the HTTP/2 frames among `bytes` read: on a `GOAWAY`, the
    /// connection leaves hyper-util's pool (see [`Link::went_away`]). A
    /// `GOAWAY` that refused streams the client had opened (they crossed
    /// it on the wire) teaches the server's limit of streams per
    /// connection, for the next connections of the key.
    fn read_h2(&mut self, bytes: &[u8]) {
        let frames = self.h2_in.get_or_insert_with(Frames::server);
        let seen = frames.feed(bytes);
        self.streams.ended = self.streams.ended.saturating_add(seen.ended);
        let Some(last) = seen.goaway else {
            return;
        };
        self.streams.goaway = Some(self.streams.goaway.map_or(last, |l| l.min(last)));
        tracing::debug!(pool = %self.link.pool_key(), last_stream = last, "GOAWAY received");
        self.link.goaway(last);
        // The client's streams are odd: 1, 3, ..., `last` were taken. The
        // largest id means "all, for now" (a graceful shutdown's first
        // GOAWAY), and refuses nothing.
        let taken = last.div_ceil(2);
        if last < 0x7fff_ffff && self.streams.opened > taken {
            if let Some(turnover) = &self.streams.turnover {
                turnover.learn_limit(self.link.pool_key(), taken);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        // Every step is published: the phase moves on events and between.
        let before = self.link.completed();
        self.link.publish(&self.tracker);
        if self.tracker.completed() != before {
            // An exchange ended: as the tracker read it, or as hyper's
            // next request said.
            self.link.touch();
        }
        if let Some(conn) = &self.conn {
            match event {
                Event::Started => conn.on_state(true, true),
                Event::Completed => conn.on_state(false, true),
                Event::Left => conn.on_state(true, false),
                Event::None | Event::Upgraded => {}
            }
        }
        if event == Event::Completed && self.rotation.any() {
            let completed = self.tracker.completed();
            if let Some(reason) = self.rotation.check(completed, tokio::time::Instant::now()) {
                self.retire_for(reason);
            }
        }
        if event == Event::Completed && self.honor_keep_alive {
            if let Some(ka) = self.tracker.keep_alive() {
                self.limits = self.limits.update(self.tracker.completed(), ka);
            }
            // Read only by an idle limit: no clock read for a server that
            // set none (about 30 ns on a VM).
            if self.limits.idle.is_some() {
                self.idle_since = Some(tokio::time::Instant::now());
            }
        }
        if event == Event::Upgraded && self.slot.take().is_some() {
            // The connection left the pool for good.
            tracing::debug!(pool = %self.link.pool_key(), "connection upgraded; its slot is free");
        }
    }

    /// Whether the idle connection is to close now to make room for a dial
    /// that waits for another pool key.
    ///
    /// Never a connection that has carried no request within
    /// [`FRESH_GRACE`](crate::conn::FRESH_GRACE) of being made: it was
    /// dialed for a request that may be about to use it, and hyper fails
    /// that request (`IncompleteMessage`, not retried) when a fresh
    /// connection ends before its first request. An idle connection that
    /// served before ends as any reused one may: hyper leaves a request it
    /// has not begun to write in its queue, and hyper-util sends it again.
    fn retire_for_dial(&mut self, cx: &mut Context<'_>) -> bool {
        if self.tracker.phase() != Phase::Idle {
            return false;
        }
        let Some(slot) = self.slot.as_mut() else {
            return false;
        };
        // Two loads when no dial waits and the connection is not leaving:
        // the common case, on every idle read (hyper reads an idle
        // connection each time its task is woken), without a clock read.
        if !slot.dial_waits() && !slot.retiring() {
            return false;
        }
        if !self.link.may_retire(tokio::time::Instant::now()) {
            // Fresh: if a dial waits, look again when the grace ends.
            if slot.dial_waits() {
                if let Some(until) = self.link.fresh_until() {
                    let timer = self
                        .fresh_timer
                        .get_or_insert_with(|| crate::timer::sleep_until(until).map(Box::pin));
                    if let Some(timer) = timer.as_mut() {
                        let _ = timer.as_mut().poll(cx);
                    }
                }
            }
            return false;
        }
        slot.should_retire()
    }

    /// Whether a `Keep-Alive` limit ends the idle connection now: the
    /// server said how many requests it takes, or how long it keeps an idle
    /// connection (less a margin). Arms a timer for the idle limit, which
    /// wakes the IO's idle read.
    fn keep_alive_ends(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.honor_keep_alive || !self.limits.any() {
            return false;
        }
        if self
            .limits
            .last
            .is_some_and(|last| self.tracker.completed() >= last)
        {
            return true;
        }
        let deadline = match (self.limits.idle, self.idle_since) {
            (Some(idle), Some(since)) => since.checked_add(idle),
            _ => None,
        };
        // `None`: no idle limit, or one past the end of time.
        let Some(deadline) = deadline else {
            return false;
        };
        match &mut self.retire_at {
            Some(sleep) if sleep.deadline() == deadline => {}
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.retire_at = crate::timer::sleep_until(deadline).map(Box::pin),
        }
        match self.retire_at.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            // Without a timer the limit is checked on each read.
            None => tokio::time::Instant::now() >= deadline,
        }
    }

    /// Whether the connection is to end now, before hyper reads on: it is
    /// idle and a `Keep-Alive` limit, or a dial waiting for another pool
    /// key, says so.
    fn poll_retire(&mut self, cx: &mut Context<'_>) -> bool {
        if self.tracker.phase() != Phase::Idle {
            self.retire_at = None;
            // Busy when `close_idle` looked, or since: not idle.
            self.link.take_evict();
            return false;
        }
        if self.rotation.any() {
            // A connection that has carried no request keeps its grace.
            let fresh = self.tracker.completed() == 0;
            let not_before = if fresh { self.link.fresh_until() } else { None };
            if let Some(reason) = self.rotation.poll_age(cx, not_before) {
                self.retire_for(reason);
            }
            if self.rotation.decided().is_some() {
                return true;
            }
        }
        if self.link.take_evict() && self.link.may_retire(tokio::time::Instant::now()) {
            self.retire_for(CloseReason::Evicted);
            return true;
        }
        if self.keep_alive_ends(cx) {
            self.retire_at = None;
            tracing::debug!(pool = %self.link.pool_key(), "idle connection retired (Keep-Alive)");
            if let Some(conn) = &self.conn {
                conn.retire(CloseReason::Retired);
            }
            return true;
        }
        if self.retire_for_dial(cx) {
            tracing::debug!(pool = %self.link.pool_key(), "idle connection retired for a waiting dial");
            return true;
        }
        false
    }
}

impl IoGuard {
    /// Remembers the task of the IO's read with the link, to be woken when
    /// something it must act on changes elsewhere; the same task as last
    /// time costs a comparison.
    fn park(&mut self, waker: &Waker) {
        if self.parked.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        self.link.park(waker);
        self.parked = Some(waker.clone());
    }

    /// The connection retires for `reason` (its age, its requests,
    /// `close_idle`): it takes no new request from now on (it leaves
    /// hyper-util's pool through its poison, and its IO closes it when it
    /// is next idle), and its close is counted with `reason`.
    fn retire_for(&mut self, reason: CloseReason) {
        tracing::debug!(pool = %self.link.pool_key(), %reason, "connection retired");
        self.link.went_away();
        if let Some(conn) = &self.conn {
            conn.retire(reason);
        }
    }

    /// HTTP/2, before a read: whether the connection is to end now, with
    /// no stream open: `close_idle` asked, or it was retired (its age ran
    /// out, or its requests) and has had no stream open for
    /// [`FRESH_GRACE`](crate::conn::FRESH_GRACE), long enough for a request
    /// hyper-util handed it just before it left the pool to have opened its
    /// stream.
    fn poll_h2_retire(&mut self, cx: &mut Context<'_>) -> bool {
        if self.rotation.any() {
            if let Some(reason) = self.rotation.poll_age(cx, None) {
                self.retire_for(reason);
            }
        }
        let opened = self.streams.opened;
        let open = opened.saturating_sub(self.streams.ended);
        let evict = self.link.take_evict();
        if open > 0 {
            self.quiet = None;
            return false;
        }
        if evict {
            self.retire_for(CloseReason::Evicted);
            return true;
        }
        if self.rotation.decided().is_none() {
            return false;
        }
        if self.quiet.as_ref().is_none_or(|(at, _)| *at != opened) {
            let until = tokio::time::Instant::now().checked_add(crate::conn::FRESH_GRACE);
            match until.and_then(crate::timer::sleep_until) {
                Some(sleep) => self.quiet = Some((opened, Box::pin(sleep))),
                // No timer: left to hyper-util, which drops the connection
                // at its pool's next look.
                None => return false,
            }
        }
        self.quiet
            .as_mut()
            .is_some_and(|(_, sleep)| sleep.as_mut().poll(cx).is_ready())
    }
}

impl Drop for IoGuard {
    fn drop(&mut self) {
        self.link.close();
        if let Some(conn) = self.conn.take() {
            conn.on_close();
        }
    }
}

impl<T: Connection> Connection for GuardedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(LinkHandle {
            link: self.guard.link.clone(),
            stamp: self
                .guard
                .conn
                .as_ref()
                .map(|conn| Stamp::new(conn.clone())),
        })
    }
}

impl<T: Read + Unpin> Read for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let GuardedIo { io, guard } = &mut *self;
        let phase = guard.tracker.phase();
        let http2 = phase == Phase::Http2;
        if phase == Phase::Idle {
            // Parked before the look below: whatever changes after it wakes
            // this read, so a read that then finds nothing need not look
            // again.
            guard.park(cx.waker());
        }
        if if http2 {
            guard.poll_h2_retire(cx)
        } else {
            guard.poll_retire(cx)
        } {
            // hyper closes the idle connection, before the server would.
            return Poll::Ready(Err(Retired::error()));
        }
        // What a read filled must be seen (the framing of each exchange is
        // followed, and an end of file on a pooled connection is the stale
        // case), and hyper's cursor does not show it: the inner IO reads
        // into a `ReadBuf` over the cursor's own unfilled memory, which is
        // then advanced by what was filled. No copy. This is what
        // hyper-util's `TokioIo` does.
        #[allow(unsafe_code)]
        // SAFETY: `as_mut` lends the cursor's unfilled memory; `ReadBuf`
        // only ever writes initialized bytes into it and never
        // de-initializes any.
        let unfilled = unsafe { buf.as_mut() };
        if unfilled.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut own = hyper::rt::ReadBuf::uninit(unfilled);
        let polled = Pin::new(io).poll_read(cx, own.unfilled());
        let filled = own.filled();
        let n = filled.len();
        match polled {
            Poll::Ready(Ok(())) => {
                if n == 0 {
                    guard.read_ended();
                    if let Some(conn) = &guard.conn {
                        conn.on_eof();
                    }
                } else if guard.tracker.phase() == Phase::Http2 {
                    guard.read_h2(filled);
                    #[allow(unsafe_code)]
                    // SAFETY: as below.
                    unsafe {
                        buf.advance(n);
                    }
                } else {
                    let event = guard.tracker.read(filled);
                    guard.on_event(event);
                    #[allow(unsafe_code)]
                    // SAFETY: the first `n` bytes of the unfilled memory
                    // were filled, and so initialized, through `own`.
                    unsafe {
                        buf.advance(n);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                guard.read_ended();
                if let Some(conn) = &guard.conn {
                    conn.on_io_error(&e);
                }
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                if guard.tracker.phase() == Phase::Http2 {
                    // For `close_idle`, which may have asked since the
                    // check above.
                    guard.park(cx.waker());
                    if guard.poll_h2_retire(cx) {
                        return Poll::Ready(Err(Retired::error()));
                    }
                }
                // An idle HTTP/1 connection parked before its look above (a
                // read that found nothing leaves the phase as it was).
                Poll::Pending
            }
        }
    }
}

/// The first bytes of a TLS handshake record: what a connection carries when
/// a TLS connector wraps the `GuardedConnector` instead of the other way
/// round.
const TLS_HANDSHAKE: [u8; 2] = [0x16, 0x03];

/// The error of a connection that would carry TLS records: the
/// `GuardedConnector` must see the HTTP inside TLS.
fn tls_outside() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "poolguard: a TLS connector wraps the GuardedConnector, which then sees only \
         encrypted bytes; wrap the TLS connector instead: \
         GuardedConnector::new(HttpsConnector, n) (or PoolGuard::connector(https))",
    )
}

impl IoGuard {
    /// Whether the first bytes written on the connection are a TLS
    /// handshake.
    fn is_tls_outside(&self, first: &[u8]) -> bool {
        self.tracker.completed() == 0
            && self.tracker.phase() == Phase::Idle
            && first.starts_with(&TLS_HANDSHAKE)
    }
}

impl<T: Write + Unpin> Write for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let GuardedIo { io, guard } = &mut *self;
        if guard.is_tls_outside(buf) {
            return Poll::Ready(Err(tls_outside()));
        }
        let polled = Pin::new(io).poll_write(cx, buf);
        guard.wrote(&polled, std::iter::once(buf));
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let GuardedIo { io, guard } = &mut *self;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if guard.is_tls_outside(first) {
                return Poll::Ready(Err(tls_outside()));
            }
        }
        let polled = Pin::new(io).poll_write_vectored(cx, bufs);
        guard.wrote(&polled, bufs.iter().map(|b| &b[..]));
        polled
    }
}

#[cfg(test)]
mod tests {
    //! The connection model through the IO wrapper, on scripted IO
    //! (`tokio_test::io`, as hyper-util's own tests do): what the bytes that
    //! cross a connection make of it.

    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::time::Duration;

    use hyper_util::rt::TokioIo;
    use tokio_test::io::{Builder, Mock};

    use super::*;

    type Io = GuardedIo<TokioIo<Mock>>;

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: h\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn io(mock: Mock, slot: Option<Slot>, honor_keep_alive: bool) -> Io {
        let track = Track {
            metrics: None,
            honor_keep_alive,
            lead: None,
            turnover: None,
            lifecycle: Lifecycle::default(),
        };
        GuardedIo::new(
            TokioIo::new(mock),
            slot,
            Link::new(Arc::from("http://h")),
            track,
        )
    }

    async fn write(io: &mut Io, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, bytes))
                .await
                .expect("write");
            bytes = &bytes[n..];
        }
    }

    /// One read: what it filled (empty at end of file).
    async fn read(io: &mut Io) -> io::Result<Vec<u8>> {
        let mut storage = [0u8; 256];
        let mut buf = hyper::rt::ReadBuf::new(&mut storage);
        std::future::poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, buf.unfilled())).await?;
        Ok(buf.filled().to_vec())
    }

    fn link(io: &Io) -> &Link {
        &io.guard.link
    }

    #[tokio::test]
    async fn request_response_sequences_are_counted() {
        let chunked: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mock = Builder::new()
            .write(GET)
            .read(OK)
            .write(GET)
            .read(&chunked[..20])
            .read(&chunked[20..])
            .build();
        let mut io = io(mock, None, false);
        assert_eq!((link(&io).phase(), link(&io).completed()), (Phase::Idle, 0));
        write(&mut io, GET).await;
        assert_eq!(link(&io).phase(), Phase::Awaiting);
        assert_eq!(read(&mut io).await.unwrap(), OK);
        assert_eq!((link(&io).phase(), link(&io).completed()), (Phase::Idle, 1));
        write(&mut io, GET).await;
        read(&mut io).await.unwrap();
        assert_eq!(link(&io).phase(), Phase::Responding);
        read(&mut io).await.unwrap();
        assert_eq!((link(&io).phase(), link(&io).completed()), (Phase::Idle, 2));
        // End of file while idle: no request was written, so none failed
        // unanswered here (hyper cancels one it had not begun to write).
        assert!(read(&mut io).await.unwrap().is_empty());
        assert!(!link(&io).failed_unanswered_on_reused());
    }

    #[tokio::test]
    async fn a_request_written_on_a_reused_connection_and_unanswered_is_stale() {
        let mock = Builder::new().write(GET).read(OK).write(GET).build();
        let mut io = io(mock, None, false);
        write(&mut io, GET).await;
        read(&mut io).await.unwrap();
        assert!(!link(&io).failed_unanswered_on_reused(), "idle");
        write(&mut io, GET).await;
        assert!(read(&mut io).await.unwrap().is_empty());
        assert!(link(&io).failed_unanswered_on_reused());
    }

    #[tokio::test]
    async fn a_write_that_fails_on_a_reused_connection_is_unanswered() {
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "closed");
        let mock = Builder::new()
            .write(GET)
            .read(OK)
            .write_error(broken)
            .build();
        let mut io = io(mock, None, false);
        write(&mut io, GET).await;
        read(&mut io).await.unwrap();
        let failed = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, GET)).await;
        assert!(failed.is_err());
        assert_eq!(link(&io).phase(), Phase::Requesting);
        assert!(link(&io).failed_unanswered_on_reused());
    }

    #[tokio::test]
    async fn a_request_failing_after_its_response_was_read_is_answered() {
        // hyper rejects a head the tracker reads as complete only with a
        // stricter option of its builder; the exchange is then over, and
        // the request failed answered.
        let mock = Builder::new()
            .write(GET)
            .read(OK)
            .write(GET)
            .read(OK)
            .build();
        let mut io = io(mock, None, false);
        for _ in 0..2 {
            write(&mut io, GET).await;
            read(&mut io).await.unwrap();
        }
        assert_eq!((link(&io).phase(), link(&io).completed()), (Phase::Idle, 2));
        assert!(!link(&io).failed_unanswered_on_reused());
    }

    #[tokio::test]
    async fn an_interim_response_is_an_answer() {
        let mock = Builder::new()
            .write(GET)
            .read(OK)
            .write(b"PUT / HTTP/1.1\r\ncontent-length: 4\r\n\r\n")
            .read(b"HTTP/1.1 100 Continue\r\n\r\n")
            .write(b"ab")
            .build();
        let mut io = io(mock, None, false);
        write(&mut io, GET).await;
        read(&mut io).await.unwrap();
        write(&mut io, b"PUT / HTTP/1.1\r\ncontent-length: 4\r\n\r\n").await;
        assert!(link(&io).failed_unanswered_on_reused(), "nothing back yet");
        read(&mut io).await.unwrap();
        write(&mut io, b"ab").await;
        // The connection ends mid-request, after the interim response.
        assert!(read(&mut io).await.unwrap().is_empty());
        assert_eq!(link(&io).phase(), Phase::Responding);
        assert!(!link(&io).failed_unanswered_on_reused());
    }

    #[tokio::test]
    async fn an_end_of_file_mid_response_is_no_stale_connection() {
        let mock = Builder::new()
            .write(GET)
            .read(OK)
            .write(GET)
            .read(b"HTTP/1.1 20")
            .build();
        let mut io = io(mock, None, false);
        write(&mut io, GET).await;
        read(&mut io).await.unwrap();
        write(&mut io, GET).await;
        read(&mut io).await.unwrap();
        assert!(read(&mut io).await.unwrap().is_empty());
        assert!(!link(&io).failed_unanswered_on_reused());
    }

    #[tokio::test]
    async fn a_fresh_connection_that_fails_is_no_stale_connection() {
        let mock = Builder::new().write(GET).build();
        let mut io = io(mock, None, false);
        write(&mut io, GET).await;
        assert!(read(&mut io).await.unwrap().is_empty());
        assert!(!link(&io).failed_unanswered_on_reused());
    }

    /// A registry of connection slots (`max_per_host` a host), and a
    /// dial's slot in it for `http://h`.
    fn dial_slot(max_per_host: usize) -> (Arc<Registry>, HostKey, Slot) {
        let registry = Arc::new(Registry::new());
        let key = HostKey::from_uri(&Uri::from_static("http://h/")).unwrap();
        let Acquire::Ready(slot) = registry.acquire_dial(
            key.clone(),
            Arc::from("http://h"),
            &dial_policy(max_per_host),
        ) else {
            panic!("a free slot");
        };
        (registry, key, slot)
    }

    /// The policy of [`dial_slot`]'s dials.
    fn dial_policy(max_per_host: usize) -> Policy {
        Policy {
            bounds: Bounds {
                max_per_host,
                max_queued: 8,
                max_streams: None,
            },
            observer: None,
            overrides: None,
            decider: None,
        }
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    /// A dial that must wait for a slot held by a connection pooled under
    /// another key, queuing just as that connection goes idle: whichever
    /// of the two looks second must see the other (the dial chooses the
    /// idle connection and wakes it, or the connection, looking for
    /// waiting dials, sees the dial), or the connection stays idle in its
    /// slot and the dial waits until the pool's idle timeout. The
    /// connection goes idle, and looks, between the dial's look at the
    /// connections' phases and the end of its queuing (a hook): there,
    /// the dial once saw it busy and it saw no dial (the dial counted
    /// itself last). A hyper-util request under `max_total` hung so (CI,
    /// 2026-12-07: `tests/total.rs`, one request of 400).
    #[tokio::test]
    async fn a_connection_going_idle_as_a_dial_queues_makes_room_for_it() {
        let (registry, key, slot) = dial_slot(1);
        let mock = Builder::new()
            .write(GET)
            .read(&OK[..20])
            .read(&OK[20..])
            .build();
        let mut io = io(mock, Some(slot), false);
        write(&mut io, GET).await;
        let _ = read(&mut io).await.expect("the head's first bytes");
        assert_ne!(link(&io).phase(), Phase::Idle, "mid-response");
        // Woken if the dial chooses it.
        let wakes = Arc::new(Wakes::default());
        link(&io).park(&Waker::from(wakes.clone()));

        let io = Arc::new(Mutex::new(io));
        let saw_dial = Arc::new(AtomicBool::new(false));
        {
            let (io, saw_dial) = (io.clone(), saw_dial.clone());
            crate::limit::registry::hook::set_after_choosing(move || {
                let mut io = io.lock().unwrap();
                // The rest of the response: the connection goes idle.
                let mut storage = [0u8; 64];
                let mut buf = hyper::rt::ReadBuf::new(&mut storage);
                let mut cx = Context::from_waker(Waker::noop());
                let read = Pin::new(&mut *io).poll_read(&mut cx, buf.unfilled());
                assert!(matches!(read, Poll::Ready(Ok(()))));
                assert_eq!(io.guard.link.phase(), Phase::Idle);
                // Its look (`retire_for_dial`) goes on only if a dial waits.
                let slot = io.guard.slot.as_ref().expect("the slot");
                saw_dial.store(slot.dial_waits(), Relaxed);
            });
        }
        let Acquire::Queued(waiter) =
            registry.acquire_dial(key, Arc::from("http://other"), &dial_policy(1))
        else {
            panic!("the dial must wait");
        };
        let woken = wakes.0.load(Relaxed) > 0;
        let saw = saw_dial.load(Relaxed);
        assert!(
            woken || saw,
            "neither saw the other: the dial woke nothing, the connection saw no dial"
        );
        // The connection's next read retires it, and its slot goes to the
        // dial.
        let mut io = Arc::into_inner(io).unwrap().into_inner().unwrap();
        let retired = read(&mut io).await.expect_err("retired for the dial");
        assert!(retired.get_ref().is_some_and(|e| e.is::<Retired>()));
        drop(io);
        let granted = tokio::time::timeout(Duration::from_secs(5), waiter.wait(None)).await;
        assert!(matches!(granted, Ok(Ok(_))), "the dial got the slot");
    }

    #[tokio::test]
    async fn an_upgrade_gives_the_slot_back() {
        let (registry, _key, slot) = dial_slot(1);
        let upgrade: &[u8] = b"GET / HTTP/1.1\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n";
        let mock = Builder::new()
            .write(upgrade)
            .read(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\nhello")
            .write(b"raw bytes")
            .build();
        let mut io = io(mock, Some(slot), false);
        assert!(io.holds_slot());
        assert_eq!(registry.in_flight(), 1);
        write(&mut io, upgrade).await;
        assert!(read(&mut io).await.unwrap().ends_with(b"hello"));
        assert_eq!(link(&io).phase(), Phase::Upgraded);
        assert!(!io.holds_slot());
        assert_eq!(registry.in_flight(), 0);
        write(&mut io, b"raw bytes").await;
        assert_eq!(link(&io).phase(), Phase::Upgraded);
        let _mock: TokioIo<Mock> = io.into_inner();
    }

    /// An HTTP/2 frame header and payload.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    use std::sync::atomic::Ordering::Relaxed;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[tokio::test]
    async fn an_http2_lead_is_in_use_at_its_first_stream_and_a_goaway_poisons() {
        let turnover = Arc::new(Turnover::default());
        let key: Arc<str> = Arc::from("https://h:443");
        let Entered::Now(Some(lead)) = turnover.enter(&key, true) else {
            panic!("the first dial leads");
        };
        let mut settings = PREFACE.to_vec();
        settings.extend(frame(0x4, 0, 0, &[]));
        let headers = frame(0x1, 0x5, 1, &[0x82]);
        let mut goaway = frame(0x4, 0, 0, &[]);
        goaway.extend(frame(0x7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
        let mock = Builder::new()
            .write(&settings)
            .write(&headers)
            .read(&goaway)
            .build();
        let track = Track {
            metrics: None,
            honor_keep_alive: false,
            lead: Some(lead),
            turnover: Some(turnover.clone()),
            lifecycle: Lifecycle::default(),
        };
        let mut io = GuardedIo::new(TokioIo::new(mock), None, Link::new(key.clone()), track);
        let poisoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = poisoned.clone();
        link(&io).arm_poison(Box::new(move || flag.store(true, Relaxed)));

        write(&mut io, &settings).await;
        // The preface and settings: still leading, a second dial is held.
        assert!(matches!(turnover.enter(&key, true), Entered::Held(_)));
        write(&mut io, &headers).await;
        // The first stream: the lead is in use; the next dial leads anew.
        assert!(matches!(turnover.enter(&key, true), Entered::Now(Some(_))));
        assert!(!poisoned.load(Relaxed));
        let _ = read(&mut io).await;
        assert!(poisoned.load(Relaxed), "the GOAWAY poisons the connection");
        // A first GOAWAY that names its last stream: a request it fails was
        // not processed.
        assert!(link(&io).goaway_refused());
    }

    /// hyper-util looks for a pooled connection, then takes its key's
    /// "connecting" lock: a new HTTP/2 connection pooled by another task
    /// in between (the lock let go with it) still gets a dial, although
    /// the request gets the connection. Such a dial waits for the
    /// request's next poll, and ends unmade if the request took the
    /// pooled connection by then.
    #[tokio::test]
    async fn a_dial_racing_a_pooled_http2_connection_waits_for_the_next_poll() {
        let (registry, key, slot) = dial_slot(4);
        let pool_key: Arc<str> = Arc::from("http://h");
        let mut settings = PREFACE.to_vec();
        settings.extend(frame(0x4, 0, 0, &[]));
        let mock = Builder::new().write(&settings).build();
        let mut io = io(mock, Some(slot), false);
        assert_eq!(
            registry.reusable(&key, &pool_key),
            None,
            "nothing written yet"
        );
        write(&mut io, &settings).await;
        assert_eq!(registry.reusable(&key, &pool_key), Some(Reusable::Http2));
        assert_eq!(registry.reusable(&key, &Arc::from("http://other")), None);

        // The request still waits at its next poll: the dial goes ahead.
        let mut hold =
            tokio_test::task::spawn(hold_for_a_return(&pool_key, || true, Duration::ZERO));
        assert!(hold.poll().is_pending());
        assert!(hold.is_woken(), "polled again at once");
        assert!(matches!(hold.poll(), Poll::Ready(Ok(()))));
        // The request took the pooled connection meanwhile: no dial.
        let waiting = std::sync::atomic::AtomicBool::new(true);
        let mut hold = tokio_test::task::spawn(hold_for_a_return(
            &pool_key,
            || waiting.load(Relaxed),
            Duration::ZERO,
        ));
        assert!(hold.poll().is_pending());
        waiting.store(false, Relaxed);
        assert!(matches!(
            hold.poll(),
            Poll::Ready(Err(crate::Coalesced { .. }))
        ));
        drop(hold);

        // A connection that went away is no longer one to wait for.
        link(&io).went_away();
        assert_eq!(registry.reusable(&key, &pool_key), None);
        let _mock: TokioIo<Mock> = io.into_inner();
    }

    #[tokio::test]
    async fn an_http1_lead_lets_the_held_dials_go() {
        let turnover = Arc::new(Turnover::default());
        let key: Arc<str> = Arc::from("https://h:443");
        let Entered::Now(Some(lead)) = turnover.enter(&key, true) else {
            panic!("the first dial leads");
        };
        let mock = Builder::new().write(GET).build();
        let track = Track {
            metrics: None,
            honor_keep_alive: false,
            lead: Some(lead),
            turnover: Some(turnover.clone()),
            lifecycle: Lifecycle::default(),
        };
        let mut io = GuardedIo::new(TokioIo::new(mock), None, Link::new(key.clone()), track);
        write(&mut io, GET).await;
        assert!(matches!(turnover.enter(&key, true), Entered::Now(None)));
    }

    #[tokio::test]
    async fn a_held_dial_waiting_for_a_slot_ends_when_the_connector_is_dropped() {
        // One connection a host. The first dial of an https host leads, the
        // next is held until the lead shows its protocol, then waits for
        // the slot the lead's connection holds.
        let mocks = Arc::new(std::sync::Mutex::new(vec![Builder::new()
            .write(GET)
            .build()]));
        let inner = tower::service_fn(move |_: Uri| {
            let mock = mocks.lock().ok().and_then(|mut m| m.pop());
            async move {
                mock.map(TokioIo::new)
                    .ok_or_else(|| io::Error::other("one dial"))
            }
        });
        let mut connector = GuardedConnector::new(inner, 1);
        let dst = Uri::from_static("https://h/");
        let mut io = connector
            .call(dst.clone())
            .await
            .expect("the lead's connection");
        let mut held = tokio_test::task::spawn(connector.call(dst));
        assert!(held.poll().is_pending(), "held by the lead");
        // The lead speaks HTTP/1: the held dial goes, and waits for the
        // slot.
        write(&mut io, GET).await;
        assert!(held.is_woken());
        assert!(held.poll().is_pending(), "waits for the slot");
        assert_eq!(connector.waiting(), 1);
        // The client goes (its connector with it): the wait ends, as it
        // does for a dial that was never held.
        drop(connector);
        assert!(held.is_woken());
        match held.poll() {
            Poll::Ready(Err(e)) => assert!(e.downcast_ref::<ClientDropped>().is_some(), "{e}"),
            other => panic!("the dial still waits: {:?}", other.map(|r| r.map(|_| ()))),
        }
        drop(io);
    }

    #[tokio::test]
    async fn an_http2_preface_is_no_request() {
        let preface: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let mock = Builder::new().write(preface).build();
        let mut io = io(mock, None, false);
        write(&mut io, preface).await;
        assert_eq!(
            (link(&io).phase(), link(&io).completed()),
            (Phase::Http2, 0)
        );
        assert!(read(&mut io).await.unwrap().is_empty());
        assert!(!link(&io).failed_unanswered_on_reused());
    }

    #[tokio::test]
    async fn keep_alive_max_retires_after_the_last_exchange() {
        let last: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: max=0\r\n\r\nok";
        // No read is scripted after the response: a retired connection
        // fails hyper's read with `Retired` without reading.
        let mock = Builder::new().write(GET).read(last).build();
        let mut io = io(mock, None, true);
        write(&mut io, GET).await;
        read(&mut io).await.unwrap();
        let retired = read(&mut io).await.unwrap_err();
        assert!(crate::conn::Retired::is(&retired));
        assert_eq!(link(&io).completed(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_timeout_retires_an_idle_connection_in_time() {
        let response: &[u8] =
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=4\r\n\r\nok";
        // The server would send nothing more for a minute.
        let mock = Builder::new()
            .write(GET)
            .read(response)
            .wait(Duration::from_secs(60))
            .build();
        let mut io = io(mock, None, true);
        write(&mut io, GET).await;
        read(&mut io).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut idle = tokio_test::task::spawn(read(&mut io));
        tokio_test::assert_pending!(idle.poll());
        tokio::time::advance(Duration::from_millis(2999)).await;
        tokio_test::assert_pending!(idle.poll());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(idle.is_woken());
        let retired = tokio_test::assert_ready!(idle.poll()).unwrap_err();
        assert!(crate::conn::Retired::is(&retired), "retired: {retired}");
        // 4 s less a margin of min(4 s / 4, 1 s).
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
