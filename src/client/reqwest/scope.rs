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

use std::sync::{Arc, Mutex, PoisonError};

use crate::conn::turnover::Lead;

tokio::task_local! {
    static SCOPE: Arc<DialScope>;
}

/// The host of the request a task sends, for the dials it makes.
#[derive(Debug)]
pub(crate) struct DialScope {
    /// `scheme://host:port` of the request.
    pub(crate) key: Arc<str>,
    pub(crate) tls: bool,
    /// The lead dial the request made, once its connection is known to
    /// speak HTTP/2; `Err(())` once the request ended.
    lead: Mutex<Result<Option<Lead>, ()>>,
}

impl DialScope {
    /// The scope of a request for `url`; `None` without a host.
    pub(crate) fn of(url: &::reqwest::Url) -> Option<Arc<DialScope>> {
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let mut key = format!("{}://{host}:{port}", url.scheme());
        key.make_ascii_lowercase();
        Some(Arc::new(DialScope {
            key: Arc::from(key),
            tls: url.scheme() == "https",
            lead: Mutex::new(Ok(None)),
        }))
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
        let result = SCOPE.scope(scope.clone(), f).await;
        let lead = std::mem::replace(&mut *scope.lock(), Err(()));
        if let (Ok(Some(lead)), Ok(response)) = (lead, &result) {
            if response.version() >= http::Version::HTTP_2 {
                lead.http2_in_use();
            }
            // Else dropped: the next held dial leads.
        }
        result
    }

    /// The lead dial made a connection that speaks HTTP/2: kept until the
    /// request is answered (at once in use if it already was, by another
    /// connection).
    pub(crate) fn hold(&self, lead: Lead) {
        let mut slot = self.lock();
        match &mut *slot {
            Ok(held) => *held = Some(lead),
            Err(()) => {
                drop(slot);
                lead.http2_in_use();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Result<Option<Lead>, ()>> {
        self.lead.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A response's HTTP version.
pub(crate) trait Versioned {
    fn version(&self) -> http::Version;
}

impl Versioned for ::reqwest::Response {
    fn version(&self) -> http::Version {
        ::reqwest::Response::version(self)
    }
}
