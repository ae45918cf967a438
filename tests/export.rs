//! Export of the figures to the `metrics` facade.
#![cfg(feature = "metrics")]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use poolguard::{DrainLayer, Metrics, ReuseMetricsLayer};
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::test]
async fn publish_sets_counters_and_gauges() {
    let metrics = Metrics::new();
    let mut svc = ServiceBuilder::new()
        .layer(ReuseMetricsLayer::new(metrics.clone()))
        .layer(DrainLayer::new().on_drain(metrics.clone()))
        .service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("abc"))))
        });
    for _ in 0..3 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        drop(response); // drained inline: 3 bytes each
    }

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || metrics.publish(true));

    let values: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            (format!("{}{:?}", key.name(), labels), value)
        })
        .collect();
    let get = |name: &str| {
        values
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{name} missing from {values:?}"))
    };
    assert_eq!(get("poolguard_requests_total[]"), &DebugValue::Counter(3));
    assert_eq!(get("poolguard_responses_total[]"), &DebugValue::Counter(3));
    assert_eq!(
        get("poolguard_reuse_unknown_total[]"),
        &DebugValue::Counter(3)
    );
    assert_eq!(
        get("poolguard_drains_total[\"outcome=completed\"]"),
        &DebugValue::Counter(3)
    );
    assert_eq!(
        get("poolguard_drained_bytes_total[]"),
        &DebugValue::Counter(9)
    );
    assert_eq!(
        get("poolguard_connections_closed_total[\"reason=unknown\"]"),
        &DebugValue::Counter(0)
    );
    assert!(matches!(get("poolguard_in_flight[]"), DebugValue::Gauge(g) if g.into_inner() == 0.0));
}

#[tokio::test(start_paused = true)]
async fn the_exporter_ends_when_its_producers_are_gone() {
    let metrics = Metrics::new();
    let exporter = tokio::spawn(metrics.exporter(std::time::Duration::from_secs(1), false));
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(!exporter.is_finished(), "runs while the metrics live");
    drop(metrics);
    tokio::time::timeout(std::time::Duration::from_secs(2), exporter)
        .await
        .expect("ends within one tick of the last producer going")
        .expect("task");
}

#[tokio::test(start_paused = true)]
async fn an_exporter_interval_past_the_end_of_time_does_not_panic() {
    let metrics = Metrics::new();
    let exporter = tokio::spawn(metrics.exporter(std::time::Duration::MAX, false));
    tokio::time::sleep(std::time::Duration::from_secs(86_400)).await;
    assert!(!exporter.is_finished());
    exporter.abort();
    assert!(exporter.await.unwrap_err().is_cancelled(), "no panic");
}
