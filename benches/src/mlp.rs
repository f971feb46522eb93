//! The 2-D residual MLP training steps (Du et al. 2023, the network of the 2-D compositions) at
//! the paper's batch of 1000: the ε-prediction MLP and its energy parameterization
//! (E = ‖g(x, t) − x‖², ε̂ = ∇ₓE), each one AdamW step exactly as `train` takes it (the host
//! gradient path of [`recompose_diffusion::nn::mlp_grad`]).
//!
//! The criterion suite `benches/benches/diffusion.rs` and the `bench-steps` timing server
//! (which `cargo xtask bench diffusion` interleaves with PyTorch) build their work here, so both
//! time exactly the same step.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use recompose_diffusion::nn::{EnergyForm, EnergyMlp, MlpConfig, ParamStore, ResidualMlp};
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::train::{AdamW, AdamWConfig, TrainableDenoiser};
use recompose_diffusion::{Parameterization, seeded};

use crate::decomp::Error;

/// Points per training step (the paper's batch).
pub const BATCH: usize = 1000;

/// The criterion group of the ε-prediction MLP's step.
pub const MLP_GROUP: &str = "mlp/train-step/batch=1000";

/// The criterion group of the energy MLP's step.
pub const ENERGY_GROUP: &str = "mlp-energy/train-step/batch=1000";

/// One model with its optimizer and a fixed batch.
pub struct MlpWorkload {
    model: Box<dyn TrainableDenoiser>,
    opt: AdamW,
    x: Tensor,
    t: Tensor,
    target: Tensor,
    store: ParamStore,
}

impl MlpWorkload {
    /// The paper's network (width 128, 4 blocks, 100 steps), as an ε-prediction model or (with
    /// `energy`) as the squared-residual energy model, with a seeded batch of [`BATCH`] points,
    /// on `device` (the same weights and batch on every device).
    ///
    /// # Errors
    ///
    /// From building the model or the optimizer.
    pub fn new(energy: bool, device: &Device) -> Result<Self, Error> {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, device);
        let cfg = MlpConfig::default();
        let model: Box<dyn TrainableDenoiser> = if energy {
            Box::new(EnergyMlp::new(&cfg, EnergyForm::SquaredResidual, vb)?)
        } else {
            Box::new(ResidualMlp::new(&cfg, Parameterization::Epsilon, vb)?)
        };
        let opt = AdamW::new(store.vars(), AdamWConfig::default())?;
        let mut rng = seeded(1);
        let x = normal_tensor(&mut rng, &[BATCH, 2], DType::F32, device)?;
        let target = normal_tensor(&mut rng, &[BATCH, 2], DType::F32, device)?;
        let t: Vec<f32> = (0..BATCH)
            .map(|_| rng.random_range(0..cfg.num_timesteps) as f32)
            .collect();
        let t = Tensor::from_vec(t, BATCH, device)?;
        Ok(Self {
            model,
            opt,
            x,
            t,
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
            match self
                .model
                .fused_mse_and_grads(&self.x, &self.t, None, &self.target)?
            {
                Some(done) => done,
                None => {
                    let pred = self.model.forward(&self.x, &self.t, None)?;
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
