//! poolguard's test kit, one concern a file: loopback servers that count
//! what they accept (`servers`), servers that break the rules (`raw`), one scripted response
//! served alike to a bare and a guarded client (`script`), nginx started with its own
//! configuration (`nginx`), and
//! the load driver with what the process holds (`load`). Used by the
//! crate's tests, its demo and its benchmarks; never published.

#![allow(missing_docs)]

mod load;
mod memory;
mod nginx;
mod raw;
mod redis;
mod refuse;
mod resolve;
mod script;
mod servers;

pub use load::*;
pub use memory::in_memory_origin;
pub use nginx::*;
pub use raw::*;
pub use redis::Redis;
pub use refuse::*;
pub use resolve::{Loopback, Switch};
pub use script::*;
pub use servers::*;

/// The error type of the load driver's requests (the same as
/// `poolguard::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
