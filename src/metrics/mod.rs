//! Reuse-rate metrics: per response, whether its connection was reused; in
//! aggregate, requests, connections opened and closed and why, drains and
//! queue figures.
//!
//! Users can't fix churn they can't see. [`ReuseMetricsLayer`] reports into
//! a shared [`Metrics`] handle; [`Metrics::snapshot`] reads it as a plain
//! [`Snapshot`].
//!
//! # Export to the `metrics` facade (feature `metrics`)
//!
//! Events are emitted as they happen, under OpenTelemetry's HTTP client
//! names and poolguard's own (a Prometheus exporter turns the dots into
//! underscores: `http_client_open_connections`), each described with its
//! unit (by each guard at its first event: install the recorder before that). See
//! `examples/prometheus.rs`.
//!
//! | name | kind | unit | attributes |
//! |---|---|---|---|
//! | `http.client.open_connections` | gauge (up-down) | `{connection}` | `http.connection.state` (`active`, `idle`), `server.address`, `server.port`, `url.scheme`, `network.protocol.version` |
//! | `http.client.connection.duration` | histogram | `s` | as above, without the state |
//! | `http.client.request.time_in_queue` | histogram | `s` | — |
//! | `poolguard.requests` / `.responses` / `.errors` / `.reused` | counter | `{request}` | — |
//! | `poolguard.connections.opened` | counter | `{connection}` | — |
//! | `poolguard.connections.closed` | counter | `{connection}` | `poolguard.close.reason` |
//! | `poolguard.drains` | counter | `{drain}` | `poolguard.drain.outcome` |
//! | `poolguard.drain.bytes` | counter | `By` | — |
//! | `poolguard.drain.duration` | histogram | `s` | `poolguard.drain.outcome` (the time a drain waited for the body: 0 for one finished on drop) |
//! | `poolguard.retries` | counter | `{request}` | `poolguard.retry.result` (`retrying`, `succeeded`, `failed`) |
//! | `poolguard.retries.not_processed` | counter | `{request}` | — |
//! | `poolguard.queue.full` / `.timeouts` / `.cancelled` | counter | `{request}` | — |
//!
//! Every metric also carries `poolguard.guard` when the guard has a name
//! ([`Metrics::named`], `PoolGuardBuilder::name`). Counters are incremented,
//! never set: two guards in one process add up (or stay apart by name).
//! `server.address` is the host's for the first 64 hosts a guard sees and
//! `other` after, so that a crawler cannot grow the label set without
//! bound.
//!
//! A connection counts as `idle` from its dial until its first request's
//! bytes, and as HTTP/1.1 until its bytes show otherwise; an HTTP/2
//! connection counts as `active` for its whole life. `Metrics::publish`
//! and `Metrics::exporter` (absolute `poolguard_*_total` values from
//! snapshots) remain for dashboards built on them.
//!
//! # Tracing
//!
//! With a subscriber at `DEBUG`, each response records on the current span
//! (where the span declares them, e.g. `tracing::field::Empty`)
//! `poolguard.connection.reused`, `poolguard.connection.id`,
//! `http.client.request.time_in_queue` (seconds) and, for a request sent
//! again, `http.request.resend_count`, and emits one debug event with the
//! same fields; a tracked connection's close is a debug event with its
//! `reason`.
//!
//! # Where the figures come from
//!
//! - **Tracked connections** (hyper-util with a `GuardedConnector` given the
//!   same `Metrics`): the connector numbers each connection and watches its
//!   IO; every response carries a [`ConnInfo`] (connection id, reused,
//!   requests so far, idle time, queue wait). Connections opened and closed
//!   are exact, and each close gets a [`CloseReason`] from what poolguard saw
//!   last on that connection: the last response's `Connection: close`, its
//!   body dropped unread or a drain that gave up, an end of file or a reset
//!   from the peer, an I/O error, a request whose caller left, or the pool
//!   closing it while idle. Where none of these was seen, the reason is
//!   [`CloseReason::Unknown`], counted as such rather than guessed.
//! - **Untracked clients** (reqwest, or hyper-util without the connector):
//!   reuse comes from hyper-util's `HttpInfo` extension when present (a
//!   local/remote address pair seen before means a reused connection), else
//!   the response counts in `reuse_unknown`, never as reused.
//! - **Drains** come through the [`OnDrain`](crate::drain::OnDrain) hook: a
//!   `Metrics` is one, so `DrainLayer::new().on_drain(metrics.clone())`.
//! - **Queues** come from `PerHostLimitLayer::on_queue(metrics.clone())` and retries from
//!   `RetryStaleLayer::on_retry(metrics.clone())`: both hooks, which a
//!   `Metrics` implements.
//!
//! With the `metrics` feature, `Metrics::publish` exports the figures to
//! the `metrics` facade crate as `poolguard_*` counters and gauges, and the
//! queue wait and drain times are recorded as histograms when they happen.
//! `tracing` events at debug level tell when a connection closes (id, host,
//! reason, requests served) and when a drain gives up.
//!
//! Updates are atomic adds; no lock is taken per request on the tracked
//! path. Per-host rows exist for the first 64 hosts that opened a tracked
//! connection; later hosts share one row, so label cardinality is bounded.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use poolguard::{ConnInfo, Metrics, ReuseMetricsLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), poolguard::BoxError> {
//! let metrics = Metrics::new();
//! let mut client = ServiceBuilder::new()
//!     .layer(ReuseMetricsLayer::new(metrics.clone()))
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
//!     });
//!
//! let response = client.ready().await?.call(http::Request::new(())).await?;
//! // With a tracking connector, each response says which connection it used.
//! if let Some(info) = response.extensions().get::<ConnInfo>() {
//!     println!("connection {} reused: {}", info.id, info.reused);
//! }
//! response.into_body().collect().await?;
//!
//! let snap = metrics.snapshot();
//! assert_eq!(snap.requests, 1);
//! assert_eq!(snap.responses, 1);
//! assert_eq!(snap.in_flight, 0);
//! // A mock has no connection: its reuse is unknown, never counted as reused.
//! assert_eq!(snap.reuse_unknown, 1);
//! assert_eq!(snap.reuse_rate(), 0.0);
//! # Ok(())
//! # }
//! ```

#[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
mod compat;
mod conn;
#[cfg(feature = "metrics")]
mod emit;
#[cfg(feature = "metrics")]
mod export;
pub mod future;
mod handle;
mod hosts;
mod hot;
mod layer;
mod snapshot;

pub use self::conn::ConnInfo;
pub use self::handle::Metrics;
pub(crate) use self::layer::Started;
pub use self::layer::{ResponseBody, ResponseFuture, ReuseMetrics, ReuseMetricsLayer};
pub use self::snapshot::{CloseCounts, DrainSkips, FleetHost, HostSnapshot, Snapshot};
pub use crate::conn::CloseReason;

#[cfg(test)]
mod tests;
