//! Group normalization fused with its affine map and SiLU, and per-channel sums.
//!
//! The normalization layers of the improved-diffusion U-Net (GroupNorm(32) followed by a
//! per-sample scale and shift from the timestep embedding, then SiLU) are memory-bound: candle
//! composes them from five to seven full passes over the tensor. [`GroupNorm`] makes one (plus
//! one for the statistics), with an exact backward pass in one kernel; tested against the same
//! function written with tensor ops, forward and backward. [`GroupNorm::input_grad_tracked`]
//! is that backward pass as a differentiable op of its own (input, output gradient, scale and
//! shift), whose backward pass is one second-order kernel: an energy
//! model's loss on ∇ₓE differentiates the input gradient once more.

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
        let total = b * c * s;
        let dx = flat.narrow(0, 0, total)?.reshape(x.shape())?;
        let (d_scale, d_shift) = scale_shift_grads(&flat, total, b, c, self.groups)?;
        Ok((Some(dx), Some(d_scale), Some(d_shift)))
    }
}

/// The scale and shift gradients (`[B, C]` each) from a gradient kernel's flat output, whose
/// per-group statistics `[B, groups, 2, C / groups]` (scale then shift gradient) start at
/// `offset`.
fn scale_shift_grads(
    flat: &Tensor,
    offset: usize,
    b: usize,
    c: usize,
    groups: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let stats = flat
        .narrow(0, offset, 2 * b * c)?
        .reshape((b, groups, 2, c / groups))?;
    Ok((
        stats.narrow(2, 0, 1)?.reshape((b, c))?,
        stats.narrow(2, 1, 1)?.reshape((b, c))?,
    ))
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

    /// The input gradient of this group norm, `Jᵀ grad`, as an op that records its inputs:
    /// differentiable in `x`, `grad`, `scale` and `shift` (the second derivative of the norm,
    /// exact, in one kernel). For training energy models, whose loss
    /// depends on ∇ₓE.
    ///
    /// # Errors
    ///
    /// When the shapes do not fit or a tensor is not `f32` on the CPU.
    pub fn input_grad_tracked(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let ss = Tensor::stack(&[scale, shift], 0)?.contiguous()?;
        x.contiguous()?
            .apply_op3(&grad.contiguous()?, &ss, GroupNormVjp { norm: *self })
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

/// `Jᵀ g` of [`GroupNorm`] as a differentiable op: inputs `x`, the output gradient `g` and
/// `[2, B, C]` (scale, shift); output the input gradient (shape of `x`). Its forward pass is
/// [`GroupNormGrad`]'s; its backward pass [`GroupNormVjpGrad`]'s.
#[derive(Clone, Copy, Debug)]
struct GroupNormVjp {
    norm: GroupNorm,
}

impl CustomOp3 for GroupNormVjp {
    fn name(&self) -> &'static str {
        "unet-group-norm-vjp"
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
        let (out, _) = GroupNormGrad { norm: self.norm }.cpu_fwd(s1, l1, s2, l2, s3, l3)?;
        let CpuStorage::F32(mut v) = out else {
            bail!("group norm vjp: the gradient kernel returned a non-f32 buffer")
        };
        v.truncate(l1.shape().elem_count());
        Ok((CpuStorage::F32(v), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        ss: &Tensor,
        _res: &Tensor,
        h: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, s) = self.norm.sizes(x.dims())?;
        let gh = Tensor::stack(&[g, h], 0)?.contiguous()?;
        let flat = x.contiguous()?.apply_op3_no_bwd(
            &gh,
            &ss.contiguous()?,
            &GroupNormVjpGrad { norm: self.norm },
        )?;
        let total = b * c * s;
        let dx = flat.narrow(0, 0, total)?.reshape(x.shape())?;
        let dg = flat.narrow(0, total, total)?.reshape(x.shape())?;
        let (d_scale, d_shift) = scale_shift_grads(&flat, 2 * total, b, c, self.norm.groups)?;
        let d_ss = Tensor::stack(&[d_scale, d_shift], 0)?;
        Ok((Some(dx), Some(dg), Some(d_ss)))
    }
}

/// The backward pass of [`GroupNormVjp`]: for L = ⟨h, Jᵀ g⟩ with J the Jacobian of
/// z = act(a x̂ + b), x̂ = (x − μ) r, r = (σ² + ε)^(−1/2) per group, and ẋ̂ = r (h − mean h −
/// x̂ mean(h x̂)) (x̂'s derivative along h), L = ⟨P, ẋ̂⟩ with P = a g act′(y), so
///
/// - ∂L/∂g = act′(y) a ẋ̂ (the Jacobian–vector product along h);
/// - ∂L/∂a = Σ_channel (g act′(y) ẋ̂ + a g act″(y) x̂ ẋ̂), ∂L/∂b = Σ_channel a g act″(y) ẋ̂;
/// - ∂L/∂x: with v = a² g act″(y) ẋ̂ − r P mean(h x̂) − r ⟨P, x̂⟩ h / n (L's derivative in x̂
///   at fixed r) and ∂L/∂r = ⟨P, h − mean h⟩ − ⟨P, x̂⟩ mean(h x̂),
///   ∂L/∂x = r (v − mean v − x̂ mean(v x̂)) − (∂L/∂r) r² x̂ / n.
///
/// Inputs `x` `[B, C, …]`, `[2, B, C, …]` (g, h) and `[2, B, C]` (scale, shift); output,
/// flat, ∂L/∂x, ∂L/∂g, then `[B, groups, 2, C / groups]` (scale then shift gradient).
#[derive(Clone, Copy, Debug)]
struct GroupNormVjpGrad {
    norm: GroupNorm,
}

impl CustomOp3 for GroupNormVjpGrad {
    fn name(&self) -> &'static str {
        "unet-group-norm-vjp-grad"
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
        let total = b * c * s;
        if l2.dims().first() != Some(&2) || l2.dims()[1..] != *l1.dims() || l3.dims() != [2, b, c] {
            bail!(
                "group norm vjp grad: (g, h) {:?} / scale-shift {:?} do not fit {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            )
        }
        let (x, gh, ss) = (f32_data(s1, l1)?, f32_data(s2, l2)?, f32_data(s3, l3)?);
        let (grad, hs) = gh.split_at(total);
        let (scale, shift) = ss.split_at(b * c);
        let groups = self.norm.groups;
        let cg = c / groups;
        let n = cg * s;
        // SAFETY: every group writes its dx and dg parts and its channels' two sums.
        let mut out = unsafe { output_buffer(2 * total + 2 * b * c) };
        let (dx, rest) = out.split_at_mut(total);
        let (dg, stats) = rest.split_at_mut(total);
        let dg: Vec<Mutex<&mut [f32]>> = dg.chunks_mut(n.max(1)).map(Mutex::new).collect();
        let stats: Vec<Mutex<&mut [f32]>> = stats.chunks_mut(2 * cg).map(Mutex::new).collect();
        let eps = self.norm.eps;
        let act = self.norm.silu;
        // act′(y) and act″(y).
        let derivs = move |y: f32| -> (f32, f32) {
            if act {
                let sig = 1.0 / (1.0 + fast_exp(-y));
                let d1 = sig * (1.0 + y * (1.0 - sig));
                let d2 = sig * (1.0 - sig) * (2.0 + y * (1.0 - 2.0 * sig));
                (d1, d2)
            } else {
                (1.0, 0.0)
            }
        };
        let nf = n as f64;
        par_parts(
            dx,
            n,
            #[inline(always)]
            |i, dst| {
                let mut dgi = dg[i].lock().unwrap_or_else(|e| e.into_inner());
                let mut st = stats[i].lock().unwrap_or_else(|e| e.into_inner());
                let (d_scale, d_shift) = st.split_at_mut(cg);
                let xs = &x[i * n..][..n];
                let gs = &grad[i * n..][..n];
                let hv = &hs[i * n..][..n];
                let (mean, r) = moments(xs, eps);
                let ch0 = (i / groups) * c + (i % groups) * cg;
                // Group sums: Σh, Σh x̂, ΣP, ΣP x̂, ΣP h.
                let (mut sh_, mut shx, mut sp, mut spx, mut sph) = (0f64, 0f64, 0f64, 0f64, 0f64);
                for cl in 0..cg {
                    let (a, bb) = (scale[ch0 + cl], shift[ch0 + cl]);
                    let range = cl * s..(cl + 1) * s;
                    for ((&v, &g), &h) in xs[range.clone()]
                        .iter()
                        .zip(&gs[range.clone()])
                        .zip(&hv[range])
                    {
                        let xh = (v - mean) * r;
                        let (d1, _) = derivs(xh * a + bb);
                        let p = f64::from(a * g * d1);
                        let (h, xh) = (f64::from(h), f64::from(xh));
                        sh_ += h;
                        shx += h * xh;
                        sp += p;
                        spx += p * xh;
                        sph += p * h;
                    }
                }
                let (mh0, mh) = (sh_ / nf, shx / nf);
                let dl_dr = (sph - mh0 * sp) - spx * mh;
                let rf = f64::from(r);
                let (mh0f, mhf) = (mh0 as f32, mh as f32);
                let (k_p, k_h) = ((rf * mh) as f32, (rf * spx / nf) as f32);
                // ẋ̂, ∂L/∂g, the channel sums and v (into dst), with Σv and Σv x̂.
                let (mut sv, mut svx) = (0f64, 0f64);
                for cl in 0..cg {
                    let (a, bb) = (scale[ch0 + cl], shift[ch0 + cl]);
                    let range = cl * s..(cl + 1) * s;
                    let (mut da, mut db) = (0f64, 0f64);
                    let outs = dst[range.clone()]
                        .iter_mut()
                        .zip(dgi[range.clone()].iter_mut());
                    let ins = xs[range.clone()]
                        .iter()
                        .zip(&gs[range.clone()])
                        .zip(&hv[range]);
                    for ((dv, dgv), ((&v, &g), &h)) in outs.zip(ins) {
                        let xh = (v - mean) * r;
                        let (d1, d2) = derivs(xh * a + bb);
                        let xdot = r * (h - mh0f - xh * mhf);
                        *dgv = d1 * a * xdot;
                        let e = a * g * d2 * xdot;
                        da += f64::from(g * d1 * xdot + e * xh);
                        db += f64::from(e);
                        let p = a * g * d1;
                        let w = a * e - p * k_p - k_h * h;
                        *dv = w;
                        sv += f64::from(w);
                        svx += f64::from(w * xh);
                    }
                    d_scale[cl] = da as f32;
                    d_shift[cl] = db as f32;
                }
                let (mv, mvx) = ((sv / nf) as f32, (svx / nf) as f32);
                let k_r = (dl_dr * rf * rf / nf) as f32;
                for (dv, &v) in dst.iter_mut().zip(xs) {
                    let xh = (v - mean) * r;
                    *dv = r * (*dv - mv - xh * mvx) - k_r * xh;
                }
            },
        );
        drop((dg, stats));
        Ok((CpuStorage::F32(out), Shape::from(2 * total + 2 * b * c)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    fn random(rng: &mut rand_chacha::ChaCha8Rng, dims: &[usize], scale: f32) -> Var {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| scale * Distribution::<f32>::sample(&StandardNormal, &mut *rng))
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, dims, &Device::Cpu).expect("tensor")).expect("var")
    }

    /// `Jᵀ g` of the group norm written with tensor ops (differentiable by candle's autograd).
    fn reference_vjp(
        norm: &GroupNorm,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let groups = norm.groups;
        let xg = x.reshape((b, groups, (c / groups) * h * w))?;
        let centered = xg.broadcast_sub(&xg.mean_keepdim(2)?)?;
        let var = centered.sqr()?.mean_keepdim(2)?;
        let inv = (var + norm.eps)?.sqrt()?.recip()?;
        let xhat = centered.broadcast_mul(&inv)?;
        let sc = scale.reshape((b, c, 1, 1))?;
        let y = xhat
            .reshape((b, c, h, w))?
            .broadcast_mul(&sc)?
            .broadcast_add(&shift.reshape((b, c, 1, 1))?)?;
        let g_y = if norm.silu {
            let sig = (y.neg()?.exp()? + 1.0)?.recip()?;
            let d = ((&y * (sig.affine(-1.0, 1.0))?)? + 1.0)?.mul(&sig)?;
            (g * d)?
        } else {
            g.clone()
        };
        let g_xhat = g_y.broadcast_mul(&sc)?.reshape(xhat.dims())?;
        let m1 = g_xhat.mean_keepdim(2)?;
        let m2 = (&g_xhat * &xhat)?.mean_keepdim(2)?;
        g_xhat
            .broadcast_sub(&m1)?
            .sub(&xhat.broadcast_mul(&m2)?)?
            .broadcast_mul(&inv)?
            .reshape((b, c, h, w))
    }

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .and_then(|d| d.sqr()?.sum_all()?.to_scalar::<f32>())
            .expect("diff");
        let n = b
            .sqr()
            .and_then(|t| t.sum_all()?.to_scalar::<f32>())
            .expect("norm");
        (d / n.max(1e-30)).sqrt()
    }

    /// The tracked input gradient equals the tensor-op one, and so do the gradients of
    /// ⟨h, Jᵀ g⟩ in x, g, scale and shift (the second-order kernel against candle's autograd of
    /// the tensor-op form), with and without SiLU, with per-sample scales and shifts.
    #[test]
    fn tracked_input_grad_differentiates_like_tensor_ops() -> candle_core::Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (b, c, hh, ww) = (2, 8, 5, 3);
        for silu in [false, true] {
            let norm = GroupNorm {
                groups: 4,
                eps: 1e-5,
                silu,
            };
            let x = random(&mut rng, &[b, c, hh, ww], 1.5);
            // An offset so that the statistics matter.
            let x = Var::from_tensor(&(x.as_tensor() + 0.7)?)?;
            let g = random(&mut rng, &[b, c, hh, ww], 1.0);
            let scale = Var::from_tensor(&(random(&mut rng, &[b, c], 0.5).as_tensor() + 1.0)?)?;
            let shift = random(&mut rng, &[b, c], 0.5);
            let h = random(&mut rng, &[b, c, hh, ww], 1.0);
            let fast = norm.input_grad_tracked(&x, &scale, &shift, &g)?;
            let slow = reference_vjp(&norm, &x, &scale, &shift, &g)?;
            assert!(
                rel(&fast, &slow) < 1e-5,
                "silu {silu}: forward {}",
                rel(&fast, &slow)
            );
            let gf = (&fast * h.as_tensor())?.sum_all()?.backward()?;
            let gs = (&slow * h.as_tensor())?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("g", &g), ("scale", &scale), ("shift", &shift)] {
                let a = gf.get(v).expect("fast gradient");
                let Some(want) = gs.get(v) else {
                    // Without SiLU the input gradient does not depend on the shift.
                    assert!(!silu && name == "shift", "no reference gradient for {name}");
                    assert_eq!(a.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
                    continue;
                };
                let e = rel(a, want);
                assert!(e < 1e-4, "silu {silu}: d/d{name} differs by {e}");
            }
        }
        let _ = DType::F32;
        Ok(())
    }
}
