//! # recompose-decomp
//!
//! Factorization of compositional representations: recovering the factors of a bound
//! hypervector s = x₁ ⊙ … ⊙ x_F from known codebooks.
//!
//! - [`problem`]: factorization problems — F codebooks, bound hypervectors s = x₁ ⊙ … ⊙ x_F and
//!   their corruption by noise, all from one seed.
//! - [`factorize`]: the methods, all batched over trials behind one entry point,
//!   [`factorize::factorize`]:
//!   - [`factorize::coupled`]: coupled inference in diffusion models (Yeung et al. 2026) — one
//!     closed-form diffusion per factor, coupled by guidance from a reconstruction energy, with
//!     restarts;
//!   - resonator networks (classic with OP and OLS weights, sequential and synchronous; the
//!     stochastic, sparse resonator; the attention resonator) and alternating least squares.
//! - [`capacity`]: the operational capacity of a method (Kent et al. 2020): the largest codebook
//!   size still factorized with a target exact accuracy.
//!
//! ```
//! use candle_core::Device;
//! use recompose_decomp::factorize::{factorize, FactorizeConfig, Method};
//! use recompose_decomp::problem::{Problem, ProblemConfig};
//!
//! let problem = Problem::generate(&ProblemConfig::map(1000, 3, 10, 20, 7), &Device::Cpu)?;
//! let config = FactorizeConfig {
//!     method: Method::from_name("resonator")?,
//!     max_iters: 100,
//!     seed: 7,
//!     threads: 0,
//! };
//! let report = factorize(&problem, &config, &mut |_| {})?;
//! assert!(report.exact_accuracy > 0.9);
//! # Ok::<(), recompose_decomp::Error>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod capacity;
pub mod error;
pub mod factorize;
mod linalg;
pub mod problem;
mod trials;

pub use error::{Error, Result};

/// The README's code examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExamples;

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
