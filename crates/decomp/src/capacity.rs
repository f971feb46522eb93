//! Operational capacity (Kent et al., *Resonator Networks 2*, Neural Computation 32(12), 2020,
//! §4): the largest codebook size M at which a method still recovers every factor of a bound
//! vector with a target exact accuracy (99% in the paper), at a fixed D and F and with the
//! iteration limit max(100, 0.001·M^F).
//!
//! Exact accuracy falls with M, so the search doubles M until the accuracy drops below the
//! target and then bisects. Every evaluation uses a fresh problem drawn from a seed derived from
//! the caller's seed and M, so the search is reproducible.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::factorize::{factorize, kent_max_iters, FactorizeConfig, FactorizeReport, Method};
use crate::problem::{Noise, Problem, ProblemConfig, VsaKind};
use crate::{Error, Result};

/// Iteration limit of a capacity search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IterLimit {
    /// A fixed number of iterations.
    Fixed(usize),
    /// The published protocol, max(100, 0.001·M^F).
    Kent,
}

impl IterLimit {
    /// The limit for codebook size `m` and `f` factors.
    pub fn for_problem(self, m: usize, f: usize) -> usize {
        match self {
            IterLimit::Fixed(n) => n,
            IterLimit::Kent => kent_max_iters(m, f),
        }
    }
}

/// What to search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityConfig {
    /// Factorization method.
    pub method: Method,
    /// VSA model.
    pub vsa: VsaKind,
    /// Dimension D.
    pub dim: usize,
    /// Number of factors F.
    pub factors: usize,
    /// Target exact accuracy, in (0, 1].
    pub target: f64,
    /// Trials per evaluated codebook size.
    pub trials: usize,
    /// Iteration limit.
    pub max_iters: IterLimit,
    /// Seed of the problems and the method.
    pub seed: u64,
    /// Largest M the search may try.
    pub m_limit: usize,
}

/// One evaluated codebook size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityPoint {
    /// Codebook size M.
    pub codebook: usize,
    /// Iteration limit used.
    pub max_iters: usize,
    /// Exact accuracy reached.
    pub exact_accuracy: f64,
    /// Factor accuracy reached.
    pub factor_accuracy: f64,
}

/// Result of a capacity search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// Largest M whose exact accuracy reached the target (0 if even M = 1 failed).
    pub m_max: usize,
    /// The evaluation at `m_max` (absent if `m_max` is 0).
    pub at_m_max: Option<CapacityPoint>,
    /// Every evaluation, in the order made.
    pub evaluations: Vec<CapacityPoint>,
}

/// Searches the operational capacity; `progress` sees every evaluation as it finishes.
pub fn capacity(
    config: &CapacityConfig,
    device: &Device,
    progress: &mut dyn FnMut(&CapacityPoint),
) -> Result<CapacityReport> {
    if !(config.target > 0.0 && config.target <= 1.0) {
        return Err(Error::Config(format!(
            "target accuracy must lie in (0, 1], got {}",
            config.target
        )));
    }
    if config.m_limit == 0 {
        return Err(Error::Config("the largest codebook size must be at least 1".into()));
    }
    let mut evaluations: Vec<CapacityPoint> = Vec::new();
    let mut eval = |m: usize| -> Result<CapacityPoint> {
        let pc = ProblemConfig {
            vsa: config.vsa,
            dim: config.dim,
            factors: config.factors,
            codebook_size: m,
            trials: config.trials,
            noise: Noise::default(),
            seed: config.seed.wrapping_mul(1_000_003).wrapping_add(m as u64),
        };
        let problem = Problem::generate(&pc, device)?;
        let fc = FactorizeConfig {
            method: config.method.clone(),
            max_iters: config.max_iters.for_problem(m, config.factors),
            seed: pc.seed,
        };
        let r: FactorizeReport = factorize(&problem, &fc, &mut |_| {})?;
        let point = CapacityPoint {
            codebook: m,
            max_iters: fc.max_iters,
            exact_accuracy: r.exact_accuracy,
            factor_accuracy: r.factor_accuracy,
        };
        progress(&point);
        evaluations.push(point.clone());
        Ok(point)
    };
    let passes = |p: &CapacityPoint| p.exact_accuracy >= config.target;

    // Bracket: lo passes (or is 0), hi fails (or is past the limit).
    let mut lo: Option<CapacityPoint> = None;
    let mut hi = None;
    let mut m = 8.min(config.m_limit);
    loop {
        let p = eval(m)?;
        if passes(&p) {
            lo = Some(p);
            if m == config.m_limit {
                break;
            }
            m = (m * 2).min(config.m_limit);
        } else {
            hi = Some(m);
            break;
        }
    }
    if let Some(hi) = hi {
        let mut lo_m = lo.as_ref().map_or(0, |p| p.codebook);
        let mut hi_m = hi;
        while hi_m - lo_m > 1 {
            let mid = lo_m + (hi_m - lo_m) / 2;
            let p = eval(mid)?;
            if passes(&p) {
                lo_m = mid;
                lo = Some(p);
            } else {
                hi_m = mid;
            }
        }
    }
    drop(eval);
    Ok(CapacityReport {
        m_max: lo.as_ref().map_or(0, |p| p.codebook),
        at_m_max: lo,
        evaluations,
    })
}
