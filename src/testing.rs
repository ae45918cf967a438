//! Test doubles shared by the unit tests of several modules.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

/// A service that counts its clones: `S`, forwarded to, and a shared count
/// of the clones made of it (what a test of "no clone per request" reads).
#[derive(Debug)]
pub(crate) struct CountsClones<S> {
    inner: S,
    clones: Arc<AtomicUsize>,
}

impl<S> CountsClones<S> {
    /// `inner`, and the count its clones will add to.
    pub(crate) fn new(inner: S) -> (Self, Arc<AtomicUsize>) {
        let clones = Arc::new(AtomicUsize::new(0));
        let service = CountsClones {
            inner,
            clones: clones.clone(),
        };
        (service, clones)
    }
}

impl<S: Clone> Clone for CountsClones<S> {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Relaxed);
        CountsClones {
            inner: self.inner.clone(),
            clones: self.clones.clone(),
        }
    }
}

impl<S: Service<R>, R> Service<R> for CountsClones<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.inner.call(req)
    }
}
