//! The residual MLP evaluated on the host without autograd: fast repeated inference.
//!
//! Samplers evaluate the same small network thousands of times on a few thousand points (the
//! annealed MCMC of Du et al. 2023 takes 10³–10⁴ steps per sample). [`FrozenMlp`] copies the
//! weights of a [`ResidualMlp`] into host `f32` vectors and computes the same function — and
//! the input gradient of its energy ([`EnergyForm`], the formulas of [`crate::nn::energy`]) —
//! with one `gemm` per layer, bias and swish fused into one pass over each layer's output, the
//! layer norm in one pass per row, and the rows split into chunks of [`CHUNK_ROWS`] shared out
//! to candle's thread count. All rows are at one training step t, so the time projection of
//! each block is computed once per call.
//!
//! Its results equal those of [`ResidualMlp`]'s forward pass and of
//! [`crate::nn::EnergyMlp::energy_and_grad`] up to `f32` rounding (tested). Use it for inference
//! on the CPU; train with the candle modules.

use candle_core::{DType, Device, Tensor};
use candle_nn::Linear;

use crate::nn::energy::EnergyForm;
use crate::nn::mlp::ResidualMlp;
use crate::{Error, Result};
use recompose_core::gemm::{dense_backward, dense_forward};
use recompose_core::host::{fast_exp, vectorized};

/// Rows per work chunk: the activations of a chunk stay in the L2 cache.
pub const CHUNK_ROWS: usize = 256;

/// A dense layer on the host: `weight` `[out, in]` row-major and `bias` `[out]`.
#[derive(Debug, Clone)]
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inp: usize,
    out: usize,
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl Dense {
    fn new(l: &Linear) -> Result<Self> {
        let (out, inp) = l.weight().dims2()?;
        let bias = match l.bias() {
            Some(b) => host(b)?,
            None => vec![0.0; out],
        };
        Ok(Self {
            weight: host(l.weight())?,
            bias,
            inp,
            out,
        })
    }

    /// `y[m×out] = x[m×in] · Wᵀ` (added to y if `accumulate`), without the bias.
    fn apply(&self, x: &[f32], y: &mut [f32], m: usize, accumulate: bool) {
        dense_forward(x, &self.weight, y, (m, self.inp, self.out), accumulate);
    }

    /// `gx[m×in] = g[m×out] · W`: the backward pass of [`Dense::apply`] for the input.
    fn back(&self, g: &[f32], gx: &mut [f32], m: usize) {
        dense_backward(g, &self.weight, gx, (m, self.inp, self.out));
    }
}

/// One residual block on the host.
#[derive(Debug, Clone)]
struct Block {
    ln_weight: Vec<f32>,
    ln_bias: Vec<f32>,
    fc1: Dense,
    time_proj: Dense,
    fc2: Dense,
    fc3: Dense,
}

/// The weights of a [`ResidualMlp`] on the host (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct FrozenMlp {
    input: Dense,
    time_embed: Vec<f32>,
    embed_dim: usize,
    steps: usize,
    blocks: Vec<Block>,
    output: Dense,
    ln_eps: f32,
}

/// Per-block activations the input-gradient pass needs.
#[derive(Default)]
struct Tape {
    /// Normalized stream x̂ `[m×H]` and 1/√(var + eps) per row.
    xhat: Vec<f32>,
    inv_std: Vec<f32>,
    /// swish′ at the layer-norm output `[m×H]`, after fc1 and after fc2 `[m×2H]`.
    d_n: Vec<f32>,
    d_p1: Vec<f32>,
    d_p2: Vec<f32>,
}

/// The layer norm of each row of `h` (rows of the weight's width) into `out`:
/// `x̂ γ + β` with `x̂ = (h − mean h)/√(var h + eps)`, for `(γ, β, eps)`. With a tape, x̂ and
/// 1/√(var h + eps) of each row are appended to it.
pub(crate) fn layer_norm_rows(
    h: &[f32],
    out: &mut [f32],
    (weight, bias, eps): (&[f32], &[f32], f32),
    mut tape: Option<(&mut Vec<f32>, &mut Vec<f32>)>,
) {
    let w = weight.len();
    for (hr, nr) in h.chunks(w).zip(out.chunks_mut(w)) {
        let mean = hr.iter().sum::<f32>() / w as f32;
        let var = hr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / w as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (k, (o, v)) in nr.iter_mut().zip(hr).enumerate() {
            *o = (v - mean) * inv;
            if let Some((xhat, _)) = tape.as_mut() {
                xhat.push(*o);
            }
            *o = *o * weight[k] + bias[k];
        }
        if let Some((_, inv_std)) = tape.as_mut() {
            inv_std.push(inv);
        }
    }
}

/// The layer norm's backward pass for one row: given `g = ∂L/∂x̂`, the row's x̂ and
/// `inv = 1/√(var + eps)`, adds `∂L/∂h = inv (g − mean g − x̂ mean(g x̂))` to `gh`.
pub(crate) fn layer_norm_backward_row(g: &[f32], xhat: &[f32], inv: f32, gh: &mut [f32]) {
    let w = g.len() as f32;
    let (mut m1, mut m2) = (0.0f32, 0.0f32);
    for (gv, xv) in g.iter().zip(xhat) {
        m1 += gv;
        m2 += gv * xv;
    }
    m1 /= w;
    m2 /= w;
    for ((o, gv), xv) in gh.iter_mut().zip(g).zip(xhat) {
        *o += inv * (gv - m1 - xv * m2);
    }
}

/// swish(p) = p σ(p) and swish′(p) = σ(p)(1 + p − swish(p)).
#[inline(always)]
fn swish_and_deriv(p: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + fast_exp(-p));
    let a = p * s;
    (a, s * (1.0 + p - a))
}

/// In place `z ← swish(z + bias)` (rows of the bias's width; no bias: plain swish); with
/// `deriv`, also store swish′ there.
pub(crate) fn bias_swish(z: &mut [f32], bias: Option<&[f32]>, deriv: Option<&mut Vec<f32>>) {
    vectorized(
        #[inline(always)]
        || bias_swish_loops(z, bias, deriv),
    )
}

#[inline(always)]
fn bias_swish_loops(z: &mut [f32], bias: Option<&[f32]>, deriv: Option<&mut Vec<f32>>) {
    if let Some(b) = bias {
        for row in z.chunks_mut(b.len()) {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
    match deriv {
        Some(d) => {
            d.resize(z.len(), 0.0);
            for (v, dv) in z.iter_mut().zip(d.iter_mut()) {
                let (a, g) = swish_and_deriv(*v);
                *v = a;
                *dv = g;
            }
        }
        None => {
            for v in z.iter_mut() {
                *v = swish_and_deriv(*v).0;
            }
        }
    }
}

pub(crate) fn add_bias(z: &mut [f32], bias: &[f32]) {
    for row in z.chunks_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

impl FrozenMlp {
    /// Copies the weights of `net` (any device and float dtype) to the host as `f32`.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if a weight cannot be read.
    pub fn from_mlp(net: &ResidualMlp) -> Result<Self> {
        let blocks = net
            .blocks()
            .iter()
            .map(|b| {
                Ok(Block {
                    ln_weight: host(b.norm.weight())?,
                    ln_bias: host(b.norm.bias())?,
                    fc1: Dense::new(&b.fc1)?,
                    time_proj: Dense::new(&b.time_proj)?,
                    fc2: Dense::new(&b.fc2)?,
                    fc3: Dense::new(&b.fc3)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let c = net.config();
        Ok(Self {
            input: Dense::new(net.input_layer())?,
            time_embed: host(net.time_embed())?,
            embed_dim: c.time_embed_dim,
            steps: c.num_timesteps,
            blocks,
            output: Dense::new(net.output_layer())?,
            ln_eps: net.blocks().first().map_or(1e-5, |b| b.norm.eps() as f32),
        })
    }

    /// The data dimension d.
    pub fn data_dim(&self) -> usize {
        self.input.inp
    }

    /// The number of training timesteps T: valid steps are 0..T.
    pub fn num_timesteps(&self) -> usize {
        self.steps
    }

    /// Checks a batch and a step; returns the number of rows.
    fn check(&self, x: &[f32], t: usize) -> Result<usize> {
        let d = self.data_dim();
        if !x.len().is_multiple_of(d) {
            return Err(Error::Shape(format!(
                "a batch of {d}-dimensional points cannot have {} values",
                x.len()
            )));
        }
        if t >= self.steps {
            return Err(Error::Config(format!(
                "time step {t} is not a training step in 0..{}",
                self.steps
            )));
        }
        Ok(x.len() / d)
    }

    /// Per block, fc1's bias plus the time projection of step t (its bias included): `[2H]`.
    fn time_terms(&self, t: usize) -> Vec<Vec<f32>> {
        let e = &self.time_embed[t * self.embed_dim..(t + 1) * self.embed_dim];
        self.blocks
            .iter()
            .map(|b| {
                let mut c = vec![0.0f32; b.time_proj.out];
                b.time_proj.apply(e, &mut c, 1, false);
                for ((v, b1), bt) in c.iter_mut().zip(&b.fc1.bias).zip(&b.time_proj.bias) {
                    *v += b1 + bt;
                }
                c
            })
            .collect()
    }

    /// The forward pass of `m` rows: returns g `[m×d]`, filling `tapes` if given.
    fn chunk_forward(
        &self,
        x: &[f32],
        m: usize,
        time: &[Vec<f32>],
        mut tapes: Option<&mut Vec<Tape>>,
    ) -> Vec<f32> {
        let hdim = self.input.out;
        let mut h = vec![0.0f32; m * hdim];
        self.input.apply(x, &mut h, m, false);
        add_bias(&mut h, &self.input.bias);
        let mut n = vec![0.0f32; m * hdim];
        for (bi, (b, c)) in self.blocks.iter().zip(time).enumerate() {
            let mut tape = tapes.as_mut().map(|_| Tape::default());
            layer_norm_rows(
                &h,
                &mut n,
                (&b.ln_weight, &b.ln_bias, self.ln_eps),
                tape.as_mut().map(|tp| (&mut tp.xhat, &mut tp.inv_std)),
            );
            bias_swish(&mut n, None, tape.as_mut().map(|tp| &mut tp.d_n));
            let mut p1 = vec![0.0f32; m * b.fc1.out];
            b.fc1.apply(&n, &mut p1, m, false);
            bias_swish(&mut p1, Some(c), tape.as_mut().map(|tp| &mut tp.d_p1));
            let mut p2 = vec![0.0f32; m * b.fc2.out];
            b.fc2.apply(&p1, &mut p2, m, false);
            bias_swish(
                &mut p2,
                Some(&b.fc2.bias),
                tape.as_mut().map(|tp| &mut tp.d_p2),
            );
            b.fc3.apply(&p2, &mut h, m, true);
            add_bias(&mut h, &b.fc3.bias);
            if let (Some(tapes), Some(tp)) = (tapes.as_mut(), tape) {
                debug_assert_eq!(tapes.len(), bi);
                tapes.push(tp);
            }
        }
        let mut g = vec![0.0f32; m * self.output.out];
        self.output.apply(&h, &mut g, m, false);
        add_bias(&mut g, &self.output.bias);
        g
    }

    /// Energy `[m]` and its input gradient `[m×d]` of `m` rows.
    fn chunk_energy(
        &self,
        form: EnergyForm,
        x: &[f32],
        m: usize,
        time: &[Vec<f32>],
        energy: &mut [f32],
        grad: &mut [f32],
    ) {
        let d = self.data_dim();
        let hdim = self.input.out;
        let mut tapes = Vec::with_capacity(self.blocks.len());
        let g = self.chunk_forward(x, m, time, Some(&mut tapes));
        // u = ∂E/∂g and the energy.
        let mut u = g.clone();
        for ((ur, xr), e) in u.chunks_mut(d).zip(x.chunks(d)).zip(energy.iter_mut()) {
            match form {
                EnergyForm::SquaredResidual => {
                    let mut s = 0.0;
                    for (uv, xv) in ur.iter_mut().zip(xr) {
                        let r = *uv - xv;
                        s += r * r;
                        *uv = 2.0 * r;
                    }
                    *e = s;
                }
                EnergyForm::HalfNorm => *e = 0.5 * ur.iter().map(|v| v * v).sum::<f32>(),
            }
        }
        let mut gh = vec![0.0f32; m * hdim];
        self.output.back(&u, &mut gh, m);
        let mut gn = vec![0.0f32; m * hdim];
        for (b, tp) in self.blocks.iter().zip(&tapes).rev() {
            let mut g2 = vec![0.0f32; m * b.fc3.inp];
            b.fc3.back(&gh, &mut g2, m);
            for (v, dv) in g2.iter_mut().zip(&tp.d_p2) {
                *v *= dv;
            }
            let mut g1 = vec![0.0f32; m * b.fc2.inp];
            b.fc2.back(&g2, &mut g1, m);
            for (v, dv) in g1.iter_mut().zip(&tp.d_p1) {
                *v *= dv;
            }
            b.fc1.back(&g1, &mut gn, m);
            // swish′ at the layer-norm output, then the layer norm's backward pass.
            for (r, ((gr, xh), ghr)) in gn
                .chunks_mut(hdim)
                .zip(tp.xhat.chunks(hdim))
                .zip(gh.chunks_mut(hdim))
                .enumerate()
            {
                let dn = &tp.d_n[r * hdim..(r + 1) * hdim];
                for k in 0..hdim {
                    gr[k] *= dn[k] * b.ln_weight[k];
                }
                layer_norm_backward_row(gr, xh, tp.inv_std[r], ghr);
            }
        }
        self.input.back(&gh, grad, m);
        if form == EnergyForm::SquaredResidual {
            for (gv, uv) in grad.iter_mut().zip(&u) {
                *gv -= uv;
            }
        }
    }

    /// Splits the rows of `x` (`d` per row) into chunks handed to scoped threads; `work` gets
    /// (input rows, row count, output slices) for each chunk.
    fn parallel_rows<F>(&self, x: &[f32], outs: &mut [(&mut [f32], usize)], work: F)
    where
        F: Fn(&[f32], usize, &mut [&mut [f32]]) + Sync,
    {
        let d = self.data_dim();
        let n = x.len() / d;
        let chunks = n.div_ceil(CHUNK_ROWS);
        let threads = candle_core::utils::get_num_threads().clamp(1, chunks.max(1));
        let per_thread = chunks.div_ceil(threads).max(1) * CHUNK_ROWS;
        // Cut every output into the same row ranges as x.
        let mut parts: Vec<Vec<&mut [f32]>> = Vec::new();
        for (buf, width) in outs.iter_mut() {
            for (i, piece) in buf.chunks_mut(per_thread * *width).enumerate() {
                if parts.len() <= i {
                    parts.push(Vec::new());
                }
                parts[i].push(piece);
            }
        }
        let run = |xs: &[f32], mut outs: Vec<&mut [f32]>| {
            let rows = xs.len() / d;
            let mut start = 0;
            while start < rows {
                let m = CHUNK_ROWS.min(rows - start);
                let mut views: Vec<&mut [f32]> = outs
                    .iter_mut()
                    .map(|o| {
                        let w = o.len() / rows;
                        &mut o[start * w..(start + m) * w]
                    })
                    .collect();
                work(&xs[start * d..(start + m) * d], m, &mut views);
                start += m;
            }
        };
        if threads == 1 {
            if let Some(p) = parts.pop() {
                run(x, p);
            }
            return;
        }
        std::thread::scope(|s| {
            for (xs, p) in x.chunks(per_thread * d).zip(parts) {
                s.spawn(|| run(xs, p));
            }
        });
    }

    /// g(x, t) for the rows of `x` (row-major `[n, d]`), all at training step `t`: `[n, d]`.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `x.len()` is not a multiple of d; [`Error::Config`] if `t ≥ T`.
    pub fn forward(&self, x: &[f32], t: usize) -> Result<Vec<f32>> {
        let n = self.check(x, t)?;
        let d = self.data_dim();
        let time = self.time_terms(t);
        let mut out = vec![0.0f32; n * d];
        self.parallel_rows(x, &mut [(&mut out, d)], |xs, m, outs| {
            let g = self.chunk_forward(xs, m, &time, None);
            outs[0].copy_from_slice(&g);
        });
        Ok(out)
    }

    /// The energy of each row (`[n]`) and its input gradient (`[n, d]`, the ε prediction) at
    /// training step `t`, for the energy `form`.
    ///
    /// # Errors
    ///
    /// As [`FrozenMlp::forward`].
    pub fn energy_and_grad(
        &self,
        form: EnergyForm,
        x: &[f32],
        t: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = self.check(x, t)?;
        let d = self.data_dim();
        let time = self.time_terms(t);
        let mut energy = vec![0.0f32; n];
        let mut grad = vec![0.0f32; n * d];
        self.parallel_rows(x, &mut [(&mut energy, 1), (&mut grad, d)], |xs, m, outs| {
            let [e, g] = outs else {
                unreachable!("two outputs")
            };
            self.chunk_energy(form, xs, m, &time, e, g);
        });
        Ok((energy, grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::Denoiser;
    use crate::nn::{EnergyMlp, MlpConfig, ParamStore};
    use crate::param::Parameterization;

    fn perturbed(store: &ParamStore, seed: u64) -> Result<()> {
        let mut rng = crate::random::seeded(seed);
        for (_, var) in store.vars() {
            let t = var.as_tensor();
            let noise = crate::random::normal_tensor(&mut rng, t.dims(), DType::F32, &Device::Cpu)?;
            var.set(&(t + (noise * 0.3)?)?)?;
        }
        Ok(())
    }

    fn points(n: usize, d: usize, seed: u64) -> Vec<f32> {
        crate::random::normal_vec(&mut crate::random::seeded(seed), n * d)
    }

    fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn matches_the_candle_network_and_its_energy_gradient() -> Result<()> {
        for d in [2, 3] {
            let cfg = MlpConfig {
                data_dim: d,
                hidden: 16,
                block_hidden: 24,
                num_blocks: 3,
                time_embed_dim: 8,
                num_timesteps: 10,
            };
            let store = ParamStore::new(5);
            let vb = store.var_builder(DType::F32, &Device::Cpu);
            let net = ResidualMlp::new(&cfg, Parameterization::Epsilon, vb)?;
            perturbed(&store, 6)?;
            let frozen = FrozenMlp::from_mlp(&net)?;
            for n in [1, 7, 1000] {
                let x = points(n, d, n as u64);
                let t = 4;
                let xt = Tensor::from_slice(&x, (n, d), &Device::Cpu)?;
                let tt = Tensor::from_vec(vec![t as f32; n], n, &Device::Cpu)?;
                let want = net
                    .forward(&xt, &tt, None)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let got = frozen.forward(&x, t)?;
                assert!(max_rel_err(&got, &want) < 1e-5, "forward d={d} n={n}");
                for form in [EnergyForm::SquaredResidual, EnergyForm::HalfNorm] {
                    let model = EnergyMlp::from_net(net.clone(), form);
                    let (e, g) = model.energy_and_grad(&xt, &tt)?;
                    let (e2, g2) = frozen.energy_and_grad(form, &x, t)?;
                    let e = e.to_vec1::<f32>()?;
                    let g = g.flatten_all()?.to_vec1::<f32>()?;
                    assert!(max_rel_err(&e2, &e) < 1e-5, "{form:?} energy d={d} n={n}");
                    assert!(max_rel_err(&g2, &g) < 1e-4, "{form:?} grad d={d} n={n}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors_and_empty_batches_are_empty() -> Result<()> {
        let store = ParamStore::new(1);
        let net = ResidualMlp::new(
            &MlpConfig {
                num_timesteps: 5,
                ..MlpConfig::default()
            },
            Parameterization::Epsilon,
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        let f = FrozenMlp::from_mlp(&net)?;
        assert!(matches!(f.forward(&[0.0; 3], 0), Err(Error::Shape(_))));
        assert!(matches!(f.forward(&[0.0; 2], 5), Err(Error::Config(_))));
        assert!(f.forward(&[], 0)?.is_empty());
        let (e, g) = f.energy_and_grad(EnergyForm::HalfNorm, &[], 0)?;
        assert!(e.is_empty() && g.is_empty());
        Ok(())
    }
}
