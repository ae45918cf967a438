//! Reuse metrics against real servers on loopback: every figure is checked
//! against what the server counted.

#![cfg(feature = "hyper-util")]

use poolguard_testkit as support;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use poolguard::{
    BoxError, CloseReason, ConnInfo, DrainLayer, GuardedConnector, Metrics, ReuseMetricsLayer,
};
use tower::{Layer, ServiceExt};

type Tracked = Client<GuardedConnector<HttpConnector>, Empty<Bytes>>;

/// A client over a tracking connector: at most `idle` idle connections a
/// host, and up to 64 connections a host.
fn tracked(metrics: &Metrics, idle: usize) -> Tracked {
    tracked_capped(metrics, idle, 64)
}

/// [`tracked`] with at most `cap` connections a host: with 1, a second
/// request waits for the first's connection instead of racing hyper-util's
/// pool with a dial of its own.
fn tracked_capped(metrics: &Metrics, idle: usize, cap: usize) -> Tracked {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build(GuardedConnector::new(HttpConnector::new(), cap).track(metrics.clone()))
}

fn get(uri: http::Uri) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).expect("valid request")
}

/// Waits (bounded) until every opened connection is closed.
async fn all_closed(metrics: &Metrics) {
    for _ in 0..500 {
        let s = metrics.snapshot();
        if s.connections_closed == s.connections_opened {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("connections still open: {:?}", metrics.snapshot());
}

fn within_half_a_point(rate: f64, accepts: usize, requests: u64) {
    let expected = 1.0 - accepts as f64 / requests as f64;
    assert!(
        (rate - expected).abs() <= 0.005,
        "reuse rate {rate:.4}, server says {expected:.4}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_run_matches_the_server() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 150;
    let server = support::serve().await;
    let metrics = Metrics::new();
    let client = tracked(&metrics, 64);
    let drained = tower::ServiceBuilder::new()
        .layer(ReuseMetricsLayer::new(metrics.clone()))
        .layer(DrainLayer::new().on_drain(metrics.clone()))
        .service(client.clone());
    let undrained = tower::ServiceBuilder::new()
        .layer(ReuseMetricsLayer::new(metrics.clone()))
        .service(client.clone());
    let ids = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (drained, undrained, ids) = (drained.clone(), undrained.clone(), ids.clone());
        // Undrained drops use 1 MiB bodies: hyper can then never finish the
        // body in its one read on drop, so each of them closes its connection
        // (a smaller rest may be read and the connection kept; see
        // `CloseReason::BodyDroppedUnread`).
        let urls = [
            server.uri("/bytes/4096"),
            server.uri("/bytes/65536"),
            server.uri("/bytes/1048576"),
            server.uri("/close/512"),
        ];
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let kind = (t + i) % 4;
                let uri = urls[kind].clone();
                let info = if kind == 1 {
                    // Dropped early, through the drain.
                    let response = drained.clone().oneshot(get(uri)).await.expect("response");
                    *response.extensions().get::<ConnInfo>().expect("ConnInfo")
                } else {
                    let response = undrained.clone().oneshot(get(uri)).await.expect("response");
                    let info = *response.extensions().get::<ConnInfo>().expect("ConnInfo");
                    if kind == 2 {
                        // Dropped early, without a drain.
                        drop(response);
                    } else {
                        // Read to the end (one in two says `Connection: close`).
                        response.into_body().collect().await.expect("body");
                    }
                    info
                };
                ids.lock().unwrap().insert(info.id);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    drop((drained, undrained, client));
    all_closed(&metrics).await;

    let snap = metrics.snapshot();
    let accepts = server.stats.accepted();
    println!(
        "mixed run: server accepts {accepts}, connections_opened {}",
        snap.connections_opened
    );
    for (reason, n) in snap.closes.iter() {
        println!("  closed {reason}: {n}");
    }
    println!("  reuse rate {:.4}; {snap:?}", snap.reuse_rate());
    let requests = (TASKS * PER_TASK) as u64;
    assert_eq!(snap.requests, requests);
    assert_eq!(snap.responses, requests);
    assert_eq!(snap.errors, 0);
    assert_eq!(snap.reuse_unknown, 0);
    assert_eq!(snap.connections_opened, accepts as u64);
    // Connections that served no request (opened by a connect that lost the
    // pool's checkout race) count as opened but are never "not reused".
    // How many there are depends on hyper-util and the machine's load, not
    // on poolguard: reported, not bounded.
    let used = ids.lock().unwrap().len() as u64;
    println!(
        "  connections that served no request: {}",
        snap.connections_opened - used
    );
    assert_eq!(snap.reused, snap.responses - used);
    assert!(used <= snap.connections_opened);
    within_half_a_point(snap.reuse_rate(), accepts, requests);
    assert_eq!(snap.closes.total(), snap.connections_opened);
    assert_eq!(snap.in_flight, 0);
    let closes = |r| snap.closes.get(r);
    let table: Vec<_> = snap.closes.iter().collect();
    // Exact: each response knows the exchange it answers on its connection
    // (taken while its request still held the connection), and each close
    // reason comes from the connection's own bytes.
    assert_eq!(
        closes(CloseReason::ConnectionClose),
        requests / 4,
        "{table:?}"
    );
    assert_eq!(
        closes(CloseReason::BodyDroppedUnread),
        requests / 4,
        "{table:?}"
    );
    assert_eq!(closes(CloseReason::Unknown), 0);
    assert_eq!(snap.drains_completed, requests / 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_reuse_comes_from_socket_addresses() {
    // Reuse from `HttpInfo` cannot see connections the pool closes by itself
    // (see the `metrics` module docs), so this run has none: the pool keeps
    // every idle connection; connections end by `Connection: close`.
    let server = support::serve().await;
    let metrics = Metrics::new();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let drained = tower::ServiceBuilder::new()
        .layer(ReuseMetricsLayer::new(metrics.clone()))
        .layer(DrainLayer::new().on_drain(metrics.clone()))
        .service(client.clone());
    let plain = ReuseMetricsLayer::new(metrics.clone()).layer(client);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (drained, plain) = (drained.clone(), plain.clone());
        let urls = [
            server.uri("/bytes/512"),
            server.uri("/bytes/65536"),
            server.uri("/close/512"),
        ];
        tasks.push(tokio::spawn(async move {
            for i in 0..150usize {
                let kind = (t + i) % 3;
                if kind == 1 {
                    let response = drained.clone().oneshot(get(urls[1].clone())).await;
                    drop(response.expect("response"));
                } else {
                    let response = plain.clone().oneshot(get(urls[kind].clone())).await;
                    let body = response.expect("response").into_body();
                    body.collect().await.expect("body");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let snap = metrics.snapshot();
    let accepts = server.stats.accepted();
    println!(
        "untracked: accepts {accepts}, reuse rate {:.4}",
        snap.reuse_rate()
    );
    assert_eq!(snap.reuse_unknown, 0, "HttpInfo is there");
    assert_eq!(snap.responses, 1200);
    within_half_a_point(snap.reuse_rate(), accepts, snap.responses);
}

/// Sends one request through a metrics stack over `client`, handles its
/// body with `f`, waits for the connection to close and returns the reasons.
async fn close_reasons(metrics: &Metrics) -> Vec<(CloseReason, u64)> {
    all_closed(metrics).await;
    metrics
        .snapshot()
        .closes
        .iter()
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reason_body_dropped_unread() {
    let server = support::serve().await;
    let metrics = Metrics::new();
    let svc = ReuseMetricsLayer::new(metrics.clone()).layer(tracked(&metrics, 8));
    // 1 MiB: hyper cannot finish the body in its one read on drop.
    let response = svc
        .oneshot(get(server.uri("/bytes/1048576")))
        .await
        .unwrap();
    drop(response);
    assert_eq!(
        close_reasons(&metrics).await,
        [(CloseReason::BodyDroppedUnread, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reason_drain_gave_up() {
    let server = support::serve().await;
    let metrics = Metrics::new();
    let svc = tower::ServiceBuilder::new()
        .layer(ReuseMetricsLayer::new(metrics.clone()))
        .layer(DrainLayer::new().max_bytes(1024).on_drain(metrics.clone()))
        .service(tracked(&metrics, 8));
    let response = svc.oneshot(get(server.uri("/endless"))).await.unwrap();
    drop(response);
    assert_eq!(
        close_reasons(&metrics).await,
        [(CloseReason::DrainGaveUp, 1)]
    );
    assert_eq!(metrics.snapshot().drains_gave_up_bytes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reason_peer_closed() {
    let server = support::serve_closing_idle(Duration::from_millis(20)).await;
    let metrics = Metrics::new();
    let svc = ReuseMetricsLayer::new(metrics.clone()).layer(tracked(&metrics, 8));
    // Keep the client (and its pool) alive: dropping it would close the
    // idle connection first.
    let response = svc.clone().oneshot(get(server.uri("/"))).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(
        close_reasons(&metrics).await,
        [(CloseReason::PeerClosed, 1)]
    );
    drop(svc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reason_connection_close() {
    let server = support::serve().await;
    let metrics = Metrics::new();
    let svc = ReuseMetricsLayer::new(metrics.clone()).layer(tracked(&metrics, 8));
    let response = svc
        .clone()
        .oneshot(get(server.uri("/close/10")))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    // Said by the request this time.
    let mut req = get(server.uri("/bytes/10"));
    req.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    let response = svc.oneshot(req).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(
        close_reasons(&metrics).await,
        [(CloseReason::ConnectionClose, 2)]
    );
    assert_eq!(server.stats.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reason_closed_idle() {
    let server = support::serve().await;
    let metrics = Metrics::new();
    // A pool that keeps nothing idle closes each connection after use.
    let svc = ReuseMetricsLayer::new(metrics.clone()).layer(tracked(&metrics, 0));
    let response = svc.oneshot(get(server.uri("/bytes/10"))).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(
        close_reasons(&metrics).await,
        [(CloseReason::ClosedIdle, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reason_request_cancelled() {
    let server = support::serve_with(support::Options {
        delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let metrics = Metrics::new();
    let svc = ReuseMetricsLayer::new(metrics.clone()).layer(tracked(&metrics, 8));
    let call = svc.oneshot(get(server.uri("/bytes/10")));
    // Wait until the server has the request, then give up on it.
    let call = tokio::spawn(call);
    while server.stats.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    call.abort();
    assert_eq!(
        close_reasons(&metrics).await,
        [(CloseReason::RequestCancelled, 1)]
    );
    assert_eq!(metrics.snapshot().in_flight, 0);
}

/// A connection whose reads fail with an I/O error once it has read
/// something and `fail` is set: its first response arrives, the next read
/// (hyper watching the idle connection) fails.
struct Failing {
    io: TokioIo<tokio::net::TcpStream>,
    fail: Arc<AtomicBool>,
    read_some: bool,
}

impl Connection for Failing {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Failing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read_some && self.fail.load(Ordering::SeqCst) {
            return Poll::Ready(Err(std::io::Error::other("injected")));
        }
        let before = buf.remaining();
        // Probe whether this read returns data by the cursor's room after.
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && before > 0 {
            self.read_some = true;
        }
        polled
    }
}

impl hyper::rt::Write for Failing {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reason_io_error() {
    let server = support::serve().await;
    let metrics = Metrics::new();
    let fail = Arc::new(AtomicBool::new(false));
    let dials = Arc::new(AtomicUsize::new(0));
    let (f, d) = (fail.clone(), dials.clone());
    let connector = tower::service_fn(move |uri: http::Uri| {
        let (fail, dials) = (f.clone(), d.clone());
        async move {
            dials.fetch_add(1, Ordering::SeqCst);
            let addr = format!(
                "{}:{}",
                uri.host().unwrap_or("127.0.0.1"),
                uri.port_u16().unwrap_or(80)
            );
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok::<_, BoxError>(Failing {
                io: TokioIo::new(stream),
                fail,
                read_some: false,
            })
        }
    });
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(GuardedConnector::new(connector, 8).track(metrics.clone()));
    let svc = ReuseMetricsLayer::new(metrics.clone()).layer(client);
    // Armed before the request: the read after the response fails.
    fail.store(true, Ordering::SeqCst);
    let response = svc
        .clone()
        .oneshot(get(server.uri("/bytes/10")))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(close_reasons(&metrics).await, [(CloseReason::IoError, 1)]);
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    drop(svc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reasons_need_no_metrics_layer() {
    // Only the connector reports: the reasons come from the connection's
    // own bytes, not from a layer that may or may not be in the stack.
    let server = support::serve_with(support::Options {
        delay: Duration::from_millis(0),
        ..Default::default()
    })
    .await;
    let metrics = Metrics::new();
    let client = tracked(&metrics, 8);
    let response = client.get(server.uri("/close/10")).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(
        close_reasons(&metrics).await,
        [(CloseReason::ConnectionClose, 1)]
    );

    let metrics = Metrics::new();
    let client = tracked(&metrics, 8);
    // 1 MiB: hyper cannot finish the body in its one read on drop.
    let response = client.get(server.uri("/bytes/1048576")).await.unwrap();
    drop(response);
    assert_eq!(
        close_reasons(&metrics).await,
        [(CloseReason::BodyDroppedUnread, 1)]
    );

    let slow = support::serve_with(support::Options {
        delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let metrics = Metrics::new();
    let client = tracked(&metrics, 8);
    let call = tokio::spawn(client.get(slow.uri("/bytes/10")));
    while slow.stats.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    call.abort();
    assert_eq!(
        close_reasons(&metrics).await,
        [(CloseReason::RequestCancelled, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reasons_do_not_depend_on_the_stacking_order() {
    for drain_outside in [false, true] {
        let server = support::serve().await;
        let metrics = Metrics::new();
        // One connection: the second request must be its second exchange
        // (with more, hyper-util's checkout can race a dial under load and
        // send it on a new connection).
        let client = tracked_capped(&metrics, 8, 1);
        let drain = DrainLayer::new().max_bytes(1024).on_drain(metrics.clone());
        let reuse = ReuseMetricsLayer::new(metrics.clone());
        let svc = if drain_outside {
            let svc = drain.layer(reuse.layer(client));
            tower::util::BoxCloneService::new(svc.map_response(|r| r.map(BodyExt::boxed_unsync)))
        } else {
            let svc = reuse.layer(drain.layer(client));
            tower::util::BoxCloneService::new(svc.map_response(|r| r.map(BodyExt::boxed_unsync)))
        };
        // A first exchange read to its end, then a second on the same
        // connection whose endless body is dropped: the drain gives up.
        let response = svc.clone().oneshot(get(server.uri("/bytes/10"))).await;
        response.unwrap().into_body().collect().await.unwrap();
        let response = svc.oneshot(get(server.uri("/endless"))).await.unwrap();
        let info = *response.extensions().get::<ConnInfo>().expect("ConnInfo");
        assert_eq!((info.reused, info.requests), (true, 2));
        drop(response);
        // The drained connection's reason is the point (a connection closed
        // idle would count too, see below).
        let reasons = close_reasons(&metrics).await;
        let count = |r| reasons.iter().find(|(x, _)| *x == r).map_or(0, |(_, n)| *n);
        assert_eq!(
            count(CloseReason::DrainGaveUp),
            1,
            "drain outside the metrics layer: {drain_outside}: {reasons:?}"
        );
        assert_eq!(
            count(CloseReason::DrainGaveUp) + count(CloseReason::ClosedIdle),
            metrics.snapshot().connections_closed,
            "{reasons:?}"
        );
        assert_eq!(
            metrics.snapshot().connections_opened,
            server.stats.accepted() as u64
        );
    }
}

/// `ConnInfo::idle_for`: how long the connection sat idle before a request
/// that reused it; `None` on a new connection. (Requests read the clock
/// only once their `Metrics` has seen a tracked connection: the first
/// response, on a new connection, needs none.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_for_is_the_time_the_connection_sat_idle() {
    let server = support::serve().await;
    let metrics = Metrics::new();
    let svc = ReuseMetricsLayer::new(metrics.clone()).layer(tracked(&metrics, 8));
    let response = svc
        .clone()
        .oneshot(get(server.uri("/bytes/10")))
        .await
        .unwrap();
    let first = *response.extensions().get::<ConnInfo>().expect("ConnInfo");
    response.into_body().collect().await.unwrap();
    assert_eq!((first.reused, first.idle_for), (false, None));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = svc.oneshot(get(server.uri("/bytes/10"))).await.unwrap();
    let second = *response.extensions().get::<ConnInfo>().expect("ConnInfo");
    response.into_body().collect().await.unwrap();
    assert!(second.reused);
    let idle = second.idle_for.expect("a reused connection's idle time");
    assert!(idle >= Duration::from_millis(50), "{idle:?}");
    assert_eq!(server.stats.accepted(), 1, "one connection at the server");
}
