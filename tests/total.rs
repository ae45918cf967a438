//! The cap across hosts (`max_total`) against real servers on loopback:
//! the server's count of connections open at once is the truth.

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
use tower::{Layer, Service, ServiceExt};

type Guarded = poolguard::Guarded<
    Client<poolguard::GuardedConnector<HttpConnector<support::Loopback>>, Empty<Bytes>>,
>;

/// A guarded hyper-util client whose every host name reaches loopback.
fn guarded(guard: &PoolGuard) -> Guarded {
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(guard.connector(HttpConnector::new_with_resolver(support::Loopback)));
    guard.layer().layer(client)
}

/// The tests of this file run one at a time: the 1000-host crawl loads
/// both cores, and the others count what a few connections do.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn uri(host: usize, port: u16) -> http::Uri {
    format!("http://host-{host}.test:{port}/bytes/10")
        .parse()
        .expect("uri")
}

/// `tasks` tasks crawl `requests` pages spread over `hosts` host names (the
/// next page goes to the next host, round the hosts), reading each body.
async fn crawl<S, B>(svc: S, port: u16, hosts: usize, tasks: usize, requests: usize) -> usize
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let next = Arc::new(AtomicUsize::new(0));
    let send = move || {
        let (svc, i) = (svc.clone(), next.fetch_add(1, Ordering::Relaxed));
        async move {
            let result = async {
                let req = http::Request::get(uri(i % hosts, port)).body(Empty::new())?;
                let resp = svc.oneshot(req).await.map_err(Into::into)?;
                resp.into_body().collect().await.map_err(Into::into)?;
                Ok::<_, BoxError>(())
            }
            .await;
            if let Err(e) = &result {
                eprintln!(
                    "request {i} failed: {e} ({:?})",
                    std::error::Error::source(&**e)
                );
            }
            result
        }
    };
    let run = support::drive(tasks, requests, 0, send).await;
    run.errors
}

/// A server that counts the connections open at once, answering after
/// `delay`.
fn counting_server_after(delay: Duration) -> impl std::future::Future<Output = support::Server> {
    support::serve_with(support::Options {
        delay,
        count_open: true,
        ..Default::default()
    })
}

fn counting_server() -> impl std::future::Future<Output = support::Server> {
    counting_server_after(Duration::ZERO)
}

/// The acceptance crawl: 1000 hosts, 200 tasks, 10,000 requests,
/// `max_per_host(10).max_total(64)`: never more than 64 connections open
/// at the server, no errors. The same crawl with the per-host limit alone
/// is the premise: it holds far more open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_over_1000_hosts_never_holds_more_than_max_total_open() {
    let _serial = SERIAL.lock().await;
    support::raise_nofile_limit();
    let (hosts, tasks, requests) = (1000, 200, 10_000);

    let bare_server = counting_server().await;
    let bare = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(HttpConnector::new_with_resolver(support::Loopback));
    let bare_errors = crawl(bare, bare_server.addr.port(), hosts, tasks, requests).await;
    println!(
        "peak open at the server: bare {} ({} accepts, {bare_errors} errors)",
        bare_server.stats.peak_open(),
        bare_server.stats.accepted()
    );

    let per_host_only = counting_server().await;
    let guard = PoolGuard::builder().max_per_host(10).build();
    let errors = crawl(
        guarded(&guard),
        per_host_only.addr.port(),
        hosts,
        tasks,
        requests,
    )
    .await;
    let premise = per_host_only.stats.peak_open();
    drop(guard);

    let capped = counting_server().await;
    let guard = PoolGuard::builder().max_per_host(10).max_total(64).build();
    let capped_errors = crawl(guarded(&guard), capped.addr.port(), hosts, tasks, requests).await;
    println!(
        "peak open at the server: per-host only {premise} ({} accepts, {errors} errors); \
         max_total(64) {} ({} accepts, {capped_errors} errors)",
        per_host_only.stats.accepted(),
        capped.stats.peak_open(),
        capped.stats.accepted(),
    );
    assert!(
        premise > 64,
        "the per-host limit alone holds more than 64 open: {premise}"
    );
    assert_eq!(capped_errors, 0);
    assert_eq!(capped.stats.requests(), requests);
    assert!(
        capped.stats.peak_open() <= 64,
        "at most 64 open at once: {}",
        capped.stats.peak_open()
    );
}

/// Waits (at most 5 s) until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_over_the_total_closes_the_least_recently_used_idle_connection() {
    let _serial = SERIAL.lock().await;
    let (a, b, c) = (
        support::serve().await,
        support::serve().await,
        support::serve().await,
    );
    // A queue timeout short enough that a dial left waiting fails the
    // test rather than waiting out the pool's idle timeout.
    let guard = PoolGuard::builder()
        .max_per_host(10)
        .max_total(2)
        .queue_timeout(Duration::from_secs(5))
        .build();
    let svc = guarded(&guard);
    let get = |server: &support::Server| {
        let svc = svc.clone();
        let uri: http::Uri = server.url("/bytes/10").parse().expect("uri");
        async move {
            let req = http::Request::get(uri).body(Empty::<Bytes>::new())?;
            let resp = svc.oneshot(req).await?;
            resp.into_body().collect().await?;
            Ok::<_, BoxError>(())
        }
    };
    get(&a).await.expect("a");
    get(&b).await.expect("b");
    // a's connection is idle and least recently used, b's idle and newer.
    assert_eq!((a.stats.open(), b.stats.open()), (1, 1));
    get(&c)
        .await
        .expect("c is served without waiting for an idle timeout");
    assert!(
        eventually(|| a.stats.open() == 0).await,
        "a's idle connection was closed to make room"
    );
    assert_eq!(b.stats.open(), 1, "b's, used later, stays");
    assert_eq!(c.stats.accepted(), 1);
    // b again. hyper-util usually hands it b's pooled connection; under CPU
    // load it may not have that connection back in its idle list yet and
    // dial (hyper-util returns a connection to its pool from a task of its
    // own): that dial then waits for the cap, and the least recently used
    // idle connection of another host (c's, now) makes room, never b's.
    get(&b).await.expect("b again");
    let open = || a.stats.open() + b.stats.open() + c.stats.open();
    assert!(
        eventually(|| open() <= 2).await,
        "the cap holds: {}",
        open()
    );
    println!(
        "after b again: open a {} b {} c {}; accepted a {} b {} c {}",
        a.stats.open(),
        b.stats.open(),
        c.stats.open(),
        a.stats.accepted(),
        b.stats.accepted(),
        c.stats.accepted()
    );
    match b.stats.accepted() {
        1 => assert_eq!((b.stats.open(), c.stats.open()), (1, 1), "b reused"),
        2 => assert_eq!(
            (b.stats.open(), c.stats.open()),
            (2, 0),
            "b's pooled connection stays; c's, the least recently used, made room"
        ),
        n => panic!("{n} dials to b"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_max_total_idle_connections_of_other_hosts_stay() {
    let _serial = SERIAL.lock().await;
    // The premise of the test above: nothing closes a's connection then.
    let (a, b, c) = (
        support::serve().await,
        support::serve().await,
        support::serve().await,
    );
    let guard = PoolGuard::builder().max_per_host(10).build();
    let svc = guarded(&guard);
    for server in [&a, &b, &c] {
        let uri: http::Uri = server.url("/bytes/10").parse().expect("uri");
        let req = http::Request::get(uri)
            .body(Empty::<Bytes>::new())
            .expect("req");
        let resp = svc.clone().oneshot(req).await.expect("response");
        resp.into_body().collect().await.expect("body");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((a.stats.open(), b.stats.open(), c.stats.open()), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_total_bounds_requests_and_connections_across_hosts() {
    let _serial = SERIAL.lock().await;
    // Four host names of one slow server, 40 tasks: at most 3 requests in
    // flight and 3 connections open across the hosts, at the server.
    let server = counting_server_after(Duration::from_millis(10)).await;
    let guard = PoolGuard::builder().max_per_host(10).max_total(3).build();
    let errors = crawl(guarded(&guard), server.addr.port(), 4, 40, 400).await;
    println!(
        "in flight at most {}, open at most {}, accepts {}",
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
    assert!(server.stats.peak_open() <= 3);

    // The premise: the same load without the cap holds more of both.
    let server = counting_server_after(Duration::from_millis(10)).await;
    let guard = PoolGuard::builder().max_per_host(10).build();
    let errors = crawl(guarded(&guard), server.addr.port(), 4, 40, 400).await;
    assert_eq!(errors, 0);
    assert!(server.stats.peak() > 3 && server.stats.peak_open() > 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_alone_caps_connections_across_hosts() {
    let _serial = SERIAL.lock().await;
    // No request limit: 40 tasks race hyper-util's pool checkouts against
    // their dials over 4 host names, so many dials lose the race and wait
    // for nobody. The connector still never holds more than 3 open, and
    // every request is served.
    let server = counting_server_after(Duration::from_millis(10)).await;
    let connector =
        poolguard::GuardedConnector::new(HttpConnector::new_with_resolver(support::Loopback), 10)
            .max_total(3);
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let errors = crawl(client, server.addr.port(), 4, 40, 400).await;
    println!(
        "connector max_total(3) alone: errors {errors}, open at most {}, accepts {}",
        server.stats.peak_open(),
        server.stats.accepted()
    );
    assert_eq!(errors, 0);
    assert_eq!(server.stats.requests(), 400);
    assert!(server.stats.peak_open() <= 3);
}
