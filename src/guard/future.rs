//! Future types of [`Guarded`](super::Guarded).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::service::Shared;
use super::GuardedBody;
use crate::drain::DrainBody;
use crate::drain::Head;
use crate::key::HostKey;
use crate::limit::future::{wait_failed, Wait};
use crate::limit::registry::Slot;
use crate::limit::Admit;
use crate::metrics::Started;
use crate::retry::attempts::Attempts;
use crate::retry::ReplayBody;
use crate::BoxError;

pin_project! {
    /// Response future of [`Guarded`](super::Guarded): waits for a slot of
    /// the request's host if need be, calls the client, sends the request
    /// again when that is safe, and wraps the response's body.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        // The ready client and the request, while the request waits for a
        // slot (boxed: large, and only for a request that waits).
        parked: Option<Box<(S, Request<B>)>>,
        // The slot of the attempt under way (which holds the request's
        // host; a retry finds it again from the request).
        slot: Option<Slot>,
        attempts: Attempts<S, B>,
        // `None` once the outcome is counted.
        started: Option<Started>,
        shared: Arc<Shared<S>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Waiting for a slot of the request's host.
        Waiting {
            wait: Wait,
        },
        Called {
            #[pin]
            future: F,
        },
        // The attempt failed before the client was called.
        Failed {
            error: Option<BoxError>,
        },
        // A moment before a retry (see `retry::future::pause_timer`;
        // boxed: large, and only for a retry).
        Pausing {
            pause: Pin<Box<Sleep>>,
        },
        // Waiting for a clone of the client to be ready for a retry.
        Retrying,
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>> + Clone,
{
    /// The first attempt of `req`, through `client` (ready): the request
    /// is counted, its host found, copied if it may be sent again, and
    /// sent at once when its host has a free slot.
    ///
    /// A request sent at once has its future built in place, each part
    /// where it stays (no post-construction writes, so that the future is
    /// built where it is returned).
    #[inline]
    pub(crate) fn start(client: &mut S, mut req: Request<B>, shared: &Arc<Shared<S>>) -> Self
    where
        B: ReplayBody,
    {
        // Counted first: a request the limit refuses is a request too.
        let started = Started::new(&shared.metrics, &req);
        let key = HostKey::from_request(&req);
        let host = key.as_ref().map(HostKey::memo);
        let (state, parked) = match admit(shared, key) {
            Admitted::Now(slot) => {
                return ResponseFuture {
                    attempts: Attempts::start(&shared.rules, &mut req, host, &shared.spare, client),
                    state: State::Called {
                        future: client.call(req),
                    },
                    parked: None,
                    slot,
                    started: Some(started),
                    shared: shared.clone(),
                }
            }
            Admitted::Wait(wait) => {
                // Take the client that was made ready into the future,
                // and leave a fresh clone behind for the next `poll_ready`.
                let clone = client.clone();
                (
                    State::Waiting { wait },
                    Some(std::mem::replace(client, clone)),
                )
            }
            Admitted::Refused(error) => (State::Failed { error: Some(error) }, None),
        };
        let attempts = Attempts::start(&shared.rules, &mut req, host, &shared.spare, client);
        ResponseFuture {
            state,
            parked: parked.map(|ready| Box::new((ready, req))),
            slot: None,
            attempts,
            started: Some(started),
            shared: shared.clone(),
        }
    }
}

/// How an attempt gets its slot.
enum Admitted {
    /// At once (`None`: a request without a host, which the client
    /// rejects with its own error).
    Now(Option<Slot>),
    Wait(Wait),
    Refused(BoxError),
}

fn admit<S>(shared: &Shared<S>, key: Option<HostKey>) -> Admitted {
    let Some(key) = key else {
        return Admitted::Now(None);
    };
    match shared.limit.admit(key) {
        Admit::Now(slot) => Admitted::Now(Some(slot)),
        Admit::Wait(wait) => Admitted::Wait(wait),
        Admit::Refused(error) => Admitted::Refused(error),
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    ResB: http_body::Body + Send + 'static,
{
    type Output = Result<Response<GuardedBody<ResB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this.started.is_none() {
            // Polled after it completed: the client's future is not polled
            // again.
            return Poll::Ready(Err(MISSING.into()));
        }
        let result = ready!(poll_attempts(&mut this, cx));
        let Some(started) = this.started.take() else {
            return Poll::Ready(Err(MISSING.into()));
        };
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                started.failed();
                return Poll::Ready(Err(error));
            }
        };
        // What each layer reads of the head, in the layers' order (limit,
        // drain, retry, metrics); then the body wrapped once.
        let shared = &**this.shared;
        let mut slot = this.slot.take();
        crate::limit::future::answered(slot.as_mut(), &mut response);
        let head = Head::of(&response);
        // The guard's retry records connections in its metrics' own record
        // of address pairs (`PoolGuardBuilder::build`): what it found there
        // stands for the metrics' look.
        let seen_before = this.attempts.answered(&shared.rules, &mut response);
        let flight = started.answered(&mut response, seen_before);
        // A priced drain reads its host off the slot in the body, and only
        // if the body is dropped early.
        let host = match shared.drain.pricing {
            Some(_) => crate::drain::Host::Of(crate::limit::ResponseBody::host),
            None => crate::drain::Host::None,
        };
        let drain = shared.drain.clone();
        Poll::Ready(Ok(response.map(|body| {
            let body = crate::limit::ResponseBody::new(body, slot);
            let body = DrainBody::new(body, head, drain, host);
            crate::metrics::ResponseBody::new(body, Some(flight))
        })))
    }
}

/// Runs the attempts to their outcome: the last one's response (with its
/// slot in `slot`), or the error.
fn poll_attempts<S, B, ResB>(
    this: &mut ResponseFutureProj<'_, S, B>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResB>, BoxError>>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    loop {
        let result = match this.state.as_mut().project() {
            StateProj::Waiting { wait } => match ready!(wait.as_mut().poll(cx)) {
                Ok(slot) => {
                    let Some((mut client, req)) = this.parked.take().map(|p| *p) else {
                        return Poll::Ready(Err(MISSING.into()));
                    };
                    *this.slot = Some(slot);
                    let future = client.call(req);
                    this.state.set(State::Called { future });
                    continue;
                }
                Err(timed_out) => Err(wait_failed(timed_out)),
            },
            StateProj::Called { future } => {
                // The request's dials can tell that it still waits.
                match crate::conn::in_request(|| future.poll(cx)) {
                    Poll::Ready(result) => result.map_err(Into::into),
                    Poll::Pending => match this.attempts.waiting(cx) {
                        None => return Poll::Pending,
                        Some(stranded) => Err(stranded),
                    },
                }
            }
            StateProj::Failed { error } => Err(error.take().unwrap_or_else(|| MISSING.into())),
            StateProj::Pausing { pause } => {
                ready!(pause.as_mut().poll(cx));
                this.state.set(State::Retrying);
                continue;
            }
            StateProj::Retrying => {
                let shared = &**this.shared;
                let (mut client, req) =
                    ready!(this.attempts.poll_next(&shared.rules, &shared.spare, cx))?;
                match admit(shared, HostKey::from_request(&req)) {
                    Admitted::Now(slot) => {
                        *this.slot = slot;
                        let future = client.call(req);
                        this.state.set(State::Called { future });
                    }
                    Admitted::Wait(wait) => {
                        *this.parked = Some(Box::new((client, req)));
                        this.state.set(State::Waiting { wait });
                    }
                    Admitted::Refused(error) => {
                        this.state.set(State::Failed { error: Some(error) });
                    }
                }
                continue;
            }
        };
        let error = match result {
            // A response ends the attempts; `poll` reads it.
            Ok(response) => return Poll::Ready(Ok(response)),
            Err(error) => error,
        };
        // An error gives the slot back now.
        *this.slot = None;
        match this.attempts.failed(&this.shared.rules, error) {
            Some(error) => return Poll::Ready(Err(error)),
            None => this.state.set(match crate::retry::future::pause_timer() {
                Some(pause) => State::Pausing {
                    pause: Box::pin(pause),
                },
                None => State::Retrying,
            }),
        }
    }
}

/// Cannot happen: the future is polled after it completed.
const MISSING: &str = "poolguard: guarded future polled after completion";

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Called { .. } => "called",
            State::Failed { .. } => "failed",
            State::Pausing { .. } => "pausing",
            State::Retrying => "retrying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
