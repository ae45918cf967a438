//! The load driver of the loopback tests and the demo, and what the
//! process holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// Requests that failed, those that did not end within
    /// [`REQUEST_LIMIT`] included.
    pub errors: usize,
    /// Of the errors, requests that did not end within [`REQUEST_LIMIT`].
    pub hung: usize,
}

/// The longest one request of [`drive`] may take.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// `tasks` tasks share `total` requests; each pauses a random `0..pause_ms`
/// between requests. `send` sends one request and uses its response.
pub async fn drive<F, Fut>(tasks: usize, total: usize, pause_ms: u64, send: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), crate::BoxError>> + Send,
{
    drive_within(tasks, total, pause_ms, REQUEST_LIMIT, send).await
}

/// [`drive`], a request that does not end within `limit` counted hung.
pub async fn drive_within<F, Fut>(
    tasks: usize,
    total: usize,
    pause_ms: u64,
    limit: Duration,
    send: F,
) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), crate::BoxError>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let hung = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (send, next, ok, errors) = (send.clone(), next.clone(), ok.clone(), errors.clone());
        let hung = hung.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = XorShift(0x2545_F491_4F6C_DD1D_u64 ^ (t as u64 + 1));
            while next.fetch_add(1, Ordering::Relaxed) < total {
                // Bounded: a request that never ends is an error, reported,
                // not a test that hangs.
                match tokio::time::timeout(limit, send()).await {
                    Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(e)) => {
                        eprintln!("request failed: {e} ({:?})", std::error::Error::source(&*e));
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => {
                        eprintln!("request did not end within {limit:?}");
                        hung.fetch_add(1, Ordering::Relaxed);
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
        hung: hung.load(Ordering::Relaxed),
    }
}

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

/// CPU time (user and system) the whole process has used so far, or zero
/// where it cannot be read.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage of this process.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let part = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    part(usage.ru_utime) + part(usage.ru_stime)
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

/// What a sender does with each response body.
#[derive(Clone, Copy, Debug)]
pub enum Body {
    /// Drops it right after the headers.
    Drop,
    /// Reads it to its end.
    Read,
}

/// A `send` for [`drive`]: one `method` request to `uri` through `svc`
/// (a hyper-util `Client` or any tower stack over one), its body used as
/// `body` says. Each request carries an `x-id` header, unique per sender
/// (0, 1, 2, ...), which the hyper servers count in [`crate::Stats::ids`].
pub fn sender<S, B>(
    svc: S,
    method: http::Method,
    uri: http::Uri,
    body: Body,
) -> impl Fn() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), crate::BoxError>> + Send>,
> + Clone
       + Send
       + 'static
where
    S: tower::Service<
            http::Request<http_body_util::Empty<bytes::Bytes>>,
            Response = http::Response<B>,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<crate::BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<crate::BoxError>,
{
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let next = Arc::new(AtomicUsize::new(0));
    move || {
        let (svc, method, uri) = (svc.clone(), method.clone(), uri.clone());
        let id = next.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let req = http::Request::builder()
                .method(method)
                .uri(uri)
                .header("x-id", id)
                .body(http_body_util::Empty::new())?;
            let response = svc.oneshot(req).await.map_err(Into::into)?;
            if let Body::Read = body {
                response.into_body().collect().await.map_err(Into::into)?;
            }
            Ok(())
        })
    }
}

/// How long a request of [`stranded_runs`] may take before it counts hung:
/// longer than poolguard's stranded-request backstop (about 2 s).
pub const STRANDED_LIMIT: Duration = Duration::from_secs(5);

/// A reproduction of hyper 1.12's stranded HTTP/2 requests (see
/// poolguard's `retry` docs): `runs` runs, each of 3000 GETs from 50 tasks
/// to a fresh h2c server that ends every connection gracefully after 100
/// streams. `client` makes, for a run's server, the `send` of one request.
/// Returns each run's outcome; a request that does not end within
/// [`STRANDED_LIMIT`] is hung. Bare hyper-util strands requests in about
/// 1 run of 100.
pub async fn stranded_runs<C, F, Fut>(runs: usize, client: C) -> Vec<Run>
where
    C: Fn(&crate::Server) -> F,
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), crate::BoxError>> + Send,
{
    let mut outcomes = Vec::with_capacity(runs);
    for _ in 0..runs {
        let server = crate::serve_with(crate::Options {
            http2: true,
            goaway_after: 100,
            ..Default::default()
        })
        .await;
        outcomes.push(drive_within(50, 3000, 0, STRANDED_LIMIT, client(&server)).await);
    }
    outcomes
}

/// The median of `values` (of an even count, the upper middle one; 0 for
/// none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// The smallest and the largest of `values` ((0, 0) for none).
pub fn spread(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    (
        values.iter().copied().fold(f64::MAX, f64::min),
        values.iter().copied().fold(f64::MIN, f64::max),
    )
}
