//! Loopback hyper servers that count what they accept: the ground truth of
//! how many connections a client dialed.

use std::convert::Infallible;
use std::future::Future as _;
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
    /// How many times each `x-id` header value was received (hyper
    /// servers only).
    pub ids: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The most connections open at once, with [`Options::count_open`].
    pub peak_open: AtomicUsize,
    /// Connections the server has not seen end yet.
    pub open: AtomicUsize,
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
    /// Connections the server has not seen end yet (it sees a client's
    /// close when it next reads).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    /// The most connections open at once (with [`Options::count_open`]).
    pub fn peak_open(&self) -> usize {
        self.peak_open.load(Ordering::SeqCst)
    }
}

/// A running loopback server.
pub struct Server {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
    /// For a TLS server: the certificate it presents (made at start, for
    /// `localhost` and 127.0.0.1), for clients to trust.
    pub root: Option<rustls::pki_types::CertificateDer<'static>>,
}

impl Server {
    /// `http://127.0.0.1:PORT` (`https` for a TLS server) followed by
    /// `path`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.root.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
    }

    /// A rustls client configuration that trusts this server's certificate
    /// and offers `alpn` (for reqwest's `use_preconfigured_tls`, or
    /// hyper-rustls).
    pub fn client_tls(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        client_tls(self.root.as_ref(), alpn)
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

/// A rustls client configuration that trusts `root` and offers `alpn`.
pub fn client_tls(
    root: Option<&rustls::pki_types::CertificateDer<'static>>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    client_tls_trusting(root, alpn)
}

/// A rustls client configuration that trusts every one of `roots` (the
/// certificates of several test servers) and offers `alpn`.
pub fn client_tls_trusting<'a>(
    roots: impl IntoIterator<Item = &'a rustls::pki_types::CertificateDer<'static>>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let roots = {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).expect("a valid certificate");
        }
        store
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Options of [`serve`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// How long the handler waits before it answers.
    pub delay: Duration,
    /// Serve HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
    /// HTTP/2: end each connection gracefully (`GOAWAY`) once it has
    /// received this many requests, as nginx's `keepalive_requests` does
    /// (0: never).
    pub goaway_after: usize,
    /// Count the connections open at once ([`Stats::peak_open`]), exactly:
    /// at every accept, each connection counted open is asked of the
    /// kernel (a peek) whether the client has closed it, so that a close
    /// the server's task has not read yet does not count. Costs a system
    /// call per open connection per accept.
    pub count_open: bool,
    /// Where to listen (default: 127.0.0.1 on a free port). Two servers on
    /// the same port of two loopback addresses (127.0.0.1 and 127.0.0.2)
    /// are two backends of one host name, as a resolver answers.
    pub bind: Option<SocketAddr>,
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
    let (count_open, bind) = (options.count_open, options.bind);
    listen_with(bind, count_open, move |stream, stats| {
        serve_conn(TokioIo::new(stream), stats, options.clone(), options.http2)
    })
    .await
}

/// [`serve_with`] over TLS, with a certificate made now for `localhost` and
/// 127.0.0.1. With `options.http2` the server offers `h2` and `http/1.1`
/// by ALPN and speaks what was chosen; else `http/1.1` only.
pub async fn serve_tls_with(options: Options) -> Server {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("certificate parameters");
    let cert = params.self_signed(&key).expect("certificate");
    let der = cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server certificate");
    config.alpn_protocols = if options.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut server = listen_with(options.bind, options.count_open, move |stream, stats| {
        let (acceptor, options) = (acceptor.clone(), options.clone());
        async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_conn(TokioIo::new(tls), stats, options, h2).await;
        }
    })
    .await;
    server.root = Some(der);
    server
}

/// Serves one accepted connection, HTTP/2 if `h2`, else HTTP/1.1.
async fn serve_conn<I>(io: TokioIo<I>, stats: Arc<Stats>, options: Options, h2: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let seen = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let (counter, notify) = (seen.clone(), enough.clone());
    let goaway_after = options.goaway_after;
    let svc = hyper::service::service_fn(move |req| {
        if counter.fetch_add(1, Ordering::SeqCst) + 1 == goaway_after {
            notify.notify_one();
        }
        handle(req, stats.clone(), options.delay)
    });
    // A client that drops a connection mid-body makes the server
    // side fail with an incomplete message: expected, not logged.
    let _ = if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            done = conn.as_mut() => done,
            () = enough.notified() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await
    };
}

/// Binds 127.0.0.1:0, counts every accepted connection, and serves each
/// with `serve_conn` on a task of its own.
pub(crate) async fn listen<F, Fut>(serve_conn: F) -> Server
where
    F: Fn(TcpStream, Arc<Stats>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    listen_with(None, false, serve_conn).await
}

/// [`listen`], counting the connections open at once if `count_open`.
async fn listen_with<F, Fut>(bind: Option<SocketAddr>, count_open: bool, serve_conn: F) -> Server
where
    F: Fn(TcpStream, Arc<Stats>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let bind = bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(bind).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stats = Arc::new(Stats::default());
    let task_stats = stats.clone();
    let task = tokio::spawn(async move {
        let open = Arc::new(OpenSet::default());
        let mut next_id = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            task_stats.accepted.fetch_add(1, Ordering::SeqCst);
            task_stats.open.fetch_add(1, Ordering::SeqCst);
            next_id += 1;
            let id = next_id;
            if count_open {
                let now = open.accepted(id, &stream);
                task_stats.peak_open.fetch_max(now, Ordering::SeqCst);
            }
            let (open, stats) = (open.clone(), task_stats.clone());
            let served = serve_conn(stream, task_stats.clone());
            tokio::spawn(async move {
                served.await;
                // The duplicate must not keep the socket open.
                open.closed(id);
                stats.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Server {
        addr,
        stats,
        task,
        root: None,
    }
}

type ServerBody = BoxBody<Bytes, Infallible>;

/// Takes a request out of [`Stats::in_flight`] when dropped.
struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    req: Request<Incoming>,
    stats: Arc<Stats>,
    delay: Duration,
) -> Result<Response<ServerBody>, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(id) = req.headers().get("x-id").and_then(|v| v.to_str().ok()) {
        let mut ids = stats
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *ids.entry(id.to_owned()).or_default() += 1;
    }
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.peak.fetch_max(now, Ordering::SeqCst);
    {
        // Counted out also when hyper drops the handler (its client went
        // away, as a killed process does).
        let _out = InFlight(&stats);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

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

/// The connections a server counts open: a duplicate of each one's socket,
/// dropped once the kernel says the client closed it.
#[derive(Default)]
struct OpenSet(std::sync::Mutex<Vec<(u64, std::os::fd::OwnedFd)>>);

impl OpenSet {
    fn set(&self) -> std::sync::MutexGuard<'_, Vec<(u64, std::os::fd::OwnedFd)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The server is done with connection `id`.
    fn closed(&self, id: u64) {
        self.set().retain(|(i, _)| *i != id);
    }

    /// Counts `stream` in as `id`, drops the connections the client
    /// closed, and returns how many are open now.
    fn accepted(&self, id: u64, stream: &TcpStream) -> usize {
        use std::os::fd::{AsFd, AsRawFd};
        let mut set = self.set();
        set.retain(|(_, fd)| {
            let mut byte = 0u8;
            // SAFETY: a peek of at most one byte into a live buffer, on a
            // socket this set owns a duplicate of; never blocks.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            // 0: the client's end of file (closed); an error other than
            // "would block": reset or gone. Pending bytes: still open.
            n > 0
                || (n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock)
        });
        if let Ok(fd) = stream.as_fd().try_clone_to_owned() {
            set.push((id, fd));
        }
        set.len()
    }
}
