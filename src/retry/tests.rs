//! Logic tests of the retry rules with mocks. The stale-connection path
//! itself needs hyper-util's errors: `tests/retry.rs` runs it on loopback.

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Empty, Full};
use tokio_test::{assert_ready, task};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::service::{is_idempotent, Resend};
use super::{ReplayBody, RetryStaleLayer};

fn request(method: Method, key: Option<&str>) -> Request<Empty<Bytes>> {
    let mut builder = Request::builder().method(method).uri("http://h/");
    if let Some(key) = key {
        builder = builder.header(key, "k-1");
    }
    builder.body(Empty::new()).unwrap()
}

#[test]
fn idempotent_methods_and_keys() {
    for m in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ] {
        assert!(is_idempotent(&request(m.clone(), None)), "{m}");
    }
    for m in [Method::POST, Method::PATCH, Method::CONNECT] {
        assert!(!is_idempotent(&request(m.clone(), None)), "{m}");
        assert!(is_idempotent(&request(m.clone(), Some("Idempotency-Key"))));
        assert!(is_idempotent(&request(
            m.clone(),
            Some("x-idempotency-key")
        )));
        assert!(!is_idempotent(&request(m, Some("x-request-id"))));
    }
}

#[tokio::test]
async fn replayed_bodies_yield_the_same_bytes() {
    let full = Full::new(Bytes::from_static(b"payload"));
    let copy = full.replay().unwrap();
    assert_eq!(copy.collect().await.unwrap().to_bytes(), "payload");
    let s = String::from("text");
    assert_eq!(s.replay().unwrap(), "text");
    assert!(Empty::<Bytes>::new().replay().unwrap().is_end_stream());

    let empty: http_body_util::combinators::BoxBody<Bytes, std::io::Error> =
        Empty::new().map_err(|never| match never {}).boxed();
    assert!(empty.replay().unwrap().is_end_stream());
    let streaming: http_body_util::combinators::BoxBody<Bytes, std::io::Error> =
        Full::new(Bytes::from("x"))
            .map_err(|never| match never {})
            .boxed();
    assert!(streaming.replay().is_none(), "a non-empty box is a stream");

    let either: Either<Full<Bytes>, Empty<Bytes>> = Either::Left(Full::new(Bytes::from("l")));
    let copy = either.replay().unwrap();
    assert_eq!(copy.collect().await.unwrap().to_bytes(), "l");
}

#[test]
fn the_copy_keeps_method_uri_version_headers_and_extensions() {
    #[derive(Clone, Debug, PartialEq)]
    struct Tag(u8);
    let mut req = Request::put("http://h:8080/p?q=1")
        .version(http::Version::HTTP_10)
        .header("x-a", "1")
        .header("cookie", "a=1")
        .header(http::header::ACCEPT, "text/plain")
        .header("cookie", "b=2")
        .header("x-a", "2")
        .body(Full::new(Bytes::from("b")))
        .unwrap();
    req.extensions_mut().insert(Tag(7));
    let mut secret = http::HeaderValue::from_static("Bearer t");
    secret.set_sensitive(true);
    req.headers_mut()
        .insert(http::header::AUTHORIZATION, secret);
    // Bytes beyond ASCII ("obs-text"), which a header may hold.
    req.headers_mut().insert(
        "x-latin",
        http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
    );
    let copy = Resend::of(&req).unwrap().into_request().unwrap();
    assert_eq!(copy.method(), Method::PUT);
    assert_eq!(copy.uri(), req.uri());
    assert_eq!(copy.version(), http::Version::HTTP_10);
    assert_eq!(copy.headers(), req.headers());
    // Every value of a name, in order; the names in their order.
    let all = |r: &Request<_>| {
        r.headers()
            .iter()
            .map(|(n, v)| format!("{n}: {v:?} {}", v.is_sensitive()))
            .collect::<Vec<_>>()
    };
    assert_eq!(all(&copy), all(&req));
    assert_eq!(copy.headers().get_all("cookie").iter().count(), 2);
    assert!(copy.headers()[http::header::AUTHORIZATION].is_sensitive());
    assert!(!copy.headers()["x-a"].is_sensitive());
    assert_eq!(copy.headers()["x-latin"].as_bytes(), b"caf\xe9");
    assert_eq!(copy.extensions().get::<Tag>(), Some(&Tag(7)));
}

#[tokio::test]
async fn other_errors_are_never_retried() {
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let (svc, mut handle) = mock::pair::<Request<Empty<Bytes>>, Response<Empty<Bytes>>>();
    let mut svc = RetryStaleLayer::new()
        .max_retries(3)
        .on_retry(move |e| seen.lock().unwrap().push(e))
        .layer(svc);
    let mut call = task::spawn(svc.ready().await.unwrap().call(request(Method::GET, None)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("connection refused");
    let err = assert_ready!(call.poll()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "connection refused",
        "the error passes unchanged"
    );
    drop((call, svc));
    assert!(
        handle.next_request().await.is_none(),
        "the service saw one call"
    );
    assert!(events.lock().unwrap().is_empty(), "no retry to tell of");
}

#[tokio::test]
async fn a_request_that_may_be_retried_does_not_clone_the_service() {
    // A client stack's clone is many reference counts (hyper-util's
    // `Client` a dozen); a retry's service is cloned from one spare kept
    // at the first request, not for every request that might be retried.
    let (client, clones) =
        crate::testing::CountsClones::new(tower::service_fn(|_: Request<Empty<Bytes>>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(Empty::<
                Bytes,
            >::new(
            ))))
        }));
    let mut svc = RetryStaleLayer::new().layer(client);
    for _ in 0..100 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(request(Method::GET, None))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        clones.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one spare for 100 requests"
    );
}
