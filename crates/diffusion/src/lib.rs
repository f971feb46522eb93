//! # recompose-diffusion
//!
//! The diffusion-model foundation of recompose.
//!
//! ## Present now
//!
//! - [`schedule`]: the continuous variance-preserving SDE [`VpSde`] (Song et al. 2021, "Score-Based
//!   Generative Modeling through Stochastic Differential Equations"): `dx = −½ β(t) x dt +
//!   √β(t) dw` with a linear β(t), its closed-form marginal α(t), σ(t) ([`Marginal`]), the
//!   log-SNR and its exact inverse, drift and diffusion coefficients, and linear and
//!   log-SNR-uniform time grids for samplers. All of it is plain `f64` math.
//! - [`schedule::discrete`]: discrete noise schedules as values, [`DiscreteSchedule`] (DDPM, Ho
//!   et al. 2020): linear, scaled-linear and cosine (Nichol & Dhariwal 2021) betas, user-supplied
//!   betas or ᾱ, the DDPM posterior coefficients ([`Posterior`]), zero-terminal-SNR rescaling and
//!   timestep [`Spacing`] (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
//!   are Flawed"), and respacing to a subset of the steps for DDIM (Song et al. 2021). Also plain
//!   `f64` math.
//! - [`Error`] and [`Result`], the crate's error type.
//!
//! ## Still to come
//!
//! - the ε, x₀ and v parameterizations with exact conversions between them and to the score;
//! - one denoiser interface that every model implements, so that samplers, composition operators
//!   and decomposition work on any model;
//! - seeded samplers (DDPM, DDIM, reverse-SDE Euler–Maruyama, probability-flow ODE);
//! - the residual-MLP and U-Net denoisers and a training loop with exact resume.
//!
//! ## Example
//!
//! ```
//! use recompose_diffusion::VpSde;
//!
//! let sde = VpSde::linear();
//! // α(1) = exp(−¼ (β_max − β_min) − ½ β_min) = exp(−5.025) for β_min = 0.1, β_max = 20.
//! assert!((sde.alpha(1.0) - (-5.025f64).exp()).abs() < 1e-15);
//! // Ten sampler steps, equally spaced in log-SNR, from t = 1 down to t = 10⁻³.
//! let times = sde.time_grid_log_snr(10)?;
//! assert_eq!(times.len(), 11);
//! assert!(times.windows(2).all(|w| w[0] > w[1]));
//! # Ok::<(), recompose_diffusion::Error>(())
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod schedule;

pub use error::{Error, Result};
pub use schedule::{DiscreteSchedule, Marginal, Posterior, Spacing, VpSde};
