//! Memory estimates of the denoisers, their training and their sampling, for the memory guard
//! of [`recompose_core::memory`].
//!
//! The estimates are computed from a configuration alone, before any weight is allocated.
//! They are rough upper bounds (the formulas are written next to each function):
//!
//! - parameters: every weight and bias of the network's layers, `f32`;
//! - activations: the tensors one forward pass keeps per item for the backward pass, counted
//!   as a fixed number of feature maps per layer (normalization, activation, convolution,
//!   embedding sum, dropout, residual sum), and the attention scores and their softmax;
//! - training: weights, gradients, the two AdamW moments, the EMA copy and the two copies a
//!   checkpoint makes while it is serialized (7 copies of the parameters), plus the batch's
//!   activations twice (forward and their gradients);
//! - sampling: the weights (and the bytes of their file), one chunk's forward activations, the
//!   sampler's per-item temporaries (state, noise, prediction, estimate of x₀, update: 8
//!   copies) and the samples themselves, three times (the chunks, their concatenation and the
//!   output's conversion).

use recompose_core::memory::Estimate;

use crate::nn::{MlpConfig, UNetConfig};
use crate::run::ModelConfig;

/// Feature maps a residual block keeps per input and output channel and pixel.
const RES_BLOCK_MAPS: usize = 8;

/// Parameters of a residual MLP: input and output layers, the time embedding table `T × E`,
/// and per block a layer norm and four linear layers (H → B, E → B, B → B, B → H), weights
/// and biases.
pub fn mlp_params(c: &MlpConfig) -> Estimate {
    let (d, h, b, e) = (c.data_dim, c.hidden, c.block_hidden, c.time_embed_dim);
    let linear = |i: usize, o: usize| Estimate::f32s(&[i, o]) + Estimate::f32s(&[o]);
    let block = Estimate::f32s(&[2, h]) + linear(h, b) + linear(e, b) + linear(b, b) + linear(b, h);
    linear(d, h) + linear(h, d) + Estimate::f32s(&[c.num_timesteps, e]) + block * c.num_blocks
}

/// Forward activations of a residual MLP for one item: per block the norm and its statistics,
/// the four layers' outputs, the embedding sum and two activations (6·B + 4·H), and the input,
/// embedding and output layers (2·H + E + 2·d).
pub fn mlp_activations(c: &MlpConfig) -> Estimate {
    let (d, h, b, e) = (c.data_dim, c.hidden, c.block_hidden, c.time_embed_dim);
    let block = Estimate::f32s(&[b]) * 6 + Estimate::f32s(&[h]) * 4;
    block * c.num_blocks
        + Estimate::f32s(&[h]) * 2
        + Estimate::f32s(&[e])
        + Estimate::f32s(&[d]) * 2
}

/// The levels of a U-Net: (channels, side in pixels, attention?) for every level, the
/// resolution halving from one to the next.
fn unet_levels(c: &UNetConfig) -> Vec<(usize, usize, bool)> {
    let attn = c.attention_downsample_factors();
    c.channel_mult
        .iter()
        .enumerate()
        .map(|(l, &mult)| {
            let ds = 1usize.checked_shl(l as u32).unwrap_or(usize::MAX);
            (
                mult.saturating_mul(c.model_channels),
                c.image_size / ds.max(1),
                attn.contains(&ds),
            )
        })
        .collect()
}

/// Parameters of a U-Net, bounded level by level: per residual block two 3×3 convolutions of
/// up to 2C → C channels and C → C, a 1×1 skip, the embedding projection (2C outputs) and two
/// norms, 27·C² + 2·C·(emb + 2) + 2·C·C; per attention block 4·C² + 6·C; per level
/// 2·`num_res_blocks` + 3 blocks (down, up, resampling), a middle of two blocks and an
/// attention at the deepest level; the time-embedding MLP and the input and output
/// convolutions.
pub fn unet_params(c: &UNetConfig) -> Estimate {
    let emb = c.emb_dim();
    let res = |ch: usize| {
        Estimate::f32s(&[ch, ch]) * 29 + Estimate::f32s(&[ch, emb.saturating_add(2)]) * 2
    };
    let attn = |ch: usize| Estimate::f32s(&[ch, ch]) * 4 + Estimate::f32s(&[ch]) * 6;
    let mut e = Estimate::ZERO;
    let levels = unet_levels(c);
    for &(ch, _, a) in &levels {
        let blocks = c.num_res_blocks.saturating_mul(2).saturating_add(3);
        e += res(ch) * blocks;
        if a {
            e += attn(ch) * blocks;
        }
    }
    if let Some(&(ch, _, _)) = levels.last() {
        e += res(ch) * 2 + attn(ch);
    }
    let (mc, te) = (c.model_channels, c.time_embed_dim);
    e + Estimate::f32s(&[mc, te])
        + Estimate::f32s(&[te, te])
        + Estimate::f32s(&[9, mc, c.in_channels.saturating_add(c.out_channels)])
}

/// Forward activations of a U-Net for one item: per level and residual block
/// `RES_BLOCK_MAPS` (8) maps of up to 3·C channels (the up path concatenates skips) at the
/// level's resolution, 2·`num_res_blocks` + 3 blocks a level; per attention block at that
/// level the scores and their softmax, 2·heads·(S²)², and 6 maps of C channels; the middle's
/// two blocks and attention at the deepest level; and the input and output maps.
pub fn unet_activations(c: &UNetConfig) -> Estimate {
    let heads = |ch: usize| match c.num_head_channels {
        Some(hc) if hc > 0 => (ch / hc).max(1),
        _ => c.num_heads.max(1),
    };
    let res = |ch: usize, s: usize| Estimate::f32s(&[RES_BLOCK_MAPS * 3, ch, s, s]);
    let attn = |ch: usize, s: usize| {
        let pixels = s.saturating_mul(s);
        Estimate::f32s(&[2, heads(ch), pixels, pixels]) + Estimate::f32s(&[6, ch, pixels])
    };
    let mut e = Estimate::ZERO;
    let levels = unet_levels(c);
    for &(ch, s, a) in &levels {
        let blocks = c.num_res_blocks.saturating_mul(2).saturating_add(3);
        e += res(ch, s) * blocks;
        if a {
            e += attn(ch, s) * blocks;
        }
    }
    if let Some(&(ch, s, _)) = levels.last() {
        e += res(ch, s) * 2 + attn(ch, s);
    }
    let side = c.image_size;
    e + Estimate::f32s(&[c.model_channels, side, side]) * 2
        + Estimate::f32s(&[c.in_channels.saturating_add(c.out_channels), side, side])
}

impl ModelConfig {
    /// Bytes of the network's parameters ([`mlp_params`], [`unet_params`]).
    pub fn param_bytes(&self) -> Estimate {
        match self {
            ModelConfig::Mlp(m) => mlp_params(m),
            ModelConfig::Unet(u) => unet_params(u),
        }
    }

    /// Bytes of one forward pass's activations for one item ([`mlp_activations`],
    /// [`unet_activations`]).
    pub fn activation_bytes(&self) -> Estimate {
        match self {
            ModelConfig::Mlp(m) => mlp_activations(m),
            ModelConfig::Unet(u) => unet_activations(u),
        }
    }
}

/// Peak bytes of training a network of `params` parameter bytes and `activations` activation
/// bytes per item on batches of `batch` items whose data takes `data` bytes in memory: 7
/// copies of the parameters (weights, gradients, two AdamW moments, EMA, a checkpoint's tensor
/// copy and serialized bytes), the batch's activations twice (forward and backward), and the
/// data.
pub fn train_estimate(
    params: Estimate,
    activations: Estimate,
    batch: usize,
    data: Estimate,
) -> Estimate {
    params * 7 + activations * batch * 2 + data
}

/// Peak bytes of drawing `num` samples of `item_elems` values each in chunks of `chunk` with a
/// network of `params` parameter bytes and `activations` activation bytes per item: the
/// weights and the bytes of their file, one chunk's activations and 8 sampler temporaries per
/// item, and the samples three times (the chunks, their concatenation, the written output).
pub fn sample_estimate(
    params: Estimate,
    activations: Estimate,
    item_elems: usize,
    num: usize,
    chunk: usize,
) -> Estimate {
    let chunk = chunk.min(num);
    params * 2
        + activations * chunk
        + Estimate::f32s(&[chunk, item_elems]) * 8
        + Estimate::f32s(&[num, item_elems]) * 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    use crate::param::Parameterization;

    /// The number of `f32` values of the variables of a network built on a fresh map.
    fn built_params(build: impl FnOnce(VarBuilder)) -> u64 {
        let map = VarMap::new();
        build(VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu));
        map.all_vars().iter().map(|v| v.elem_count() as u64).sum()
    }

    #[test]
    fn parameter_estimates_bound_the_built_networks() {
        let mlp = MlpConfig::default();
        let built = built_params(|vb| {
            crate::nn::ResidualMlp::new(&mlp, Parameterization::Epsilon, vb).expect("mlp");
        });
        let est = mlp_params(&mlp).get().expect("fits") / 4;
        assert!(est >= built && est <= 2 * built, "mlp: {est} vs {built}");
        for unet in [UNetConfig::decomp_small(), UNetConfig::decomp_tiny()] {
            let built = built_params(|vb| {
                crate::nn::UNet::new(&unet, Parameterization::Epsilon, vb).expect("unet");
            });
            let est = unet_params(&unet).get().expect("fits") / 4;
            assert!(est >= built && est <= 4 * built, "unet: {est} vs {built}");
        }
    }

    #[test]
    fn estimates_grow_with_the_request_and_overflow_cleanly() {
        let m = ModelConfig::Mlp(MlpConfig::default());
        let a = sample_estimate(m.param_bytes(), m.activation_bytes(), 2, 1000, 4096);
        let b = sample_estimate(m.param_bytes(), m.activation_bytes(), 2, 1_000_000, 4096);
        assert!(b.get() > a.get());
        // The samples alone: 10⁶ × 2 × 4 bytes, three times.
        assert!(b.get().expect("fits") >= 24_000_000);
        let huge = sample_estimate(m.param_bytes(), m.activation_bytes(), 2, usize::MAX, 4096);
        assert_eq!(huge, Estimate::OVERFLOW);
        let unet = UNetConfig {
            image_size: 1 << 40,
            ..UNetConfig::decomp_small()
        };
        assert_eq!(unet_activations(&unet), Estimate::OVERFLOW);
        // Training: 7 copies of the parameters at least.
        let t = train_estimate(m.param_bytes(), m.activation_bytes(), 256, Estimate::ZERO);
        assert!(t.get() >= m.param_bytes().get().map(|p| 7 * p));
    }
}
