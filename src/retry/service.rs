use std::task::{Context, Poll};

use http::{header::HeaderName, Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use std::sync::Arc;

use super::attempts::{Attempts, Rules};
use super::future::ResponseFuture;
use super::{ReplayBody, RetryStaleLayer};
use crate::BoxError;

/// Retries requests that fail on a stale pooled connection; made by
/// [`RetryStaleLayer`].
///
/// Clones share the [`Metrics`](crate::Metrics), if any, and what was
/// learnt of connections. Errors are boxed; an error that is not retried,
/// or the last one, is the inner service's, unchanged.
#[derive(Clone, Debug)]
pub struct RetryStale<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<S>>,
}

/// What a [`RetryStale`] and its clones share, and each request reads.
#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub(crate) rules: Rules,
    /// A clone of the inner service, made at the first request that may
    /// be retried: a retry clones its service from it, so that such a
    /// request takes no clone of the whole client stack.
    pub(crate) spare: Spare<S>,
}

/// The spare copy of a [`RetryStale`]'s inner service, cloned for retries.
#[derive(Debug)]
pub(crate) struct Spare<S>(std::sync::OnceLock<std::sync::Mutex<S>>);

impl<S> Default for Spare<S> {
    fn default() -> Self {
        Spare(std::sync::OnceLock::new())
    }
}

impl<S: Clone> Spare<S> {
    /// Keeps a clone of `inner` if none is kept yet.
    pub(crate) fn keep(&self, inner: &S) {
        self.0.get_or_init(|| std::sync::Mutex::new(inner.clone()));
    }

    /// A fresh clone of the service, to be made ready for a retry.
    pub(crate) fn service(&self) -> Option<S> {
        let kept = self.0.get()?;
        let service = kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Some(service)
    }
}

impl<S> RetryStale<S> {
    /// Wraps `inner`: one retry, without metrics.
    pub fn new(inner: S) -> Self {
        RetryStaleLayer::new().layer(inner)
    }

    /// A [`RetryStaleLayer`] with its defaults.
    pub fn layer() -> RetryStaleLayer {
        RetryStaleLayer::new()
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for RetryStale<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let host = crate::key::HostKey::from_request(&req).map(|k| k.memo());
        let attempts = Attempts::start(
            &self.shared.rules,
            &mut req,
            host,
            &self.shared.spare,
            &self.inner,
        );
        ResponseFuture::new(self.inner.call(req), attempts, self.shared.clone())
    }
}

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static X_IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("x-idempotency-key");

/// Whether sending the request twice means the same as sending it once:
/// the methods RFC 9110 calls idempotent (`CONNECT` and `PATCH` and `POST`
/// are not), or a request the caller marked with an idempotency key.
pub(crate) fn is_idempotent<B>(req: &Request<B>) -> bool {
    idempotent(req.method(), req.headers())
}

/// [`is_idempotent`] of a request's method and headers.
pub(crate) fn idempotent(method: &Method, headers: &http::HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key(&IDEMPOTENCY_KEY)
        || headers.contains_key(&X_IDEMPOTENCY_KEY)
}

/// A copy of a request to send again: its head, field by field, and its
/// body replayed.
///
/// Not a `Request`: most requests are never sent again, and a `Request`
/// made for the copy would build a default head only to replace each
/// field of it, then carry an empty header map to drop. The `Request` is
/// made when a retry sends the copy.
pub(crate) struct Resend<B> {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    /// The request's headers as bytes, made into a map again only for a
    /// retry. `None`: the request had no header.
    headers: Option<HeaderCopy>,
    extensions: http::Extensions,
    body: B,
}

impl<B: ReplayBody> Resend<B> {
    /// A copy of `req`, if its body can be replayed.
    pub(crate) fn of(req: &Request<B>) -> Option<Self> {
        let body = req.body().replay()?;
        Some(Resend {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: match req.headers().is_empty() {
                true => None,
                // Headers too large to copy: not sent again.
                false => Some(HeaderCopy::of(req.headers())?),
            },
            extensions: req.extensions().clone(),
            body,
        })
    }
}

impl<B> Resend<B> {
    /// The request to send; `None` if its headers do not read back (bytes
    /// a header could not hold, which only `unsafe` code can put in one).
    pub(crate) fn into_request(self) -> Option<Request<B>> {
        let mut req = Request::new(self.body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        if let Some(headers) = self.headers {
            *req.headers_mut() = headers.into_map()?;
        }
        *req.extensions_mut() = self.extensions;
        Some(req)
    }
}

/// A request's headers, copied as bytes into one allocation: for each
/// value, in order, its name's length and its own (4 bytes each, little
/// endian), whether it is sensitive (1 byte), the name and the value.
///
/// Cloning the headers themselves would cost every value an allocation
/// the first time (a `HeaderValue` built from a string holds bytes of its
/// own, which a clone turns into shared bytes) and a reference count to
/// change twice after that, and the map two allocations; most copies are
/// never sent.
struct HeaderCopy(Box<[u8]>);

impl HeaderCopy {
    /// The copy of `headers`; `None` if a name or value is longer than
    /// 4 GiB or their total overflows.
    fn of(headers: &http::HeaderMap) -> Option<Self> {
        const FIXED: usize = 4 + 4 + 1;
        let size = headers.iter().try_fold(0usize, |size, (name, value)| {
            size.checked_add(FIXED)?
                .checked_add(name.as_str().len())?
                .checked_add(value.len())
        })?;
        let mut bytes = Vec::with_capacity(size);
        for (name, value) in headers {
            let name = name.as_str().as_bytes();
            bytes.extend_from_slice(&u32::try_from(name.len()).ok()?.to_le_bytes());
            bytes.extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
            bytes.push(u8::from(value.is_sensitive()));
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value.as_bytes());
        }
        Some(HeaderCopy(bytes.into_boxed_slice()))
    }

    /// The headers again: every value of a name in its order, the names in
    /// theirs.
    fn into_map(self) -> Option<http::HeaderMap> {
        let mut map = http::HeaderMap::new();
        let mut rest = &self.0[..];
        while !rest.is_empty() {
            let (name_len, after) = rest.split_first_chunk::<4>()?;
            let (value_len, after) = after.split_first_chunk::<4>()?;
            let (&sensitive, after) = after.split_first()?;
            let name_len = usize::try_from(u32::from_le_bytes(*name_len)).ok()?;
            let value_len = usize::try_from(u32::from_le_bytes(*value_len)).ok()?;
            let (name, after) = after.split_at_checked(name_len)?;
            let (value, after) = after.split_at_checked(value_len)?;
            let name = http::HeaderName::from_bytes(name).ok()?;
            let mut value = http::HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(sensitive == 1);
            map.try_append(name, value).ok()?;
            rest = after;
        }
        Some(map)
    }
}

#[cfg(test)]
mod header_copy {
    use super::HeaderCopy;

    /// A copy reads back record by record: cut inside a record, or holding
    /// bytes no header may hold, it is `None`, never a panic or a value
    /// cut short.
    #[test]
    fn a_copy_reads_back_whole_or_not_at_all() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        headers.append(http::header::ACCEPT, "*/*".parse().unwrap());
        let copy = HeaderCopy::of(&headers).unwrap();
        let bytes = copy.0.clone();
        assert_eq!(copy.into_map().unwrap(), headers);
        // Records: 4 + 4 + 1 bytes, then the name and the value.
        let ends = [13, 26];
        for cut in 1..bytes.len() {
            let copy = HeaderCopy(bytes[..cut].to_vec().into_boxed_slice());
            match copy.into_map() {
                Some(map) => assert!(ends.contains(&cut), "cut at {cut}: {map:?}"),
                None => assert!(!ends.contains(&cut), "cut at {cut}"),
            }
        }
        // A value with a line feed in it (4 + 4 + 1 + "x-a" + "1").
        let mut bad = bytes.to_vec();
        bad[12] = b'\n';
        assert!(HeaderCopy(bad.into_boxed_slice()).into_map().is_none());
        assert_eq!(
            HeaderCopy(Box::default()).into_map(),
            Some(http::HeaderMap::new())
        );
    }
}
