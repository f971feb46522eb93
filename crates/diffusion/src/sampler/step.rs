//! One reverse-diffusion step between two noise levels, written once for every caller.
//!
//! A variance-preserving process noises data as x = α x₀ + σ ε (α² + σ² = 1). A reverse step goes
//! from a level (α_t, σ_t) to a less noisy one (α_s, σ_s), or to the clean data, given the model's
//! estimate at x_t — as a prediction ε̂ (with x̂₀ = (x_t − σ_t ε̂)/α_t), or as a score
//! ∇ log p ≈ −ε̂/σ_t. Every rule here is linear in its inputs:
//!
//! ```text
//! x_s = c_x · x_t + c_x0 · x̂₀ + c_ε · ε̂ + c_z · z,      z ~ N(0, I)
//! ```
//!
//! with [`Coefficients`] that depend on the two levels only, so one definition serves the
//! discrete schedules (α = √ᾱ_i), the continuous [`crate::VpSde`] (α(t)) and any other time
//! grid, and both the tensor samplers of [`crate::sampler`] and host-slice loops (annealed MCMC in
//! `recompose-compose`, coupled factorization in `recompose-decomp`) through
//! [`Coefficients::apply_score`]. In terms of the two levels, with β = 1 − α_t²/α_s² the
//! transition's noise fraction:
//!
//! - **DDPM** (Ho, Jain, Abbeel 2020, eqs. 6–7; respaced steps as in Nichol & Dhariwal 2021):
//!   ancestral sampling from q(x_s | x_t, x̂₀): c_x0 = α_s β/σ_t², c_x = (α_t/α_s) σ_s²/σ_t²,
//!   c_z² = β σ_s²/σ_t² (fixed-small variance) or β (fixed-large).
//! - **DDIM with η** (Song, Meng, Ermon 2021, eqs. 12 and 16): c_z = η (σ_s/σ_t) √β,
//!   c_x0 = α_s, c_ε = √(σ_s² − c_z²); η = 0 is deterministic, η = 1 has DDPM's fixed-small
//!   variance and mean.
//! - **Euler–Maruyama for the reverse VP-SDE family** (Song et al. 2021, "Score-Based Generative
//!   Modeling through Stochastic Differential Equations", eqs. 6 and 13), in the time
//!   ρ = −ln α² (the integrated noise rate ∫β) in which the forward process is
//!   dx = −½ x dρ + dw: a step of length Δ = ρ_t − ρ_s is
//!   x_s = x_t + Δ (½ x_t + ½(1 + η²) ∇ log p) + η √Δ z, i.e. c_x = 1 + ½Δ,
//!   c_ε = −½(1 + η²) Δ/σ_t, c_z = η √Δ. η = 0 is the probability-flow ODE (Euler's method),
//!   η = 1 the reverse SDE; values between interpolate with the same marginals.
//!   [`Transition::between`] takes the exact Δ = ln(α_s²/α_t²); a sampler that integrates in
//!   another time variable passes its own Euler estimate (for the VP-SDE, Δ ≈ β(t)·(t − s)).
//!
//! A step **to the clean data** returns x̂₀ itself (c_x0 = 1, nothing else): what DDPM and DDIM
//! give at α_s = 1, and the final denoising step (Tweedie's formula, E\[x₀ | x_t\]) of the SDE
//! and ODE samplers.

use candle_core::Tensor;

use crate::param::per_sample;
use crate::sampler::DdpmVariance;
use crate::schedule::Marginal;
use crate::{Error, Result};

/// The update rule of a reverse step (see the [module documentation](self) for the formulas).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepRule {
    /// DDPM ancestral sampling with the given variance.
    Ddpm(DdpmVariance),
    /// DDIM with stochasticity η ∈ \[0, 1\].
    Ddim {
        /// The noise scale η; 0 deterministic, 1 DDPM-like.
        eta: f64,
    },
    /// Euler–Maruyama in ρ = −ln α² for the reverse VP-SDE family: η = 0 the probability-flow
    /// ODE, η = 1 the reverse SDE.
    Euler {
        /// The noise fraction η ∈ \[0, 1\].
        eta: f64,
    },
}

impl StepRule {
    /// Whether a step may add noise (DDPM always; DDIM and Euler for η > 0).
    pub fn is_stochastic(&self) -> bool {
        match *self {
            Self::Ddpm(_) => true,
            Self::Ddim { eta } | Self::Euler { eta } => eta > 0.0,
        }
    }

    /// Checks the rule's parameter: η ∈ \[0, 1\].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for η outside \[0, 1\] (or NaN).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Ddpm(_) => Ok(()),
            Self::Ddim { eta } | Self::Euler { eta } => {
                if (0.0..=1.0).contains(&eta) {
                    Ok(())
                } else {
                    Err(Error::Config(format!("eta must lie in [0, 1], got {eta}")))
                }
            }
        }
    }

    /// The coefficients of the step `transition` (see the [module documentation](self)).
    pub fn coefficients(&self, transition: &Transition) -> Coefficients {
        let Transition { from, to, delta } = *transition;
        let Some(to) = to else {
            return Coefficients {
                x0: 1.0,
                ..Coefficients::ZERO
            };
        };
        let (var_t, var_s) = (from.sigma * from.sigma, to.sigma * to.sigma);
        // The transition's noise fraction 1 − α_t²/α_s².
        let beta = 1.0 - (from.alpha * from.alpha) / (to.alpha * to.alpha);
        match *self {
            Self::Ddpm(variance) => Coefficients {
                x: (from.alpha / to.alpha) * var_s / var_t,
                x0: to.alpha * beta / var_t,
                eps: 0.0,
                noise: match variance {
                    DdpmVariance::FixedSmall => (beta * var_s / var_t).sqrt(),
                    DdpmVariance::FixedLarge => beta.sqrt(),
                },
            },
            Self::Ddim { eta } => {
                let noise = eta * (to.sigma / from.sigma) * beta.max(0.0).sqrt();
                Coefficients {
                    x: 0.0,
                    x0: to.alpha,
                    eps: (var_s - noise * noise).max(0.0).sqrt(),
                    noise,
                }
            }
            Self::Euler { eta } => Coefficients {
                x: 1.0 + 0.5 * delta,
                x0: 0.0,
                eps: -0.5 * (1.0 + eta * eta) * delta / from.sigma,
                noise: eta * delta.sqrt(),
            },
        }
    }
}

/// One reverse step: from the level `from` to the level `to` (`None`: to the clean data), with
/// its length `delta` in ρ = −ln α² (used by [`StepRule::Euler`] only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    /// The current noise level.
    pub from: Marginal,
    /// The next, less noisy level; `None` for the step to the clean data.
    pub to: Option<Marginal>,
    /// The step length Δ = ρ_from − ρ_to > 0 in ρ = −ln α².
    pub delta: f64,
}

impl Transition {
    /// The step from `from` to `to` with the exact length Δ = ln(α_to²/α_from²) (∞ from a level
    /// with α = 0; unused on the step to the clean data, where it is 0).
    pub fn between(from: Marginal, to: Option<Marginal>) -> Self {
        let delta = to.map_or(0.0, |to| {
            ((to.alpha * to.alpha) / (from.alpha * from.alpha)).ln()
        });
        Self { from, to, delta }
    }

    /// The step from `from` to `to` with a given length Δ, for Euler steps taken in another time
    /// variable (e.g. Δ ≈ β(t)·(t − s) on a VP-SDE time grid).
    pub fn with_delta(from: Marginal, to: Option<Marginal>, delta: f64) -> Self {
        Self { from, to, delta }
    }
}

/// The coefficients of a linear step `x_s = x·x_t + x0·x̂₀ + eps·ε̂ + noise·z`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    /// Coefficient of the current sample x_t.
    pub x: f64,
    /// Coefficient of the predicted clean data x̂₀.
    pub x0: f64,
    /// Coefficient of the predicted noise ε̂.
    pub eps: f64,
    /// Coefficient of fresh standard normal noise z.
    pub noise: f64,
}

impl Coefficients {
    /// All four coefficients zero.
    pub const ZERO: Self = Self {
        x: 0.0,
        x0: 0.0,
        eps: 0.0,
        noise: 0.0,
    };

    /// The host form for one element: x_s from x_t, the score ∇ log p at x_t (at the step's
    /// starting level `from`) and the noise draw `z` (ignored where the noise coefficient is 0),
    /// in `f64`. x̂₀ = (x_t + σ² score)/α and ε̂ = −σ score; terms with a zero coefficient are
    /// skipped, so that they cannot turn an infinity into NaN.
    #[inline]
    pub fn apply_score(&self, from: Marginal, x: f64, score: f64, z: f64) -> f64 {
        let mut out: Option<f64> = None;
        let mut add = |term: f64| out = Some(out.map_or(term, |o| o + term));
        if self.x != 0.0 {
            add(self.x * x);
        }
        if self.x0 != 0.0 {
            add(self.x0 * ((x + from.sigma * from.sigma * score) / from.alpha));
        }
        if self.eps != 0.0 {
            add(self.eps * (-from.sigma * score));
        }
        if self.noise != 0.0 {
            add(self.noise * z);
        }
        out.unwrap_or(0.0)
    }

    /// The tensor form of [`Coefficients::apply_score`], elementwise in the tensors' dtype: the
    /// same terms in the same order with the same roundings (true divisions, not reciprocal
    /// products), so in `f64` it gives exactly the host form's values. `z` is needed only
    /// where the noise coefficient is not 0.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if noise is needed and not given; [`Error::Candle`] for shapes that
    /// differ.
    pub fn apply_score_tensor(
        &self,
        from: Marginal,
        x: &Tensor,
        score: &Tensor,
        z: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut out: Option<Tensor> = None;
        let mut terms = Vec::with_capacity(4);
        if self.x != 0.0 {
            terms.push((x * self.x)?);
        }
        if self.x0 != 0.0 {
            let alpha = Tensor::new(from.alpha, x.device())?.to_dtype(x.dtype())?;
            let x0 = (x + (score * (from.sigma * from.sigma))?)?.broadcast_div(&alpha)?;
            terms.push((x0 * self.x0)?);
        }
        if self.eps != 0.0 {
            terms.push(((score * -from.sigma)? * self.eps)?);
        }
        if self.noise != 0.0 {
            let z = z.ok_or_else(|| {
                Error::Shape("a stochastic step needs a noise tensor".to_string())
            })?;
            terms.push((z * self.noise)?);
        }
        for term in terms {
            out = Some(match out {
                Some(o) => (o + term)?,
                None => term,
            });
        }
        match out {
            Some(o) => Ok(o),
            None => Ok(x.zeros_like()?),
        }
    }
}

/// The tensor form for a batch: `Σ_k c_k ⊙ x_k` over the terms (x_t, x̂₀, ε̂, z) with one
/// coefficient per sample (from `coefficients`); terms whose coefficients are zero for every
/// sample are skipped (they cost nothing and cannot turn an infinity into NaN), and `noise` is
/// only needed when some noise coefficient is not zero.
///
/// # Errors
///
/// [`Error::Shape`] if `coefficients` does not have one entry per sample of `x_t`, or noise is
/// needed and not given; [`Error::Candle`] from the tensor ops.
pub fn combine(
    coefficients: &[Coefficients],
    x_t: &Tensor,
    x0: &Tensor,
    eps: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let pick = |f: fn(&Coefficients) -> f64| coefficients.iter().map(f).collect::<Vec<_>>();
    let (cx, cx0, ceps, cz) = (
        pick(|c| c.x),
        pick(|c| c.x0),
        pick(|c| c.eps),
        pick(|c| c.noise),
    );
    let needs_noise = cz.iter().any(|&c| c != 0.0);
    let z = match (needs_noise, noise) {
        (false, _) => None,
        (true, Some(z)) => Some(z),
        (true, None) => {
            return Err(Error::Shape(
                "a stochastic step needs a noise tensor".to_string(),
            ));
        }
    };
    let mut terms: Vec<(&[f64], &Tensor)> = vec![(&cx, x_t), (&cx0, x0), (&ceps, eps)];
    if let Some(z) = z {
        terms.push((&cz, z));
    }
    weighted_sum(&terms)
}

/// `c ⊙ x` with one coefficient per sample.
pub(crate) fn scale(c: &[f64], x: &Tensor) -> Result<Tensor> {
    let coef = Tensor::from_vec(c.to_vec(), c.len(), x.device())?;
    Ok(x.broadcast_mul(&per_sample(&coef, x, "coefficient")?)?)
}

/// `Σ c_k ⊙ x_k` with per-sample coefficients, in the order given; terms whose coefficients are
/// all zero are skipped, and an empty sum is zero.
pub(crate) fn weighted_sum(terms: &[(&[f64], &Tensor)]) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn level(alpha_bar: f64) -> Marginal {
        Marginal {
            alpha: alpha_bar.sqrt(),
            sigma: (1.0 - alpha_bar).sqrt(),
        }
    }

    /// DDIM with η = 1 is DDPM with the fixed-small variance: the same mean (after substituting
    /// ε̂ = (x_t − α_t x̂₀)/σ_t) and the same noise.
    #[test]
    fn ddim_at_eta_one_is_ddpm() {
        let tr = Transition::between(level(0.3), Some(level(0.55)));
        let ddpm = StepRule::Ddpm(DdpmVariance::FixedSmall).coefficients(&tr);
        let ddim = StepRule::Ddim { eta: 1.0 }.coefficients(&tr);
        let (a, s) = (tr.from.alpha, tr.from.sigma);
        // ddim: x0·x̂₀ + eps·(x_t − α x̂₀)/σ
        let ddim_x = ddim.eps / s;
        let ddim_x0 = ddim.x0 - ddim.eps * a / s;
        assert!((ddim_x - ddpm.x).abs() < 1e-12, "{ddim_x} {}", ddpm.x);
        assert!((ddim_x0 - ddpm.x0).abs() < 1e-12, "{ddim_x0} {}", ddpm.x0);
        assert!((ddim.noise - ddpm.noise).abs() < 1e-12);
    }

    /// The DDPM step from i to i − 1 has the posterior coefficients of Ho et al. (eq. 7).
    #[test]
    fn ddpm_matches_the_posterior_of_one_step() -> Result<()> {
        let sched = crate::DiscreteSchedule::linear(1000, 1e-4, 0.02)?;
        for i in [1usize, 10, 500, 999] {
            let m = |j: usize| Marginal {
                alpha: sched.sqrt_alpha_bar(j),
                sigma: sched.sigma(j),
            };
            let c = StepRule::Ddpm(DdpmVariance::FixedSmall)
                .coefficients(&Transition::between(m(i), Some(m(i - 1))));
            let post = sched.posterior(i);
            assert!((c.x0 - post.coef_x0).abs() < 1e-12);
            assert!((c.x - post.coef_xt).abs() < 1e-12);
            assert!((c.noise * c.noise - post.variance).abs() < 1e-12);
        }
        Ok(())
    }

    /// A step of the probability-flow ODE keeps a point mass at zero, and the SDE step's noise
    /// variance is the step length; to the clean data every rule returns x̂₀.
    #[test]
    fn euler_and_final_steps() {
        let tr = Transition::between(level(0.2), Some(level(0.4)));
        assert!((tr.delta - 2f64.ln()).abs() < 1e-12);
        let ode = StepRule::Euler { eta: 0.0 }.coefficients(&tr);
        assert_eq!(ode.noise, 0.0);
        assert!((ode.x - (1.0 + 0.5 * tr.delta)).abs() < 1e-15);
        let sde = StepRule::Euler { eta: 1.0 }.coefficients(&tr);
        assert!((sde.noise * sde.noise - tr.delta).abs() < 1e-12);
        assert!((sde.eps - 2.0 * ode.eps).abs() < 1e-15);
        for rule in [
            StepRule::Ddpm(DdpmVariance::FixedLarge),
            StepRule::Ddim { eta: 0.5 },
            StepRule::Euler { eta: 1.0 },
        ] {
            let c = rule.coefficients(&Transition::between(level(0.2), None));
            assert_eq!(
                c,
                Coefficients {
                    x0: 1.0,
                    ..Coefficients::ZERO
                }
            );
        }
    }

    /// The host form with the exact score of a Gaussian N(0, 1) data distribution (at every
    /// level the marginal is N(0, 1), score −x) maps x_t to the same linear combination the
    /// tensor form computes from x̂₀ = α x_t and ε̂ = σ x_t.
    #[test]
    fn host_and_tensor_forms_agree() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let from = level(0.35);
        let tr = Transition::between(from, Some(level(0.6)));
        let xs = [0.3f32, -1.2, 2.0];
        let zs = [0.5f32, 0.1, -0.7];
        for rule in [
            StepRule::Ddpm(DdpmVariance::FixedSmall),
            StepRule::Ddim { eta: 0.4 },
            StepRule::Euler { eta: 0.7 },
        ] {
            let c = rule.coefficients(&tr);
            let host: Vec<f32> = xs
                .iter()
                .zip(&zs)
                .map(|(&x, &z)| {
                    c.apply_score(from, f64::from(x), -f64::from(x), f64::from(z)) as f32
                })
                .collect();
            let x = Tensor::new(&xs, &dev)?.reshape((3, 1))?;
            let z = Tensor::new(&zs, &dev)?.reshape((3, 1))?;
            let x0 = x.affine(from.alpha, 0.0)?;
            let eps = x.affine(from.sigma, 0.0)?;
            let t = combine(&[c; 3], &x, &x0, &eps, Some(&z))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (h, t) in host.iter().zip(&t) {
                assert!((h - t).abs() < 1e-5, "{rule:?}: {h} vs {t}");
            }
        }
        Ok(())
    }

    #[test]
    fn bad_eta_and_missing_noise_are_errors() -> Result<()> {
        assert!(StepRule::Ddim { eta: 1.5 }.validate().is_err());
        assert!(StepRule::Euler { eta: f64::NAN }.validate().is_err());
        let x = Tensor::zeros((2, 1), candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let c = StepRule::Ddpm(DdpmVariance::FixedSmall)
            .coefficients(&Transition::between(level(0.3), Some(level(0.5))));
        assert!(matches!(
            combine(&[c, c], &x, &x, &x, None),
            Err(Error::Shape(_))
        ));
        Ok(())
    }
}
