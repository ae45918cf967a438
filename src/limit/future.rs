//! Future types of [`PerHostLimit`](super::PerHostLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::registry::{Slot, TimedOut};
use super::QueueFull;
use super::{QueueTimeout, QueueWait, ResponseBody};
use crate::BoxError;

pub(crate) use super::total::Wait;

pin_project! {
    /// Response future of [`PerHostLimit`](super::PerHostLimit): waits for a
    /// slot of the request's host if need be, calls the inner service, and
    /// moves the slot into the response body.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        // Boxed: the request and the service are large, and waiting is the
        // slow path; the future stays small for the fast one.
        Queued {
            wait: Wait,
            parked: Option<Box<(S, Req)>>,
        },
        Called {
            #[pin]
            future: S::Future,
            slot: Option<Slot>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn called(future: S::Future, slot: Option<Slot>) -> Self {
        ResponseFuture {
            state: State::Called { future, slot },
        }
    }

    pub(crate) fn queued(wait: Wait, service: S, request: Req) -> Self {
        ResponseFuture {
            state: State::Queued {
                wait,
                parked: Some(Box::new((service, request))),
            },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<S, Req, B> Future for ResponseFuture<S, Req>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Queued { wait, parked } => {
                    let slot = ready!(wait.as_mut().poll(cx)).map_err(wait_failed)?;
                    let Some((mut service, request)) = parked.take().map(|p| *p) else {
                        return Poll::Ready(Err(
                            "per-host limit future polled after completion".into()
                        ));
                    };
                    let future = service.call(request);
                    this.state.set(State::Called {
                        future,
                        slot: Some(slot),
                    });
                }
                StateProj::Called { future, slot } => {
                    // The request's dials can tell that it still waits.
                    let result = ready!(crate::conn::in_request(|| future.poll(cx)));
                    // An error releases the slot now, not when the future is
                    // dropped.
                    let slot = slot.take();
                    let response = result.map_err(Into::into)?;
                    return Poll::Ready(Ok(respond(slot, response)));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                        "per-host limit future polled after completion".into()
                    })));
                }
            }
        }
    }
}

/// The error of a wait for a slot that ended without one.
pub(crate) fn wait_failed(error: TimedOut) -> BoxError {
    match error {
        TimedOut {
            key, evicted: true, ..
        } => QueueFull::new(key).into(),
        TimedOut {
            refusal: Some(refusal),
            ..
        } => refusal,
        TimedOut { key, waited, .. } => QueueTimeout::new(key, waited).into(),
    }
}

/// What the limit makes of its request's response: the host learns its
/// protocol and, for an adaptive limit, a sample; a request that waited
/// says how long; the slot moves into the body, to be given back when the
/// body ends or is dropped.
pub(crate) fn respond<B: http_body::Body>(
    mut slot: Option<Slot>,
    mut response: Response<B>,
) -> Response<ResponseBody<B>> {
    answered(slot.as_mut(), &mut response);
    response.map(|body| ResponseBody::new(body, slot))
}

/// What [`respond`] does with the response's head: the slot (if any) of the
/// request it answers learns and samples, and a wait is recorded.
pub(crate) fn answered<B>(slot: Option<&mut Slot>, response: &mut Response<B>) {
    let Some(slot) = slot else { return };
    slot.learn(response.version());
    let extensions = response.extensions();
    let dialed = || {
        extensions.get::<crate::conn::Dialed>().is_some()
            || crate::conn::LinkHandle::stamp_of(extensions)
                .is_some_and(crate::conn::Stamp::first_exchange)
    };
    slot.sample(response.status(), response.headers(), dialed);
    let waited = slot.waited();
    if !waited.is_zero() {
        response.extensions_mut().insert(QueueWait(waited));
    }
}

impl<S, Req> fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Queued { .. } => "queued",
            State::Called { .. } => "called",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
