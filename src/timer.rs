//! Timers that do not panic on a runtime built without `enable_time`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tokio::time::{Instant, Sleep};

/// A `Sleep` until `deadline`, or `None` when the current runtime has no
/// timer (tokio panics then; the panic is caught here).
pub(crate) fn sleep_until(deadline: Instant) -> Option<Sleep> {
    catch_unwind(AssertUnwindSafe(|| tokio::time::sleep_until(deadline))).ok()
}
