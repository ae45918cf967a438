//! Adaptive per-host limits against a server whose capacity changes.
//!
//! A loopback HTTP/1 server with C workers (5 ms a request; requests beyond
//! C wait inside the server, first come first served), C switching
//! 8 → 2 → 24 every 4 s; 64 tasks in a closed loop through a guarded
//! hyper-util client, with static limits N ∈ {2, 8, 24, 64} and with
//! `Adaptive` under `max_per_host(64)`. Per phase (its first second left
//! out): requests a second, the p99 of the requests' wait inside the server
//! (the server's own clock), errors; and the adaptive limit's trace.
//! `--overload`: the server answers `503` once more than 4 requests wait
//! inside it (goodput counts the `200`s). `--svg FILE` draws the adaptive
//! limit and the server's C over time.
//!
//! Each configuration runs `--rounds N` times (default 3), in turn; the
//! table gives medians.
//!
//! `cargo run --release --example adaptive [-- --overload] [-- --rounds N] [-- --svg adaptive.svg]`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use poolguard::limit::Adaptive;
use poolguard::PoolGuard;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const SERVICE: Duration = Duration::from_millis(5);
const PHASE: Duration = Duration::from_secs(4);
const PHASES: [usize; 3] = [8, 2, 24];
const TASKS: usize = 64;
/// Waiting requests past which the `--overload` server answers 503.
const QUEUE_BOUND: usize = 4;

/// What the server saw, per phase.
#[derive(Default)]
struct Seen {
    /// Waits inside the server of requests answered in each phase (after
    /// its first second), in microseconds.
    waits: [Mutex<Vec<u64>>; 3],
    ok: [AtomicU64; 3],
    rejected: [AtomicU64; 3],
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    workers: Arc<Semaphore>,
}

/// The phase `since` is in, and whether it is past the phase's first
/// second.
fn phase_of(since: Duration) -> (usize, bool) {
    let n = (since.as_millis() / PHASE.as_millis()) as usize;
    let into = since.saturating_sub(PHASE * n as u32);
    (n.min(2), into >= Duration::from_secs(1))
}

/// The server, on a thread and runtime of its own (as a server in another
/// process would be), so that the client's work does not delay its
/// workers' hand-offs.
fn serve(overload: bool) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let workers = Arc::new(Semaphore::new(PHASES[0]));
    let waiting = Arc::new(AtomicUsize::new(0));
    let server = Server {
        addr,
        seen: seen.clone(),
        workers: workers.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("listener");
            let start = Arc::new(Mutex::new(None::<Instant>));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, workers, waiting, start) = (
                    seen.clone(),
                    workers.clone(),
                    waiting.clone(),
                    start.clone(),
                );
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, workers, waiting, start) = (
                            seen.clone(),
                            workers.clone(),
                            waiting.clone(),
                            start.clone(),
                        );
                        async move {
                            let t0 = *start.lock().expect("lock").get_or_insert_with(Instant::now);
                            let arrived = Instant::now();
                            let (phase, counted) = phase_of(arrived - t0);
                            if overload
                                && waiting.load(Ordering::Relaxed) >= QUEUE_BOUND
                                && workers.available_permits() == 0
                            {
                                if counted {
                                    seen.rejected[phase].fetch_add(1, Ordering::Relaxed);
                                }
                                let mut r =
                                    hyper::Response::new(Full::new(Bytes::from_static(b"busy")));
                                *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                return Ok::<_, Infallible>(r);
                            }
                            waiting.fetch_add(1, Ordering::Relaxed);
                            let permit = workers.acquire().await;
                            waiting.fetch_sub(1, Ordering::Relaxed);
                            let waited = arrived.elapsed();
                            // The service time on a thread of its own: tokio's
                            // timer rounds a sleep up to its next millisecond,
                            // which made a request 5 to 6 ms long depending on
                            // when it arrived (a server kept full took 5, one
                            // with an idle moment more).
                            let _ =
                                tokio::task::spawn_blocking(|| std::thread::sleep(SERVICE)).await;
                            drop(permit);
                            let (phase, counted) = phase_of(Instant::now() - t0);
                            if counted {
                                seen.ok[phase].fetch_add(1, Ordering::Relaxed);
                                seen.waits[phase]
                                    .lock()
                                    .expect("lock")
                                    .push(waited.as_micros() as u64);
                            }
                            Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
    });
    server
}

/// Moves the server's workers from `from` to `to`.
async fn set_workers(workers: &Semaphore, from: usize, to: usize) {
    if to > from {
        workers.add_permits(to - from);
    } else if from > to {
        if let Ok(p) = workers.acquire_many((from - to) as u32).await {
            p.forget();
        }
    }
}

struct Outcome {
    name: String,
    rates: [f64; 3],
    p99_ms: [f64; 3],
    rejected: [u64; 3],
    errors: u64,
    /// (seconds since start, limit), adaptive only.
    trace: Vec<(f64, usize)>,
}

async fn run(name: &str, guard: PoolGuard, overload: bool) -> Outcome {
    let server = serve(overload);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = guard.layer().layer(client);
    let uri: hyper::Uri = format!("http://{}/", server.addr).parse().expect("uri");
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (mut svc, uri, stop, errors) = (svc.clone(), uri.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = hyper::Request::get(uri.clone())
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let ok = match svc.ready().await {
                    Ok(s) => match s.call(req).await {
                        Ok(r) => r.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // The phases, and the limit's trace every 50 ms.
    let start = Instant::now();
    let mut trace = Vec::new();
    let mut c = PHASES[0];
    for (i, &next) in PHASES.iter().enumerate() {
        if i > 0 {
            set_workers(&server.workers, c, next).await;
            c = next;
        }
        let end = start + PHASE * (i as u32 + 1);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(limit) = guard
                .metrics()
                .snapshot()
                .hosts
                .iter()
                .find_map(|h| h.limit)
            {
                trace.push((start.elapsed().as_secs_f64(), limit));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let counted = (PHASE - Duration::from_secs(1)).as_secs_f64();
    let mut rates = [0.0; 3];
    let mut p99_ms = [0.0; 3];
    let mut rejected = [0; 3];
    for i in 0..3 {
        rates[i] = server.seen.ok[i].load(Ordering::Relaxed) as f64 / counted;
        rejected[i] = server.seen.rejected[i].load(Ordering::Relaxed);
        let mut w = server.seen.waits[i].lock().expect("lock").clone();
        w.sort_unstable();
        if !w.is_empty() {
            let at = ((w.len() as f64) * 0.99).ceil() as usize;
            p99_ms[i] = w[at.saturating_sub(1).min(w.len() - 1)] as f64 / 1000.0;
        }
    }
    Outcome {
        name: name.to_owned(),
        rates,
        p99_ms,
        rejected,
        errors: errors.load(Ordering::Relaxed),
        trace,
    }
}

/// The median run of each figure (requests a second and p99 per phase),
/// errors and 503s summed over the runs, the trace of the last run.
fn median(mut runs: Vec<Outcome>) -> Outcome {
    let mut out = Outcome {
        name: runs.first().map(|o| o.name.clone()).unwrap_or_default(),
        rates: [0.0; 3],
        p99_ms: [0.0; 3],
        rejected: [0; 3],
        errors: runs.iter().map(|o| o.errors).sum(),
        trace: runs
            .last_mut()
            .map(|o| std::mem::take(&mut o.trace))
            .unwrap_or_default(),
    };
    for i in 0..3 {
        out.rates[i] =
            poolguard_testkit::median(&runs.iter().map(|o| o.rates[i]).collect::<Vec<_>>());
        out.p99_ms[i] =
            poolguard_testkit::median(&runs.iter().map(|o| o.p99_ms[i]).collect::<Vec<_>>());
        out.rejected[i] = runs.iter().map(|o| o.rejected[i]).sum();
    }
    out
}

fn guard(n: usize, adaptive: bool) -> PoolGuard {
    let b = PoolGuard::builder().max_per_host(n).max_queued(1024);
    if adaptive {
        b.adaptive(Adaptive::new()).build()
    } else {
        b.build()
    }
}

fn chart(path: &str, adaptive: &Outcome) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let secs = PHASE.as_secs_f64() * 3.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "adaptive limit (blue) and the server's workers C (red)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..secs, 0usize..40usize)?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("requests")
        .draw()?;
    let mut c_line = Vec::new();
    for (i, &c) in PHASES.iter().enumerate() {
        let t = PHASE.as_secs_f64() * i as f64;
        c_line.push((t, c));
        c_line.push((t + PHASE.as_secs_f64(), c));
    }
    chart.draw_series(std::iter::once(PathElement::new(c_line, RED)))?;
    chart.draw_series(std::iter::once(PathElement::new(
        adaptive.trace.clone(),
        BLUE,
    )))?;
    root.present()?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let overload = args.iter().any(|a| a == "--overload");
    let svg = args
        .iter()
        .position(|a| a == "--svg")
        .and_then(|i| args.get(i + 1).cloned());
    type Make = Box<dyn Fn() -> PoolGuard>;
    let statics: &[usize] = if overload { &[64] } else { &[2, 8, 24, 64] };
    let mut configs: Vec<(String, Make)> = statics
        .iter()
        .map(|&n| {
            (
                format!("static {n}"),
                Box::new(move || guard(n, false)) as Make,
            )
        })
        .collect();
    configs.push(("adaptive (max 64)".into(), Box::new(|| guard(64, true))));
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse::<usize>().ok())
        .unwrap_or(3)
        .max(1);
    // Every configuration once a round, in turn, so that what the machine
    // does meanwhile falls on all of them alike; a fresh guard each run.
    let mut runs: Vec<Vec<Outcome>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, (name, make)) in configs.iter().enumerate() {
            eprintln!("round {}/{rounds}: {name} ...", round + 1);
            runs[i].push(run(name, make(), overload).await);
        }
    }
    let outcomes: Vec<Outcome> = runs.into_iter().map(median).collect();
    println!(
        "server: C = {:?} for {} s each, {} ms a request; {TASKS} tasks; {}; medians of {rounds} rounds (503s and errors: all rounds)",
        PHASES,
        PHASE.as_secs(),
        SERVICE.as_millis(),
        if overload {
            "503 past 4 waiting"
        } else {
            "requests past C wait inside"
        }
    );
    println!("| client | C=8 req/s | C=2 req/s | C=24 req/s | p99 wait in server (ms) C=8 / 2 / 24 | 503s C=8 / 2 / 24 | errors |");
    println!("|---|---:|---:|---:|---|---:|---:|");
    for o in &outcomes {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.1} / {:.1} / {:.1} | {} / {} / {} | {} |",
            o.name,
            o.rates[0],
            o.rates[1],
            o.rates[2],
            o.p99_ms[0],
            o.p99_ms[1],
            o.p99_ms[2],
            o.rejected[0],
            o.rejected[1],
            o.rejected[2],
            o.errors
        );
    }
    if let Some(adaptive) = outcomes.iter().find(|o| o.name.starts_with("adaptive")) {
        // Against the best static N of each phase.
        for (i, c) in PHASES.iter().enumerate() {
            let best = outcomes
                .iter()
                .filter(|o| !o.name.starts_with("adaptive"))
                .map(|o| o.rates[i])
                .fold(0.0, f64::max);
            println!(
                "phase C={}: adaptive {:.0} req/s = {:.2}x the best static ({:.0}); limit trace: {}",
                c,
                adaptive.rates[i],
                adaptive.rates[i] / best.max(1.0),
                best,
                adaptive
                    .trace
                    .iter()
                    .filter(|(t, _)| *t >= PHASE.as_secs_f64() * i as f64 && *t < PHASE.as_secs_f64() * (i + 1) as f64)
                    .step_by(4)
                    .map(|(_, l)| l.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        if let Some(path) = svg {
            match chart(&path, adaptive) {
                Ok(()) => println!("chart: {path}"),
                Err(e) => eprintln!("chart: {e}"),
            }
        }
    }
}
