//! Energy parameterization of the residual MLP, with its input gradient written out by hand.
//!
//! Du et al., *Reduce, Reuse, Recycle* (ICML 2023), §3 / eq. 5: instead of predicting ε
//! directly, a network g_θ(x, t) ∈ ℝ^d is reduced to a scalar energy E_θ(x, t) and the ε
//! prediction is its input gradient,
//!
//! ```text
//! ε̂(x, t) = ∇ₓ E_θ(x, t),      log p_t(x) = −E_θ(x, t)/σ_t + const(t),
//! ```
//!
//! so that the score −ε̂/σ_t is the gradient of an unnormalized log-density that samplers and
//! composition operators can evaluate ([`EnergyForm`] lists the two reductions in use). Such a
//! model trains with the ordinary denoising loss on ε̂, whose parameter gradient is a gradient of
//! the input gradient.
//!
//! # Why a hand-written vector–Jacobian product
//!
//! candle's backward pass detaches the gradients it produces, so ∇ₓE computed with
//! `Tensor::backward` is a constant for a second backward pass (a process-global switch,
//! `CANDLE_GRAD_DO_NOT_DETACH`, keeps the graph but is untested for most ops and would change
//! every other computation of the process). Here ∇ₓE is instead written as explicit tensor
//! operations: the forward pass keeps its activations, and the transposed chain rule
//! (u ↦ Jᵀu, u = ∂E/∂g) runs back through the output layer, each residual block (fc3, swish′,
//! fc2, swish′, fc1, swish′, the layer norm's backward) and the input layer. Every one of those
//! operations is an ordinary differentiable candle op, so `loss.backward()` on a loss of ε̂
//! gives the exact parameter gradients. Both gradients are checked against finite differences
//! in the tests.
//!
//! With `swish(z) = z σ(z)`, `swish′(z) = σ(z) (1 + z − swish(z))`; with the layer norm
//! `n = x̂ γ + β`, `x̂ = (h − mean h) · r`, `r = 1/√(var h + eps)`, the backward of a gradient
//! `g_n` is `r (g − mean g − x̂ mean(g x̂))` with `g = g_n γ`.

use candle_core::{D, Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::denoiser::Denoiser;
use crate::nn::mlp::{MlpConfig, ResidualMlp};
use crate::param::Parameterization;
use crate::{Error, Result};

/// How the network output g(x, t) is reduced to a scalar energy.
///
/// In configuration files it is written `"squared_residual"` or `"half_norm"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyForm {
    /// E = ‖g(x, t) − x‖², the form of the 2-D experiments.
    #[default]
    SquaredResidual,
    /// E = ½‖g(x, t)‖², the form of the image models. The output layer is not zero-initialized
    /// (its gradient would vanish).
    HalfNorm,
}

impl EnergyForm {
    /// The configuration name: `squared_residual` or `half_norm`.
    pub fn name(self) -> &'static str {
        match self {
            Self::SquaredResidual => "squared_residual",
            Self::HalfNorm => "half_norm",
        }
    }
}

impl std::str::FromStr for EnergyForm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "squared_residual" => Ok(Self::SquaredResidual),
            "half_norm" => Ok(Self::HalfNorm),
            other => Err(Error::Config(format!(
                "unknown energy form `{other}`; expected squared_residual or half_norm"
            ))),
        }
    }
}

/// A [`ResidualMlp`] g read as an energy model (see the [module documentation](self)).
///
/// As a [`Denoiser`] it predicts ε̂ = ∇ₓE; [`EnergyMlp::energy_and_grad`] returns the energy
/// too. Its parameters have the names of the wrapped network.
#[derive(Debug, Clone)]
pub struct EnergyMlp {
    net: ResidualMlp,
    form: EnergyForm,
}

/// Activations of one residual block kept for the backward pass.
struct BlockCache {
    xhat: Tensor,
    inv_std: Tensor,
    /// Layer-norm output, the argument of the first swish.
    n: Tensor,
    sig_n: Tensor,
    a_n: Tensor,
    p1: Tensor,
    sig_p1: Tensor,
    a_p1: Tensor,
    p2: Tensor,
    sig_p2: Tensor,
    a_p2: Tensor,
}

/// swish(z) = z σ(z), returning σ(z) too.
fn swish(z: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = candle_nn::ops::sigmoid(z)?;
    let a = (z * &s)?;
    Ok((s, a))
}

/// g · swish′(z) with swish′(z) = σ(z)(1 + z − swish(z)).
fn swish_backward(g: &Tensor, z: &Tensor, s: &Tensor, a: &Tensor) -> Result<Tensor> {
    let d = ((z - a)? + 1.0)?.mul(s)?;
    Ok(g.mul(&d)?)
}

impl EnergyMlp {
    /// Builds the network g (on the parameters of `vb`) with the energy `form`.
    ///
    /// # Errors
    ///
    /// As [`ResidualMlp::new`].
    pub fn new(config: &MlpConfig, form: EnergyForm, vb: VarBuilder) -> Result<Self> {
        let net = match form {
            EnergyForm::SquaredResidual => ResidualMlp::new(config, Parameterization::Epsilon, vb)?,
            EnergyForm::HalfNorm => {
                ResidualMlp::with_random_output(config, Parameterization::Epsilon, vb)?
            }
        };
        Ok(Self { net, form })
    }

    /// Reads an existing network g as an energy model with the given form.
    pub fn from_net(net: ResidualMlp, form: EnergyForm) -> Self {
        Self { net, form }
    }

    /// The wrapped network g.
    pub fn net(&self) -> &ResidualMlp {
        &self.net
    }

    /// The energy form.
    pub fn form(&self) -> EnergyForm {
        self.form
    }

    /// The energy `E(x, t)` (`[B]`) of a batch `x` (`[B, d]`) at the per-sample training-step
    /// indices `t` (`[B]`), without its gradient.
    ///
    /// # Errors
    ///
    /// As [`Denoiser::forward`] of the network.
    pub fn energy(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let g = self.net.forward(x, t, None)?;
        self.reduce(x, &g)
    }

    fn reduce(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        Ok(match self.form {
            EnergyForm::SquaredResidual => (g - x)?.sqr()?.sum(D::Minus1)?,
            EnergyForm::HalfNorm => (g.sqr()?.sum(D::Minus1)? * 0.5)?,
        })
    }

    /// The energy `E(x, t)` (`[B]`) and its input gradient `∇ₓE` (`[B, d]`, the ε prediction),
    /// both as tracked tensor operations: a loss built on either back-propagates into the
    /// parameters (see the [module documentation](self)).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] for inputs other than `[B, d]` with `t` of shape `[B]`;
    /// [`Error::Config`] for times that are not training steps; [`Error::Candle`] from the ops.
    pub fn energy_and_grad(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let net = &self.net;
        net.check_input(x, t)?;
        let emb = net.embed_time(t)?.to_dtype(x.dtype())?;
        // Forward pass, keeping what the backward pass needs.
        let mut h = net.input_layer().forward(x)?;
        let mut caches = Vec::with_capacity(net.blocks().len());
        for b in net.blocks() {
            let (xhat, inv_std) = b.norm.normalize(&h)?;
            let n = xhat
                .broadcast_mul(b.norm.weight())?
                .broadcast_add(b.norm.bias())?;
            let (sig_n, a_n) = swish(&n)?;
            let p1 = (b.fc1.forward(&a_n)? + b.time_proj.forward(&emb)?)?;
            let (sig_p1, a_p1) = swish(&p1)?;
            let p2 = b.fc2.forward(&a_p1)?;
            let (sig_p2, a_p2) = swish(&p2)?;
            h = (h + b.fc3.forward(&a_p2)?)?;
            caches.push(BlockCache {
                xhat,
                inv_std,
                n,
                sig_n,
                a_n,
                p1,
                sig_p1,
                a_p1,
                p2,
                sig_p2,
                a_p2,
            });
        }
        let g = net.output_layer().forward(&h)?;
        let energy = self.reduce(x, &g)?;
        // u = ∂E/∂g, then Jᵀu back through the network.
        let u = match self.form {
            EnergyForm::SquaredResidual => ((&g - x)? * 2.0)?,
            EnergyForm::HalfNorm => g.clone(),
        };
        let mut gh = u.matmul(net.output_layer().weight())?;
        for (b, c) in net.blocks().iter().zip(&caches).rev() {
            let g_a2 = gh.matmul(b.fc3.weight())?;
            let g_p2 = swish_backward(&g_a2, &c.p2, &c.sig_p2, &c.a_p2)?;
            let g_a1 = g_p2.matmul(b.fc2.weight())?;
            let g_p1 = swish_backward(&g_a1, &c.p1, &c.sig_p1, &c.a_p1)?;
            let g_an = g_p1.matmul(b.fc1.weight())?;
            let g_n = swish_backward(&g_an, &c.n, &c.sig_n, &c.a_n)?;
            let g_xhat = g_n.broadcast_mul(b.norm.weight())?;
            let m1 = g_xhat.mean_keepdim(D::Minus1)?;
            let m2 = (&g_xhat * &c.xhat)?.mean_keepdim(D::Minus1)?;
            let g_h = g_xhat
                .broadcast_sub(&m1)?
                .sub(&c.xhat.broadcast_mul(&m2)?)?
                .broadcast_mul(&c.inv_std)?;
            gh = (gh + g_h)?;
        }
        let jtu = gh.matmul(net.input_layer().weight())?;
        let grad = match self.form {
            // ∇ₓ‖g − x‖² = Jᵀu − u with u = 2(g − x).
            EnergyForm::SquaredResidual => (jtu - u)?,
            EnergyForm::HalfNorm => jtu,
        };
        Ok((energy, grad))
    }
}

impl Denoiser for EnergyMlp {
    fn parameterization(&self) -> Parameterization {
        Parameterization::Epsilon
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, _cond: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.energy_and_grad(x_t, t)?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ParamStore;
    use candle_core::{DType, Device, Var};

    fn small() -> MlpConfig {
        MlpConfig {
            data_dim: 2,
            hidden: 8,
            block_hidden: 12,
            num_blocks: 2,
            time_embed_dim: 4,
            num_timesteps: 10,
        }
    }

    /// Moves every parameter away from its initialization (the zero-initialized layers would
    /// hide errors in the backward pass).
    fn perturb(store: &ParamStore) -> Result<()> {
        let mut rng = crate::random::seeded(9);
        for (_, var) in store.vars() {
            let n = var.as_tensor().elem_count();
            let noise = crate::random::normal_vec(&mut rng, n);
            let delta = Tensor::from_vec(noise, var.as_tensor().dims(), &Device::Cpu)?
                .to_dtype(DType::F64)?;
            var.set(&(var.as_tensor() + (delta * 0.3)?)?)?;
        }
        Ok(())
    }

    fn points() -> Result<(Tensor, Tensor)> {
        let x = Tensor::new(&[[0.3f64, -0.7], [1.1, 0.4], [-0.5, -0.2]], &Device::Cpu)?;
        let t = Tensor::new(&[0.0f64, 4.0, 9.0], &Device::Cpu)?;
        Ok((x, t))
    }

    #[test]
    fn input_gradient_matches_finite_differences() -> Result<()> {
        for form in [EnergyForm::SquaredResidual, EnergyForm::HalfNorm] {
            let store = ParamStore::new(3);
            let model =
                EnergyMlp::new(&small(), form, store.var_builder(DType::F64, &Device::Cpu))?;
            perturb(&store)?;
            let (x, t) = points()?;
            let (e, grad) = model.energy_and_grad(&x, &t)?;
            let e2 = model.energy(&x, &t)?;
            assert!((e - e2)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
            let grad = grad.to_vec2::<f64>()?;
            let xv = x.to_vec2::<f64>()?;
            let h = 1e-6;
            for i in 0..3 {
                for j in 0..2 {
                    let mut plus = xv.clone();
                    plus[i][j] += h;
                    let mut minus = xv.clone();
                    minus[i][j] -= h;
                    let ep = model.energy(&Tensor::new(plus, &Device::Cpu)?, &t)?;
                    let em = model.energy(&Tensor::new(minus, &Device::Cpu)?, &t)?;
                    let fd = (ep.to_vec1::<f64>()?[i] - em.to_vec1::<f64>()?[i]) / (2.0 * h);
                    let err = (fd - grad[i][j]).abs();
                    assert!(
                        err < 1e-6 * (1.0 + fd.abs()),
                        "{form:?} {i},{j}: {fd} vs {}",
                        grad[i][j]
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn parameter_gradient_of_the_input_gradient_matches_finite_differences() -> Result<()> {
        for form in [EnergyForm::SquaredResidual, EnergyForm::HalfNorm] {
            let store = ParamStore::new(4);
            let model =
                EnergyMlp::new(&small(), form, store.var_builder(DType::F64, &Device::Cpu))?;
            perturb(&store)?;
            let (x, t) = points()?;
            let target = Tensor::new(&[[0.5f64, -1.0], [0.2, 0.1], [-1.5, 0.7]], &Device::Cpu)?;
            let loss = |m: &EnergyMlp| -> Result<Tensor> {
                Ok((m.forward(&x, &t, None)? - &target)?.sqr()?.sum_all()?)
            };
            let grads = loss(&model)?.backward()?;
            let vars: Vec<(String, Var)> = store.vars();
            let mut checked = 0;
            for (name, var) in &vars {
                let g = grads
                    .get(var.as_tensor())
                    .ok_or_else(|| Error::Training(format!("{name} has no gradient")))?
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                let orig = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
                // Two entries per tensor: the first and the last.
                for k in [0, orig.len() - 1] {
                    let h = 1e-6;
                    let mut bumped = orig.clone();
                    bumped[k] += h;
                    var.set(&Tensor::from_vec(
                        bumped.clone(),
                        var.as_tensor().dims(),
                        &Device::Cpu,
                    )?)?;
                    let lp = loss(&model)?.to_scalar::<f64>()?;
                    bumped[k] -= 2.0 * h;
                    var.set(&Tensor::from_vec(
                        bumped,
                        var.as_tensor().dims(),
                        &Device::Cpu,
                    )?)?;
                    let lm = loss(&model)?.to_scalar::<f64>()?;
                    var.set(&Tensor::from_vec(
                        orig.clone(),
                        var.as_tensor().dims(),
                        &Device::Cpu,
                    )?)?;
                    let fd = (lp - lm) / (2.0 * h);
                    let err = (fd - g[k]).abs();
                    assert!(
                        err < 1e-5 * (1.0 + fd.abs()),
                        "{form:?} {name}[{k}]: finite difference {fd}, backward {}",
                        g[k]
                    );
                    checked += 1;
                }
            }
            assert_eq!(checked, 2 * vars.len());
        }
        Ok(())
    }

    /// The evidence for writing ∇ₓE out by hand: candle's own backward pass gives the same
    /// input gradient, but differentiating *that* gradient with respect to the parameters gives
    /// missing or wrong values (its intermediate gradients are detached), while the hand-written
    /// one gives the finite-difference-checked values of the test above.
    #[test]
    fn candle_autograd_input_gradient_cannot_be_trained_through() -> Result<()> {
        let store = ParamStore::new(3);
        let model = EnergyMlp::new(
            &small(),
            EnergyForm::SquaredResidual,
            store.var_builder(DType::F64, &Device::Cpu),
        )?;
        perturb(&store)?;
        let (x, t) = points()?;
        let xv = Var::from_tensor(&x)?;
        let e = model.energy(xv.as_tensor(), &t)?.sum_all()?;
        let theirs = e
            .backward()?
            .get(xv.as_tensor())
            .cloned()
            .ok_or_else(|| Error::Training("no input gradient".into()))?;
        let (_, ours) = model.energy_and_grad(&x, &t)?;
        let diff = (&theirs - &ours)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-10, "the input gradients differ by {diff}");
        let g_theirs = theirs.sqr()?.sum_all()?.backward()?;
        let g_ours = ours.sqr()?.sum_all()?.backward()?;
        let mut wrong = 0;
        for (_, var) in store.vars() {
            let o = g_ours
                .get(var.as_tensor())
                .ok_or_else(|| Error::Training("missing gradient".into()))?;
            let agree = g_theirs.get(var.as_tensor()).is_some_and(|th| {
                let scale = o
                    .abs()
                    .and_then(|a| a.max_all())
                    .and_then(|m| m.to_scalar::<f64>());
                let err = (th - o).and_then(|d| d.abs()).and_then(|d| d.max_all());
                match (scale, err.and_then(|e| e.to_scalar::<f64>())) {
                    (Ok(s), Ok(e)) => e <= 1e-6 * (1.0 + s),
                    _ => false,
                }
            });
            if !agree {
                wrong += 1;
            }
        }
        assert!(
            wrong > 0,
            "candle now differentiates through input gradients: revisit"
        );
        Ok(())
    }
}
