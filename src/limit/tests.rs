//! Logic tests of the per-host limit: tower-test mocks and paused time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::{PerHostLimit, PerHostLimitLayer, QueueFull, QueueTimeout, QueueWait};
use crate::BoxError;

/// A body of scripted frames, always ready.
#[derive(Debug, Default)]
struct Frames(VecDeque<Result<Frame<Bytes>, BoxError>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front())
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn frames(items: Vec<Result<Frame<Bytes>, BoxError>>) -> Frames {
    Frames(items.into())
}

fn some_data() -> Frames {
    frames(vec![Ok(Frame::data(Bytes::from_static(b"abc")))])
}

type Mock = mock::Mock<Request<()>, Response<Frames>>;
type Handle = mock::Handle<Request<()>, Response<Frames>>;

fn limited(layer: &PerHostLimitLayer) -> (PerHostLimit<Mock>, Handle) {
    let (svc, handle) = mock::pair();
    (layer.layer(svc), handle)
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

type Fut = super::future::ResponseFuture<Mock, Request<()>>;

/// Calls the service (after `ready`) and returns the pending future, spawned
/// for manual polling.
async fn start(svc: &mut PerHostLimit<Mock>, uri: &str) -> task::Spawn<Fut> {
    let svc = svc.ready().await.unwrap();
    task::spawn(svc.call(get(uri)))
}

/// Answers the next request the mock sees, and returns its path.
async fn answer(handle: &mut Handle, body: Frames) -> String {
    let (req, send) = handle.next_request().await.expect("a request");
    send.send_response(Response::new(body));
    req.uri().path().to_owned()
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_fifo() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, mut handle) = limited(&layer);

    let mut a = start(&mut svc, "http://h/a").await;
    let mut waiting = Vec::new();
    for path in ["b", "c", "d", "e"] {
        let mut f = start(&mut svc, &format!("http://h/{path}")).await;
        assert_pending!(f.poll());
        waiting.push(f);
    }
    assert_eq!(layer.queued(), 4);
    assert_eq!(layer.in_flight(), 1);

    assert_pending!(a.poll());
    assert_eq!(answer(&mut handle, some_data()).await, "/a");
    let mut response = assert_ready!(a.poll()).unwrap();

    let mut served = Vec::new();
    for mut f in waiting {
        // The previous body ends: the next waiter in line gets the slot.
        drop(response);
        assert!(f.is_woken());
        assert_pending!(f.poll());
        served.push(answer(&mut handle, some_data()).await);
        response = assert_ready!(f.poll()).unwrap();
        assert_eq!(layer.in_flight(), 1);
    }
    drop(response);
    assert_eq!(served, ["/b", "/c", "/d", "/e"]);
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(layer.queued(), 0);
    assert_eq!(layer.hosts_tracked(), 0);
}

#[tokio::test(start_paused = true)]
async fn full_queue_fails_at_once() {
    let layer = PerHostLimitLayer::new(1).max_queued(1);
    let (mut svc, _handle) = limited(&layer);
    let _a = start(&mut svc, "http://h:8080/a").await;
    let mut b = start(&mut svc, "http://h:8080/b").await;
    assert_pending!(b.poll());
    let mut c = start(&mut svc, "http://h:8080/c").await;
    let err = assert_ready!(c.poll()).unwrap_err();
    let full = err.downcast_ref::<QueueFull>().expect("QueueFull");
    assert_eq!(full.host().to_string(), "http://h:8080");
    assert_eq!(err.to_string(), "per-host queue full for http://h:8080");
    assert_eq!(layer.queued(), 1);
}

#[tokio::test(start_paused = true)]
async fn zero_queue_never_waits() {
    let layer = PerHostLimitLayer::new(1).max_queued(0);
    let (mut svc, _handle) = limited(&layer);
    let _a = start(&mut svc, "http://h/a").await;
    let mut b = start(&mut svc, "http://h/b").await;
    assert!(assert_ready!(b.poll()).unwrap_err().is::<QueueFull>());
}

#[tokio::test(start_paused = true)]
async fn waiting_too_long_times_out() {
    let layer = PerHostLimitLayer::new(1).queue_timeout(Duration::from_secs(1));
    let (mut svc, _handle) = limited(&layer);
    let _a = start(&mut svc, "http://h/a").await;
    let mut b = start(&mut svc, "http://h/b").await;
    assert_pending!(b.poll());

    tokio::time::sleep(Duration::from_millis(999)).await;
    assert_pending!(b.poll());
    tokio::time::sleep(Duration::from_millis(1)).await;
    let err = assert_ready!(b.poll()).unwrap_err();
    let timeout = err.downcast_ref::<QueueTimeout>().expect("QueueTimeout");
    assert_eq!(timeout.waited(), Duration::from_secs(1));
    assert_eq!(timeout.host().to_string(), "http://h:80");
    assert_eq!(
        err.to_string(),
        "timed out after 1s in the per-host queue for http://h:80"
    );
    assert_eq!(layer.queued(), 0);
    assert_eq!(layer.in_flight(), 1);
    assert_eq!(layer.hosts_tracked(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_leaves_the_queue() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, mut handle) = limited(&layer);
    let mut a = start(&mut svc, "http://h/a").await;
    let mut b = start(&mut svc, "http://h/b").await;
    let mut c = start(&mut svc, "http://h/c").await;
    assert_pending!(b.poll());
    assert_pending!(c.poll());
    assert_eq!(layer.queued(), 2);

    drop(b);
    assert_eq!(layer.queued(), 1, "left the queue at once");

    assert_pending!(a.poll());
    answer(&mut handle, some_data()).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(assert_ready!(a.poll()).unwrap());
    assert!(c.is_woken(), "the next waiter proceeds");
    assert_pending!(c.poll());
    assert_eq!(answer(&mut handle, some_data()).await, "/c");
    let response = assert_ready!(c.poll()).unwrap();
    assert_eq!(
        response.extensions().get::<QueueWait>(),
        Some(&QueueWait(Duration::from_millis(5)))
    );
    drop(response);
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(layer.hosts_tracked(), 0);
}

#[tokio::test(start_paused = true)]
async fn slot_is_held_until_the_body_ends() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, mut handle) = limited(&layer);
    let mut a = start(&mut svc, "http://h/a").await;
    assert_pending!(a.poll());
    answer(
        &mut handle,
        frames(vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::data(Bytes::from_static(b"y"))),
        ]),
    )
    .await;
    let response = assert_ready!(a.poll()).unwrap();
    assert_eq!(layer.in_flight(), 1, "not released with the headers");
    assert!(response.body().holds_slot());
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(layer.in_flight(), 1);
    body.frame().await.unwrap().unwrap();
    assert_eq!(layer.in_flight(), 0, "released at end of stream");
    assert!(!body.holds_slot());
    assert_eq!(layer.hosts_tracked(), 0);
}

#[tokio::test(start_paused = true)]
async fn slot_is_released_on_body_error() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, mut handle) = limited(&layer);
    let mut a = start(&mut svc, "http://h/a").await;
    assert_pending!(a.poll());
    answer(
        &mut handle,
        frames(vec![Err("boom".into()), Ok(Frame::data(Bytes::new()))]),
    )
    .await;
    let mut body = assert_ready!(a.poll()).unwrap().into_body();
    assert_eq!(layer.in_flight(), 1);
    assert!(body.frame().await.unwrap().is_err());
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn slot_is_released_on_body_drop() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, mut handle) = limited(&layer);
    let mut a = start(&mut svc, "http://h/a").await;
    assert_pending!(a.poll());
    answer(&mut handle, some_data()).await;
    let response = assert_ready!(a.poll()).unwrap();
    assert_eq!(layer.in_flight(), 1);
    drop(response);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn empty_body_releases_at_once() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, mut handle) = limited(&layer);
    let mut a = start(&mut svc, "http://h/a").await;
    assert_pending!(a.poll());
    answer(&mut handle, Frames::default()).await;
    let response = assert_ready!(a.poll()).unwrap();
    assert!(!response.body().holds_slot());
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn slot_is_released_when_the_future_is_dropped() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, _handle) = limited(&layer);
    let mut a = start(&mut svc, "http://h/a").await;
    assert_pending!(a.poll());
    let mut b = start(&mut svc, "http://h/b").await;
    assert_pending!(b.poll());
    let mut c = start(&mut svc, "http://h/c").await;
    assert_pending!(c.poll());

    drop(a);
    assert!(b.is_woken());
    assert_pending!(b.poll(), "b holds the slot and calls the service");
    assert_eq!(layer.in_flight(), 1);
    assert_eq!(layer.queued(), 1);

    // b is dropped while it holds the slot; c is handed the slot and then
    // dropped before it was polled: the slot must not leak either way.
    drop(b);
    assert!(c.is_woken());
    drop(c);
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(layer.queued(), 0);
    assert_eq!(layer.hosts_tracked(), 0);
    let mut d = start(&mut svc, "http://h/d").await;
    assert_pending!(d.poll());
    assert_eq!(layer.in_flight(), 1, "d got the slot at once");
    assert_eq!(layer.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_and_release() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, mut handle) = limited(&layer);
    let mut a = start(&mut svc, "http://h/a").await;
    assert_pending!(a.poll());
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_error("connect refused");
    let err = assert_ready!(a.poll()).unwrap_err();
    assert_eq!(err.to_string(), "connect refused");
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn hosts_are_independent() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, mut handle) = limited(&layer);
    let _a = start(&mut svc, "http://one/a").await;
    let (_req, _unanswered) = handle.next_request().await.unwrap();
    let mut same = start(&mut svc, "http://one/b").await;
    assert_pending!(same.poll());
    for uri in ["http://two/", "https://one/", "http://one:8080/"] {
        let mut other = start(&mut svc, uri).await;
        assert_pending!(other.poll());
        answer(&mut handle, some_data()).await;
        assert!(assert_ready!(other.poll()).is_ok(), "{uri} did not wait");
    }
    // The other hosts' responses are gone, and so is their state.
    assert_eq!(layer.hosts_tracked(), 1);
    assert_eq!(layer.queued(), 1);
}

#[tokio::test(start_paused = true)]
async fn idle_hosts_are_forgotten() {
    let layer = PerHostLimitLayer::new(2);
    let (mut svc, mut handle) = limited(&layer);
    for i in 0..1000 {
        let mut f = start(&mut svc, &format!("http://host-{i}.example/")).await;
        assert_pending!(f.poll());
        answer(&mut handle, some_data()).await;
        let response = assert_ready!(f.poll()).unwrap();
        assert_eq!(layer.hosts_tracked(), 1);
        drop(response);
    }
    assert_eq!(layer.hosts_tracked(), 0);
}

#[tokio::test(start_paused = true)]
async fn host_header_is_used_for_origin_form() {
    let layer = PerHostLimitLayer::new(1);
    let (mut svc, _handle) = limited(&layer);
    let svc = svc.ready().await.unwrap();
    let req = Request::get("/a").header("host", "h").body(()).unwrap();
    let _a = task::spawn(svc.call(req));
    let mut b = start(&mut svc.clone(), "http://h/b").await;
    assert_pending!(b.poll(), "same host as the Host header");
}

#[test]
fn bodies_are_send_and_sync_when_theirs_are() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<super::ResponseBody<Full<Bytes>>>();
    let _: Option<Infallible> = None;
}

#[tokio::test(start_paused = true)]
async fn a_queue_timeout_past_the_end_of_time_is_no_limit() {
    let layer = PerHostLimitLayer::new(1).queue_timeout(Duration::MAX);
    let (mut svc, mut handle) = limited(&layer);
    let mut a = start(&mut svc, "http://h/a").await;
    // Panicked here ("overflow when adding duration to instant") before.
    let mut b = start(&mut svc, "http://h/b").await;
    assert_pending!(b.poll());
    tokio::time::sleep(Duration::from_secs(86_400 * 365)).await;
    assert_pending!(b.poll());
    assert_eq!(answer(&mut handle, Frames::default()).await, "/a");
    drop(assert_ready!(a.poll()).unwrap());
    assert!(b.is_woken());
    assert_pending!(b.poll());
    assert_eq!(answer(&mut handle, Frames::default()).await, "/b");
    assert_ready!(b.poll()).unwrap();
}

#[test]
fn a_request_queues_on_a_runtime_without_timers() {
    // No `enable_time`: tokio's timers panic here.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = PerHostLimitLayer::new(1).queue_timeout(Duration::from_secs(1));
        let (mut svc, mut handle) = limited(&layer);
        let mut a = start(&mut svc, "http://h/a").await;
        let mut b = start(&mut svc, "http://h/b").await;
        // Panicked here ("timers are disabled") before.
        assert_pending!(b.poll());
        assert_eq!(layer.queued(), 1);
        assert_eq!(answer(&mut handle, Frames::default()).await, "/a");
        drop(assert_ready!(a.poll()).unwrap());
        assert_pending!(b.poll());
        assert_eq!(answer(&mut handle, Frames::default()).await, "/b");
        assert_ready!(b.poll()).unwrap();
    });
}

#[tokio::test(start_paused = true)]
async fn a_layer_configured_after_cloning_keeps_its_slots() {
    let first = PerHostLimitLayer::new(1);
    // Configured after the clone: still the same slots.
    let second = first
        .clone()
        .queue_timeout(Duration::from_secs(1))
        .max_queued(4);
    let (mut a, mut handle_a) = limited(&first);
    let (mut b, _handle_b) = limited(&second);
    let mut held = start(&mut a, "http://h/a").await;
    let mut waiting = start(&mut b, "http://h/b").await;
    assert_pending!(waiting.poll());
    assert_eq!((first.in_flight(), second.queued()), (1, 1));
    // The clone's own configuration applies to its requests.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let err = assert_ready!(waiting.poll()).unwrap_err();
    assert!(err.is::<QueueTimeout>());
    answer(&mut handle_a, Frames::default()).await;
    drop(assert_ready!(held.poll()).unwrap());
    assert_eq!(second.in_flight(), 0);
    assert_eq!(first.hosts_tracked(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_closure_hears_every_queue_event() {
    use super::QueueEvent;
    use std::sync::{Arc, Mutex};
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = PerHostLimitLayer::new(1)
        .max_queued(2)
        .queue_timeout(Duration::from_secs(1))
        .on_queue(move |e| seen.lock().unwrap().push(e));
    let (mut svc, mut handle) = limited(&layer);
    let mut a = start(&mut svc, "http://h/a").await;
    let mut b = start(&mut svc, "http://h/b").await;
    let mut c = start(&mut svc, "http://h/c").await;
    let mut d = start(&mut svc, "http://h/d").await;
    assert_pending!(b.poll());
    assert_pending!(c.poll());
    assert!(assert_ready!(d.poll()).is_err(), "the queue is full");
    drop(c);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_pending!(a.poll());
    answer(&mut handle, some_data()).await;
    drop(assert_ready!(a.poll()).unwrap());
    assert_pending!(b.poll());
    let mut e = start(&mut svc, "http://h/e").await;
    assert_pending!(e.poll());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(assert_ready!(e.poll()).is_err(), "timed out");
    let ms = Duration::from_millis;
    assert_eq!(
        *events.lock().unwrap(),
        [
            QueueEvent::Entered,
            QueueEvent::Entered,
            QueueEvent::Full,
            QueueEvent::Cancelled { waited: ms(0) },
            QueueEvent::Admitted { waited: ms(5) },
            QueueEvent::Entered,
            QueueEvent::TimedOut { waited: ms(1000) },
        ]
    );
}

/// Answers the next request with a response of `version`.
async fn answer_over(handle: &mut Handle, version: http::Version) -> String {
    let (req, send) = handle.next_request().await.expect("a request");
    let mut response = Response::new(some_data());
    *response.version_mut() = version;
    send.send_response(response);
    req.uri().path().to_owned()
}

/// Starts `n` requests to `uri`, each polled once.
async fn burst(svc: &mut PerHostLimit<Mock>, uri: &str, n: usize) -> Vec<task::Spawn<Fut>> {
    let mut all = Vec::new();
    for _ in 0..n {
        let mut f = start(svc, uri).await;
        assert_pending!(f.poll());
        all.push(f);
    }
    all
}

/// Polls every pending future once, so that those granted a slot take it.
fn poll_all(all: &mut [task::Spawn<Fut>]) {
    for f in all {
        assert_pending!(f.poll());
    }
}

#[tokio::test(start_paused = true)]
async fn an_http2_host_is_limited_by_streams_not_by_max_per_host() {
    let layer = PerHostLimitLayer::new(2).max_streams_per_host(5);
    let (mut svc, mut handle) = limited(&layer);
    // Plain http: the host starts at max_per_host.
    let mut first = start(&mut svc, "http://h/first").await;
    assert_pending!(first.poll());
    let mut rest = burst(&mut svc, "http://h/x", 7).await;
    assert_eq!((layer.in_flight(), layer.queued()), (2, 6));
    // Its first response is HTTP/2: three more may go at once.
    assert_eq!(
        answer_over(&mut handle, http::Version::HTTP_2).await,
        "/first"
    );
    let response = assert_ready!(first.poll()).unwrap();
    poll_all(&mut rest);
    assert_eq!(
        (layer.in_flight(), layer.queued()),
        (5, 3),
        "max_streams, the first body still unread"
    );
    drop(response);
    poll_all(&mut rest);
    assert_eq!(
        (layer.in_flight(), layer.queued()),
        (5, 2),
        "a freed slot goes to the next waiter"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tls_host_sends_one_request_until_its_protocol_is_known() {
    for (version, then) in [(http::Version::HTTP_2, 5), (http::Version::HTTP_11, 2)] {
        let layer = PerHostLimitLayer::new(2).max_streams_per_host(5);
        let (mut svc, mut handle) = limited(&layer);
        let mut first = start(&mut svc, "https://h/first").await;
        assert_pending!(first.poll());
        let mut rest = burst(&mut svc, "https://h/x", 7).await;
        assert_eq!(
            (layer.in_flight(), layer.queued()),
            (1, 7),
            "the burst is held: one dial"
        );
        answer_over(&mut handle, version).await;
        drop(assert_ready!(first.poll()).unwrap());
        poll_all(&mut rest);
        assert_eq!(layer.in_flight(), then, "{version:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_host_keeps_its_protocol_while_quiet() {
    let layer = PerHostLimitLayer::new(2).max_streams_per_host(5);
    let (mut svc, mut handle) = limited(&layer);
    let mut first = start(&mut svc, "https://h/first").await;
    assert_pending!(first.poll());
    answer_over(&mut handle, http::Version::HTTP_2).await;
    drop(assert_ready!(first.poll()).unwrap());
    assert_eq!(layer.hosts_tracked(), 0, "nothing in flight: not tracked");
    let _burst = burst(&mut svc, "https://h/x", 8).await;
    assert_eq!(
        (layer.in_flight(), layer.queued()),
        (5, 3),
        "no held burst the second time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_named_host_gets_its_own_limit_on_every_port_and_scheme() {
    let layer = PerHostLimitLayer::new(1)
        .max_per_host_for("A.example", 3)
        .max_per_host_for("[::1]", 2);
    let (mut svc, _handle) = limited(&layer);
    let mut held = Vec::new();
    for uri in [
        "http://a.example/",
        "http://a.example:80/x",
        "http://A.EXAMPLE/y",
    ] {
        let mut f = start(&mut svc, uri).await;
        assert_pending!(f.poll());
        held.push(f);
    }
    assert_eq!(
        (layer.in_flight(), layer.queued()),
        (3, 0),
        "3 for a.example"
    );
    let mut more = start(&mut svc, "http://a.example/").await;
    assert_pending!(more.poll());
    assert_eq!(layer.queued(), 1, "the 4th waits");
    // Another port of the host: 3 of its own (an https one would hold its
    // first burst until the protocol is known).
    for _ in 0..3 {
        let mut f = start(&mut svc, "http://a.example:8080/").await;
        assert_pending!(f.poll());
        held.push(f);
    }
    assert_eq!((layer.in_flight(), layer.queued()), (6, 1));
    let mut other = start(&mut svc, "http://b.example/").await;
    assert_pending!(other.poll());
    let mut other2 = start(&mut svc, "http://b.example/").await;
    assert_pending!(other2.poll());
    assert_eq!(
        (layer.in_flight(), layer.queued()),
        (7, 2),
        "1 for b.example"
    );
    let mut v6 = start(&mut svc, "http://[0:0::1]/").await;
    assert_pending!(v6.poll());
    let mut v6b = start(&mut svc, "http://[::1]/").await;
    assert_pending!(v6b.poll());
    assert_eq!(
        (layer.in_flight(), layer.queued()),
        (9, 2),
        "2 for [::1], however spelt"
    );
}

#[tokio::test(start_paused = true)]
async fn max_total_caps_requests_across_hosts() {
    let layer = PerHostLimitLayer::new(10)
        .max_total(2)
        .max_queued(1)
        .queue_timeout(Duration::from_secs(1));
    let (mut svc, mut handle) = limited(&layer);
    let mut a = start(&mut svc, "http://a.example/a").await;
    let mut b = start(&mut svc, "http://b.example/b").await;
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    // A third host: its own slot is free, the total is not.
    let mut c = start(&mut svc, "http://c.example/c").await;
    assert_pending!(c.poll());
    // One more waiting for the total: the total's queue (1) is full.
    let mut d = start(&mut svc, "http://d.example/d").await;
    let err = assert_ready!(d.poll()).unwrap_err();
    let full = err.downcast_ref::<QueueFull>().expect("QueueFull");
    assert_eq!(full.host().to_string(), "http://d.example:80");
    // `a` ends: `c` gets the total's slot, FIFO.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(answer(&mut handle, some_data()).await, "/a");
    drop(assert_ready!(a.poll()).unwrap());
    assert!(c.is_woken());
    assert_pending!(c.poll());
    assert_eq!(answer(&mut handle, some_data()).await, "/b");
    assert_eq!(answer(&mut handle, some_data()).await, "/c");
    let response = assert_ready!(c.poll()).unwrap();
    assert_eq!(
        response.extensions().get::<QueueWait>(),
        Some(&QueueWait(Duration::from_millis(5))),
        "the wait for the total counts"
    );
    // `b` and `c` hold the total: a new host waits, and times out naming
    // its own host.
    let mut e = start(&mut svc, "http://e.example/e").await;
    assert_pending!(e.poll());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let err = assert_ready!(e.poll()).unwrap_err();
    let timeout = err.downcast_ref::<QueueTimeout>().expect("QueueTimeout");
    assert_eq!(timeout.host().to_string(), "http://e.example:80");
    drop((b, response));
    assert_eq!(layer.in_flight(), 0, "every host slot given back");
    assert_eq!(layer.hosts_tracked(), 0);
}

/// A policy that sets every host's limit from a shared number, and
/// counts the samples it is told of.
#[derive(Debug, Default)]
struct Fixed {
    limit: std::sync::atomic::AtomicUsize,
    next: std::sync::atomic::AtomicUsize,
    samples: std::sync::atomic::AtomicUsize,
}

impl super::policy::LimitPolicy for Fixed {
    fn limit(&self, _key: &crate::HostKey, ceiling: usize) -> usize {
        self.limit
            .load(std::sync::atomic::Ordering::SeqCst)
            .clamp(1, ceiling)
    }
    fn sample(
        &self,
        _key: &crate::HostKey,
        _sample: &super::policy::Sample,
        ceiling: usize,
    ) -> Option<usize> {
        self.samples
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match self.next.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            n => Some(n.clamp(1, ceiling)),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_policy_sets_the_limit_below_the_ceiling_and_raises_it_at_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let policy = std::sync::Arc::new(Fixed::default());
    policy.limit.store(2, SeqCst);
    let layer = PerHostLimitLayer::new(10).with_policy(policy.clone());
    let (mut svc, mut handle) = limited(&layer);

    let mut a = start(&mut svc, "http://h/a").await;
    let mut b = start(&mut svc, "http://h/b").await;
    let mut c = start(&mut svc, "http://h/c").await;
    let mut d = start(&mut svc, "http://h/d").await;
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert_pending!(c.poll());
    assert_pending!(d.poll());
    // The policy's 2, not the ceiling's 10.
    assert_eq!((layer.in_flight(), layer.queued()), (2, 2));

    // The first answer tells the policy, which raises the limit to 4: both
    // waiters get slots at once, while a's body still holds its own.
    policy.next.store(4, SeqCst);
    answer(&mut handle, some_data()).await;
    let ra = assert_ready!(a.poll()).unwrap();
    assert_eq!(policy.samples.load(SeqCst), 1);
    assert!(c.is_woken() && d.is_woken(), "both waiters are woken");
    assert_pending!(c.poll());
    assert_pending!(d.poll());
    assert_eq!((layer.in_flight(), layer.queued()), (4, 0));

    // Lowered to 1: nothing in flight is cut; slots come back as bodies
    // end, and none is handed on while the host holds more than 1.
    policy.next.store(1, SeqCst);
    answer(&mut handle, some_data()).await;
    let rb = assert_ready!(b.poll()).unwrap();
    assert_eq!(layer.in_flight(), 4);
    let mut e = start(&mut svc, "http://h/e").await;
    assert_pending!(e.poll());
    drop(ra);
    drop(rb);
    assert_eq!((layer.in_flight(), layer.queued()), (2, 1));
    answer(&mut handle, some_data()).await;
    answer(&mut handle, some_data()).await;
    drop(assert_ready!(c.poll()).unwrap());
    // d still holds its slot, the limit's 1: e waits.
    assert_eq!((layer.in_flight(), layer.queued()), (1, 1));
    assert_pending!(e.poll());
    drop(assert_ready!(d.poll()).unwrap());
    // d's slot goes to e.
    assert!(e.is_woken());
    assert_pending!(e.poll());
    assert_eq!((layer.in_flight(), layer.queued()), (1, 0));
    answer(&mut handle, some_data()).await;
    assert_ready!(e.poll()).unwrap();
}

/// The slots taken and given back without the lock (a host with a free
/// slot and no waiters) and those under it (a host with waiters) never let
/// more requests through than the limit, leave nothing behind, and never
/// strand a waiter: many tasks on four threads, a few hosts, some
/// requests cancelled while they wait, some bodies held a while.
#[test]
fn slots_without_the_lock_keep_the_limit_under_contention() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    const LIMIT: usize = 3;
    const HOSTS: usize = 3;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let now: Arc<Vec<AtomicUsize>> = Arc::new((0..HOSTS).map(|_| AtomicUsize::new(0)).collect());
    let most = Arc::new(AtomicUsize::new(0));
    let layer = PerHostLimitLayer::new(LIMIT);
    let (counts, top) = (now.clone(), most.clone());
    let svc = layer.layer(tower::service_fn(move |req: Request<()>| {
        let host: usize = req.uri().host().unwrap()[1..].parse().unwrap();
        let counts = counts.clone();
        let top = top.clone();
        async move {
            // Counted down when the call ends or is cancelled.
            struct Count(Arc<Vec<AtomicUsize>>, usize);
            impl Drop for Count {
                fn drop(&mut self) {
                    self.0[self.1].fetch_sub(1, SeqCst);
                }
            }
            let n = counts[host].fetch_add(1, SeqCst) + 1;
            let _count = Count(counts, host);
            top.fetch_max(n, SeqCst);
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x"))))
        }
    }));
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..32usize {
            let svc = svc.clone();
            tasks.spawn(async move {
                for i in 0..300usize {
                    let uri = format!("http://h{}/", (t + i) % HOSTS);
                    let req = Request::get(uri).body(()).unwrap();
                    let call = svc.clone().oneshot(req);
                    if (t + i) % 7 == 0 {
                        // Cancelled if it must wait.
                        tokio::select! {
                            biased;
                            r = call => drop(r.unwrap()),
                            () = std::future::ready(()) => {}
                        }
                        continue;
                    }
                    let response = call.await.unwrap();
                    if i % 5 == 0 {
                        tokio::task::yield_now().await;
                    }
                    response.into_body().collect().await.unwrap();
                }
            });
        }
        let all = async { while tasks.join_next().await.is_some() {} };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("every request ends: no waiter is stranded");
    });
    assert!(most.load(SeqCst) <= LIMIT, "{} at once", most.load(SeqCst));
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(layer.queued(), 0);
    assert_eq!(layer.hosts_tracked(), 0);
}

/// Lock sections the calling thread enters while `f` runs.
async fn locks_taken<T>(f: impl std::future::Future<Output = T>) -> (usize, T) {
    let before = super::registry::LOCKS_TAKEN.with(std::cell::Cell::get);
    let out = f.await;
    let after = super::registry::LOCKS_TAKEN.with(std::cell::Cell::get);
    (after.saturating_sub(before), out)
}

/// Once a host is known on a thread and kept while idle, its requests take
/// and give back their slots without the registry's lock while the host
/// has a free slot and no waiters; a host with waiters goes through the
/// lock (FIFO), and so does the first request to a host.
#[tokio::test(flavor = "current_thread")]
async fn a_known_hosts_slots_are_taken_without_the_lock() {
    let layer = PerHostLimitLayer::new(2);
    let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x"))))
    }));
    let one = |svc: &PerHostLimit<_>| {
        let svc = svc.clone();
        async move {
            let response = svc.oneshot(get("http://kept.example/")).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
    };
    // The first request takes the lock to make the host, to learn its
    // protocol from the response, and to keep it.
    let (first, ()) = locks_taken(one(&svc)).await;
    assert_eq!(first, 3);
    let (later, ()) = locks_taken(async {
        for _ in 0..100 {
            one(&svc).await;
        }
    })
    .await;
    assert_eq!(later, 0, "100 requests to a kept host");
    assert_eq!(layer.in_flight(), 0);
    // Both slots held: a third request queues (through the lock) and takes
    // the first slot given back (through the lock too).
    let a = svc
        .clone()
        .oneshot(get("http://kept.example/"))
        .await
        .unwrap();
    let b = svc
        .clone()
        .oneshot(get("http://kept.example/"))
        .await
        .unwrap();
    let mut third = task::spawn(svc.clone().oneshot(get("http://kept.example/")));
    let (queued, ()) = locks_taken(async { assert_pending!(third.poll()) }).await;
    assert!(queued >= 1);
    assert_eq!(layer.queued(), 1);
    let (handed, ()) = locks_taken(async { drop(a) }).await;
    assert_eq!(handed, 1);
    assert!(third.is_woken());
    let c = assert_ready!(third.poll()).unwrap();
    assert_eq!((layer.in_flight(), layer.queued()), (2, 0));
    drop((b, c));
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(layer.hosts_tracked(), 0);
    // No waiter left: the lock-free path again.
    let (again, ()) = locks_taken(one(&svc)).await;
    assert_eq!(again, 0);
}

/// A request's slot reaches its registry through its host's gate: it holds
/// no reference to the registry (one count less to change a request), and
/// one that outlives its layer goes back without one.
#[tokio::test(flavor = "current_thread")]
async fn a_requests_slot_holds_no_reference_to_its_registry() {
    let layer = PerHostLimitLayer::new(1);
    let registry = std::sync::Arc::downgrade(&layer.registry);
    let svc = layer
        .clone()
        .layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x"))))
        }));
    let counts = || registry.strong_count();
    let before = counts();
    // Through the lock (the host's first request), then without it.
    let mut held = None;
    for _ in 0..2 {
        drop(held.take());
        held = Some(
            svc.clone()
                .oneshot(get("http://slot.example/"))
                .await
                .unwrap(),
        );
        assert_eq!(counts(), before);
    }
    let second = held;
    // A waiter holds the registry; the slot handed to it does not.
    let mut third = task::spawn(svc.clone().oneshot(get("http://slot.example/")));
    assert_pending!(third.poll());
    assert_eq!(counts(), before + 1);
    drop(second);
    let third = assert_ready!(third.poll()).unwrap();
    assert_eq!(counts(), before);
    // The layer and its services gone: the slot still goes back.
    drop((svc, layer));
    assert_eq!(counts(), 0);
    drop(third);
}
