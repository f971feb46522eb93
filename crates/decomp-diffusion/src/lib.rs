//! # recompose-decomp-diffusion
//!
//! Decomp Diffusion (Su, Liu, Wang, Tenenbaum, Du, *Compositional Image Decomposition with
//! Diffusion Models*, ICML 2024): an encoder maps an image to K latent factors, each factor
//! conditions one shared denoiser, and composing the K denoisers reconstructs the image; factors
//! taken from different images (or models) recombine into new scenes. Training needs no labels.
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
//! - [`datasets`]: procedural image datasets with ground truth (masks, object attributes, global
//!   factors): tetrominoes, multi-sprites and its night domain, Falcor-lite — the module
//!   `objects` of `recompose-scenes`, re-exported.
//!
//! The U-Net, the noise schedule, the samplers and the training loop come from
//! `recompose-diffusion`; this crate adds the encoder, the composition of the K conditioned
//! predictions and everything specific to decomposition.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod encoder;
pub mod error;
pub mod eval;
pub mod model;
pub mod render;
pub mod run;
pub mod train;

pub use recompose_scenes::objects as datasets;

pub use config::DecompConfig;
pub use encoder::{BatchNorm2d, EncoderConfig, LatentEncoder};
pub use error::{Error, Result};
pub use model::{Conditioned, DecompModel};
pub use render::{Factor, FactorMix};
pub use run::{DECOMP_PRESET_NAMES, DecompRunConfig, DecompTrained, SceneData};
pub use train::{DecompLoss, SceneDataset};

/// The folder of the released code's reference data for the comparison tests
/// (`../shared/reference/decomp-diffusion` next to the workspace). Those tests are ignored by
/// default; run with `--ignored`, they fail loudly here when the data is absent rather than
/// pass without comparing anything.
#[cfg(test)]
fn reference_data() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/decomp-diffusion");
    assert!(
        dir.join("small_model.safetensors").is_file(),
        "the reference data is not at {} (see its README for how it is made)",
        dir.display()
    );
    dir
}

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
