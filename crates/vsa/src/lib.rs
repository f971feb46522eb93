//! # recompose-vsa
//!
//! Vector-symbolic architectures (hyperdimensional computing).
#![warn(missing_docs)]

pub mod error;
pub mod random;

pub use error::{Error, Result};
