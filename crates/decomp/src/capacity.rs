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

use recompose_core::memory::{Estimate, MemoryLimit};

use crate::factorize::{
    FactorizeConfig, FactorizeReport, Method, factorize_within, kent_max_iters, pipeline_estimate,
};
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

impl std::str::FromStr for IterLimit {
    type Err = Error;
    /// A positive integer, or `kent` for the published protocol.
    fn from_str(s: &str) -> Result<Self> {
        if s == "kent" {
            return Ok(IterLimit::Kent);
        }
        match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(IterLimit::Fixed(n)),
            _ => Err(Error::Config(format!(
                "iteration limit must be a positive integer or 'kent', got '{s}'"
            ))),
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

/// Grid points evaluated inside the bracket before the curve is fitted.
const GRID_POINTS: usize = 6;

impl CapacityConfig {
    /// Peak bytes a search allocates: a problem of the largest codebook size it may try,
    /// `m_limit` ([`ProblemConfig::memory_estimate`]), and its factorization
    /// ([`FactorizeConfig::memory_estimate`]); smaller codebooks need less.
    pub fn memory_estimate(&self) -> Estimate {
        let pc = self.problem_config(self.m_limit, self.seed);
        let fc = self.factorize_config(self.m_limit, self.seed);
        pipeline_estimate(&pc, &fc)
    }

    fn problem_config(&self, m: usize, seed: u64) -> ProblemConfig {
        ProblemConfig {
            vsa: self.vsa,
            dim: self.dim,
            factors: self.factors,
            codebook_size: m,
            trials: self.trials,
            noise: Noise::default(),
            seed,
        }
    }

    fn factorize_config(&self, m: usize, seed: u64) -> FactorizeConfig {
        FactorizeConfig {
            method: self.method.clone(),
            max_iters: self.max_iters.for_problem(m, self.factors),
            seed,
            threads: 0,
        }
    }
}

/// Searches the operational capacity; `progress` sees every evaluation as it finishes.
///
/// A search whose [`CapacityConfig::memory_estimate`] exceeds the machine's available memory
/// is refused with [`Error::Memory`] before the first evaluation.
///
/// Exact accuracy measured on a finite number of trials is noisy, so a plain bisection on it
/// can stop anywhere near the threshold. Instead the search brackets the threshold by doubling
/// M, evaluates a grid inside the bracket, fits a logistic curve P(exact) = σ(a + b·ln M) to
/// every trial outcome by maximum likelihood, and reports the largest integer M whose fitted
/// accuracy reaches the target, followed by a fresh evaluation there.
pub fn capacity(
    config: &CapacityConfig,
    device: &Device,
    progress: &mut dyn FnMut(&CapacityPoint),
) -> Result<CapacityReport> {
    capacity_within(config, device, MemoryLimit::available(), progress)
}

/// [`capacity`] under an explicit memory limit, checked against
/// [`CapacityConfig::memory_estimate`] before the first evaluation and by every problem and
/// factorization of the search.
pub fn capacity_within(
    config: &CapacityConfig,
    device: &Device,
    limit: MemoryLimit,
    progress: &mut dyn FnMut(&CapacityPoint),
) -> Result<CapacityReport> {
    if !(config.target > 0.0 && config.target <= 1.0) {
        return Err(Error::Config(format!(
            "target accuracy must lie in (0, 1], got {}",
            config.target
        )));
    }
    if config.m_limit == 0 {
        return Err(Error::Config(
            "the largest codebook size must be at least 1".into(),
        ));
    }
    limit.check(
        format_args!(
            "a capacity search up to M = {} ({} trials, D = {}, F = {})",
            config.m_limit, config.trials, config.dim, config.factors
        ),
        config.memory_estimate(),
    )?;
    let mut evaluations: Vec<CapacityPoint> = Vec::new();
    let mut eval = |m: usize| -> Result<CapacityPoint> {
        let point = evaluate(config, m, problem_seed(config.seed, m), device, limit)?;
        progress(&point);
        evaluations.push(point.clone());
        Ok(point)
    };
    let passes = |p: &CapacityPoint| p.exact_accuracy >= config.target;

    // Bracket by doubling: the largest passing size and the first failing one.
    let mut lo = 0usize;
    let mut hi = None;
    let mut m = 8.min(config.m_limit);
    loop {
        let p = eval(m)?;
        if passes(&p) {
            lo = m;
            if m == config.m_limit {
                break;
            }
            m = (m * 2).min(config.m_limit);
        } else {
            hi = Some(m);
            break;
        }
    }
    let m_max = match hi {
        None => lo,
        Some(hi) => {
            let base = lo.max(1);
            let steps = GRID_POINTS.min(hi - base);
            for k in 1..steps {
                eval(base + (hi - base) * k / steps)?;
            }
            let fitted = fit_crossing(&evaluations, config.trials, config.target);
            let m = fitted.map_or(lo, |x| x.floor() as usize).clamp(lo, hi - 1);
            if m > 0 {
                // A final, fresh evaluation at the estimate, seeded apart from the search.
                let seed = problem_seed(config.seed, m) ^ 0xA5A5_0000_0000;
                let point = evaluate(config, m, seed, device, limit)?;
                progress(&point);
                evaluations.push(point);
            }
            m
        }
    };
    let at_m_max = evaluations
        .iter()
        .rev()
        .find(|p| p.codebook == m_max && m_max > 0)
        .cloned();
    Ok(CapacityReport {
        m_max,
        at_m_max,
        evaluations,
    })
}

/// The seed of the problem evaluated at codebook size `m`.
fn problem_seed(seed: u64, m: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(m as u64)
}

/// Factorizes a fresh problem of codebook size `m` drawn from `seed`.
fn evaluate(
    config: &CapacityConfig,
    m: usize,
    seed: u64,
    device: &Device,
    limit: MemoryLimit,
) -> Result<CapacityPoint> {
    let pc = config.problem_config(m, seed);
    let problem = Problem::generate_within(&pc, device, limit)?;
    let fc = config.factorize_config(m, seed);
    let r: FactorizeReport = factorize_within(&problem, &fc, limit, &mut |_| {})?;
    Ok(CapacityPoint {
        codebook: m,
        max_iters: fc.max_iters,
        exact_accuracy: r.exact_accuracy,
        factor_accuracy: r.factor_accuracy,
    })
}

/// Maximum-likelihood fit of P(exact | M) = σ(a + b·ln M) to the evaluations (each is
/// `trials` Bernoulli outcomes), by Newton's method with a tiny ridge; returns the M at which
/// the fitted curve equals `target`, or `None` when the fit shows no decreasing trend.
pub fn fit_crossing(points: &[CapacityPoint], trials: usize, target: f64) -> Option<f64> {
    if points.len() < 2 || target >= 1.0 {
        return None;
    }
    let data: Vec<(f64, f64)> = points
        .iter()
        .map(|p| ((p.codebook as f64).ln(), p.exact_accuracy))
        .collect();
    let n = trials as f64;
    let (mut a, mut b) = (0.0f64, 0.0f64);
    for _ in 0..100 {
        // Gradient and Hessian of the log-likelihood (plus ridge 1e-6·‖(a, b)‖²).
        let (mut ga, mut gb) = (-1e-6 * a, -1e-6 * b);
        let (mut haa, mut hab, mut hbb) = (1e-6, 0.0, 1e-6);
        for &(x, y) in &data {
            let p = 1.0 / (1.0 + (-(a + b * x)).exp());
            let r = n * (y - p);
            ga += r;
            gb += r * x;
            let w = n * p * (1.0 - p);
            haa += w;
            hab += w * x;
            hbb += w * x * x;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-300 {
            return None;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        a += da;
        b += db;
        if !(a.is_finite() && b.is_finite()) {
            return None;
        }
        if da.abs() + db.abs() < 1e-10 {
            break;
        }
    }
    if b >= 0.0 {
        return None;
    }
    let logit = (target / (1.0 - target)).ln();
    let m = ((logit - a) / b).exp();
    m.is_finite().then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iteration_limits_parse() {
        assert_eq!("kent".parse::<IterLimit>().unwrap(), IterLimit::Kent);
        assert_eq!("250".parse::<IterLimit>().unwrap(), IterLimit::Fixed(250));
        for bad in ["0", "-3", "many", ""] {
            assert!(bad.parse::<IterLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn logistic_fit_recovers_a_known_curve() {
        // Exact accuracies on the curve σ(20 − 4.5 ln M), which crosses 0.99 at
        // M = exp((20 − logit(0.99)) / 4.5) ≈ 41.9.
        let points: Vec<CapacityPoint> = [10usize, 20, 30, 40, 50, 60, 80]
            .iter()
            .map(|&m| CapacityPoint {
                codebook: m,
                max_iters: 100,
                exact_accuracy: 1.0 / (1.0 + (-(20.0 - 4.5 * (m as f64).ln())).exp()),
                factor_accuracy: 1.0,
            })
            .collect();
        let m = fit_crossing(&points, 200, 0.99).unwrap();
        let want = ((20.0 - (0.99f64 / 0.01).ln()) / 4.5).exp();
        assert!((m - want).abs() < 1e-3 * want, "{m} vs {want}");
    }

    #[test]
    fn flat_curve_has_no_crossing() {
        let points: Vec<CapacityPoint> = [10usize, 20]
            .iter()
            .map(|&m| CapacityPoint {
                codebook: m,
                max_iters: 100,
                exact_accuracy: 0.5,
                factor_accuracy: 0.5,
            })
            .collect();
        assert!(fit_crossing(&points, 100, 0.99).is_none());
    }
}
