//! Minimal real usage with hyper-util's legacy client.
//!
//! ```sh
//! cargo run --example hyper_client -- http://127.0.0.1:8080/
//! ```
//!
//! Without a URL, it starts a loopback server of its own and talks to that.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use poolguard::{ConnInfo, PoolGuard};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), poolguard::BoxError> {
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => local_server().await?,
    };

    let guard = PoolGuard::builder()
        .max_per_host(10)
        .max_queued(1024)
        .queue_timeout(Duration::from_secs(30))
        .drain_max_bytes(64 * 1024)
        .drain_max_time(Duration::from_millis(100))
        .build();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(10)
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client);

    for i in 0..5 {
        let request = http::Request::get(url.as_str()).body(Empty::new())?;
        let response = svc.clone().oneshot(request).await?;
        let info = response.extensions().get::<ConnInfo>().copied();
        println!("request {i}: {} on {info:?}", response.status());
        if i % 2 == 0 {
            // Only the status mattered: dropping the body no longer costs
            // the connection.
            drop(response);
        } else {
            let body = response.into_body().collect().await?.to_bytes();
            println!("  {} bytes", body.len());
        }
    }

    let snap = guard.metrics().snapshot();
    println!(
        "requests {}, connections opened {}, reuse rate {:.0} %, drains completed {}",
        snap.requests,
        snap.connections_opened,
        snap.reuse_rate() * 100.0,
        snap.drains_completed
    );
    Ok(())
}

/// A loopback server answering every request with 64 KiB.
async fn local_server() -> Result<String, poolguard::BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        vec![b'x'; 64 * 1024],
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}/"))
}
