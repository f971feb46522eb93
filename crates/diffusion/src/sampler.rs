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
//! # DDPM (Ho, Jain, Abbeel 2020, Algorithm 2 and eqs. 6–7)
//!
//! Ancestral sampling from the Gaussian posterior `q(x_s | x_t, x₀ = x̂₀)`. For a respaced step the
//! transition's beta is `β = 1 − ᾱ_t/ᾱ_s` (the respacing of Nichol & Dhariwal 2021), and
//!
//! ```text
//! x_s = √ᾱ_s β/(1 − ᾱ_t) · x̂₀ + √(ᾱ_t/ᾱ_s) (1 − ᾱ_s)/(1 − ᾱ_t) · x_t + √var · z,   z ~ N(0, I)
//! ```
//!
//! with `var = β̃ = β (1 − ᾱ_s)/(1 − ᾱ_t)` ([`DdpmVariance::FixedSmall`]) or `var = β`
//! ([`DdpmVariance::FixedLarge`]), the two choices of Ho et al. §3.2. With s = t − 1 these are
//! exactly [`DiscreteSchedule::posterior`].
//!
//! # DDIM (Song, Meng, Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12 and eq. 16)
//!
//! ```text
//! x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s − σ_η²) ε̂ + σ_η z,
//! σ_η = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s),   0 ≤ η ≤ 1.
//! ```
//!
//! η = 0 is deterministic and draws nothing from the RNG; η = 1 has the DDPM fixed-small variance
//! and the same mean (the two agree up to rounding).
//!
//! # Reverse SDE and probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling
//! through Stochastic Differential Equations", ICLR 2021, eqs. 6 and 13)
//!
//! The discrete schedule is read as a VP-SDE. Time is measured by `ρ = −ln ᾱ`, the integrated
//! noise rate `∫β`: in that time the VP-SDE `dx = −½ β(τ) x dτ + √β(τ) dw` becomes
//! `dx = −½ x dρ + dw_ρ` (a change of time variable, exact for any β(τ)), and its marginals at the
//! kept timesteps are exactly those of the discrete schedule. With the score `∇ log p ≈ −ε̂/σ`, a
//! step from ρ_t down to ρ_s has the length `Δ = ρ_t − ρ_s = ln(ᾱ_s/ᾱ_t) > 0` and
//!
//! - **reverse SDE, Euler–Maruyama** (`dx = [−½ x − ∇ log p] dρ + dw̄` backwards in ρ):
//!   `x_s = x_t + Δ (½ x_t − ε̂/σ_t) + √Δ z`;
//! - **probability-flow ODE** (`dx/dρ = −½ x − ½ ∇ log p`), with the derivative
//!   `d(x, t) = ½ x − ½ ε̂(x, t)/σ_t` along decreasing ρ:
//!   - Euler: `x_s = x_t + Δ d(x_t, t)`;
//!   - Heun (Karras et al. 2022, Algorithm 1, second-order): `x̃ = x_t + Δ d(x_t, t)`, then
//!     `x_s = x_t + Δ (d(x_t, t) + d(x̃, s))/2`: two model evaluations per step, one in the last
//!     step (which returns x̂₀), so 2S − 1 for S steps.
//!
//! ρ is infinite at a zero-terminal-SNR step (ᾱ = 0), so these three samplers refuse such a
//! timestep; use DDPM or DDIM (with a v- or x₀-model) there.
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

use crate::denoiser::Denoiser;
use crate::param::{Parameterization, per_sample};
use crate::random::{SeededRng, normal_tensor};
use crate::schedule::{DiscreteSchedule, Spacing};
use crate::{Error, Result};

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
        if let SamplerKind::Ddim { eta } = config.kind
            && !(0.0..=1.0).contains(&eta)
        {
            return Err(Error::Config(format!(
                "DDIM eta must lie in [0, 1], got {eta}"
            )));
        }
        if let Some(c) = config.clip_x0
            && !(c.is_finite() && c > 0.0)
        {
            return Err(Error::Config(format!(
                "the x0 clipping bound must be finite and positive, got {c}"
            )));
        }
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
        let sched = &self.schedule;
        let ab_t: Vec<f64> = t.iter().map(|&i| sched.alpha_bar(i)).collect();
        let ab_s: Vec<f64> = s
            .iter()
            .map(|o| o.map_or(1.0, |i| sched.alpha_bar(i)))
            .collect();
        let (eps, x0) = self.predict(denoiser, x_t, t, &ab_t, cond)?;
        let n = t.len();
        // x_s = c_xt x_t + c_x0 x̂₀ + c_eps ε̂ + c_z z, per sample.
        let mut c_xt = vec![0.0; n];
        let mut c_x0 = vec![0.0; n];
        let mut c_eps = vec![0.0; n];
        let mut c_z = vec![0.0; n];
        for i in 0..n {
            if s[i].is_none() {
                c_x0[i] = 1.0;
                continue;
            }
            let (at, as_) = (ab_t[i], ab_s[i]);
            let (one_t, one_s) = (1.0 - at, 1.0 - as_);
            match self.config.kind {
                SamplerKind::Ddpm(variance) => {
                    let beta = (as_ - at) / as_;
                    c_x0[i] = as_.sqrt() * beta / one_t;
                    c_xt[i] = (at / as_).sqrt() * one_s / one_t;
                    c_z[i] = match variance {
                        DdpmVariance::FixedSmall => (beta * one_s / one_t).sqrt(),
                        DdpmVariance::FixedLarge => beta.sqrt(),
                    };
                }
                SamplerKind::Ddim { eta } => {
                    let var = eta * eta * (one_s / one_t) * ((as_ - at) / as_);
                    c_x0[i] = as_.sqrt();
                    c_eps[i] = (one_s - var).max(0.0).sqrt();
                    c_z[i] = var.sqrt();
                }
                SamplerKind::ReverseSde => {
                    let delta = (as_ / at).ln();
                    c_xt[i] = 1.0 + 0.5 * delta;
                    c_eps[i] = -delta / one_t.sqrt();
                    c_z[i] = delta.sqrt();
                }
                SamplerKind::OdeEuler | SamplerKind::OdeHeun => {
                    let delta = (as_ / at).ln();
                    c_xt[i] = 1.0 + 0.5 * delta;
                    c_eps[i] = -0.5 * delta / one_t.sqrt();
                }
            }
        }
        let mut prev = combine(&[(&c_xt, x_t), (&c_x0, &x0), (&c_eps, &eps)])?;
        if self.config.kind == SamplerKind::OdeHeun && s.iter().any(Option::is_some) {
            prev = self.heun_correction(denoiser, x_t, &prev, &eps, t, s, &ab_t, cond)?;
        } else if c_z.iter().any(|&c| c != 0.0) {
            let z = normal_tensor(rng, x_t.dims(), x_t.dtype(), x_t.device())?;
            prev = (prev + scale(&c_z, &z)?)?;
        }
        Ok(StepOutput {
            prev_sample: prev,
            pred_x0: x0,
        })
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
    /// [`Error::Shape`] if `shape` is empty; otherwise as [`Sampler::step`].
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
        if shape.is_empty() {
            return Err(Error::Shape(
                "a sample needs a batch dimension, got an empty shape".to_string(),
            ));
        }
        let x = normal_tensor(rng, shape, DType::F32, device)?;
        self.sample_from(denoiser, &x, &timesteps, cond, rng)
    }

    /// The model's (ε̂, x̂₀) at `x` and per-sample timesteps `t` with cumulative products `ab`,
    /// clipped if configured.
    fn predict(
        &self,
        denoiser: &dyn Denoiser,
        x: &Tensor,
        t: &[usize],
        ab: &[f64],
        cond: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let device = x.device();
        let time: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        let time = Tensor::from_vec(time, t.len(), device)?;
        let out = denoiser.forward(x, &time, cond)?;
        if out.dims() != x.dims() {
            return Err(Error::Shape(format!(
                "the denoiser returned shape {:?} for an input of shape {:?}",
                out.dims(),
                x.dims()
            )));
        }
        let alpha: Vec<f64> = ab.iter().map(|a| a.sqrt()).collect();
        let sigma: Vec<f64> = ab.iter().map(|a| (1.0 - a).sqrt()).collect();
        let alpha = Tensor::from_vec(alpha, ab.len(), device)?;
        let sigma = Tensor::from_vec(sigma, ab.len(), device)?;
        let p = denoiser.parameterization();
        match self.config.clip_x0 {
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
    /// data), evaluates the model there at s and averages the two derivatives.
    #[allow(clippy::too_many_arguments)]
    fn heun_correction(
        &self,
        denoiser: &dyn Denoiser,
        x_t: &Tensor,
        x_euler: &Tensor,
        eps_t: &Tensor,
        t: &[usize],
        s: &[Option<usize>],
        ab_t: &[f64],
        cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        // Rows that go to the clean data are evaluated at their own t (a harmless placeholder)
        // and keep x̂₀ = x_euler.
        let t2: Vec<usize> = s.iter().zip(t).map(|(o, &ti)| o.unwrap_or(ti)).collect();
        let ab2: Vec<f64> = t2.iter().map(|&i| self.schedule.alpha_bar(i)).collect();
        let (eps_s, _) = self.predict(denoiser, x_euler, &t2, &ab2, cond)?;
        let n = t.len();
        // x_s = x_t + Δ/2 (½ x_t − ½ ε̂_t/σ_t + ½ x̃ − ½ ε̂_s/σ_s)
        let mut c_xt = vec![0.0; n];
        let mut c_euler = vec![0.0; n];
        let mut c_eps_t = vec![0.0; n];
        let mut c_eps_s = vec![0.0; n];
        for i in 0..n {
            if s[i].is_none() {
                c_euler[i] = 1.0;
                continue;
            }
            let delta = (ab2[i] / ab_t[i]).ln();
            c_xt[i] = 1.0 + 0.25 * delta;
            c_euler[i] = 0.25 * delta;
            c_eps_t[i] = -0.25 * delta / (1.0 - ab_t[i]).sqrt();
            c_eps_s[i] = -0.25 * delta / (1.0 - ab2[i]).sqrt();
        }
        combine(&[
            (&c_xt, x_t),
            (&c_euler, x_euler),
            (&c_eps_t, eps_t),
            (&c_eps_s, &eps_s),
        ])
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

fn batch_size(x: &Tensor) -> Result<usize> {
    x.dims()
        .first()
        .copied()
        .ok_or_else(|| Error::Shape("a sample needs a batch dimension, got a scalar".to_string()))
}

/// `c ⊙ x` with one coefficient per sample.
fn scale(c: &[f64], x: &Tensor) -> Result<Tensor> {
    let coef = Tensor::from_vec(c.to_vec(), c.len(), x.device())?;
    Ok(x.broadcast_mul(&per_sample(&coef, x, "coefficient")?)?)
}

/// `Σ c_k ⊙ x_k` with per-sample coefficients; terms whose coefficients are all zero are skipped
/// (so that they cost nothing and cannot turn an infinity into NaN).
fn combine(terms: &[(&[f64], &Tensor)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (c, x) in terms {
        if c.iter().all(|&v| v == 0.0) {
            continue;
        }
        let term = scale(c, x)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    match acc {
        Some(a) => Ok(a),
        None => Ok(terms[0].1.zeros_like()?),
    }
}
