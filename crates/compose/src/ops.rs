//! Composition operators: products (AND), mixtures (OR), negation (NOT) and guidance.
//!
//! Du et al., *Reduce, Reuse, Recycle* (ICML 2023), §3 and eqs. 7–10; Liu et al., *Composable
//! Diffusion* (ECCV 2022) for the conjunction and negation of guidance terms. Each operator maps
//! the (log-density f_i, score s_i) pairs of its children to one pair, so trees of operators
//! evaluate to one (f, s) per sample:
//!
//! ```text
//! product      f = Σ_i w_i f_i                          s = Σ_i w_i s_i
//! mixture      f = logsumexp_i(log π_i + f_i)           s = Σ_i softmax_i(log π_i + f_i) s_i
//! negation     f = a f_1 − α f_2                        s = a s_1 − α s_2
//! CFG          f = f_u + Σ_i w_i (f_i − f_u)            s = s_u + Σ_i w_i (s_i − s_u)
//! classifier   f = f_u + λ log p(y | x, t)              s = s_u + λ ∇ₓ log p(y | x, t)
//! ```
//!
//! Negation and both guidances are products with particular weights (CFG has the weights
//! 1 − Σw_i on the unconditional model and w_i on the conditional ones; the classifier is a
//! [`Component`] whose log-density is log p(y | x_t)), so f and s always come from the same
//! formula: the energy of a composition matches its gradient.
//!
//! Products work on scores alone. A **mixture needs log-densities** (energy models): the weights
//! softmax(log π_i + f_i) depend on the densities' values, not only on their gradients, and
//! composing score-only models with OR is an error ([`Error::NeedsDensity`]). The log-density
//! of an energy model is known only up to a constant c_i(t) that depends on the noise level, so
//! at level t a mixture weighs its components by π_i e^{c_i(t)}: equal only if the models'
//! normalizers agree, which holds for models trained on the same schedule with similar spread
//! and holds exactly at the end of sampling only for normalized models.
//!
//! Why reverse diffusion alone does not sample a product: the sum of the children's scores at
//! level t is not the score of the diffused product; the two agree only at t = 0. The summed
//! scores still define a path of unnormalized densities from a near-Gaussian to the product, so
//! MCMC that targets each level ([`crate::mcmc`]) corrects it.

use candle_core::{D, DType, Device, Tensor};
use recompose_diffusion::DiscreteSchedule;

use crate::component::{Component, Eval, check_batch, common_shape};
use crate::{Error, Result};

/// The weighted product (AND) Π_i p_i^{w_i}: f = Σ w_i f_i, s = Σ w_i s_i. Weights may be
/// negative (negation).
pub struct Product {
    terms: Vec<(f64, Box<dyn Component>)>,
    dim: usize,
    schedule: DiscreteSchedule,
    device: Device,
}

impl std::fmt::Debug for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Product")
            .field("describe", &self.describe())
            .finish()
    }
}

impl Product {
    /// The product of `terms` (weight, component).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no terms or a non-finite weight; [`Error::Shape`] if the components
    /// differ in dimension or schedule; [`Error::Config`] if they evaluate on different
    /// devices.
    pub fn new(terms: Vec<(f64, Box<dyn Component>)>) -> Result<Self> {
        if let Some((w, c)) = terms.iter().find(|(w, _)| !w.is_finite()) {
            return Err(Error::Config(format!(
                "product: the weight {w} of {} is not finite",
                c.describe()
            )));
        }
        let (dim, schedule, device) =
            common_shape("product", terms.iter().map(|(_, c)| c.as_ref()))?;
        Ok(Self {
            terms,
            dim,
            schedule,
            device,
        })
    }

    /// The weighted terms.
    pub fn terms(&self) -> &[(f64, Box<dyn Component>)] {
        &self.terms
    }
}

impl Component for Product {
    fn dim(&self) -> usize {
        self.dim
    }
    fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }
    fn has_density(&self) -> bool {
        self.terms.iter().all(|(_, c)| c.has_density())
    }
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|(w, c)| format!("{w}*{}", c.describe()))
            .collect();
        format!("({})", parts.join(" AND "))
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn evaluate(&self, x: &Tensor, level: usize, density: bool) -> Result<Eval> {
        check_batch(x, self.dim, &self.device, level, &self.schedule)?;
        let mut score: Option<Tensor> = None;
        let mut logp: Option<Tensor> = None;
        for (w, c) in &self.terms {
            let e = c.evaluate(x, level, density)?;
            score = Some(accumulate(score, (e.score * *w)?)?);
            if density {
                let f = e.log_density.ok_or_else(|| {
                    Error::NeedsDensity("a product's component returned no log-density".into())
                })?;
                logp = Some(accumulate(logp, (f * *w)?)?);
            }
        }
        Ok(Eval {
            log_density: logp,
            score: score
                .ok_or_else(|| Error::Config("a product needs at least one model".into()))?,
        })
    }
}

/// `acc + term`, or `term` for the first term of a sum.
fn accumulate(acc: Option<Tensor>, term: Tensor) -> Result<Tensor> {
    Ok(match acc {
        Some(a) => (a + term)?,
        None => term,
    })
}

/// The mixture (OR) Σ_i π_i p_i of components with log-densities (see the
/// [module documentation](self) for the caveat on unnormalized energies).
pub struct Mixture {
    terms: Vec<(f64, Box<dyn Component>)>,
    dim: usize,
    schedule: DiscreteSchedule,
    device: Device,
}

impl std::fmt::Debug for Mixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixture")
            .field("describe", &self.describe())
            .finish()
    }
}

impl Mixture {
    /// The mixture of `terms` (weight π_i > 0, component); the weights are normalized.
    ///
    /// # Errors
    ///
    /// [`Error::NeedsDensity`] naming the first component without a log-density;
    /// [`Error::Config`] for no terms or a weight that is not positive and finite;
    /// [`Error::Shape`] as [`Product::new`].
    pub fn new(terms: Vec<(f64, Box<dyn Component>)>) -> Result<Self> {
        if let Some((_, c)) = terms.iter().find(|(_, c)| !c.has_density()) {
            return Err(Error::NeedsDensity(format!(
                "a mixture (OR) needs the log-density of every component, but {} is a score \
                 model; train it with an energy parameterization (`recompose train --energy`)",
                c.describe()
            )));
        }
        if let Some((w, c)) = terms.iter().find(|(w, _)| !(w.is_finite() && *w > 0.0)) {
            return Err(Error::Config(format!(
                "mixture: the weight {w} of {} must be positive and finite",
                c.describe()
            )));
        }
        let (dim, schedule, device) =
            common_shape("mixture", terms.iter().map(|(_, c)| c.as_ref()))?;
        let total: f64 = terms.iter().map(|(w, _)| w).sum();
        let terms = terms.into_iter().map(|(w, c)| (w / total, c)).collect();
        Ok(Self {
            terms,
            dim,
            schedule,
            device,
        })
    }
}

impl Component for Mixture {
    fn dim(&self) -> usize {
        self.dim
    }
    fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }
    fn has_density(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|(w, c)| format!("{w}*{}", c.describe()))
            .collect();
        format!("({})", parts.join(" OR "))
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn evaluate(&self, x: &Tensor, level: usize, density: bool) -> Result<Eval> {
        check_batch(x, self.dim, &self.device, level, &self.schedule)?;
        let evals = self
            .terms
            .iter()
            .map(|(_, c)| c.evaluate(x, level, true))
            .collect::<Result<Vec<_>>>()?;
        // logits[i, k] = log π_k + f_k(x_i), and their log-sum-exp over k.
        let logits = self
            .terms
            .iter()
            .zip(&evals)
            .map(|((pi, _), e)| {
                let f = e.log_density.as_ref().ok_or_else(|| {
                    Error::NeedsDensity("a mixture component returned no log-density".into())
                })?;
                Ok((f + pi.ln())?)
            })
            .collect::<Result<Vec<_>>>()?;
        let logits = Tensor::stack(&logits, 1)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?.exp()?;
        let z = shifted.sum_keepdim(D::Minus1)?;
        let logp = (max + z.log()?)?.squeeze(D::Minus1)?;
        // The responsibilities softmax_k(logits) weigh the components' scores.
        let r = shifted.broadcast_div(&z)?.to_dtype(DType::F32)?;
        let mut score: Option<Tensor> = None;
        for (k, e) in evals.iter().enumerate() {
            let term = e.score.broadcast_mul(&r.narrow(1, k, 1)?)?;
            score = Some(accumulate(score, term)?);
        }
        Ok(Eval {
            log_density: density.then_some(logp),
            score: score
                .ok_or_else(|| Error::Config("a mixture needs at least one model".into()))?,
        })
    }
}

/// The weights of the negation `a·A NOT α·B` when the expression leaves them out: the paper's
/// a = 1.3, α = 0.3, which sum to 1 so the composition keeps the noise scale of its parts (with
/// a − α ≠ 1 the Gaussian tails at high noise would be sharpened or flattened).
pub const DEFAULT_NEGATION: (f64, f64) = (1.3, 0.3);

/// The negation (NOT) p_1^a / p_2^α: a product with weights a and −α.
///
/// # Errors
///
/// [`Error::Config`] unless a and α are positive and finite; as [`Product::new`].
pub fn negation(
    a: f64,
    keep: Box<dyn Component>,
    alpha: f64,
    remove: Box<dyn Component>,
) -> Result<Product> {
    for (name, w) in [("a", a), ("alpha", alpha)] {
        if !(w.is_finite() && w > 0.0) {
            return Err(Error::Config(format!(
                "negation: the weight {name} = {w} must be positive and finite"
            )));
        }
    }
    Product::new(vec![(a, keep), (-alpha, remove)])
}

/// Classifier-free guidance with several conditions: s = s_u + Σ w_i (s_i − s_u), f likewise,
/// i.e. the product with weight 1 − Σ w_i on `uncond` and w_i on each conditional model.
///
/// # Errors
///
/// [`Error::Config`] if there is no condition; as [`Product::new`].
pub fn classifier_free_guidance(
    uncond: Box<dyn Component>,
    conds: Vec<(f64, Box<dyn Component>)>,
) -> Result<Product> {
    if conds.is_empty() {
        return Err(Error::Config(
            "classifier-free guidance needs at least one conditional model".into(),
        ));
    }
    let total: f64 = conds.iter().map(|(w, _)| w).sum();
    let mut terms = vec![(1.0 - total, uncond)];
    terms.extend(conds);
    Product::new(terms)
}

/// Classifier guidance: f = f_u + λ log p(y | x, t), where `classifier` is a [`Component`]
/// whose log-density is log p(y | x_t) and whose score is its gradient.
///
/// # Errors
///
/// As [`Product::new`].
pub fn classifier_guidance(
    base: Box<dyn Component>,
    classifier: Box<dyn Component>,
    scale: f64,
) -> Result<Product> {
    Product::new(vec![(1.0, base), (scale, classifier)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::AnalyticLeaf;
    use recompose_diffusion::GaussianMixture;

    fn leaf(name: &str, mean: f64, var: f64) -> Box<dyn Component> {
        let s = DiscreteSchedule::cosine(20, 0.008).expect("schedule");
        Box::new(AnalyticLeaf::new(
            name,
            GaussianMixture::gaussian(vec![mean, -mean], var).expect("mixture"),
            s,
        ))
    }

    const X: [f32; 6] = [0.3, -0.2, 1.5, 0.7, -1.1, 0.05];

    fn points(x: &[f32]) -> Tensor {
        Tensor::from_slice(x, (x.len() / 2, 2), &Device::Cpu).expect("points")
    }

    /// Score and log-density of `c` at the points `x`, on the host.
    fn host(c: &dyn Component, x: &[f32], level: usize) -> Result<(Vec<f32>, Vec<f64>)> {
        let e = c.evaluate(&points(x), level, true)?;
        Ok((
            e.score_vec()?,
            e.log_density_vec()?.expect("asked with density"),
        ))
    }

    #[test]
    fn product_and_guidance_are_the_weighted_sums() -> Result<()> {
        let (a, b, c) = (
            leaf("a", 1.0, 0.2),
            leaf("b", -0.5, 0.1),
            leaf("c", 0.3, 0.5),
        );
        let (sa, fa) = host(a.as_ref(), &X, 7)?;
        let (sb, fb) = host(b.as_ref(), &X, 7)?;
        let (sc, fc) = host(c.as_ref(), &X, 7)?;
        let cfg = classifier_free_guidance(a, vec![(2.0, b), (0.5, c)])?;
        let (s, f) = host(&cfg, &X, 7)?;
        for i in 0..3 {
            let want = fa[i] + 2.0 * (fb[i] - fa[i]) + 0.5 * (fc[i] - fa[i]);
            assert!((f[i] - want).abs() < 1e-9);
        }
        for j in 0..6 {
            let want = sa[j] + 2.0 * (sb[j] - sa[j]) + 0.5 * (sc[j] - sa[j]);
            assert!((s[j] - want).abs() < 1e-4);
        }
        Ok(())
    }

    /// The composed energy and score agree: the score is the gradient of the log-density, for a
    /// nested tree of every operator.
    #[test]
    fn composed_score_is_the_gradient_of_the_composed_log_density() -> Result<()> {
        let tree = negation(
            1.3,
            Box::new(Mixture::new(vec![
                (1.0, leaf("a", 1.0, 0.2)),
                (3.0, leaf("b", -0.5, 0.1)),
            ])?),
            0.3,
            leaf("c", 0.3, 0.5),
        )?;
        let tree = classifier_free_guidance(leaf("u", 0.0, 1.0), vec![(1.5, Box::new(tree))])?;
        let (score, _) = host(&tree, &X, 4)?;
        let h = 1e-3f32;
        for j in 0..X.len() {
            let mut p = X;
            p[j] += h;
            let mut m = X;
            m[j] -= h;
            let fp = host(&tree, &p, 4)?.1[j / 2];
            let fm = host(&tree, &m, 4)?.1[j / 2];
            let fd = (fp - fm) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(score[j])).abs() < 2e-3 * (1.0 + fd.abs()),
                "{j}: {fd} vs {}",
                score[j]
            );
        }
        Ok(())
    }

    #[test]
    fn mixture_of_equal_components_is_the_component() -> Result<()> {
        let m = Mixture::new(vec![(0.3, leaf("a", 1.0, 0.2)), (0.7, leaf("a", 1.0, 0.2))])?;
        let (s, f) = host(&m, &X, 10)?;
        let (want_s, want_f) = host(leaf("a", 1.0, 0.2).as_ref(), &X, 10)?;
        for (g, w) in f.iter().zip(want_f) {
            assert!((g - w).abs() < 1e-9);
        }
        for (g, w) in s.iter().zip(want_s) {
            assert!((g - w).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn bad_compositions_are_errors() {
        assert!(matches!(Product::new(vec![]), Err(Error::Config(_))));
        assert!(matches!(
            Mixture::new(vec![(0.0, leaf("a", 1.0, 0.2))]),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            negation(-1.0, leaf("a", 1.0, 0.2), 0.3, leaf("b", 1.0, 0.2)),
            Err(Error::Config(_))
        ));
        let other = Box::new(AnalyticLeaf::new(
            "d3",
            GaussianMixture::gaussian(vec![0.0; 3], 1.0).expect("mixture"),
            DiscreteSchedule::cosine(20, 0.008).expect("schedule"),
        ));
        assert!(matches!(
            Product::new(vec![(1.0, leaf("a", 1.0, 0.2)), (1.0, other)]),
            Err(Error::Shape(_))
        ));
        let long = Box::new(AnalyticLeaf::new(
            "t30",
            GaussianMixture::gaussian(vec![0.0; 2], 1.0).expect("mixture"),
            DiscreteSchedule::cosine(30, 0.008).expect("schedule"),
        ));
        assert!(matches!(
            Product::new(vec![(1.0, leaf("a", 1.0, 0.2)), (1.0, long)]),
            Err(Error::Shape(_))
        ));
    }
}
