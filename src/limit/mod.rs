//! Limit the requests in flight to each host, and queue the surplus.
//!
//! A pool that keeps a few idle connections per host, hit by more concurrent
//! requests than that, dials a fresh connection for each surplus request and
//! closes it after use: a dial per request and a wall of `TIME_WAIT` sockets.
//! [`PerHostLimitLayer`] lets at most `max_per_host` requests to each host be
//! in flight; the others wait their turn.
//!
//! # Behaviour
//!
//! - The host is the request's [`HostKey`](crate::HostKey): scheme, host and
//!   port of the URI, or of the `Host` header for a request in origin form.
//!   A request with neither passes through unlimited (the client will reject
//!   it).
//! - A request holds its slot from `call` until its response body reaches
//!   its end, fails, or is dropped: the slot moves from the response future
//!   into the [`ResponseBody`], never released when the headers arrive. With
//!   a [`DrainLayer`](crate::DrainLayer) outside this layer, a body dropped
//!   early keeps its slot until the background drain ends.
//! - Beyond `max_per_host`, requests wait in FIFO order. With `max_queued`
//!   already waiting, a request fails at once with [`QueueFull`]; one that
//!   waited `queue_timeout` fails with [`QueueTimeout`]. Both come as a
//!   [`BoxError`](crate::BoxError) to recover with `downcast_ref`; errors of
//!   the inner service pass through unchanged.
//! - Dropping a waiting response future leaves the queue at once.
//! - Per-host state is created on a host's first request and removed as
//!   soon as the host has nothing in flight and nothing queued, so a crawler
//!   touching many hosts holds state only for the hosts it is talking to.
//! - `poll_ready` reflects the inner service only: the host is unknown until
//!   `call`. The inner service must be `Clone`: a request that has to wait
//!   takes the service that was made ready into its response future.
//!
//! # Policies: how many per host
//!
//! The mechanism is one: the FIFO queue, the slot carried in the body, the
//! cap across hosts and a connector's connection cap. How many requests a
//! host may have in flight is a policy's, below the host's ceiling
//! (`max_per_host`, its override, or `max_streams_per_host` once it speaks
//! HTTP/2). The static policy is the ceiling itself; [`Adaptive`] moves
//! each host's limit from the latency and overload answers it samples
//! ([`PerHostLimitLayer::adaptive`]).
//!
//! A new policy (the fleet budget next) implements the crate's
//! `limit::policy::LimitPolicy`: `limit(host, ceiling)` when the registry
//! starts to track a host, and `sample(host, sample, ceiling)` for each
//! request's response head (its latency from its slot, the host's in
//! flight and limit then, whether it dialed, `429`/`503` and
//! `Retry-After`), returning a new limit when it changes. The registry
//! applies that at once: a higher limit hands slots to waiters, a lower one
//! takes slots back only as requests end. Without a policy (the static
//! case) requests read no clock and carry no sample.
//!
//! # Differences from `tower::limit::ConcurrencyLimit`
//!
//! tower's limit is global, applies backpressure in `poll_ready`, and frees
//! its permit when the response headers arrive, while the body may still be
//! using the connection. This limit is per host, queues with a bound and a
//! timeout, and frees its slot only when the body is done.
//!
//! # A request limit is not a connection cap
//!
//! hyper-util's legacy client races a pool checkout against a new connect;
//! when the checkout wins, the started connect still completes and is
//! pooled. So connections can outnumber the request limit. For a hard cap on
//! connections per host, also build the client with `GuardedConnector`
//! (feature `hyper-util`).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use poolguard::{PerHostLimitLayer, QueueFull, QueueTimeout};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), poolguard::BoxError> {
//! let layer = PerHostLimitLayer::new(10)
//!     .max_queued(1024)
//!     .queue_timeout(Duration::from_secs(30));
//! let mut client = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
//!     });
//!
//! let request = http::Request::get("http://example.com/").body(())?;
//! match client.ready().await?.call(request).await {
//!     Ok(response) => {
//!         // The slot is held until the body is done with.
//!         assert_eq!(layer.in_flight(), 1);
//!         drop(response);
//!         assert_eq!(layer.in_flight(), 0);
//!         assert_eq!(layer.hosts_tracked(), 0);
//!     }
//!     Err(e) if e.is::<QueueFull>() || e.is::<QueueTimeout>() => { /* shed load */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```

mod adaptive;
mod body;
mod gate;
pub(crate) mod layer;
pub(crate) mod policy;
pub(crate) mod registry;
mod service;
pub(crate) mod total;

pub mod error;
pub mod future;
mod observe;

pub use self::adaptive::Adaptive;
pub use self::body::ResponseBody;
pub use self::error::{QueueFull, QueueTimeout};
pub use self::layer::PerHostLimitLayer;
pub use self::observe::{OnQueue, QueueEvent};
pub(crate) use self::service::Admit;
pub use self::service::PerHostLimit;

/// Response extension: how long the request waited in its host's queue.
///
/// Present only on responses to requests that had to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueWait(pub std::time::Duration);

#[cfg(test)]
mod tests;
