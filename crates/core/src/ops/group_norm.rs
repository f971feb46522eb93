//! Group normalization fused with its affine map and SiLU, and per-channel sums.
//!
//! The normalization layers of the improved-diffusion U-Net (GroupNorm(32) followed by a
//! per-sample scale and shift from the timestep embedding, then SiLU) are memory-bound: candle
//! composes them from five to seven full passes over the tensor. [`GroupNorm`] makes one (plus
//! one for the statistics), with an exact backward pass in one kernel; tested against the same
//! function written with tensor ops, forward and backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, bail};

use std::sync::Mutex;

use crate::host::{f32_data, fast_exp, output_buffer, par_parts, sum_f64};

#[inline(always)]
fn silu(y: f32) -> f32 {
    y / (1.0 + fast_exp(-y))
}

/// `act((x − μ_g)/√(σ²_g + eps) · a + b)` for `x` `[B, C, …]` with statistics per sample and
/// group of `C / groups` channels, per-sample, per-channel `a` and `b` (`[B, C]`), and
/// `act` SiLU or the identity.
#[derive(Clone, Copy, Debug)]
pub struct GroupNorm {
    /// The number of channel groups (dividing C).
    pub groups: usize,
    /// The ε added to each group's variance.
    pub eps: f64,
    /// SiLU after the affine map (otherwise the identity).
    pub silu: bool,
}

impl GroupNorm {
    /// `(B, C, spatial)` of `x`.
    fn sizes(&self, dims: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
        if dims.len() < 2 || self.groups == 0 || !dims[1].is_multiple_of(self.groups) {
            bail!(
                "group norm: {} groups do not fit a tensor of shape {dims:?}",
                self.groups
            )
        }
        Ok((dims[0], dims[1], dims[2..].iter().product()))
    }
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "unet-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, s) = self.sizes(l1.dims())?;
        if l2.dims() != [b, c] || l3.dims() != [b, c] {
            bail!(
                "group norm: scale {:?} / shift {:?} must be [{b}, {c}]",
                l2.dims(),
                l3.dims()
            )
        }
        let (x, scale, shift) = (f32_data(s1, l1)?, f32_data(s2, l2)?, f32_data(s3, l3)?);
        let cg = c / self.groups;
        let n = cg * s;
        // SAFETY: the parts below write every element.
        let mut out = unsafe { output_buffer(x.len()) };
        let eps = self.eps;
        let act = self.silu;
        par_parts(
            &mut out,
            n,
            #[inline(always)]
            |i, part| {
                let xs = &x[i * n..][..n];
                let (mean, r) = moments(xs, eps);
                let bi = i / self.groups;
                for (cl, (src, dst)) in xs.chunks(s).zip(part.chunks_mut(s)).enumerate() {
                    let ch = bi * c + (i % self.groups) * cg + cl;
                    let (a, sh) = (scale[ch] * r, shift[ch]);
                    if act {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = silu((v - mean) * a + sh);
                        }
                    } else {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = (v - mean) * a + sh;
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, s) = self.sizes(x.dims())?;
        let flat = self.grad_kernel(x, scale, shift, grad)?;
        let (g, cg, total) = (self.groups, c / self.groups, b * c * s);
        let dx = flat.narrow(0, 0, total)?.reshape(x.shape())?;
        let stats = flat.narrow(0, total, 2 * b * c)?.reshape((b, g, 2, cg))?;
        let d_scale = stats.narrow(2, 0, 1)?.reshape((b, c))?;
        let d_shift = stats.narrow(2, 1, 1)?.reshape((b, c))?;
        Ok((Some(dx), Some(d_scale), Some(d_shift)))
    }
}

impl GroupNorm {
    /// The input gradient of this group norm at `x` `[B, C, …]` (per-sample scale and shift
    /// `[B, C]`) for the output gradient `grad`, computed by the one-kernel backward pass of
    /// [`GroupNorm`] without recording an autograd graph: for inference-time vector–Jacobian
    /// products (an energy model's ∇ₓE), where nothing differentiates the result again.
    ///
    /// # Errors
    ///
    /// When the shapes do not fit or a tensor is not `f32` on the CPU.
    pub fn input_grad(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let flat = self.grad_kernel(x, scale, shift, grad)?;
        flat.narrow(0, 0, x.elem_count())?.reshape(x.shape())
    }

    /// The flat output of [`GroupNormGrad`] (input gradient, then the per-group scale and
    /// shift gradients) for the output gradient `grad`.
    fn grad_kernel(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let ss = Tensor::stack(&[scale, shift], 0)?.contiguous()?;
        x.contiguous()?
            .apply_op3_no_bwd(&grad.contiguous()?, &ss, &GroupNormGrad { norm: *self })
    }
}

/// The backward pass of [`GroupNorm`] in one kernel: inputs `x` `[B, C, …]`, the output
/// gradient of the same shape and `[2, B, C]` (scale, shift); output, flat, the input
/// gradient followed by `[B, groups, 2, C / groups]` (scale then shift gradient per group).
#[derive(Clone, Copy, Debug)]
struct GroupNormGrad {
    norm: GroupNorm,
}

impl CustomOp3 for GroupNormGrad {
    fn name(&self) -> &'static str {
        "unet-group-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, s) = self.norm.sizes(l1.dims())?;
        if l2.dims() != l1.dims() || l3.dims() != [2, b, c] {
            bail!(
                "group norm grad: gradient {:?} / scale-shift {:?} do not fit {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            )
        }
        let (x, grad, ss) = (f32_data(s1, l1)?, f32_data(s2, l2)?, f32_data(s3, l3)?);
        let (scale, shift) = ss.split_at(b * c);
        let groups = self.norm.groups;
        let cg = c / groups;
        let n = cg * s;
        let total = b * c * s;
        // SAFETY: every group writes its dx part and its channels' two sums.
        let mut out = unsafe { output_buffer(total + 2 * b * c) };
        let (dx, stats) = out.split_at_mut(total);
        let stats: Vec<Mutex<&mut [f32]>> = stats.chunks_mut(2 * cg).map(Mutex::new).collect();
        let eps = self.norm.eps;
        let act = self.norm.silu;
        par_parts(
            dx,
            n,
            #[inline(always)]
            |i, dst| {
                let mut st = stats[i].lock().unwrap_or_else(|e| e.into_inner());
                let (d_scale, d_shift) = st.split_at_mut(cg);
                let xs = &x[i * n..][..n];
                let gs = &grad[i * n..][..n];
                let (mean, r) = moments(xs, eps);
                let ch0 = (i / groups) * c + (i % groups) * cg;
                // dy (after the activation's derivative) into dst, and the per-channel sums.
                let (mut m1, mut m2) = (0f64, 0f64);
                for cl in 0..cg {
                    let (a, sh) = (scale[ch0 + cl], shift[ch0 + cl]);
                    let (src, gr) = (&xs[cl * s..][..s], &gs[cl * s..][..s]);
                    let out = &mut dst[cl * s..][..s];
                    if act {
                        for ((d, &v), &g) in out.iter_mut().zip(src).zip(gr) {
                            let y = (v - mean) * r * a + sh;
                            let sig = 1.0 / (1.0 + fast_exp(-y));
                            *d = g * sig * (1.0 + y * (1.0 - sig));
                        }
                    } else {
                        out.copy_from_slice(gr);
                    }
                    // Σ dy·x̂ and Σ dy in eight lanes (so that the loop vectorizes).
                    let (mut lsc, mut lsh) = ([0f32; 8], [0f32; 8]);
                    let (od, xd) = (out.chunks_exact(8), src.chunks_exact(8));
                    let (otail, xtail) = (od.remainder(), xd.remainder());
                    for (o8, x8) in od.zip(xd) {
                        for j in 0..8 {
                            lsc[j] += o8[j] * ((x8[j] - mean) * r);
                            lsh[j] += o8[j];
                        }
                    }
                    let (mut dsc, mut dsh) = (lsc.iter().sum::<f32>(), lsh.iter().sum::<f32>());
                    for (&o, &v) in otail.iter().zip(xtail) {
                        dsc += o * ((v - mean) * r);
                        dsh += o;
                    }
                    d_scale[cl] = dsc;
                    d_shift[cl] = dsh;
                    m1 += f64::from(a) * f64::from(dsh);
                    m2 += f64::from(a) * f64::from(dsc);
                }
                let (m1, m2) = ((m1 / n as f64) as f32, (m2 / n as f64) as f32);
                for cl in 0..cg {
                    let a = scale[ch0 + cl];
                    let src = &xs[cl * s..][..s];
                    for (d, &v) in dst[cl * s..][..s].iter_mut().zip(src) {
                        let xh = (v - mean) * r;
                        *d = (*d * a - m1 - xh * m2) * r;
                    }
                }
            },
        );
        drop(stats);
        Ok((CpuStorage::F32(out), Shape::from(total + 2 * b * c)))
    }
}

/// The gradient of a per-channel bias `[1 or B, C]` added to `[B, C, …]`, from the output
/// gradient: its per-sample channel sums, summed over the batch for a shared bias.
pub fn channel_bias_grad(grad: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let sums = grad.contiguous()?.apply_op1_no_bwd(&ChannelSum)?;
    if bias.dim(0)? == 1 {
        sums.sum_keepdim(0)
    } else {
        Ok(sums)
    }
}

/// Per-sample, per-channel sums of a contiguous `[B, C, …]` tensor, `[B, C]`.
#[derive(Clone, Copy, Debug)]
struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "unet-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        if dims.len() < 2 {
            bail!("channel sum: expected [B, C, …], got {dims:?}")
        }
        let x = f32_data(s, l)?;
        let (b, c) = (dims[0], dims[1]);
        let sp: usize = dims[2..].iter().product();
        let mut out = vec![0f32; b * c];
        par_parts(
            &mut out,
            c.max(1),
            #[inline(always)]
            |bi, part| {
                for (ch, d) in part.iter_mut().enumerate() {
                    *d = sum_f64(&x[(bi * c + ch) * sp..][..sp]) as f32;
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((b, c))))
    }
}

/// The mean of `xs` and `1/√(variance + eps)` (two passes, accumulated in `f64`).
#[inline(always)]
fn moments(xs: &[f32], eps: f64) -> (f32, f32) {
    let n = xs.len().max(1) as f64;
    let mean = (sum_f64(xs) / n) as f32;
    let mut lanes = [0f64; 8];
    let mut chunks = xs.chunks_exact(8);
    for ch in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(ch) {
            let d = v - mean;
            *l += f64::from(d * d);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from((v - mean) * (v - mean)))
        .sum();
    let var = (lanes.iter().sum::<f64>() + tail) / n;
    (mean, (1.0 / (var + eps).sqrt()) as f32)
}
