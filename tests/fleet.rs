//! The fleet budget across real processes and a real `redis-server`: the
//! test binary runs itself as the fleet's processes (the ignored test
//! `fleet_child`), each a guarded hyper-util client with 20 tasks, against
//! one loopback server that holds each response 20 ms and counts what it
//! has in flight: the ground truth.
#![cfg(all(feature = "redis", feature = "hyper-util"))]

use poolguard_testkit as support;

use std::time::Duration;

use poolguard::fleet::Unavailable;

#[path = "../examples/fleet.rs"]
mod example;
use example::*;

/// One fleet at a time: each test runs four processes on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The example's processes.
const CHILD: &[&str] = &[
    "fleet_child",
    "--exact",
    "--ignored",
    "--nocapture",
    "--test-threads=1",
];

/// One process of the fleet, run by the tests below in a process of its
/// own (`PG_FLEET_*` in its environment).
#[test]
#[ignore = "a process of the fleet tests, started by them"]
fn fleet_child() {
    example::child();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_a_budget_of_twenty() {
    let _serial = SERIAL.lock().await;
    let redis = support::Redis::start();
    let server = server().await;
    let uri = server.uri("/bytes/16").to_string();
    const RUN: u64 = 3000;

    let start_at = unix_ms() + 1500;
    let children = spawn(CHILD, 4, &uri, &redis.url(), start_at, RUN, "5");
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
    let children = spawn(CHILD, 4, &uri, "", start_at, 1500, "5");
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
    let mut children = spawn(CHILD, 4, &uri, &redis.url(), start_at, RUN, "5");
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
    let children = spawn(CHILD, 4, &uri, &redis.url(), start_at, RUN, "5");
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
