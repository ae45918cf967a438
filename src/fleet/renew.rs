//! The renewer: one task per guard that takes, renews and gives back the
//! process's blocks on Redis, and sets the registry's limits from them.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::policy::{Name, Shared};
use crate::key::HostKey;
use crate::limit::registry::{Demand, Registry};

/// Renewals while anyone waits, the budget is contended or Redis is away.
const FAST: Duration = Duration::from_millis(25);
/// The longest a Redis call may take before Redis counts as unreachable.
const MAX_CALL: Duration = Duration::from_secs(1);

/// The script, loaded once per connection (`EVALSHA`, then `EVAL`).
pub(super) fn script() -> redis::Script {
    redis::Script::new(include_str!("take.lua"))
}

/// Renews until the guard is gone, then gives its permits back.
pub(super) async fn run(shared: Weak<Shared>) {
    let script = script();
    let Some((client, lease, holder)) = shared
        .upgrade()
        .map(|s| (s.budget.client.clone(), s.budget.lease, s.holder.clone()))
    else {
        return;
    };
    let call = (lease / 4).min(MAX_CALL);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(call))
        .set_response_timeout(Some(call))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100));
    let mut conn: Option<ConnectionManager> = None;
    let mut held: Vec<Box<str>> = Vec::new();
    loop {
        let Some(s) = shared.upgrade() else {
            break;
        };
        if conn.is_none() {
            conn = tokio::time::timeout(
                call,
                ConnectionManager::new_with_config(client.clone(), config.clone()),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        let (fast, reached) = renew(&s, conn.as_mut(), &script, call).await;
        if !reached {
            // Made again at the next renewal: a manager whose server went
            // away may have given up reconnecting.
            conn = None;
        }
        held = s
            .names()
            .iter()
            .filter(|(_, n)| n.recorded)
            .map(|(h, _)| h.clone())
            .collect();
        let pause = if fast { FAST } else { (lease / 4).max(FAST) };
        // The guard's state stays up for this pause at most after the
        // guard is gone.
        tokio::select! {
            () = s.wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
    // The guard is gone: its permits go back now rather than at the end of
    // the lease.
    if let Some(conn) = conn.as_mut() {
        let release = Take {
            holder: &holder,
            want: 0,
            floor: 0,
            budget: 0,
            lease_ms: lease_ms(lease),
            epoch: "",
        };
        for host in held {
            let _ = tokio::time::timeout(call, release.call(conn, &script, &host)).await;
        }
    }
}

/// What one call of the script says: permits granted, the keys' epoch,
/// whether the budget is contended, whether a learning window is on.
pub(super) type Answer = (i64, String, i64, i64);

/// One call of the script for `holder` on `host`'s keys: the arguments as
/// `take.lua` documents them.
pub(super) struct Take<'a> {
    pub(super) holder: &'a str,
    pub(super) want: usize,
    pub(super) floor: usize,
    pub(super) budget: usize,
    pub(super) lease_ms: u64,
    pub(super) epoch: &'a str,
}

impl Take<'_> {
    pub(super) async fn call<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        script: &redis::Script,
        host: &str,
    ) -> redis::RedisResult<Answer> {
        let mut invocation = script.prepare_invoke();
        for part in ["holders", "held", "wants", "epoch", "learn"] {
            invocation.key(format!("poolguard:{{{host}}}:{part}"));
        }
        invocation
            .arg(self.holder)
            .arg(self.want)
            .arg(self.floor)
            .arg(self.budget)
            .arg(self.lease_ms)
            .arg(self.epoch);
        invocation.invoke_async(conn).await
    }
}

/// A lease in the script's milliseconds (at least 1).
fn lease_ms(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// One round over every budgeted host. Returns whether the next should
/// come soon, and whether Redis answered every call.
async fn renew(
    shared: &Arc<Shared>,
    mut conn: Option<&mut ConnectionManager>,
    script: &redis::Script,
    call: Duration,
) -> (bool, bool) {
    let Some(registry) = shared.registry.get().and_then(Weak::upgrade) else {
        return (false, true);
    };
    let mut reached = true;
    let demand = registry.demand(|host| shared.budget.limits.contains_key(host));
    let mut by_name: HashMap<&str, Vec<&Demand>> = HashMap::new();
    for d in &demand {
        by_name.entry(d.key.host()).or_default().push(d);
    }
    let lease = lease_ms(shared.budget.lease);
    let mut fast = false;
    for (host, &budget) in &shared.budget.limits {
        let keys_demand = by_name.get(&**host).map(Vec::as_slice).unwrap_or(&[]);
        let taken: usize = keys_demand.iter().map(|d| d.taken).sum();
        let waiting: usize = keys_demand.iter().map(|d| d.waiting).sum();
        let (want, floor, epoch, recorded) = {
            let names = shared.names();
            let Some(name) = names.get(&**host) else {
                continue;
            };
            let demand = taken.saturating_add(waiting);
            // Demand and a quarter more, so that most requests find a
            // permit; idle, half of the block at each renewal.
            let want = if demand > 0 {
                demand.saturating_add((demand / 4).max(1)).min(budget)
            } else {
                name.granted / 2
            };
            // What may be in flight before the answer: each key's share or
            // its requests in flight, whichever is more.
            let mut floor: usize = name.alloc.values().sum();
            for d in keys_demand {
                let share = name.alloc.get(&d.key).copied().unwrap_or(0);
                floor = floor.saturating_add(d.taken.saturating_sub(share));
            }
            (want, floor, name.epoch.clone(), name.recorded)
        };
        if want == 0 && floor == 0 && !recorded {
            continue;
        }
        let take = Take {
            holder: &shared.holder,
            want,
            floor,
            budget,
            lease_ms: lease,
            epoch: &epoch,
        };
        let answer = match conn.as_deref_mut() {
            Some(conn) => tokio::time::timeout(call, take.call(conn, script, host))
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        let caps = {
            let mut names = shared.names();
            let Some(name) = names.get_mut(&**host) else {
                continue;
            };
            match &answer {
                Some((granted, epoch, contended, _learning)) => {
                    name.granted = usize::try_from(*granted).unwrap_or(0).min(budget);
                    name.epoch.clone_from(epoch);
                    name.contended = *contended != 0;
                    name.available = true;
                    name.recorded = want > 0 || floor > 0;
                    shared.metrics.fleet_renewed();
                }
                None => {
                    name.granted = shared.fallback(budget);
                    name.available = false;
                    reached = false;
                    shared.metrics.fleet_error();
                }
            }
            fast |= name.contended || waiting > 0 || !name.available;
            shared
                .metrics
                .fleet_permits(host, budget, name.granted, name.available);
            spread(name, keys_demand)
        };
        apply(shared, &registry, keys_demand, &caps);
    }
    (fast, reached)
}

/// Spreads `name`'s block over its keys: each keeps what it has in flight
/// (as far as the block goes), then keys with requests waiting, in turn,
/// get the rest; what is left goes to the key with the most demand (or
/// stays free for a key not seen yet).
fn spread(name: &mut Name, demand: &[&Demand]) -> Vec<(HostKey, usize)> {
    let mut left = name.granted;
    let mut shares: Vec<(HostKey, usize)> = Vec::with_capacity(demand.len());
    for d in demand {
        let share = d.taken.min(left);
        left -= share;
        shares.push((d.key.clone(), share));
    }
    for (share, d) in shares.iter_mut().zip(demand) {
        let more = d.waiting.min(left);
        share.1 += more;
        left -= more;
    }
    if let Some(top) = demand
        .iter()
        .enumerate()
        .max_by_key(|(_, d)| d.taken.saturating_add(d.waiting))
        .map(|(i, _)| i)
    {
        if let Some(share) = shares.get_mut(top) {
            share.1 += left;
        }
    }
    name.alloc = shares.iter().cloned().collect();
    shares
}

/// Sets each key's limit in the registry (below the policy beneath, if
/// any). Without the fleet's lock.
fn apply(shared: &Shared, registry: &Registry, demand: &[&Demand], caps: &[(HostKey, usize)]) {
    for ((key, share), d) in caps.iter().zip(demand) {
        registry.set_cap(key, (*share).min(shared.inner_limit(key, d.ceiling)));
    }
}
