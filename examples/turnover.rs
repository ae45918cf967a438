//! HTTP/2 connections that turn over, measured side by side: nginx (Debian's
//! `nginx-light`, started here on loopback with its own configuration) with
//! TLS + ALPN h2 and `keepalive_requests 100` (a graceful `GOAWAY` every 100
//! requests), 100 tasks, 20,000 GETs per run; each client bare and guarded,
//! alternated (which goes first changes every round), a fresh nginx per run.
//! Connections from nginx's `stub_status`, lost requests from its access
//! log. Prints per client the median req/s with the spread (min–max) and
//! the median of the guarded/bare ratios of each round's pair.
//!
//! ```sh
//! cargo run --release --example turnover -- --rounds 5
//! ```

use poolguard_testkit as support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{BoxError, PoolGuard};
use support::{Nginx, NginxOptions};
use tower::Layer;

const TOTAL: usize = 20_000;
const TASKS: usize = 100;

type Send = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + std::marker::Send>>
        + std::marker::Send
        + Sync,
>;

/// One run's figures.
struct Figures {
    rps: f64,
    connections: u64,
    lost: usize,
}

fn https(
    nginx: &Nginx,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(nginx.client_tls(&[]))
        .https_only()
        .enable_all_versions()
        .build()
}

/// The `send` of `client` (`hyper-util` or `reqwest`, bare or guarded)
/// against `nginx`: a GET with a unique `x-id`, its body read.
fn client(name: &str, guarded: bool, nginx: &Nginx) -> Send {
    let next = Arc::new(AtomicUsize::new(0));
    let url = nginx.url("/bytes/100");
    if name == "hyper-util" {
        let uri = nginx.uri("/bytes/100");
        if guarded {
            let guard = PoolGuard::builder().build();
            let client = Client::builder(TokioExecutor::new())
                .build::<_, Empty<Bytes>>(guard.connector(https(nginx)));
            let send = support::sender(
                guard.layer().layer(client),
                Method::GET,
                uri,
                support::Body::Read,
            );
            return Arc::new(send);
        }
        let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https(nginx));
        return Arc::new(support::sender(
            client,
            Method::GET,
            uri,
            support::Body::Read,
        ));
    }
    let guard = PoolGuard::builder().build();
    let builder = reqwest::Client::builder()
        .tls_backend_preconfigured(nginx.client_tls(&[b"h2", b"http/1.1"]));
    let builder = if guarded {
        builder
            .retry(guard.reqwest_retry())
            .connector_layer(guard.reqwest_connector_layer())
    } else {
        builder
    };
    let plain = builder.build().expect("reqwest client");
    let guarded = guarded.then(|| guard.reqwest(plain.clone()));
    Arc::new(move || {
        let (plain, guarded, url) = (plain.clone(), guarded.clone(), url.clone());
        let id = next.fetch_add(1, Ordering::Relaxed).to_string();
        Box::pin(async move {
            let request = plain.get(url).header("x-id", id).build()?;
            let response = match guarded {
                Some(g) => g.execute(request).await?,
                None => plain.execute(request).await?,
            };
            response.bytes().await?;
            Ok(())
        })
    })
}

async fn run(name: &str, guarded: bool) -> Figures {
    let nginx = Nginx::start(NginxOptions {
        keepalive_requests: 100,
        http2: true,
    });
    let send = client(name, guarded, &nginx);
    let started = Instant::now();
    let _ = support::drive(TASKS, TOTAL, 0, move || send()).await;
    let rps = TOTAL as f64 / started.elapsed().as_secs_f64();
    let ids = nginx.ids();
    let lost = (0..TOTAL)
        .filter(|id| !ids.contains_key(&id.to_string()))
        .count();
    Figures {
        rps,
        connections: nginx.accepted(),
        lost,
    }
}

#[tokio::main]
async fn main() {
    let mut rounds = 5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(rounds);
        }
    }
    support::raise_nofile_limit();
    println!("| client | connections (max) | lost (max) | req/s median | req/s min–max | guarded/bare median (min–max) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for name in ["hyper-util", "reqwest"] {
        let (mut bare, mut guarded) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for g in order {
                let figures = run(name, g).await;
                if g {
                    guarded.push(figures)
                } else {
                    bare.push(figures)
                }
            }
        }
        let ratios: Vec<f64> = bare
            .iter()
            .zip(&guarded)
            .map(|(b, g)| g.rps / b.rps)
            .collect();
        let (lo, hi) = support::spread(&ratios);
        for (label, runs) in [("bare", &bare), ("guarded", &guarded)] {
            let rps: Vec<f64> = runs.iter().map(|f| f.rps).collect();
            let (min, max) = support::spread(&rps);
            let ratio = if label == "guarded" {
                format!("{:.2}× ({lo:.2}–{hi:.2})", support::median(&ratios))
            } else {
                String::new()
            };
            println!(
                "| {name} {label} | {} | {} | {:.0} | {min:.0}–{max:.0} | {ratio} |",
                runs.iter().map(|f| f.connections).max().unwrap_or(0),
                runs.iter().map(|f| f.lost).max().unwrap_or(0),
                support::median(&rps),
            );
        }
    }
}
