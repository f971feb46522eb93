//! Seeded samplers over a [`DiscreteSchedule`]: DDPM ancestral, DDIM, reverse-SDE
//! Euler–Maruyama and the probability-flow ODE (Euler and Heun).
//!
//! Every sampler works on any [`Denoiser`], draws its noise from an explicit [`SeededRng`]
//! (candle's own generator cannot be seeded), accepts a different timestep for every sample, and
//! returns from each step both the next sample and the predicted clean data ([`StepOutput`]).
//!
//! # Timesteps and the chain
//!
//! A chain visits S of the T training timesteps, k_{S−1} > ⋯ > k_0, chosen by
//! [`DiscreteSchedule::timesteps`] with the configured [`Spacing`] (equivalently, it runs on the
//! respaced schedule of [`DiscreteSchedule::respace`]: only ᾱ at the kept timesteps matters). It
//! starts from x ~ N(0, I) at k_{S−1} and takes one step from each kept timestep t to the next
//! one s, and from k_0 to the clean data, written s = `None` with ᾱ_s = 1. That is S steps; the
//! model always receives the **training** timestep index t as an `f32` (see
//! [`crate::denoiser`]).
//!
//! In a step from t to s, write ᾱ_t, ᾱ_s for the schedule's cumulative products (ᾱ_s = 1 for the
//! clean data), α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), and let ε̂, x̂₀ be the model's prediction at (x_t, t)
//! converted with [`Parameterization`]. With [`SamplerConfig::clip_x0`] set, x̂₀ is clamped to
//! \[−c, c\] and ε̂ recomputed from it, `ε̂ = (x_t − α_t x̂₀)/σ_t`. Every sampler's **last step (to
//! the clean data) returns x̂₀ itself**, without noise: for DDPM and DDIM that is what their
//! formulas give at ᾱ_s = 1; for the SDE and ODE it is the final denoising step of Song et al.
//! 2021 (Tweedie's formula, E\[x₀ | x_{k_0}\]).
//!
//! # The update rules
//!
//! Every step is one of the rules of [`step`], written once over noise levels (α, σ) and shared
//! with the host-slice loops of composition and factorization:
//!
//! - **DDPM** ([`SamplerKind::Ddpm`]; Ho, Jain, Abbeel 2020, Algorithm 2 and eqs. 6–7):
//!   ancestral sampling from `q(x_s | x_t, x₀ = x̂₀)` with the respaced transition's
//!   β = 1 − ᾱ_t/ᾱ_s and the fixed-small (β̃) or fixed-large (β) variance of Ho et al. §3.2; with
//!   s = t − 1 these are exactly [`DiscreteSchedule::posterior`].
//! - **DDIM** ([`SamplerKind::Ddim`]; Song, Meng, Ermon 2021, eqs. 12 and 16):
//!   `x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s − σ_η²) ε̂ + σ_η z` with
//!   `σ_η = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s)`; η = 0 is deterministic and draws nothing
//!   from the RNG.
//! - **Reverse SDE and probability-flow ODE** ([`SamplerKind::ReverseSde`],
//!   [`SamplerKind::OdeEuler`], [`SamplerKind::OdeHeun`]; Song et al. 2021, "Score-Based
//!   Generative Modeling through Stochastic Differential Equations", ICLR 2021, eqs. 6 and 13).
//!   The schedule is read as a VP-SDE in the time `ρ = −ln ᾱ`, the integrated noise rate `∫β`:
//!   in that time the VP-SDE becomes `dx = −½ x dρ + dw_ρ` (exact for any β(τ)), and its
//!   marginals at the kept timesteps are exactly those of the schedule. A step has the length
//!   `Δ = ρ_t − ρ_s = ln(ᾱ_s/ᾱ_t)`; Euler–Maruyama gives
//!   `x_s = x_t + Δ (½ x_t − ε̂/σ_t) + √Δ z` (SDE) and `x_s = x_t + Δ d(x_t, t)` with
//!   `d(x, t) = ½ x − ½ ε̂(x, t)/σ_t` (ODE). Heun (Karras et al. 2022, Algorithm 1) takes the
//!   Euler proposal `x̃`, then `x_s = x_t + Δ (d(x_t, t) + d(x̃, s))/2`: two model evaluations per
//!   step, one in the last step (which returns x̂₀), so 2S − 1 for S steps.
//!
//! ρ is infinite at a zero-terminal-SNR step (ᾱ = 0), so these three samplers refuse such a
//! timestep; use DDPM or DDIM (with a v- or x₀-model) there.
//!
//! # Continuous time
//!
//! [`SdeSampler`] runs the same samplers on the continuous [`VpSde`]: the chain visits a time
//! grid from `t_max` down to `t_min` (linear or uniform in log-SNR, [`TimeGrid`]), the model
//! receives the times t ∈ (0, 1\] themselves, and the last step goes from `t_min` to the clean
//! data. The DDPM and DDIM rules use the marginals α(t), σ(t) of the grid's neighbouring times.
//!
//! # Example
//!
//! ```
//! use candle_core::Device;
//! use recompose_diffusion::sampler::{sample, SamplerKind};
//! use recompose_diffusion::{seeded, DiscreteSchedule, GaussianMixture, GaussianMixtureDenoiser};
//!
//! let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02)?;
//! let data = GaussianMixture::gaussian(vec![3.0], 0.25)?;
//! let model = GaussianMixtureDenoiser::new(data, schedule.clone());
//! let mut rng = seeded(0);
//! let x = sample(&model, &schedule, SamplerKind::Ddim { eta: 0.0 }, 20, &[500, 1], &Device::Cpu,
//!     &mut rng)?;
//! let v = x.flatten_all()?.to_vec1::<f32>()?;
//! let mean = v.iter().sum::<f32>() / v.len() as f32;
//! assert!((mean - 3.0).abs() < 0.1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{DType, Device, Tensor};

pub mod step;

use crate::denoiser::Denoiser;
use crate::param::Parameterization;
use crate::random::{SeededRng, normal_tensor};
use crate::schedule::{DiscreteSchedule, Marginal, Spacing, TimeGrid, VpSde};
use crate::{Error, Result};

pub use step::{Coefficients, StepRule, Transition};

/// The variance of DDPM's ancestral steps (Ho et al. 2020, §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DdpmVariance {
    /// The posterior variance β̃ = β (1 − ᾱ_s)/(1 − ᾱ_t), optimal for deterministic data.
    #[default]
    FixedSmall,
    /// The forward variance β, optimal for data distributed as N(0, I).
    FixedLarge,
}

/// Which sampler to run (see the [module documentation](self) for the update rules).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// DDPM ancestral sampling with the given variance.
    Ddpm(DdpmVariance),
    /// DDIM with stochasticity η ∈ \[0, 1\]: η = 0 is deterministic.
    Ddim {
        /// The noise scale η; 0 deterministic, 1 DDPM-like.
        eta: f64,
    },
    /// The reverse-time VP-SDE, Euler–Maruyama in ρ = −ln ᾱ.
    ReverseSde,
    /// The probability-flow ODE, Euler's method in ρ = −ln ᾱ.
    OdeEuler,
    /// The probability-flow ODE, Heun's method in ρ = −ln ᾱ.
    OdeHeun,
}

impl std::str::FromStr for SamplerKind {
    type Err = Error;
    /// The command line's names: `ddpm` (ancestral, fixed small variance), `ddim` (η = 0),
    /// `sde` (the reverse SDE) and `ode` (the probability-flow ODE with Heun's method).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ddpm" => Ok(Self::Ddpm(DdpmVariance::FixedSmall)),
            "ddim" => Ok(Self::Ddim { eta: 0.0 }),
            "sde" => Ok(Self::ReverseSde),
            "ode" => Ok(Self::OdeHeun),
            other => Err(Error::Config(format!(
                "unknown sampler '{other}' (expected ddpm, ddim, sde or ode)"
            ))),
        }
    }
}

impl SamplerKind {
    /// Whether the sampler draws noise during the chain (beyond the initial x ~ N(0, I)).
    pub fn is_stochastic(&self) -> bool {
        match *self {
            Self::Ddpm(_) | Self::ReverseSde => true,
            Self::Ddim { eta } => eta != 0.0,
            Self::OdeEuler | Self::OdeHeun => false,
        }
    }

    /// Whether the sampler treats the schedule as a continuous VP-SDE in ρ = −ln ᾱ (and so cannot
    /// start at a zero-terminal-SNR timestep).
    fn is_continuous(&self) -> bool {
        matches!(self, Self::ReverseSde | Self::OdeEuler | Self::OdeHeun)
    }

    /// The update rule of each step ([`step::StepRule`]); Heun adds a second stage to the
    /// probability-flow ODE's Euler step.
    pub fn rule(&self) -> StepRule {
        match *self {
            Self::Ddpm(variance) => StepRule::Ddpm(variance),
            Self::Ddim { eta } => StepRule::Ddim { eta },
            Self::ReverseSde => StepRule::Euler { eta: 1.0 },
            Self::OdeEuler | Self::OdeHeun => StepRule::Euler { eta: 0.0 },
        }
    }

    /// Checks the kind's parameter (the DDIM η lies in \[0, 1\]).
    fn validate(&self) -> Result<()> {
        if let Self::Ddim { eta } = *self
            && !(0.0..=1.0).contains(&eta)
        {
            return Err(Error::Config(format!(
                "DDIM eta must lie in [0, 1], got {eta}"
            )));
        }
        Ok(())
    }
}

/// Checks an x̂₀ clipping bound: finite and positive.
fn validate_clip(clip: Option<f64>) -> Result<()> {
    if let Some(c) = clip
        && !(c.is_finite() && c > 0.0)
    {
        return Err(Error::Config(format!(
            "the x0 clipping bound must be finite and positive, got {c}"
        )));
    }
    Ok(())
}

/// A sampler's settings: the kind, how its timesteps are spread and optional x̂₀ clipping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// The update rule.
    pub kind: SamplerKind,
    /// How [`Sampler::timesteps`] spreads the steps over the schedule (default
    /// [`Spacing::Linspace`]: from T − 1 down to 0, both included).
    pub spacing: Spacing,
    /// If set to c, clamp every x̂₀ to \[−c, c\] (and recompute ε̂ from it) before it is used;
    /// c = 1 suits images scaled to \[−1, 1\]. Default: no clipping.
    pub clip_x0: Option<f64>,
}

impl SamplerConfig {
    /// `kind` with linspace timesteps and no clipping.
    pub fn new(kind: SamplerKind) -> Self {
        Self {
            kind,
            spacing: Spacing::Linspace,
            clip_x0: None,
        }
    }

    /// The same settings with the given timestep spacing.
    pub fn with_spacing(self, spacing: Spacing) -> Self {
        Self { spacing, ..self }
    }

    /// The same settings clamping x̂₀ to \[−`clip`, `clip`\].
    pub fn with_clip_x0(self, clip: f64) -> Self {
        Self {
            clip_x0: Some(clip),
            ..self
        }
    }
}

/// The result of one sampler step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The sample at the next (less noisy) timestep; the final sample after the last step.
    pub prev_sample: Tensor,
    /// The model's prediction of the clean data at the current timestep (clipped if the sampler
    /// clips).
    pub pred_x0: Tensor,
}

/// A sampler: a [`DiscreteSchedule`] and a [`SamplerConfig`].
///
/// [`Sampler::step`] takes one step with per-sample timesteps; [`Sampler::sample`] and
/// [`Sampler::sample_from`] run whole chains.
#[derive(Debug, Clone)]
pub struct Sampler {
    schedule: DiscreteSchedule,
    config: SamplerConfig,
}

impl Sampler {
    /// A sampler on `schedule` with `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the DDIM η is outside \[0, 1\] or the clipping bound is not finite
    /// and positive.
    pub fn new(schedule: DiscreteSchedule, config: SamplerConfig) -> Result<Self> {
        config.kind.validate()?;
        validate_clip(config.clip_x0)?;
        Ok(Self { schedule, config })
    }

    /// The schedule.
    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The `steps` training timesteps of a chain, descending, spread by the configured spacing.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless `1 ≤ steps ≤ T`.
    pub fn timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        self.schedule.timesteps(steps, self.config.spacing, 0)
    }

    /// One step for the batch `x_t`: sample i goes from training timestep `t[i]` to `s[i]`
    /// (`None`: to the clean data). Draws from `rng` only if the step adds noise.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `x_t` has no batch dimension, `t` or `s` do not have one entry per
    /// sample, or the model's output does not have the shape of `x_t`; [`Error::Config`] if some
    /// `t[i] ≥ T` or `s[i] ≥ t[i]`, if an ε-model would have to step from a zero-terminal-SNR
    /// timestep (ᾱ = 0, where ε says nothing about x₀), or if the SDE or ODE sampler would; and
    /// whatever the model reports.
    pub fn step(
        &self,
        denoiser: &dyn Denoiser,
        x_t: &Tensor,
        t: &[usize],
        s: &[Option<usize>],
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<StepOutput> {
        self.check_step(denoiser, x_t, t, s)?;
        let level = |i: usize| Level {
            time: i as f64,
            marginal: self.schedule.marginal(i),
        };
        let now: Vec<Level> = t.iter().map(|&i| level(i)).collect();
        let next: Vec<Option<Level>> = s.iter().map(|o| o.map(level)).collect();
        step_levels(
            self.config.kind,
            self.config.clip_x0,
            denoiser,
            x_t,
            &now,
            &next,
            cond,
            rng,
        )
    }

    /// Runs the chain from `x_start` (the sample at `timesteps[0]`) through the given training
    /// timesteps, which must be strictly descending, and on to the clean data: one
    /// [`Sampler::step`] per timestep. Returns the final sample.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `timesteps` is empty, not strictly descending or reaches past the
    /// schedule; otherwise as [`Sampler::step`].
    pub fn sample_from(
        &self,
        denoiser: &dyn Denoiser,
        x_start: &Tensor,
        timesteps: &[usize],
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        self.check_timesteps(timesteps)?;
        let batch = batch_size(x_start)?;
        let mut x = x_start.clone();
        for (j, &t) in timesteps.iter().enumerate() {
            let s = timesteps.get(j + 1).copied();
            // Detached: a model on trainable variables would otherwise chain every step's
            // graph (all activations of all steps) into the final sample.
            x = self
                .step(denoiser, &x, &vec![t; batch], &vec![s; batch], cond, rng)?
                .prev_sample
                .detach();
        }
        Ok(x)
    }

    /// Draws x ~ N(0, I) of the given shape (batch first, `f32`) on `device` from `rng`, then
    /// runs the chain over [`Sampler::timesteps`]`(steps)` ([`Sampler::sample_from`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless `1 ≤ steps ≤ T` (checked before anything is drawn);
    /// [`Error::Shape`] if `shape` is empty; [`Error::Memory`] if the chain's states would not
    /// fit in the available memory ([`check_chain_shape`]); otherwise as [`Sampler::step`].
    pub fn sample(
        &self,
        denoiser: &dyn Denoiser,
        shape: &[usize],
        steps: usize,
        cond: Option<&Tensor>,
        device: &Device,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        let timesteps = self.timesteps(steps)?;
        check_chain_shape(shape)?;
        let x = normal_tensor(rng, shape, DType::F32, device)?;
        self.sample_from(denoiser, &x, &timesteps, cond, rng)
    }

    fn check_step(
        &self,
        denoiser: &dyn Denoiser,
        x_t: &Tensor,
        t: &[usize],
        s: &[Option<usize>],
    ) -> Result<()> {
        let batch = batch_size(x_t)?;
        if t.len() != batch || s.len() != batch {
            return Err(Error::Shape(format!(
                "a step needs one current and one next timestep per sample ({batch}), got {} \
                 and {}",
                t.len(),
                s.len()
            )));
        }
        let len = self.schedule.len();
        for (i, (&ti, si)) in t.iter().zip(s).enumerate() {
            if ti >= len {
                return Err(Error::Config(format!(
                    "timestep {ti} of sample {i} is out of a schedule of {len} steps"
                )));
            }
            if let Some(si) = *si
                && si >= ti
            {
                return Err(Error::Config(format!(
                    "sample {i} must step to an earlier timestep, got {ti} -> {si}"
                )));
            }
            if self.schedule.alpha_bar(ti) == 0.0 {
                if denoiser.parameterization() == Parameterization::Epsilon {
                    return Err(Error::Config(format!(
                        "timestep {ti} has zero SNR, where an epsilon-prediction says nothing \
                         about x0; use a v- or x0-model"
                    )));
                }
                if self.config.kind.is_continuous() {
                    return Err(Error::Config(format!(
                        "timestep {ti} has zero SNR (infinite SDE time); the SDE and ODE \
                         samplers cannot start there, use DDPM or DDIM"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_timesteps(&self, timesteps: &[usize]) -> Result<()> {
        let Some(&first) = timesteps.first() else {
            return Err(Error::Config(
                "a chain needs at least one timestep".to_string(),
            ));
        };
        if first >= self.schedule.len() {
            return Err(Error::Config(format!(
                "timestep {first} is out of a schedule of {} steps",
                self.schedule.len()
            )));
        }
        if let Some(w) = timesteps.windows(2).find(|w| w[1] >= w[0]) {
            return Err(Error::Config(format!(
                "chain timesteps must be strictly descending, got {} then {}",
                w[0], w[1]
            )));
        }
        Ok(())
    }
}

/// A sampler on the continuous [`VpSde`]: the update rules of [`SamplerKind`] on a time grid
/// from `t_max` down to `t_min` ([`TimeGrid`]), the model receiving the times t themselves (see
/// the [module documentation](self#continuous-time)).
///
/// A chain of `steps` steps visits the `steps + 1` times of [`VpSde::grid`] and takes one step
/// from each to the next, and a last one from `t_min` to the clean data: `steps + 1` model
/// evaluations (Heun: `2·steps + 1`).
#[derive(Debug, Clone)]
pub struct SdeSampler {
    sde: VpSde,
    kind: SamplerKind,
    grid: TimeGrid,
    clip_x0: Option<f64>,
}

impl SdeSampler {
    /// A sampler of `kind` on `sde` (its time range bounds the grid), times spread by `grid`,
    /// without clipping.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the DDIM η is outside \[0, 1\].
    pub fn new(sde: VpSde, kind: SamplerKind, grid: TimeGrid) -> Result<Self> {
        kind.validate()?;
        Ok(Self {
            sde,
            kind,
            grid,
            clip_x0: None,
        })
    }

    /// The same sampler clamping x̂₀ to \[−`clip`, `clip`\].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless `clip` is finite and positive.
    pub fn with_clip_x0(self, clip: f64) -> Result<Self> {
        validate_clip(Some(clip))?;
        Ok(Self {
            clip_x0: Some(clip),
            ..self
        })
    }

    /// The SDE.
    pub fn sde(&self) -> &VpSde {
        &self.sde
    }

    /// The `steps + 1` times of a chain of `steps` steps, descending.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `steps == 0`.
    pub fn times(&self, steps: usize) -> Result<Vec<f64>> {
        self.sde.grid(steps, self.grid)
    }

    /// One step for the batch `x_t`: sample i goes from time `t[i]` to `s[i]` (`None`: to the
    /// clean data). Draws from `rng` only if the step adds noise.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `t` or `s` do not have one entry per sample or the model's output does
    /// not have the shape of `x_t`; [`Error::Config`] if some time is not finite and positive or
    /// some `s[i] ≥ t[i]`; and whatever the model reports.
    pub fn step(
        &self,
        denoiser: &dyn Denoiser,
        x_t: &Tensor,
        t: &[f64],
        s: &[Option<f64>],
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<StepOutput> {
        let batch = batch_size(x_t)?;
        if t.len() != batch || s.len() != batch {
            return Err(Error::Shape(format!(
                "a step needs one current and one next time per sample ({batch}), got {} and {}",
                t.len(),
                s.len()
            )));
        }
        for (i, (&ti, si)) in t.iter().zip(s).enumerate() {
            if !(ti.is_finite() && ti > 0.0) {
                return Err(Error::Config(format!(
                    "time {ti} of sample {i} is not finite and positive"
                )));
            }
            if let Some(si) = *si
                && !(si > 0.0 && si < ti)
            {
                return Err(Error::Config(format!(
                    "sample {i} must step to an earlier positive time, got {ti} -> {si}"
                )));
            }
        }
        let level = |time: f64| Level {
            time,
            marginal: self.sde.marginal(time),
        };
        let now: Vec<Level> = t.iter().map(|&ti| level(ti)).collect();
        let next: Vec<Option<Level>> = s.iter().map(|o| o.map(level)).collect();
        step_levels(
            self.kind,
            self.clip_x0,
            denoiser,
            x_t,
            &now,
            &next,
            cond,
            rng,
        )
    }

    /// Runs the chain from `x_start` (the sample at `times[0]`) through the given times, which
    /// must be strictly descending, and on to the clean data. Returns the final sample.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `times` is empty or not strictly descending; otherwise as
    /// [`SdeSampler::step`].
    pub fn sample_from(
        &self,
        denoiser: &dyn Denoiser,
        x_start: &Tensor,
        times: &[f64],
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        if times.is_empty() {
            return Err(Error::Config("a chain needs at least one time".to_string()));
        }
        if let Some(w) = times
            .windows(2)
            .find(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Less))
        {
            return Err(Error::Config(format!(
                "chain times must be strictly descending, got {} then {}",
                w[0], w[1]
            )));
        }
        let batch = batch_size(x_start)?;
        let mut x = x_start.clone();
        for (j, &t) in times.iter().enumerate() {
            let s = times.get(j + 1).copied();
            x = self
                .step(denoiser, &x, &vec![t; batch], &vec![s; batch], cond, rng)?
                .prev_sample
                .detach();
        }
        Ok(x)
    }

    /// Draws x ~ N(0, I) of the given shape (batch first, `f32`) on `device` from `rng` and runs
    /// the chain over [`SdeSampler::times`]`(steps)`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `steps == 0` (checked before anything is drawn); [`Error::Shape`] if
    /// `shape` is empty; [`Error::Memory`] as [`check_chain_shape`]; otherwise as
    /// [`SdeSampler::step`].
    pub fn sample(
        &self,
        denoiser: &dyn Denoiser,
        shape: &[usize],
        steps: usize,
        cond: Option<&Tensor>,
        device: &Device,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        let times = self.times(steps)?;
        check_chain_shape(shape)?;
        let x = normal_tensor(rng, shape, DType::F32, device)?;
        self.sample_from(denoiser, &x, &times, cond, rng)
    }
}

/// Draws x ~ N(0, I) of `shape` (batch first, `f32`) on `device` and runs `kind` for `steps`
/// steps over `schedule` with linspace timesteps and no clipping or conditioning: the whole chain
/// from pure noise to data. See [`Sampler`] for more control.
///
/// # Errors
///
/// As [`Sampler::new`] and [`Sampler::sample`].
pub fn sample(
    denoiser: &dyn Denoiser,
    schedule: &DiscreteSchedule,
    kind: SamplerKind,
    steps: usize,
    shape: &[usize],
    device: &Device,
    rng: &mut SeededRng,
) -> Result<Tensor> {
    Sampler::new(schedule.clone(), SamplerConfig::new(kind))?
        .sample(denoiser, shape, steps, None, device, rng)
}

/// Checks a chain's shape before its noise is drawn: a batch dimension, and room in the memory
/// available now for the states a step holds at once (the state, the prediction, the clean
/// estimate and the next state: four `f32` tensors of `shape`). The network's own activations
/// come on top; callers that know them check a fuller estimate first, as the CLI does.
///
/// # Errors
///
/// [`Error::Shape`] for an empty shape; [`Error::Memory`] when the states do not fit or their
/// size overflows.
pub fn check_chain_shape(shape: &[usize]) -> Result<()> {
    if shape.is_empty() {
        return Err(Error::Shape(
            "a sample needs a batch dimension, got an empty shape".to_string(),
        ));
    }
    recompose_core::memory::MemoryLimit::available().check(
        format_args!("sampling a batch of shape {shape:?}"),
        recompose_core::memory::Estimate::f32s(shape) * 4,
    )?;
    Ok(())
}

fn batch_size(x: &Tensor) -> Result<usize> {
    x.dims()
        .first()
        .copied()
        .ok_or_else(|| Error::Shape("a sample needs a batch dimension, got a scalar".to_string()))
}

/// A noise level of a chain: the time value the model receives and the marginal's (α, σ).
#[derive(Debug, Clone, Copy)]
struct Level {
    time: f64,
    marginal: Marginal,
}

/// One step of `kind` for the batch `x_t`, sample i going from `now[i]` to `next[i]` (`None`:
/// to the clean data): the model's prediction, the step's [`Coefficients`] per sample, and for
/// Heun the second stage. Draws from `rng` only if some coefficient of the noise is not zero.
#[allow(clippy::too_many_arguments)]
fn step_levels(
    kind: SamplerKind,
    clip_x0: Option<f64>,
    denoiser: &dyn Denoiser,
    x_t: &Tensor,
    now: &[Level],
    next: &[Option<Level>],
    cond: Option<&Tensor>,
    rng: &mut SeededRng,
) -> Result<StepOutput> {
    let (eps, x0) = predict(denoiser, clip_x0, x_t, now, cond)?;
    let transitions: Vec<Transition> = now
        .iter()
        .zip(next)
        .map(|(n, s)| Transition::between(n.marginal, s.map(|s| s.marginal)))
        .collect();
    let rule = kind.rule();
    let coefficients: Vec<Coefficients> =
        transitions.iter().map(|tr| rule.coefficients(tr)).collect();
    let prev = if kind == SamplerKind::OdeHeun && next.iter().any(Option::is_some) {
        let euler = step::combine(&coefficients, x_t, &x0, &eps, None)?;
        heun_correction(
            denoiser,
            clip_x0,
            x_t,
            &euler,
            &eps,
            now,
            next,
            &transitions,
            cond,
        )?
    } else {
        let noise = if coefficients.iter().any(|c| c.noise != 0.0) {
            Some(normal_tensor(rng, x_t.dims(), x_t.dtype(), x_t.device())?)
        } else {
            None
        };
        step::combine(&coefficients, x_t, &x0, &eps, noise.as_ref())?
    };
    Ok(StepOutput {
        prev_sample: prev,
        pred_x0: x0,
    })
}

/// The model's (ε̂, x̂₀) at `x` and the per-sample levels `levels`, x̂₀ clamped to
/// \[−c, c\] (and ε̂ recomputed from it) when `clip_x0` is c.
fn predict(
    denoiser: &dyn Denoiser,
    clip_x0: Option<f64>,
    x: &Tensor,
    levels: &[Level],
    cond: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let device = x.device();
    let time: Vec<f32> = levels.iter().map(|l| l.time as f32).collect();
    let time = Tensor::from_vec(time, levels.len(), device)?;
    let out = denoiser.forward(x, &time, cond)?;
    if out.dims() != x.dims() {
        return Err(Error::Shape(format!(
            "the denoiser returned shape {:?} for an input of shape {:?}",
            out.dims(),
            x.dims()
        )));
    }
    let alpha: Vec<f64> = levels.iter().map(|l| l.marginal.alpha).collect();
    let sigma: Vec<f64> = levels.iter().map(|l| l.marginal.sigma).collect();
    let alpha = Tensor::from_vec(alpha, levels.len(), device)?;
    let sigma = Tensor::from_vec(sigma, levels.len(), device)?;
    let p = denoiser.parameterization();
    match clip_x0 {
        None => Ok((
            p.to_epsilon(&out, x, &alpha, &sigma)?,
            p.to_x0(&out, x, &alpha, &sigma)?,
        )),
        Some(c) => {
            let x0 = p.to_x0(&out, x, &alpha, &sigma)?.clamp(-c, c)?;
            let eps = Parameterization::X0.to_epsilon(&x0, x, &alpha, &sigma)?;
            Ok((eps, x0))
        }
    }
}

/// Heun's second stage: given the Euler proposal `x_euler` (x̂₀ in rows that go to the clean
/// data), evaluates the model there at the next level and averages the two derivatives:
/// `x_s = x_t + Δ/2 (½ x_t − ½ ε̂_t/σ_t + ½ x̃ − ½ ε̂_s/σ_s)`.
#[allow(clippy::too_many_arguments)]
fn heun_correction(
    denoiser: &dyn Denoiser,
    clip_x0: Option<f64>,
    x_t: &Tensor,
    x_euler: &Tensor,
    eps_t: &Tensor,
    now: &[Level],
    next: &[Option<Level>],
    transitions: &[Transition],
    cond: Option<&Tensor>,
) -> Result<Tensor> {
    // Rows that go to the clean data are evaluated at their own level (a harmless placeholder)
    // and keep x̂₀ = x_euler.
    let second: Vec<Level> = next.iter().zip(now).map(|(s, &n)| s.unwrap_or(n)).collect();
    let (eps_s, _) = predict(denoiser, clip_x0, x_euler, &second, cond)?;
    let n = now.len();
    let mut c_xt = vec![0.0; n];
    let mut c_euler = vec![0.0; n];
    let mut c_eps_t = vec![0.0; n];
    let mut c_eps_s = vec![0.0; n];
    for i in 0..n {
        if next[i].is_none() {
            c_euler[i] = 1.0;
            continue;
        }
        let delta = transitions[i].delta;
        c_xt[i] = 1.0 + 0.25 * delta;
        c_euler[i] = 0.25 * delta;
        c_eps_t[i] = -0.25 * delta / now[i].marginal.sigma;
        c_eps_s[i] = -0.25 * delta / second[i].marginal.sigma;
    }
    step::weighted_sum(&[
        (&c_xt, x_t),
        (&c_euler, x_euler),
        (&c_eps_t, eps_t),
        (&c_eps_s, &eps_s),
    ])
}
