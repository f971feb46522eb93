//! Decomp Diffusion (Su et al., ICML 2024): unsupervised decomposition of images into factors
//! that each condition one shared denoiser.
//!
//! - [`encoder`]: the latent encoder (conv stem, three ResNet levels with batch norm, a linear
//!   head with ReLU) under the released code's parameter names, with training and evaluation
//!   batch-norm behaviour.

pub mod encoder;

pub use encoder::{BatchNorm2d, EncoderConfig, LatentEncoder};
