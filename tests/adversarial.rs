//! The full guarded stack against peers that break the rules: every request
//! ends in a response or an error within its budgets, every slot comes back,
//! and the connection counts match the server's.
#![cfg(feature = "hyper-util")]

use poolguard_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{Guarded, GuardedConnector, PoolGuard};
use support::After;
use tower::ServiceExt;

type Stack = Guarded<Client<GuardedConnector<HttpConnector>, Empty<Bytes>>>;

fn stack(guard: &PoolGuard, http2: bool) -> Stack {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_max_idle_per_host(4).http2_only(http2);
    let client = builder.build(guard.connector(HttpConnector::new()));
    tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client)
}

#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    errors: usize,
}

/// Sends `n` requests, 4 at a time, half read to the end and half dropped
/// after the headers; each must end within `budget`.
async fn hammer(svc: &Stack, uri: http::Uri, n: usize, budget: Duration) -> Outcome {
    let mut out = Outcome::default();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        if set.len() >= 4 {
            if let Some(r) = set.join_next().await {
                tally(&mut out, r.expect("task"));
            }
        }
        let (svc, uri) = (svc.clone(), uri.clone());
        set.spawn(async move {
            let work = async {
                let req = http::Request::get(uri).body(Empty::new())?;
                let response = svc.oneshot(req).await?;
                if i % 2 == 0 {
                    response.into_body().collect().await?;
                }
                Ok::<_, poolguard::BoxError>(())
            };
            tokio::time::timeout(budget, work)
                .await
                .unwrap_or_else(|_| panic!("request {i} did not end within {budget:?}"))
        });
    }
    while let Some(r) = set.join_next().await {
        tally(&mut out, r.expect("task"));
    }
    out
}

fn tally(out: &mut Outcome, r: Result<(), poolguard::BoxError>) {
    match r {
        Ok(()) => out.ok += 1,
        Err(_) => out.errors += 1,
    }
}

/// After a run: slots, queue and drains are back to zero, and once the
/// client is gone every connection it opened is counted closed.
async fn settles(guard: &PoolGuard, svc: Stack, server: &support::Server) {
    for _ in 0..300 {
        if guard.layer().drain().running() == 0 && guard.layer().limit().in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(guard.layer().drain().running(), 0, "drains left");
    assert_eq!(guard.layer().limit().in_flight(), 0, "slots leaked");
    assert_eq!(guard.layer().limit().queued(), 0);
    assert_eq!(guard.layer().limit().hosts_tracked(), 0);
    drop(svc);
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "server saw {} closes",
        server
            .stats
            .closed_by_peer
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    for _ in 0..300 {
        let s = guard.metrics().snapshot();
        if s.connections_closed == s.connections_opened {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = guard.metrics().snapshot();
    assert_eq!(
        s.connections_opened,
        server.stats.accepted() as u64,
        "{s:?}"
    );
    assert_eq!(s.connections_closed, s.connections_opened, "{s:?}");
    assert_eq!(s.in_flight, 0);
}

fn guard() -> PoolGuard {
    PoolGuard::builder()
        .max_per_host(4)
        .drain_max_time(Duration::from_millis(50))
        .build()
}

/// Runs the standard checks against `server` and returns the outcome.
async fn against(server: &support::Server, path: &str, http2: bool) -> Outcome {
    let g = guard();
    let svc = stack(&g, http2);
    let out = hammer(&svc, server.uri(path), 40, Duration::from_secs(5)).await;
    println!(
        "{path}: {out:?}, accepts {}, {:?}",
        server.stats.accepted(),
        g.metrics().snapshot().closes
    );
    settles(&g, svc, server).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_and_trickling_bodies() {
    let server = support::serve().await;
    // Reading an endless body to its end cannot finish: only drops here.
    let g = guard();
    let svc = stack(&g, false);
    for path in ["/endless", "/trickle"] {
        for _ in 0..10 {
            let req = http::Request::get(server.uri(path))
                .body(Empty::new())
                .unwrap();
            let response = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(req))
                .await
                .expect("headers in time")
                .expect("response");
            drop(response);
        }
    }
    settles(&g, svc, &server).await;
    let s = g.metrics().snapshot();
    // Each drop ends in a give-up: over a budget, or (while the next
    // request waits for the slot) once draining cost more than a dial.
    assert_eq!(
        s.drains_gave_up_bytes + s.drains_gave_up_time + s.drains_gave_up_cost,
        20,
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_longer_than_content_length() {
    let server = support::serve_raw(|| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloTRAILING-GARBAGE".to_vec(),
            After::KeepAlive,
        )
    })
    .await;
    let out = against(&server, "/", false).await;
    assert!(out.ok >= 1, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_shorter_than_content_length_then_close() {
    let server = support::serve_raw(|| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello".to_vec(),
            After::Close,
        )
    })
    .await;
    let out = against(&server, "/", false).await;
    // Reads fail (incomplete body); drops are fine: never a hang.
    assert!(out.errors >= 1, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_body() {
    let server = support::serve_raw(|| {
        let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 1000));
        (bytes, After::Reset)
    })
    .await;
    let out = against(&server, "/", false).await;
    assert!(out.errors >= 1, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_responses() {
    let server = support::serve().await;
    let out = against(&server, "/close/2048", false).await;
    assert_eq!(out.errors, 0);
    assert_eq!(server.stats.accepted(), 40, "one connection per response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_with_trailers() {
    let server = support::serve_raw(|| {
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"
                .to_vec(),
            After::KeepAlive,
        )
    })
    .await;
    let out = against(&server, "/", false).await;
    assert_eq!(out.errors, 0);
    assert!(
        server.stats.accepted() <= 8,
        "{} accepts",
        server.stats.accepted()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_closed_idle_connections() {
    let server = support::serve_closing_idle(Duration::from_millis(1)).await;
    let out = against(&server, "/", false).await;
    // A request may meet a connection the server just closed (issue: stale
    // pooled connections); every request still ends.
    assert_eq!(out.ok + out.errors, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge() {
    let server = support::serve_with(support::Options {
        http2: true,
        ..Default::default()
    })
    .await;
    let out = against(&server, "/bytes/65536", true).await;
    assert_eq!(out.errors, 0);
    assert_eq!(server.stats.accepted(), 1, "one multiplexed connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_chunked_bodies_close_with_the_client() {
    // Once caught a leak: a dial that lost hyper-util's checkout race and
    // waited for a connection slot kept the pool, and its connections,
    // alive after the client was dropped. `settles` checks they close.
    let server = support::serve_raw(|| {
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            After::KeepAlive,
        )
    })
    .await;
    let out = against(&server, "/", false).await;
    assert_eq!(out.errors, 0);
    assert_eq!(
        server
            .stats
            .closed_by_peer
            .load(std::sync::atomic::Ordering::SeqCst),
        server.stats.accepted(),
        "every connection closed by the client"
    );
}
