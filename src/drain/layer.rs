use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::hook::OnDrain;
use super::service::Drain;
use crate::conn::Pricing;

/// Default byte budget of one drain: 64 KiB.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 64 * 1024;
/// Default time budget of one drain: 100 ms.
pub(crate) const DEFAULT_MAX_TIME: Duration = Duration::from_millis(100);
/// Default bound on drains running at once.
pub(crate) const DEFAULT_MAX_CONCURRENT: usize = 256;

/// The budgets of a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DrainConfig {
    pub(crate) max_bytes: u64,
    pub(crate) max_time: Duration,
    pub(crate) max_concurrent: usize,
}

/// What every [`Drain`] service and [`DrainBody`](super::DrainBody) made
/// from one layer shares.
pub(crate) struct Shared {
    pub(crate) config: DrainConfig,
    pub(crate) hook: Arc<dyn OnDrain>,
    /// Background drains running now: shared by every layer configured
    /// from one [`DrainLayer::new`], whatever was set after a clone.
    pub(crate) running: Arc<AtomicUsize>,
    /// What a new connection to each host costs and who waits for slots:
    /// set by a guard, so that a drain gives up once going on would cost
    /// more than a new connection while something waits.
    pub(crate) pricing: Option<Pricing>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

/// Wraps response bodies in [`DrainBody`](super::DrainBody), which drains
/// a body dropped before its end so its connection can be reused.
///
/// Clones of a layer, and every service made from it, share one count of
/// running drains. Setters change the budgets and the hook of the layer
/// they are called on and keep that count: a layer configured after it was
/// cloned still shares it with its clones.
///
/// See the [module docs](super) for the behaviour and the defaults.
#[derive(Clone)]
#[must_use]
pub struct DrainLayer {
    shared: Arc<Shared>,
}

impl DrainLayer {
    /// What every [`Drain`] of this layer shares.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A layer with the default budgets: 64 KiB, 100 ms, 256 concurrent
    /// drains, and no hook.
    pub fn new() -> Self {
        DrainLayer {
            shared: Arc::new(Shared {
                config: DrainConfig {
                    max_bytes: DEFAULT_MAX_BYTES,
                    max_time: DEFAULT_MAX_TIME,
                    max_concurrent: DEFAULT_MAX_CONCURRENT,
                },
                hook: Arc::new(()),
                running: Arc::default(),
                pricing: None,
            }),
        }
    }

    /// The same layer with other budgets or another hook: a new `Shared`
    /// (bodies already made keep theirs) with the same running count.
    fn with(self, config: DrainConfig, hook: Arc<dyn OnDrain>) -> Self {
        DrainLayer {
            shared: Arc::new(Shared {
                config,
                hook,
                running: self.shared.running.clone(),
                pricing: self.shared.pricing.clone(),
            }),
        }
    }

    /// Prices every drain: past the time a new connection to its host
    /// costs, a drain gives up while anything waits for the host's slots.
    pub(crate) fn priced(self, pricing: Pricing) -> Self {
        DrainLayer {
            shared: Arc::new(Shared {
                config: self.shared.config,
                hook: self.shared.hook.clone(),
                running: self.shared.running.clone(),
                pricing: Some(pricing),
            }),
        }
    }

    fn map_config(self, f: impl FnOnce(&mut DrainConfig)) -> Self {
        let mut config = self.shared.config;
        f(&mut config);
        let hook = self.shared.hook.clone();
        self.with(config, hook)
    }

    /// The most bytes one drain reads and discards before it gives up and
    /// drops the body (closing its connection). A body whose known remaining
    /// length exceeds it is not drained at all. Default: 64 KiB.
    pub fn max_bytes(self, max_bytes: u64) -> Self {
        self.map_config(|c| c.max_bytes = max_bytes)
    }

    /// The longest one drain runs before it gives up. Keep it well below the
    /// cost of a new connection. Default: 100 ms.
    pub fn max_time(self, max_time: Duration) -> Self {
        self.map_config(|c| c.max_time = max_time)
    }

    /// The most background drains running at once; a body dropped while
    /// that many run is dropped at once. Default: 256.
    pub fn max_concurrent(self, max_concurrent: usize) -> Self {
        self.map_config(|c| c.max_concurrent = max_concurrent)
    }

    /// Sets the hook told how each drain ended (replacing any earlier one).
    pub fn on_drain(self, hook: impl OnDrain) -> Self {
        let config = self.shared.config;
        self.with(config, Arc::new(hook))
    }

    /// The number of background drains running now, across every service
    /// and body made from this layer and its clones.
    pub fn running(&self) -> usize {
        self.shared
            .running
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for DrainLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DrainLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.shared.config;
        f.debug_struct("DrainLayer")
            .field("max_bytes", &c.max_bytes)
            .field("max_time", &c.max_time)
            .field("max_concurrent", &c.max_concurrent)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Drain::from_shared(inner, self.shared.clone())
    }
}
