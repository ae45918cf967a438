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
