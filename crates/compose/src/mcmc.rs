//! Annealed MCMC over the noise levels of a (composed) diffusion model.
//!
//! Du et al., *Reduce, Reuse, Recycle* (ICML 2023), §4 and Algorithms 1–2. The levels of the
//! schedule define a path of unnormalized targets π_t ∝ exp f_t with scores s_t = ∇f_t, from a
//! near-Gaussian at the noisiest level to the composed distribution at t = 0. [`anneal`] starts
//! n chains at x ~ N(0, I) and walks the levels from T − 1 down to 0; at each level t it runs K
//! MCMC steps targeting π_t (if the level is among the MCMC levels), then moves to level t − 1:
//! with one reverse-diffusion (DDPM ancestral) step using the composed ε̂ = −σ_t s_t, or — in
//! pure annealed MCMC — by keeping x. After level 0 every chain takes the same final denoising
//! step, x̂₀ = (x + σ_0² s_0)/α_0 (Tweedie's formula). With no kernel this is plain reverse
//! diffusion with the composed model. Both steps are the diffusion crate's shared sampling core
//! (`recompose_diffusion::sampler::step`, DDPM with the fixed-small variance), fed the composed
//! score.
//!
//! The chains live in tensors on the model's device ([`Component::device`]); the noise is drawn
//! from the caller's seeded generator on the host whatever the device (same seed, same draws),
//! and only the per-chain Metropolis decisions (n numbers) cross to the host.
//!
//! # Kernels (all per chain; η the step size, ξ ~ N(0, I))
//!
//! ```text
//! ULA    x ← x + η s(x) + √(2η) ξ
//! MALA   x' = x + η s(x) + √(2η) ξ,  accept with
//!        log α = f(x') − f(x) + log q(x | x') − log q(x' | x),
//!        log q(a | b) = −‖a − b − η s(b)‖² / (4η)
//! U-HMC  v ← γ v + √(1 − γ²) m ξ, then L leapfrog steps
//!        v += ε/2 s(x);  x += ε v / m²;  v += ε/2 s(x)
//! HMC    U-HMC and a Metropolis test on H = −f(x) + ‖v‖²/(2m²),
//!        log α = H(x, v) − H(x', v')
//! ```
//!
//! Each chain is accepted or rejected on its own (never the whole batch). MALA reuses f and s of
//! the accepted state. In HMC a rejected chain keeps its position and **negates** its momentum
//! (Horowitz 1991): with partial momentum refresh (γ > 0) that is what keeps π_t × N(0, m² I)
//! invariant. The start and end states of a trajectory are kept separately, so the kinetic
//! energies of the test are those of two different momenta. The momentum is drawn afresh from
//! N(0, m² I) at the start of every level.
//!
//! # Step sizes
//!
//! [`StepSize`]: constant, proportional to β_t (the image-model settings of the paper), or
//! adapted towards a target acceptance rate (Metropolis kernels only): after each MCMC step,
//! `log η += â − target` with â the fraction of chains that accepted; the adapted value carries
//! over to the next level. Adaptation uses the acceptance of all chains, so it couples them
//! (weakly) and makes the chain inhomogeneous; the acceptance tests stay per chain.
//!
//! Acceptance rates are recorded per level ([`LevelStats`]); unadjusted kernels have none.
//! Non-finite values end the run with [`Error::Diverged`] naming the level (usually a step
//! size too large for the sharpest level).

use candle_core::{D, DType, Device, Tensor};
use rand::Rng;
use recompose_core::random::{SeededRng, normal_vec};
use recompose_diffusion::Marginal;
use recompose_diffusion::sampler::{DdpmVariance, StepRule, Transition};

use crate::component::{Component, Eval, divide};
use crate::{Error, Result};

/// The MCMC kernel run at each level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Unadjusted Langevin.
    Ula,
    /// Metropolis-adjusted Langevin (needs log-densities).
    Mala,
    /// Underdamped (kinetic) Langevin / HMC without correction.
    UHmc,
    /// Hamiltonian Monte Carlo with partial momentum refresh and a Metropolis test (needs
    /// log-densities).
    Hmc,
}

impl Kernel {
    /// All kernels, in the order of the paper's tables.
    pub const ALL: [Kernel; 4] = [Kernel::Ula, Kernel::UHmc, Kernel::Mala, Kernel::Hmc];

    /// The command-line name: `ula`, `mala`, `uhmc` or `hmc`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ula => "ula",
            Self::Mala => "mala",
            Self::UHmc => "uhmc",
            Self::Hmc => "hmc",
        }
    }

    /// Whether the kernel has a Metropolis test (and so needs log-densities).
    pub fn is_metropolis(self) -> bool {
        matches!(self, Self::Mala | Self::Hmc)
    }

    /// Whether the kernel carries a momentum (U-HMC, HMC).
    pub fn is_hamiltonian(self) -> bool {
        matches!(self, Self::UHmc | Self::Hmc)
    }
}

impl std::str::FromStr for Kernel {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ula" => Ok(Self::Ula),
            "mala" => Ok(Self::Mala),
            "uhmc" => Ok(Self::UHmc),
            "hmc" => Ok(Self::Hmc),
            other => Err(Error::Config(format!(
                "unknown MCMC kernel `{other}`; expected ula, mala, uhmc or hmc"
            ))),
        }
    }
}

/// The step size η (Langevin) or ε (leapfrog) at each level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepSize {
    /// The same value at every level.
    Constant(f64),
    /// `c · β_t` at level t.
    BetaScaled(f64),
    /// Start at `initial` and adapt towards the acceptance rate `target` (Metropolis kernels).
    Adaptive {
        /// The first level's step size.
        initial: f64,
        /// The acceptance rate aimed at, in (0, 1).
        target: f64,
    },
}

/// The momentum scale m of the Hamiltonian kernels at each level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mass {
    /// The same value at every level.
    Constant(f64),
    /// `c · β_t` at level t.
    BetaScaled(f64),
}

/// How [`anneal`] runs (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnnealConfig {
    /// The MCMC kernel; `None` for reverse diffusion alone.
    pub kernel: Option<Kernel>,
    /// Move between levels with a reverse-diffusion step (true) or keep x (pure annealed MCMC).
    pub reverse_steps: bool,
    /// MCMC steps K per level.
    pub mcmc_steps: usize,
    /// Step size of the kernel.
    pub step_size: StepSize,
    /// Leapfrog steps L per Hamiltonian step.
    pub leapfrog_steps: usize,
    /// Momentum scale m.
    pub mass: Mass,
    /// Momentum persistence γ ∈ \[0, 1): v ← γ v + √(1 − γ²) m ξ.
    pub refresh: f64,
    /// Run MCMC on this fraction of the levels, the noisiest ones (1 = every level).
    pub mcmc_fraction: f64,
    /// Clip the clean-data estimate of each reverse step to \[−c, c\] (image models, whose
    /// data lie in a known range; `None` for no clipping). The composed score s gives the
    /// estimate x̂₀ = (x + σ_t² s)/√ᾱ_t (Tweedie); the step then uses the score of the clipped
    /// estimate, (√ᾱ_t clip(x̂₀) − x)/σ_t² — the DDPM sampler's `clip_denoised`. MCMC steps are
    /// never clipped.
    pub clip_x0: Option<f64>,
}

impl AnnealConfig {
    /// Reverse diffusion with the composed model, no MCMC.
    pub fn reverse() -> Self {
        Self {
            kernel: None,
            reverse_steps: true,
            mcmc_steps: 0,
            step_size: StepSize::Constant(0.001),
            leapfrog_steps: 3,
            mass: Mass::Constant(1.0),
            refresh: 0.5,
            mcmc_fraction: 1.0,
            clip_x0: None,
        }
    }

    /// The paper's 2-D settings: reverse steps interleaved with K = 10 MCMC steps at every level;
    /// η = 0.001 for ULA and MALA; ε = 0.03, m = 1, γ = 0.5, L = 3 for U-HMC and HMC.
    pub fn paper_2d(kernel: Kernel) -> Self {
        let step = if kernel.is_hamiltonian() { 0.03 } else { 0.001 };
        Self {
            kernel: Some(kernel),
            mcmc_steps: 10,
            step_size: StepSize::Constant(step),
            ..Self::reverse()
        }
    }

    /// The paper's image-model settings (the authors' public code for their CLEVR products):
    /// MCMC on the noisier half of the levels; ULA K = 20 steps of η = 2 β_t; MALA K = 20 steps
    /// of η = 0.035 β_t; U-HMC and HMC K = 10 steps of L = 3 leapfrog steps, ε = 0.1 β_t,
    /// m = β_t, γ = 0.7. The β_t are those of the schedule sampled (a [`crate::Respaced`]
    /// schedule's, for the paper's 100 levels).
    pub fn paper_image(kernel: Kernel) -> Self {
        let (steps, step, mass) = match kernel {
            Kernel::Ula => (20, StepSize::BetaScaled(2.0), Mass::Constant(1.0)),
            Kernel::Mala => (20, StepSize::BetaScaled(0.035), Mass::Constant(1.0)),
            Kernel::UHmc | Kernel::Hmc => (10, StepSize::BetaScaled(0.1), Mass::BetaScaled(1.0)),
        };
        Self {
            kernel: Some(kernel),
            mcmc_steps: steps,
            step_size: step,
            mass,
            refresh: 0.7,
            mcmc_fraction: 0.5,
            leapfrog_steps: 3,
            ..Self::reverse()
        }
    }

    /// Checks the settings against a model (`has_density`: whether it provides log-densities).
    ///
    /// # Errors
    ///
    /// [`Error::NeedsDensity`] for a Metropolis kernel on a score-only model; [`Error::Config`]
    /// for K = 0 with a kernel, L = 0, a non-positive or non-finite step size or mass, γ outside
    /// \[0, 1), a target acceptance outside (0, 1), adaptation on an unadjusted kernel, an MCMC
    /// fraction outside (0, 1], a clipping bound that is not positive and finite, or neither
    /// reverse steps nor a kernel.
    pub fn validate(&self, has_density: bool) -> Result<()> {
        if let Some(c) = self.clip_x0.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return Err(Error::Config(format!(
                "the clipping bound of x̂₀ must be positive and finite, got {c}"
            )));
        }
        let Some(kernel) = self.kernel else {
            if !self.reverse_steps {
                return Err(Error::Config(
                    "with no MCMC kernel the sampler needs reverse steps".into(),
                ));
            }
            return Ok(());
        };
        if kernel.is_metropolis() && !has_density {
            return Err(Error::NeedsDensity(format!(
                "{} needs log-densities for its Metropolis test, but the composition contains \
                 score models; use energy models, or ula / uhmc",
                kernel.name()
            )));
        }
        if self.mcmc_steps == 0 {
            return Err(Error::Config(
                "the MCMC kernel needs at least one step per level".into(),
            ));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        match self.step_size {
            StepSize::Constant(v) | StepSize::BetaScaled(v) if !positive(v) => {
                return Err(Error::Config(format!(
                    "the step size must be positive and finite, got {v}"
                )));
            }
            StepSize::Adaptive { initial, target } => {
                if !positive(initial) {
                    return Err(Error::Config(format!(
                        "the initial step size must be positive and finite, got {initial}"
                    )));
                }
                if !(target > 0.0 && target < 1.0) {
                    return Err(Error::Config(format!(
                        "the target acceptance rate must lie in (0, 1), got {target}"
                    )));
                }
                if !kernel.is_metropolis() {
                    return Err(Error::Config(format!(
                        "an adaptive step size needs acceptance rates; {} has none (use mala \
                         or hmc)",
                        kernel.name()
                    )));
                }
            }
            _ => {}
        }
        if kernel.is_hamiltonian() {
            if self.leapfrog_steps == 0 {
                return Err(Error::Config("HMC needs at least one leapfrog step".into()));
            }
            let (Mass::Constant(m) | Mass::BetaScaled(m)) = self.mass;
            if !positive(m) {
                return Err(Error::Config(format!(
                    "the mass must be positive and finite, got {m}"
                )));
            }
            if !(0.0..1.0).contains(&self.refresh) {
                return Err(Error::Config(format!(
                    "the momentum persistence must lie in [0, 1), got {}",
                    self.refresh
                )));
            }
        }
        if !(self.mcmc_fraction > 0.0 && self.mcmc_fraction <= 1.0) {
            return Err(Error::Config(format!(
                "the fraction of MCMC levels must lie in (0, 1], got {}",
                self.mcmc_fraction
            )));
        }
        Ok(())
    }
}

/// What happened at one noise level.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelStats {
    /// The level (training-timestep index).
    pub level: usize,
    /// The mean step size used at this level (None without MCMC here).
    pub step_size: Option<f64>,
    /// The fraction of accepted proposals over all chains and steps (Metropolis kernels).
    pub acceptance: Option<f64>,
}

/// The result of [`anneal`].
#[derive(Debug, Clone)]
pub struct AnnealOutput {
    /// The final samples, `[n, d]` `f32` on the model's device.
    pub samples: Tensor,
    /// The data dimension d.
    pub dim: usize,
    /// Per level, from the noisiest (T − 1) to 0.
    pub levels: Vec<LevelStats>,
    /// Batched evaluations of the composed model.
    pub evaluations: usize,
    /// Chain-steps: MCMC steps (or reverse steps without MCMC) times chains.
    pub chain_steps: usize,
}

impl AnnealOutput {
    /// The final samples on the host, row-major `[n, d]`.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if the tensor cannot be read.
    pub fn samples_vec(&self) -> Result<Vec<f32>> {
        Ok(self.samples.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The acceptance rate over all levels with a Metropolis test.
    pub fn mean_acceptance(&self) -> Option<f64> {
        let rates: Vec<f64> = self.levels.iter().filter_map(|l| l.acceptance).collect();
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
    }
}

/// The chains' state at the current level.
struct Chains<'a> {
    model: &'a dyn Component,
    /// `[n, d]` `f32` on the model's device.
    x: Tensor,
    /// The model's evaluation at `x`, if still valid.
    cache: Option<Eval>,
    evaluations: usize,
}

impl Chains<'_> {
    fn eval(&mut self, x: &Tensor, level: usize, density: bool) -> Result<Eval> {
        self.evaluations += 1;
        self.model.evaluate(x, level, density)
    }

    /// The evaluation at the current x (with log-density if `density`), computed if needed.
    fn current(&mut self, level: usize, density: bool) -> Result<Eval> {
        match &self.cache {
            Some(e) if !density || e.log_density.is_some() => Ok(e.clone()),
            _ => {
                let x = self.x.clone();
                let e = self.eval(&x, level, density)?;
                self.cache = Some(e.clone());
                Ok(e)
            }
        }
    }

    /// n standard normal draws per coordinate from `rng`, as a tensor like x.
    fn normal(&self, rng: &mut SeededRng) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            normal_vec(rng, self.x.elem_count()),
            self.x.shape(),
            self.x.device(),
        )?)
    }
}

/// Whether every value of `x` is finite (a NaN or an infinity makes the sum non-finite).
fn all_finite(x: &Tensor) -> Result<bool> {
    Ok(x.sum_all()?.to_scalar::<f32>()?.is_finite())
}

/// Peak bytes of [`anneal`] with `num` chains of dimension `dim` on a composition whose leaves
/// are networks of the given (parameter bytes, activation bytes per item): every leaf's weights
/// and the bytes of their file, the largest leaf's activations on all chains (leaves are
/// evaluated one after the other), and per chain 16 + 2·leaves vectors of `dim` values (state,
/// cached and proposed states, gradients, momenta, noise, the leaves' outputs and their
/// combination, the samples and their output copies).
pub fn anneal_estimate(
    num: usize,
    dim: usize,
    leaves: &[(
        recompose_core::memory::Estimate,
        recompose_core::memory::Estimate,
    )],
) -> recompose_core::memory::Estimate {
    use recompose_core::memory::Estimate;
    let params: Estimate = leaves.iter().map(|(p, _)| *p * 2).sum();
    let activations = leaves
        .iter()
        .map(|(_, a)| *a)
        .fold(Estimate::ZERO, Estimate::max);
    let vectors = leaves.len().saturating_mul(2).saturating_add(16);
    params + activations * num + Estimate::f32s(&[num, dim, vectors])
}

/// Runs n = `num` chains on `model` (see the [module documentation](self)).
///
/// # Errors
///
/// As [`AnnealConfig::validate`]; [`Error::Config`] for `num` = 0; [`Error::Memory`] when the
/// chains' vectors alone would not fit in the memory available now; [`Error::Diverged`] if a
/// chain leaves the finite numbers; whatever the model reports.
pub fn anneal(
    model: &dyn Component,
    config: &AnnealConfig,
    num: usize,
    rng: &mut SeededRng,
) -> Result<AnnealOutput> {
    config.validate(model.has_density())?;
    if num == 0 {
        return Err(Error::Config(
            "the number of chains must be positive".into(),
        ));
    }
    let d = model.dim();
    // The chains' own vectors with a single leaf (see [`anneal_estimate`]), before any is drawn.
    recompose_core::memory::MemoryLimit::available().check(
        format_args!("annealing {num} chains of dimension {d}"),
        anneal_estimate(num, d, &[]) + recompose_core::memory::Estimate::f32s(&[num, d, 2]),
    )?;
    let schedule = model.schedule().clone();
    let levels = schedule.len();
    let first_without = levels - ((config.mcmc_fraction * levels as f64).round() as usize);
    let mut chains = Chains {
        model,
        x: Tensor::from_vec(normal_vec(rng, num * d), (num, d), model.device())?,
        cache: None,
        evaluations: 0,
    };
    let mut adapted = match config.step_size {
        StepSize::Adaptive { initial, .. } => initial,
        _ => 0.0,
    };
    let mut stats = Vec::with_capacity(levels);
    let mut chain_steps = 0;
    for level in (0..levels).rev() {
        let beta = schedule.beta(level);
        let mut stat = LevelStats {
            level,
            step_size: None,
            acceptance: None,
        };
        if let Some(kernel) = config.kernel.filter(|_| level >= first_without) {
            let step = match config.step_size {
                StepSize::Constant(v) => v,
                StepSize::BetaScaled(c) => c * beta,
                StepSize::Adaptive { .. } => adapted,
            };
            let run = run_level(
                &mut chains,
                kernel,
                config,
                level,
                step,
                config.mcmc_steps,
                rng,
            )?;
            chain_steps += num * config.mcmc_steps;
            adapted = run.last_step;
            stat.step_size = Some(run.mean_step);
            stat.acceptance = run.acceptance;
        } else if config.kernel.is_none() {
            chain_steps += num;
        }
        if level == 0 || config.reverse_steps {
            // The DDPM ancestral step with the composed score, to the clean data at level 0.
            let e = chains.current(level, false)?;
            let from = schedule.marginal(level);
            let to = level.checked_sub(1).map(|l| schedule.marginal(l));
            let c = StepRule::Ddpm(DdpmVariance::FixedSmall)
                .coefficients(&Transition::between(from, to));
            let z = if c.noise != 0.0 {
                Some(chains.normal(rng)?.to_dtype(DType::F64)?)
            } else {
                None
            };
            let x = chains.x.to_dtype(DType::F64)?;
            let mut score = e.score.to_dtype(DType::F64)?;
            if let Some(bound) = config.clip_x0 {
                score = clipped_score(&x, &score, from, bound)?;
            }
            chains.x = c
                .apply_score_tensor(from, &x, &score, z.as_ref())?
                .to_dtype(DType::F32)?;
        }
        // The next level evaluates a different target, even where x did not move.
        chains.cache = None;
        if !all_finite(&chains.x)? {
            return Err(Error::Diverged(format!(
                "non-finite samples at noise level {level} (σ = {:.4}){}",
                schedule.sigma(level),
                stat.step_size
                    .map(|s| format!(" with step size {s:.3e}"))
                    .unwrap_or_default()
            )));
        }
        stats.push(stat);
    }
    Ok(AnnealOutput {
        samples: chains.x,
        dim: d,
        levels: stats,
        evaluations: chains.evaluations,
        chain_steps,
    })
}

/// The score whose clean-data estimate is the given score's, clipped to \[−bound, bound\]
/// (see [`AnnealConfig::clip_x0`]): x̂₀ = (x + σ² s)/√ᾱ, s' = (√ᾱ clip(x̂₀) − x)/σ².
fn clipped_score(x: &Tensor, score: &Tensor, m: Marginal, bound: f64) -> Result<Tensor> {
    let var = m.sigma * m.sigma;
    if var == 0.0 {
        return Ok(score.clone());
    }
    let x0 = ((x + (score * var)?)? / m.alpha)?.clamp(-bound, bound)?;
    Ok((((x0 * m.alpha)? - x)? / var)?)
}

/// The outcome of the MCMC steps at one level.
struct LevelRun {
    /// The step size after the last step (adapted, if adapting).
    last_step: f64,
    /// The mean step size used.
    mean_step: f64,
    /// The fraction of accepted proposals (Metropolis kernels).
    acceptance: Option<f64>,
}

/// `steps` steps of `kernel` at `level` starting with step size `step`.
fn run_level(
    chains: &mut Chains,
    kernel: Kernel,
    config: &AnnealConfig,
    level: usize,
    mut step: f64,
    steps: usize,
    rng: &mut SeededRng,
) -> Result<LevelRun> {
    let num = chains.x.dim(0)?;
    let beta = chains.model.schedule().beta(level);
    let mass = match config.mass {
        Mass::Constant(m) => m,
        Mass::BetaScaled(c) => c * beta,
    };
    let mut momentum = if kernel.is_hamiltonian() {
        Some((chains.normal(rng)? * f64::from(mass as f32))?)
    } else {
        None
    };
    let (mut accepted, mut step_sum) = (0usize, 0.0);
    for _ in 0..steps {
        let acc = match kernel {
            Kernel::Ula => ula_step(chains, level, step, rng)?,
            Kernel::Mala => mala_step(chains, level, step, rng)?,
            Kernel::UHmc | Kernel::Hmc => {
                let h = Hamiltonian {
                    step,
                    mass,
                    leapfrog: config.leapfrog_steps,
                    refresh: config.refresh,
                    metropolis: kernel == Kernel::Hmc,
                };
                let v = momentum.take().ok_or_else(|| {
                    Error::Config("a Hamiltonian kernel without a momentum".into())
                })?;
                let (v, acc) = hmc_step(chains, v, level, &h, rng)?;
                momentum = Some(v);
                acc
            }
        };
        step_sum += step;
        accepted += acc;
        if let StepSize::Adaptive { target, .. } = config.step_size {
            step *= ((acc as f64 / num as f64) - target).exp();
        }
    }
    Ok(LevelRun {
        last_step: step,
        mean_step: step_sum / steps.max(1) as f64,
        acceptance: kernel
            .is_metropolis()
            .then(|| accepted as f64 / (num * steps).max(1) as f64),
    })
}

/// Runs `steps` steps of `config`'s kernel at the fixed noise `level`, starting from the points
/// `x` (`[n, d]` `f32` on the model's device): sampling one level's target π_level, for example
/// to check a kernel's stationarity. The step size is `config`'s at that level (the initial one
/// if adaptive). Returns the final points and the acceptance rate (Metropolis kernels).
///
/// # Errors
///
/// As [`anneal`], and [`Error::Config`] if `config` has no kernel, `x` is empty or the level is
/// outside the schedule; [`Error::Shape`] if `x` is not `[n, d]` on the model's device.
pub fn mcmc_at_level(
    model: &dyn Component,
    config: &AnnealConfig,
    level: usize,
    x: Tensor,
    steps: usize,
    rng: &mut SeededRng,
) -> Result<(Tensor, Option<f64>)> {
    config.validate(model.has_density())?;
    let kernel = config
        .kernel
        .ok_or_else(|| Error::Config("mcmc_at_level needs an MCMC kernel".into()))?;
    let n =
        crate::component::check_batch(&x, model.dim(), model.device(), level, model.schedule())?;
    if n == 0 {
        return Err(Error::Config("no chains to run".into()));
    }
    let step = match config.step_size {
        StepSize::Constant(v) => v,
        StepSize::BetaScaled(c) => c * model.schedule().beta(level),
        StepSize::Adaptive { initial, .. } => initial,
    };
    let mut chains = Chains {
        model,
        x,
        cache: None,
        evaluations: 0,
    };
    let run = run_level(&mut chains, kernel, config, level, step, steps, rng)?;
    if !all_finite(&chains.x)? {
        return Err(Error::Diverged(format!(
            "non-finite samples at noise level {level} with step size {step:.3e}"
        )));
    }
    Ok((chains.x, run.acceptance))
}

fn ula_step(chains: &mut Chains, level: usize, eta: f64, rng: &mut SeededRng) -> Result<usize> {
    let e = chains.current(level, false)?;
    let noise = chains.normal(rng)?;
    let (eta32, sd) = (eta as f32, (2.0 * eta).sqrt() as f32);
    let step = ((e.score * f64::from(eta32))? + (noise * f64::from(sd))?)?;
    chains.x = (&chains.x + step)?;
    chains.cache = None;
    Ok(0)
}

/// `−‖to − from − η s_from‖² / (4η)` per chain, in `f64` (`[n]`).
fn log_q(to: &Tensor, from: &Tensor, s_from: &Tensor, eta: f64) -> Result<Tensor> {
    let f64s = |t: &Tensor| t.to_dtype(DType::F64);
    let r = ((f64s(to)? - f64s(from)?)? - (f64s(s_from)? * eta)?)?;
    divide(&r.sqr()?.sum(D::Minus1)?.neg()?, 4.0 * eta)
}

fn density(e: &Eval) -> Result<&Tensor> {
    e.log_density
        .as_ref()
        .ok_or_else(|| Error::NeedsDensity("a Metropolis test got no log-density".into()))
}

/// The per-chain Metropolis decisions for the log acceptance ratios `log_alpha` (`[n]`): one
/// uniform draw per chain from `rng`, in chain order. Returns the accepted count and the
/// decisions as a `u8` tensor `[n]` on `device`.
fn metropolis(log_alpha: &Tensor, rng: &mut SeededRng, device: &Device) -> Result<(usize, Tensor)> {
    let log_alpha = log_alpha.to_vec1::<f64>()?;
    let accept: Vec<u8> = log_alpha
        .iter()
        .map(|&a| {
            let u: f64 = rng.random();
            u8::from(u.ln() < a)
        })
        .collect();
    let count = accept.iter().map(|&a| usize::from(a)).sum();
    let n = accept.len();
    Ok((count, Tensor::from_vec(accept, n, device)?))
}

/// Per chain, `yes` where `accept` is 1 and `no` elsewhere (`accept` is `[n]`, the values
/// `[n]` or `[n, d]`).
fn pick(accept: &Tensor, yes: &Tensor, no: &Tensor) -> Result<Tensor> {
    let mask = if yes.rank() == 2 {
        accept.unsqueeze(1)?.broadcast_as(yes.shape())?
    } else {
        accept.clone()
    };
    Ok(mask.where_cond(yes, no)?)
}

fn mala_step(chains: &mut Chains, level: usize, eta: f64, rng: &mut SeededRng) -> Result<usize> {
    let cur = chains.current(level, true)?;
    let noise = chains.normal(rng)?;
    let sd = (2.0 * eta).sqrt() as f32;
    let prop = ((&chains.x + (&cur.score * f64::from(eta as f32))?)? + (noise * f64::from(sd))?)?;
    let new = chains.eval(&prop, level, true)?;
    let (f0, f1) = (density(&cur)?, density(&new)?);
    let log_alpha = (((f1 - f0)? + log_q(&chains.x, &prop, &new.score, eta)?)?
        - log_q(&prop, &chains.x, &cur.score, eta)?)?;
    let (accepted, accept) = metropolis(&log_alpha, rng, chains.x.device())?;
    chains.x = pick(&accept, &prop, &chains.x)?;
    chains.cache = Some(Eval {
        score: pick(&accept, &new.score, &cur.score)?,
        log_density: Some(pick(&accept, f1, f0)?),
    });
    Ok(accepted)
}

/// Settings of one Hamiltonian step.
struct Hamiltonian {
    step: f64,
    mass: f64,
    leapfrog: usize,
    refresh: f64,
    metropolis: bool,
}

/// One U-HMC or HMC step from the momenta `v`; returns the new momenta and the accepted count.
fn hmc_step(
    chains: &mut Chains,
    v: Tensor,
    level: usize,
    h: &Hamiltonian,
    rng: &mut SeededRng,
) -> Result<(Tensor, usize)> {
    let noise = chains.normal(rng)?;
    let keep = h.refresh as f32;
    let fresh = ((1.0 - h.refresh * h.refresh).sqrt() * h.mass) as f32;
    let mut v = ((v * f64::from(keep))? + (noise * f64::from(fresh))?)?;
    let start = chains.current(level, h.metropolis)?;
    let (x0, v0) = (chains.x.clone(), v.clone());
    let half = f64::from((h.step / 2.0) as f32);
    let drift = f64::from((h.step / (h.mass * h.mass)) as f32);
    let mut x = chains.x.clone();
    let mut e = start.clone();
    for l in 0..h.leapfrog {
        v = (v + (&e.score * half)?)?;
        x = (x + (&v * drift)?)?;
        e = chains.eval(&x, level, h.metropolis && l + 1 == h.leapfrog)?;
        v = (v + (&e.score * half)?)?;
    }
    if !h.metropolis {
        chains.x = x;
        chains.cache = Some(e);
        return Ok((v, 0));
    }
    let (f0, f1) = (density(&start)?, density(&e)?);
    let kinetic = |p: &Tensor| -> Result<Tensor> {
        divide(
            &p.to_dtype(DType::F64)?.sqr()?.sum(D::Minus1)?,
            2.0 * h.mass * h.mass,
        )
    };
    let log_alpha = ((f1 - kinetic(&v)?)? - (f0 - kinetic(&v0)?)?)?;
    let (accepted, accept) = metropolis(&log_alpha, rng, chains.x.device())?;
    // A rejected chain keeps its position and negates its momentum.
    chains.x = pick(&accept, &x, &x0)?;
    let v = pick(&accept, &v, &v0.neg()?)?;
    chains.cache = Some(Eval {
        score: pick(&accept, &e.score, &start.score)?,
        log_density: Some(pick(&accept, f1, f0)?),
    });
    Ok((v, accepted))
}
