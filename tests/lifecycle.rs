//! Connections that rotate (`max_connection_age`,
//! `max_requests_per_connection`, `close_idle`), against loopback servers
//! that count their connections and requests: the servers' counts are the
//! truth.
#![cfg(all(feature = "hyper-util", feature = "reqwest"))]

use poolguard_testkit as support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Empty;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{BoxError, CloseReason, PoolGuard};
use support::{sender, Body, Switch};
use tower::Layer;

const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// How the client reaches the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Http1,
    /// h2c, prior knowledge.
    Http2,
    /// TLS, ALPN offering h2 and http/1.1 (the servers choose h2).
    Tls,
}

/// Backend A on 127.0.0.1 and backend B on 127.0.0.2, on one port: one
/// host name (`localhost`, which the test certificate names) that a
/// resolver moves from one to the other.
async fn backends(wire: Wire) -> (support::Server, support::Server) {
    let start = |bind: SocketAddr| {
        let options = support::Options {
            http2: wire != Wire::Http1,
            bind: Some(bind),
            ..Default::default()
        };
        async move {
            match wire {
                Wire::Tls => support::serve_tls_with(options).await,
                _ => support::serve_with(options).await,
            }
        }
    };
    let a = start((A, 0).into()).await;
    let b = start((B, a.addr.port()).into()).await;
    (a, b)
}

/// A guarded hyper-util client of `guard` whose resolver is `switch`, for
/// the port of `backends` (trusting their certificates).
fn hyper_util_send(
    guard: &PoolGuard,
    wire: Wire,
    switch: &Switch,
    backends: &[&support::Server],
    path: &str,
) -> Sender {
    let mut http = HttpConnector::new_with_resolver(switch.clone());
    let port = backends.first().map_or(0, |b| b.addr.port());
    let (scheme, builder) = match wire {
        Wire::Http1 => ("http", Client::builder(TokioExecutor::new())),
        Wire::Http2 => {
            let mut b = Client::builder(TokioExecutor::new());
            b.http2_only(true);
            ("http", b)
        }
        Wire::Tls => ("https", Client::builder(TokioExecutor::new())),
    };
    let uri: http::Uri = format!("{scheme}://localhost:{port}{path}")
        .parse()
        .expect("uri");
    match wire {
        Wire::Tls => {
            http.enforce_http(false);
            let https = HttpsConnectorBuilder::new()
                .with_tls_config(support::client_tls_trusting(
                    backends.iter().filter_map(|b| b.root.as_ref()),
                    &[],
                ))
                .https_only()
                .enable_all_versions()
                .wrap_connector(http);
            let client = builder.build::<_, Empty<Bytes>>(guard.connector(https));
            boxed(sender(
                guard.layer().layer(client),
                Method::GET,
                uri,
                Body::Read,
            ))
        }
        _ => {
            let client = builder.build::<_, Empty<Bytes>>(guard.connector(http));
            boxed(sender(
                guard.layer().layer(client),
                Method::GET,
                uri,
                Body::Read,
            ))
        }
    }
}

/// One request under way.
type Sending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

/// Sends one request.
type Sender = Arc<dyn Fn() -> Sending + Send + Sync>;

/// The same sender, under one type for every client.
fn boxed<F, Fut>(send: F) -> Sender
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    Arc::new(move || Box::pin(send()) as Sending)
}

/// `tasks` tasks send requests with `send` until `stop` is set (and at
/// most `cap` in all, and for at most 30 s): returns (ok, errors).
async fn steady(tasks: usize, stop: Arc<AtomicBool>, cap: usize, send: Sender) -> (usize, usize) {
    let (ok, errors, sent) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (send, stop, ok, errors, sent) = (
            send.clone(),
            stop.clone(),
            ok.clone(),
            errors.clone(),
            sent.clone(),
        );
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed)
                && sent.fetch_add(1, Ordering::Relaxed) < cap
                && tokio::time::Instant::now() < until
            {
                match tokio::time::timeout(Duration::from_secs(10), send()).await {
                    Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(e)) => {
                        eprintln!("request failed: {e} ({:?})", std::error::Error::source(&*e));
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => {
                        eprintln!("request hung");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
}

/// What a switch of backends under load showed.
#[derive(Debug)]
struct Moved {
    /// Requests each backend took from 2 s after the switch on.
    late: (usize, usize),
    /// Requests B took in all.
    b_total: usize,
    errors: usize,
}

/// 20 tasks of steady load on `localhost`, resolved to A for 1.5 s and
/// then to B; what reached each backend from 2 s after the switch to 3 s
/// after it. `send` is made with the switch and B (for its port and
/// certificate).
async fn switch_under_load(
    switch: &Switch,
    a: &support::Server,
    b: &support::Server,
    send: Sender,
) -> Moved {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady(20, stop.clone(), 200_000, send));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    switch.set(B);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a0, b0) = (a.stats.requests(), b.stats.requests());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (a1, b1) = (a.stats.requests(), b.stats.requests());
    stop.store(true, Ordering::Relaxed);
    let (ok, errors) = load.await.expect("load");
    assert!(ok > 0);
    Moved {
        late: (a1 - a0, b1 - b0),
        b_total: b.stats.requests(),
        errors,
    }
}

async fn a_host_moved_to_a_new_backend_follows_with_max_connection_age(wire: Wire) {
    // Without the setting, the connections made to A carry on: B gets
    // nothing (the premise).
    let (a, b) = backends(wire).await;
    let switch = Switch::new(A);
    let guard = PoolGuard::builder().max_per_host(4).build();
    let send = hyper_util_send(&guard, wire, &switch, &[&a, &b], "/bytes/100");
    let kept = switch_under_load(&switch, &a, &b, send).await;
    println!("{wire:?} without max_connection_age: {kept:?}");
    assert_eq!(kept.errors, 0);
    assert_eq!(
        kept.b_total, 0,
        "B gets none of a client that keeps its connections"
    );
    assert!(kept.late.0 > 0);

    let (a, b) = backends(wire).await;
    let switch = Switch::new(A);
    let guard = PoolGuard::builder()
        .max_per_host(4)
        .max_connection_age(Duration::from_secs(1))
        .build();
    let send = hyper_util_send(&guard, wire, &switch, &[&a, &b], "/bytes/100");
    let moved = switch_under_load(&switch, &a, &b, send).await;
    println!("{wire:?} with max_connection_age(1s): {moved:?}");
    assert_eq!(moved.errors, 0);
    let (late_a, late_b) = moved.late;
    assert!(late_b > 0);
    assert!(
        late_b * 100 >= (late_a + late_b) * 95,
        "from 2 s after the switch, {late_b} of {} requests reached B",
        late_a + late_b
    );
    assert!(guard.metrics().snapshot().closes.get(CloseReason::MaxAge) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_follows_a_moved_host_with_max_connection_age() {
    a_host_moved_to_a_new_backend_follows_with_max_connection_age(Wire::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_follows_a_moved_host_with_max_connection_age() {
    a_host_moved_to_a_new_backend_follows_with_max_connection_age(Wire::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_follows_a_moved_host_with_max_connection_age() {
    a_host_moved_to_a_new_backend_follows_with_max_connection_age(Wire::Tls).await;
}

/// Waits (at most 2 s) until `done` holds.
async fn settle(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn max_requests_per_connection_rotates_every_n(wire: Wire) {
    let (a, _b) = backends(wire).await;
    let switch = Switch::new(A);
    let guard = PoolGuard::builder().max_requests_per_connection(50).build();
    let send = hyper_util_send(&guard, wire, &switch, &[&a], "/bytes/100");
    for _ in 0..1000 {
        send().await.expect("request");
    }
    // The close is counted as the client's IO is dropped, just after its
    // socket closes.
    let retired = || {
        guard
            .metrics()
            .snapshot()
            .closes
            .get(CloseReason::MaxRequests)
    };
    settle(|| a.stats.open() == 0 && retired() == 20).await;
    println!(
        "{wire:?}: {} connections for {} requests, {} open",
        a.stats.accepted(),
        a.stats.requests(),
        a.stats.open()
    );
    assert_eq!(a.stats.requests(), 1000);
    assert_eq!(a.stats.accepted(), 1000usize.div_ceil(50));
    // Every connection carried its 50 and retired, the last one too.
    let retired = guard
        .metrics()
        .snapshot()
        .closes
        .get(CloseReason::MaxRequests);
    assert_eq!(retired, 20);
    assert_eq!(
        a.stats.open(),
        0,
        "the last connection closed after its 50th"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_max_requests_per_connection_rotates_every_50() {
    max_requests_per_connection_rotates_every_n(Wire::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_max_requests_per_connection_rotates_every_50() {
    max_requests_per_connection_rotates_every_n(Wire::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_idle_closes_every_idle_connection_now() {
    let server = support::serve_with(support::Options {
        delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let guard = PoolGuard::builder().max_per_host(10).build();
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let send = sender(
        guard.layer().layer(client),
        Method::GET,
        server.uri("/bytes/100"),
        Body::Read,
    );
    // Ten at once, on ten connections (the server takes 100 ms each).
    let all: Vec<_> = (0..10).map(|_| tokio::spawn(send())).collect();
    for one in all {
        one.await.expect("task").expect("request");
    }
    assert_eq!(server.stats.accepted(), 10);
    settle(|| server.stats.open() == 10).await;
    assert_eq!(server.stats.open(), 10, "ten idle connections");

    let asked = tokio::time::Instant::now();
    guard.close_idle();
    settle(|| server.stats.open() == 0).await;
    let took = asked.elapsed();
    println!("closed in {took:?}");
    assert_eq!(server.stats.open(), 0, "every idle connection closed");
    assert!(took < Duration::from_millis(200), "{took:?}");
    settle(|| guard.metrics().snapshot().closes.get(CloseReason::Evicted) == 10).await;
    assert_eq!(
        guard.metrics().snapshot().closes.get(CloseReason::Evicted),
        10
    );

    // The next request dials.
    send().await.expect("request");
    assert_eq!(server.stats.accepted(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_idle_leaves_busy_connections_alone() {
    let server = support::serve_with(support::Options {
        delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let guard = PoolGuard::builder().max_per_host(10).build();
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let send = sender(
        guard.layer().layer(client),
        Method::GET,
        server.uri("/bytes/100"),
        Body::Read,
    );
    let busy = tokio::spawn(send());
    settle(|| server.stats.in_flight.load(Ordering::SeqCst) == 1).await;
    guard.close_idle();
    busy.await
        .expect("task")
        .expect("the busy request completes");
    // Still pooled: the next request reuses it.
    send().await.expect("request");
    assert_eq!(server.stats.accepted(), 1);
    assert_eq!(
        guard.metrics().snapshot().closes.get(CloseReason::Evicted),
        0
    );
}

async fn short_ages_under_load_lose_nothing(wire: Wire) {
    ages_under_load_lose_nothing(wire, SHORT_AGE, 5000).await;
}

/// `requests` (at least) from 50 tasks through a guarded hyper-util client
/// whose connections live `age`, past three ages: none is lost, none sent
/// twice, and connections retired.
async fn ages_under_load_lose_nothing(wire: Wire, age: Duration, requests: usize) {
    let (a, _b) = backends(wire).await;
    let switch = Switch::new(A);
    let guard = PoolGuard::builder()
        .max_per_host(10)
        .max_connection_age(age)
        .build();
    let send = hyper_util_send(&guard, wire, &switch, &[&a], "/bytes/16384");
    let run = drive_past_ages(send, age, requests).await;
    settle(|| a.stats.open() <= 10).await;
    let closed = a.stats.accepted() - a.stats.open();
    println!(
        "{wire:?}: {run:?}, {} connections, {closed} closed",
        a.stats.accepted()
    );
    assert_eq!(run.errors, 0);
    assert!(run.ok >= requests);
    assert_eq!(a.stats.requests(), run.ok, "each request sent once");
    assert!(closed > 0, "connections retired during the load");
}

/// The connection age of the short-age tests.
const SHORT_AGE: Duration = Duration::from_millis(200);

/// Drives `send` from 50 tasks in rounds of 1,000 requests until at least
/// `requests` went out and three connection ages have passed, so that
/// connections age out during the load however fast the machine runs it
/// (a fixed count can end before the first age does); at most 200 rounds
/// and 60 s.
async fn drive_past_ages(send: Sender, age: Duration, requests: usize) -> support::Run {
    let started = std::time::Instant::now();
    let mut total = support::Run::default();
    for _ in 0..200 {
        let send = send.clone();
        let run = support::drive(50, 1000, 0, move || send()).await;
        total.ok += run.ok;
        total.errors += run.errors;
        total.hung += run.hung;
        let elapsed = started.elapsed();
        if (total.ok + total.errors >= requests && elapsed >= age * 3)
            || elapsed >= Duration::from_secs(60)
        {
            break;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_short_ages_under_load_lose_nothing() {
    short_ages_under_load_lose_nothing(Wire::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_short_ages_under_load_lose_nothing() {
    short_ages_under_load_lose_nothing(Wire::Http2).await;
}

/// Connections living 20 ms, turned over by the thousand: a request sent
/// to a connection as hyper's dispatcher closed it waited for ever with
/// hyper 1.12 (its callback stranded in the closed channel; hyper 1.13
/// drains the channel before the dispatcher ends): here about one request
/// in 25,000; the 200 ms test above hung one request in 1 run of 40.
/// Ignored (60 s of load); run it with
/// `cargo test --all-features --test lifecycle -- --ignored churning`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 s of load: cargo test --all-features --test lifecycle -- --ignored churning"]
async fn http1_churning_ages_under_load_lose_nothing() {
    ages_under_load_lose_nothing(Wire::Http1, Duration::from_millis(20), 20_000).await;
}

/// A `GuardedClient` of `guard` whose resolver is `switch`, for the port
/// of `backend` (HTTP/1, plain).
fn reqwest_send(
    guard: &PoolGuard,
    switch: &Switch,
    backend: &support::Server,
    path: &str,
) -> Sender {
    let client = guard.reqwest(
        reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(switch.clone())
            .connector_layer(guard.reqwest_connector_layer())
            .build()
            .expect("reqwest client"),
    );
    let url = format!("http://localhost:{}{path}", backend.addr.port());
    boxed(move || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let request = reqwest::Request::new(reqwest::Method::GET, url.parse()?);
            client.execute(request).await?.bytes().await?;
            Ok(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_http1_follows_a_moved_host_with_max_connection_age() {
    let (a, b) = backends(Wire::Http1).await;
    let switch = Switch::new(A);
    let guard = PoolGuard::builder().max_per_host(4).build();
    let send = reqwest_send(&guard, &switch, &b, "/bytes/100");
    let kept = switch_under_load(&switch, &a, &b, send).await;
    println!("reqwest without max_connection_age: {kept:?}");
    assert_eq!(kept.errors, 0);
    assert_eq!(
        kept.b_total, 0,
        "B gets none of a client that keeps its connections"
    );

    let (a, b) = backends(Wire::Http1).await;
    let switch = Switch::new(A);
    let guard = PoolGuard::builder()
        .max_per_host(4)
        .max_connection_age(Duration::from_secs(1))
        .build();
    let send = reqwest_send(&guard, &switch, &b, "/bytes/100");
    let moved = switch_under_load(&switch, &a, &b, send).await;
    println!("reqwest with max_connection_age(1s): {moved:?}");
    assert_eq!(moved.errors, 0);
    let (late_a, late_b) = moved.late;
    assert!(late_b > 0);
    assert!(
        late_b * 100 >= (late_a + late_b) * 95,
        "from 2 s after the switch, {late_b} of {} requests reached B",
        late_a + late_b
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_http1_max_requests_per_connection_rotates_every_50() {
    let server = support::serve().await;
    let switch = Switch::new(A);
    let guard = PoolGuard::builder().max_requests_per_connection(50).build();
    let send = reqwest_send(&guard, &switch, &server, "/bytes/100");
    for _ in 0..1000 {
        send().await.expect("request");
    }
    settle(|| server.stats.open() == 0).await;
    println!(
        "reqwest: {} connections for {} requests, {} open",
        server.stats.accepted(),
        server.stats.requests(),
        server.stats.open()
    );
    assert_eq!(server.stats.requests(), 1000);
    assert_eq!(server.stats.accepted(), 1000usize.div_ceil(50));
    assert_eq!(
        server.stats.open(),
        0,
        "the last connection closed after its 50th"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_http1_short_ages_under_load_lose_nothing() {
    let server = support::serve().await;
    let switch = Switch::new(A);
    let guard = PoolGuard::builder()
        .max_per_host(10)
        .max_connection_age(SHORT_AGE)
        .build();
    let send = reqwest_send(&guard, &switch, &server, "/bytes/16384");
    let run = drive_past_ages(send, SHORT_AGE, 5000).await;
    let closed = server.stats.accepted() - server.stats.open();
    println!(
        "reqwest: {run:?}, {} connections, {closed} closed",
        server.stats.accepted()
    );
    assert_eq!(run.errors, 0);
    assert!(run.ok >= 5000);
    assert_eq!(server.stats.requests(), run.ok, "each request sent once");
    assert!(closed > 0, "connections retired during the load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_idle_closes_an_idle_http2_connection() {
    let server = support::serve_with(support::Options {
        http2: true,
        ..Default::default()
    })
    .await;
    let guard = PoolGuard::builder().build();
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let send = sender(
        guard.layer().layer(client),
        Method::GET,
        server.uri("/bytes/100"),
        Body::Read,
    );
    for _ in 0..10 {
        send().await.expect("request");
    }
    assert_eq!(server.stats.accepted(), 1);
    assert_eq!(server.stats.open(), 1);

    let asked = tokio::time::Instant::now();
    guard.close_idle();
    settle(|| server.stats.open() == 0).await;
    let took = asked.elapsed();
    println!("HTTP/2 closed in {took:?}");
    assert_eq!(server.stats.open(), 0, "the idle HTTP/2 connection closed");
    assert!(took < Duration::from_millis(200), "{took:?}");
    // The next request dials, and succeeds.
    send().await.expect("request");
    assert_eq!(server.stats.accepted(), 2);
    settle(|| guard.metrics().snapshot().closes.get(CloseReason::Evicted) == 1).await;
    assert_eq!(
        guard.metrics().snapshot().closes.get(CloseReason::Evicted),
        1
    );
}
