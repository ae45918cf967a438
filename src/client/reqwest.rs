//! The guarded stack for [reqwest](https://docs.rs/reqwest) clients.
//!
//! reqwest keeps its connection pool and its connections to itself: its
//! connector layer sees each dial but neither the host of the request nor
//! the connection after the dial. So with reqwest:
//!
//! - the per-host cap is **request level** ([`PerHostLimitLayer`](crate::PerHostLimitLayer)):
//!   at most N requests in flight per host; reqwest's pool (hyper-util's,
//!   inside) could still dial more connections than N when a pool checkout
//!   races a connect, which the guard's dials mostly avoid (see below);
//!   there is no hard connection cap as with
//!   [`GuardedConnector`](crate::GuardedConnector);
//! - reuse comes from hyper-util's `HttpInfo` (socket addresses), not from
//!   connection tracking, and connections closed are not counted;
//! - dials are counted, per remote address, by
//!   [`PoolGuard::reqwest_connector_layer`](crate::PoolGuard::reqwest_connector_layer),
//!   which also dials one connection at a time to a host that speaks (or
//!   over TLS may speak) HTTP/2, so that the requests waiting when its
//!   connection goes away share the next one: [`GuardedClient`] and
//!   [`GuardMiddleware`] tell it the host of the request that dials (a task
//!   local; reqwest's connector layer sees no host);
//! - reqwest resends HTTP/2 protocol NACKs itself: the guard leaves them
//!   to it, and [`PoolGuard::reqwest_retry`](crate::PoolGuard::reqwest_retry)
//!   gives it a policy that keeps refused streams within the guard's budget;
//! - a `GOAWAY` cannot take a connection out of reqwest's pool at once;
//!   a request hyper 1.12 strands (see [`retry`](crate::retry)) cannot be
//!   seen as such: [`GuardedClient`] and [`GuardMiddleware`] resend an
//!   idempotent request (with a body they can copy) to a host known to
//!   answer over HTTP/2 that has waited 2 s for its response, 2 s after its
//!   host's connection turned over (after it started, or up to 2 s before:
//!   hyper-util keeps the old connection pooled until a request takes it),
//!   which may send it twice (idempotent requests allow it); a stranded
//!   `POST` is bounded only by reqwest's `timeout`;
//! - HTTP/2 bodies dropped early have their streams reset, as bare: a
//!   reqwest connection cannot leave the pool before h2's own limit on the
//!   resets it writes ends it (`too_many_internal_resets`), which fails
//!   every request on it; the guard resends the idempotent ones (a
//!   `POST` in flight then fails as it would bare). A drain instead would
//!   keep the connection at less than half bare's rate.
//! - [`max_connection_age`](crate::PoolGuardBuilder::max_connection_age)
//!   and [`max_requests_per_connection`](crate::PoolGuardBuilder::max_requests_per_connection)
//!   rotate **HTTP/1** connections: [`GuardedClient`] and
//!   [`GuardMiddleware`] follow each connection by the socket addresses of
//!   its responses (`HttpInfo`), and once one is due (its next request
//!   would be its last, or its age ran out) the next request for its host
//!   says `Connection: close`, which makes hyper close the connection after
//!   the response. The pool, not the guard, picks the connection: for
//!   sequential requests it is the due one, exactly; under concurrency the
//!   request may land on another connection, which then retires early (the
//!   due one stays due). A request that already has a `Connection` header
//!   is left alone. Nothing else changes in the request.
//!
//! # What reqwest 0.13 does not let the guard do
//!
//! - **Rotate HTTP/2 connections, `close_idle`, close reasons.** Each
//!   needs the connection: its IO (to see its frames and end it) or
//!   hyper-util's `Connected::poison` (to take it out of the pool). The
//!   connector layer must return reqwest's `Conn`, whose fields are
//!   private and which has no constructor (`reqwest::connect::Conn`, 0.13.5),
//!   so the IO cannot be wrapped; reqwest does not pass request extensions
//!   to hyper-util, so `capture_connection` (and its poison) never reaches
//!   the pool. HTTP/2 has no `Connection: close` (RFC 9113 §8.2.2).
//! - **A hard connection cap.** A cap needs to know when a connection
//!   closes; the layer sees the dial, never the end (the same sealed
//!   `Conn`). The per-host cap stays a request cap. What the guard does
//!   about the dials hyper-util's pool makes past it (a request admitted as
//!   another's body ends finds that connection not yet back in the pool):
//!   a dial for a host with as many HTTP/1 connections known or being
//!   dialed as requests awaiting their response heads, and that answered
//!   within the last 50 ms, waits 10 ms for a connection coming back (and
//!   on, 10 ms at a time and 100 ms at most, while a response of the host
//!   that answered within the last 50 ms on a connection that stays open
//!   was read to its end: hyper-util hands that connection back from a
//!   task of its own, which a busy scheduler may run late), and is not
//!   made when its request took one; with fewer, it dials at once (each
//!   of those requests holds a connection or waits for one, so none
//!   is coming back for it), and so does a dial of a host that answered
//!   nothing lately (what it missed in the pool was closed: a quiet client
//!   behind a server's idle timeout), or whose last wait, within a second,
//!   saw none come back (bodies dropped early and not drained close their
//!   connections unseen). A response that says `Connection: close` takes
//!   its connection out of the count. Bursty load (100 tasks pausing
//!   0–20 ms, `max_per_host(10)`, `tests/middleware.rs`, a debug build)
//!   beside four busy loops: 10 connections in 160 of 160 runs (11–14 in
//!   5 of 60 before the wait went on while bodies ended: hyper-util's
//!   return ran later than 10 ms); 8 tasks of short requests get 8
//!   connections (a hold whenever a connection was known kept them on 1 or
//!   2, about half the runs). A server that closes idle connections
//!   without saying so while the host is busy, or a scheduler that delays
//!   the pool's return past 100 ms, can still take it over.
//!
//! The smallest reqwest API that would close all three: a public
//! constructor `Conn::new(io: impl AsyncConn)` (or a connector layer
//! allowed to wrap the IO it returns, as hyper-util's connectors do), so
//! that reqwest users could put the guard's [`GuardedIo`](crate::GuardedIo)
//! inside; short of that, forwarding `hyper_util::client::legacy::connect::CaptureConnection`
//! from the request's extensions to hyper-util would give the poison
//! (rotation and a `GOAWAY`'s exit for HTTP/2) but still not the close.
//!
//! The response is reqwest's own: status, headers, version, final URL after
//! redirects, remote address and extensions are what plain reqwest reports
//! (poolguard adds its extensions, such as [`ConnInfo`](crate::ConnInfo)).
//! The per-host slot is taken for the host of the request as sent; a
//! redirect to another host is followed inside reqwest, under that slot.
//!
//! # Timeouts
//!
//! The per-host queue comes before reqwest. reqwest's `timeout` (the
//! client's `ClientBuilder::timeout` or a request's
//! `RequestBuilder::timeout`) counts from when reqwest starts the request,
//! that is after the request left the per-host queue, as reqwest defines it
//! ("from when the request starts connecting"). The wait in the queue is
//! bounded by the guard's `queue_timeout` and fails with
//! [`QueueTimeout`](crate::QueueTimeout). So a request takes at most
//! `queue_timeout + timeout`; for one deadline over both, wrap the call in
//! `tokio::time::timeout`.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), poolguard::BoxError> {
//! let guard = poolguard::PoolGuard::builder().max_per_host(10).build();
//! let client = guard.reqwest(
//!     reqwest::Client::builder()
//!         .pool_max_idle_per_host(10)
//!         .retry(guard.reqwest_retry())
//!         .connector_layer(guard.reqwest_connector_layer())
//!         .build()?,
//! );
//! let request = reqwest::Request::new(reqwest::Method::GET, "http://127.0.0.1:8080/".parse()?);
//! let response: reqwest::Response = client.execute(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Extensions;
use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(feature = "reqwest-middleware")]
mod middleware;
mod rotate;
mod scope;
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
pub use self::middleware::GuardMiddleware;

use self::scope::DialScope;
use crate::conn::turnover::{Entered, Turnover};
use crate::guard::{Guarded, PoolGuard};
use crate::key::HostKey;
use crate::metrics::Metrics;
use crate::BoxError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A reqwest client behind a [`PoolGuard`]'s layers; made by
/// [`PoolGuard::reqwest`].
///
/// Cheap to clone; clones share the client's pool and the guard's state,
/// like `reqwest::Client`. Errors are boxed: the guard's own
/// ([`QueueFull`](crate::QueueFull), [`QueueTimeout`](crate::QueueTimeout))
/// and reqwest's, recovered with `downcast_ref`.
#[derive(Clone)]
pub struct GuardedClient {
    inner: Guarded<Execute>,
}

impl fmt::Debug for GuardedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedClient").finish_non_exhaustive()
    }
}

impl GuardedClient {
    /// Sends a request through the guard's layers and the reqwest client.
    pub async fn execute(
        &self,
        request: ::reqwest::Request,
    ) -> Result<::reqwest::Response, BoxError> {
        call_reqwest(self.inner.clone(), request).await
    }
}

impl Service<::reqwest::Request> for GuardedClient {
    type Response = ::reqwest::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<::reqwest::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ::reqwest::Request) -> Self::Future {
        Box::pin(call_reqwest(self.inner.clone(), request))
    }
}

/// Sends `request` through the guarded stack over `S` (reqwest itself, or
/// the rest of a middleware chain), and gives reqwest's response back with
/// the guarded body.
async fn call_reqwest<S>(
    svc: Guarded<S>,
    request: ::reqwest::Request,
) -> Result<::reqwest::Response, BoxError>
where
    S: Service<
            http::Request<::reqwest::Body>,
            Response = http::Response<::reqwest::Body>,
            Error = BoxError,
        > + Clone
        + Send,
    S::Future: Send,
{
    let (request, carried) = into_http_request(request)?;
    // reqwest's request and the response's final URL travel beside the
    // guard's layers, in the task (no extension, no allocation for them).
    // The response is made reqwest's within the scope: what the task
    // carried back is read there, not moved out with the response.
    CARRIED
        .scope(carried, async move {
            let response = svc.oneshot(request).await;
            let (url, returning) = CARRIED
                .try_with(|carried| {
                    let mut carried = carried.borrow_mut();
                    (carried.url.take(), carried.returning.take())
                })
                .unwrap_or_default();
            into_reqwest_response(response?, url, returning)
        })
        .await
}

/// The guarded `response` as reqwest's, with its final `url`; its body
/// tells the client's book when it ends if its HTTP/1 connection stays
/// open (`returning`).
fn into_reqwest_response<B>(
    response: http::Response<B>,
    url: Option<::reqwest::Url>,
    returning: Option<rotate::Returning>,
) -> Result<::reqwest::Response, BoxError>
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    // The wrapped body keeps its drain and its slot; reqwest gets it back as
    // its own body.
    let mut builder = http::Response::builder()
        .status(parts.status)
        .version(parts.version);
    if let Some(headers) = builder.headers_mut() {
        *headers = parts.headers;
    }
    // The extensions first (moved, not copied), then the URL into them.
    if let Some(extensions) = builder.extensions_mut() {
        *extensions = parts.extensions;
    }
    if let Some(url) = url {
        builder = ::reqwest::ResponseBuilderExt::url(builder, url);
    }
    // A body whose HTTP/1 connection stays open tells the client's book
    // when it ends (its connection is then on its way back to the pool).
    let body = match returning {
        Some(returning) => ::reqwest::Body::wrap(Ends {
            body,
            returning: Some(returning),
        }),
        None => ::reqwest::Body::wrap(body),
    };
    let response = builder.body(body)?;
    Ok(::reqwest::Response::from(response))
}

pin_project_lite::pin_project! {
    /// A response body that tells its client's book when it was read to
    /// its end (see [`rotate::Returning`]).
    struct Ends<B> {
        #[pin]
        body: B,
        // Taken when told.
        returning: Option<rotate::Returning>,
    }
}

impl<B: http_body::Body> http_body::Body for Ends<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut body = this.body;
        let polled = body.as_mut().poll_frame(cx);
        let step = crate::body_end::Polled::of(&polled, || body.is_end_stream());
        if step.is_end() {
            if let Some(returning) = this.returning.take() {
                returning.ended();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What travels beside a request through the guard's layers, in its task
/// (the layers run in the caller's task: a task local, not an extension,
/// which would cost three allocations a request each way).
struct Carried {
    /// reqwest's request, kept (without its headers and body) for the way
    /// back: rebuilt from it, the request needs no URL parse, if its URI is
    /// still the URL as written. The first attempt takes it.
    shell: Option<::reqwest::Request>,
    /// The request's own timeout (reqwest's one per-request setting, kept
    /// in its private extensions), for the attempts after the first,
    /// converted from the retry's copy.
    timeout: Option<std::time::Duration>,
    /// The URL of the response (after redirects), for reqwest's response:
    /// `http::Response` has no place for it.
    url: Option<::reqwest::Url>,
    /// The response's HTTP/1 connection stays open: what its body tells
    /// the client's book when it ends.
    returning: Option<rotate::Returning>,
}

tokio::task_local! {
    // Boxed: the task local is swapped in and out at every poll.
    static CARRIED: Box<std::cell::RefCell<Carried>>;
}

/// `request` as an `http::Request` for the guard's layers, and what is
/// carried beside it.
fn into_http_request(
    mut request: ::reqwest::Request,
) -> Result<
    (
        http::Request<::reqwest::Body>,
        Box<std::cell::RefCell<Carried>>,
    ),
    BoxError,
> {
    let body = request
        .body_mut()
        .take()
        .unwrap_or_else(|| ::reqwest::Body::from(bytes::Bytes::new()));
    let uri = http::Uri::try_from(request.url().as_str())?;
    let mut http = http::Request::new(body);
    *http.method_mut() = request.method().clone();
    *http.uri_mut() = uri;
    *http.version_mut() = request.version();
    *http.headers_mut() = std::mem::take(request.headers_mut());
    let carried = Carried {
        timeout: request.timeout().copied(),
        shell: Some(request),
        url: None,
        returning: None,
    };
    Ok((http, Box::new(std::cell::RefCell::new(carried))))
}

/// The guard's `request` as reqwest's again: the first attempt from the
/// carried shell with the request's head and body; a later one (the
/// retry's copy), a request whose URI a layer changed, or one sent outside
/// [`call_reqwest`]'s task, converted (its URI parsed) with the carried
/// timeout.
fn into_reqwest_request(
    request: http::Request<::reqwest::Body>,
) -> Result<::reqwest::Request, BoxError> {
    let (parts, body) = request.into_parts();
    let (shell, timeout) = CARRIED
        .try_with(|carried| {
            let mut carried = carried.borrow_mut();
            (carried.shell.take(), carried.timeout)
        })
        .unwrap_or_default();
    match shell {
        // Compared exactly (`Uri`'s own `==` folds case, at some cost): a
        // URI a layer changed in any way is parsed again.
        Some(mut shell) if written_as(&parts.uri, shell.url().as_str()) => {
            *shell.method_mut() = parts.method;
            *shell.headers_mut() = parts.headers;
            *shell.version_mut() = parts.version;
            *shell.body_mut() = Some(body);
            Ok(shell)
        }
        _ => {
            let mut request = ::reqwest::Request::try_from(http::Request::from_parts(parts, body))?;
            if timeout.is_some() {
                *request.timeout_mut() = timeout;
            }
            Ok(request)
        }
    }
}

/// Whether `uri` is `url` written the same, byte for byte: the URI a
/// request's URL was converted to, as no layer changed it. (The URI is not
/// kept beside the URL to compare: its clone would turn its bytes into
/// shared ones, an allocation a request.)
fn written_as(uri: &http::Uri, url: &str) -> bool {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    let path = uri
        .path_and_query()
        .map_or("", http::uri::PathAndQuery::as_str);
    url.strip_prefix(scheme)
        .and_then(|rest| rest.strip_prefix("://"))
        .and_then(|rest| rest.strip_prefix(authority.as_str()))
        .is_some_and(|rest| rest == path)
}

/// A request on its way from the guard's layers to reqwest (or the rest of
/// a middleware chain): reqwest's request, its rotation ticket, its dial
/// scope, and, for an idempotent request to a host known to speak HTTP/2
/// (where hyper 1.12 strands requests), a copy to send again, when its
/// body clones.
struct Outgoing {
    request: ::reqwest::Request,
    ticket: Option<rotate::Ticket>,
    scope: Option<Arc<DialScope>>,
    /// Boxed: made only for an idempotent request to an HTTP/2 host, and
    /// a `reqwest::Request` (280 bytes) moved with every request's future
    /// otherwise, even as `None`.
    copy: Option<Box<::reqwest::Request>>,
}

impl Outgoing {
    fn new(
        request: http::Request<::reqwest::Body>,
        book: &Arc<rotate::Book>,
        turns: Arc<scope::TurnLog>,
    ) -> Result<Outgoing, BoxError> {
        // The pool key: the host's key, which the limit just found for the
        // same URI (a per-thread cache hit), as `scheme://host:port`.
        let host = HostKey::from_request(&request);
        let key = host.as_ref().map(HostKey::shared_str);
        let mut request = into_reqwest_request(request)?;
        let booked = host.clone().map(|host| (book.clone(), host));
        let ticket = book.ticket(host, &mut request);
        let http2 = key.as_deref().is_some_and(|key| turns.speaks_http2(key));
        let scope = DialScope::of(key, request.url(), Some(turns), booked);
        let copy = (http2
            && crate::retry::service::idempotent(request.method(), request.headers()))
        .then(|| request.try_clone())
        .flatten()
        .map(Box::new);
        Ok(Outgoing {
            request,
            ticket,
            scope,
            copy,
        })
    }
}

/// reqwest's `response` as an `http::Response` for the guard's layers,
/// with its final URL, and, over HTTP/2, leave to reset its stream when
/// its body is dropped early: the guard's retry resends the idempotent
/// requests that h2's limit on resets fails (reqwest's connections cannot
/// be taken out of the pool before it, as hyper-util's are).
fn into_http(
    response: ::reqwest::Response,
    returning: Option<rotate::Returning>,
) -> http::Response<::reqwest::Body> {
    let url = response.url().clone();
    let _ = CARRIED.try_with(|carried| {
        let mut carried = carried.borrow_mut();
        carried.url = Some(url);
        carried.returning = returning;
    });
    let mut response = http::Response::from(response);
    if response.version() >= http::Version::HTTP_2 {
        response.extensions_mut().insert(crate::conn::ResetsResent);
    }
    response
}

/// Every host, for reqwest's host-scoped retry policies.
struct AnyHost;

impl PartialEq<&str> for AnyHost {
    fn eq(&self, _host: &&str) -> bool {
        true
    }
}

/// The innermost service of a [`GuardedClient`]: hands the request to
/// reqwest and the response back as an `http::Response`.
#[derive(Clone, Debug)]
pub struct Execute {
    client: ::reqwest::Client,
    /// When each host's HTTP/2 connection last turned over (shared by
    /// clones, as the client's pool is).
    turns: Arc<scope::TurnLog>,
    /// The client's HTTP/1 connections against the guard's
    /// `max_connection_age` and `max_requests_per_connection`.
    book: Arc<rotate::Book>,
}

impl Service<http::Request<::reqwest::Body>> for Execute {
    type Response = http::Response<::reqwest::Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<::reqwest::Body>) -> Self::Future {
        let client = self.client.clone();
        let turns = self.turns.clone();
        let book = self.book.clone();
        Box::pin(async move {
            let Outgoing {
                request,
                ticket,
                scope,
                copy,
            } = Outgoing::new(request, &book, turns)?;
            let again = copy.map(|copy| {
                let client = client.clone();
                move || client.execute(*copy)
            });
            let response = DialScope::run_or_resend(scope, client.execute(request), again).await;
            let returning = book.settle(ticket, response.as_ref().ok());
            Ok(into_http(response?, returning))
        })
    }
}

impl PoolGuard {
    /// Puts `client` behind this guard's layers (metrics, drain, per-host
    /// request limit). Build the client with
    /// [`reqwest_connector_layer`](PoolGuard::reqwest_connector_layer) so
    /// that its dials are counted. See the [`reqwest`](crate::reqwest)
    /// module for what differs from hyper-util.
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn reqwest(&self, client: ::reqwest::Client) -> GuardedClient {
        GuardedClient {
            inner: self.layer().over_reqwest().layer(Execute {
                client,
                turns: Arc::default(),
                book: rotate::Book::new(self.lifecycle),
            }),
        }
    }

    /// A retry policy for `reqwest::ClientBuilder::retry`, in place of
    /// reqwest 0.13's default: the same HTTP/2 protocol NACKs are resent
    /// (at most 5 times a request, as the guard resends requests never
    /// processed), but a refused stream (`REFUSED_STREAM`, a server
    /// shedding load) only within the guard's retry budget share and floor
    /// ([`PoolGuardBuilder::retry_budget`](crate::PoolGuardBuilder::retry_budget),
    /// one budget for the client; reqwest's default has none, so a server
    /// refusing every stream gets 3 attempts a request). A request failed
    /// by a graceful `GOAWAY` is resent outside the budget: each such
    /// failure costs the server a connection, and a client that turns
    /// connections over with it must not lose requests.
    ///
    /// Behind [`GuardedClient`] and [`GuardMiddleware`] the guard's retry
    /// leaves protocol NACKs to reqwest's (resending them at both levels
    /// multiplies attempts), and resends the rest (stale connections,
    /// requests hyper never sent) within its per-host budget.
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn reqwest_retry(&self) -> ::reqwest::retry::Builder {
        use tower::retry::budget::Budget as _;

        use crate::retry::stale::{protocol_nack, Nack};

        let budget = Arc::new(self.layer().retry_budget().tps_budget());
        ::reqwest::retry::for_host(AnyHost)
            .no_budget()
            .max_retries_per_request(crate::retry::NOT_PROCESSED_RETRIES)
            .classify_fn(
                move |req_rep| match req_rep.error().and_then(protocol_nack) {
                    Some(Nack::GoAway) => req_rep.retryable(),
                    Some(Nack::Refused) if budget.withdraw() => req_rep.retryable(),
                    Some(Nack::Refused) => req_rep.success(),
                    None => {
                        budget.deposit();
                        req_rep.success()
                    }
                },
            )
    }

    /// A layer for `reqwest::ClientBuilder::connector_layer` that counts
    /// every connection reqwest opens (in `connections_opened`, and per
    /// remote address in the per-host rows), and dials one connection at a
    /// time to a host that speaks (or, over TLS, may speak) HTTP/2 when
    /// its requests come through [`GuardedClient`] or
    /// [`GuardMiddleware`]: when the host's connection goes away, the
    /// requests waiting then share the next one instead of each dialing
    /// its own. One layer per client (it follows that client's pool).
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn reqwest_connector_layer(&self) -> DialCountLayer {
        DialCountLayer {
            metrics: self.metrics().clone(),
            turnover: Arc::default(),
        }
    }
}

/// Counts the dials of a reqwest client; made by
/// [`PoolGuard::reqwest_connector_layer`].
#[derive(Clone, Debug)]
pub struct DialCountLayer {
    metrics: Metrics,
    /// The dials of HTTP/2 hosts, one at a time; shared by the services
    /// the layer makes (one client's).
    turnover: Arc<Turnover>,
}

impl<S> Layer<S> for DialCountLayer {
    type Service = DialCount<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DialCount {
            inner: Arc::new(inner),
            metrics: self.metrics.clone(),
            turnover: self.turnover.clone(),
        }
    }
}

/// Counts the dials of a reqwest connector, one at a time for an HTTP/2
/// host; made by [`DialCountLayer`].
///
/// Always ready: a dial readies and calls its own clone of the connector
/// below. reqwest clones its whole connector stack several times a request
/// (each layer boxed, each box a fresh allocation per clone); a clone of
/// this service shares the connector below instead of cloning it, so the
/// stack under it is cloned only for a dial.
#[derive(Clone, Debug)]
pub struct DialCount<S> {
    inner: Arc<S>,
    metrics: Metrics,
    turnover: Arc<Turnover>,
}

impl<S, R> Service<R> for DialCount<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Response: Connection,
    S::Future: Send + 'static,
    S::Error: From<crate::Coalesced> + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    /// Always ready: each dial readies a clone of the connector below
    /// (see [`DialCount`]).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let mut inner = S::clone(&self.inner);
        let scope = DialScope::current();
        let entered = scope
            .as_ref()
            .map(|scope| self.turnover.enter(&scope.key, scope.tls));
        let metrics = self.metrics.clone();
        let start = match entered {
            None => Start::Dial(None, None),
            Some(Entered::Now(None)) => match scope.as_ref().map(|s| s.hold_or_dial()) {
                // An HTTP/1 connection of the host may be coming back to
                // the pool: wait a moment for it (see `hold_for_a_return`).
                Some(None) => {
                    Start::Hold(scope.as_ref().map(|s| s.key.clone()).unwrap_or_default())
                }
                dialing => Start::Dial(None, dialing.flatten()),
            },
            Some(Entered::Now(lead)) => Start::Dial(lead, scope.as_ref().map(|s| s.dialing(false))),
            Some(Entered::Held(held)) => Start::Held(held),
        };
        Box::pin(async move {
            let (lead, scope, dialing) = match start {
                Start::Dial(lead, dialing) => (lead, scope, dialing),
                Start::Hold(key) => {
                    hold_while_returning(&key).await?;
                    let scope = DialScope::current();
                    let dialing = scope.as_ref().map(|s| s.dialing(true));
                    (None, scope, dialing)
                }
                Start::Held(held) => {
                    let lead = held.wait().await?;
                    let dialing = scope.as_ref().map(|s| s.dialing(false));
                    (lead, scope, dialing)
                }
            };
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let dial = inner.call(request);
            count_dial(metrics, lead, scope, dialing, dial).await
        })
    }
}

/// How long a dial waits at most for a connection coming back to the
/// pool, while its host's bodies end with their connections kept (see
/// [`Book::still_returning`](rotate::Book::still_returning)).
const RETURN_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Holds the dial of the current request (pool key `key`) for a connection
/// of its host coming back to the pool:
/// [`RETURN_HOLD`](crate::client::hyper_util::RETURN_HOLD) at a time, on
/// while the host's bodies end with their connections kept (hyper-util's
/// return of one may run late), up to [`RETURN_WAIT`]. Ends with
/// [`Coalesced`](crate::Coalesced) when the request took a connection from
/// the pool meanwhile.
async fn hold_while_returning(key: &Arc<str>) -> Result<(), crate::Coalesced> {
    let step = crate::client::hyper_util::RETURN_HOLD;
    let mut waited = std::time::Duration::ZERO;
    loop {
        crate::client::hyper_util::hold_for_a_return(key, || DialScope::current().is_some(), step)
            .await?;
        waited = waited.saturating_add(step);
        if waited >= RETURN_WAIT || !DialScope::current().is_some_and(|s| s.still_returning()) {
            return Ok(());
        }
    }
}

/// How a dial starts.
enum Start {
    /// At once, as its host's lead of a turnover or not, counted in the
    /// host's book if it has one.
    Dial(Option<crate::conn::turnover::Lead>, Option<scope::Dialing>),
    /// After a moment's wait for the host's connection coming back.
    Hold(Arc<str>),
    /// After the lead dial of its host's turnover.
    Held(crate::conn::turnover::Held),
}

/// Makes the dial `dial` of the request of `scope`, and counts it (with
/// its host's lead, if it leads a turnover).
async fn count_dial<F, T, E>(
    metrics: Metrics,
    lead: Option<crate::conn::turnover::Lead>,
    scope: Option<Arc<DialScope>>,
    mut dialing: Option<scope::Dialing>,
    dial: F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    T: Connection,
{
    let started = tokio::time::Instant::now();
    let conn = dial.await?;
    if let Some(scope) = &scope {
        scope.dialed();
    }
    if let Some(lead) = lead {
        if conn.connected().is_negotiated_h2() {
            if let Some(scope) = &scope {
                scope.hold(lead);
            }
        } else {
            lead.http1();
        }
    }
    let took = started.elapsed();
    let inner = &metrics.inner;
    inner.connections_opened.fetch_add(1, Relaxed);
    #[cfg(feature = "metrics")]
    inner.emit.dialed();
    let mut extensions = Extensions::new();
    conn.connected().get_extras(&mut extensions);
    let info = extensions.get::<HttpInfo>();
    if let (Some(dialing), Some(info)) = (dialing.as_mut(), info) {
        if !conn.connected().is_negotiated_h2() {
            dialing.made((info.local_addr(), info.remote_addr()));
        }
    }
    // The connection is known to the book before hyper-util pools it.
    drop(dialing);
    let key = info
        .and_then(|info| format!("tcp://{}", info.remote_addr()).parse().ok())
        .and_then(|uri: http::Uri| HostKey::from_uri(&uri));
    if let Some(key) = key {
        inner.hosts.row(&key).0.opened.fetch_add(1, Relaxed);
    }
    // reqwest's connector is called with a type that does not show the
    // host: the dial counts in the mean over every dial, which prices the
    // drains of hosts never dialed by name.
    metrics.dial_costs().record_any(took);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{into_http_request, into_reqwest_request, written_as};

    fn copy(request: &http::Request<::reqwest::Body>) -> http::Request<::reqwest::Body> {
        let mut copy = http::Request::new(::reqwest::Body::from(""));
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        copy
    }

    /// The wiring of a body's end to the client's book, through
    /// `GuardedClient` and through `GuardMiddleware`: a body read to its
    /// end on a kept HTTP/1 connection tells it (a dial waiting for that
    /// connection then waits on); one dropped unread tells nothing.
    #[tokio::test]
    async fn a_body_read_to_its_end_tells_the_client_s_book() {
        let server = poolguard_testkit::serve().await;
        let url = server.url("/bytes/10");
        let key = crate::HostKey::from_uri(&url.parse().unwrap()).unwrap();
        let guard = crate::PoolGuard::builder().build();
        let client = |guard: &crate::PoolGuard| {
            ::reqwest::Client::builder()
                .connector_layer(guard.reqwest_connector_layer())
                .build()
                .unwrap()
        };
        let direct = guard.reqwest(client(&guard));
        let book = &direct.inner.get_ref().book;
        let get = || ::reqwest::Request::new(::reqwest::Method::GET, url.parse().unwrap());
        drop(direct.execute(get()).await.unwrap());
        assert_eq!(book.ended_at(&key), None, "dropped unread: nothing told");
        direct.execute(get()).await.unwrap().bytes().await.unwrap();
        assert!(book.ended_at(&key).is_some(), "read to its end: told");

        #[cfg(feature = "reqwest-middleware")]
        {
            let middleware = guard.middleware();
            let book = middleware.book.clone();
            let chained = reqwest_middleware::ClientBuilder::new(client(&guard))
                .with(middleware)
                .build();
            drop(chained.get(url.as_str()).send().await.unwrap());
            assert_eq!(book.ended_at(&key), None, "dropped unread: nothing told");
            let response = chained.get(url.as_str()).send().await.unwrap();
            response.bytes().await.unwrap();
            assert!(book.ended_at(&key).is_some(), "read to its end: told");
        }
    }

    #[tokio::test]
    async fn the_connector_below_is_cloned_for_a_dial_not_with_the_stack() {
        use tower::ServiceExt as _;
        use tower_layer::Layer as _;
        // A connector that fails every dial, and counts its clones.
        let (connector, clones) =
            crate::testing::CountsClones::new(tower::service_fn(|_: http::Uri| {
                std::future::ready(Err::<tokio::net::TcpStream, crate::BoxError>(
                    "no dial here".into(),
                ))
            }));
        let guard = crate::PoolGuard::builder().build();
        let counted = guard.reqwest_connector_layer().layer(connector);
        // reqwest clones its connector stack several times a request.
        let copies: Vec<_> = (0..5).map(|_| counted.clone()).collect();
        assert_eq!(clones.load(std::sync::atomic::Ordering::Relaxed), 0);
        // A dial readies and calls a clone of its own.
        let dial = copies[0]
            .clone()
            .oneshot("http://h/".parse().unwrap())
            .await;
        assert!(dial.is_err());
        assert_eq!(clones.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_request_comes_back_from_the_layers_with_reqwest_s_own_settings() {
        let url: ::reqwest::Url = "http://Example.com:8080/a/b?c=d".parse().unwrap();
        let mut request = ::reqwest::Request::new(::reqwest::Method::PUT, url.clone());
        *request.timeout_mut() = Some(Duration::from_secs(7));
        request.headers_mut().insert("x-a", "1".parse().unwrap());
        *request.body_mut() = Some(::reqwest::Body::from("body"));
        let (http, carried) = into_http_request(request).unwrap();
        assert_eq!(http.uri(), "http://example.com:8080/a/b?c=d");
        assert_eq!(http.headers()["x-a"], "1");
        // A copy, as the retry keeps one: each attempt gets the timeout,
        // which only reqwest can read from its extensions.
        let again = copy(&http);
        let mut changed = copy(&http);
        *changed.uri_mut() = "http://other.example/".parse().unwrap();
        super::CARRIED.sync_scope(carried, || {
            for http in [http, again] {
                let back = into_reqwest_request(http).unwrap();
                assert_eq!(back.url(), &url);
                assert_eq!(back.method(), ::reqwest::Method::PUT);
                assert_eq!(back.headers()["x-a"], "1");
                assert_eq!(back.timeout(), Some(&Duration::from_secs(7)));
                assert!(back.body().is_some());
            }
            // A URI a layer changed wins over the shell's.
            let back = into_reqwest_request(changed).unwrap();
            assert_eq!(back.url().as_str(), "http://other.example/");
            assert_eq!(back.timeout(), Some(&Duration::from_secs(7)));
        });
    }

    #[test]
    fn a_uri_is_its_url_only_written_the_same() {
        let url = "http://example.com:8080/a/b?c=d";
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(written_as(&uri(url), url));
        for other in [
            "http://EXAMPLE.com:8080/a/b?c=d",
            "https://example.com:8080/a/b?c=d",
            "http://example.com:8081/a/b?c=d",
            "http://example.com/a/b?c=d",
            "http://example.com:8080/a/b?c=e",
            "http://example.com:8080/a/b",
            "http://example.com:8080/a/b?c=d&e",
            "/a/b?c=d",
        ] {
            assert!(!written_as(&uri(other), url), "{other}");
        }
        // A URL with a fragment has no URI written the same: parsed again.
        assert!(!written_as(&uri(url), "http://example.com:8080/a/b?c=d#f"));
    }
}
