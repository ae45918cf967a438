//! An adaptive per-host limit: the policy that finds how many requests a
//! host takes before it starts to queue them.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::policy::{LimitPolicy, Sample};
use crate::key::{HostKey, HostMemo};

/// An adaptive request limit per host, between [`min`](Adaptive::min) and
/// the host's `max_per_host` (which stays its ceiling, and with a
/// [`GuardedConnector`](crate::GuardedConnector) its connection cap); set
/// with [`PerHostLimitLayer::adaptive`](super::PerHostLimitLayer::adaptive)
/// or [`PoolGuardBuilder::adaptive`](crate::PoolGuardBuilder::adaptive).
///
/// # How the limit moves
///
/// Each request is timed from the moment it gets its slot (its wait in
/// poolguard's own queue left out) to its response head, per attempt;
/// attempts that paid for a new connection (a dial, a TLS handshake) are
/// left out (a [`GuardedConnector`](crate::GuardedConnector)'s connections,
/// and reqwest's through
/// [`reqwest_connector_layer`](crate::PoolGuard::reqwest_connector_layer)).
/// Once per
/// window (25 ms, and at least 3 samples), the window's mean latency is
/// compared with the host's **base**: the lowest window mean seen while the
/// host was not kept busy, that is its latency without a queue (the base
/// follows a lower mean at once, and rises a tenth of the way to a higher
/// one only in windows that did not fill the limit or with the limit at its
/// minimum, so that a queue the limit keeps up cannot pass for the host's
/// own latency; it never learns from `429`/`503` answers, which come
/// fast).
///
/// From the window's mean and the base, the host serves about
/// `in flight × base / mean` at once (Little's law), and the rest of what
/// was in flight waited inside it: its **queue**.
///
/// - **Refusals** (`429` or `503` answers in the window): the limit is cut
///   by up to 10 %, by the share of the window's answers that were
///   refusals (a limit well past what the host queues is refused again and
///   again, one that touches the edge now and then a few times), and a
///   `Retry-After` (in seconds) holds every increase until it has passed.
/// - **A long queue** (mean above 1.5 × base, and a queue over half of
///   what the host serves at once, at least 2): the limit moves to what
///   the host serves plus a short queue, but never below half of what it
///   was in one window.
/// - **A short queue** (under a fifth of what the host serves, at least 1)
///   **and the limit was reached** in the window: the limit grows by 10 %
///   (at least 1): from 2 to 24 in about half a second, where adding 1 per
///   window would take twice that. A few requests waiting inside the host
///   keep it busy while answers travel back and the next requests travel
///   out.
/// - **A host that sheds load** (one that refused within the last second)
///   bounds its own queue: its queue is not cut, and the limit probes for
///   the edge (a quarter of a request a window while it is reached), so
///   the host's queue stays full and its workers busy, with a refusal now
///   and then instead of one for every request past the edge.
/// - Otherwise, or with the limit not reached, it stays.
///
/// A lower limit never cuts requests in flight: slots come back as they
/// end. On HTTP/2 the limit counts streams. A host starts at
/// [`initial`](Adaptive::initial) (default: `min`, so that its first
/// windows measure it without a queue). Hosts' limits are remembered for up
/// to 4096 hosts, also while they have nothing in flight.
///
/// # Example
///
/// ```
/// use poolguard::limit::Adaptive;
/// use poolguard::PoolGuard;
///
/// let guard = PoolGuard::builder()
///     .max_per_host(64) // the ceiling
///     .adaptive(Adaptive::new().min(2))
///     .build();
/// # drop(guard);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Adaptive {
    min: usize,
    initial: Option<usize>,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive::new()
    }
}

impl Adaptive {
    /// An adaptive limit from 1 to each host's ceiling, starting at 1.
    pub const fn new() -> Self {
        Adaptive {
            min: 1,
            initial: None,
        }
    }

    /// The lowest the limit goes (a value of 0 is taken as 1; above a
    /// host's ceiling, the ceiling). Default: 1.
    pub const fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }

    /// The limit a host starts at (kept between `min` and the ceiling).
    /// Default: `min`.
    pub const fn initial(mut self, initial: usize) -> Self {
        self.initial = Some(initial);
        self
    }

    /// The policy that applies this configuration, with the state of every
    /// host.
    pub(crate) fn policy(&self) -> AdaptivePolicy {
        AdaptivePolicy {
            config: self.clone(),
            hosts: Mutex::new(HostMemo::new(MAX_HOSTS)),
            on_change: None,
        }
    }
}

/// Hosts whose limits are remembered.
const MAX_HOSTS: usize = 4096;
/// The shortest window a decision is taken over.
const WINDOW: Duration = Duration::from_millis(25);
/// Samples a window needs (of latency, or one overload).
const MIN_SAMPLES: u32 = 3;
/// Above this ratio of the window's mean to the base: a queue.
const QUEUE_AT: f64 = 1.5;
/// A queue inside the host (as a share of what it serves at once) below
/// which the limit grows (at least 1 request)...
const SHORT_QUEUE: f64 = 0.2;
/// ... and above which it is cut (at least 2 requests).
const LONG_QUEUE: f64 = 0.5;
/// Growth per window without a queue.
const GROWTH: f64 = 0.1;
/// The most a window of refusals (`429`, `503`) cuts.
const OVERLOAD_CUT: f64 = 0.1;
/// How long a host that answered `429` or `503` is taken to bound its own
/// queue.
const SHEDDING_MEMORY: Duration = Duration::from_secs(1);
/// Growth per window with a queue inside a host that sheds load.
const SHEDDING_PROBE: f64 = 0.25;
/// The most one window's queue may cut.
const QUEUE_CUT_FLOOR: f64 = 0.5;
/// How far the base moves up to a higher mean in a window that shows the
/// host's own latency.
const BASE_RISE: f64 = 0.1;

/// Tells who reports the limits (the metrics) of each change.
pub(crate) type OnChange = Arc<dyn Fn(&HostKey, usize) + Send + Sync>;

/// [`Adaptive`] at work: every host's controller.
pub(crate) struct AdaptivePolicy {
    config: Adaptive,
    hosts: Mutex<HostMemo<Controller>>,
    on_change: Option<OnChange>,
}

impl fmt::Debug for AdaptivePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptivePolicy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AdaptivePolicy {
    /// Tells `on_change` each host's limit as it changes.
    pub(crate) fn on_change(mut self, on_change: OnChange) -> Self {
        self.on_change = Some(on_change);
        self
    }

    fn bounds(&self, ceiling: usize) -> (usize, usize) {
        let ceiling = ceiling.max(1);
        (self.config.min.clamp(1, ceiling), ceiling)
    }
}

impl LimitPolicy for AdaptivePolicy {
    fn limit(&self, key: &HostKey, ceiling: usize) -> usize {
        let (min, ceiling) = self.bounds(ceiling);
        self.with_host(key, min, ceiling, |host, _| host.current(min, ceiling))
    }

    fn sample(&self, key: &HostKey, sample: &Sample, ceiling: usize) -> Option<usize> {
        let (min, ceiling) = self.bounds(ceiling);
        let changed = self.with_host(key, min, ceiling, |host, now| {
            host.sample(sample, now, min, ceiling)
        });
        if let (Some(limit), Some(tell)) = (changed, &self.on_change) {
            tell(key, limit);
        }
        changed
    }
}

impl AdaptivePolicy {
    /// Runs `f` on `key`'s controller (with the time now), made at the
    /// initial limit if the host is new (or was forgotten), which is then
    /// told to `on_change`.
    fn with_host<R>(
        &self,
        key: &HostKey,
        min: usize,
        ceiling: usize,
        f: impl FnOnce(&mut Controller, Instant) -> R,
    ) -> R {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(host) = hosts.get_mut(key) {
            return f(host, now);
        }
        let start = self.config.initial.unwrap_or(min).clamp(min, ceiling);
        let mut host = Controller::new(start, now);
        let out = f(&mut host, now);
        hosts.insert(key, host);
        drop(hosts);
        if let Some(tell) = &self.on_change {
            tell(key, start);
        }
        out
    }
}

/// One host's limit, and the window being measured.
#[derive(Clone, Debug)]
pub(crate) struct Controller {
    /// The limit, fractional so that small steps add up.
    limit: f64,
    /// The host's latency without a queue, in seconds (none measured yet).
    base: Option<f64>,
    window_start: Instant,
    /// Latency samples in the window, and their sum in seconds.
    samples: u32,
    sum: f64,
    /// The most requests in flight any sample of the window saw.
    max_in_flight: usize,
    /// `429` and `503` answers in the window.
    rejected: u32,
    /// No increase before this (a `Retry-After`).
    hold_until: Option<Instant>,
    /// The host answered `429` or `503` lately: until this, it is taken to
    /// bound its own queue.
    shedding_until: Option<Instant>,
}

impl Controller {
    pub(crate) fn new(start: usize, now: Instant) -> Self {
        Controller {
            limit: start as f64,
            base: None,
            window_start: now,
            samples: 0,
            sum: 0.0,
            max_in_flight: 0,
            rejected: 0,
            hold_until: None,
            shedding_until: None,
        }
    }

    /// The limit, kept within `min..=ceiling`.
    pub(crate) fn current(&self, min: usize, ceiling: usize) -> usize {
        // `as` saturates (and maps NaN to 0): no overflow.
        (self.limit.floor() as usize).clamp(min, ceiling.max(min))
    }

    /// Takes `sample`; at the end of a window, moves the limit and returns
    /// it if it changed.
    pub(crate) fn sample(
        &mut self,
        sample: &Sample,
        now: Instant,
        min: usize,
        ceiling: usize,
    ) -> Option<usize> {
        if sample.overloaded {
            self.rejected = self.rejected.saturating_add(1);
            if let Some(wait) = sample.retry_after {
                let until = now.checked_add(wait);
                self.hold_until = self.hold_until.max(until);
            }
        } else if !sample.dialed {
            self.samples = self.samples.saturating_add(1);
            self.sum += sample.latency.as_secs_f64();
        }
        self.max_in_flight = self.max_in_flight.max(sample.in_flight);
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW || (self.samples < MIN_SAMPLES && self.rejected == 0) {
            return None;
        }
        let before = self.current(min, ceiling);
        self.decide(now, before, min, ceiling);
        self.window_start = now;
        self.samples = 0;
        self.sum = 0.0;
        self.max_in_flight = 0;
        self.rejected = 0;
        let after = self.current(min, ceiling);
        (after != before).then_some(after)
    }

    fn decide(&mut self, now: Instant, limit: usize, min: usize, ceiling: usize) {
        let (lo, hi) = (min as f64, ceiling.max(min) as f64);
        // Back from outside the bounds (a ceiling changed) before anything.
        self.limit = self.limit.clamp(lo, hi);
        if self.rejected > 0 {
            // Cut by up to a tenth, by the share of answers that were
            // refusals: a limit one past what the host queues is refused
            // again and again (a refusal comes back at once and its slot
            // goes out again), one that touches the edge now and then is
            // refused a few times.
            let answers = f64::from(self.rejected) + f64::from(self.samples);
            let share = f64::from(self.rejected) / answers;
            self.limit = (self.limit * (1.0 - OVERLOAD_CUT * share)).max(lo);
            self.shedding_until = now.checked_add(SHEDDING_MEMORY);
            return;
        }
        let shedding = self.shedding_until.is_some_and(|t| now < t);
        if self.samples == 0 {
            return;
        }
        let mean = self.sum / f64::from(self.samples);
        let reached = self.max_in_flight >= limit;
        let base = match self.base {
            None => mean,
            Some(base) if mean <= base => mean,
            // A window that did not fill the limit (or at the minimum,
            // where nothing else can move) shows the host's own latency:
            // the base moves a tenth of the way up to it. A full one may
            // only lower the base: its queue is the limit's doing.
            Some(base) if !reached || limit <= min => base + (mean - base) * BASE_RISE,
            Some(base) => base,
        };
        let base = if base > 0.0 {
            base
        } else {
            mean.max(f64::MIN_POSITIVE)
        };
        self.base = Some(base);
        // The host serves about `takes` at once; the rest of what was in
        // flight waited inside it.
        let ratio = mean / base;
        let in_flight = self.max_in_flight.min(limit).max(1) as f64;
        let takes = in_flight / ratio;
        let queue = in_flight - takes;
        // A few requests waiting inside the host keep it busy while answers
        // travel back and the next requests travel out: a queue of up to
        // `short` keeps growing, one past `long` is cut back to `short`.
        let short = (takes * SHORT_QUEUE).max(1.0);
        let long = (takes * LONG_QUEUE).max(2.0);
        let may_grow = reached && self.hold_until.is_none_or(|t| now >= t);
        if ratio > QUEUE_AT && queue > long && !shedding {
            self.limit = (takes + short)
                .max(self.limit * QUEUE_CUT_FLOOR)
                .clamp(lo, hi);
        } else if may_grow && queue < short {
            self.hold_until = None;
            let step = (self.limit * GROWTH).max(1.0);
            self.limit = (self.limit + step).clamp(lo, hi);
        } else if may_grow && shedding {
            // A host that sheds load bounds its own queue: keep it full,
            // probing slowly (one more every fourth window) for the edge
            // that the next 429 or 503 cuts back from.
            self.hold_until = None;
            self.limit = (self.limit + SHEDDING_PROBE).clamp(lo, hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(latency_ms: u64, in_flight: usize) -> Sample {
        Sample {
            latency: Duration::from_millis(latency_ms),
            in_flight,
            dialed: false,
            overloaded: false,
            retry_after: None,
        }
    }

    /// Feeds `n` samples of `latency_ms` over one window per call, the
    /// host's in flight at `in_flight(limit)`; returns the limit.
    async fn window(
        c: &mut Controller,
        n: u32,
        sample: impl Fn(usize) -> Sample,
        min: usize,
        ceiling: usize,
    ) -> usize {
        for _ in 0..n {
            let limit = c.current(min, ceiling);
            c.sample(&sample(limit), Instant::now(), min, ceiling);
        }
        tokio::time::advance(WINDOW).await;
        let limit = c.current(min, ceiling);
        c.sample(&sample(limit), Instant::now(), min, ceiling);
        c.current(min, ceiling)
    }

    /// A server with `workers` workers taking `service` ms each: a
    /// request's latency when `in_flight` are in flight.
    fn server(workers: usize, service: u64) -> impl Fn(usize) -> Sample {
        move |in_flight| {
            let queue = in_flight.saturating_sub(workers) as u64;
            let latency = service + queue * service / workers.max(1) as u64;
            at(latency, in_flight)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_grows_while_there_is_no_queue_and_the_limit_is_reached() {
        let mut c = Controller::new(2, Instant::now());
        let mut limits = vec![2];
        for _ in 0..20 {
            limits.push(window(&mut c, 10, server(24, 5), 1, 64).await);
        }
        assert!(limits.windows(2).all(|w| w[1] > w[0]), "{limits:?}");
        // Faster than adding 1 a window: 2 -> 24 within 20 windows.
        assert!(limits[20] >= 24, "{limits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_settles_near_what_the_host_takes() {
        for workers in [2usize, 8, 24] {
            let mut c = Controller::new(1, Instant::now());
            let mut last = 0;
            for _ in 0..200 {
                last = window(&mut c, 10, server(workers, 5), 1, 64).await;
            }
            assert!(
                last >= workers && last <= workers * 3 / 2 + 1,
                "{workers} workers: limit {last}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_cuts_the_limit_to_about_what_the_host_takes() {
        let mut c = Controller::new(1, Instant::now());
        for _ in 0..100 {
            window(&mut c, 10, server(24, 5), 1, 64).await;
        }
        assert!(c.current(1, 64) >= 24);
        // The host now takes 2: within 4 windows the limit is near 2.
        let mut limits = Vec::new();
        for _ in 0..4 {
            limits.push(window(&mut c, 10, server(2, 5), 1, 64).await);
        }
        assert!(limits[3] <= 4, "{limits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_changes_while_the_limit_is_not_reached() {
        let mut c = Controller::new(10, Instant::now());
        // 3 in flight of 10, no queue: no reason to grow.
        for _ in 0..50 {
            assert_eq!(window(&mut c, 10, |_| at(5, 3), 1, 64).await, 10);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn samples_that_paid_a_dial_are_left_out() {
        let mut c = Controller::new(8, Instant::now());
        for _ in 0..10 {
            window(&mut c, 10, server(8, 5), 1, 64).await;
        }
        let before = c.current(1, 64);
        // Dials of 200 ms in full windows: ignored, while the rest show
        // no queue.
        let limit = window(
            &mut c,
            10,
            |n| Sample {
                dialed: true,
                ..at(200, n)
            },
            1,
            64,
        )
        .await;
        assert!(limit >= before, "{before} -> {limit}");
    }

    #[tokio::test(start_paused = true)]
    async fn overload_cuts_and_retry_after_holds_growth() {
        let mut c = Controller::new(20, Instant::now());
        window(&mut c, 10, server(64, 5), 1, 64).await;
        let before = c.current(1, 64);
        let overloaded = |n| Sample {
            overloaded: true,
            retry_after: Some(Duration::from_secs(1)),
            ..at(1, n)
        };
        let after = window(&mut c, 1, overloaded, 1, 64).await;
        assert!(after < before, "{before} -> {after}");
        // No queue and the limit reached, but Retry-After holds it for 1 s.
        for _ in 0..30 {
            assert_eq!(window(&mut c, 10, server(64, 5), 1, 64).await, after);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(window(&mut c, 10, server(64, 5), 1, 64).await > after);
    }

    /// A host with `workers` workers that queues at most `bound` requests
    /// and refuses the rest at once (a refused slot goes out again and is
    /// refused again: `RESENDS` refusals a window per slot over the edge).
    async fn shedding_window(c: &mut Controller, workers: usize, bound: usize) -> (usize, bool) {
        const RESENDS: usize = 20;
        let limit = c.current(1, 64);
        let edge = workers + bound;
        let over = limit.saturating_sub(edge);
        for _ in 0..over * RESENDS {
            let refused = Sample {
                overloaded: true,
                ..at(1, limit)
            };
            c.sample(&refused, Instant::now(), 1, 64);
        }
        let served = limit.min(edge);
        for _ in 0..10 {
            c.sample(&server(workers, 5)(served), Instant::now(), 1, 64);
        }
        tokio::time::advance(WINDOW).await;
        c.sample(&server(workers, 5)(served), Instant::now(), 1, 64);
        (c.current(1, 64), over > 0)
    }

    #[tokio::test(start_paused = true)]
    async fn against_a_host_that_sheds_load_the_limit_keeps_its_queue_full() {
        // 8 workers: the latency holds the limit near 8 + 2 (a short
        // queue).
        let mut c = Controller::new(1, Instant::now());
        for _ in 0..100 {
            window(&mut c, 10, server(8, 5), 1, 64).await;
        }
        let by_latency = c.current(1, 64);
        assert!((9..=12).contains(&by_latency), "{by_latency}");
        // The host refuses once (it queued nothing for a moment), then
        // queues up to 8 and refuses past that: 16 keeps it busy.
        shedding_window(&mut c, 8, 0).await;
        for _ in 0..40 {
            shedding_window(&mut c, 8, 8).await;
        }
        let mut limits = Vec::new();
        let mut refused = 0;
        for _ in 0..400 {
            let (limit, over) = shedding_window(&mut c, 8, 8).await;
            limits.push(limit);
            refused += usize::from(over);
        }
        // The latency alone would cut a queue of 8 back to about 8 + 2;
        // the refusals show the host bounds its queue, so the limit fills
        // it.
        let full = limits.iter().filter(|&&l| l >= 16).count();
        assert!(full * 10 >= limits.len() * 8, "{limits:?}");
        assert!(limits.iter().all(|&l| (14..=18).contains(&l)), "{limits:?}");
        // It probes past the edge now and then, not in most windows.
        assert!(
            refused * 5 <= limits.len(),
            "{refused} windows refused: {limits:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_that_refuses_everything_drives_the_limit_to_its_minimum() {
        let mut c = Controller::new(32, Instant::now());
        let refused = |n| Sample {
            overloaded: true,
            ..at(1, n)
        };
        for _ in 0..60 {
            window(&mut c, 10, refused, 2, 64).await;
        }
        assert_eq!(c.current(2, 64), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_stays_within_min_and_the_ceiling() {
        let mut c = Controller::new(4, Instant::now());
        for _ in 0..100 {
            let limit = window(&mut c, 10, server(64, 5), 3, 16).await;
            assert!((3..=16).contains(&limit), "{limit}");
        }
        assert_eq!(c.current(3, 16), 16);
        for _ in 0..100 {
            let limit = window(&mut c, 10, server(1, 5), 3, 16).await;
            assert!((3..=16).contains(&limit), "{limit}");
        }
        // At the minimum the base may rise (the host may have slowed for
        // good), so the limit probes one above it now and then.
        assert!((3..=4).contains(&c.current(3, 16)));
    }
}
