//! `recompose decomp-eval`: a Decomp Diffusion checkpoint evaluated on given inputs, for
//! checking weight compatibility against other implementations.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Args;
use recompose_decomp::visual::{DecompConfig, DecompModel};

use crate::usage;

/// Arguments of `recompose decomp-eval`.
#[derive(Debug, Args)]
pub struct DecompEvalArgs {
    /// Weights (safetensors, the released code's state-dict names).
    #[arg(long)]
    weights: PathBuf,
    /// Model configuration (TOML keyed like the released code's flags).
    #[arg(long)]
    config: PathBuf,
    /// Inputs (safetensors): x0 and x_t (B×3×S×S images) and t (B timesteps).
    #[arg(long)]
    inputs: PathBuf,
    /// Output (safetensors): z (evaluation mode), out_full, out_k0 … out_k{K−1}.
    #[arg(long)]
    out: PathBuf,
}

pub fn run_decomp_eval(a: DecompEvalArgs) -> Result<()> {
    let cfg = DecompConfig::from_file(&a.config).map_err(|e| usage(e.to_string()))?;
    let dev = Device::Cpu;
    let weights = candle_core::safetensors::load(&a.weights, &dev)
        .with_context(|| format!("reading {}", a.weights.display()))?;
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    // One line naming the tensor (candle may append a backtrace to its message).
    let model = DecompModel::from_config(&cfg, vb).map_err(|e| {
        let text = e.to_string();
        usage(format!(
            "{} does not fit the model of {}: {}",
            a.weights.display(),
            a.config.display(),
            text.lines().next().unwrap_or_default()
        ))
    })?;
    let inputs = candle_core::safetensors::load(&a.inputs, &dev)
        .with_context(|| format!("reading {}", a.inputs.display()))?;
    let get = |name: &str| -> Result<Tensor> {
        inputs
            .get(name)
            .cloned()
            .ok_or_else(|| usage(format!("{} has no tensor `{name}`", a.inputs.display())))
    };
    let (x0, x_t) = (
        get("x0")?.to_dtype(DType::F32)?,
        get("x_t")?.to_dtype(DType::F32)?,
    );
    let t = get("t")?.to_dtype(DType::F32)?;
    let want = [x0.dim(0)?, 3, cfg.image_size, cfg.image_size];
    for (name, x) in [("x0", &x0), ("x_t", &x_t)] {
        if x.dims() != want {
            return Err(usage(format!(
                "{name} has shape {:?}, the model takes {want:?}",
                x.dims()
            )));
        }
    }
    if t.dims() != [want[0]] {
        return Err(usage(format!(
            "t has shape {:?}, expected [{}]",
            t.dims(),
            want[0]
        )));
    }
    let z = model.encode(&x0, false)?;
    let mut out = HashMap::new();
    out.insert("out_full".to_string(), model.denoise(&x_t, &t, &z, None)?);
    for k in 0..cfg.num_components {
        out.insert(format!("out_k{k}"), model.denoise(&x_t, &t, &z, Some(k))?);
    }
    out.insert("z".to_string(), z);
    let tmp = a.out.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&out, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    outln!(
        "wrote z, out_full and out_k0..out_k{} for {} images to {}",
        cfg.num_components - 1,
        want[0],
        a.out.display()
    );
    Ok(())
}
