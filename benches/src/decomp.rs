//! The Decomp Diffusion workloads (Su et al. 2024; decomp spec §4) at the four small
//! configurations of the reference benchmark: the whole model (latent encoder with batch norm,
//! shared U-Net, K = 3 factors of d = 32) with perturbed weights and fixed inputs, ready for a
//! training step, a composed prediction or an encoding.
//!
//! The criterion suite `benches/benches/decomp.rs` and the `bench-steps` timing server
//! (which `cargo xtask bench decomp` interleaves with PyTorch) build their work here, so both
//! time exactly the same step.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use recompose_decomp_diffusion::{DecompConfig, DecompModel};
use recompose_diffusion::nn::ParamStore;
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::train::{AdamW, AdamWConfig};
use recompose_diffusion::{SeededRng, seeded};

/// Errors of the benchmark workloads (they come from the crates under test).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Images per call of every workload.
pub const BATCH: usize = 16;

/// The Adam learning rate of the training step (the PyTorch side's too).
pub const LEARNING_RATE: f64 = 1e-3;

/// The four configurations of the reference benchmark (released flags), by the name the
/// criterion ids and the PyTorch script use.
pub fn configs() -> Vec<(&'static str, DecompConfig)> {
    let a = DecompConfig::default();
    let b = DecompConfig {
        num_channels: 16,
        num_head_channels: -1,
        ..a.clone()
    };
    let c = DecompConfig {
        image_size: 16,
        num_head_channels: -1,
        ..a.clone()
    };
    let d = DecompConfig {
        image_size: 16,
        attention_resolutions: vec![8],
        ..a.clone()
    };
    vec![
        ("a-32px-32ch", a),
        ("b-32px-16ch", b),
        ("c-16px-32ch", c),
        ("d-16px-32ch-attn8", d),
    ]
}

/// The configuration named `name` in [`configs`].
pub fn config(name: &str) -> Option<DecompConfig> {
    configs()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| c)
}

fn randn(rng: &mut SeededRng, shape: &[usize], device: &Device) -> Result<Tensor, Error> {
    Ok(normal_tensor(rng, shape, DType::F32, device)?)
}

/// Moves every trainable variable of `store` off its initial value by N(0, `scale`²) noise drawn
/// from `rng` (batch-norm running statistics stay), so that zero-initialized layers pass
/// gradients as in a model under training.
///
/// # Errors
///
/// When a tensor operation fails.
pub fn perturb(store: &ParamStore, rng: &mut SeededRng, scale: f64) -> Result<(), Error> {
    for (n, v) in store.vars() {
        if n.contains("running") {
            continue;
        }
        let t = v.as_tensor();
        let noise = randn(rng, t.dims(), t.device())?;
        v.set(&(t + (noise * scale)?)?)?;
    }
    Ok(())
}

/// One configuration's model with its trainable variables, optimizer and fixed inputs.
pub struct DecompWorkload {
    /// The configuration.
    pub cfg: DecompConfig,
    /// The model on the variables of `store`.
    pub model: DecompModel,
    /// The model's variables.
    pub store: ParamStore,
    opt: AdamW,
    /// Clean images in [0, 1] (roughly), `[batch, 3, s, s]`.
    pub x0: Tensor,
    /// The noise of the noisy images.
    pub noise: Tensor,
    /// Timestep indices, `[batch]`.
    pub t: Tensor,
    /// Noisy images 0.6 x₀ + 0.8 ε.
    pub x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
}

impl DecompWorkload {
    /// Builds the model of `cfg` (seed 0) and moves every weight off its initial value by
    /// N(0, 0.02²) noise, so that the zero-initialized output layers pass gradients as in a
    /// model under training (the PyTorch side does the same); then draws the inputs. Everything
    /// lives on `device` (the same values on every device).
    ///
    /// # Errors
    ///
    /// When the model cannot be built.
    pub fn new(cfg: &DecompConfig, device: &Device) -> Result<Self, Error> {
        Self::with_batch(cfg, BATCH, device)
    }

    /// [`DecompWorkload::new`] with `batch` images per call in place of [`BATCH`].
    ///
    /// # Errors
    ///
    /// When the model cannot be built or the batch is empty.
    pub fn with_batch(cfg: &DecompConfig, batch: usize, device: &Device) -> Result<Self, Error> {
        if batch == 0 {
            return Err("a workload needs at least one image".into());
        }
        let store = ParamStore::new(0);
        let model = DecompModel::from_config(cfg, store.var_builder(DType::F32, device))?;
        let mut rng = seeded(2);
        perturb(&store, &mut rng, 0.02)?;
        let s = cfg.image_size;
        let x0 = randn(&mut rng, &[batch, 3, s, s], device)?.affine(0.25, 0.5)?;
        let noise = randn(&mut rng, &[batch, 3, s, s], device)?;
        let t_idx: Vec<f32> = (0..batch).map(|i| (i * 997 % 1000) as f32).collect();
        let t = Tensor::from_vec(t_idx, batch, device)?;
        let alpha = Tensor::full(0.6f32, batch, device)?;
        let sigma = Tensor::full(0.8f32, batch, device)?;
        let x_t = ((&x0 * 0.6)? + (&noise * 0.8)?)?;
        let opt = AdamW::new(store.vars(), AdamWConfig::default())?;
        Ok(Self {
            cfg: cfg.clone(),
            model,
            store,
            opt,
            x0,
            noise,
            t,
            x_t,
            alpha,
            sigma,
        })
    }

    /// One training step: the encoder in training mode, the K factors as one batch of
    /// K·[`BATCH`] denoiser images, the x₀ loss, backward and an AdamW step.
    ///
    /// # Errors
    ///
    /// When a tensor operation fails.
    pub fn train_step(&mut self) -> Result<(), Error> {
        let (_, grads) = self.loss_and_grads()?;
        self.opt.step(&grads, LEARNING_RATE, 1.0)?;
        Ok(())
    }

    /// The training step's loss and its gradients (encoder in training mode: its batch-norm
    /// running statistics move).
    ///
    /// # Errors
    ///
    /// When a tensor operation fails.
    pub fn loss_and_grads(&self) -> Result<(Tensor, GradStore), Error> {
        let loss = self
            .model
            .loss(
                &self.x0,
                &self.x_t,
                &self.t,
                &self.noise,
                &self.alpha,
                &self.sigma,
            )?
            .mean_all()?;
        let grads = loss.backward()?;
        Ok((loss, grads))
    }

    /// The same weights as plain tensors (no gradient tracking), as a loaded model has them:
    /// the model that sampling runs on.
    ///
    /// # Errors
    ///
    /// When the model cannot be built.
    pub fn frozen_model(&self) -> Result<DecompModel, Error> {
        let frozen: HashMap<String, Tensor> = self
            .store
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().detach()))
            .collect();
        let vb = candle_nn::VarBuilder::from_tensors(frozen, DType::F32, self.x0.device());
        Ok(DecompModel::from_config(&self.cfg, vb)?)
    }
}
