//! HTTP/2 through the guard, against loopback servers that count what they
//! accept and how many requests they hold at once.
#![cfg(all(feature = "hyper-util", feature = "reqwest"))]

use poolguard_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::PoolGuard;
use support::{sender, Body};

type Stack = poolguard::Guarded<Client<poolguard::GuardedConnector<HttpConnector>, Empty<Bytes>>>;

/// hyper-util speaking HTTP/2 with prior knowledge (h2c), behind `guard`.
fn h2c_stack(guard: &PoolGuard) -> Stack {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(guard.connector(HttpConnector::new()));
    tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client)
}

/// Bare hyper-util speaking h2c.
fn h2c_bare() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn h2c_server(options: support::Options) -> support::Server {
    support::serve_with(support::Options {
        http2: true,
        ..options
    })
    .await
}

/// 100 GETs at once through `guard` to an h2c server whose handler takes
/// `delay` (after `warm` GETs one by one); returns the connections the
/// server accepted and the most requests it held at once.
async fn burst_of_100(guard: &PoolGuard, delay: Duration, warm: usize) -> (usize, usize) {
    let server = h2c_server(support::Options {
        delay,
        ..Default::default()
    })
    .await;
    let send = sender(
        h2c_stack(guard),
        Method::GET,
        server.uri("/bytes/10"),
        Body::Read,
    );
    assert_eq!(support::drive(1, warm, 0, send.clone()).await.errors, 0);
    assert_eq!(support::drive(100, 100, 0, send).await.errors, 0);
    let (accepted, peak) = (server.stats.accepted(), server.stats.peak());
    println!("accepted {accepted}, peak at the server {peak}");
    (accepted, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_not_capped_by_max_per_host() {
    // A slow handler: every request the client lets through is at the
    // server at once. One request first, so that the protocol is known.
    let guard = PoolGuard::builder().max_per_host(10).build();
    let (accepted, peak) = burst_of_100(&guard, Duration::from_millis(500), 1).await;
    assert_eq!(accepted, 1, "one connection");
    assert_eq!(peak, 100, "all 100 streams at once, not max_per_host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_per_host_bounds_an_http2_host() {
    let guard = PoolGuard::builder()
        .max_per_host(4)
        .max_streams_per_host(20)
        .build();
    let (accepted, peak) = burst_of_100(&guard, Duration::from_millis(300), 0).await;
    assert_eq!(accepted, 1, "one connection");
    assert_eq!(peak, 20, "max_streams_per_host, exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_early_drops_are_reset_and_lose_no_request() {
    const TOTAL: usize = 2000;
    // A server for each client: its counts are that client's alone.
    let (bare_server, server) = (
        h2c_server(support::Options::default()).await,
        h2c_server(support::Options::default()).await,
    );
    // 64 KiB in 1 KiB frames: a body dropped right after its headers has
    // not all arrived, and bare, every such drop resets its stream.
    const PATH: &str = "/chunked/65536";
    let bare = sender(h2c_bare(), Method::GET, bare_server.uri(PATH), Body::Drop);
    let bare_run = support::drive(8, TOTAL, 0, bare).await;
    let bare_accepts = bare_server.stats.accepted();

    // On a tracked HTTP/2 connection a dropped body's stream is reset, not
    // drained: the connector counts the resets the client writes and takes
    // the connection out of the pool after 512, before h2's own limit (1024
    // over a connection's life) would end it with every request on it.
    let guard = PoolGuard::builder().build();
    let guarded = sender(h2c_stack(&guard), Method::GET, server.uri(PATH), Body::Drop);
    let run = support::drive(8, TOTAL, 0, guarded).await;
    let accepts = server.stats.accepted();
    let snap = guard.metrics().snapshot();
    println!(
        "bare: {} failed, {} connections; guarded: {} failed, {} connections, \
         {} streams reset, {} drains completed",
        bare_run.errors,
        bare_accepts,
        run.errors,
        accepts,
        snap.drains_skipped.http2,
        snap.drains_completed,
    );
    assert_eq!(
        run.errors, 0,
        "no request lost guarded: h2 never ended a connection"
    );
    assert_eq!(run.ok, TOTAL);
    assert!(
        snap.drains_skipped.http2 > 0,
        "streams are reset, not drained"
    );
    // A connection leaves the pool after 512 resets the client wrote (h2
    // writes a few per dropped stream: its cancel, and its answers to
    // frames of streams it forgot): at most one dial per 100 requests.
    assert!(
        accepts <= TOTAL / 100,
        "{accepts} connections for {TOTAL} early drops"
    );
}

/// A server for each client, each ending every connection gracefully
/// after 100 streams.
async fn goaway_servers() -> (support::Server, support::Server) {
    let goaway = || {
        h2c_server(support::Options {
            goaway_after: 100,
            ..Default::default()
        })
    };
    (goaway().await, goaway().await)
}

/// How many requests of ids `0..total` the server saw not at all, and how
/// many it saw more than once.
fn missing_and_repeated(server: &support::Server, total: usize) -> (usize, usize) {
    let ids = server.stats.ids.lock().unwrap();
    let missing = (0..total)
        .filter(|id| !ids.contains_key(&id.to_string()))
        .count();
    let repeated = ids.values().filter(|n| **n > 1).count();
    (missing, repeated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_idempotent_request_is_lost_to_a_graceful_goaway() {
    const TOTAL: usize = 3000;
    const PATH: &str = "/bytes/100";
    let (bare_server, server) = goaway_servers().await;
    let bare = sender(h2c_bare(), Method::GET, bare_server.uri(PATH), Body::Read);
    let bare_run = support::drive(50, TOTAL, 0, bare).await;

    let guard = PoolGuard::builder().build();
    let guarded = sender(h2c_stack(&guard), Method::GET, server.uri(PATH), Body::Read);
    let run = support::drive(50, TOTAL, 0, guarded).await;
    let snap = guard.metrics().snapshot();
    // A request whose handler starts late is still counted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (missing, repeated) = missing_and_repeated(&server, TOTAL);
    println!(
        "bare: {} lost of {TOTAL} ({} hung); guarded: {} lost ({} hung), {} retried as not \
         processed ({} succeeded, {} failed); the server missed {missing} and saw {repeated} twice",
        bare_run.errors,
        bare_run.hung,
        run.errors,
        run.hung,
        snap.retries_not_processed,
        snap.retries_succeeded,
        snap.retries_failed,
    );
    // No request fails. hyper-util's HTTP/2 client, bare as well as
    // guarded, now and then leaves a request hanging across these GOAWAYs
    // (seen: 27 in one bare run, 1 in 30 guarded runs under load); a hung
    // request is not an error poolguard could retry safely, so it is
    // counted apart, and it is the only way the server may miss a request.
    assert_eq!(
        run.errors.saturating_sub(run.hung),
        0,
        "no request failed guarded"
    );
    assert!(
        missing <= run.hung,
        "the server saw every request that ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_sent_twice_across_a_goaway() {
    const TOTAL: usize = 3000;
    let (_, server) = goaway_servers().await;
    let guard = PoolGuard::builder().build();
    let guarded = sender(
        h2c_stack(&guard),
        Method::POST,
        server.uri("/bytes/100"),
        Body::Read,
    );
    let run = support::drive(50, TOTAL, 0, guarded).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (missing, repeated) = missing_and_repeated(&server, TOTAL);
    println!(
        "POST across GOAWAYs: {} failed, {} retried as never sent; the server \
         missed {missing} and saw {repeated} twice",
        run.errors,
        guard.metrics().snapshot().retries_not_processed
    );
    assert_eq!(repeated, 0, "no POST processed twice");
    assert!(
        missing <= run.errors,
        "a request that succeeded was seen by the server"
    );
}
