//! # recompose-diffusion
//!
//! The diffusion-model foundation of recompose.
//!
//! ## Contents
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
//! - [`param`]: the ε, x₀ and v ([`Parameterization`]; v from Salimans & Ho 2022) predictions
//!   with exact conversions between them and to the score, and the training helpers
//!   [`add_noise`] and [`v_target`].
//! - [`denoiser`]: the one [`Denoiser`] interface every model implements (x_t, per-sample time,
//!   optional conditioning → a prediction in its parameterization), so that samplers, composition
//!   operators and decomposition work on any model; [`NoiseLevels`], the map from a schedule's
//!   time values to (α, σ); and the exact [`GaussianMixtureDenoiser`] for data distributed as an
//!   isotropic [`GaussianMixture`], the ground truth of the sampler tests.
//! - [`sampler`]: seeded samplers, all with per-sample timesteps and returning both the next
//!   sample and x̂₀ ([`StepOutput`]): DDPM ancestral with fixed-small and fixed-large variance
//!   (Ho et al. 2020), DDIM with η (Song, Meng, Ermon 2021), the reverse-SDE Euler–Maruyama and
//!   probability-flow ODE (Euler and Heun) samplers (Song et al. 2021), over a
//!   [`DiscreteSchedule`] ([`Sampler`], the schedule read as a VP-SDE in ρ = −ln ᾱ) or on
//!   [`VpSde`] time grids ([`SdeSampler`]), with optional x̂₀ clipping, and the one-call
//!   [`sample`]. Every update rule is written once, over noise levels (α, σ), in
//!   [`sampler::step`] ([`StepRule`]), with a tensor form and a host form that composition and
//!   factorization use for their own loops.
//! - [`data`]: the [`data::Dataset`] interface, the 2-D toy distributions of Du et al. 2023
//!   ([`data::Toy2d`]), PNG image folders ([`data::ImageFolder`]) and PNG grid and scatter plots.
//! - [`nn`]: the models — [`nn::ResidualMlp`], the residual MLP of the 2-D experiments of Du et
//!   al. 2023, and [`nn::UNet`], a configurable improved-diffusion / GLIDE U-Net (Nichol &
//!   Dhariwal 2021) whose parameter names follow the PyTorch state dicts (it loads converted
//!   Decomp Diffusion weights unchanged) — on seeded, name-keyed parameters ([`nn::ParamStore`]).
//!   The energy parameterization [`nn::EnergyMlp`] (ε̂ = ∇ₓE, trainable through its
//!   hand-written input gradient) and [`nn::FrozenMlp`] (fast host inference for samplers).
//! - [`text`]: text conditioning (Rombach et al. 2022): [`text::TextTokenizer`], Hugging Face
//!   `tokenizer.json` tokenizers (word-level ones built here, or published ones such as CLIP's
//!   BPE), and [`text::TextEncoder`], a small pre-norm transformer over the tokens.
//! - [`train`]: the denoising objective and a training loop with AdamW, warm-up and decay,
//!   gradient clipping, EMA, loss logs and atomic checkpoints that resume bit for bit.
//! - [`run`]: training runs as TOML configurations with named presets (the `toy2d-*` setups),
//!   and loading a trained model back ([`run::Trained`]).
//! - [`memory`]: memory estimates of the networks, their training and sampling, checked by the
//!   memory guard of `recompose_core::memory` before anything is allocated.
//! - [`metrics`]: exact optimal assignment and the exact Wasserstein-2 distance between samples.
//! - [`random`]: the seeded RNG ([`SeededRng`], ChaCha8) every random draw comes from, since
//!   candle's CPU generator cannot be seeded (re-exported from `recompose-core`, the one home of
//!   the workspace's randomness).
//! - [`Error`] and [`Result`], the crate's error type.
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
#![forbid(unsafe_code)]

pub mod data;
pub mod denoiser;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod nn;
pub mod param;
/// Seeded random draws: the workspace's one generator, from `recompose-core`.
pub use recompose_core::random;
pub mod run;
pub mod sampler;
pub mod schedule;
pub mod text;
pub mod train;

pub use denoiser::{Denoiser, GaussianMixture, GaussianMixtureDenoiser, NoiseLevels};
pub use error::{Error, Result};
pub use param::{Parameterization, add_noise, v_target};
pub use random::{SeededRng, seeded};
pub use sampler::{
    DdpmVariance, Sampler, SamplerConfig, SamplerKind, SdeSampler, StepOutput, StepRule, sample,
};
pub use schedule::{DiscreteSchedule, Marginal, Posterior, Spacing, TimeGrid, VpSde};

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
