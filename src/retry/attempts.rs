//! The retry rules of one request across its attempts, whoever sends
//! them: [`RetryStale`](super::RetryStale)'s future, and the guard's.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::budget::{Budgets, RequestBudget};
use super::layer::Seen;
use super::service::{is_idempotent, Resend, Spare};
use super::{stale, ReplayBody, Retried, RetryCause, RetryEvent, RetryHook};
use crate::key::MemoKey;
use crate::BoxError;

/// Retries of one request that the server never processed, besides
/// `max_retries`: each is safe, and each follows a connection that is going
/// away or a refused stream, and a burst of them can meet several in a row
/// (a server refusing 1 stream in 10 refuses a request 4 times in a row
/// once in 10,000). The retry budget bounds them all together.
pub(crate) const NOT_PROCESSED_RETRIES: u32 = 5;

/// What a retry layer applies to every request: shared by its services.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) max_retries: u32,
    pub(crate) observer: Option<RetryHook>,
    /// The connections responses came on (untracked clients).
    pub(crate) seen: Arc<Seen>,
    /// Each host's retry budget.
    pub(crate) budgets: Arc<Budgets>,
    /// The client below resends protocol NACKs itself.
    pub(crate) nacks_below: bool,
    /// A request can learn its connection through the client below.
    pub(crate) captures: bool,
}

/// One request's retries: the copy to send again (if its body replays),
/// what is left of its retries, its host's budget, and what it learns of
/// its connection.
pub(crate) struct Attempts<S, B> {
    // The request to send again; `None` when it is not to be retried.
    retry: Option<Resend<B>>,
    // The clone of the service being made ready for a retry (boxed:
    // large, and only for a retry under way).
    ready: Option<Box<S>>,
    // Retries left.
    left: u32,
    // Retries made.
    retries: u32,
    // Retries are on: responses record their connections, and the request
    // counts in its host's budget.
    on: bool,
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
    // The tracked connection the request went out on, and the timer
    // that looks at it while the response is awaited.
    watch: Option<Watch>,
}

/// How an attempt ended.
pub(crate) enum Ended<R> {
    /// For good: the request's outcome.
    Done(Result<R, BoxError>),
    /// The request is to be sent again.
    Again,
}

impl<S, B> Attempts<S, B> {
    /// The rules of `rules` for `req` to `host`: `req` is counted in
    /// the host's budget, copied if it may be sent again, and set to learn
    /// its connection if the host speaks HTTP/2. A request that may be sent
    /// again has `spare` keep a clone of `service` (the first such request
    /// does), which its retry's service is cloned from.
    pub(crate) fn start(
        rules: &Rules,
        req: &mut Request<B>,
        host: Option<MemoKey>,
        spare: &Spare<S>,
        service: &S,
    ) -> Self
    where
        B: ReplayBody,
        S: Clone,
    {
        let on = rules.max_retries > 0;
        // Any request may be sent again if an HTTP/2 server did not process
        // it; only an idempotent one after a stale connection.
        let idempotent = is_idempotent(req);
        let retry = if on { Resend::of(req) } else { None };
        if retry.is_some() {
            spare.keep(service);
        }
        // Every request counts toward its host's retry budget.
        let budget = on.then(|| RequestBudget::deposit(&rules.budgets, host));
        // A request to an HTTP/2 host learns its connection: the first to
        // come back on a connection arms its poison for a `GOAWAY`.
        let capture = budget
            .as_ref()
            .filter(|b| rules.captures && b.http2())
            .and_then(|_| stale::capture(req));
        Attempts {
            retry,
            ready: None,
            left: rules.max_retries,
            retries: 0,
            on,
            idempotent,
            cause: RetryCause::StaleConnection,
            unprocessed_left: if on { NOT_PROCESSED_RETRIES } else { 0 },
            budget,
            capture,
            watch: None,
        }
    }

    /// The attempt under way still waits for its response. Once the
    /// request is on a connection, it arms the connection's poison and
    /// watches the connection: the error of a request stranded there.
    pub(crate) fn waiting(&mut self, cx: &mut Context<'_>) -> Option<BoxError> {
        if let Some(capture) = self.capture.as_ref() {
            match stale::learn(capture) {
                stale::Learned::Pending => {}
                #[cfg(feature = "hyper-util")]
                stale::Learned::Link(link) => {
                    self.capture = None;
                    self.watch = Some(Watch {
                        link,
                        check: Box::pin(crate::timer::Every::new(STRANDED_CHECK)),
                        closed: false,
                    });
                }
                stale::Learned::Untracked => self.capture = None,
            }
        }
        if !self.watch.as_mut().is_some_and(|w| w.stranded(cx)) {
            return None;
        }
        self.watch = None;
        tracing::debug!("request stranded on a closed HTTP/2 connection");
        Some(BoxError::from(super::Stranded))
    }

    /// The attempt under way ended with `result`: the request's outcome,
    /// or a retry (the budget drawn, the hook told).
    pub(crate) fn ended<ResB>(
        &mut self,
        rules: &Rules,
        result: Result<Response<ResB>, BoxError>,
    ) -> Ended<Response<ResB>> {
        match result {
            Ok(mut response) => {
                self.answered(rules, &mut response);
                Ended::Done(Ok(response))
            }
            Err(error) => match self.failed(rules, error) {
                Some(error) => Ended::Done(Err(error)),
                None => Ended::Again,
            },
        }
    }

    /// The attempt under way was answered with `response`: its connection
    /// is recorded, its host's protocol noted, and a retried request's
    /// response says so. Whether the connection was seen before, if it was
    /// recorded by its addresses (so that a guard's metrics, which share
    /// the record, need not look again).
    pub(crate) fn answered<ResB>(
        &mut self,
        rules: &Rules,
        response: &mut Response<ResB>,
    ) -> Option<bool> {
        self.watch = None;
        if self.retries > 0 {
            if let Some(o) = rules.observer.as_ref() {
                o.tell(RetryEvent::Succeeded);
            }
        }
        let seen_before = match self.on {
            true => stale::record(&rules.seen, response.extensions()),
            false => None,
        };
        if let Some(budget) = self.budget.as_ref() {
            budget.answered(&rules.budgets, response.version());
        }
        if let Some(capture) = self.capture.take() {
            let _ = stale::learn(&capture);
        }
        if self.retries > 0 {
            response.extensions_mut().insert(Retried {
                retries: self.retries,
            });
        }
        seen_before
    }

    /// The attempt under way failed with `error`: the error, for good, or
    /// `None` when the request is to be sent again (the budget drawn, the
    /// hook told).
    pub(crate) fn failed(&mut self, rules: &Rules, error: BoxError) -> Option<BoxError> {
        self.watch = None;
        if self.retries > 0 {
            if let Some(o) = rules.observer.as_ref() {
                o.tell(RetryEvent::Failed);
            }
        }
        let cause = if self.retry.is_none()
            || (rules.nacks_below && stale::protocol_nack(&*error).is_some())
        {
            None
        } else if self.unprocessed_left > 0
            && match stale::unprocessed(&*error) {
                Some(stale::Unprocessed::Surely) => true,
                Some(stale::Unprocessed::GoAway) => self.idempotent,
                None => false,
            }
        {
            Some(RetryCause::NotProcessed)
        } else if self.left > 0 && self.idempotent && stale::is_stale(&*error, Some(&rules.seen)) {
            Some(RetryCause::StaleConnection)
        } else {
            None
        };
        let Some(cause) = cause else {
            return Some(error);
        };
        if self.budget.is_some_and(|b| !b.withdraw(&rules.budgets)) {
            tracing::debug!(%error, ?cause, "retry budget spent; not sending the request again");
            if let Some(o) = rules.observer.as_ref() {
                o.tell(RetryEvent::BudgetExhausted { cause });
            }
            return Some(error);
        }
        self.cause = cause;
        tracing::debug!(%error, ?cause, "request not answered; sending it again");
        None
    }
}

impl<S, B> Attempts<S, B>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    /// The service and the request of the retry, once a clone of `spare`
    /// is ready; a copy for the next retry is kept if one may follow.
    pub(crate) fn poll_next(
        &mut self,
        rules: &Rules,
        spare: &Spare<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(S, Request<B>), BoxError>> {
        if self.ready.is_none() {
            let Some(service) = self.retry.as_ref().and_then(|_| spare.service()) else {
                return Poll::Ready(Err(MISSING.into()));
            };
            self.ready = Some(Box::new(service));
        }
        let Some(service) = self.ready.as_deref_mut() else {
            return Poll::Ready(Err(MISSING.into()));
        };
        if let Err(e) = std::task::ready!(service.poll_ready(cx)) {
            return Poll::Ready(Err(e.into()));
        }
        let (Some(service), Some(copy)) = (self.ready.take(), self.retry.take()) else {
            return Poll::Ready(Err(MISSING.into()));
        };
        let Some(req) = copy.into_request() else {
            return Poll::Ready(Err(UNREADABLE.into()));
        };
        match self.cause {
            RetryCause::NotProcessed => {
                self.unprocessed_left = self.unprocessed_left.saturating_sub(1)
            }
            _ => self.left = self.left.saturating_sub(1),
        }
        self.retries = self.retries.saturating_add(1);
        if let Some(o) = rules.observer.as_ref() {
            o.tell(RetryEvent::Retrying {
                attempt: self.retries,
                cause: self.cause,
            });
        }
        if self.left > 0 || self.unprocessed_left > 0 {
            self.retry = Resend::of(&req);
        }
        Poll::Ready(Ok((*service, req)))
    }
}

impl<S, B> std::fmt::Debug for Attempts<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts")
            .field("retryable", &self.retry.is_some())
            .field("left", &self.left)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// Cannot happen: a retry is made only with a request to send.
const MISSING: &str = "poolguard: retry without a request";

/// The copy of a request to send again did not read back: a header held
/// bytes no header may hold (which only `unsafe` code can put in one).
const UNREADABLE: &str = "poolguard: the request's copy for its retry did not read back";

/// A request awaiting its response on a tracked connection.
#[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
struct Watch {
    #[cfg(feature = "hyper-util")]
    link: Arc<crate::conn::Link>,
    // Boxed: pinned while polled, and made only for a watched request.
    check: std::pin::Pin<Box<crate::timer::Every>>,
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
        while self.check.as_mut().poll(cx) {
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

#[cfg(all(test, feature = "hyper-util"))]
mod tests {
    use super::*;

    fn watch(link: &Arc<crate::conn::Link>) -> Watch {
        Watch {
            link: link.clone(),
            check: Box::pin(crate::timer::Every::new(STRANDED_CHECK)),
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

    #[test]
    fn a_request_learns_its_connection_only_where_the_client_can_tell_it() {
        let mut rules = crate::retry::RetryStaleLayer::new().rules();
        let uri: http::Uri = "http://h2-host/".parse().unwrap();
        let host = crate::key::HostKey::from_uri(&uri).map(|k| k.memo());
        // The host answered over HTTP/2: its requests learn their
        // connection, so that a GOAWAY can take it out of the pool.
        RequestBudget::deposit(&rules.budgets, host)
            .answered(&rules.budgets, http::Version::HTTP_2);
        let spare = Spare::default();
        let start = |rules: &Rules| {
            let mut req = Request::get(uri.clone()).body(()).unwrap();
            Attempts::start(rules, &mut req, host, &spare, &())
                .capture
                .is_some()
        };
        assert!(start(&rules));
        // reqwest hands no extension to hyper-util: nothing to learn there.
        rules.captures = false;
        assert!(!start(&rules));
    }
}
