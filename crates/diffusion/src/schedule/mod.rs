//! Noise schedules.
//!
//! A schedule is a plain value that describes how much signal and noise the forward (noising)
//! process leaves at each time; samplers and training code take it as an argument, so users can
//! pass their own.
//!
//! Present now:
//!
//! - [`VpSde`]: the continuous-time variance-preserving SDE with a linear β(t) (Song et al. 2021),
//!   with its closed-form marginal ([`Marginal`]), log-SNR and exact inverses, drift and
//!   diffusion coefficients, and time grids for samplers.
//!
//! Discrete schedules (linear, scaled-linear and cosine betas, user-supplied betas,
//! zero-terminal-SNR rescaling, timestep spacing and respacing) are still to come.

mod vp;

pub use vp::{Marginal, VpSde};
