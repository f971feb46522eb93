//! The latent encoder of Decomp Diffusion: an image to K non-negative factor latents.
//!
//! Su et al., *Compositional Image Decomposition with Diffusion Models* (ICML 2024), §3.1 and
//! the released code's `latent_encoder`: a sequential module whose parameter names this one
//! keeps (`latent_encoder.{0,2,4,6,8,10,12,15}`):
//!
//! ```text
//! 0   conv 3×3, 3 → E, + ReLU (1)
//! 2   basic block(E)  + ReLU (3)       basic block: conv–BN–ReLU–conv–BN, + x, ReLU
//! 4   conv 3×3 stride 2, E → 2E, + ReLU (5)
//! 6   basic block(2E) + ReLU (7)
//! 8   conv 3×3 stride 2, 2E → 4E, + ReLU (9)
//! 10  basic block(4E) + ReLU (11)
//! 12  conv 3×3 stride 2, 4E → 8E, + ReLU (13)
//! 14  flatten (C, H, W order)
//! 15  linear 8E·r·r → K·d, + ReLU (16)          r = ⌈H/8⌉
//! ```
//!
//! The basic blocks' convolutions have no bias; their batch norms (eps 10⁻⁵, momentum 0.1) keep
//! running statistics. In evaluation mode a batch norm uses them; in training mode it normalizes
//! with the batch's mean and biased variance and moves the running statistics towards the batch's
//! (unbiased) ones, like PyTorch's `BatchNorm2d`.
//!
//! On the CPU in `f32` the convolutions run on [`recompose_diffusion::nn::conv::Conv2d`]'s gemm
//! kernels and the training-mode batch norm is one fused kernel per pass (statistics, normalize,
//! backward); elsewhere both fall back to candle's ops.

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use recompose_core::ops::batch_norm;
use recompose_diffusion::nn::conv::Conv2d;
use recompose_diffusion::nn::layers::{ConvSpec, linear, relu};

use crate::{Error, Result};

/// Batch normalization over the channels of `[B, C, H, W]` inputs, with running statistics.
///
/// The running statistics are the tensors `vb` gave (with a
/// [`recompose_diffusion::nn::ParamStore`], its variables, so checkpoints carry them; they get
/// no gradient, so the optimizer leaves them alone) and are updated in place.
#[derive(Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// A batch norm over `channels` (parameters `weight`, `bias`; buffers `running_mean`,
    /// `running_var`, read from `vb` when present, else zeros and ones).
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if a tensor exists with another shape.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// Copies of the running mean and variance.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if the copy fails.
    pub fn running_stats(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.running_mean.detach().copy()?,
            self.running_var.detach().copy()?,
        ))
    }

    /// Normalizes `x` (`[B, C, H, W]`): with the batch's statistics, updating the running ones,
    /// when `train`; with the running statistics otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] for inputs that are not `[B, C, H, W]` with this number of channels;
    /// [`Error::Config`] for a training batch of one value per channel.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let shape = (1, c, 1, 1);
        let (mean, var) = if train {
            let n = b * h * w;
            if n < 2 {
                return Err(Error::Config(
                    "batch norm in training mode needs more than one value per channel".into(),
                ));
            }
            let fast = recompose_core::host::on_fast_path(&[x, &self.weight, &self.bias]);
            if fast {
                let x = x.contiguous()?;
                let stats = x.detach().apply_op1_no_bwd(&batch_norm::Moments)?;
                self.update(&stats.get(0)?, &stats.get(1)?, n)?;
                return Ok(x.apply_op3(
                    &self.weight.contiguous()?,
                    &self.bias.contiguous()?,
                    batch_norm::Normalize { eps: self.eps },
                )?);
            }
            // Per channel over (B, H, W).
            let flat = x.transpose(0, 1)?.reshape((c, n))?;
            let mean = flat.mean_keepdim(D::Minus1)?;
            let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
            self.update(&mean.flatten_all()?, &var.flatten_all()?, n)?;
            (mean.reshape(shape)?, var.reshape(shape)?)
        } else {
            (
                self.running_mean
                    .detach()
                    .to_dtype(x.dtype())?
                    .reshape(shape)?,
                self.running_var
                    .detach()
                    .to_dtype(x.dtype())?
                    .reshape(shape)?,
            )
        };
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_sub(&mean)?
            .broadcast_mul(&inv)?
            .broadcast_mul(&self.weight.reshape(shape)?)?
            .broadcast_add(&self.bias.reshape(shape)?)?)
    }

    /// running ← (1 − momentum) running + momentum · batch (the variance unbiased), in place.
    fn update(&self, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        let unbiased = (var.detach() * (n as f64 / (n as f64 - 1.0)))?;
        let m = self.momentum;
        for (running, batch) in [
            (&self.running_mean, mean.detach()),
            (&self.running_var, unbiased),
        ] {
            let old = running.detach();
            let new = ((&old * (1.0 - m))? + (batch.to_dtype(old.dtype())? * m)?)?;
            running.slice_set(&new, 0, 0)?;
        }
        Ok(())
    }
}

/// A ResNet basic block: conv–BN–ReLU–conv–BN, identity skip, ReLU.
#[derive(Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
}

impl BasicBlock {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: Conv2d::no_bias(channels, channels, ConvSpec::SAME3, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(channels, vb.pp("bn1"))?,
            conv2: Conv2d::no_bias(channels, channels, ConvSpec::SAME3, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(channels, vb.pp("bn2"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = relu(&self.bn1.forward_t(&self.conv1.forward(x)?, train)?)?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        Ok(relu(&(y + x)?)?)
    }

    /// The block's two batch norms.
    pub fn norms(&self) -> [&BatchNorm2d; 2] {
        [&self.bn1, &self.bn2]
    }
}

/// The shape of a [`LatentEncoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Side of the (square) input images.
    pub image_size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Width E of the first level (64 in the released code).
    pub channels: usize,
    /// Number of factors K.
    pub num_components: usize,
    /// Size d of each factor's latent.
    pub latent_dim: usize,
}

impl EncoderConfig {
    /// Checks that every size is positive.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first zero size.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("image_size", self.image_size),
            ("in_channels", self.in_channels),
            ("channels", self.channels),
            ("num_components", self.num_components),
            ("latent_dim", self.latent_dim),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("encoder: {name} must be positive")));
            }
        }
        Ok(())
    }

    /// The side r of the last feature map: three stride-2 convolutions with padding 1.
    pub fn final_side(&self) -> usize {
        (0..3).fold(self.image_size, |s, _| s.div_ceil(2))
    }
}

/// The latent encoder (see the [module documentation](self)).
#[derive(Debug)]
pub struct LatentEncoder {
    config: EncoderConfig,
    stem: Conv2d,
    levels: Vec<(BasicBlock, Conv2d)>,
    head: Linear,
}

impl LatentEncoder {
    /// Builds the encoder on `vb` (the `latent_encoder` prefix of a Decomp Diffusion state
    /// dict, or a [`recompose_diffusion::nn::ParamStore`] for training).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero size; [`Error::Candle`] if a tensor has another shape.
    pub fn new(config: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let e = config.channels;
        let stem = Conv2d::new(config.in_channels, e, ConvSpec::SAME3, vb.pp("0"))?;
        let mut levels = Vec::with_capacity(3);
        for (i, width) in [e, 2 * e, 4 * e].into_iter().enumerate() {
            let block = BasicBlock::new(width, vb.pp((2 + 4 * i).to_string()))?;
            let down = Conv2d::new(
                width,
                2 * width,
                ConvSpec::DOWN3,
                vb.pp((4 + 4 * i).to_string()),
            )?;
            levels.push((block, down));
        }
        let r = config.final_side();
        let head = linear(
            8 * e * r * r,
            config.num_components * config.latent_dim,
            vb.pp("15"),
        )?;
        Ok(Self {
            config: *config,
            stem,
            levels,
            head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Every batch norm, in module order.
    pub fn norms(&self) -> Vec<&BatchNorm2d> {
        self.levels.iter().flat_map(|(b, _)| b.norms()).collect()
    }

    /// The latents `[B, K·d]` (non-negative) of images `[B, C, H, W]`: factor k is the slice
    /// `k·d .. (k+1)·d`. `train` selects the batch norms' mode.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for images of another size or channel count; as
    /// [`BatchNorm2d::forward_t`].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = &self.config;
        match x.dims() {
            [_, ch, h, w] if *ch == c.in_channels && *h == c.image_size && *w == c.image_size => {}
            other => {
                return Err(Error::Config(format!(
                    "the encoder takes images [B, {}, {}, {}], got {other:?}",
                    c.in_channels, c.image_size, c.image_size
                )));
            }
        }
        let mut h = relu(&self.stem.forward(x)?)?;
        for (block, down) in &self.levels {
            // The reference applies a second ReLU after the block's own; ReLU is idempotent
            // (values and gradient), so the block's output is used as is.
            h = block.forward_t(&h, train)?;
            h = relu(&down.forward(&h)?)?;
        }
        let h = h.flatten_from(1)?;
        Ok(relu(&self.head.forward(&h)?)?)
    }
}

/// The latents of images as f32 on the host, `[B][K·d]`, for tests and reports.
///
/// # Errors
///
/// [`Error::Candle`] if the tensor is not 2-D.
pub fn latents_to_vec(z: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(z.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use recompose_diffusion::nn::ParamStore;

    fn images(b: usize, size: usize, seed: u64) -> Tensor {
        let v = recompose_diffusion::random::normal_vec(
            &mut recompose_diffusion::seeded(seed),
            b * 3 * size * size,
        );
        Tensor::from_vec(v, (b, 3, size, size), &Device::Cpu).expect("images")
    }

    #[test]
    fn batch_norm_training_mode_normalizes_and_tracks_running_statistics() -> Result<()> {
        let store = ParamStore::new(0);
        let bn = BatchNorm2d::new(3, store.var_builder(DType::F32, &Device::Cpu))?;
        let x = ((images(4, 5, 1) * 2.0)? + 0.7)?;
        let y = bn.forward_t(&x, true)?;
        let flat = y.transpose(0, 1)?.reshape((3, 100))?.to_vec2::<f32>()?;
        let xs = x.transpose(0, 1)?.reshape((3, 100))?.to_vec2::<f32>()?;
        let (rm, rv) = bn.running_stats()?;
        let (rm, rv) = (rm.to_vec1::<f32>()?, rv.to_vec1::<f32>()?);
        for c in 0..3 {
            let mean = flat[c].iter().sum::<f32>() / 100.0;
            let var = flat[c].iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 100.0;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                "{mean} {var}"
            );
            // Running statistics: 0.9 · (0, 1) + 0.1 · (batch mean, unbiased batch variance).
            let bm = xs[c].iter().sum::<f32>() / 100.0;
            let bv = xs[c].iter().map(|v| (v - bm).powi(2)).sum::<f32>() / 99.0;
            assert!((rm[c] - 0.1 * bm).abs() < 1e-5);
            assert!((rv[c] - (0.9 + 0.1 * bv)).abs() < 1e-4);
        }
        // Evaluation mode uses the running statistics.
        let e = bn.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        // Element (1, 2, 3, 4) of [4, 3, 5, 5].
        let i = ((3 + 2) * 5 + 3) * 5 + 4;
        let want = (xv[i] - rm[2]) / (rv[2] + 1e-5).sqrt();
        assert!((e[i] - want).abs() < 1e-5);
        assert!(bn.forward_t(&images(1, 1, 2), true).is_err());
        Ok(())
    }

    /// The fused training-mode kernel against the same normalization written with tensor ops:
    /// output, batch statistics and the gradients of input, weight and bias.
    #[test]
    fn batch_norm_kernel_matches_tensor_ops() -> Result<()> {
        let var = |t: Tensor| candle_core::Var::from_tensor(&t);
        let x = var(((images(3, 5, 7) * 1.5)? + 0.3)?.reshape((3, 3, 5, 5))?)?;
        let gamma = var(Tensor::new(&[0.5f32, -1.2, 2.0], &Device::Cpu)?)?;
        let beta = var(Tensor::new(&[0.1f32, 0.0, -0.7], &Device::Cpu)?)?;
        let eps = 1e-5;
        let fused = x.as_tensor().apply_op3(
            gamma.as_tensor(),
            beta.as_tensor(),
            batch_norm::Normalize { eps },
        )?;
        let shape = (1, 3, 1, 1);
        let flat = x.transpose(0, 1)?.reshape((3, 75))?;
        let mean = flat.mean_keepdim(D::Minus1)?;
        let var_b = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
        let want = x
            .broadcast_sub(&mean.reshape(shape)?)?
            .broadcast_div(&(var_b.reshape(shape)? + eps)?.sqrt()?)?
            .broadcast_mul(&gamma.reshape(shape)?)?
            .broadcast_add(&beta.reshape(shape)?)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
        };
        assert!(diff(&fused, &want)? < 1e-5);
        let stats = x.as_tensor().apply_op1_no_bwd(&batch_norm::Moments)?;
        assert!(diff(&stats.get(0)?, &mean.flatten_all()?)? < 1e-6);
        assert!(diff(&stats.get(1)?, &var_b.flatten_all()?)? < 1e-5);
        let probe = images(3, 5, 8).reshape((3, 3, 5, 5))?;
        let gf = (fused * &probe)?.sum_all()?.backward()?;
        let gw = (want * &probe)?.sum_all()?.backward()?;
        for v in [&x, &gamma, &beta] {
            let (Some(a), Some(b)) = (gf.get(v.as_tensor()), gw.get(v.as_tensor())) else {
                panic!("missing gradient")
            };
            assert!(diff(a, b)? < 1e-4, "{}", diff(a, b)?);
        }
        Ok(())
    }

    #[test]
    fn latents_are_non_negative_with_the_configured_shape() -> Result<()> {
        let cfg = EncoderConfig {
            image_size: 16,
            in_channels: 3,
            channels: 4,
            num_components: 3,
            latent_dim: 5,
        };
        let store = ParamStore::new(3);
        let enc = LatentEncoder::new(&cfg, store.var_builder(DType::F32, &Device::Cpu))?;
        assert_eq!(cfg.final_side(), 2);
        for train in [false, true] {
            let z = enc.forward_t(&images(2, 16, 4), train)?;
            assert_eq!(z.dims(), &[2, 15]);
            assert!(z.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| *v >= 0.0));
        }
        assert!(enc.forward_t(&images(2, 8, 4), false).is_err());
        assert_eq!(enc.norms().len(), 6);
        // Every parameter reaches the loss in training mode.
        let loss = enc.forward_t(&images(2, 16, 5), true)?.sum_all()?;
        let grads = loss.backward()?;
        let named = store.vars();
        let missing: Vec<&String> = named
            .iter()
            .filter(|(n, v)| !n.contains("running") && grads.get(v.as_tensor()).is_none())
            .map(|(n, _)| n)
            .collect();
        assert!(missing.is_empty(), "no gradient for {missing:?}");
        Ok(())
    }

    /// Against the released PyTorch code's reference data (README in the reference folder):
    /// latents in evaluation and training mode, and the running statistics after one training
    /// forward pass. Ignored by default: it needs `../shared/reference/decomp-diffusion` next to
    /// the workspace.
    #[test]
    #[ignore = "needs the released code's reference data in ../shared/reference/decomp-diffusion; \
                run with `cargo test -p recompose-decomp-diffusion -- --ignored`"]
    fn matches_the_reference_encoder() -> Result<()> {
        let dir = crate::reference_data();
        let dev = Device::Cpu;
        let load = |name: &str| -> Result<std::collections::HashMap<String, Tensor>> {
            Ok(candle_core::safetensors::load(dir.join(name), &dev)?)
        };
        let io = load("small_io.safetensors")?;
        let grads = load("small_grads.safetensors")?;
        let vb = VarBuilder::from_tensors(load("small_model.safetensors")?, DType::F32, &dev);
        let cfg = EncoderConfig {
            image_size: 32,
            in_channels: 3,
            channels: 64,
            num_components: 3,
            latent_dim: 32,
        };
        let enc = LatentEncoder::new(&cfg, vb.pp("latent_encoder"))?;
        let x0 = &io["x0"];
        let err = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        let z = enc.forward_t(x0, false)?;
        let e_eval = err(&z, &io["z"])?;
        assert!(e_eval < 1e-4, "z (eval): max error {e_eval}");
        let zt = enc.forward_t(x0, true)?;
        let e_train = err(&zt, &io["z_trainmode"])?;
        assert!(e_train < 1e-4, "z (train): max error {e_train}");
        let mut checked = 0;
        for (i, block) in [2, 6, 10].iter().enumerate() {
            for (j, bn) in enc.levels[i].0.norms().iter().enumerate() {
                let (rm, rv) = bn.running_stats()?;
                for (name, t) in [("running_mean", &rm), ("running_var", &rv)] {
                    let key = format!("bn_after.latent_encoder.{block}.bn{}.{name}", j + 1);
                    let want = grads
                        .get(&key)
                        .ok_or_else(|| Error::Config(format!("{key} missing")))?;
                    let e = err(t, want)?;
                    assert!(e < 1e-4, "{key}: max error {e}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 12);
        eprintln!("reference encoder: z eval {e_eval:.2e}, z train {e_train:.2e}");
        Ok(())
    }
}
