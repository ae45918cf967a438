//! Safe retry of requests that fail on a stale pooled connection, or that an
//! HTTP/2 server did not process.
//!
//! Every client that reuses connections meets this race: the server closes
//! an idle keep-alive connection just as the client sends a new request on
//! it. The request fails (hyper-util: "client error (SendRequest)") though
//! the server never answered it; hyper-util's own
//! `retry_canceled_requests` covers only requests that were not written
//! yet. [`RetryStaleLayer`] sends such a request once more (by default),
//! on another connection, when all of these hold:
//!
//! - the connection had served a request before (it came from the pool):
//!   a failure on a new connection is the server's answer, not a race;
//! - no byte of a response to the request arrived;
//! - the request is idempotent: `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
//!   `DELETE`, or any method with an `Idempotency-Key` (or
//!   `X-Idempotency-Key`) header, as Go's `net/http` does;
//! - its body can be replayed ([`ReplayBody`]): a copy is taken before the
//!   first attempt (with the method, URI, version, headers and extensions);
//! - over HTTP/1: an HTTP/2 connection's failure is about no one request.
//!
//! Requests that were not processed are sent again too, up to 5 times
//! besides `max_retries` (they tell [`RetryCause::NotProcessed`] and count
//! in [`Snapshot::retries_not_processed`](crate::Snapshot)):
//!
//! - whatever the method, when the body can be replayed: a stream an
//!   HTTP/2 server refused (`REFUSED_STREAM`, RFC 9113 §8.7), and a request
//!   hyper never sent (its "canceled", which hyper reports only with the
//!   request handed back unsent). A copy of every request with a replayable
//!   body is therefore taken while retries are on;
//! - a request that failed with the server's `GOAWAY` (a graceful
//!   shutdown, as nginx's `keepalive_requests` makes every 1000 requests;
//!   bare hyper-util loses them: hyperium/hyper#2500). h2 keeps the
//!   server's first `GOAWAY` as the connection's error and fails with it
//!   the streams above its last stream id (never processed, RFC 9113 §6.8)
//!   and every request handed to it later (never sent). But a first
//!   `GOAWAY` with the largest id (a graceful shutdown's "all, for now"
//!   that hyper's own server sends) refuses nothing yet, and h2 also fails
//!   with the same error the streams still open when the connection then
//!   closes, processed or not (a loopback test saw servers process such
//!   requests). So, on a [`GuardedConnector`](crate::GuardedConnector),
//!   whose IO reads the `GOAWAY` and the streams' ends: any request when
//!   the first `GOAWAY` named a last stream and no stream the server took
//!   was cut by the close; otherwise, and with reqwest, only an idempotent
//!   one;
//! - an idempotent request whose HTTP/2 connection h2 ended itself at its
//!   limit on the resets it writes (`ENHANCE_YOUR_CALM`,
//!   `too_many_internal_resets`, hyperium/h2#856): the request may have
//!   been processed, so only an idempotent one. Over reqwest, whose
//!   connections cannot leave the pool before that limit, this is what
//!   lets the guard reset the streams of HTTP/2 bodies dropped early
//!   instead of draining them;
//! - a request **stranded** by hyper 1.12 (see below), failed with
//!   [`Stranded`] when it may not be sent again;
//! - a dial held for another's HTTP/2 connection that the request then
//!   missed ([`Coalesced`](crate::Coalesced)).
//!
//! # The retry budget
//!
//! Every retry, of either kind, draws from its host's budget (tower's
//! `TpsBudget`: 20 % of the host's requests over 10 s, plus 10 a second,
//! by default; [`RetryStaleLayer::budget`]). A server refusing every stream
//! thus gets at most 1.225 attempts a request (4000 requests: 4900 attempts
//! at the server, `tests/budget.rs`), not 4. A retry the budget refuses is
//! not made: the error goes back to the caller, counted in
//! [`Snapshot::retries_budget_exhausted`](crate::Snapshot).
//!
//! With reqwest, reqwest 0.13 resends HTTP/2 protocol NACKs itself (a
//! refused stream, a graceful `GOAWAY`; twice, with no budget by default).
//! Behind [`PoolGuard::reqwest`](crate::PoolGuard::reqwest) and the
//! middleware this layer leaves NACKs to it (so the two do not multiply),
//! and [`PoolGuard::reqwest_retry`](crate::PoolGuard::reqwest_retry) gives
//! reqwest a policy that keeps refused streams within the guard's budget
//! share.
//!
//! # A request that never ends
//!
//! hyper 1.12's HTTP/2 client task, on a `GOAWAY`, leaves its loop when h2
//! refuses room for a new stream, and drops its request receiver without
//! closing and draining it (`proto/h2/client.rs`, `client/dispatch.rs`). A
//! request whose sender was inside tokio's mpsc `send` at that moment
//! (past the closed check, its slot not written) stays in the channel with
//! every request after it; hyper-util holds the pooled sender across the
//! wait, so the channel lives and the request's response never comes, nor
//! an error. `poolguard_testkit::stranded_runs` reproduces it (a server
//! ending every connection after 100 streams, 50 tasks, 3000 GETs a run:
//! about 1 run in 100 strands requests, bare). hyper 1.13, which
//! poolguard requires, closes and drains that channel before its client
//! tasks end (HTTP/1's hung so too: one request in about 25,000 on
//! connections retired every 20 ms); the watch below stays as a net.
//! Through this layer, a request to an HTTP/2 host learns its connection
//! when hyper-util picks it (`capture_connection`); one still waiting for
//! its response head a whole second ([`STRANDED_CHECK`](future::STRANDED_CHECK), checked once
//! a second) after hyper dropped that connection's IO, when every stream
//! on it had ended, was never written: it is sent again as a request never
//! processed, or fails with [`Stranded`]. The first attempt only, and only
//! with a [`GuardedConnector`](crate::GuardedConnector). reqwest's
//! connections are out of reach: there
//! [`GuardedClient`](crate::reqwest::GuardedClient) and the middleware
//! resend an idempotent request to a host known to answer over HTTP/2 that has
//! waited 2 s for its response, 2 s after its
//! host's connection turned over (see the [`reqwest`](crate::reqwest)
//! module).
//!
//! A `GOAWAY` also takes its connection out of hyper-util's pool at once
//! (`Connected::poison`, reached through the first request's capture), so
//! that new requests do not race hyper's shutdown of it.
//!
//! The retry waits 1 ms (one tick of tokio's timer) first: a server that
//! closes idle connections has likely closed others at the same moment, and
//! the pause lets the client see those closes before it picks a connection
//! for the retry. The retry goes through the inner service like any request: under a
//! [`PerHostLimitLayer`](crate::PerHostLimitLayer) it takes a slot (and may
//! queue), and the pool never hands out the failed connection again. A
//! response that came from a retry carries a [`Retried`] extension (and
//! [`ConnInfo::retries`](crate::ConnInfo::retries) with the metrics layer);
//! [`Snapshot`](crate::Snapshot) counts retries, and those that succeeded
//! and failed.
//!
//! How the failure is told apart:
//!
//! - **hyper-util with a [`GuardedConnector`](crate::GuardedConnector)**:
//!   exactly. hyper-util gives the failed connection's `Connected` with its
//!   error, and the connector's IO followed the HTTP/1 exchanges on it: the
//!   connection had completed one before (as hyper's own next request
//!   shows), hyper began to write this request, and no byte at all was read
//!   after it (an interim `100 Continue` is an answer). A request the
//!   connector's retirement of an idle connection failed before it was
//!   written is one that was never sent. Whatever the response bytes were,
//!   once one arrived the request is never sent again.
//! - **reqwest, or a client without a `GuardedConnector`**: the connection
//!   is known to be reused when its socket address pair was seen on an
//!   earlier response that passed through this layer (no other layer is
//!   needed), and "no response byte" is read from hyper's error: an end of
//!   file before the response completed, or a reset or broken pipe. hyper reports an end of file in
//!   the middle of a response head the same way, so there, and only there,
//!   a request could be sent again after a partial response head.
//! - Anything else (another client, a connect error, a timeout): never.
//!
//! Retrying repairs the race; to avoid it, a tracking
//! [`GuardedConnector`](crate::GuardedConnector) also honours the server's
//! `Keep-Alive: timeout=N, max=M` header
//! ([`honor_keep_alive`](crate::GuardedConnector::honor_keep_alive)).
//!
//! # Differences from `tower::retry`
//!
//! `tower::retry::Retry` retries on a policy of your own and needs to clone
//! every request. `RetryStale` knows one failure, the stale connection,
//! tells it apart from every other failure (which it never retries), and
//! never sends a request twice when the server may have answered it.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{Empty, Full};
//! use poolguard::RetryStaleLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), poolguard::BoxError> {
//! let client = service_fn(|_req: Request<Empty<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(RetryStaleLayer::new().max_retries(1))
//!     .service(client);
//! let response = svc.oneshot(Request::new(Empty::new())).await?;
//! assert!(response.extensions().get::<poolguard::retry::Retried>().is_none());
//! # Ok(())
//! # }
//! ```

pub(crate) mod attempts;
pub(crate) mod budget;
pub mod future;
mod layer;
mod observe;
mod replay;
pub(crate) mod service;
pub(crate) mod stale;
#[cfg(test)]
mod tests;

#[cfg(feature = "reqwest")]
pub(crate) use attempts::NOT_PROCESSED_RETRIES;
pub use future::ResponseFuture;
pub use layer::RetryStaleLayer;
pub(crate) use observe::RetryHook;
pub use observe::{OnRetry, RetryCause, RetryEvent};
pub use replay::ReplayBody;

/// A request that waited for its response on an HTTP/2 connection whose IO
/// hyper had dropped (so every stream on it had ended) for a whole second:
/// hyper 1.12 left it in its request channel, never written (see "A
/// request that never ends" above). Sent again when it may be (its body
/// replays, within the retry budget); otherwise the request fails with
/// this error. Recover it with `downcast_ref::<Stranded>()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stranded;

impl std::fmt::Display for Stranded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "request stranded: its HTTP/2 connection closed without answering or failing it",
        )
    }
}

impl std::error::Error for Stranded {}
pub use service::RetryStale;

/// Response extension: the response came from a retry of a request that
/// failed on a stale pooled connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retried {
    /// Attempts that failed before this one.
    pub retries: u32,
}
