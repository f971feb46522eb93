//! The configuration of a Decomp Diffusion model, keyed like the released code's flags.
//!
//! ```toml
//! image_size = 32
//! num_channels = 32
//! num_res_blocks = 1
//! channel_mult = [1, 2]
//! attention_resolutions = [16, 8]
//! emb_dim = 64              # latent size d = emb_dim / 2 = time-embedding size
//! num_components = 3
//! enc_channels = 64
//! num_head_channels = 64    # -1: one head of any width
//! dropout = 0.0
//! prediction = "x0"         # or "epsilon"
//! ```
//!
//! Fixed as in the released code: RGB in and out, GroupNorm with 16 groups, resampling inside the
//! residual blocks, no scale-shift norm, a single attention head unless `num_head_channels`
//! splits the channels. One difference: the released factory ignores `enc_channels` (its encoder
//! always has 64); here it is honoured (64 by default).

use std::path::Path;

use recompose_core::memory::Estimate;
use recompose_diffusion::Parameterization;
use recompose_diffusion::nn::UNetConfig;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A Decomp Diffusion model's settings (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecompConfig {
    /// Side of the square images.
    pub image_size: usize,
    /// Base channels of the denoiser.
    pub num_channels: usize,
    /// Residual blocks per level.
    pub num_res_blocks: usize,
    /// Channel multiplier per level.
    pub channel_mult: Vec<usize>,
    /// Feature-map resolutions with self-attention.
    pub attention_resolutions: Vec<usize>,
    /// Width of cat(z_k, t_emb): the latent size and the time-embedding size are half of it.
    pub emb_dim: usize,
    /// Number of factors K.
    pub num_components: usize,
    /// Width of the encoder's first level.
    pub enc_channels: usize,
    /// Channels per attention head; −1 for a single head.
    pub num_head_channels: i64,
    /// Dropout in the residual blocks.
    pub dropout: f64,
    /// What the denoiser predicts: `x0` (the paper) or `epsilon`.
    pub prediction: Parameterization,
}

impl Default for DecompConfig {
    /// The small reference configuration (32 px, 32 channels, K = 3, d = 32).
    fn default() -> Self {
        Self {
            image_size: 32,
            num_channels: 32,
            num_res_blocks: 1,
            channel_mult: vec![1, 2],
            attention_resolutions: vec![16, 8],
            emb_dim: 64,
            num_components: 3,
            enc_channels: 64,
            num_head_channels: 64,
            dropout: 0.0,
            prediction: Parameterization::X0,
        }
    }
}

impl DecompConfig {
    /// Parses TOML.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] with the parser's message (it names the line and the field) or a
    /// validation error.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if it cannot be read; as [`DecompConfig::from_toml`].
    pub fn from_file(path: &Path) -> Result<Self> {
        read_toml_file(path, Self::from_toml)
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first invalid field.
    pub fn validate(&self) -> Result<()> {
        if self.emb_dim == 0 || !self.emb_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "emb_dim must be a positive even number, got {}",
                self.emb_dim
            )));
        }
        if self.num_components == 0 || self.enc_channels == 0 {
            return Err(Error::Config(
                "num_components and enc_channels must be positive".into(),
            ));
        }
        if self.num_head_channels == 0 || self.num_head_channels < -1 {
            return Err(Error::Config(format!(
                "num_head_channels must be positive or -1, got {}",
                self.num_head_channels
            )));
        }
        if self.prediction == Parameterization::V {
            return Err(Error::Config(
                "prediction must be \"x0\" or \"epsilon\"".into(),
            ));
        }
        Ok(self.unet().validate()?)
    }

    /// The denoiser's configuration.
    pub fn unet(&self) -> UNetConfig {
        UNetConfig {
            image_size: self.image_size,
            in_channels: 3,
            out_channels: 3,
            model_channels: self.num_channels,
            channel_mult: self.channel_mult.clone(),
            num_res_blocks: self.num_res_blocks,
            attention_resolutions: self.attention_resolutions.clone(),
            num_heads: 1,
            num_head_channels: usize::try_from(self.num_head_channels).ok(),
            num_groups: 16,
            dropout: self.dropout,
            resblock_updown: true,
            use_scale_shift_norm: false,
            time_embed_dim: self.emb_dim / 2,
            cond_dim: self.emb_dim / 2,
            coord_channels: false,
            context_dim: 0,
        }
    }

    /// The latent size d of each factor.
    pub fn latent_dim(&self) -> usize {
        self.emb_dim / 2
    }

    /// Bytes of the model's parameters: the denoiser
    /// ([`recompose_diffusion::memory::unet_params`]) and the encoder (see
    /// [`crate::encoder`]), bounded by 800·E² + 32·E for its convolutions and norms plus
    /// 8E·r²·K·d for its last linear layer (E = `enc_channels`, r = ⌈S/8⌉).
    pub fn param_bytes(&self) -> Estimate {
        let e = self.enc_channels;
        let r = self.image_size.div_ceil(8);
        let head = Estimate::f32s(&[8, e, r, r, self.num_components, self.latent_dim()]);
        recompose_diffusion::memory::unet_params(&self.unet())
            + Estimate::f32s(&[800, e, e])
            + Estimate::f32s(&[32, e])
            + head
    }

    /// Bytes of one forward pass's activations for one image: the denoiser's once per factor
    /// ([`recompose_diffusion::memory::unet_activations`] × K, every factor conditions its own
    /// pass) and the encoder's, at most 10 maps of E channels at full resolution, of 2E at half
    /// and of 4E at quarter resolution and 2 maps of 8E at an eighth, bounded by 20·E·S².
    pub fn activation_bytes(&self) -> Estimate {
        let s = self.image_size;
        recompose_diffusion::memory::unet_activations(&self.unet()) * self.num_components
            + Estimate::f32s(&[20, self.enc_channels, s, s])
    }

    /// Peak bytes of decomposing or recombining `images` images at once: the weights and the
    /// bytes of their file, the forward activations per image ([`DecompConfig::activation_bytes`])
    /// and per image 2·K + 8 RGB maps (the factor images, their composition, the sampler's state,
    /// noise and estimates, the input and the written grid).
    pub fn inference_estimate(&self, images: usize) -> Estimate {
        let s = self.image_size;
        let maps = self.num_components.saturating_mul(2).saturating_add(8);
        self.param_bytes() * 2
            + self.activation_bytes() * images
            + Estimate::f32s(&[images, maps, 3, s, s])
    }
}

/// Reads a TOML file and parses it with `parse`, prefixing parse errors with the path.
pub(crate) fn read_toml_file<T>(path: &Path, parse: impl Fn(&str) -> Result<T>) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_denoiser_and_bad_values_are_named() -> Result<()> {
        assert_eq!(DecompConfig::default().unet(), UNetConfig::decomp_small());
        let cfg = DecompConfig::from_toml("num_channels = 16\nnum_head_channels = -1\n")?;
        assert_eq!(cfg.unet(), UNetConfig::decomp_tiny());
        for (text, field) in [
            ("emb_dim = 63\n", "emb_dim"),
            ("num_head_channels = 0\n", "num_head_channels"),
            ("prediction = \"v\"\n", "prediction"),
            ("widht = 3\n", "widht"),
        ] {
            let err = DecompConfig::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        Ok(())
    }
}
