//! One-pass CPU kernels of optimization: the AdamW update of one parameter tensor, the
//! squared norm of a gradient (for clipping) and the blend of an exponential moving average.
//!
//! The tensor-op form of an AdamW step makes about twelve passes over four tensors, most of
//! them single-threaded; [`adamw_update`] makes one, in parallel, with the same arithmetic in
//! `f32`. Each function returns `None` for tensors that are not contiguous `f32` on the CPU,
//! and the caller then takes its tensor-op form.

use candle_core::Tensor;

use crate::host::{SendPtr, output_buffer, vectorized, with_host_slices};

/// Elements per task of the one-pass CPU updates (those of the elementwise kernels).
const CHUNK: usize = crate::host::ELEMENTWISE_PART;

/// `Σ x²` in `f64` of a contiguous CPU `f32` tensor (`None` for any other): per chunk on
/// candle's worker threads, the chunks' sums added in order (the same result for any thread
/// count). The squared gradient norm of gradient clipping.
pub fn sum_of_squares(x: &Tensor) -> Option<f64> {
    with_host_slices(&[x], |h| sum_of_squares_host(h[0]))
}

/// [`sum_of_squares`] of host data.
fn sum_of_squares_host(x: &[f32]) -> f64 {
    let sums: Vec<std::sync::Mutex<f64>> = (0..x.len().div_ceil(CHUNK))
        .map(|_| std::sync::Mutex::new(0.0))
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(sums.len(), |range| {
        for c in range {
            let part = &x[c * CHUNK..((c + 1) * CHUNK).min(x.len())];
            let s: f64 = part.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            *sums[c].lock().unwrap_or_else(|e| e.into_inner()) = s;
        }
    });
    sums.into_iter()
        .map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()))
        .sum()
}

/// `d·s + (1 − d)·x` in one pass over contiguous CPU `f32` tensors of the same size (`None`
/// for any others): the update of an exponential moving average.
pub fn blend(s: &Tensor, x: &Tensor, d: f32) -> Option<Vec<f32>> {
    with_host_slices(&[s, x], |h| {
        let (a, b) = (h[0], h[1]);
        (a.len() == b.len()).then(|| {
            crate::host::elementwise(
                a.len(),
                #[inline(always)]
                |at, dst| {
                    for ((o, &sv), &xv) in dst.iter_mut().zip(&a[at..]).zip(&b[at..]) {
                        *o = d * sv + (1.0 - d) * xv;
                    }
                },
            )
        })
    })
    .flatten()
}

/// The per-step constants of one AdamW update, in `f32`.
#[derive(Clone, Copy, Debug)]
pub struct AdamWCoefficients {
    /// The factor every gradient is multiplied by (gradient clipping; 1 for none).
    pub scale: f32,
    /// The decay rate β₁ of the first moment.
    pub beta1: f32,
    /// The decay rate β₂ of the second moment.
    pub beta2: f32,
    /// `1 / (1 − β₁ᵗ)`, the bias correction of the first moment at step t.
    pub inv_bc1: f32,
    /// `1 / (1 − β₂ᵗ)`, the bias correction of the second moment at step t.
    pub inv_bc2: f32,
    /// The ε added to the root of the second moment.
    pub eps: f32,
    /// The learning rate η.
    pub lr: f32,
    /// `1 − ηλ` (decoupled weight decay λ).
    pub decay: f32,
}

/// The AdamW update of one CPU `f32` variable in a single pass over its four tensors (the
/// tensor-op form makes about twelve, most of them single-threaded): the new values, first and
/// second moments. `None` when any of the tensors is not contiguous `f32` on the CPU or their
/// sizes differ.
///
/// With `g ← scale·g`: `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`,
/// `θ ← (1 − ηλ)θ − η·(m/(1 − β₁ᵗ)) / (√(v/(1 − β₂ᵗ)) + ε)` (Loshchilov & Hutter 2019).
pub fn adamw_update(
    theta: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: AdamWCoefficients,
) -> Option<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    with_host_slices(&[theta, g, m, v], |h| adamw_host(h[0], h[1], h[2], h[3], k)).flatten()
}

/// [`adamw_update`] on host slices (`None` when their lengths differ).
fn adamw_host(
    th: &[f32],
    gr: &[f32],
    m0: &[f32],
    v0: &[f32],
    k: AdamWCoefficients,
) -> Option<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let n = th.len();
    if gr.len() != n || m0.len() != n || v0.len() != n {
        return None;
    }
    // SAFETY: the chunks below cover every element of the three buffers.
    let (mut t1, mut m1, mut v1) =
        unsafe { (output_buffer(n), output_buffer(n), output_buffer(n)) };
    let (tp, mp, vp) = (
        SendPtr(t1.as_mut_ptr()),
        SendPtr(m1.as_mut_ptr()),
        SendPtr(v1.as_mut_ptr()),
    );
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(CHUNK), |range| {
        vectorized(
            #[inline(always)]
            || {
                for c in range {
                    let (lo, hi) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
                    // SAFETY: chunk c of each output belongs to this task only; the buffers
                    // outlive the pool call.
                    let (t_out, m_out, v_out) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(tp.ptr().add(lo), hi - lo),
                            std::slice::from_raw_parts_mut(mp.ptr().add(lo), hi - lo),
                            std::slice::from_raw_parts_mut(vp.ptr().add(lo), hi - lo),
                        )
                    };
                    let src = th[lo..hi]
                        .iter()
                        .zip(&gr[lo..hi])
                        .zip(&m0[lo..hi])
                        .zip(&v0[lo..hi]);
                    for ((((&t, &g), &m), &v), ((to, mo), vo)) in
                        src.zip(t_out.iter_mut().zip(m_out.iter_mut()).zip(v_out.iter_mut()))
                    {
                        let g = g * k.scale;
                        let m = k.beta1 * m + (1.0 - k.beta1) * g;
                        let v = k.beta2 * v + (1.0 - k.beta2) * (g * g);
                        let update = (m * k.inv_bc1) / ((v * k.inv_bc2).sqrt() + k.eps);
                        *to = t * k.decay - k.lr * update;
                        *mo = m;
                        *vo = v;
                    }
                }
            },
        )
    });
    Some((t1, m1, v1))
}
