//! Glue for HTTP clients, behind cargo features.

#[cfg(feature = "hyper-util")]
pub(crate) mod hyper_util;

#[cfg(feature = "reqwest")]
pub mod reqwest;
