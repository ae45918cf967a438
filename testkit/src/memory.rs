//! The in-memory origin of the overhead bench and `examples/in_memory`: a
//! ready `service_fn` answering 16 bytes.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

/// A ready service answering every request with a 16-byte body, in memory.
pub fn in_memory_origin() -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send {
    tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"0123456789abcdef",
        ))))
    })
}
