//! Layers with PyTorch's initialization and names, and the few ops candle lacks a gradient for.
//!
//! - [`linear`], [`conv1d_pointwise`] and [`conv2d`] draw weights and biases uniformly in
//!   ±1/√fan_in, PyTorch's default (`kaiming_uniform_(a = √5)` for the weight); the `*_zeroed`
//!   variants start at zero (the "zero module" of improved-diffusion, Nichol & Dhariwal 2021).
//!   Parameters are called `weight` and `bias`, as in a PyTorch state dict.
//! - [`LayerNorm`] is written with differentiable tensor ops: candle's own layer norm has no
//!   backward pass, so parameters behind it would silently get no gradient.
//! - [`group_norm`] uses candle's differentiable `GroupNorm` (weight one, bias zero).
//! - [`timestep_embedding`] is the sinusoidal embedding of improved-diffusion / GLIDE, `[cos | sin]`.
//! - [`dropout`] draws its mask from a caller-supplied [`SeededRng`] (candle's is unseedable).
//! - [`relu`], [`upsample_nearest2x`] (nearest-neighbour ×2) and [`avg_pool2x`] (2×2 average
//!   pooling) run one-pass CPU kernels of [`recompose_core::ops`] in both directions: candle's backward of
//!   `upsample_nearest2d` fails for some sizes, and its ReLU gradient, pooling and broadcast
//!   sums are single-threaded loops.

use candle_core::{D, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig, GroupNorm, Init, Linear, VarBuilder};
use rand_distr::{Bernoulli, Distribution};

use recompose_core::ops::relu::Relu;
use recompose_core::ops::resample::Resample2x;

use crate::random::SeededRng;
use crate::{Error, Result};

fn uniform_fan_in(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A fully connected layer `x Wᵀ + b` with PyTorch's default initialization
/// (parameters `weight` `[out, in]` and `bias` `[out]`).
///
/// # Errors
///
/// [`Error::Candle`] if a parameter exists with another shape.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let init = uniform_fan_in(in_dim);
    let w = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let b = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(Linear::new(w, Some(b)))
}

/// A fully connected layer whose weight and bias start at zero.
///
/// # Errors
///
/// [`Error::Candle`] if a parameter exists with another shape.
pub fn linear_zeroed(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// Geometry of a 2-D convolution: square kernel, stride and zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Kernel size (square).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvSpec {
    /// A 3×3 convolution with stride 1 and padding 1 (keeps the spatial size).
    pub const SAME3: Self = Self {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    /// A 1×1 convolution.
    pub const POINTWISE: Self = Self {
        kernel: 1,
        stride: 1,
        padding: 0,
    };
    /// A 3×3 convolution with stride 2 and padding 1 (halves the spatial size).
    pub const DOWN3: Self = Self {
        kernel: 3,
        stride: 2,
        padding: 1,
    };

    fn config(self) -> Conv2dConfig {
        Conv2dConfig {
            padding: self.padding,
            stride: self.stride,
            ..Default::default()
        }
    }
}

/// A 2-D convolution (parameters `weight` `[out, in, k, k]`, `bias` `[out]`) with PyTorch's
/// default initialization.
///
/// # Errors
///
/// [`Error::Candle`] if a parameter exists with another shape.
pub fn conv2d(in_ch: usize, out_ch: usize, spec: ConvSpec, vb: VarBuilder) -> Result<Conv2d> {
    let init = uniform_fan_in(in_ch * spec.kernel * spec.kernel);
    conv2d_with(in_ch, out_ch, spec, init, vb)
}

/// A 2-D convolution whose weight and bias start at zero.
///
/// # Errors
///
/// [`Error::Candle`] if a parameter exists with another shape.
pub fn conv2d_zeroed(
    in_ch: usize,
    out_ch: usize,
    spec: ConvSpec,
    vb: VarBuilder,
) -> Result<Conv2d> {
    conv2d_with(in_ch, out_ch, spec, Init::Const(0.0), vb)
}

/// A 2-D convolution without bias (parameter `weight` `[out, in, k, k]`, PyTorch's default
/// initialization), as in front of a batch norm.
///
/// # Errors
///
/// [`Error::Candle`] if the parameter exists with another shape.
pub fn conv2d_no_bias(
    in_ch: usize,
    out_ch: usize,
    spec: ConvSpec,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let init = uniform_fan_in(in_ch * spec.kernel * spec.kernel);
    let w = vb.get_with_hints((out_ch, in_ch, spec.kernel, spec.kernel), "weight", init)?;
    Ok(Conv2d::new(w, None, spec.config()))
}

fn conv2d_with(
    in_ch: usize,
    out_ch: usize,
    spec: ConvSpec,
    init: Init,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let w = vb.get_with_hints((out_ch, in_ch, spec.kernel, spec.kernel), "weight", init)?;
    let b = vb.get_with_hints(out_ch, "bias", init)?;
    Ok(Conv2d::new(w, Some(b), spec.config()))
}

/// A 1-D convolution with kernel size one (parameters `weight` `[out, in, 1]`, `bias` `[out]`),
/// the form in which improved-diffusion stores attention projections. `zeroed` starts it at zero.
///
/// # Errors
///
/// [`Error::Candle`] if a parameter exists with another shape.
pub fn conv1d_pointwise(
    in_ch: usize,
    out_ch: usize,
    zeroed: bool,
    vb: VarBuilder,
) -> Result<Conv1d> {
    let init = if zeroed {
        Init::Const(0.0)
    } else {
        uniform_fan_in(in_ch)
    };
    let w = vb.get_with_hints((out_ch, in_ch, 1), "weight", init)?;
    let b = vb.get_with_hints(out_ch, "bias", init)?;
    Ok(Conv1d::new(w, Some(b), Conv1dConfig::default()))
}

/// Group normalization over the channels (dimension 1) of `[B, C, …]` inputs, parameters
/// `weight` (ones) and `bias` (zeros).
///
/// # Errors
///
/// [`Error::Config`] if `groups` does not divide `channels`; [`Error::Candle`] if a parameter
/// exists with another shape.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(Error::Config(format!(
            "GroupNorm: {groups} groups do not divide {channels} channels"
        )));
    }
    Ok(candle_nn::group_norm(groups, channels, eps, vb)?)
}

/// Layer normalization over the last dimension, `(x − mean) / √(var + eps) · weight + bias`,
/// built from differentiable tensor ops (parameters `weight`, ones, and `bias`, zeros).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A layer norm over `dim` features with PyTorch's default `eps = 1e-5`.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if a parameter exists with another shape.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_eps(dim, 1e-5, vb)
    }

    /// A layer norm over `dim` features with the given `eps`.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if a parameter exists with another shape.
    pub fn with_eps(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    /// The scale parameter.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift parameter.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The variance offset eps.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The normalized input before the affine map, and 1/√(var + eps), each with the input's
    /// shape (the second broadcastable): what a hand-written backward pass needs.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] on a rank-0 input.
    pub fn normalize(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        Ok((centered.broadcast_mul(&inv_std)?, inv_std))
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// The sinusoidal timestep embedding of improved-diffusion / GLIDE: for `t` of shape `[B]` and
/// `half = dim / 2`, frequencies `f_j = max_period^(−j/half)` and the embedding
/// `[cos(t f_0) … cos(t f_{half−1}) | sin(t f_0) … sin(t f_{half−1})]`, zero-padded to `dim` when
/// `dim` is odd. Output `[B, dim]` in `t`'s dtype (`f32` inputs are computed in `f32`).
///
/// # Errors
///
/// [`Error::Shape`] if `t` is not 1-D.
pub fn timestep_embedding(t: &Tensor, dim: usize, max_period: f64) -> Result<Tensor> {
    if t.rank() != 1 {
        return Err(Error::Shape(format!(
            "timestep embedding expects a 1-D tensor of times, got shape {:?}",
            t.dims()
        )));
    }
    let half = dim / 2;
    let dtype = t.dtype();
    let freqs: Vec<f32> = (0..half)
        .map(|j| (-(max_period.ln()) * j as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(dtype)?;
    let args = t.unsqueeze(1)?.broadcast_mul(&freqs)?;
    let mut emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        let pad = Tensor::zeros((t.dim(0)?, 1), dtype, t.device())?;
        emb = Tensor::cat(&[emb, pad], 1)?;
    }
    Ok(emb)
}

/// Inverted dropout: each element is zeroed with probability `p` and the survivors scaled by
/// 1/(1 − p), with the mask drawn from `rng` in row-major order. With `rng = None` (evaluation)
/// or `p = 0` the input is returned unchanged.
///
/// # Errors
///
/// [`Error::Config`] if `p` is not in \[0, 1).
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut SeededRng>) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Config(format!(
            "dropout probability {p} is not in [0, 1)"
        )));
    }
    let Some(rng) = rng else {
        return Ok(x.clone());
    };
    if p == 0.0 {
        return Ok(x.clone());
    }
    let keep = Bernoulli::new(1.0 - p).map_err(|e| Error::Config(e.to_string()))?;
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if keep.sample(rng) { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// Nearest-neighbour ×2 upsampling of `[B, C, H, W]` to `[B, C, 2H, 2W]`, differentiable: one
/// pass over the output on the CPU for `f32` (its gradient sums each 2×2 block in one pass),
/// broadcast and reshape elsewhere.
///
/// # Errors
///
/// [`Error::Shape`] if the input is not 4-D.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4().map_err(|_| {
        Error::Shape(format!(
            "upsampling expects [B, C, H, W], got {:?}",
            x.dims()
        ))
    })?;
    if recompose_core::host::on_fast_path(&[x]) {
        return Ok(x.contiguous()?.apply_op1(Resample2x::UP)?);
    }
    Ok(x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))?)
}

/// 2×2 average pooling with stride 2 of `[B, C, H, W]` to `[B, C, H/2, W/2]` (the last row or
/// column dropped when odd, as `avg_pool2d(2)`), differentiable: one pass on the CPU for `f32`
/// with even sizes, candle's pooling elsewhere.
///
/// # Errors
///
/// [`Error::Shape`] if the input is not 4-D or smaller than 2×2.
pub fn avg_pool2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x
        .dims4()
        .map_err(|_| Error::Shape(format!("pooling expects [B, C, H, W], got {:?}", x.dims())))?;
    if h < 2 || w < 2 {
        return Err(Error::Shape(format!(
            "2×2 pooling needs at least 2×2 pixels, got {h}×{w}"
        )));
    }
    if recompose_core::host::on_fast_path(&[x]) && h % 2 == 0 && w % 2 == 0 {
        return Ok(x.contiguous()?.apply_op1(Resample2x::DOWN)?);
    }
    Ok(x.avg_pool2d(2)?)
}

/// ReLU `max(x, 0)`, differentiable: on the CPU for contiguous `f32` one pass each way (the
/// gradient passes where the output is positive, as PyTorch's), candle's `relu` elsewhere
/// (whose backward is four passes, three of them single-threaded).
///
/// # Errors
///
/// [`Error::Candle`] from candle.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if recompose_core::host::on_fast_path(&[x]) {
        return Ok(x.contiguous()?.apply_op1(Relu)?);
    }
    Ok(x.relu()?)
}

/// The SiLU / swish activation `x · sigmoid(x)` (differentiable in candle).
///
/// # Errors
///
/// [`Error::Candle`] from candle.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(x.silu()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ParamStore;
    use candle_core::{DType, Device};

    #[test]
    fn layer_norm_matches_definition_and_has_gradients() -> Result<()> {
        let store = ParamStore::new(1);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let ln = LayerNorm::new(4, vb)?;
        let x = Tensor::new(&[[1.0f32, 2.0, 3.0, 6.0]], &Device::Cpu)?;
        let y = ln.forward(&x)?.to_vec2::<f32>()?;
        let mean = 3.0f32;
        let var = (4.0 + 1.0 + 0.0 + 9.0) / 4.0;
        for (i, v) in [1.0f32, 2.0, 3.0, 6.0].iter().enumerate() {
            let want = (v - mean) / (var + 1e-5f32).sqrt();
            assert!((y[0][i] - want).abs() < 1e-5);
        }
        let loss = ln.forward(&x)?.sqr()?.sum_all()?;
        let grads = loss.backward()?;
        for (name, var) in store.vars() {
            assert!(
                grads.get(var.as_tensor()).is_some(),
                "{name} has no gradient"
            );
        }
        Ok(())
    }

    #[test]
    fn timestep_embedding_is_cos_then_sin() -> Result<()> {
        let t = Tensor::new(&[0.0f32, 10.0], &Device::Cpu)?;
        let e = timestep_embedding(&t, 6, 10_000.0)?.to_vec2::<f32>()?;
        assert_eq!(e[0], vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        let f1 = (-(10_000f64.ln()) / 3.0).exp();
        assert!((e[1][1] as f64 - (10.0 * f1).cos()).abs() < 1e-5);
        assert!((e[1][4] as f64 - (10.0 * f1).sin()).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn upsample_repeats_pixels() -> Result<()> {
        let x = Tensor::new(&[1.0f32, 2.0, 3.0, 4.0], &Device::Cpu)?.reshape((1, 1, 2, 2))?;
        let y = upsample_nearest2x(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(
            y,
            vec![
                1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.
            ]
        );
        Ok(())
    }

    /// The CPU kernels against their definitions: upsampling copies each pixel to its 2×2
    /// block and its gradient sums the block; pooling averages the block (as candle's
    /// `avg_pool2d`) and its gradient spreads a quarter to each pixel of the block. The f64
    /// path (candle's ops) gives the same values and gradients.
    #[test]
    fn resampling_matches_its_definition_and_gradients() -> Result<()> {
        let mut rng = crate::random::seeded(5);
        let dims = [2usize, 3, 4, 6];
        let x = crate::random::normal_tensor(&mut rng, &dims, DType::F32, &Device::Cpu)?;
        let r_up =
            crate::random::normal_tensor(&mut rng, &[2, 3, 8, 12], DType::F32, &Device::Cpu)?;
        let r_down =
            crate::random::normal_tensor(&mut rng, &[2, 3, 2, 3], DType::F32, &Device::Cpu)?;
        let xv = candle_core::Var::from_tensor(&x)?;
        let up = upsample_nearest2x(xv.as_tensor())?;
        let down = avg_pool2x(xv.as_tensor())?;
        let (xs, us, ds) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            up.flatten_all()?.to_vec1::<f32>()?,
            down.flatten_all()?.to_vec1::<f32>()?,
        );
        let (ru, rd) = (
            r_up.flatten_all()?.to_vec1::<f32>()?,
            r_down.flatten_all()?.to_vec1::<f32>()?,
        );
        let g_up = (&up * &r_up)?.sum_all()?.backward()?;
        let g_up = g_up
            .get(xv.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        let g_down = (&down * &r_down)?.sum_all()?.backward()?;
        let g_down = g_down
            .get(xv.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (h, w) = (dims[2], dims[3]);
        for plane in 0..dims[0] * dims[1] {
            for y in 0..h {
                for x in 0..w {
                    let i = plane * h * w + y * w + x;
                    let block = |yy: usize, xx: usize| plane * 4 * h * w + yy * 2 * w + xx;
                    let mut sum = 0.0;
                    for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        assert_eq!(us[block(2 * y + a, 2 * x + b)], xs[i]);
                        sum += ru[block(2 * y + a, 2 * x + b)];
                    }
                    assert!((g_up[i] - sum).abs() < 1e-5);
                    let j = plane * (h / 2) * (w / 2) + (y / 2) * (w / 2) + x / 2;
                    assert!((g_down[i] - rd[j] / 4.0).abs() < 1e-6);
                }
            }
            for y in 0..h / 2 {
                for x in 0..w / 2 {
                    let at = |yy: usize, xx: usize| xs[plane * h * w + yy * w + xx];
                    let mean = (at(2 * y, 2 * x)
                        + at(2 * y, 2 * x + 1)
                        + at(2 * y + 1, 2 * x)
                        + at(2 * y + 1, 2 * x + 1))
                        / 4.0;
                    assert!((ds[plane * (h / 2) * (w / 2) + y * (w / 2) + x] - mean).abs() < 1e-6);
                }
            }
        }
        // candle's path (f64) agrees, values and gradients.
        let x64 = candle_core::Var::from_tensor(&x.to_dtype(DType::F64)?)?;
        let up64 = upsample_nearest2x(x64.as_tensor())?;
        let down64 = avg_pool2x(x64.as_tensor())?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f64> {
            Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?)
        };
        assert!(diff(&up, &up64)? < 1e-6 && diff(&down, &down64)? < 1e-6);
        let g64 = (up64 * r_up.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
        let g64 = g64.get(x64.as_tensor()).expect("gradient").flatten_all()?;
        let g32 = Tensor::new(g_up.as_slice(), &Device::Cpu)?;
        assert!(diff(&g32, &g64)? < 1e-5);
        // Odd sizes pool through candle (last row and column dropped); too small is an error.
        let odd = Tensor::ones((1, 1, 5, 5), DType::F32, &Device::Cpu)?;
        assert_eq!(avg_pool2x(&odd)?.dims(), [1, 1, 2, 2]);
        let tiny = Tensor::ones((1, 1, 1, 4), DType::F32, &Device::Cpu)?;
        assert!(matches!(avg_pool2x(&tiny), Err(Error::Shape(_))));
        Ok(())
    }

    /// The ReLU kernel: `max(x, 0)`, gradient passed where the output is positive; candle's
    /// path (f64) agrees away from 0.
    #[test]
    fn relu_matches_its_definition_and_gradient() -> Result<()> {
        let mut rng = crate::random::seeded(6);
        let x = crate::random::normal_tensor(&mut rng, &[3, 40_000], DType::F32, &Device::Cpu)?;
        let r = crate::random::normal_tensor(&mut rng, &[3, 40_000], DType::F32, &Device::Cpu)?;
        let xv = candle_core::Var::from_tensor(&x)?;
        let y = relu(xv.as_tensor())?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let g = grads.get(xv.as_tensor()).expect("gradient");
        let (xs, ys) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            y.flatten_all()?.to_vec1::<f32>()?,
        );
        let (rs, gs) = (
            r.flatten_all()?.to_vec1::<f32>()?,
            g.flatten_all()?.to_vec1::<f32>()?,
        );
        for i in 0..xs.len() {
            assert_eq!(ys[i], xs[i].max(0.0));
            assert_eq!(gs[i], if xs[i] > 0.0 { rs[i] } else { 0.0 });
        }
        let x64 = candle_core::Var::from_tensor(&x.to_dtype(DType::F64)?)?;
        let y64 = relu(x64.as_tensor())?;
        let g64 = (&y64 * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
        let g64 = g64
            .get(x64.as_tensor())
            .expect("gradient")
            .to_dtype(DType::F32)?;
        let diff = (g64 - g)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }

    #[test]
    fn dropout_keeps_the_mean_and_is_seeded() -> Result<()> {
        let x = Tensor::ones(20_000, DType::F32, &Device::Cpu)?;
        let mut r1 = crate::random::seeded(3);
        let mut r2 = crate::random::seeded(3);
        let a = dropout(&x, 0.25, Some(&mut r1))?;
        let b = dropout(&x, 0.25, Some(&mut r2))?;
        assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        let mean = a.mean_all()?.to_scalar::<f32>()?;
        assert!((mean - 1.0).abs() < 0.03, "{mean}");
        assert!(dropout(&x, 1.0, None).is_err());
        Ok(())
    }
}
