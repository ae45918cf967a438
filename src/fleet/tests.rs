//! The permit script against a real `redis-server`: what each call grants
//! and records, step by step.

use poolguard_testkit::Redis;

use super::renew::{script, Answer, Take};

/// One call of the script, budget 20, lease 60 s: (granted, epoch,
/// contended, learning).
async fn take(
    conn: &mut redis::aio::MultiplexedConnection,
    holder: &str,
    want: usize,
    floor: usize,
    epoch: &str,
) -> Answer {
    let call = Take {
        holder,
        want,
        floor,
        budget: 20,
        lease_ms: 60_000,
        epoch,
    };
    call.call(conn, &script(), "api.example")
        .await
        .expect("the script runs")
}

async fn held(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let all: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg("poolguard:{api.example}:held")
        .query_async(conn)
        .await
        .expect("held");
    all.iter().map(|(_, n)| n).sum()
}

async fn connect(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connection")
}

#[tokio::test]
async fn blocks_never_add_up_past_the_budget_and_contention_shares_it() {
    let redis = Redis::start();
    let mut conn = connect(&redis).await;
    // Alone, a holder gets what it wants.
    let (a, epoch, contended, _) = take(&mut conn, "a", 20, 0, "").await;
    assert_eq!((a, contended), (20, 0));
    // Another gets nothing the first holds...
    let (b, _, contended, _) = take(&mut conn, "b", 20, 0, &epoch).await;
    assert_eq!((b, contended), (0, 1));
    // ... the first is told its fair share, but its permits in use stay
    // recorded until it says they are free.
    let (a, ..) = take(&mut conn, "a", 20, 20, &epoch).await;
    assert_eq!(a, 10);
    assert_eq!(held(&mut conn).await, 20);
    let (a, ..) = take(&mut conn, "a", 20, 10, &epoch).await;
    assert_eq!(a, 10);
    let (b, ..) = take(&mut conn, "b", 20, 0, &epoch).await;
    assert_eq!(b, 10);
    assert_eq!(held(&mut conn).await, 20);
    // A holder that wants less leaves more to the other (max-min).
    let (a, ..) = take(&mut conn, "a", 4, 10, &epoch).await;
    assert_eq!(a, 4);
    let (a, ..) = take(&mut conn, "a", 4, 4, &epoch).await;
    assert_eq!(a, 4);
    let (b, ..) = take(&mut conn, "b", 20, 10, &epoch).await;
    assert_eq!(b, 16);
    assert_eq!(held(&mut conn).await, 20);
    // Giving back.
    let (a, ..) = take(&mut conn, "a", 0, 0, &epoch).await;
    assert_eq!(a, 0);
    assert_eq!(held(&mut conn).await, 16);
}

#[tokio::test]
async fn after_a_restart_nobody_grows_until_the_old_holders_recorded_what_they_use() {
    let mut redis = Redis::start();
    let mut conn = connect(&redis).await;
    let (a, epoch, ..) = take(&mut conn, "a", 10, 0, "").await;
    let (c, ..) = take(&mut conn, "c", 10, 0, &epoch).await;
    assert_eq!((a, c), (10, 10));
    // Redis restarts without its keys.
    redis.restart();
    let mut conn = connect(&redis).await;
    // A holder of the old epoch renews first: a learning window starts.
    let (a, new_epoch, _, learning) = take(&mut conn, "a", 10, 10, &epoch).await;
    assert_ne!(new_epoch, epoch);
    assert_eq!((a, learning), (10, 1));
    // A newcomer wants 20: without the window it would get the 10 that c
    // still has in use; with it, nothing.
    let (b, _, _, learning) = take(&mut conn, "b", 20, 0, "").await;
    assert_eq!((b, learning), (0, 1));
    // The other old holder records what it has in use (10), though its
    // fair share among three is 7 now: it shrinks as its requests end.
    let (c, ..) = take(&mut conn, "c", 10, 10, &epoch).await;
    assert_eq!(c, 7);
    assert_eq!(held(&mut conn).await, 20);
}

#[tokio::test]
async fn a_holder_whose_lease_ran_out_gives_its_permits_back() {
    let redis = Redis::start();
    let mut conn = connect(&redis).await;
    // A lease of 100 ms.
    let call = Take {
        holder: "gone",
        want: 20,
        floor: 0,
        budget: 20,
        lease_ms: 100,
        epoch: "",
    };
    let (gone, ..) = call
        .call(&mut conn, &script(), "api.example")
        .await
        .expect("script");
    assert_eq!(gone, 20);
    let (b, epoch, ..) = take(&mut conn, "b", 20, 0, "").await;
    assert_eq!(b, 0);
    // Redis's clock, not the test's: wait past the lease.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let (b, ..) = take(&mut conn, "b", 20, 0, &epoch).await;
    assert_eq!(b, 20);
}
