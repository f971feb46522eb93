//! Training Decomp Diffusion through the foundation's loop: the objective and the procedural
//! datasets as training data.
//!
//! [`DecompLoss`] is the objective of Su et al. (2024, eq. 4): t uniform over the schedule's
//! steps, ε ~ N(0, I), x_t = α_t x₀ + σ_t ε, the encoder in training mode (batch statistics) and
//! the mean-over-factors prediction regressed onto x₀ (or ε). It plugs into
//! [`recompose_diffusion::train::train`], so runs get AdamW, EMA, clipping, loss logs and exact
//! resume; the batch norms' running statistics are variables of the same
//! [`recompose_diffusion::nn::ParamStore`], so checkpoints carry them.

use candle_core::{Device, Tensor};
use recompose_diffusion::data::Dataset;
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::train::Objective;
use recompose_diffusion::{DiscreteSchedule, SeededRng};

use crate::datasets::{IMAGE_SIZE, Kind, generate};
use crate::model::DecompModel;

/// The Decomp Diffusion training loss of a [`DecompModel`] (see the [module documentation](self)).
pub struct DecompLoss<'a> {
    model: &'a DecompModel,
    sqrt_ab: Vec<f32>,
    sigma: Vec<f32>,
}

impl<'a> DecompLoss<'a> {
    /// The loss of `model` with timesteps drawn uniformly from `schedule`.
    pub fn new(model: &'a DecompModel, schedule: &DiscreteSchedule) -> Self {
        let n = schedule.len();
        Self {
            model,
            sqrt_ab: (0..n).map(|i| schedule.sqrt_alpha_bar(i) as f32).collect(),
            sigma: (0..n).map(|i| schedule.sigma(i) as f32).collect(),
        }
    }
}

impl Objective for DecompLoss<'_> {
    fn loss(
        &self,
        x0: &Tensor,
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> recompose_diffusion::Result<Tensor> {
        use rand::Rng;
        if cond.is_some() {
            return Err(recompose_diffusion::Error::Config(
                "Decomp Diffusion infers its conditioning from the image; the data must come \
                 without conditions"
                    .into(),
            ));
        }
        let b = x0.dim(0)?;
        let dev = x0.device();
        let idx: Vec<usize> = (0..b)
            .map(|_| rng.random_range(0..self.sqrt_ab.len()))
            .collect();
        let noise = normal_tensor(rng, x0.dims(), x0.dtype(), dev)?;
        let coef = |v: &[f32]| Tensor::from_vec(idx.iter().map(|&i| v[i]).collect(), b, dev);
        let (alpha, sigma) = (coef(&self.sqrt_ab)?, coef(&self.sigma)?);
        let x_t = recompose_diffusion::add_noise(x0, &noise, &alpha, &sigma)?;
        let t = Tensor::from_vec(idx.iter().map(|&i| i as f32).collect(), b, dev)?;
        let per = self
            .model
            .loss(x0, &x_t, &t, &noise, &alpha, &sigma)
            .map_err(|e| recompose_diffusion::Error::Denoiser(Box::new(e)))?;
        Ok(per.mean_all()?)
    }
}

/// The first `len` images of a procedural dataset ([`crate::datasets`]) as training data,
/// pixels in \[0, 1\] (the released code's data range), drawn uniformly with replacement.
#[derive(Debug, Clone, Copy)]
pub struct SceneDataset {
    /// Which dataset.
    pub kind: Kind,
    /// Its seed.
    pub seed: u64,
    /// Number of distinct images.
    pub len: usize,
}

impl Dataset for SceneDataset {
    fn item_shape(&self) -> Vec<usize> {
        vec![3, IMAGE_SIZE, IMAGE_SIZE]
    }

    fn len(&self) -> Option<usize> {
        Some(self.len)
    }

    fn sample_batch(
        &self,
        rng: &mut SeededRng,
        batch: usize,
        device: &Device,
    ) -> recompose_diffusion::Result<Tensor> {
        use rand::Rng;
        if self.len == 0 {
            return Err(recompose_diffusion::Error::Config(
                "a scene dataset needs at least one image".into(),
            ));
        }
        let mut pixels = Vec::with_capacity(batch * 3 * IMAGE_SIZE * IMAGE_SIZE);
        for _ in 0..batch {
            let i = rng.random_range(0..self.len) as u64;
            pixels.extend(generate(self.kind, self.seed, i).image);
        }
        Ok(Tensor::from_vec(
            pixels,
            (batch, 3, IMAGE_SIZE, IMAGE_SIZE),
            device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DecompConfig;
    use candle_core::DType;
    use recompose_diffusion::nn::ParamStore;
    use recompose_diffusion::train::{TrainConfig, TrainOptions, train};

    fn tiny() -> DecompConfig {
        DecompConfig {
            image_size: 32,
            num_channels: 16,
            channel_mult: vec![1, 2],
            attention_resolutions: vec![8],
            emb_dim: 16,
            num_components: 3,
            enc_channels: 4,
            num_head_channels: -1,
            ..DecompConfig::default()
        }
    }

    fn run(dir: &std::path::Path, halt: Option<usize>, resume: bool) -> crate::Result<()> {
        let store = ParamStore::new(5);
        let model = DecompModel::from_config(&tiny(), store.var_builder(DType::F32, &Device::Cpu))?;
        let schedule = DiscreteSchedule::cosine_with_max_beta(1000, 0.008, 0.999)?;
        let loss = DecompLoss::new(&model, &schedule);
        let data = SceneDataset {
            kind: Kind::Tetrominoes,
            seed: 1,
            len: 16,
        };
        let cfg = TrainConfig {
            steps: 6,
            batch_size: 2,
            checkpoint_every: 2,
            log_every: 1,
            seed: 3,
            ..TrainConfig::default()
        };
        let opts = TrainOptions {
            out_dir: dir.to_path_buf(),
            resume,
            halt_after: halt,
            ..Default::default()
        };
        train(&store, &loss, &data, &cfg, &opts, &mut |_| {})?;
        Ok(())
    }

    /// A few optimizer steps run, and an interrupted run resumed from its checkpoint writes the
    /// same weights — the batch norms' running statistics included — byte for byte.
    #[test]
    fn trains_and_resumes_exactly() -> crate::Result<()> {
        let base =
            std::env::temp_dir().join(format!("recompose-decomp-train-{}", std::process::id()));
        let (full, cut) = (base.join("full"), base.join("cut"));
        let _ = std::fs::remove_dir_all(&base);
        run(&full, None, false)?;
        run(&cut, Some(5), false)?;
        run(&cut, None, true)?;
        let read = |p: std::path::PathBuf| {
            std::fs::read(&p).map_err(|source| crate::Error::Io {
                path: p.display().to_string(),
                source,
            })
        };
        assert_eq!(
            read(full.join("model.safetensors"))?,
            read(cut.join("model.safetensors"))?
        );
        assert_eq!(
            read(full.join("loss.jsonl"))?,
            read(cut.join("loss.jsonl"))?
        );
        // The optimizer state holds the raw (non-EMA) variables.
        let state = candle_core::safetensors::load(
            full.join("checkpoint/state.safetensors"),
            &Device::Cpu,
        )?;
        let rv = &state["param.latent_encoder.2.bn1.running_var"];
        let moved = rv
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .any(|v| (v - 1.0).abs() > 1e-6);
        assert!(moved, "the running statistics never moved");
        let _ = std::fs::remove_dir_all(&base);
        Ok(())
    }
}
