//! # recompose-diffusion
//!
//! The diffusion-model foundation of recompose. This crate will hold:
//!
//! - noise schedules as values (discrete linear, scaled-linear and cosine schedules, user-supplied
//!   betas, zero-terminal-SNR rescaling, timestep spacing and respacing) and the continuous VP-SDE
//!   view (α(t), σ(t), log-SNR, drift and diffusion);
//! - the ε, x₀ and v parameterizations with exact conversions between them and to the score;
//! - one denoiser interface that every model implements, so that samplers, composition operators
//!   and decomposition work on any model;
//! - seeded samplers (DDPM, DDIM, reverse-SDE Euler–Maruyama, probability-flow ODE);
//! - the residual-MLP and U-Net denoisers and a training loop with exact resume.
//!
//! It is empty for now: its contents arrive with the diffusion-model foundation work.
