//! The one interface of a composition: per-sample log-density and score at a noise level.
//!
//! Du et al., *Reduce, Reuse, Recycle* (ICML 2023), §3. A diffusion model defines, at every noise
//! level t of its schedule, a distribution p_t (the data diffused to level t). A [`Component`]
//! evaluates, for a batch of points x, the **score** ∇ₓ log p_t(x) and — when it can — the
//! **log-density** log p_t(x), known up to a constant that may depend on t. Composition
//! operators ([`crate::ops`]) map such pairs to a pair, so they nest; the samplers
//! ([`crate::mcmc`]) only ever talk to this trait.
//!
//! Three kinds of leaves:
//!
//! - [`ScoreLeaf`]: any [`Denoiser`] read as a score model, s = −ε̂/σ_t (ε̂ converted from the
//!   model's parameterization). No log-density.
//! - [`EnergyLeaf`]: an energy-parameterized MLP ([`EnergyMlp`]): ε̂ = ∇ₓE, s = −∇ₓE/σ_t and
//!   log p_t = −E/σ_t + c(t). The energy and its gradient always come from the same evaluation.
//! - [`AnalyticLeaf`]: a [`GaussianMixture`] diffused exactly, with its normalized log-density:
//!   the ground truth the samplers are tested against.
//!
//! Points are host `f32` slices, row-major `[n, d]`; levels are training-timestep indices
//! 0..T of the shared [`DiscreteSchedule`] (T − 1 the noisiest).

use candle_core::{DType, Device, Tensor};
use recompose_diffusion::nn::{EnergyForm, EnergyMlp, FrozenMlp, ResidualMlp};
use recompose_diffusion::{Denoiser, DiscreteSchedule, GaussianMixture, Parameterization};

use crate::{Error, Result};

/// What a [`Component`] returns for a batch of n points.
#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    /// Unnormalized log-density per point (`[n]`), when asked for and available.
    pub log_density: Option<Vec<f64>>,
    /// Score ∇ₓ log p_t per point, row-major `[n, d]`.
    pub score: Vec<f32>,
}

/// A distribution at every noise level of a schedule: score and, optionally, log-density (see
/// the [module documentation](self)).
pub trait Component: Send + Sync {
    /// The data dimension d.
    fn dim(&self) -> usize;

    /// The noise schedule the levels refer to.
    fn schedule(&self) -> &DiscreteSchedule;

    /// Whether [`Component::evaluate`] can return log-densities.
    fn has_density(&self) -> bool;

    /// A short description for error messages, e.g. the model's name.
    fn describe(&self) -> String;

    /// Score (and log-density if `density` is set) of the points `x` (`[n, d]`, row-major) at
    /// the noise level `level` (a training-timestep index).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `x.len()` is not a multiple of d; [`Error::Config`] for a level
    /// outside the schedule; [`Error::NeedsDensity`] if `density` is asked of a component
    /// without one; whatever the model reports.
    fn evaluate(&self, x: &[f32], level: usize, density: bool) -> Result<Eval>;
}

impl<C: Component + ?Sized> Component for Box<C> {
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn schedule(&self) -> &DiscreteSchedule {
        (**self).schedule()
    }
    fn has_density(&self) -> bool {
        (**self).has_density()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn evaluate(&self, x: &[f32], level: usize, density: bool) -> Result<Eval> {
        (**self).evaluate(x, level, density)
    }
}

/// Checks a batch against a dimension and a level against a schedule; returns n.
pub(crate) fn check_batch(
    x: &[f32],
    dim: usize,
    level: usize,
    schedule: &DiscreteSchedule,
) -> Result<usize> {
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(Error::Shape(format!(
            "a batch of {}-dimensional points cannot have {} values",
            dim,
            x.len()
        )));
    }
    if level >= schedule.len() {
        return Err(Error::Config(format!(
            "noise level {level} is outside the schedule's {} steps",
            schedule.len()
        )));
    }
    Ok(x.len() / dim)
}

fn no_density(who: &str) -> Error {
    Error::NeedsDensity(format!(
        "{who} is a score model: it has no log-density (train it with an energy \
         parameterization to get one)"
    ))
}

/// How a leaf evaluates its network.
#[derive(Debug, Clone)]
enum Network<D> {
    /// The residual MLP on the host, without autograd ([`FrozenMlp`]).
    Frozen(FrozenMlp),
    /// Any denoiser through candle, on `device`.
    Candle(D, Device),
}

/// A [`Denoiser`] read as a score model: s = −ε̂(x, t)/σ_t.
#[derive(Debug, Clone)]
pub struct ScoreLeaf<D = Box<dyn Denoiser + Send + Sync>> {
    name: String,
    dim: usize,
    network: Network<D>,
    parameterization: Parameterization,
    schedule: DiscreteSchedule,
    cond: Option<Tensor>,
}

impl<D: Denoiser + Send + Sync> ScoreLeaf<D> {
    /// The score of `denoiser` (trained on `schedule`) for points of dimension `dim`, evaluated
    /// on `device`. `cond` is passed to every call (it must have a batch dimension of 1, which
    /// is broadcast).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `dim` is 0.
    pub fn new(
        name: &str,
        denoiser: D,
        schedule: DiscreteSchedule,
        dim: usize,
        device: &Device,
    ) -> Result<Self> {
        if dim == 0 {
            return Err(Error::Config(format!(
                "{name}: the data dimension must be positive"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            dim,
            parameterization: denoiser.parameterization(),
            network: Network::Candle(denoiser, device.clone()),
            schedule,
            cond: None,
        })
    }

    /// The same leaf passing `cond` (batch dimension 1, broadcast to the batch) to the model.
    pub fn with_cond(self, cond: Tensor) -> Self {
        Self {
            cond: Some(cond),
            ..self
        }
    }
}

impl ScoreLeaf<ResidualMlp> {
    /// The score of a residual MLP, evaluated on the host with [`FrozenMlp`] (the fast path for
    /// the 2-D models).
    ///
    /// # Errors
    ///
    /// As [`FrozenMlp::from_mlp`].
    pub fn mlp(name: &str, net: &ResidualMlp, schedule: DiscreteSchedule) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            dim: net.config().data_dim,
            parameterization: net.parameterization(),
            network: Network::Frozen(FrozenMlp::from_mlp(net)?),
            schedule,
            cond: None,
        })
    }
}

impl<D: Denoiser + Send + Sync> Component for ScoreLeaf<D> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }
    fn has_density(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        format!("`{}`", self.name)
    }
    fn evaluate(&self, x: &[f32], level: usize, density: bool) -> Result<Eval> {
        let n = check_batch(x, self.dim, level, &self.schedule)?;
        if density {
            return Err(no_density(&self.describe()));
        }
        let mut out = match &self.network {
            Network::Frozen(f) => f.forward(x, level)?,
            Network::Candle(model, device) => {
                let xt = Tensor::from_slice(x, (n, self.dim), device)?;
                let t = Tensor::from_vec(vec![level as f32; n], n, device)?;
                let cond = match &self.cond {
                    Some(c) => {
                        let mut dims = c.dims().to_vec();
                        dims[0] = n;
                        Some(c.broadcast_as(dims)?.contiguous()?)
                    }
                    None => None,
                };
                let y = model.forward(&xt, &t, cond.as_ref())?;
                y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
            }
        };
        // The model's output at each element, converted to the score in place.
        let m = self.schedule.marginal(level);
        for (o, &xv) in out.iter_mut().zip(x) {
            *o = self
                .parameterization
                .score_at(f64::from(*o), f64::from(xv), m) as f32;
        }
        Ok(Eval {
            log_density: None,
            score: out,
        })
    }
}

/// How an [`EnergyLeaf`] evaluates its network.
#[derive(Debug, Clone)]
enum EnergyNetwork {
    /// On the host without autograd ([`FrozenMlp`]), with the energy's form.
    Frozen(FrozenMlp, EnergyForm),
    /// Through candle's ops on `device` ([`EnergyMlp::energy_and_grad`]).
    Candle(EnergyMlp, Device),
}

/// An energy-parameterized MLP: s = −∇ₓE/σ_t, log p_t = −E/σ_t (+ an unknown c(t)).
#[derive(Debug, Clone)]
pub struct EnergyLeaf {
    name: String,
    dim: usize,
    network: EnergyNetwork,
    schedule: DiscreteSchedule,
}

impl EnergyLeaf {
    /// The energy model `model` trained on `schedule`, evaluated on the host.
    ///
    /// # Errors
    ///
    /// As [`FrozenMlp::from_mlp`].
    pub fn new(name: &str, model: &EnergyMlp, schedule: DiscreteSchedule) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            dim: model.net().config().data_dim,
            network: EnergyNetwork::Frozen(FrozenMlp::from_mlp(model.net())?, model.form()),
            schedule,
        })
    }

    /// The energy model `model` trained on `schedule`, evaluated with candle's ops on `device`
    /// (where its weights live): the path of a GPU.
    pub fn on_device(
        name: &str,
        model: EnergyMlp,
        schedule: DiscreteSchedule,
        device: &Device,
    ) -> Self {
        Self {
            name: name.to_string(),
            dim: model.net().config().data_dim,
            network: EnergyNetwork::Candle(model, device.clone()),
            schedule,
        }
    }
}

impl Component for EnergyLeaf {
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
        format!("`{}`", self.name)
    }
    fn evaluate(&self, x: &[f32], level: usize, density: bool) -> Result<Eval> {
        let n = check_batch(x, self.dim, level, &self.schedule)?;
        let (energy, mut grad) = match &self.network {
            EnergyNetwork::Frozen(net, form) => net.energy_and_grad(*form, x, level)?,
            EnergyNetwork::Candle(model, device) => {
                let xt = Tensor::from_slice(x, (n, self.dim), device)?;
                let t = Tensor::from_vec(vec![level as f32; n], n, device)?;
                let (e, g) = model.energy_and_grad(&xt, &t)?;
                (
                    e.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                    g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                )
            }
        };
        let sigma = self.schedule.sigma(level);
        let inv = (1.0 / sigma) as f32;
        for g in &mut grad {
            *g *= -inv;
        }
        Ok(Eval {
            log_density: density.then(|| energy.iter().map(|&e| -f64::from(e) / sigma).collect()),
            score: grad,
        })
    }
}

/// A Gaussian mixture diffused exactly along a schedule, with its normalized log-density.
#[derive(Debug, Clone)]
pub struct AnalyticLeaf {
    name: String,
    mixture: GaussianMixture,
    schedule: DiscreteSchedule,
}

impl AnalyticLeaf {
    /// The mixture `mixture` noised along `schedule`.
    pub fn new(name: &str, mixture: GaussianMixture, schedule: DiscreteSchedule) -> Self {
        Self {
            name: name.to_string(),
            mixture,
            schedule,
        }
    }

    /// The clean mixture.
    pub fn mixture(&self) -> &GaussianMixture {
        &self.mixture
    }
}

impl Component for AnalyticLeaf {
    fn dim(&self) -> usize {
        self.mixture.dim()
    }
    fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }
    fn has_density(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("`{}`", self.name)
    }
    fn evaluate(&self, x: &[f32], level: usize, density: bool) -> Result<Eval> {
        let d = self.dim();
        check_batch(x, d, level, &self.schedule)?;
        let (a, s) = (
            self.schedule.sqrt_alpha_bar(level),
            self.schedule.sigma(level),
        );
        let mut score = Vec::with_capacity(x.len());
        let mut logp = Vec::new();
        let mut point = vec![0.0f64; d];
        for row in x.chunks(d) {
            for (p, &v) in point.iter_mut().zip(row) {
                *p = f64::from(v);
            }
            score.extend(
                self.mixture
                    .score(&point, a, s)?
                    .into_iter()
                    .map(|v| v as f32),
            );
            if density {
                logp.push(self.mixture.log_density(&point, a, s)?);
            }
        }
        Ok(Eval {
            log_density: density.then_some(logp),
            score,
        })
    }
}

/// Checks that all components share the dimension and the schedule of the first; returns them.
pub(crate) fn common_shape<'a>(
    what: &str,
    parts: impl IntoIterator<Item = &'a dyn Component>,
) -> Result<(usize, DiscreteSchedule)> {
    let mut first: Option<(usize, DiscreteSchedule, String)> = None;
    for c in parts {
        match &first {
            None => first = Some((c.dim(), c.schedule().clone(), c.describe())),
            Some((d, s, name)) => {
                if c.dim() != *d {
                    return Err(Error::Shape(format!(
                        "{what}: {name} has dimension {d} but {} has dimension {}",
                        c.describe(),
                        c.dim()
                    )));
                }
                let same = s.len() == c.schedule().len()
                    && s.alphas_cumprod()
                        .iter()
                        .zip(c.schedule().alphas_cumprod())
                        .all(|(a, b)| (a - b).abs() <= 1e-9);
                if !same {
                    return Err(Error::Shape(format!(
                        "{what}: {name} and {} were trained on different noise schedules ({} and \
                         {} steps); composed models must share one",
                        c.describe(),
                        s.len(),
                        c.schedule().len()
                    )));
                }
            }
        }
    }
    first
        .map(|(d, s, _)| (d, s))
        .ok_or_else(|| Error::Config(format!("{what} needs at least one model")))
}

/// The component of a model directory written by `recompose train`: an [`EnergyLeaf`] for an
/// energy model, a [`ScoreLeaf`] otherwise. The residual MLPs (score and energy) take the fast
/// host path ([`FrozenMlp`]) on the CPU with the fast paths on, candle's ops on `device`
/// elsewhere; other networks always go through candle on `device`. `name` is used in messages.
///
/// # Errors
///
/// As [`recompose_diffusion::run::Trained::load`].
pub fn load(name: &str, dir: &std::path::Path, device: &Device) -> Result<Box<dyn Component>> {
    use recompose_diffusion::run::{Model, Trained};
    let trained = Trained::load(dir, device)?;
    let dim: usize = trained.config.model_item_shape().iter().product();
    let host = device.is_cpu() && recompose_core::host::fast_paths_enabled();
    let schedule = trained.schedule;
    Ok(match trained.model {
        Model::Mlp(net) if host => Box::new(ScoreLeaf::mlp(name, &net, schedule)?),
        Model::Mlp(net) => Box::new(ScoreLeaf::new(name, net, schedule, dim, device)?),
        Model::Energy(model) if host => Box::new(EnergyLeaf::new(name, &model, schedule)?),
        Model::Energy(model) => Box::new(EnergyLeaf::on_device(name, model, schedule, device)),
        Model::Unet(net) => Box::new(ScoreLeaf::new(name, net, schedule, dim, device)?),
    })
}
