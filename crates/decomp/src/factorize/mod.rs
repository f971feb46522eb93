//! Factorization of bound hypervectors: resonator networks and their relatives.
//!
//! Given s = x₁ ⊙ … ⊙ x_F and the codebooks C_f, find the codeword of every factor. All methods
//! here iterate the same skeleton (Frady et al., *Resonator Networks 1*, Neural Computation
//! 32(12), 2020, eqs. 5–6): unbind the other factors' estimates from s,
//! u_f = s ⊙ ∏_{g≠f} conj(x̂_g); compare u_f with the codebook, a = C_f u_f; pass the
//! similarities through an activation; project back, x̂_f = normalize(C_fᵀ a). They differ in the
//! activation and the normalization:
//!
//! | method | activation on a | normalization |
//! |---|---|---|
//! | classic resonator, OP weights | identity (W = CᵀC) | sign |
//! | classic resonator, OLS weights | a ↦ (C Cᵀ)⁻¹ a (projection onto span C) | sign |
//! | stochastic / sparse resonator (Langenegger et al., Nature Nanotechnology 18, 2023) | a/D + annealed Gaussian noise, keep top-k, threshold | sign |
//! | attention resonator (Yeung et al., arXiv 2403.13218) | softmax(β a / D) | sign or L2 |
//!
//! plus alternating least squares ([`AlsConfig`]; Kent et al., *Resonator Networks 2*, 2020,
//! §3), which solves a least-squares problem for each factor in turn, and coupled diffusion
//! ([`coupled`]; Yeung et al. 2026), which replaces the activation by one reverse-diffusion step
//! per factor under a codebook prior, coupled by a reconstruction energy.
//!
//! Updates are sequential (factor f uses the already-updated factors < f) or synchronous. The
//! estimates start at the normalized superposition of each codebook. Every method runs all
//! trials as one batch: the similarity and projection steps are `[T, D] × [D, M]` and
//! `[T, M] × [M, D]` matmuls, and trials that have converged are frozen and removed from the
//! batch. A trial has converged when a whole sweep leaves its estimates unchanged; for the
//! deterministic sign-normalized methods the loop also detects limit cycles (a state seen
//! before) and stops those trials. Each factor is decoded as the codeword of largest *absolute*
//! similarity, because flipping the signs of an even number of MAP factors (or rotating FHRR
//! phases so that they cancel) leaves s unchanged.

mod als;
pub mod coupled;
mod resonator;

use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use recompose_core::memory::{Estimate, MemoryLimit};

use crate::problem::{Problem, ProblemConfig, VsaKind};
use crate::trials::{Budget, Outcome};
use crate::{Error, Result};

pub use crate::trials::{Progress, Update};
pub use als::AlsConfig;
pub use coupled::{CoupledConfig, CoupledOverrides};
pub use resonator::{Activation, Normalization, ResonatorConfig, StopRule, Weights};

/// A factorization method and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Method {
    /// A resonator network (classic, stochastic / sparse or attention-based).
    Resonator(ResonatorConfig),
    /// Alternating least squares.
    Als(AlsConfig),
    /// Coupled inference in diffusion models ([`coupled`]).
    Coupled(CoupledConfig),
}

/// The names accepted by [`Method::from_name`], in the order reports list them.
pub const METHOD_NAMES: [&str; 7] = [
    "resonator",
    "resonator-ols",
    "resonator-sync",
    "stochastic",
    "attention",
    "als",
    "coupled",
];

impl Method {
    /// The method called `name` on the command line, with its default (tuned) settings:
    /// `resonator` (sequential, OP weights), `resonator-ols`, `resonator-sync` (synchronous, OP),
    /// `stochastic` (the sparse, noisy resonator), `attention`, `als`, `coupled` (coupled
    /// diffusion with its `best` preset).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "resonator" => Method::Resonator(ResonatorConfig::classic()),
            "resonator-ols" => Method::Resonator(ResonatorConfig {
                weights: Weights::Ols,
                ..ResonatorConfig::classic()
            }),
            "resonator-sync" => Method::Resonator(ResonatorConfig {
                update: Update::Synchronous,
                ..ResonatorConfig::classic()
            }),
            "stochastic" => Method::Resonator(ResonatorConfig::stochastic()),
            "attention" => Method::Resonator(ResonatorConfig::attention()),
            "als" => Method::Als(AlsConfig::default()),
            "coupled" => Method::Coupled(CoupledConfig::preset("best")?),
            other => {
                return Err(Error::Config(format!(
                    "unknown method '{other}' (expected one of {})",
                    METHOD_NAMES.join(", ")
                )));
            }
        })
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    /// [`Method::from_name`].
    fn from_str(s: &str) -> Result<Self> {
        Method::from_name(s)
    }
}

/// How to run a factorization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorizeConfig {
    /// The method.
    pub method: Method,
    /// Iteration limit (one iteration = one update of all F factors).
    pub max_iters: usize,
    /// Seed of the method's own random draws (the stochastic resonator's noise).
    pub seed: u64,
    /// Worker threads for the resonators on the CPU, each running a shard of the trials
    /// (0: one per available core). Results do not depend on it.
    pub threads: usize,
}

impl FactorizeConfig {
    /// Peak bytes [`factorize`] allocates for a problem of `problem`'s sizes on the CPU, on top
    /// of the problem itself (its codebooks and bound vectors are not counted).
    ///
    /// The trials are split into the shards [`factorize`] runs in parallel (see
    /// [`FactorizeConfig::threads`]); the estimate sums, over the shards, each method's working
    /// set for its rows (the formulas sit next to each method: resonators, coupled diffusion,
    /// ALS), plus the shards' copies of their bound vectors, the per-trial outcome and 8 MiB a
    /// thread for its stack and allocator pages. An overflow of the sizes gives [`Estimate::OVERFLOW`].
    pub fn memory_estimate(&self, problem: &ProblemConfig) -> Estimate {
        let t = problem.trials;
        let (f, d, p) = (problem.factors, problem.dim, problem.vsa.planes());
        // Outcome and report: predictions, iterations, flags, twice (outcome and report).
        let outcome = (Estimate::array(&[t, f], 4) + Estimate::array(&[t], 6)) * 2;
        let per_shard = |n: usize| {
            THREAD_OVERHEAD
                + match &self.method {
                    Method::Resonator(rc) => {
                        resonator::memory_estimate(rc, problem, n, self.max_iters)
                    }
                    Method::Coupled(cc) => coupled::memory_estimate(cc, problem, n),
                    Method::Als(_) => als::memory_estimate(problem, n),
                }
        };
        if matches!(self.method, Method::Als(_)) {
            return per_shard(t) + outcome;
        }
        let shards = shard_count(t, self.threads, true);
        if shards == 1 {
            return per_shard(t) + outcome;
        }
        // The shards' sub-problems copy their bound vectors and truth, and each shard returns
        // its own outcome.
        let bounds = shard_bounds(t, shards);
        bounds
            .iter()
            .map(|&(a, b)| per_shard(b - a))
            .sum::<Estimate>()
            + Estimate::f32s(&[p, t, d])
            + Estimate::array(&[t, f], 4)
            + outcome * 2
    }

    /// A one-line description of a factorization for refusals.
    fn describe(&self, problem: &ProblemConfig) -> String {
        let name = match &self.method {
            Method::Resonator(_) => "a resonator",
            Method::Coupled(_) => "coupled diffusion",
            Method::Als(_) => "alternating least squares",
        };
        format!("factorizing {} with {name}", problem.describe())
    }
}

/// Peak bytes of generating a problem of `problem`'s sizes and factorizing it with `config`:
/// the larger of the generation's peak ([`ProblemConfig::memory_estimate`]) and the problem
/// plus the factorization's working set ([`FactorizeConfig::memory_estimate`]).
pub fn pipeline_estimate(problem: &ProblemConfig, config: &FactorizeConfig) -> Estimate {
    problem
        .memory_estimate()
        .max(problem.problem_bytes() + config.memory_estimate(problem))
}

/// The iteration limit of the published capacity protocol (Kent et al. 2020):
/// max(100, 0.001·M^F).
pub fn kent_max_iters(codebook_size: usize, factors: usize) -> usize {
    let budget = 0.001 * (codebook_size as f64).powi(factors as i32);
    if budget.is_finite() {
        (budget.ceil() as usize).max(100)
    } else {
        usize::MAX
    }
}

/// Outcome of one batched factorization run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorizeReport {
    /// Decoded codeword index of every factor, trial-major (`[t * F + f]`).
    pub predictions: Vec<u32>,
    /// Iterations each trial used.
    pub iterations: Vec<u32>,
    /// Whether each trial reached a fixed point.
    pub converged: Vec<bool>,
    /// Whether each trial was stopped in a limit cycle.
    pub limit_cycle: Vec<bool>,
    /// Fraction of factors decoded correctly, averaged over trials.
    pub factor_accuracy: f64,
    /// Fraction of trials with every factor correct.
    pub exact_accuracy: f64,
    /// Mean number of iterations per trial.
    pub mean_iterations: f64,
    /// Fraction of trials that reached a fixed point.
    pub converged_fraction: f64,
    /// Fraction of trials stopped in a limit cycle.
    pub limit_cycle_fraction: f64,
    /// Wall-clock time of the solver, seconds (problem generation excluded).
    pub wall_seconds: f64,
    /// Trials per second of wall-clock time.
    pub trials_per_second: f64,
    /// Floating-point operations of the solver's matmuls (similarities, projections, Gram and
    /// normal-equation products), counted as 2·m·n·k per product.
    pub matmul_flops: f64,
}

/// Factorizes every trial of `problem` with `config`, calling `progress` after each iteration.
///
/// A run whose [`FactorizeConfig::memory_estimate`] exceeds the machine's available memory
/// ([`MemoryLimit::available`]) is refused with [`Error::Memory`] before it starts.
pub fn factorize(
    problem: &Problem,
    config: &FactorizeConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<FactorizeReport> {
    factorize_within(problem, config, MemoryLimit::available(), progress)
}

/// [`factorize`] under an explicit memory limit: a run whose
/// [`FactorizeConfig::memory_estimate`] exceeds `limit` is refused with [`Error::Memory`]
/// before anything is allocated.
pub fn factorize_within(
    problem: &Problem,
    config: &FactorizeConfig,
    limit: MemoryLimit,
    progress: &mut dyn FnMut(Progress),
) -> Result<FactorizeReport> {
    if config.max_iters == 0 {
        return Err(Error::Config("iteration limit must be at least 1".into()));
    }
    limit.check(
        config.describe(&problem.config),
        config.memory_estimate(&problem.config),
    )?;
    let budget = Budget {
        max_iters: config.max_iters,
        seed: config.seed,
    };
    let start = Instant::now();
    let outcome = match &config.method {
        Method::Resonator(rc) => run_sharded(
            problem,
            config,
            &|sub, offset, p| resonator::run(sub, rc, budget, offset, p),
            progress,
        )?,
        Method::Coupled(cc) => run_sharded(
            problem,
            config,
            &|sub, offset, p| coupled::run(sub, cc, budget, offset, p),
            progress,
        )?,
        Method::Als(ac) => {
            if problem.config.vsa != VsaKind::Map {
                return Err(Error::Unsupported {
                    method: "als",
                    vsa: problem.config.vsa.name(),
                });
            }
            als::run(problem, ac, budget, config.threads, progress)?
        }
    };
    let wall = start.elapsed().as_secs_f64();
    Ok(summarize(problem, outcome, wall))
}

/// What a shard's thread costs besides its buffers: its stack and the allocator's per-thread
/// pages, 8 MiB.
const THREAD_OVERHEAD: Estimate = Estimate::bytes_const(8 << 20);

/// Smallest shard worth a thread of its own.
const MIN_SHARD: usize = 16;

/// A solver run on a sub-problem whose first trial has the given index in the whole problem.
type ShardRunner<'a> =
    dyn Fn(&Problem, usize, &mut dyn FnMut(Progress)) -> Result<Outcome> + Sync + 'a;

/// The number of shards [`run_sharded`] splits `t` trials into with `threads` worker threads
/// (0: one per available core); always one off the CPU.
fn shard_count(t: usize, threads: usize, cpu: bool) -> usize {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if cpu {
        threads.min(t / MIN_SHARD).max(1)
    } else {
        1
    }
}

/// The trial ranges `[a, b)` of `shards` contiguous shards of `t` trials.
fn shard_bounds(t: usize, shards: usize) -> Vec<(usize, usize)> {
    (0..shards)
        .map(|k| (k * t / shards, (k + 1) * t / shards))
        .collect()
}

/// Runs a solver on contiguous shards of the trials, one thread per shard (CPU only). Every
/// trial evolves independently (its own random stream, frozen on its own), so the result is the
/// same for any number of shards; only the wall time changes.
fn run_sharded(
    problem: &Problem,
    config: &FactorizeConfig,
    runner: &ShardRunner<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let t = problem.config.trials;
    let shards = shard_count(t, config.threads, problem.bound.device().is_cpu());
    if shards == 1 {
        return runner(problem, 0, progress);
    }
    let bounds = shard_bounds(t, shards);
    let subs = bounds
        .iter()
        .map(|&(a, b)| problem.select(&(a..b).collect::<Vec<_>>()))
        .collect::<Result<Vec<_>>>()?;
    run_on_shards(
        &bounds,
        problem.config.factors,
        &|k, p| runner(&subs[k], bounds[k].0, p),
        progress,
    )
}

/// A shard's run, given its index in the shard list and its progress callback.
pub(crate) type IndexedShard<'a> =
    dyn Fn(usize, &mut dyn FnMut(Progress)) -> Result<Outcome> + Sync + 'a;

/// Runs `shard(k, progress)` for every shard `k` of `bounds` (trial ranges `[a, b)` covering
/// the trials), one thread each, and gathers their outcomes into one. The first shard runs on
/// the calling thread and reports progress for all.
pub(crate) fn run_on_shards(
    bounds: &[(usize, usize)],
    factors: usize,
    shard: &IndexedShard<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let results: Vec<Result<Outcome>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..bounds.len())
            .map(|k| scope.spawn(move || shard(k, &mut |_| {})))
            .collect();
        let mut all = vec![shard(0, progress)];
        all.extend(handles.into_iter().map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::Numerical("a factorization thread panicked".into())))
        }));
        all
    });
    let t = bounds.last().map_or(0, |b| b.1);
    let mut out = Outcome::new(t, factors);
    for (r, &(a, b)) in results.into_iter().zip(bounds) {
        let o = r?;
        out.predictions[a * factors..b * factors].copy_from_slice(&o.predictions);
        out.iterations[a..b].copy_from_slice(&o.iterations);
        out.converged[a..b].copy_from_slice(&o.converged);
        out.limit_cycle[a..b].copy_from_slice(&o.limit_cycle);
        out.matmul_flops += o.matmul_flops;
    }
    Ok(out)
}

fn summarize(problem: &Problem, o: Outcome, wall_seconds: f64) -> FactorizeReport {
    let t = problem.config.trials;
    let f = problem.config.factors;
    let mut correct = 0usize;
    let mut exact = 0usize;
    for ti in 0..t {
        let c = (0..f)
            .filter(|&fi| o.predictions[ti * f + fi] == problem.truth[ti * f + fi])
            .count();
        correct += c;
        exact += usize::from(c == f);
    }
    let frac = |n: usize| n as f64 / t as f64;
    FactorizeReport {
        factor_accuracy: correct as f64 / (t * f) as f64,
        exact_accuracy: frac(exact),
        mean_iterations: o.iterations.iter().map(|&i| i as f64).sum::<f64>() / t as f64,
        converged_fraction: frac(o.converged.iter().filter(|&&c| c).count()),
        limit_cycle_fraction: frac(o.limit_cycle.iter().filter(|&&c| c).count()),
        wall_seconds,
        trials_per_second: t as f64 / wall_seconds.max(1e-12),
        matmul_flops: o.matmul_flops,
        predictions: o.predictions,
        iterations: o.iterations,
        converged: o.converged,
        limit_cycle: o.limit_cycle,
    }
}

/// The device a problem's tensors live on.
pub(crate) fn device_of(problem: &Problem) -> Device {
    problem.bound.device().clone()
}
