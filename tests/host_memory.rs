//! Bytes of per-host state per active host, measured with a counting
//! allocator, and proof that the state is gone when the hosts are idle.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use poolguard::PerHostLimitLayer;
use tower::{Service, ServiceBuilder, ServiceExt};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[tokio::test(flavor = "current_thread")]
async fn per_host_state_is_small_and_goes_away() {
    const HOSTS: usize = 10_000;
    let layer = PerHostLimitLayer::new(10);
    let mut svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_req: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    Bytes::from_static(b"x"),
                )))
            });
    // Keep one response per host in flight, so every host holds state.
    let mut responses = Vec::with_capacity(HOSTS);
    let before = LIVE.load(Ordering::Relaxed);
    let mut response_bytes = 0isize;
    for i in 0..HOSTS {
        let req = http::Request::get(format!("http://host-{i:05}.example/"))
            .body(())
            .unwrap();
        let start = LIVE.load(Ordering::Relaxed);
        let response = svc.ready().await.unwrap().call(req).await.unwrap();
        response_bytes += LIVE.load(Ordering::Relaxed) - start;
        responses.push(response);
    }
    let with_hosts = LIVE.load(Ordering::Relaxed);
    assert_eq!(layer.hosts_tracked(), HOSTS);
    assert_eq!(layer.in_flight(), HOSTS);
    let per_host = (with_hosts - before) as f64 / HOSTS as f64;
    println!(
        "live heap per active host (state + slot, incl. map growth): {per_host:.0} bytes; \
         allocated while calling: {:.0} bytes per request",
        response_bytes as f64 / HOSTS as f64
    );
    // Keep the vector's capacity, so that only per-host state is freed.
    responses.clear();
    assert_eq!(layer.hosts_tracked(), 0);
    assert_eq!(layer.in_flight(), 0);
    // Everything per host is freed, and the map shrinks back.
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "live heap after the hosts went idle: {} bytes above the start",
        after - before
    );
    // Issue 28: at most 200 bytes a host (312 before its state was cut).
    assert!(per_host <= 200.0, "{per_host} bytes per host");
    assert!(
        ((after - before) as f64) < per_host * HOSTS as f64 / 50.0,
        "{} bytes left",
        after - before
    );
}
