//! The one interface every diffusion model implements, and an exact analytic model.
//!
//! A [`Denoiser`] takes a noised batch x_t, the per-sample time t and optional conditioning, and
//! returns its prediction in the [`Parameterization`] it declares (ε, x₀ or v). Samplers
//! ([`crate::sampler`]), composition operators and decomposition only ever talk to this trait, so
//! they work on any model: a neural network, a composition of networks, or the exact
//! [`GaussianMixtureDenoiser`].
//!
//! # The time convention
//!
//! `t` is a 1-D `f32` tensor with one value per sample (the batch is the first dimension of x_t).
//! Its meaning is the one of the schedule the model was trained with; samplers pass whatever
//! time values their schedule uses:
//!
//! - with a [`DiscreteSchedule`] (everything in [`crate::sampler`]), `t` holds the 0-based
//!   **training timestep index** i as a float (0.0, 1.0, …, T − 1), never a respaced index: a
//!   50-step sampler over a 1000-step schedule passes values such as 999.0, 979.0, …;
//! - with the continuous [`VpSde`], `t` is the time in \[0, 1\].
//!
//! [`NoiseLevels`] maps such time values to the marginal's (α, σ); analytic models use it.
//!
//! # The analytic model
//!
//! For data distributed as an isotropic Gaussian mixture `p(x₀) = Σ_k π_k N(μ_k, s_k² I)` in R^d,
//! the noised marginal `x_t = α x₀ + σ ε` is again a mixture, `Σ_k π_k N(α μ_k, v_k I)` with
//! `v_k = α² s_k² + σ²`, and the optimal predictions are closed-form: with the posterior
//! component weights `w_k(x_t) ∝ π_k N(x_t; α μ_k, v_k I)`,
//!
//! ```text
//! E[ε  | x_t] = Σ_k w_k σ (x_t − α μ_k)/v_k
//! E[x₀ | x_t] = Σ_k w_k (μ_k + α s_k² (x_t − α μ_k)/v_k)
//! ∇ log p_t(x_t) = −E[ε | x_t]/σ
//! ```
//!
//! [`GaussianMixture`] computes them in `f64`; [`GaussianMixtureDenoiser`] wraps it as a
//! [`Denoiser`], the ground truth that the sampler tests run against.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand_distr::{Distribution, StandardNormal};

use crate::param::Parameterization;
use crate::random::SeededRng;
use crate::schedule::{DiscreteSchedule, Marginal, VpSde};
use crate::{Error, Result};

/// A diffusion model: x_t, per-sample time t and optional conditioning in, a prediction in
/// [`Denoiser::parameterization`] out.
///
/// See the [module documentation](self) for the time convention.
pub trait Denoiser {
    /// What [`Denoiser::forward`] predicts: ε, x₀ or v.
    fn parameterization(&self) -> Parameterization;

    /// The prediction for the noised batch `x_t` (batch first) at the per-sample times `t` (a
    /// 1-D `f32` tensor of the batch size), optionally conditioned on `cond` (batch first; its
    /// meaning is up to the model). The output has the shape of `x_t`.
    ///
    /// # Errors
    ///
    /// Whatever the model reports: typically [`Error::Shape`] for inputs it cannot take,
    /// [`Error::Candle`] from tensor ops, [`Error::Denoiser`] for foreign errors.
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor>;
}

impl<D: Denoiser + ?Sized> Denoiser for &D {
    fn parameterization(&self) -> Parameterization {
        (**self).parameterization()
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        (**self).forward(x_t, t, cond)
    }
}

impl<D: Denoiser + ?Sized> Denoiser for Box<D> {
    fn parameterization(&self) -> Parameterization {
        (**self).parameterization()
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        (**self).forward(x_t, t, cond)
    }
}

impl<D: Denoiser + ?Sized> Denoiser for Arc<D> {
    fn parameterization(&self) -> Parameterization {
        (**self).parameterization()
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        (**self).forward(x_t, t, cond)
    }
}

/// A map from the time values a sampler passes to a [`Denoiser`] to the marginal's signal and
/// noise scales (α, σ) at that time.
pub trait NoiseLevels {
    /// α and σ at time `t`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `t` is no valid time of the schedule.
    fn marginal_at(&self, t: f64) -> Result<Marginal>;
}

impl NoiseLevels for DiscreteSchedule {
    /// `t` must be an integer training timestep index i in 0..T: α = √ᾱ_i, σ = √(1 − ᾱ_i).
    fn marginal_at(&self, t: f64) -> Result<Marginal> {
        if !(t >= 0.0 && t.fract() == 0.0 && t < self.len() as f64) {
            return Err(Error::Config(format!(
                "time {t} is not a timestep index of a discrete schedule of {} steps",
                self.len()
            )));
        }
        let i = t as usize;
        Ok(Marginal {
            alpha: self.sqrt_alpha_bar(i),
            sigma: self.sigma(i),
        })
    }
}

impl NoiseLevels for VpSde {
    /// Any finite `t ≥ 0`: α(t), σ(t) of [`VpSde::marginal`].
    fn marginal_at(&self, t: f64) -> Result<Marginal> {
        if !(t >= 0.0 && t.is_finite()) {
            return Err(Error::Config(format!(
                "VP-SDE time must be finite and >= 0, got {t}"
            )));
        }
        Ok(self.marginal(t))
    }
}

/// An isotropic Gaussian mixture `Σ_k π_k N(μ_k, s_k² I)` in R^d with its exact noised
/// predictions (see the [module documentation](self)).
///
/// ```
/// use recompose_diffusion::GaussianMixture;
///
/// // Two well-separated modes in 1-D with weights 0.25 and 0.75.
/// let gm = GaussianMixture::new(vec![1.0, 3.0], vec![vec![-2.0], vec![2.0]], vec![0.1, 0.1])?;
/// assert_eq!(gm.weights(), &[0.25, 0.75]);
/// assert!((gm.mean()[0] - 1.0).abs() < 1e-12);
/// // At α = 1, σ → 0 the posterior mean is (nearly) the point itself.
/// let (_, x0) = gm.posterior_means(&[2.05], 1.0, 1e-4)?;
/// assert!((x0[0] - 2.05).abs() < 1e-6);
/// # Ok::<(), recompose_diffusion::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    weights: Vec<f64>,
    means: Vec<Vec<f64>>,
    variances: Vec<f64>,
    dim: usize,
}

impl GaussianMixture {
    /// A mixture with the given component weights (normalized to sum to 1), means (all of the
    /// same dimension d ≥ 1) and per-component variances s_k² (the covariance of component k is
    /// s_k² I).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if there are no components, the three lists differ in length, a weight
    /// is not finite and positive, a mean has dimension 0, a different dimension than the others
    /// or a non-finite entry, or a variance is not finite and positive.
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, variances: Vec<f64>) -> Result<Self> {
        let k = weights.len();
        if k == 0 {
            return Err(Error::Config(
                "a Gaussian mixture needs at least one component".to_string(),
            ));
        }
        if means.len() != k || variances.len() != k {
            return Err(Error::Config(format!(
                "a Gaussian mixture needs as many means and variances as weights, got {k} \
                 weights, {} means and {} variances",
                means.len(),
                variances.len()
            )));
        }
        if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            return Err(Error::Config(format!(
                "mixture weights must be finite and positive, got {w}"
            )));
        }
        let dim = means[0].len();
        if dim == 0 {
            return Err(Error::Config(
                "mixture means must have dimension at least 1".to_string(),
            ));
        }
        if let Some(m) = means.iter().find(|m| m.len() != dim) {
            return Err(Error::Config(format!(
                "mixture means must all have dimension {dim}, got one of dimension {}",
                m.len()
            )));
        }
        if means.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::Config("mixture means must be finite".to_string()));
        }
        if let Some(v) = variances.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(Error::Config(format!(
                "mixture variances must be finite and positive, got {v}"
            )));
        }
        let total: f64 = weights.iter().sum();
        let weights = weights.into_iter().map(|w| w / total).collect();
        Ok(Self {
            weights,
            means,
            variances,
            dim,
        })
    }

    /// A single Gaussian `N(mean, variance · I)`.
    ///
    /// # Errors
    ///
    /// As [`GaussianMixture::new`].
    pub fn gaussian(mean: Vec<f64>, variance: f64) -> Result<Self> {
        Self::new(vec![1.0], vec![mean], vec![variance])
    }

    /// The data dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The number of components.
    pub fn num_components(&self) -> usize {
        self.weights.len()
    }

    /// The component weights π_k, summing to 1.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The component means μ_k.
    pub fn means(&self) -> &[Vec<f64>] {
        &self.means
    }

    /// The component variances s_k².
    pub fn variances(&self) -> &[f64] {
        &self.variances
    }

    /// The mixture mean `Σ_k π_k μ_k`.
    pub fn mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.dim];
        for (w, mu) in self.weights.iter().zip(&self.means) {
            for (acc, x) in m.iter_mut().zip(mu) {
                *acc += w * x;
            }
        }
        m
    }

    /// The mixture covariance `Σ_k π_k (s_k² I + μ_k μ_kᵀ) − m mᵀ` as a row-major d × d matrix.
    pub fn covariance(&self) -> Vec<f64> {
        let d = self.dim;
        let m = self.mean();
        let mut c = vec![0.0; d * d];
        for ((w, mu), s2) in self.weights.iter().zip(&self.means).zip(&self.variances) {
            for i in 0..d {
                c[i * d + i] += w * s2;
                for j in 0..d {
                    c[i * d + j] += w * mu[i] * mu[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..d {
                c[i * d + j] -= m[i] * m[j];
            }
        }
        c
    }

    /// `n` independent draws, row-major (`n × d` values): a component by its weight, then a
    /// Gaussian draw from it.
    pub fn sample(&self, rng: &mut SeededRng, n: usize) -> Vec<f64> {
        use rand::Rng;
        let mut out = Vec::with_capacity(n * self.dim);
        for _ in 0..n {
            let u: f64 = rng.random();
            let mut acc = 0.0;
            let mut k = self.weights.len() - 1;
            for (j, w) in self.weights.iter().enumerate() {
                acc += w;
                if u < acc {
                    k = j;
                    break;
                }
            }
            let s = self.variances[k].sqrt();
            for mu in &self.means[k] {
                let z: f64 = StandardNormal.sample(rng);
                out.push(mu + s * z);
            }
        }
        out
    }

    /// The exact posterior means `(E[ε | x_t], E[x₀ | x_t])` at the point `x_t = x` (length d)
    /// of the noised marginal `x_t = α x₀ + σ ε`.
    ///
    /// Valid for any α, σ ≥ 0 that are not both 0 (α² + σ² = 1 is not needed); at σ = 0 the
    /// noise estimate is 0, at α = 0 the data estimate is the mixture mean.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `x.len() ≠ d`; [`Error::Config`] if α or σ is negative or not
    /// finite, or both are 0.
    pub fn posterior_means(
        &self,
        x: &[f64],
        alpha: f64,
        sigma: f64,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        if x.len() != self.dim {
            return Err(Error::Shape(format!(
                "a point of the mixture must have dimension {}, got {}",
                self.dim,
                x.len()
            )));
        }
        check_levels(alpha, sigma)?;
        let mut eps = vec![0.0; self.dim];
        let mut x0 = vec![0.0; self.dim];
        let mut scratch = vec![0.0; self.num_components()];
        self.posterior_means_into(x, alpha, sigma, &mut eps, &mut x0, &mut scratch);
        Ok((eps, x0))
    }

    /// The exact score `∇ log p_t(x) = −E[ε | x_t = x]/σ` of the noised marginal.
    ///
    /// # Errors
    ///
    /// As [`GaussianMixture::posterior_means`], and [`Error::Config`] if σ = 0.
    pub fn score(&self, x: &[f64], alpha: f64, sigma: f64) -> Result<Vec<f64>> {
        if sigma <= 0.0 {
            return Err(Error::Config(format!(
                "the score needs sigma > 0, got {sigma}"
            )));
        }
        let (eps, _) = self.posterior_means(x, alpha, sigma)?;
        Ok(eps.into_iter().map(|e| -e / sigma).collect())
    }

    /// The exact log-density `log p_t(x)` of the noised marginal `x_t = α x₀ + σ ε` at the point
    /// `x` (length d): `log Σ_k π_k N(x; α μ_k, (α² s_k² + σ²) I)`, normalized.
    ///
    /// # Errors
    ///
    /// As [`GaussianMixture::posterior_means`].
    pub fn log_density(&self, x: &[f64], alpha: f64, sigma: f64) -> Result<f64> {
        if x.len() != self.dim {
            return Err(Error::Shape(format!(
                "a point of the mixture must have dimension {}, got {}",
                self.dim,
                x.len()
            )));
        }
        check_levels(alpha, sigma)?;
        let d = self.dim as f64;
        let terms: Vec<f64> = (0..self.num_components())
            .map(|k| {
                let v = alpha * alpha * self.variances[k] + sigma * sigma;
                let dist2: f64 = x
                    .iter()
                    .zip(&self.means[k])
                    .map(|(xi, mi)| (xi - alpha * mi).powi(2))
                    .sum();
                self.weights[k].ln()
                    - 0.5 * d * (2.0 * std::f64::consts::PI * v).ln()
                    - 0.5 * dist2 / v
            })
            .collect();
        let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Ok(max + terms.iter().map(|l| (l - max).exp()).sum::<f64>().ln())
    }

    /// [`GaussianMixture::posterior_means`] without checks or allocation; `scratch` holds one
    /// value per component.
    fn posterior_means_into(
        &self,
        x: &[f64],
        alpha: f64,
        sigma: f64,
        eps: &mut [f64],
        x0: &mut [f64],
        scratch: &mut [f64],
    ) {
        let d = self.dim as f64;
        // Log posterior weights of the components, up to a common constant.
        for (k, log_w) in scratch.iter_mut().enumerate() {
            let v = alpha * alpha * self.variances[k] + sigma * sigma;
            let dist2: f64 = x
                .iter()
                .zip(&self.means[k])
                .map(|(xi, mi)| (xi - alpha * mi).powi(2))
                .sum();
            *log_w = self.weights[k].ln() - 0.5 * d * v.ln() - 0.5 * dist2 / v;
        }
        let max = scratch.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for log_w in scratch.iter_mut() {
            *log_w = (*log_w - max).exp();
            total += *log_w;
        }
        eps.fill(0.0);
        x0.fill(0.0);
        for (k, w) in scratch.iter().enumerate() {
            let w = w / total;
            let s2 = self.variances[k];
            let v = alpha * alpha * s2 + sigma * sigma;
            for (i, (xi, mi)) in x.iter().zip(&self.means[k]).enumerate() {
                let r = (xi - alpha * mi) / v;
                eps[i] += w * sigma * r;
                x0[i] += w * (mi + alpha * s2 * r);
            }
        }
    }
}

fn check_levels(alpha: f64, sigma: f64) -> Result<()> {
    if !(alpha.is_finite() && sigma.is_finite() && alpha >= 0.0 && sigma >= 0.0)
        || (alpha == 0.0 && sigma == 0.0)
    {
        return Err(Error::Config(format!(
            "noise levels need finite alpha, sigma >= 0, not both 0, got alpha = {alpha}, \
             sigma = {sigma}"
        )));
    }
    Ok(())
}

/// The exact denoiser of data distributed as a [`GaussianMixture`]: given x_t and the time t, it
/// looks up (α, σ) in its schedule `L` ([`NoiseLevels`]: a [`DiscreteSchedule`] by default,
/// taking timestep indices, or a [`VpSde`], taking continuous times) and returns the exact
/// prediction E\[ε | x_t\] — or E\[x₀ | x_t\], or the v built from both — in `f64`, cast to the
/// dtype of x_t.
///
/// x_t may have any shape `(B, …)` whose per-sample size is the mixture dimension d (it is
/// flattened per sample). The conditioning input is ignored.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use recompose_diffusion::{Denoiser, DiscreteSchedule, GaussianMixture, GaussianMixtureDenoiser};
///
/// let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02)?;
/// let mixture = GaussianMixture::gaussian(vec![1.0, -1.0], 0.25)?;
/// let model = GaussianMixtureDenoiser::new(mixture, schedule);
/// let x_t = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu)?;
/// let t = Tensor::new(&[0.0f32, 500.0, 999.0], &Device::Cpu)?;
/// let eps = model.forward(&x_t, &t, None)?;
/// assert_eq!(eps.dims(), &[3, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct GaussianMixtureDenoiser<L = DiscreteSchedule> {
    mixture: GaussianMixture,
    levels: L,
    parameterization: Parameterization,
}

impl<L: NoiseLevels> GaussianMixtureDenoiser<L> {
    /// The exact ε-prediction for `mixture` under the noise levels `levels`.
    pub fn new(mixture: GaussianMixture, levels: L) -> Self {
        Self {
            mixture,
            levels,
            parameterization: Parameterization::Epsilon,
        }
    }

    /// The same model predicting in `parameterization` instead (each exact).
    pub fn with_parameterization(self, parameterization: Parameterization) -> Self {
        Self {
            parameterization,
            ..self
        }
    }

    /// The data distribution.
    pub fn mixture(&self) -> &GaussianMixture {
        &self.mixture
    }

    /// The noise levels (the schedule).
    pub fn levels(&self) -> &L {
        &self.levels
    }
}

impl<L: NoiseLevels> Denoiser for GaussianMixtureDenoiser<L> {
    fn parameterization(&self) -> Parameterization {
        self.parameterization
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, _cond: Option<&Tensor>) -> Result<Tensor> {
        let d = self.mixture.dim;
        let Some(&batch) = x_t.dims().first() else {
            return Err(Error::Shape(
                "x_t needs a batch dimension, got a scalar".to_string(),
            ));
        };
        let per_sample: usize = x_t.dims()[1..].iter().product();
        if per_sample != d {
            return Err(Error::Shape(format!(
                "x_t of shape {:?} has {per_sample} values per sample, the mixture has \
                 dimension {d}",
                x_t.dims()
            )));
        }
        if t.dims() != [batch] {
            return Err(Error::Shape(format!(
                "t must be 1-D with one time per sample ({batch}), got shape {:?}",
                t.dims()
            )));
        }
        let times = t.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let x = x_t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let mut out = vec![0.0; x.len()];
        let mut eps = vec![0.0; d];
        let mut x0 = vec![0.0; d];
        let mut scratch = vec![0.0; self.mixture.num_components()];
        for ((row, dst), &time) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).zip(&times) {
            let Marginal { alpha, sigma } = self.levels.marginal_at(time)?;
            check_levels(alpha, sigma)?;
            self.mixture
                .posterior_means_into(row, alpha, sigma, &mut eps, &mut x0, &mut scratch);
            match self.parameterization {
                Parameterization::Epsilon => dst.copy_from_slice(&eps),
                Parameterization::X0 => dst.copy_from_slice(&x0),
                Parameterization::V => {
                    for ((o, e), c) in dst.iter_mut().zip(&eps).zip(&x0) {
                        *o = alpha * e - sigma * c;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, x_t.dims(), x_t.device())?.to_dtype(x_t.dtype())?)
    }
}
