//! The variance-preserving SDE (VP-SDE) with a linear β(t).
//!
//! Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole 2021, "Score-Based Generative Modeling
//! through Stochastic Differential Equations" (ICLR 2021), define the VP-SDE forward process
//!
//! ```text
//! dx = −½ β(t) x dt + √β(t) dw,        β(t) = β_min + t (β_max − β_min),   t ∈ [0, 1]
//! ```
//!
//! is the continuous-time limit of DDPM. Its transition kernel is Gaussian,
//! `x_t | x_0 ~ N(α(t) x_0, σ(t)² I)`, with the closed form given there
//!
//! ```text
//! α(t) = exp(−¼ t² (β_max − β_min) − ½ t β_min) = exp(−½ ∫₀ᵗ β(s) ds),   σ(t)² = 1 − α(t)².
//! ```
//!
//! The defaults β_min = 0.1, β_max = 20 match DDPM's linear schedule with 1000 steps. Sampling
//! stops at a small time ε = `t_min` (10⁻³ by default) instead of 0, where the score is singular.
//!
//! All quantities are computed in `f64` from the integral `S(t) = ∫₀ᵗ β(s) ds` with `exp_m1` and
//! `ln_1p`, so that σ(t) and the log-SNR stay accurate near t = 0 (where σ → 0) and near t = 1
//! (where α is small).

use crate::{Error, Result};

/// The signal and noise scales of the VP-SDE marginal `x_t | x_0 ~ N(α x_0, σ² I)` at one time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Marginal {
    /// The signal scale α(t) ∈ (0, 1\].
    pub alpha: f64,
    /// The noise standard deviation σ(t) = √(1 − α(t)²) ∈ \[0, 1).
    pub sigma: f64,
}

/// How a sampler's times are spread over \[t_min, t_max\] ([`VpSde::grid`]).
///
/// In configuration files and JSON it is written `"linear"` or `"log-snr"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeGrid {
    /// Equally spaced in t ([`VpSde::time_grid`]).
    Linear,
    /// Equally spaced in log-SNR ([`VpSde::time_grid_log_snr`]).
    LogSnr,
}

/// The continuous variance-preserving SDE `dx = −½ β(t) x dt + √β(t) dw` with the linear rate
/// `β(t) = β_min + t (β_max − β_min)` (Song et al. 2021), sampled on t ∈ \[t_min, t_max\].
///
/// Invariants, checked by the constructors: `0 < β_min ≤ β_max` (both finite) and
/// `0 < t_min < t_max ≤ 1`.
///
/// The formulas are defined for every t ≥ 0 (β keeps growing linearly past t = 1); the time range
/// only bounds the grids that samplers walk ([`VpSde::time_grid`], [`VpSde::time_grid_log_snr`]).
///
/// ```
/// use recompose_diffusion::VpSde;
///
/// let sde = VpSde::linear(); // β_min = 0.1, β_max = 20, t ∈ [1e-3, 1]
/// let m = sde.marginal(0.5);
/// assert!((m.alpha * m.alpha + m.sigma * m.sigma - 1.0).abs() < 1e-12);
///
/// // The log-SNR can be inverted exactly, for log-SNR-uniform sampling grids.
/// let t = sde.t_from_log_snr(sde.log_snr(0.5))?;
/// assert!((t - 0.5).abs() < 1e-12);
///
/// let grid = sde.time_grid(10)?;
/// assert_eq!(grid.len(), 11);
/// assert_eq!((grid[0], grid[10]), (1.0, 1e-3));
/// # Ok::<(), recompose_diffusion::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VpSde {
    beta_min: f64,
    beta_max: f64,
    t_min: f64,
    t_max: f64,
}

impl Default for VpSde {
    /// The schedule of Song et al. 2021: [`VpSde::linear`].
    fn default() -> Self {
        Self::linear()
    }
}

impl VpSde {
    /// The default β_min = 0.1 (Song et al. 2021; DDPM's β₁ = 10⁻⁴ times 1000 steps).
    pub const DEFAULT_BETA_MIN: f64 = 0.1;
    /// The default β_max = 20 (Song et al. 2021; DDPM's β_T = 0.02 times 1000 steps).
    pub const DEFAULT_BETA_MAX: f64 = 20.0;
    /// The default smallest sampling time ε = 10⁻³ (Song et al. 2021 for the VP-SDE).
    pub const DEFAULT_T_MIN: f64 = 1e-3;
    /// The default largest sampling time, 1.
    pub const DEFAULT_T_MAX: f64 = 1.0;

    /// A VP-SDE with β(t) = β_min + t (β_max − β_min) on the default time range
    /// t ∈ \[10⁻³, 1\].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless both rates are finite and `0 < beta_min ≤ beta_max`.
    pub fn new(beta_min: f64, beta_max: f64) -> Result<Self> {
        if !(beta_min.is_finite() && beta_max.is_finite()) {
            return Err(Error::Config(format!(
                "VP-SDE rates must be finite, got beta_min = {beta_min}, beta_max = {beta_max}"
            )));
        }
        if !(beta_min > 0.0 && beta_min <= beta_max) {
            return Err(Error::Config(format!(
                "VP-SDE rates need 0 < beta_min <= beta_max, got beta_min = {beta_min}, \
                 beta_max = {beta_max}"
            )));
        }
        Ok(Self {
            beta_min,
            beta_max,
            t_min: Self::DEFAULT_T_MIN,
            t_max: Self::DEFAULT_T_MAX,
        })
    }

    /// The schedule of Song et al. 2021: β_min = 0.1, β_max = 20, t ∈ \[10⁻³, 1\].
    pub const fn linear() -> Self {
        Self {
            beta_min: Self::DEFAULT_BETA_MIN,
            beta_max: Self::DEFAULT_BETA_MAX,
            t_min: Self::DEFAULT_T_MIN,
            t_max: Self::DEFAULT_T_MAX,
        }
    }

    /// The same rates on the sampling range t ∈ \[t_min, t_max\].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless `0 < t_min < t_max ≤ 1`.
    pub fn with_time_range(self, t_min: f64, t_max: f64) -> Result<Self> {
        // Written so that NaN fails every comparison and is rejected.
        if !(t_min > 0.0 && t_min < t_max && t_max <= 1.0) {
            return Err(Error::Config(format!(
                "VP-SDE time range needs 0 < t_min < t_max <= 1, got t_min = {t_min}, \
                 t_max = {t_max}"
            )));
        }
        Ok(Self {
            t_min,
            t_max,
            ..self
        })
    }

    /// β_min = β(0).
    pub fn beta_min(&self) -> f64 {
        self.beta_min
    }

    /// β_max = β(1).
    pub fn beta_max(&self) -> f64 {
        self.beta_max
    }

    /// The smallest sampling time ε, where samplers stop.
    pub fn t_min(&self) -> f64 {
        self.t_min
    }

    /// The largest sampling time, where samplers start.
    pub fn t_max(&self) -> f64 {
        self.t_max
    }

    /// The noise rate `β(t) = β_min + t (β_max − β_min)`.
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }

    /// The integrated rate `S(t) = ∫₀ᵗ β(s) ds = β_min t + ½ t² (β_max − β_min)`.
    pub fn integral_beta(&self, t: f64) -> f64 {
        t * (self.beta_min + 0.5 * t * (self.beta_max - self.beta_min))
    }

    /// `log α(t) = −½ ∫₀ᵗ β(s) ds = −¼ t² (β_max − β_min) − ½ t β_min`.
    pub fn log_alpha(&self, t: f64) -> f64 {
        -0.5 * self.integral_beta(t)
    }

    /// The signal scale `α(t) = exp(−¼ t² (β_max − β_min) − ½ t β_min)`; α(0) = 1.
    pub fn alpha(&self, t: f64) -> f64 {
        self.log_alpha(t).exp()
    }

    /// The noise scale `σ(t) = √(1 − α(t)²)`, computed as `√(−expm1(2 log α(t)))` so that it
    /// stays accurate for small t; σ(0) = 0.
    pub fn sigma(&self, t: f64) -> f64 {
        (-(2.0 * self.log_alpha(t)).exp_m1()).sqrt()
    }

    /// Both scales of the marginal `x_t | x_0 ~ N(α(t) x_0, σ(t)² I)`.
    pub fn marginal(&self, t: f64) -> Marginal {
        Marginal {
            alpha: self.alpha(t),
            sigma: self.sigma(t),
        }
    }

    /// The log signal-to-noise ratio `λ(t) = log(α²/σ²) = 2 log α(t) − 2 log σ(t)`.
    ///
    /// With `S = ∫₀ᵗ β`, `α² = e^{−S}` and `σ² = 1 − e^{−S}`, so `λ = −log(expm1(S))`, evaluated as
    /// `−S − ln_1p(−e^{−S})` once S > ln 2 to stay finite and accurate for large S. λ is strictly
    /// decreasing in t ≥ 0, with λ(0) = +∞.
    pub fn log_snr(&self, t: f64) -> f64 {
        let s = self.integral_beta(t);
        if s > std::f64::consts::LN_2 {
            -s - (-(-s).exp()).ln_1p()
        } else {
            -s.exp_m1().ln()
        }
    }

    /// The drift coefficient `−½ β(t)`: the forward SDE's drift is `f(x, t) = −½ β(t) x`.
    pub fn drift_coef(&self, t: f64) -> f64 {
        -0.5 * self.beta(t)
    }

    /// The squared diffusion coefficient `g(t)² = β(t)`: the forward SDE's noise term is
    /// `√β(t) dw`.
    pub fn diffusion_sq(&self, t: f64) -> f64 {
        self.beta(t)
    }

    /// The time t ≥ 0 with `log_snr(t) = lambda`: the exact inverse of [`VpSde::log_snr`].
    ///
    /// Inverting `λ = −log(expm1(S))` gives `S = log(1 + e^{−λ}) = softplus(−λ)` (evaluated
    /// stably), and t is the non-negative root of `½ (β_max − β_min) t² + β_min t − S = 0`,
    /// computed as `t = 2S / (β_min + √(β_min² + 2 (β_max − β_min) S))`, which has no
    /// cancellation.
    ///
    /// Every finite λ has exactly one such root, and it is returned even when it lies outside
    /// \[t_min, t_max\] (λ above `log_snr(t_min)` gives t < t_min; λ below `log_snr(1)` gives
    /// t > 1, on the linear extension of β). Callers that need a sampling time clamp it
    /// themselves. `lambda = +∞` gives t = 0.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `lambda` is NaN or −∞ (no finite time has that log-SNR).
    pub fn t_from_log_snr(&self, lambda: f64) -> Result<f64> {
        if lambda.is_nan() || lambda == f64::NEG_INFINITY {
            return Err(Error::Config(format!(
                "log-SNR {lambda} is reached at no finite VP-SDE time"
            )));
        }
        self.t_from_integral_beta(softplus(-lambda))
    }

    /// The time t ≥ 0 with `alpha(t) = alpha`: the exact inverse of [`VpSde::alpha`].
    ///
    /// `S = ∫₀ᵗ β = −2 log α`, then t is the non-negative root of the same quadratic as in
    /// [`VpSde::t_from_log_snr`]. As there, the root is returned even outside \[t_min, t_max\]
    /// (α < α(1) gives t > 1); α = 1 gives t = 0.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless `0 < alpha ≤ 1`.
    pub fn t_from_alpha(&self, alpha: f64) -> Result<f64> {
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(Error::Config(format!(
                "VP-SDE signal scale must satisfy 0 < alpha <= 1, got {alpha}"
            )));
        }
        self.t_from_integral_beta(-2.0 * alpha.ln())
    }

    /// The non-negative root t of `∫₀ᵗ β = s` for `s ≥ 0`.
    fn t_from_integral_beta(&self, s: f64) -> Result<f64> {
        debug_assert!(s >= 0.0, "integrated rate must be non-negative, got {s}");
        let b = self.beta_min;
        let two_a = self.beta_max - self.beta_min;
        let t = 2.0 * s / (b + (b * b + 2.0 * two_a * s).sqrt());
        // Only an overflow of the discriminant (|λ| near f64::MAX) can end here.
        if !t.is_finite() || (s > 0.0 && t == 0.0) {
            return Err(Error::Config(format!(
                "integrated rate {s} is out of the representable VP-SDE time range"
            )));
        }
        Ok(t)
    }

    /// `steps + 1` times from `t_max` down to `t_min`, spread as `grid` says.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `steps == 0`.
    pub fn grid(&self, steps: usize, grid: TimeGrid) -> Result<Vec<f64>> {
        match grid {
            TimeGrid::Linear => self.time_grid(steps),
            TimeGrid::LogSnr => self.time_grid_log_snr(steps),
        }
    }

    /// `steps + 1` times decreasing linearly from `t_max` to `t_min`:
    /// `t_i = t_max − (t_max − t_min) i / steps`, both endpoints exact.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `steps == 0`.
    pub fn time_grid(&self, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        let n = steps as f64;
        let mut grid: Vec<f64> = (0..=steps)
            .map(|i| self.t_max - (self.t_max - self.t_min) * (i as f64 / n))
            .collect();
        grid[steps] = self.t_min;
        Ok(grid)
    }

    /// `steps + 1` times from `t_max` down to `t_min`, equally spaced in log-SNR:
    /// `t_i = λ⁻¹(λ(t_max) + (λ(t_min) − λ(t_max)) i / steps)`, both endpoints exact.
    ///
    /// Spends more steps at small t, where the log-SNR changes fastest.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `steps == 0`.
    pub fn time_grid_log_snr(&self, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        let n = steps as f64;
        let lambda_start = self.log_snr(self.t_max);
        let lambda_end = self.log_snr(self.t_min);
        let mut grid = Vec::with_capacity(steps + 1);
        grid.push(self.t_max);
        for i in 1..steps {
            let lambda = lambda_start + (lambda_end - lambda_start) * (i as f64 / n);
            let t = self.t_from_log_snr(lambda)?;
            grid.push(t.clamp(self.t_min, self.t_max));
        }
        grid.push(self.t_min);
        Ok(grid)
    }
}

/// `log(1 + e^x)` without overflow for large x or loss of precision for very negative x.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

fn check_steps(steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::Config(
            "a time grid needs at least one step".to_string(),
        ));
    }
    Ok(())
}
