//! Tower middleware that keeps HTTP client connection pools healthy.
//!
//! A keep-alive connection is only worth something if it is reused. HTTP
//! clients built on hyper lose their connections in a few well-known ways,
//! and then every request dials anew: latency grows, `TIME_WAIT` sockets pile
//! up, and under load the process runs out of ephemeral ports or file
//! descriptors. poolguard layers onto an existing client to stop that.
//!
//! - [`DrainLayer`]: when the caller drops a response body before its end,
//!   the rest is read and discarded in the background within a byte budget
//!   and a time budget, so the HTTP/1 connection goes back to the pool
//!   instead of being closed. See [`drain`].
//! - [`PerHostLimitLayer`]: at most N requests in flight to each host, each
//!   holding its slot until its body is done; the surplus waits in a bounded,
//!   FIFO, cancel-safe queue with a timeout instead of making the pool dial.
//!   See [`limit`].
//! - [`ReuseMetricsLayer`]: per response, whether its connection was reused
//!   ([`ConnInfo`]); in aggregate ([`Metrics`]), requests, connections opened
//!   and closed with a [`CloseReason`] each, drains and queue figures. See
//!   [`metrics`].
//! - [`RetryStaleLayer`]: a request that failed on a stale pooled connection
//!   (closed by the server as the request went out) is sent once more when
//!   that is safe; with hyper-util, [`GuardedConnector`] also retires
//!   connections before the server's advertised `Keep-Alive` timeout. See
//!   [`retry`].
//! - `fleet` (feature `redis`): per-host budgets of requests in flight
//!   shared by every process that points at the same Redis.
//! - [`PoolGuard`]: all of them in the right order, with one shared state.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use poolguard::DrainLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), poolguard::BoxError> {
//! // Any client that is a `tower::Service<http::Request<_>>` works here, for
//! // instance hyper-util's legacy `Client`.
//! let client = tower::service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("hello"))))
//! });
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(
//!         DrainLayer::new()
//!             .max_bytes(64 * 1024)
//!             .max_time(Duration::from_millis(100))
//!             .max_concurrent(256),
//!     )
//!     .service(client);
//!
//! let response = client.ready().await?.call(http::Request::new(())).await?;
//! assert_eq!(response.status(), 200);
//! // Dropping the body unread is now harmless: poolguard reads the rest.
//! drop(response);
//! # Ok(())
//! # }
//! ```
//!
//! # Runtime requirements
//!
//! poolguard runs on tokio and keeps all its time on tokio's clock. Build
//! the runtime with timers (`enable_time` or `enable_all`; `#[tokio::main]`
//! and `Runtime::new` do). tokio offers no way to ask whether a runtime has
//! timers: its timer functions panic when it has none. On such a runtime
//! poolguard catches that panic at its first timer, remembers the runtime,
//! and goes on without deadlines (queue waits have no deadline, background
//! drains are skipped, `Keep-Alive` idle limits are checked on reads). The
//! panic hook still runs once per runtime, and a program built with
//! `panic = "abort"` aborts there: with `panic = "abort"`, timers are
//! required.
#![deny(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's examples use the default features (hyper-util and reqwest).
#[cfg(all(doctest, feature = "hyper-util", feature = "reqwest"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod body_end;
mod client;
mod conn;
pub mod drain;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
pub mod guard;
mod key;
pub mod limit;
pub mod metrics;
pub mod retry;
#[cfg(test)]
mod testing;
mod timer;

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use client::reqwest;
pub use drain::{DrainBody, DrainLayer};
pub use guard::{Guarded, GuardedBody, PoolGuard, PoolGuardBuilder, PoolGuardLayer};
pub use key::HostKey;
pub use limit::{PerHostLimitLayer, QueueFull, QueueTimeout};
pub use metrics::{CloseReason, ConnInfo, Metrics, ReuseMetricsLayer, Snapshot};
pub use retry::{RetryStaleLayer, Stranded};

#[cfg(feature = "hyper-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
pub use client::hyper_util::{ClientDropped, ConnectFuture, GuardedConnector, GuardedIo};
#[cfg(feature = "hyper-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
pub use conn::turnover::Coalesced;

/// Alias for a type-erased error type, as used throughout the Tower ecosystem.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
