//! The cap across hosts (`max_total`) against a real server on loopback:
//! the server's counts are the truth.

#![cfg(feature = "hyper-util")]

use poolguard_testkit as support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{BoxError, PoolGuard};
use tower::{Layer, ServiceExt};

/// `tasks` tasks crawl `requests` pages spread over `hosts` host names of
/// one server (the next page goes to the next host, round the hosts),
/// reading each body; returns the errors.
async fn crawl(guard: &PoolGuard, port: u16, hosts: usize, tasks: usize, requests: usize) -> usize {
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(
        guard.connector(HttpConnector::new_with_resolver(support::Loopback)),
    );
    let svc = guard.layer().layer(client);
    let next = Arc::new(AtomicUsize::new(0));
    let send = move || {
        let (svc, i) = (svc.clone(), next.fetch_add(1, Ordering::Relaxed));
        async move {
            let uri: http::Uri =
                format!("http://host-{}.test:{port}/bytes/10", i % hosts).parse()?;
            let resp = svc
                .oneshot(http::Request::get(uri).body(Empty::new())?)
                .await?;
            resp.into_body().collect().await?;
            Ok::<_, BoxError>(())
        }
    };
    support::drive(tasks, requests, 0, send).await.errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_total_bounds_requests_in_flight_across_hosts() {
    // Four host names of one slow server, 40 tasks: at most 3 requests in
    // flight across the hosts at the server, and the load reaches 3.
    let slow = || {
        support::serve_with(support::Options {
            delay: Duration::from_millis(10),
            count_open: true,
            ..Default::default()
        })
    };
    let server = slow().await;
    let guard = PoolGuard::builder().max_per_host(10).max_total(3).build();
    let errors = crawl(&guard, server.addr.port(), 4, 40, 400).await;
    println!(
        "max_total(3): in flight at most {}, open at most {}, accepts {}",
        server.stats.peak(),
        server.stats.peak_open(),
        server.stats.accepted()
    );
    assert_eq!(errors, 0);
    assert_eq!(
        server.stats.peak(),
        3,
        "the load reaches the cap, never more"
    );

    // The premise: without the cap the same load has more in flight.
    let server = slow().await;
    let guard = PoolGuard::builder().max_per_host(10).build();
    let errors = crawl(&guard, server.addr.port(), 4, 40, 400).await;
    println!(
        "per host only: in flight at most {}, open at most {}",
        server.stats.peak(),
        server.stats.peak_open()
    );
    assert_eq!(errors, 0);
    assert!(server.stats.peak() > 3);
}
