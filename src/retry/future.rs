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

use super::budget::RequestBudget;
use super::layer::Seen;
use super::service::{replay, Spare};
use super::{stale, ReplayBody, Retried, RetryCause, RetryEvent, RetryHook};
use crate::BoxError;

/// Retries of one request that the server never processed, besides
/// `max_retries`: each is safe, and each follows a connection that is going
/// away or a refused stream, and a burst of them can meet several in a row
/// (a server refusing 1 stream in 10 refuses a request 4 times in a row
/// once in 10,000). The retry budget bounds them all together.
pub(crate) const NOT_PROCESSED_RETRIES: u32 = 5;

pin_project! {
    /// Response future of [`RetryStale`](super::RetryStale).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        // The spare service to clone for a retry and the request to send
        // again; `None` when the request is not to be retried.
        retry: Option<(Arc<Spare<S>>, Request<B>)>,
        // The clone of the service being made ready for a retry (boxed:
        // large, and only for a retry under way).
        ready: Option<Box<S>>,
        // Retries left.
        left: u32,
        // Retries made.
        retries: u32,
        observer: Option<RetryHook>,
        // The connections responses came on (untracked clients).
        seen: Option<Arc<Seen>>,
        // The request may be sent again after a stale connection.
        idempotent: bool,
        // Why the retry under way is made.
        cause: RetryCause,
        // Retries left for requests that were never processed.
        unprocessed_left: u32,
        // The host's retry budget, with this request deposited.
        budget: Option<RequestBudget>,
        // What the request learns of its connection.
        capture: Option<stale::Capture>,
        // The client below resends protocol NACKs itself.
        nacks_below: bool,
        // The tracked connection the request went out on, and the timer
        // that looks at it while the response is awaited.
        watch: Option<Watch>,
    }
}

/// A request awaiting its response on a tracked connection.
#[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
struct Watch {
    #[cfg(feature = "hyper-util")]
    link: Arc<crate::conn::Link>,
    check: crate::timer::Every,
    /// The connection was seen closed at the last check.
    closed: bool,
}

/// How often a request awaiting its response looks at its connection: one
/// whose connection closed at two checks in a row is stranded.
pub const STRANDED_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Watch {
    /// Whether the request is stranded: its connection's IO is gone (so
    /// every stream on it has ended) for a whole check, and its response
    /// has not come. Arms the timer that wakes the request to look.
    fn stranded(&mut self, cx: &mut Context<'_>) -> bool {
        while self.check.poll(cx) {
            #[cfg(feature = "hyper-util")]
            if self.link.is_closed() {
                if self.closed {
                    return true;
                }
                self.closed = true;
            }
        }
        false
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
    pub(crate) fn new(
        future: S::Future,
        retry: Option<(Arc<Spare<S>>, Request<B>)>,
        left: u32,
        observer: Option<RetryHook>,
        seen: Option<Arc<Seen>>,
        idempotent: bool,
        budget: Option<RequestBudget>,
    ) -> Self {
        ResponseFuture {
            state: State::Called { future },
            retry,
            ready: None,
            left,
            retries: 0,
            observer,
            seen,
            idempotent,
            cause: RetryCause::StaleConnection,
            unprocessed_left: if left > 0 { NOT_PROCESSED_RETRIES } else { 0 },
            budget,
            capture: None,
            nacks_below: false,
            watch: None,
        }
    }

    /// The client below resends HTTP/2 protocol NACKs itself: they are not
    /// resent here too.
    pub(crate) fn nacks_below(mut self, yes: bool) -> Self {
        self.nacks_below = yes;
        self
    }

    /// The request learns its connection through `capture`.
    pub(crate) fn capturing(mut self, capture: Option<stale::Capture>) -> Self {
        self.capture = capture;
        self
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("retryable", &self.retry.is_some())
            .field("left", &self.left)
            .field("retries", &self.retries)
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
                        Poll::Pending => {
                            // Once the request is on a connection (before
                            // its response), it arms the connection's poison
                            // and watches the connection.
                            if let Some(capture) = this.capture.as_ref() {
                                match stale::learn(capture) {
                                    stale::Learned::Pending => {}
                                    #[cfg(feature = "hyper-util")]
                                    stale::Learned::Link(link) => {
                                        *this.capture = None;
                                        *this.watch = Some(Watch {
                                            link,
                                            check: crate::timer::Every::new(STRANDED_CHECK),
                                            closed: false,
                                        });
                                    }
                                    stale::Learned::Untracked => *this.capture = None,
                                }
                            }
                            if !this.watch.as_mut().is_some_and(|w| w.stranded(cx)) {
                                return Poll::Pending;
                            }
                            *this.watch = None;
                            tracing::debug!("request stranded on a closed HTTP/2 connection");
                            Err(BoxError::from(super::Stranded))
                        }
                    };
                    *this.watch = None;
                    let retried = *this.retries > 0;
                    if retried {
                        if let Some(o) = this.observer.as_ref() {
                            o.tell(if result.is_ok() {
                                RetryEvent::Succeeded
                            } else {
                                RetryEvent::Failed
                            });
                        }
                    }
                    let error = match result {
                        Ok(mut response) => {
                            if let Some(seen) = this.seen.as_deref() {
                                stale::record(seen, response.extensions());
                            }
                            if let Some(budget) = this.budget.as_ref() {
                                budget.answered(response.version());
                            }
                            if let Some(capture) = this.capture.take() {
                                let _ = stale::learn(&capture);
                            }
                            if retried {
                                response.extensions_mut().insert(Retried {
                                    retries: *this.retries,
                                });
                            }
                            return Poll::Ready(Ok(response));
                        }
                        Err(error) => error,
                    };
                    let cause = if this.retry.is_none()
                        || (*this.nacks_below && stale::protocol_nack(&*error).is_some())
                    {
                        None
                    } else if *this.unprocessed_left > 0
                        && match stale::unprocessed(&*error) {
                            Some(stale::Unprocessed::Surely) => true,
                            Some(stale::Unprocessed::GoAway) => *this.idempotent,
                            None => false,
                        }
                    {
                        Some(RetryCause::NotProcessed)
                    } else if *this.left > 0
                        && *this.idempotent
                        && stale::is_stale(&*error, this.seen.as_deref())
                    {
                        Some(RetryCause::StaleConnection)
                    } else {
                        None
                    };
                    let Some(cause) = cause else {
                        return Poll::Ready(Err(error));
                    };
                    if this.budget.as_ref().is_some_and(|b| !b.withdraw()) {
                        tracing::debug!(%error, ?cause, "retry budget spent; not sending the request again");
                        if let Some(o) = this.observer.as_ref() {
                            o.tell(RetryEvent::BudgetExhausted { cause });
                        }
                        return Poll::Ready(Err(error));
                    }
                    *this.cause = cause;
                    tracing::debug!(%error, ?cause, "request not answered; sending it again");
                    match crate::timer::sleep_until(Instant::now() + PAUSE) {
                        Some(pause) => this.state.set(State::Pausing { pause }),
                        None => this.state.set(State::Retrying),
                    }
                }
                StateProj::Pausing { pause } => {
                    ready!(pause.poll(cx));
                    this.state.set(State::Retrying);
                }
                StateProj::Retrying => {
                    if this.ready.is_none() {
                        let spare = this.retry.as_ref().and_then(|(spare, _)| spare.service());
                        let Some(service) = spare else {
                            return Poll::Ready(Err(MISSING.into()));
                        };
                        *this.ready = Some(Box::new(service));
                    }
                    let Some(service) = this.ready.as_deref_mut() else {
                        return Poll::Ready(Err(MISSING.into()));
                    };
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let (Some(mut service), Some((spare, req))) =
                        (this.ready.take(), this.retry.take())
                    else {
                        return Poll::Ready(Err(MISSING.into()));
                    };
                    match this.cause {
                        RetryCause::NotProcessed => {
                            *this.unprocessed_left = this.unprocessed_left.saturating_sub(1)
                        }
                        _ => *this.left = this.left.saturating_sub(1),
                    }
                    *this.retries = this.retries.saturating_add(1);
                    if let Some(o) = this.observer.as_ref() {
                        o.tell(RetryEvent::Retrying {
                            attempt: *this.retries,
                            cause: *this.cause,
                        });
                    }
                    if *this.left > 0 || *this.unprocessed_left > 0 {
                        if let Some(next) = replay(&req) {
                            *this.retry = Some((spare, next));
                        }
                    }
                    let future = service.call(req);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// The pause before a retry: one tick of tokio's timer.
const PAUSE: Duration = Duration::from_millis(1);

/// Cannot happen: the state is `Retrying` only with a request to send.
const MISSING: &str = "poolguard: retry without a request";

#[cfg(all(test, feature = "hyper-util"))]
mod tests {
    use super::*;

    fn watch(link: &Arc<crate::conn::Link>) -> Watch {
        Watch {
            link: link.clone(),
            check: crate::timer::Every::new(STRANDED_CHECK),
            closed: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_stranded_a_whole_check_after_its_connection_closed() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let link = crate::conn::Link::new(Arc::from("http://h:80"));
        let mut w = watch(&link);
        assert!(!w.stranded(&mut cx));
        // Open: a request may wait for its response as long as it takes.
        tokio::time::advance(STRANDED_CHECK * 10).await;
        assert!(!w.stranded(&mut cx));
        link.close();
        // Closed just now: not yet (its last stream may be ending).
        tokio::time::advance(STRANDED_CHECK).await;
        assert!(!w.stranded(&mut cx));
        tokio::time::advance(STRANDED_CHECK).await;
        assert!(w.stranded(&mut cx));
    }
}
