//! `recompose train` and `recompose sample`: training diffusion models from a TOML configuration
//! or a named preset, and sampling from what they wrote.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use recompose_decomp_diffusion::run::train_decomp;
use recompose_decomp_diffusion::{DECOMP_PRESET_NAMES, DecompRunConfig};
use recompose_diffusion::data::ValueRange;
use recompose_diffusion::data::plot::{ScatterConfig, save_png_grid, save_png_scatter};
use recompose_diffusion::run::{PRESET_NAMES, RunConfig, Trained, train_run};
use recompose_diffusion::train::{TrainOptions, TrainReport};
use recompose_diffusion::{DdpmVariance, Sampler, SamplerConfig, SamplerKind, seeded};

use crate::{positive, usage};

/// Arguments of `recompose train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A built-in configuration: toy2d-ring, toy2d-bar, toy2d-left-bar, toy2d-right-bar,
    /// toy2d-box-large, toy2d-box-small, or any of them with the suffix -energy (an energy
    /// model); decomp-tetrominoes, decomp-multi-sprites or decomp-falcor-lite (Decomp
    /// Diffusion).
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// A TOML configuration file (tables model, data, diffusion and train; or decomp, data and
    /// train for Decomp Diffusion).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory: model.safetensors (EMA weights), config.toml, checkpoint/, loss log.
    #[arg(long)]
    out: PathBuf,
    /// Number of optimizer steps (overrides the configuration).
    #[arg(long, allow_negative_numbers = true)]
    steps: Option<i64>,
    /// Seed of the initialization and of every random draw (overrides the configuration).
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in --out from its last checkpoint (exactly as if never interrupted).
    /// Without --preset/--config, the configuration saved in --out is used.
    #[arg(long)]
    resume: bool,
    /// Train an energy-parameterized model (ε̂ = ∇ₓE): squared_residual (E = ‖g − x‖², the
    /// default) or half_norm (E = ½‖g‖²). Needed for OR and for MALA / HMC in `compose`.
    #[arg(long, value_name = "FORM", num_args = 0..=1, default_missing_value = "squared_residual")]
    energy: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Arguments of `recompose sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A directory written by `recompose train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of samples.
    #[arg(long, allow_negative_numbers = true)]
    num: i64,
    /// Output file: .csv (2-D data, `x,y` header) or .png (scatter plot for 2-D data, image grid
    /// for image models).
    #[arg(long)]
    out: PathBuf,
    /// ddpm (ancestral), ddim (η = 0), sde (reverse SDE) or ode (probability flow, Heun).
    #[arg(long, default_value = "ddpm")]
    sampler: String,
    /// Number of sampler steps (default: every training step for ddpm and sde, 50 for ddim and
    /// ode, at most the training steps).
    #[arg(long, allow_negative_numbers = true)]
    steps: Option<i64>,
    /// Seed of the initial noise and of the sampler's draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Reads a configuration file for `recompose train`.
fn read_config(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))
}

/// The Decomp Diffusion run the arguments ask for, if they ask for one: a `decomp-*` preset or
/// a configuration with a `[decomp]` table (given, or saved in --out when resuming).
fn decomp_run(a: &TrainArgs) -> Result<Option<DecompRunConfig>> {
    let text = match (&a.preset, &a.config) {
        (Some(p), None) if p.starts_with("decomp-") => {
            return DecompRunConfig::preset(p)
                .map(Some)
                .map_err(|e| usage(e.to_string()));
        }
        (None, Some(path)) => read_config(path)?,
        (None, None) if a.resume && a.out.join("config.toml").is_file() => {
            read_config(&a.out.join("config.toml"))?
        }
        _ => return Ok(None),
    };
    if !DecompRunConfig::is_decomp_toml(&text) {
        return Ok(None);
    }
    DecompRunConfig::from_toml(&text)
        .map(Some)
        .map_err(|e| usage(e.to_string()))
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    if let Some(mut cfg) = decomp_run(&a)? {
        if a.energy.is_some() {
            return Err(usage(
                "--energy applies to the 2-D MLP models, not to Decomp Diffusion",
            ));
        }
        if let Some(s) = a.steps {
            cfg.train.steps = positive("steps", s, 1)?;
        }
        if let Some(seed) = a.seed {
            cfg.train.seed = seed;
        }
        cfg.validate().map_err(|e| usage(e.to_string()))?;
        let report = train_decomp(&cfg, &train_options(&a), &crate::device())?;
        return print_report(&report, &a.out);
    }
    let mut cfg = match (&a.preset, &a.config) {
        (Some(p), None) => RunConfig::preset(p).map_err(|e| usage(e.to_string()))?,
        (None, Some(path)) => RunConfig::from_file(path).map_err(|e| usage(e.to_string()))?,
        (None, None) if a.resume => {
            let saved = a.out.join("config.toml");
            RunConfig::from_file(&saved).with_context(|| {
                format!(
                    "--resume without --preset/--config reads {}",
                    saved.display()
                )
            })?
        }
        (None, None) => {
            return Err(usage(format!(
                "give --preset NAME ({}, {}) or --config FILE.toml",
                PRESET_NAMES.join(", "),
                DECOMP_PRESET_NAMES.join(", ")
            )));
        }
        (Some(_), Some(_)) => return Err(usage("--preset and --config exclude each other")),
    };
    if let Some(s) = a.steps {
        cfg.train.steps = positive("steps", s, 1)?;
    }
    if let Some(seed) = a.seed {
        cfg.train.seed = seed;
    }
    if let Some(form) = &a.energy {
        cfg.diffusion.energy = Some(
            form.parse()
                .map_err(|e: recompose_diffusion::Error| usage(format!("--energy: {e}")))?,
        );
    }
    cfg.validate().map_err(|e| usage(e.to_string()))?;
    let report = train_run(&cfg, &train_options(&a), &crate::device())?;
    print_report(&report, &a.out)
}

fn train_options(a: &TrainArgs) -> TrainOptions {
    TrainOptions {
        out_dir: a.out.clone(),
        resume: a.resume,
        progress: !a.quiet && std::io::stderr().is_terminal(),
        ..Default::default()
    }
}

fn print_report(report: &TrainReport, out: &Path) -> Result<()> {
    outln!(
        "trained steps {}..{} in {:.1} s ({:.1} steps/s); loss {:.5} (mean of the last 100: {:.5}); wrote {}",
        report.start_step,
        report.end_step,
        report.seconds,
        report.steps_per_second(),
        report.last_loss,
        report.recent_loss,
        out.join("model.safetensors").display()
    );
    Ok(())
}

pub(crate) enum OutKind {
    Csv,
    Png,
}

pub(crate) fn out_kind(path: &Path) -> Result<OutKind> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Ok(OutKind::Csv),
        Some("png") => Ok(OutKind::Png),
        _ => Err(usage(format!(
            "--out must end in .csv or .png, got '{}'",
            path.display()
        ))),
    }
}

pub fn run_sample(a: SampleArgs) -> Result<()> {
    let num = positive("num", a.num, 1)?;
    let kind = out_kind(&a.out)?;
    let sampler_kind = match a.sampler.as_str() {
        "ddpm" => SamplerKind::Ddpm(DdpmVariance::FixedSmall),
        "ddim" => SamplerKind::Ddim { eta: 0.0 },
        "sde" => SamplerKind::ReverseSde,
        "ode" => SamplerKind::OdeHeun,
        o => {
            return Err(usage(format!(
                "--sampler must be ddpm, ddim, sde or ode, got '{o}'"
            )));
        }
    };
    let device = crate::device();
    let trained = Trained::load(&a.checkpoint, &device)?;
    let t_max = trained.schedule.len();
    let steps = match a.steps {
        Some(s) => positive("steps", s, 1)?,
        None if matches!(
            sampler_kind,
            SamplerKind::Ddim { .. } | SamplerKind::OdeHeun
        ) =>
        {
            t_max.min(50)
        }
        None => t_max,
    };
    if steps > t_max {
        return Err(usage(format!(
            "--steps {steps} exceeds the model's {t_max} training steps"
        )));
    }
    let item = trained.config.model_item_shape();
    let image = item.len() == 3;
    if image && matches!(kind, OutKind::Csv) {
        return Err(usage("an image model writes a .png grid, not .csv"));
    }
    let range = trained.config.value_range();
    let mut config = SamplerConfig::new(sampler_kind);
    if image {
        let (lo, hi) = range.bounds();
        config = config.with_clip_x0(f64::from(hi.abs().max(lo.abs())));
    }
    let sampler = Sampler::new(trained.schedule.clone(), config)?;
    let mut rng = seeded(a.seed);
    let chunk = if image { 64 } else { 4096 };
    let mut parts = Vec::new();
    let mut done = 0;
    while done < num {
        let n = chunk.min(num - done);
        let mut shape = vec![n];
        shape.extend(&item);
        parts.push(sampler.sample(&trained.model, &shape, steps, None, &device, &mut rng)?);
        done += n;
    }
    let x = candle_core::Tensor::cat(&parts, 0)?;
    write_samples(&x, range, kind, &a.out)?;
    outln!(
        "wrote {num} samples ({}, {steps} steps, seed {}) to {}",
        a.sampler,
        a.seed,
        a.out.display()
    );
    Ok(())
}

/// Writes samples `[n, …]`: 2-D points as CSV or a scatter plot, images as a PNG grid.
pub(crate) fn write_samples(
    x: &candle_core::Tensor,
    range: ValueRange,
    kind: OutKind,
    out: &Path,
) -> Result<()> {
    let image = x.rank() == 4;
    match (image, kind) {
        (true, OutKind::Csv) => return Err(usage("an image model writes a .png grid, not .csv")),
        (true, OutKind::Png) => {
            let ncol = (x.dim(0)? as f64).sqrt().ceil() as usize;
            save_png_grid(x, range, ncol, out)?;
        }
        (false, OutKind::Csv) => write_csv(x, out)?,
        (false, OutKind::Png) => {
            let pts = points(x)?;
            save_png_scatter(&pts, &ScatterConfig::default(), out)?;
        }
    }
    Ok(())
}

fn points(x: &candle_core::Tensor) -> Result<Vec<[f64; 2]>> {
    let rows = x.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
    rows.into_iter()
        .map(|r| match r.as_slice() {
            [a, b] => Ok([*a, *b]),
            _ => anyhow::bail!(
                "a scatter plot needs 2-D samples, got {} coordinates",
                r.len()
            ),
        })
        .collect()
}

fn write_csv(x: &candle_core::Tensor, path: &Path) -> Result<()> {
    let pts = points(x)?;
    let mut text = String::from("x,y\n");
    for p in pts {
        text.push_str(&format!("{},{}\n", p[0], p[1]));
    }
    recompose_diffusion::train::write_atomic(path, text.as_bytes())?;
    Ok(())
}
