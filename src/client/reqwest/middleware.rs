//! The guard as a [`reqwest_middleware::Middleware`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use tower_layer::Layer;
use tower_service::Service;

use super::call_reqwest;
use crate::guard::{PoolGuard, PoolGuardLayer};
use crate::BoxError;

/// The whole guard (per-host and total limits, drains, reuse metrics, and
/// the retry of requests that met a stale pooled connection) as a
/// [`reqwest_middleware::Middleware`], for clients built with
/// `reqwest_middleware::ClientBuilder`. Made by
/// [`PoolGuard::middleware`].
///
/// It behaves as [`GuardedClient`](super::GuardedClient) does, with the rest
/// of the middleware chain in the place of reqwest: the response is the one
/// the chain returns, status, headers, final URL, remote address and
/// extensions unchanged, its body wrapped so that it drains when dropped
/// early and holds its host's slot until then. Middleware placed *before*
/// it in the chain (`.with(...)` earlier) sees each request once, limits
/// and retries included; middleware placed *after* it sees each attempt.
/// Put it last, next to the client, to limit what reaches the network.
///
/// A retry sends the request again down the rest of the chain, with the
/// extensions the chain was given (each attempt starts from a copy of
/// them; the last attempt's are what the caller's chain sees afterwards).
///
/// As with [`GuardedClient`](super::GuardedClient), dials are counted and
/// timed (for the drain's price) only with
/// [`PoolGuard::reqwest_connector_layer`] on the reqwest client; without
/// it, reuse is still measured from the responses.
///
/// Errors of the guard itself ([`QueueFull`](crate::QueueFull),
/// [`QueueTimeout`](crate::QueueTimeout)) come as
/// `reqwest_middleware::Error::Middleware`, whose `downcast_ref` finds
/// them; errors of the chain below pass through as they were.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let guard = poolguard::PoolGuard::builder().max_per_host(10).build();
/// let client = reqwest_middleware::ClientBuilder::new(
///     ::reqwest::Client::builder()
///         .connector_layer(guard.reqwest_connector_layer())
///         .build()?,
/// )
/// .with(guard.middleware())
/// .build();
/// // client.get(url).send().await? as with any ClientWithMiddleware
/// # drop(client);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GuardMiddleware {
    layer: PoolGuardLayer,
    /// When each host's HTTP/2 connection last turned over (shared by
    /// clones).
    turns: Arc<super::scope::TurnLog>,
    /// The client's HTTP/1 connections against the guard's lifecycle.
    pub(super) book: Arc<super::rotate::Book>,
}

impl fmt::Debug for GuardMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardMiddleware").finish_non_exhaustive()
    }
}

impl PoolGuard {
    /// The guard as a `reqwest_middleware` middleware: see
    /// [`GuardMiddleware`].
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
    pub fn middleware(&self) -> GuardMiddleware {
        GuardMiddleware {
            layer: self.layer().over_reqwest(),
            turns: Arc::default(),
            book: super::rotate::Book::new(self.lifecycle),
        }
    }
}

#[async_trait::async_trait]
impl Middleware for GuardMiddleware {
    async fn handle(
        &self,
        req: ::reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<::reqwest::Response> {
        let shared = Arc::new(Mutex::new(std::mem::take(extensions)));
        let svc = self.layer.layer(RunNext {
            next,
            extensions: shared.clone(),
            turns: self.turns.clone(),
            book: self.book.clone(),
        });
        let result = call_reqwest(svc, req).await;
        *extensions = std::mem::take(&mut *lock(&shared));
        result.map_err(into_middleware_error)
    }
}

fn lock(extensions: &Mutex<Extensions>) -> std::sync::MutexGuard<'_, Extensions> {
    extensions.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An error of the chain below comes back as it was; the guard's own are
/// the middleware's.
fn into_middleware_error(error: BoxError) -> reqwest_middleware::Error {
    use reqwest_middleware::Error;
    let error = match error.downcast::<Error>() {
        Ok(error) => return *error,
        Err(error) => error,
    };
    let error = match error.downcast::<::reqwest::Error>() {
        Ok(error) => return Error::Reqwest(*error),
        Err(error) => error,
    };
    // The guard's own errors by their type, so that `downcast_ref` finds
    // them in the `anyhow::Error`.
    let error = match error.downcast::<crate::QueueFull>() {
        Ok(error) => return Error::middleware(*error),
        Err(error) => error,
    };
    match error.downcast::<crate::QueueTimeout>() {
        Ok(error) => Error::middleware(*error),
        Err(error) => Error::Middleware(anyhow::Error::from_boxed(error)),
    }
}

/// The rest of the chain, as the service the guard's layers wrap.
#[derive(Clone)]
struct RunNext<'a> {
    next: Next<'a>,
    turns: Arc<super::scope::TurnLog>,
    book: Arc<super::rotate::Book>,
    /// The chain's extensions: each attempt starts from a copy, and leaves
    /// its own.
    extensions: Arc<Mutex<Extensions>>,
}

impl<'a> Service<http::Request<::reqwest::Body>> for RunNext<'a> {
    type Response = http::Response<::reqwest::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send + 'a>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<::reqwest::Body>) -> Self::Future {
        let next = self.next.clone();
        let shared = self.extensions.clone();
        let turns = self.turns.clone();
        let book = self.book.clone();
        Box::pin(async move {
            let super::Outgoing {
                request,
                ticket,
                scope,
                copy,
            } = super::Outgoing::new(request, &book, turns)?;
            let extensions = lock(&shared).clone();
            let again = copy.map(|copy| {
                let (next, extensions) = (next.clone(), extensions.clone());
                move || attempt(next, *copy, extensions)
            });
            let (result, extensions) = match super::DialScope::run_or_resend(
                scope,
                attempt(next, request, extensions),
                again,
            )
            .await
            {
                Ok(Attempt(response, extensions)) => (Ok(response), extensions),
                Err(Attempt(error, extensions)) => (Err(error), extensions),
            };
            *lock(&shared) = extensions;
            let returning = book.settle(ticket, result.as_ref().ok());
            let response = result?;
            Ok(super::into_http(response, returning))
        })
    }
}

/// An attempt's outcome with the extensions it leaves.
struct Attempt<T>(T, Extensions);

impl super::scope::Versioned for Attempt<::reqwest::Response> {
    fn version(&self) -> http::Version {
        self.0.version()
    }

    fn mark_dialed(&mut self) {
        self.0.mark_dialed();
    }
}

/// One attempt down the rest of the chain, with its own copy of the
/// chain's extensions.
async fn attempt(
    next: Next<'_>,
    request: ::reqwest::Request,
    mut extensions: Extensions,
) -> Result<Attempt<::reqwest::Response>, Attempt<reqwest_middleware::Error>> {
    match next.run(request, &mut extensions).await {
        Ok(response) => Ok(Attempt(response, extensions)),
        Err(error) => Err(Attempt(error, extensions)),
    }
}
