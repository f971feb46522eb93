//! Training-mode batch normalization of `[B, C, …]` tensors with batch statistics, as one CPU
//! kernel per pass (`f32`, contiguous): candle composes it from a transpose, two reductions
//! and four broadcasts, and the backward pass of those broadcasts reduces over strided
//! dimensions on one thread.
//!
//! [`Moments`] computes the per-channel mean and biased variance; [`Normalize`] applies
//! `(x − μ_c)/√(σ²_c + eps) · γ_c + β_c` with the statistics of the batch and has an exact
//! backward pass through them (Ioffe & Szegedy 2015).
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, bail};

use crate::host::{SendPtr, f32_data};

/// `(B, C, spatial)` of a `[B, C, …]` layout.
fn sizes(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    match l.dims() {
        [b, c, rest @ ..] => Ok((*b, *c, rest.iter().product())),
        d => bail!("batch norm kernel: expected [B, C, …], got {d:?}"),
    }
}

/// Runs `f(c)` for every channel on candle's CPU worker threads.
fn per_channel(c: usize, f: impl Fn(usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(c, |range| {
        for ch in range {
            f(ch);
        }
    });
}

/// The values of channel `ch`: `B` runs of `s`.
fn channel(x: &[f32], (b, c, s): (usize, usize, usize), ch: usize) -> impl Iterator<Item = &[f32]> {
    (0..b).map(move |bi| &x[(bi * c + ch) * s..][..s])
}

/// Runs `f(offset, run)` for the `B` output runs of channel `ch` behind `dst`.
///
/// # Safety
///
/// Only the calling task writes channel `ch` of the `[B, C, spatial]` buffer behind `dst`,
/// which outlives the call.
unsafe fn write_channel(
    dst: SendPtr,
    (b, c, s): (usize, usize, usize),
    ch: usize,
    mut f: impl FnMut(usize, &mut [f32]),
) {
    for bi in 0..b {
        let off = (bi * c + ch) * s;
        // SAFETY: the caller's contract: this run belongs to the calling task alone.
        f(off, unsafe {
            std::slice::from_raw_parts_mut(dst.ptr().add(off), s)
        });
    }
}

/// Mean and biased variance of channel `ch`, accumulated in f64.
fn moments(x: &[f32], dims: (usize, usize, usize), ch: usize) -> (f32, f64) {
    let n = (dims.0 * dims.2) as f64;
    let sum: f64 = channel(x, dims, ch)
        .map(|r| r.iter().map(|&v| f64::from(v)).sum::<f64>())
        .sum();
    let mean = sum / n;
    let ss: f64 = channel(x, dims, ch)
        .map(|r| {
            r.iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
        })
        .sum();
    (mean as f32, ss / n)
}

/// Mean and 1/√(biased variance + eps) of channel `ch`.
fn normalizer(x: &[f32], dims: (usize, usize, usize), ch: usize, eps: f64) -> (f32, f32) {
    let (mean, var) = moments(x, dims, ch);
    (mean, (1.0 / (var + eps).sqrt()) as f32)
}

/// The batch statistics `[2, C]`: per-channel mean and biased variance.
#[derive(Clone, Copy, Debug)]
pub struct Moments;

impl CustomOp1 for Moments {
    fn name(&self) -> &'static str {
        "decomp-batch-norm-moments"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = sizes(l)?;
        let x = f32_data(s, l)?;
        let c = dims.1;
        let mut out = vec![0f32; 2 * c];
        let dst = SendPtr(out.as_mut_ptr());
        per_channel(c, |ch| {
            let (mean, var) = moments(x, dims, ch);
            // SAFETY: entries ch and c + ch belong to this task; `out` outlives the call.
            unsafe {
                *dst.ptr().add(ch) = mean;
                *dst.ptr().add(c + ch) = var as f32;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `(x − μ_c)/√(σ²_c + eps) · γ_c + β_c` with the batch's per-channel statistics; inputs
/// `x`, `γ` `[C]`, `β` `[C]`.
#[derive(Clone, Copy, Debug)]
pub struct Normalize {
    /// The ε added to the variance.
    pub eps: f64,
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "decomp-batch-norm"
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
        let dims = sizes(l1)?;
        let (_, c, s) = dims;
        let (x, gamma, beta) = (f32_data(s1, l1)?, f32_data(s2, l2)?, f32_data(s3, l3)?);
        if gamma.len() != c || beta.len() != c {
            bail!(
                "batch norm kernel: {c} channels, weight {:?}, bias {:?}",
                l2.dims(),
                l3.dims()
            )
        }
        let mut out = vec![0f32; x.len()];
        let dst = SendPtr(out.as_mut_ptr());
        per_channel(c, |ch| {
            let (mean, r) = normalizer(x, dims, ch, self.eps);
            let (a, sh) = (gamma[ch] * r, beta[ch]);
            // SAFETY: channel ch of every image belongs to this task.
            unsafe {
                write_channel(dst, dims, ch, |off, d| {
                    for (o, &v) in d.iter_mut().zip(&x[off..off + s]) {
                        *o = (v - mean) * a + sh;
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.elem_count();
        let n = x.elem_count();
        let flat = x.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &gamma.contiguous()?,
            &NormalizeGrad { eps: self.eps },
        )?;
        let dx = flat.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = flat.narrow(0, n, c)?.reshape(gamma.shape())?;
        let dbeta = flat.narrow(0, n + c, c)?.reshape(gamma.shape())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The backward pass of [`Normalize`]: inputs `x`, the output gradient and `γ`; output,
/// flat, the input gradient then the gradients of `γ` and `β`.
/// With x̂ the normalized input and N = B·spatial:
/// `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = γ/√(σ² + eps) · (dy − dβ/N − x̂·dγ/N)`.
#[derive(Clone, Copy, Debug)]
struct NormalizeGrad {
    eps: f64,
}

impl CustomOp3 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "decomp-batch-norm-grad"
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
        let dims = sizes(l1)?;
        let (b, c, s) = dims;
        let (x, dy, gamma) = (f32_data(s1, l1)?, f32_data(s2, l2)?, f32_data(s3, l3)?);
        if dy.len() != x.len() || gamma.len() != c {
            bail!(
                "batch norm kernel: gradient {:?} / weight {:?} do not fit {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            )
        }
        let total = x.len();
        let mut out = vec![0f32; total + 2 * c];
        let dst = SendPtr(out.as_mut_ptr());
        let nf = (b * s) as f64;
        per_channel(c, |ch| {
            let (mean, r) = normalizer(x, dims, ch, self.eps);
            let (mut sdy, mut sdyx) = (0f64, 0f64);
            for (xr, gr) in channel(x, dims, ch).zip(channel(dy, dims, ch)) {
                for (&v, &g) in xr.iter().zip(gr) {
                    sdy += f64::from(g);
                    sdyx += f64::from(g) * f64::from((v - mean) * r);
                }
            }
            let (mdy, mdyx) = ((sdy / nf) as f32, (sdyx / nf) as f32);
            let a = gamma[ch] * r;
            // SAFETY: channel ch of every image and entries total + ch, total + c + ch
            // belong to this task.
            unsafe {
                write_channel(dst, dims, ch, |off, d| {
                    let (xs, gs) = (&x[off..off + s], &dy[off..off + s]);
                    for ((o, &v), &g) in d.iter_mut().zip(xs).zip(gs) {
                        *o = a * (g - mdy - (v - mean) * r * mdyx);
                    }
                });
            }
            // SAFETY: as above.
            unsafe {
                *dst.ptr().add(total + ch) = sdyx as f32;
                *dst.ptr().add(total + c + ch) = sdy as f32;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(total + 2 * c)))
    }
}
