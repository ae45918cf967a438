//! HTTP/2 connections that turn over: a server ending each connection with
//! a graceful `GOAWAY` after a number of streams, as nginx's
//! `keepalive_requests` does. Connections are counted at the server.
#![cfg(all(feature = "hyper-util", feature = "reqwest"))]

use poolguard_testkit as support;

use bytes::Bytes;
use http::Method;
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::PoolGuard;
use support::{sender, Body};
use tower::Layer;

fn https(server: &support::Server) -> HttpsConnector<HttpConnector> {
    HttpsConnectorBuilder::new()
        .with_tls_config(server.client_tls(&[]))
        .https_only()
        .enable_all_versions()
        .build()
}

/// A TLS server offering h2 by ALPN that ends each connection after
/// `after` streams.
async fn turning_over(after: usize) -> support::Server {
    support::serve_tls_with(support::Options {
        http2: true,
        goaway_after: after,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_util_dials_once_per_goaway_over_alpn() {
    const TOTAL: usize = 3000;
    const AFTER: usize = 100;
    let (bare_server, server) = (turning_over(AFTER).await, turning_over(AFTER).await);
    let bare = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https(&bare_server));
    let bare_run = support::drive(
        50,
        TOTAL,
        0,
        sender(bare, Method::GET, bare_server.uri("/bytes/100"), Body::Read),
    )
    .await;
    let bare_dials = bare_server.stats.accepted();

    let guard = PoolGuard::builder().max_per_host(10).build();
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(guard.connector(https(&server)));
    let svc = guard.layer().layer(client);
    let run = support::drive(
        50,
        TOTAL,
        0,
        sender(svc, Method::GET, server.uri("/bytes/100"), Body::Read),
    )
    .await;
    let dials = server.stats.accepted();
    let snap = guard.metrics().snapshot();
    println!(
        "{TOTAL} GETs, GOAWAY every {AFTER}: bare {bare_dials} TLS connections ({} failed, {} hung); \
         guarded {dials} ({} failed, {} hung; {} retried as not processed)",
        bare_run.errors, bare_run.hung, run.errors, run.hung, snap.retries_not_processed
    );
    assert_eq!(run.errors, 0, "no request fails guarded");
    // One connection per turnover (30), and at most as many again.
    assert!(
        dials <= 2 * TOTAL / AFTER,
        "guarded opened {dials} connections for {} turnovers",
        TOTAL / AFTER
    );
}
