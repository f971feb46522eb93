//! Energy parameterization of the U-Net, with its input gradient written out by hand.
//!
//! Du et al., *Reduce, Reuse, Recycle: Compositional Generation with Energy-Based Diffusion
//! Models and MCMC* (ICML 2023), §3 and their image models: the U-Net output g_θ(x, t) (of the
//! image's shape) is reduced to one scalar energy per image, E_θ(x, t) = ½‖g‖² or ‖g − x‖²
//! ([`EnergyForm`], the same reductions as the [energy MLP](crate::nn::energy)), and the ε
//! prediction is its input gradient, ε̂ = ∇ₓE. Training minimizes ‖∇ₓE − ε‖², whose parameter
//! gradient is a gradient of a gradient through every layer of the U-Net.
//!
//! # The hand-written vector–Jacobian product
//!
//! candle takes no second-order gradients through its convolutions (and its backward pass
//! detaches what it produces), so, as for the energy MLP, ∇ₓE is written out as the transposed
//! chain rule `u ↦ Jᵀu` (u = ∂E/∂g) in ordinary tensor operations. The forward pass keeps the
//! activations the backward pass needs; every operation of the backward pass is itself a
//! differentiable op (convolutions of the CPU fast path included, whose first-order backward
//! suffices), so `loss.backward()` on a loss of ∇ₓE gives exact parameter gradients. The
//! embedding path `SiLU(cat(cond, time_embed(t)))` does not depend on x and has no input
//! gradient, but it enters the backward pass through the modulations and biases it sets, and
//! so receives its parameter gradient.
//!
//! | forward                                   | input gradient of an upstream gradient `g`               |
//! |-------------------------------------------|----------------------------------------------------------|
//! | `conv3x3(x)`, stride 1, padding p, W `[O,I,k,k]` | conv of g with `W` flipped in space, `[I,O]` swapped, padding `k−1−p` |
//! | `conv3x3(x)`, stride 2 (`op`)             | g spread onto the even pixels (zeros between), then as stride 1 |
//! | 1×1 projection `W x + b`                  | `Wᵀ g`                                                   |
//! | `SiLU(y)`                                 | `g · σ(y)(1 + y − SiLU(y))` = `g · σ(y)(1 + y(1 − σ(y)))` |
//! | `y = x̂·s + β`, `x̂ = (x − μ)·r`, `r = 1/√(var + eps)` per (image, group) | `g_x̂ = g·s`, then `r (g_x̂ − mean g_x̂ − x̂ · mean(g_x̂ x̂))` over the group |
//! | scale-shift norm: `s = γ(1 + scale)`, `β = β_γ(1 + scale) + shift` | as above (s, β do not depend on x)        |
//! | `A = V Pᵀ`, `P = softmax(QᵀK/√d)` per head | `g_V = g P`, `g_P = gᵀ V`, `g_S = P ⊙ (g_P − rowsum(g_P ⊙ P))`, `g_Q = K g_Sᵀ/√d`, `g_K = (Q/√d) g_S` |
//! | cross-attention `A = V Pᵀ`, `P = softmax(QᵀK/√d + mask)`, K, V from token states | through Q only: `g_Q = K g_Sᵀ/√d` (K and V do not depend on x; they get their parameter gradients through the tracked graph) |
//! | `avg_pool2x(x)`                           | `nearest_up2x(g) / 4`                                    |
//! | `nearest_up2x(x)`                         | `4 · avg_pool2x(g)` (the 2×2 sum)                         |
//! | `cat(h, skip)` over channels               | the gradient split into its two channel ranges           |
//! | `x + f(x)` (residual, skip connections)   | `g + Jᵀ_f g`; a skip saved in the encoder adds its decoder gradient |
//! | `E = ½‖g‖²` / `E = ‖g − x‖²`              | `u = g` / `u = 2(g − x)`; `∇ₓE = Jᵀu` / `Jᵀu − u`        |
//!
//! # Supported configurations
//!
//! Every valid [`UNetConfig`] with `dropout = 0` (the input gradient is that of a
//! deterministic function, so dropout is rejected with [`Error::Config`] instead of being
//! silently switched off), both resampling styles (`resblock_updown` true or false), with or
//! without scale-shift norm, any attention layout and conditioning width, with or without
//! coordinate channels and cross-attention to token states
//! ([`EnergyUNet::energy_and_grad_context`]). The form
//! `E = ‖g − x‖²` needs `out_channels = in_channels`.
//!
//! # Initialization and parameters
//!
//! The parameters are those of [`UNet`] under the same names, so a checkpoint is an ordinary
//! U-Net state dict. Unlike [`UNet::new`], the output convolution `out.2` starts with
//! PyTorch's default initialization ([`UNet::with_random_output`], drawn from the same
//! [`VarBuilder`]) for both forms: Du et al. note that a zero last layer makes g constant and so
//! the gradient of `E = ½‖g‖²` zero. The other zero-initialized layers (the last convolution of
//! each residual block, the attention `proj_out`) sit on residual branches and keep theirs.
//!
//! # Speed
//!
//! The convolutions of both passes, the projections and the resampling run on the CPU fast
//! paths for `f32`. The group norms are candle's elementwise ops while the parameters record
//! a graph (training: the backward pass must itself be differentiable) and the fused CPU
//! kernel with its one-pass input gradient when nothing is tracked (inference on weights
//! loaded for sampling, see [`crate::nn::ParamStore::frozen_var_builder`]); the attention is
//! candle's matrix products.

use candle_core::{D, Module, Tensor};
use candle_nn::VarBuilder;

use recompose_core::host::on_fast_path;
use recompose_core::ops::group_norm;

use crate::denoiser::Denoiser;
use crate::nn::conv::Conv2d;
use crate::nn::energy::EnergyForm;
use crate::nn::layers::{ConvSpec, avg_pool2x, upsample_nearest2x};
use crate::nn::unet::{
    Attended, AttentionBlock, Block, CrossAttention, NORM_EPS, Norm, Pointwise, ResBlock, Resample,
    TokenContext, UNet, UNetConfig,
};
use crate::param::Parameterization;
use crate::{Error, Result};

/// A [`UNet`] g read as an energy model (see the [module documentation](self)).
///
/// As a [`Denoiser`] it predicts ε̂ = ∇ₓE; [`EnergyUNet::energy_and_grad`] returns the energy
/// too. Its parameters have the names of the wrapped network.
#[derive(Debug, Clone)]
pub struct EnergyUNet {
    net: UNet,
    form: EnergyForm,
}

/// What a group norm (with optional SiLU) keeps for its backward pass.
enum NormCache {
    /// The tensor-op form, whose backward pass is itself a tracked graph (training).
    Ops {
        /// The normalized input, `[B, G, n]`.
        xhat: Tensor,
        /// `1/√(var + eps)` per image and group, `[B, G, 1]`.
        inv_std: Tensor,
        /// The per-image, per-channel scale of the affine map, `[B, C, 1, 1]`.
        scale: Tensor,
        /// The SiLU's argument, σ of it and its value, when the norm is followed by one.
        act: Option<(Tensor, Tensor, Tensor)>,
        dims: (usize, usize, usize, usize),
    },
    /// The fused CPU kernel: the input, the per-image scale and shift `[B, C]` and the
    /// kernel, whose one-pass input gradient serves the backward pass. When the inputs are
    /// tracked (training), the forward pass and the input gradient are both recorded ops, the
    /// latter differentiable once more by its second-order kernel.
    Fused {
        x: Tensor,
        scale: Tensor,
        shift: Tensor,
        op: group_norm::GroupNorm,
        tracked: bool,
    },
}

impl NormCache {
    /// The spatial size of the norm's input.
    fn spatial(&self) -> Result<(usize, usize)> {
        match self {
            Self::Ops { dims, .. } => Ok((dims.2, dims.3)),
            Self::Fused { x, .. } => spatial(x),
        }
    }
}

/// What a residual block keeps for its backward pass.
struct ResCache {
    in_norm: NormCache,
    out_norm: NormCache,
}

/// What an attention block keeps for its backward pass (all per head, `[B·heads, …]`).
struct AttnCache {
    norm: NormCache,
    /// The queries scaled by 1/√d, `[BH, d, L]`.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// The attention weights, `[BH, L (queries), L (keys)]`.
    p: Tensor,
}

impl AttnCache {
    /// The output of an attention and its cache.
    fn new(norm: NormCache, a: Attended) -> (Tensor, Self) {
        let Attended { out, q, k, v, p } = a;
        (out, Self { norm, q, k, v, p })
    }
}

enum BlockCache {
    Res(ResCache),
    /// The self-attention's values, then the cross-attention's (queries from the features,
    /// keys and values from the tokens, weights `[BH, N, L]`).
    Attn(AttnCache, Option<AttnCache>),
    /// A strided convolution, with the spatial size of its input.
    Down(usize, usize),
    Up,
}

/// σ(z) and SiLU(z) = z σ(z).
fn silu_parts(z: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = candle_nn::ops::sigmoid(z)?;
    let a = (z * &s)?;
    Ok((s, a))
}

/// `g · SiLU′(z)` with `SiLU′(z) = σ(z)(1 + z − SiLU(z))`.
fn silu_backward(g: &Tensor, z: &Tensor, s: &Tensor, a: &Tensor) -> Result<Tensor> {
    let d = ((z - a)? + 1.0)?.mul(s)?;
    Ok(g.mul(&d)?)
}

/// The group norm of `norm` on `x` `[B, C, H, W]` (modulated by `film` `[B, 2C]` if given,
/// then SiLU if `act`), as the U-Net computes it, keeping its backward pass's values. On the
/// CPU fast path the fused kernel computes it (and later its input gradient, a recorded op
/// with an exact second-order backward pass when the inputs are tracked); otherwise tensor
/// ops, whose backward pass candle differentiates again.
fn norm_forward(
    norm: &Norm,
    x: &Tensor,
    film: Option<&Tensor>,
    act: bool,
) -> Result<(Tensor, NormCache)> {
    let (b, c, h, w) = x.dims4()?;
    let groups = norm.groups;
    let (scale, shift) = norm.scale_shift(b, c, film)?;
    if on_fast_path(&[x, &scale, &shift]) {
        let tracked = x.track_op() || scale.track_op() || shift.track_op();
        let op = group_norm::GroupNorm {
            groups,
            eps: NORM_EPS,
            silu: act,
        };
        let (x, scale, shift) = (x.contiguous()?, scale.contiguous()?, shift.contiguous()?);
        let out = if tracked {
            x.apply_op3(&scale, &shift, op)?
        } else {
            x.apply_op3_no_bwd(&scale, &shift, &op)?
        };
        return Ok((
            out,
            NormCache::Fused {
                x,
                scale,
                shift,
                op,
                tracked,
            },
        ));
    }
    let xg = x.reshape((b, groups, (c / groups) * h * w))?;
    let centered = xg.broadcast_sub(&xg.mean_keepdim(2)?)?;
    let var = centered.sqr()?.mean_keepdim(2)?;
    let inv_std = (var + NORM_EPS)?.sqrt()?.recip()?;
    let xhat = centered.broadcast_mul(&inv_std)?;
    let scale = scale.reshape((b, c, 1, 1))?;
    let y = xhat
        .reshape((b, c, h, w))?
        .broadcast_mul(&scale)?
        .broadcast_add(&shift.reshape((b, c, 1, 1))?)?;
    let (out, act) = if act {
        let (s, a) = silu_parts(&y)?;
        (a.clone(), Some((y, s, a)))
    } else {
        (y, None)
    };
    Ok((
        out,
        NormCache::Ops {
            xhat,
            inv_std,
            scale,
            act,
            dims: (b, c, h, w),
        },
    ))
}

/// The input gradient of [`norm_forward`] for the upstream gradient `g`.
fn norm_backward(cache: &NormCache, g: &Tensor) -> Result<Tensor> {
    let (xhat, inv_std, scale, act, dims) = match cache {
        NormCache::Fused {
            x,
            scale,
            shift,
            op,
            tracked,
        } => {
            return Ok(if *tracked {
                op.input_grad_tracked(x, scale, shift, g)?
            } else {
                op.input_grad(x, scale, shift, g)?
            });
        }
        NormCache::Ops {
            xhat,
            inv_std,
            scale,
            act,
            dims,
        } => (xhat, inv_std, scale, act, *dims),
    };
    let g_y = match act {
        Some((y, s, a)) => silu_backward(g, y, s, a)?,
        None => g.clone(),
    };
    let g_xhat = g_y.broadcast_mul(scale)?.reshape(xhat.dims())?;
    let m1 = g_xhat.mean_keepdim(2)?;
    let m2 = (&g_xhat * xhat)?.mean_keepdim(2)?;
    let g_x = g_xhat
        .broadcast_sub(&m1)?
        .sub(&xhat.broadcast_mul(&m2)?)?
        .broadcast_mul(inv_std)?;
    Ok(g_x.reshape(dims)?)
}

/// The input gradient of the convolution `conv` (bias irrelevant) for the upstream gradient `g`,
/// given the spatial size `(h, w)` of the convolution's input: a stride-1 convolution of `g`
/// (spread onto the stride's grid first) with the spatially flipped, in/out-swapped kernel.
fn conv_input_grad(conv: &Conv2d, g: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let spec = conv.spec();
    let weight = conv.weight();
    let (_, _, k, _) = weight.dims4()?;
    let swapped = weight.transpose(0, 1)?.contiguous()?;
    let flipped = if k == 1 {
        swapped
    } else {
        let rev: Vec<u32> = (0..k as u32).rev().collect();
        let rev = Tensor::from_vec(rev, k, weight.device())?;
        swapped.index_select(&rev, 2)?.index_select(&rev, 3)?
    };
    let adjoint = Conv2d::from_tensors(
        flipped,
        None,
        ConvSpec {
            kernel: k,
            stride: 1,
            padding: k - 1 - spec.padding,
        },
    )?;
    let g = if spec.stride == 1 {
        g.clone()
    } else {
        spread(g, spec.stride, h, w)?
    };
    let out = adjoint.apply(&g)?;
    if out.dims()[2..] != [h, w] {
        return Err(Error::Shape(format!(
            "energy unet: the input gradient of a convolution is {:?}, its input was {h}×{w}",
            out.dims()
        )));
    }
    Ok(out)
}

/// `g` `[B, C, h, w]` placed on every `s`-th pixel of a zero `[B, C, H, W]` map (the adjoint of
/// taking every `s`-th pixel), cut or zero-padded on the high side to `H × W`.
fn spread(g: &Tensor, s: usize, h: usize, w: usize) -> Result<Tensor> {
    let (b, c, gh, gw) = g.dims4()?;
    let zeros = Tensor::zeros((b, c, gh, gw, s - 1), g.dtype(), g.device())?;
    let rows = Tensor::cat(&[&g.unsqueeze(4)?, &zeros], 4)?.reshape((b, c, gh, 1, gw * s))?;
    let zeros = Tensor::zeros((b, c, gh, s - 1, gw * s), g.dtype(), g.device())?;
    let full = Tensor::cat(&[&rows, &zeros], 3)?.reshape((b, c, gh * s, gw * s))?;
    let full = if gh * s < h || gw * s < w {
        full.pad_with_zeros(2, 0, h.saturating_sub(gh * s))?
            .pad_with_zeros(3, 0, w.saturating_sub(gw * s))?
    } else {
        full
    };
    Ok(full.narrow(2, 0, h)?.narrow(3, 0, w)?)
}

/// The input gradient `Wᵀ g` of the 1×1 projection `p` for `g` `[B, out, H, W]`.
fn pointwise_input_grad(p: &Pointwise, g: &Tensor) -> Result<Tensor> {
    let (o, i) = p.weight.dims2()?;
    let wt = p.weight.t()?.contiguous()?.reshape((i, o, 1, 1))?;
    Conv2d::from_tensors(wt, None, ConvSpec::POINTWISE)?.apply(g)
}

/// The input gradient of `avg_pool2x` (`Down`) or `upsample_nearest2x` (`Up`).
fn resample_input_grad(resample: Resample, g: &Tensor) -> Result<Tensor> {
    Ok(match resample {
        Resample::Keep => g.clone(),
        Resample::Down => (upsample_nearest2x(g)? * 0.25)?,
        Resample::Up => (avg_pool2x(g)? * 4.0)?,
    })
}

fn resample(resample: Resample, x: &Tensor) -> Result<Tensor> {
    match resample {
        Resample::Keep => Ok(x.clone()),
        Resample::Down => avg_pool2x(x),
        Resample::Up => upsample_nearest2x(x),
    }
}

fn spatial(x: &Tensor) -> Result<(usize, usize)> {
    let (_, _, h, w) = x.dims4()?;
    Ok((h, w))
}

fn res_forward(r: &ResBlock, x: &Tensor, emb_act: &Tensor) -> Result<(Tensor, ResCache)> {
    let (a1, in_norm) = norm_forward(&r.in_norm, x, None, true)?;
    let a1 = resample(r.resample, &a1)?;
    let xr = resample(r.resample, x)?;
    let e = r.emb_projection(emb_act)?;
    let (a2, out_norm) = if r.scale_shift {
        let p = r.in_conv.forward(&a1)?;
        norm_forward(&r.out_norm, &p, Some(&e), true)?
    } else {
        let p = r.in_conv.forward_bias(&a1, &r.merged_bias(&e)?)?;
        norm_forward(&r.out_norm, &p, None, true)?
    };
    let skip = match &r.skip {
        None => xr,
        Some(p) => p.forward(&xr)?,
    };
    let out = r.out_conv.forward_residual(&a2, &skip)?;
    Ok((out, ResCache { in_norm, out_norm }))
}

fn res_backward(r: &ResBlock, c: &ResCache, g: &Tensor) -> Result<Tensor> {
    let (h, w) = c.out_norm.spatial()?;
    let g_a2 = conv_input_grad(&r.out_conv, g, (h, w))?;
    let g_p = norm_backward(&c.out_norm, &g_a2)?;
    let g_a1 = conv_input_grad(&r.in_conv, &g_p, (h, w))?;
    let g_a1 = resample_input_grad(r.resample, &g_a1)?;
    let g_skip = match &r.skip {
        None => g.clone(),
        Some(p) => pointwise_input_grad(p, g)?,
    };
    let g_skip = resample_input_grad(r.resample, &g_skip)?;
    Ok((norm_backward(&c.in_norm, &g_a1)? + g_skip)?)
}

fn attn_forward(a: &AttentionBlock, x: &Tensor) -> Result<(Tensor, AttnCache)> {
    let (xn, norm) = norm_forward(&a.norm, x, None, false)?;
    Ok(AttnCache::new(norm, a.attend(x, &a.qkv.forward(&xn)?)?))
}

/// The gradient of the logits `g_S = P ⊙ (g_P − rowsum(g_P ⊙ P))` for the gradient `g_att`
/// `[BH, d, N]` of the attended values `V Pᵀ`.
fn logits_grad(c: &AttnCache, g_att: &Tensor) -> Result<Tensor> {
    let g_p = g_att.t()?.matmul(&c.v)?;
    let rowsum = (&g_p * &c.p)?.sum_keepdim(D::Minus1)?;
    Ok((&c.p * g_p.broadcast_sub(&rowsum)?)?)
}

/// The cross-attention of `a` on `x` under the token states `ctx`, keeping its backward
/// pass's values.
fn cross_forward(
    a: &CrossAttention,
    x: &Tensor,
    ctx: &TokenContext,
) -> Result<(Tensor, AttnCache)> {
    let (xn, norm) = norm_forward(&a.norm, x, None, false)?;
    Ok(AttnCache::new(norm, a.attend(x, &xn, ctx)?))
}

/// The input gradient of [`cross_forward`]: through the queries only (the keys and values
/// are functions of the tokens, not of x).
fn cross_backward(a: &CrossAttention, c: &AttnCache, g: &Tensor) -> Result<Tensor> {
    let (b, ch, hh, ww) = g.dims4()?;
    let d = ch / a.heads;
    let g_att = pointwise_input_grad(&a.proj_out, g)?.reshape((b * a.heads, d, hh * ww))?;
    let g_s = logits_grad(c, &g_att)?;
    let g_q = (c.k.matmul(&g_s.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let g_xn = pointwise_input_grad(&a.q, &g_q.reshape((b, ch, hh, ww))?)?;
    Ok((g + norm_backward(&c.norm, &g_xn)?)?)
}

fn attn_backward(a: &AttentionBlock, c: &AttnCache, g: &Tensor) -> Result<Tensor> {
    let (b, ch, hh, ww) = g.dims4()?;
    let d = ch / a.heads;
    let g_att = pointwise_input_grad(&a.proj_out, g)?.reshape((b * a.heads, d, hh * ww))?;
    let g_v = g_att.matmul(&c.p)?;
    let g_s = logits_grad(c, &g_att)?;
    let g_q = (c.k.matmul(&g_s.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let g_k = c.q.matmul(&g_s)?;
    let g_qkv = Tensor::cat(&[&g_q, &g_k, &g_v], 1)?.reshape((b, 3 * ch, hh, ww))?;
    let g_xn = pointwise_input_grad(&a.qkv, &g_qkv)?;
    Ok((g + norm_backward(&c.norm, &g_xn)?)?)
}

fn block_forward(
    block: &Block,
    x: &Tensor,
    emb_act: &Tensor,
    ctx: Option<&TokenContext>,
) -> Result<(Tensor, BlockCache)> {
    Ok(match block {
        Block::Res(r) => {
            let (out, c) = res_forward(r, x, emb_act)?;
            (out, BlockCache::Res(c))
        }
        Block::Attn(a) => {
            let (out, c) = attn_forward(a, x)?;
            match (&a.cross, ctx) {
                (None, _) => (out, BlockCache::Attn(c, None)),
                (Some(cross), Some(ctx)) => {
                    let (out, cc) = cross_forward(cross, &out, ctx)?;
                    (out, BlockCache::Attn(c, Some(cc)))
                }
                (Some(_), None) => {
                    return Err(Error::Shape(
                        "energy unet: a cross-attention block needs token states".to_string(),
                    ));
                }
            }
        }
        Block::Down(conv) => {
            let (h, w) = spatial(x)?;
            (conv.forward(x)?, BlockCache::Down(h, w))
        }
        Block::Up(conv) => (conv.forward(&upsample_nearest2x(x)?)?, BlockCache::Up),
    })
}

fn block_backward(block: &Block, cache: &BlockCache, g: &Tensor) -> Result<Tensor> {
    match (block, cache) {
        (Block::Res(r), BlockCache::Res(c)) => res_backward(r, c, g),
        (Block::Attn(a), BlockCache::Attn(c, cross)) => match (&a.cross, cross) {
            (None, None) => attn_backward(a, c, g),
            (Some(ca), Some(cc)) => attn_backward(a, c, &cross_backward(ca, cc, g)?),
            _ => Err(Error::Config(
                "energy unet: a block and its saved activations do not match".to_string(),
            )),
        },
        (Block::Down(conv), BlockCache::Down(h, w)) => conv_input_grad(conv, g, (*h, *w)),
        (Block::Up(conv), BlockCache::Up) => {
            let g = conv_input_grad(conv, g, spatial(g)?)?;
            resample_input_grad(Resample::Up, &g)
        }
        _ => Err(Error::Config(
            "energy unet: a block and its saved activations do not match".to_string(),
        )),
    }
}

fn seq_forward(
    blocks: &[Block],
    mut h: Tensor,
    emb_act: &Tensor,
    ctx: Option<&TokenContext>,
) -> Result<(Tensor, Vec<BlockCache>)> {
    let mut caches = Vec::with_capacity(blocks.len());
    for block in blocks {
        let (out, c) = block_forward(block, &h, emb_act, ctx)?;
        h = out;
        caches.push(c);
    }
    Ok((h, caches))
}

fn seq_backward(blocks: &[Block], caches: &[BlockCache], mut g: Tensor) -> Result<Tensor> {
    for (block, c) in blocks.iter().zip(caches).rev() {
        g = block_backward(block, c, &g)?;
    }
    Ok(g)
}

/// Checks that `config` is one the hand-written input gradient supports for `form`.
fn check_supported(config: &UNetConfig, form: EnergyForm) -> Result<()> {
    config.validate()?;
    if config.dropout != 0.0 {
        return Err(Error::Config(format!(
            "energy unet: dropout must be 0 (the ε prediction is the input gradient of a \
             deterministic energy), got {}",
            config.dropout
        )));
    }
    if form == EnergyForm::SquaredResidual && config.out_channels != config.in_channels {
        return Err(Error::Config(format!(
            "energy unet: the energy ‖g − x‖² needs out_channels = in_channels, got {} and {}",
            config.out_channels, config.in_channels
        )));
    }
    Ok(())
}

impl EnergyUNet {
    /// Builds the network g (on the parameters of `vb`, under the [`UNet`] names, with a
    /// randomly initialized output convolution) with the energy `form`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid or unsupported configuration (see the
    /// [module documentation](self)); [`Error::Candle`] if a parameter is missing from a
    /// loaded `vb` or has another shape.
    pub fn new(config: &UNetConfig, form: EnergyForm, vb: VarBuilder) -> Result<Self> {
        check_supported(config, form)?;
        let net = UNet::with_random_output(config, Parameterization::Epsilon, vb)?;
        Ok(Self { net, form })
    }

    /// Reads an existing network g as an energy model with the given form (its own
    /// parameterization is ignored: the energy model predicts ε).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a configuration the energy model does not support.
    pub fn from_net(net: UNet, form: EnergyForm) -> Result<Self> {
        check_supported(net.config(), form)?;
        Ok(Self { net, form })
    }

    /// The wrapped network g.
    pub fn net(&self) -> &UNet {
        &self.net
    }

    /// The energy form.
    pub fn form(&self) -> EnergyForm {
        self.form
    }

    /// The energy `E(x, t)` (`[B]`) of a batch `x` (`[B, C, H, W]`) at the per-sample times `t`
    /// (`[B]`) under the conditioning `cond` (`[B, cond_dim]`, as for [`UNet`]), without its
    /// gradient; the U-Net runs as [`Denoiser::forward`] of [`UNet`] does (eval mode, fused
    /// kernels), so the value equals the energy of [`EnergyUNet::energy_and_grad`] up to
    /// rounding.
    ///
    /// # Errors
    ///
    /// As [`UNet::forward_with`].
    pub fn energy(&self, x: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        self.energy_context(x, t, cond, None)
    }

    /// [`EnergyUNet::energy`] of a network that cross-attends to the token states `ctx` (see
    /// [`UNet::forward_context`]).
    ///
    /// # Errors
    ///
    /// As [`UNet::forward_context`].
    pub fn energy_context(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        ctx: Option<&TokenContext>,
    ) -> Result<Tensor> {
        let g = self.net.forward_context(x, t, cond, ctx, None)?;
        self.reduce(x, &g)
    }

    fn reduce(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        Ok(match self.form {
            EnergyForm::SquaredResidual => (g - x)?.sqr()?.flatten_from(1)?.sum(D::Minus1)?,
            EnergyForm::HalfNorm => (g.sqr()?.flatten_from(1)?.sum(D::Minus1)? * 0.5)?,
        })
    }

    /// The energy `E(x, t)` (`[B]`) and its input gradient `∇ₓE` (`[B, C, H, W]`, the ε
    /// prediction), both as tracked tensor operations: a loss built on either back-propagates
    /// into every parameter (see the [module documentation](self)).
    ///
    /// # Errors
    ///
    /// As [`UNet::forward_with`]: [`Error::Shape`] naming the input that does not fit;
    /// [`Error::Candle`] from the ops (for instance an `x` of another dtype than the
    /// parameters).
    pub fn energy_and_grad(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        self.energy_and_grad_context(x, t, cond, None)
    }

    /// [`EnergyUNet::energy_and_grad`] of a network that cross-attends to the token states
    /// `ctx` (see [`UNet::forward_context`]); the gradient is with respect to x only, and
    /// the tokens' encoder receives its parameter gradient through the keys and values.
    ///
    /// # Errors
    ///
    /// As [`UNet::forward_context`].
    pub fn energy_and_grad_context(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        ctx: Option<&TokenContext>,
    ) -> Result<(Tensor, Tensor)> {
        let net = &self.net;
        net.check_inputs(x, t, cond, ctx, 1)?;
        let emb_act = net.embedding(t, cond)?;
        // Forward pass, keeping what the backward pass needs.
        let mut h = net.input_conv.forward(&net.input_features(x)?)?;
        let mut skips = vec![h.clone()];
        let mut input_caches = Vec::with_capacity(net.input_blocks.len());
        for seq in &net.input_blocks {
            let (out, caches) = seq_forward(seq, h, &emb_act, ctx)?;
            h = out;
            skips.push(h.clone());
            input_caches.push(caches);
        }
        let (out, middle_caches) = seq_forward(&net.middle_block, h, &emb_act, ctx)?;
        h = out;
        // Per output level: the index of the skip it takes, the channels of `h` before the
        // concatenation, and the activations.
        let mut output_caches = Vec::with_capacity(net.output_blocks.len());
        for seq in &net.output_blocks {
            let skip = skips.pop().ok_or_else(|| {
                Error::Config("energy unet: unbalanced skip connections".to_string())
            })?;
            let split = h.dim(1)?;
            let (out, caches) = seq_forward(seq, Tensor::cat(&[&h, &skip], 1)?, &emb_act, ctx)?;
            h = out;
            output_caches.push((skips.len(), split, caches));
        }
        let (a, out_norm) = norm_forward(&net.out_norm, &h, None, true)?;
        let g = net.out_conv.forward(&a)?;
        let energy = self.reduce(x, &g)?;
        // u = ∂E/∂g, then Jᵀu back through the network.
        let u = match self.form {
            EnergyForm::SquaredResidual => ((&g - x)? * 2.0)?,
            EnergyForm::HalfNorm => g.clone(),
        };
        let mut gh = norm_backward(
            &out_norm,
            &conv_input_grad(&net.out_conv, &u, spatial(&h)?)?,
        )?;
        let mut skip_grads: Vec<Option<Tensor>> = vec![None; net.input_blocks.len() + 1];
        for (seq, (skip, split, caches)) in net.output_blocks.iter().zip(&output_caches).rev() {
            let g_cat = seq_backward(seq, caches, gh)?;
            let total = g_cat.dim(1)?;
            let slot = skip_grads.get_mut(*skip).ok_or_else(|| {
                Error::Config("energy unet: unbalanced skip connections".to_string())
            })?;
            *slot = Some(g_cat.narrow(1, *split, total - split)?);
            gh = g_cat.narrow(1, 0, *split)?;
        }
        gh = seq_backward(&net.middle_block, &middle_caches, gh)?;
        for (i, (seq, caches)) in net.input_blocks.iter().zip(&input_caches).enumerate().rev() {
            if let Some(gs) = skip_grads[i + 1].take() {
                gh = (gh + gs)?;
            }
            gh = seq_backward(seq, caches, gh)?;
        }
        if let Some(gs) = skip_grads[0].take() {
            gh = (gh + gs)?;
        }
        // The coordinate channels, if any, are constants: only x's channels take a gradient.
        let jtu = conv_input_grad(&net.input_conv, &gh, spatial(x)?)?.narrow(
            1,
            0,
            net.config().in_channels,
        )?;
        let grad = match self.form {
            // ∇ₓ‖g − x‖² = Jᵀu − u with u = 2(g − x).
            EnergyForm::SquaredResidual => (jtu - u)?,
            EnergyForm::HalfNorm => jtu,
        };
        Ok((energy, grad))
    }
}

impl Denoiser for EnergyUNet {
    fn parameterization(&self) -> Parameterization {
        Parameterization::Epsilon
    }

    /// ∇ₓE of [`EnergyUNet::energy_and_grad`].
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.energy_and_grad(x_t, t, cond)?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ParamStore;
    use crate::train::optim::{AdamW, AdamWConfig};
    use candle_core::{DType, Device, Var};

    /// The tiny configurations of the tests: 8×8 images, two levels, attention at 4 px (two
    /// heads of 8 channels) and in the middle, four groups, a conditioning vector.
    fn tiny(scale_shift: bool, updown: bool) -> UNetConfig {
        UNetConfig {
            image_size: 8,
            in_channels: 3,
            out_channels: 3,
            model_channels: 8,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![4],
            num_heads: 1,
            num_head_channels: Some(8),
            num_groups: 4,
            dropout: 0.0,
            resblock_updown: updown,
            use_scale_shift_norm: scale_shift,
            time_embed_dim: 8,
            cond_dim: 4,
            coord_channels: false,
            context_dim: 0,
        }
    }

    /// The variants every gradient test runs: (scale-shift norm, resampling residual blocks,
    /// coordinate channels, cross-attention to token states).
    const VARIANTS: [(bool, bool, bool, bool); 5] = [
        (false, true, false, false),
        (true, true, false, false),
        (false, false, false, false),
        (true, false, true, false),
        (false, true, false, true),
    ];

    /// The width of the token states of the cross-attention variants.
    const CONTEXT_DIM: usize = 6;

    /// The tiny configuration of a variant.
    fn variant((scale_shift, updown, coords, cross): (bool, bool, bool, bool)) -> UNetConfig {
        UNetConfig {
            coord_channels: coords,
            context_dim: if cross { CONTEXT_DIM } else { 0 },
            ..tiny(scale_shift, updown)
        }
    }
    const FORMS: [EnergyForm; 2] = [EnergyForm::SquaredResidual, EnergyForm::HalfNorm];

    /// Moves every parameter away from its initialization (the zero-initialized layers would
    /// hide errors in the backward pass).
    fn perturb(store: &ParamStore, seed: u64) -> Result<()> {
        let mut rng = crate::random::seeded(seed);
        for (_, var) in store.vars() {
            let noise =
                crate::random::normal_tensor(&mut rng, var.dims(), var.dtype(), &Device::Cpu)?;
            var.set(&(var.as_tensor() + (noise * 0.15)?)?)?;
        }
        Ok(())
    }

    fn model(cfg: &UNetConfig, form: EnergyForm, seed: u64) -> Result<(EnergyUNet, ParamStore)> {
        let store = ParamStore::new(seed);
        let m = EnergyUNet::new(cfg, form, store.var_builder(DType::F64, &Device::Cpu))?;
        perturb(&store, seed + 100)?;
        Ok((m, store))
    }

    /// A batch of two images, times and conditionings (f64), with token states of four
    /// positions (the first image's last one and the second's last two padding) when the
    /// network cross-attends.
    fn inputs(
        cfg: &UNetConfig,
        seed: u64,
    ) -> Result<(Tensor, Tensor, Tensor, Option<TokenContext>)> {
        let mut rng = crate::random::seeded(seed);
        let s = cfg.image_size;
        let x = crate::random::normal_tensor(
            &mut rng,
            &[2, cfg.in_channels, s, s],
            DType::F64,
            &Device::Cpu,
        )?;
        let t = Tensor::new(&[37f64, 612.0], &Device::Cpu)?;
        let cond =
            crate::random::normal_tensor(&mut rng, &[2, cfg.cond_dim], DType::F64, &Device::Cpu)?;
        let ctx = if cfg.context_dim > 0 {
            let states = crate::random::normal_tensor(
                &mut rng,
                &[2, 4, cfg.context_dim],
                DType::F64,
                &Device::Cpu,
            )?;
            let mask = Tensor::new(&[[1f64, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], &Device::Cpu)?;
            Some(TokenContext::new(&states, &mask)?)
        } else {
            None
        };
        Ok((x, t, cond, ctx))
    }

    fn max_abs(t: &Tensor) -> Result<f64> {
        Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
    }

    /// ∇ₓE against central finite differences of `energy`, six coordinates per image.
    #[test]
    fn input_gradient_matches_finite_differences() -> Result<()> {
        let mut worst = 0f64;
        for v in VARIANTS {
            let cfg = variant(v);
            for form in FORMS {
                let (m, _store) = model(&cfg, form, 3)?;
                let (x, t, cond, ctx) = inputs(&cfg, 5)?;
                let (e, grad) = m.energy_and_grad_context(&x, &t, Some(&cond), ctx.as_ref())?;
                let e_plain = m.energy_context(&x, &t, Some(&cond), ctx.as_ref())?;
                assert!(max_abs(&(&e - &e_plain)?)? < 1e-10 * (1.0 + max_abs(&e)?));
                let grad = grad.flatten_from(1)?.to_vec2::<f64>()?;
                let xv = x.flatten_from(1)?.to_vec2::<f64>()?;
                let n = xv[0].len();
                let mut rng = crate::random::seeded(7);
                let h = 1e-5;
                for img in 0..2 {
                    for _ in 0..6 {
                        let j = rand::Rng::random_range(&mut rng, 0..n);
                        let at = |delta: f64| -> Result<f64> {
                            let mut v = xv.clone();
                            v[img][j] += delta;
                            let xp = Tensor::new(v, &Device::Cpu)?.reshape(x.dims())?;
                            Ok(m.energy_context(&xp, &t, Some(&cond), ctx.as_ref())?
                                .to_vec1::<f64>()?[img])
                        };
                        let fd = (at(h)? - at(-h)?) / (2.0 * h);
                        let err = (fd - grad[img][j]).abs() / (1.0 + fd.abs());
                        worst = worst.max(err);
                        assert!(
                            err < 1e-6,
                            "{form:?} {v:?} [{img}, {j}]: finite difference {fd}, ∇ₓE {}",
                            grad[img][j]
                        );
                    }
                }
            }
        }
        eprintln!("input gradient vs finite differences: max relative error {worst:.2e}");
        Ok(())
    }

    /// ∇ₓE against candle's own backward pass of `energy` (first order through every op).
    #[test]
    fn input_gradient_matches_candle_autograd() -> Result<()> {
        let mut worst = 0f64;
        for v in VARIANTS {
            let cfg = variant(v);
            for form in FORMS {
                let (m, _store) = model(&cfg, form, 4)?;
                let (x, t, cond, ctx) = inputs(&cfg, 6)?;
                let xv = Var::from_tensor(&x)?;
                let grads = m
                    .energy_context(xv.as_tensor(), &t, Some(&cond), ctx.as_ref())?
                    .sum_all()?
                    .backward()?;
                let theirs = grads
                    .get(xv.as_tensor())
                    .ok_or_else(|| Error::Training("no input gradient".into()))?;
                let (_, ours) = m.energy_and_grad_context(&x, &t, Some(&cond), ctx.as_ref())?;
                let err = max_abs(&(theirs - &ours)?)? / max_abs(theirs)?.max(1.0);
                worst = worst.max(err);
                assert!(err < 1e-10, "{form:?} {v:?}: {err}");
            }
        }
        eprintln!("input gradient vs candle autograd: max relative error {worst:.2e}");
        Ok(())
    }

    /// On weights loaded for inference (no graph recorded) the group norms run the fused
    /// kernel and its one-pass input gradient: the energy and ∇ₓE equal those of the
    /// tracked tensor-op form (f32, every variant and form), and nothing is recorded.
    #[test]
    fn frozen_weights_take_the_fused_norms_with_the_same_gradient() -> Result<()> {
        let mut worst = 0f64;
        for v in VARIANTS {
            let cfg = variant(v);
            for form in FORMS {
                let store = ParamStore::new(8);
                let tracked =
                    EnergyUNet::new(&cfg, form, store.var_builder(DType::F32, &Device::Cpu))?;
                perturb(&store, 108)?;
                let frozen = EnergyUNet::new(
                    &cfg,
                    form,
                    store.frozen_var_builder(DType::F32, &Device::Cpu),
                )?;
                let (x, t, cond, ctx) = inputs(&cfg, 9)?;
                let (x, t, cond) = (
                    x.to_dtype(DType::F32)?,
                    t.to_dtype(DType::F32)?,
                    cond.to_dtype(DType::F32)?,
                );
                let ctx = match ctx {
                    Some(c) => Some(TokenContext {
                        states: c.states.to_dtype(DType::F32)?,
                        key_bias: c.key_bias.to_dtype(DType::F32)?,
                    }),
                    None => None,
                };
                let (e0, g0) =
                    tracked.energy_and_grad_context(&x, &t, Some(&cond), ctx.as_ref())?;
                let (e1, g1) = frozen.energy_and_grad_context(&x, &t, Some(&cond), ctx.as_ref())?;
                assert!(g0.track_op() && !g1.track_op() && !e1.track_op(), "{v:?}");
                let f64s = |a: &Tensor| a.to_dtype(DType::F64);
                let err_e = max_abs(&(f64s(&e0)? - f64s(&e1)?)?)? / max_abs(&f64s(&e0)?)?.max(1.0);
                let err_g = max_abs(&(f64s(&g0)? - f64s(&g1)?)?)? / max_abs(&f64s(&g0)?)?.max(1.0);
                worst = worst.max(err_e).max(err_g);
                assert!(
                    err_e < 1e-4 && err_g < 1e-4,
                    "{form:?} {v:?}: {err_e:e} {err_g:e}"
                );
            }
        }
        eprintln!("fused vs tensor-op norms: max relative difference {worst:.2e}");
        Ok(())
    }

    /// Training on the CPU fast path (f32): the group norms run the fused kernel, recorded,
    /// and their input gradients the second-order kernel; the loss mean((∇ₓE − ε)²) and the
    /// gradient of every parameter equal those of the f64 tensor-op form (itself checked
    /// against finite differences above) on the same weights, every variant and form.
    #[test]
    fn fused_norms_train_like_tensor_ops() -> Result<()> {
        let mut worst = 0f64;
        for v in VARIANTS {
            let cfg = variant(v);
            for form in FORMS {
                let (m64, s64) = model(&cfg, form, 12)?;
                let s32 = ParamStore::new(12);
                let m32 = EnergyUNet::new(&cfg, form, s32.var_builder(DType::F32, &Device::Cpu))?;
                for (name, var) in s32.vars() {
                    let src = s64
                        .get(&name)
                        .ok_or_else(|| Error::Training(format!("no f64 variable {name}")))?;
                    var.set(&src.as_tensor().to_dtype(DType::F32)?)?;
                }
                let (x, t, cond, ctx) = inputs(&cfg, 13)?;
                let eps = crate::random::normal_tensor(
                    &mut crate::random::seeded(14),
                    x.dims(),
                    DType::F64,
                    &Device::Cpu,
                )?;
                let f32s = |a: &Tensor| a.to_dtype(DType::F32);
                let ctx32 = match &ctx {
                    Some(c) => Some(TokenContext {
                        states: f32s(&c.states)?,
                        key_bias: f32s(&c.key_bias)?,
                    }),
                    None => None,
                };
                let (_, g64) = m64.energy_and_grad_context(&x, &t, Some(&cond), ctx.as_ref())?;
                let l64 = (g64 - &eps)?.sqr()?.mean_all()?;
                let (_, g32) = m32.energy_and_grad_context(
                    &f32s(&x)?,
                    &f32s(&t)?,
                    Some(&f32s(&cond)?),
                    ctx32.as_ref(),
                )?;
                let l32 = (g32 - f32s(&eps)?)?.sqr()?.mean_all()?;
                let (a, b) = (
                    l32.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                    l64.to_scalar::<f64>()?,
                );
                assert!((a - b).abs() < 1e-4 * b, "{form:?} {v:?}: loss {a} vs {b}");
                let (gr64, gr32) = (l64.backward()?, l32.backward()?);
                for (name, var) in s32.vars() {
                    let what = format!("{form:?} {v:?} {name}");
                    let want = gr64
                        .get(s64.get(&name).expect("same names").as_tensor())
                        .ok_or_else(|| Error::Training(format!("{what}: no f64 gradient")))?;
                    let got = gr32
                        .get(var.as_tensor())
                        .ok_or_else(|| Error::Training(format!("{what}: no f32 gradient")))?
                        .to_dtype(DType::F64)?;
                    let diff = (&got - want)?
                        .sqr()?
                        .sum_all()?
                        .sqrt()?
                        .to_scalar::<f64>()?;
                    let norm = want.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
                    let err = diff / norm.max(1e-6);
                    worst = worst.max(err);
                    assert!(err < 1e-3, "{what}: relative difference {err:e}");
                }
            }
        }
        eprintln!("fused tracked norms vs f64 tensor ops: max relative difference {worst:.2e}");
        Ok(())
    }

    /// A variable of a block: its name, the variable and its gradient.
    type Member = (String, Var, Tensor);

    /// The block of a parameter: `input_blocks.1.0`, `middle_block.1`, `time_embed`, `out`.
    fn block_of(name: &str) -> String {
        let depth = if name.starts_with("input_blocks") || name.starts_with("output_blocks") {
            3
        } else if name.starts_with("middle_block") {
            2
        } else {
            1
        };
        name.split('.').take(depth).collect::<Vec<_>>().join(".")
    }

    /// The parameter gradient of L = mean((∇ₓE − ε)²) against central finite differences:
    /// every variable receives a gradient; the derivative along a random direction through all
    /// variables of each block (each variable's part normalized, so a wrong gradient of a small
    /// variable shows) matches; and so do two single entries of each of six variables (a
    /// convolution, a group norm, the attention qkv, the time embedding, an embedding
    /// projection, the output convolution).
    #[test]
    fn parameter_gradient_of_the_loss_matches_finite_differences() -> Result<()> {
        const SINGLE: [&str; 6] = [
            "input_blocks.1.0.in_layers.2.weight",
            "input_blocks.1.0.out_layers.0.weight",
            "middle_block.1.qkv.weight",
            "time_embed.0.weight",
            "middle_block.0.emb_layers.1.weight",
            "out.2.weight",
        ];
        // And, with cross-attention, its query and key-value projections (the keys and values
        // reach the loss only through the attention weights of the queries' gradient).
        const CROSS_SINGLE: [&str; 2] = [
            "middle_block.1.cross.q.weight",
            "input_blocks.3.1.cross.kv.weight",
        ];
        let h = 1e-5;
        let mut worst = 0f64;
        let (mut directions, mut entries) = (0, 0);
        for (k, v) in VARIANTS.into_iter().enumerate() {
            let cfg = variant(v);
            for form in FORMS {
                let what = format!("{form:?} {v:?}");
                let (m, store) = model(&cfg, form, 8 + k as u64)?;
                let (x, t, cond, ctx) = inputs(&cfg, 9)?;
                let mut rng = crate::random::seeded(10);
                let eps = crate::random::normal_tensor(&mut rng, x.dims(), DType::F64, x.device())?;
                let loss = || -> Result<f64> {
                    let (_, grad) = m.energy_and_grad_context(&x, &t, Some(&cond), ctx.as_ref())?;
                    Ok((grad - &eps)?.sqr()?.mean_all()?.to_scalar::<f64>()?)
                };
                let (_, grad) = m.energy_and_grad_context(&x, &t, Some(&cond), ctx.as_ref())?;
                let grads = (grad - &eps)?.sqr()?.mean_all()?.backward()?;
                let vars = store.vars();
                let mut blocks: Vec<(String, Vec<Member>)> = Vec::new();
                for (name, var) in &vars {
                    let g = grads
                        .get(var.as_tensor())
                        .ok_or_else(|| Error::Training(format!("{what}: {name} has no gradient")))?
                        .clone();
                    let block = block_of(name);
                    match blocks.last_mut() {
                        Some((b, members)) if *b == block => {
                            members.push((name.clone(), var.clone(), g))
                        }
                        _ => blocks.push((block, vec![(name.clone(), var.clone(), g)])),
                    }
                }
                for (block, members) in &blocks {
                    let mut predicted = 0.0;
                    let mut dirs = Vec::with_capacity(members.len());
                    for (_, var, g) in members {
                        let d = crate::random::normal_tensor(
                            &mut rng,
                            var.dims(),
                            DType::F64,
                            &Device::Cpu,
                        )?;
                        let d = (&d / d.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?)?;
                        predicted += (g * &d)?.sum_all()?.to_scalar::<f64>()?;
                        dirs.push((var.as_tensor().copy()?, d));
                    }
                    let at = |delta: f64| -> Result<f64> {
                        for ((_, var, _), (orig, d)) in members.iter().zip(&dirs) {
                            var.set(&(orig + (d * delta)?)?)?;
                        }
                        loss()
                    };
                    let fd = (at(h)? - at(-h)?) / (2.0 * h);
                    for ((_, var, _), (orig, _)) in members.iter().zip(&dirs) {
                        var.set(orig)?;
                    }
                    let err = (fd - predicted).abs() / (1e-3 + fd.abs());
                    worst = worst.max(err);
                    assert!(
                        err < 1e-6,
                        "{what} {block}: finite difference {fd}, backward {predicted}"
                    );
                    directions += 1;
                }
                let cross: &[&str] = if cfg.context_dim > 0 {
                    &CROSS_SINGLE
                } else {
                    &[]
                };
                for &name in SINGLE.iter().chain(cross) {
                    let var = store
                        .get(name)
                        .ok_or_else(|| Error::Training(format!("no variable {name}")))?;
                    let g = grads
                        .get(var.as_tensor())
                        .ok_or_else(|| Error::Training(format!("{name} has no gradient")))?
                        .flatten_all()?
                        .to_vec1::<f64>()?;
                    let orig = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
                    let pick = rand::Rng::random_range(&mut rng, 0..orig.len());
                    for j in [0, pick] {
                        let at = |delta: f64| -> Result<f64> {
                            let mut v = orig.clone();
                            v[j] += delta;
                            var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu)?)?;
                            loss()
                        };
                        let fd = (at(h)? - at(-h)?) / (2.0 * h);
                        var.set(&Tensor::from_vec(orig.clone(), var.dims(), &Device::Cpu)?)?;
                        let err = (fd - g[j]).abs() / (1e-3 + fd.abs());
                        worst = worst.max(err);
                        assert!(
                            err < 1e-6,
                            "{what} {name}[{j}]: finite difference {fd}, backward {}",
                            g[j]
                        );
                        entries += 1;
                    }
                }
            }
        }
        eprintln!(
            "loss gradient vs finite differences: {directions} block directions, {entries} \
             entries, max error {worst:.2e}"
        );
        Ok(())
    }

    /// The energies of a batch are independent: changing image 0 leaves E and ∇ₓE of image 1
    /// as they were, and image 1 alone gives the same values.
    #[test]
    fn images_of_a_batch_are_independent() -> Result<()> {
        let cfg = variant((true, true, false, true));
        for form in FORMS {
            let (m, _store) = model(&cfg, form, 11)?;
            let (x, t, cond, ctx) = inputs(&cfg, 12)?;
            let (e, grad) = m.energy_and_grad_context(&x, &t, Some(&cond), ctx.as_ref())?;
            let mut rng = crate::random::seeded(13);
            let bump = crate::random::normal_tensor(&mut rng, x.dims(), DType::F64, x.device())?;
            let mask = Tensor::new(&[1f64, 0.0], x.device())?.reshape((2, 1, 1, 1))?;
            let x2 = (&x + bump.broadcast_mul(&mask)?)?;
            let (e2, grad2) = m.energy_and_grad_context(&x2, &t, Some(&cond), ctx.as_ref())?;
            assert!(max_abs(&(grad.get(0)? - grad2.get(0)?)?)? > 1e-3);
            assert!(max_abs(&(grad.get(1)? - grad2.get(1)?)?)? < 1e-12);
            assert!(max_abs(&(e.get(1)? - e2.get(1)?)?)? < 1e-12);
            let second = Tensor::new(&[1u32], &Device::Cpu)?;
            let ctx1 = ctx.as_ref().map(|c| c.select_rows(&second)).transpose()?;
            let (e1, grad1) = m.energy_and_grad_context(
                &x.narrow(0, 1, 1)?,
                &t.narrow(0, 1, 1)?,
                Some(&cond.narrow(0, 1, 1)?),
                ctx1.as_ref(),
            )?;
            assert!(max_abs(&(grad.narrow(0, 1, 1)? - grad1)?)? < 1e-12);
            assert!(max_abs(&(e.narrow(0, 1, 1)? - e1)?)? < 1e-12);
        }
        Ok(())
    }

    /// Unsupported configurations and inputs are errors, not panics.
    #[test]
    fn unsupported_configurations_are_errors() -> Result<()> {
        let store = ParamStore::new(1);
        let vb = || store.var_builder(DType::F64, &Device::Cpu);
        let dropout = UNetConfig {
            dropout: 0.1,
            ..tiny(false, true)
        };
        let r = EnergyUNet::new(&dropout, EnergyForm::HalfNorm, vb());
        assert!(
            matches!(r, Err(Error::Config(ref m)) if m.contains("dropout")),
            "{r:?}"
        );
        let channels = UNetConfig {
            out_channels: 2,
            ..tiny(false, true)
        };
        let r = EnergyUNet::new(&channels, EnergyForm::SquaredResidual, vb());
        assert!(
            matches!(r, Err(Error::Config(ref m)) if m.contains("out_channels")),
            "{r:?}"
        );
        let groups = UNetConfig {
            num_groups: 3,
            ..tiny(false, true)
        };
        assert!(matches!(
            EnergyUNet::new(&groups, EnergyForm::HalfNorm, vb()),
            Err(Error::Config(_))
        ));
        // A U-Net built with dropout is refused as well.
        let net = UNet::new(
            &dropout,
            Parameterization::Epsilon,
            ParamStore::new(2).var_builder(DType::F64, &Device::Cpu),
        )?;
        assert!(matches!(
            EnergyUNet::from_net(net, EnergyForm::HalfNorm),
            Err(Error::Config(_))
        ));
        // The half-norm energy takes any output width; wrong inputs are shape errors.
        let m = EnergyUNet::new(&channels, EnergyForm::HalfNorm, vb())?;
        let (x, t, cond, ctx) = inputs(&channels, 3)?;
        let (e, grad) = m.energy_and_grad_context(&x, &t, Some(&cond), ctx.as_ref())?;
        assert_eq!((e.dims(), grad.dims()), (&[2][..], x.dims()));
        assert!(matches!(
            m.energy_and_grad(&x, &t, None),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            m.energy_and_grad(&x.narrow(3, 0, 4)?, &t, Some(&cond)),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            m.energy_and_grad(&x, &t.narrow(0, 0, 1)?, Some(&cond)),
            Err(Error::Shape(_))
        ));
        Ok(())
    }

    /// The output convolution starts random (its gradient would vanish at zero), under the
    /// U-Net's parameter names and shapes.
    #[test]
    fn parameters_are_the_unet_parameters_with_a_random_output() -> Result<()> {
        let cfg = tiny(false, true);
        let plain = ParamStore::new(5);
        UNet::new(
            &cfg,
            Parameterization::Epsilon,
            plain.var_builder(DType::F32, &Device::Cpu),
        )?;
        let energy = ParamStore::new(5);
        EnergyUNet::new(
            &cfg,
            EnergyForm::HalfNorm,
            energy.var_builder(DType::F32, &Device::Cpu),
        )?;
        let shapes = |s: &ParamStore| {
            s.vars()
                .into_iter()
                .map(|(k, v)| (k, v.dims().to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shapes(&plain), shapes(&energy));
        let out = energy
            .get("out.2.weight")
            .ok_or_else(|| Error::Training("no out.2.weight".into()))?;
        assert!(out.as_tensor().abs()?.max_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    /// A few AdamW steps on one noised batch lower the ε-loss (f32, CPU fast paths).
    #[test]
    fn training_steps_lower_the_loss() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = tiny(true, true);
        let store = ParamStore::new(21);
        let m = EnergyUNet::new(
            &cfg,
            EnergyForm::HalfNorm,
            store.var_builder(DType::F32, &dev),
        )?;
        let mut rng = crate::random::seeded(22);
        let (b, s) = (8, cfg.image_size);
        let x0 = crate::random::normal_tensor(&mut rng, &[b, 3, s, s], DType::F32, &dev)?;
        let eps = crate::random::normal_tensor(&mut rng, &[b, 3, s, s], DType::F32, &dev)?;
        let cond = crate::random::normal_tensor(&mut rng, &[b, cfg.cond_dim], DType::F32, &dev)?;
        let alpha_bar: Vec<f32> = (0..b).map(|i| 0.95 - 0.1 * i as f32).collect();
        let t: Vec<f32> = (0..b).map(|i| 50.0 + 100.0 * i as f32).collect();
        let t = Tensor::new(t, &dev)?;
        let a = Tensor::new(alpha_bar.clone(), &dev)?.reshape((b, 1, 1, 1))?;
        let x_t = (x0.broadcast_mul(&a.sqrt()?)? + eps.broadcast_mul(&(1.0 - a)?.sqrt()?)?)?;
        let mut opt = AdamW::new(store.vars(), AdamWConfig::default())?;
        let loss = |m: &EnergyUNet| -> Result<Tensor> {
            Ok((m.forward(&x_t, &t, Some(&cond))? - &eps)?
                .sqr()?
                .mean_all()?)
        };
        let first = loss(&m)?.to_scalar::<f32>()?;
        let start = std::time::Instant::now();
        let steps = 10;
        for _ in 0..steps {
            let grads = loss(&m)?.backward()?;
            opt.step(&grads, 2e-3, 1.0)?;
        }
        let per_step = start.elapsed().as_secs_f64() / steps as f64;
        let last = loss(&m)?.to_scalar::<f32>()?;
        // For comparison (printed, not asserted): a step of the plain ε-prediction U-Net.
        let plain_store = ParamStore::new(21);
        let plain = UNet::new(
            &cfg,
            Parameterization::Epsilon,
            plain_store.var_builder(DType::F32, &dev),
        )?;
        let mut plain_opt = AdamW::new(plain_store.vars(), AdamWConfig::default())?;
        let start = std::time::Instant::now();
        for _ in 0..steps {
            let out = plain.forward(&x_t, &t, Some(&cond))?;
            let grads = (out - &eps)?.sqr()?.mean_all()?.backward()?;
            plain_opt.step(&grads, 2e-3, 1.0)?;
        }
        let plain_step = start.elapsed().as_secs_f64() / steps as f64;
        eprintln!(
            "plain u-net: {:.1} ms per step (energy/plain {:.1}×)",
            plain_step * 1e3,
            per_step / plain_step
        );
        eprintln!(
            "energy u-net: loss {first:.4} -> {last:.4}, {:.1} ms per step",
            per_step * 1e3
        );
        assert!(last.is_finite() && last < 0.9 * first, "{first} -> {last}");
        Ok(())
    }
}
