//! Repeating the rows of a batch, as the composed prediction of several conditions needs.
//!
//! Evaluating one denoiser under n conditions repeats every image n times; [`Repeat`] writes the
//! repeated batch (optionally plus a per-channel bias) in one pass, and its backward pass sums
//! the repeats back.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, bail};

use super::group_norm::channel_bias_grad;
use crate::host::{f32_data, output_buffer, par_parts};

/// The rows of a contiguous `x` `[B, C, …]` repeated `n` times, image-major, to
/// `[B·n, C, …]`: alone (as a [`CustomOp1`]) or plus a per-channel `bias` `[1 or B·n, C]`
/// (as a [`CustomOp2`]).
#[derive(Clone, Copy, Debug)]
pub struct Repeat {
    /// The number of repeats (at least 1).
    pub n: usize,
}

impl Repeat {
    fn run(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        bias: Option<(&[f32], usize)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        if dims.len() < 2 || self.n == 0 {
            bail!(
                "repeat: expected [B, C, …] and n ≥ 1, got {dims:?}, n = {}",
                self.n
            )
        }
        let (b, c, n) = (dims[0], dims[1], self.n);
        if let Some((bias, bb)) = bias
            && (bias.len() != bb * c || (bb != 1 && bb != b * n))
        {
            bail!(
                "repeat: a bias of {} values does not fit {dims:?} × {n}",
                bias.len()
            )
        }
        let x = f32_data(s1, l1)?;
        let s: usize = dims[2..].iter().product::<usize>().max(1);
        // SAFETY: the parts below write every element.
        let mut out = unsafe { output_buffer(x.len() * n) };
        let planes = (4096 / s).max(1);
        par_parts(
            &mut out,
            planes * s,
            #[inline(always)]
            |i, part| {
                for (j, dst) in part.chunks_mut(s).enumerate() {
                    // Output plane (row, ch); row = bi·n + r reads image bi.
                    let plane = i * planes + j;
                    let (row, ch) = (plane / c, plane % c);
                    let src = &x[((row / n) * c + ch) * s..][..s];
                    match bias {
                        Some((bias, bb)) => {
                            let v = bias[if bb == 1 { ch } else { row * c + ch }];
                            for (d, &xv) in dst.iter_mut().zip(src) {
                                *d = xv + v;
                            }
                        }
                        None => dst.copy_from_slice(src),
                    }
                }
            },
        );
        let mut shape = dims.to_vec();
        shape[0] = b * n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    /// The gradient of `x` from the output gradient: the sum of each row's repeats.
    fn input_grad(&self, grad: &Tensor) -> candle_core::Result<Tensor> {
        if self.n == 1 {
            return Ok(grad.clone());
        }
        grad.contiguous()?
            .apply_op1_no_bwd(&SumRepeats { n: self.n })
    }
}

/// The sum of every `n` consecutive rows of a contiguous `[B·n, C, …]` tensor: `[B, C, …]`
/// (the adjoint of [`Repeat`]), in one parallel pass.
#[derive(Clone, Copy, Debug)]
struct SumRepeats {
    n: usize,
}

impl CustomOp1 for SumRepeats {
    fn name(&self) -> &'static str {
        "unet-sum-repeats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let n = self.n;
        if dims.is_empty() || n == 0 || !dims[0].is_multiple_of(n) {
            bail!("sum of repeats: {dims:?} is not a whole number of {n} repeats")
        }
        let g = f32_data(s, l)?;
        let row: usize = dims[1..].iter().product();
        let b = dims[0] / n;
        // SAFETY: the parts below write every element.
        let mut out = unsafe { output_buffer(b * row) };
        const PART: usize = 4096;
        par_parts(
            &mut out,
            PART,
            #[inline(always)]
            |i, part| {
                // The part covers output elements i·PART…, possibly across rows.
                let mut done = 0;
                while done < part.len() {
                    let pos = i * PART + done;
                    let (bi, off) = (pos / row, pos % row);
                    let len = (row - off).min(part.len() - done);
                    let dst = &mut part[done..done + len];
                    let src = &g[bi * n * row + off..];
                    dst.copy_from_slice(&src[..len]);
                    for r in 1..n {
                        for (d, &v) in dst.iter_mut().zip(&src[r * row..r * row + len]) {
                            *d += v;
                        }
                    }
                    done += len;
                }
            },
        );
        let mut shape = dims.to_vec();
        shape[0] = b;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

impl CustomOp1 for Repeat {
    fn name(&self) -> &'static str {
        "unet-repeat-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s, l), None)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.input_grad(grad)?))
    }
}

impl CustomOp2 for Repeat {
    fn name(&self) -> &'static str {
        "unet-repeat-rows-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [bb, _] = *l2.dims() else {
            bail!("repeat: expected a [1 or B·n, C] bias, got {:?}", l2.dims())
        };
        self.run((s1, l1), Some((f32_data(s2, l2)?, bb)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            Some(self.input_grad(grad)?),
            Some(channel_bias_grad(grad, bias)?),
        ))
    }
}
