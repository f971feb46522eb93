//! Nearest-neighbour ×2 upsampling and 2×2 average pooling in one pass each way.
//!
//! The two resamplings of the U-Net are adjoint to each other, so one kernel serves both
//! directions of both. candle's backward pass of `upsample_nearest2d` fails for some sizes, and
//! its pooling is a single-threaded loop.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::host::{f32_data, output_buffer, par_parts};

/// Nearest ×2 upsampling (`up`: every pixel copied to a 2×2 block) or 2×2 block sums (each
/// block to one pixel) of contiguous `f32` `[B, C, H, W]` planes, times `scale`. The two are
/// adjoint, so each one's gradient is the other with the same scale: upsampling is
/// `{up, 1}` with gradient `{down, 1}`, average pooling `{down, ¼}` with gradient `{up, ¼}`.
#[derive(Clone, Copy, Debug)]
pub struct Resample2x {
    /// Upsampling (each pixel to a 2×2 block) rather than block sums.
    pub up: bool,
    /// The factor applied to every output value.
    pub scale: f32,
}

impl Resample2x {
    /// Nearest-neighbour ×2 upsampling.
    pub const UP: Self = Self {
        up: true,
        scale: 1.0,
    };
    /// 2×2 average pooling with stride 2.
    pub const DOWN: Self = Self {
        up: false,
        scale: 0.25,
    };
}

impl CustomOp1 for Resample2x {
    fn name(&self) -> &'static str {
        "resample-2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let [b, c, h, w] = *l.dims() else {
            candle_core::bail!("resample: expected [B, C, H, W], got {:?}", l.dims())
        };
        if !self.up && (h % 2 != 0 || w % 2 != 0) {
            candle_core::bail!("resample: 2×2 blocks need even sizes, got {h}×{w}")
        }
        let x = f32_data(s, l)?;
        let (ho, wo) = if self.up {
            (2 * h, 2 * w)
        } else {
            (h / 2, w / 2)
        };
        // SAFETY: the planes below cover every output element.
        let mut out = unsafe { output_buffer(b * c * ho * wo) };
        let (up, scale) = (self.up, self.scale);
        par_parts(
            &mut out,
            (ho * wo).max(1),
            #[inline(always)]
            |plane, dst| {
                let src = &x[plane * h * w..][..h * w];
                if up {
                    for (y, row) in dst.chunks_exact_mut(wo).enumerate() {
                        for (d, v) in row.chunks_exact_mut(2).zip(&src[(y / 2) * w..][..w]) {
                            d[0] = v * scale;
                            d[1] = v * scale;
                        }
                    }
                } else {
                    for (y, row) in dst.chunks_exact_mut(wo).enumerate() {
                        let (r0, r1) = (&src[2 * y * w..][..w], &src[(2 * y + 1) * w..][..w]);
                        for ((d, a), bb) in row
                            .iter_mut()
                            .zip(r0.chunks_exact(2))
                            .zip(r1.chunks_exact(2))
                        {
                            *d = (a[0] + a[1] + bb[0] + bb[1]) * scale;
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((b, c, ho, wo))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let adjoint = Self {
            up: !self.up,
            scale: self.scale,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&adjoint)?))
    }
}
