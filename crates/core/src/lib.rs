//! # recompose-core
//!
//! The ground floor of the recompose workspace: what every other crate builds on and nothing in
//! it knows about hypervectors, diffusion or composition.
//!
//! - [`random`]: the one seeded random generator of the workspace ([`SeededRng`], ChaCha with 8
//!   rounds) and the draws made from it (standard normal, uniform, bipolar values, as host
//!   vectors or tensors). candle's CPU generator cannot be seeded, so every random number in
//!   recompose comes from here and reaches a device through `Tensor::from_vec`: the same seed
//!   gives the same numbers on every device.
//!
//! ## Example
//!
//! ```
//! use candle_core::Device;
//! use recompose_core::random::{normal, seeded};
//!
//! let a = normal(&mut seeded(7), &[2, 3], &Device::Cpu)?;
//! let b = normal(&mut seeded(7), &[2, 3], &Device::Cpu)?;
//! assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
//! # Ok::<(), recompose_core::Error>(())
//! ```
#![warn(missing_docs)]

pub mod error;
pub mod random;

pub use error::{Error, Result};
pub use random::{SeededRng, seeded};
