//! Self-attention of the improved-diffusion U-Net in one CPU kernel.
//!
//! Softmax attention over the positions of an image, in the legacy head layout of the released
//! code (q, k, v of each head stacked along the channels). candle composes it from several full
//! passes and materializes every weight matrix; [`Attention`] computes each head's `L × L`
//! weights in a per-thread buffer with one `gemm` product, then the output with another; its
//! backward pass recomputes the weights. Tested against tensor ops, forward and backward.

use std::cell::RefCell;
use std::thread::LocalKey;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, bail};

use crate::gemm::strided;
use crate::host::{f32_data, fast_exp, output_buffer, par_parts, sum_f64};

thread_local! {
    /// The attention weights of the current task, reused across calls.
    static WEIGHTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Softmax in place over rows of `len` of `x · scale`.
#[inline(always)]
fn softmax_rows(data: &mut [f32], len: usize, scale: f32) {
    for row in data.chunks_exact_mut(len) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for d in row.iter_mut() {
            *d = fast_exp((*d - max) * scale);
        }
        let inv = (1.0 / sum_f64(row)) as f32;
        for d in row.iter_mut() {
            *d *= inv;
        }
    }
}

/// This thread's buffer `key` taken out, resized to `len` elements; hand it back with
/// [`restore_scratch`] so that the next task reuses its memory.
fn take_scratch(key: &'static LocalKey<RefCell<Vec<f32>>>, len: usize) -> Vec<f32> {
    let mut buf = key.with(|b| std::mem::take(&mut *b.borrow_mut()));
    buf.resize(len, 0.0);
    buf
}

/// Puts a buffer taken by [`take_scratch`] back.
fn restore_scratch(key: &'static LocalKey<RefCell<Vec<f32>>>, buf: Vec<f32>) {
    key.with(|b| *b.borrow_mut() = buf);
}

/// One head's attention weights P = softmax(s·qᵀk) into `w` (`[L × L]`), from `q` and `k`
/// (`[d × L]` each).
#[inline(always)]
fn attention_weights(q: &[f32], k: &[f32], (d, len): (usize, usize), scale: f32, w: &mut [f32]) {
    assert!(q.len() >= d * len && k.len() >= d * len && w.len() >= len * len);
    // SAFETY: w [L × L] = qᵀ [L × d] · k [d × L], in bounds by the assertion, w distinct
    // from q and k.
    unsafe {
        strided(
            (len, len, d),
            w.as_mut_ptr(),
            (len, 1),
            false,
            q.as_ptr(),
            (1, len),
            k.as_ptr(),
            (len, 1),
        );
    }
    softmax_rows(&mut w[..len * len], len, scale);
}

/// The heads of an attention input of `dims`: `[BH, 3d, L]`, or `[B, 3C, H, W]` read as
/// `[B·3C/3d, 3d, H·W]` (the same memory). The number of heads, the length and the output
/// shape (`[BH, d, L]` or `[B, C, H, W]`).
fn heads(dims: &[usize], d: usize) -> candle_core::Result<(usize, usize, Shape)> {
    match *dims {
        [bh, c3, len] if d > 0 && c3 == 3 * d => Ok((bh, len, Shape::from((bh, d, len)))),
        [b, c3, h, w] if d > 0 && c3 % (3 * d) == 0 => {
            Ok((b * c3 / (3 * d), h * w, Shape::from((b, c3 / 3, h, w))))
        }
        _ => bail!(
            "attention: expected [BH, 3d, L] or [B, 3C, H, W] with heads of d = {d}, got {dims:?}"
        ),
    }
}

/// Self-attention of the legacy head layout: `qkv` `[BH, 3d, L]` (q, k, v of `d` channels
/// each; or `[B, 3C, H, W]`, read as `[B·3C/3d, 3d, H·W]` in the same memory) to
/// `v · softmax(qᵀk / √d)ᵀ`, `[BH, d, L]` (or `[B, C, H, W]`). Each head's `L × L` weights
/// live in a per-thread buffer; the backward pass recomputes them with tensor ops.
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    /// The channels `d` of one head.
    pub head_ch: usize,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "unet-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.head_ch;
        let (bh, len, out_shape) = heads(l.dims(), d)?;
        let x = f32_data(s, l)?;
        // SAFETY: every head's product writes its whole part.
        let mut out = unsafe { output_buffer(bh * d * len) };
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        par_parts(
            &mut out,
            d * len,
            #[inline(always)]
            |i, dst| {
                let q = &x[i * 3 * d * len..][..d * len];
                let k = &x[(i * 3 + 1) * d * len..][..d * len];
                let v = &x[(i * 3 + 2) * d * len..][..d * len];
                let mut w = take_scratch(&WEIGHTS, len * len);
                attention_weights(q, k, (d, len), scale, &mut w);
                // SAFETY: dst [d × L] = v [d × L] · wᵀ, all in bounds, dst distinct from the
                // inputs.
                unsafe {
                    strided(
                        (d, len, len),
                        dst.as_mut_ptr(),
                        (len, 1),
                        false,
                        v.as_ptr(),
                        (len, 1),
                        w.as_ptr(),
                        (1, len),
                    );
                }
                restore_scratch(&WEIGHTS, w);
            },
        );
        Ok((CpuStorage::F32(out), out_shape))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = AttentionGrad {
            head_ch: self.head_ch,
        };
        Ok(Some(
            qkv.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &op)?,
        ))
    }
}

thread_local! {
    /// The gradient of the attention weights of the current task, reused across calls.
    static WEIGHT_GRADS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The backward pass of [`Attention`]: from `qkv` `[BH, 3d, L]` and the output gradient
/// `g` `[BH, d, L]`, the gradient `[BH, 3d, L]` (dq, dk, dv of each head). Each head's
/// weights P = softmax(s·qᵀk), s = 1/√d, are recomputed; then dv = g·P, dP = gᵀ·v,
/// dS = s·P ⊙ (dP − rowsum(dP ⊙ P)), dq = k·dSᵀ and dk = q·dS.
#[derive(Clone, Copy, Debug)]
struct AttentionGrad {
    head_ch: usize,
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "unet-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.head_ch;
        let (bh, len, out_shape) = heads(l1.dims(), d)?;
        if l2.shape() != &out_shape {
            bail!(
                "attention grad: qkv {:?} and gradient {:?} do not fit heads of {d}",
                l1.dims(),
                l2.dims()
            )
        }
        let (x, g) = (f32_data(s1, l1)?, f32_data(s2, l2)?);
        // SAFETY: every head's three products write its whole part.
        let mut out = unsafe { output_buffer(bh * 3 * d * len) };
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        let dl = d * len;
        par_parts(
            &mut out,
            3 * dl,
            #[inline(always)]
            |i, dst| {
                let (q, k, v) = (
                    &x[i * 3 * dl..][..dl],
                    &x[(i * 3 + 1) * dl..][..dl],
                    &x[(i * 3 + 2) * dl..][..dl],
                );
                let g = &g[i * dl..][..dl];
                let (dq, rest) = dst.split_at_mut(dl);
                let (dk, dv) = rest.split_at_mut(dl);
                let mut p = take_scratch(&WEIGHTS, len * len);
                let mut ds = take_scratch(&WEIGHT_GRADS, len * len);
                attention_weights(q, k, (d, len), scale, &mut p);
                // SAFETY (every product): the operands are the head's [d × L] slices and the two
                // [L × L] buffers, all in bounds for the sizes and strides given; each
                // destination is distinct from its operands.
                unsafe {
                    // dv = g·P
                    strided(
                        (d, len, len),
                        dv.as_mut_ptr(),
                        (len, 1),
                        false,
                        g.as_ptr(),
                        (len, 1),
                        p.as_ptr(),
                        (len, 1),
                    );
                    // dP = gᵀ·v
                    strided(
                        (len, len, d),
                        ds.as_mut_ptr(),
                        (len, 1),
                        false,
                        g.as_ptr(),
                        (1, len),
                        v.as_ptr(),
                        (len, 1),
                    );
                }
                for (dsr, pr) in ds.chunks_exact_mut(len).zip(p.chunks_exact(len)) {
                    let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                    for (a, &b) in dsr.iter_mut().zip(pr) {
                        *a = scale * b * (*a - dot);
                    }
                }
                unsafe {
                    // dq = k·dSᵀ
                    strided(
                        (d, len, len),
                        dq.as_mut_ptr(),
                        (len, 1),
                        false,
                        k.as_ptr(),
                        (len, 1),
                        ds.as_ptr(),
                        (1, len),
                    );
                    // dk = q·dS
                    strided(
                        (d, len, len),
                        dk.as_mut_ptr(),
                        (len, 1),
                        false,
                        q.as_ptr(),
                        (len, 1),
                        ds.as_ptr(),
                        (len, 1),
                    );
                }
                restore_scratch(&WEIGHTS, p);
                restore_scratch(&WEIGHT_GRADS, ds);
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
