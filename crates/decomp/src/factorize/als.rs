//! Alternating least squares (Kent et al., *Resonator Networks 2*, Neural Computation 32(12),
//! 2020, §3.1): each factor in turn minimizes ‖s − (⊙_{g≠f} x̂_g) ⊙ C_fᵀ a_f‖² over its
//! coefficients a_f, with the other factors fixed. With p = ⊙_{g≠f} x̂_g the normal equations
//! are (C_f diag(p²) C_fᵀ) a_f = C_f (p ⊙ s), one M×M system per trial, batched as a
//! `[T, M, D] × [D, M]` matmul and solved by Cholesky.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::problem::{Problem, VsaKind};
use crate::trials::{ActiveTrials, Budget, Outcome, Progress};
use crate::{Result, linalg};
use recompose_vsa::planes::{self, Planes, PreparedCodebook};

/// Settings of alternating least squares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlsConfig {
    /// Relative ridge added to every normal-equation matrix.
    pub ridge: f64,
    /// Trials whose estimates change by less than this (mean absolute change per component)
    /// over a sweep count as converged.
    pub tolerance: f32,
}

impl Default for AlsConfig {
    fn default() -> Self {
        AlsConfig {
            ridge: 1e-6,
            tolerance: 1e-5,
        }
    }
}

/// Largest M²·D for which the pair-product matrix is built (256 MiB of f32).
const PAIR_LIMIT: usize = 1 << 26;

/// Whether the pair-product matrix `[M², D]` is built (M²·D at most [`PAIR_LIMIT`]).
fn builds_pairs(m: usize, d: usize) -> bool {
    m.checked_mul(m)
        .and_then(|mm| mm.checked_mul(d))
        .is_some_and(|x| x <= PAIR_LIMIT)
}

/// Peak bytes [`run`] allocates for `t` trials of a problem of `pc`'s sizes (MAP, `f32`, the
/// problem itself not counted):
///
/// - the transposed codebooks, F·M·D·4;
/// - with the pair-product matrices (M²·D ≤ 2²⁶): F·M²·D·4 kept, and while one is built the
///   broadcast product and its transpose, 2·M²·D·4;
/// - the estimates, their copy from the previous iteration and a new one, 3·F·t·D·4; the
///   product of the other factors, its square, weighted bound vectors and bound vectors,
///   (F + 4)·t·D·4;
/// - the batched Gram matrices `[t, M, M]` in `f32`, `f64` and on the host, 20·t·M², and
///   without the pair products the weighted codebooks `[t, M, D]`, t·M·D·4;
/// - the right-hand sides (`f32`, `f64`) and coefficients, 16·t·M.
pub(super) fn memory_estimate(
    pc: &crate::problem::ProblemConfig,
    t: usize,
) -> recompose_core::memory::Estimate {
    use recompose_core::memory::Estimate;
    let (f, m, d) = (pc.factors, pc.codebook_size, pc.dim);
    let mut e = Estimate::f32s(&[f, m, d]);
    if builds_pairs(m, d) {
        e += Estimate::f32s(&[f, m, m, d]) + Estimate::f32s(&[m, m, d]) * 2;
    } else {
        e += Estimate::f32s(&[t, m, d]);
    }
    e + Estimate::f32s(&[f, t, d]) * 3
        + Estimate::f32s(&[t, d]) * f.saturating_add(4)
        + Estimate::array(&[t, m, m], 20)
        + Estimate::array(&[t, m], 16)
}

pub(super) fn run(
    problem: &Problem,
    cfg: &AlsConfig,
    fc: Budget,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let pc = &problem.config;
    let (nf, m, d, t) = (pc.factors, pc.codebook_size, pc.dim, pc.trials);
    let device = super::device_of(problem);
    let cbs: Vec<PreparedCodebook> = (0..nf)
        .map(|f| Ok(PreparedCodebook::new(problem.codebook(f)?)?))
        .collect::<Result<_>>()?;
    // For moderate M, every Gram matrix C diag(w) Cᵀ is one row of W · Pᵀ, with P the
    // `[M², D]` matrix of codeword products c_m ⊙ c_n: a single large matmul for all trials.
    let pairs: Vec<Option<Tensor>> = cbs
        .iter()
        .map(|cb| -> Result<Option<Tensor>> {
            if !builds_pairs(m, d) {
                return Ok(None);
            }
            let c = &cb.c[0];
            let p = c.unsqueeze(1)?.broadcast_mul(&c.unsqueeze(0)?)?; // [M, M, D]
            Ok(Some(p.reshape((m * m, d))?.t()?.contiguous()?))
        })
        .collect::<Result<_>>()?;
    let mut ids: Vec<usize> = (0..t).collect();
    let mut s = problem.bound_planes()?;
    let mut est: Vec<Planes> = Vec::with_capacity(nf);
    for cb in &cbs {
        let sup = planes::l2_normalize(&vec![cb.c[0].sum_keepdim(0)?])?;
        est.push(vec![sup[0].broadcast_as((t, d))?.contiguous()?]);
    }
    let mut out = Outcome::new(t, nf);
    for it in 1..=fc.max_iters {
        let old = est.clone();
        let n = ids.len();
        for f in 0..nf {
            let p = planes::product_except(VsaKind::Map, &est, Some(f))?
                .expect("at least two factors")[0]
                .clone();
            let rhs = (&p * &s[0])?.matmul(&cbs[f].ct[0])?; // [n, M]
            let gram = match &pairs[f] {
                Some(pt) => p.sqr()?.matmul(pt)?, // [n, M²]
                None => {
                    let w = p.sqr()?.unsqueeze(1)?; // [n, 1, D]
                    let cw = cbs[f].c[0].unsqueeze(0)?.broadcast_mul(&w)?; // [n, M, D]
                    cw.broadcast_matmul(&cbs[f].ct[0])? // [n, M, M]
                }
            };
            let gram: Vec<f64> = gram.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            let rhs: Vec<f64> = rhs.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            let mut coef = Vec::with_capacity(n * m);
            for i in 0..n {
                let a = linalg::solve_spd(
                    &gram[i * m * m..(i + 1) * m * m],
                    m,
                    &rhs[i * m..(i + 1) * m],
                    cfg.ridge,
                )?;
                coef.extend(a.into_iter().map(|v| v as f32));
            }
            let coef = Tensor::from_vec(coef, (n, m), &device)?;
            // Right-hand side, batched Gram and projection products.
            let (nn, dd, mm) = (n as f64, d as f64, m as f64);
            out.matmul_flops += 2.0 * nn * dd * mm * (2.0 + mm);
            est[f] = planes::l2_normalize(&vec![coef.matmul(&cbs[f].c[0])?])?;
        }
        // Stop trials whose estimates no longer move (up to the sign ambiguity of each factor's
        // scale, which the L2 normalization fixes only up to ±).
        let mut change = Tensor::zeros(n, DType::F32, &device)?;
        for (new, prev) in est.iter().zip(&old) {
            let diff = (&new[0] - &prev[0])?.abs()?.sum(1)?;
            let sum = (&new[0] + &prev[0])?.abs()?.sum(1)?;
            change = (change + diff.minimum(&sum)?)?;
        }
        let change = change.to_vec1::<f32>()?;
        let tol = cfg.tolerance * d as f32;
        let last = it == fc.max_iters;
        let stop: Vec<bool> = change.iter().map(|&c| last || c <= tol).collect();
        for (i, &c) in change.iter().enumerate() {
            if c <= tol {
                out.converged[ids[i]] = true;
            }
        }
        if stop.iter().any(|&x| x) {
            let mut act = ActiveTrials { ids, s, est };
            let books: Vec<&PreparedCodebook> = cbs.iter().collect();
            act.retire(VsaKind::Map, &stop, None, &books, it, &mut out)?;
            (ids, s, est) = (act.ids, act.s, act.est);
        }
        progress(Progress {
            iteration: it,
            max_iters: fc.max_iters,
            active: ids.len(),
        });
        if ids.is_empty() {
            break;
        }
    }
    Ok(out)
}
