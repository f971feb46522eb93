//! `cargo xtask fixtures reference <DIR>`: the U-Net reference fixture, cut from the Decomp
//! Diffusion reference data made with the authors' PyTorch code.
//!
//! Reads `small_model.safetensors` and `small_io.safetensors` of `DIR` and writes
//! `fixtures/unet-reference/`: `unet_small.safetensors` (the denoiser's weights only, every key
//! not under `latent_encoder.`), `io.safetensors` (the inputs and outputs the U-Net tests
//! compare against, `t` converted to `f32`) and a README saying where they come from.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};

/// The tensors of `small_io.safetensors` the U-Net tests use.
const IO_KEYS: [&str; 9] = [
    "x_t", "t", "z", "temb_sin", "time_emb", "out_k0", "out_k1", "out_k2", "out_full",
];

/// Parameters of the reference denoiser (meta.json, `params.denoiser`).
const DENOISER_PARAMS: usize = 710_051;

const README: &str = "\
# U-Net reference fixture (Decomp Diffusion, official PyTorch code)

Cut from the Decomp Diffusion reference data in `/work/shared/reference/decomp-diffusion/`,
made with the authors' released PyTorch code (github.com/jsu27/decomp_diffusion, commit 253ec9b,
`model/unet.py` and `model/nn.py` unmodified), torch 2.15 on CPU, float32. Nothing was trained:
the weights are PyTorch's initialization (`torch.manual_seed(0)`) plus a seeded perturbation
(`+= 0.02 * randn`, generator seed 1234, applied to every tensor, the zero-initialized output
convolutions and attention projections included).

Model: `create_unet_model(image_size=32, num_channels=32, num_res_blocks=1, channel_mult='1,2',
attention_resolutions='16,8', emb_dim=64, num_components=3, dropout=0.0)`, i.e.
`UNetConfig::decomp_small()` (710,051 denoiser parameters).

- `unet_small.safetensors`: the denoiser's weights, every key of the state dict except the
  latent encoder's (`latent_encoder.*`), under the PyTorch names, f32.
- `io.safetensors`: `x_t` [2, 3, 32, 32] (noised at `t` with the cosine schedule), `t` [2]
  (= [10, 500], stored as f32), `z` [2, 96] (latents of the K = 3 factors, 32 each),
  `temb_sin` [2, 32] (sinusoidal embedding of t), `time_emb` [2, 32] (`model.time_embed`),
  `out_k{k}` [2, 3, 32, 32] (`model(x_t, t, latent=z, latent_index=k)`, x0 prediction with
  cond = z[:, 32k..32k+32]) and `out_full` (`model(x_t, t, latent=z)`: the mean over the three
  factors). Eval mode, no gradient.

Regenerate with

    cargo xtask fixtures reference /work/shared/reference/decomp-diffusion
";

/// Writes `fixtures/unet-reference/` under `root` from the reference data in `dir`.
pub fn fixtures(root: &Path, dir: &Path) -> Result<()> {
    let dev = Device::Cpu;
    let model_path = dir.join("small_model.safetensors");
    let io_path = dir.join("small_io.safetensors");
    let model = candle_core::safetensors::load(&model_path, &dev)
        .with_context(|| format!("could not read {}", model_path.display()))?;
    let io = candle_core::safetensors::load(&io_path, &dev)
        .with_context(|| format!("could not read {}", io_path.display()))?;

    let mut weights = HashMap::new();
    for (name, tensor) in model {
        if name.starts_with("latent_encoder.") {
            continue;
        }
        if tensor.dtype() != DType::F32 {
            bail!(
                "{}: denoiser tensor `{name}` is {:?}, expected f32",
                model_path.display(),
                tensor.dtype()
            );
        }
        weights.insert(name, tensor);
    }
    let count: usize = weights.values().map(Tensor::elem_count).sum();
    if count != DENOISER_PARAMS {
        bail!(
            "{}: the denoiser has {count} parameters, expected {DENOISER_PARAMS}",
            model_path.display()
        );
    }

    let mut tensors = HashMap::new();
    for key in IO_KEYS {
        let tensor = io
            .get(key)
            .with_context(|| format!("{}: tensor `{key}` is missing", io_path.display()))?;
        tensors.insert(key.to_string(), tensor.to_dtype(DType::F32)?);
    }

    let out = root.join("fixtures").join("unet-reference");
    std::fs::create_dir_all(&out)?;
    let weights_path = out.join("unet_small.safetensors");
    candle_core::safetensors::save(&weights, &weights_path)?;
    eprintln!(
        "wrote {} ({} tensors, {count} parameters)",
        weights_path.display(),
        weights.len()
    );
    let io_out = out.join("io.safetensors");
    candle_core::safetensors::save(&tensors, &io_out)?;
    eprintln!("wrote {}", io_out.display());
    let readme = out.join("README.md");
    std::fs::write(&readme, README)?;
    eprintln!("wrote {}", readme.display());
    Ok(())
}
