//! `cargo xtask reproduce decomposition`: Decomp Diffusion (Su et al., ICML 2024) on the
//! procedural datasets, with the paper's ablations at our scale.
//!
//! Models (all from the `decomp-*` presets: 32 px, 16 channels, attention in the middle block,
//! 15 000 steps at batch 32, Adam with warm-up and cosine decay, EMA 0.995; `--steps` and
//! `--batch` shorten every model but the fixture):
//!
//! - tetrominoes, x₀ prediction, K = 3, d = 16 — the main model (the repository's fixture
//!   `fixtures/decomp-tetrominoes` is used as is when its configuration is the preset's);
//! - tetrominoes, ε prediction, K = 3 (ablation: what the denoiser predicts);
//! - tetrominoes, x₀, K = 1 with d = 48 (ablation: one factor of the same total latent size);
//! - multi-sprites and sprites-night, x₀, K = 4 (the second object dataset and the second
//!   domain for cross-model recombination);
//! - Falcor-lite, x₀, K = 4, total latent size K·d ∈ {32, 64, 128} (ablation: latent size).
//!
//! Evaluation on held-out images (dataset seed 1; the models train on seed 0), DDIM with 50
//! steps, η = 0, x̂₀ clipped, seed 0:
//!
//! - reconstruction MSE / PSNR of the composition of an image's own factors;
//! - object isolation (object datasets): every factor rendered alone, its foreground (any
//!   channel more than 0.25 away from the scene's background: black for tetrominoes, the floor
//!   for the sprites) matched to the ground-truth object masks by the Hungarian algorithm on
//!   IoU; an object is isolated when its IoU is at least 0.5;
//! - recombination (K > 1): for image pairs (A, B) and every k, factor k of A is replaced by
//!   factor k of B; the expected image is A with A's object matched to k removed (its
//!   background shows) and B's object matched to k painted in; the object *follows* when the
//!   render is closer to the expected image than to A both on B's object's pixels and on the
//!   rest of A's object's pixels (a blank render fails the first, a copy of A the second);
//! - cross-domain recombination (Su et al. 2024, §3.3): the same check with A from
//!   multi-sprites and B from sprites-night, B's factor read by the sprites-night model and
//!   composed with the multi-sprites model's factors of A;
//! - MIG (20 bins) and MCC of the eval-mode latents of the whole Falcor-lite factor grid
//!   (5⁵ = 3125 images) against the five factor indices;
//! - training and sampling throughput next to the released PyTorch code (full runs, unless
//!   `--no-torch`): the training step and the composed prediction (one DDIM step) at the
//!   reference benchmark's configuration a, both sides as warm servers taking turns
//!   ([`crate::torch::interleaved_summaries`]).
//!
//! The full run writes `docs/results/decomposition.md`; `--only` runs write under
//! `target/reproduce-decomposition/partial/` unless `--report NAME` names a committed side
//! report, `docs/results/NAME.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use recompose_decomp_diffusion::datasets::{
    FALCOR_FACTORS, FALCOR_LEVELS, Kind, Scene, falcor_render, generate,
};
use recompose_decomp_diffusion::eval::{self, Matching};
use recompose_decomp_diffusion::render::{self, FactorMix};
use recompose_decomp_diffusion::run::train_decomp;
use recompose_decomp_diffusion::{DecompRunConfig, DecompTrained};
use recompose_diffusion::Parameterization;
use recompose_diffusion::data::ValueRange;
use recompose_diffusion::data::plot::save_png_grid;
use recompose_diffusion::seeded;
use recompose_diffusion::train::TrainOptions;
use serde_json::{Value, json};

/// Settings of `cargo xtask reproduce decomposition`.
pub struct DecompositionArgs {
    /// Two training steps per model and four evaluation images: checks the pipeline.
    pub quick: bool,
    /// Reuse trained models under target/ when their configuration is unchanged.
    pub reuse_models: bool,
    /// Training steps of every model (default: the presets').
    pub steps: Option<usize>,
    /// Training batch of every model (default: the presets').
    pub batch: Option<usize>,
    /// Held-out images to evaluate per object dataset.
    pub images: usize,
    /// Only these models (by key); the report then goes to
    /// `target/reproduce-decomposition/partial/` instead of `docs/results/` (unless `report`
    /// names it).
    pub only: Option<Vec<String>>,
    /// Write the report as `docs/results/NAME.md` with its images in `docs/results/NAME/`
    /// (a committed side report, e.g. a longer run of a few ablations).
    pub report: Option<String>,
    /// Leave out the throughput comparison with PyTorch (which full runs make otherwise).
    pub no_torch: bool,
}

impl DecompositionArgs {
    /// Parses `[--quick] [--reuse-models] [--steps N] [--batch N] [--images N] [--only KEY,…]
    /// [--report NAME] [--no-torch]`.
    pub fn parse(args: &[&str]) -> Result<Self> {
        let mut out = Self {
            quick: false,
            reuse_models: false,
            steps: None,
            batch: None,
            images: 32,
            only: None,
            report: None,
            no_torch: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match *a {
                "--quick" => out.quick = true,
                "--reuse-models" => out.reuse_models = true,
                "--no-torch" => out.no_torch = true,
                "--steps" | "--batch" | "--images" => {
                    let v: usize = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .filter(|&v| v > 0)
                        .with_context(|| format!("{a} takes a positive number"))?;
                    match *a {
                        "--steps" => out.steps = Some(v),
                        "--batch" => out.batch = Some(v),
                        _ => out.images = v,
                    }
                }
                "--only" => {
                    let keys = it
                        .next()
                        .context("--only takes model keys, comma-separated")?;
                    out.only = Some(keys.split(',').map(str::to_string).collect());
                }
                "--report" => {
                    let name = it.next().context("--report takes a file name")?;
                    let valid = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                    if !valid || *name == "decomposition" || name.starts_with('-') {
                        bail!(
                            "--report takes a new file name of lowercase letters, digits and '-' \
                             (not 'decomposition', the full report's), got '{name}'"
                        );
                    }
                    out.report = Some(name.to_string());
                }
                other => bail!(
                    "unknown option '{other}' (expected --quick, --reuse-models, --steps N, --batch N, --images N, --only KEY,…, --report NAME, --no-torch)"
                ),
            }
        }
        if out.quick {
            out.images = out.images.min(4);
        }
        Ok(out)
    }
}

impl DecompositionArgs {
    /// The options as written on the command line (empty for the defaults).
    fn flags(&self) -> String {
        let mut f = String::new();
        if self.quick {
            f.push_str(" --quick");
        }
        if let Some(s) = self.steps {
            f.push_str(&format!(" --steps {s}"));
        }
        if let Some(b) = self.batch {
            f.push_str(&format!(" --batch {b}"));
        }
        if self.images != 32 && !self.quick {
            f.push_str(&format!(" --images {}", self.images));
        }
        if let Some(only) = &self.only {
            f.push_str(&format!(" --only {}", only.join(",")));
        }
        if let Some(r) = &self.report {
            f.push_str(&format!(" --report {r}"));
        }
        if self.no_torch {
            f.push_str(" --no-torch");
        }
        if self.reuse_models {
            f.push_str(" --reuse-models");
        }
        f
    }

    /// Whether the run compares throughput with PyTorch: full runs (no `--only`, no `--quick`)
    /// unless `--no-torch`.
    fn compares_torch(&self) -> bool {
        !self.quick && self.only.is_none() && !self.no_torch
    }
}

/// The reference benchmark's configuration the throughput comparison runs at.
const THROUGHPUT_CONFIG: &str = "a-32px-32ch";

/// DDIM steps of the sampling run the throughput section prices.
const THROUGHPUT_DDIM: usize = 50;

/// The report section comparing training and sampling throughput with PyTorch, from the
/// interleaved summaries of the training step and the composed prediction (in that order).
fn throughput_section(
    train: &crate::torch::Summary,
    forward: &crate::torch::Summary,
    threads: usize,
) -> String {
    let row = |label: &str, m: &crate::torch::Summary, rate: &dyn Fn(f64) -> String| {
        format!(
            "| {label} | {:.1} | {:.1} | {} | {} | **{:.2}** ({:.2}–{:.2}) | {} of {} | {:.1e} |",
            m.rust_ms,
            m.torch_ms,
            rate(m.rust_ms),
            rate(m.torch_ms),
            m.median_ratio,
            m.min_ratio,
            m.max_ratio,
            m.wins,
            m.rounds,
            m.p
        )
    };
    let per_step = |ms: f64| format!("{:.1} img/s", 16.0 * 1e3 / ms);
    let per_run = |ms: f64| format!("{:.1} s", THROUGHPUT_DDIM as f64 * ms / 1e3);
    format!(
        "## Throughput next to the released PyTorch code\n\n\
         Measured in this run at the reference benchmark's configuration a (32 px, U-Net of 32 \
         channels, latent encoder of 64 channels with batch norm, K = 3 factors of d = 32, batch \
         16), float32 on the CPU with {threads} threads on both sides. The PyTorch models are \
         the released code's module tree (parameter counts asserted; `cargo xtask bench decomp` \
         and docs/results/decomp-bench.md have the other configurations). The two sides run as \
         warm servers and take turns of {} calls for {} rounds, the side going first \
         alternating, so that the machine's drift reaches both alike; times are medians over \
         all calls of a side, the ratio the median of the rounds' ratios, p the one-sided sign \
         test of the Rust side's wins.\n\n\
         | workload | Rust ms | PyTorch ms | Rust | PyTorch | PyTorch / Rust (range) | Rust faster | p |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n{}\n{}\n\n\
         Training: images per second at batch 16 (encoder in training mode, the 3 factors as 48 \
         denoiser images, x₀ loss, backward, Adam). Sampling: the composed prediction of 16 \
         images from their latents (48 denoiser images), one DDIM step; the throughput columns \
         give a {THROUGHPUT_DDIM}-step DDIM run of the 16 images.\n",
        crate::torch::STEPS_PER_TURN,
        train.rounds,
        row("training step", train, &per_step),
        row("composed prediction (one DDIM step)", forward, &per_run),
    )
}

/// DDIM steps of every render.
const DDIM_STEPS: usize = 50;
/// Foreground threshold of a factor render against the scene's background (any channel).
const FOREGROUND: f32 = 0.25;

/// The keys of the two sprite-domain models, recombined across domains.
const SPRITES: &str = "sprites-x0-k4";
const NIGHT: &str = "night-x0-k4";

struct Variant {
    key: &'static str,
    label: &'static str,
    cfg: DecompRunConfig,
}

fn variants(args: &DecompositionArgs) -> Result<Vec<Variant>> {
    let tet = DecompRunConfig::preset("decomp-tetrominoes")?;
    let falcor = DecompRunConfig::preset("decomp-falcor-lite")?;
    let sprites = DecompRunConfig::preset("decomp-multi-sprites")?;
    let mut night = sprites.clone();
    night.data.dataset = Kind::SpritesNight.name().to_string();
    let mut eps = tet.clone();
    eps.decomp.prediction = Parameterization::Epsilon;
    let mut one = tet.clone();
    one.decomp.num_components = 1;
    one.decomp.emb_dim = 2 * 3 * tet.decomp.latent_dim();
    let falcor_size = |total: usize| {
        let mut c = falcor.clone();
        c.decomp.emb_dim = 2 * total / c.decomp.num_components;
        c
    };
    let mut out = vec![
        Variant {
            key: "tetrominoes-x0-k3",
            label: "tetrominoes, x₀, K = 3 (main)",
            cfg: tet,
        },
        Variant {
            key: "tetrominoes-eps-k3",
            label: "tetrominoes, ε, K = 3",
            cfg: eps,
        },
        Variant {
            key: "tetrominoes-x0-k1",
            label: "tetrominoes, x₀, K = 1 (d = 48)",
            cfg: one,
        },
        Variant {
            key: SPRITES,
            label: "multi-sprites, x₀, K = 4",
            cfg: sprites,
        },
        Variant {
            key: NIGHT,
            label: "sprites-night, x₀, K = 4",
            cfg: night,
        },
        Variant {
            key: "falcor-kd32",
            label: "Falcor-lite, K·d = 32",
            cfg: falcor_size(32),
        },
        Variant {
            key: "falcor-kd64",
            label: "Falcor-lite, K·d = 64",
            cfg: falcor_size(64),
        },
        Variant {
            key: "falcor-kd128",
            label: "Falcor-lite, K·d = 128",
            cfg: falcor_size(128),
        },
    ];
    if let Some(only) = &args.only {
        let known: Vec<&str> = out
            .iter()
            .map(|v| v.key)
            .chain(["tetrominoes-fixture"])
            .collect();
        if let Some(bad) = only.iter().find(|k| !known.contains(&k.as_str())) {
            bail!("unknown model '{bad}' (models: {})", known.join(", "));
        }
    }
    let fixture_cfg = out[0].cfg.clone();
    for v in &mut out {
        if let Some(s) = args.steps {
            // The warm-up keeps its share of the run.
            let t = &mut v.cfg.train;
            t.warmup_steps = scaled_warmup(t.warmup_steps, t.steps, s);
            t.steps = s;
        }
        if let Some(b) = args.batch {
            v.cfg.train.batch_size = b;
        }
        if args.quick {
            v.cfg.train.steps = 2;
            v.cfg.train.batch_size = 2;
        }
        v.cfg.train.checkpoint_every = v.cfg.train.checkpoint_every.min(v.cfg.train.steps);
    }
    // With a shorter budget the ablations are compared among themselves; the full-length
    // fixture model is evaluated alongside (and whenever `--only` names it).
    let fixture_named = args
        .only
        .as_ref()
        .is_some_and(|o| o.iter().any(|k| k == "tetrominoes-fixture"));
    if ((args.steps.is_some() || args.batch.is_some()) && !args.quick) || fixture_named {
        out.push(Variant {
            key: "tetrominoes-fixture",
            label: "tetrominoes, x₀, K = 3, fixtures/decomp-tetrominoes",
            cfg: fixture_cfg,
        });
    }
    if let Some(only) = &args.only {
        out.retain(|v| only.iter().any(|k| k == v.key));
    }
    Ok(out)
}

/// The warm-up of a `warmup`-step schedule over `steps` steps, rescaled to `new_steps` so
/// that it keeps its share of the run (rounded to the nearest step).
fn scaled_warmup(warmup: usize, steps: usize, new_steps: usize) -> usize {
    (warmup * new_steps + steps / 2) / steps.max(1)
}

/// Trains (or reuses) one model; returns its directory and training throughput.
fn train(root: &Path, work: &Path, v: &Variant, reuse: bool) -> Result<(PathBuf, Value)> {
    let text = v.cfg.to_toml()?;
    let same = |dir: &Path| {
        dir.join("model.safetensors").exists()
            && std::fs::read_to_string(dir.join("config.toml"))
                .ok()
                .as_deref()
                == Some(text.as_str())
    };
    let fixture = root.join("fixtures/decomp-tetrominoes");
    if v.key == "tetrominoes-fixture" && !same(&fixture) {
        bail!(
            "{} does not hold the decomp-tetrominoes preset's model; run `cargo xtask fixtures decomp`",
            fixture.display()
        );
    }
    if (v.key == "tetrominoes-x0-k3" || v.key == "tetrominoes-fixture") && same(&fixture) {
        let timing = std::fs::read_to_string(fixture.join("timing.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        eprintln!("{}: the repository's fixture", v.key);
        return Ok((fixture, timing));
    }
    let dir = work.join(v.key);
    let timing_path = dir.join("timing.json");
    if reuse && same(&dir) {
        eprintln!("{}: reusing {}", v.key, dir.display());
        // A model trained or resumed by `recompose train` has no timing record; its
        // throughput is then reported as unknown.
        let timing = match std::fs::read_to_string(&timing_path) {
            Ok(t) => serde_json::from_str(&t)?,
            Err(_) => Value::Null,
        };
        return Ok((dir, timing));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let opts = TrainOptions {
        out_dir: dir.clone(),
        revision: Some(crate::workspace::revision()),
        ..Default::default()
    };
    let report = train_decomp(&v.cfg, &opts, &Device::Cpu, &mut |_| {})
        .with_context(|| format!("training {}", v.key))?;
    let timing = json!({
        "seconds": report.seconds,
        "steps_per_second": report.steps_per_second(),
        "images_per_second": report.steps_per_second() * v.cfg.train.batch_size as f64,
        "final_loss": report.recent_loss,
    });
    std::fs::write(&timing_path, timing.to_string())?;
    eprintln!(
        "{}: trained {} steps in {:.0} s (loss {:.4})",
        v.key, v.cfg.train.steps, report.seconds, report.recent_loss
    );
    Ok((dir, timing))
}

/// Held-out scenes of a dataset as one batch `[N, 3, 32, 32]`.
fn scenes(kind: Kind, n: usize) -> Result<(Tensor, Vec<Scene>)> {
    let scenes: Vec<_> = (0..n as u64).map(|i| generate(kind, 1, i)).collect();
    let pixels: Vec<f32> = scenes.iter().flat_map(|s| s.image.clone()).collect();
    Ok((
        Tensor::from_vec(pixels, (n, 3, 32, 32), &Device::Cpu)?,
        scenes,
    ))
}

fn rows(x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let n = x.dim(0)?;
    (0..n)
        .map(|i| Ok(x.get(i)?.flatten_all()?.to_vec1::<f32>()?))
        .collect()
}

/// Objects matched to factors; with fewer factors than objects, factors are matched to
/// objects instead (at most K objects can then be isolated). Returns the matching from each
/// factor's side: `factor_object[k]` is the object of factor k, if any.
fn isolate(objects: &[Vec<bool>], factors: &[Vec<bool>]) -> Result<(Matching, Vec<Option<usize>>)> {
    if objects.len() <= factors.len() {
        let m = eval::match_objects(objects, factors)?;
        let mut of = vec![None; factors.len()];
        for (o, &k) in m.factor.iter().enumerate() {
            of[k] = Some(o);
        }
        Ok((m, of))
    } else {
        let m = eval::match_objects(factors, objects)?;
        let of = m.factor.iter().map(|&o| Some(o)).collect();
        Ok((m, of))
    }
}

/// Held-out images of an object dataset and what a model's decomposition found in them.
struct Decomposed {
    /// The images, `[N, 3, 32, 32]`.
    x: Tensor,
    /// Their eval-mode latents, `[N, K·d]`.
    z: Tensor,
    /// The images as rows.
    xs: Vec<Vec<f32>>,
    /// Their ground truth.
    scenes: Vec<Scene>,
    /// `factor_objects[i][k]`: the object of image i matched to factor k, if any.
    factor_objects: Vec<Vec<Option<usize>>>,
}

/// Swapped-factor checks: how many followed, how many were checked, mean MSE to the expected
/// image and to A on the two objects' pixels.
type Follows = (usize, usize, f64, f64);

pub(crate) struct ObjectEval {
    pub(crate) mse: f64,
    pub(crate) isolated: usize,
    pub(crate) objects: usize,
    pub(crate) mean_iou: f64,
    pub(crate) object_mse: f64,
    follows: Option<Follows>,
    seconds_per_image: f64,
    grid: Tensor,
    recombination_grid: Option<Tensor>,
    decomposed: Decomposed,
}

/// A trained model's decomposition of `n` held-out images of `kind` (dataset seed 1), against
/// their ground truth: reconstruction, isolated objects, IoU, recombination.
pub(crate) fn eval_objects(run: &DecompTrained, kind: Kind, n: usize) -> Result<ObjectEval> {
    let model = &run.model;
    let k = model.components();
    let (x, scenes) = scenes(kind, n)?;
    let started = Instant::now();
    let (recon, singles) = render::decompose(model, &run.schedule, &x, DDIM_STEPS, &mut seeded(0))?;
    let seconds_per_image = started.elapsed().as_secs_f64() / n as f64;
    let (xs, rs, fs) = (rows(&x)?, rows(&recon)?, rows(&singles)?);
    let mut mse = 0.0;
    let (mut isolated, mut object_count, mut iou_sum, mut obj_mse) = (0, 0, 0.0, 0.0);
    let mut factor_objects = Vec::new();
    for i in 0..n {
        mse += eval::mse(&rs[i], &xs[i])? / n as f64;
        let background = &scenes[i].background;
        let masks: Vec<Vec<bool>> = (0..k)
            .map(|j| eval::foreground(&fs[i * k + j], background, FOREGROUND))
            .collect();
        let objects = &scenes[i].masks;
        let (m, of) = isolate(objects, &masks)?;
        isolated += m.isolated(0.5);
        object_count += objects.len();
        iou_sum += m.iou.iter().sum::<f64>();
        // Each matched pair: the factor render against the object alone on the background.
        for (j, o) in of.iter().enumerate() {
            if let Some(o) = *o {
                let alone: Vec<f32> = xs[i]
                    .iter()
                    .zip(background)
                    .enumerate()
                    .map(|(p, (&v, &b))| if objects[o][p % 1024] { v } else { b })
                    .collect();
                obj_mse += eval::mse(&fs[i * k + j], &alone)?;
            }
        }
        factor_objects.push(of);
    }
    let matched_pairs: usize = factor_objects
        .iter()
        .map(|of| of.iter().filter(|o| o.is_some()).count())
        .sum();
    // Grid: 4 images × (input, reconstruction, factors).
    let show = n.min(4);
    let mut tiles = Vec::new();
    for i in 0..show {
        tiles.push(x.get(i)?.unsqueeze(0)?);
        tiles.push(recon.get(i)?.unsqueeze(0)?);
        for j in 0..k {
            tiles.push(singles.get(i * k + j)?.unsqueeze(0)?);
        }
    }
    let grid = Tensor::cat(&tiles, 0)?;
    let decomposed = Decomposed {
        z: model.encode(&x, false)?,
        x,
        xs,
        scenes,
        factor_objects,
    };
    let (follows, recombination_grid) = if k > 1 && n >= 2 {
        let pairs: Vec<_> = (0..n / 2).map(|p| (2 * p, 2 * p + 1)).collect();
        let (f, g) = recombine((run, &decomposed), (run, &decomposed), &pairs)?;
        (Some(f), Some(g))
    } else {
        (None, None)
    };
    Ok(ObjectEval {
        mse,
        isolated,
        objects: object_count,
        mean_iou: iou_sum / object_count as f64,
        object_mse: obj_mse / matched_pairs.max(1) as f64,
        follows,
        seconds_per_image,
        grid,
        recombination_grid,
        decomposed,
    })
}

/// The recombination check (see the module documentation): for every pair `(i, j)` of
/// `pairs` and every k, image i of `a` with factor k replaced by factor k of image j of `b`
/// (read by `b`'s model: the same model within a domain, another one across domains).
/// Returns the counts and a grid of the first pairs.
fn recombine(
    (run_a, a): (&DecompTrained, &Decomposed),
    (run_b, b): (&DecompTrained, &Decomposed),
    pairs: &[(usize, usize)],
) -> Result<(Follows, Tensor)> {
    let k = run_a.model.components();
    let pick = |d: &Decomposed, side: fn(&(usize, usize)) -> usize| -> Result<Tensor> {
        let idx: Vec<u32> = pairs.iter().map(|p| side(p) as u32).collect();
        Ok(d.z.index_select(&Tensor::new(idx, &Device::Cpu)?, 0)?)
    };
    let (za, zb) = (pick(a, |p| p.0)?, pick(b, |p| p.1)?);
    // outs[j]: every pair with factor j swapped.
    let mut outs = Vec::with_capacity(k);
    for j in 0..k {
        let keep: Vec<bool> = (0..k).map(|i| i != j).collect();
        let mix = render::slice(
            render::factors(&run_a.model, &za)?,
            render::factors(&run_b.model, &zb)?,
            &keep,
        )?;
        outs.push(render::render(
            &mix,
            &run_a.schedule,
            &[pairs.len(), 3, 32, 32],
            DDIM_STEPS,
            &Device::Cpu,
            &mut seeded(1 + j as u64),
        )?);
    }
    let out_rows = outs.iter().map(rows).collect::<Result<Vec<_>>>()?;
    let (mut followed, mut checked, mut to_expected, mut to_a) = (0, 0, 0.0, 0.0);
    for (p, &(ia, ib)) in pairs.iter().enumerate() {
        for (j, out) in out_rows.iter().enumerate() {
            let (Some(oa), Some(ob)) = (a.factor_objects[ia][j], b.factor_objects[ib][j]) else {
                continue;
            };
            let (ma, mb) = (&a.scenes[ia].masks[oa], &b.scenes[ib].masks[ob]);
            let background = &a.scenes[ia].background;
            // Expected: A with its object gone (its background shows) and B's object painted
            // in; compared where that differs from A: the two objects' pixels. Both halves
            // must agree: B's object is there (closer to B than to A on its pixels) and A's
            // is gone (closer to the background than to A on the rest).
            let (mut want, mut was, mut got) = (Vec::new(), Vec::new(), Vec::new());
            let mut closer = [[0.0f64; 2]; 2];
            for (q, &v) in a.xs[ia].iter().enumerate() {
                let px = q % 1024;
                if !(ma[px] || mb[px]) {
                    continue;
                }
                let w = if mb[px] { b.xs[ib][q] } else { background[q] };
                let r = out[p][q];
                let half = &mut closer[usize::from(mb[px])];
                half[0] += f64::from((r - w) * (r - w));
                half[1] += f64::from((r - v) * (r - v));
                want.push(w);
                was.push(v);
                got.push(r);
            }
            let (e, s) = (eval::mse(&got, &want)?, eval::mse(&got, &was)?);
            followed += usize::from(closer.iter().all(|h| h[0] < h[1]));
            checked += 1;
            to_expected += e;
            to_a += s;
        }
    }
    let c = checked.max(1) as f64;
    let mut tiles = Vec::new();
    for (p, &(ia, ib)) in pairs.iter().take(3).enumerate() {
        tiles.push(a.x.get(ia)?.unsqueeze(0)?);
        tiles.push(b.x.get(ib)?.unsqueeze(0)?);
        for out in &outs {
            tiles.push(out.get(p)?.unsqueeze(0)?);
        }
    }
    Ok((
        (followed, checked, to_expected / c, to_a / c),
        Tensor::cat(&tiles, 0)?,
    ))
}

struct FactorEval {
    mig: f64,
    mcc: f64,
    mse: f64,
}

fn eval_falcor(run: &DecompTrained, quick: bool) -> Result<FactorEval> {
    let mut idx = Vec::new();
    let levels = if quick { 2 } else { FALCOR_LEVELS };
    let mut cur = [0usize; 5];
    loop {
        idx.push(cur);
        let mut f = 0;
        while f < 5 {
            cur[f] += 1;
            if cur[f] < levels {
                break;
            }
            cur[f] = 0;
            f += 1;
        }
        if f == 5 {
            break;
        }
    }
    let mut latents = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(256) {
        let pixels: Vec<f32> = chunk.iter().flat_map(|&i| falcor_render(i).image).collect();
        let x = Tensor::from_vec(pixels, (chunk.len(), 3, 32, 32), &Device::Cpu)?;
        let z = run
            .model
            .encode(&x, false)?
            .to_dtype(candle_core::DType::F64)?;
        latents.extend(z.to_vec2::<f64>()?);
    }
    let factors: Vec<Vec<usize>> = idx.iter().map(|i| i.to_vec()).collect();
    // Reconstruction of 8 held-out renders (the grid is the dataset itself, so these are the
    // seed-1 samples of the generator).
    let (x, _) = scenes(Kind::FalcorLite, if quick { 2 } else { 8 })?;
    let z = run.model.encode(&x, false)?;
    let recon = render::render(
        &FactorMix::new(render::factors(&run.model, &z)?)?,
        &run.schedule,
        x.dims(),
        DDIM_STEPS,
        &Device::Cpu,
        &mut seeded(0),
    )?;
    let mse = (recon - &x)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok(FactorEval {
        mig: eval::mig(&latents, &factors, 20)?,
        mcc: eval::mcc(&latents, &factors)?,
        mse,
    })
}

/// Runs the reproduction and writes `docs/results/decomposition.md`.
pub fn decomposition(root: &Path, args: &DecompositionArgs) -> Result<()> {
    let started = Instant::now();
    let work = root.join("target/reproduce-decomposition");
    std::fs::create_dir_all(&work)?;
    // A partial run must not replace the committed report.
    let (out_dir, stem) = match (&args.report, &args.only) {
        (Some(name), _) => (root.join("docs/results"), name.as_str()),
        (None, Some(_)) => (work.join("partial"), "decomposition"),
        (None, None) => (root.join("docs/results"), "decomposition"),
    };
    let img_dir = out_dir.join(stem);
    // Only this run's images (the README's example is written by `fixtures decomp`).
    if img_dir.exists() {
        for entry in std::fs::read_dir(&img_dir)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n != "readme-example.png") {
                std::fs::remove_file(path)?;
            }
        }
    }
    std::fs::create_dir_all(&img_dir)?;
    let mut md = String::new();
    let mut raw = Vec::new();
    // The throughput comparison first, before training and evaluation have filled this
    // process's heap and fragmented the machine's memory.
    let throughput = if args.compares_torch() {
        let s = crate::torch::interleaved_summaries(
            root,
            &[
                ("train-step", THROUGHPUT_CONFIG),
                ("forward", THROUGHPUT_CONFIG),
            ],
        )?;
        let threads = crate::torch::threads();
        raw.push(json!({
            "model": "throughput",
            "config": THROUGHPUT_CONFIG,
            "threads": threads,
            "workloads": s.iter().map(|(g, m)| json!({
                "group": g, "rust_ms": m.rust_ms, "torch_ms": m.torch_ms,
                "median_ratio": m.median_ratio, "wins": m.wins, "rounds": m.rounds, "p": m.p,
            })).collect::<Vec<_>>(),
        }));
        Some(throughput_section(&s[0].1, &s[1].1, threads))
    } else {
        None
    };
    let mut object_rows = Vec::new();
    let mut factor_rows = Vec::new();
    let mut train_rows = Vec::new();
    let mut image_rows = Vec::new();
    // The sprite-domain models with their decompositions, for the cross-domain check.
    let mut domains: Vec<(DecompTrained, Decomposed)> = Vec::new();
    for v in variants(args)? {
        let (dir, timing) = train(root, &work, &v, args.reuse_models)?;
        let run = DecompTrained::load(&dir, &Device::Cpu)?;
        // A timing the model's directory does not record is shown as "—".
        let field = |key: &str, digits: usize| {
            timing[key]
                .as_f64()
                .map_or("—".to_string(), |x| format!("{x:.digits$}"))
        };
        train_rows.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            v.label,
            v.cfg.train.steps,
            v.cfg.train.batch_size,
            field("seconds", 1),
            field("steps_per_second", 2),
            field("final_loss", 4),
            crate::workspace::provenance_text(&dir),
        ));
        let kind: Kind = v.cfg.data.dataset.parse()?;
        if kind != Kind::FalcorLite {
            let e = eval_objects(&run, kind, args.images)?;
            image_rows.push((v.key, v.label));
            save_png_grid(
                &e.grid,
                ValueRange::ZeroOne,
                run.model.components() + 2,
                &img_dir.join(format!("{}-decompositions.png", v.key)),
            )?;
            if let Some(g) = &e.recombination_grid {
                save_png_grid(
                    g,
                    ValueRange::ZeroOne,
                    run.model.components() + 2,
                    &img_dir.join(format!("{}-recombinations.png", v.key)),
                )?;
            }
            let follow = e.follows.map_or("—".to_string(), |(f, c, te, ta)| {
                format!(
                    "{f}/{c} ({:.0}%; on the two objects, MSE to expected {te:.4}, to A {ta:.4})",
                    100.0 * f as f64 / c.max(1) as f64
                )
            });
            object_rows.push(format!(
                "| {} | {:.5} | {:.2} | {}/{} ({:.1}%) | {:.3} | {:.4} | {} | {:.2} |",
                v.label,
                e.mse,
                eval::psnr(e.mse),
                e.isolated,
                e.objects,
                100.0 * e.isolated as f64 / e.objects as f64,
                e.mean_iou,
                e.object_mse,
                follow,
                e.seconds_per_image,
            ));
            raw.push(json!({
                "model": v.key, "steps": v.cfg.train.steps, "training": timing,
                "mse": e.mse, "psnr": eval::psnr(e.mse), "isolated": e.isolated,
                "objects": e.objects, "mean_iou": e.mean_iou, "object_mse": e.object_mse,
                "recombination": e.follows.map(|(f, c, te, ta)| json!({
                    "followed": f, "checked": c, "mse_expected": te, "mse_a": ta})),
                "seconds_per_image": e.seconds_per_image,
            }));
            if v.key == SPRITES || v.key == NIGHT {
                domains.push((run, e.decomposed));
            }
        } else {
            let e = eval_falcor(&run, args.quick)?;
            factor_rows.push(format!(
                "| {} | {:.3} | {:.3} | {:.5} |",
                v.label, e.mig, e.mcc, e.mse
            ));
            raw.push(json!({
                "model": v.key, "steps": v.cfg.train.steps, "training": timing,
                "mig": e.mig, "mcc": e.mcc, "mse": e.mse,
            }));
        }
        eprintln!(
            "{}: evaluated ({:.0} s so far)",
            v.key,
            started.elapsed().as_secs_f64()
        );
    }
    let cross = match domains.as_slice() {
        [(run_a, a), (run_b, b)] => {
            let pairs: Vec<_> = (0..args.images / 2).map(|i| (i, i)).collect();
            let (f, grid) = recombine((run_a, a), (run_b, b), &pairs)?;
            save_png_grid(
                &grid,
                ValueRange::ZeroOne,
                run_a.model.components() + 2,
                &img_dir.join("cross-domain-recombinations.png"),
            )?;
            raw.push(json!({
                "model": "cross-domain", "pairs": pairs.len(),
                "recombination": json!({
                    "followed": f.0, "checked": f.1, "mse_expected": f.2, "mse_a": f.3}),
            }));
            Some((pairs.len(), f))
        }
        _ => None,
    };
    // The presets' training recipe (the same for all three).
    let preset = DecompRunConfig::preset("decomp-tetrominoes")?.train;
    let _ = writeln!(
        md,
        "# Decomp Diffusion on procedural data\n\n\
         Generated by `cargo xtask reproduce decomposition{}` (do not edit by hand). Every \
         number but the timings is a deterministic function of the seeds.\n",
        args.flags()
    );
    let _ = writeln!(
        md,
        "## Setup\n\n\
         - Models: the `decomp-*` presets — U-Net of 16 channels, multipliers (1, 2), one \
         residual block per level, attention in the middle block, additive conditioning on \
         cat(z_k, t_emb); encoder of 16 channels; 32 px; cosine schedule over 1000 steps. Trained \
         with Adam (lr 10⁻³, warm-up over the first 13% of the steps, cosine decay to 2·10⁻⁵, clip 1), batch {}, EMA \
         0.995, seed 0, on the first 20 000 images of dataset seed 0. The paper trains 64 px \
         models of 64 channels for far longer; this is the CPU scale of the spec.\n\
         - Evaluation: {} held-out images per object dataset (dataset seed 1), DDIM 50 steps \
         (η = 0, x̂₀ clipped), sampling seed 0; foreground of a factor render = any channel more \
         than {FOREGROUND} from the scene's background (black for tetrominoes, the floor for the \
         sprites); an object is isolated when its Hungarian-matched IoU is at least 0.5. \
         Recombination: A with factor k taken from B (pairs of held-out images, every k); the \
         swapped object *follows* when the render is closer to the expected image (A's object \
         removed, B's painted in) than to A both on B's object's pixels and on the rest of A's \
         object's pixels; the MSEs are over the two objects' pixels. \
         Falcor-lite: eval-mode latents of all {} images of the factor grid ({}), MIG with 20 \
         bins per latent dimension, MCC = mean |Pearson| after matching factors to latent \
         dimensions.\n",
        args.batch.unwrap_or(preset.batch_size),
        args.images,
        FALCOR_LEVELS.pow(5),
        FALCOR_FACTORS.join(", ")
    );
    if let Some(steps) = args.steps {
        let _ = writeln!(
            md,
            "**Budget.** This report was made with `--steps {steps}`: the models trained for \
             {steps} steps instead of the presets' {} (the fixture, where listed, is the \
             presets' full run), so that all of them fit one sitting on two cores. At this length the models are early in training; \
             compare the ablations with each other, not with the paper.\n",
            preset.steps
        );
    }
    let _ = writeln!(
        md,
        "## Training\n\nTrained by: the source revisions that trained each model, with the step each \
         run started from (this report was made at revision {}).\n\n\
         | model | steps | batch | seconds | steps/s | final loss (mean of last 100) | trained by |\n\
         |---|---:|---:|---:|---:|---:|---|\n{}\n",
        crate::workspace::revision(),
        train_rows.join("\n")
    );
    if !object_rows.is_empty() {
        let _ = writeln!(
            md,
            "## Object datasets: reconstruction, object isolation, recombination\n\n\
             | model | MSE | PSNR dB | objects isolated (IoU ≥ 0.5) | mean matched IoU | factor vs object MSE | swapped object follows | s / image (recon + K factors) |\n\
             |---|---:|---:|---:|---:|---:|---|---:|\n{}\n",
            object_rows.join("\n")
        );
    }
    if let Some((pairs, (f, c, te, ta))) = cross {
        let _ = writeln!(
            md,
            "## Cross-domain recombination\n\n\
             A from multi-sprites, B from sprites-night ({pairs} held-out pairs × K = 4): factor \
             k of A replaced by factor k of B as read by the sprites-night model, composed with \
             the multi-sprites model's other factors of A (mean of the two models' x₀ \
             predictions). The swapped object follows in {f}/{c} checks ({:.0}%); on the two \
             objects' pixels, MSE to the expected image {te:.4}, to A {ta:.4}.\n\n\
             ![cross-domain recombinations]({stem}/cross-domain-recombinations.png)\n",
            100.0 * f as f64 / c.max(1) as f64
        );
    }
    if !factor_rows.is_empty() {
        let _ = writeln!(
            md,
            "## Falcor-lite: disentanglement by total latent size\n\n\
             | model | MIG | MCC | reconstruction MSE |\n|---|---:|---:|---:|\n{}\n\n\
             Published (Falcor3D, 64 px; MIG / MCC in %): K·d = 32 → 11.72 / 57.67; 64 → 26.45 / \
             80.42; 128 → 12.97 / 80.27.\n",
            factor_rows.join("\n")
        );
    }
    if let Some(section) = &throughput {
        let _ = writeln!(md, "{section}");
    }
    if !image_rows.is_empty() {
        let _ = writeln!(
            md,
            "## Images\n\n\
             Decompositions: each row is an input, its reconstruction and factors 0 … K−1 rendered \
             alone. Recombinations: each row is A, B, then A with factor k taken from B, k = 0 … K−1.\n"
        );
        for (key, label) in &image_rows {
            let _ = writeln!(
                md,
                "**{label}**\n\n![{key} decompositions]({stem}/{key}-decompositions.png)\n"
            );
            if img_dir.join(format!("{key}-recombinations.png")).exists() {
                let _ = writeln!(
                    md,
                    "![{key} recombinations]({stem}/{key}-recombinations.png)\n"
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "Total time of the command: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    let md_path = out_dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, md)?;
    std::fs::write(
        out_dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&json!({ "models": raw }))?,
    )?;
    eprintln!(
        "wrote {} in {:.0} s",
        md_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{DecompositionArgs, scaled_warmup, throughput_section};
    use crate::torch::Summary;

    #[test]
    fn report_names_a_new_file() -> anyhow::Result<()> {
        let args = DecompositionArgs::parse(&["--steps", "2000", "--report", "ablations-2000"])?;
        assert_eq!(args.report.as_deref(), Some("ablations-2000"));
        assert_eq!(args.flags(), " --steps 2000 --report ablations-2000");
        for bad in [
            &["--report"][..],
            &["--report", "decomposition"],
            &["--report", "Bad_Name"],
            &["--report", "../x"],
            &["--report", "--steps"],
        ] {
            assert!(DecompositionArgs::parse(bad).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn full_runs_compare_with_pytorch_unless_told_not_to() -> anyhow::Result<()> {
        assert!(DecompositionArgs::parse(&[])?.compares_torch());
        assert!(DecompositionArgs::parse(&["--steps", "150"])?.compares_torch());
        for no in [
            &["--no-torch"][..],
            &["--quick"],
            &["--only", "falcor-kd32"],
        ] {
            assert!(!DecompositionArgs::parse(no)?.compares_torch(), "{no:?}");
        }
        assert_eq!(
            DecompositionArgs::parse(&["--no-torch"])?.flags(),
            " --no-torch"
        );
        Ok(())
    }

    #[test]
    fn throughput_section_prices_steps_and_ddim_runs() {
        let summary = |rust_ms, torch_ms| Summary {
            median_ratio: 1.1,
            min_ratio: 0.9,
            max_ratio: 1.3,
            wins: 15,
            rounds: 20,
            p: 0.0207,
            rust_ms,
            torch_ms,
        };
        let s = throughput_section(&summary(1000.0, 1250.0), &summary(250.0, 300.0), 2);
        // 16 images per training step; 50 composed predictions per DDIM run.
        assert!(
            s.contains(
                "| training step | 1000.0 | 1250.0 | 16.0 img/s | 12.8 img/s | **1.10** (0.90–1.30) \
                 | 15 of 20 | 2.1e-2 |"
            ),
            "{s}"
        );
        assert!(
            s.contains("| composed prediction (one DDIM step) | 250.0 | 300.0 | 12.5 s | 15.0 s |"),
            "{s}"
        );
        assert!(s.contains("with 2 threads") && s.contains("turns of 3 calls for 20 rounds"));
    }

    #[test]
    fn warmup_keeps_its_share_rounded() {
        // 1333 of 10 000 steps is 13.33 %: 1999.5 → 2000 at 15 000 steps, 19.995 → 20 at 150;
        // 2000 of 15 000 is 1333.3 at 10 000.
        assert_eq!(scaled_warmup(1333, 10_000, 15_000), 2000);
        assert_eq!(scaled_warmup(1333, 10_000, 150), 20);
        assert_eq!(scaled_warmup(2000, 15_000, 10_000), 1333);
        assert_eq!(scaled_warmup(2000, 15_000, 15_000), 2000);
        assert_eq!(scaled_warmup(0, 10_000, 500), 0);
    }
}
