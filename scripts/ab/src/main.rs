//! A guarded in-memory request, three ways in one process: bare, through
//! the other build's guard (`base`) and through this tree's (`new`), in
//! turn, batch after batch, so that the VM's drifts fall on all three
//! alike. Prints the medians (ns a request) and the median of the
//! per-round ratios, with the quartiles of new/base. See `scripts/ab.sh`.
//!
//! Arguments: `read` or `drop`, rounds, requests a batch; or, with a
//! fourth argument (`bare`, `base` or `new`), one batch of that alone (for
//! a profiler). With `HEADERS=1` in the environment each request has four
//! headers (`accept`, `user-agent`, `x-request-id`, `authorization`), as
//! real clients send; without, none (the `overhead` bench's request).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

/// The `overhead` bench's origin: 16 bytes from a `service_fn`.
fn origin(
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send {
    tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"0123456789abcdef",
        ))))
    })
}

/// `n` requests, one after another: ns a request.
async fn batch<S, B>(svc: &S, uri: &http::Uri, n: usize, read: bool) -> f64
where
    S: Service<Request<()>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let headers = std::env::var_os("HEADERS").is_some();
    let started = std::time::Instant::now();
    for _ in 0..n {
        let mut req = Request::get(uri.clone());
        if headers {
            req = req
                .header("accept", "*/*")
                .header("user-agent", "poolguard-ab/1")
                .header("x-request-id", "0123456789abcdef")
                .header("authorization", "Bearer abcdefghijklmnop");
        }
        let req = req.body(()).expect("request");
        let resp = svc.clone().oneshot(req).await.expect("response");
        if read {
            resp.into_body().collect().await.expect("body");
        }
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let read = args.get(1).is_none_or(|s| s != "drop");
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(31);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let uri: http::Uri = "http://host-1.example/".parse().expect("uri");
    let base = base::PoolGuard::builder().max_per_host(64).build();
    let new = new::PoolGuard::builder().max_per_host(64).build();
    let (base, new, bare) = (
        base.layer().layer(origin()),
        new.layer().layer(origin()),
        origin(),
    );
    if let Some(who) = args.get(4) {
        let ns = runtime.block_on(async {
            match who.as_str() {
                "bare" => batch(&bare, &uri, n, read).await,
                "base" => batch(&base, &uri, n, read).await,
                _ => batch(&new, &uri, n, read).await,
            }
        });
        println!("{who}: {ns:.0} ns a request");
        return;
    }
    runtime.block_on(async {
        // Warm up.
        batch(&bare, &uri, n, read).await;
        batch(&base, &uri, n, read).await;
        batch(&new, &uri, n, read).await;
        let (mut times, mut ratios) = ([vec![], vec![], vec![]], [vec![], vec![], vec![]]);
        for round in 0..rounds {
            // In turn, the order reversed every other round.
            let (a, b, c);
            if round % 2 == 0 {
                a = batch(&bare, &uri, n, read).await;
                b = batch(&base, &uri, n, read).await;
                c = batch(&new, &uri, n, read).await;
            } else {
                c = batch(&new, &uri, n, read).await;
                b = batch(&base, &uri, n, read).await;
                a = batch(&bare, &uri, n, read).await;
            }
            for (v, x) in times.iter_mut().zip([a, b, c]) {
                v.push(x);
            }
            for (v, x) in ratios.iter_mut().zip([b / a, c / a, c / b]) {
                v.push(x);
            }
        }
        let m = |v: &[f64]| quantile(v, 0.5);
        println!(
            "{}: bare {:.0}, base {:.0}, new {:.0} ns | base/bare {:.3}, new/bare {:.3}, \
             new/base {:.3} (quartiles {:.3}-{:.3}; medians of {rounds} rounds of {n})",
            if read { "read" } else { "drop" },
            m(&times[0]),
            m(&times[1]),
            m(&times[2]),
            m(&ratios[0]),
            m(&ratios[1]),
            m(&ratios[2]),
            quantile(&ratios[2], 0.25),
            quantile(&ratios[2], 0.75),
        );
    });
}
