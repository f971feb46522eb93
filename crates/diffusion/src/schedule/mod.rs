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
//! - [`DiscreteSchedule`]: T discrete steps given by their betas (DDPM, Ho et al. 2020): the
//!   linear, scaled-linear and cosine (Nichol & Dhariwal 2021) families, user-supplied betas or
//!   ᾱ values, the DDPM posterior coefficients ([`Posterior`]), zero-terminal-SNR rescaling and
//!   sampler timestep [`Spacing`] (Lin et al. 2024), and DDIM-style respacing (Song et al. 2021).
//!   See the [`discrete`] module for the formulas and invariants.

pub mod discrete;
mod vp;

pub use discrete::{DiscreteSchedule, Posterior, Spacing};
pub use vp::{Marginal, TimeGrid, VpSde};
