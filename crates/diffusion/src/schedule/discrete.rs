//! Discrete noise schedules: T steps of a Markov forward process given by its betas.
//!
//! Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM, NeurIPS 2020), define
//! the forward process `q(x_i | x_{i−1}) = N(√(1 − β_i) x_{i−1}, β_i I)` with the marginal
//!
//! ```text
//! x_i | x_0 ~ N(√ᾱ_i x_0, (1 − ᾱ_i) I),     α_i = 1 − β_i,     ᾱ_i = α_0 α_1 ⋯ α_i,
//! ```
//!
//! and the Gaussian posterior `q(x_{i−1} | x_i, x_0)` of their eq. 7 (see
//! [`DiscreteSchedule::posterior`]). Indices are 0-based here, as in every implementation:
//! index `i` is the paper's timestep `t = i + 1`, and ᾱ₋₁ = 1 stands for the clean data.
//!
//! Families of betas ([`DiscreteSchedule`] constructors):
//!
//! - **linear** (DDPM): β linear from 10⁻⁴ to 0.02 over 1000 steps;
//! - **scaled linear** (Latent / Stable Diffusion): √β linear, e.g. from √0.00085 to √0.012;
//! - **cosine** (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models",
//!   ICML 2021, eq. 17; `squaredcos_cap_v2` in diffusers): `ᾱ(u) = cos²((u/T + s)/(1 + s) · π/2)`,
//!   `β_i = min(1 − ᾱ(i + 1)/ᾱ(i), 0.999)`, s = 0.008, computed in floating point (candle-
//!   transformers' version divides integers and yields all-zero betas but the last);
//! - user-supplied betas or ᾱ values.
//!
//! Lin, Liu, Li, Yang 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"
//! (WACV 2024) observe that these schedules leave signal at the last step (ᾱ_{T−1} > 0). Their
//! Algorithm 1 ([`DiscreteSchedule::rescale_zero_terminal_snr`]) shifts and scales √ᾱ so that the
//! last step is pure noise, and their Table 2 defines the ways of picking sampler timesteps
//! ([`Spacing`], [`DiscreteSchedule::timesteps`]).
//!
//! Samplers that skip steps (Song, Meng, Ermon 2021, "Denoising Diffusion Implicit Models",
//! ICLR 2021, §4.2; the "respacing" of Nichol & Dhariwal 2021) run on the sub-schedule that keeps
//! ᾱ at a subset of the timesteps, with betas recomputed from consecutive kept ᾱ values
//! ([`DiscreteSchedule::respace`]).
//!
//! # Invariants
//!
//! Every [`DiscreteSchedule`] has T ≥ 1 steps, and
//!
//! - every `β_i` is finite with `0 < β_i < 1`, with one exception: the **last** step of a schedule
//!   with T ≥ 2 may have `β_{T−1} = 1` exactly. That is a zero-terminal-SNR schedule (ᾱ_{T−1} = 0,
//!   σ = 1, log-SNR −∞), as produced by [`DiscreteSchedule::rescale_zero_terminal_snr`]. β = 1
//!   anywhere else would make every later ᾱ zero, and a one-step schedule with β = 1 would have no
//!   step carrying any signal, so both are rejected;
//! - ᾱ is strictly decreasing, with `0 < ᾱ_i < 1` for every i except the zero-terminal case
//!   `ᾱ_{T−1} = 0`. In particular σ_i = √(1 − ᾱ_i) > 0 at every step, so the log-SNR is finite
//!   (except −∞ at a zero terminal step) and the posterior coefficients never divide by zero. A
//!   β so small that `1 − β` rounds to 1 is rejected for this reason.
//!
//! Everything is plain `f64` math.
//!
//! ```
//! use recompose_diffusion::{DiscreteSchedule, Spacing};
//!
//! let schedule = DiscreteSchedule::cosine(1000, DiscreteSchedule::COSINE_S)?;
//! assert!((schedule.alpha_bar(499) - 0.493844).abs() < 5e-7);
//! assert_eq!(schedule.betas()[999], 0.999);
//!
//! // 50 DDIM steps, t = 980, 960, …, 0, and the schedule restricted to them.
//! let steps = schedule.timesteps(50, Spacing::Leading, 0)?;
//! assert_eq!((steps[0], steps[49]), (980, 0));
//! let (sub, map) = schedule.respace(&steps)?;
//! assert_eq!(sub.len(), 50);
//! assert_eq!(sub.alpha_bar(49), schedule.alpha_bar(map[49]));
//!
//! // Zero terminal SNR: the last step is pure noise.
//! let zero = schedule.rescale_zero_terminal_snr()?;
//! assert_eq!(zero.alpha_bar(999), 0.0);
//! assert_eq!(zero.log_snr(999), f64::NEG_INFINITY);
//! # Ok::<(), recompose_diffusion::Error>(())
//! ```

use crate::{Error, Result};

/// How sampler timesteps are spread over the T training steps (Lin et al. 2024, Table 2).
///
/// With T = 1000 and 10 steps (0-based indices, as returned by [`DiscreteSchedule::timesteps`]):
///
/// | spacing | definition | timesteps |
/// |---|---|---|
/// | [`Spacing::Leading`] | `arange(0, T, ⌊T/S⌋) + offset` | 900, 800, …, 0 (+ offset) |
/// | [`Spacing::Linspace`] | `round(linspace(0, T − 1, S))` | 999, 888, …, 111, 0 |
/// | [`Spacing::Trailing`] | `round(arange(T, 0, −T/S)) − 1` | 999, 899, …, 99 |
///
/// Only trailing (and linspace) start sampling at the last training step, which matters for
/// zero-terminal-SNR schedules; leading is what DDIM and Stable Diffusion used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spacing {
    /// `i · ⌊T/S⌋ + offset` for i = 0, …, S − 1: equally spaced from 0, leaving the top of the
    /// schedule unvisited unless S divides T and `offset = T/S − 1`.
    Leading,
    /// `round(i · (T − 1)/(S − 1))` for i = 0, …, S − 1 (just 0 when S = 1): both ends included.
    Linspace,
    /// `round(T − i · T/S) − 1` for i = 0, …, S − 1: equally spaced down from T − 1.
    Trailing,
}

/// The posterior `q(x_{i−1} | x_i, x_0) = N(coef_x0 · x_0 + coef_xt · x_i, variance · I)` of one
/// step (DDPM eq. 7), returned by [`DiscreteSchedule::posterior`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Posterior {
    /// The posterior variance `β̃_i = β_i (1 − ᾱ_{i−1})/(1 − ᾱ_i)`; 0 at i = 0.
    pub variance: f64,
    /// The coefficient of x_0 in the posterior mean, `√ᾱ_{i−1} β_i/(1 − ᾱ_i)`; 1 at i = 0.
    pub coef_x0: f64,
    /// The coefficient of x_i in the posterior mean, `√α_i (1 − ᾱ_{i−1})/(1 − ᾱ_i)`; 0 at i = 0.
    pub coef_xt: f64,
}

/// A discrete noise schedule: the betas β_0, …, β_{T−1} of a DDPM forward process with the
/// derived α_i = 1 − β_i and ᾱ_i = α_0 ⋯ α_i.
///
/// Indices are 0-based training timesteps. Accessors that take an index panic if it is `≥ T`,
/// like slice indexing; constructors and transformations validate their inputs and return
/// [`Error::Config`] instead. See the [module documentation](self) for the invariants.
///
/// ```
/// use recompose_diffusion::DiscreteSchedule;
///
/// // DDPM's linear schedule.
/// let ddpm = DiscreteSchedule::linear(1000, 1e-4, 0.02)?;
/// assert_eq!(ddpm.len(), 1000);
/// assert!((ddpm.alpha_bar(999) - 4.0358e-5).abs() < 1e-9);
/// let i = 500;
/// let (a, s) = (ddpm.sqrt_alpha_bar(i), ddpm.sigma(i));
/// assert!((a * a + s * s - 1.0).abs() < 1e-15);
/// # Ok::<(), recompose_diffusion::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DiscreteSchedule {
    betas: Vec<f64>,
    alphas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

impl DiscreteSchedule {
    /// The offset s = 0.008 of the cosine schedule (Nichol & Dhariwal 2021).
    pub const COSINE_S: f64 = 0.008;
    /// The cap 0.999 on the cosine schedule's betas (Nichol & Dhariwal 2021), which keeps the
    /// last steps from being singular.
    pub const COSINE_MAX_BETA: f64 = 0.999;

    /// The most steps a schedule may have (a thousand times the usual T = 1000). A step count
    /// read from a configuration file is checked against it before any table is allocated.
    pub const MAX_STEPS: usize = 1_000_000;

    /// T betas linear from `beta_start` (index 0) to `beta_end` (index T − 1), both exact; a
    /// one-step schedule has β_0 = `beta_start`. DDPM uses `linear(1000, 1e-4, 0.02)`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `t == 0` or `t >` [`Self::MAX_STEPS`], unless both endpoints lie in
    /// (0, 1), or if the resulting ᾱ is not strictly decreasing (a β too small to change
    /// `1 − β` from 1).
    pub fn linear(t: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        check_len(t)?;
        check_open_unit("linear schedule beta_start", beta_start)?;
        check_open_unit("linear schedule beta_end", beta_end)?;
        Self::from_betas(linspace(beta_start, beta_end, t))
    }

    /// T betas whose square roots are linear from `√beta_start` to `√beta_end` (the
    /// "scaled_linear" schedule of Latent / Stable Diffusion, which uses
    /// `scaled_linear(1000, 0.00085, 0.012)`).
    ///
    /// # Errors
    ///
    /// As [`DiscreteSchedule::linear`].
    pub fn scaled_linear(t: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        check_len(t)?;
        check_open_unit("scaled linear schedule beta_start", beta_start)?;
        check_open_unit("scaled linear schedule beta_end", beta_end)?;
        let betas = linspace(beta_start.sqrt(), beta_end.sqrt(), t)
            .into_iter()
            .map(|r| r * r)
            .collect();
        Self::from_betas(betas)
    }

    /// The cosine schedule of Nichol & Dhariwal 2021 with offset `s` and betas capped at
    /// [`Self::COSINE_MAX_BETA`] (diffusers' `squaredcos_cap_v2`):
    /// `β_i = min(1 − ᾱ(i + 1)/ᾱ(i), 0.999)` with `ᾱ(u) = cos²((u/T + s)/(1 + s) · π/2)`.
    ///
    /// The paper uses s = [`Self::COSINE_S`] = 0.008. See
    /// [`DiscreteSchedule::cosine_with_max_beta`] for the computation.
    ///
    /// # Errors
    ///
    /// As [`DiscreteSchedule::cosine_with_max_beta`].
    pub fn cosine(t: usize, s: f64) -> Result<Self> {
        Self::cosine_with_max_beta(t, s, Self::COSINE_MAX_BETA)
    }

    /// The cosine schedule with a cap `max_beta` of your choice:
    /// `β_i = min(1 − ᾱ(i + 1)/ᾱ(i), max_beta)` with `ᾱ(u) = cos²(θ(u))`,
    /// `θ(u) = (u/T + s)/(1 + s) · π/2`, and ᾱ_i the product of the capped `1 − β`.
    ///
    /// `1 − ᾱ(i + 1)/ᾱ(i)` is evaluated as `sin(θ_{i+1} − θ_i) sin(θ_{i+1} + θ_i) / cos²(θ_i)`
    /// (from `cos²a − cos²b = sin(b − a) sin(b + a)`), which avoids the cancellation of the
    /// direct form for the tiny first betas.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `t == 0` or `t >` [`Self::MAX_STEPS`], unless `s` is finite and ≥ 0
    /// and `max_beta` lies in (0, 1), or if the resulting ᾱ is not strictly decreasing.
    pub fn cosine_with_max_beta(t: usize, s: f64, max_beta: f64) -> Result<Self> {
        check_len(t)?;
        if !(s.is_finite() && s >= 0.0) {
            return Err(Error::Config(format!(
                "cosine schedule offset must be finite and >= 0, got s = {s}"
            )));
        }
        check_open_unit("cosine schedule max_beta", max_beta)?;
        let n = t as f64;
        let theta = |u: usize| (u as f64 / n + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2;
        let step = std::f64::consts::FRAC_PI_2 / (n * (1.0 + s));
        let betas = (0..t)
            .map(|i| {
                let (a, b) = (theta(i), theta(i + 1));
                let cos_a = a.cos();
                let beta = step.sin() * (a + b).sin() / (cos_a * cos_a);
                beta.min(max_beta)
            })
            .collect();
        Self::from_betas(betas)
    }

    /// A schedule with the given betas; ᾱ is their running product of `1 − β`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `betas` is empty, longer than [`Self::MAX_STEPS`], or breaks the
    /// invariants of the
    /// [module documentation](self): every β in (0, 1), except that the last of at least two may
    /// be exactly 1 (zero terminal SNR), and ᾱ strictly decreasing.
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        check_len(betas.len())?;
        check_betas(&betas)?;
        let mut product = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|&beta| {
                product *= 1.0 - beta;
                product
            })
            .collect();
        Self::from_parts(betas, alphas_cumprod)
    }

    /// A schedule with the given ᾱ values, kept exactly; the betas are recomputed as
    /// `β_i = (ᾱ_{i−1} − ᾱ_i)/ᾱ_{i−1}` with ᾱ₋₁ = 1.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `alphas_cumprod` is empty, not strictly decreasing, or has a value
    /// outside (0, 1) other than a last value of exactly 0 in a schedule of at least two steps
    /// (zero terminal SNR).
    pub fn from_alphas_cumprod(alphas_cumprod: Vec<f64>) -> Result<Self> {
        check_len(alphas_cumprod.len())?;
        check_alphas_cumprod(&alphas_cumprod)?;
        let betas = betas_from_alphas_cumprod(&alphas_cumprod);
        Self::from_parts(betas, alphas_cumprod)
    }

    /// Builds the schedule after checking every invariant on both vectors.
    fn from_parts(betas: Vec<f64>, alphas_cumprod: Vec<f64>) -> Result<Self> {
        debug_assert_eq!(betas.len(), alphas_cumprod.len());
        check_len(betas.len())?;
        check_betas(&betas)?;
        check_alphas_cumprod(&alphas_cumprod)?;
        let last = betas.len() - 1;
        if (betas[last] == 1.0) != (alphas_cumprod[last] == 0.0) {
            return Err(Error::Config(format!(
                "a schedule has zero terminal SNR exactly when its last beta is 1, got last \
                 beta = {} and last alpha_bar = {}",
                betas[last], alphas_cumprod[last]
            )));
        }
        let alphas = betas.iter().map(|&beta| 1.0 - beta).collect();
        Ok(Self {
            betas,
            alphas,
            alphas_cumprod,
        })
    }

    /// The number of steps T (at least 1).
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always `false`: a schedule has at least one step.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The betas β_0, …, β_{T−1}.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// The alphas α_i = 1 − β_i.
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }

    /// The cumulative products ᾱ_i = α_0 ⋯ α_i, strictly decreasing.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// Whether the last step is pure noise: ᾱ_{T−1} = 0 (equivalently β_{T−1} = 1).
    pub fn has_zero_terminal_snr(&self) -> bool {
        self.alphas_cumprod[self.len() - 1] == 0.0
    }

    /// β_i.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn beta(&self, i: usize) -> f64 {
        self.betas[i]
    }

    /// α_i = 1 − β_i.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn alpha(&self, i: usize) -> f64 {
        self.alphas[i]
    }

    /// ᾱ_i, the signal variance of `x_i | x_0 ~ N(√ᾱ_i x_0, (1 − ᾱ_i) I)`.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn alpha_bar(&self, i: usize) -> f64 {
        self.alphas_cumprod[i]
    }

    /// ᾱ_{i−1}, the value one step earlier, with ᾱ₋₁ = 1 at i = 0 (the clean data), as DDPM and
    /// DDIM updates need.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn alpha_bar_prev(&self, i: usize) -> f64 {
        assert!(
            i < self.len(),
            "index {i} out of a schedule of {} steps",
            self.len()
        );
        if i == 0 {
            1.0
        } else {
            self.alphas_cumprod[i - 1]
        }
    }

    /// √ᾱ_i, the signal scale of step i.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn sqrt_alpha_bar(&self, i: usize) -> f64 {
        self.alphas_cumprod[i].sqrt()
    }

    /// σ_i = √(1 − ᾱ_i), the noise scale of step i; in (0, 1\].
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn sigma(&self, i: usize) -> f64 {
        (1.0 - self.alphas_cumprod[i]).sqrt()
    }

    /// Both scales of step i, (α_i, σ_i) = (√ᾱ_i, √(1 − ᾱ_i)): the noise level the samplers
    /// step from and to.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn marginal(&self, i: usize) -> super::Marginal {
        super::Marginal {
            alpha: self.sqrt_alpha_bar(i),
            sigma: self.sigma(i),
        }
    }

    /// The log signal-to-noise ratio `λ_i = log(ᾱ_i/(1 − ᾱ_i))`, strictly decreasing in i;
    /// −∞ at the last step of a zero-terminal-SNR schedule.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn log_snr(&self, i: usize) -> f64 {
        let alpha_bar = self.alphas_cumprod[i];
        alpha_bar.ln() - (-alpha_bar).ln_1p()
    }

    /// The posterior `q(x_{i−1} | x_i, x_0)` of DDPM eq. 7 (with ᾱ₋₁ = 1):
    ///
    /// ```text
    /// mean     = √ᾱ_{i−1} β_i/(1 − ᾱ_i) · x_0 + √α_i (1 − ᾱ_{i−1})/(1 − ᾱ_i) · x_i
    /// variance = β̃_i = β_i (1 − ᾱ_{i−1})/(1 − ᾱ_i)
    /// ```
    ///
    /// At i = 0 the posterior is the point mass at x_0: coefficients (1, 0) and variance 0,
    /// returned exactly.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn posterior(&self, i: usize) -> Posterior {
        assert!(
            i < self.len(),
            "index {i} out of a schedule of {} steps",
            self.len()
        );
        if i == 0 {
            return Posterior {
                variance: 0.0,
                coef_x0: 1.0,
                coef_xt: 0.0,
            };
        }
        let beta = self.betas[i];
        let one_minus = 1.0 - self.alphas_cumprod[i];
        let prev = self.alphas_cumprod[i - 1];
        let one_minus_prev = 1.0 - prev;
        Posterior {
            variance: beta * one_minus_prev / one_minus,
            coef_x0: prev.sqrt() * beta / one_minus,
            coef_xt: self.alphas[i].sqrt() * one_minus_prev / one_minus,
        }
    }

    /// The posterior variance β̃_i of [`DiscreteSchedule::posterior`].
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn posterior_variance(&self, i: usize) -> f64 {
        self.posterior(i).variance
    }

    /// The coefficient of x_0 in the posterior mean (see [`DiscreteSchedule::posterior`]).
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn posterior_mean_coef_x0(&self, i: usize) -> f64 {
        self.posterior(i).coef_x0
    }

    /// The coefficient of x_i in the posterior mean (see [`DiscreteSchedule::posterior`]).
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`.
    pub fn posterior_mean_coef_xt(&self, i: usize) -> f64 {
        self.posterior(i).coef_xt
    }

    /// The schedule rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1): √ᾱ is shifted
    /// and scaled, `√ᾱ'_i = (√ᾱ_i − √ᾱ_{T−1}) · √ᾱ_0/(√ᾱ_0 − √ᾱ_{T−1})`, so that the first value
    /// is unchanged and the last is exactly 0; the betas are rebuilt from the new ᾱ (the last
    /// becomes exactly 1).
    ///
    /// The first ᾱ and β are kept bit for bit; a schedule that already has zero terminal SNR
    /// comes back unchanged up to rounding.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the schedule has a single step (its first and last steps coincide),
    /// or if rounding broke the strict decrease of ᾱ.
    pub fn rescale_zero_terminal_snr(&self) -> Result<Self> {
        let t = self.len();
        if t < 2 {
            return Err(Error::Config(
                "zero-terminal-SNR rescaling needs at least two steps".to_string(),
            ));
        }
        let first = self.alphas_cumprod[0].sqrt();
        let last = self.alphas_cumprod[t - 1].sqrt();
        let scale = first / (first - last);
        let mut alphas_cumprod: Vec<f64> = self
            .alphas_cumprod
            .iter()
            .map(|&a| {
                let r = (a.sqrt() - last) * scale;
                r * r
            })
            .collect();
        alphas_cumprod[0] = self.alphas_cumprod[0];
        alphas_cumprod[t - 1] = 0.0;
        let mut betas = betas_from_alphas_cumprod(&alphas_cumprod);
        betas[0] = self.betas[0];
        Self::from_parts(betas, alphas_cumprod)
    }

    /// `steps` training timesteps for a sampler, in descending order, spread as `spacing`
    /// says (Lin et al. 2024, Table 2; see [`Spacing`]). `offset` is added to
    /// [`Spacing::Leading`] timesteps (Stable Diffusion uses 1); the other spacings already span
    /// the whole schedule and take `offset = 0`.
    ///
    /// Rounding is done exactly in integers, halves to even (NumPy's `round`). For
    /// `steps ≤ T` the timesteps are always distinct.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `steps == 0` or `steps > T`, if `offset ≠ 0` with a spacing other
    /// than leading, or if the offset pushes a leading timestep to T or beyond.
    pub fn timesteps(&self, steps: usize, spacing: Spacing, offset: usize) -> Result<Vec<usize>> {
        let t = self.len();
        if steps == 0 || steps > t {
            return Err(Error::Config(format!(
                "sampler step count must lie in 1..={t} for a schedule of {t} steps, got {steps}"
            )));
        }
        if offset != 0 && spacing != Spacing::Leading {
            return Err(Error::Config(format!(
                "a timestep offset applies to leading spacing only, got offset {offset} with \
                 {spacing:?}"
            )));
        }
        let timesteps = match spacing {
            Spacing::Leading => {
                let ratio = t / steps;
                let top = (steps - 1) * ratio;
                if offset >= t - top {
                    return Err(Error::Config(format!(
                        "timestep offset {offset} moves the leading timestep {top} past the last \
                         index {} of the schedule",
                        t - 1
                    )));
                }
                (0..steps).rev().map(|i| i * ratio + offset).collect()
            }
            Spacing::Linspace => {
                if steps == 1 {
                    vec![0]
                } else {
                    (0..steps)
                        .rev()
                        .map(|i| {
                            div_round_half_even((t - 1) as u128 * i as u128, steps as u128 - 1)
                        })
                        .collect()
                }
            }
            Spacing::Trailing => (0..steps)
                .map(|i| div_round_half_even(t as u128 * (steps - i) as u128, steps as u128) - 1)
                .collect(),
        };
        Ok(timesteps)
    }

    /// The schedule restricted to the given timesteps (DDIM, Song et al. 2021, §4.2; the
    /// respacing of Nichol & Dhariwal 2021), and the map from its indices to the original
    /// timesteps.
    ///
    /// The timesteps may come in any order (e.g. the descending output of
    /// [`DiscreteSchedule::timesteps`]); they are sorted ascending as k_0 < k_1 < ⋯. The new
    /// schedule has `ᾱ'_j = ᾱ_{k_j}` exactly and `β'_j = 1 − ᾱ_{k_j}/ᾱ_{k_{j−1}}` (ᾱ_{k_{−1}} = 1),
    /// so its own running product of `1 − β'` reproduces ᾱ' up to rounding. Where a kept step
    /// directly follows the previous one (k_j = k_{j−1} + 1, or k_0 = 0) the original β is kept
    /// exactly, so respacing to every timestep returns the original schedule exactly.
    ///
    /// The returned map satisfies `map[j] = k_j`: the training timestep to give the model at
    /// step j of the new schedule.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `timesteps` is empty, has a duplicate or a timestep `≥ T`.
    pub fn respace(&self, timesteps: &[usize]) -> Result<(DiscreteSchedule, Vec<usize>)> {
        if timesteps.is_empty() {
            return Err(Error::Config(
                "respacing needs at least one timestep".to_string(),
            ));
        }
        let t = self.len();
        let mut kept = timesteps.to_vec();
        kept.sort_unstable();
        if let Some(&bad) = kept.iter().find(|&&k| k >= t) {
            return Err(Error::Config(format!(
                "timestep {bad} is out of a schedule of {t} steps"
            )));
        }
        if let Some(w) = kept.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Config(format!(
                "timestep {} is kept twice in respacing",
                w[0]
            )));
        }
        let alphas_cumprod: Vec<f64> = kept.iter().map(|&k| self.alphas_cumprod[k]).collect();
        let mut betas = Vec::with_capacity(kept.len());
        let mut prev: Option<usize> = None;
        for &k in &kept {
            let follows = match prev {
                None => k == 0,
                Some(p) => k == p + 1,
            };
            let beta = if follows {
                self.betas[k]
            } else {
                // ᾱ₋₁ = 1 before the first kept step.
                let before = prev.map_or(1.0, |p| self.alphas_cumprod[p]);
                (before - self.alphas_cumprod[k]) / before
            };
            betas.push(beta);
            prev = Some(k);
        }
        let schedule = Self::from_parts(betas, alphas_cumprod)?;
        Ok((schedule, kept))
    }
}

/// `n` values linear from `a` to `b`, both exact (`[a]` when n = 1), as NumPy's `linspace`.
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let last = (n - 1) as f64;
    let mut values: Vec<f64> = (0..n).map(|i| a + (b - a) * (i as f64 / last)).collect();
    values[n - 1] = b;
    values
}

/// `β_i = (ᾱ_{i−1} − ᾱ_i)/ᾱ_{i−1}` with ᾱ₋₁ = 1; the subtraction of neighbouring values is exact
/// or nearly so, which keeps small betas accurate.
fn betas_from_alphas_cumprod(alphas_cumprod: &[f64]) -> Vec<f64> {
    let mut before = 1.0;
    alphas_cumprod
        .iter()
        .map(|&a| {
            let beta = (before - a) / before;
            before = a;
            beta
        })
        .collect()
}

/// `round(n / d)` for d > 0, halves to even, as `usize`.
fn div_round_half_even(n: u128, d: u128) -> usize {
    let (q, r) = (n / d, n % d);
    let q = match (2 * r).cmp(&d) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
        std::cmp::Ordering::Less => q,
    };
    // q ≤ n/d + 1 with n/d < T, so it fits.
    q as usize
}

fn check_len(t: usize) -> Result<()> {
    if t == 0 {
        return Err(Error::Config(
            "a discrete schedule needs at least one step".to_string(),
        ));
    }
    if t > DiscreteSchedule::MAX_STEPS {
        return Err(Error::Config(format!(
            "a discrete schedule has at most {} steps, got {t}",
            DiscreteSchedule::MAX_STEPS
        )));
    }
    Ok(())
}

fn check_open_unit(what: &str, value: f64) -> Result<()> {
    // Written so that NaN fails the comparison and is rejected.
    if !(value > 0.0 && value < 1.0) {
        return Err(Error::Config(format!(
            "{what} must lie in (0, 1), got {value}"
        )));
    }
    Ok(())
}

/// Every β in (0, 1), except a last β of exactly 1 when T ≥ 2.
fn check_betas(betas: &[f64]) -> Result<()> {
    let last = betas.len() - 1;
    for (i, &beta) in betas.iter().enumerate() {
        let terminal = i == last && last > 0 && beta == 1.0;
        if !(terminal || (beta > 0.0 && beta < 1.0)) {
            return Err(Error::Config(format!(
                "beta {i} = {beta} is outside (0, 1) (only the last of at least two steps may be \
                 exactly 1)"
            )));
        }
    }
    Ok(())
}

/// ᾱ strictly decreasing, every value in (0, 1) except a last value of exactly 0 when T ≥ 2.
fn check_alphas_cumprod(alphas_cumprod: &[f64]) -> Result<()> {
    let last = alphas_cumprod.len() - 1;
    for (i, &a) in alphas_cumprod.iter().enumerate() {
        let terminal = i == last && last > 0 && a == 0.0;
        if !(terminal || (a > 0.0 && a < 1.0)) {
            return Err(Error::Config(format!(
                "alpha_bar {i} = {a} is outside (0, 1) (only the last of at least two steps may \
                 be exactly 0)"
            )));
        }
    }
    if let Some(i) = alphas_cumprod.windows(2).position(|w| w[1] >= w[0]) {
        return Err(Error::Config(format!(
            "alpha_bar must be strictly decreasing, but alpha_bar {} = {} >= alpha_bar {} = {} \
             (a beta too small to change 1 - beta?)",
            i + 1,
            alphas_cumprod[i + 1],
            i,
            alphas_cumprod[i]
        )));
    }
    Ok(())
}
