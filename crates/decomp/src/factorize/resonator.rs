//! The resonator loop shared by the classic, stochastic / sparse and attention resonators.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use recompose_vsa::random;
use serde::{Deserialize, Serialize};

use crate::problem::{Problem, VsaKind};
use crate::trials::{ActiveTrials, Budget, Outcome, Progress, Update};
use crate::{Error, Result, linalg};
use recompose_core::gemm;
use recompose_core::ops::{elementwise, sparse};
use recompose_vsa::planes::{self, Planes, PreparedCodebook};

/// Which weight matrix maps the unbound vector back to a factor estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// Outer-product weights W = CᵀC.
    OuterProduct,
    /// Ordinary-least-squares weights W = Cᵀ(CCᵀ)⁻¹C, the projection onto the codebook's span
    /// (MAP only).
    Ols,
}

/// Non-linearity applied to the codebook similarities before projecting back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Activation {
    /// The similarities themselves (classic resonator).
    Linear,
    /// The stochastic, sparse activation of the in-memory factorizer (Langenegger et al. 2023):
    /// similarities normalized by D, plus Gaussian noise whose standard deviation is annealed
    /// linearly from `noise_start` (first iteration) to `noise_end` (last), then sparsified.
    Stochastic {
        /// Noise standard deviation at the first iteration.
        noise_start: f32,
        /// Noise standard deviation at the iteration limit.
        noise_end: f32,
        /// Keep only the `top_k` largest-magnitude similarities (`None`: keep all).
        top_k: Option<usize>,
        /// Zero similarities whose magnitude is below this (after normalization by D).
        threshold: Option<f32>,
    },
    /// Attention over the codebook, softmax(β·a/D) (Yeung et al. 2024).
    Attention {
        /// Inverse temperature β.
        beta: f32,
    },
}

/// How a projected estimate is brought back onto the hypervector space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// Bipolar sign (ties → +1) for MAP; unit phasors for FHRR.
    Sign,
    /// Scale to Euclidean norm √D (MAP); unit phasors for FHRR.
    L2,
}

/// Settings of a resonator network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResonatorConfig {
    /// Weight matrix.
    pub weights: Weights,
    /// Update order.
    pub update: Update,
    /// Activation on the similarities.
    pub activation: Activation,
    /// Normalization of the estimates.
    pub normalization: Normalization,
    /// Trials whose estimates change by less than this (mean absolute change per component)
    /// over a sweep count as converged; 0 demands an exact fixed point.
    pub tolerance: f32,
    /// When to stop a trial.
    pub stop: StopRule,
}

/// When a trial counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StopRule {
    /// The estimates are a fixed point of a whole sweep (up to `tolerance`).
    FixedPoint,
    /// The codewords that best match the unbound vectors reconstruct the input:
    /// cos(⊙_g c_g\[î_g\], s) ≥ `threshold`, with î_g = argmax |C_g u_g|. Stochastic dynamics use
    /// it so that noise can still carry a trial out of a spurious fixed point; only the input
    /// and the codebooks are used, never the ground truth. A wrong decoding reconstructs s with
    /// cosine about 1/√D, so the threshold must sit well above that.
    Reconstruction {
        /// Cosine similarity that counts as a reconstruction.
        threshold: f32,
    },
}

impl ResonatorConfig {
    /// The classic resonator: OP weights, sequential updates, sign normalization.
    pub fn classic() -> Self {
        ResonatorConfig {
            weights: Weights::OuterProduct,
            update: Update::Sequential,
            activation: Activation::Linear,
            normalization: Normalization::Sign,
            tolerance: 0.0,
            stop: StopRule::FixedPoint,
        }
    }

    /// The stochastic, sparse resonator with the settings tuned at D = 1000, F = 3, M = 50
    /// (`cargo xtask tune stochastic`): top-20 activation and noise annealed from 0.02 to 0;
    /// a trial stops once its estimates reconstruct the input (cos ≥ 0.5).
    pub fn stochastic() -> Self {
        ResonatorConfig {
            activation: Activation::Stochastic {
                noise_start: 0.02,
                noise_end: 0.0,
                top_k: Some(20),
                threshold: None,
            },
            stop: StopRule::Reconstruction { threshold: 0.5 },
            ..ResonatorConfig::classic()
        }
    }

    /// The attention resonator with L2 normalization and β = 10, the best of a sweep over
    /// β ∈ {2, 5, 10, 20, 40, 80, 160, 320} × {sign, L2} at D = 1000, F = 3, M = 50 (validation
    /// seed 1). Estimates count as converged once they move by less than 10⁻⁴ per component.
    pub fn attention() -> Self {
        ResonatorConfig {
            activation: Activation::Attention { beta: 10.0 },
            normalization: Normalization::L2,
            tolerance: 1e-4,
            ..ResonatorConfig::classic()
        }
    }

    /// Whether the dynamics are deterministic and on a finite state space, so that a repeated
    /// state proves a limit cycle.
    fn detects_limit_cycles(&self, kind: VsaKind) -> bool {
        kind == VsaKind::Map
            && self.normalization == Normalization::Sign
            && !matches!(self.activation, Activation::Stochastic { .. })
    }

    fn validate(&self, kind: VsaKind, m: usize) -> Result<()> {
        if self.weights == Weights::Ols && kind != VsaKind::Map {
            return Err(Error::Unsupported {
                method: "resonator-ols",
                vsa: kind.name(),
            });
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(Error::Config(format!(
                "tolerance must be finite and non-negative, got {}",
                self.tolerance
            )));
        }
        match &self.activation {
            Activation::Linear => {}
            Activation::Stochastic {
                noise_start,
                noise_end,
                top_k,
                threshold,
            } => {
                for (name, v) in [("noise_start", noise_start), ("noise_end", noise_end)] {
                    if !(v.is_finite() && *v >= 0.0) {
                        return Err(Error::Config(format!(
                            "{name} must be finite and non-negative, got {v}"
                        )));
                    }
                }
                if *top_k == Some(0) {
                    return Err(Error::Config("top_k must be at least 1".into()));
                }
                if let Some(t) = threshold
                    && !t.is_finite()
                {
                    return Err(Error::Config(format!("threshold must be finite, got {t}")));
                }
            }
            Activation::Attention { beta } => {
                if !beta.is_finite() || *beta <= 0.0 {
                    return Err(Error::Config(format!(
                        "inverse temperature beta must be finite and positive, got {beta}"
                    )));
                }
            }
        }
        let _ = m;
        Ok(())
    }
}

/// Iterations of limit-cycle history the memory estimate covers (see [`memory_estimate`]).
const HISTORY_ITERS: usize = 1000;

/// Peak bytes [`run`] allocates for a shard of `n` trials of a problem of `pc`'s sizes (the
/// problem's codebooks and bound vectors are not counted; P planes, `f32` everywhere):
///
/// - the transposed codebooks `[D, M]` of every factor and plane, F·P·M·D·4 (the codewords
///   themselves are views of the problem);
/// - OLS: the inverse Gram matrices F·M²·4 kept, and while one is computed its `f32` and
///   `f64` Gram matrices, host copy, the inverse's workspace and result, 40·M² bytes;
/// - the estimates and their copy from the previous sweep, 2·F·P·n·D·4; one factor update's
///   unbound vectors, projection, new estimate and bound vectors, 4·P·n·D·4; the rows kept when
///   trials retire, (F+1)·P·n·D·4;
/// - the similarities `[n, M]` per plane and the activation's temporaries: 2 + 1 (OLS) + 4
///   (attention: scaled logits, exponentials, sums, quotient) or + 5·P (stochastic: scaled,
///   noise, noisy, top-k, threshold) arrays of P·n·M·4 bytes, plus 2 for FHRR's real and
///   imaginary products;
/// - deterministic sign dynamics on MAP: the signature matrix `[D, 4]`, the signatures
///   `[n, 4F]` (tensor and host copy) and the limit-cycle history, one key of 4F `i64` plus
///   about 64 bytes of map and vector overhead per trial and iteration, for
///   min(`max_iters`, 1000) iterations (a trial in a longer transient grows it further, by
///   (32·F + 64)·n bytes per iteration);
/// - a random stream per trial, 512·n bytes.
pub(super) fn memory_estimate(
    rc: &ResonatorConfig,
    pc: &crate::problem::ProblemConfig,
    n: usize,
    max_iters: usize,
) -> recompose_core::memory::Estimate {
    use recompose_core::memory::Estimate;
    let (f, m, d, p) = (pc.factors, pc.codebook_size, pc.dim, pc.vsa.planes());
    let mut e = Estimate::f32s(&[f, p, m, d]);
    if rc.weights == Weights::Ols {
        e += Estimate::f32s(&[f, m, m]) + Estimate::array(&[m, m], 40);
    }
    e += Estimate::f32s(&[f, p, n, d]) * 2
        + Estimate::f32s(&[p, n, d]) * 4
        + Estimate::f32s(&[f.saturating_add(1), p, n, d]);
    let mut sims = 2 + usize::from(rc.weights == Weights::Ols);
    sims += match rc.activation {
        Activation::Linear => 0,
        Activation::Attention { .. } => 4,
        Activation::Stochastic { .. } => 5 * p,
    };
    if pc.vsa == VsaKind::Fhrr {
        sims += 2;
    }
    e += Estimate::f32s(&[p, n, m]) * sims;
    if rc.detects_limit_cycles(pc.vsa) {
        let key = Estimate::array(&[4, f], 8) + Estimate::bytes(64);
        e += Estimate::f32s(&[d, 4])
            + Estimate::f32s(&[n, 4, f]) * 2
            + key * n * max_iters.min(HISTORY_ITERS);
    }
    e + Estimate::array(&[n], 512)
}

/// Per-factor tensors prepared once per run.
struct FactorData {
    cb: PreparedCodebook,
    /// OLS: (C Cᵀ)⁻¹, `[M, M]`.
    gram_inv: Option<Tensor>,
}

/// Runs the resonator on every trial of `problem`, whose first trial is trial `trial_offset`
/// of the caller's whole problem (this keys the per-trial random streams).
pub(super) fn run(
    problem: &Problem,
    rc: &ResonatorConfig,
    fc: Budget,
    trial_offset: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let pc = &problem.config;
    let kind = pc.vsa;
    let (nf, m, d, t) = (pc.factors, pc.codebook_size, pc.dim, pc.trials);
    rc.validate(kind, m)?;
    let device = super::device_of(problem);
    // One random stream per trial, keyed by its index in the whole problem, so that a trial's
    // noise does not depend on which other trials share its batch or shard.
    let mut rngs: Vec<random::SeededRng> = (0..t)
        .map(|i| {
            let mut r = random::seeded(fc.seed ^ 0x9E37_79B9_7F4A_7C15);
            r.set_stream((trial_offset + i) as u64);
            r
        })
        .collect();

    let mut factors = Vec::with_capacity(nf);
    for f in 0..nf {
        let cb = PreparedCodebook::new(problem.codebook(f)?)?;
        let gram_inv = match rc.weights {
            Weights::OuterProduct => None,
            Weights::Ols => Some(gram_inverse(&cb.c[0], &device)?),
        };
        factors.push(FactorData { cb, gram_inv });
    }

    // Initial estimates: the normalized superposition of every codebook, for all trials.
    let mut est = Vec::with_capacity(nf);
    for fd in &factors {
        let sup: Planes = fd
            .cb
            .c
            .iter()
            .map(|p| p.sum_keepdim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let sup = normalize(kind, rc.normalization, &sup)?;
        est.push(
            sup.iter()
                .map(|p| p.broadcast_as((t, d))?.contiguous())
                .collect::<candle_core::Result<Vec<_>>>()?,
        );
    }
    let mut act = ActiveTrials {
        ids: (0..t).collect(),
        s: problem.bound_planes()?,
        est,
    };

    let mut out = super::Outcome::new(t, nf);
    let cycles = rc.detects_limit_cycles(kind);
    let sig = if cycles {
        Some(signature_matrix(d, &device, fc.seed)?)
    } else {
        None
    };
    let mut history: Vec<HashMap<Vec<i64>, usize>> =
        vec![HashMap::new(); if cycles { t } else { 0 }];

    for it in 1..=fc.max_iters {
        let old = act.est.clone();
        let noise_std = match &rc.activation {
            Activation::Stochastic {
                noise_start,
                noise_end,
                ..
            } => {
                let frac = if fc.max_iters > 1 {
                    (it - 1) as f32 / (fc.max_iters - 1) as f32
                } else {
                    0.0
                };
                noise_start + (noise_end - noise_start) * frac
            }
            _ => 0.0,
        };
        let mut decoded: Vec<Tensor> = Vec::new();
        // Per-row L1 change of the sweep, accumulated by the fused sign kernel when it applies.
        let mut sweep_change = vec![0f32; act.ids.len()];
        let mut fused_change = true;
        for f in 0..nf {
            let source = match rc.update {
                Update::Sequential => &act.est,
                Update::Synchronous => &old,
            };
            let u = planes::unbind_others(kind, &act.s, source, f)?;
            let fd = &factors[f];
            let mut a = planes::similarities(kind, &u, &fd.cb)?;
            if matches!(rc.stop, StopRule::Reconstruction { .. }) {
                decoded.push(planes::magnitude(kind, &a)?.argmax(1)?);
            }
            if let Some(gi) = &fd.gram_inv {
                a = vec![gemm::matmul(&a[0], gi)?];
            }
            let a = activate(
                kind,
                &rc.activation,
                a,
                d,
                noise_std,
                &act.ids,
                &mut rngs,
                &device,
            )?;
            let x = planes::project(kind, &a, &fd.cb)?;
            // Real matmul count: MAP 1 + 1; FHRR 4 for the similarities, 2 or 4 back.
            let n = act.ids.len() as f64;
            let per = 2.0 * n * d as f64 * m as f64;
            out.matmul_flops += match kind {
                VsaKind::Map => 2.0 * per,
                VsaKind::Fhrr => (4 + 2 * a.len()) as f64 * per,
            };
            if fd.gram_inv.is_some() {
                out.matmul_flops += 2.0 * n * (m * m) as f64;
            }
            if kind == VsaKind::Map && rc.normalization == Normalization::Sign {
                let (est, change) = elementwise::sign_with_change(&x[0], &old[f][0])?;
                act.est[f] = vec![est];
                for (acc, c) in sweep_change.iter_mut().zip(change) {
                    *acc += c;
                }
            } else {
                act.est[f] = normalize(kind, rc.normalization, &x)?;
                fused_change = false;
            }
        }

        // Stopping: fixed points or reconstructions, then limit cycles.
        let n = act.ids.len();
        let mut stop = vec![false; n];
        match rc.stop {
            StopRule::FixedPoint => {
                let change = if fused_change {
                    sweep_change
                } else {
                    let new: Vec<&Tensor> = act.est.iter().flatten().collect();
                    let prev: Vec<&Tensor> = old.iter().flatten().collect();
                    elementwise::row_l1_change(&new, &prev)?
                };
                let tol = rc.tolerance * d as f32;
                for (i, c) in change.iter().enumerate() {
                    if *c <= tol {
                        stop[i] = true;
                        out.converged[act.ids[i]] = true;
                    }
                }
            }
            StopRule::Reconstruction { threshold } => {
                let idx = decoded
                    .iter()
                    .map(|t| t.to_vec1::<u32>())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let books: Vec<&Tensor> = factors.iter().map(|fd| &fd.cb.c[0]).collect();
                let fast = match kind {
                    VsaKind::Map => sparse::reconstruction_cosine_real(&books, &idx, &act.s[0])?,
                    VsaKind::Fhrr => None,
                };
                let cos = match fast {
                    Some(cos) => cos,
                    None => {
                        let words = decoded
                            .iter()
                            .zip(&factors)
                            .map(|(idx, fd)| Ok(planes::select_rows(&fd.cb.c, idx)?))
                            .collect::<Result<Vec<_>>>()?;
                        reconstruction_cosine(kind, &words, &act.s)?
                    }
                };
                for (i, c) in cos.iter().enumerate() {
                    if *c >= threshold {
                        stop[i] = true;
                        out.converged[act.ids[i]] = true;
                    }
                }
            }
        }
        if let Some(r) = &sig {
            let mut parts = Vec::with_capacity(nf);
            for x in &act.est {
                parts.push(gemm::matmul(&x[0], r)?);
            }
            let sigs = Tensor::cat(&parts, 1)?.to_vec2::<f32>()?;
            for (i, row) in sigs.into_iter().enumerate() {
                if stop[i] {
                    continue;
                }
                let key: Vec<i64> = row.iter().map(|v| *v as i64).collect();
                let h = &mut history[act.ids[i]];
                match h.entry(key) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        stop[i] = true;
                        out.limit_cycle[act.ids[i]] = true;
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(it);
                    }
                }
            }
        }
        let last = it == fc.max_iters;
        if last {
            stop.iter_mut().for_each(|s| *s = true);
        }
        if stop.iter().any(|&s| s) {
            // A reconstruction stop answers with the codewords that reconstructed s.
            let answer = match rc.stop {
                StopRule::Reconstruction { .. } => Some(
                    decoded
                        .iter()
                        .map(|t| t.to_vec1::<u32>())
                        .collect::<candle_core::Result<Vec<_>>>()?,
                ),
                StopRule::FixedPoint => None,
            };
            let books: Vec<&PreparedCodebook> = factors.iter().map(|fd| &fd.cb).collect();
            act.retire(kind, &stop, answer.as_deref(), &books, it, &mut out)?;
        }
        progress(Progress {
            iteration: it,
            max_iters: fc.max_iters,
            active: act.ids.len(),
        });
        if act.ids.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// cos(⊙_g x_g, s) per trial (the real part of the normalized inner product for FHRR).
fn reconstruction_cosine(kind: VsaKind, xs: &[Planes], s: &Planes) -> Result<Vec<f32>> {
    let prod = planes::product_except(kind, xs, None)?
        .ok_or_else(|| Error::Config("at least two factors are needed".into()))?;
    let mut dot = (&prod[0] * &s[0])?.sum(1)?;
    let mut pp = prod[0].sqr()?.sum(1)?;
    let mut ss = s[0].sqr()?.sum(1)?;
    for (p, q) in prod.iter().zip(s).skip(1) {
        dot = (dot + (p * q)?.sum(1)?)?;
        pp = (pp + p.sqr()?.sum(1)?)?;
        ss = (ss + q.sqr()?.sum(1)?)?;
    }
    let cos = dot.div(&(pp * ss)?.sqrt()?.affine(1.0, 1e-30)?)?;
    Ok(cos.to_vec1::<f32>()?)
}

/// The activation step on similarities `[T, M]` per plane.
#[allow(clippy::too_many_arguments)]
fn activate(
    kind: VsaKind,
    activation: &Activation,
    a: Planes,
    d: usize,
    noise_std: f32,
    ids: &[usize],
    rngs: &mut [random::SeededRng],
    device: &Device,
) -> Result<Planes> {
    Ok(match activation {
        Activation::Linear => a,
        Activation::Stochastic {
            top_k, threshold, ..
        } => {
            if a.len() == 1
                && let Some(out) = sparse::sparse_noisy_activation(
                    &a[0],
                    1.0 / d as f32,
                    noise_std,
                    ids,
                    rngs,
                    *top_k,
                    *threshold,
                )?
            {
                return Ok(vec![out]);
            }
            let (rows, cols) = a[0].dims2()?;
            let mut a: Planes = a
                .iter()
                .map(|p| p.affine(1.0 / d as f64, 0.0))
                .collect::<candle_core::Result<Vec<_>>>()?;
            if noise_std > 0.0 {
                // Row i draws its noise, for every plane, from its trial's own stream.
                let planes = a.len();
                let mut z = vec![vec![0f32; rows * cols]; planes];
                for (i, &id) in ids.iter().enumerate() {
                    for zp in z.iter_mut() {
                        let draw = random::normal_vec(&mut rngs[id], cols);
                        zp[i * cols..(i + 1) * cols].copy_from_slice(&draw);
                    }
                }
                for (p, zp) in a.iter_mut().zip(z) {
                    let zt = Tensor::from_vec(zp, (rows, cols), device)?;
                    *p = (&*p + zt.affine(noise_std as f64, 0.0)?)?;
                }
            }
            if let Some(k) = top_k {
                a = planes::keep_top_k(kind, &a, *k)?;
            }
            if let Some(th) = threshold {
                a = planes::threshold(kind, &a, *th)?;
            }
            a
        }
        Activation::Attention { beta } => {
            let logits = a[0].affine(*beta as f64 / d as f64, 0.0)?;
            vec![planes::softmax_rows(&logits)?]
        }
    })
}

fn normalize(kind: VsaKind, n: Normalization, x: &Planes) -> Result<Planes> {
    match (kind, n) {
        (VsaKind::Map, Normalization::Sign) => Ok(vec![planes::sign(&x[0])?]),
        (VsaKind::Map, Normalization::L2) => Ok(planes::l2_normalize(x)?),
        (VsaKind::Fhrr, _) => Ok(planes::phase_normalize(x)?),
    }
}

/// (C Cᵀ)⁻¹ for a real codebook `[M, D]`, computed in f64 on the host.
fn gram_inverse(c: &Tensor, device: &Device) -> Result<Tensor> {
    let m = c.dim(0)?;
    let g = c.matmul(&c.t()?)?.to_dtype(DType::F64)?;
    let g: Vec<f64> = g.flatten_all()?.to_vec1()?;
    let inv = linalg::inverse_spd(&g, m, 0.0)?;
    Ok(Tensor::from_vec(inv, (m, m), device)?.to_dtype(DType::F32)?)
}

/// Random integer projections `[D, 4]` that fingerprint a bipolar state exactly in f32: with
/// entries at most 2²⁴/D every partial sum is an exactly representable integer, so equal states
/// give equal signatures whatever the summation order, and distinct states collide with
/// probability about (D/2²⁴)⁴.
fn signature_matrix(d: usize, device: &Device, seed: u64) -> Result<Tensor> {
    use rand::Rng;
    let mut rng = random::seeded(seed ^ 0xC3A5_C85C_97CB_3127);
    let hi = ((1u64 << 24) / d as u64).max(2) as u32;
    let v: Vec<f32> = (0..d * 4)
        .map(|_| rng.random_range(1..=hi) as f32)
        .collect();
    Ok(Tensor::from_vec(v, (d, 4), device)?)
}
