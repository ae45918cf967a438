//! A fleet budget across processes: four processes of 20 tasks each
//! (this example run again with `--child`) share a budget of 20 requests in
//! flight to one loopback server that holds each response 20 ms, through a
//! `redis-server` the example starts on a unix socket. One process is
//! killed (`SIGKILL`) at 2 s; the server's own count of requests in flight
//! is sampled every 5 ms. Then one process alone, with the budget and
//! without, side by side in rounds: its requests a second.
//!
//! `cargo run --release --example fleet --features redis [-- --svg fleet.svg] [-- --rounds N]`
//!
//! Needs `redis-server` (Debian's package) on the `PATH`. `tests/fleet.rs`
//! runs the same processes (this file's code) and asserts on them.

use poolguard_testkit as support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::fleet::{BudgetUnavailable, FleetBudget, Unavailable};
use poolguard::PoolGuard;
use tower::{Layer, Service, ServiceExt};

pub const BUDGET: usize = 20;
pub const TASKS: usize = 20;
pub const LEASE: Duration = Duration::from_secs(1);
pub const HOLD: Duration = Duration::from_millis(20);

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What one process of the fleet did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub unavailable: u64,
    /// The longest a failed request took, in ms.
    pub max_fail_ms: u64,
    /// Renewals that could not reach Redis.
    pub fleet_errors: u64,
    /// Whether the last renewal reached Redis.
    pub available: u64,
}

/// A guard with the budget (or none, with `redis` empty).
pub fn guard(redis: &str, unavailable: Unavailable, queue_timeout: Duration) -> PoolGuard {
    let builder = PoolGuard::builder()
        .max_per_host(64)
        .queue_timeout(queue_timeout);
    if redis.is_empty() {
        return builder.build();
    }
    let fleet = FleetBudget::redis(redis)
        .expect("a valid URL")
        .limit_for("127.0.0.1", BUDGET)
        .lease(LEASE)
        .on_unavailable(unavailable);
    builder.fleet(fleet).build()
}

/// `tasks` tasks sending requests to `uri` until `until`.
pub async fn drive(
    guard: &PoolGuard,
    uri: http::Uri,
    tasks: usize,
    until: tokio::time::Instant,
) -> Outcome {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = guard.layer().layer(client);
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut all = Vec::new();
    for _ in 0..tasks {
        let (mut svc, uri, outcome) = (svc.clone(), uri.clone(), outcome.clone());
        all.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < until {
                let started = tokio::time::Instant::now();
                let request = http::Request::get(uri.clone())
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let result = match svc.ready().await {
                    Ok(svc) => svc.call(request).await,
                    Err(e) => Err(e),
                };
                let result = match result {
                    Ok(response) => response
                        .into_body()
                        .collect()
                        .await
                        .map(drop)
                        .map_err(Into::into),
                    Err(e) => Err(e),
                };
                let mut o = outcome.lock().expect("lock");
                match result {
                    Ok(()) => o.ok += 1,
                    Err(e) => {
                        o.errors += 1;
                        if e.downcast_ref::<BudgetUnavailable>().is_some() {
                            o.unavailable += 1;
                        }
                        o.max_fail_ms = o.max_fail_ms.max(started.elapsed().as_millis() as u64);
                    }
                }
            }
        }));
    }
    for task in all {
        let _ = task.await;
    }
    let o = *outcome.lock().expect("lock");
    o
}

/// Starts the fleet's processes (this executable with `args`, which must
/// lead it to [`child`]), all to begin their load at `start_at`.
pub fn spawn(
    args: &[&str],
    n: usize,
    uri: &str,
    redis: &str,
    start_at: u64,
    millis: u64,
    unavailable: &str,
) -> Vec<Child> {
    let exe = std::env::current_exe().expect("this executable");
    (0..n)
        .map(|_| {
            Command::new(&exe)
                .args(args)
                .env("PG_FLEET_URI", uri)
                .env("PG_FLEET_REDIS", redis)
                .env("PG_FLEET_START_AT", start_at.to_string())
                .env("PG_FLEET_MILLIS", millis.to_string())
                .env("PG_FLEET_UNAVAILABLE", unavailable)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("a fleet process starts")
        })
        .collect()
}

/// A process's outcome, from what it printed (none for a killed one).
pub fn outcome(child: Child) -> Option<Outcome> {
    let output = child.wait_with_output().expect("the process ends");
    let text = String::from_utf8_lossy(&output.stdout);
    // libtest prints the test's name before it, on the same line.
    let line = text
        .lines()
        .find_map(|l| l.find("FLEET ").map(|at| &l[at..]))?;
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Outcome {
        ok: field("ok"),
        errors: field("errors"),
        unavailable: field("unavailable"),
        max_fail_ms: field("max_fail_ms"),
        fleet_errors: field("fleet_errors"),
        available: field("available"),
    })
}

/// The server's requests in flight every 5 ms from `start_at` for
/// `millis`, as (ms since `start_at`, in flight).
pub async fn sample(stats: &support::Stats, start_at: u64, millis: u64) -> Vec<(u64, usize)> {
    let wait = start_at.saturating_sub(unix_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let mut samples = Vec::new();
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(millis) {
        samples.push((
            t0.elapsed().as_millis() as u64,
            stats.in_flight.load(Ordering::SeqCst),
        ));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    samples
}

/// The mean of the samples from `from` to `to` ms.
pub fn mean(samples: &[(u64, usize)], from: u64, to: u64) -> f64 {
    let inside: Vec<usize> = samples
        .iter()
        .filter(|(t, _)| (from..to).contains(t))
        .map(|(_, n)| *n)
        .collect();
    inside.iter().sum::<usize>() as f64 / inside.len().max(1) as f64
}

pub fn peak(samples: &[(u64, usize)]) -> usize {
    samples.iter().map(|(_, n)| *n).max().unwrap_or(0)
}

pub async fn server() -> support::Server {
    support::serve_with(support::Options {
        delay: HOLD,
        ..Default::default()
    })
    .await
}

/// One process of the fleet, as its parent set it up in its environment
/// (`PG_FLEET_*`): prints its outcome as a `FLEET ...` line.
pub fn child() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let uri: http::Uri = var("PG_FLEET_URI").parse().expect("PG_FLEET_URI");
    let start_at: u64 = var("PG_FLEET_START_AT").parse().expect("start");
    let millis: u64 = var("PG_FLEET_MILLIS").parse().expect("millis");
    let unavailable = match var("PG_FLEET_UNAVAILABLE").as_str() {
        "closed" => Unavailable::FailClosed,
        local => Unavailable::Local(local.parse().unwrap_or(5)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = runtime.block_on(async {
        let guard = guard(&var("PG_FLEET_REDIS"), unavailable, Duration::from_secs(5));
        let wait = start_at.saturating_sub(unix_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(millis);
        let mut outcome = drive(&guard, uri, TASKS, until).await;
        let snapshot = guard.metrics().snapshot();
        outcome.fleet_errors = snapshot.fleet_errors;
        outcome.available = u64::from(snapshot.fleet.iter().all(|h| h.available));
        outcome
    });
    println!(
        "FLEET ok={} errors={} unavailable={} max_fail_ms={} fleet_errors={} available={}",
        outcome.ok,
        outcome.errors,
        outcome.unavailable,
        outcome.max_fail_ms,
        outcome.fleet_errors,
        outcome.available
    );
}

/// The kill run: four processes, one killed at `KILL_AT` ms.
const RUN: u64 = 6000;
const KILL_AT: u64 = 2000;

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--child") {
        child();
        return;
    }
    let svg = args
        .iter()
        .position(|a| a == "--svg")
        .and_then(|i| args.get(i + 1).cloned());
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse::<usize>().ok())
        .unwrap_or(5)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let redis = support::Redis::start();
        let server = server().await;
        let uri = server.uri("/bytes/16").to_string();

        // The kill run.
        let start_at = unix_ms() + 1500;
        let mut children = spawn(&["--child"], 4, &uri, &redis.url(), start_at, RUN, "5");
        let stats = server.stats.clone();
        let sampler = tokio::spawn(async move { sample(&stats, start_at, RUN).await });
        tokio::time::sleep(Duration::from_millis(
            start_at.saturating_sub(unix_ms()) + KILL_AT,
        ))
        .await;
        let mut killed = children.remove(0);
        let _ = killed.kill();
        let _ = killed.wait();
        let samples = sampler.await.expect("sampler");
        let outcomes: Vec<Outcome> = children.into_iter().filter_map(outcome).collect();
        let lease = LEASE.as_millis() as u64;
        println!(
            "kill run (4 processes x {TASKS} tasks, budget {BUDGET}, lease {lease} ms, one killed at {KILL_AT} ms):"
        );
        println!(
            "  in flight at the server: peak {}, mean {:.1} before the kill, {:.1} from the kill to the lease's end, {:.1} after lease + 2 s",
            peak(&samples),
            mean(&samples, 500, KILL_AT),
            mean(&samples, KILL_AT, KILL_AT + lease),
            mean(&samples, KILL_AT + lease + 2000, RUN - 200),
        );
        let first_back = samples
            .iter()
            .find(|(t, n)| *t > KILL_AT + 100 && *n >= 18)
            .map(|(t, _)| t.saturating_sub(KILL_AT));
        println!("  first sample at >= 18 after the kill: {first_back:?} ms after it");
        println!(
            "  survivors' errors: {}",
            outcomes.iter().map(|o| o.errors).sum::<u64>()
        );
        if let Some(path) = svg {
            match chart(&path, &samples) {
                Ok(()) => println!("chart: {path}"),
                Err(e) => eprintln!("chart: {e}"),
            }
        }

        // One process alone: with the budget and without, in turn (which
        // goes first alternates). The kill run's processes exited without
        // giving their permits back: their leases end first.
        tokio::time::sleep(LEASE * 2).await;
        for (hold, label) in [(HOLD, "20 ms"), (Duration::ZERO, "0 ms")] {
            let server = support::serve_with(support::Options {
                delay: hold,
                ..Default::default()
            })
            .await;
            let mut ratios = Vec::new();
            let mut rates = (Vec::new(), Vec::new());
            for round in 0..rounds {
                let rate = |redis: &str| {
                    let guard = guard(redis, Unavailable::Local(5), Duration::from_secs(5));
                    let uri = server.uri("/bytes/16");
                    async move {
                        let run = Duration::from_millis(2000);
                        let until = tokio::time::Instant::now() + run;
                        let o = drive(&guard, uri, TASKS, until).await;
                        o.ok as f64 / run.as_secs_f64()
                    }
                };
                let (with, without) = if round % 2 == 0 {
                    let with = rate(&redis.url()).await;
                    (with, rate("").await)
                } else {
                    let without = rate("").await;
                    (rate(&redis.url()).await, without)
                };
                ratios.push(with / without.max(1.0));
                rates.0.push(with);
                rates.1.push(without);
            }
            let (lo, hi) = support::spread(&ratios);
            println!(
                "one process, server holding {label}, {TASKS} tasks, budget {BUDGET}: with {:.0} req/s, without {:.0} req/s: {:.3}x (median of {rounds} rounds, {lo:.3}-{hi:.3})",
                support::median(&rates.0),
                support::median(&rates.1),
                support::median(&ratios)
            );
        }
    });
}

fn chart(path: &str, samples: &[(u64, usize)]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "requests in flight at the server (blue), budget 20 (red); one of 4 processes killed at 2 s",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..(RUN as f64 / 1000.0), 0usize..30usize)?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("requests")
        .draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, BUDGET), (RUN as f64 / 1000.0, BUDGET)],
        RED,
    )))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(KILL_AT as f64 / 1000.0, 0), (KILL_AT as f64 / 1000.0, 30)],
        BLACK,
    )))?;
    chart.draw_series(std::iter::once(PathElement::new(
        samples
            .iter()
            .map(|(t, n)| (*t as f64 / 1000.0, *n))
            .collect::<Vec<_>>(),
        BLUE,
    )))?;
    root.present()?;
    Ok(())
}
