//! The Decomp Diffusion model: the latent encoder and one denoiser shared by the K factors.
//!
//! Su et al., *Compositional Image Decomposition with Diffusion Models* (ICML 2024), §3.1–3.2
//! and eq. 4. An image x₀ is encoded into K latents z_k; the shared denoiser, conditioned
//! additively on cat(z_k, t_emb), predicts x̂₀ (or ε) from each; the composed prediction is the
//! **mean over the factors** (the paper's sum of scores up to the factor 1/K):
//!
//! ```text
//! z = encoder(x₀)                     [B, K·d], z_k = z[:, k·d .. (k+1)·d]
//! out(x_t, t, z) = (1/K) Σ_k f(x_t, t, z_k)
//! loss = E_t,ε ‖out(√ᾱ_t x₀ + σ_t ε, t, z) − x₀‖²      (x₀ prediction)
//! ```
//!
//! The K factors run as one batch of B·K (rows ordered image-major: b0k0, b0k1, …). Rendering
//! factor k alone uses only z_k. Parameter names are those of the released code's state dict:
//! the denoiser's at the root, the encoder's under `latent_encoder`.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;
use recompose_diffusion::nn::{UNet, UNetConfig};
use recompose_diffusion::{Denoiser, Parameterization};

use crate::config::DecompConfig;
use crate::encoder::{EncoderConfig, LatentEncoder};
use crate::{Error, Result};

/// Encoder and denoiser (see the [module documentation](self)).
#[derive(Debug)]
pub struct DecompModel {
    encoder: LatentEncoder,
    denoiser: UNet,
    components: usize,
    latent_dim: usize,
}

impl DecompModel {
    /// Builds both networks on `vb`: the denoiser from `unet` (its `cond_dim` is the latent
    /// size d) predicting `prediction`, the encoder with `enc_channels` channels for
    /// `components` factors.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for inconsistent sizes; [`Error::Candle`] if a tensor has another
    /// shape.
    pub fn new(
        unet: &UNetConfig,
        enc_channels: usize,
        components: usize,
        prediction: Parameterization,
        vb: VarBuilder,
    ) -> Result<Self> {
        if unet.cond_dim == 0 {
            return Err(Error::Config(
                "a Decomp Diffusion denoiser needs cond_dim = d > 0 (the latent size)".into(),
            ));
        }
        let enc = EncoderConfig {
            image_size: unet.image_size,
            in_channels: unet.in_channels,
            channels: enc_channels,
            num_components: components,
            latent_dim: unet.cond_dim,
        };
        let encoder = LatentEncoder::new(&enc, vb.pp("latent_encoder"))?;
        let denoiser = UNet::new(unet, prediction, vb)?;
        Ok(Self {
            encoder,
            denoiser,
            components,
            latent_dim: unet.cond_dim,
        })
    }

    /// The model a [`DecompConfig`] describes, on `vb`.
    ///
    /// # Errors
    ///
    /// As [`DecompConfig::validate`] and [`DecompModel::new`].
    pub fn from_config(config: &DecompConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        Self::new(
            &config.unet(),
            config.enc_channels,
            config.num_components,
            config.prediction,
            vb,
        )
    }

    /// The encoder.
    pub fn encoder(&self) -> &LatentEncoder {
        &self.encoder
    }

    /// The shared denoiser.
    pub fn denoiser(&self) -> &UNet {
        &self.denoiser
    }

    /// The number of factors K.
    pub fn components(&self) -> usize {
        self.components
    }

    /// The latent size d of each factor.
    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    /// The latents `[B, K·d]` of clean images `[B, C, H, W]` (`train`: batch-norm mode).
    ///
    /// # Errors
    ///
    /// As [`LatentEncoder::forward_t`].
    pub fn encode(&self, x0: &Tensor, train: bool) -> Result<Tensor> {
        self.encoder.forward_t(x0, train)
    }

    /// The denoiser's prediction at (x_t, t) from the latents `z` (`[B, K·d]`): the mean over
    /// the K factors, or factor `index` alone.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a factor index ≥ K or latents of another size; as the denoiser.
    pub fn denoise(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        z: &Tensor,
        index: Option<usize>,
    ) -> Result<Tensor> {
        let (k, d) = (self.components, self.latent_dim);
        let b = x_t.dim(0)?;
        if z.dims() != [b, k * d] {
            return Err(Error::Config(format!(
                "latents must be [{b}, {}] (K = {k} factors of {d}), got {:?}",
                k * d,
                z.dims()
            )));
        }
        if let Some(i) = index {
            if i >= k {
                return Err(Error::Config(format!(
                    "factor index {i} is out of range for K = {k}"
                )));
            }
            let zk = z.narrow(1, i * d, d)?.contiguous()?;
            return Ok(self.denoiser.forward_with(x_t, t, Some(&zk), None)?);
        }
        // One batch of B·K, image-major.
        let mut rep_dims = vec![b, k];
        rep_dims.extend(&x_t.dims()[1..]);
        let zs = z.reshape((b * k, d))?;
        let out = self
            .denoiser
            .forward_repeated(x_t, t, Some(&zs), None, k, None)?;
        Ok(out.reshape(rep_dims.as_slice())?.mean(1)?)
    }

    /// The per-sample training loss `mean((out − target)²)` (`[B]`) for clean images `x0` noised
    /// into `x_t` at `t` with `noise` (`x_t = α_t x0 + σ_t noise`), the latents encoded in
    /// training mode; the target is x₀ or ε by the denoiser's parameterization (`alpha`,
    /// `sigma`: per-sample `[B]`).
    ///
    /// # Errors
    ///
    /// As [`DecompModel::encode`] and [`DecompModel::denoise`].
    pub fn loss(
        &self,
        x0: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
        noise: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Result<Tensor> {
        let z = self.encode(x0, true)?;
        let out = self.denoise(x_t, t, &z, None)?;
        let target = self
            .denoiser
            .parameterization()
            .target(x0, noise, alpha, sigma)?;
        Ok((out - target)?.sqr()?.flatten_from(1)?.mean(D::Minus1)?)
    }
}

/// A [`DecompModel`] with fixed latents read as a [`Denoiser`]: the composed prediction, or
/// factor `index` alone, so that every sampler of `recompose-diffusion` runs on it.
#[derive(Debug)]
pub struct Conditioned<'a> {
    /// The model.
    pub model: &'a DecompModel,
    /// The latents `[B, K·d]` of the batch being sampled.
    pub z: &'a Tensor,
    /// One factor, or all of them (`None`).
    pub index: Option<usize>,
}

impl recompose_diffusion::Denoiser for Conditioned<'_> {
    fn parameterization(&self) -> Parameterization {
        self.model.denoiser.parameterization()
    }

    fn forward(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        _cond: Option<&Tensor>,
    ) -> recompose_diffusion::Result<Tensor> {
        self.model
            .denoise(x_t, t, self.z, self.index)
            .map_err(|e| recompose_diffusion::Error::Denoiser(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use recompose_diffusion::nn::ParamStore;
    use std::collections::HashMap;

    /// Against the released PyTorch code: the training loss of one batch (encoder in training
    /// mode) and the gradient of every one of its 172 parameters, and the composed and
    /// per-factor outputs from the eval-mode latents. Ignored by default: it needs
    /// `../shared/reference/decomp-diffusion` next to the workspace.
    #[test]
    #[ignore = "needs the released code's reference data in ../shared/reference/decomp-diffusion; \
                run with `cargo test -p recompose-decomp-diffusion -- --ignored`"]
    fn training_loss_and_gradients_match_the_reference() -> Result<()> {
        let dir = crate::reference_data();
        let dev = Device::Cpu;
        let load = |name: &str| -> Result<HashMap<String, Tensor>> {
            Ok(candle_core::safetensors::load(dir.join(name), &dev)?)
        };
        let weights: HashMap<String, Tensor> = load("small_model.safetensors")?
            .into_iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .collect();
        let io = load("small_io.safetensors")?;
        let refg = load("small_grads.safetensors")?;
        let store = ParamStore::new(0);
        let model = DecompModel::new(
            &UNetConfig::decomp_small(),
            64,
            3,
            Parameterization::X0,
            store.var_builder(DType::F32, &dev),
        )?;
        store.assign(&weights, "small_model.safetensors")?;
        let err = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        let t = io["t"].to_dtype(DType::F32)?;
        let x0 = &io["x0"];
        let x_t = &io["x_t"];
        // Eval-mode outputs.
        let z = model.encode(x0, false)?;
        let mut worst = err(&z, &io["z"])?;
        worst = worst.max(err(&model.denoise(x_t, &t, &z, None)?, &io["out_full"])?);
        for k in 0..3 {
            let out = model.denoise(x_t, &t, &z, Some(k))?;
            worst = worst.max(err(&out, &io[&format!("out_k{k}")])?);
        }
        assert!(worst < 1e-4, "eval outputs: max error {worst}");
        // The training step: x0 loss with train-mode batch norm.
        let schedule =
            recompose_diffusion::DiscreteSchedule::cosine_with_max_beta(1000, 0.008, 0.999)?;
        let ts = io["t"].to_dtype(DType::I64)?.to_vec1::<i64>()?;
        let coef = |f: &dyn Fn(usize) -> f64| -> Result<Tensor> {
            let v: Vec<f32> = ts.iter().map(|&i| f(i as usize) as f32).collect();
            Ok(Tensor::from_vec(v, ts.len(), &dev)?)
        };
        let alpha = coef(&|i| schedule.sqrt_alpha_bar(i))?;
        let sigma = coef(&|i| schedule.sigma(i))?;
        let per = model.loss(x0, x_t, &t, &io["noise"], &alpha, &sigma)?;
        let e_per = err(&per, &refg["loss_train_per_sample"])?;
        assert!(e_per < 1e-5, "per-sample loss: max error {e_per}");
        let grads = per.mean_all()?.backward()?;
        let mut checked = 0;
        let mut worst_grad = (0.0f32, String::new());
        for (name, var) in store.vars() {
            if name.contains("running_") {
                continue;
            }
            let want = refg
                .get(&format!("grad.{name}"))
                .ok_or_else(|| Error::Config(format!("no reference gradient for {name}")))?;
            let got = grads
                .get(var.as_tensor())
                .ok_or_else(|| Error::Config(format!("no gradient for {name}")))?;
            let e = err(got, want)?;
            if e > worst_grad.0 {
                worst_grad = (e, name.clone());
            }
            checked += 1;
        }
        assert_eq!(checked, 172);
        assert!(
            worst_grad.0 < 1e-4,
            "gradient of {}: max error {}",
            worst_grad.1,
            worst_grad.0
        );
        // One DDIM step (η = 0, x̂₀ clipped to [−1, 1]) from t = 500 to 480, composed and factor 0.
        use recompose_diffusion::{Sampler, SamplerConfig, SamplerKind, seeded};
        let sampler = Sampler::new(
            schedule.clone(),
            SamplerConfig::new(SamplerKind::Ddim { eta: 0.0 }).with_clip_x0(1.0),
        )?;
        let mut ddim_worst = 0.0f32;
        for (index, prefix) in [(None, "ddim"), (Some(0), "ddim_k0")] {
            let den = Conditioned {
                model: &model,
                z: &z,
                index,
            };
            let step = sampler.step(
                &den,
                x_t,
                &[500, 500],
                &[Some(480), Some(480)],
                None,
                &mut seeded(0),
            )?;
            ddim_worst = ddim_worst
                .max(err(&step.pred_x0, &io[&format!("{prefix}_pred_xstart")])?)
                .max(err(&step.prev_sample, &io[&format!("{prefix}_sample")])?);
        }
        assert!(ddim_worst < 1e-4, "DDIM step: max error {ddim_worst}");
        eprintln!("reference DDIM step: {ddim_worst:.2e}");
        eprintln!(
            "reference model: eval outputs {worst:.2e}, loss {e_per:.2e}, worst gradient {:.2e} ({})",
            worst_grad.0, worst_grad.1
        );
        Ok(())
    }
}
