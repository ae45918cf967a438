//! One dial per HTTP/2 turnover for reqwest, whose connector layer sees a
//! dial but not its host.
//!
//! reqwest's pool is hyper-util's, which dials for every waiting request
//! when a host's HTTP/2 connection goes away (see `conn::turnover`). The
//! connector layer is called inside the task of the request that dials
//! (hyper-util calls its connector from the request's own future), so the
//! request, sent through [`GuardedClient`](super::GuardedClient) or
//! [`GuardMiddleware`](super::GuardMiddleware), puts its host in a task
//! local for the connector layer to read. The connection's bytes are out of
//! reach (the layer must return reqwest's sealed `Conn`), so the lead dial
//! of a host counts as in use once the request that made it is answered
//! over HTTP/2: by then hyper-util has pooled the connection and handed it
//! to the requests waiting for the host.
//!
//! A redirect to another host is dialed within the scope of the first
//! host; such a dial may wait for the first host's lead, and, if held
//! until that lead is in use, fails with [`Coalesced`](crate::Coalesced),
//! which the retry sends again (the request never went out).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::conn::turnover::Lead;

/// How long an idempotent request may still wait for its response head
/// after its host's HTTP/2 connection turned over (a new one carried its
/// first stream) once the request had started: past it, the request is
/// taken as stranded by hyper 1.12 on the old connection, and sent again.
pub(crate) const STRANDED_AFTER_TURNOVER: Duration = Duration::from_secs(2);

/// How long the lead dial of a host's turnover is held for the request
/// that made it at most (see [`DialScope::hold`]): hyper-util pools an
/// HTTP/2 connection as soon as it is made, so by then the requests
/// waiting for the host have it.
pub(crate) const LEAD_HELD_AT_MOST: Duration = Duration::from_millis(500);

/// How often a waiting request looks.
const CHECK: Duration = Duration::from_secs(1);

/// Hosts remembered at most.
const MAX_HOSTS: usize = 4096;

/// A host of a client's, as its requests saw it.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// When its HTTP/2 connection last turned over.
    turned: Option<Instant>,
    /// It answered over HTTP/2.
    http2: bool,
}

/// When each host's HTTP/2 connection last turned over, and which hosts
/// answer over HTTP/2, as the requests of one client saw them.
#[derive(Debug, Default)]
pub(crate) struct TurnLog {
    hosts: Mutex<HashMap<Arc<str>, Seen>>,
}

impl TurnLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Seen>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn change(&self, key: &Arc<str>, change: impl FnOnce(&mut Seen)) {
        let mut hosts = self.lock();
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(key) {
            hosts.clear();
        }
        change(hosts.entry(key.clone()).or_default());
    }

    /// `key`'s connection turned over now.
    fn turned(&self, key: &Arc<str>) {
        self.change(key, |seen| {
            seen.turned = Some(Instant::now());
            seen.http2 = true;
        });
    }

    /// `key` answered a request over HTTP/2.
    fn answered_over_http2(&self, key: &Arc<str>) {
        if !self.speaks_http2(key) {
            self.change(key, |seen| seen.http2 = true);
        }
    }

    /// Whether `key` answered over HTTP/2.
    pub(crate) fn speaks_http2(&self, key: &str) -> bool {
        self.lock().get(key).is_some_and(|seen| seen.http2)
    }

    /// When `key`'s connection last turned over.
    fn turned_at(&self, key: &str) -> Option<Instant> {
        self.lock().get(key).and_then(|seen| seen.turned)
    }
}

/// The watch of one request for being stranded (see
/// [`DialScope::run_or_resend`]).
#[derive(Debug)]
struct Watch {
    started: Instant,
    /// The first turnover of its host the watch saw that may have
    /// stranded the request.
    seen: Option<Instant>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            started: Instant::now(),
            seen: None,
        }
    }

    /// Whether the request is taken as stranded now: its host's connection
    /// turned over after it started, or at most [`STRANDED_AFTER_TURNOVER`]
    /// before (hyper-util keeps the old connection in its pool after its
    /// `GOAWAY` until a request takes it, so a request that starts just
    /// after the new connection answered can still be sent to the old one),
    /// [`STRANDED_AFTER_TURNOVER`] ago at least, and the request itself has
    /// waited as long. The first such turnover counts: later ones (a busy
    /// host's connections turn over again and again) do not put the
    /// deadline off.
    fn stranded(&mut self, turns: &TurnLog, key: &str) -> bool {
        let now = Instant::now();
        if self.seen.is_none() {
            let since = self
                .started
                .checked_sub(STRANDED_AFTER_TURNOVER)
                .unwrap_or(self.started);
            self.seen = turns.turned_at(key).filter(|&at| at > since);
        }
        self.seen.is_some_and(|at| {
            now.saturating_duration_since(at) >= STRANDED_AFTER_TURNOVER
                && now.saturating_duration_since(self.started) >= STRANDED_AFTER_TURNOVER
        })
    }
}

tokio::task_local! {
    static SCOPE: Arc<DialScope>;
}

/// The host of the request a task sends, for the dials it makes.
#[derive(Debug)]
pub(crate) struct DialScope {
    /// `scheme://host:port` of the request.
    pub(crate) key: Arc<str>,
    pub(crate) tls: bool,
    /// The client's log of turnovers.
    turns: Option<Arc<TurnLog>>,
    /// The request made a dial (whether it led or not).
    dialed: std::sync::atomic::AtomicBool,
    /// The lead dial the request made, once its connection is known to
    /// speak HTTP/2; `Err(())` once the request ended.
    lead: Mutex<Result<Option<Lead>, ()>>,
    /// The client's book of HTTP/1 connections and the host's key in it:
    /// a connection the request dials is known there from its dial on.
    book: Option<(Arc<super::rotate::Book>, crate::HostKey)>,
}

/// A dial under way, counted in its host's book until dropped; the
/// HTTP/1 connection it made, if any, is known there from then on.
pub(crate) struct Dialing {
    book: Option<(Arc<super::rotate::Book>, crate::HostKey)>,
    pair: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
}

impl Dialing {
    /// The dial made an HTTP/1 connection whose socket addresses are
    /// `pair`.
    pub(crate) fn made(&mut self, pair: (std::net::SocketAddr, std::net::SocketAddr)) {
        self.pair = Some(pair);
    }
}

impl Drop for Dialing {
    fn drop(&mut self) {
        if let Some((book, key)) = &self.book {
            book.dial_ended(key, self.pair.take());
        }
    }
}

impl DialScope {
    /// The scope of a request for `url`, whose pool key is `key`
    /// (`scheme://host:port`, its host's [`HostKey`](crate::HostKey)), of a
    /// client whose turnovers `turns` logs; `None` without a key.
    pub(crate) fn of(
        key: Option<Arc<str>>,
        url: &::reqwest::Url,
        turns: Option<Arc<TurnLog>>,
        book: Option<(Arc<super::rotate::Book>, crate::HostKey)>,
    ) -> Option<Arc<DialScope>> {
        Some(Self::new(key?, url.scheme() == "https", turns, book))
    }

    fn new(
        key: Arc<str>,
        tls: bool,
        turns: Option<Arc<TurnLog>>,
        book: Option<(Arc<super::rotate::Book>, crate::HostKey)>,
    ) -> Arc<DialScope> {
        Arc::new(DialScope {
            key,
            tls,
            turns,
            dialed: std::sync::atomic::AtomicBool::new(false),
            lead: Mutex::new(Ok(None)),
            book,
        })
    }

    /// A dial of the request, its connector ready: `None` when it is to
    /// wait a moment first for a connection coming back to the pool (see
    /// [`Book::hold_or_dial`](super::rotate::Book::hold_or_dial)), or the
    /// dial, counted under way until dropped.
    pub(crate) fn hold_or_dial(&self) -> Option<Dialing> {
        if let Some((book, key)) = &self.book {
            if !book.hold_or_dial(key) {
                return None;
            }
        }
        Some(self.counted())
    }

    /// Whether the request's dial, which waited for a connection coming
    /// back, is to wait on (see
    /// [`Book::still_returning`](super::rotate::Book::still_returning)).
    pub(crate) fn still_returning(&self) -> bool {
        self.book
            .as_ref()
            .is_some_and(|(book, key)| book.still_returning(key))
    }

    /// A dial of the request, counted under way until dropped; `in_vain`:
    /// it waited for a connection coming back, and none came.
    pub(crate) fn dialing(&self, in_vain: bool) -> Dialing {
        if let Some((book, key)) = &self.book {
            book.dial_started(key, in_vain);
        }
        self.counted()
    }

    /// The dial just counted in the book, to be counted out when dropped.
    fn counted(&self) -> Dialing {
        Dialing {
            book: self.book.clone(),
            pair: None,
        }
    }

    /// The scope of the dial being made in this task, if any.
    pub(crate) fn current() -> Option<Arc<DialScope>> {
        SCOPE.try_with(Arc::clone).ok()
    }

    /// Runs `f` (the request) within `scope`; when it ends answered over
    /// HTTP/2, the lead it made is in use.
    pub(crate) async fn run<F, T, E>(scope: Option<Arc<DialScope>>, f: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        T: Versioned,
    {
        let Some(scope) = scope else {
            return f.await;
        };
        let mut result = SCOPE.scope(scope.clone(), f).await;
        let dialed = scope.dialed.load(std::sync::atomic::Ordering::Relaxed);
        if let (Ok(response), true) = (result.as_mut(), dialed) {
            response.mark_dialed();
        }
        let lead = std::mem::replace(&mut *scope.lock(), Err(()));
        let http2 = result
            .as_ref()
            .is_ok_and(|response| response.version() >= http::Version::HTTP_2);
        if let (Ok(Some(lead)), true) = (lead, http2) {
            lead.http2_in_use();
        }
        // (A lead not answered over HTTP/2 is dropped: the next held dial
        // leads.) A request that dialed and was answered over HTTP/2 saw its
        // host's connection turn over.
        if http2 && dialed {
            scope.turned();
        }
        result
    }

    /// The lead dial made a connection that speaks HTTP/2: kept until the
    /// request is answered (at once in use if it already was, by another
    /// connection), and [`LEAD_HELD_AT_MOST`] at most: the request may
    /// have taken another connection, on which hyper 1.12 can strand it
    /// for ever, and the host's other dials wait for the lead.
    pub(crate) fn hold(self: &Arc<Self>, lead: Lead) {
        let mut slot = self.lock();
        match &mut *slot {
            Ok(held) => *held = Some(lead),
            Err(()) => {
                drop(slot);
                lead.http2_in_use();
                self.turned();
                return;
            }
        }
        drop(slot);
        let scope = self.clone();
        let release = async move {
            tokio::time::sleep(LEAD_HELD_AT_MOST).await;
            scope.release_lead();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(release);
            }
            // No runtime to wait on: the lead is in use now.
            Err(_) => self.release_lead(),
        }
    }

    /// The lead held for the request, if still held, is in use (hyper-util
    /// pooled its connection when it was made).
    fn release_lead(&self) {
        let lead = match &mut *self.lock() {
            Ok(held) => held.take(),
            Err(()) => None,
        };
        if let Some(lead) = lead {
            tracing::debug!(host = %self.key, "lead connection in use before its request was answered");
            lead.http2_in_use();
            self.turned();
        }
    }

    /// The request's dial made a connection.
    pub(crate) fn dialed(&self) {
        self.dialed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn turned(&self) {
        if let Some(turns) = &self.turns {
            turns.turned(&self.key);
        }
    }

    /// Runs `first` (the request) within `scope`, as [`run`](Self::run);
    /// with `again` (an idempotent request's copy, made for a host known to
    /// speak HTTP/2), a request still without its response
    /// [`STRANDED_AFTER_TURNOVER`] after its host's connection turned over,
    /// once it had started, is dropped and `again` sent instead (once):
    /// hyper 1.12 strands requests on a connection a `GOAWAY` ends, and
    /// reqwest's connections are out of the guard's reach. A request that
    /// was in fact under way on the old connection is sent twice, which an
    /// idempotent request allows. A host is known to speak HTTP/2 once it
    /// answered over it (the requests before are not watched, nor those of
    /// an HTTP/1 host, which cost no timer).
    pub(crate) async fn run_or_resend<F, G, T, E>(
        scope: Option<Arc<DialScope>>,
        first: F,
        again: Option<G>,
    ) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        G: FnOnce() -> F,
        T: Versioned,
    {
        let host = scope
            .as_ref()
            .and_then(|s| Some((s.clone(), s.turns.clone()?)));
        let (Some((s, turns)), Some(again)) = (host.clone(), again) else {
            let result = Self::run(scope, first).await;
            if let (Some((s, turns)), Ok(response)) = (host, result.as_ref()) {
                if response.version() >= http::Version::HTTP_2 {
                    turns.answered_over_http2(&s.key);
                }
            }
            return result;
        };
        let mut watch = Watch::new();
        let outcome = {
            // Pinned here, not boxed: the first attempt ends with this
            // block, before the request is sent again.
            let mut first = std::pin::pin!(Self::run(scope, first));
            let mut check = std::pin::pin!(crate::timer::Every::new(CHECK));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = first.as_mut().poll(cx) {
                    return Poll::Ready(Some(result));
                }
                while check.as_mut().poll(cx) {
                    if watch.stranded(&turns, &s.key) {
                        return Poll::Ready(None);
                    }
                }
                Poll::Pending
            })
            .await
        };
        if let Some(result) = outcome {
            return result;
        }
        tracing::debug!(host = %s.key, "request stranded across an HTTP/2 turnover; sending it again");
        // Outside the book, as before: the resend took no ticket (it is
        // not counted among the requests awaiting their heads).
        let scope = Some(Self::new(s.key.clone(), s.tls, s.turns.clone(), None));
        Self::run(scope, again()).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Result<Option<Lead>, ()>> {
        self.lead.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A response's HTTP version.
pub(crate) trait Versioned {
    fn version(&self) -> http::Version;
    /// Marks the response of a request that paid for a dial
    /// ([`conn::Dialed`](crate::conn::Dialed)).
    fn mark_dialed(&mut self);
}

impl Versioned for ::reqwest::Response {
    fn version(&self) -> http::Version {
        ::reqwest::Response::version(self)
    }

    fn mark_dialed(&mut self) {
        self.extensions_mut().insert(crate::conn::Dialed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::turnover::{Entered, Turnover};

    struct Answer;

    impl Versioned for Answer {
        fn version(&self) -> http::Version {
            http::Version::HTTP_2
        }

        fn mark_dialed(&mut self) {}
    }

    fn enter(t: &Arc<Turnover>, key: &Arc<str>) -> Entered {
        t.enter(key, true)
    }

    /// A lead whose request is never answered (hyper 1.12 stranded it on
    /// the host's old connection) held every later dial of the host for
    /// ever: after the next `GOAWAY`, every request of the host hung.
    #[tokio::test(start_paused = true)]
    async fn a_lead_whose_request_never_ends_lets_the_held_dials_go() {
        let t = Arc::new(Turnover::default());
        let turns = Arc::new(TurnLog::default());
        let key: Arc<str> = Arc::from("https://a:443");
        let scope = DialScope::new(key.clone(), true, Some(turns.clone()), None);
        let mut watch = Watch::new();
        // The lead's request: never answered.
        let stranded = tokio::spawn(DialScope::run(
            Some(scope.clone()),
            std::future::pending::<Result<Answer, ()>>(),
        ));
        let Entered::Now(Some(lead)) = enter(&t, &key) else {
            panic!("the first dial leads");
        };
        scope.hold(lead);
        let Entered::Held(held) = enter(&t, &key) else {
            panic!("the second dial is held");
        };
        let mut wait = tokio_test::task::spawn(held.wait());
        assert!(wait.poll().is_pending());
        tokio::time::sleep(LEAD_HELD_AT_MOST - Duration::from_millis(1)).await;
        assert!(
            wait.poll().is_pending(),
            "held while the lead may be answered"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(wait.is_woken());
        assert!(
            matches!(wait.poll(), Poll::Ready(Err(crate::Coalesced { .. }))),
            "the held dial ends: the lead's connection is in the pool"
        );
        // The turnover is logged: an idempotent request stranded with the
        // lead's is sent again in time.
        assert!(!watch.stranded(&turns, &key));
        tokio::time::sleep(STRANDED_AFTER_TURNOVER).await;
        assert!(watch.stranded(&turns, &key));
        stranded.abort();
    }

    /// hyper-util keeps a host's old HTTP/2 connection in its pool after
    /// its `GOAWAY` until a request takes it: a request that started just
    /// after the new connection answered can be stranded on the old one.
    /// Such a request was never sent again (seen at the end of a run of
    /// `tests/nginx.rs`, after the last turnover).
    #[tokio::test(start_paused = true)]
    async fn a_request_started_just_after_a_turnover_is_watched_too() {
        let turns = TurnLog::default();
        let key: Arc<str> = Arc::from("https://a:443");
        turns.turned(&key);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut watch = Watch::new();
        let late = Instant::now() + STRANDED_AFTER_TURNOVER;
        tokio::time::sleep(STRANDED_AFTER_TURNOVER - Duration::from_millis(1)).await;
        assert!(
            !watch.stranded(&turns, &key),
            "a request is sent again only once it waited {STRANDED_AFTER_TURNOVER:?}"
        );
        tokio::time::sleep_until(late).await;
        assert!(watch.stranded(&turns, &key));
        // A request that started well after the turnover is not.
        let mut after = Watch::new();
        tokio::time::sleep(STRANDED_AFTER_TURNOVER * 2).await;
        assert!(!after.stranded(&turns, &key));
    }

    /// A busy host's connections turn over again and again (nginx's
    /// `keepalive_requests 100` at 1,000 requests a second: every 100 ms).
    /// The watch kept only the last turnover, never 2 s old while traffic
    /// went on: a stranded request hung until the traffic stopped.
    #[tokio::test(start_paused = true)]
    async fn a_busy_host_s_next_turnovers_do_not_put_off_the_resend() {
        let turns = TurnLog::default();
        let key: Arc<str> = Arc::from("https://a:443");
        let mut watch = Watch::new();
        let mut resent_after = None;
        for tick in 1..=100u32 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            turns.turned(&key);
            // The request looks once a second.
            if tick % 10 == 0 && watch.stranded(&turns, &key) {
                resent_after = Some(tick);
                break;
            }
        }
        assert_eq!(
            resent_after,
            Some(30),
            "looked at 1 s (saw the turnover at 1 s), stranded at 3 s"
        );
    }
}
