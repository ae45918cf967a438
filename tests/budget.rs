//! The retry budget against a server that refuses streams
//! (`REFUSED_STREAM`): attempts are counted at the server.
#![cfg(all(feature = "hyper-util", feature = "reqwest"))]

use poolguard_testkit as support;

use bytes::Bytes;
use http::Method;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::PoolGuard;
use support::{sender, Body};
use tower::Layer;

/// Requests a run sends: enough that the budget's floor (10 a second over
/// its 10 s window: 100 retries) weighs little against its 20 %.
const TOTAL: usize = 4000;

fn h2c(
    guard: &PoolGuard,
) -> impl tower::Service<
    http::Request<Empty<Bytes>>,
    Response = http::Response<
        impl http_body::Body<Data = Bytes, Error = impl Into<poolguard::BoxError>> + Send + 'static,
    >,
    Error = poolguard::BoxError,
    Future = impl Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    guard.layer().layer(client)
}

/// A reqwest client speaking h2c, with the guard's retry policy (its
/// budget) or, with `default_retry`, reqwest's default (none).
fn reqwest_h2c(guard: &PoolGuard, default_retry: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .http2_prior_knowledge()
        .connector_layer(guard.reqwest_connector_layer());
    let builder = if default_retry {
        builder
    } else {
        builder.retry(guard.reqwest_retry())
    };
    builder.build().expect("reqwest client")
}

async fn reqwest_run(server: &support::Server, guard: &PoolGuard, own_retry: bool) -> support::Run {
    let plain = reqwest_h2c(guard, own_retry);
    let guarded = guard.reqwest(plain.clone());
    let url = server.url("/");
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    support::drive(50, TOTAL, 0, move || {
        let (plain, guarded, url) = (plain.clone(), guarded.clone(), url.clone());
        // As `support::sender` does: the server refuses a request once.
        let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            guarded
                .execute(plain.get(url).header("x-id", id).build()?)
                .await?
                .bytes()
                .await?;
            Ok(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_every_stream_gets_at_most_a_quarter_more_attempts() {
    // hyper-util.
    let server = support::serve_refusing(1).await;
    let guard = PoolGuard::builder().build();
    let run = support::drive(
        50,
        TOTAL,
        0,
        sender(h2c(&guard), Method::GET, server.uri("/"), Body::Read),
    )
    .await;
    let attempts = server.stats.requests();
    let snap = guard.metrics().snapshot();
    println!(
        "hyper-util: {TOTAL} GETs, every stream refused: {attempts} attempts at the server \
         ({:.3} a request), {} errors, {} retries over the budget",
        attempts as f64 / TOTAL as f64,
        run.errors,
        snap.retries_budget_exhausted
    );
    assert_eq!(run.errors, TOTAL, "every request is answered with an error");
    assert_eq!(run.hung, 0);
    assert!(
        attempts * 4 <= TOTAL * 5,
        "{attempts} attempts for {TOTAL} requests"
    );
    assert!(snap.retries_budget_exhausted > 0);

    // reqwest, with the guard's retry policy.
    let server = support::serve_refusing(1).await;
    let guard = PoolGuard::builder().build();
    let run = reqwest_run(&server, &guard, false).await;
    let attempts = server.stats.requests();
    println!(
        "GuardedClient: {TOTAL} GETs, every stream refused: {attempts} attempts ({:.3} a request), \
         {} errors",
        attempts as f64 / TOTAL as f64,
        run.errors
    );
    assert_eq!(run.errors, TOTAL);
    assert!(
        attempts * 4 <= TOTAL * 5,
        "{attempts} attempts for {TOTAL} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_one_stream_in_ten_loses_nothing() {
    let server = support::serve_refusing(10).await;
    let guard = PoolGuard::builder().build();
    let run = support::drive(
        50,
        TOTAL,
        0,
        sender(h2c(&guard), Method::GET, server.uri("/"), Body::Read),
    )
    .await;
    let attempts = server.stats.requests();
    println!(
        "hyper-util: 1 stream in 10 refused: {attempts} attempts, {} errors",
        run.errors
    );
    assert_eq!(run.errors, 0);

    let server = support::serve_refusing(10).await;
    let guard = PoolGuard::builder().build();
    let run = reqwest_run(&server, &guard, false).await;
    println!(
        "GuardedClient: 1 stream in 10 refused: {} attempts, {} errors",
        server.stats.requests(),
        run.errors
    );
    assert_eq!(run.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_default_retry_has_no_budget() {
    let server = support::serve_refusing(1).await;
    let guard = PoolGuard::builder().build();
    let run = reqwest_run(&server, &guard, true).await;
    let attempts = server.stats.requests();
    println!(
        "GuardedClient over reqwest's default retry: {attempts} attempts for {TOTAL} \
         ({:.3} a request)",
        attempts as f64 / TOTAL as f64
    );
    assert_eq!(run.errors, TOTAL);
    // reqwest resends a refused stream twice, without a budget; the guard
    // does not resend it again.
    assert_eq!(attempts, 3 * TOTAL);
}
