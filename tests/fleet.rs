//! The fleet budget across real processes and a real `redis-server`: the
//! test binary runs itself as the fleet's processes (the ignored test
//! `fleet_child`), each a guarded hyper-util client with 20 tasks, against
//! one loopback server that holds each response 20 ms and counts what it
//! has in flight: the ground truth.
#![cfg(all(feature = "redis", feature = "hyper-util"))]

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

const BUDGET: usize = 20;
const TASKS: usize = 20;
const LEASE: Duration = Duration::from_secs(1);
const HOLD: Duration = Duration::from_millis(20);

/// One fleet at a time: each test runs four processes on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What one process of the fleet did.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    ok: u64,
    errors: u64,
    unavailable: u64,
    /// The longest a failed request took, in ms.
    max_fail_ms: u64,
    /// Renewals that could not reach Redis.
    fleet_errors: u64,
    /// Whether the last renewal reached Redis.
    available: u64,
}

/// A guard with the budget (or none, with `redis` empty).
fn guard(redis: &str, unavailable: Unavailable, queue_timeout: Duration) -> PoolGuard {
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
async fn drive(
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

/// One process of the fleet, run by the tests below in a process of its
/// own (`PG_FLEET_*` in its environment); does nothing otherwise.
#[test]
#[ignore = "a process of the fleet tests, started by them"]
fn fleet_child() {
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

/// Starts the fleet's processes, all to begin their load at `start_at`.
fn spawn(
    n: usize,
    uri: &str,
    redis: &str,
    start_at: u64,
    millis: u64,
    unavailable: &str,
) -> Vec<Child> {
    let exe = std::env::current_exe().expect("the test binary");
    (0..n)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "fleet_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
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
fn outcome(child: Child) -> Option<Outcome> {
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
async fn sample(stats: &support::Stats, start_at: u64, millis: u64) -> Vec<(u64, usize)> {
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
fn mean(samples: &[(u64, usize)], from: u64, to: u64) -> f64 {
    let inside: Vec<usize> = samples
        .iter()
        .filter(|(t, _)| (from..to).contains(t))
        .map(|(_, n)| *n)
        .collect();
    inside.iter().sum::<usize>() as f64 / inside.len().max(1) as f64
}

fn peak(samples: &[(u64, usize)]) -> usize {
    samples.iter().map(|(_, n)| *n).max().unwrap_or(0)
}

async fn server() -> support::Server {
    support::serve_with(support::Options {
        delay: HOLD,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_a_budget_of_twenty() {
    let _serial = SERIAL.lock().await;
    let redis = support::Redis::start();
    let server = server().await;
    let uri = server.uri("/bytes/16").to_string();
    const RUN: u64 = 3000;

    let start_at = unix_ms() + 1500;
    let children = spawn(4, &uri, &redis.url(), start_at, RUN, "5");
    let samples = sample(&server.stats, start_at, RUN).await;
    let outcomes: Vec<Outcome> = children.into_iter().filter_map(outcome).collect();
    let total: u64 = outcomes.iter().map(|o| o.ok).sum();
    let steady = mean(&samples, 500, RUN - 200);
    println!(
        "budget: peak {} in flight, steady mean {steady:.1}, {outcomes:?}",
        peak(&samples)
    );
    assert_eq!(outcomes.len(), 4, "every process reported");
    assert!(
        peak(&samples) <= BUDGET,
        "peak {} > {BUDGET}",
        peak(&samples)
    );
    assert!(
        steady >= 16.0,
        "the budget is used: mean {steady:.1} in flight"
    );
    for o in &outcomes {
        assert_eq!(o.errors, 0, "{o:?}");
        assert!(
            o.ok * 10 >= total,
            "each process gets at least 10 %: {o:?} of {total}"
        );
    }

    // The same processes without the budget: about 4 × 20.
    let start_at = unix_ms() + 1500;
    let children = spawn(4, &uri, "", start_at, 1500, "5");
    let samples = sample(&server.stats, start_at, 1500).await;
    let outcomes: Vec<Outcome> = children.into_iter().filter_map(outcome).collect();
    println!("no budget: peak {} in flight, {outcomes:?}", peak(&samples));
    assert!(
        peak(&samples) >= 70,
        "premise: without the budget about 80, saw {}",
        peak(&samples)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_gives_its_permits_back_within_its_lease() {
    let _serial = SERIAL.lock().await;
    let redis = support::Redis::start();
    let server = server().await;
    let uri = server.uri("/bytes/16").to_string();
    const RUN: u64 = 6000;
    const KILL_AT: u64 = 2000;

    let start_at = unix_ms() + 1500;
    let mut children = spawn(4, &uri, &redis.url(), start_at, RUN, "5");
    let stats = server.stats.clone();
    let sampler = tokio::spawn(async move { sample(&stats, start_at, RUN).await });
    tokio::time::sleep(Duration::from_millis(
        start_at.saturating_sub(unix_ms()) + KILL_AT,
    ))
    .await;
    let killed = children.remove(0);
    let mut killed = killed;
    killed.kill().expect("kill -9");
    let _ = killed.wait();
    let samples = sampler.await.expect("sampler");
    let outcomes: Vec<Outcome> = children.into_iter().filter_map(outcome).collect();
    let before = mean(&samples, 500, KILL_AT);
    // Its share is back within lease + 2 s.
    let back_by = KILL_AT + LEASE.as_millis() as u64 + 2000;
    let after = mean(&samples, back_by, RUN - 200);
    println!(
        "kill: peak {}, mean before {before:.1}, after {after:.1}, {outcomes:?}",
        peak(&samples)
    );
    assert_eq!(outcomes.len(), 3);
    assert!(
        peak(&samples) <= BUDGET,
        "peak {} > {BUDGET}",
        peak(&samples)
    );
    assert!(before >= 16.0, "before the kill: {before:.1}");
    assert!(
        after >= 16.0,
        "the others use the killed process's share: {after:.1}"
    );
    for o in &outcomes {
        assert_eq!(o.errors, 0, "{o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_mid_run_falls_back_to_local_limits_then_back_to_the_budget() {
    let _serial = SERIAL.lock().await;
    let mut redis = support::Redis::start();
    let server = server().await;
    let uri = server.uri("/bytes/16").to_string();
    const RUN: u64 = 6000;

    let start_at = unix_ms() + 1500;
    let children = spawn(4, &uri, &redis.url(), start_at, RUN, "5");
    let stats = server.stats.clone();
    let sampler = tokio::spawn(async move { sample(&stats, start_at, RUN).await });
    tokio::time::sleep(Duration::from_millis(
        start_at.saturating_sub(unix_ms()) + 1500,
    ))
    .await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    let samples = sampler.await.expect("sampler");
    let outcomes: Vec<Outcome> = children.into_iter().filter_map(outcome).collect();
    let down = mean(&samples, 1700, 3000);
    let back = mean(&samples, 4500, RUN - 200);
    println!(
        "redis lost: peak {}, mean while down {down:.1}, after restart {back:.1}, {outcomes:?}",
        peak(&samples)
    );
    assert_eq!(outcomes.len(), 4);
    assert!(peak(&samples) <= 4 * 5, "peak {}", peak(&samples));
    for o in &outcomes {
        assert_eq!(o.errors, 0, "{o:?}");
        // Premise: each process found Redis gone (and fell back), and
        // renewed on it again after the restart.
        assert!(o.fleet_errors > 0, "{o:?}");
        assert_eq!(o.available, 1, "{o:?}");
    }
    assert!(
        back >= 16.0,
        "back to the budget after the restart: {back:.1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_refuses_within_the_queue_timeout() {
    let _serial = SERIAL.lock().await;
    let mut redis = support::Redis::start();
    let server = server().await;
    const TIMEOUT: Duration = Duration::from_millis(300);
    let guard = guard(&redis.url(), Unavailable::FailClosed, TIMEOUT);
    // Warm: the budget is reached and used.
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    let warm = drive(&guard, server.uri("/bytes/16"), 40, until).await;
    assert_eq!(warm.errors, 0, "{warm:?}");
    assert!(
        server.stats.peak() <= BUDGET,
        "peak {}",
        server.stats.peak()
    );
    redis.kill();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let down = drive(&guard, server.uri("/bytes/16"), 40, until).await;
    println!(
        "fail closed: {warm:?} then {down:?}, {:?}",
        guard.metrics().snapshot().fleet
    );
    assert!(down.unavailable > 0, "BudgetUnavailable errors: {down:?}");
    assert_eq!(down.unavailable, down.errors, "no other error: {down:?}");
    // A request waits at most the queue timeout (and its own 20 ms, for
    // one admitted just before).
    assert!(
        down.max_fail_ms <= (TIMEOUT + Duration::from_millis(250)).as_millis() as u64,
        "{down:?}"
    );
    assert!(guard.metrics().snapshot().fleet_errors > 0);
    assert!(
        server.stats.peak() <= BUDGET,
        "peak {}",
        server.stats.peak()
    );
}
