//! Decomp Diffusion on the command line: `recompose decomp-eval` (a checkpoint evaluated on
//! given inputs, for checking weight compatibility against other implementations),
//! `recompose decompose` (an image into its factors) and `recompose recombine` (factors of two
//! images, or of two models, composed into a new image).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use recompose_decomp_diffusion::render::{self, load_rgb_png};
use recompose_decomp_diffusion::{DecompConfig, DecompModel, DecompRunConfig, DecompTrained};
use recompose_diffusion::data::ValueRange;
use recompose_diffusion::data::plot::{save_png_grid, save_png_image};
use recompose_diffusion::nn::ParamStore;
use recompose_diffusion::seeded;
use recompose_diffusion::train::{read_safetensors, write_safetensors};

use recompose_core::memory::{Estimate, MemoryLimit};

use crate::{check_memory, positive, usage};

/// Arguments of `recompose decomp-eval`.
#[derive(Debug, Args)]
pub struct DecompEvalArgs {
    /// Weights (safetensors, the released code's state-dict names).
    #[arg(long)]
    weights: PathBuf,
    /// Model configuration (TOML keyed like the released code's flags), or a run's config.toml
    /// (its `[decomp]` table).
    #[arg(long)]
    config: PathBuf,
    /// Inputs (safetensors): x0 and x_t (B×3×S×S images) and t (B timesteps).
    #[arg(long)]
    inputs: PathBuf,
    /// Output (safetensors): z (evaluation mode), out_full, out_k0 … out_k{K−1}.
    #[arg(long)]
    out: PathBuf,
}

pub fn run_decomp_eval(a: DecompEvalArgs, memory: MemoryLimit) -> Result<()> {
    // A model configuration, or the `[decomp]` table of a run's config.toml.
    let cfg = DecompConfig::from_file(&a.config)
        .or_else(|e| {
            DecompRunConfig::from_file(&a.config)
                .map(|run| run.decomp)
                .map_err(|_| e)
        })
        .map_err(|e| usage(e.to_string()))?;
    // The files are read whole and turned into tensors (twice their size), then the model is
    // built; checked before anything is read.
    let file_bytes = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let files =
        Estimate::bytes(file_bytes(&a.weights)) * 2 + Estimate::bytes(file_bytes(&a.inputs)) * 2;
    check_memory(
        memory,
        format_args!("evaluating the model of {}", a.config.display()),
        files + cfg.inference_estimate(1),
    )?;
    let dev = crate::device();
    // Header and sizes checked before the data is trusted; BatchNorm's step counters of a
    // released state dict are not weights.
    let weights: HashMap<String, Tensor> = read_safetensors(&a.weights, None, &dev)
        .map_err(|e| usage(e.to_string()))?
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    let store = ParamStore::new(0);
    // One line naming the tensor (candle may append a backtrace to its message).
    let first_line = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        text.lines().next().unwrap_or_default().to_string()
    };
    let model = DecompModel::from_config(&cfg, store.var_builder(DType::F32, &dev))
        .map_err(|e| usage(format!("{}: {}", a.config.display(), first_line(&e))))?;
    // Every tensor present, of the model's shape and finite; none left over.
    store
        .assign(&weights, &a.weights.display().to_string())
        .map_err(|e| {
            usage(format!(
                "{} does not fit the model of {}: {}",
                a.weights.display(),
                a.config.display(),
                first_line(&e)
            ))
        })?;
    let inputs = read_safetensors(&a.inputs, None, &dev).map_err(|e| usage(e.to_string()))?;
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
    for (name, x) in [("x0", &x0), ("x_t", &x_t), ("t", &t)] {
        let finite = x
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(usage(format!(
                "{}: tensor `{name}` holds non-finite values (NaN or infinity)",
                a.inputs.display()
            )));
        }
    }
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
    // The batch is known now: K + 1 passes of the denoiser on all its images.
    check_memory(
        memory,
        format_args!("evaluating {} images", want[0]),
        files + cfg.inference_estimate(want[0]),
    )?;
    let z = model.encode(&x0, false)?;
    let mut out = HashMap::new();
    out.insert("out_full".to_string(), model.denoise(&x_t, &t, &z, None)?);
    for k in 0..cfg.num_components {
        out.insert(format!("out_k{k}"), model.denoise(&x_t, &t, &z, Some(k))?);
    }
    out.insert("z".to_string(), z);
    let mut out: Vec<(String, Tensor)> = out.into_iter().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    write_safetensors(&a.out, &out).map_err(|e| usage(e.to_string()))?;
    outln!(
        "wrote z, out_full and out_k0..out_k{} for {} images to {}",
        cfg.num_components - 1,
        want[0],
        a.out.display()
    );
    Ok(())
}

/// Arguments of `recompose decompose`.
#[derive(Debug, Args)]
pub struct DecomposeArgs {
    /// The image (an RGB PNG of the model's size).
    image: PathBuf,
    /// A Decomp Diffusion run directory written by `recompose train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output directory: reconstruction.png, factor_0.png … factor_{K−1}.png and grid.png
    /// (input, reconstruction and factors side by side).
    #[arg(long)]
    out: PathBuf,
    /// DDIM steps.
    #[arg(long, default_value_t = 50, allow_negative_numbers = true)]
    steps: i64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Arguments of `recompose recombine`.
#[derive(Debug, Args)]
pub struct RecombineArgs {
    /// Image A (an RGB PNG of the model's size).
    a: PathBuf,
    /// Image B.
    b: PathBuf,
    /// One 0/1 per factor, comma-separated. slice: 1 takes factor k from A, 0 from B. add: the
    /// factors of B to add to all of A's (default: all).
    #[arg(long)]
    mask: Option<String>,
    /// A Decomp Diffusion run directory written by `recompose train` (encodes A).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A second run directory (encodes B and renders B's factors): cross-model recombination.
    #[arg(long)]
    checkpoint2: Option<PathBuf>,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// slice (factor k from A or B) or add (A's factors together with B's).
    #[arg(long, default_value = "slice")]
    mode: String,
    /// DDIM steps.
    #[arg(long, default_value_t = 50, allow_negative_numbers = true)]
    steps: i64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Peak bytes of loading the run in `dir` and rendering one image with it
/// ([`DecompConfig::inference_estimate`]), from its saved configuration.
fn run_estimate(dir: &Path) -> Result<Estimate> {
    if !dir.join("config.toml").is_file() {
        return Err(usage(format!(
            "{} is not a Decomp Diffusion run directory (no config.toml)",
            dir.display()
        )));
    }
    crate::diffusion::expect_family(dir, DecompRunConfig::FAMILY.name)?;
    let cfg = DecompRunConfig::from_file(&dir.join("config.toml"))
        .map_err(|e| usage(format!("{}: {e}", dir.display())))?;
    Ok(cfg.decomp.inference_estimate(1))
}

/// A run directory, with load errors as one line naming what is wrong.
fn load_run(dir: &Path) -> Result<DecompTrained> {
    if !dir.join("config.toml").is_file() {
        return Err(usage(format!(
            "{} is not a Decomp Diffusion run directory (no config.toml)",
            dir.display()
        )));
    }
    crate::diffusion::expect_family(dir, DecompRunConfig::FAMILY.name)?;
    DecompTrained::load(dir, &crate::device()).map_err(|e| {
        let text = e.to_string();
        usage(format!(
            "{}: {}",
            dir.display(),
            text.lines().next().unwrap_or_default()
        ))
    })
}

fn load_image(path: &Path, run: &DecompTrained) -> Result<Tensor> {
    load_rgb_png(path, run.config.decomp.image_size, &crate::device())
        .map_err(|e| usage(e.to_string()))
}

pub fn run_decompose(a: DecomposeArgs, memory: MemoryLimit) -> Result<()> {
    let steps = positive("steps", a.steps, 1)?;
    check_memory(
        memory,
        format_args!("decomposing with {}", a.checkpoint.display()),
        run_estimate(&a.checkpoint)?,
    )?;
    let run = load_run(&a.checkpoint)?;
    let x = load_image(&a.image, &run)?;
    let started = std::time::Instant::now();
    let model = &run.model;
    let k = model.components();
    let (recon, singles) = render::decompose(model, &run.schedule, &x, steps, &mut seeded(a.seed))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    save_png_image(
        &recon.get(0)?,
        ValueRange::ZeroOne,
        &a.out.join("reconstruction.png"),
    )?;
    for i in 0..k {
        save_png_image(
            &singles.get(i)?,
            ValueRange::ZeroOne,
            &a.out.join(format!("factor_{i}.png")),
        )?;
    }
    let grid = Tensor::cat(&[&x, &recon, &singles], 0)?;
    save_png_grid(&grid, ValueRange::ZeroOne, k + 2, &a.out.join("grid.png"))?;
    let mse = (&recon - &x)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
    outln!(
        "decomposed {} into {k} factors in {:.2} s ({steps} DDIM steps); reconstruction MSE {mse:.5}; wrote {}",
        a.image.display(),
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

fn parse_mask(text: &str, k: usize) -> Result<Vec<bool>> {
    let mask = text
        .split(',')
        .map(|t| match t.trim() {
            "1" => Ok(true),
            "0" => Ok(false),
            other => Err(usage(format!(
                "--mask takes 0/1 per factor separated by commas (like 1,0,1), got `{other}`"
            ))),
        })
        .collect::<Result<Vec<bool>>>()?;
    if mask.len() != k {
        return Err(usage(format!(
            "--mask has {} entries but the model has K = {k} factors",
            mask.len()
        )));
    }
    Ok(mask)
}

pub fn run_recombine(a: RecombineArgs, memory: MemoryLimit) -> Result<()> {
    let steps = positive("steps", a.steps, 1)?;
    let add = match a.mode.as_str() {
        "slice" => false,
        "add" => true,
        other => return Err(usage(format!("--mode is slice or add, got `{other}`"))),
    };
    let mut estimate = run_estimate(&a.checkpoint)?;
    if let Some(dir) = &a.checkpoint2 {
        estimate += run_estimate(dir)?;
    }
    check_memory(
        memory,
        format_args!("recombining with {}", a.checkpoint.display()),
        estimate,
    )?;
    let run1 = load_run(&a.checkpoint)?;
    let run2 = match &a.checkpoint2 {
        Some(dir) => Some(load_run(dir)?),
        None => None,
    };
    let second = run2.as_ref().unwrap_or(&run1);
    let (k1, k2) = (run1.model.components(), second.model.components());
    if !add && k1 != k2 {
        return Err(usage(format!(
            "the models have K = {k1} and K = {k2} factors; slicing needs the same K"
        )));
    }
    let (s1, s2) = (
        run1.config.decomp.image_size,
        second.config.decomp.image_size,
    );
    if s1 != s2 {
        return Err(usage(format!(
            "the models make {s1}×{s1} and {s2}×{s2} images; recombining needs one size"
        )));
    }
    let mask = match &a.mask {
        Some(text) => parse_mask(text, k2)?,
        None if add => vec![true; k2],
        None => return Err(usage("--mode slice needs --mask (one 0/1 per factor)")),
    };
    let xa = load_image(&a.a, &run1)?;
    let xb = load_image(&a.b, second)?;
    let za = run1.model.encode(&xa, false)?;
    let zb = second.model.encode(&xb, false)?;
    let fa = render::factors(&run1.model, &za)?;
    let fb = render::factors(&second.model, &zb)?;
    let mix = if add {
        render::add(fa, fb, &mask)?
    } else {
        render::slice(fa, fb, &mask)?
    };
    let mut rng = seeded(a.seed);
    let img = render::render(
        &mix,
        &run1.schedule,
        &[1, 3, s1, s1],
        steps,
        &crate::device(),
        &mut rng,
    )?;
    save_png_image(&img.get(0)?, ValueRange::ZeroOne, &a.out)?;
    outln!(
        "recombined {} factors ({}) into {}",
        mix.len(),
        a.mode,
        a.out.display()
    );
    Ok(())
}
