//! The U-Net denoiser of improved-diffusion, GLIDE and Decomp Diffusion.
//!
//! The architecture is the one released with Nichol & Dhariwal, *Improved Denoising Diffusion
//! Probabilistic Models* (ICML 2021, the "improved-diffusion" code), extended in Dhariwal &
//! Nichol, *Diffusion Models Beat GANs on Image Synthesis* (NeurIPS 2021: residual blocks that
//! resample, a fixed channel width per attention head, scale-shift "adaptive group norm") and
//! reused by GLIDE (Nichol et al., *GLIDE: Towards Photorealistic Image Generation and Editing
//! with Text-Guided Diffusion Models*, ICML 2022) and by Decomp Diffusion (Su, Liu, Wang,
//! Tenenbaum, Du, *Compositional Image Decomposition with Diffusion Models*, ICML 2024), whose
//! denoiser is shared by the K latent factors.
//!
//! ```text
//! e    = cat(cond, time_embed(sinusoid(t)))       cond FIRST; time_embed = Linear, SiLU, Linear
//! h    = conv3x3(x)                               input_blocks.0.0
//! for each level l (channels model_channels·channel_mult[l], downsample factor ds = 2^l):
//!     num_res_blocks × [ResBlock, AttentionBlock if ds is an attention factor]
//!     then, except at the last level, a downsampling block
//! middle_block = ResBlock, AttentionBlock, ResBlock
//! for each level, deepest first: num_res_blocks + 1 × [ResBlock on cat(h, skip),
//!     AttentionBlock if ds is an attention factor], then (except at level 0) an upsampling block
//! out  = conv3x3(SiLU(GroupNorm(h)))              out.0, out.2 (zero-initialized)
//!
//! ResBlock(x, e):                                 in_layers, emb_layers, out_layers
//!     h = SiLU(GroupNorm(x))                      in_layers.0
//!     if resampling: h, x = pool(h), pool(x)      AvgPool2d(2) or nearest ×2, both branches
//!     h = conv3x3(h) + Linear(SiLU(e))            in_layers.2, emb_layers.1
//!     h = conv3x3(dropout(SiLU(GroupNorm(h))))    out_layers.0, out_layers.3 (zero-initialized)
//!     return skip(x) + h                          skip_connection: identity or conv1x1
//!
//! AttentionBlock(x):                              norm, qkv, proj_out (zero-initialized)
//!     qkv = Conv1d_1x1(GroupNorm(x))              channels laid out [head][q|k|v][head_ch]
//!     per head: softmax((q/√√d)ᵀ(k/√√d)) over keys, applied to v
//!     x = x + Conv1d_1x1(attention)
//!     with context_dim > 0 (cross-attention, Rombach et al. 2022):     cross.norm, .q, .kv, .proj_out
//!         q = Conv1d_1x1(GroupNorm(x)); k, v = Conv1d_1x1(token states)
//!         per head: softmax(qᵀk/√d + mask) over the tokens, applied to v
//!         x = x + Conv1d_1x1(attention)                                 (proj_out zero-initialized)
//!     return x
//! ```
//!
//! With `coord_channels` two constant planes (column and row in \[−1, 1\]) join the input of
//! the first convolution, so that a conditioning can name places.
//!
//! With `use_scale_shift_norm` the embedding projection has 2C outputs (scale, shift) and the
//! second normalization becomes `GroupNorm(h)·(1 + scale) + shift` (Dhariwal & Nichol 2021);
//! with `resblock_updown = false` resampling uses the improved-diffusion layers instead:
//! `Downsample` = conv3×3 stride 2 (`op`), `Upsample` = nearest ×2 then conv3×3 (`conv`).
//!
//! Attention resolutions are given in pixels and converted to downsample factors
//! `ds = image_size / resolution` (integer division) exactly like the released code, so "16, 8"
//! at 32 px means attention at ds 2 and 4. Group normalization uses [`UNetConfig::num_groups`]
//! groups (16 in Decomp Diffusion, 32 in improved-diffusion) with eps = 1e-5.
//!
//! # Parameter names
//!
//! Every parameter carries the key of the PyTorch state dict of the released code:
//! `time_embed.0.weight`, `input_blocks.0.0.weight`, `input_blocks.1.0.in_layers.0.weight`,
//! `input_blocks.1.0.emb_layers.1.bias`, `input_blocks.3.1.qkv.weight` (shape `[3C, C, 1]`),
//! `middle_block.1.proj_out.weight`, `output_blocks.2.0.skip_connection.weight`, `out.2.bias`, …
//! A Decomp Diffusion checkpoint converted to safetensors loads unchanged (its `latent_encoder.*`
//! tensors belong to the encoder, not to this network).
//!
//! # Conditioning
//!
//! With `cond_dim > 0` the residual blocks see `cat(cond, time_emb)` (size
//! `cond_dim + time_embed_dim`), the additive latent conditioning of Decomp Diffusion: factor k
//! of an image is rendered by passing its latent z_k as `cond`, and the K factors are composed by
//! running them as one batch of B·K and averaging the predictions.
//!
//! # Speed on the CPU
//!
//! For `f32` tensors on the CPU the heavy steps run as the custom kernels of
//! [`recompose_core::ops`], with exact backward passes (tested against candle's own ops): the
//! convolutions ([`crate::nn::conv::Conv2d`]: a
//! per-image column matrix and one `gemm` product written straight into the NCHW output,
//! starting from the bias, so no transposes and no separate bias pass; the kernel-1 projections
//! `qkv`, `proj_out` and `skip_connection` are the same op without the column matrix), GroupNorm fused with its affine
//! map, modulation and SiLU (and a one-pass backward), the whole attention of a head (weights in
//! a per-thread buffer, recomputed for the backward pass), and per-channel bias additions whose
//! backward sums in one parallel pass.
//! Other dtypes and devices take candle's ops; the results agree to rounding.

use std::collections::BTreeSet;

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use recompose_core::ops::conv::{Conv as ConvOp, ConvBias};
use recompose_core::ops::{attention, group_norm, repeat};

use crate::denoiser::Denoiser;
use crate::nn::conv::Conv2d;
use crate::nn::layers::{
    ConvSpec, avg_pool2x, conv2d, conv2d_zeroed, dropout, linear, upsample_nearest2x,
};
use crate::param::Parameterization;
use crate::random::SeededRng;
use crate::{Error, Result};

/// The GroupNorm epsilon of the released code.
pub(crate) const NORM_EPS: f64 = 1e-5;
/// The max period of the sinusoidal timestep embedding.
const MAX_PERIOD: f64 = 10_000.0;

/// Every row of `x` (`[B, C, …]`) repeated `n` times, image-major (row `b·n + r` is image
/// `b`), plus an optional per-channel bias of `C` elements (shared) or `B·n·C` (one per output
/// row): `[B·n, C, …]`. A fused kernel on the CPU for `f32`, whose backward pass sums the
/// repeats and the bias gradient per channel in one parallel pass each.
fn repeat_rows(x: &Tensor, n: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    let rows = b * n;
    let bias = match bias {
        Some(bias) => {
            let bb = bias.elem_count() / c.max(1);
            if bias.elem_count() != bb * c || (bb != 1 && bb != rows) {
                return Err(Error::Shape(format!(
                    "unet: a bias of shape {:?} does not fit {:?} repeated {n} times",
                    bias.dims(),
                    x.dims()
                )));
            }
            Some(bias.reshape((bb, c))?)
        }
        None => None,
    };
    let fast = recompose_core::host::on_fast_path(&[x])
        && bias
            .as_ref()
            .is_none_or(|b| recompose_core::host::on_fast_path(&[b]));
    if fast {
        let x = x.contiguous()?;
        let op = repeat::Repeat { n };
        return Ok(match bias {
            Some(bias) => x.apply_op2(&bias.contiguous()?, op)?,
            None if n == 1 => x,
            None => x.apply_op1(op)?,
        });
    }
    let mut rep = vec![b, n];
    rep.extend(&x.dims()[1..]);
    let mut flat = vec![rows];
    flat.extend(&x.dims()[1..]);
    let y = x.unsqueeze(1)?.broadcast_as(rep)?.reshape(flat)?;
    Ok(match bias {
        Some(bias) => {
            let mut dims = bias.dims().to_vec();
            dims.resize(x.rank(), 1);
            y.broadcast_add(&bias.reshape(dims)?)?
        }
        None => y,
    })
}

/// The shape of a [`UNet`]. The default is [`UNetConfig::decomp_small`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Height and width of the (square) input images, in pixels.
    pub image_size: usize,
    /// Channels of the input x_t.
    pub in_channels: usize,
    /// Channels of the prediction.
    pub out_channels: usize,
    /// Base channel count; level l has `model_channels · channel_mult[l]` channels.
    pub model_channels: usize,
    /// Channel multiplier per level; level l works at `image_size / 2^l` pixels.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (one more on the way up).
    pub num_res_blocks: usize,
    /// Feature-map resolutions (in pixels) with self-attention, converted to downsample factors
    /// `image_size / resolution` as in the released code. The middle block always has one.
    pub attention_resolutions: Vec<usize>,
    /// Attention heads, used when `num_head_channels` is `None`.
    pub num_heads: usize,
    /// A fixed number of channels per attention head (heads = channels / this), overriding
    /// `num_heads`.
    pub num_head_channels: Option<usize>,
    /// Groups of every GroupNorm (16 in Decomp Diffusion, 32 in improved-diffusion).
    pub num_groups: usize,
    /// Dropout probability before the last convolution of each residual block (train mode only).
    pub dropout: f64,
    /// Resample inside residual blocks (AvgPool2d(2) / nearest ×2 on both branches) instead of
    /// with a strided convolution / nearest ×2 + convolution.
    pub resblock_updown: bool,
    /// FiLM-like conditioning: the embedding gives a per-channel scale and shift of the second
    /// normalization instead of a bias added before it.
    pub use_scale_shift_norm: bool,
    /// Width of the time embedding MLP output.
    pub time_embed_dim: usize,
    /// Width of the additive conditioning vector (0 = unconditional).
    pub cond_dim: usize,
    /// Give the network absolute position: two constant channels, the pixel's column and row
    /// mapped to \[−1, 1\], join the input of the first convolution (CoordConv; Liu et al.,
    /// NeurIPS 2018). Convolutions and attention are translation-equivariant, so without them
    /// a conditioning that names a place ("top left") can only be tied to pixels through the
    /// zero padding at the borders. Off in the released Decomp Diffusion models.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub coord_channels: bool,
    /// Width of the token states every attention block cross-attends to (0 = no
    /// cross-attention): the Stable Diffusion arrangement (Rombach et al., CVPR 2022, §3.3),
    /// where each attention block follows its self-attention with attention from the feature
    /// map to a prompt's token states ([`TokenContext`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub context_dim: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self::decomp_small()
    }
}

impl UNetConfig {
    /// The small Decomp Diffusion denoiser of the reference data (710,051 parameters): 32 px,
    /// 32 base channels, multipliers (1, 2), one residual block per level, attention at 16 px
    /// (and in the middle) with 64 channels per head, GroupNorm with 16 groups, time embedding
    /// and latent of 32 each, no dropout, resampling residual blocks, RGB in and out.
    pub fn decomp_small() -> Self {
        Self {
            image_size: 32,
            in_channels: 3,
            out_channels: 3,
            model_channels: 32,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![16, 8],
            num_heads: 1,
            num_head_channels: Some(64),
            num_groups: 16,
            dropout: 0.0,
            resblock_updown: true,
            use_scale_shift_norm: false,
            time_embed_dim: 32,
            cond_dim: 32,
            coord_channels: false,
            context_dim: 0,
        }
    }

    /// [`UNetConfig::decomp_small`] with 16 base channels and single-head attention of any width
    /// (188,659 parameters; benchmark configuration B of the reference data).
    pub fn decomp_tiny() -> Self {
        Self {
            model_channels: 16,
            num_heads: 1,
            num_head_channels: None,
            ..Self::decomp_small()
        }
    }

    /// Width of the embedding the residual blocks see: `cond_dim + time_embed_dim`.
    pub fn emb_dim(&self) -> usize {
        self.cond_dim + self.time_embed_dim
    }

    /// The downsample factors with attention, `image_size / r` for every attention resolution
    /// r (integer division, as the released code computes them). Resolutions of zero are
    /// skipped (and rejected by [`UNetConfig::validate`]).
    pub fn attention_downsample_factors(&self) -> Vec<usize> {
        self.attention_resolutions
            .iter()
            .filter(|&&r| r > 0)
            .map(|&r| self.image_size / r)
            .collect()
    }

    /// The number of attention heads of a block with `channels` channels.
    fn heads_for(&self, channels: usize) -> usize {
        match self.num_head_channels {
            Some(hc) if hc > 0 => channels / hc,
            _ => self.num_heads,
        }
    }

    /// The most residual blocks per level [`UNetConfig::validate`] accepts (the published
    /// models use 1 to 3).
    pub const MAX_RES_BLOCKS: usize = 64;

    /// Checks every size and divisibility the network relies on.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the problem: a zero size, an empty or zero channel multiplier, a
    /// zero attention resolution, a dropout probability outside \[0, 1), an image size not
    /// divisible by 2^(levels − 1), a normalized channel count not divisible by `num_groups`, or
    /// attention channels not divisible by `num_head_channels` (or by `num_heads`).
    pub fn validate(&self) -> Result<()> {
        let err = |msg: String| Err(Error::Config(format!("unet: {msg}")));
        for (name, v) in [
            ("image_size", self.image_size),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("model_channels", self.model_channels),
            ("num_res_blocks", self.num_res_blocks),
            ("num_heads", self.num_heads),
            ("num_groups", self.num_groups),
            ("time_embed_dim", self.time_embed_dim),
        ] {
            if v == 0 {
                return err(format!("{name} must be positive"));
            }
        }
        // The layout below walks every block: a count read from a file is bounded first.
        if self.num_res_blocks > Self::MAX_RES_BLOCKS {
            return err(format!(
                "num_res_blocks must be at most {}, got {}",
                Self::MAX_RES_BLOCKS,
                self.num_res_blocks
            ));
        }
        if self.channel_mult.is_empty() {
            return err("channel_mult must name at least one level".to_string());
        }
        if self.channel_mult.contains(&0) {
            return err(format!(
                "channel_mult must be positive, got {:?}",
                self.channel_mult
            ));
        }
        if self.num_head_channels == Some(0) {
            return err("num_head_channels must be positive (or absent)".to_string());
        }
        if self.attention_resolutions.contains(&0) {
            return err(format!(
                "attention resolutions must be positive, got {:?}",
                self.attention_resolutions
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return err(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        let factor = 1usize
            .checked_shl((self.channel_mult.len() - 1) as u32)
            .filter(|f| *f <= self.image_size)
            .unwrap_or(0);
        if factor == 0 || !self.image_size.is_multiple_of(factor) {
            return err(format!(
                "image_size {} is not divisible by 2^{} for {} levels",
                self.image_size,
                self.channel_mult.len() - 1,
                self.channel_mult.len()
            ));
        }
        let layout = self.layout();
        let mut norm_channels = BTreeSet::new();
        let mut attn_channels = BTreeSet::new();
        norm_channels.insert(layout.base_channels);
        for layer in layout.layers() {
            match *layer {
                Layer::Res { in_ch, out_ch, .. } => {
                    norm_channels.insert(in_ch);
                    norm_channels.insert(out_ch);
                }
                Layer::Attn { ch } => {
                    norm_channels.insert(ch);
                    attn_channels.insert(ch);
                }
                Layer::DownConv { .. } | Layer::UpConv { .. } => {}
            }
        }
        if let Some(c) = norm_channels
            .iter()
            .find(|c| !c.is_multiple_of(self.num_groups))
        {
            return err(format!(
                "{c} channels are not divisible into num_groups = {} GroupNorm groups",
                self.num_groups
            ));
        }
        for &c in &attn_channels {
            match self.num_head_channels {
                Some(hc) if !c.is_multiple_of(hc) => {
                    return err(format!(
                        "an attention block has {c} channels, not divisible by num_head_channels \
                         = {hc}"
                    ));
                }
                None if !c.is_multiple_of(self.num_heads) => {
                    return err(format!(
                        "an attention block has {c} channels, not divisible by num_heads = {}",
                        self.num_heads
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The block structure of the released `UNetModel.__init__`.
    fn layout(&self) -> Layout {
        let attn: BTreeSet<usize> = self.attention_downsample_factors().into_iter().collect();
        let levels = self.channel_mult.len();
        let base = self.channel_mult[0] * self.model_channels;
        let mut ch = base;
        let mut skips = vec![ch];
        let mut ds = 1;
        let mut input = Vec::new();
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                let out_ch = mult * self.model_channels;
                let mut block = vec![Layer::Res {
                    in_ch: ch,
                    out_ch,
                    resample: Resample::Keep,
                }];
                ch = out_ch;
                if attn.contains(&ds) {
                    block.push(Layer::Attn { ch });
                }
                input.push(block);
                skips.push(ch);
            }
            if level + 1 != levels {
                input.push(vec![if self.resblock_updown {
                    Layer::Res {
                        in_ch: ch,
                        out_ch: ch,
                        resample: Resample::Down,
                    }
                } else {
                    Layer::DownConv { ch }
                }]);
                skips.push(ch);
                ds *= 2;
            }
        }
        let keep = Layer::Res {
            in_ch: ch,
            out_ch: ch,
            resample: Resample::Keep,
        };
        let middle = vec![keep, Layer::Attn { ch }, keep];
        let mut output = Vec::new();
        for (level, &mult) in self.channel_mult.iter().enumerate().rev() {
            for i in 0..=self.num_res_blocks {
                let skip_ch = skips.pop().unwrap_or(0);
                let out_ch = mult * self.model_channels;
                let mut block = vec![Layer::Res {
                    in_ch: ch + skip_ch,
                    out_ch,
                    resample: Resample::Keep,
                }];
                ch = out_ch;
                if attn.contains(&ds) {
                    block.push(Layer::Attn { ch });
                }
                if level > 0 && i == self.num_res_blocks {
                    block.push(if self.resblock_updown {
                        Layer::Res {
                            in_ch: ch,
                            out_ch: ch,
                            resample: Resample::Up,
                        }
                    } else {
                        Layer::UpConv { ch }
                    });
                    ds /= 2;
                }
                output.push(block);
            }
        }
        Layout {
            base_channels: base,
            input,
            middle,
            output,
        }
    }
}

/// Resampling inside a residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resample {
    Keep,
    Down,
    Up,
}

/// One layer of a `TimestepEmbedSequential` of the released code.
#[derive(Clone, Copy, Debug)]
enum Layer {
    Res {
        in_ch: usize,
        out_ch: usize,
        resample: Resample,
    },
    Attn {
        ch: usize,
    },
    DownConv {
        ch: usize,
    },
    UpConv {
        ch: usize,
    },
}

/// The module tree: `input_blocks[1..]`, `middle_block`, `output_blocks`.
struct Layout {
    base_channels: usize,
    input: Vec<Vec<Layer>>,
    middle: Vec<Layer>,
    output: Vec<Vec<Layer>>,
}

impl Layout {
    fn layers(&self) -> impl Iterator<Item = &Layer> {
        self.input
            .iter()
            .flatten()
            .chain(&self.middle)
            .chain(self.output.iter().flatten())
    }
}

/// A pointwise projection over channels (a kernel-1 convolution) done as a matrix product.
#[derive(Clone, Debug)]
pub(crate) struct Pointwise {
    /// `[out, in]`.
    pub(crate) weight: Tensor,
    /// `[out, 1]`.
    pub(crate) bias: Tensor,
}

impl Pointwise {
    /// From the parameters of a `Conv1d`/`Conv2d` with kernel size one: `weight` of shape
    /// `[out, in, 1]` (`dims2d = false`) or `[out, in, 1, 1]` (`dims2d = true`).
    fn new(
        in_ch: usize,
        out_ch: usize,
        zeroed: bool,
        dims2d: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (weight, bias) = if dims2d {
            let conv = if zeroed {
                conv2d_zeroed(in_ch, out_ch, ConvSpec::POINTWISE, vb)?
            } else {
                conv2d(in_ch, out_ch, ConvSpec::POINTWISE, vb)?
            };
            (conv.weight().clone(), conv.bias().cloned())
        } else {
            let conv = crate::nn::layers::conv1d_pointwise(in_ch, out_ch, zeroed, vb)?;
            (conv.weight().clone(), conv.bias().cloned())
        };
        let bias = bias.ok_or_else(|| Error::Config("projection without bias".to_string()))?;
        Ok(Self {
            weight: weight.reshape((out_ch, in_ch))?,
            bias: bias.reshape((out_ch, 1))?,
        })
    }

    /// `W x + bias` for `x` of shape `[B, in, N]` or `[B, in, H, W]` (the output keeps the
    /// trailing dims); on the CPU for `f32` a kernel-1 `ConvBias` (one product per image,
    /// starting from the bias), on a 4-D input without reshaping it (every reshape is one more
    /// full-size gradient pass in the backward).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, ci, n) = match dims[..] {
            [b, ci, n] => (b, ci, n),
            [b, ci, h, w] => (b, ci, h * w),
            _ => {
                return Err(Error::Shape(format!(
                    "a projection takes [B, C, N] or [B, C, H, W], got {dims:?}"
                )));
            }
        };
        let co = self.weight.dim(0)?;
        let mut out_dims = dims.clone();
        out_dims[1] = co;
        if recompose_core::host::on_fast_path(&[x, &self.weight]) {
            let op = ConvBias(ConvOp {
                padding: 0,
                stride: 1,
            });
            let x4 = if dims.len() == 4 {
                x.contiguous()?
            } else {
                x.contiguous()?.reshape((b, ci, n, 1))?
            };
            let y = x4.apply_op3(
                &self.weight.reshape((co, ci, 1, 1))?,
                &self.bias.reshape((1, co))?,
                op,
            )?;
            Ok(if dims.len() == 4 {
                y
            } else {
                y.reshape(out_dims)?
            })
        } else {
            let y = self
                .weight
                .broadcast_left(b)?
                .matmul(&x.reshape((b, ci, n))?)?;
            Ok(repeat_rows(&y, 1, Some(&self.bias))?.reshape(out_dims)?)
        }
    }
}

impl Pointwise {
    /// `residual + W x + bias` for a 4-D `x` `[B, in, H, W]` (one graph node on the CPU, see
    /// [`Conv2d::forward_residual`]); any other input as [`Pointwise::forward`] plus the sum.
    pub(crate) fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if x.rank() != 4 {
            return Ok((self.forward(x)? + residual)?);
        }
        let (co, ci) = self.weight.dims2()?;
        crate::nn::conv::residual_conv(
            x,
            &self.weight.reshape((co, ci, 1, 1))?,
            &self.bias.reshape(co)?,
            ConvSpec::POINTWISE,
            residual,
        )
    }
}

/// GroupNorm with its affine map folded into one per-sample scale and shift, optionally
/// modulated (scale-shift norm) and followed by SiLU.
#[derive(Clone, Debug)]
pub(crate) struct Norm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) groups: usize,
}

impl Norm {
    fn new(groups: usize, channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            groups,
        })
    }

    /// `GroupNorm(x)` over `[B, C, H, W]`; with `film = Some(e)` (`e` of shape `[B, 2C]`, scale
    /// then shift) `GroupNorm(x)·(1 + scale) + shift`; then SiLU if `act`. The affine map (and
    /// modulation) becomes one per-sample, per-channel scale and shift.
    fn forward(&self, x: &Tensor, film: Option<&Tensor>, act: bool) -> Result<Tensor> {
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let (scale, shift) = self.scale_shift(b, c, film)?;
        if recompose_core::host::on_fast_path(&[x, &scale]) {
            let op = group_norm::GroupNorm {
                groups: self.groups,
                eps: NORM_EPS,
                silu: act,
            };
            Ok(x.contiguous()?
                .apply_op3(&scale.contiguous()?, &shift.contiguous()?, op)?)
        } else {
            self.forward_ops(x, &scale, &shift, act)
        }
    }

    /// The per-sample, per-channel scale and shift `[B, C]` of [`Norm::forward`]: the affine
    /// map, modulated by `film = Some(e)` (`e` of shape `[B, 2C]`, scale then shift).
    pub(crate) fn scale_shift(
        &self,
        b: usize,
        c: usize,
        film: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        Ok(match film {
            None => (
                self.weight.unsqueeze(0)?.broadcast_as((b, c))?,
                self.bias.unsqueeze(0)?.broadcast_as((b, c))?,
            ),
            Some(e) => {
                let gain = (e.narrow(1, 0, c)? + 1.0)?;
                let scale = gain.broadcast_mul(&self.weight.unsqueeze(0)?)?;
                let shift = gain
                    .broadcast_mul(&self.bias.unsqueeze(0)?)?
                    .add(&e.narrow(1, c, c)?)?;
                (scale, shift)
            }
        })
    }

    /// [`Norm::forward`] with candle's tensor ops (any device and dtype), given the combined
    /// per-sample scale and shift `[B, C]`.
    fn forward_ops(&self, x: &Tensor, scale: &Tensor, shift: &Tensor, act: bool) -> Result<Tensor> {
        let dims = x.dims();
        let (b, c) = (dims[0], dims[1]);
        let g = self.groups;
        let n = x.elem_count() / (b * c);
        let xg = x.reshape((b, g, (c / g) * n))?;
        let mean = xg.mean_keepdim(2)?;
        let centered = xg.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(2)?;
        let inv_std = (var + NORM_EPS)?.sqrt()?.recip()?;
        let inv_std = inv_std.broadcast_as((b, g, c / g))?.reshape((b, c))?;
        let scale = (inv_std * scale)?;
        let y = centered
            .reshape((b, c, n))?
            .broadcast_mul(&scale.unsqueeze(2)?)?
            .broadcast_add(&shift.unsqueeze(2)?)?
            .reshape(dims)?;
        Ok(if act { y.silu()? } else { y })
    }
}

/// A residual block (`ResBlock` of the released code).
#[derive(Clone, Debug)]
pub(crate) struct ResBlock {
    pub(crate) in_norm: Norm,
    pub(crate) in_conv: Conv2d,
    /// `emb_layers.1`: weight `[C or 2C, E]`, bias `[C or 2C]`.
    emb_weight: Tensor,
    emb_bias: Tensor,
    pub(crate) out_norm: Norm,
    pub(crate) out_conv: Conv2d,
    pub(crate) skip: Option<Pointwise>,
    pub(crate) resample: Resample,
    out_ch: usize,
    pub(crate) scale_shift: bool,
    dropout: f64,
}

impl ResBlock {
    fn new(
        cfg: &UNetConfig,
        in_ch: usize,
        out_ch: usize,
        resample: Resample,
        vb: VarBuilder,
    ) -> Result<Self> {
        let emb_out = if cfg.use_scale_shift_norm {
            2 * out_ch
        } else {
            out_ch
        };
        let emb = linear(cfg.emb_dim(), emb_out, vb.pp("emb_layers.1"))?;
        let emb_bias = emb
            .bias()
            .ok_or_else(|| Error::Config("linear layer without bias".to_string()))?
            .clone();
        let skip = if in_ch == out_ch {
            None
        } else {
            Some(Pointwise::new(
                in_ch,
                out_ch,
                false,
                true,
                vb.pp("skip_connection"),
            )?)
        };
        Ok(Self {
            in_norm: Norm::new(cfg.num_groups, in_ch, vb.pp("in_layers.0"))?,
            in_conv: Conv2d::new(in_ch, out_ch, ConvSpec::SAME3, vb.pp("in_layers.2"))?,
            emb_weight: emb.weight().clone(),
            emb_bias,
            out_norm: Norm::new(cfg.num_groups, out_ch, vb.pp("out_layers.0"))?,
            out_conv: Conv2d::zeroed(out_ch, out_ch, ConvSpec::SAME3, vb.pp("out_layers.3"))?,
            skip,
            resample,
            out_ch,
            scale_shift: cfg.use_scale_shift_norm,
            dropout: cfg.dropout,
        })
    }

    /// `emb_act` is `SiLU(emb)`, shared by all blocks.
    fn forward(&self, x: &Tensor, emb_act: &Tensor, rng: Option<&mut SeededRng>) -> Result<Tensor> {
        let h = self.in_norm.forward(x, None, true)?;
        let (h, x) = match self.resample {
            Resample::Keep => (h, x.clone()),
            Resample::Down => (avg_pool2x(&h)?, avg_pool2x(x)?),
            Resample::Up => (upsample_nearest2x(&h)?, upsample_nearest2x(x)?),
        };
        let e = self.emb_projection(emb_act)?;
        let h = if self.scale_shift {
            let h = self.in_conv.forward(&h)?;
            self.out_norm.forward(&h, Some(&e), true)?
        } else {
            let h = self.in_conv.forward_bias(&h, &self.merged_bias(&e)?)?;
            self.out_norm.forward(&h, None, true)?
        };
        self.finish(&h, &x, rng)
    }

    /// Whether the conditioning reaches the block only after its first convolution (no
    /// resampling, no scale-shift norm): then rows whose inputs repeat share that convolution.
    fn shares_input(&self) -> bool {
        matches!(self.resample, Resample::Keep) && !self.scale_shift
    }

    /// [`ResBlock::forward`] for the input `x_rep` = each row of `x` repeated `n` times
    /// (image-major), with `emb_act` one row per output row: the normalization and the first
    /// convolution run once per distinct row, and the per-row conditioning is added as the
    /// rows are repeated. Only for blocks that [share their input](ResBlock::shares_input).
    fn forward_repeated(
        &self,
        x: &Tensor,
        x_rep: &Tensor,
        n: usize,
        emb_act: &Tensor,
        rng: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        debug_assert!(self.shares_input());
        let h = self.in_norm.forward(x, None, true)?;
        let h = self.in_conv.apply(&h)?;
        let e = self.emb_projection(emb_act)?;
        let h = repeat_rows(&h, n, Some(&self.merged_bias(&e)?))?;
        let h = self.out_norm.forward(&h, None, true)?;
        self.finish(&h, x_rep, rng)
    }

    /// `emb_layers.1` applied to `SiLU(emb)`: `[B, C]`, or `[B, 2C]` (scale, shift).
    pub(crate) fn emb_projection(&self, emb_act: &Tensor) -> Result<Tensor> {
        Ok(emb_act
            .matmul(&self.emb_weight.t()?)?
            .broadcast_add(&self.emb_bias)?)
    }

    /// The first convolution's bias plus the conditioning `e` (both per-channel, so they are
    /// added at once): `[B, C]`.
    pub(crate) fn merged_bias(&self, e: &Tensor) -> Result<Tensor> {
        let own = self
            .in_conv
            .bias()
            .ok_or_else(|| Error::Config("residual-block convolution without bias".into()))?;
        Ok(e.broadcast_add(&own.reshape((1, self.out_ch))?)?)
    }

    /// Dropout, the last convolution and the skip path (`x`, projected where the channel
    /// count changes), summed in the convolution's node.
    fn finish(&self, h: &Tensor, x: &Tensor, rng: Option<&mut SeededRng>) -> Result<Tensor> {
        let h = dropout(h, self.dropout, rng)?;
        let skip = match &self.skip {
            None => x.clone(),
            Some(p) => p.forward(x)?,
        };
        self.out_conv.forward_residual(&h, &skip)
    }
}

/// The token states a U-Net's cross-attention reads: a prompt encoder's output with its
/// padding masked out of the keys.
#[derive(Clone, Debug)]
pub struct TokenContext {
    /// The states, channels first: `[B, D, L]`.
    pub(crate) states: Tensor,
    /// Added to the attention logits: 0 for a token, −10⁴ for padding, `[B, 1, L]`.
    pub(crate) key_bias: Tensor,
}

/// The logit offset of a padding position (its weight underflows to zero after the softmax).
const MASKED_LOGIT: f64 = 1e4;

impl TokenContext {
    /// The context of token states `states` (`[B, L, D]`, a text encoder's output) under the
    /// mask `mask` (`[B, L]`, any dtype, 1 for a token and 0 for padding; every row needs a
    /// token, as [`crate::text::TextEncoder`] checks of its inputs).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] for states that are not 3-D or a mask of another shape.
    pub fn new(states: &Tensor, mask: &Tensor) -> Result<Self> {
        let (b, l, _) = states.dims3().map_err(|_| {
            Error::Shape(format!(
                "unet: token states must be [B, L, D], got {:?}",
                states.dims()
            ))
        })?;
        if mask.dims() != [b, l] {
            return Err(Error::Shape(format!(
                "unet: the token mask must be [B, L] = [{b}, {l}], got {:?}",
                mask.dims()
            )));
        }
        let key_bias = ((mask.to_dtype(states.dtype())? - 1.0)? * MASKED_LOGIT)?.unsqueeze(1)?;
        Ok(Self {
            states: states.transpose(1, 2)?.contiguous()?,
            key_bias,
        })
    }

    /// The number of prompts B.
    pub fn batch(&self) -> usize {
        self.states.dims()[0]
    }

    /// The width D of a token state.
    pub fn width(&self) -> usize {
        self.states.dims()[1]
    }

    /// The rows `rows` (`u32` indices) in that order: repeats, tilings and selections of the
    /// prompts.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] for an index outside the batch or of another dtype.
    pub fn select_rows(&self, rows: &Tensor) -> Result<Self> {
        Ok(Self {
            states: self.states.index_select(rows, 0)?,
            key_bias: self.key_bias.index_select(rows, 0)?,
        })
    }

    /// The same context cut from the graph of the encoder that made it.
    pub fn detach(&self) -> Self {
        Self {
            states: self.states.detach(),
            key_bias: self.key_bias.detach(),
        }
    }
}

/// The attention weights `softmax(QᵀK + bias)` `[BH, N, L]` of scaled queries `q` `[BH, d, N]`,
/// keys `k` `[BH, d, L]` and a key bias `[BH, 1, L]`.
pub(crate) fn cross_weights(q: &Tensor, k: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let logits = q.t()?.matmul(k)?.broadcast_add(bias)?;
    Ok(candle_nn::ops::softmax(&logits, D::Minus1)?)
}

/// Cross-attention from a feature map to token states (Rombach et al., CVPR 2022, §3.3:
/// Q from the features, K and V from the tokens, one head per `num_head_channels`):
/// `x + proj_out(V softmax(QᵀK/√d + mask)ᵀ)` with `Q = q(GroupNorm(x))`, `[K; V] = kv(states)`.
/// Parameters under `cross.` of the attention block: `norm`, `q`, `kv` (`[2C, D, 1]`),
/// `proj_out` (zero-initialized, so an untrained block is the identity).
#[derive(Clone, Debug)]
pub(crate) struct CrossAttention {
    pub(crate) norm: Norm,
    pub(crate) q: Pointwise,
    pub(crate) kv: Pointwise,
    pub(crate) proj_out: Pointwise,
    pub(crate) heads: usize,
}

impl CrossAttention {
    fn new(cfg: &UNetConfig, ch: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: Norm::new(cfg.num_groups, ch, vb.pp("norm"))?,
            q: Pointwise::new(ch, ch, false, false, vb.pp("q"))?,
            kv: Pointwise::new(cfg.context_dim, 2 * ch, false, false, vb.pp("kv"))?,
            proj_out: Pointwise::new(ch, ch, true, false, vb.pp("proj_out"))?,
            heads: cfg.heads_for(ch),
        })
    }

    /// The scaled queries `[B·heads, d, H·W]` (Q/√d) of the normalized features `xn`.
    pub(crate) fn queries(&self, xn: &Tensor) -> Result<Tensor> {
        let (b, c, hh, ww) = xn.dims4()?;
        let d = c / self.heads;
        let q = self.q.forward(xn)?.reshape((b * self.heads, d, hh * ww))?;
        Ok((q * (1.0 / (d as f64).sqrt()))?)
    }

    /// The keys and values `[B·heads, d, L]` of `ctx` and its key bias per head
    /// `[B·heads, 1, L]`.
    pub(crate) fn keys_values(&self, ctx: &TokenContext) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, _, l) = ctx.states.dims3()?;
        let ch = self.q.weight.dim(0)?;
        let (heads, d) = (self.heads, ch / self.heads);
        let kv = self.kv.forward(&ctx.states)?;
        let k = kv
            .narrow(1, 0, ch)?
            .contiguous()?
            .reshape((b * heads, d, l))?;
        let v = kv
            .narrow(1, ch, ch)?
            .contiguous()?
            .reshape((b * heads, d, l))?;
        let bias = ctx
            .key_bias
            .unsqueeze(1)?
            .broadcast_as((b, heads, 1, l))?
            .reshape((b * heads, 1, l))?;
        Ok((k, v, bias))
    }

    /// The block's output on `x` given its normalized features `xn`, with the values a
    /// backward pass needs.
    pub(crate) fn attend(&self, x: &Tensor, xn: &Tensor, ctx: &TokenContext) -> Result<Attended> {
        let q = self.queries(xn)?;
        let (k, v, bias) = self.keys_values(ctx)?;
        let p = cross_weights(&q, &k, &bias)?;
        Attended::finish(&self.proj_out, x, q, k, v, p)
    }

    fn forward(&self, x: &Tensor, ctx: &TokenContext) -> Result<Tensor> {
        let xn = self.norm.forward(x, None, false)?;
        Ok(self.attend(x, &xn, ctx)?.out)
    }
}

/// One attention's output `x + proj_out(V Pᵀ)` and what its backward pass needs, per head
/// (`[B·heads, …]`): the queries scaled by 1/√d, the keys, the values and the weights
/// `P` `[BH, queries, keys]`.
pub(crate) struct Attended {
    pub(crate) out: Tensor,
    pub(crate) q: Tensor,
    pub(crate) k: Tensor,
    pub(crate) v: Tensor,
    pub(crate) p: Tensor,
}

impl Attended {
    /// Attends with the weights `p` and projects back onto the residual stream `x`.
    fn finish(
        proj_out: &Pointwise,
        x: &Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        p: Tensor,
    ) -> Result<Self> {
        let attended = v.matmul(&p.t()?)?.reshape(x.dims4()?)?;
        let out = proj_out.forward_residual(&attended, x)?;
        Ok(Self { out, q, k, v, p })
    }
}

/// A self-attention block (`AttentionBlock` with the legacy `QKVAttention` head layout),
/// followed by cross-attention to token states when the U-Net has a `context_dim`.
#[derive(Clone, Debug)]
pub(crate) struct AttentionBlock {
    pub(crate) norm: Norm,
    pub(crate) qkv: Pointwise,
    pub(crate) proj_out: Pointwise,
    pub(crate) heads: usize,
    pub(crate) cross: Option<CrossAttention>,
}

impl AttentionBlock {
    fn new(cfg: &UNetConfig, ch: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: Norm::new(cfg.num_groups, ch, vb.pp("norm"))?,
            qkv: Pointwise::new(ch, 3 * ch, false, false, vb.pp("qkv"))?,
            proj_out: Pointwise::new(ch, ch, true, false, vb.pp("proj_out"))?,
            heads: cfg.heads_for(ch),
            cross: if cfg.context_dim > 0 {
                Some(CrossAttention::new(cfg, ch, vb.pp("cross"))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, ctx: Option<&TokenContext>) -> Result<Tensor> {
        let h = self.self_attention(x)?;
        match (&self.cross, ctx) {
            (Some(cross), Some(ctx)) => cross.forward(&h, ctx),
            (None, _) => Ok(h),
            (Some(_), None) => Err(Error::Shape(
                "unet: a cross-attention block needs token states".to_string(),
            )),
        }
    }

    fn self_attention(&self, x: &Tensor) -> Result<Tensor> {
        let head_ch = x.dim(1)? / self.heads;
        let xn = self.norm.forward(x, None, false)?;
        let qkv = self.qkv.forward(&xn)?;
        if recompose_core::host::on_fast_path(&[&qkv]) {
            // [B, 3C, H, W] in, [B, C, H, W] out: no reshape nodes in the graph.
            let attended = qkv
                .contiguous()?
                .apply_op1(attention::Attention { head_ch })?;
            return self.proj_out.forward_residual(&attended, x);
        }
        Ok(self.attend(x, &qkv)?.out)
    }

    /// The self-attention's output on `x` given the projections `qkv` `[B, 3C, H, W]` of its
    /// normalized features, through tensor ops, with the values a backward pass needs.
    pub(crate) fn attend(&self, x: &Tensor, qkv: &Tensor) -> Result<Attended> {
        let (b, c, hh, ww) = x.dims4()?;
        let d = c / self.heads;
        let qkv = qkv.reshape((b * self.heads, 3 * d, hh * ww))?;
        // (q/√√d)ᵀ(k/√√d) = qᵀk/√d: scale q once.
        let q = (qkv.narrow(1, 0, d)? * (1.0 / (d as f64).sqrt()))?;
        let k = qkv.narrow(1, d, d)?;
        let v = qkv.narrow(1, 2 * d, d)?;
        let p = candle_nn::ops::softmax(&q.t()?.matmul(&k)?, D::Minus1)?;
        Attended::finish(&self.proj_out, x, q, k, v, p)
    }
}

/// One layer of a block sequence.
#[derive(Clone, Debug)]
pub(crate) enum Block {
    Res(ResBlock),
    Attn(AttentionBlock),
    /// `Downsample` with a convolution (`op`).
    Down(Conv2d),
    /// `Upsample` with a convolution (`conv`).
    Up(Conv2d),
}

impl Block {
    fn new(cfg: &UNetConfig, layer: Layer, vb: VarBuilder) -> Result<Self> {
        Ok(match layer {
            Layer::Res {
                in_ch,
                out_ch,
                resample,
            } => Self::Res(ResBlock::new(cfg, in_ch, out_ch, resample, vb)?),
            Layer::Attn { ch } => Self::Attn(AttentionBlock::new(cfg, ch, vb)?),
            Layer::DownConv { ch } => {
                Self::Down(Conv2d::new(ch, ch, ConvSpec::DOWN3, vb.pp("op"))?)
            }
            Layer::UpConv { ch } => Self::Up(Conv2d::new(ch, ch, ConvSpec::SAME3, vb.pp("conv"))?),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        emb_act: &Tensor,
        ctx: Option<&TokenContext>,
        rng: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        match self {
            Self::Res(r) => r.forward(x, emb_act, rng),
            Self::Attn(a) => a.forward(x, ctx),
            Self::Down(c) => Ok(c.forward(x)?),
            Self::Up(c) => Ok(c.forward(&upsample_nearest2x(x)?)?),
        }
    }
}

fn build_seq(cfg: &UNetConfig, layers: &[Layer], vb: VarBuilder) -> Result<Vec<Block>> {
    layers
        .iter()
        .enumerate()
        .map(|(j, &layer)| Block::new(cfg, layer, vb.pp(j.to_string())))
        .collect()
}

fn run_seq(
    blocks: &[Block],
    x: &Tensor,
    emb_act: &Tensor,
    ctx: Option<&TokenContext>,
    mut rng: Option<&mut SeededRng>,
) -> Result<Tensor> {
    let mut h = x.clone();
    for block in blocks {
        h = block.forward(&h, emb_act, ctx, rng.as_deref_mut())?;
    }
    Ok(h)
}

/// The U-Net denoiser (see the [module documentation](self)).
///
/// Built with [`UNet::new`] on a [`VarBuilder`]: a [`crate::nn::ParamStore`] for training, or
/// tensors loaded from a (converted PyTorch) safetensors file for inference.
#[derive(Clone, Debug)]
pub struct UNet {
    config: UNetConfig,
    parameterization: Parameterization,
    dtype: DType,
    time_embed_0: candle_nn::Linear,
    time_embed_2: candle_nn::Linear,
    pub(crate) input_conv: Conv2d,
    pub(crate) input_blocks: Vec<Vec<Block>>,
    pub(crate) middle_block: Vec<Block>,
    pub(crate) output_blocks: Vec<Vec<Block>>,
    pub(crate) out_norm: Norm,
    pub(crate) out_conv: Conv2d,
}

impl UNet {
    /// Builds the network on the parameters of `vb`, under the PyTorch state-dict names of the
    /// released code (see the [module documentation](self)); `parameterization` is what its
    /// output means (x₀ for Decomp Diffusion). New parameters get PyTorch's default
    /// initialization, the last convolution of each residual block, each attention `proj_out`
    /// and the output convolution start at zero.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid configuration ([`UNetConfig::validate`]);
    /// [`Error::Candle`] if a parameter is missing from a loaded `vb` or has another shape.
    pub fn new(
        config: &UNetConfig,
        parameterization: Parameterization,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::build(config, parameterization, true, vb)
    }

    /// Like [`UNet::new`] but with the output convolution (`out.2`) initialized like the other
    /// convolutions (PyTorch's default, drawn through `vb`) instead of at zero: what an energy
    /// `E = ½‖g‖²` needs, whose gradient would otherwise vanish at initialization (see
    /// [`crate::nn::energy_unet`]). The parameter names and shapes are those of [`UNet::new`].
    ///
    /// # Errors
    ///
    /// As [`UNet::new`].
    pub fn with_random_output(
        config: &UNetConfig,
        parameterization: Parameterization,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::build(config, parameterization, false, vb)
    }

    fn build(
        config: &UNetConfig,
        parameterization: Parameterization,
        zero_output: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        config.validate()?;
        let layout = config.layout();
        let mc = config.model_channels;
        let base = layout.base_channels;
        let time_embed_0 = linear(mc, config.time_embed_dim, vb.pp("time_embed.0"))?;
        let time_embed_2 = linear(
            config.time_embed_dim,
            config.time_embed_dim,
            vb.pp("time_embed.2"),
        )?;
        let input_conv = Conv2d::new(
            config.in_channels + if config.coord_channels { 2 } else { 0 },
            base,
            ConvSpec::SAME3,
            vb.pp("input_blocks.0.0"),
        )?;
        let input_blocks = layout
            .input
            .iter()
            .enumerate()
            .map(|(i, layers)| build_seq(config, layers, vb.pp(format!("input_blocks.{}", i + 1))))
            .collect::<Result<Vec<_>>>()?;
        let middle_block = build_seq(config, &layout.middle, vb.pp("middle_block"))?;
        let output_blocks = layout
            .output
            .iter()
            .enumerate()
            .map(|(i, layers)| build_seq(config, layers, vb.pp(format!("output_blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let out_norm = Norm::new(config.num_groups, base, vb.pp("out.0"))?;
        let out_conv = if zero_output {
            Conv2d::zeroed(base, config.out_channels, ConvSpec::SAME3, vb.pp("out.2"))?
        } else {
            Conv2d::new(base, config.out_channels, ConvSpec::SAME3, vb.pp("out.2"))?
        };
        Ok(Self {
            config: config.clone(),
            parameterization,
            dtype: vb.dtype(),
            time_embed_0,
            time_embed_2,
            input_conv,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
        })
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The time embedding MLP `Linear(SiLU(Linear(sinusoid(t))))` (`time_embed.*`) for the
    /// per-sample times `t` (1-D, any numeric dtype; the sinusoid is computed in `f32` like the
    /// released code), shape `[B, time_embed_dim]` in the parameters' dtype.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `t` is not 1-D.
    pub fn time_embedding(&self, t: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        if t.rank() != 1 {
            return Err(Error::Shape(format!(
                "unet: t must be 1-D [B], got shape {:?}",
                t.dims()
            )));
        }
        let t = t.to_dtype(DType::F32)?;
        let sinusoid =
            crate::nn::layers::timestep_embedding(&t, self.config.model_channels, MAX_PERIOD)?
                .to_dtype(self.dtype)?;
        let h = self.time_embed_0.forward(&sinusoid)?.silu()?;
        Ok(self.time_embed_2.forward(&h)?)
    }

    /// Checks `x` `[B, …]`, `t` `[B]`, `cond` `[B·n, cond_dim]` and the token context (`B·n`
    /// prompts of width `context_dim`, given exactly when the network cross-attends); returns
    /// `B`.
    pub(crate) fn check_inputs(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        ctx: Option<&TokenContext>,
        n: usize,
    ) -> Result<usize> {
        let b = self.check_cond(x, t, cond, n)?;
        match (ctx, self.config.context_dim) {
            (None, 0) => Ok(b),
            (Some(_), 0) => Err(Error::Shape(
                "unet: the model has no cross-attention (context_dim = 0) but got token states"
                    .to_string(),
            )),
            (None, d) => Err(Error::Shape(format!(
                "unet: the model cross-attends to token states of width {d}; none were given"
            ))),
            (Some(c), d) => {
                if c.batch() != b * n || c.width() != d {
                    return Err(Error::Shape(format!(
                        "unet: the token states must be {} prompts of width {d}, got {} of \
                         width {}",
                        b * n,
                        c.batch(),
                        c.width()
                    )));
                }
                Ok(b)
            }
        }
    }

    fn check_cond(&self, x: &Tensor, t: &Tensor, cond: Option<&Tensor>, n: usize) -> Result<usize> {
        let c = &self.config;
        let want = [c.in_channels, c.image_size, c.image_size];
        let dims = x.dims();
        if dims.len() != 4 || dims[1..] != want {
            return Err(Error::Shape(format!(
                "unet: x_t must be [B, {}, {}, {}], got {dims:?}",
                c.in_channels, c.image_size, c.image_size
            )));
        }
        let b = dims[0];
        if t.dims() != [b] {
            return Err(Error::Shape(format!(
                "unet: t must be [B] = [{b}] (one time per sample), got {:?}",
                t.dims()
            )));
        }
        match (cond, c.cond_dim) {
            (None, 0) => {}
            (Some(z), 0) => {
                return Err(Error::Shape(format!(
                    "unet: the model is unconditional (cond_dim = 0) but got a cond of shape {:?}",
                    z.dims()
                )));
            }
            (None, d) => {
                return Err(Error::Shape(format!(
                    "unet: the model needs a cond of shape [{}, {d}], got none",
                    b * n
                )));
            }
            (Some(z), d) => {
                if z.dims() != [b * n, d] {
                    return Err(Error::Shape(format!(
                        "unet: cond must be [{}, cond_dim] = [{}, {d}], got {:?}",
                        if n == 1 {
                            "B".to_string()
                        } else {
                            format!("B·{n}")
                        },
                        b * n,
                        z.dims()
                    )));
                }
            }
        }
        Ok(b)
    }

    /// The prediction for `x` (`[B, in_channels, image_size, image_size]`) at times `t` (`[B]`)
    /// with conditioning `cond` (`[B, cond_dim]`, required when `cond_dim > 0`, absent
    /// otherwise). With `dropout_rng = Some(..)` the network runs in train mode (dropout masks
    /// drawn from it); with `None` in eval mode.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] naming the input that does not fit; [`Error::Candle`] from tensor ops
    /// (for instance an `x` whose dtype differs from the parameters').
    pub fn forward_with(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        dropout_rng: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        self.forward_context(x, t, cond, None, dropout_rng)
    }

    /// [`UNet::forward_with`] with the token states `ctx` (`B` prompts) that the attention
    /// blocks cross-attend to; required exactly when `context_dim > 0`.
    ///
    /// # Errors
    ///
    /// As [`UNet::forward_with`]; [`Error::Shape`] for token states given to a network without
    /// cross-attention, missing, or of another batch or width.
    pub fn forward_context(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        ctx: Option<&TokenContext>,
        dropout_rng: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        self.check_inputs(x, t, cond, ctx, 1)?;
        let emb_act = self.embedding(t, cond)?;
        let h = self.input_conv.forward(&self.input_features(x)?)?;
        self.run_blocks(h.clone(), h, 0, &emb_act, ctx, dropout_rng)
    }

    /// [`UNet::forward_context`] of `x` and `t` with every row repeated `n` times, image-major
    /// (output row `b·n + r` is image `b`), under `n` conditionings per image: `cond` is
    /// `[B·n, cond_dim]` and `ctx` (when the network cross-attends) has `B·n` prompts; the
    /// output is `[B·n, out_channels, …]`. Decomp Diffusion runs its
    /// K factors of an image this way. The result is the repeated forward pass's, but the input
    /// convolution and, where the first residual block takes the conditioning only after its
    /// first convolution (no scale-shift norm), that block's normalization and convolution run
    /// once per image instead of once per row (and so do their backward passes).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `n = 0`; as [`UNet::forward_with`] (with `cond` of `B·n` rows).
    pub fn forward_repeated(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        ctx: Option<&TokenContext>,
        n: usize,
        mut dropout_rng: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        if n == 0 {
            return Err(Error::Config("unet: rows repeated 0 times".to_string()));
        }
        self.check_inputs(x, t, cond, ctx, n)?;
        let t_rep = repeat_rows(&t.unsqueeze(1)?, n, None)?.flatten_all()?;
        let emb_act = self.embedding(&t_rep, cond)?;
        let h = self.input_conv.forward(&self.input_features(x)?)?;
        let h_rep = repeat_rows(&h, n, None)?;
        match self.input_blocks.first().and_then(|seq| seq.first()) {
            Some(Block::Res(first)) if first.shares_input() => {
                let out =
                    first.forward_repeated(&h, &h_rep, n, &emb_act, dropout_rng.as_deref_mut())?;
                self.run_blocks(h_rep, out, 1, &emb_act, ctx, dropout_rng)
            }
            _ => self.run_blocks(h_rep.clone(), h_rep, 0, &emb_act, ctx, dropout_rng),
        }
    }

    /// What the input convolution reads: `x`, followed by the column and row planes when
    /// [`UNetConfig::coord_channels`] is set (pixel centres mapped to \[−1, 1\]).
    pub(crate) fn input_features(&self, x: &Tensor) -> Result<Tensor> {
        if !self.config.coord_channels {
            return Ok(x.clone());
        }
        let (b, _, h, w) = x.dims4()?;
        let centre = |i: usize, n: usize| (2 * i + 1) as f64 / n as f64 - 1.0;
        let mut planes = Vec::with_capacity(2 * h * w);
        planes.extend((0..h * w).map(|p| centre(p % w, w)));
        planes.extend((0..h * w).map(|p| centre(p / w, h)));
        let coords = Tensor::from_vec(planes, (1, 2, h, w), x.device())?
            .to_dtype(x.dtype())?
            .broadcast_as((b, 2, h, w))?;
        Ok(Tensor::cat(&[x, &coords], 1)?)
    }

    /// `SiLU(cat(cond, time embedding))`: `emb_layers.0` is the same SiLU in every block, so
    /// it is applied once.
    pub(crate) fn embedding(&self, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let time_emb = self.time_embedding(t)?;
        let emb = match cond {
            Some(z) => Tensor::cat(&[&z.to_dtype(self.dtype)?, &time_emb], 1)?,
            None => time_emb,
        };
        Ok(emb.silu()?)
    }

    /// The network after the input convolution, whose output is `skip0`; `h` is the output of
    /// the first `done` layers of the first input level.
    fn run_blocks(
        &self,
        skip0: Tensor,
        mut h: Tensor,
        done: usize,
        emb_act: &Tensor,
        ctx: Option<&TokenContext>,
        mut dropout_rng: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        let mut skips = Vec::with_capacity(self.input_blocks.len() + 1);
        skips.push(skip0);
        for (i, block) in self.input_blocks.iter().enumerate() {
            let from = if i == 0 { done.min(block.len()) } else { 0 };
            h = run_seq(&block[from..], &h, emb_act, ctx, dropout_rng.as_deref_mut())?;
            skips.push(h.clone());
        }
        h = run_seq(
            &self.middle_block,
            &h,
            emb_act,
            ctx,
            dropout_rng.as_deref_mut(),
        )?;
        for block in &self.output_blocks {
            let skip = skips
                .pop()
                .ok_or_else(|| Error::Config("unet: unbalanced skip connections".to_string()))?;
            h = Tensor::cat(&[&h, &skip], 1)?;
            h = run_seq(block, &h, emb_act, ctx, dropout_rng.as_deref_mut())?;
        }
        let h = self.out_norm.forward(&h, None, true)?;
        Ok(self.out_conv.forward(&h)?)
    }
}

impl Denoiser for UNet {
    fn parameterization(&self) -> Parameterization {
        self.parameterization
    }

    /// [`UNet::forward_with`] in eval mode (no dropout).
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        self.forward_with(x_t, t, cond, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ParamStore;
    use candle_core::Device;

    fn names(cfg: &UNetConfig) -> Result<Vec<String>> {
        let store = ParamStore::new(0);
        UNet::new(
            cfg,
            Parameterization::X0,
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        Ok(store.vars().into_iter().map(|(k, _)| k).collect())
    }

    #[test]
    fn parameter_counts_match_the_released_code() -> Result<()> {
        for (cfg, want) in [
            (UNetConfig::decomp_small(), 710_051),
            (UNetConfig::decomp_tiny(), 188_659),
        ] {
            let store = ParamStore::new(0);
            UNet::new(
                &cfg,
                Parameterization::X0,
                store.var_builder(DType::F32, &Device::Cpu),
            )?;
            assert_eq!(store.num_params(), want);
        }
        Ok(())
    }

    #[test]
    fn improved_diffusion_resampling_layers_are_named_op_and_conv() -> Result<()> {
        let cfg = UNetConfig {
            resblock_updown: false,
            ..UNetConfig::decomp_small()
        };
        let names = names(&cfg)?;
        assert!(names.contains(&"input_blocks.2.0.op.weight".to_string()));
        assert!(names.contains(&"output_blocks.1.2.conv.bias".to_string()));
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("input_blocks.2.0.in_layers"))
        );
        Ok(())
    }

    #[test]
    fn coordinate_channels_are_the_pixel_centres_in_the_unit_square() -> Result<()> {
        let cfg = UNetConfig {
            image_size: 4,
            coord_channels: true,
            ..UNetConfig::decomp_tiny()
        };
        let store = ParamStore::new(0);
        let net = UNet::new(
            &cfg,
            Parameterization::X0,
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        // The first convolution reads x and the two planes.
        let w = store.get("input_blocks.0.0.weight").expect("exists");
        assert_eq!(w.dims(), &[16, 5, 3, 3]);
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu)?;
        let feats = net.input_features(&x)?;
        assert_eq!(feats.dims(), &[2, 5, 4, 4]);
        let centres = [-0.75f32, -0.25, 0.25, 0.75];
        for b in 0..2 {
            let col = feats.get(b)?.get(3)?.to_vec2::<f32>()?;
            let row = feats.get(b)?.get(4)?.to_vec2::<f32>()?;
            for r in 0..4 {
                for c in 0..4 {
                    assert_eq!(col[r][c], centres[c]);
                    assert_eq!(row[r][c], centres[r]);
                }
            }
        }
        // Off by default and absent from the serialized form then.
        let plain = UNetConfig::decomp_tiny();
        assert!(!plain.coord_channels);
        assert!(
            !serde_json::to_string(&plain)
                .expect("serializes")
                .contains("coord")
        );
        let back: UNetConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).expect("serializes"))
                .expect("parses");
        assert_eq!(back, cfg);
        Ok(())
    }

    /// Cross-attention reads the token states at the tokens and ignores them at the padding:
    /// the prediction of an image changes when one of its tokens changes, not when a padded
    /// position does, and not when another image's tokens do. Missing, unexpected and
    /// mis-shaped token states are errors.
    #[test]
    fn cross_attention_reads_the_tokens_and_skips_the_padding() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = UNetConfig {
            image_size: 8,
            channel_mult: vec![1, 2],
            attention_resolutions: vec![4],
            num_groups: 4,
            model_channels: 8,
            num_head_channels: Some(8),
            time_embed_dim: 8,
            cond_dim: 4,
            context_dim: 6,
            ..UNetConfig::decomp_tiny()
        };
        let store = ParamStore::new(3);
        let net = UNet::new(
            &cfg,
            Parameterization::Epsilon,
            store.var_builder(DType::F32, &dev),
        )?;
        assert_eq!(
            store
                .get("middle_block.1.cross.kv.weight")
                .expect("exists")
                .dims(),
            &[32, 6, 1]
        );
        // The zero-initialized projections would hide the attention: perturb every variable.
        let mut rng = crate::random::seeded(4);
        for (_, var) in store.vars() {
            let noise = crate::random::normal_tensor(&mut rng, var.dims(), DType::F32, &dev)?;
            var.set(&(var.as_tensor() + (noise * 0.2)?)?)?;
        }
        let x = crate::random::normal_tensor(&mut rng, &[2, 3, 8, 8], DType::F32, &dev)?;
        let t = Tensor::new(&[5f32, 400.0], &dev)?;
        let cond = crate::random::normal_tensor(&mut rng, &[2, 4], DType::F32, &dev)?;
        let states = crate::random::normal_tensor(&mut rng, &[2, 3, 6], DType::F32, &dev)?;
        let mask = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 1.0, 1.0]], &dev)?;
        let run = |states: &Tensor| -> Result<Tensor> {
            let ctx = TokenContext::new(states, &mask)?;
            net.forward_context(&x, &t, Some(&cond), Some(&ctx), None)
        };
        let base = run(&states)?;
        // Image `img`'s state at position `pos` replaced.
        let bumped = |img: usize, pos: usize| -> Result<Tensor> {
            let mut v = states.to_vec3::<f32>()?;
            for e in &mut v[img][pos] {
                *e += 1.5;
            }
            Tensor::new(v, &dev).map_err(Error::from)
        };
        let change = |y: &Tensor, img: usize| -> Result<f32> {
            Ok((y.get(img)? - base.get(img)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?)
        };
        let padded = run(&bumped(0, 2)?)?;
        assert_eq!(change(&padded, 0)?, 0.0);
        assert_eq!(change(&padded, 1)?, 0.0);
        let token = run(&bumped(0, 1)?)?;
        assert!(change(&token, 0)? > 1e-4, "{}", change(&token, 0)?);
        assert_eq!(change(&token, 1)?, 0.0);
        // Errors, not panics.
        assert!(matches!(
            net.forward_with(&x, &t, Some(&cond), None),
            Err(Error::Shape(_))
        ));
        let one = TokenContext::new(&states.narrow(0, 0, 1)?, &mask.narrow(0, 0, 1)?)?;
        assert!(matches!(
            net.forward_context(&x, &t, Some(&cond), Some(&one), None),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            TokenContext::new(&states, &mask.narrow(1, 0, 2)?),
            Err(Error::Shape(_))
        ));
        let plain = UNet::new(
            &UNetConfig {
                context_dim: 0,
                ..cfg.clone()
            },
            Parameterization::Epsilon,
            ParamStore::new(0).var_builder(DType::F32, &dev),
        )?;
        let ctx = TokenContext::new(&states, &mask)?;
        assert!(matches!(
            plain.forward_context(&x, &t, Some(&cond), Some(&ctx), None),
            Err(Error::Shape(_))
        ));
        Ok(())
    }

    #[test]
    fn scale_shift_doubles_the_embedding_projection() -> Result<()> {
        let cfg = UNetConfig {
            use_scale_shift_norm: true,
            ..UNetConfig::decomp_small()
        };
        let store = ParamStore::new(0);
        UNet::new(
            &cfg,
            Parameterization::X0,
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        let w = store
            .get("middle_block.0.emb_layers.1.weight")
            .expect("exists");
        assert_eq!(w.dims(), &[128, 64]);
        Ok(())
    }

    /// `forward_repeated` equals the forward pass of the explicitly repeated batch: values and
    /// the gradient of every parameter, in train mode with dropout (the same masks), with and
    /// without scale-shift norm (the shared first convolution and the fallback), with
    /// attention in the first level; and it rejects conditionings of the wrong row count.
    #[test]
    fn repeated_rows_match_the_repeated_forward_pass() -> Result<()> {
        let dev = Device::Cpu;
        for (scale_shift, attention) in [(false, vec![8]), (true, vec![8]), (false, vec![16, 8])] {
            let cfg = UNetConfig {
                image_size: 16,
                use_scale_shift_norm: scale_shift,
                attention_resolutions: attention,
                dropout: 0.2,
                ..UNetConfig::decomp_tiny()
            };
            let store = ParamStore::new(3);
            let net = UNet::new(
                &cfg,
                Parameterization::X0,
                store.var_builder(DType::F32, &dev),
            )?;
            let mut rng = crate::random::seeded(8);
            // Off zero, so that every layer takes part in the gradients.
            for (_, v) in store.vars() {
                let noise = crate::random::normal_tensor(&mut rng, v.dims(), DType::F32, &dev)?;
                v.set(&(v.as_tensor() + (noise * 0.05)?)?)?;
            }
            let (b, n, s) = (2, 3, cfg.image_size);
            let x = crate::random::normal_tensor(&mut rng, &[b, 3, s, s], DType::F32, &dev)?;
            let t = Tensor::new(&[120f32, 870.0], &dev)?;
            let cond =
                crate::random::normal_tensor(&mut rng, &[b * n, cfg.cond_dim], DType::F32, &dev)?;
            let x_rep = x
                .unsqueeze(1)?
                .broadcast_as((b, n, 3, s, s))?
                .reshape((b * n, 3, s, s))?;
            let t_rep = Tensor::new(&[120f32, 120.0, 120.0, 870.0, 870.0, 870.0], &dev)?;
            let (mut r1, mut r2) = (crate::random::seeded(5), crate::random::seeded(5));
            let want = net.forward_with(&x_rep, &t_rep, Some(&cond), Some(&mut r1))?;
            let got = net.forward_repeated(&x, &t, Some(&cond), None, n, Some(&mut r2))?;
            assert!(max_diff(&want, &got)? < 1e-5, "{}", max_diff(&want, &got)?);
            let probe = crate::random::normal_tensor(&mut rng, want.dims(), DType::F32, &dev)?;
            let gw = (want * &probe)?.sum_all()?.backward()?;
            let gg = (got * &probe)?.sum_all()?.backward()?;
            for (name, v) in store.vars() {
                let (Some(a), Some(g)) = (gw.get(v.as_tensor()), gg.get(v.as_tensor())) else {
                    panic!("{name}: missing gradient")
                };
                let scale = a.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
                assert!(
                    max_diff(a, g)? < 1e-4 * scale,
                    "{name}: {}",
                    max_diff(a, g)?
                );
            }
            assert!(
                net.forward_repeated(&x, &t, Some(&cond), None, 2, None)
                    .is_err()
            );
            assert!(
                net.forward_repeated(&x, &t, Some(&cond), None, 0, None)
                    .is_err()
            );
        }
        Ok(())
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    }

    /// The fused group norm (with and without modulation and SiLU) against the tensor-op
    /// version, forward and every gradient.
    #[test]
    fn fused_group_norm_matches_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::random::seeded(11);
        let (b, c, h, w, groups) = (3, 8, 5, 4, 4);
        for film in [false, true] {
            for act in [false, true] {
                let store = ParamStore::new(2);
                let norm = Norm::new(groups, c, store.var_builder(DType::F32, &dev))?;
                for (_, var) in store.vars() {
                    let noise =
                        crate::random::normal_tensor(&mut rng, var.dims(), DType::F32, &dev)?;
                    var.set(&(var.as_tensor() + (noise * 0.5)?)?)?;
                }
                let mut normal = |dims: &[usize], shift: f64| -> Result<candle_core::Var> {
                    let t = crate::random::normal_tensor(&mut rng, dims, DType::F32, &dev)?;
                    Ok(candle_core::Var::from_tensor(&(t + shift)?)?)
                };
                let x = normal(&[b, c, h, w], 3.0)?;
                let e = normal(&[b, 2 * c], 0.0)?;
                let probe = normal(&[b, c, h, w], 0.0)?;
                let e_arg = film.then_some(e.as_tensor());
                let fused = norm.forward(&x, e_arg, act)?;
                let (scale, shift) = match e_arg {
                    None => (
                        norm.weight.unsqueeze(0)?.broadcast_as((b, c))?,
                        norm.bias.unsqueeze(0)?.broadcast_as((b, c))?,
                    ),
                    Some(e) => {
                        let gain = (e.narrow(1, 0, c)? + 1.0)?;
                        (
                            gain.broadcast_mul(&norm.weight.unsqueeze(0)?)?,
                            (gain.broadcast_mul(&norm.bias.unsqueeze(0)?)? + e.narrow(1, c, c)?)?,
                        )
                    }
                };
                let reference = norm.forward_ops(&x, &scale, &shift, act)?;
                assert!(max_diff(&fused, &reference)? < 1e-5);
                let gf = (fused * probe.as_tensor())?.sum_all()?.backward()?;
                let gr = (reference * probe.as_tensor())?.sum_all()?.backward()?;
                let mut checked = vec![x.as_tensor().clone()];
                checked.extend(store.vars().into_iter().map(|(_, v)| v.as_tensor().clone()));
                if film {
                    checked.push(e.as_tensor().clone());
                }
                for t in &checked {
                    let (Some(a), Some(b)) = (gf.get(t), gr.get(t)) else {
                        panic!("missing gradient (film {film}, act {act})")
                    };
                    assert!(
                        max_diff(a, b)? < 1e-4,
                        "film {film}, act {act}: {}",
                        max_diff(a, b)?
                    );
                }
            }
        }
        Ok(())
    }

    /// Repeated rows with and without a bias (shared or per output row) equal the broadcast
    /// tensor ops, values and gradients.
    #[test]
    fn fused_repeat_matches_broadcast_ops() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::random::seeded(14);
        let mut normal = |dims: &[usize]| -> Result<candle_core::Var> {
            let t = crate::random::normal_tensor(&mut rng, dims, DType::F32, &dev)?;
            Ok(candle_core::Var::from_tensor(&t)?)
        };
        // Planes smaller than a kernel part (parts cross rows) and larger (rows span parts).
        for (b, c, h, w, n) in [(3, 4, 5, 2, 1), (3, 4, 5, 2, 3), (2, 3, 40, 40, 2)] {
            let x = normal(&[b, c, h, w])?;
            let probe = normal(&[b * n, c, h, w])?;
            let repeated =
                x.unsqueeze(1)?
                    .broadcast_as((b, n, c, h, w))?
                    .reshape((b * n, c, h, w))?;
            for bb in [0, 1, b * n] {
                let bias = normal(&[bb.max(1), c])?;
                let (fused, reference) = if bb == 0 {
                    (repeat_rows(&x, n, None)?, repeated.clone())
                } else {
                    (
                        repeat_rows(&x, n, Some(&bias))?,
                        repeated.broadcast_add(&bias.reshape((bb, c, 1, 1))?)?,
                    )
                };
                assert!(max_diff(&fused, &reference)? < 1e-6);
                let gf = (fused * probe.as_tensor())?.sum_all()?.backward()?;
                let gr = (reference * probe.as_tensor())?.sum_all()?.backward()?;
                let vars = if bb == 0 { vec![&x] } else { vec![&x, &bias] };
                for v in vars {
                    let (Some(a), Some(b)) = (gf.get(v), gr.get(v)) else {
                        panic!("missing gradient")
                    };
                    // Sums of up to 6400 terms: relative to their size.
                    let scale = a.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                    assert!(max_diff(a, b)? < 1e-6 * scale, "{}", max_diff(a, b)?);
                }
            }
            let wrong = normal(&[2, c])?;
            assert!(repeat_rows(&x, n, Some(&wrong)).is_err());
        }
        Ok(())
    }

    #[test]
    fn fused_attention_matches_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::random::seeded(13);
        // Odd sizes, and one large enough for the products' blocking.
        for (bh, d, len) in [(3, 5, 11), (2, 16, 100)] {
            let qkv = candle_core::Var::from_tensor(
                &(crate::random::normal_tensor(&mut rng, &[bh, 3 * d, len], DType::F32, &dev)?
                    * 1.5)?,
            )?;
            let probe = crate::random::normal_tensor(&mut rng, &[bh, d, len], DType::F32, &dev)?;
            let fused = qkv
                .as_tensor()
                .apply_op1(attention::Attention { head_ch: d })?;
            let q = (qkv.narrow(1, 0, d)? * (1.0 / (d as f64).sqrt()))?;
            let k = qkv.narrow(1, d, d)?;
            let v = qkv.narrow(1, 2 * d, d)?;
            let weights = candle_nn::ops::softmax(&q.t()?.matmul(&k)?, D::Minus1)?;
            let reference = v.matmul(&weights.t()?)?;
            assert!(max_diff(&fused, &reference)? < 1e-5);
            let gf = (fused * &probe)?.sum_all()?.backward()?;
            let gr = (&reference * &probe)?.sum_all()?.backward()?;
            let (Some(a), Some(b)) = (gf.get(&qkv), gr.get(&qkv)) else {
                panic!("missing gradient")
            };
            assert!(max_diff(a, b)? < 1e-5, "{}", max_diff(a, b)?);
            // The same heads read from a [B, 3C, H, W] image (B = 1, C = BH·d, H = 1).
            let image = qkv.as_tensor().reshape((1, bh * 3 * d, 1, len))?;
            let fused4 = image.apply_op1(attention::Attention { head_ch: d })?;
            assert_eq!(fused4.dims(), [1, bh * d, 1, len]);
            let probe4 = probe.reshape((1, bh * d, 1, len))?;
            assert!(max_diff(&fused4.reshape((bh, d, len))?, &reference)? < 1e-5);
            let g4 = (fused4 * probe4)?.sum_all()?.backward()?;
            let a4 = g4.get(&qkv).expect("gradient");
            assert!(max_diff(a4, b)? < 1e-5);
        }
        Ok(())
    }

    /// The attention block against a direct transcription of the legacy head layout, with
    /// several heads.
    #[test]
    #[allow(clippy::needless_range_loop)] // index-by-index transcription on purpose
    fn multi_head_attention_follows_the_legacy_layout() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = UNetConfig {
            num_groups: 4,
            num_heads: 2,
            num_head_channels: None,
            ..UNetConfig::decomp_small()
        };
        let (c, heads, hw) = (8usize, 2usize, 3usize);
        let store = ParamStore::new(5);
        let vb = store.var_builder(DType::F32, &dev);
        let block = AttentionBlock::new(&cfg, c, vb.clone())?;
        // proj_out starts at zero; give it values.
        let mut rng = crate::random::seeded(9);
        for (_, var) in store.vars() {
            let noise = crate::random::normal_tensor(&mut rng, var.dims(), DType::F32, &dev)?;
            var.set(&(var.as_tensor() + (noise * 0.3)?)?)?;
        }
        let x = crate::random::normal_tensor(&mut rng, &[2, c, hw, hw], DType::F32, &dev)?;
        let got = block.forward(&x, None)?;

        let len = hw * hw;
        let xn = block.norm.forward(&x, None, false)?.reshape((2, c, len))?;
        let xn = xn.to_vec3::<f32>()?;
        let wq = block.qkv.weight.to_vec2::<f32>()?;
        let bq = block.qkv.bias.flatten_all()?.to_vec1::<f32>()?;
        let wp = block.proj_out.weight.to_vec2::<f32>()?;
        let bp = block.proj_out.bias.flatten_all()?.to_vec1::<f32>()?;
        let xs = x.reshape((2, c, len))?.to_vec3::<f32>()?;
        let got = got.reshape((2, c, len))?.to_vec3::<f32>()?;
        let d = c / heads;
        for n in 0..2 {
            let qkv: Vec<Vec<f32>> = (0..3 * c)
                .map(|o| {
                    (0..len)
                        .map(|p| bq[o] + (0..c).map(|i| wq[o][i] * xn[n][i][p]).sum::<f32>())
                        .collect()
                })
                .collect();
            let mut att = vec![vec![0f32; len]; c];
            for h in 0..heads {
                let row = |part: usize, j: usize| &qkv[h * 3 * d + part * d + j];
                for tq in 0..len {
                    let logits: Vec<f32> = (0..len)
                        .map(|s| {
                            (0..d).map(|j| row(0, j)[tq] * row(1, j)[s]).sum::<f32>()
                                / (d as f32).sqrt()
                        })
                        .collect();
                    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for j in 0..d {
                        att[h * d + j][tq] = (0..len).map(|s| e[s] / z * row(2, j)[s]).sum::<f32>();
                    }
                }
            }
            for o in 0..c {
                for p in 0..len {
                    let want =
                        xs[n][o][p] + bp[o] + (0..c).map(|i| wp[o][i] * att[i][p]).sum::<f32>();
                    assert!(
                        (got[n][o][p] - want).abs() < 1e-4,
                        "{n} {o} {p}: {} vs {want}",
                        got[n][o][p]
                    );
                }
            }
        }
        Ok(())
    }
}
