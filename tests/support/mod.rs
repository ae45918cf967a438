//! Loopback hyper servers that count what they accept: the ground truth of
//! how many connections a client dialed.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// Raises the soft limit on open files to the hard limit (at most 65536):
/// floods open more connections than the default soft limit of 1024.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What a server has seen.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Requests received.
    pub requests: AtomicUsize,
    /// Requests being handled now (until the handler returns headers).
    pub in_flight: AtomicUsize,
    /// The most requests handled at once.
    pub peak: AtomicUsize,
    /// Connections the client closed (raw servers only).
    pub closed_by_peer: AtomicUsize,
    /// Connections the server closed after an idle timeout (raw servers
    /// with [`After::IdleTimeout`] only).
    pub idle_closed: AtomicUsize,
}

impl Stats {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// A running loopback server.
pub struct Server {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn uri(&self, path: &str) -> http::Uri {
        self.url(path).parse().expect("valid uri")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options of [`serve`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// How long the handler waits before it answers.
    pub delay: Duration,
    /// Serve HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
}

/// Starts an HTTP/1.1 server on 127.0.0.1:0. Routes:
/// - `/bytes/N`: a body of N bytes with a `Content-Length`;
/// - `/chunked/N`: N bytes in 1 KiB chunks, without a `Content-Length`;
/// - `/endless`: 16 KiB chunks for ever;
/// - `/trickle`: one byte every 10 ms for ever;
/// - `/close/N`: N bytes with `Connection: close`.
pub async fn serve() -> Server {
    serve_with(Options::default()).await
}

pub async fn serve_with(options: Options) -> Server {
    listen(move |stream, stats| {
        let options = options.clone();
        async move {
            let svc =
                hyper::service::service_fn(move |req| handle(req, stats.clone(), options.delay));
            let io = TokioIo::new(stream);
            // A client that drops a connection mid-body makes the server
            // side fail with an incomplete message: expected, not logged.
            let _ = if options.http2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
            };
        }
    })
    .await
}

/// Binds 127.0.0.1:0, counts every accepted connection, and serves each
/// with `serve_conn` on a task of its own.
async fn listen<F, Fut>(serve_conn: F) -> Server
where
    F: Fn(TcpStream, Arc<Stats>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stats = Arc::new(Stats::default());
    let task_stats = stats.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            task_stats.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_conn(stream, task_stats.clone()));
        }
    });
    Server { addr, stats, task }
}

type ServerBody = BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    stats: Arc<Stats>,
    delay: Duration,
) -> Result<Response<ServerBody>, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.peak.fetch_max(now, Ordering::SeqCst);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    stats.in_flight.fetch_sub(1, Ordering::SeqCst);

    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let route = parts.next().unwrap_or("");
    let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let response = match route {
        "bytes" => Response::new(Full::new(Bytes::from(vec![b'x'; n])).boxed()),
        "close" => Response::builder()
            .header(http::header::CONNECTION, "close")
            .body(Full::new(Bytes::from(vec![b'x'; n])).boxed())
            .expect("valid response"),
        "chunked" => Response::new(Chunks::new(n, 1024, Duration::ZERO).boxed()),
        "endless" => Response::new(Chunks::new(usize::MAX, 16 * 1024, Duration::ZERO).boxed()),
        "trickle" => Response::new(Chunks::new(usize::MAX, 1, Duration::from_millis(10)).boxed()),
        _ => Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found")).boxed())
            .expect("valid response"),
    };
    Ok(response)
}

/// A body of `left` bytes in chunks of `chunk`, one every `every`.
struct Chunks {
    left: usize,
    chunk: usize,
    every: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Chunks {
    fn new(left: usize, chunk: usize, every: Duration) -> Self {
        Chunks {
            left,
            chunk,
            every,
            sleep: None,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if !self.every.is_zero() {
            let every = self.every;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let n = self.chunk.min(self.left);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }
}

use std::future::Future as _;

/// A raw HTTP/1.1 server that answers a request with a 2-byte keep-alive
/// response, and closes the connection silently `after` it (a stale pooled
/// connection, from the client's side).
pub async fn serve_closing_idle(after: Duration) -> Server {
    serve_raw(move || {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            After::CloseLater(after),
        )
    })
    .await
}

/// What a [`serve_raw`] server does after writing a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Wait for the next request on the connection.
    KeepAlive,
    /// Close the connection (FIN).
    Close,
    /// Close the connection (FIN) after a pause, without saying so.
    CloseLater(Duration),
    /// Reset the connection (RST, with `SO_LINGER` 0).
    Reset,
    /// Wait for the next request, but close the connection (FIN, counted
    /// in `idle_closed`) if its first byte does not come within this time:
    /// a server's keep-alive idle timeout.
    IdleTimeout(Duration),
}

/// A request head as a [`serve_raw_with`] server read it.
#[derive(Debug)]
pub struct Head {
    /// The head, as text.
    pub text: String,
    /// The request's number on its connection, from 1.
    pub nth: usize,
}

impl Head {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The request method.
    pub fn method(&self) -> &str {
        self.text.split(' ').next().unwrap_or("")
    }
}

/// A raw HTTP/1.1 server that answers each request with the bytes
/// `respond` returns, then does what it says: a peer that breaks the rules.
pub async fn serve_raw<F>(respond: F) -> Server
where
    F: Fn() -> (Vec<u8>, After) + Send + Sync + 'static,
{
    serve_raw_with(move |_| respond()).await
}

/// [`serve_raw`], answering each request by its head.
pub async fn serve_raw_with<F>(respond: F) -> Server
where
    F: Fn(&Head) -> (Vec<u8>, After) + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let respond = Arc::new(respond);
    listen(move |mut stream, stats| {
        let respond = respond.clone();
        async move {
            let mut buf = vec![0u8; 8192];
            let mut seen = Vec::new();
            let mut idle_timeout = None;
            let mut nth = 0;
            loop {
                // Read one request head, within the idle timeout if the
                // last response set one.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let read = match idle_timeout.take().filter(|_| seen.is_empty()) {
                        Some(limit) => {
                            match tokio::time::timeout(limit, stream.read(&mut buf)).await {
                                Ok(read) => read,
                                Err(_) => {
                                    stats.idle_closed.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                        }
                        None => stream.read(&mut buf).await,
                    };
                    match read {
                        Ok(0) | Err(_) => {
                            stats.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return;
                };
                nth += 1;
                let head = Head {
                    text: String::from_utf8_lossy(&seen[..end]).into_owned(),
                    nth,
                };
                seen.drain(..end + 4);
                // Skip the request body (Content-Length only).
                let body: usize = head
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while seen.len() < body {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                seen.drain(..body);
                stats.requests.fetch_add(1, Ordering::SeqCst);
                let (bytes, after) = respond(&head);
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
                match after {
                    After::KeepAlive => continue,
                    After::IdleTimeout(limit) => idle_timeout = Some(limit),
                    After::Close => return,
                    After::CloseLater(pause) => {
                        tokio::time::sleep(pause).await;
                        return;
                    }
                    After::Reset => {
                        let _ = stream.set_zero_linger();
                        return;
                    }
                }
            }
        }
    })
    .await
}

/// A small deterministic generator (for pauses).
pub struct XorShift(pub u64);

impl XorShift {
    /// The next number of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[derive(Debug, Default)]
pub struct Run {
    pub ok: usize,
    pub errors: usize,
}

/// The longest one request of [`drive`] may take.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// `tasks` tasks share `total` requests; each pauses a random `0..pause_ms`
/// between requests. `send` sends one request and uses its response.
pub async fn drive<F, Fut>(tasks: usize, total: usize, pause_ms: u64, send: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), poolguard::BoxError>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (send, next, ok, errors) = (send.clone(), next.clone(), ok.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = XorShift(0x2545_F491_4F6C_DD1D_u64 ^ (t as u64 + 1));
            while next.fetch_add(1, Ordering::Relaxed) < total {
                // Bounded: a request that never ends is an error, reported,
                // not a test that hangs.
                match tokio::time::timeout(REQUEST_LIMIT, send()).await {
                    Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(e)) => {
                        eprintln!("request failed: {e} ({:?})", std::error::Error::source(&*e));
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => {
                        eprintln!("request did not end within {REQUEST_LIMIT:?}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
                if pause_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(rng.below(pause_ms))).await;
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    Run {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Resident memory of this process in KiB (after giving free heap back
/// to the system where glibc allows), or 0 where `/proc` is missing.
pub fn rss_kib() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}
