//! Future types of [`RetryStale`](super::RetryStale).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use std::sync::Arc;

use super::attempts::{Attempts, Ended};
use super::service::Shared;
use super::ReplayBody;
use crate::BoxError;

pub use super::attempts::STRANDED_CHECK;

pin_project! {
    /// Response future of [`RetryStale`](super::RetryStale).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        attempts: Attempts<S, B>,
        shared: Arc<Shared<S>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            future: F,
        },
        // A moment before the retry: the server that closed this connection
        // has likely closed others idle as long, and the client learns of
        // those closes only when its runtime next reads its sockets.
        Pausing {
            #[pin]
            pause: Sleep,
        },
        // Waiting for the copy of the service to be ready for the retry.
        Retrying,
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn new(future: S::Future, attempts: Attempts<S, B>, shared: Arc<Shared<S>>) -> Self {
        ResponseFuture {
            state: State::Called { future },
            attempts,
            shared,
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = match future.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending => match this.attempts.waiting(cx) {
                            None => return Poll::Pending,
                            Some(stranded) => Err(stranded),
                        },
                    };
                    match this.attempts.ended(&this.shared.rules, result) {
                        Ended::Done(result) => return Poll::Ready(result),
                        Ended::Again => this.state.set(pause()),
                    }
                }
                StateProj::Pausing { pause } => {
                    ready!(pause.poll(cx));
                    this.state.set(State::Retrying);
                }
                StateProj::Retrying => {
                    let shared = &**this.shared;
                    let (mut service, req) =
                        ready!(this.attempts.poll_next(&shared.rules, &shared.spare, cx))?;
                    let future = service.call(req);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// The pause before a retry: one tick of tokio's timer.
const PAUSE: Duration = Duration::from_millis(1);

/// The pause before a retry ([`PAUSE`]); `None` where it cannot be timed
/// (the retry goes at once).
pub(crate) fn pause_timer() -> Option<Sleep> {
    crate::timer::sleep_until(Instant::now() + PAUSE)
}

/// The state that pauses before a retry, or the retry at once.
fn pause<F>() -> State<F> {
    match pause_timer() {
        Some(pause) => State::Pausing { pause },
        None => State::Retrying,
    }
}
