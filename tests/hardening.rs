//! Defects a hostile user could hit: one host spelled many ways under a
//! connection cap, a runtime without timers, a request that got response
//! bytes, upgraded connections holding slots, reqwest observables. Real
//! loopback servers; the server's counts are the truth.
#![cfg(feature = "hyper-util")]

use poolguard_testkit as support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use poolguard::{BoxError, GuardedConnector, GuardedIo, PoolGuard, QueueFull, QueueTimeout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// The longest any single request here may take before the test calls it
/// a hang.
const HANG: Duration = Duration::from_secs(10);

/// A connector that dials `addr` whatever the URI says: lets a test use
/// any spelling of a host (default ports, names, IPv6 literals) against one
/// loopback server.
#[derive(Clone, Debug)]
struct DialTo(SocketAddr);

impl tower::Service<Uri> for DialTo {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move { Ok(TokioIo::new(TcpStream::connect(addr).await?)) })
    }
}

/// The first error of type `E` in `error`'s source chain.
fn find<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// Waits until `cond` holds; panics after [`HANG`] rather than spinning on.
async fn until(cond: impl Fn() -> bool) {
    let mut spins = 0u32;
    let started = std::time::Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < HANG,
            "condition not met within {HANG:?}"
        );
        spins += 1;
        if spins % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        tokio::task::yield_now().await;
    }
}

type Stack = poolguard::Guarded<Client<GuardedConnector<DialTo>, Empty<Bytes>>>;

/// The guard's whole stack on a hyper-util client that dials `server`
/// whatever the URI, with one idle connection per pool key.
fn stack(guard: &PoolGuard, server: SocketAddr) -> Stack {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(guard.connector(DialTo(server)));
    tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client)
}

/// Sends a GET through `svc` and reads the body; a request that does not
/// end within [`HANG`] is an error.
async fn get(svc: &Stack, uri: &str) -> Result<(), BoxError> {
    let request = Request::get(uri).body(Empty::new())?;
    let work = async {
        let response = svc.clone().oneshot(request).await?;
        response.into_body().collect().await?;
        Ok::<_, BoxError>(())
    };
    tokio::time::timeout(HANG, work)
        .await
        .map_err(|_| BoxError::from(format!("{uri}: no answer within {HANG:?} (a hang)")))?
}

// ---- 1. One host, many spellings, under a connection cap of 1 ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_connector_serves_every_spelling_of_a_host() {
    let server = support::serve().await;
    let port = server.addr.port();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build::<_, Empty<Bytes>>(GuardedConnector::new(HttpConnector::new(), 1));
    let spellings = [
        format!("http://127.0.0.1:{port}/bytes/10"),
        format!("http://u@127.0.0.1:{port}/bytes/10"),
        format!("http://127.0.0.1:0{port}/bytes/10"),
        format!("http://u:p@127.0.0.1:{port}/bytes/10"),
        format!("http://127.0.0.1:{port}/bytes/10"),
    ];
    for uri in &spellings {
        let work = async {
            let response = client.get(uri.parse()?).await?;
            response.into_body().collect().await?;
            Ok::<_, BoxError>(())
        };
        match tokio::time::timeout(HANG, work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{uri}: {e}"),
            Err(_) => panic!("{uri}: no answer within {HANG:?} (a hang)"),
        }
    }
    // One connection per change of spelling at most (each retires the last).
    let accepts = server.stats.accepted();
    println!("5 spellings in turn, N = 1: {accepts} accepts");
    assert!(accepts <= spellings.len(), "accepts {accepts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_stack_serves_a_default_port_spelled_both_ways() {
    let server = support::serve().await;
    let guard = PoolGuard::builder()
        .max_per_host(1)
        .queue_timeout(Duration::from_secs(5))
        .build();
    let svc = stack(&guard, server.addr);
    // `http://127.0.0.1/` and `http://127.0.0.1:80/` are one host (port
    // 80) to poolguard and two pool keys to hyper-util.
    for (i, uri) in [
        "http://127.0.0.1/bytes/5",
        "http://127.0.0.1:80/bytes/5",
        "http://127.0.0.1/bytes/5",
        "http://127.0.0.1:80/bytes/5",
        "http://127.0.0.1:80/bytes/5",
    ]
    .iter()
    .enumerate()
    {
        if let Err(e) = get(&svc, uri).await {
            panic!(
                "request {i} ({uri}): {e} ({:?})",
                std::error::Error::source(&*e)
            );
        }
    }
    let accepts = server.stats.accepted();
    println!("default port spelled both ways, N = 1: {accepts} accepts");
    assert!(accepts <= 4, "accepts {accepts}");
    assert_eq!(guard.metrics().snapshot().queue_timeout, 0);
}

/// A spelling of one of two hosts: `example.com` (letter case, explicit
/// default port, leading zeros, userinfo) or `::1` (IPv6 literal forms).
fn spelling(choice: (bool, usize, usize, usize)) -> String {
    let (v6, host, port, user) = choice;
    let host = if v6 {
        ["[::1]", "[0:0:0:0:0:0:0:1]", "[0000::1]", "[::0001]"][host % 4]
    } else {
        ["example.com", "EXAMPLE.COM", "Example.Com", "example.COM"][host % 4]
    };
    let port = ["", ":80", ":080", ":0080"][port % 4];
    let user = ["", "u@", "u:p@"][user % 3];
    format!("http://{user}{host}{port}/bytes/3")
}

#[test]
fn no_spelling_of_a_host_waits_past_the_deadline() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(support::serve());
    let addr = server.addr;
    let deadline = Duration::from_secs(2);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let sequence =
        proptest::collection::vec((any::<bool>(), 0..4usize, 0..4usize, 0..3usize), 2..7);
    runner
        .run(&sequence, |choices| {
            rt.block_on(async {
                let guard = PoolGuard::builder()
                    .max_per_host(1)
                    .queue_timeout(deadline)
                    .build();
                let svc = stack(&guard, addr);
                for choice in &choices {
                    let uri = spelling(*choice);
                    let started = tokio::time::Instant::now();
                    let result = get(&svc, &uri).await;
                    let took = started.elapsed();
                    prop_assert!(result.is_ok(), "{uri}: {:?} ({choices:?})", result.err());
                    prop_assert!(took < deadline, "{uri} took {took:?} ({choices:?})");
                }
                Ok(())
            })
        })
        .unwrap();
    drop(server);
}

// ---- The connector's wait: a deadline, a bound, typed errors ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_waits_for_a_slot_no_longer_than_its_deadline() {
    let server = support::serve().await;
    let connector =
        GuardedConnector::new(HttpConnector::new(), 1).queue_timeout(Duration::from_millis(200));
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build::<_, Empty<Bytes>>(connector.clone());
    // The only connection is busy with a body that never ends.
    let held = client.get(server.uri("/trickle")).await.expect("first");
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(HANG, client.get(server.uri("/bytes/1")))
        .await
        .expect("the dial's wait has a deadline")
        .expect_err("no slot within the deadline");
    let timeout =
        find::<QueueTimeout>(&err).unwrap_or_else(|| panic!("not a QueueTimeout: {err:?}"));
    assert!(timeout.waited() >= Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(connector.waiting(), 0);
    assert_eq!(server.stats.accepted(), 1);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dial_queue_fails_its_oldest_dial_with_queue_full() {
    let server = support::serve().await;
    let connector = GuardedConnector::new(HttpConnector::new(), 1)
        .max_queued(1)
        .queue_timeout(Duration::from_secs(3));
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build::<_, Empty<Bytes>>(connector.clone());
    let held = client.get(server.uri("/trickle")).await.expect("first");
    let first = tokio::spawn(client.get(server.uri("/bytes/1")));
    until(|| connector.waiting() > 0).await;
    let second = tokio::spawn(client.get(server.uri("/bytes/1")));
    let err = tokio::time::timeout(HANG, first)
        .await
        .expect("evicted at once")
        .expect("task")
        .expect_err("the oldest dial is dropped");
    assert!(
        find::<QueueFull>(&err).is_some(),
        "not a QueueFull: {err:?}"
    );
    // The newer dial gets the slot once the busy connection closes.
    drop(held);
    tokio::time::timeout(HANG, second)
        .await
        .expect("served")
        .expect("task")
        .expect("the newer dial is served");
}

// ---- 3. A runtime without timers ----

#[test]
fn the_whole_stack_runs_on_a_runtime_without_timers() {
    // No `enable_time`: every tokio timer panics here.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = support::serve().await;
        let guard = PoolGuard::builder().max_per_host(1).build();
        let svc = stack(&guard, server.addr);
        // The second request must queue behind the first's body.
        let first = svc
            .clone()
            .oneshot(
                Request::get("http://h/bytes/100")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .expect("first");
        let second = tokio::spawn({
            let svc = svc.clone();
            async move {
                let response = svc
                    .oneshot(Request::get("http://h/bytes/100000").body(Empty::new())?)
                    .await?;
                // Dropped early: the drain needs a timer, and is skipped.
                drop(response);
                Ok::<_, BoxError>(())
            }
        });
        until(|| guard.layer().limit().queued() > 0).await;
        first.into_body().collect().await.expect("body");
        second.await.expect("task").expect("second");
        let snap = guard.metrics().snapshot();
        assert_eq!(snap.queue_waited, 1);
        assert_eq!(snap.responses, 2);
    });
}

// ---- 4. A request that got response bytes is never sent again ----

/// A raw server that answers a GET with a 2-byte keep-alive response, and a
/// PUT with `100 Continue`, then (after a pause in which the client reads the
/// interim response and writes on) reads `read` bytes of the body and resets
/// the connection. Counts PUT heads.
async fn continue_then_reset(read: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let puts = Arc::new(AtomicUsize::new(0));
    let count = puts.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                loop {
                    let end = loop {
                        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    };
                    if seen.starts_with(b"GET") {
                        seen.drain(..end);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    if stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let mut got = seen.len() - end;
                    while got < read {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    let _ = stream.set_zero_linger();
                    return;
                }
            });
        }
    });
    (addr, puts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_100_continue_is_not_sent_again() {
    let (addr, puts) = continue_then_reset(256 * 1024).await;
    let guard = PoolGuard::builder().max_per_host(1).build();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build::<_, Full<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client);
    for (fresh, path) in [(true, "/new"), (false, "/reused")] {
        if !fresh {
            // The PUT goes on a connection that completed an exchange.
            let get = Request::get(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = svc.clone().oneshot(get).await.expect("GET");
            response.into_body().collect().await.expect("body");
        }
        let before = puts.load(Ordering::SeqCst);
        let request = Request::put(format!("http://{addr}{path}"))
            .header(http::header::EXPECT, "100-continue")
            .body(Full::new(Bytes::from(vec![b'x'; 16 * 1024 * 1024])))
            .expect("request");
        let result = tokio::time::timeout(HANG, svc.clone().oneshot(request))
            .await
            .expect("ends");
        assert!(result.is_err(), "{path}: the server reset the request");
        // Give a second attempt, had there been one, time to arrive.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            puts.load(Ordering::SeqCst) - before,
            1,
            "{path}: the server saw the request again"
        );
    }
    assert_eq!(guard.metrics().snapshot().retries, 0);
}

// ---- 7. Upgrades ----

/// A server that upgrades `/upgrade` (101, then echoes what it reads) and
/// answers anything else with `ok`. Counts accepted connections.
async fn upgrading() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: Request<hyper::body::Incoming>| async move {
                        if req.uri().path() != "/upgrade" {
                            return Ok::<_, Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )));
                        }
                        tokio::spawn(async move {
                            let Ok(upgraded) = hyper::upgrade::on(&mut req).await else {
                                return;
                            };
                            let mut io = TokioIo::new(upgraded);
                            let mut buf = [0u8; 64];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        });
                        let response = Response::builder()
                            .status(101)
                            .header(http::header::CONNECTION, "upgrade")
                            .header(http::header::UPGRADE, "echo")
                            .body(Full::new(Bytes::new()))
                            .expect("response");
                        Ok(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_do_not_hold_their_hosts_slots() {
    let (addr, accepted) = upgrading().await;
    let guard = PoolGuard::builder()
        .max_per_host(10)
        .queue_timeout(Duration::from_secs(3))
        .build();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(10)
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client);
    let mut tunnels = Vec::new();
    for _ in 0..10 {
        let request = Request::get(format!("http://{addr}/upgrade"))
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "echo")
            .body(Empty::new())
            .expect("request");
        let response = tokio::time::timeout(HANG, svc.clone().oneshot(request))
            .await
            .expect("upgrade answered")
            .expect("upgrade");
        assert_eq!(response.status(), 101);
        let upgraded = hyper::upgrade::on(response).await.expect("upgraded");
        tunnels.push(upgraded);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
    // Ten long-lived upgraded connections to the host: its ordinary
    // requests still go through.
    for _ in 0..3 {
        let request = Request::get(format!("http://{addr}/"))
            .body(Empty::new())
            .expect("request");
        let response = tokio::time::timeout(HANG, svc.clone().oneshot(request))
            .await
            .expect("no hang")
            .expect("an ordinary request is served");
        response.into_body().collect().await.expect("body");
    }
    // The user gets the stream back from an upgrade, and it still works.
    let upgraded = tunnels.pop().expect("a tunnel");
    let parts = upgraded
        .downcast::<GuardedIo<TokioIo<TcpStream>>>()
        .unwrap_or_else(|_| panic!("the upgraded IO is the connector's"));
    assert!(
        !parts.io.holds_slot(),
        "an upgraded connection holds no slot"
    );
    assert!(parts.read_buf.is_empty());
    let mut stream = parts.io.into_inner().into_inner();
    stream.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping");
    drop(tunnels);
}

// ---- 5. reqwest: the response is reqwest's own ----

#[cfg(feature = "reqwest")]
mod reqwest_observables {
    use super::*;

    fn guarded(
        guard: &PoolGuard,
        builder: reqwest::ClientBuilder,
    ) -> poolguard::reqwest::GuardedClient {
        guard.reqwest(
            builder
                .connector_layer(guard.reqwest_connector_layer())
                .build()
                .expect("client"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redirected_response_says_what_plain_reqwest_says() {
        let server = support::serve_redirecting().await;
        let guard = PoolGuard::builder().build();
        let plain = reqwest::Client::new();
        let client = guarded(&guard, reqwest::Client::builder());
        let url = server.url("/redirect");

        let bare = plain.get(&url).send().await.expect("plain");
        let ours = client
            .execute(plain.get(&url).build().expect("request"))
            .await
            .expect("guarded");
        assert_eq!(ours.url().as_str(), server.url("/final"));
        assert_eq!(ours.url(), bare.url());
        assert_eq!(ours.status(), bare.status());
        assert_eq!(ours.version(), bare.version());
        assert_eq!(ours.headers(), bare.headers());
        assert_eq!(ours.remote_addr(), bare.remote_addr());
        assert!(ours.remote_addr().is_some());
        assert_eq!(
            ours.extensions()
                .get::<hyper_util::client::legacy::connect::HttpInfo>()
                .map(|i| i.remote_addr()),
            bare.extensions()
                .get::<hyper_util::client::legacy::connect::HttpInfo>()
                .map(|i| i.remote_addr()),
        );
        assert_eq!(ours.content_length(), bare.content_length());
        assert_eq!(
            ours.text().await.expect("body"),
            bare.text().await.expect("body")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_per_request_timeout_still_applies() {
        let server = support::serve_with(support::Options {
            delay: Duration::from_millis(500),
            ..Default::default()
        })
        .await;
        let guard = PoolGuard::builder().build();
        let client = guarded(&guard, reqwest::Client::builder());
        let request = reqwest::Client::new()
            .get(server.url("/bytes/1"))
            .timeout(Duration::from_millis(50))
            .build()
            .expect("request");
        let err = client.execute(request).await.expect_err("times out");
        let reqwest_err = find::<reqwest::Error>(&*err).expect("reqwest's error");
        assert!(reqwest_err.is_timeout(), "{reqwest_err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reqwest_timeouts_count_from_the_end_of_the_queue_wait() {
        let server = support::serve().await;
        let guard = PoolGuard::builder()
            .max_per_host(1)
            .queue_timeout(Duration::from_secs(5))
            .build();
        // A client-wide timeout far shorter than the wait in the queue.
        let client = guarded(
            &guard,
            reqwest::Client::builder().timeout(Duration::from_millis(300)),
        );
        let get = |path: &str| {
            reqwest::Request::new(reqwest::Method::GET, server.url(path).parse().unwrap())
        };
        // Holds the host's only slot for 800 ms.
        let held = client.execute(get("/bytes/10")).await.expect("first");
        let started = tokio::time::Instant::now();
        let second = tokio::spawn({
            let client = client.clone();
            let request = get("/bytes/10");
            async move {
                client
                    .execute(request)
                    .await?
                    .bytes()
                    .await
                    .map_err(BoxError::from)
            }
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        drop(held);
        let body = second
            .await
            .expect("task")
            .expect("the timeout did not cover the queue");
        assert_eq!(body.len(), 10);
        assert!(started.elapsed() >= Duration::from_millis(800));
        // The queue has its own deadline.
        let guard = PoolGuard::builder()
            .max_per_host(1)
            .queue_timeout(Duration::from_millis(100))
            .build();
        let client = guarded(&guard, reqwest::Client::builder());
        let held = client.execute(get("/bytes/10")).await.expect("first");
        let err = client
            .execute(get("/bytes/10"))
            .await
            .expect_err("queue timeout");
        assert!(err.downcast_ref::<QueueTimeout>().is_some(), "{err:?}");
        drop(held);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guarded_body_alias_is_the_stacks_body() {
    let server = support::serve().await;
    let guard = PoolGuard::builder().build();
    let svc = stack(&guard, server.addr);
    let request = Request::get("http://h/bytes/3").body(Empty::new()).unwrap();
    let response: Response<poolguard::GuardedBody<hyper::body::Incoming>> =
        svc.oneshot(request).await.expect("response");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body.len(), 3);
}
