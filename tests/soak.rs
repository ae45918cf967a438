//! Long, bounded runs, `#[ignore]`d so that CI stays short. Run them with
//!
//! ```sh
//! cargo test --release --all-features --test soak -- --ignored --nocapture --test-threads=1
//! ```
//!
//! (`POOLGUARD_SOAK_SECS` sets the soak's length; default 60.)
#![cfg(feature = "hyper-util")]

use poolguard_testkit as support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{PoolGuard, QueueFull, QueueTimeout};
use tower::{Layer, ServiceExt};

/// Counts live heap bytes, to tell a leak from what the allocator keeps.
struct Counting;

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_kib() -> isize {
    LIVE.load(Ordering::Relaxed) / 1024
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[derive(Default)]
struct Counts {
    sent: AtomicUsize,
    ok: AtomicUsize,
    typed_errors: AtomicUsize,
    other_errors: AtomicUsize,
}

/// 200 tasks for `secs` seconds over a mix of workloads; a third of the
/// bodies dropped early, some of them endless or trickling.
async fn mixed_load(secs: u64, counts: Arc<Counts>) {
    let server = support::serve().await;
    let guard = PoolGuard::builder()
        .max_per_host(32)
        .queue_timeout(Duration::from_secs(2))
        .build();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(32)
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client);
    let paths = [
        "/bytes/512",
        "/bytes/65536",
        "/chunked/8192",
        "/close/1024",
        "/bytes/5",
        "/trickle",
        "/endless",
        "/bytes/1048576",
    ];
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut set = tokio::task::JoinSet::new();
    for t in 0..200usize {
        let (svc, counts) = (svc.clone(), counts.clone());
        let uris: Vec<http::Uri> = paths.iter().map(|p| server.uri(p)).collect();
        set.spawn(async move {
            let mut i = t;
            while Instant::now() < deadline {
                i = i.wrapping_mul(31).wrapping_add(7);
                let path = i % uris.len();
                // Endless bodies can only be dropped; others: a third dropped.
                let drop_early = path >= 5 || i % 3 == 0;
                counts.sent.fetch_add(1, Ordering::Relaxed);
                let work = async {
                    let req = http::Request::get(uris[path].clone()).body(Empty::new())?;
                    let resp = svc.clone().oneshot(req).await?;
                    if !drop_early {
                        resp.into_body().collect().await?;
                    }
                    Ok::<_, poolguard::BoxError>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), work).await {
                    Ok(Ok(())) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(e)) if e.is::<QueueFull>() || e.is::<QueueTimeout>() => {
                        counts.typed_errors.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(Err(_)) => counts.other_errors.fetch_add(1, Ordering::Relaxed),
                    Err(_) => panic!("a request hung for 10 s"),
                };
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("load task");
    }
    let limit = guard.layer().limit().clone();
    let drain = guard.layer().drain().clone();
    drop(svc);
    for _ in 0..500 {
        if limit.in_flight() == 0 && drain.running() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(limit.in_flight(), 0);
    assert_eq!(limit.hosts_tracked(), 0);
    assert_eq!(drain.running(), 0);
    // Let the connections close.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 s soak: run with --ignored"]
async fn soak_returns_to_its_baseline() {
    support::raise_nofile_limit();
    let secs = std::env::var("POOLGUARD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64);
    // Warm up (a quarter of the run), so that what the allocator and the
    // runtime keep in steady state is in the baseline.
    mixed_load(secs.div_ceil(4), Arc::default()).await;
    let handle = tokio::runtime::Handle::current();
    let (fds, tasks, rss, live) = (
        open_fds(),
        handle.metrics().num_alive_tasks(),
        support::rss_kib(),
        live_kib(),
    );

    let counts = Arc::new(Counts::default());
    mixed_load(secs, counts.clone()).await;

    let (fds2, tasks2, rss2, live2) = (
        open_fds(),
        handle.metrics().num_alive_tasks(),
        support::rss_kib(),
        live_kib(),
    );
    let sent = counts.sent.load(Ordering::Relaxed);
    let ok = counts.ok.load(Ordering::Relaxed);
    let typed = counts.typed_errors.load(Ordering::Relaxed);
    let other = counts.other_errors.load(Ordering::Relaxed);
    println!(
        "soak {secs} s: sent {sent}, ok {ok}, queue errors {typed}, other errors {other}; \
         fds {fds} -> {fds2}, tasks {tasks} -> {tasks2}, live heap {live} KiB -> {live2} KiB, \
         RSS {rss} KiB -> {rss2} KiB"
    );
    assert_eq!(sent, ok + typed + other, "every request ended");
    assert!(
        fds2 as f64 <= fds as f64 * 1.05 + 1.0,
        "fds {fds} -> {fds2}"
    );
    assert!(
        tasks2 as f64 <= tasks as f64 * 1.05 + 1.0,
        "tasks {tasks} -> {tasks2}"
    );
    assert!(
        live2 as f64 <= live as f64 * 1.05 + 16.0,
        "live heap {live} -> {live2} KiB"
    );
    assert!(rss2 as f64 <= rss as f64 * 1.05, "RSS {rss} -> {rss2} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "100,000 hosts: run with --ignored"]
async fn a_hundred_thousand_hosts() {
    const HOSTS: usize = 100_000;
    let guard = PoolGuard::builder().max_per_host(4).build();
    let svc = guard
        .layer()
        .layer(tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                b"ok",
            ))))
        }));
    let rss = support::rss_kib();
    let mut set = tokio::task::JoinSet::new();
    let mut peak_hosts = 0;
    for i in 0..HOSTS {
        let svc = svc.clone();
        set.spawn(async move {
            let req = http::Request::get(format!("http://host-{i}.example/"))
                .body(())
                .expect("request");
            let resp = svc.oneshot(req).await.expect("response");
            tokio::time::sleep(Duration::from_millis(1)).await;
            resp.into_body().collect().await.expect("body");
        });
        if set.len() >= 1000 {
            peak_hosts = peak_hosts.max(guard.layer().limit().hosts_tracked());
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    let rss2 = support::rss_kib();
    println!(
        "{HOSTS} hosts: peak hosts tracked {peak_hosts}, after {}; RSS {rss} KiB -> {rss2} KiB",
        guard.layer().limit().hosts_tracked()
    );
    assert_eq!(guard.layer().limit().hosts_tracked(), 0);
    assert!(peak_hosts <= 1000);
    assert!(rss2 < rss + 64 * 1024, "RSS grew by more than 64 MiB");
}
