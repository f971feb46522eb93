//! The training gradient of the residual MLP, computed on the host by hand.
//!
//! One step of denoising training (Ho et al. 2020, eq. 14; the network of Du et al. 2023,
//! [`crate::nn::mlp`]) minimizes the mean squared error `L = (1/(B d)) Σ (f(x_t, t) − y)²` of a
//! [`ResidualMlp`] `f` against a target `y`. candle's autograd computes ∂L/∂θ with some forty
//! tensor operations per block, each allocating a buffer and most running on one thread; at the
//! paper's batch of 1000 points that bookkeeping costs more than the matrix products. Here the
//! forward pass keeps its activations and the backward pass is written out by hand, layer by
//! layer, in the notation of the module documentation of [`crate::nn::mlp`]:
//!
//! ```text
//! out = h_L W_outᵀ + b_out        ∂W_out = ĝᵀ h_L, ∂b_out = Σ ĝ, g_h = ĝ W_out   (ĝ = 2(out − y)/(B d))
//! h ← h + a₂ W₃ᵀ + b₃             ∂W₃ = g_hᵀ a₂,  ∂b₃ = Σ g_h,  g_a₂ = g_h W₃
//! a₂ = swish(p₂)                  g_p₂ = g_a₂ ⊙ swish′(p₂)
//! p₂ = a₁ W₂ᵀ + b₂                ∂W₂ = g_p₂ᵀ a₁, ∂b₂ = Σ g_p₂, g_a₁ = g_p₂ W₂
//! a₁ = swish(p₁)                  g_p₁ = g_a₁ ⊙ swish′(p₁)
//! p₁ = n W₁ᵀ + b₁ + P[t]          ∂W₁ = g_p₁ᵀ n,  ∂b₁ = Σ g_p₁, g_P[t] += g_p₁, g_n = g_p₁ W₁
//! n = swish(x̂ γ + β)              g_l = g_n ⊙ swish′(·), ∂γ = Σ g_l ⊙ x̂, ∂β = Σ g_l
//! x̂ = layer norm of h             g_h += r (g − mean g − x̂ mean(g x̂)),  g = g_l ⊙ γ
//! h₀ = x W_inᵀ + b_in             ∂W_in = g_hᵀ x, ∂b_in = Σ g_h
//! ```
//!
//! The time term of a block is a lookup in a projected table `P = E W_tpᵀ + b_tp` (`[T, 2H]`,
//! one row per training step), computed once per step instead of once per sample; its gradient
//! `g_P` (per-row sums of g_p₁ by timestep) gives `∂W_tp = g_Pᵀ E`, `∂b_tp = Σ g_P` and
//! `∂E = Σ_blocks g_P W_tp`. The rows of the batch are split into one shard per thread of
//! candle's worker pool, each walking its rows in chunks of [`CHUNK_ROWS`] with single-threaded products and its own
//! gradient buffers, summed at the end.
//!
//! The gradients equal candle's autograd of the same loss up to `f32` rounding (tested, with
//! finite differences as a third witness). Anything but contiguous `f32` tensors on the CPU
//! takes candle's autograd instead.

use candle_core::{Device, Tensor, backprop::GradStore};

use crate::nn::energy::{EnergyForm, EnergyMlp};
use crate::nn::frozen::{
    CHUNK_ROWS, add_bias, bias_swish, layer_norm_backward_row, layer_norm_rows,
};
use crate::nn::mlp::ResidualMlp;
use crate::{Error, Result};
use recompose_core::gemm::{dense_backward, dense_forward, dense_weight_grad};
use recompose_core::host::{fast_exp, vectorized, with_host_slices};

/// A dense layer's host data: weight `[out, in]` and bias `[out]`.
#[derive(Clone, Copy)]
struct Layer<'a> {
    w: &'a [f32],
    b: &'a [f32],
    inp: usize,
    out: usize,
}

/// One residual block's host data.
struct BlockData<'a> {
    ln_w: &'a [f32],
    ln_b: &'a [f32],
    fc1: Layer<'a>,
    fc2: Layer<'a>,
    fc3: Layer<'a>,
    /// `E W_tpᵀ + b_tp + b₁`, `[T, 2H]`: the pre-activation's time term and fc1's bias.
    table: Vec<f32>,
}

/// The network's host data for one step.
struct Net<'a> {
    input: Layer<'a>,
    blocks: Vec<BlockData<'a>>,
    output: Layer<'a>,
    eps: f32,
    hidden: usize,
}

/// Gradient buffers, one per parameter (time terms as `g_P` per block).
#[derive(Clone)]
struct Grads {
    input_w: Vec<f32>,
    input_b: Vec<f32>,
    blocks: Vec<BlockGrads>,
    output_w: Vec<f32>,
    output_b: Vec<f32>,
    /// Σ (f − y)² over the rows seen.
    sq_err: f64,
}

#[derive(Clone)]
struct BlockGrads {
    ln_w: Vec<f32>,
    ln_b: Vec<f32>,
    fc1_w: Vec<f32>,
    /// `g_P`, `[T, 2H]`: g_p₁ summed by timestep.
    table: Vec<f32>,
    fc2_w: Vec<f32>,
    fc2_b: Vec<f32>,
    fc3_w: Vec<f32>,
    fc3_b: Vec<f32>,
}

impl Grads {
    fn zeros(net: &Net, steps: usize) -> Self {
        let z = |n: usize| vec![0.0f32; n];
        let size = |l: &Layer| l.inp * l.out;
        Self {
            input_w: z(size(&net.input)),
            input_b: z(net.input.out),
            blocks: net
                .blocks
                .iter()
                .map(|b| BlockGrads {
                    ln_w: z(b.ln_w.len()),
                    ln_b: z(b.ln_b.len()),
                    fc1_w: z(size(&b.fc1)),
                    table: z(steps * b.fc1.out),
                    fc2_w: z(size(&b.fc2)),
                    fc2_b: z(b.fc2.out),
                    fc3_w: z(size(&b.fc3)),
                    fc3_b: z(b.fc3.out),
                })
                .collect(),
            output_w: z(size(&net.output)),
            output_b: z(net.output.out),
            sq_err: 0.0,
        }
    }

    fn buffers(&mut self) -> Vec<&mut Vec<f32>> {
        let mut v = vec![&mut self.input_w, &mut self.input_b];
        for b in &mut self.blocks {
            v.extend([
                &mut b.ln_w,
                &mut b.ln_b,
                &mut b.fc1_w,
                &mut b.table,
                &mut b.fc2_w,
                &mut b.fc2_b,
                &mut b.fc3_w,
                &mut b.fc3_b,
            ]);
        }
        v.extend([&mut self.output_w, &mut self.output_b]);
        v
    }

    /// Adds `other` into `self`.
    fn add(&mut self, mut other: Self) {
        self.sq_err += other.sq_err;
        for (a, b) in self.buffers().into_iter().zip(other.buffers()) {
            vectorized(|| a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y));
        }
    }
}

/// The activations of one block that the backward pass reads.
struct Tape {
    xhat: Vec<f32>,
    inv_std: Vec<f32>,
    /// n = swish(layer norm) and its derivative.
    n: Vec<f32>,
    d_n: Vec<f32>,
    a1: Vec<f32>,
    d_p1: Vec<f32>,
    a2: Vec<f32>,
    d_p2: Vec<f32>,
}

/// `acc[j] += Σ_rows g[row, j]` for rows of `acc.len()` values.
fn add_column_sums(acc: &mut [f32], g: &[f32]) {
    vectorized(
        #[inline(always)]
        || {
            for row in g.chunks(acc.len()) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
        },
    )
}

/// In place `g ← g ⊙ d`.
fn mul_in_place(g: &mut [f32], d: &[f32]) {
    vectorized(
        #[inline(always)]
        || g.iter_mut().zip(d).for_each(|(a, b)| *a *= b),
    )
}

impl Net<'_> {
    /// Forward and backward over `m` rows (`x` `[m, d]`, steps `ts`, target `y`), adding the
    /// gradients of `scale · Σ (f − y)²` into `grads`.
    fn chunk(&self, x: &[f32], ts: &[u32], y: &[f32], scale: f32, grads: &mut Grads) {
        let m = ts.len();
        let hd = self.hidden;
        let mut h = vec![0.0f32; m * hd];
        self.input.apply(x, &mut h, m);
        let mut tapes = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let mut xhat = Vec::with_capacity(m * hd);
            let mut inv_std = Vec::with_capacity(m);
            let mut n = vec![0.0f32; m * hd];
            layer_norm_rows(
                &h,
                &mut n,
                (b.ln_w, b.ln_b, self.eps),
                Some((&mut xhat, &mut inv_std)),
            );
            let mut d_n = Vec::new();
            bias_swish(&mut n, None, Some(&mut d_n));
            let k1 = b.fc1.out;
            let mut a1 = vec![0.0f32; m * k1];
            for (row, &t) in a1.chunks_mut(k1).zip(ts) {
                row.copy_from_slice(&b.table[t as usize * k1..(t as usize + 1) * k1]);
            }
            dense_forward(&n, b.fc1.w, &mut a1, (m, b.fc1.inp, k1), true);
            let mut d_p1 = Vec::new();
            bias_swish(&mut a1, None, Some(&mut d_p1));
            let mut a2 = vec![0.0f32; m * b.fc2.out];
            b.fc2.apply(&a1, &mut a2, m);
            let mut d_p2 = Vec::new();
            bias_swish(&mut a2, None, Some(&mut d_p2));
            dense_forward(&a2, b.fc3.w, &mut h, (m, b.fc3.inp, b.fc3.out), true);
            add_bias(&mut h, b.fc3.b);
            tapes.push(Tape {
                xhat,
                inv_std,
                n,
                d_n,
                a1,
                d_p1,
                a2,
                d_p2,
            });
        }
        let d = self.output.out;
        let mut g_out = vec![0.0f32; m * d];
        self.output.apply(&h, &mut g_out, m);
        let mut sq = 0.0f64;
        for (o, t) in g_out.iter_mut().zip(y) {
            let r = *o - t;
            sq += f64::from(r) * f64::from(r);
            *o = 2.0 * scale * r;
        }
        grads.sq_err += sq;

        // Backward.
        self.output
            .grads(&g_out, &h, (&mut grads.output_w, &mut grads.output_b), m);
        let mut g_h = vec![0.0f32; m * hd];
        dense_backward(&g_out, self.output.w, &mut g_h, (m, hd, d));
        for ((b, tape), bg) in self
            .blocks
            .iter()
            .zip(&tapes)
            .zip(grads.blocks.iter_mut())
            .rev()
        {
            b.fc3
                .grads(&g_h, &tape.a2, (&mut bg.fc3_w, &mut bg.fc3_b), m);
            let mut g2 = vec![0.0f32; m * b.fc3.inp];
            dense_backward(&g_h, b.fc3.w, &mut g2, (m, b.fc3.inp, b.fc3.out));
            mul_in_place(&mut g2, &tape.d_p2);
            b.fc2
                .grads(&g2, &tape.a1, (&mut bg.fc2_w, &mut bg.fc2_b), m);
            let mut g1 = vec![0.0f32; m * b.fc2.inp];
            dense_backward(&g2, b.fc2.w, &mut g1, (m, b.fc2.inp, b.fc2.out));
            mul_in_place(&mut g1, &tape.d_p1);
            let k1 = b.fc1.out;
            dense_weight_grad(&g1, &tape.n, &mut bg.fc1_w, (m, b.fc1.inp, k1), true);
            for (row, &t) in g1.chunks(k1).zip(ts) {
                let acc = &mut bg.table[t as usize * k1..(t as usize + 1) * k1];
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            let mut gn = vec![0.0f32; m * hd];
            dense_backward(&g1, b.fc1.w, &mut gn, (m, hd, k1));
            mul_in_place(&mut gn, &tape.d_n);
            add_column_sums(&mut bg.ln_b, &gn);
            for (r, (gr, xh)) in gn.chunks_mut(hd).zip(tape.xhat.chunks(hd)).enumerate() {
                for k in 0..hd {
                    bg.ln_w[k] += gr[k] * xh[k];
                    gr[k] *= b.ln_w[k];
                }
                layer_norm_backward_row(gr, xh, tape.inv_std[r], &mut g_h[r * hd..(r + 1) * hd]);
            }
        }
        self.input
            .grads(&g_h, x, (&mut grads.input_w, &mut grads.input_b), m);
    }
}

/// swish′(p) and swish″(p): with σ = σ(p), `σ (1 + p (1 − σ))` and
/// `σ (1 − σ) (2 + p (1 − 2σ))`.
#[inline(always)]
fn swish_derivs(p: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + fast_exp(-p));
    let q = s * (1.0 - s);
    (s + p * q, q * (2.0 + p * (1.0 - 2.0 * s)))
}

/// `out = swish(p)` elementwise.
fn swish_into(p: &[f32], out: &mut [f32]) {
    vectorized(
        #[inline(always)]
        || {
            for (o, v) in out.iter_mut().zip(p) {
                *o = v / (1.0 + fast_exp(-v));
            }
        },
    )
}

/// `g ← g ⊙ swish′(p)` elementwise.
fn mul_swish_deriv(g: &mut [f32], p: &[f32]) {
    vectorized(
        #[inline(always)]
        || {
            for (gv, v) in g.iter_mut().zip(p) {
                *gv *= swish_derivs(*v).0;
            }
        },
    )
}

/// The reverse pass of `a = swish(p)`, `ȧ = swish′(p) ṗ` on stacked adjoints
/// `buf = [ā; ǡ]` (each `p.len()` values), in place: `p̄ = ā swish′(p) + ǡ swish″(p) ṗ` and
/// `ṗ̄ = ǡ swish′(p)`.
fn swish_pair_adjoint(buf: &mut [f32], p: &[f32], p_dot: &[f32]) {
    let (bar, dot_bar) = buf.split_at_mut(p.len());
    vectorized(
        #[inline(always)]
        || {
            for (((b, db), v), vd) in bar.iter_mut().zip(dot_bar.iter_mut()).zip(p).zip(p_dot) {
                let (s1, s2) = swish_derivs(*v);
                *b = *b * s1 + *db * s2 * vd;
                *db *= s1;
            }
        },
    )
}

/// The activations of one block that the energy model's passes read: primal values, the
/// tangents of the forward-mode pass, and stacked `[primal; tangent]` layer inputs.
struct EnergyTape {
    xhat: Vec<f32>,
    inv_std: Vec<f32>,
    /// Layer-norm output before swish, and its tangent.
    l: Vec<f32>,
    l_dot: Vec<f32>,
    /// ẋ̂ and the tangent of the block's input stream.
    xhat_dot: Vec<f32>,
    h_dot: Vec<f32>,
    /// `[n; ṅ]`, `[a₁; ȧ₁]`, `[a₂; ȧ₂]` (2m rows each).
    n: Vec<f32>,
    a1: Vec<f32>,
    a2: Vec<f32>,
    p1: Vec<f32>,
    p1_dot: Vec<f32>,
    p2: Vec<f32>,
    p2_dot: Vec<f32>,
}

impl Net<'_> {
    /// The energy model's step over `m` rows, adding the gradients of
    /// `scale · Σ (∇ₓE − y)²` into `grads`.
    ///
    /// With `v = 2 scale (∇ₓE − y)` held fixed, that gradient is `∇_θ ⟨v, ∇ₓE⟩` and
    /// `⟨v, ∇ₓE⟩ = ⟨u, ġ⟩ − [squared residual] ⟨u, v⟩` where `u = ∂E/∂g` and `ġ = J_g v` is the
    /// forward-mode tangent of the network along v. So: a forward pass (kept), the reverse pass
    /// for ∇ₓE (hence v), a forward-mode pass for the tangents, and one reverse pass through
    /// primal and tangent together, whose products with the same weight run as one product over
    /// the stacked `[primal; tangent]` rows.
    fn energy_chunk(
        &self,
        form: EnergyForm,
        x: &[f32],
        ts: &[u32],
        y: &[f32],
        scale: f32,
        grads: &mut Grads,
    ) {
        let m = ts.len();
        let hd = self.hidden;
        let d = self.output.out;
        let (mh, m2) = (m * hd, 2 * m);

        // Forward pass.
        let mut h = vec![0.0f32; mh];
        self.input.apply(x, &mut h, m);
        let mut tapes = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let (k1, k2) = (b.fc1.out, b.fc2.out);
            let mut xhat = Vec::with_capacity(mh);
            let mut inv_std = Vec::with_capacity(m);
            let mut l = vec![0.0f32; mh];
            layer_norm_rows(
                &h,
                &mut l,
                (b.ln_w, b.ln_b, self.eps),
                Some((&mut xhat, &mut inv_std)),
            );
            let mut n = vec![0.0f32; 2 * mh];
            swish_into(&l, &mut n[..mh]);
            let mut p1 = vec![0.0f32; m * k1];
            for (row, &t) in p1.chunks_mut(k1).zip(ts) {
                row.copy_from_slice(&b.table[t as usize * k1..(t as usize + 1) * k1]);
            }
            dense_forward(&n[..mh], b.fc1.w, &mut p1, (m, hd, k1), true);
            let mut a1 = vec![0.0f32; 2 * m * k1];
            swish_into(&p1, &mut a1[..m * k1]);
            let mut p2 = vec![0.0f32; m * k2];
            b.fc2.apply(&a1[..m * k1], &mut p2, m);
            let mut a2 = vec![0.0f32; 2 * m * k2];
            swish_into(&p2, &mut a2[..m * k2]);
            dense_forward(&a2[..m * k2], b.fc3.w, &mut h, (m, k2, hd), true);
            add_bias(&mut h, b.fc3.b);
            tapes.push(EnergyTape {
                xhat,
                inv_std,
                l,
                l_dot: Vec::new(),
                xhat_dot: Vec::new(),
                h_dot: Vec::new(),
                n,
                a1,
                a2,
                p1,
                p1_dot: Vec::new(),
                p2,
                p2_dot: Vec::new(),
            });
        }
        let mut h_last = vec![0.0f32; 2 * mh];
        h_last[..mh].copy_from_slice(&h);
        let mut g = vec![0.0f32; m * d];
        self.output.apply(&h, &mut g, m);
        // u = ∂E/∂g.
        let u: Vec<f32> = match form {
            EnergyForm::SquaredResidual => g.iter().zip(x).map(|(a, b)| 2.0 * (a - b)).collect(),
            EnergyForm::HalfNorm => g.clone(),
        };

        // Reverse pass for ε̂ = ∇ₓE.
        let mut gh = vec![0.0f32; mh];
        dense_backward(&u, self.output.w, &mut gh, (m, hd, d));
        for (b, tp) in self.blocks.iter().zip(&tapes).rev() {
            let (k1, k2) = (b.fc1.out, b.fc2.out);
            let mut g2 = vec![0.0f32; m * k2];
            dense_backward(&gh, b.fc3.w, &mut g2, (m, k2, hd));
            mul_swish_deriv(&mut g2, &tp.p2);
            let mut g1 = vec![0.0f32; m * k1];
            dense_backward(&g2, b.fc2.w, &mut g1, (m, k1, k2));
            mul_swish_deriv(&mut g1, &tp.p1);
            let mut gn = vec![0.0f32; mh];
            dense_backward(&g1, b.fc1.w, &mut gn, (m, hd, k1));
            mul_swish_deriv(&mut gn, &tp.l);
            for (r, (gr, xh)) in gn.chunks_mut(hd).zip(tp.xhat.chunks(hd)).enumerate() {
                gr.iter_mut().zip(b.ln_w).for_each(|(a, w)| *a *= w);
                layer_norm_backward_row(gr, xh, tp.inv_std[r], &mut gh[r * hd..(r + 1) * hd]);
            }
        }
        let mut eps_hat = vec![0.0f32; m * d];
        dense_backward(&gh, self.input.w, &mut eps_hat, (m, d, hd));
        if form == EnergyForm::SquaredResidual {
            eps_hat.iter_mut().zip(&u).for_each(|(e, uv)| *e -= uv);
        }
        // The loss and v = ∂loss/∂ε̂, stacked under x as the input layer's [primal; tangent].
        let mut xv = vec![0.0f32; 2 * m * d];
        xv[..m * d].copy_from_slice(x);
        let mut sq = 0.0f64;
        for ((o, e), t) in xv[m * d..].iter_mut().zip(&eps_hat).zip(y) {
            let r = e - t;
            sq += f64::from(r) * f64::from(r);
            *o = 2.0 * scale * r;
        }
        grads.sq_err += sq;

        // Forward-mode pass along v.
        let mut h_dot = vec![0.0f32; mh];
        dense_forward(&xv[m * d..], self.input.w, &mut h_dot, (m, d, hd), false);
        for (b, tp) in self.blocks.iter().zip(tapes.iter_mut()) {
            let (k1, k2) = (b.fc1.out, b.fc2.out);
            let mut xhat_dot = vec![0.0f32; mh];
            for (r, (hr, xh)) in h_dot.chunks(hd).zip(tp.xhat.chunks(hd)).enumerate() {
                // The layer norm's Jacobian is symmetric: its tangent map is its backward map.
                layer_norm_backward_row(hr, xh, tp.inv_std[r], &mut xhat_dot[r * hd..(r + 1) * hd]);
            }
            let mut l_dot = xhat_dot.clone();
            for row in l_dot.chunks_mut(hd) {
                row.iter_mut().zip(b.ln_w).for_each(|(a, w)| *a *= w);
            }
            let n_dot = &mut tp.n[mh..];
            n_dot.copy_from_slice(&l_dot);
            mul_swish_deriv(n_dot, &tp.l);
            let mut p1_dot = vec![0.0f32; m * k1];
            dense_forward(n_dot, b.fc1.w, &mut p1_dot, (m, hd, k1), false);
            let a1_dot = &mut tp.a1[m * k1..];
            a1_dot.copy_from_slice(&p1_dot);
            mul_swish_deriv(a1_dot, &tp.p1);
            let mut p2_dot = vec![0.0f32; m * k2];
            dense_forward(a1_dot, b.fc2.w, &mut p2_dot, (m, k1, k2), false);
            let a2_dot = &mut tp.a2[m * k2..];
            a2_dot.copy_from_slice(&p2_dot);
            mul_swish_deriv(a2_dot, &tp.p2);
            tp.h_dot = h_dot.clone();
            dense_forward(a2_dot, b.fc3.w, &mut h_dot, (m, k2, hd), true);
            tp.xhat_dot = xhat_dot;
            tp.l_dot = l_dot;
            tp.p1_dot = p1_dot;
            tp.p2_dot = p2_dot;
        }
        h_last[mh..].copy_from_slice(&h_dot);
        let mut g_dot = vec![0.0f32; m * d];
        dense_forward(&h_dot, self.output.w, &mut g_dot, (m, hd, d), false);

        // Reverse pass through primal and tangent: adjoints [ḡ; ġ̄] of
        // ⟨u, ġ⟩ − [squared residual] ⟨u, v⟩.
        let mut adj = vec![0.0f32; 2 * m * d];
        let (g_bar, g_dot_bar) = adj.split_at_mut(m * d);
        match form {
            EnergyForm::SquaredResidual => {
                for ((o, gd), v) in g_bar.iter_mut().zip(&g_dot).zip(&xv[m * d..]) {
                    *o = 2.0 * (gd - v);
                }
            }
            EnergyForm::HalfNorm => g_bar.copy_from_slice(&g_dot),
        }
        g_dot_bar.copy_from_slice(&u);
        dense_weight_grad(&adj, &h_last, &mut grads.output_w, (m2, hd, d), true);
        add_column_sums(&mut grads.output_b, &adj[..m * d]);
        let mut hadj = vec![0.0f32; 2 * mh];
        dense_backward(&adj, self.output.w, &mut hadj, (m2, hd, d));
        for ((b, tp), bg) in self
            .blocks
            .iter()
            .zip(&tapes)
            .zip(grads.blocks.iter_mut())
            .rev()
        {
            let (k1, k2) = (b.fc1.out, b.fc2.out);
            dense_weight_grad(&hadj, &tp.a2, &mut bg.fc3_w, (m2, k2, hd), true);
            add_column_sums(&mut bg.fc3_b, &hadj[..mh]);
            let mut a2_adj = vec![0.0f32; m2 * k2];
            dense_backward(&hadj, b.fc3.w, &mut a2_adj, (m2, k2, hd));
            swish_pair_adjoint(&mut a2_adj, &tp.p2, &tp.p2_dot);
            dense_weight_grad(&a2_adj, &tp.a1, &mut bg.fc2_w, (m2, k1, k2), true);
            add_column_sums(&mut bg.fc2_b, &a2_adj[..m * k2]);
            let mut a1_adj = vec![0.0f32; m2 * k1];
            dense_backward(&a2_adj, b.fc2.w, &mut a1_adj, (m2, k1, k2));
            swish_pair_adjoint(&mut a1_adj, &tp.p1, &tp.p1_dot);
            dense_weight_grad(&a1_adj, &tp.n, &mut bg.fc1_w, (m2, hd, k1), true);
            for (row, &t) in a1_adj[..m * k1].chunks(k1).zip(ts) {
                let acc = &mut bg.table[t as usize * k1..(t as usize + 1) * k1];
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            let mut n_adj = vec![0.0f32; 2 * mh];
            dense_backward(&a1_adj, b.fc1.w, &mut n_adj, (m2, hd, k1));
            swish_pair_adjoint(&mut n_adj, &tp.l, &tp.l_dot);
            // n_adj = [l̄; l̇̄]. The affine map l = γ x̂ + β and its tangent l̇ = γ ẋ̂, then the
            // layer norm: tangent ẋ̂ = r (ḣ − mean ḣ − x̂ mean(x̂ ḣ)) (reads r, x̂ and ḣ) and
            // primal x̂ = (h − mean h) r with ∂r/∂h = −r² x̂ / H.
            let (l_bar, l_dot_bar) = n_adj.split_at(mh);
            let (h_bar, h_dot_bar) = hadj.split_at_mut(mh);
            let mut xbar = vec![0.0f32; hd];
            let mut a = vec![0.0f32; hd];
            let width = hd as f32;
            for r in 0..m {
                let row = r * hd..(r + 1) * hd;
                let (lb, ldb) = (&l_bar[row.clone()], &l_dot_bar[row.clone()]);
                let (xh, xhd, hdt) = (
                    &tp.xhat[row.clone()],
                    &tp.xhat_dot[row.clone()],
                    &tp.h_dot[row.clone()],
                );
                let inv = tp.inv_std[r];
                let (mut r_bar, mut mean_xh_hd, mut sum_a_xh) = (0.0f32, 0.0f32, 0.0f32);
                for k in 0..hd {
                    bg.ln_w[k] += lb[k] * xh[k] + ldb[k] * xhd[k];
                    bg.ln_b[k] += lb[k];
                    xbar[k] = lb[k] * b.ln_w[k];
                    a[k] = ldb[k] * b.ln_w[k];
                    r_bar += a[k] * xhd[k];
                    mean_xh_hd += xh[k] * hdt[k];
                    sum_a_xh += a[k] * xh[k];
                }
                r_bar /= inv;
                mean_xh_hd /= width;
                layer_norm_backward_row(&a, xh, inv, &mut h_dot_bar[row.clone()]);
                for k in 0..hd {
                    xbar[k] -= inv * (a[k] * mean_xh_hd + sum_a_xh * hdt[k] / width);
                }
                let hb = &mut h_bar[row];
                layer_norm_backward_row(&xbar, xh, inv, hb);
                for k in 0..hd {
                    hb[k] -= inv * inv * xh[k] * r_bar / width;
                }
            }
        }
        dense_weight_grad(&hadj, &xv, &mut grads.input_w, (m2, d, hd), true);
        add_column_sums(&mut grads.input_b, &hadj[..mh]);
    }
}

impl Layer<'_> {
    /// `y = x Wᵀ + b` over `m` rows (overwriting `y`).
    fn apply(&self, x: &[f32], y: &mut [f32], m: usize) {
        dense_forward(x, self.w, y, (m, self.inp, self.out), false);
        add_bias(y, self.b);
    }

    /// Adds `gᵀ x` and the column sums of `g` into the weight and bias gradients.
    fn grads(&self, g: &[f32], x: &[f32], (gw, gb): (&mut [f32], &mut [f32]), m: usize) {
        dense_weight_grad(g, x, gw, (m, self.inp, self.out), true);
        add_column_sums(gb, g);
    }
}

/// The value of the mean-squared denoising loss `(1/(B d)) Σ (f(x, t) − y)²` of `net` and its
/// gradient with respect to every parameter, computed on the host (see the
/// [module documentation](self)); `None` when an input or parameter is not a contiguous `f32`
/// tensor on the CPU (use candle's autograd then).
///
/// The gradients come as a candle [`GradStore`] keyed by the parameter tensors of `net`, what
/// [`crate::train::AdamW::step`] reads.
///
/// # Errors
///
/// [`Error::Shape`] if `x`, `t` and `y` do not describe one batch of the network's data
/// dimension; [`Error::Config`] if a time is not a training step.
pub fn mse_loss_and_grads(
    net: &ResidualMlp,
    x: &Tensor,
    t: &Tensor,
    y: &Tensor,
) -> Result<Option<(Tensor, GradStore)>> {
    loss_and_grads(net, None, x, t, y)
}

/// The same for an energy model: the loss `(1/(B d)) Σ (∇ₓE(x, t) − y)²` of its ε prediction
/// ([`EnergyMlp`], Du et al. 2023 eq. 5) and its gradient with respect to every parameter of
/// the network, a gradient of an input gradient (see the [module documentation](self)).
///
/// # Errors
///
/// As [`mse_loss_and_grads`].
pub fn energy_mse_loss_and_grads(
    model: &EnergyMlp,
    x: &Tensor,
    t: &Tensor,
    y: &Tensor,
) -> Result<Option<(Tensor, GradStore)>> {
    loss_and_grads(model.net(), Some(model.form()), x, t, y)
}

fn loss_and_grads(
    net: &ResidualMlp,
    energy: Option<EnergyForm>,
    x: &Tensor,
    t: &Tensor,
    y: &Tensor,
) -> Result<Option<(Tensor, GradStore)>> {
    net.check_input(x, t)?;
    if y.dims() != x.dims() {
        return Err(Error::Shape(format!(
            "mlp: targets of shape {:?} for inputs of shape {:?}",
            y.dims(),
            x.dims()
        )));
    }
    if !matches!(x.device(), Device::Cpu) {
        return Ok(None);
    }
    let ts = net.time_indices(t)?;
    // Weight and bias of every dense layer: input, each block's fc1, time_proj, fc2, fc3, output.
    let layers: Vec<&candle_nn::Linear> = std::iter::once(net.input_layer())
        .chain(
            net.blocks()
                .iter()
                .flat_map(|b| [&b.fc1, &b.time_proj, &b.fc2, &b.fc3]),
        )
        .chain(std::iter::once(net.output_layer()))
        .collect();
    let mut dense = Vec::with_capacity(layers.len());
    for l in layers {
        match l.bias() {
            Some(b) => dense.push((l.weight().clone(), b.clone())),
            None => return Ok(None),
        }
    }
    let mut params: Vec<&Tensor> = Vec::new();
    for (w, b) in &dense {
        params.extend([w, b]);
    }
    for b in net.blocks() {
        params.extend([b.norm.weight(), b.norm.bias()]);
    }
    params.extend([net.time_embed(), x, y]);
    let Some(computed) = with_host_slices(&params, |s| host_step(net, energy, &dense, s, &ts))
    else {
        return Ok(None);
    };
    let (loss, named) = computed?;
    let mut store = empty_grad_store()?;
    for (tensor, grad) in named {
        store.insert(&tensor, grad);
    }
    Ok(Some((Tensor::new(loss, &Device::Cpu)?, store)))
}

/// A [`GradStore`] holding no gradient of any tensor that exists.
fn empty_grad_store() -> Result<GradStore> {
    // The backward pass of a constant holds only the constant's own gradient (a tensor id that
    // nothing else carries); removing it leaves the store empty.
    let c = Tensor::new(0f32, &Device::Cpu)?;
    let mut store = c.backward()?;
    store.remove(&c);
    Ok(store)
}

type Named = Vec<(Tensor, Tensor)>;

/// The whole step on host slices laid out as in [`mse_loss_and_grads`]: per dense layer
/// (input, each block's fc1, time_proj, fc2, fc3, output; their tensors in `dense`) weight and
/// bias, then per block γ and β, then the time embedding, x and y.
fn host_step(
    net: &ResidualMlp,
    energy: Option<EnergyForm>,
    dense: &[(Tensor, Tensor)],
    s: &[&[f32]],
    ts: &[u32],
) -> Result<(f32, Named)> {
    let cfg = net.config();
    let nb = cfg.num_blocks;
    let (hd, kd, ed, steps, d) = (
        cfg.hidden,
        cfg.block_hidden,
        cfg.time_embed_dim,
        cfg.num_timesteps,
        cfg.data_dim,
    );
    let layer = |i: usize, inp: usize, out: usize| Layer {
        w: s[2 * i],
        b: s[2 * i + 1],
        inp,
        out,
    };
    let n_layers = 2 + 4 * nb;
    let ln = |bi: usize| (s[2 * n_layers + 2 * bi], s[2 * n_layers + 2 * bi + 1]);
    let embed = s[2 * n_layers + 2 * nb];
    let (x, y) = (s[2 * n_layers + 2 * nb + 1], s[2 * n_layers + 2 * nb + 2]);
    let mut blocks = Vec::with_capacity(nb);
    let mut tps = Vec::with_capacity(nb);
    for bi in 0..nb {
        let fc1 = layer(1 + 4 * bi, hd, kd);
        let tp = layer(2 + 4 * bi, ed, kd);
        tps.push(tp);
        let mut table = vec![0.0f32; steps * kd];
        dense_forward(embed, tp.w, &mut table, (steps, ed, kd), false);
        for row in table.chunks_mut(kd) {
            for ((v, a), b) in row.iter_mut().zip(tp.b).zip(fc1.b) {
                *v += a + b;
            }
        }
        let (ln_w, ln_b) = ln(bi);
        blocks.push(BlockData {
            ln_w,
            ln_b,
            fc1,
            fc2: layer(3 + 4 * bi, kd, kd),
            fc3: layer(4 + 4 * bi, kd, hd),
            table,
        });
    }
    let eps = net.blocks().first().map_or(1e-5, |b| b.norm.eps() as f32);
    let host_net = Net {
        input: layer(0, d, hd),
        blocks,
        output: layer(n_layers - 1, hd, d),
        eps,
        hidden: hd,
    };
    let rows = ts.len();
    let scale = 1.0 / (rows * d) as f32;
    // One shard of rows per participant of candle's worker pool (the calling thread included).
    let pool = candle_core::utils::barrier_pool();
    let shards = (pool.n_workers() + 1).clamp(1, rows.div_ceil(CHUNK_ROWS).max(1));
    let per_shard = rows.div_ceil(shards).max(1);
    let slots: Vec<std::sync::Mutex<Option<Grads>>> =
        (0..shards).map(|_| std::sync::Mutex::new(None)).collect();
    let shard = |i: usize| {
        let (start, end) = (i * per_shard, ((i + 1) * per_shard).min(rows));
        let mut g = Grads::zeros(&host_net, steps);
        let mut r = start;
        while r < end {
            let e = (r + CHUNK_ROWS).min(end);
            let (xs, ys) = (&x[r * d..e * d], &y[r * d..e * d]);
            match energy {
                None => host_net.chunk(xs, &ts[r..e], ys, scale, &mut g),
                Some(form) => host_net.energy_chunk(form, xs, &ts[r..e], ys, scale, &mut g),
            }
            r = e;
        }
        if let Ok(mut slot) = slots[i].lock() {
            *slot = Some(g);
        }
    };
    if shards == 1 {
        shard(0);
    } else {
        pool.execute(|tid| {
            if tid < shards {
                shard(tid);
            }
        });
    }
    let mut parts = slots
        .into_iter()
        .map(|m| m.into_inner().ok().flatten())
        .collect::<Option<Vec<Grads>>>()
        .ok_or_else(|| Error::Training("a gradient shard did not finish".into()))?
        .into_iter();
    let mut total = parts
        .next()
        .ok_or_else(|| Error::Training("no gradient shard".into()))?;
    for p in parts {
        total.add(p);
    }
    let loss = (total.sq_err / (rows * d) as f64) as f32;

    // Time terms: ∂W_tp = g_Pᵀ E, ∂b_tp = ∂b₁ = Σ g_P, ∂E = Σ_blocks g_P W_tp.
    let dev = Device::Cpu;
    let tensor = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &Device::Cpu);
    let mut named: Named = Vec::new();
    let mut grad_of = |i: usize, gw: Vec<f32>, gb: Vec<f32>| -> Result<()> {
        let (w, b) = &dense[i];
        named.push((w.clone(), Tensor::from_vec(gw, w.shape(), &dev)?));
        named.push((b.clone(), Tensor::from_vec(gb, b.shape(), &dev)?));
        Ok(())
    };
    let mut g_embed = vec![0.0f32; steps * ed];
    let mut scratch = vec![0.0f32; steps * ed];
    let (input_w, input_b) = (
        std::mem::take(&mut total.input_w),
        std::mem::take(&mut total.input_b),
    );
    grad_of(0, input_w, input_b)?;
    let mut norms = Vec::with_capacity(nb);
    for (bi, (bg, tp)) in total.blocks.into_iter().zip(&tps).enumerate() {
        let mut bias = vec![0.0f32; kd];
        add_column_sums(&mut bias, &bg.table);
        let mut tp_w = vec![0.0f32; kd * ed];
        dense_weight_grad(&bg.table, embed, &mut tp_w, (steps, ed, kd), false);
        dense_backward(&bg.table, tp.w, &mut scratch, (steps, ed, kd));
        g_embed.iter_mut().zip(&scratch).for_each(|(a, v)| *a += v);
        grad_of(1 + 4 * bi, bg.fc1_w, bias.clone())?;
        grad_of(2 + 4 * bi, tp_w, bias)?;
        grad_of(3 + 4 * bi, bg.fc2_w, bg.fc2_b)?;
        grad_of(4 + 4 * bi, bg.fc3_w, bg.fc3_b)?;
        norms.push((bg.ln_w, bg.ln_b));
    }
    grad_of(n_layers - 1, total.output_w, total.output_b)?;
    for (b, (gw, gb)) in net.blocks().iter().zip(norms) {
        named.push((b.norm.weight().clone(), tensor(gw, &[hd])?));
        named.push((b.norm.bias().clone(), tensor(gb, &[hd])?));
    }
    named.push((net.time_embed().clone(), tensor(g_embed, &[steps, ed])?));
    Ok((loss, named))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::Denoiser;
    use crate::nn::{MlpConfig, ParamStore};
    use crate::param::Parameterization;
    use candle_core::DType;

    fn perturbed(store: &ParamStore, seed: u64) -> Result<()> {
        let mut rng = crate::random::seeded(seed);
        for (_, var) in store.vars() {
            let t = var.as_tensor();
            let noise = crate::random::normal_tensor(&mut rng, t.dims(), DType::F32, &Device::Cpu)?;
            var.set(&(t + (noise * 0.3)?)?)?;
        }
        Ok(())
    }

    fn small(d: usize) -> MlpConfig {
        MlpConfig {
            data_dim: d,
            hidden: 16,
            block_hidden: 24,
            num_blocks: 3,
            time_embed_dim: 8,
            num_timesteps: 10,
        }
    }

    /// A batch of `n` points, times drawn from 0..steps and targets.
    fn batch(n: usize, d: usize, steps: usize, seed: u64) -> Result<(Tensor, Tensor, Tensor)> {
        let mut rng = crate::random::seeded(seed);
        let x = Tensor::from_vec(
            crate::random::normal_vec(&mut rng, n * d),
            (n, d),
            &Device::Cpu,
        )?;
        let y = Tensor::from_vec(
            crate::random::normal_vec(&mut rng, n * d),
            (n, d),
            &Device::Cpu,
        )?;
        let t: Vec<f32> = (0..n).map(|i| ((i * 7 + 3) % steps) as f32).collect();
        Ok((x, Tensor::from_vec(t, n, &Device::Cpu)?, y))
    }

    /// Every parameter's gradient (and the loss) against candle's autograd of the same loss,
    /// for batches below, at and above one chunk of rows (one and several shards).
    #[test]
    fn gradients_equal_candle_autograd() -> Result<()> {
        for (cfg, sizes) in [
            (small(2), vec![1, 5, 256, 700]),
            (small(3), vec![300]),
            (MlpConfig::default(), vec![1000]),
        ] {
            let store = ParamStore::new(3);
            let net = ResidualMlp::new(
                &cfg,
                Parameterization::Epsilon,
                store.var_builder(DType::F32, &Device::Cpu),
            )?;
            perturbed(&store, 4)?;
            for n in sizes {
                let (x, t, y) = batch(n, cfg.data_dim, cfg.num_timesteps, n as u64)?;
                let loss = (net.forward(&x, &t, None)? - &y)?.sqr()?.mean_all()?;
                let want = loss.backward()?;
                let (got_loss, got) = mse_loss_and_grads(&net, &x, &t, &y)?.expect("host path");
                let (a, b) = (got_loss.to_scalar::<f32>()?, loss.to_scalar::<f32>()?);
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs(),
                    "loss {a} vs {b} at n = {n}"
                );
                for (name, var) in store.vars() {
                    let w = want.get(var.as_tensor()).expect("autograd gradient");
                    let g = got.get(var.as_tensor()).expect("host gradient");
                    assert_eq!(g.dims(), w.dims(), "{name}");
                    let scale = w.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
                    let err = (g - w)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
                    assert!(err < 1e-4, "{name} at n = {n}: relative error {err}");
                }
            }
        }
        Ok(())
    }

    /// The energy model's gradient (a gradient of an input gradient) against candle's autograd
    /// through [`EnergyMlp::energy_and_grad`]'s explicit tensor operations, for both energy
    /// forms and batches of one and several shards.
    #[test]
    fn energy_gradients_equal_candle_autograd() -> Result<()> {
        for form in [EnergyForm::SquaredResidual, EnergyForm::HalfNorm] {
            for (cfg, sizes) in [
                (small(2), vec![1, 9, 600]),
                (MlpConfig::default(), vec![1000]),
            ] {
                let store = ParamStore::new(13);
                let model =
                    EnergyMlp::new(&cfg, form, store.var_builder(DType::F32, &Device::Cpu))?;
                perturbed(&store, 14)?;
                for n in sizes {
                    let (x, t, y) = batch(n, cfg.data_dim, cfg.num_timesteps, 3 + n as u64)?;
                    let loss = (model.forward(&x, &t, None)? - &y)?.sqr()?.mean_all()?;
                    let want = loss.backward()?;
                    let (got_loss, got) =
                        energy_mse_loss_and_grads(&model, &x, &t, &y)?.expect("host path");
                    let (a, b) = (got_loss.to_scalar::<f32>()?, loss.to_scalar::<f32>()?);
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs(),
                        "{form:?} loss {a} vs {b} at n = {n}"
                    );
                    for (name, var) in store.vars() {
                        let w = want.get(var.as_tensor()).expect("autograd gradient");
                        let g = got.get(var.as_tensor()).expect("host gradient");
                        let scale = w.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
                        let err = (g - w)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
                        assert!(
                            err < 1e-4,
                            "{form:?} {name} at n = {n}: relative error {err}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// A third witness: central differences of the loss in f64 (the same weights in a network
    /// built in f64) against the host gradient, for a few coordinates of every parameter.
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let cfg = small(2);
        let store = ParamStore::new(8);
        let net = ResidualMlp::new(
            &cfg,
            Parameterization::Epsilon,
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        perturbed(&store, 9)?;
        let (x, t, y) = batch(40, 2, cfg.num_timesteps, 10)?;
        let (_, got) = mse_loss_and_grads(&net, &x, &t, &y)?.expect("host path");
        let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
        let values: Vec<Tensor> = store
            .vars()
            .into_iter()
            .map(|(_, v)| v.as_tensor().to_dtype(DType::F64))
            .collect::<candle_core::Result<_>>()?;
        let loss64 = |values: &[Tensor]| -> Result<f64> {
            let map: std::collections::HashMap<String, Tensor> =
                names.iter().cloned().zip(values.iter().cloned()).collect();
            let vb = candle_nn::VarBuilder::from_tensors(map, DType::F64, &Device::Cpu);
            let net64 = ResidualMlp::new(&cfg, Parameterization::Epsilon, vb)?;
            let out = net64.forward(&x.to_dtype(DType::F64)?, &t, None)?;
            Ok((out - y.to_dtype(DType::F64)?)?
                .sqr()?
                .mean_all()?
                .to_scalar::<f64>()?)
        };
        let h = 1e-5;
        for (pi, (name, var)) in store.vars().into_iter().enumerate() {
            let g = got
                .get(var.as_tensor())
                .expect("host gradient")
                .flatten_all()?
                .to_vec1::<f32>()?;
            let flat = values[pi].flatten_all()?.to_vec1::<f64>()?;
            for k in [0, flat.len() / 2, flat.len() - 1] {
                let shifted = |delta: f64| -> Result<f64> {
                    let mut v = flat.clone();
                    v[k] += delta;
                    let mut all = values.clone();
                    all[pi] = Tensor::from_vec(v, values[pi].shape(), &Device::Cpu)?;
                    loss64(&all)
                };
                let fd = (shifted(h)? - shifted(-h)?) / (2.0 * h);
                let err = (f64::from(g[k]) - fd).abs();
                assert!(
                    err <= 1e-3 * fd.abs().max(1e-2),
                    "{name}[{k}]: host {} vs finite difference {fd}",
                    g[k]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors_and_other_dtypes_defer_to_autograd() -> Result<()> {
        let cfg = small(2);
        let store = ParamStore::new(1);
        let net = ResidualMlp::new(
            &cfg,
            Parameterization::Epsilon,
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        let (x, t, y) = batch(4, 2, cfg.num_timesteps, 1)?;
        assert!(mse_loss_and_grads(&net, &x, &t, &y.narrow(0, 0, 3)?).is_err());
        assert!(mse_loss_and_grads(&net, &x.narrow(0, 0, 3)?, &t, &y).is_err());
        let late = Tensor::from_vec(vec![10f32; 4], 4, &Device::Cpu)?;
        assert!(mse_loss_and_grads(&net, &x, &late, &y).is_err());
        let x64 = x.to_dtype(DType::F64)?;
        let y64 = y.to_dtype(DType::F64)?;
        assert!(mse_loss_and_grads(&net, &x64, &t, &y64)?.is_none());
        Ok(())
    }
}
