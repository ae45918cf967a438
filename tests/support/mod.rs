//! Test support, one concern a file: loopback servers that count what they
//! accept (`servers`), servers that break the rules (`raw`), and the load
//! driver with what the process holds (`load`).
#![allow(dead_code, unreachable_pub, unused_imports)]

mod load;
mod raw;
mod servers;

pub use load::*;
pub use raw::*;
pub use servers::*;
