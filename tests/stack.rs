//! The one-stop `PoolGuard` end to end, for hyper-util and reqwest, against
//! loopback servers that count what they accept.
#![cfg(all(feature = "hyper-util", feature = "reqwest"))]

use poolguard_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{PoolGuard, QueueFull, QueueTimeout};
use support::drive;
use tower::ServiceExt;

fn guard(n: usize) -> PoolGuard {
    PoolGuard::builder().max_per_host(n).build()
}

fn hyper_stack(
    guard: &PoolGuard,
    idle: usize,
) -> poolguard::Guarded<Client<poolguard::GuardedConnector<HttpConnector>, Empty<Bytes>>> {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build(guard.connector(HttpConnector::new()));
    tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client)
}

fn reqwest_client(guard: &PoolGuard, idle: usize) -> poolguard::reqwest::GuardedClient {
    guard.reqwest(
        reqwest::Client::builder()
            .pool_max_idle_per_host(idle)
            .connector_layer(guard.reqwest_connector_layer())
            .build()
            .expect("reqwest client"),
    )
}

/// What a caller does with each response.
#[derive(Clone, Copy, Debug)]
enum Use {
    /// Drop the body right after the headers.
    Drop,
    /// Read the body to its end.
    Read,
}

fn hyper_send(
    svc: poolguard::Guarded<Client<poolguard::GuardedConnector<HttpConnector>, Empty<Bytes>>>,
    uri: http::Uri,
    usage: Use,
) -> impl Fn() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), poolguard::BoxError>> + Send>,
> + Clone
       + Send
       + 'static {
    move || {
        let (svc, uri) = (svc.clone(), uri.clone());
        Box::pin(async move {
            let req = http::Request::get(uri).body(Empty::new())?;
            let response = svc.oneshot(req).await?;
            match usage {
                Use::Drop => drop(response),
                Use::Read => {
                    response.into_body().collect().await?;
                }
            }
            Ok(())
        })
    }
}

fn reqwest_send(
    client: poolguard::reqwest::GuardedClient,
    url: String,
    usage: Use,
) -> impl Fn() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), poolguard::BoxError>> + Send>,
> + Clone
       + Send
       + 'static {
    move || {
        let (client, url) = (client.clone(), url.clone());
        Box::pin(async move {
            let req = reqwest::Request::new(reqwest::Method::GET, url.parse()?);
            let response = client.execute(req).await?;
            match usage {
                Use::Drop => drop(response),
                Use::Read => {
                    response.bytes().await?;
                }
            }
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_drops_reuse_connections() {
    for path in ["/bytes/5", "/bytes/65536"] {
        let server = support::serve().await;
        let g = guard(10);
        let run = drive(
            8,
            1000,
            0,
            hyper_send(hyper_stack(&g, 10), server.uri(path), Use::Drop),
        )
        .await;
        let snap = g.metrics().snapshot();
        let accepts = server.stats.accepted();
        println!(
            "hyper-util, {path} dropped: {run:?}, accepts {accepts}, reuse {:.3}",
            snap.reuse_rate()
        );
        assert_eq!(run.ok, 1000);
        assert_eq!(run.errors, 0);
        assert!(accepts <= 16, "{accepts} accepts");
        assert_eq!(snap.connections_opened, accepts as u64);

        let server = support::serve().await;
        let g = guard(10);
        let run = drive(
            8,
            1000,
            0,
            reqwest_send(reqwest_client(&g, 10), server.url(path), Use::Drop),
        )
        .await;
        let snap = g.metrics().snapshot();
        let accepts = server.stats.accepted();
        println!(
            "reqwest, {path} dropped: {run:?}, accepts {accepts}, reuse {:.3}",
            snap.reuse_rate()
        );
        assert_eq!(run.ok, 1000);
        assert_eq!(run.errors, 0);
        assert!(accepts <= 16, "{accepts} accepts");
        assert_eq!(snap.connections_opened, accepts as u64, "dials counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursty_load_stays_within_n() {
    let server = support::serve().await;
    let g = guard(10);
    let run = drive(
        100,
        4000,
        20,
        hyper_send(hyper_stack(&g, 10), server.uri("/bytes/512"), Use::Read),
    )
    .await;
    let accepts = server.stats.accepted();
    println!("bursty, guarded hyper-util N=10: {run:?}, accepts {accepts}");
    assert_eq!(run.ok, 4000);
    assert_eq!(run.errors, 0);
    assert!(accepts <= 10, "{accepts} accepts");
    assert_eq!(g.metrics().snapshot().connections_opened, accepts as u64);
    assert_eq!(g.metrics().snapshot().in_flight, 0);

    let server = support::serve().await;
    let g = guard(10);
    let run = drive(
        100,
        4000,
        20,
        reqwest_send(reqwest_client(&g, 10), server.url("/bytes/512"), Use::Read),
    )
    .await;
    let accepts = server.stats.accepted();
    println!("bursty, guarded reqwest N=10 (request level): {run:?}, accepts {accepts}");
    assert_eq!(run.ok, 4000);
    assert_eq!(run.errors, 0);
    assert!(server.stats.peak() <= 10);
    assert_eq!(g.metrics().snapshot().connections_opened, accepts as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_stays_within_n() {
    let options = support::Options {
        delay: Duration::from_millis(5),
        ..Default::default()
    };
    let server = support::serve_with(options.clone()).await;
    let g = guard(10);
    let run = drive(
        1000,
        5000,
        0,
        hyper_send(hyper_stack(&g, 10), server.uri("/bytes/512"), Use::Read),
    )
    .await;
    let accepts = server.stats.accepted();
    println!(
        "flood, guarded hyper-util N=10: {run:?}, accepts {accepts}, peak {}",
        server.stats.peak()
    );
    assert_eq!(run.ok, 5000);
    assert_eq!(run.errors, 0);
    assert!(accepts <= 10, "{accepts} accepts");
    assert!(server.stats.peak() <= 10);

    let server = support::serve_with(options).await;
    let g = guard(10);
    let run = drive(
        1000,
        5000,
        0,
        reqwest_send(reqwest_client(&g, 10), server.url("/bytes/512"), Use::Read),
    )
    .await;
    let accepts = server.stats.accepted();
    println!(
        "flood, guarded reqwest N=10 (request level): {run:?}, accepts {accepts}, peak {}",
        server.stats.peak()
    );
    assert_eq!(run.ok, 5000);
    assert_eq!(run.errors, 0);
    assert!(server.stats.peak() <= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_errors_surface_through_execute() {
    let server = support::serve().await;
    let g = PoolGuard::builder()
        .max_per_host(1)
        .max_queued(1)
        .queue_timeout(Duration::from_millis(50))
        .build();
    let client = reqwest_client(&g, 1);
    let get = || {
        reqwest::Request::new(
            reqwest::Method::GET,
            server.url("/trickle").parse().unwrap(),
        )
    };
    let held = client.execute(get()).await.expect("first");
    let waiting = tokio::spawn({
        let client = client.clone();
        let req = get();
        async move { client.execute(req).await }
    });
    while g.metrics().snapshot().queued == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let full = client.execute(get()).await.expect_err("queue full");
    assert!(full.downcast_ref::<QueueFull>().is_some(), "{full}");
    let timeout = waiting.await.expect("task").expect_err("queue timeout");
    assert!(
        timeout.downcast_ref::<QueueTimeout>().is_some(),
        "{timeout}"
    );
    drop(held);
    let snap = g.metrics().snapshot();
    assert_eq!((snap.queue_full, snap.queue_timeout), (1, 1));
}
