//! Drain response bodies that the caller drops before their end.
//!
//! hyper keeps an HTTP/1 connection only if its response body was read to
//! the end. When the caller drops the body early (it only wanted the status
//! of a 404, or a health check read the headers), hyper makes one attempt to
//! read what is already buffered and otherwise closes the connection, and the
//! next request dials anew. [`DrainLayer`] wraps every response body in a
//! [`DrainBody`] that, when dropped early, reads and discards the rest so the
//! connection returns to the pool.
//!
//! # Behaviour
//!
//! When a [`DrainBody`] is dropped before its end:
//!
//! 1. An HTTP/2 body is reset, not drained ([`SkipReason::Http2`]), when
//!    the guard can bear what that costs: resetting a stream costs no
//!    connection, but the h2 crate ends its connection (failing every
//!    request in flight on it) after too many resets it writes
//!    (`too_many_internal_resets`, hyperium/h2#856). On a connection a
//!    [`GuardedConnector`](crate::GuardedConnector) tracks, the connector
//!    takes the connection out of the pool long before; over reqwest the
//!    guard's retry resends the idempotent requests that limit fails. Other
//!    HTTP/2 bodies are drained like HTTP/1 ones.
//! 2. A body whose known remaining length (`Content-Length` minus what was
//!    read, or the body's `size_hint`) exceeds `max_bytes` is dropped at once,
//!    without reading it ([`SkipReason::TooLarge`]).
//! 3. What is already buffered is read inline, on the dropping thread, with a
//!    no-op waker. A small body that arrived with its headers is finished
//!    here without a task ([`DrainOutcome::Completed`] with `inline: true`).
//! 4. Otherwise a background task on the current tokio runtime reads and
//!    discards frames until the end of the body, more than `max_bytes`, the
//!    `max_time` deadline, or an error. The body, and anything it holds (for
//!    instance a per-host slot), is dropped when the task ends. No task is
//!    spawned without a current runtime ([`SkipReason::NoRuntime`]) or when
//!    `max_concurrent` drains already run ([`SkipReason::TooManyDrains`]).
//!
//! Dropping never blocks the caller's thread and never panics. A body read
//! to its end, or already at its end, costs no task. Each drain reports its
//! outcome to an [`OnDrain`] hook.
//!
//! # A drain never costs more than the connection it saves (with `PoolGuard`)
//!
//! Draining trades time for a connection: while it runs, the drain holds
//! its request's per-host slot and its connection. A guard's drains price
//! that trade. The guard's connector (or, with reqwest, its dial counter)
//! times every dial, connect and TLS handshake included, and keeps per
//! host a mean of the last dials (weight 1/4; before any dial to a host,
//! the mean over all dials, else 5 ms; see
//! `HostSnapshot::dial_cost` in a guard's metrics). The rule is
//! ski rental's: **keep draining until the time spent equals what a new
//! connection costs; then, if anything waits for the host's slots (a
//! request in its queue, or a dial under the connection cap), give up**
//! ([`DrainOutcome::GaveUpCost`]) and free both slots at once. Whatever the
//! body would have done, the time lost this way is at most twice what the
//! best choice in hindsight would have lost (it pays at most the rent plus
//! one dial where the best pays one of them). With nothing waiting, the
//! drain goes on and the budgets below apply; it looks again every dial
//! cost (at least every millisecond). A body whose `Content-Length` says
//! the rest will come, at the rate seen so far, sooner than a dial would
//! is finished. tokio's timer ticks every millisecond: where a dial costs
//! less (loopback, a LAN), a body of unknown length (a stream) is given up
//! at once when something waits, since no look could come before renting
//! had cost more than buying.
//!
//! A `DrainLayer` of your own (outside a `PoolGuard`) has no price: its
//! budgets alone apply.
//!
//! # Defaults
//!
//! | setting          | default  | why |
//! |------------------|----------|-----|
//! | `max_bytes`      | 64 KiB   | Go's HTTP server discards up to 256 KiB of an unread request body and .NET's handler up to 1 MiB; 64 KiB covers typical JSON and error bodies while bounding what a peer can make us read. |
//! | `max_time`       | 100 ms   | OkHttp discards a body for up to 100 ms before closing. The time budget must stay well below what a new connection costs (a TCP and TLS handshake to a remote host is tens to hundreds of milliseconds), or draining costs more than it saves. |
//! | `max_concurrent` | 256      | Bounds the memory and tasks that slow or endless bodies can pin. |
//!
//! Go's common fix, draining 4 KiB within 50 ms, does not save a connection
//! whose 64 KiB body was dropped unread; raise `max_bytes` if your bodies are
//! larger and your peers are trusted.
//!
//! # Differences from dropping hyper's body
//!
//! hyper 1.x polls the connection once when a body is dropped
//! (`poll_drain_or_close_read`) and keeps the connection only if the body
//! ends within that one read. This layer keeps reading, within budgets.
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use poolguard::drain::{DrainLayer, DrainOutcome};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), poolguard::BoxError> {
//! let drained = Arc::new(AtomicU64::new(0));
//! let counter = drained.clone();
//! let mut svc = ServiceBuilder::new()
//!     .layer(DrainLayer::new().on_drain(move |outcome: &DrainOutcome| {
//!         if let DrainOutcome::Completed { bytes, .. } = outcome {
//!             counter.fetch_add(*bytes, Ordering::Relaxed);
//!         }
//!     }))
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("unread"))))
//!     });
//!
//! let response = svc.ready().await?.call(http::Request::new(())).await?;
//! drop(response); // the in-memory body is finished inline, on drop
//! assert_eq!(drained.load(Ordering::Relaxed), 6);
//! # Ok(())
//! # }
//! ```

mod body;
mod hook;
pub(crate) mod layer;
mod service;
mod task;

pub mod future;

pub use self::body::DrainBody;
pub(crate) use self::body::{Head, Host};
#[cfg(feature = "metrics")]
pub(crate) use self::hook::OUTCOME_NAMES;
pub use self::hook::{DrainOutcome, OnDrain, SkipReason};
pub use self::layer::DrainLayer;
pub use self::service::Drain;

#[cfg(test)]
mod tests;
