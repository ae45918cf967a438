//! Events to the `metrics` facade as they happen, under OpenTelemetry's
//! names, checked against the servers' own counts. One recorder for the
//! whole binary: it is installed globally, once.
#![cfg(all(feature = "metrics", feature = "hyper-util"))]

use poolguard_testkit as support;

use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use poolguard::{BoxError, PoolGuard};
use tower::{Layer, ServiceExt};

fn snapshotter() -> &'static Snapshotter {
    static SNAP: OnceLock<Snapshotter> = OnceLock::new();
    SNAP.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// A series' value so far.
#[derive(Clone, Debug)]
enum Val {
    Counter(u64),
    Gauge(f64),
    /// Values recorded.
    Histogram(usize),
}

/// Every series so far: name, labels (sorted `k=v`), value. The debugging
/// recorder hands out what changed since its last snapshot (counters and
/// gauges are swapped to 0), so the snapshots are added up here.
fn series() -> Vec<(String, Vec<String>, Val)> {
    type Series = std::collections::BTreeMap<(String, Vec<String>), Val>;
    static SEEN: std::sync::Mutex<Series> = std::sync::Mutex::new(Series::new());
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let delta = match value {
            DebugValue::Counter(c) => Val::Counter(c),
            DebugValue::Gauge(g) => Val::Gauge(g.into_inner()),
            DebugValue::Histogram(h) => Val::Histogram(h.len()),
        };
        let entry = seen
            .entry((key.name().to_owned(), labels))
            .or_insert(match delta {
                Val::Counter(_) => Val::Counter(0),
                Val::Gauge(_) => Val::Gauge(0.0),
                Val::Histogram(_) => Val::Histogram(0),
            });
        *entry = match (&*entry, delta) {
            (Val::Counter(a), Val::Counter(b)) => Val::Counter(a + b),
            (Val::Gauge(a), Val::Gauge(b)) => Val::Gauge(a + b),
            (Val::Histogram(a), Val::Histogram(b)) => Val::Histogram(a + b),
            (_, b) => b,
        };
    }
    seen.iter()
        .map(|((name, labels), value)| (name.clone(), labels.clone(), value.clone()))
        .collect()
}

/// The values of the series called `name` whose labels include all of
/// `with`.
fn matching<'a>(
    all: &'a [(String, Vec<String>, Val)],
    name: &'a str,
    with: &'a [&'a str],
) -> impl Iterator<Item = &'a Val> + 'a {
    all.iter()
        .filter(move |(n, labels, _)| {
            n == name && with.iter().all(|w| labels.iter().any(|l| l == w))
        })
        .map(|(_, _, v)| v)
}

/// The sum of the counters called `name` whose labels include all of
/// `with`.
fn counter(all: &[(String, Vec<String>, Val)], name: &str, with: &[&str]) -> u64 {
    matching(all, name, with)
        .map(|v| match v {
            Val::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

/// The sum of the gauges called `name` whose labels include all of `with`.
fn gauge(all: &[(String, Vec<String>, Val)], name: &str, with: &[&str]) -> f64 {
    matching(all, name, with)
        .map(|v| match v {
            Val::Gauge(g) => *g,
            _ => 0.0,
        })
        .sum()
}

/// Sends `requests` through a client of `guard`, and returns the client
/// (whose pool keeps its connections open while it lives).
async fn run(guard: &PoolGuard, server: &support::Server, requests: usize) -> impl Drop {
    let client = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = guard.layer().layer(client);
    let keep = Keep(Box::new(svc.clone()));
    let uri = server.uri("/bytes/100");
    let send = move || {
        let (svc, uri) = (svc.clone(), uri.clone());
        async move {
            let resp = svc
                .oneshot(http::Request::get(uri).body(Empty::new())?)
                .await?;
            resp.into_body().collect().await?;
            Ok::<_, BoxError>(())
        }
    };
    assert_eq!(support::drive(8, requests, 0, send).await.errors, 0);
    keep
}

/// Holds a client until dropped.
struct Keep(#[allow(dead_code)] Box<dyn Send>);

impl Drop for Keep {
    fn drop(&mut self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_servers_and_guards_add_up_or_stay_apart() {
    snapshotter();
    let (a, b, c) = (
        support::serve().await,
        support::serve().await,
        support::serve().await,
    );
    // Two unnamed guards add up; a named one stays apart.
    let (one, two) = (
        PoolGuard::builder().max_per_host(4).build(),
        PoolGuard::builder().max_per_host(4).build(),
    );
    let named = PoolGuard::builder().max_per_host(4).name("partner").build();
    let clients = (
        run(&one, &a, 300).await,
        run(&two, &b, 200).await,
        run(&named, &c, 100).await,
    );
    // Let the last connections back into their pools.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let all = series();
    let unnamed_accepts = (a.stats.accepted() + b.stats.accepted()) as u64;
    let named_accepts = c.stats.accepted() as u64;
    println!("accepts: unnamed {unnamed_accepts}, named {named_accepts}");
    let named_label = "poolguard.guard=partner";
    let opened_all = counter(&all, "poolguard.connections.opened", &[]);
    let opened_named = counter(&all, "poolguard.connections.opened", &[named_label]);
    assert_eq!(opened_named, named_accepts, "the named guard's dials");
    assert_eq!(
        opened_all - opened_named,
        unnamed_accepts,
        "two unnamed guards add up to both servers' accepts"
    );
    assert_eq!(counter(&all, "poolguard.requests", &[named_label]), 100);
    assert_eq!(counter(&all, "poolguard.requests", &[]) - 100, 500);
    assert_eq!(
        counter(&all, "poolguard.responses", &[]),
        600,
        "every response counted once"
    );
    let reused = counter(&all, "poolguard.reused", &[]);
    assert_eq!(reused, 600 - (unnamed_accepts + named_accepts));

    // Open connections now: idle, as many as the servers hold open.
    let held = (a.stats.open() + b.stats.open() + c.stats.open()) as f64;
    let idle = gauge(
        &all,
        "http.client.open_connections",
        &["http.connection.state=idle"],
    );
    let active = gauge(
        &all,
        "http.client.open_connections",
        &["http.connection.state=active"],
    );
    println!("open connections: idle {idle}, active {active}, at the servers {held}");
    assert_eq!(active, 0.0, "no request in flight");
    assert_eq!(idle, held);
    // Attributes of the semantic conventions.
    let port = format!("server.port={}", c.addr.port());
    assert!(
        gauge(
            &all,
            "http.client.open_connections",
            &[
                "server.address=127.0.0.1",
                port.as_str(),
                "url.scheme=http",
                "network.protocol.version=1.1",
                named_label,
            ],
        ) > 0.0
    );

    // Closing the connections: the gauge goes to 0, each close counted
    // with its reason and its duration.
    drop(clients);
    drop((one, two, named));
    let closes_before = counter(&all, "poolguard.connections.closed", &[]);
    for (name, labels, value) in &all {
        if name == "poolguard.connections.closed" && !matches!(value, Val::Counter(0)) {
            println!("closed before the drop: {labels:?} {value:?}");
        }
    }
    for _ in 0..500 {
        let all = series();
        if gauge(&all, "http.client.open_connections", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let all = series();
    assert_eq!(gauge(&all, "http.client.open_connections", &[]), 0.0);
    let closed = counter(&all, "poolguard.connections.closed", &[]);
    assert_eq!(closed - closes_before, held as u64);
    let durations: usize = matching(&all, "http.client.connection.duration", &[])
        .map(|v| match v {
            Val::Histogram(n) => *n,
            _ => 0,
        })
        .sum();
    // The histogram holds every close of the test, those before the drop
    // too (a connection the pool let go during the runs), so it is checked
    // against every close, and every dial has closed by now.
    assert_eq!(
        closed,
        unnamed_accepts + named_accepts,
        "every connection dialled has closed"
    );
    assert_eq!(
        durations as u64, closed,
        "one duration per connection closed"
    );

    // HTTP/2 (h2c): one connection, counted active over version 2 while it
    // lives, whatever its streams do.
    let h2 = support::serve_with(support::Options {
        http2: true,
        ..Default::default()
    })
    .await;
    let guard = PoolGuard::builder().name("h2").build();
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = guard.layer().layer(client);
    for _ in 0..20 {
        let req = http::Request::get(h2.uri("/bytes/10"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = svc.clone().oneshot(req).await.expect("response");
        resp.into_body().collect().await.expect("body");
    }
    let all = series();
    let h2_label = "poolguard.guard=h2";
    assert_eq!(h2.stats.accepted(), 1);
    assert_eq!(
        gauge(
            &all,
            "http.client.open_connections",
            &[
                h2_label,
                "network.protocol.version=2",
                "http.connection.state=active"
            ],
        ),
        1.0
    );
    assert_eq!(
        gauge(&all, "http.client.open_connections", &[h2_label]),
        1.0,
        "counted once"
    );
    drop((svc, guard));
    for _ in 0..500 {
        if gauge(&series(), "http.client.open_connections", &[h2_label]) == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        gauge(&series(), "http.client.open_connections", &[h2_label]),
        0.0
    );
}
