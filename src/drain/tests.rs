//! State-machine tests of the drain with scripted bodies and paused time.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::{DrainBody, DrainLayer, DrainOutcome, SkipReason};

#[derive(Debug)]
struct MockError;

impl std::fmt::Display for MockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock error")
    }
}

impl std::error::Error for MockError {}

type Item = Result<Frame<Bytes>, MockError>;

/// Probes shared between a test and its [`Scripted`] body.
#[derive(Clone, Default)]
struct Probe {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    end: Arc<AtomicBool>,
}

/// A body whose frames the test sends through a channel; the body ends when
/// the sender is dropped.
struct Scripted {
    rx: mpsc::UnboundedReceiver<Item>,
    hint: SizeHint,
    probe: Probe,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = MockError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MockError>>> {
        self.probe.polls.fetch_add(1, Ordering::SeqCst);
        self.rx.poll_recv(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.probe.end.load(Ordering::SeqCst)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.probe.dropped.store(true, Ordering::SeqCst);
    }
}

fn scripted() -> (mpsc::UnboundedSender<Item>, Scripted, Probe) {
    let (tx, rx) = mpsc::unbounded_channel();
    let probe = Probe::default();
    let body = Scripted {
        rx,
        hint: SizeHint::default(),
        probe: probe.clone(),
    };
    (tx, body, probe)
}

fn data(n: usize) -> Item {
    Ok(Frame::data(Bytes::from(vec![b'x'; n])))
}

/// A layer whose hook records every outcome.
fn recording(layer: DrainLayer) -> (DrainLayer, Arc<Mutex<Vec<DrainOutcome>>>) {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let sink = outcomes.clone();
    let layer = layer.on_drain(move |o: &DrainOutcome| {
        if let Ok(mut v) = sink.lock() {
            v.push(o.clone());
        }
    });
    (layer, outcomes)
}

fn taken(outcomes: &Mutex<Vec<DrainOutcome>>) -> Vec<DrainOutcome> {
    std::mem::take(&mut *outcomes.lock().unwrap())
}

/// Passes `response` through a `Drain` service made by `layer`, for a
/// request without a host.
async fn through<B>(layer: &DrainLayer, response: Response<B>) -> Response<DrainBody<B>>
where
    B: Body + Send + 'static,
{
    through_to(layer, response, "/").await
}

/// Passes `response` through a `Drain` service made by `layer`, for a
/// request to `uri`.
async fn through_to<B>(
    layer: &DrainLayer,
    response: Response<B>,
    uri: &str,
) -> Response<DrainBody<B>>
where
    B: Body + Send + 'static,
{
    let response = Mutex::new(Some(response));
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |_: http::Request<()>| {
            let response = response.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(response) }
        });
    let req = http::Request::get(uri).body(()).unwrap();
    svc.oneshot(req).await.unwrap()
}

/// Lets spawned tasks run to their next await point.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn drop_before_eof_drains_the_rest_in_the_background() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (tx, body, probe) = scripted();
    tx.send(data(100)).unwrap();
    let mut resp = through(&layer, Response::new(body)).await;
    let first = resp.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap().len(), 100);

    drop(resp);
    assert_eq!(layer.running(), 1, "a drain task was spawned");
    assert!(!probe.dropped.load(Ordering::SeqCst));

    tokio::time::sleep(Duration::from_millis(10)).await;
    tx.send(data(300)).unwrap();
    tx.send(data(200)).unwrap();
    drop(tx);
    settle().await;

    assert!(probe.dropped.load(Ordering::SeqCst), "body released at EOF");
    assert_eq!(layer.running(), 0);
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Completed {
            bytes: 500,
            elapsed: Duration::from_millis(10),
            inline: false
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn gives_up_exactly_at_max_time() {
    let max_time = Duration::from_millis(100);
    let (layer, outcomes) = recording(DrainLayer::new().max_time(max_time));
    let (tx, body, probe) = scripted();
    let resp = through(&layer, Response::new(body)).await;
    drop(resp);

    tokio::time::sleep(max_time - Duration::from_millis(1)).await;
    tx.send(data(10)).unwrap();
    settle().await;
    assert!(!probe.dropped.load(Ordering::SeqCst), "still draining");
    assert!(taken(&outcomes).is_empty());

    tokio::time::sleep(Duration::from_millis(1)).await;
    settle().await;
    assert!(probe.dropped.load(Ordering::SeqCst), "gave up and dropped");
    assert_eq!(layer.running(), 0);
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::GaveUpTime {
            bytes: 10,
            elapsed: max_time
        }]
    );
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn gives_up_past_max_bytes() {
    let (layer, outcomes) = recording(DrainLayer::new().max_bytes(1000));
    let (tx, body, probe) = scripted();
    let resp = through(&layer, Response::new(body)).await;
    drop(resp);

    tx.send(data(600)).unwrap();
    settle().await;
    tx.send(data(400)).unwrap();
    settle().await;
    assert!(
        !probe.dropped.load(Ordering::SeqCst),
        "exactly max_bytes is within budget"
    );
    tx.send(data(1)).unwrap();
    settle().await;
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::GaveUpBytes {
            bytes: 1001,
            elapsed: Duration::ZERO
        }]
    );
    assert_eq!(layer.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn content_length_over_budget_is_skipped_unread() {
    let (layer, outcomes) = recording(DrainLayer::new().max_bytes(1024));
    let (tx, body, probe) = scripted();
    tx.send(data(10)).unwrap();
    let resp = Response::builder()
        .header(http::header::CONTENT_LENGTH, "1025")
        .body(body)
        .unwrap();
    let resp = through(&layer, resp).await;
    drop(resp);
    assert_eq!(probe.polls.load(Ordering::SeqCst), 0, "never read");
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Skipped(SkipReason::TooLarge)]
    );
    assert_eq!(layer.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn content_length_counts_what_the_caller_read() {
    let (layer, outcomes) = recording(DrainLayer::new().max_bytes(1024));
    let (tx, body, _probe) = scripted();
    tx.send(data(1000)).unwrap();
    let resp = Response::builder()
        .header(http::header::CONTENT_LENGTH, "2000")
        .body(body)
        .unwrap();
    let mut resp = through(&layer, resp).await;
    resp.body_mut().frame().await.unwrap().unwrap();
    drop(resp); // 1000 remaining: within budget, drained in the background
    assert_eq!(layer.running(), 1);
    tx.send(data(1000)).unwrap();
    drop(tx);
    settle().await;
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Completed {
            bytes: 1000,
            elapsed: Duration::ZERO,
            inline: false
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn size_hint_over_budget_is_skipped_unread() {
    let (layer, outcomes) = recording(DrainLayer::new().max_bytes(10));
    let (_tx, mut body, probe) = scripted();
    body.hint = SizeHint::with_exact(11);
    drop(through(&layer, Response::new(body)).await);
    assert_eq!(probe.polls.load(Ordering::SeqCst), 0);
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Skipped(SkipReason::TooLarge)]
    );
}

#[tokio::test(start_paused = true)]
async fn http2_response_is_drained_too() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (tx, body, probe) = scripted();
    let resp = Response::builder()
        .version(Version::HTTP_2)
        .body(body)
        .unwrap();
    drop(through(&layer, resp).await);
    assert!(!probe.dropped.load(Ordering::SeqCst), "read, not reset");
    tx.send(data(4)).unwrap();
    drop(tx);
    settle().await;
    assert!(probe.dropped.load(Ordering::SeqCst));
    let outcomes = taken(&outcomes);
    assert!(
        matches!(outcomes[..], [DrainOutcome::Completed { bytes: 4, .. }]),
        "{outcomes:?}"
    );
}

#[test]
fn no_runtime_no_panic_no_drain() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (tx, body, probe) = scripted();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resp = rt.block_on(through(&layer, Response::new(body)));
    drop(rt);
    drop(resp); // no runtime is current here
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Skipped(SkipReason::NoRuntime)]
    );
    assert_eq!(layer.running(), 0);
    drop(tx);
}

#[test]
fn runtime_without_timer_no_panic_no_drain() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (tx, body, probe) = scripted();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        drop(through(&layer, Response::new(body)).await);
    });
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Skipped(SkipReason::NoRuntime)]
    );
    assert_eq!(layer.running(), 0);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn body_already_at_end_costs_no_task() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (_tx, body, probe) = scripted();
    probe.end.store(true, Ordering::SeqCst);
    let resp = through(&layer, Response::new(body)).await;
    assert!(resp.body().is_complete());
    assert!(resp.body().is_end_stream());
    drop(resp);
    assert_eq!(layer.running(), 0);
    assert_eq!(probe.polls.load(Ordering::SeqCst), 0);
    assert!(taken(&outcomes).is_empty(), "nothing to report");
}

#[tokio::test(start_paused = true)]
async fn body_read_to_end_costs_no_task() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (tx, body, probe) = scripted();
    tx.send(data(5)).unwrap();
    drop(tx);
    let resp = through(&layer, Response::new(body)).await;
    let collected = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(collected.len(), 5);
    assert!(probe.dropped.load(Ordering::SeqCst), "released at its end");
    assert_eq!(layer.running(), 0);
    assert!(taken(&outcomes).is_empty());
}

#[tokio::test(start_paused = true)]
async fn body_that_reaches_end_stream_is_complete() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (tx, body, probe) = scripted();
    tx.send(data(5)).unwrap();
    let mut resp = through(&layer, Response::new(body)).await;
    assert!(!resp.body().is_end_stream());
    resp.body_mut().frame().await.unwrap().unwrap();
    probe.end.store(true, Ordering::SeqCst);
    assert!(resp.body().is_end_stream(), "forwarded");
    drop(resp);
    assert!(taken(&outcomes).is_empty());
    assert_eq!(layer.running(), 0);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn small_buffered_body_is_finished_inline() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let resp = through(&layer, Response::new(Full::new(Bytes::from("hello")))).await;
    assert_eq!(resp.body().size_hint().exact(), Some(5), "forwarded");
    drop(resp);
    assert_eq!(layer.running(), 0, "no task");
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Completed {
            bytes: 5,
            elapsed: Duration::ZERO,
            inline: true
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_is_respected() {
    let (layer, outcomes) = recording(DrainLayer::new().max_concurrent(2));
    let mut senders = Vec::new();
    let mut probes = Vec::new();
    for _ in 0..3 {
        let (tx, body, probe) = scripted();
        drop(through(&layer, Response::new(body)).await);
        senders.push(tx);
        probes.push(probe);
    }
    assert_eq!(layer.running(), 2);
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Skipped(SkipReason::TooManyDrains)]
    );
    assert!(probes[2].dropped.load(Ordering::SeqCst));
    assert!(!probes[0].dropped.load(Ordering::SeqCst));

    // A finished drain frees its slot for the next one.
    senders.remove(0);
    settle().await;
    assert_eq!(layer.running(), 1);
    let (_tx, body, _probe) = scripted();
    drop(through(&layer, Response::new(body)).await);
    assert_eq!(layer.running(), 2);
    assert_eq!(taken(&outcomes).len(), 1, "the finished drain only");
}

#[tokio::test(start_paused = true)]
async fn body_error_during_drain_is_reported() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (tx, body, probe) = scripted();
    drop(through(&layer, Response::new(body)).await);
    tx.send(data(7)).unwrap();
    tx.send(Err(MockError)).unwrap();
    settle().await;
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Failed {
            bytes: 7,
            elapsed: Duration::ZERO
        }]
    );
    assert_eq!(layer.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn trailers_end_the_drain() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (tx, body, _probe) = scripted();
    drop(through(&layer, Response::new(body)).await);
    tx.send(data(3)).unwrap();
    tx.send(Ok(Frame::trailers(http::HeaderMap::new())))
        .unwrap();
    drop(tx);
    settle().await;
    assert!(matches!(
        taken(&outcomes).as_slice(),
        [DrainOutcome::Completed { bytes: 3, .. }]
    ));
}

#[tokio::test(start_paused = true)]
async fn endless_empty_frames_are_bounded_by_time() {
    /// Always ready, never ends, never yields data.
    struct Empties;
    impl Body for Empties {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::new()))))
        }
    }
    let (layer, outcomes) = recording(DrainLayer::new().max_time(Duration::from_millis(5)));
    drop(through(&layer, Response::new(Empties)).await);
    assert_eq!(
        layer.running(),
        1,
        "inline polling stopped after a few frames"
    );
    settle().await;
    assert_eq!(
        layer.running(),
        1,
        "the task yields but does not finish early"
    );
    // The always-ready task keeps the runtime busy, so the paused clock does
    // not auto-advance: move it by hand.
    tokio::time::advance(Duration::from_millis(5)).await;
    settle().await;
    assert_eq!(layer.running(), 0);
    assert!(matches!(
        taken(&outcomes).as_slice(),
        [DrainOutcome::GaveUpTime { bytes: 0, .. }]
    ));
}

#[test]
fn runtime_shutdown_during_drain_aborts_without_panic() {
    let (layer, outcomes) = recording(DrainLayer::new().max_time(Duration::from_secs(3600)));
    let (tx, body, probe) = scripted();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        drop(through(&layer, Response::new(body)).await);
    });
    assert_eq!(layer.running(), 1);
    drop(rt);
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert_eq!(layer.running(), 0);
    assert!(matches!(
        taken(&outcomes).as_slice(),
        [DrainOutcome::Aborted { bytes: 0, .. }]
    ));
    drop(tx);
}

#[tokio::test]
async fn errors_pass_through_unchanged() {
    let svc = tower::ServiceBuilder::new()
        .layer(DrainLayer::new())
        .service_fn(|_: http::Request<()>| async { Err::<Response<Full<Bytes>>, _>(MockError) });
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    assert_eq!(err.to_string(), "mock error");
}

#[test]
fn drain_body_is_send_and_sync_when_its_body_is() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DrainBody<Full<Bytes>>>();
    assert_send_sync::<DrainBody<hyper::body::Incoming>>();
}

/// One frame of `n` bytes, the body's last: `is_end_stream` becomes true
/// only once it was polled. No size hint.
struct LastFrame(Option<usize>);

impl Body for LastFrame {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.0
                .take()
                .map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; n])))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

#[tokio::test(start_paused = true)]
async fn a_last_frame_past_max_bytes_that_ends_the_body_completes_inline() {
    let (layer, outcomes) = recording(DrainLayer::new().max_bytes(1000));
    let resp = through(&layer, Response::new(LastFrame(Some(1001)))).await;
    drop(resp);
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Completed {
            bytes: 1001,
            elapsed: Duration::ZERO,
            inline: true
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_last_frame_past_max_bytes_that_ends_the_body_completes_in_the_task() {
    let (layer, outcomes) = recording(DrainLayer::new().max_bytes(1000));
    let (tx, body, probe) = scripted();
    let resp = through(&layer, Response::new(body)).await;
    drop(resp);
    assert_eq!(layer.running(), 1);
    // The frame is the body's last: the body says so once it is read.
    probe.end.store(true, Ordering::SeqCst);
    tx.send(data(1001)).unwrap();
    settle().await;
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Completed {
            bytes: 1001,
            elapsed: Duration::ZERO,
            inline: false
        }]
    );
    assert_eq!(layer.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_max_time_past_the_end_of_time_is_no_limit() {
    let (layer, outcomes) = recording(DrainLayer::new().max_time(Duration::MAX));
    let (tx, body, probe) = scripted();
    let resp = through(&layer, Response::new(body)).await;
    // Panicked here ("overflow when adding duration to instant") before.
    drop(resp);
    assert_eq!(layer.running(), 1);
    tokio::time::sleep(Duration::from_secs(86_400 * 365)).await;
    assert!(!probe.dropped.load(Ordering::SeqCst), "still draining");
    tx.send(data(10)).unwrap();
    drop(tx);
    settle().await;
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert!(matches!(
        taken(&outcomes).as_slice(),
        [DrainOutcome::Completed { bytes: 10, .. }]
    ));
}

#[tokio::test(start_paused = true)]
async fn a_layer_configured_after_cloning_shares_the_drain_count() {
    let first = DrainLayer::new();
    let second = first
        .clone()
        .max_time(Duration::from_secs(1))
        .max_concurrent(1);
    let (tx, body, _probe) = scripted();
    drop(through(&second, Response::new(body)).await);
    assert_eq!((first.running(), second.running()), (1, 1));
    // The clone's bound of 1 counts the drains of both.
    let (_tx2, body, _probe2) = scripted();
    let (layer, outcomes) = recording(second.clone());
    drop(through(&layer, Response::new(body)).await);
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Skipped(SkipReason::TooManyDrains)]
    );
    drop(tx);
    settle().await;
    assert_eq!(first.running(), 0);
}

/// Whether anything waits for a host's slots: set by the test.
#[derive(Debug, Default)]
struct Waiting(AtomicBool);

impl crate::conn::Demand for Waiting {
    fn waiting(&self, _key: &crate::key::HostKey) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A layer whose drains are priced: a new connection to `http://h` costs
/// 5 ms, and `waiting` says whether anything waits for its slots.
fn priced(layer: DrainLayer) -> (DrainLayer, Arc<Waiting>) {
    let costs = Arc::new(crate::conn::DialCosts::default());
    let host = crate::key::HostKey::from_uri(&"http://h/".parse().unwrap()).unwrap();
    costs.record(&host, Duration::from_millis(5));
    let waiting = Arc::new(Waiting::default());
    let pricing = crate::conn::Pricing {
        costs,
        demand: vec![waiting.clone()],
    };
    (layer.priced(pricing), waiting)
}

/// Passes `response` through a `Drain` made by `layer`, for a request to
/// `http://h/`.
async fn through_h<B>(layer: &DrainLayer, response: Response<B>) -> Response<DrainBody<B>>
where
    B: Body + Send + 'static,
{
    through_to(layer, response, "http://h/").await
}

#[tokio::test(start_paused = true)]
async fn a_priced_drain_gives_up_at_the_dial_cost_while_a_request_waits() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (layer, waiting) = priced(layer);
    waiting.0.store(true, Ordering::SeqCst);
    let (tx, body, probe) = scripted();
    drop(through_h(&layer, Response::new(body)).await);

    tokio::time::sleep(Duration::from_millis(4)).await;
    tx.send(data(10)).unwrap();
    settle().await;
    assert!(taken(&outcomes).is_empty(), "renting: cheaper than a dial");

    tokio::time::sleep(Duration::from_millis(1)).await;
    settle().await;
    assert!(probe.dropped.load(Ordering::SeqCst), "gave up and dropped");
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::GaveUpCost {
            bytes: 10,
            elapsed: Duration::from_millis(5)
        }]
    );
    assert_eq!(layer.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_nobody_waiting_a_priced_drain_goes_on_until_someone_does() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (layer, waiting) = priced(layer);
    let (tx, body, probe) = scripted();
    drop(through_h(&layer, Response::new(body)).await);

    // Past the dial cost, nobody waits: the budgets apply.
    tokio::time::sleep(Duration::from_millis(30)).await;
    settle().await;
    assert!(!probe.dropped.load(Ordering::SeqCst));
    // A request starts waiting at 32 ms: the next look (every dial cost,
    // so at 35 ms) gives up.
    tokio::time::sleep(Duration::from_millis(2)).await;
    waiting.0.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2)).await;
    settle().await;
    assert!(!probe.dropped.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(1)).await;
    settle().await;
    assert!(probe.dropped.load(Ordering::SeqCst));
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::GaveUpCost {
            bytes: 0,
            elapsed: Duration::from_millis(35)
        }]
    );
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_ends_sooner_than_a_dial_is_finished() {
    let (layer, outcomes) = recording(DrainLayer::new());
    let (layer, waiting) = priced(layer);
    waiting.0.store(true, Ordering::SeqCst);
    let (tx, body, _probe) = scripted();
    let response = Response::builder()
        .header(http::header::CONTENT_LENGTH, "1000")
        .body(body)
        .unwrap();
    drop(through_h(&layer, response).await);

    // 900 of 1000 bytes in the first 4 ms: the last 100 come in well under
    // a dial's 5 ms at that rate, so the drain goes on past 5 ms.
    tokio::time::sleep(Duration::from_millis(4)).await;
    tx.send(data(900)).unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    settle().await;
    assert!(taken(&outcomes).is_empty(), "still draining at 6 ms");
    tx.send(data(100)).unwrap();
    drop(tx);
    settle().await;
    assert!(matches!(
        taken(&outcomes)[..],
        [DrainOutcome::Completed { bytes: 1000, .. }]
    ));
}

#[tokio::test(start_paused = true)]
async fn an_unpriced_drain_keeps_its_budgets() {
    // A `DrainLayer` of its own (not a guard's) has no price: 100 ms.
    let (layer, outcomes) = recording(DrainLayer::new());
    let (tx, body, _probe) = scripted();
    drop(through_h(&layer, Response::new(body)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    settle().await;
    assert!(matches!(
        taken(&outcomes)[..],
        [DrainOutcome::GaveUpTime { .. }]
    ));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_stream_gives_up_at_once_when_a_dial_costs_less_than_a_timer_tick() {
    for (length, at_once) in [(None, true), (Some("1000"), false)] {
        let (layer, outcomes) = recording(DrainLayer::new());
        let costs = Arc::new(crate::conn::DialCosts::default());
        let host = crate::key::HostKey::from_uri(&"http://h/".parse().unwrap()).unwrap();
        costs.record(&host, Duration::from_micros(200));
        let waiting = Arc::new(Waiting(AtomicBool::new(true)));
        let layer = layer.priced(crate::conn::Pricing {
            costs,
            demand: vec![waiting],
        });
        let (tx, body, probe) = scripted();
        let mut response = Response::new(body);
        if let Some(length) = length {
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, length.parse().unwrap());
        }
        drop(through_h(&layer, response).await);
        assert_eq!(
            probe.dropped.load(Ordering::SeqCst),
            at_once,
            "Content-Length {length:?}"
        );
        if at_once {
            assert!(matches!(
                taken(&outcomes)[..],
                [DrainOutcome::GaveUpCost { bytes: 0, .. }]
            ));
            assert_eq!(layer.running(), 0, "no drain slot taken");
        } else {
            // A body of known length gets its look at the price, a timer
            // tick later.
            assert!(taken(&outcomes).is_empty());
            tokio::time::sleep(Duration::from_millis(1)).await;
            settle().await;
            assert!(matches!(
                taken(&outcomes)[..],
                [DrainOutcome::GaveUpCost { .. }]
            ));
        }
        drop(tx);
    }
}

#[tokio::test]
async fn a_drain_finished_on_drop_reports_no_wait_and_reads_no_clock() {
    // Real time: reading what had already arrived took 20 ms of the
    // dropping thread, but the drain waited for nothing.
    let (layer, outcomes) = recording(DrainLayer::new());
    let slow = LastFrame(Some(7)).map_frame(|frame| {
        std::thread::sleep(Duration::from_millis(20));
        frame
    });
    let resp = through(&layer, Response::new(slow)).await;
    drop(resp);
    assert_eq!(
        taken(&outcomes),
        vec![DrainOutcome::Completed {
            bytes: 7,
            elapsed: Duration::ZERO,
            inline: true
        }]
    );
}

/// A body shows what it has read until it is complete; a complete one
/// shows only that (what it knew went with its allocation).
#[tokio::test(start_paused = true)]
async fn debug_shows_what_the_body_knows() {
    let layer = DrainLayer::new();
    let (tx, body, _probe) = scripted();
    tx.send(data(5)).unwrap();
    let mut resp = through(&layer, Response::new(body)).await;
    resp.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(
        format!("{:?}", resp.body()),
        "DrainBody { complete: false, read: 5, content_length: None, .. }"
    );
    let response = Response::builder()
        .header(http::header::CONTENT_LENGTH, "10")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .unwrap();
    let mut resp = through(&layer, response).await;
    assert_eq!(
        format!("{:?}", resp.body()),
        "DrainBody { complete: false, read: 0, content_length: Some(10), .. }"
    );
    resp.body_mut().frame().await.unwrap().unwrap();
    assert!(resp.body().is_complete());
    assert_eq!(
        format!("{:?}", resp.body()),
        "DrainBody { complete: true, .. }"
    );
    drop(tx);
}
