//! TLS as users run it: hyper-util with hyper-rustls inside the
//! `GuardedConnector`, reqwest with rustls and ALPN, against loopback
//! servers with a certificate made at test time. Dials are counted at the
//! server.
#![cfg(all(feature = "hyper-util", feature = "reqwest"))]

use poolguard_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{BoxError, PoolGuard};
use tower::ServiceExt;

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
    let server = tls_server(false).await;
    let uri = server.uri("/bytes/65536");
    let bare = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https(&server));
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
    let bare_dials = server.stats.accepted();

    let guard = PoolGuard::builder().build();
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(guard.connector(https(&server)));
    let svc = tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client);
    let send = move || {
        let (svc, uri) = (svc.clone(), uri.clone());
        async move {
            let req = http::Request::get(uri).body(Empty::new())?;
            drop(svc.oneshot(req).await?);
            Ok::<_, BoxError>(())
        }
    };
    let run = support::drive(8, TOTAL, 0, send).await;
    let dials = server.stats.accepted() - bare_dials;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alpn_h2_burst_opens_one_connection() {
    let server = support::serve_tls_with(support::Options {
        http2: true,
        delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let uri = server.url("/bytes/100");
    let burst = |client: reqwest::Client| {
        let uri = uri.clone();
        async move {
            let mut tasks = Vec::new();
            for _ in 0..100 {
                let (client, uri) = (client.clone(), uri.clone());
                tasks.push(tokio::spawn(async move {
                    let response = client.get(uri).send().await?;
                    assert_eq!(response.version(), http::Version::HTTP_2);
                    response.bytes().await?;
                    Ok::<_, BoxError>(())
                }));
            }
            let mut errors = 0;
            for t in tasks {
                if !matches!(t.await, Ok(Ok(()))) {
                    errors += 1;
                }
            }
            errors
        }
    };
    let bare = reqwest_client(&server, reqwest::Client::builder());
    let bare_errors = burst(bare).await;
    let bare_dials = server.stats.accepted();

    let guard = PoolGuard::builder().build();
    let plain = reqwest_client(
        &server,
        reqwest::Client::builder().connector_layer(guard.reqwest_connector_layer()),
    );
    let guarded = guard.reqwest(plain.clone());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (client, plain, uri) = (guarded.clone(), plain.clone(), uri.clone());
        tasks.push(tokio::spawn(async move {
            let response = client.execute(plain.get(uri).build()?).await?;
            assert_eq!(response.version(), http::Version::HTTP_2);
            response.bytes().await?;
            Ok::<_, BoxError>(())
        }));
    }
    let mut errors = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            errors += 1;
        }
    }
    let dials = server.stats.accepted() - bare_dials;
    println!(
        "100 concurrent GETs, ALPN h2: bare {bare_dials} connections ({bare_errors} failed), \
         guarded {dials} ({errors} failed), peak at the server {}",
        server.stats.peak()
    );
    assert_eq!(errors, 0);
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
    let server = tls_server(true).await;
    // 64 KiB in 1 KiB frames: not all there when the body is dropped.
    let uri = server.url("/chunked/65536");
    let bare = reqwest_client(&server, reqwest::Client::builder());
    let send = {
        let uri = uri.clone();
        move || {
            let (bare, uri) = (bare.clone(), uri.clone());
            async move {
                let response = bare.get(uri).send().await?;
                assert_eq!(response.version(), http::Version::HTTP_2);
                drop(response);
                Ok(())
            }
        }
    };
    let bare_run = support::drive(8, TOTAL, 0, send).await;
    let bare_dials = server.stats.accepted();

    let guard = PoolGuard::builder().build();
    let plain = reqwest_client(
        &server,
        reqwest::Client::builder().connector_layer(guard.reqwest_connector_layer()),
    );
    let guarded = guard.reqwest(plain.clone());
    let send = move || {
        let (guarded, plain, uri) = (guarded.clone(), plain.clone(), uri.clone());
        async move {
            drop(guarded.execute(plain.get(uri).build()?).await?);
            Ok::<_, BoxError>(())
        }
    };
    let run = support::drive(8, TOTAL, 0, send).await;
    let dials = server.stats.accepted() - bare_dials;
    println!(
        "reqwest, TLS + ALPN h2, {TOTAL} early drops: bare {} failed over {bare_dials} \
         connections; guarded {} failed over {dials}",
        bare_run.errors, run.errors
    );
    assert_eq!(run.errors, 0);
    assert_eq!(dials, 1);
}
