//! Minimal real usage with reqwest.
//!
//! ```sh
//! cargo run --example reqwest_client -- http://127.0.0.1:8080/
//! ```
//!
//! Without a URL, it starts a loopback server of its own and talks to that.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use poolguard::PoolGuard;

#[tokio::main]
async fn main() -> Result<(), poolguard::BoxError> {
    let url = match std::env::args().nth(1) {
        Some(url) => url,
        None => local_server().await?,
    };

    let guard = PoolGuard::builder().max_per_host(10).build();
    let client = guard.reqwest(
        reqwest::Client::builder()
            .pool_max_idle_per_host(10)
            .connector_layer(guard.reqwest_connector_layer())
            .build()?,
    );

    for i in 0..5 {
        let request = reqwest::Request::new(reqwest::Method::GET, url.parse()?);
        let response: reqwest::Response = client.execute(request).await?;
        println!("request {i}: {}", response.status());
        if i % 2 == 0 {
            drop(response); // drained in the background, connection kept
        } else {
            println!("  {} bytes", response.bytes().await?.len());
        }
    }

    let snap = guard.metrics().snapshot();
    println!(
        "requests {}, connections opened {}, reuse rate {:.0} %",
        snap.requests,
        snap.connections_opened,
        snap.reuse_rate() * 100.0
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
