//! Properties over random sequences: the per-host limit (acquire, complete,
//! drop, cancel, time out across hosts, with paused time) and the drain
//! (random frame sequences).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use poolguard::drain::{DrainLayer, DrainOutcome};
use poolguard::{PerHostLimitLayer, QueueFull, QueueTimeout};
use proptest::prelude::*;
use tokio_test::task;
use tower::{Service, ServiceExt};

const HOSTS: usize = 3;
const N: usize = 2;

#[derive(Clone, Debug)]
enum Op {
    Start(usize),
    Finish(usize),
    Cancel(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..HOSTS).prop_map(Op::Start),
        3 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (1u64..700).prop_map(Op::Advance),
    ]
}

/// A body that never ends: it holds its slot until dropped.
struct Open;

impl Body for Open {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

fn run_limit(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let arrivals: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
        let seen = arrivals.clone();
        let layer = PerHostLimitLayer::new(N)
            .max_queued(3)
            .queue_timeout(Duration::from_secs(1));
        let mut svc = tower::ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |req: Request<()>| {
                let host: usize = req.uri().host().unwrap_or("h0")[1..].parse().unwrap_or(0);
                let id: usize = req.uri().path()[1..].parse().unwrap_or(0);
                seen.lock().unwrap().push((host, id));
                async { Ok::<_, Infallible>(Response::new(Open)) }
            });
        let mut pending = Vec::new();
        let mut held: Vec<(usize, Response<_>)> = Vec::new();
        for (id, op) in ops.into_iter().enumerate() {
            match op {
                Op::Start(h) => {
                    let req = Request::get(format!("http://h{h}/{id}")).body(()).unwrap();
                    let fut = svc.ready().await.unwrap().call(req);
                    pending.push((h, task::spawn(fut)));
                }
                Op::Finish(i) if !held.is_empty() => {
                    held.remove(i % held.len());
                }
                Op::Cancel(i) if !pending.is_empty() => {
                    drop(pending.remove(i % pending.len()));
                }
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                _ => {}
            }
            // Poll what waits; keep what it returns.
            let mut still = Vec::new();
            for (h, mut fut) in pending {
                match fut.poll() {
                    Poll::Pending => still.push((h, fut)),
                    Poll::Ready(Ok(resp)) => held.push((h, resp)),
                    Poll::Ready(Err(e)) => {
                        prop_assert!(e.is::<QueueFull>() || e.is::<QueueTimeout>(), "{e}");
                    }
                }
            }
            pending = still;
            // Never more than N in flight per host.
            let mut per_host: HashMap<usize, usize> = HashMap::new();
            for (h, _) in &held {
                *per_host.entry(*h).or_default() += 1;
            }
            prop_assert!(per_host.values().all(|n| *n <= N), "{per_host:?}");
            prop_assert_eq!(layer.in_flight(), held.len());
        }
        // FIFO: per host, requests reached the service in call order.
        let arrivals = arrivals.lock().unwrap().clone();
        for h in 0..HOSTS {
            let ids: Vec<usize> = arrivals
                .iter()
                .filter(|(x, _)| *x == h)
                .map(|(_, i)| *i)
                .collect();
            prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "host {h}: {ids:?}");
        }
        drop(held);
        drop(pending);
        prop_assert_eq!(layer.in_flight(), 0);
        prop_assert_eq!(layer.queued(), 0);
        prop_assert_eq!(layer.hosts_tracked(), 0, "per-host state gone when idle");
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn limit_holds_under_random_sequences(ops in proptest::collection::vec(op(), 1..80)) {
        run_limit(ops)?;
    }
}

/// A scripted body: each step is a frame (data of some length, or
/// trailers), an error, or a pause; `end` flips `is_end_stream` at a step.
#[derive(Clone, Debug)]
enum Step {
    Data(usize),
    Trailers,
    Error,
    Pending,
}

struct Script {
    steps: Vec<Step>,
    at: usize,
    end_at: Option<usize>,
    hint: u64,
}

impl Body for Script {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let Some(step) = self.steps.get(self.at).cloned() else {
            return Poll::Ready(None);
        };
        self.at += 1;
        match step {
            Step::Data(n) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0u8; n]))))),
            Step::Trailers => Poll::Ready(Some(Ok(Frame::trailers(http::HeaderMap::new())))),
            Step::Error => Poll::Ready(Some(Err(std::io::Error::other("boom")))),
            Step::Pending => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.end_at.is_some_and(|e| self.at >= e)
    }
    fn size_hint(&self) -> SizeHint {
        let mut h = SizeHint::new();
        h.set_lower(self.hint);
        h
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..3000).prop_map(Step::Data),
        1 => Just(Step::Trailers),
        1 => Just(Step::Error),
        2 => Just(Step::Pending),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn drain_outcomes_stay_within_budgets(
        steps in proptest::collection::vec(step(), 0..40),
        end_at in proptest::option::of(0usize..40),
        hint in 0u64..10_000,
        read_first in 0usize..3,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let max_bytes = 4096u64;
        let max_time = Duration::from_millis(50);
        rt.block_on(async move {
            let outcomes: Arc<Mutex<Vec<DrainOutcome>>> = Arc::default();
            let sink = outcomes.clone();
            let layer = DrainLayer::new()
                .max_bytes(max_bytes)
                .max_time(max_time)
                .on_drain(move |o: &DrainOutcome| sink.lock().unwrap().push(o.clone()));
            let body = Script { steps, at: 0, end_at, hint };
            let response = Mutex::new(Some(Response::new(body)));
            let svc = tower::ServiceBuilder::new().layer(layer.clone()).service_fn(
                move |_: Request<()>| {
                    let r = response.lock().unwrap().take().unwrap();
                    async move { Ok::<_, Infallible>(r) }
                },
            );
            let mut resp = svc.oneshot(Request::new(())).await.unwrap();
            for _ in 0..read_first {
                use http_body_util::BodyExt;
                if tokio::time::timeout(Duration::from_millis(1), resp.body_mut().frame()).await.is_err() {
                    break;
                }
            }
            drop(resp);
            tokio::time::sleep(max_time * 2).await;
            prop_assert_eq!(layer.running(), 0, "no drain left");
            let outcomes = outcomes.lock().unwrap().clone();
            prop_assert!(outcomes.len() <= 1, "{outcomes:?}");
            for o in &outcomes {
                match o {
                    DrainOutcome::Completed { bytes, elapsed, .. } => {
                        // The body's last frame may cross the budget (the
                        // body ended: nothing was left to give up on); no
                        // frame after it.
                        prop_assert!(*bytes <= max_bytes + 2999);
                        prop_assert!(*elapsed <= max_time);
                    }
                    DrainOutcome::GaveUpBytes { bytes, elapsed } => {
                        // Gives up on the first frame past the budget.
                        prop_assert!(*bytes > max_bytes && *bytes <= max_bytes + 3000);
                        prop_assert!(*elapsed <= max_time);
                    }
                    DrainOutcome::GaveUpTime { bytes, elapsed } => {
                        prop_assert!(*bytes <= max_bytes);
                        prop_assert_eq!(*elapsed, max_time);
                    }
                    DrainOutcome::Failed { bytes, .. } => prop_assert!(*bytes <= max_bytes),
                    DrainOutcome::Skipped(_) => {}
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
            }
            Ok(())
        })?;
    }
}
