//! `recompose train` and `recompose sample`: training diffusion models from a TOML configuration
//! or a named preset, and sampling from what they wrote.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use recompose_compose::{GuidedPrompts, PromptModel};
use recompose_decomp_diffusion::DecompRunConfig;
use recompose_diffusion::data::ValueRange;
use recompose_diffusion::data::plot::{ScatterConfig, save_png_grid, save_png_scatter};
use recompose_diffusion::run::{Registry, RunConfig, Trained};
use recompose_diffusion::train::{TrainOptions, TrainReport};
use recompose_diffusion::{Sampler, SamplerConfig, SamplerKind, seeded};

use recompose_core::memory::MemoryLimit;

use crate::{check_memory, positive, usage};

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
    /// Data-parallel training over NCCL, one process per GPU (builds with the `nccl` feature):
    /// this process is rank $RANK of $WORLD_SIZE, on the GPU of --device (give each process
    /// its own, e.g. `--device cuda:$LOCAL_RANK`); rank 0 writes the group's id to ID_FILE
    /// (a fresh path for every launch, on a filesystem all ranks see) and alone writes --out.
    #[arg(long, value_name = "ID_FILE")]
    data_parallel: Option<PathBuf>,
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
    /// The prompt of a text-conditioned model, e.g. "red circle top left" (default: the empty
    /// prompt, the unconditional model).
    #[arg(long)]
    prompt: Option<String>,
    /// Classifier-free guidance scale γ of the prompt: y_∅ + γ (y_prompt − y_∅).
    #[arg(long, allow_negative_numbers = true)]
    guidance: Option<f64>,
    /// An expert network of the text-conditioned model, as DIR@T: the run in DIR (trained on
    /// the noisy levels, `[train] timesteps = { kind = "range", min = T, … }`) replaces the
    /// model's own network from training timestep T up to the next expert's (eDiff-I's expert
    /// denoisers). Repeat for several bands.
    #[arg(long = "expert", value_name = "DIR@T")]
    experts: Vec<String>,
}

/// The guidance scale of `sample --prompt` when none is given.
const DEFAULT_GUIDANCE: f64 = 4.0;

/// Every family of training runs the CLI knows: this workspace's denoisers and Decomp Diffusion.
/// Refuses a run directory whose saved configuration belongs to another family of runs than
/// `want` (a Decomp Diffusion run given to `sample`, a denoiser run given to `decompose`),
/// naming the kind it is and the commands that take it. Directories without a readable
/// configuration are left to the loader, which says what is missing.
pub(crate) fn expect_family(dir: &Path, want: &str) -> Result<()> {
    let Ok(run) = registry()?.from_file(&dir.join("config.toml")) else {
        return Ok(());
    };
    let (kind, commands) = match run.family() {
        f if f == want => return Ok(()),
        "decomp" => (
            "a Decomp Diffusion checkpoint",
            "`recompose decompose` and `recompose recombine`",
        ),
        "denoiser" => (
            "a denoiser checkpoint",
            "`recompose sample` and `recompose compose`",
        ),
        other => {
            return Err(usage(format!(
                "{} is a checkpoint of the `{other}` runs, not of the `{want}` runs",
                dir.display()
            )));
        }
    };
    Err(usage(format!(
        "{} is {kind}; {commands} take it",
        dir.display()
    )))
}

pub(crate) fn registry() -> Result<Registry> {
    Ok(Registry::new().with(DecompRunConfig::FAMILY)?)
}

pub fn run_train(a: TrainArgs, memory: MemoryLimit) -> Result<()> {
    let registry = registry()?;
    let mut run = match (&a.preset, &a.config) {
        (Some(p), None) => registry.preset(p).map_err(|e| usage(e.to_string()))?,
        (None, Some(path)) => registry.from_file(path).map_err(|e| usage(e.to_string()))?,
        (None, None) if a.resume => {
            let saved = a.out.join("config.toml");
            registry.from_file(&saved).with_context(|| {
                format!(
                    "--resume without --preset/--config reads {}",
                    saved.display()
                )
            })?
        }
        (None, None) => {
            return Err(usage(format!(
                "give --preset NAME ({}) or --config FILE.toml",
                registry.preset_names().join(", ")
            )));
        }
        (Some(_), Some(_)) => return Err(usage("--preset and --config exclude each other")),
    };
    if let Some(s) = a.steps {
        run.train_config_mut().steps = positive("steps", s, 1)?;
    }
    if let Some(seed) = a.seed {
        run.train_config_mut().seed = seed;
    }
    if let Some(form) = &a.energy {
        let form = form
            .parse()
            .map_err(|e: recompose_diffusion::Error| usage(format!("--energy: {e}")))?;
        run.set_energy(form)
            .map_err(|e| usage(format!("--energy: {e}")))?;
    }
    run.validate().map_err(|e| usage(e.to_string()))?;
    check_memory(
        memory,
        format_args!(
            "training a {} run on batches of {}",
            run.family(),
            run.train_config().batch_size
        ),
        run.memory_estimate(),
    )?;
    let device = crate::device();
    let opts = TrainOptions {
        out_dir: a.out.clone(),
        resume: a.resume,
        revision: Some(env!("RECOMPOSE_REVISION").to_string()),
        max_memory: Some(memory),
        parallel: match &a.data_parallel {
            Some(id_file) => Some(join_group(&device, id_file)?),
            None => None,
        },
        ..Default::default()
    };
    let bar = crate::progress_bar(run.train_config().steps as u64, a.quiet);
    let report = run.train(&opts, &device, &mut |p| {
        bar.set_position(p.step as u64);
        if p.step % 10 == 0 {
            bar.set_message(format!("loss {:.4}", p.recent_loss));
        }
    });
    bar.finish_and_clear();
    print_report(&report?, &a.out)
}

/// This process's data-parallel group over NCCL (`--data-parallel`).
#[cfg(feature = "nccl")]
fn join_group(
    device: &candle_core::Device,
    id_file: &Path,
) -> Result<std::sync::Arc<dyn recompose_core::collective::Collective>> {
    if !device.is_cuda() {
        return Err(usage(
            "--data-parallel trains on GPUs: give --device cuda:N (each process its own)",
        ));
    }
    let group = recompose_core::collective::Nccl::join(device, id_file)
        .map_err(|e| usage(format!("--data-parallel: {e}")))?;
    Ok(std::sync::Arc::new(group))
}

/// `--data-parallel` in a build without NCCL: refused.
#[cfg(not(feature = "nccl"))]
fn join_group(
    _: &candle_core::Device,
    _: &Path,
) -> Result<std::sync::Arc<dyn recompose_core::collective::Collective>> {
    Err(usage(
        "--data-parallel: this recompose was built without NCCL (build it with \
         `--features nccl`, which needs CUDA)",
    ))
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

/// The format of a sample file `--out` asks for (by its extension), checked before any
/// sampling: a missing folder is refused up front, not after minutes of work.
pub(crate) fn out_kind(path: &Path) -> Result<OutKind> {
    let kind = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => OutKind::Csv,
        Some("png") => OutKind::Png,
        _ => {
            return Err(usage(format!(
                "--out must end in .csv or .png, got '{}'",
                path.display()
            )));
        }
    };
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !folder.is_dir()
    {
        return Err(usage(format!(
            "--out {}: the folder {} does not exist",
            path.display(),
            folder.display()
        )));
    }
    Ok(kind)
}

pub fn run_sample(a: SampleArgs, memory: MemoryLimit) -> Result<()> {
    let num = positive("num", a.num, 1)?;
    let kind = out_kind(&a.out)?;
    let sampler_kind: SamplerKind = a.sampler.parse().map_err(|_| {
        usage(format!(
            "--sampler must be ddpm, ddim, sde or ode, got '{}'",
            a.sampler
        ))
    })?;
    expect_family(&a.checkpoint, RunConfig::FAMILY.name)?;
    // Checked from the saved configuration, before the weights are read.
    let saved = RunConfig::from_file(&a.checkpoint.join("config.toml"))?;
    let text = saved.is_text_conditioned();
    if !text && (a.prompt.is_some() || a.guidance.is_some() || !a.experts.is_empty()) {
        return Err(usage(format!(
            "--prompt, --guidance and --expert need a text-conditioned model; {} is not one",
            a.checkpoint.display()
        )));
    }
    let mut experts = Vec::with_capacity(a.experts.len());
    let mut expert_params = recompose_core::memory::Estimate::ZERO;
    for e in &a.experts {
        let (t, dir) = recompose_compose::experts::parse_expert(e)
            .map_err(|err| usage(format!("--expert: {err}")))?;
        expect_family(&dir, RunConfig::FAMILY.name)?;
        let c = RunConfig::from_file(&dir.join("config.toml"))?;
        if !c.is_text_conditioned() {
            return Err(usage(format!(
                "--expert: {} is not a text-conditioned model",
                dir.display()
            )));
        }
        expert_params += c.model.param_bytes();
        experts.push((t, dir));
    }
    let guidance = a.guidance.unwrap_or(DEFAULT_GUIDANCE);
    if !(guidance.is_finite() && guidance >= 0.0) {
        return Err(usage(format!(
            "--guidance must be finite and non-negative, got {guidance}"
        )));
    }
    let item: usize = saved.model_item_shape().iter().product();
    check_memory(
        memory,
        format_args!("drawing {num} samples"),
        recompose_diffusion::memory::sample_estimate(
            // The experts' weights are held beside the model's own.
            saved.model.param_bytes() + expert_params,
            saved.activation_bytes(),
            item,
            num,
            // A guided prompt evaluates the doubled batch.
            sample_chunk(&saved) * if text { 2 } else { 1 },
        ),
    )?;
    let device = crate::device();
    // A text-conditioned model (with its experts) samples through its guided prompt; any
    // other through its own network.
    let (denoiser, schedule): (Box<dyn recompose_diffusion::Denoiser>, _) = if text {
        let list: Vec<(usize, &Path)> = experts.iter().map(|(t, d)| (*t, d.as_path())).collect();
        let bad_input = |e: recompose_compose::Error, what: &str| {
            if e.is_bad_input() {
                usage(format!("{what}{e}"))
            } else {
                e.into()
            }
        };
        let model = PromptModel::load_with_experts("model", &a.checkpoint, &list, &device)
            .map_err(|e| bad_input(e, ""))?;
        let guided = match a.prompt.as_deref() {
            Some(p) => GuidedPrompts::new(&model, &[(guidance, p)]),
            None => GuidedPrompts::unconditional(&model),
        }
        .map_err(|e| bad_input(e, "--prompt: "))?;
        (Box::new(guided), model.schedule)
    } else {
        let trained = Trained::load(&a.checkpoint, &device)?;
        (Box::new(trained.model), trained.schedule)
    };
    let t_max = schedule.len();
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
    let item = saved.model_item_shape();
    let image = item.len() == 3;
    if image && matches!(kind, OutKind::Csv) {
        return Err(usage("an image model writes a .png grid, not .csv"));
    }
    let range = saved.value_range();
    let mut config = SamplerConfig::new(sampler_kind);
    if image {
        let (lo, hi) = range.bounds();
        config = config.with_clip_x0(f64::from(hi.abs().max(lo.abs())));
    }
    let sampler = Sampler::new(schedule, config)?;
    let mut rng = seeded(a.seed);
    let chunk = sample_chunk(&saved);
    let mut parts = Vec::new();
    let mut done = 0;
    while done < num {
        let n = chunk.min(num - done);
        let mut shape = vec![n];
        shape.extend(&item);
        parts.push(sampler.sample(&denoiser, &shape, steps, None, &device, &mut rng)?);
        done += n;
    }
    let x = candle_core::Tensor::cat(&parts, 0)?;
    write_samples(&x, range, kind, &a.out)?;
    let mut prompt = match (&a.prompt, text) {
        (Some(p), _) => format!(", prompt \"{p}\", guidance {guidance}"),
        (None, true) => ", unconditional".to_string(),
        (None, false) => String::new(),
    };
    if !experts.is_empty() {
        let from: Vec<String> = experts.iter().map(|(t, _)| t.to_string()).collect();
        prompt.push_str(&format!(", experts from timesteps {}", from.join(", ")));
    }
    outln!(
        "wrote {num} samples ({}, {steps} steps, seed {}{prompt}) to {}",
        a.sampler,
        a.seed,
        a.out.display()
    );
    Ok(())
}

/// Samples drawn per call of the sampler: 64 images or 4096 points.
fn sample_chunk(config: &RunConfig) -> usize {
    if config.model_item_shape().len() == 3 {
        64
    } else {
        4096
    }
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
