//! # recompose-compose
//!
//! Compositional generation with diffusion models, after Du et al., *Reduce, Reuse, Recycle:
//! Compositional Generation with Energy-Based Diffusion Models and MCMC* (ICML 2023, arXiv
//! 2302.11552):
//!
//! - [`component`]: the [`Component`] interface — per-sample (log-density, score) at a noise
//!   level — and its leaves: any denoiser as a score model, energy models (E = ‖g − x‖² or
//!   ½‖g‖², [`recompose_diffusion::nn::energy`]), exact Gaussian mixtures;
//! - [`ops`]: products (AND), mixtures (OR, energy models only), negation (NOT),
//!   classifier-free guidance with several conditions, classifier guidance — all nestable;
//! - [`mcmc`]: annealed samplers per chain — reverse diffusion with the composed ε, ULA, U-HMC,
//!   MALA, HMC, interleaved with reverse steps or pure, with constant, β-proportional or adapted
//!   step sizes and acceptance rates per level;
//! - [`expr`] and [`tree`]: the expression language (`1.3*box_large NOT 0.3*box_small`,
//!   `"red circle" AND "blue square" NOT "green"`) and its translation into operators;
//! - [`prompt`]: prompt algebra for text-conditioned models (Liu et al., *Composable
//!   Diffusion*, ECCV 2022): the prompts of one model in a product share one unconditional
//!   base, s = s_u + Σ_i c_i (s_i − s_u), evaluated in one batched network call;
//! - [`experts`]: one text model made of expert networks for bands of noise levels (eDiff-I);
//! - [`respace`]: any composition sampled on fewer noise levels than its models were trained
//!   with (the DDIM / improved-DDPM respacing).
//!
//! ## Example: the product of two Gaussians
//!
//! ```
//! use recompose_compose::{AnalyticLeaf, AnnealConfig, Kernel, Product, StepSize, anneal};
//! use recompose_diffusion::{DiscreteSchedule, GaussianMixture, seeded};
//!
//! let schedule = DiscreteSchedule::cosine(50, 0.008)?;
//! let a = AnalyticLeaf::new("a", GaussianMixture::gaussian(vec![1.0], 0.5)?, schedule.clone());
//! let b = AnalyticLeaf::new("b", GaussianMixture::gaussian(vec![-1.0], 0.5)?, schedule);
//! // N(1, ½) · N(−1, ½) ∝ N(0, ¼).
//! let product = Product::new(vec![(1.0, Box::new(a)), (1.0, Box::new(b))])?;
//! // HMC with a leapfrog step suited to a target of standard deviation ½.
//! let mut config = AnnealConfig::paper_2d(Kernel::Hmc);
//! config.step_size = StepSize::Constant(0.15);
//! config.mcmc_steps = 4;
//! let out = anneal(&product, &config, 2000, &mut seeded(0))?;
//! let samples = out.samples_vec()?; // [n, d] on the model's device, read to the host
//! let mean = samples.iter().sum::<f32>() / 2000.0;
//! let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 2000.0;
//! assert!(mean.abs() < 0.05 && (var - 0.25).abs() < 0.03, "{mean} {var}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod component;
pub mod error;
pub mod experts;
pub mod expr;
pub mod mcmc;
pub mod ops;
pub mod prompt;
pub mod respace;
pub mod tree;

pub use component::{AnalyticLeaf, Component, EnergyLeaf, Eval, ScoreLeaf};
pub use error::{Error, Result};
pub use experts::LevelExperts;
pub use expr::{Expr, ParseError, parse};
pub use mcmc::{
    AnnealConfig, AnnealOutput, Kernel, LevelStats, Mass, StepSize, anneal, mcmc_at_level,
};
pub use ops::{
    DEFAULT_NEGATION, Mixture, Product, classifier_free_guidance, classifier_guidance, negation,
};
pub use prompt::{GuidedPrompts, Prediction, PromptModel, PromptModels, PromptNetwork};
pub use respace::Respaced;
pub use tree::{build, build_with};

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
