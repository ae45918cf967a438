use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use std::time::Duration;

use super::body::Inner;
use super::hook::DrainOutcome;
use super::layer::Shared;
use crate::body_end::Polled;
use crate::conn::{Exchange, Pricing};
use crate::key::HostKey;

/// Frames a drain reads in one poll before it yields to the runtime, so that
/// a body that is always ready cannot monopolise a worker thread.
const FRAMES_PER_POLL: usize = 64;

/// tokio's timer fires on millisecond ticks: no look at the price can come
/// sooner after a drop, nor two looks closer together.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// The price of a drain: a new connection to its host, and what is known
/// of the body's rest (the ski-rental rule, see the module docs).
#[derive(Debug)]
pub(crate) struct Rent {
    host: HostKey,
    /// What a new connection to the host costs.
    cost: Duration,
    /// Bytes of the body still to come, from its `Content-Length`.
    remaining: Option<u64>,
}

impl Rent {
    /// The price of draining a body of `host`, of which `remaining` bytes
    /// are known to come.
    pub(crate) fn new(host: HostKey, remaining: Option<u64>, pricing: &Pricing) -> Self {
        let cost = pricing.costs.estimate(&host);
        Rent {
            host,
            cost,
            remaining,
        }
    }

    /// Whether to give up at once, before any task: something waits for
    /// the host's slots, a new connection costs less than the timer's
    /// resolution (the drain could not look again before renting had cost
    /// more than buying), and the body's length is unknown (a stream,
    /// which may trickle; a body of known length is expected at the
    /// connection's rate, and gets its look at the price).
    pub(crate) fn buy_now(&self, pricing: &Pricing) -> bool {
        self.remaining.is_none() && self.cost < TIMER_TICK && pricing.wanted(&self.host)
    }

    /// Whether the drain is to give up now, `elapsed` into it after reading
    /// `bytes`: something waits for the host's slots, and the rest of the
    /// body is not known to come sooner than a new connection would.
    fn give_up(&self, pricing: &Pricing, bytes: u64, elapsed: Duration) -> bool {
        if !pricing.wanted(&self.host) {
            return false;
        }
        let finishes_sooner = match self.remaining {
            Some(total) if bytes > 0 => {
                let left = total.saturating_sub(bytes);
                // At the rate seen so far: left / (bytes / elapsed).
                let nanos = u128::from(left).saturating_mul(elapsed.as_nanos()) / u128::from(bytes);
                nanos < self.cost.as_nanos()
            }
            _ => false,
        };
        !finishes_sooner
    }
}

pin_project! {
    /// The background drain of one body: reads and discards frames until the
    /// end, the byte budget, the deadline, an error or, when priced, the
    /// moment going on costs more than a new connection.
    pub(crate) struct DrainTask<B> {
        // `None`: the time budget is past the end of time (no limit).
        #[pin]
        deadline: Option<Sleep>,
        // When a priced drain next looks at its price.
        #[pin]
        check: Option<Sleep>,
        body: Option<Pin<Box<Inner<B>>>>,
        guard: TaskGuard,
        rent: Option<Rent>,
    }
}

/// Holds one of the `max_concurrent` drain slots; reports an abort if the
/// task is dropped before it finished (its runtime shut down).
struct TaskGuard {
    shared: Arc<Shared>,
    conn: Option<Exchange>,
    bytes: u64,
    start: Instant,
    finished: bool,
}

impl TaskGuard {
    /// Tells the body's connection first: dropping the body may close the
    /// connection, whose close reason must already know the outcome.
    fn tell_connection(&self, outcome: &DrainOutcome) {
        if let Some(exchange) = &self.conn {
            exchange.body_ended(outcome.body_end());
        }
    }

    fn finish(&mut self, outcome: DrainOutcome) {
        self.finished = true;
        if !outcome.is_completed() {
            tracing::debug!(?outcome, "background drain gave up");
        }
        self.shared.hook.on_drain(&outcome);
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = DrainOutcome::Aborted {
                bytes: self.bytes,
                elapsed: self.start.elapsed(),
            };
            self.tell_connection(&outcome);
            self.finish(outcome);
        }
        self.shared.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<B> DrainTask<B>
where
    B: Body,
{
    /// A drain of `body`, which was dropped at `start` after `bytes` were
    /// drained inline. The caller has taken one drain slot, which the task
    /// gives back when it ends (or here, if it cannot be made).
    ///
    /// Returns `None` when the current runtime has no timer: a drain without
    /// a deadline would let a slow peer pin it forever.
    pub(crate) fn new(
        body: Pin<Box<Inner<B>>>,
        shared: Arc<Shared>,
        conn: Option<Exchange>,
        bytes: u64,
        start: Instant,
        rent: Option<Rent>,
    ) -> Option<Self> {
        let mut guard = TaskGuard {
            conn,
            bytes,
            start,
            finished: false,
            shared,
        };
        // Priced: the first look at the price is when the drain has cost
        // as much as a new connection.
        let check = rent
            .as_ref()
            .and_then(|rent| start.checked_add(rent.cost))
            .and_then(crate::timer::sleep_until);
        // A budget of `Duration::MAX` runs past the end of time: no limit.
        let Some(deadline) = start.checked_add(guard.shared.config.max_time) else {
            return Some(DrainTask {
                deadline: None,
                check,
                body: Some(body),
                guard,
                rent,
            });
        };
        // tokio panics when the runtime was built without `enable_time`.
        match crate::timer::sleep_until(deadline) {
            Some(deadline) => Some(DrainTask {
                deadline: Some(deadline),
                check,
                body: Some(body),
                guard,
                rent,
            }),
            None => {
                guard.finished = true;
                None
            }
        }
    }
}

impl<B> Future for DrainTask<B>
where
    B: Body,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let guard = this.guard;
        let mut outcome = None;
        let mut waiting = false;
        for _ in 0..FRAMES_PER_POLL {
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(());
            };
            let polled = body.as_mut().body_mut().poll_frame(cx);
            let step = Polled::of(&polled, || body.body().is_end_stream());
            guard.bytes = guard.bytes.saturating_add(step.data());
            let (bytes, elapsed) = (guard.bytes, guard.start.elapsed());
            outcome = match step {
                // The clocks are looked at only when the body has to wait
                // (or after a run of ready frames, below): a drain that
                // finishes without waiting never sets a timer.
                Polled::Pending => {
                    waiting = true;
                    break;
                }
                Polled::Error => Some(DrainOutcome::Failed { bytes, elapsed }),
                // The body ended: complete, even if its last frame crossed
                // the byte budget.
                done if done.is_done() => Some(DrainOutcome::Completed {
                    bytes,
                    elapsed,
                    inline: false,
                }),
                _ if bytes > guard.shared.config.max_bytes => {
                    Some(DrainOutcome::GaveUpBytes { bytes, elapsed })
                }
                _ => continue,
            };
            break;
        }
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                let expired = this
                    .deadline
                    .as_mut()
                    .as_pin_mut()
                    .is_some_and(|d| d.poll(cx).is_ready());
                let (bytes, elapsed) = (guard.bytes, guard.start.elapsed());
                if expired {
                    DrainOutcome::GaveUpTime { bytes, elapsed }
                } else if too_dear(this.check.as_mut(), this.rent, guard, cx) {
                    DrainOutcome::GaveUpCost { bytes, elapsed }
                } else {
                    // Waiting on the body, whose waker is registered; or
                    // yielding after a run of ready frames, so that a body
                    // that is always ready cannot hold a worker thread.
                    if !waiting {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
            }
        };
        // Drop the body (and whatever it holds) before reporting to the
        // hook, so that a hook that sees the outcome sees the body gone.
        guard.tell_connection(&outcome);
        *this.body = None;
        guard.finish(outcome);
        Poll::Ready(())
    }
}

/// Whether a priced drain is to give up now: its look at the price is due,
/// and the price says so. Otherwise the next look is set, one dial cost on
/// (at least a [`TIMER_TICK`]).
fn too_dear(
    check: Pin<&mut Option<Sleep>>,
    rent: &Option<Rent>,
    guard: &TaskGuard,
    cx: &mut Context<'_>,
) -> bool {
    let (Some(mut check), Some(rent), Some(pricing)) = (
        check.as_pin_mut(),
        rent.as_ref(),
        guard.shared.pricing.as_ref(),
    ) else {
        return false;
    };
    if check.as_mut().poll(cx).is_pending() {
        return false;
    }
    let elapsed = guard.start.elapsed();
    if rent.give_up(pricing, guard.bytes, elapsed) {
        return true;
    }
    let next = Instant::now().checked_add(rent.cost.max(TIMER_TICK));
    if let Some(next) = next {
        check.as_mut().reset(next);
        // Registers the timer's waker.
        let _ = check.poll(cx);
    }
    false
}
