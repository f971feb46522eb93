//! ReLU in one pass each way.
//!
//! candle's `relu` is one pass forward, but its backward pass is four, three of them
//! single-threaded; [`Relu`] computes the gradient in one parallel pass from the output.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use crate::host::{elementwise, f32_data};

/// ReLU `max(x, 0)` of a contiguous `f32` tensor in one pass; its gradient is [`ReluGrad`]
/// (the gradient passes where the output is positive, as PyTorch's).
#[derive(Clone, Copy, Debug)]
pub struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l)?;
        let out = elementwise(
            x.len(),
            #[inline(always)]
            |at, dst| {
                for (d, &v) in dst.iter_mut().zip(&x[at..]) {
                    *d = v.max(0.0);
                }
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(res, &ReluGrad)?))
    }
}

/// `grad · 1[y > 0]` for the output gradient `grad` and ReLU output `y`.
#[derive(Clone, Copy, Debug)]
pub struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, y) = (f32_data(s1, l1)?, f32_data(s2, l2)?);
        if g.len() != y.len() {
            candle_core::bail!("relu grad: {:?} does not fit {:?}", l1.dims(), l2.dims())
        }
        let out = elementwise(
            g.len(),
            #[inline(always)]
            |at, dst| {
                for ((d, &gv), &yv) in dst.iter_mut().zip(&g[at..]).zip(&y[at..]) {
                    *d = if yv > 0.0 { gv } else { 0.0 };
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
