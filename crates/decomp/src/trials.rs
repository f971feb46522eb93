//! The state every factorization method shares: the trials of a batch, their outcome, the
//! progress reports and the run budget.
//!
//! The solvers of [`crate::factorize`] (the resonator family, ALS, coupled diffusion) all run a
//! batch of independent trials, stop each trial on its own, and record per trial the decoded
//! indices, the iterations used and how it stopped ([`Outcome`]). The tensor solvers keep the
//! active trials' bound vectors and estimates in [`ActiveTrials`], from which stopped trials are
//! retired; every solver reports [`Progress`] after each iteration. This module imports no
//! solver, so that every solver can import it.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::problem::VsaKind;
use recompose_vsa::planes;

/// The budget and seed every solver receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Iteration limit (one iteration = one update of all F factors).
    pub max_iters: usize,
    /// Seed of the method's own random draws.
    pub seed: u64,
}

/// Order of the factor updates within one iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Update {
    /// Factor f is updated from the already-updated estimates of factors < f.
    Sequential,
    /// All factors are updated from the previous iteration's estimates.
    Synchronous,
}

/// Progress of a running factorization: the iteration just finished and how many trials are
/// still active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Iterations done.
    pub iteration: usize,
    /// Iteration limit.
    pub max_iters: usize,
    /// Trials not yet stopped.
    pub active: usize,
}

/// Per-trial outcome collected by the solvers.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub predictions: Vec<u32>,
    pub iterations: Vec<u32>,
    pub converged: Vec<bool>,
    pub limit_cycle: Vec<bool>,
    pub matmul_flops: f64,
}

impl Outcome {
    pub(crate) fn new(trials: usize, factors: usize) -> Self {
        Outcome {
            predictions: vec![0; trials * factors],
            iterations: vec![0; trials],
            converged: vec![false; trials],
            limit_cycle: vec![false; trials],
            matmul_flops: 0.0,
        }
    }
}

/// The state of the trials still running: their original indices, bound vectors and current
/// estimates (one [`planes::Planes`] per factor), all restricted to the active rows.
pub(crate) struct ActiveTrials {
    /// Original trial index of every active row.
    pub ids: Vec<usize>,
    /// Bound vectors of the active trials.
    pub s: planes::Planes,
    /// Current estimate of every factor.
    pub est: Vec<planes::Planes>,
}

impl ActiveTrials {
    /// Records the rows marked in `stop` (their answer, and the iteration `it`) and removes
    /// them from the batch. A trial whose `out.converged` flag is set takes its answer from
    /// `answer` (per factor, per active row) when given; the others are decoded from their
    /// estimates by largest absolute similarity.
    pub(crate) fn retire(
        &mut self,
        kind: VsaKind,
        stop: &[bool],
        answer: Option<&[Vec<u32>]>,
        codebooks: &[&planes::PreparedCodebook],
        it: usize,
        out: &mut Outcome,
    ) -> Result<()> {
        let nf = codebooks.len();
        let device = self.s[0].device().clone();
        let rows = |want: bool| -> Vec<u32> {
            (0..stop.len())
                .filter(|&i| stop[i] == want)
                .map(|i| i as u32)
                .collect()
        };
        let (done, keep) = (rows(true), rows(false));
        let done_t = Tensor::from_vec(done.clone(), done.len(), &device)?;
        for (f, cb) in codebooks.iter().enumerate() {
            let x = planes::select_rows(&self.est[f], &done_t)?;
            let idx = planes::decode(kind, &x, cb)?;
            for (k, &row) in done.iter().enumerate() {
                let trial = self.ids[row as usize];
                out.predictions[trial * nf + f] = match answer {
                    Some(ans) if out.converged[trial] => ans[f][row as usize],
                    _ => idx[k],
                };
            }
        }
        for &row in &done {
            out.iterations[self.ids[row as usize]] = it as u32;
        }
        if keep.is_empty() {
            self.ids.clear();
            return Ok(());
        }
        let keep_t = Tensor::from_vec(keep.clone(), keep.len(), &device)?;
        self.ids = keep.iter().map(|&i| self.ids[i as usize]).collect();
        self.s = planes::select_rows(&self.s, &keep_t)?;
        for e in self.est.iter_mut() {
            *e = planes::select_rows(e, &keep_t)?;
        }
        Ok(())
    }
}
