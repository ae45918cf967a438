//! What each layer costs per request, over a ready in-memory service, next
//! to tower's `ConcurrencyLimitLayer` and to one real loopback round trip,
//! all measured in the same run.
//!
//! ```sh
//! cargo bench --bench overhead
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use poolguard::{
    DrainLayer, Metrics, PerHostLimitLayer, PoolGuard, RetryStaleLayer, ReuseMetricsLayer,
};
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceExt};

type Req = Request<()>;

use poolguard_testkit::in_memory_origin as origin;

static HOSTS: std::sync::OnceLock<Vec<http::Uri>> = std::sync::OnceLock::new();

fn uri(i: usize, hosts: usize) -> http::Uri {
    let all = HOSTS.get_or_init(|| {
        (0..10_000)
            .map(|h| format!("http://host-{h}.example/").parse().expect("uri"))
            .collect()
    });
    all[i % hosts].clone()
}

/// One request; the body read to its end or dropped unread.
async fn one<S, B>(svc: &S, i: usize, hosts: usize, read: bool)
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let req = Request::get(uri(i, hosts)).body(()).expect("request");
    let resp = svc.clone().oneshot(req).await.expect("response");
    if read {
        resp.into_body().collect().await.expect("body");
    }
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let counter = AtomicUsize::new(0);
    let next = || counter.fetch_add(1, Ordering::Relaxed);

    for read in [true, false] {
        let mut group = c.benchmark_group(if read { "read to end" } else { "dropped early" });
        group.measurement_time(Duration::from_secs(2));
        group.warm_up_time(Duration::from_millis(500));

        let bare = origin();
        group.bench_function("bare", |b| {
            b.to_async(&rt).iter(|| one(&bare, next(), 1, read))
        });

        let svc = ConcurrencyLimitLayer::new(64).layer(origin());
        let svc = tower::util::BoxCloneService::new(svc.map_err(|e| e));
        group.bench_function("tower ConcurrencyLimit", |b| {
            b.to_async(&rt).iter(|| one(&svc, next(), 1, read))
        });

        let svc = DrainLayer::new().layer(origin());
        group.bench_function("DrainLayer", |b| {
            b.to_async(&rt).iter(|| one(&svc, next(), 1, read))
        });

        let svc = PerHostLimitLayer::new(64).layer(origin());
        for hosts in [1, 10_000] {
            group.bench_with_input(
                BenchmarkId::new("PerHostLimitLayer hosts", hosts),
                &hosts,
                |b, &h| b.to_async(&rt).iter(|| one(&svc, next(), h, read)),
            );
        }

        let svc = ReuseMetricsLayer::new(Metrics::new()).layer(origin());
        group.bench_function("ReuseMetricsLayer", |b| {
            b.to_async(&rt).iter(|| one(&svc, next(), 1, read))
        });

        let guard = PoolGuard::builder().max_per_host(64).build();
        let svc = guard.layer().layer(origin());
        group.bench_function("PoolGuard full stack", |b| {
            b.to_async(&rt).iter(|| one(&svc, next(), 1, read))
        });
        group.finish();
    }
}

/// ns a request over `n` requests to one host, one after another.
async fn batch<S, B>(svc: &S, n: usize, read: bool) -> f64
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let t = std::time::Instant::now();
    for i in 0..n {
        one(svc, i, 1, read).await;
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// The guarded request against the bare one, side by side: batches of
/// each in turn on one current-thread runtime, the ratio of each pair of
/// batches; prints the median and the spread (issue 28's measure: a guarded
/// in-memory request, read and dropped, at most 2× a bare one).
fn side_by_side(_c: &mut Criterion) {
    const BATCH: usize = 20_000;
    const ROUNDS: usize = 15;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let guard = PoolGuard::builder().max_per_host(64).build();
    let guarded = guard.layer().layer(origin());
    let bare = origin();
    for read in [true, false] {
        let mut ratios = Vec::with_capacity(ROUNDS);
        let mut times = (Vec::new(), Vec::new());
        rt.block_on(async {
            for round in 0..=ROUNDS {
                let b = batch(&bare, BATCH, read).await;
                let g = batch(&guarded, BATCH, read).await;
                // The first round warms up.
                if round > 0 {
                    ratios.push(g / b);
                    times.0.push(b);
                    times.1.push(g);
                }
            }
        });
        let (lo, hi) = poolguard_testkit::spread(&ratios);
        println!(
            "side by side, {}: bare {:.0} ns, PoolGuard {:.0} ns: {:.2}x (median of {ROUNDS} pairs of {BATCH}, {lo:.2}-{hi:.2})",
            if read { "read to end" } else { "dropped early" },
            poolguard_testkit::median(&times.0),
            poolguard_testkit::median(&times.1),
            poolguard_testkit::median(&ratios),
        );
    }
    per_layer(&rt);
}

/// Each layer alone (and the guard without its retry), side by side with
/// the bare service in one run: ns a request over bare, the median of
/// rounds and its spread (what the guard's cost is made of).
fn per_layer(rt: &tokio::runtime::Runtime) {
    const BATCH: usize = 10_000;
    const ROUNDS: usize = 9;
    let bare = origin();
    let guard = PoolGuard::builder()
        .max_per_host(64)
        .build()
        .layer()
        .layer(origin());
    let no_retry = PoolGuard::builder()
        .max_per_host(64)
        .retry_stale(false)
        .build()
        .layer()
        .layer(origin());
    let limit = PerHostLimitLayer::new(64).layer(origin());
    let drain = DrainLayer::new().layer(origin());
    let metrics = ReuseMetricsLayer::new(Metrics::new()).layer(origin());
    let retry = RetryStaleLayer::new().layer(origin());
    let names = [
        "PoolGuard",
        "PoolGuard, retry_stale(false)",
        "PerHostLimitLayer",
        "DrainLayer",
        "ReuseMetricsLayer",
        "RetryStaleLayer",
    ];
    for read in [true, false] {
        let mut over: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        rt.block_on(async {
            for round in 0..=ROUNDS {
                let b = batch(&bare, BATCH, read).await;
                let each = [
                    batch(&guard, BATCH, read).await,
                    batch(&no_retry, BATCH, read).await,
                    batch(&limit, BATCH, read).await,
                    batch(&drain, BATCH, read).await,
                    batch(&metrics, BATCH, read).await,
                    batch(&retry, BATCH, read).await,
                ];
                // The first round warms up.
                if round > 0 {
                    for (o, t) in over.iter_mut().zip(each) {
                        o.push(t - b);
                    }
                }
            }
        });
        for (name, o) in names.iter().zip(&over) {
            let (lo, hi) = poolguard_testkit::spread(o);
            println!(
                "per layer, {}: {name}: +{:.0} ns over bare (median of {ROUNDS} rounds of {BATCH}, {lo:.0}-{hi:.0})",
                if read { "read to end" } else { "dropped early" },
                poolguard_testkit::median(o),
            );
        }
    }
}

/// Eight requests at once to one host, each read to its end.
async fn eight<S, B>(svc: S)
where
    S: Service<Req, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let svc = svc.clone();
        set.spawn(async move { one(&svc, i, 1, true).await });
    }
    while set.join_next().await.is_some() {}
}

/// Reads a response's body to its end.
async fn collect<B>(r: Response<B>) -> Result<(), poolguard::BoxError>
where
    B: Body,
    B::Error: Into<poolguard::BoxError>,
{
    r.into_body().collect().await.map_err(Into::into)?;
    Ok(())
}

/// The full stack with 8 requests at once on one host (limit 4: half wait).
fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("8-way contention, one host");
    group.measurement_time(Duration::from_secs(2));
    let bare = origin();
    group.bench_function("bare x8", |b| b.to_async(&rt).iter(|| eight(bare.clone())));
    let svc = tower::util::BoxCloneSyncService::new(ConcurrencyLimitLayer::new(4).layer(origin()));
    group.bench_function("tower ConcurrencyLimit(4) x8", |b| {
        b.to_async(&rt).iter(|| eight(svc.clone()))
    });
    let guard = PoolGuard::builder().max_per_host(4).build();
    let svc = guard.layer().layer(origin());
    group.bench_function("PoolGuard full stack (4) x8", |b| {
        b.to_async(&rt).iter(|| eight(svc.clone()))
    });
    group.finish();
}

/// One real request over loopback (hyper server, hyper-util client, kept
/// alive): the denominator for "under 1 % of a round trip".
fn loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"0123456789abcdef",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    });
    let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let guard = PoolGuard::builder().max_per_host(8).build();
    let guarded = guard.layer().layer(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build::<_, Empty<Bytes>>(
                guard.connector(hyper_util::client::legacy::connect::HttpConnector::new()),
            ),
    );
    let mut group = c.benchmark_group("loopback round trip");
    group.measurement_time(Duration::from_secs(3));
    let send =
        |svc: tower::util::BoxCloneService<Request<Empty<Bytes>>, (), poolguard::BoxError>| {
            let uri = uri.clone();
            async move {
                let req = Request::get(uri).body(Empty::new()).expect("request");
                svc.oneshot(req).await.expect("response");
            }
        };
    let bare = tower::util::BoxCloneService::new(
        client.map_err(poolguard::BoxError::from).and_then(collect),
    );
    group.bench_function("hyper-util bare", |b| {
        b.to_async(&rt).iter(|| send(bare.clone()))
    });
    let guarded = tower::util::BoxCloneService::new(guarded.and_then(collect));
    group.bench_function("hyper-util guarded", |b| {
        b.to_async(&rt).iter(|| send(guarded.clone()))
    });
    group.finish();
}

criterion_group!(benches, side_by_side, layers, contention, loopback);
criterion_main!(benches);
