//! What the guard costs a request over a real loopback socket: allocations
//! and time a request, bare and guarded, for hyper-util and reqwest, side
//! by side in one run (issue 28).
//!
//! One current-thread runtime carries the HTTP/1 server and the client, so
//! that the figures are repeatable; instructions come from running one
//! client under callgrind:
//!
//! ```sh
//! cargo run --release --example cost -- --requests 20000 --rounds 5
//! # instructions a request: the difference of two runs, one 1,000 requests longer
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/cost --only "reqwest guarded" --requests 2000 --rounds 1
//! ```
//!
//! Clients: `hyper-util bare` (with the `ReuseMetricsLayer` the demo's bare
//! client has), `hyper-util guarded` (`PoolGuard::layer` over a client on
//! `PoolGuard::connector`), `reqwest bare`, `reqwest layered` (reqwest with
//! the guard's connector layer and retry policy, outside the guard's
//! layers: what reqwest itself costs once a connector layer is set) and
//! `reqwest guarded` (`PoolGuard::reqwest` over that client).

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use poolguard::{Metrics, PoolGuard, ReuseMetricsLayer};
use tower::{Layer, ServiceExt};

/// Counts allocations (and reallocations), to report them per request.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CLIENTS: [&str; 5] = [
    "hyper-util bare",
    "hyper-util guarded",
    "reqwest bare",
    "reqwest layered",
    "reqwest guarded",
];

fn main() {
    let mut requests = 20_000usize;
    let mut rounds = 5usize;
    let mut only: Option<String> = None;
    let mut body = 16usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => requests = args.next().and_then(|s| s.parse().ok()).unwrap_or(requests),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(rounds)
                    .max(1)
            }
            "--only" => only = args.next(),
            "--body" => body = args.next().and_then(|s| s.parse().ok()).unwrap_or(body),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(requests, rounds, only, body));
}

async fn run(requests: usize, rounds: usize, only: Option<String>, body: usize) {
    let payload = Bytes::from(vec![b'x'; body]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                let answer = service_fn(move |_request| {
                    let payload = payload.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(payload))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
    let url = format!("http://{addr}/");
    let uri: http::Uri = url.parse().expect("uri");

    let hyper_bare = ReuseMetricsLayer::new(Metrics::new()).layer(
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new()),
    );
    let guard = PoolGuard::builder().build();
    let hyper_guarded = guard.layer().layer(
        Client::builder(TokioExecutor::new())
            .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new())),
    );
    let reqwest_bare = reqwest::Client::builder().build().expect("client");
    let guard = PoolGuard::builder().build();
    let layered = reqwest::Client::builder()
        .retry(guard.reqwest_retry())
        .connector_layer(guard.reqwest_connector_layer())
        .build()
        .expect("client");
    let reqwest_guarded = guard.reqwest(layered.clone());

    let one = |client: &'static str| {
        let (hyper_bare, hyper_guarded) = (hyper_bare.clone(), hyper_guarded.clone());
        let (reqwest_bare, layered, reqwest_guarded) = (
            reqwest_bare.clone(),
            layered.clone(),
            reqwest_guarded.clone(),
        );
        let (uri, url) = (uri.clone(), url.clone());
        async move {
            let request = || http::Request::get(uri.clone()).body(Empty::<Bytes>::new());
            match client {
                "hyper-util bare" => {
                    let response = hyper_bare.oneshot(request()?).await?;
                    response.into_body().collect().await?;
                }
                "hyper-util guarded" => {
                    let response = hyper_guarded.oneshot(request()?).await?;
                    response.into_body().collect().await?;
                }
                "reqwest bare" => {
                    reqwest_bare.get(&url).send().await?.bytes().await?;
                }
                "reqwest layered" => {
                    layered.get(&url).send().await?.bytes().await?;
                }
                _ => {
                    let request = layered.get(&url).build()?;
                    reqwest_guarded.execute(request).await?.bytes().await?;
                }
            }
            Ok::<_, poolguard::BoxError>(())
        }
    };

    let clients: Vec<&'static str> = CLIENTS
        .iter()
        .copied()
        .filter(|c| only.as_deref().is_none_or(|o| o == *c))
        .collect();
    // Warm up: connections made, pools and caches filled.
    for &client in &clients {
        for _ in 0..100 {
            one(client).await.expect("request");
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    let mut allocations = vec![0f64; clients.len()];
    for _ in 0..rounds {
        for (i, &client) in clients.iter().enumerate() {
            let before = ALLOCATIONS.load(Relaxed);
            let started = Instant::now();
            for _ in 0..requests {
                one(client).await.expect("request");
            }
            let took = started.elapsed().as_secs_f64() * 1e6 / requests as f64;
            let allocated = ALLOCATIONS.load(Relaxed).saturating_sub(before);
            if let Some(t) = times.get_mut(i) {
                t.push(took);
            }
            if let Some(a) = allocations.get_mut(i) {
                *a = allocated as f64 / requests as f64;
            }
        }
    }
    println!(
        "| client | µs a request (median of {rounds} rounds, spread) | allocations a request |"
    );
    println!("|---|---:|---:|");
    for (i, client) in clients.iter().enumerate() {
        let t = &times[i];
        let (lo, hi) = poolguard_testkit::spread(t);
        println!(
            "| {client} | {:.1} ({lo:.1}–{hi:.1}) | {:.1} |",
            poolguard_testkit::median(t),
            allocations[i]
        );
    }
}
