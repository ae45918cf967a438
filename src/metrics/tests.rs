//! Logic tests of the metrics layer with mocks and paused time.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::{Metrics, ReuseMetricsLayer};
use crate::PerHostLimitLayer;

type Body = Full<Bytes>;

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn requests_responses_errors_and_in_flight() {
    let metrics = Metrics::new();
    let (svc, mut handle) = mock::pair::<Request<()>, Response<Body>>();
    let mut svc = ReuseMetricsLayer::new(metrics.clone()).layer(svc);

    let mut ok = task::spawn(svc.ready().await.unwrap().call(get("http://h/")));
    let mut err = task::spawn(svc.ready().await.unwrap().call(get("http://h/")));
    assert_eq!(metrics.snapshot().in_flight, 2);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(Full::new(Bytes::from("hello"))));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("refused");

    let response = assert_ready!(ok.poll()).unwrap();
    assert!(assert_ready!(err.poll()).is_err());
    let snap = metrics.snapshot();
    assert_eq!((snap.requests, snap.responses, snap.errors), (2, 1, 1));
    assert_eq!(snap.in_flight, 1, "the body is still out");
    assert_eq!(snap.reuse_unknown, 1, "a mock has no connection");
    assert_eq!(snap.reused, 0);
    response.into_body().collect().await.unwrap();
    assert_eq!(metrics.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_future_leaves_flight() {
    let metrics = Metrics::new();
    let (svc, _handle) = mock::pair::<Request<()>, Response<Body>>();
    let mut svc = ReuseMetricsLayer::new(metrics.clone()).layer(svc);
    let fut = svc.ready().await.unwrap().call(get("http://h/"));
    assert_eq!(metrics.snapshot().in_flight, 1);
    drop(fut);
    assert_eq!(metrics.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn queue_figures_come_from_the_limit() {
    let metrics = Metrics::new();
    let limit = PerHostLimitLayer::new(1)
        .max_queued(2)
        .queue_timeout(Duration::from_secs(1))
        .on_queue(metrics.clone());
    let (svc, mut handle) = mock::pair::<Request<()>, Response<Body>>();
    let mut svc = ReuseMetricsLayer::new(metrics.clone()).layer(limit.layer(svc));

    let mut a = task::spawn(svc.ready().await.unwrap().call(get("http://h/a")));
    let mut b = task::spawn(svc.ready().await.unwrap().call(get("http://h/b")));
    let mut c = task::spawn(svc.ready().await.unwrap().call(get("http://h/c")));
    let mut d = task::spawn(svc.ready().await.unwrap().call(get("http://h/d")));
    assert_pending!(b.poll());
    assert_pending!(c.poll());
    assert!(assert_ready!(d.poll()).is_err(), "queue full");
    assert_eq!(metrics.snapshot().queued, 2);

    drop(c); // cancelled while queued
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_pending!(a.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(Full::new(Bytes::from("x"))));
    drop(assert_ready!(a.poll()).unwrap()); // b gets the slot after 300 ms
    assert_pending!(b.poll());
    let mut e = task::spawn(svc.ready().await.unwrap().call(get("http://h/e")));
    assert_pending!(e.poll());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(assert_ready!(e.poll()).is_err(), "queue timeout");

    let snap = metrics.snapshot();
    assert_eq!(snap.queue_full, 1);
    assert_eq!(snap.queue_cancelled, 1);
    assert_eq!(snap.queue_timeout, 1);
    assert_eq!(snap.queue_waited, 1);
    assert_eq!(snap.queue_wait_total, Duration::from_millis(300));
    assert_eq!(snap.queued, 0);
    assert_eq!(snap.errors, 2);
}
