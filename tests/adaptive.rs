//! Adaptive limits through real clients: what the limit learns from a
//! loopback server, where it is reported, and which requests it leaves out.
// Every test here needs a real client.
#![cfg(any(feature = "reqwest", all(feature = "metrics", feature = "hyper-util")))]

use poolguard_testkit as support;

use std::time::Duration;

use poolguard::limit::Adaptive;
use poolguard::PoolGuard;

/// The adaptive limit of the guard's only host.
fn limit_of(guard: &PoolGuard) -> Option<usize> {
    guard
        .metrics()
        .snapshot()
        .hosts
        .iter()
        .find_map(|h| h.limit)
}

/// A reqwest client whose every dial takes 200 ms more (as a far TLS
/// handshake would), with the guard's connector layer.
#[cfg(feature = "reqwest")]
fn slow_dialing_reqwest(guard: &PoolGuard) -> poolguard::reqwest::GuardedClient {
    let slow = tower::util::MapFutureLayer::new(|dial| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        dial.await
    });
    guard.reqwest(
        reqwest::Client::builder()
            .connector_layer(guard.reqwest_connector_layer())
            .connector_layer(slow)
            .build()
            .expect("client"),
    )
}

#[cfg(feature = "reqwest")]
async fn reqwest_rounds(
    client: &poolguard::reqwest::GuardedClient,
    url: &str,
    tasks: usize,
    each: usize,
) {
    let mut all = Vec::new();
    for _ in 0..tasks {
        let (client, url) = (client.clone(), url.to_owned());
        all.push(tokio::spawn(async move {
            for _ in 0..each {
                let request =
                    reqwest::Request::new(reqwest::Method::GET, url.parse().expect("url"));
                let response = client.execute(request).await.expect("response");
                response.bytes().await.expect("body");
            }
        }));
    }
    for task in all {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("bounded")
            .expect("task");
    }
}

/// A request that paid for a dial says nothing of the server's queue:
/// through reqwest (whose connections the guard does not follow), a run in
/// which every request dials (`Connection: close`, 200 ms a dial) must not
/// cut the limit that the same load learned on kept connections.
#[cfg(feature = "reqwest")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_requests_that_dialed_do_not_cut_the_limit() {
    let server = support::serve().await;
    let guard = PoolGuard::builder()
        .max_per_host(64)
        .adaptive(Adaptive::new().initial(4))
        .build();
    let client = slow_dialing_reqwest(&guard);
    // Kept connections: 4 tasks fill the limit of 4 with no queue at the
    // server, so it grows to 5 (and stays: 4 tasks never fill 5).
    reqwest_rounds(&client, &server.url("/bytes/16"), 4, 100).await;
    let learned = limit_of(&guard).expect("an adaptive limit");
    assert!(learned >= 4, "learned {learned}");
    let accepted = server.stats.accepted();
    // Every request on a new connection: 200 ms each, against a base of
    // well under a millisecond.
    reqwest_rounds(&client, &server.url("/close/16"), 4, 10).await;
    assert!(
        server.stats.accepted() >= accepted + 36,
        "premise: every request but each task's first dialed ({} -> {})",
        accepted,
        server.stats.accepted()
    );
    let after = limit_of(&guard).expect("an adaptive limit");
    assert!(
        after >= learned,
        "the dials' latency cut the limit: {learned} -> {after}"
    );
}

/// The limit a host learned is in its snapshot row and in the
/// `poolguard.limit` gauge, the same figure, between `min` and the ceiling.
#[cfg(all(feature = "metrics", feature = "hyper-util"))]
#[test]
fn the_learned_limit_is_in_the_snapshot_and_the_gauge() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower::{Layer, Service, ServiceExt};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // One thread, so that every gauge update reaches the local recorder.
    let guard = metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let server = support::serve_with(support::Options {
                delay: Duration::from_millis(2),
                ..Default::default()
            })
            .await;
            let guard = PoolGuard::builder()
                .max_per_host(16)
                .adaptive(Adaptive::new())
                .build();
            let client = Client::builder(TokioExecutor::new())
                .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
            let svc = guard.layer().layer(client);
            let uri = server.uri("/bytes/16");
            // 8 tasks with no queue at the server: the limit grows from 1
            // until it is no longer reached (bounded: 10 s at most).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while limit_of(&guard).unwrap_or(0) < 8 && tokio::time::Instant::now() < deadline {
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    let (mut svc, uri) = (svc.clone(), uri.clone());
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..10 {
                            let request = http::Request::get(uri.clone())
                                .body(Empty::<Bytes>::new())
                                .expect("request");
                            let response = svc
                                .ready()
                                .await
                                .expect("ready")
                                .call(request)
                                .await
                                .expect("response");
                            response.into_body().collect().await.expect("body");
                        }
                    }));
                }
                for task in tasks {
                    task.await.expect("task");
                }
            }
            guard
        })
    });
    let limit = limit_of(&guard).expect("an adaptive limit in the snapshot");
    assert!((8..=16).contains(&limit), "limit {limit}");
    let gauge = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, _, _, _)| {
            let key = key.key();
            key.name() == "poolguard.limit"
                && key
                    .labels()
                    .any(|l| l.key() == "server.address" && l.value() == "127.0.0.1")
        })
        .map(|(_, _, _, value)| value);
    assert!(
        matches!(gauge, Some(DebugValue::Gauge(g)) if g.into_inner() == limit as f64),
        "gauge {gauge:?}, snapshot {limit}"
    );
}
