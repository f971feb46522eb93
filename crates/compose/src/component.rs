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
//! - [`EnergyLeaf`]: an energy-parameterized MLP ([`EnergyMlp`]) or U-Net ([`EnergyUNet`]):
//!   ε̂ = ∇ₓE, s = −∇ₓE/σ_t and log p_t = −E/σ_t + c(t). The energy and its gradient always
//!   come from the same evaluation.
//! - [`AnalyticLeaf`]: a [`GaussianMixture`] diffused exactly, with its normalized log-density:
//!   the ground truth the samplers are tested against.
//!
//! Points are tensors `[n, d]` of `f32` on the component's [`Component::device`] (an image
//! model's points are its images flattened); scores come back the same way and log-densities as
//! `f64` tensors `[n]`, on the same device: a sampler on a GPU never copies the chains to the
//! host to evaluate the model. Levels are training-timestep indices 0..T of the shared
//! [`DiscreteSchedule`] (T − 1 the noisiest). The residual MLPs' host kernels ([`FrozenMlp`])
//! are the CPU fast path behind the same interface.

use candle_core::{DType, Device, Tensor};
use recompose_diffusion::nn::{EnergyForm, EnergyMlp, EnergyUNet, FrozenMlp, ResidualMlp};
use recompose_diffusion::{Denoiser, DiscreteSchedule, GaussianMixture, Parameterization};

use crate::{Error, Result};

/// What a [`Component`] returns for a batch of n points.
#[derive(Debug, Clone)]
pub struct Eval {
    /// Unnormalized log-density per point (`[n]`, `f64`), when asked for and available.
    pub log_density: Option<Tensor>,
    /// Score ∇ₓ log p_t per point (`[n, d]`, `f32`).
    pub score: Tensor,
}

impl Eval {
    /// The score on the host, row-major `[n, d]`.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if the tensor cannot be read.
    pub fn score_vec(&self) -> Result<Vec<f32>> {
        Ok(self.score.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The log-densities on the host (`None` if not evaluated).
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if the tensor cannot be read.
    pub fn log_density_vec(&self) -> Result<Option<Vec<f64>>> {
        self.log_density
            .as_ref()
            .map(|f| Ok(f.to_vec1::<f64>()?))
            .transpose()
    }
}

/// A distribution at every noise level of a schedule: score and, optionally, log-density (see
/// the [module documentation](self)).
pub trait Component: Send + Sync {
    /// The data dimension d (the product of an image model's item shape).
    fn dim(&self) -> usize;

    /// The noise schedule the levels refer to.
    fn schedule(&self) -> &DiscreteSchedule;

    /// Whether [`Component::evaluate`] can return log-densities.
    fn has_density(&self) -> bool;

    /// A short description for error messages, e.g. the model's name.
    fn describe(&self) -> String;

    /// The device the component evaluates on, where its points must live.
    fn device(&self) -> &Device;

    /// Score (and log-density if `density` is set) of the points `x` (`[n, d]`, `f32`, on
    /// [`Component::device`]) at the noise level `level` (a training-timestep index).
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `x` is not `[n, d]` of `f32` on the component's device;
    /// [`Error::Config`] for a level outside the schedule; [`Error::NeedsDensity`] if `density`
    /// is asked of a component without one; whatever the model reports.
    fn evaluate(&self, x: &Tensor, level: usize, density: bool) -> Result<Eval>;
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
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn evaluate(&self, x: &Tensor, level: usize, density: bool) -> Result<Eval> {
        (**self).evaluate(x, level, density)
    }
}

/// Checks a batch of points against a component's dimension and device, and a level against
/// its schedule; returns n.
pub(crate) fn check_batch(
    x: &Tensor,
    dim: usize,
    device: &Device,
    level: usize,
    schedule: &DiscreteSchedule,
) -> Result<usize> {
    let n = match x.dims() {
        &[n, d] if d == dim && dim > 0 => n,
        dims => {
            return Err(Error::Shape(format!(
                "a batch of {dim}-dimensional points must have the shape [n, {dim}], got {dims:?}"
            )));
        }
    };
    if x.dtype() != DType::F32 {
        return Err(Error::Shape(format!(
            "points must be f32, got {:?}",
            x.dtype()
        )));
    }
    if !x.device().same_device(device) {
        return Err(Error::Shape(format!(
            "the points are on {:?} but the model evaluates on {:?}",
            x.device().location(),
            device.location()
        )));
    }
    if level >= schedule.len() {
        return Err(Error::Config(format!(
            "noise level {level} is outside the schedule's {} steps",
            schedule.len()
        )));
    }
    Ok(n)
}

/// The points of a host-path leaf as a row-major vector.
fn host_points(x: &Tensor) -> Result<Vec<f32>> {
    Ok(x.flatten_all()?.to_vec1::<f32>()?)
}

/// `t / v` with a true division (candle's `t / v` multiplies by the reciprocal).
pub(crate) fn divide(t: &Tensor, v: f64) -> Result<Tensor> {
    let v = Tensor::new(v, t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_div(&v)?)
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
    /// Any denoiser through candle's ops.
    Candle(D),
}

/// A [`Denoiser`] read as a score model: s = −ε̂(x, t)/σ_t.
#[derive(Debug, Clone)]
pub struct ScoreLeaf<D = Box<dyn Denoiser + Send + Sync>> {
    name: String,
    item: Vec<usize>,
    dim: usize,
    network: Network<D>,
    device: Device,
    parameterization: Parameterization,
    schedule: DiscreteSchedule,
    cond: Option<Tensor>,
}

impl<D: Denoiser + Send + Sync> ScoreLeaf<D> {
    /// The score of `denoiser` (trained on `schedule`) for items of shape `item` (`[d]` for
    /// vectors, `[c, h, w]` for images; points are passed flattened), evaluated with candle's
    /// ops on `device`, where its weights live. `cond` is passed to every call (it must have a
    /// batch dimension of 1, which is broadcast).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the item shape is empty or has a zero extent.
    pub fn new(
        name: &str,
        denoiser: D,
        schedule: DiscreteSchedule,
        item: &[usize],
        device: &Device,
    ) -> Result<Self> {
        if item.is_empty() || item.contains(&0) {
            return Err(Error::Config(format!(
                "{name}: the item shape must be non-empty with positive extents, got {item:?}"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            item: item.to_vec(),
            dim: item.iter().product(),
            parameterization: denoiser.parameterization(),
            network: Network::Candle(denoiser),
            device: device.clone(),
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
    /// The score of a residual MLP, evaluated on the host with [`FrozenMlp`] (the CPU fast path
    /// of the 2-D models).
    ///
    /// # Errors
    ///
    /// As [`FrozenMlp::from_mlp`].
    pub fn mlp(name: &str, net: &ResidualMlp, schedule: DiscreteSchedule) -> Result<Self> {
        let dim = net.config().data_dim;
        Ok(Self {
            name: name.to_string(),
            item: vec![dim],
            dim,
            parameterization: net.parameterization(),
            network: Network::Frozen(FrozenMlp::from_mlp(net)?),
            device: Device::Cpu,
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
    fn device(&self) -> &Device {
        &self.device
    }
    fn evaluate(&self, x: &Tensor, level: usize, density: bool) -> Result<Eval> {
        let n = check_batch(x, self.dim, &self.device, level, &self.schedule)?;
        if density {
            return Err(no_density(&self.describe()));
        }
        let m = self.schedule.marginal(level);
        let score = match &self.network {
            Network::Frozen(f) => {
                let xs = host_points(x)?;
                let mut out = f.forward(&xs, level)?;
                // The model's output at each element, converted to the score in place.
                for (o, &xv) in out.iter_mut().zip(&xs) {
                    *o = self
                        .parameterization
                        .score_at(f64::from(*o), f64::from(xv), m) as f32;
                }
                Tensor::from_vec(out, (n, self.dim), &self.device)?
            }
            Network::Candle(model) => {
                let mut shape = vec![n];
                shape.extend_from_slice(&self.item);
                let xt = x.reshape(shape)?;
                let t = Tensor::from_vec(vec![level as f32; n], n, &self.device)?;
                let cond = match &self.cond {
                    Some(c) => {
                        let mut dims = c.dims().to_vec();
                        dims[0] = n;
                        Some(c.broadcast_as(dims)?.contiguous()?)
                    }
                    None => None,
                };
                let y = model
                    .forward(&xt, &t, cond.as_ref())?
                    .to_dtype(DType::F32)?
                    .reshape((n, self.dim))?;
                let per = |v: f64| Tensor::from_vec(vec![v as f32; n], n, &self.device);
                self.parameterization
                    .to_score(&y, x, &per(m.alpha)?, &per(m.sigma)?)?
            }
        };
        Ok(Eval {
            log_density: None,
            score,
        })
    }
}

/// How an [`EnergyLeaf`] evaluates its network.
#[derive(Debug, Clone)]
enum EnergyNetwork {
    /// On the host without autograd ([`FrozenMlp`]), with the energy's form.
    Frozen(FrozenMlp, EnergyForm),
    /// Through candle's ops ([`EnergyMlp::energy_and_grad`]).
    Candle(EnergyMlp),
    /// An energy U-Net through candle's ops ([`EnergyUNet::energy_and_grad`]), with the item
    /// shape `[C, H, W]` its flattened points are reshaped to.
    Image(Box<EnergyUNet>, Vec<usize>),
}

/// An energy-parameterized network — the residual MLP or the U-Net: s = −∇ₓE/σ_t,
/// log p_t = −E/σ_t (+ an unknown c(t)).
#[derive(Debug, Clone)]
pub struct EnergyLeaf {
    name: String,
    dim: usize,
    network: EnergyNetwork,
    device: Device,
    schedule: DiscreteSchedule,
}

impl EnergyLeaf {
    /// The energy model `model` trained on `schedule`, evaluated on the host (the CPU fast
    /// path).
    ///
    /// # Errors
    ///
    /// As [`FrozenMlp::from_mlp`].
    pub fn new(name: &str, model: &EnergyMlp, schedule: DiscreteSchedule) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            dim: model.net().config().data_dim,
            network: EnergyNetwork::Frozen(FrozenMlp::from_mlp(model.net())?, model.form()),
            device: Device::Cpu,
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
            network: EnergyNetwork::Candle(model),
            device: device.clone(),
            schedule,
        }
    }
}

impl EnergyLeaf {
    /// The energy U-Net `model` trained on `schedule`, evaluated on `device` (where its
    /// weights live); its points are its images flattened.
    pub fn unet(
        name: &str,
        model: EnergyUNet,
        schedule: DiscreteSchedule,
        device: &Device,
    ) -> Self {
        let c = model.net().config();
        let item = vec![c.in_channels, c.image_size, c.image_size];
        Self {
            name: name.to_string(),
            dim: item.iter().product(),
            network: EnergyNetwork::Image(Box::new(model), item),
            device: device.clone(),
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
    fn device(&self) -> &Device {
        &self.device
    }
    fn evaluate(&self, x: &Tensor, level: usize, density: bool) -> Result<Eval> {
        let n = check_batch(x, self.dim, &self.device, level, &self.schedule)?;
        let sigma = self.schedule.sigma(level);
        let inv = (1.0 / sigma) as f32;
        let (energy, score) = match &self.network {
            EnergyNetwork::Frozen(net, form) => {
                let (energy, mut grad) = net.energy_and_grad(*form, &host_points(x)?, level)?;
                for g in &mut grad {
                    *g *= -inv;
                }
                (
                    Tensor::from_vec(energy, n, &self.device)?,
                    Tensor::from_vec(grad, (n, self.dim), &self.device)?,
                )
            }
            EnergyNetwork::Candle(model) => {
                let t = Tensor::from_vec(vec![level as f32; n], n, &self.device)?;
                let (e, g) = model.energy_and_grad(x, &t)?;
                let score = g.to_dtype(DType::F32)?.affine(-f64::from(inv), 0.0)?;
                (e, score)
            }
            EnergyNetwork::Image(model, item) => {
                let t = Tensor::from_vec(vec![level as f32; n], n, &self.device)?;
                let mut shape = vec![n];
                shape.extend_from_slice(item);
                let (e, g) = model.energy_and_grad(&x.reshape(shape)?, &t, None)?;
                let score = g
                    .detach()
                    .to_dtype(DType::F32)?
                    .reshape((n, self.dim))?
                    .affine(-f64::from(inv), 0.0)?;
                (e.detach(), score)
            }
        };
        let log_density = if density {
            Some(divide(&energy.to_dtype(DType::F64)?.neg()?, sigma)?)
        } else {
            None
        };
        Ok(Eval { log_density, score })
    }
}

/// A Gaussian mixture diffused exactly along a schedule, with its normalized log-density.
#[derive(Debug, Clone)]
pub struct AnalyticLeaf {
    name: String,
    mixture: GaussianMixture,
    schedule: DiscreteSchedule,
    device: Device,
}

impl AnalyticLeaf {
    /// The mixture `mixture` noised along `schedule`, for points on the CPU.
    pub fn new(name: &str, mixture: GaussianMixture, schedule: DiscreteSchedule) -> Self {
        Self {
            name: name.to_string(),
            mixture,
            schedule,
            device: Device::Cpu,
        }
    }

    /// The same leaf taking and returning tensors on `device` (it computes on the host: it is
    /// the reference the samplers are tested against, not a model).
    pub fn on(self, device: &Device) -> Self {
        Self {
            device: device.clone(),
            ..self
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
    fn device(&self) -> &Device {
        &self.device
    }
    fn evaluate(&self, x: &Tensor, level: usize, density: bool) -> Result<Eval> {
        let d = self.dim();
        let n = check_batch(x, d, &self.device, level, &self.schedule)?;
        let (a, s) = (
            self.schedule.sqrt_alpha_bar(level),
            self.schedule.sigma(level),
        );
        let xs = host_points(x)?;
        let mut score = Vec::with_capacity(xs.len());
        let mut logp = Vec::new();
        let mut point = vec![0.0f64; d];
        for row in xs.chunks(d) {
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
            log_density: density
                .then(|| Tensor::from_vec(logp, n, &self.device))
                .transpose()?,
            score: Tensor::from_vec(score, (n, d), &self.device)?,
        })
    }
}

/// Checks that all components share the dimension, the schedule and the device of the first;
/// returns the dimension, the schedule and the device.
pub(crate) fn common_shape<'a>(
    what: &str,
    parts: impl IntoIterator<Item = &'a dyn Component>,
) -> Result<(usize, DiscreteSchedule, Device)> {
    let mut first: Option<(usize, DiscreteSchedule, Device, String)> = None;
    for c in parts {
        match &first {
            None => {
                first = Some((
                    c.dim(),
                    c.schedule().clone(),
                    c.device().clone(),
                    c.describe(),
                ))
            }
            Some((d, s, device, name)) => {
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
                if !c.device().same_device(device) {
                    return Err(Error::Config(format!(
                        "{what}: {name} evaluates on {:?} but {} on {:?}; composed models must \
                         share one device",
                        device.location(),
                        c.describe(),
                        c.device().location()
                    )));
                }
            }
        }
    }
    first
        .map(|(d, s, device, _)| (d, s, device))
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
    let item = trained.config.model_item_shape();
    let host = device.is_cpu() && recompose_core::host::fast_paths_enabled();
    let schedule = trained.schedule;
    Ok(match trained.model {
        Model::Mlp(net) if host => Box::new(ScoreLeaf::mlp(name, &net, schedule)?),
        Model::Mlp(net) => Box::new(ScoreLeaf::new(name, net, schedule, &item, device)?),
        Model::Energy(model) if host => Box::new(EnergyLeaf::new(name, &model, schedule)?),
        Model::Energy(model) => Box::new(EnergyLeaf::on_device(name, model, schedule, device)),
        Model::Unet(net) => Box::new(ScoreLeaf::new(name, net, schedule, &item, device)?),
        Model::EnergyUnet(net) => Box::new(EnergyLeaf::unet(name, *net, schedule, device)),
        Model::TextUnet(_) => {
            return Err(Error::Config(format!(
                "`{name}` is a text-conditioned model: compose it through quoted prompts \
                 (`\"a prompt\"`), not by its name"
            )));
        }
    })
}
