//! Deadlines that never overflow, and timers that do not panic on a runtime
//! built without `enable_time`.
//!
//! tokio offers no way to ask whether the current runtime has a timer: its
//! timer functions panic when it has none. So the first timer poolguard
//! makes on such a runtime catches that panic (the process's panic hook
//! still runs, once), and the runtime is remembered, so no later timer on
//! it panics again. Under `panic = "abort"` nothing can be caught: there a
//! runtime without timers aborts the process at poolguard's first timer
//! (the crate docs' "Runtime requirements" say so).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use std::future::Future as _;

use tokio::time::{Instant, Sleep};

/// `after` from now, or `None` when that is past the end of time: a
/// `Duration::MAX` budget means no deadline.
pub(crate) fn deadline_in(after: Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
}

/// Runtimes seen without a timer (at most a few are remembered).
static NO_TIMER: Mutex<Vec<tokio::runtime::Id>> = Mutex::new(Vec::new());
const REMEMBERED: usize = 16;

/// A `Sleep` until `deadline`, or `None` outside a runtime or when the
/// current runtime has no timer.
pub(crate) fn sleep_until(deadline: Instant) -> Option<Sleep> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let id = handle.id();
    let known = |ids: &Vec<tokio::runtime::Id>| ids.contains(&id);
    if known(&NO_TIMER.lock().unwrap_or_else(PoisonError::into_inner)) {
        return None;
    }
    make(deadline, id)
}

#[cfg(panic = "unwind")]
fn make(deadline: Instant, id: tokio::runtime::Id) -> Option<Sleep> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    match catch_unwind(AssertUnwindSafe(|| tokio::time::sleep_until(deadline))) {
        Ok(sleep) => Some(sleep),
        Err(_) => {
            let mut ids = NO_TIMER.lock().unwrap_or_else(PoisonError::into_inner);
            if ids.len() >= REMEMBERED {
                ids.remove(0);
            }
            ids.push(id);
            tracing::warn!(
                "poolguard: the tokio runtime has no timer (build it with `enable_time` or \
                 `enable_all`); deadlines are not enforced and drains are skipped"
            );
            None
        }
    }
}

#[cfg(not(panic = "unwind"))]
fn make(deadline: Instant, _id: tokio::runtime::Id) -> Option<Sleep> {
    // Nothing can be caught: a runtime without timers aborts here.
    let _ = REMEMBERED;
    Some(tokio::time::sleep_until(deadline))
}

pin_project_lite::pin_project! {
    /// A timer that fires once every `period`, from its first poll (for
    /// checks made while something waits). Never fires on a runtime without
    /// a timer. Pinned where it is polled (on the stack of the future that
    /// waits, or boxed): no allocation of its own.
    #[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
    pub(crate) struct Every {
        period: Duration,
        #[pin]
        sleep: Option<Sleep>,
    }
}

#[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
impl Every {
    pub(crate) fn new(period: Duration) -> Self {
        Every {
            period,
            sleep: None,
        }
    }

    /// Whether a period ended since the last time it said so (call until
    /// `false`: that poll registers the task for the next one).
    pub(crate) fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> bool {
        let mut this = self.project();
        let period = *this.period;
        let next = || Instant::now().checked_add(period);
        if this.sleep.as_mut().as_pin_mut().is_none() {
            match next().and_then(sleep_until) {
                Some(sleep) => this.sleep.set(Some(sleep)),
                None => return false,
            }
        }
        let Some(mut sleep) = this.sleep.as_mut().as_pin_mut() else {
            return false;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        match next() {
            Some(at) => sleep.reset(at),
            None => this.sleep.set(None),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_time_is_no_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(deadline_in(Duration::MAX).is_none());
            assert!(deadline_in(Duration::from_secs(1)).is_some());
        });
    }

    #[test]
    fn no_timer_no_panic_and_remembered() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let at = Instant::now() + Duration::from_secs(1);
            assert!(sleep_until(at).is_none());
            assert!(sleep_until(at).is_none());
        });
        let id = rt.handle().id();
        assert!(NO_TIMER.lock().unwrap().contains(&id));
        let timed = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        timed.block_on(async {
            assert!(sleep_until(Instant::now()).is_some());
        });
        assert!(sleep_until(Instant::now()).is_none(), "outside a runtime");
    }
}
