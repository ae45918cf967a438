//! Callers that give up at any moment: while queued, while dialing, while
//! waiting for headers, mid-body, during a background drain. Nothing leaks:
//! gauges return to 0, every slot comes back, no task is left, and a runtime
//! shut down under running drains neither panics nor hangs.
#![cfg(feature = "hyper-util")]

use poolguard_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::PoolGuard;
use tower::ServiceExt;

fn stack(
    guard: &PoolGuard,
) -> poolguard::Guarded<Client<poolguard::GuardedConnector<HttpConnector>, Empty<Bytes>>> {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4)
        .build(guard.connector(HttpConnector::new()));
    tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client)
}

/// Waits (bounded) for `done`, then asserts it.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(done(), "{what} still not true after 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_giving_up_at_random_moments_leak_nothing() {
    let server = support::serve_with(support::Options {
        delay: Duration::from_millis(2),
        ..Default::default()
    })
    .await;
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let guard = PoolGuard::builder()
        .max_per_host(4)
        .drain_max_time(Duration::from_millis(20))
        .build();
    let svc = stack(&guard);

    let mut rng = support::XorShift(0x1234_5678_9ABC_DEF1);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..400u32 {
        let x = rng.next_u64();
        let give_up = Duration::from_micros(x % 15_000);
        let path =
            ["/bytes/65536", "/chunked/65536", "/trickle", "/bytes/10"][(x >> 20) as usize % 4];
        let read = i % 2 == 0;
        let (svc, uri) = (svc.clone(), server.uri(path));
        set.spawn(async move {
            let work = async move {
                let req = http::Request::get(uri).body(Empty::new())?;
                let resp = svc.oneshot(req).await?;
                if read {
                    resp.into_body().collect().await?;
                }
                Ok::<_, poolguard::BoxError>(())
            };
            // Dropped wherever it is when the time is up.
            let _ = tokio::time::timeout(give_up, work).await;
        });
        if set.len() >= 16 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}

    let limit = guard.layer().limit().clone();
    let drain = guard.layer().drain().clone();
    let metrics = guard.metrics().clone();
    eventually("drains done", || drain.running() == 0).await;
    eventually("slots back", || {
        limit.in_flight() == 0 && limit.queued() == 0
    })
    .await;
    let s = metrics.snapshot();
    assert_eq!((s.in_flight, s.queued), (0, 0), "{s:?}");
    assert_eq!(limit.hosts_tracked(), 0);
    println!("after 400 cancellations: {s:?}");

    // No slot leaked: N requests to a slow handler proceed at once.
    let slow = support::serve_with(support::Options {
        delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (svc, uri) = (svc.clone(), slow.uri("/bytes/10"));
        set.spawn(async move {
            svc.oneshot(http::Request::get(uri).body(Empty::new()).unwrap())
                .await
                .map(drop)
        });
    }
    eventually("4 requests at the server at once", || {
        slow.stats.peak() == 4
    })
    .await;
    assert_eq!(limit.queued(), 0);
    while let Some(r) = set.join_next().await {
        assert!(r.expect("task").is_ok());
    }

    // No task left once the client is gone and its connections closed.
    drop(svc);
    drop(slow);
    let handle = tokio::runtime::Handle::current();
    eventually("tasks back to the baseline", || {
        handle.metrics().num_alive_tasks() <= baseline
    })
    .await;
}

#[test]
fn runtime_shutdown_while_drains_run() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let guard = PoolGuard::builder()
        .drain_max_time(Duration::from_secs(3600))
        .drain_max_bytes(u64::MAX)
        .build();
    let drain = guard.layer().drain().clone();
    rt.block_on(async {
        let server = support::serve().await;
        let svc = stack(&guard);
        for _ in 0..8 {
            let req = http::Request::get(server.uri("/trickle"))
                .body(Empty::new())
                .unwrap();
            drop(svc.clone().oneshot(req).await.expect("response"));
        }
        assert_eq!(drain.running(), 8, "drains running at shutdown");
        std::mem::forget(server); // keep serving until the runtime goes
    });
    // Shutting down drops the drain tasks: no panic, no hang.
    rt.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(drain.running(), 0);
    let s = guard.metrics().snapshot();
    // The order in which a runtime drops its tasks at shutdown is not
    // specified: a drain dropped with its task is aborted; one whose
    // connection task went first sees its body fail. Either way it ended,
    // and none completed.
    assert_eq!(s.drains_aborted + s.drains_failed, 8, "{s:?}");
    assert_eq!(s.drains_completed, 0, "{s:?}");
}
