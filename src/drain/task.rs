use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::hook::DrainOutcome;
use super::layer::Shared;
use crate::body_end::Polled;
use crate::conn::Exchange;

/// Frames a drain reads in one poll before it yields to the runtime, so that
/// a body that is always ready cannot monopolise a worker thread.
const FRAMES_PER_POLL: usize = 64;

pin_project! {
    /// The background drain of one body: reads and discards frames until the
    /// end, the byte budget, the deadline or an error.
    pub(crate) struct DrainTask<B> {
        // `None`: the time budget is past the end of time (no limit).
        #[pin]
        deadline: Option<Sleep>,
        body: Option<Pin<Box<B>>>,
        guard: TaskGuard,
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
        body: Pin<Box<B>>,
        shared: Arc<Shared>,
        conn: Option<Exchange>,
        bytes: u64,
        start: Instant,
    ) -> Option<Self> {
        let mut guard = TaskGuard {
            conn,
            bytes,
            start,
            finished: false,
            shared,
        };
        // A budget of `Duration::MAX` runs past the end of time: no limit.
        let Some(deadline) = start.checked_add(guard.shared.config.max_time) else {
            return Some(DrainTask {
                deadline: None,
                body: Some(body),
                guard,
            });
        };
        // tokio panics when the runtime was built without `enable_time`.
        match crate::timer::sleep_until(deadline) {
            Some(deadline) => Some(DrainTask {
                deadline: Some(deadline),
                body: Some(body),
                guard,
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
        for _ in 0..FRAMES_PER_POLL {
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(());
            };
            let expired = this
                .deadline
                .as_mut()
                .as_pin_mut()
                .is_some_and(|d| d.poll(cx).is_ready());
            let outcome = if expired {
                DrainOutcome::GaveUpTime {
                    bytes: guard.bytes,
                    elapsed: guard.start.elapsed(),
                }
            } else {
                let polled = body.as_mut().poll_frame(cx);
                let step = Polled::of(&polled, || body.is_end_stream());
                guard.bytes = guard.bytes.saturating_add(step.data());
                let (bytes, elapsed) = (guard.bytes, guard.start.elapsed());
                match step {
                    Polled::Pending => return Poll::Pending,
                    Polled::Error => DrainOutcome::Failed { bytes, elapsed },
                    // The body ended: complete, even if its last frame
                    // crossed the byte budget.
                    done if done.is_done() => DrainOutcome::Completed {
                        bytes,
                        elapsed,
                        inline: false,
                    },
                    _ if bytes > guard.shared.config.max_bytes => {
                        DrainOutcome::GaveUpBytes { bytes, elapsed }
                    }
                    _ => continue,
                }
            };
            // Drop the body (and whatever it holds) before reporting to the
            // hook, so that a hook that sees the outcome sees the body gone.
            guard.tell_connection(&outcome);
            *this.body = None;
            guard.finish(outcome);
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
