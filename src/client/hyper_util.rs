//! The connection-level half of the per-host limit for hyper-util's legacy
//! client.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower_service::Service;

use crate::key::HostKey;
use crate::limit::registry::{Acquire, Bounds, Registry, Slot};
use crate::metrics::conn::{ConnHandle, ConnState, Retire};
use crate::metrics::Metrics;
use crate::BoxError;

/// A connector for hyper-util's legacy `Client` that never has more than
/// `max_per_host` connections to a host: dialing, in use and idle together.
///
/// Wrap the connector you would give the client. A dial beyond the cap waits
/// (FIFO) until one of the host's connections closes; it never fails a
/// request because of the cap. The slot is held by the [`GuardedIo`] and
/// released when hyper drops the connection.
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
    registry: Arc<Registry>,
    metrics: Option<Metrics>,
    honor_keep_alive: bool,
    life: Arc<Life>,
}

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
    /// value of 0 is taken as 1).
    pub fn new(inner: C, max_per_host: usize) -> Self {
        GuardedConnector {
            inner,
            registry: Arc::new(Registry::new(
                Bounds {
                    max_per_host,
                    max_queued: usize::MAX,
                },
                None,
            )),
            metrics: None,
            honor_keep_alive: true,
            life: Arc::default(),
        }
    }

    pub(crate) fn from_parts(
        inner: C,
        registry: Arc<Registry>,
        metrics: Option<Metrics>,
        honor_keep_alive: bool,
    ) -> Self {
        GuardedConnector {
            inner,
            registry,
            metrics,
            honor_keep_alive,
            life: Arc::default(),
        }
    }

    /// Tracks every connection in `metrics`: counts connections opened and
    /// closed with a [`CloseReason`](crate::CloseReason) each, and gives
    /// every response a [`ConnInfo`](crate::ConnInfo) (with a
    /// [`ReuseMetricsLayer`](crate::ReuseMetricsLayer) reporting to the same
    /// `metrics`).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether to honour `Keep-Alive: timeout=N, max=M` response headers
    /// (default: yes): a tracked connection is closed before it has been
    /// idle for the advertised timeout (less a margin of a quarter of it,
    /// at most 1 s), and after the last request the server said it would
    /// take, so that the pool never hands out a connection the server is
    /// about to close. Needs [`metrics`](GuardedConnector::metrics) and a
    /// [`ReuseMetricsLayer`](crate::ReuseMetricsLayer) on the client, which
    /// see the responses. Retired connections count as
    /// [`CloseReason::Retired`](crate::CloseReason::Retired).
    pub fn honor_keep_alive(mut self, yes: bool) -> Self {
        self.honor_keep_alive = yes;
        self
    }

    /// Connections open or being dialed now, across hosts.
    pub fn connections(&self) -> usize {
        self.registry.in_flight()
    }

    /// Dials waiting for a free slot now, across hosts.
    pub fn waiting(&self) -> usize {
        self.registry.queued()
    }

    /// Hosts with connections open, dialing or waiting.
    pub fn hosts_tracked(&self) -> usize {
        self.registry.hosts_tracked()
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
            .field("max_per_host", &self.registry.bounds().max_per_host)
            .field("connections", &self.registry.in_flight())
            .finish()
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
        let Some(key) = HostKey::from_uri(&dst) else {
            // The client rejects such a URI before it dials; pass it on.
            let connect = self.inner.call(dst);
            return ConnectFuture::new(async move {
                let io = connect.await.map_err(Into::into)?;
                Ok(GuardedIo::new(io, None, None))
            });
        };
        let track = self
            .metrics
            .clone()
            .map(|m| Track(m, key.clone(), self.honor_keep_alive));
        match self.registry.acquire(key) {
            Acquire::Ready(slot) => {
                let connect = self.inner.call(dst);
                ConnectFuture::new(async move {
                    let io = connect.await.map_err(Into::into)?;
                    Ok(GuardedIo::new(io, Some(slot), track))
                })
            }
            Acquire::Queued(waiter) => {
                // Take the connector that was made ready into the future.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                let life = Arc::downgrade(&self.life);
                let gone = self.life.gone.clone();
                ConnectFuture::new(async move {
                    let mut notified = std::pin::pin!(gone.notified());
                    notified.as_mut().enable();
                    if life.upgrade().is_none() {
                        return Err(BoxError::from("client dropped while the dial waited"));
                    }
                    let mut wait = std::pin::pin!(waiter.wait(None));
                    let slot = std::future::poll_fn(|cx| {
                        if let Poll::Ready(slot) = wait.as_mut().poll(cx) {
                            return Poll::Ready(
                                slot.map_err(|_| BoxError::from("connection slot unavailable")),
                            );
                        }
                        if notified.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Err(BoxError::from(
                                "client dropped while the dial waited",
                            )));
                        }
                        Poll::Pending
                    })
                    .await?;
                    let io = ready.call(dst).await.map_err(Into::into)?;
                    Ok(GuardedIo::new(io, Some(slot), track))
                })
            }
            // The queue of a connector is unbounded; kept total all the same.
            Acquire::Full(key) => {
                ConnectFuture::new(async move { Err(crate::QueueFull::new(key).into()) })
            }
        }
    }
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

/// How a new connection is to be tracked: its metrics, its host, and
/// whether `Keep-Alive` headers are honoured.
struct Track(Metrics, HostKey, bool);

/// A connection made by [`GuardedConnector`]: holds its host's connection
/// slot until hyper drops it, and, when tracked, tells its
/// [`Metrics`] what it sees and when it closes.
pub struct GuardedIo<T> {
    io: T,
    slot: Option<Slot>,
    conn: Option<Arc<ConnState>>,
    /// When the `Keep-Alive` timeout retires the idle connection.
    retire_at: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> GuardedIo<T> {
    fn new(io: T, slot: Option<Slot>, track: Option<Track>) -> Self {
        let conn = track.map(|Track(metrics, key, ka)| ConnState::open(&metrics, key, ka));
        GuardedIo {
            io,
            slot,
            conn,
            retire_at: None,
        }
    }

    /// A reference to the wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: fmt::Debug> fmt::Debug for GuardedIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedIo")
            .field("io", &self.io)
            .field("holds_slot", &self.slot.is_some())
            .field("connection", &self.conn.as_ref().map(|c| c.id))
            .finish()
    }
}

impl<T> GuardedIo<T> {
    /// Tells a tracked connection that hyper writes.
    #[inline]
    fn will_write(&self) {
        if let Some(conn) = &self.conn {
            conn.on_write();
        }
    }

    /// Tells a tracked connection what a write did.
    fn saw_write(&self, polled: &Poll<io::Result<usize>>) {
        if let (Some(conn), Poll::Ready(Err(e))) = (&self.conn, polled) {
            conn.on_io_error(e);
        }
    }

    /// Whether a `Keep-Alive` limit ends the connection now. Registers the
    /// task to be woken at the limit (or when the connection goes idle).
    fn poll_retire(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = &self.conn else {
            return false;
        };
        let mut registered = false;
        loop {
            match conn.retire_check() {
                Retire::Keep => {
                    self.retire_at = None;
                    return false;
                }
                Retire::Now => {
                    self.retire_at = None;
                    conn.retire();
                    return true;
                }
                Retire::At(at) => {
                    let deadline = conn.metrics().inner.instant(at);
                    match &mut self.retire_at {
                        Some(sleep) if sleep.deadline() == deadline => {}
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => self.retire_at = crate::timer::sleep_until(deadline).map(Box::pin),
                    }
                    // Without a timer the limit is checked on the next read.
                    let fired = self
                        .retire_at
                        .as_mut()
                        .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                    if fired {
                        self.retire_at = None;
                        conn.retire();
                    }
                    return fired;
                }
                // Register, then look again: the connection may have gone
                // idle in between.
                Retire::Later if !registered => {
                    conn.park_reader(cx.waker());
                    registered = true;
                }
                Retire::Later => return false,
            }
        }
    }
}

impl<T> Drop for GuardedIo<T> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.on_close();
        }
    }
}

impl<T: Connection> Connection for GuardedIo<T> {
    fn connected(&self) -> Connected {
        let connected = self.io.connected();
        match &self.conn {
            Some(conn) => connected.extra(ConnHandle(conn.clone())),
            None => connected,
        }
    }
}

impl<T: Read + Unpin> Read for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.conn.as_ref().is_some_and(|c| c.has_keep_alive_limit()) && this.poll_retire(cx) {
            // An end of file: hyper closes the idle connection as if the
            // server had, but before the server would.
            return Poll::Ready(Ok(()));
        }
        let Some(conn) = this.conn.as_ref() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        // What a read filled must be known (an end of file on a pooled
        // connection is the stale case), and hyper's cursor does not say:
        // the inner IO reads into a `ReadBuf` over the cursor's own unfilled
        // memory, which is then advanced by what was filled. No copy. This
        // is what hyper-util's `TokioIo` does.
        #[allow(unsafe_code)]
        // SAFETY: `as_mut` lends the cursor's unfilled memory; `ReadBuf`
        // only ever writes initialized bytes into it and never
        // de-initializes any.
        let unfilled = unsafe { buf.as_mut() };
        if unfilled.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut own = hyper::rt::ReadBuf::uninit(unfilled);
        let polled = Pin::new(&mut this.io).poll_read(cx, own.unfilled());
        let n = own.filled().len();
        match polled {
            Poll::Ready(Ok(())) => {
                if n == 0 {
                    conn.on_eof();
                } else {
                    conn.on_read();
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
                conn.on_io_error(&e);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                conn.park_reader(cx.waker());
                Poll::Pending
            }
        }
    }
}

impl<T: Write + Unpin> Write for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.will_write();
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.saw_write(&polled);
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
        self.will_write();
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.saw_write(&polled);
        polled
    }
}
