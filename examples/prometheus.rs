//! poolguard's metrics in Prometheus: a guarded hyper-util client sends
//! requests to a loopback server with `metrics-exporter-prometheus`
//! installed; when they are done, the example scrapes the exporter's
//! `/metrics` over HTTP, prints the text to stdout and exits.
//!
//! ```sh
//! cargo run --example prometheus --features metrics
//! ```
//!
//! The last line (on stderr) gives the server's own count of connections
//! accepted, which `poolguard_connections_opened` must equal.

use poolguard_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{BoxError, PoolGuard};
use tower::{Layer, ServiceExt};

/// What a run gives: the scraped `/metrics` text and the server's accepts.
pub struct Scraped {
    pub text: String,
    /// Connections the server accepted.
    pub accepted: usize,
    /// Connections the server still held open when `/metrics` was scraped.
    pub open: usize,
}

/// Installs the exporter (on a free loopback port), sends `requests`
/// requests through a guard named `example` (8 tasks, 4 connections per
/// host, so that some wait in the queue; every tenth response says
/// `Connection: close`, so that connections close and have durations),
/// then scrapes `/metrics`.
pub async fn run(requests: usize) -> Result<Scraped, BoxError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .install()?;

    let server = support::serve().await;
    let guard = PoolGuard::builder().max_per_host(4).name("example").build();
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = guard.layer().layer(client);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (keep, addr) = (svc.clone(), server.addr);
    let send = move || {
        let (svc, i) = (
            svc.clone(),
            next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        async move {
            let path = if i % 10 == 9 {
                "/close/100"
            } else {
                "/bytes/100"
            };
            let uri: http::Uri = format!("http://{addr}{path}").parse()?;
            let response = svc
                .oneshot(http::Request::get(uri).body(Empty::new())?)
                .await?;
            response.into_body().collect().await?;
            Ok::<_, BoxError>(())
        }
    };
    let run = support::drive(8, requests, 0, send).await;
    if run.errors > 0 {
        return Err(format!("{} requests failed", run.errors).into());
    }
    // Closed connections reach the pool's end a moment after their last
    // response.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let open = server.stats.open();
    let scraper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://127.0.0.1:{port}/metrics").parse()?;
    let body = scraper
        .get(uri)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    drop(keep);
    Ok(Scraped {
        text: String::from_utf8(body.to_vec())?,
        accepted: server.stats.accepted(),
        open,
    })
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let scraped = run(1000).await?;
    println!("{}", scraped.text);
    eprintln!("# the server accepted {} connections", scraped.accepted);
    Ok(())
}
