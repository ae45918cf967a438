//! Stale pooled connections on loopback: a server that closes idle
//! connections races the client's next request. Guarded clients lose no
//! request to it, retry only what is safe, and retire connections before a
//! server's advertised `Keep-Alive` timeout. The server counts what it saw.
#![cfg(all(feature = "hyper-util", feature = "reqwest"))]

use poolguard_testkit as support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::retry::Retried;
use poolguard::{BoxError, CloseReason, ConnInfo, Guarded, GuardedConnector, PoolGuard};
use support::{After, Head, Server};
use tower::{Layer, ServiceExt};

type Body = Full<Bytes>;
type Stack = Guarded<Client<GuardedConnector<HttpConnector>, Body>>;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn stack(guard: &PoolGuard) -> Stack {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(10)
        .build(guard.connector(HttpConnector::new()));
    tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client)
}

fn guarded_reqwest(guard: &PoolGuard) -> poolguard::reqwest::GuardedClient {
    guard.reqwest(
        reqwest::Client::builder()
            .pool_max_idle_per_host(10)
            .connector_layer(guard.reqwest_connector_layer())
            .build()
            .expect("reqwest client"),
    )
}

/// A server whose keep-alive idle timeout is `idle`.
async fn idle_timeout_server(idle: Duration) -> Server {
    support::serve_raw(move || (OK.to_vec(), After::IdleTimeout(idle))).await
}

async fn get_hyper(svc: &Stack, uri: http::Uri) -> Result<(), BoxError> {
    let response = svc
        .clone()
        .oneshot(Request::get(uri).body(Body::default())?)
        .await?;
    response.into_body().collect().await?;
    Ok(())
}

async fn get_reqwest(client: &reqwest::Client, url: &str) -> Result<(), BoxError> {
    client.get(url).send().await?.bytes().await?;
    Ok(())
}

const TASKS: usize = 8;
const REQUESTS: usize = 3000;
const PAUSE_MS: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_util_loses_no_request_to_a_server_idle_timeout() {
    let server = idle_timeout_server(Duration::from_millis(20)).await;
    let uri = server.uri("/");

    let bare = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let u = uri.clone();
    let bare_run = support::drive(TASKS, REQUESTS, PAUSE_MS, move || {
        let (bare, u) = (bare.clone(), u.clone());
        async move {
            let response = bare.request(Request::get(u).body(Body::default())?).await?;
            response.into_body().collect().await?;
            Ok(())
        }
    })
    .await;

    let guard = PoolGuard::builder().build();
    let svc = stack(&guard);
    let u = uri.clone();
    let run = support::drive(TASKS, REQUESTS, PAUSE_MS, move || {
        let (svc, u) = (svc.clone(), u.clone());
        async move { get_hyper(&svc, u).await }
    })
    .await;
    let snap = guard.metrics().snapshot();
    eprintln!(
        "hyper-util, 20 ms idle timeout, {REQUESTS} GETs: bare lost {}, guarded lost {} \
         (retries {}, succeeded {}, failed {})",
        bare_run.errors, run.errors, snap.retries, snap.retries_succeeded, snap.retries_failed
    );
    assert_eq!(run.errors, 0, "guarded lost requests");
    assert_eq!(run.ok, REQUESTS);
    assert_eq!(snap.retries, snap.retries_succeeded);
    assert_eq!(snap.retries_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_loses_no_request_to_a_server_idle_timeout() {
    let server = idle_timeout_server(Duration::from_millis(20)).await;
    let url = server.url("/");

    let bare = reqwest::Client::new();
    let u = url.clone();
    let bare_run = support::drive(TASKS, REQUESTS, PAUSE_MS, move || {
        let (bare, u) = (bare.clone(), u.clone());
        async move { get_reqwest(&bare, &u).await }
    })
    .await;

    let guard = PoolGuard::builder().build();
    let client = guarded_reqwest(&guard);
    let u: reqwest::Url = url.parse().expect("url");
    let run = support::drive(TASKS, REQUESTS, PAUSE_MS, move || {
        let (client, u) = (client.clone(), u.clone());
        async move {
            let request = reqwest::Request::new(reqwest::Method::GET, u);
            client.execute(request).await?.bytes().await?;
            Ok(())
        }
    })
    .await;
    let snap = guard.metrics().snapshot();
    eprintln!(
        "reqwest, 20 ms idle timeout, {REQUESTS} GETs: bare lost {}, guarded lost {} \
         (retries {}, succeeded {}, failed {})",
        bare_run.errors, run.errors, snap.retries, snap.retries_succeeded, snap.retries_failed
    );
    assert_eq!(run.errors, 0, "guarded lost requests");
    assert_eq!(run.ok, REQUESTS);
    assert_eq!(snap.retries_failed, 0);
}

/// Pauses around a 1 s `Keep-Alive` timeout: some connections sit idle
/// longer than the server keeps them.
const KA_PAUSES_MS: [u64; 6] = [100, 1200, 300, 900, 1500, 50];

/// Three tasks each send one request per pause of [`KA_PAUSES_MS`] (in
/// turn from a different start) and pause; every request must succeed.
async fn with_keep_alive_pauses<F, Fut>(send: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..3 {
        let send = send.clone();
        tasks.spawn(async move {
            for i in 0..KA_PAUSES_MS.len() {
                send().await?;
                let pause = KA_PAUSES_MS[(i + t) % KA_PAUSES_MS.len()];
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Ok::<_, BoxError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("no request fails");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_retires_connections_before_the_server_closes_them() {
    // Advertises 1 s and closes idle connections after 1 s, as Apache does.
    let server = support::serve_raw(|| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=1, max=100\r\n\r\nok"
                .to_vec(),
            After::IdleTimeout(Duration::from_secs(1)),
        )
    })
    .await;
    let guard = PoolGuard::builder().retry_stale(false).build();
    let svc = stack(&guard);
    let uri = server.uri("/");
    with_keep_alive_pauses(move || {
        let (svc, uri) = (svc.clone(), uri.clone());
        async move { get_hyper(&svc, uri).await }
    })
    .await;
    let snap = guard.metrics().snapshot();
    let retired = snap.closes.get(CloseReason::Retired);
    eprintln!(
        "Keep-Alive timeout=1: {} requests, {} accepts, {retired} connections retired, \
         {} closed by the server's idle timeout",
        snap.requests,
        server.stats.accepted(),
        server
            .stats
            .idle_closed
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(retired >= 3, "the pauses over 750 ms retire connections");
    assert_eq!(
        server
            .stats
            .idle_closed
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the client closed every idle connection before the server did"
    );
    assert_eq!(snap.retries, 0, "no retry needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_max_retires_connections_after_their_last_request() {
    // Allows 3 requests per connection (Apache's count down: `max` more
    // after this one) but does not close: a client that ignored `max`
    // would send a 4th.
    let over = Arc::new(AtomicUsize::new(0));
    let full = Arc::new(AtomicUsize::new(0));
    let (o, f) = (over.clone(), full.clone());
    let server = support::serve_raw_with(move |head: &Head| {
        match head.nth {
            3 => f.fetch_add(1, SeqCst),
            n if n > 3 => o.fetch_add(1, SeqCst),
            _ => 0,
        };
        let left = 3usize.saturating_sub(head.nth);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=5, max={left}\r\n\r\nok"
        );
        (response.into_bytes(), After::KeepAlive)
    })
    .await;
    let guard = PoolGuard::builder().build();
    let svc = stack(&guard);
    for _ in 0..9 {
        get_hyper(&svc, server.uri("/")).await.expect("request");
    }
    assert_eq!(over.load(SeqCst), 0, "no request past the server's max");
    // 9 requests at 3 per connection; hyper-util's checkout/connect race
    // can add a connection when the pool gets a connection back late (seen
    // under CPU load), so only the floor is exact.
    assert!(server.stats.accepted() >= 3);
    drop(svc);
    // Closes are counted when hyper drops the connections.
    let settled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = guard.metrics().snapshot();
            if s.connections_closed == s.connections_opened {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every connection closes");
    let retired = settled.closes.get(CloseReason::Retired);
    let full = full.load(SeqCst) as u64;
    // Every connection that served its 3rd request was retired, but the
    // last one may be closed by the client's drop first.
    assert!(
        retired + 1 >= full && retired <= full,
        "retired {retired} of {full} full connections"
    );
}

/// A bare hyper-util client on a `GuardedConnector` without metrics: no
/// other layer sees the responses.
fn bare_connector_client() -> Client<GuardedConnector<HttpConnector>, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(GuardedConnector::new(HttpConnector::new(), 10))
}

async fn get_bare(
    client: &Client<GuardedConnector<HttpConnector>, Full<Bytes>>,
    uri: http::Uri,
) -> Result<(), BoxError> {
    let response = client.get(uri).await?;
    response.into_body().collect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_is_honoured_without_any_metrics_layer() {
    let server = support::serve_raw(|| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=1\r\n\r\nok".to_vec(),
            After::IdleTimeout(Duration::from_secs(1)),
        )
    })
    .await;
    let client = bare_connector_client();
    let uri = server.uri("/");
    with_keep_alive_pauses(move || {
        let (client, uri) = (client.clone(), uri.clone());
        async move { get_bare(&client, uri).await }
    })
    .await;
    let idle_closed = server.stats.idle_closed.load(SeqCst);
    let client_closed = server.stats.closed_by_peer.load(SeqCst);
    eprintln!(
        "Keep-Alive timeout=1, bare connector: {} accepts, {client_closed} closed by the client, \
         {idle_closed} by the server's idle timeout",
        server.stats.accepted()
    );
    assert_eq!(
        idle_closed, 0,
        "the client closed every idle connection first"
    );
    assert!(
        client_closed >= 3,
        "the pauses over 750 ms retire connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_max_is_honoured_without_any_metrics_layer() {
    let over = Arc::new(AtomicUsize::new(0));
    let o = over.clone();
    let server = support::serve_raw_with(move |head: &Head| {
        if head.nth > 3 {
            o.fetch_add(1, SeqCst);
        }
        let left = 3usize.saturating_sub(head.nth);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=5, max={left}\r\n\r\nok"
        );
        (response.into_bytes(), After::KeepAlive)
    })
    .await;
    let client = bare_connector_client();
    for _ in 0..9 {
        get_bare(&client, server.uri("/")).await.expect("request");
    }
    assert_eq!(over.load(SeqCst), 0, "no request past the server's max");
    assert!(server.stats.accepted() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reqwest_retry_needs_no_metrics_layer() {
    let (server, seen) = misbehaving().await;
    let count = |id: &str| seen.lock().unwrap().get(id).copied().unwrap_or(0);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    // reqwest behind the retry layer alone: no metrics, no other layer.
    let send = tower::service_fn(move |req: Request<reqwest::Body>| {
        let client = client.clone();
        async move {
            let response = client.execute(reqwest::Request::try_from(req)?).await?;
            Ok::<_, BoxError>(http::Response::from(response))
        }
    });
    // A closure hears what the retry did: no `Metrics` needed either.
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard = events.clone();
    let svc = poolguard::RetryStaleLayer::new()
        .on_retry(move |e| heard.lock().unwrap().push(e))
        .layer(send);
    let get = |path: &str, id: &str| {
        Request::get(server.uri(path))
            .header("x-id", id)
            .body(reqwest::Body::from(""))
            .expect("request")
    };
    // A first request opens the connection; the next meets it closed. The
    // premise, a request on the pooled connection, is established: reqwest
    // gives a connection back to its pool a moment after its body ends, and
    // a request sent before then dials anew (the server answers a request
    // on a new connection normally); such a request is sent again until one
    // lands on a pooled connection (bounded).
    let warm = svc
        .clone()
        .oneshot(get("/slow", "warm"))
        .await
        .expect("warm-up");
    warm.into_body().collect().await.expect("body");
    let mut landed = None;
    for attempt in 0..20 {
        let id = format!("get-{attempt}");
        let response = svc
            .clone()
            .oneshot(get("/close-reused", &id))
            .await
            .expect("GET retried");
        if count(&id) == 2 {
            landed = Some((id, response));
            break;
        }
        // Answered on a new connection: no retry, nothing heard.
        assert_eq!(count(&id), 1);
        assert!(response.extensions().get::<Retried>().is_none());
        assert!(events.lock().unwrap().is_empty());
        response.into_body().collect().await.expect("body");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (id, response) = landed.expect("a request on a pooled connection within 20 tries");
    assert_eq!(count(&id), 2);
    assert_eq!(
        response.extensions().get::<Retried>().map(|r| r.retries),
        Some(1)
    );
    use poolguard::retry::{RetryCause, RetryEvent};
    assert_eq!(
        *events.lock().unwrap(),
        [
            RetryEvent::Retrying {
                attempt: 1,
                cause: RetryCause::StaleConnection
            },
            RetryEvent::Succeeded
        ]
    );
}

/// What a request id was seen doing at the server.
type Seen = Arc<Mutex<HashMap<String, usize>>>;

/// A server that misbehaves on requests whose path says so, counting each
/// `x-id` it sees:
/// - `/close-reused`: on the 2nd and later request of a connection, reads
///   the request and closes without a byte (a stale connection);
/// - `/close-new`: the same on the 1st request of a connection;
/// - `/partial`: on the 2nd and later, writes half a status line, closes.
async fn misbehaving() -> (Server, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let server = support::serve_raw_with(move |head: &Head| {
        let mut seen = s.lock().unwrap();
        if let Some(id) = head.header("x-id") {
            *seen.entry(id.to_string()).or_default() += 1;
        }
        if head.nth == 1 {
            // Connections that served a request.
            *seen.entry("first requests".to_string()).or_default() += 1;
        }
        drop(seen);
        let path = head.text.split(' ').nth(1).unwrap_or("/");
        match path {
            "/close-reused" if head.nth > 1 => (Vec::new(), After::Close),
            "/close-new" if head.nth == 1 => (Vec::new(), After::Close),
            "/partial" if head.nth > 1 => (b"HTTP/1.1 20".to_vec(), After::Close),
            _ => (OK.to_vec(), After::KeepAlive),
        }
    })
    .await;
    (server, seen)
}

fn request(method: &str, server: &Server, path: &str, id: &str, key: bool) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(server.uri(path))
        .header("x-id", id);
    if key {
        builder = builder.header("idempotency-key", id);
    }
    builder.body(Body::from("payload")).expect("request")
}

/// Opens `n` pooled connections with one request each.
async fn warm(svc: &Stack, server: &Server, n: usize) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (svc, uri) = (svc.clone(), server.uri("/slow"));
        set.spawn(async move { get_hyper(&svc, uri).await });
    }
    while let Some(done) = set.join_next().await {
        done.expect("task").expect("warm-up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_safe_requests_are_retried_and_at_most_once() {
    let (server, seen) = misbehaving().await;
    let count = |id: &str| seen.lock().unwrap().get(id).copied().unwrap_or(0);
    let guard = PoolGuard::builder().max_per_host(1).build();
    let svc = stack(&guard);
    warm(&svc, &server, 1).await;

    // A GET that meets a stale connection: sent again, on a new one.
    let response = svc
        .clone()
        .oneshot(request("GET", &server, "/close-reused", "get-1", false))
        .await
        .expect("GET retried");
    assert_eq!(count("get-1"), 2);
    assert_eq!(
        response.extensions().get::<Retried>().map(|r| r.retries),
        Some(1)
    );
    assert_eq!(
        response.extensions().get::<ConnInfo>().map(|c| c.retries),
        Some(1)
    );
    let info = response.extensions().get::<ConnInfo>().copied();
    assert_eq!(
        info.map(|c| c.reused),
        Some(false),
        "the retry used a new connection"
    );
    response.into_body().collect().await.expect("body");

    // A POST without an idempotency key: never sent again.
    warm(&svc, &server, 1).await;
    let err = svc
        .clone()
        .oneshot(request("POST", &server, "/close-reused", "post-1", false))
        .await
        .expect_err("POST fails");
    assert_eq!(count("post-1"), 1, "{err}");

    // With a key: sent again.
    warm(&svc, &server, 1).await;
    svc.clone()
        .oneshot(request("POST", &server, "/close-reused", "post-2", true))
        .await
        .expect("keyed POST retried");
    assert_eq!(count("post-2"), 2);

    // A response byte arrived: never sent again.
    warm(&svc, &server, 1).await;
    svc.clone()
        .oneshot(request("GET", &server, "/partial", "partial-1", false))
        .await
        .expect_err("partial response fails");
    assert_eq!(count("partial-1"), 1);

    // The connection was new: never sent again.
    svc.clone()
        .oneshot(request("GET", &server, "/close-new", "new-1", false))
        .await
        .expect_err("a new connection's failure is an answer");
    assert_eq!(count("new-1"), 1);

    let snap = guard.metrics().snapshot();
    assert_eq!(
        (snap.retries, snap.retries_succeeded, snap.retries_failed),
        (2, 2, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_meets_a_stale_connection_too_is_not_retried_again() {
    let (server, seen) = misbehaving().await;
    let guard = PoolGuard::builder().max_per_host(2).build();
    let svc = stack(&guard);
    // Two pooled connections (the cap) that served a request each, so
    // that both close on their next request. A 2-byte body is read with its
    // head, so a connection is free before its caller reads it, and
    // hyper-util may pool a connection that lost its checkout race unused:
    // pairs of requests are sent until the server saw both connections
    // serve.
    let served = || seen.lock().unwrap().get("first requests").copied();
    for _ in 0..50 {
        if served() == Some(2) {
            break;
        }
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let (svc, uri) = (svc.clone(), server.uri("/"));
            set.spawn(async move { get_hyper(&svc, uri).await });
        }
        while let Some(done) = set.join_next().await {
            done.expect("task").expect("warm-up");
        }
    }
    assert_eq!(served(), Some(2));
    assert_eq!(server.stats.accepted(), 2);
    svc.clone()
        .oneshot(request("POST", &server, "/close-reused", "twice", true))
        .await
        .expect_err("both attempts meet a stale connection");
    assert_eq!(seen.lock().unwrap().get("twice").copied(), Some(2));
    let snap = guard.metrics().snapshot();
    assert_eq!((snap.retries, snap.retries_failed), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_retries_only_safe_requests() {
    let (server, seen) = misbehaving().await;
    let count = |id: &str| seen.lock().unwrap().get(id).copied().unwrap_or(0);
    let guard = PoolGuard::builder().max_per_host(1).build();
    let client = guarded_reqwest(&guard);
    let send = |method: reqwest::Method, path: &str, id: &str, key: bool| {
        let mut request = reqwest::Request::new(method, server.url(path).parse().expect("url"));
        request
            .headers_mut()
            .insert("x-id", id.parse().expect("header"));
        if key {
            request
                .headers_mut()
                .insert("idempotency-key", id.parse().expect("header"));
        }
        *request.body_mut() = Some(reqwest::Body::from("payload"));
        client.execute(request)
    };
    let warm = || async {
        send(reqwest::Method::GET, "/", "warm", false)
            .await
            .expect("warm-up")
            .bytes()
            .await
            .expect("body");
    };

    // reqwest's cap is request level: its pool may dial a new connection
    // when the warmed one comes back late (under CPU load), and then the
    // request meets no stale connection. Each case is tried until it meets
    // one (the server sees the request on a reused connection), and what
    // the server saw is checked every time.
    let mut met = [0usize; 3];
    for attempt in 0..20 {
        warm().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let id = format!("get-{attempt}");
        let response = send(reqwest::Method::GET, "/close-reused", &id, false)
            .await
            .expect("a GET never fails here");
        let retried = response.extensions().get::<Retried>().is_some();
        assert_eq!(count(&id), 1 + usize::from(retried));
        met[0] += usize::from(retried);
        response.bytes().await.expect("body");

        warm().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let id = format!("post-{attempt}");
        let failed = send(reqwest::Method::POST, "/close-reused", &id, false)
            .await
            .is_err();
        assert_eq!(count(&id), 1, "a POST without a key is sent once");
        met[1] += usize::from(failed);

        warm().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let id = format!("keyed-{attempt}");
        let response = send(reqwest::Method::POST, "/close-reused", &id, true)
            .await
            .expect("a keyed POST never fails here");
        let retried = response.extensions().get::<Retried>().is_some();
        assert_eq!(count(&id), 1 + usize::from(retried));
        met[2] += usize::from(retried);
        response.bytes().await.expect("body");
        if met.iter().all(|&m| m > 0) {
            break;
        }
    }
    assert!(
        met.iter().all(|&m| m > 0),
        "each case met a stale connection: {met:?}"
    );

    // A fresh client: its first connection is new.
    let fresh = guarded_reqwest(&PoolGuard::builder().build());
    let mut request = reqwest::Request::new(
        reqwest::Method::GET,
        server.url("/close-new").parse().expect("url"),
    );
    request
        .headers_mut()
        .insert("x-id", "new-1".parse().expect("header"));
    fresh
        .execute(request)
        .await
        .expect_err("a new connection's failure is an answer");
    assert_eq!(count("new-1"), 1);
}
