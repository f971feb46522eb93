//! Training: the denoising objective, a loop with AdamW, warm-up and decay, clipping and EMA,
//! per-step loss logs, and atomic checkpoints that resume bit for bit.
//!
//! The objective is DDPM's simplified loss (Ho et al. 2020, eq. 14) in any parameterization: for
//! clean data x₀, a timestep t uniform in `0..T`, ε ~ N(0, I) and `x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`,
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
//! DIR/checkpoint/state.json    step, training config, RNG state, optimizer step count, manifest
//! DIR/loss.jsonl | loss.csv    one row per logged step: step, loss, lr, grad_norm
//! ```
//!
//! A checkpoint is written into `checkpoint.tmp/`, synced, and swapped in by renames
//! (`checkpoint` → `checkpoint.old`, `checkpoint.tmp` → `checkpoint`); an interrupted swap leaves
//! `checkpoint.old`, which [`train`] falls back to. Every random draw of a step (batch, timesteps,
//! noise, dropout) comes from one ChaCha stream whose position is saved, so a resumed run
//! replays exactly the draws the uninterrupted run would have made.

pub mod checkpoint;
pub mod optim;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
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
    /// The scalar loss on one batch of data, drawing any randomness from `rng`.
    ///
    /// # Errors
    ///
    /// Whatever the model or the tensor ops report.
    fn loss(&self, batch: &Tensor, rng: &mut SeededRng) -> Result<Tensor>;
}

/// The denoising loss of a [`TrainableDenoiser`] over a [`DiscreteSchedule`] (see the
/// [module documentation](self)).
pub struct DenoisingLoss<'a, M: ?Sized> {
    model: &'a M,
    sqrt_ab: Vec<f32>,
    sigma: Vec<f32>,
    cond: Option<&'a Tensor>,
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
        }
    }

    /// The same loss with a fixed conditioning tensor passed to the model.
    pub fn with_cond(self, cond: &'a Tensor) -> Self {
        Self {
            cond: Some(cond),
            ..self
        }
    }
}

impl<M: TrainableDenoiser + ?Sized> Objective for DenoisingLoss<'_, M> {
    fn loss(&self, x0: &Tensor, rng: &mut SeededRng) -> Result<Tensor> {
        let b = x0
            .dims()
            .first()
            .copied()
            .ok_or_else(|| Error::Shape("a training batch needs a batch dimension".into()))?;
        let steps = self.sqrt_ab.len();
        let idx: Vec<usize> = (0..b).map(|_| rng.random_range(0..steps)).collect();
        let dev = x0.device();
        let eps = normal_tensor(rng, x0.dims(), x0.dtype(), dev)?;
        let alpha = Tensor::from_vec(idx.iter().map(|&i| self.sqrt_ab[i]).collect(), b, dev)?
            .to_dtype(x0.dtype())?;
        let sigma = Tensor::from_vec(idx.iter().map(|&i| self.sigma[i]).collect(), b, dev)?
            .to_dtype(x0.dtype())?;
        let x_t = add_noise(x0, &eps, &alpha, &sigma)?;
        let t = Tensor::from_vec(idx.iter().map(|&i| i as f32).collect(), b, dev)?;
        let pred = self.model.forward_train(&x_t, &t, self.cond, rng)?;
        let param: Parameterization = self.model.parameterization();
        let target = param.target(x0, &eps, &alpha, &sigma)?;
        if pred.dims() != target.dims() {
            return Err(Error::Shape(format!(
                "the model returned {:?} for inputs of shape {:?}",
                pred.dims(),
                target.dims()
            )));
        }
        Ok((pred - target)?.sqr()?.mean_all()?)
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
    /// Write a checkpoint every this many steps (and always at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    /// Log the loss every this many steps.
    pub log_every: usize,
    /// The loss log's format.
    pub log_format: LogFormat,
    /// Seed of the weights' initialization and of every draw during training.
    pub seed: u64,
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
            checkpoint_every: 1000,
            log_every: 1,
            log_format: LogFormat::Jsonl,
            seed: 0,
        }
    }
}

impl TrainConfig {
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
    fn save(
        &self,
        step: usize,
        cfg: &TrainConfig,
        store: &ParamStore,
        opt: &AdamW,
        ema: &Ema,
        rng: &SeededRng,
    ) -> Result<()> {
        // The EMA weights under the model's own names: what inference loads.
        let model: Vec<(String, Tensor)> = ema.values().to_vec();
        let manifest = write_safetensors(&self.out_dir.join("model.safetensors"), &model)?;
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Checkpoint(e.to_string()))?;
        write_atomic(&self.out_dir.join("model.json"), &json)?;

        let tmp = self.out_dir.join("checkpoint.tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
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
        let state = write_safetensors(&tmp.join("state.safetensors"), &tensors)?;
        let sidecar = CheckpointState {
            format: FORMAT.to_string(),
            version: 1,
            step,
            optimizer_steps: opt.steps_taken(),
            train: cfg.clone(),
            rng: RngState::of(rng),
            state,
        };
        let json =
            serde_json::to_vec_pretty(&sidecar).map_err(|e| Error::Checkpoint(e.to_string()))?;
        write_atomic(&tmp.join("state.json"), &json)?;

        let live = self.out_dir.join("checkpoint");
        let old = self.out_dir.join("checkpoint.old");
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        if live.exists() {
            fs::rename(&live, &old).map_err(io_err(&live))?;
        }
        fs::rename(&tmp, &live).map_err(io_err(&tmp))?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(())
    }

    fn load(
        &self,
        dir: &Path,
        cfg: &TrainConfig,
        store: &ParamStore,
        opt: &mut AdamW,
        ema: &mut Ema,
    ) -> Result<(usize, SeededRng)> {
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
        Ok((state.step, state.rng.restore()?))
    }
}

/// The loss log: rows appended as training goes, flushed at checkpoints, truncated to the
/// checkpoint's step on resume.
struct LossLog {
    path: PathBuf,
    format: LogFormat,
    file: fs::File,
}

impl LossLog {
    fn open(out_dir: &Path, format: LogFormat, resume_step: Option<usize>) -> Result<Self> {
        let path = out_dir.join(format.file_name());
        let mut kept = Vec::new();
        if let Some(step) = resume_step
            && path.is_file()
        {
            let f = fs::File::open(&path).map_err(io_err(&path))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io_err(&path))?;
                match row_step(&line, format) {
                    Some(s) if s <= step => kept.push(line),
                    Some(_) => {}
                    None if format == LogFormat::Csv && kept.is_empty() => kept.push(line),
                    None => {}
                }
            }
        }
        let mut file = fs::File::create(&path).map_err(io_err(&path))?;
        if kept.is_empty() && format == LogFormat::Csv {
            kept.push("step,loss,lr,grad_norm".to_string());
        }
        for line in kept {
            writeln!(file, "{line}").map_err(io_err(&path))?;
        }
        Ok(Self { path, format, file })
    }

    fn write(&mut self, step: usize, loss: f32, lr: f64, grad_norm: f64) -> Result<()> {
        let line = match self.format {
            LogFormat::Jsonl => serde_json::json!({
                "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm
            })
            .to_string(),
            LogFormat::Csv => format!("{step},{loss:?},{lr:?},{grad_norm:?}"),
        };
        writeln!(self.file, "{line}").map_err(io_err(&self.path))
    }

    fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(io_err(&self.path))
    }
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
/// [`Error::Io`] when a file cannot be written.
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
    fs::create_dir_all(out).map_err(io_err(out))?;
    let ckpt = Checkpointer { out_dir: out };
    let mut opt = AdamW::new(vars.clone(), cfg.adamw())?;
    let mut ema = Ema::new(&vars, cfg.ema_decay)?;
    let existing = existing_checkpoint(out);
    let (start, mut rng) = if opts.resume {
        let dir = existing.ok_or_else(|| {
            Error::Checkpoint(format!(
                "--resume: {} holds no checkpoint (no checkpoint/state.json)",
                out.display()
            ))
        })?;
        ckpt.load(&dir, cfg, store, &mut opt, &mut ema)?
    } else {
        if existing.is_some() {
            return Err(Error::Checkpoint(format!(
                "{} already holds a checkpoint; resume it or choose another directory",
                out.display()
            )));
        }
        (0, SeededRng::seed_from_u64(cfg.seed))
    };
    for (name, contents) in &opts.extra_files {
        write_atomic(&out.join(name), contents.as_bytes())?;
    }
    let mut log = LossLog::open(out, cfg.log_format, opts.resume.then_some(start))?;
    let schedule = cfg.schedule();
    let device = vars[0].1.device().clone();
    let began = Instant::now();
    let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let mut last_loss = f64::NAN;
    let end = opts.halt_after.map_or(cfg.steps, |h| h.min(cfg.steps));
    let mut step = start;
    while step < end {
        let lr = schedule.lr(step);
        let batch = data.sample_batch(&mut rng, cfg.batch_size, &device)?;
        let loss = objective.loss(&batch, &mut rng)?;
        let loss_value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(Error::Training(format!(
                "the loss is {loss_value} at step {}; lower the learning rate or clip gradients",
                step + 1
            )));
        }
        let grads = loss.backward()?;
        let norm = opt.grad_norm(&grads)?;
        opt.step(&grads, lr, clip_scale(norm, cfg.grad_clip))?;
        ema.update(&vars)?;
        step += 1;
        last_loss = f64::from(loss_value);
        recent.push_back(last_loss);
        if recent.len() > 100 {
            recent.pop_front();
        }
        if step % cfg.log_every == 0 || step == cfg.steps {
            log.write(step, loss_value, lr, norm)?;
        }
        progress(TrainProgress {
            step,
            steps: cfg.steps,
            start_step: start,
            recent_loss: recent.iter().sum::<f64>() / recent.len() as f64,
            lr,
        });
        let periodic = cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0;
        if periodic || step == cfg.steps {
            log.flush()?;
            ckpt.save(step, cfg, store, &opt, &ema, &rng)?;
        }
    }
    log.flush()?;
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
}
