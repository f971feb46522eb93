//! What a denoising model predicts, and exact conversions between the three usual choices.
//!
//! A variance-preserving forward process noises clean data x₀ with standard normal noise ε as
//!
//! ```text
//! x_t = α x₀ + σ ε,        α² + σ² = 1,
//! ```
//!
//! with α = √ᾱ_t and σ = √(1 − ᾱ_t) for a discrete schedule (Ho et al. 2020, eq. 4) or α(t), σ(t)
//! of the VP-SDE (Song et al. 2021). A model sees x_t and predicts one of
//!
//! - **ε** (DDPM, Ho et al. 2020, eq. 11): the noise, ε̂ ≈ E\[ε | x_t\];
//! - **x₀**: the clean data, x̂₀ ≈ E\[x₀ | x_t\];
//! - **v** (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models",
//!   ICLR 2022, §4 and appendix D): the velocity `v = α ε − σ x₀`.
//!
//! Given x_t, any one of them determines the others exactly, because x_t is linear in (x₀, ε) and
//! α² + σ² = 1:
//!
//! ```text
//! x₀ = (x_t − σ ε)/α        ε = (x_t − α x₀)/σ
//! x₀ = α x_t − σ v          ε = σ x_t + α v
//! v  = (ε − σ x_t)/α        v = (α x_t − x₀)/σ
//! ```
//!
//! and the score of the noised marginal is `∇ log p_t(x_t) = −E[ε | x_t]/σ` (Tweedie's formula;
//! Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
//! Equations", eq. 3 and appendix). Conversions that divide by α fail at zero terminal SNR (α = 0:
//! an ε-prediction carries no information about x₀ there, which is why v or x₀ is used with such
//! schedules); those that divide by σ fail on clean data (σ = 0).
//!
//! Every function takes α and σ **per sample**: 1-D tensors whose length is the batch size (the
//! first dimension of x_t), broadcast over the other dimensions. They are converted to the dtype
//! and device of the data. The formulas above assume α² + σ² = 1; the caller provides such pairs.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use recompose_diffusion::param::{add_noise, v_target, Parameterization};
//!
//! let dev = Device::Cpu;
//! let x0 = Tensor::new(&[[1.0f32, -2.0], [0.5, 0.0]], &dev)?;
//! let eps = Tensor::new(&[[0.3f32, 0.1], [-1.0, 2.0]], &dev)?;
//! let alpha = Tensor::new(&[0.6f32, 0.8], &dev)?;
//! let sigma = Tensor::new(&[0.8f32, 0.6], &dev)?;
//! let x_t = add_noise(&x0, &eps, &alpha, &sigma)?;
//! // A perfect v-prediction converts back to the noise and the clean data.
//! let v = v_target(&x0, &eps, &alpha, &sigma)?;
//! let eps_hat = Parameterization::V.to_epsilon(&v, &x_t, &alpha, &sigma)?;
//! let x0_hat = Parameterization::V.to_x0(&v, &x_t, &alpha, &sigma)?;
//! let err = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
//!     (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
//! };
//! assert!(err(&eps_hat, &eps)? < 1e-6);
//! assert!(err(&x0_hat, &x0)? < 1e-6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::Tensor;

use crate::schedule::Marginal;
use crate::{Error, Result};

/// What a denoiser's output means (see the [module documentation](self) for the formulas).
///
/// In configuration files it is written `"epsilon"`, `"x0"` or `"v"`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Parameterization {
    /// The noise ε that was added (DDPM, Ho et al. 2020).
    #[default]
    Epsilon,
    /// The clean data x₀.
    #[serde(rename = "x0")]
    X0,
    /// The velocity `v = α ε − σ x₀` (Salimans & Ho 2022).
    V,
}

impl Parameterization {
    /// How much this parameterization's target moves per unit change of ε at a fixed x_t, on a
    /// variance-preserving schedule (α² + σ² = 1): 1 for ε, σ/α for x₀ (x₀ = (x_t − σ ε)/α),
    /// 1/α for v (v = (ε − σ x_t)/α). The squared ratio of two of these converts one
    /// parameterization's squared error into another's at the same noise level.
    pub fn error_scale(self, alpha: f64, sigma: f64) -> f64 {
        match self {
            Self::Epsilon => 1.0,
            Self::X0 => sigma / alpha,
            Self::V => 1.0 / alpha,
        }
    }

    /// The predicted noise ε̂ from a model `output` in this parameterization at `x_t`, with
    /// per-sample α and σ.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `output` and `x_t` differ in shape, `x_t` has no batch dimension, or
    /// `alpha`/`sigma` are not 1-D of the batch size; [`Error::Candle`] from the tensor ops.
    pub fn to_epsilon(
        self,
        output: &Tensor,
        x_t: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Result<Tensor> {
        let (a, s) = coefficients(output, x_t, alpha, sigma)?;
        Ok(match self {
            Self::Epsilon => output.clone(),
            // ε = (x_t − α x₀)/σ
            Self::X0 => (x_t - output.broadcast_mul(&a)?)?.broadcast_div(&s)?,
            // ε = σ x_t + α v
            Self::V => (x_t.broadcast_mul(&s)? + output.broadcast_mul(&a)?)?,
        })
    }

    /// The predicted clean data x̂₀ from a model `output` in this parameterization at `x_t`.
    ///
    /// # Errors
    ///
    /// As [`Parameterization::to_epsilon`].
    pub fn to_x0(
        self,
        output: &Tensor,
        x_t: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Result<Tensor> {
        let (a, s) = coefficients(output, x_t, alpha, sigma)?;
        Ok(match self {
            // x₀ = (x_t − σ ε)/α
            Self::Epsilon => (x_t - output.broadcast_mul(&s)?)?.broadcast_div(&a)?,
            Self::X0 => output.clone(),
            // x₀ = α x_t − σ v
            Self::V => (x_t.broadcast_mul(&a)? - output.broadcast_mul(&s)?)?,
        })
    }

    /// The predicted velocity v̂ = α ε̂ − σ x̂₀ from a model `output` in this parameterization at
    /// `x_t`.
    ///
    /// # Errors
    ///
    /// As [`Parameterization::to_epsilon`].
    pub fn to_v(
        self,
        output: &Tensor,
        x_t: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Result<Tensor> {
        let (a, s) = coefficients(output, x_t, alpha, sigma)?;
        Ok(match self {
            // v = (ε − σ x_t)/α
            Self::Epsilon => (output - x_t.broadcast_mul(&s)?)?.broadcast_div(&a)?,
            // v = (α x_t − x₀)/σ
            Self::X0 => (x_t.broadcast_mul(&a)? - output)?.broadcast_div(&s)?,
            Self::V => output.clone(),
        })
    }

    /// The score estimate `∇ log p_t(x_t) ≈ −ε̂/σ` from a model `output` in this parameterization.
    ///
    /// # Errors
    ///
    /// As [`Parameterization::to_epsilon`].
    pub fn to_score(
        self,
        output: &Tensor,
        x_t: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Result<Tensor> {
        let eps = self.to_epsilon(output, x_t, alpha, sigma)?;
        let s = per_sample(sigma, x_t, "sigma")?;
        Ok(eps.broadcast_div(&s)?.neg()?)
    }

    /// The host form of [`Parameterization::to_score`] for one element: the score −ε̂/σ from a
    /// model `output` in this parameterization at `x_t`, at the noise level `level`, in `f64`.
    #[inline]
    pub fn score_at(self, output: f64, x_t: f64, level: Marginal) -> f64 {
        let (a, s) = (level.alpha, level.sigma);
        let eps = match self {
            Self::Epsilon => output,
            // ε = (x_t − α x₀)/σ
            Self::X0 => (x_t - a * output) / s,
            // ε = σ x_t + α v
            Self::V => s * x_t + a * output,
        };
        -eps / s
    }

    /// A model `output` in this parameterization converted to the parameterization `to`.
    ///
    /// # Errors
    ///
    /// As [`Parameterization::to_epsilon`].
    pub fn convert(
        self,
        to: Parameterization,
        output: &Tensor,
        x_t: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Result<Tensor> {
        match to {
            Self::Epsilon => self.to_epsilon(output, x_t, alpha, sigma),
            Self::X0 => self.to_x0(output, x_t, alpha, sigma),
            Self::V => self.to_v(output, x_t, alpha, sigma),
        }
    }

    /// The training target in this parameterization for clean data `x0` noised with `eps`: ε, x₀
    /// or [`v_target`].
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `x0` and `eps` differ in shape or `alpha`/`sigma` do not fit (for
    /// every parameterization, so that a bad call fails the same way whatever the model).
    pub fn target(
        self,
        x0: &Tensor,
        eps: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Result<Tensor> {
        match self {
            Self::Epsilon => {
                coefficients(eps, x0, alpha, sigma)?;
                Ok(eps.clone())
            }
            Self::X0 => {
                coefficients(eps, x0, alpha, sigma)?;
                Ok(x0.clone())
            }
            Self::V => v_target(x0, eps, alpha, sigma),
        }
    }
}

/// The noised sample `x_t = α x₀ + σ ε` (Ho et al. 2020, eq. 4) with per-sample α and σ.
///
/// # Errors
///
/// [`Error::Shape`] if `x0` and `eps` differ in shape, have no batch dimension, or `alpha`/`sigma`
/// are not 1-D of the batch size; [`Error::Candle`] from the tensor ops.
pub fn add_noise(x0: &Tensor, eps: &Tensor, alpha: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    let (a, s) = coefficients(eps, x0, alpha, sigma)?;
    Ok((x0.broadcast_mul(&a)? + eps.broadcast_mul(&s)?)?)
}

/// The v-prediction target `v = α ε − σ x₀` (Salimans & Ho 2022, §4) with per-sample α
/// and σ.
///
/// # Errors
///
/// As [`add_noise`].
pub fn v_target(x0: &Tensor, eps: &Tensor, alpha: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    let (a, s) = coefficients(eps, x0, alpha, sigma)?;
    Ok((eps.broadcast_mul(&a)? - x0.broadcast_mul(&s)?)?)
}

/// Checks that `other` has the shape of `x` and returns α and σ shaped to broadcast over `x`.
fn coefficients(
    other: &Tensor,
    x: &Tensor,
    alpha: &Tensor,
    sigma: &Tensor,
) -> Result<(Tensor, Tensor)> {
    if other.dims() != x.dims() {
        return Err(Error::Shape(format!(
            "tensors must have the same shape, got {:?} and {:?}",
            other.dims(),
            x.dims()
        )));
    }
    Ok((
        per_sample(alpha, x, "alpha")?,
        per_sample(sigma, x, "sigma")?,
    ))
}

/// A per-sample coefficient (1-D, length = batch size of `like`) reshaped to `(B, 1, …, 1)` with
/// the rank, dtype and device of `like`, ready to broadcast.
pub(crate) fn per_sample(coef: &Tensor, like: &Tensor, what: &str) -> Result<Tensor> {
    let dims = like.dims();
    let Some(&batch) = dims.first() else {
        return Err(Error::Shape(format!(
            "{what}: the data needs a batch dimension, got a scalar"
        )));
    };
    if coef.dims() != [batch] {
        return Err(Error::Shape(format!(
            "{what} must be 1-D with one value per sample ({batch}), got shape {:?}",
            coef.dims()
        )));
    }
    let mut shape = vec![1usize; dims.len()];
    shape[0] = batch;
    Ok(coef
        .to_dtype(like.dtype())?
        .to_device(like.device())?
        .reshape(shape)?)
}
