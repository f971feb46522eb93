//! Training: the denoising objective, a loop with AdamW, warm-up and decay, clipping and EMA,
//! per-step loss logs, and atomic checkpoints that resume bit for bit.
//!
//! The objective is DDPM's simplified loss (Ho et al. 2020, eq. 14) in any parameterization: for
//! clean data x₀, a timestep t uniform in `0..T` (or drawn as [`TimestepSampling`] says), ε ~ N(0, I) and `x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`,
//! minimize `‖f_θ(x_t, t) − target‖²` averaged over elements, with target ε, x₀ or
//! `v = √ᾱ ε − √(1−ᾱ) x₀` (Salimans & Ho 2022) ([`DenoisingLoss`]). Other objectives (the
//! Decomp Diffusion encoder + denoiser, energy models) implement [`Objective`] and reuse the loop.
//!
//! # The output directory
//!
//! ```text
//! DIR/model.safetensors        EMA weights under the model's parameter names (what `sample` loads)
//! DIR/model.json               their manifest (dtype, shape, checksum per tensor)
//! DIR/checkpoint/state.safetensors   raw weights (param.*), EMA (ema.*), Adam moments (adam_m.*, adam_v.*)
//! DIR/checkpoint/state.json    step, training config, RNG state, optimizer step count, manifest,
//!                              length of the loss log at that step
//! DIR/loss.jsonl | loss.csv    one row per logged step: step, loss, lr, grad_norm
//! DIR/provenance.json          per run (start or resume): the program's source revision, first step
//! DIR/train.lock               the run lock (holds the running process's id)
//! ```
//!
//! Every random draw of a step (batch, timesteps, noise, dropout) comes from one ChaCha stream
//! whose position is saved, so a resumed run replays exactly the draws the uninterrupted run
//! would have made, and ends with the same bytes in every file but the lock.
//!
//! # The checkpoint protocol
//!
//! A run holds an OS advisory lock on `DIR/train.lock` from start to end (see [`checkpoint`]):
//! a second run on `DIR` is refused before it reads or writes anything there, and the lock of a
//! killed run goes with its process. Loss rows are appended as steps finish. The checkpoint of
//! step `s` is written as follows (`sync` is `fsync`):
//!
//! 1. The loss log is synced; its length `L` is the log as of step `s`.
//! 2. `checkpoint.tmp/` is created afresh (one left by a crash is removed first);
//!    `state.safetensors` and `state.json` (`s`, the RNG position, the optimizer's step count,
//!    the tensors' manifest and `L`) are written into it and synced, then the directory.
//! 3. Commit: `checkpoint/`, if present, is renamed to `checkpoint.old/` (an older
//!    `checkpoint.old/` is removed first), `checkpoint.tmp/` is renamed to `checkpoint/`, and
//!    `DIR` is synced after each rename; then `checkpoint.old/` is removed.
//! 4. `model.safetensors` and `model.json` are rewritten from the committed EMA weights, each
//!    by [`write_atomic`] (temporary file, sync, rename, directory sync).
//!
//! What holds however the process ends (a kill, a power cut on a file system that honours
//! `fsync`): `checkpoint/`, when present, is complete, since it only appears by the rename of
//! a synced directory; while it is absent, `checkpoint.old/` is complete, since it is only
//! removed while `checkpoint/` exists. [`train`] resumes from `checkpoint/`, else from
//! `checkpoint.old/`. On resume it cuts the loss log back to the recorded `L` (a log shorter
//! than `L` has lost rows the checkpoint covers and is refused) and rewrites the model files
//! from the checkpoint, repairing a pair that a crash between the two left torn. A write that
//! fails (a full disk, a file-size limit) removes its temporary file or directory and returns
//! [`Error::Io`]; the previous checkpoint and model files stay as they were.

pub mod checkpoint;
pub mod optim;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_distr::Distribution;
use recompose_core::memory::MemoryLimit;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::denoiser::Denoiser;
use crate::nn::ParamStore;
use crate::param::{Parameterization, add_noise};
use crate::random::{SeededRng, normal_tensor};
use crate::schedule::DiscreteSchedule;
use crate::{Error, Result};

use checkpoint::io_err;
pub use checkpoint::{Manifest, read_safetensors, write_atomic, write_safetensors};
pub use optim::{AdamW, AdamWConfig, Ema, LrDecay, LrSchedule, clip_scale};

/// A model that can run in training mode: like [`Denoiser::forward`] but with stochastic layers
/// (dropout) active and drawing from `rng`.
pub trait TrainableDenoiser: Denoiser {
    /// The prediction in training mode.
    ///
    /// # Errors
    ///
    /// As [`Denoiser::forward`].
    fn forward_train(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<Tensor>;

    /// The mean squared error `mean((f(x_t, t) − target)²)` and its parameter gradients computed
    /// without candle's autograd, where the model has such a path for these inputs (`None`:
    /// use [`TrainableDenoiser::forward_train`] and autograd). It must equal the autograd
    /// result up to float rounding and draw nothing from the RNG.
    ///
    /// # Errors
    ///
    /// As [`Denoiser::forward`].
    fn fused_mse_and_grads(
        &self,
        _x_t: &Tensor,
        _t: &Tensor,
        _cond: Option<&Tensor>,
        _target: &Tensor,
    ) -> Result<Option<(Tensor, GradStore)>> {
        Ok(None)
    }
}

impl TrainableDenoiser for crate::nn::ResidualMlp {
    fn forward_train(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        _rng: &mut SeededRng,
    ) -> Result<Tensor> {
        self.forward(x_t, t, cond)
    }

    fn fused_mse_and_grads(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        target: &Tensor,
    ) -> Result<Option<(Tensor, GradStore)>> {
        if cond.is_some() {
            return Ok(None);
        }
        crate::nn::mlp_grad::mse_loss_and_grads(self, x_t, t, target)
    }
}

impl TrainableDenoiser for crate::nn::EnergyMlp {
    fn forward_train(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        _rng: &mut SeededRng,
    ) -> Result<Tensor> {
        self.forward(x_t, t, cond)
    }

    fn fused_mse_and_grads(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        target: &Tensor,
    ) -> Result<Option<(Tensor, GradStore)>> {
        if cond.is_some() {
            return Ok(None);
        }
        crate::nn::mlp_grad::energy_mse_loss_and_grads(self, x_t, t, target)
    }
}

impl TrainableDenoiser for crate::nn::EnergyUNet {
    /// ∇ₓE as a tracked graph (an energy U-Net has no dropout, so `rng` is unused).
    fn forward_train(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        _rng: &mut SeededRng,
    ) -> Result<Tensor> {
        Ok(self.energy_and_grad(x_t, t, cond)?.1)
    }
}

impl TrainableDenoiser for crate::nn::UNet {
    fn forward_train(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        self.forward_with(x_t, t, cond, Some(rng))
    }
}

/// What a training step minimizes.
pub trait Objective {
    /// The scalar loss on one batch of data with its conditioning (one condition per item,
    /// from [`Dataset::sample_conditioned`]; `None` for unconditional data), drawing any
    /// randomness from `rng`.
    ///
    /// # Errors
    ///
    /// Whatever the model or the tensor ops report; [`Error::Config`] for a conditioning the
    /// objective cannot use.
    fn loss(&self, batch: &Tensor, cond: Option<&Tensor>, rng: &mut SeededRng) -> Result<Tensor>;

    /// The loss and its gradients with respect to every variable it depends on. The default
    /// runs candle's backward pass on [`Objective::loss`]; an objective with a faster exact
    /// path may take it (same RNG draws, same value up to float rounding).
    ///
    /// # Errors
    ///
    /// As [`Objective::loss`], and from the backward pass.
    fn loss_and_grads(
        &self,
        batch: &Tensor,
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<(Tensor, GradStore)> {
        let loss = self.loss(batch, cond, rng)?;
        let grads = loss.backward()?;
        Ok((loss, grads))
    }
}

/// How the denoising loss draws each sample's timestep from `0..T`.
///
/// Every choice other than [`TimestepSampling::Uniform`] reweights the simplified loss over
/// noise levels: the expected loss becomes Σ_t p(t) E‖f_θ(x_t, t) − target‖². In a
/// configuration file, `[train] timesteps = { kind = "range", min = 600, max = 1000 }` or
/// `{ kind = "logit_normal", mean = 0.5, std = 1.0 }`; absent means uniform.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimestepSampling {
    /// Uniform over `0..T` (DDPM's choice).
    #[default]
    Uniform,
    /// Uniform over `min..max`: a model trained for one band of noise levels only, as the
    /// expert denoisers of eDiff-I (Balaji et al. 2022, §4) are.
    Range {
        /// First timestep drawn.
        min: usize,
        /// One past the last timestep drawn (at most T).
        max: usize,
    },
    /// Logit-normal over the fraction t/T: u ~ N(mean, std²), t = ⌊T·sigmoid(u)⌋ (Esser et al.
    /// 2024, eq. 19, on the discrete grid). A positive mean moves the weight towards the noisy
    /// end, where a sample's layout is decided.
    LogitNormal {
        /// Mean of u.
        mean: f64,
        /// Standard deviation of u (positive).
        std: f64,
    },
}

impl TimestepSampling {
    /// Whether this is the default, [`TimestepSampling::Uniform`] (so that configuration files
    /// written before the option existed stay as they were).
    pub fn is_uniform(&self) -> bool {
        matches!(self, Self::Uniform)
    }

    /// Checks the settings against a schedule of `steps` levels.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty or out-of-range band or a non-positive or non-finite
    /// spread.
    pub fn validate(&self, steps: usize) -> Result<()> {
        match *self {
            Self::Uniform => Ok(()),
            Self::Range { min, max } if min < max && max <= steps => Ok(()),
            Self::Range { min, max } => Err(Error::Config(format!(
                "train.timesteps: the range {min}..{max} must be non-empty and end at most at \
                 the schedule's {steps} steps"
            ))),
            Self::LogitNormal { mean, std } if mean.is_finite() && std.is_finite() && std > 0.0 => {
                Ok(())
            }
            Self::LogitNormal { mean, std } => Err(Error::Config(format!(
                "train.timesteps: logit_normal needs a finite mean and a positive std, got \
                 mean {mean}, std {std}"
            ))),
        }
    }

    /// One timestep in `0..steps` (the settings already validated against `steps`).
    pub fn draw(&self, steps: usize, rng: &mut SeededRng) -> usize {
        match *self {
            Self::Uniform => rng.random_range(0..steps),
            Self::Range { min, max } => rng.random_range(min..max),
            Self::LogitNormal { mean, std } => {
                let z: f64 = rand_distr::StandardNormal.sample(rng);
                let u = mean + std * z;
                let frac = 1.0 / (1.0 + (-u).exp());
                ((frac * steps as f64) as usize).min(steps - 1)
            }
        }
    }
}

/// A per-sample weight of the denoising loss that makes it the squared error of another
/// parameterization's target: the model still predicts its own, and the implied `target`
/// prediction is what is scored, w(t) = (c_target / c_model)² with c from
/// [`Parameterization::error_scale`] (Kingma & Gao 2023, §2.3, write every such objective as a
/// weighting of the ε loss). An ε or energy model trained as `v` weighs the noisy levels, where
/// a sample's layout is decided, as a v-prediction model does: w = 1/ᾱ_t. `max` caps the weight
/// (w = 1/ᾱ reaches 2.5·10⁴ at the last level of DDPM's linear schedule).
///
/// In a configuration file: `[train] loss_weight = { target = "v", max = 1000.0 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeight {
    /// The parameterization whose squared error the loss becomes.
    pub target: Parameterization,
    /// The largest weight (none: uncapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl LossWeight {
    /// Checks the cap.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a cap that is not positive and finite.
    pub fn validate(&self) -> Result<()> {
        match self.max {
            Some(m) if !(m.is_finite() && m > 0.0) => Err(Error::Config(format!(
                "train.loss_weight.max must be positive, got {m}"
            ))),
            _ => Ok(()),
        }
    }

    /// The weight of a sample of a `model`-parameterized denoiser at noise level (α, σ).
    pub fn weight(&self, model: Parameterization, alpha: f64, sigma: f64) -> f64 {
        let w = (self.target.error_scale(alpha, sigma) / model.error_scale(alpha, sigma)).powi(2);
        self.max.map_or(w, |m| w.min(m))
    }
}

/// The denoising loss of a [`TrainableDenoiser`] over a [`DiscreteSchedule`] (see the
/// [module documentation](self)).
pub struct DenoisingLoss<'a, M: ?Sized> {
    model: &'a M,
    sqrt_ab: Vec<f32>,
    sigma: Vec<f32>,
    cond: Option<&'a Tensor>,
    timesteps: TimestepSampling,
    weight: Option<LossWeight>,
}

impl<'a, M: TrainableDenoiser + ?Sized> DenoisingLoss<'a, M> {
    /// The loss of `model` with timesteps drawn from `schedule`.
    pub fn new(model: &'a M, schedule: &DiscreteSchedule) -> Self {
        let n = schedule.len();
        Self {
            model,
            sqrt_ab: (0..n).map(|i| schedule.sqrt_alpha_bar(i) as f32).collect(),
            sigma: (0..n).map(|i| schedule.sigma(i) as f32).collect(),
            cond: None,
            timesteps: TimestepSampling::Uniform,
            weight: None,
        }
    }

    /// The same loss with each sample's squared error weighted by `weight` (none: unweighted).
    /// A weighted loss is always computed through autograd, never by a model's fused path.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid cap ([`LossWeight::validate`]).
    pub fn with_weight(self, weight: Option<LossWeight>) -> Result<Self> {
        if let Some(w) = &weight {
            w.validate()?;
        }
        Ok(Self { weight, ..self })
    }

    /// The same loss with timesteps drawn by `timesteps` instead of uniformly.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the sampling does not fit the schedule
    /// ([`TimestepSampling::validate`]).
    pub fn with_timesteps(self, timesteps: TimestepSampling) -> Result<Self> {
        timesteps.validate(self.sqrt_ab.len())?;
        Ok(Self { timesteps, ..self })
    }

    /// The same loss with a fixed conditioning tensor passed to the model (for data without
    /// conditions of their own).
    pub fn with_cond(self, cond: &'a Tensor) -> Self {
        Self {
            cond: Some(cond),
            ..self
        }
    }

    /// The conditioning of a batch: the data's own, or the fixed one.
    fn cond_for<'c>(&'c self, batch_cond: Option<&'c Tensor>) -> Result<Option<&'c Tensor>> {
        match (batch_cond, self.cond) {
            (Some(_), Some(_)) => Err(Error::Config(
                "the data come with conditions and the loss has a fixed one; give only one".into(),
            )),
            (Some(c), None) => Ok(Some(c)),
            (None, fixed) => Ok(fixed),
        }
    }
}

impl<M: TrainableDenoiser + ?Sized> DenoisingLoss<'_, M> {
    /// Draws timesteps and noise for the batch `x0`: the noisy inputs x_t, the times (as
    /// float step indices), the regression target of the model's parameterization and, for a
    /// weighted loss, the per-sample weights.
    fn noisy_batch(&self, x0: &Tensor, rng: &mut SeededRng) -> Result<NoisyBatch> {
        let b = x0
            .dims()
            .first()
            .copied()
            .ok_or_else(|| Error::Shape("a training batch needs a batch dimension".into()))?;
        let steps = self.sqrt_ab.len();
        let idx: Vec<usize> = (0..b).map(|_| self.timesteps.draw(steps, rng)).collect();
        let dev = x0.device();
        let eps = normal_tensor(rng, x0.dims(), x0.dtype(), dev)?;
        let alpha = Tensor::from_vec(idx.iter().map(|&i| self.sqrt_ab[i]).collect(), b, dev)?
            .to_dtype(x0.dtype())?;
        let sigma = Tensor::from_vec(idx.iter().map(|&i| self.sigma[i]).collect(), b, dev)?
            .to_dtype(x0.dtype())?;
        let x_t = add_noise(x0, &eps, &alpha, &sigma)?;
        let t = Tensor::from_vec(idx.iter().map(|&i| i as f32).collect(), b, dev)?;
        let param: Parameterization = self.model.parameterization();
        let target = param.target(x0, &eps, &alpha, &sigma)?;
        let weight = match &self.weight {
            None => None,
            Some(w) => {
                let ws: Vec<f32> = idx
                    .iter()
                    .map(|&i| {
                        w.weight(param, f64::from(self.sqrt_ab[i]), f64::from(self.sigma[i])) as f32
                    })
                    .collect();
                Some(Tensor::from_vec(ws, b, dev)?.to_dtype(x0.dtype())?)
            }
        };
        Ok(NoisyBatch {
            x_t,
            t,
            target,
            weight,
        })
    }
}

/// One batch of the denoising loss: inputs, times, targets and optional per-sample weights.
struct NoisyBatch {
    x_t: Tensor,
    t: Tensor,
    target: Tensor,
    weight: Option<Tensor>,
}

impl<M: TrainableDenoiser + ?Sized> DenoisingLoss<'_, M> {
    /// The model's training-mode prediction on a noisy batch and its (weighted) mean squared
    /// error against the target, as a tracked candle op.
    fn autograd_mse(
        &self,
        batch: &NoisyBatch,
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        let NoisyBatch {
            x_t,
            t,
            target,
            weight,
        } = batch;
        let pred = self.model.forward_train(x_t, t, cond, rng)?;
        if pred.dims() != target.dims() {
            return Err(Error::Shape(format!(
                "the model returned {:?} for inputs of shape {:?}",
                pred.dims(),
                target.dims()
            )));
        }
        let sq = (pred - target)?.sqr()?;
        Ok(match weight {
            None => sq.mean_all()?,
            Some(w) => {
                let mut shape = vec![1; sq.rank()];
                shape[0] = w.dims1()?;
                sq.broadcast_mul(&w.reshape(shape)?)?.mean_all()?
            }
        })
    }
}

impl<M: TrainableDenoiser + ?Sized> Objective for DenoisingLoss<'_, M> {
    fn loss(&self, x0: &Tensor, cond: Option<&Tensor>, rng: &mut SeededRng) -> Result<Tensor> {
        let cond = self.cond_for(cond)?;
        let batch = self.noisy_batch(x0, rng)?;
        self.autograd_mse(&batch, cond, rng)
    }

    fn loss_and_grads(
        &self,
        x0: &Tensor,
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<(Tensor, GradStore)> {
        let cond = self.cond_for(cond)?;
        let batch = self.noisy_batch(x0, rng)?;
        if batch.weight.is_none()
            && let Some(done) =
                self.model
                    .fused_mse_and_grads(&batch.x_t, &batch.t, cond, &batch.target)?
        {
            return Ok(done);
        }
        let loss = self.autograd_mse(&batch, cond, rng)?;
        let grads = loss.backward()?;
        Ok((loss, grads))
    }
}

/// The format of the per-step loss log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `loss.jsonl`: one JSON object per line.
    #[default]
    Jsonl,
    /// `loss.csv`: a header line `step,loss,lr,grad_norm`, then one row per step.
    Csv,
}

impl LogFormat {
    fn file_name(self) -> &'static str {
        match self {
            Self::Jsonl => "loss.jsonl",
            Self::Csv => "loss.csv",
        }
    }
}

/// The settings of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total number of optimizer steps.
    pub steps: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up length in steps.
    pub warmup_steps: usize,
    /// Decay after warm-up.
    pub decay: LrDecay,
    /// Learning rate at the last step for decaying schedules.
    pub final_lr: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Decoupled weight decay (0 = Adam).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (none if absent).
    pub grad_clip: Option<f64>,
    /// EMA decay of the weights.
    pub ema_decay: f64,
    /// Warm the EMA up: at optimizer step n (from 1) the decay is min(δ, (1 + n)/(10 + n)),
    /// so that the average forgets the initialization within the first few hundred steps
    /// instead of ~1/(1 − δ) steps (the usual warm-up of diffusion training code). Off unless
    /// set; written to a configuration file only when on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ema_warmup: bool,
    /// Write a checkpoint every this many steps (and always at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    /// Log the loss every this many steps.
    pub log_every: usize,
    /// The loss log's format.
    pub log_format: LogFormat,
    /// Seed of the weights' initialization and of every draw during training.
    pub seed: u64,
    /// How denoising losses draw timesteps; written to a configuration file only when not
    /// uniform.
    #[serde(skip_serializing_if = "TimestepSampling::is_uniform")]
    pub timesteps: TimestepSampling,
    /// The denoising loss's per-sample weight ([`LossWeight`]); none: unweighted (and not
    /// written to a configuration file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_weight: Option<LossWeight>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 128,
            lr: 1e-3,
            warmup_steps: 0,
            decay: LrDecay::Constant,
            final_lr: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: None,
            ema_decay: 0.999,
            ema_warmup: false,
            checkpoint_every: 1000,
            log_every: 1,
            log_format: LogFormat::Jsonl,
            seed: 0,
            timesteps: TimestepSampling::Uniform,
            loss_weight: None,
        }
    }
}

impl TrainConfig {
    /// The EMA decay applied after optimizer step `step` (counted from 1; see
    /// [`TrainConfig::ema_warmup`]).
    pub fn ema_decay_at(&self, step: usize) -> f64 {
        if self.ema_warmup {
            let n = step as f64;
            self.ema_decay.min((1.0 + n) / (10.0 + n))
        } else {
            self.ema_decay
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first invalid field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("train: {m}")));
        if self.steps == 0 || self.batch_size == 0 || self.log_every == 0 {
            return bad("steps, batch_size and log_every must be positive".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be positive, got {}", self.lr));
        }
        if !(self.final_lr.is_finite() && self.final_lr >= 0.0) {
            return bad(format!(
                "final_lr must be non-negative, got {}",
                self.final_lr
            ));
        }
        if !(0.0..=1.0).contains(&self.ema_decay) {
            return bad(format!(
                "ema_decay must be in [0, 1], got {}",
                self.ema_decay
            ));
        }
        if let Some(c) = self.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("grad_clip must be positive, got {c}"));
        }
        Ok(())
    }

    fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.lr,
            warmup_steps: self.warmup_steps,
            decay: self.decay,
            final_lr: self.final_lr,
            total_steps: self.steps,
        }
    }

    fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Whether `other` describes the same run up to its length (what a resume may change).
    fn same_run(&self, other: &TrainConfig) -> std::result::Result<(), String> {
        let a = serde_json::to_value(Self {
            steps: 0,
            ..self.clone()
        })
        .map_err(|e| e.to_string())?;
        let b = serde_json::to_value(Self {
            steps: 0,
            ..other.clone()
        })
        .map_err(|e| e.to_string())?;
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (k, va) in a {
                if b.get(k) != Some(va) {
                    return Err(format!(
                        "`{k}` is {} in the checkpoint but {} now",
                        b.get(k).cloned().unwrap_or_default(),
                        va
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Where and how [`train`] runs.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// The output directory (created if needed).
    pub out_dir: PathBuf,
    /// Continue from the checkpoint in `out_dir` instead of starting afresh.
    pub resume: bool,
    /// Extra files written (atomically) into `out_dir` at the start, e.g. `config.toml`.
    pub extra_files: Vec<(String, String)>,
    /// End the run right after this global step **without** a final checkpoint, as an
    /// interruption would (for testing recovery); `None` runs to `steps`.
    pub halt_after: Option<usize>,
    /// The source revision of the program that trains (a git commit, say): recorded, with the
    /// step the run starts from, in `DIR/provenance.json`, so that a model says which code
    /// trained it. `None` records the revision as unknown.
    pub revision: Option<String>,
    /// The most memory the run may need: [`crate::run::train_run`] checks the configuration's
    /// estimate against it before it allocates anything and returns [`Error::Memory`] when it
    /// does not fit. `None`: the memory available on the machine
    /// ([`MemoryLimit::available`]).
    pub max_memory: Option<MemoryLimit>,
    /// Data-parallel training: this process's group (`None`: a single process). Every rank
    /// draws its batches from stream `rank` of the run's seed (rank 0's stream is the single
    /// process's), the ranks' gradients (and losses) are averaged by one all-reduce before each
    /// optimizer step, so that every replica takes the same step; only rank 0 writes into
    /// `out_dir` (logs, checkpoints, the model). With a group of one the run is exactly the
    /// single-process run. Ranks above 0 save their random state beside each checkpoint
    /// (`rank-R.rng.json`), so that a resumed run continues every rank's stream exactly.
    pub parallel: Option<std::sync::Arc<dyn recompose_core::collective::Collective>>,
}

impl TrainOptions {
    /// [`TrainOptions::max_memory`], or the memory available now when it is not set.
    pub fn memory_limit(&self) -> MemoryLimit {
        self.max_memory.unwrap_or_else(MemoryLimit::available)
    }
}

/// One run (a start or a resume) of a training, as `DIR/provenance.json` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenanceRun {
    /// The source revision of the program ([`TrainOptions::revision`]), or `unknown`.
    pub revision: String,
    /// The global step the run started from (0, or the checkpoint's step on resume).
    pub from_step: usize,
}

/// The runs recorded in `DIR/provenance.json`, oldest first; empty when the file is absent (a
/// model trained before the file existed) or unreadable.
pub fn read_provenance(dir: &Path) -> Vec<ProvenanceRun> {
    fs::read_to_string(dir.join(PROVENANCE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v.get("runs")?.clone()).ok())
        .unwrap_or_default()
}

/// The provenance file of a training directory.
const PROVENANCE: &str = "provenance.json";

/// Appends this run to `DIR/provenance.json` (a fresh start replaces the file).
fn record_provenance(out: &Path, opts: &TrainOptions, start: usize) -> Result<()> {
    let mut runs = if opts.resume {
        read_provenance(out)
    } else {
        Vec::new()
    };
    runs.push(ProvenanceRun {
        revision: opts
            .revision
            .clone()
            .unwrap_or_else(|| "unknown".to_string()),
        from_step: start,
    });
    let text = serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    write_atomic(&out.join(PROVENANCE), text.as_bytes())
}

/// Progress of a running [`train`] call, reported after every optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainProgress {
    /// Steps done (global, counting those before a resume).
    pub step: usize,
    /// The run's total number of steps.
    pub steps: usize,
    /// The step the run started from (0, or the checkpoint's step on resume).
    pub start_step: usize,
    /// Mean loss of the last (up to) 100 steps.
    pub recent_loss: f64,
    /// The learning rate of the step just taken.
    pub lr: f64,
}

/// What a finished [`train`] call reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// The step the run started from (0, or the checkpoint's step on resume).
    pub start_step: usize,
    /// The step reached.
    pub end_step: usize,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Mean loss over the last (up to) 100 steps of this run.
    pub recent_loss: f64,
    /// Wall-clock seconds of this run's steps.
    pub seconds: f64,
}

impl TrainReport {
    /// Optimizer steps per second in this run.
    pub fn steps_per_second(&self) -> f64 {
        (self.end_step - self.start_step) as f64 / self.seconds.max(1e-9)
    }
}

/// The sidecar of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    format: String,
    version: u32,
    step: usize,
    optimizer_steps: u64,
    train: TrainConfig,
    rng: RngState,
    state: Manifest,
    /// Length in bytes of the loss log as of `step` (synced before the checkpoint was written);
    /// absent in checkpoints written before it was recorded.
    #[serde(default)]
    log_bytes: Option<u64>,
}

/// The exact position of a ChaCha stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RngState {
    seed: String,
    stream: u64,
    word_pos: String,
}

impl RngState {
    fn of(rng: &SeededRng) -> Self {
        let seed: String = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        Self {
            seed,
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    fn restore(&self) -> Result<SeededRng> {
        let bad = || Error::Checkpoint("state.json: malformed `rng` state".to_string());
        // 64 ASCII hex digits; a multi-byte character would split the two-byte slices below.
        if self.seed.len() != 64 || !self.seed.is_ascii() {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let mut rng = SeededRng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse::<u128>().map_err(|_| bad())?);
        Ok(rng)
    }
}

const FORMAT: &str = "recompose-checkpoint";

/// The checkpoint directory of `out_dir` to resume from: `checkpoint/`, or `checkpoint.old/` if
/// a swap was interrupted.
fn existing_checkpoint(out_dir: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|d| out_dir.join(d))
        .find(|d| d.join("state.json").is_file())
}

/// The step of the checkpoint a resume of the run in `out_dir` would start from (`None` when
/// it holds none): equal to the configured steps once the training has finished.
///
/// # Errors
///
/// [`Error::Io`] if the sidecar cannot be read; [`Error::Checkpoint`] if it is not a recompose
/// checkpoint's.
pub fn checkpoint_step(out_dir: &Path) -> Result<Option<usize>> {
    let Some(dir) = existing_checkpoint(out_dir) else {
        return Ok(None);
    };
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
    if state.format != FORMAT {
        return Err(Error::Checkpoint(format!(
            "{}: not a recompose checkpoint",
            path.display()
        )));
    }
    Ok(Some(state.step))
}

/// Reads the EMA weights written by [`train`] (`DIR/model.safetensors`, verified against
/// `DIR/model.json` when present).
///
/// # Errors
///
/// [`Error::Io`] if a file cannot be read; [`Error::Checkpoint`] naming the tensor if the weights
/// are corrupt or truncated.
pub fn read_model_weights(
    dir: &Path,
    device: &candle_core::Device,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let manifest_path = dir.join("model.json");
    let manifest: Option<Manifest> = if manifest_path.is_file() {
        let text = fs::read_to_string(&manifest_path).map_err(io_err(&manifest_path))?;
        Some(
            serde_json::from_str(&text)
                .map_err(|e| Error::Checkpoint(format!("{}: {e}", manifest_path.display())))?,
        )
    } else {
        None
    };
    read_safetensors(&dir.join("model.safetensors"), manifest.as_ref(), device)
}

struct Checkpointer<'a> {
    out_dir: &'a Path,
}

impl Checkpointer<'_> {
    /// Writes the checkpoint of `step` by the protocol of the [module documentation](self): the
    /// loss log synced, `checkpoint.tmp/` written and synced, swapped in by renames, then the
    /// model files rewritten. A failed write removes `checkpoint.tmp/` and leaves the previous
    /// checkpoint as it was.
    #[allow(clippy::too_many_arguments)]
    fn save(
        &self,
        step: usize,
        cfg: &TrainConfig,
        store: &ParamStore,
        opt: &AdamW,
        ema: &Ema,
        rng: &SeededRng,
        log: &mut LossLog,
    ) -> Result<()> {
        let log_bytes = log.sync()?;
        let tmp = self.out_dir.join("checkpoint.tmp");
        let staged = self.stage(&tmp, step, cfg, store, opt, ema, rng, log_bytes);
        if staged.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        staged?;
        self.commit(&tmp)?;
        self.export_model(ema)
    }

    /// Writes the complete checkpoint into the fresh directory `tmp` and syncs it.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        tmp: &Path,
        step: usize,
        cfg: &TrainConfig,
        store: &ParamStore,
        opt: &AdamW,
        ema: &Ema,
        rng: &SeededRng,
        log_bytes: u64,
    ) -> Result<()> {
        if tmp.exists() {
            fs::remove_dir_all(tmp).map_err(io_err(tmp))?;
        }
        fs::create_dir(tmp).map_err(io_err(tmp))?;
        checkpoint::probe(format_args!("checkpoint.tmp:created"));
        let mut tensors: Vec<(String, Tensor)> = store
            .vars()
            .into_iter()
            .map(|(n, v)| (format!("param.{n}"), v.as_tensor().detach()))
            .collect();
        tensors.extend(
            ema.values()
                .iter()
                .map(|(n, t)| (format!("ema.{n}"), t.clone())),
        );
        tensors.extend(opt.state());
        let (bytes, state) = checkpoint::serialize_safetensors(&tensors)?;
        checkpoint::write_synced(&tmp.join("state.safetensors"), &bytes)?;
        let sidecar = CheckpointState {
            format: FORMAT.to_string(),
            version: 1,
            step,
            optimizer_steps: opt.steps_taken(),
            train: cfg.clone(),
            rng: RngState::of(rng),
            state,
            log_bytes: Some(log_bytes),
        };
        let json =
            serde_json::to_vec_pretty(&sidecar).map_err(|e| Error::Checkpoint(e.to_string()))?;
        checkpoint::write_synced(&tmp.join("state.json"), &json)?;
        checkpoint::sync_dir(tmp)
    }

    /// Swaps the staged directory `tmp` in: `checkpoint/` → `checkpoint.old/`, `tmp` →
    /// `checkpoint/`, each rename synced, then `checkpoint.old/` removed. At every instant
    /// `checkpoint/` or, while it is absent, `checkpoint.old/` is a complete checkpoint.
    fn commit(&self, tmp: &Path) -> Result<()> {
        let live = self.out_dir.join("checkpoint");
        let old = self.out_dir.join("checkpoint.old");
        let remove_old = || -> Result<()> {
            if old.exists() {
                fs::remove_dir_all(&old).map_err(io_err(&old))?;
                checkpoint::probe(format_args!("checkpoint.old:removed"));
            }
            Ok(())
        };
        if live.exists() {
            // `checkpoint/` is complete, so an older `checkpoint.old/` is not needed.
            remove_old()?;
            fs::rename(&live, &old).map_err(io_err(&live))?;
            checkpoint::sync_dir(self.out_dir)?;
            checkpoint::probe(format_args!("checkpoint:retired"));
        }
        // Without `checkpoint/`, a `checkpoint.old/` left by a crash is the one to fall back on
        // until the rename below; it is kept until then.
        fs::rename(tmp, &live).map_err(io_err(tmp))?;
        checkpoint::sync_dir(self.out_dir)?;
        checkpoint::probe(format_args!("checkpoint:committed"));
        remove_old()
    }

    /// Writes the EMA weights under the model's own names (what inference loads) and their
    /// manifest, each atomically.
    fn export_model(&self, ema: &Ema) -> Result<()> {
        let manifest = write_safetensors(&self.out_dir.join("model.safetensors"), ema.values())?;
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Checkpoint(e.to_string()))?;
        write_atomic(&self.out_dir.join("model.json"), &json)
    }

    /// Restores the state of the checkpoint in `dir`; returns its step, its random stream and
    /// the length of the loss log it recorded.
    fn load(
        &self,
        dir: &Path,
        cfg: &TrainConfig,
        store: &ParamStore,
        opt: &mut AdamW,
        ema: &mut Ema,
    ) -> Result<(usize, SeededRng, Option<u64>)> {
        let json_path = dir.join("state.json");
        let text = fs::read_to_string(&json_path).map_err(io_err(&json_path))?;
        let state: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", json_path.display())))?;
        if state.format != FORMAT || state.version != 1 {
            return Err(Error::Checkpoint(format!(
                "{}: not a version-1 recompose checkpoint",
                json_path.display()
            )));
        }
        cfg.same_run(&state.train).map_err(|m| {
            Error::Checkpoint(format!(
                "the training settings differ from the checkpoint's: {m}"
            ))
        })?;
        if state.step > cfg.steps {
            return Err(Error::Checkpoint(format!(
                "the checkpoint is at step {}, beyond the requested {} steps",
                state.step, cfg.steps
            )));
        }
        let st_path = dir.join("state.safetensors");
        let device = opt
            .vars()
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let mut tensors = read_safetensors(&st_path, Some(&state.state), &device)?;
        let params: std::collections::HashMap<String, Tensor> = store
            .vars()
            .iter()
            .map(|(n, _)| {
                tensors
                    .remove(&format!("param.{n}"))
                    .map(|t| (n.clone(), t))
                    .ok_or_else(|| {
                        Error::Checkpoint(format!(
                            "{}: tensor `param.{n}` is missing (a checkpoint of another model?)",
                            st_path.display()
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        if let Some(extra) = tensors.keys().find(|k| k.starts_with("param.")) {
            return Err(Error::Checkpoint(format!(
                "{}: tensor `{extra}` does not belong to this model",
                st_path.display()
            )));
        }
        store.assign(&params, &st_path.display().to_string())?;
        let get = |k: &str| tensors.get(k).cloned();
        opt.load_state(&get, state.optimizer_steps)?;
        ema.load(&get, "ema.")?;
        Ok((state.step, state.rng.restore()?, state.log_bytes))
    }
}

/// The loss log: rows appended as training goes, synced at checkpoints, cut back on resume to
/// its length at the checkpoint.
struct LossLog {
    path: PathBuf,
    format: LogFormat,
    file: fs::File,
    /// Bytes in the file.
    len: u64,
}

impl LossLog {
    /// Starts a fresh log, or on resume (`resume` = the checkpoint's step and recorded log
    /// length) cuts the existing one back to the checkpoint: to the recorded length, or, for a
    /// checkpoint that recorded none, after the last complete row of a step it covers.
    fn open(
        out_dir: &Path,
        format: LogFormat,
        resume: Option<(usize, Option<u64>)>,
    ) -> Result<Self> {
        let path = out_dir.join(format.file_name());
        let Some((step, recorded)) = resume else {
            let mut file = fs::File::create(&path).map_err(io_err(&path))?;
            let mut len = 0;
            if format == LogFormat::Csv {
                let header = b"step,loss,lr,grad_norm\n";
                file.write_all(header).map_err(io_err(&path))?;
                len = header.len() as u64;
            }
            return Ok(Self {
                path,
                format,
                file,
                len,
            });
        };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let keep = match recorded {
            Some(n) if n > bytes.len() as u64 => {
                return Err(Error::Checkpoint(format!(
                    "{}: {} bytes, but the checkpoint of step {step} recorded {n}: rows it \
                     covers were lost, so the log cannot be continued consistently",
                    path.display(),
                    bytes.len()
                )));
            }
            Some(n) => n,
            None => rows_through(&bytes, step, format) as u64,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    fs::File::create(&path)
                } else {
                    Err(e)
                }
            })
            .map_err(io_err(&path))?;
        file.set_len(keep)
            .and_then(|()| file.sync_data())
            .and_then(|()| file.seek(SeekFrom::End(0)).map(|_| ()))
            .map_err(io_err(&path))?;
        checkpoint::probe(format_args!("loss log:truncated"));
        let mut log = Self {
            path,
            format,
            file,
            len: keep,
        };
        if keep == 0 && format == LogFormat::Csv {
            log.append(b"step,loss,lr,grad_norm\n")?;
        }
        Ok(log)
    }

    /// Appends one row (written in two halves, a probe point between them).
    fn write(&mut self, step: usize, loss: f32, lr: f64, grad_norm: f64) -> Result<()> {
        let mut line = match self.format {
            LogFormat::Jsonl => serde_json::json!({
                "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm
            })
            .to_string(),
            LogFormat::Csv => format!("{step},{loss:?},{lr:?},{grad_norm:?}"),
        };
        line.push('\n');
        self.append(line.as_bytes())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        self.file.write_all(head).map_err(io_err(&self.path))?;
        checkpoint::probe(format_args!("loss log:half"));
        self.file.write_all(tail).map_err(io_err(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes every row written so far durable; returns the log's length.
    fn sync(&mut self) -> Result<u64> {
        self.file.sync_data().map_err(io_err(&self.path))?;
        Ok(self.len)
    }
}

/// The length of the prefix of a log that ends with the last complete row of a step ≤ `step`
/// (rows come in step order; a CSV header counts as a row).
fn rows_through(bytes: &[u8], step: usize, format: LogFormat) -> usize {
    let mut keep = 0;
    let mut start = 0;
    while let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') {
        let end = start + nl + 1;
        let line = String::from_utf8_lossy(&bytes[start..end - 1]);
        match row_step(&line, format) {
            Some(s) if s <= step => keep = end,
            Some(_) => break,
            None if format == LogFormat::Csv && start == 0 => keep = end,
            None => break,
        }
        start = end;
    }
    keep
}

fn row_step(line: &str, format: LogFormat) -> Option<usize> {
    match format {
        LogFormat::Jsonl => serde_json::from_str::<serde_json::Value>(line)
            .ok()?
            .get("step")?
            .as_u64()
            .map(|s| s as usize),
        LogFormat::Csv => line.split(',').next()?.parse().ok(),
    }
}

/// Trains the variables of `store` (the model must already have been built on it) to minimize
/// `objective` on batches from `data`, writing logs and checkpoints into `opts.out_dir` (see the
/// [module documentation](self)).
///
/// Step `s` (1-based in the logs) uses the learning rate of step `s − 1` of the schedule; the
/// random stream is seeded with `cfg.seed` (and is the checkpoint's on resume).
///
/// # Errors
///
/// [`Error::Config`] for invalid settings or a store without variables; [`Error::Checkpoint`]
/// when resuming from a missing, corrupt or mismatched checkpoint, or when starting afresh in a
/// directory that already holds one; [`Error::Training`] if the loss becomes non-finite;
/// [`Error::Io`] when a file cannot be written (the last checkpoint stays as it was) or when
/// another run holds the directory's lock.
pub fn train(
    store: &ParamStore,
    objective: &dyn Objective,
    data: &dyn Dataset,
    cfg: &TrainConfig,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<TrainReport> {
    cfg.validate()?;
    let vars = store.vars();
    if vars.is_empty() {
        return Err(Error::Config(
            "train: the model has no trainable variables (build it on the store first)".into(),
        ));
    }
    let out = &opts.out_dir;
    let group = opts.parallel.as_deref();
    let rank = group.map_or(0, |g| g.rank());
    // Rank 0 alone writes into `out`.
    let writer = rank == 0;
    fs::create_dir_all(out).map_err(io_err(out))?;
    // Held until this function returns; a second run on `out` is refused meanwhile.
    let _lock = if writer {
        Some(checkpoint::lock_run_dir(out)?)
    } else {
        None
    };
    let ckpt = Checkpointer { out_dir: out };
    let mut opt = AdamW::new(vars.clone(), cfg.adamw())?;
    let mut ema = Ema::new(&vars, cfg.ema_decay)?;
    let existing = existing_checkpoint(out);
    let (start, mut rng, log_bytes) = if opts.resume {
        let dir = existing.ok_or_else(|| {
            Error::Checkpoint(format!(
                "--resume: {} holds no checkpoint (no checkpoint/state.json)",
                out.display()
            ))
        })?;
        let loaded = ckpt.load(&dir, cfg, store, &mut opt, &mut ema)?;
        // The model files are rewritten from the checkpoint: a crash may have left them a
        // checkpoint ahead or torn between the weights and their manifest.
        if writer {
            ckpt.export_model(&ema)?;
        }
        loaded
    } else {
        if existing.is_some() {
            return Err(Error::Checkpoint(format!(
                "{} already holds a checkpoint; resume it or choose another directory",
                out.display()
            )));
        }
        (0, SeededRng::seed_from_u64(cfg.seed), None)
    };
    if rank > 0 {
        // Each rank its own stream of the run's seed (rank 0 keeps the single process's). On
        // resume, the rank's own state at the checkpoint's step when it saved one; else rank
        // 0's state moved to the rank's stream.
        match read_rank_rng(out, rank, start) {
            Some(own) => rng = own,
            None => rng.set_stream(rank as u64),
        }
    }
    let mut log = if writer {
        for (name, contents) in &opts.extra_files {
            write_atomic(&out.join(name), contents.as_bytes())?;
        }
        record_provenance(out, opts, start)?;
        let resume_log = opts.resume.then_some((start, log_bytes));
        Some(LossLog::open(out, cfg.log_format, resume_log)?)
    } else {
        None
    };
    let schedule = cfg.schedule();
    let device = vars[0].1.device().clone();
    let began = Instant::now();
    let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let mut last_loss = f64::NAN;
    let end = opts.halt_after.map_or(cfg.steps, |h| h.min(cfg.steps));
    let mut step = start;
    while step < end {
        let lr = schedule.lr(step);
        let (batch, cond) = data.sample_conditioned(&mut rng, cfg.batch_size, &device)?;
        let (loss, grads) = objective.loss_and_grads(&batch, cond.as_ref(), &mut rng)?;
        let (loss, grads) = match group {
            Some(g) => average_over_ranks(g, loss, grads, &vars)?,
            None => (loss, grads),
        };
        let loss_value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(Error::Training(format!(
                "the loss is {loss_value} at step {}; lower the learning rate or clip gradients",
                step + 1
            )));
        }
        let norm = opt.grad_norm(&grads)?;
        opt.step(&grads, lr, clip_scale(norm, cfg.grad_clip))?;
        ema.update_with(&vars, cfg.ema_decay_at(step + 1))?;
        step += 1;
        last_loss = f64::from(loss_value);
        recent.push_back(last_loss);
        if recent.len() > 100 {
            recent.pop_front();
        }
        if let Some(log) = log
            .as_mut()
            .filter(|_| step % cfg.log_every == 0 || step == cfg.steps)
        {
            log.write(step, loss_value, lr, norm)?;
        }
        progress(TrainProgress {
            step,
            steps: cfg.steps,
            start_step: start,
            recent_loss: recent.iter().sum::<f64>() / recent.len() as f64,
            lr,
        });
        checkpoint::probe(format_args!("step"));
        let periodic = cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0;
        if let Some(log) = log.as_mut().filter(|_| periodic || step == cfg.steps) {
            ckpt.save(step, cfg, store, &opt, &ema, &rng, log)?;
        } else if rank > 0 && (periodic || step == cfg.steps) {
            write_rank_rng(out, rank, step, &rng)?;
        }
    }
    if let Some(log) = log.as_mut() {
        log.sync()?;
    }
    Ok(TrainReport {
        start_step: start,
        end_step: step,
        last_loss,
        recent_loss: if recent.is_empty() {
            f64::NAN
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        },
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// Where data-parallel rank `rank` (> 0) keeps its random state at the last checkpoint (rank 0's
/// is in the checkpoint itself).
fn rank_rng_path(out: &Path, rank: usize) -> PathBuf {
    out.join(format!("rank-{rank}.rng.json"))
}

/// Saves rank `rank`'s random state at `step` (atomically), next to rank 0's checkpoint.
fn write_rank_rng(out: &Path, rank: usize, step: usize, rng: &SeededRng) -> Result<()> {
    let text = serde_json::json!({ "step": step, "rng": RngState::of(rng) }).to_string();
    write_atomic(&rank_rng_path(out, rank), text.as_bytes())
}

/// Rank `rank`'s random state saved at `step`, if that is what its file holds.
fn read_rank_rng(out: &Path, rank: usize, step: usize) -> Option<SeededRng> {
    let text = fs::read_to_string(rank_rng_path(out, rank)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v["step"].as_u64()? != step as u64 {
        return None;
    }
    serde_json::from_value::<RngState>(v["rng"].clone())
        .ok()?
        .restore()
        .ok()
}

/// The loss and every variable's gradient averaged over the ranks of `group`, in one
/// all-reduce of their concatenation (a variable without a gradient on this rank contributes
/// zeros). With one rank the values come back unchanged.
fn average_over_ranks(
    group: &dyn recompose_core::collective::Collective,
    loss: Tensor,
    mut grads: GradStore,
    vars: &[(String, Var)],
) -> Result<(Tensor, GradStore)> {
    let mut parts = vec![loss.to_dtype(DType::F32)?.reshape(1)?];
    for (_, v) in vars {
        let g = match grads.get(v.as_tensor()) {
            Some(g) => g.to_dtype(DType::F32)?,
            None => v.as_tensor().zeros_like()?.to_dtype(DType::F32)?,
        };
        parts.push(g.flatten_all()?);
    }
    let flat = Tensor::cat(&parts, 0)?;
    let mut sum = group
        .all_reduce_sum(&flat)
        .map_err(|e| Error::Training(format!("data-parallel all-reduce: {e}")))?;
    let world = group.world_size();
    if world > 1 {
        sum = (sum / world as f64)?;
    }
    let loss = sum.narrow(0, 0, 1)?.reshape(())?.to_dtype(loss.dtype())?;
    let mut offset = 1;
    for (_, v) in vars {
        let t = v.as_tensor();
        let n = t.elem_count();
        let g = sum
            .narrow(0, offset, n)?
            .reshape(t.dims())?
            .to_dtype(t.dtype())?;
        grads.insert(t, g);
        offset += n;
    }
    Ok((loss, grads))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint's random state restores the exact stream, and a malformed seed is a
    /// checkpoint error (the seed `"aé"` followed by 61 digits, 64 bytes, made the hex parser
    /// slice inside the `é` and panic).
    #[test]
    fn rng_states_restore_or_fail_cleanly() -> Result<()> {
        let mut rng = crate::random::seeded(11);
        let _: u64 = rand::Rng::random(&mut rng);
        let state = RngState::of(&rng);
        let mut back = state.restore()?;
        assert_eq!(
            rand::Rng::random::<u64>(&mut back),
            rand::Rng::random::<u64>(&mut rng)
        );
        for seed in [
            format!("a\u{e9}{}", "0".repeat(61)),
            "0".repeat(63),
            "zz".repeat(32),
        ] {
            let bad = RngState {
                seed,
                ..state.clone()
            };
            assert!(matches!(bad.restore(), Err(Error::Checkpoint(_))));
        }
        Ok(())
    }

    /// The timestep draws follow their laws: a band is uniform on `min..max` (mean and range
    /// checked), and the logit-normal lands below T/2 with probability Φ(−mean/std), since
    /// sigmoid(u) < ½ exactly when u < 0 (Φ(−0.5) = 0.3085 for mean 0.5, std 1).
    #[test]
    fn timestep_sampling_follows_its_law() -> Result<()> {
        let n = 40_000;
        let mut rng = crate::random::seeded(3);
        let band = TimestepSampling::Range {
            min: 850,
            max: 1000,
        };
        band.validate(1000)?;
        let draws: Vec<usize> = (0..n).map(|_| band.draw(1000, &mut rng)).collect();
        assert_eq!(draws.iter().min(), Some(&850));
        assert_eq!(draws.iter().max(), Some(&999));
        let mean = draws.iter().sum::<usize>() as f64 / n as f64;
        // Var of a uniform on 150 values is (150² − 1)/12; 5 standard errors.
        let se = ((150.0f64 * 150.0 - 1.0) / 12.0 / n as f64).sqrt();
        assert!((mean - 924.5).abs() < 5.0 * se, "{mean}");

        let ln = TimestepSampling::LogitNormal {
            mean: 0.5,
            std: 1.0,
        };
        ln.validate(1000)?;
        let draws: Vec<usize> = (0..n).map(|_| ln.draw(1000, &mut rng)).collect();
        assert!(draws.iter().all(|&t| t < 1000));
        let below = draws.iter().filter(|&&t| t < 500).count() as f64 / n as f64;
        let se = (0.3085f64 * 0.6915 / n as f64).sqrt();
        assert!((below - 0.3085).abs() < 5.0 * se, "{below}");

        // Uniform is the stream's plain draw, so existing runs keep their bytes.
        let mut a = crate::random::seeded(9);
        let mut b = crate::random::seeded(9);
        for _ in 0..100 {
            assert_eq!(
                TimestepSampling::Uniform.draw(1000, &mut a),
                rand::Rng::random_range(&mut b, 0..1000)
            );
        }
        Ok(())
    }

    /// Impossible settings are configuration errors, and the key is written only when set.
    #[test]
    fn timestep_sampling_is_checked_and_written_only_when_set() {
        for bad in [
            TimestepSampling::Range { min: 5, max: 5 },
            TimestepSampling::Range { min: 0, max: 1001 },
            TimestepSampling::LogitNormal {
                mean: 0.0,
                std: 0.0,
            },
            TimestepSampling::LogitNormal {
                mean: f64::NAN,
                std: 1.0,
            },
        ] {
            assert!(
                matches!(bad.validate(1000), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
        let written = |c: &TrainConfig| toml::to_string(c).expect("toml");
        assert!(!written(&TrainConfig::default()).contains("timesteps"));
        let cfg = TrainConfig {
            timesteps: TimestepSampling::LogitNormal {
                mean: 0.5,
                std: 1.2,
            },
            ..TrainConfig::default()
        };
        let back: TrainConfig = toml::from_str(&written(&cfg)).expect("toml");
        assert_eq!(back, cfg);
        let parsed: TrainConfig =
            toml::from_str("timesteps = { kind = \"range\", min = 600, max = 1000 }")
                .expect("toml");
        assert_eq!(
            parsed.timesteps,
            TimestepSampling::Range {
                min: 600,
                max: 1000
            }
        );
        assert!(toml::from_str::<TrainConfig>("timesteps = { kind = \"cosine\" }").is_err());
    }

    /// Weighted as `v`, the loss of an ε model is exactly the mean squared error of the v it
    /// implies, v̂ = (ε̂ − σ x_t)/α against v = α ε − σ x₀ (an identity of the VP schedule,
    /// checked on the draws the loss itself made); capped, each weight is min(1/ᾱ, max).
    #[test]
    fn loss_weight_scores_the_implied_target() -> Result<()> {
        use crate::nn::{MlpConfig, ResidualMlp};
        let dev = candle_core::Device::Cpu;
        let cfg = MlpConfig {
            data_dim: 2,
            hidden: 16,
            block_hidden: 32,
            num_blocks: 1,
            time_embed_dim: 8,
            num_timesteps: 100,
        };
        let store = ParamStore::new(4);
        let net = ResidualMlp::new(
            &cfg,
            Parameterization::Epsilon,
            store.var_builder(DType::F64, &dev),
        )?;
        let schedule = DiscreteSchedule::linear(100, 1e-4, 0.02)?;
        let x0 = normal_tensor(&mut crate::random::seeded(1), &[256, 2], DType::F64, &dev)?;
        let plain = DenoisingLoss::new(&net, &schedule);
        let batch = plain.noisy_batch(&x0, &mut crate::random::seeded(2))?;
        let idx: Vec<usize> = batch
            .t
            .to_vec1::<f32>()?
            .iter()
            .map(|&t| t as usize)
            .collect();
        let col = |f: &dyn Fn(usize) -> f64| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                idx.iter().map(|&i| f(i)).collect::<Vec<f64>>(),
                (256, 1),
                &dev,
            )?)
        };
        let alpha = col(&|i| schedule.sqrt_alpha_bar(i))?;
        let sigma = col(&|i| schedule.sigma(i))?;
        let eps_hat = net.forward(&batch.x_t, &batch.t, None)?;
        let v_hat = (&eps_hat - batch.x_t.broadcast_mul(&sigma)?)?.broadcast_div(&alpha)?;
        let v = (batch.target.broadcast_mul(&alpha)? - x0.broadcast_mul(&sigma)?)?;
        let want = (v_hat - v)?.sqr()?.mean_all()?.to_scalar::<f64>()?;
        let as_v = |max| {
            DenoisingLoss::new(&net, &schedule).with_weight(Some(LossWeight {
                target: Parameterization::V,
                max,
            }))
        };
        let got = as_v(None)?
            .loss(&x0, None, &mut crate::random::seeded(2))?
            .to_scalar::<f64>()?;
        assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");

        let cap = col(&|i| (1.0 / schedule.alpha_bar(i)).min(2.0))?;
        let want = (&eps_hat - &batch.target)?
            .sqr()?
            .broadcast_mul(&cap)?
            .mean_all()?
            .to_scalar::<f64>()?;
        let got = as_v(Some(2.0))?
            .loss(&x0, None, &mut crate::random::seeded(2))?
            .to_scalar::<f64>()?;
        assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
        assert!(as_v(Some(0.0)).is_err());
        assert!(as_v(Some(f64::INFINITY)).is_err());
        Ok(())
    }
}
