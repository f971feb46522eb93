//! Training steps timed both by criterion and by the `bench-steps` timing server (which
//! `cargo xtask bench diffusion` and `cargo xtask bench image` interleave with PyTorch), each
//! one AdamW step exactly as `train` takes it, so both programs time the same step:
//!
//! * the 2-D residual MLP (Du et al. 2023, the network of the 2-D compositions) at the paper's
//!   batch of 1000, as an ε-prediction model and in its energy parameterization
//!   (E = ‖g(x, t) − x‖², ε̂ = ∇ₓE; the host gradient path of
//!   [`recompose_diffusion::nn::mlp_grad`]);
//! * the text-conditioned U-Net of the image-composition recipe
//!   ([`crate::image_composition::recipe`]: text encoder, pooled prompt vector, coordinate
//!   channels, cross-attention to the token states) at the recipe's batch of 32, as a score
//!   model and as an energy model — and, for sampling, one classifier-free-guided prediction
//!   for a batch of chains ([`GuidedWorkload`]).

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use recompose_diffusion::nn::{EnergyForm, EnergyMlp, MlpConfig, ParamStore, ResidualMlp};
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::text::{TextTokenizer, TextUNet};
use recompose_diffusion::train::{AdamW, AdamWConfig, TrainableDenoiser};
use recompose_diffusion::{Denoiser, Parameterization, SeededRng, seeded};
use recompose_scenes::shapes_text;

use crate::decomp::Error;

/// Points per training step (the paper's batch).
pub const BATCH: usize = 1000;

/// The criterion group of the ε-prediction MLP's step.
pub const MLP_GROUP: &str = "mlp/train-step/batch=1000";

/// The criterion group of the energy MLP's step.
pub const ENERGY_GROUP: &str = "mlp-energy/train-step/batch=1000";

/// Images per training step of the text-conditioned U-Net (the recipe's batch).
pub const TEXT_BATCH: usize = 32;

/// Sampling chains of a guided prediction (the reproduction's 8 sets of 8 chains).
pub const GUIDED_CHAINS: usize = 64;

/// The criterion group of the text-conditioned U-Net's training step (score model, energy
/// model).
pub fn text_train_group(energy: bool) -> String {
    format!("{}/train-step/batch={TEXT_BATCH}", text_model_name(energy))
}

/// The criterion group of one guided prediction for [`GUIDED_CHAINS`] chains.
pub fn text_guided_group(energy: bool) -> String {
    format!("{}/guided/chains={GUIDED_CHAINS}", text_model_name(energy))
}

fn text_model_name(energy: bool) -> &'static str {
    if energy {
        "text-unet-energy"
    } else {
        "text-unet"
    }
}

/// Prompts of the text workloads' batches, cycled (the empty prompt is the unconditional model
/// of condition dropout).
const PROMPTS: [&str; 8] = [
    "red circle top left",
    "blue square bottom right",
    "green",
    "triangle",
    "",
    "yellow triangle top right",
    "bottom left",
    "yellow circle",
];

/// The recipe's text-conditioned U-Net with seeded weights moved off their zero
/// initializations (as the U-Net benchmarks do, so that every weight is generic), its
/// tokenizer and its store.
///
/// # Errors
///
/// From building the tokenizer or the network.
pub fn text_unet(
    energy: bool,
    device: &Device,
) -> Result<(TextUNet, TextTokenizer, ParamStore), Error> {
    let tokenizer = TextTokenizer::word_level(shapes_text::vocabulary(), shapes_text::PROMPT_LEN)?;
    let run = crate::image_composition::recipe(
        Path::new("data"),
        energy,
        crate::image_composition::Scale::Full,
        None,
        None,
    )?;
    let cfg = run.text_unet_config(&tokenizer)?;
    let store = ParamStore::new(0);
    let model = TextUNet::new(
        &cfg,
        run.diffusion.prediction,
        store.var_builder(DType::F32, device),
    )?;
    crate::decomp::perturb(&store, &mut seeded(2), 0.02)?;
    Ok((model, tokenizer, store))
}

/// The token ids `[n, L]` of `n` prompts cycled from [`PROMPTS`].
fn prompt_ids(tokenizer: &TextTokenizer, n: usize, device: &Device) -> Result<Tensor, Error> {
    let texts: Vec<&str> = (0..n).map(|i| PROMPTS[i % PROMPTS.len()]).collect();
    Ok(tokenizer.encode_strict(&texts)?.ids_tensor(device)?)
}

/// `n` training steps drawn uniformly from `0..steps`, as `f32`.
fn random_times(
    rng: &mut SeededRng,
    n: usize,
    steps: usize,
    device: &Device,
) -> Result<Tensor, Error> {
    let t: Vec<f32> = (0..n).map(|_| rng.random_range(0..steps) as f32).collect();
    Ok(Tensor::from_vec(t, n, device)?)
}

/// One model with its optimizer and a fixed batch.
pub struct StepWorkload {
    model: Box<dyn TrainableDenoiser>,
    opt: AdamW,
    x: Tensor,
    t: Tensor,
    cond: Option<Tensor>,
    target: Tensor,
    store: ParamStore,
}

impl StepWorkload {
    /// The paper's network (width 128, 4 blocks, 100 steps), as an ε-prediction model or (with
    /// `energy`) as the squared-residual energy model, with a seeded batch of [`BATCH`] points,
    /// on `device` (the same weights and batch on every device).
    ///
    /// # Errors
    ///
    /// From building the model or the optimizer.
    pub fn mlp(energy: bool, device: &Device) -> Result<Self, Error> {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, device);
        let cfg = MlpConfig::default();
        let model: Box<dyn TrainableDenoiser> = if energy {
            Box::new(EnergyMlp::new(&cfg, EnergyForm::SquaredResidual, vb)?)
        } else {
            Box::new(ResidualMlp::new(&cfg, Parameterization::Epsilon, vb)?)
        };
        let mut rng = seeded(1);
        let x = normal_tensor(&mut rng, &[BATCH, 2], DType::F32, device)?;
        let target = normal_tensor(&mut rng, &[BATCH, 2], DType::F32, device)?;
        let t = random_times(&mut rng, BATCH, cfg.num_timesteps, device)?;
        Self::with_batch(model, store, x, t, None, target)
    }

    /// The image-composition recipe's text-conditioned U-Net ([`text_unet`]), a score model or
    /// (with `energy`) the squared-residual energy model, with a seeded batch of
    /// [`TEXT_BATCH`] images at random steps under prompts cycled from a fixed list, on
    /// `device`.
    ///
    /// # Errors
    ///
    /// From building the model or the optimizer.
    pub fn text_unet(energy: bool, device: &Device) -> Result<Self, Error> {
        let (model, tokenizer, store) = text_unet(energy, device)?;
        let size = model.config().unet.image_size;
        let mut rng = seeded(1);
        let shape = [TEXT_BATCH, 3, size, size];
        let x = normal_tensor(&mut rng, &shape, DType::F32, device)?;
        let target = normal_tensor(&mut rng, &shape, DType::F32, device)?;
        let t = random_times(&mut rng, TEXT_BATCH, 1000, device)?;
        let ids = prompt_ids(&tokenizer, TEXT_BATCH, device)?;
        Self::with_batch(Box::new(model), store, x, t, Some(ids), target)
    }

    fn with_batch(
        model: Box<dyn TrainableDenoiser>,
        store: ParamStore,
        x: Tensor,
        t: Tensor,
        cond: Option<Tensor>,
        target: Tensor,
    ) -> Result<Self, Error> {
        let opt = AdamW::new(store.vars(), AdamWConfig::default())?;
        Ok(Self {
            model,
            opt,
            x,
            t,
            cond,
            target,
            store,
        })
    }

    /// One training step: the loss and its gradients, then AdamW at learning rate 10⁻³.
    ///
    /// # Errors
    ///
    /// From the model or the optimizer.
    pub fn train_step(&mut self) -> Result<(), Error> {
        let (_, grads) = self.loss_and_grads()?;
        self.opt.step(&grads, 1e-3, 1.0)?;
        Ok(())
    }

    /// The step's loss (the mean squared error of the prediction) and its gradients: fused on
    /// the host path of the CPU, candle's autograd elsewhere.
    ///
    /// # Errors
    ///
    /// From the model.
    pub fn loss_and_grads(&self) -> Result<(Tensor, GradStore), Error> {
        Ok(
            match self.model.fused_mse_and_grads(
                &self.x,
                &self.t,
                self.cond.as_ref(),
                &self.target,
            )? {
                Some(done) => done,
                None => {
                    let pred = self.model.forward(&self.x, &self.t, self.cond.as_ref())?;
                    let loss = (pred - &self.target)?.sqr()?.mean_all()?;
                    let grads = loss.backward()?;
                    (loss, grads)
                }
            },
        )
    }

    /// The model's variables, by name.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }
}

/// One classifier-free-guided prediction of the recipe's text-conditioned U-Net for
/// [`GUIDED_CHAINS`] chains under one prompt: the cost of one step of reverse diffusion or of
/// an unadjusted sampler: the text encoder on the empty prompt and the prompt, then the U-Net
/// once on the doubled batch.
pub struct GuidedWorkload {
    model: TextUNet,
    tokenizer: TextTokenizer,
    x: Tensor,
    t: Tensor,
}

impl GuidedWorkload {
    /// The workload of a score model or (with `energy`) an energy model, on `device`, built
    /// on constant weights as a loaded model is (no autograd graph is recorded).
    ///
    /// # Errors
    ///
    /// From building the model.
    pub fn new(energy: bool, device: &Device) -> Result<Self, Error> {
        let (trained, tokenizer, store) = text_unet(energy, device)?;
        let model = TextUNet::new(
            trained.config(),
            trained.parameterization(),
            store.frozen_var_builder(DType::F32, device),
        )?;
        let size = model.config().unet.image_size;
        let mut rng = seeded(3);
        let x = normal_tensor(
            &mut rng,
            &[GUIDED_CHAINS, 3, size, size],
            DType::F32,
            device,
        )?;
        let t = Tensor::full(500f32, GUIDED_CHAINS, device)?;
        Ok(Self {
            model,
            tokenizer,
            x,
            t,
        })
    }

    /// The guided prediction (guidance 4, the reproduction's).
    ///
    /// # Errors
    ///
    /// From the model.
    pub fn predict(&self) -> Result<Tensor, Error> {
        let guided = self
            .model
            .guided(&self.tokenizer, PROMPTS[0], 4.0, self.x.device())?;
        Ok(guided.forward(&self.x, &self.t, None)?)
    }
}
