//! One guarded request after another over a ready in-memory service (the
//! `overhead` bench's origin: a `service_fn` answering 16 bytes), for
//! counting instructions under callgrind (issue 28):
//!
//! ```sh
//! cargo build --release --example in_memory
//! # instructions a request: the difference of two runs 20,000 requests apart
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/in_memory guarded read 20000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/in_memory guarded read 40000
//! ```
//!
//! Arguments: `guarded` or `bare`, `read` (the body read to its end) or
//! `drop` (dropped unread), the number of requests, and the number of
//! threads (default 1: a current-thread runtime; more: a runtime of that
//! many workers, one task a worker, the requests shared out, every task on
//! the same host, to see what threads sharing a host's state cost).

use http::Request;
use http_body_util::BodyExt;
use poolguard::PoolGuard;
use poolguard_testkit::in_memory_origin as origin;
use tower::{Layer, ServiceExt};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let guarded = args.get(1).is_none_or(|s| s != "bare");
    let read = args.get(2).is_none_or(|s| s != "drop");
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let threads: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    }
    .enable_all()
    .build()
    .expect("runtime");
    let uri: http::Uri = "http://host-1.example/".parse().expect("uri");
    let guard = PoolGuard::builder().max_per_host(64).build();
    let with_guard = guard.layer().layer(origin());
    let bare = origin();
    let started = std::time::Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..threads)
            .map(|_| {
                let (uri, with_guard, bare) = (uri.clone(), with_guard.clone(), bare.clone());
                tokio::spawn(async move {
                    for _ in 0..n / threads {
                        let req = Request::get(uri.clone()).body(()).expect("request");
                        if guarded {
                            let resp = with_guard.clone().oneshot(req).await.expect("response");
                            if read {
                                resp.into_body().collect().await.expect("body");
                            }
                        } else {
                            let resp = bare.clone().oneshot(req).await.expect("response");
                            if read {
                                resp.into_body().collect().await.expect("body");
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
    });
    println!(
        "{n} requests, {}, body {}, {threads} thread(s): {:.0} ns a request",
        if guarded { "guarded" } else { "bare" },
        if read { "read" } else { "dropped" },
        started.elapsed().as_nanos() as f64 / n as f64
    );
}
