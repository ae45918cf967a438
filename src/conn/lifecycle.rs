//! How long a connection may live and how many requests it may carry
//! before the guard retires it, so that connections turn over behind a
//! load balancer (which keeps sending a client's old connections to the
//! backends that were there when they were made).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::CloseReason;

/// The limits on a connection's life set on a guard or a connector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lifecycle {
    /// The age after which a connection takes no new request, before its
    /// jitter.
    pub(crate) max_age: Option<Duration>,
    /// The requests a connection carries at most.
    pub(crate) max_requests: Option<u64>,
}

/// The spread of the age limit, either side, in thousandths: ±10 %.
const JITTER_PER_MILLE: u64 = 100;

/// Feeds the jitter: one step per connection.
static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

impl Lifecycle {
    /// Whether any limit applies.
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn any(self) -> bool {
        self.max_age.is_some() || self.max_requests.is_some()
    }

    /// The age limit of one new connection: `max_age` moved by up to
    /// ±10 %, so that connections opened together (a burst, a deploy) do
    /// not all retire together.
    pub(crate) fn age_of_one(self) -> Option<Duration> {
        let age = self.max_age?;
        let seed = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed);
        Some(jittered(age, splitmix(seed)))
    }
}

/// Where one connection stands against its [`Lifecycle`]: the moment its
/// (jittered) age runs out, and whether it was retired.
///
/// Retirement is decided once, and only ever lets the connection finish
/// what it carries: the connection's IO takes it out of the pool, closes it
/// at once if it is idle, and otherwise once its exchanges end.
#[derive(Debug, Default)]
pub(crate) struct Rotation {
    max_requests: Option<u64>,
    /// When the connection's age runs out.
    deadline: Option<Instant>,
    /// Wakes the connection's read at `deadline` (armed on first look).
    timer: Option<Pin<Box<Sleep>>>,
    /// Why the connection was retired, once it was.
    decided: Option<CloseReason>,
}

impl Rotation {
    /// The rotation of a connection made `born` under `life`.
    pub(crate) fn new(life: Lifecycle, born: Instant) -> Self {
        Rotation {
            max_requests: life.max_requests,
            // Past the end of time: never.
            deadline: life.age_of_one().and_then(|age| born.checked_add(age)),
            timer: None,
            decided: None,
        }
    }

    /// Whether any limit applies.
    pub(crate) fn any(&self) -> bool {
        self.max_requests.is_some() || self.deadline.is_some()
    }

    /// Why the connection was retired, if it was.
    pub(crate) fn decided(&self) -> Option<CloseReason> {
        self.decided
    }

    /// The connection carried `requests` requests (exchanges complete over
    /// HTTP/1, streams opened over HTTP/2), and it is `now`: the reason it
    /// retires, the first time one applies.
    pub(crate) fn check(&mut self, requests: u64, now: Instant) -> Option<CloseReason> {
        if self.decided.is_some() {
            return None;
        }
        let reason = if self.max_requests.is_some_and(|max| requests >= max) {
            CloseReason::MaxRequests
        } else if self.deadline.is_some_and(|at| now >= at) {
            CloseReason::MaxAge
        } else {
            return None;
        };
        self.decided = Some(reason);
        Some(reason)
    }

    /// Polls the age timer, not before `not_before` (a fresh connection's
    /// grace): [`CloseReason::MaxAge`] the first time it has run out. With
    /// no timer in the runtime the age is checked on each call.
    pub(crate) fn poll_age(
        &mut self,
        cx: &mut Context<'_>,
        not_before: Option<Instant>,
    ) -> Option<CloseReason> {
        if self.decided.is_some() {
            return None;
        }
        let deadline = self.deadline?;
        let deadline = not_before.map_or(deadline, |n| n.max(deadline));
        match &mut self.timer {
            Some(sleep) if sleep.deadline() == deadline => {}
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.timer = crate::timer::sleep_until(deadline).map(Box::pin),
        }
        let due = match self.timer.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            None => Instant::now() >= deadline,
        };
        if !due {
            return None;
        }
        self.timer = None;
        self.decided = Some(CloseReason::MaxAge);
        self.decided
    }
}

/// `age` scaled by a factor between 0.9 and 1.1 chosen by `random`, in
/// whole nanoseconds (and saturating: a `Duration::MAX` stays huge).
pub(crate) fn jittered(age: Duration, random: u64) -> Duration {
    let spread = JITTER_PER_MILLE.saturating_mul(2).saturating_add(1);
    let per_mille = 1000 - JITTER_PER_MILLE + random % spread;
    let nanos = age.as_nanos().saturating_mul(u128::from(per_mille)) / 1000;
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // Below 10^9: fits.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, sub)
}

/// A 64-bit mix (splitmix64's finaliser), to spread consecutive seeds.
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_moves_by_at_most_a_tenth_either_way_and_spreads() {
        let life = Lifecycle {
            max_age: Some(Duration::from_secs(10)),
            max_requests: None,
        };
        let ages: Vec<Duration> = (0..1000).filter_map(|_| life.age_of_one()).collect();
        assert_eq!(ages.len(), 1000);
        let (min, max) = (
            ages.iter().min().copied().unwrap_or_default(),
            ages.iter().max().copied().unwrap_or_default(),
        );
        assert!(min >= Duration::from_secs(9), "{min:?}");
        assert!(max <= Duration::from_secs(11), "{max:?}");
        // Spread over the range, not bunched: both outer fifths are hit.
        assert!(min < Duration::from_millis(9400), "{min:?}");
        assert!(max > Duration::from_millis(10600), "{max:?}");
        let below = ages
            .iter()
            .filter(|a| **a < Duration::from_secs(10))
            .count();
        assert!(
            (350..650).contains(&below),
            "{below} of 1000 below the mean"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rotation_decides_once_on_the_first_limit_reached() {
        let now = Instant::now();
        let life = Lifecycle {
            max_age: None,
            max_requests: Some(3),
        };
        let mut r = Rotation::new(life, now);
        assert!(r.any());
        assert_eq!(r.check(2, now), None);
        assert_eq!(r.check(3, now), Some(CloseReason::MaxRequests));
        assert_eq!(r.check(4, now), None, "decided once");
        assert_eq!(r.decided(), Some(CloseReason::MaxRequests));

        let life = Lifecycle {
            max_age: Some(Duration::from_secs(10)),
            max_requests: None,
        };
        let mut r = Rotation::new(life, now);
        assert_eq!(r.check(1000, now + Duration::from_secs(8)), None);
        assert_eq!(
            r.check(1000, now + Duration::from_secs(12)),
            Some(CloseReason::MaxAge)
        );
        assert!(!Rotation::new(Lifecycle::default(), now).any());
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_timer_fires_within_the_jitter_and_not_before_the_grace() {
        let life = Lifecycle {
            max_age: Some(Duration::from_secs(10)),
            max_requests: None,
        };
        let start = Instant::now();
        let mut r = Rotation::new(life, start);
        let fired = std::future::poll_fn(|cx| match r.poll_age(cx, None) {
            Some(reason) => std::task::Poll::Ready(reason),
            None => std::task::Poll::Pending,
        })
        .await;
        assert_eq!(fired, CloseReason::MaxAge);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(11),
            "{took:?}"
        );

        // A grace past the age holds the retirement until it ends.
        let start = Instant::now();
        let mut r = Rotation::new(life, start);
        let grace = start + Duration::from_secs(30);
        std::future::poll_fn(|cx| match r.poll_age(cx, Some(grace)) {
            Some(_) => std::task::Poll::Ready(()),
            None => std::task::Poll::Pending,
        })
        .await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[test]
    fn extremes_saturate() {
        assert_eq!(jittered(Duration::ZERO, 7), Duration::ZERO);
        assert!(jittered(Duration::MAX, u64::MAX) >= Duration::MAX / 2);
        assert_eq!(
            jittered(Duration::from_secs(1), 100),
            Duration::from_secs(1)
        );
        assert_eq!(
            jittered(Duration::from_secs(1), 0),
            Duration::from_millis(900)
        );
        assert_eq!(
            jittered(Duration::from_secs(1), 200),
            Duration::from_millis(1100)
        );
        assert!(!Lifecycle::default().any());
        assert_eq!(Lifecycle::default().age_of_one(), None);
    }
}
