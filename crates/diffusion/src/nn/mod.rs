//! Neural-network building blocks and the denoiser models.
//!
//! - [`ParamStore`]: trainable variables with seeded, name-keyed initialization, usable as a
//!   [`candle_nn::VarBuilder`] backend.
//! - [`layers`]: PyTorch-initialized layers under PyTorch parameter names, a differentiable
//!   [`LayerNorm`](layers::LayerNorm), the sinusoidal timestep embedding, seeded dropout.
//! - [`conv`]: 2-D convolution ([`Conv2d`](conv::Conv2d)) as matrix products on the CPU, any
//!   stride, exact backward passes.
//! - [`mlp`]: the residual MLP denoiser of the 2-D experiments of Du et al. (2023).
//! - [`energy`]: the energy parameterization of the residual MLP (ε̂ = ∇ₓE), with a
//!   hand-written, differentiable input gradient for training.
//! - [`unet`]: the improved-diffusion / GLIDE U-Net ([`UNet`]) of Decomp Diffusion (Su et al.
//!   2024), with the PyTorch state-dict names of the released code.

pub mod conv;
pub mod energy;
pub mod energy_unet;
pub mod frozen;
pub mod layers;
pub mod mlp;
pub mod mlp_grad;
pub mod store;
pub mod unet;

pub use energy::{EnergyForm, EnergyMlp};
pub use energy_unet::EnergyUNet;
pub use frozen::FrozenMlp;
pub use mlp::{MlpConfig, ResidualMlp};
pub use store::ParamStore;
pub use unet::{TokenContext, UNet, UNetConfig};
