//! Decomp Diffusion (Su et al., ICML 2024): unsupervised decomposition of images into factors
//! that each condition one shared denoiser.
//!
//! - [`encoder`]: the latent encoder (conv stem, three ResNet levels with batch norm, a linear
//!   head with ReLU) under the released code's parameter names, with training and evaluation
//!   batch-norm behaviour.
//! - [`model`]: encoder and shared denoiser together — K-way batching with the mean over the
//!   factors, single-factor rendering, the training loss.
//! - [`config`]: the TOML configuration keyed like the released code's flags.
//! - [`run`]: training runs as TOML (`[decomp]`, `[data]`, `[train]`), the `decomp-*` presets,
//!   loading a trained run back.
//! - [`render`]: decomposition and recombination (slice, add, cross-model) as compositions of
//!   factors.
//! - [`eval`]: reconstruction error, object isolation (Hungarian IoU matching), MIG and MCC.
//! - [`train`]: the training objective for the foundation's loop, and the procedural datasets as
//!   training data.

pub mod config;
pub mod encoder;
pub mod eval;
pub mod model;
pub mod render;
pub mod run;
pub mod train;

pub use config::DecompConfig;
pub use encoder::{BatchNorm2d, EncoderConfig, LatentEncoder};
pub use model::{Conditioned, DecompModel};
pub use render::{Factor, FactorMix};
pub use run::{DECOMP_PRESET_NAMES, DecompRunConfig, DecompTrained, SceneData};
pub use train::{DecompLoss, SceneDataset};
