//! DrainLayer against real hyper servers on loopback: the server's count of
//! accepted connections is the truth about dials.

#![cfg(feature = "hyper-util")]

use poolguard_testkit as support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::drain::{DrainLayer, DrainOutcome};
use tower::{Service, ServiceExt};

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client that never has more than one connection to a host: an accept
/// beyond the first is a connection lost, not one the pool dialed while the
/// last was on its way back (hyper-util's checkout/connect race, which CPU
/// load makes common and no drain can prevent).
fn one_connection_client() -> Client<
    poolguard::GuardedConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
> {
    Client::builder(TokioExecutor::new()).build(poolguard::GuardedConnector::new(
        hyper_util::client::legacy::connect::HttpConnector::new(),
        1,
    ))
}

fn get(uri: &http::Uri) -> Request<Empty<Bytes>> {
    Request::get(uri.clone())
        .body(Empty::new())
        .expect("valid request")
}

/// Sends `n` sequential requests to `path`, dropping each body right after
/// the headers, and returns how many connections the server accepted.
async fn sequential_drops<S, B>(mut svc: S, path: &str, n: usize) -> usize
where
    S: Service<Request<Empty<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
{
    let server = support::serve().await;
    let uri = server.uri(path);
    for _ in 0..n {
        let resp = svc
            .ready()
            .await
            .expect("ready")
            .call(get(&uri))
            .await
            .expect("response");
        assert_eq!(resp.status(), 200);
        drop(resp);
    }
    server.stats.accepted()
}

fn recording() -> (DrainLayer, Arc<Mutex<Vec<DrainOutcome>>>) {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let sink = outcomes.clone();
    let layer = DrainLayer::new().on_drain(move |o: &DrainOutcome| {
        sink.lock().expect("not poisoned").push(o.clone());
    });
    (layer, outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_64k_bodies_reuse_connections() {
    let bare = sequential_drops(client(), "/bytes/65536", 200).await;
    let (layer, outcomes) = recording();
    let guarded = sequential_drops(
        tower::ServiceBuilder::new()
            .layer(layer.clone())
            .service(one_connection_client()),
        "/bytes/65536",
        200,
    )
    .await;
    println!(
        "64 KiB bodies dropped: bare accepts {bare}, guarded accepts {guarded} (200 requests)"
    );
    // The problem: without the layer, nearly every request dials.
    assert!(bare >= 100, "bare client reused more than expected: {bare}");
    // The fix.
    assert!(guarded <= 4, "guarded client dialed {guarded} times");
    drains_finish(&layer).await;
    let outcomes = outcomes.lock().expect("not poisoned");
    assert_eq!(outcomes.len(), 200, "one outcome per early drop");
    assert!(
        outcomes.iter().all(DrainOutcome::is_completed),
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_5_byte_bodies_keep_reusing() {
    let bare = sequential_drops(client(), "/bytes/5", 200).await;
    let (layer, outcomes) = recording();
    let guarded = sequential_drops(
        tower::ServiceBuilder::new()
            .layer(layer.clone())
            .service(one_connection_client()),
        "/bytes/5",
        200,
    )
    .await;
    println!("5 B bodies dropped: bare accepts {bare}, guarded accepts {guarded} (200 requests)");
    assert!(guarded <= 4, "guarded client dialed {guarded} times");
    drains_finish(&layer).await;
    let outcomes = outcomes.lock().expect("not poisoned");
    let inline = outcomes
        .iter()
        .filter(|o| matches!(o, DrainOutcome::Completed { inline: true, .. }))
        .count();
    println!(
        "5 B bodies: {inline} of {} drains finished inline",
        outcomes.len()
    );
    assert!(
        outcomes.iter().all(DrainOutcome::is_completed),
        "{outcomes:?}"
    );
}

/// Waits (bounded) until no drain made by `layer` runs.
async fn drains_finish(layer: &DrainLayer) {
    for _ in 0..500 {
        if layer.running() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} drains still running after 5 s", layer.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ending_bodies_give_up_within_budget() {
    let server = support::serve().await;
    let max_time = Duration::from_millis(50);
    let (layer, outcomes) = recording();
    let layer = layer.max_time(max_time);
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(client());

    for path in ["/trickle", "/endless"] {
        let uri = server.uri(path);
        for _ in 0..10 {
            let resp = svc
                .ready()
                .await
                .expect("ready")
                .call(get(&uri))
                .await
                .expect("response");
            drop(resp);
            // The drop returned while the drain still runs: it never waits
            // for the peer. (Only the trickle's drain is sure to run on:
            // it can end only at `max_time`, while the endless body's can
            // reach its byte budget on another worker before this look.)
            if path == "/trickle" {
                assert!(layer.running() >= 1);
            }
        }
    }
    drains_finish(&layer).await;

    let outcomes = outcomes.lock().expect("not poisoned");
    assert_eq!(outcomes.len(), 20);
    for outcome in outcomes.iter() {
        match outcome {
            DrainOutcome::GaveUpTime { elapsed, .. } => {
                assert!(*elapsed >= max_time, "{elapsed:?}");
                assert!(*elapsed < max_time + Duration::from_secs(1), "{elapsed:?}");
            }
            DrainOutcome::GaveUpBytes { bytes, .. } => assert!(*bytes > 64 * 1024),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    // The trickle can only run out of time; the endless body, of bytes.
    let timed_out = outcomes
        .iter()
        .filter(|o| matches!(o, DrainOutcome::GaveUpTime { .. }))
        .count();
    assert_eq!(timed_out, 10, "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guards_drain_gives_up_when_it_costs_more_than_a_dial_and_a_request_waits() {
    const TOTAL: usize = 200;
    const TASKS: usize = 8;
    let server = support::serve().await;
    let guard = poolguard::PoolGuard::builder().max_per_host(2).build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(
        guard.connector(hyper_util::client::legacy::connect::HttpConnector::new()),
    );
    let svc = tower::Layer::layer(&guard.layer(), client);
    // A byte every 10 ms for ever, dropped after the headers, 8 tasks on 2
    // slots: the next request always waits while a drain holds a slot.
    let send = support::sender(
        svc,
        http::Method::GET,
        server.uri("/trickle"),
        support::Body::Drop,
    );
    let run = support::drive(TASKS, TOTAL, 0, send).await;
    assert_eq!(run.errors, 0);
    // Let the last drains end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = guard.metrics().snapshot();
    let dial = s.hosts.first().and_then(|h| h.dial_cost);
    println!(
        "{} drains gave up for cost, {} for time; dial cost {dial:?}",
        s.drains_gave_up_cost, s.drains_gave_up_time,
    );
    assert!(dial.is_some(), "the connector timed its dials");
    // Only the drains left when no request waited any more (at most one
    // per task) may run to their time budget.
    assert!(
        s.drains_gave_up_time <= TASKS as u64,
        "{} drains held their slot for drain_max_time while requests waited",
        s.drains_gave_up_time
    );
    assert_eq!(
        s.drains_gave_up_cost + s.drains_gave_up_time,
        TOTAL as u64,
        "every drop of an endless body ends in a give-up"
    );
}
