//! TLS as users run it: hyper-util with hyper-rustls inside the
//! `GuardedConnector`, reqwest with rustls and ALPN, against loopback
//! servers with a certificate made at test time. Dials are counted at the
//! server.
#![cfg(all(feature = "hyper-util", feature = "reqwest"))]

use poolguard_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{BoxError, PoolGuard};
use support::{sender, Body};
use tower::Layer;

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

fn https(server: &support::Server) -> HttpsConnector<HttpConnector> {
    HttpsConnectorBuilder::new()
        .with_tls_config(server.client_tls(&[]))
        .https_only()
        .enable_all_versions()
        .build()
}

fn reqwest_client(server: &support::Server, builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .tls_backend_preconfigured(server.client_tls(H2_H1))
        .build()
        .expect("reqwest client")
}

async fn tls_server(http2: bool) -> support::Server {
    support::serve_tls_with(support::Options {
        http2,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_http1_early_drops_reuse_connections() {
    const TOTAL: usize = 2000;
    // A server for each client: its counts are that client's alone.
    let (bare_server, server) = (tls_server(false).await, tls_server(false).await);
    let uri = bare_server.uri("/bytes/65536");
    let bare = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https(&bare_server));
    let bare_run = support::drive(8, TOTAL, 0, sender(bare, Method::GET, uri, Body::Drop)).await;
    let bare_dials = bare_server.stats.accepted();

    let guard = PoolGuard::builder().build();
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(guard.connector(https(&server)));
    let svc = guard.layer().layer(client);
    let run = support::drive(
        8,
        TOTAL,
        0,
        sender(svc, Method::GET, server.uri("/bytes/65536"), Body::Drop),
    )
    .await;
    let dials = server.stats.accepted();
    println!(
        "bare: {bare_dials} TLS dials, {} failed; guarded: {dials} TLS dials, {} failed",
        bare_run.errors, run.errors
    );
    assert_eq!(run.errors, 0);
    assert!(
        dials <= 12,
        "guarded dialed {dials} times for {TOTAL} requests"
    );
}

/// A `send` for `support::drive`: a GET of `url` through reqwest (guarded
/// when `guarded` is given, with `plain` building the request), checking
/// that it came over HTTP/2, its body used as `body` says.
fn reqwest_h2(
    plain: reqwest::Client,
    guarded: Option<poolguard::reqwest::GuardedClient>,
    url: String,
    body: Body,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>
       + Clone
       + Send
       + 'static {
    move || {
        let (plain, guarded, url) = (plain.clone(), guarded.clone(), url.clone());
        Box::pin(async move {
            let request = plain.get(url).build()?;
            let response = match guarded {
                Some(guarded) => guarded.execute(request).await?,
                None => plain.execute(request).await?,
            };
            if response.version() != http::Version::HTTP_2 {
                return Err(format!("{:?}, not HTTP/2", response.version()).into());
            }
            if let Body::Read = body {
                response.bytes().await?;
            }
            Ok(())
        })
    }
}

/// A guarded reqwest client of `server` with its dial counter, and the
/// plain client under it.
fn guarded_reqwest(
    server: &support::Server,
    guard: &PoolGuard,
) -> (reqwest::Client, poolguard::reqwest::GuardedClient) {
    let plain = reqwest_client(
        server,
        reqwest::Client::builder().connector_layer(guard.reqwest_connector_layer()),
    );
    (plain.clone(), guard.reqwest(plain))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alpn_h2_burst_opens_one_connection() {
    let slow = || {
        support::serve_tls_with(support::Options {
            http2: true,
            delay: Duration::from_millis(200),
            ..Default::default()
        })
    };
    // A server for each client: its counts are that client's alone.
    let (bare_server, server) = (slow().await, slow().await);
    let url = bare_server.url("/bytes/100");
    let bare = reqwest_client(&bare_server, reqwest::Client::builder());
    let bare_run = support::drive(100, 100, 0, reqwest_h2(bare, None, url, Body::Read)).await;
    let bare_dials = bare_server.stats.accepted();

    let guard = PoolGuard::builder().build();
    let (plain, guarded) = guarded_reqwest(&server, &guard);
    let run = support::drive(
        100,
        100,
        0,
        reqwest_h2(plain, Some(guarded), server.url("/bytes/100"), Body::Read),
    )
    .await;
    let dials = server.stats.accepted();
    println!(
        "100 concurrent GETs, ALPN h2: bare {bare_dials} connections ({} failed), \
         guarded {dials} ({} failed)",
        bare_run.errors, run.errors
    );
    assert_eq!(run.errors, 0);
    assert!(dials <= 2, "guarded opened {dials} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connector_outside_the_guard_is_refused_with_a_clear_error() {
    let server = tls_server(false).await;
    let guard = PoolGuard::builder().build();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let wrong = HttpsConnectorBuilder::new()
        .with_tls_config(server.client_tls(&[]))
        .https_only()
        .enable_http1()
        .wrap_connector(guard.connector(http));
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(wrong);
    let error = client
        .get(server.uri("/bytes/10"))
        .await
        .expect_err("refused");
    let mut chain = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    println!("{chain:#?}");
    assert!(
        chain
            .iter()
            .any(|m| m.contains("wrap the TLS connector instead")),
        "{chain:?}"
    );
    assert_eq!(server.stats.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_h2_early_drops_lose_no_request() {
    const TOTAL: usize = 2000;
    // A server for each client: its counts are that client's alone.
    let (bare_server, server) = (tls_server(true).await, tls_server(true).await);
    // 64 KiB in 1 KiB frames: not all there when the body is dropped.
    let url = bare_server.url("/chunked/65536");
    let bare = reqwest_client(&bare_server, reqwest::Client::builder());
    // Whether h2's limit on resets ends a connection within a round depends
    // on how many resets are pending at once, so on the machine's speed:
    // the premise gets up to three rounds (the dials of the last one count).
    let mut rounds = 0;
    let (bare_run, bare_dials) = loop {
        let before = bare_server.stats.accepted();
        let run = support::drive(
            8,
            TOTAL,
            0,
            reqwest_h2(bare.clone(), None, url.clone(), Body::Drop),
        )
        .await;
        rounds += 1;
        if run.errors > 0 || rounds == 3 {
            break (run, bare_server.stats.accepted() - before);
        }
    };

    // Over HTTP/2 a dropped body's stream is reset, not drained: reqwest's
    // connection cannot be taken out of its pool before h2's own limit on
    // resets ends it, so the guard resends the GETs that end fails.
    let guard = PoolGuard::builder().build();
    let (plain, guarded) = guarded_reqwest(&server, &guard);
    let run = support::drive(
        8,
        TOTAL,
        0,
        reqwest_h2(
            plain,
            Some(guarded),
            server.url("/chunked/65536"),
            Body::Drop,
        ),
    )
    .await;
    let dials = server.stats.accepted();
    let snap = guard.metrics().snapshot();
    println!(
        "reqwest, TLS + ALPN h2, {TOTAL} early drops: bare {} failed over {bare_dials} \
         connections (round {rounds}); guarded {} failed over {dials}; {} streams reset, {} drains \
         completed, {} requests resent ({} not processed), {} refused by the budget",
        bare_run.errors,
        run.errors,
        snap.drains_skipped.http2,
        snap.drains_completed,
        snap.retries_succeeded,
        snap.retries_not_processed,
        snap.retries_budget_exhausted,
    );
    assert!(
        bare_run.errors > 0,
        "the premise: bare reqwest loses requests when h2 ends its connection"
    );
    assert_eq!(run.errors, 0, "no request lost guarded");
    assert_eq!(run.ok, TOTAL);
    assert!(
        snap.drains_skipped.http2 > TOTAL as u64 / 2,
        "streams are reset, not drained"
    );
    // Each end of a connection by h2's limit costs one dial, as bare.
    assert!(
        dials <= bare_dials.max(1) * 2,
        "{dials} connections guarded, {bare_dials} bare"
    );
}
