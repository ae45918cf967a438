//! HTTP/2 through the guard, against loopback servers that count what they
//! accept and how many requests they hold at once.
#![cfg(all(feature = "hyper-util", feature = "reqwest"))]

use poolguard_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::PoolGuard;
use tower::ServiceExt;

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

/// Sends `n` GETs at once and reads every body; returns the errors.
async fn all_at_once(svc: &Stack, uri: http::Uri, n: usize) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (svc, uri) = (svc.clone(), uri.clone());
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(uri).body(Empty::new())?;
            let response = svc.oneshot(req).await?;
            response.into_body().collect().await?;
            Ok::<_, poolguard::BoxError>(())
        }));
    }
    let mut errors = 0;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(20), t).await {
            Ok(Ok(Ok(()))) => {}
            other => {
                eprintln!("request failed: {other:?}");
                errors += 1;
            }
        }
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_not_capped_by_max_per_host() {
    // A slow handler: every request the client lets through is at the
    // server at once.
    let server = support::serve_with(support::Options {
        delay: Duration::from_millis(500),
        http2: true,
        ..Default::default()
    })
    .await;
    let guard = PoolGuard::builder().max_per_host(10).build();
    let svc = h2c_stack(&guard);
    // One request first, so that the host's protocol is known.
    assert_eq!(all_at_once(&svc, server.uri("/bytes/10"), 1).await, 0);
    assert_eq!(all_at_once(&svc, server.uri("/bytes/10"), 100).await, 0);
    println!(
        "accepted {}, peak at the server {}",
        server.stats.accepted(),
        server.stats.peak()
    );
    assert_eq!(server.stats.accepted(), 1, "one connection");
    assert_eq!(
        server.stats.peak(),
        100,
        "all 100 streams at once, not max_per_host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_per_host_bounds_an_http2_host() {
    let server = support::serve_with(support::Options {
        delay: Duration::from_millis(300),
        http2: true,
        ..Default::default()
    })
    .await;
    let guard = PoolGuard::builder()
        .max_per_host(4)
        .max_streams_per_host(20)
        .build();
    let svc = h2c_stack(&guard);
    assert_eq!(all_at_once(&svc, server.uri("/bytes/10"), 100).await, 0);
    println!(
        "accepted {}, peak at the server {}",
        server.stats.accepted(),
        server.stats.peak()
    );
    assert_eq!(server.stats.accepted(), 1, "one connection");
    assert_eq!(server.stats.peak(), 20, "max_streams_per_host, exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_early_drops_are_drained_and_lose_no_request() {
    const TOTAL: usize = 2000;
    let server = support::serve_with(support::Options {
        delay: Duration::ZERO,
        http2: true,
        ..Default::default()
    })
    .await;
    // 64 KiB in 1 KiB frames: a body dropped right after its headers has
    // not all arrived, and bare, every such drop resets its stream.
    let uri = server.uri("/chunked/65536");
    let bare = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let send = {
        let uri = uri.clone();
        move || {
            let (bare, uri) = (bare.clone(), uri.clone());
            async move {
                drop(bare.get(uri).await?);
                Ok(())
            }
        }
    };
    let bare_run = support::drive(8, TOTAL, 0, send).await;
    let bare_accepts = server.stats.accepted();

    let guard = PoolGuard::builder().build();
    let svc = h2c_stack(&guard);
    let send = move || {
        let (svc, uri) = (svc.clone(), uri.clone());
        async move {
            let req = http::Request::get(uri).body(Empty::new())?;
            drop(svc.oneshot(req).await?);
            Ok(())
        }
    };
    let run = support::drive(8, TOTAL, 0, send).await;
    let accepts = server.stats.accepted() - bare_accepts;
    let snap = guard.metrics().snapshot();
    println!(
        "bare: {} failed, {} connections; guarded: {} failed, {} connections, \
         {} drains completed, {} gave up",
        bare_run.errors,
        bare_accepts,
        run.errors,
        accepts,
        snap.drains_completed,
        snap.drains_gave_up_bytes + snap.drains_gave_up_time
    );
    assert_eq!(run.errors, 0, "no request lost guarded");
    assert_eq!(accepts, 1, "one connection, never closed by h2 itself");
    assert_eq!(run.ok, TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_lost_to_a_graceful_goaway() {
    const TOTAL: usize = 3000;
    // Every connection ends gracefully after 100 streams.
    let server = support::serve_with(support::Options {
        http2: true,
        goaway_after: 100,
        ..Default::default()
    })
    .await;
    let uri = server.uri("/bytes/100");
    let bare = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let send = {
        let uri = uri.clone();
        move || {
            let (bare, uri) = (bare.clone(), uri.clone());
            async move {
                bare.get(uri).await?.into_body().collect().await?;
                Ok(())
            }
        }
    };
    let bare_run = support::drive(50, TOTAL, 0, send).await;
    let bare_requests = server.stats.requests();

    let guard = PoolGuard::builder().build();
    let svc = h2c_stack(&guard);
    let send = move || {
        let (svc, uri) = (svc.clone(), uri.clone());
        async move {
            // POST: not idempotent, and still safe to send again when the
            // server did not process it.
            let req = http::Request::post(uri).body(Empty::new())?;
            svc.oneshot(req).await?.into_body().collect().await?;
            Ok(())
        }
    };
    let run = support::drive(50, TOTAL, 0, send).await;
    let requests = server.stats.requests() - bare_requests;
    let snap = guard.metrics().snapshot();
    println!(
        "bare: {} lost of {TOTAL}; guarded: {} lost, {} retried as not processed \
         ({} succeeded, {} failed), server saw {requests}",
        bare_run.errors,
        run.errors,
        snap.retries_not_processed,
        snap.retries_succeeded,
        snap.retries_failed,
    );
    assert_eq!(run.errors, 0, "no request lost guarded");
    assert_eq!(
        requests, TOTAL,
        "each request processed once: a retry only for what the server never saw"
    );
}
