//! Future types of [`ReuseMetrics`](super::ReuseMetrics).

pub use super::layer::ResponseFuture;
