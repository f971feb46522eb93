//! `cargo xtask reproduce image-composition`: prompt algebra on a text-conditioned image model,
//! measured with the shapes-text checker (Du et al., *Reduce, Reuse, Recycle*, ICML 2023, §5.2
//! and Table 2, on our procedural stand-in for their CLEVR scenes; the protocol is Liu et al.,
//! *Composable Diffusion*, ECCV 2022, §4.1).
//!
//! The task writes a shapes-text dataset, trains a text-conditioned U-Net on it (score and,
//! unless `--no-energy`, energy parameterization; or takes trained run directories) and, unless
//! `--no-experts`, expert networks for bands of the noisier levels ([`expert_bands`]; eDiff-I's
//! expert denoisers, [`recompose_compose::LevelExperts`]), then composes prompts and judges
//! every sample. The full recipe's networks live in `fixtures/image-composition-full/`
//! (committed, so that `--reuse-models` samples without retraining); the networks train side by
//! side, and the (model, setting) groups of the evaluation run side by side, `--jobs` at a time
//! on one thread each. `--settings` and `--samplers` evaluate a part of the table.
//!
//! - **1, 2 and 3 ANDed prompts**: full captions of objects in distinct quadrants
//!   (`"red circle top left" AND "blue square bottom right"`); a sample counts when every
//!   caption is found (colour, shape and quadrant of one detected object).
//! - **NOT**: `"circle top left" NOT "red"` — the positive caption found and no object of the
//!   negated colour anywhere.
//!
//! Each condition set is drawn from a seeded generator; every sampler starts its chains from the
//! same noise for the same set, so the samplers differ only in how they move. Samplers: reverse
//! diffusion on the sampled levels, reverse diffusion on as many levels as the ULA sampler makes
//! model calls (capped at the training levels: R3's comparison at equal cost), and the annealed
//! ULA, U-HMC, MALA and HMC samplers with the paper's image settings
//! ([`AnnealConfig::paper_image`]); MALA and HMC need the energy model.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use rand::Rng;
use recompose_compose::experts::parse_expert;
use recompose_compose::prompt::{PromptModel, PromptModels};
use recompose_compose::{
    AnnealConfig, Component, Error as ComposeError, Kernel, Respaced, StepSize, anneal, build_with,
    parse,
};
use recompose_diffusion::data::plot::save_png_grid;
use recompose_diffusion::run::{RunConfig, TOKENIZER_FILE};
use recompose_diffusion::text::TextTokenizer;
use recompose_diffusion::{SeededRng, seeded};
use recompose_scenes::shapes_text::check::{self, AccuracyConfig};
use recompose_scenes::shapes_text::{self, Colour, Condition, Position, Shape, ShapesText};
use serde_json::json;

use crate::composition::Param;
use crate::runs::{Job, parallel, train_or_reuse};

/// The options of `reproduce image-composition`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCompositionArgs {
    /// A tiny dataset, model and evaluation: checks the pipeline in minutes, numbers
    /// meaningless; writes under target/ only.
    pub quick: bool,
    /// Reuse trained models whose configuration is unchanged and whose training finished;
    /// resume cut trainings from their last checkpoint.
    pub reuse_models: bool,
    /// Evaluate this trained score-parameterized run instead of training one.
    pub score: Option<PathBuf>,
    /// Evaluate this trained energy-parameterized run instead of training one.
    pub energy: Option<PathBuf>,
    /// Train and evaluate the score model only.
    pub no_energy: bool,
    /// Train and evaluate the models without expert networks.
    pub no_experts: bool,
    /// Expert networks of a given score run, (first training timestep, run directory).
    pub score_experts: Vec<(usize, PathBuf)>,
    /// Expert networks of a given energy run, (first training timestep, run directory).
    pub energy_experts: Vec<(usize, PathBuf)>,
    /// Training steps of each expert network (overrides the recipe).
    pub expert_steps: Option<usize>,
    /// Condition sets per setting.
    pub sets: usize,
    /// Chains (samples) per condition set.
    pub chains: usize,
    /// Noise levels sampled (of the model's 1000).
    pub levels: usize,
    /// Classifier-free guidance scale of every prompt.
    pub guidance: f64,
    /// Training steps (overrides the recipe).
    pub steps: Option<usize>,
    /// MCMC steps per level of every kernel (default: the paper's, 20 for ULA and MALA, 10
    /// for the Hamiltonian kernels).
    pub mcmc_steps: Option<usize>,
    /// Multiplies the step size of every kernel (each is a multiple of β_t: 2 for ULA, 0.035
    /// for MALA, 0.1 for the Hamiltonian kernels, the paper's settings).
    pub step_scale: Option<f64>,
    /// The fraction of the levels, the noisiest first, that run MCMC (default: the paper's
    /// noisier half, 0.5; 1 runs it on every level).
    pub mcmc_fraction: Option<f64>,
    /// Write the report under this name in docs/results (default `image-composition`).
    pub report: Option<String>,
    /// Trainings, and (model, setting) groups of sampling runs, at a time, each on one thread
    /// (`--jobs`, default 2).
    pub jobs: usize,
    /// The settings evaluated (`--settings and1,and2,and3,not`; default all).
    pub settings: Vec<String>,
    /// The samplers evaluated (`--samplers reverse,ula,reverse-equal,uhmc,mala,hmc`; default
    /// all; `reverse-equal` needs `ula`, whose model calls it matches).
    pub samplers: Vec<String>,
}

impl ImageCompositionArgs {
    /// Parses `[--quick] [--reuse-models] [--score DIR] [--energy DIR] [--no-energy]
    /// [--no-experts] [--score-expert DIR@T]… [--energy-expert DIR@T]… [--sets N] [--chains N]
    /// [--levels N] [--guidance G] [--steps N] [--expert-steps N] [--mcmc-steps K]
    /// [--step-scale S] [--mcmc-fraction F] [--report NAME] [--jobs N] [--settings LIST]
    /// [--samplers LIST]`.
    ///
    /// # Errors
    ///
    /// An unknown option or a value that is not valid for its option.
    pub fn parse(args: &[&str]) -> Result<Self> {
        use crate::workspace::{option_value, positive_option};
        let mut out = Self {
            quick: false,
            reuse_models: false,
            score: None,
            energy: None,
            no_energy: false,
            no_experts: false,
            score_experts: Vec::new(),
            energy_experts: Vec::new(),
            expert_steps: None,
            sets: 8,
            chains: 8,
            levels: 50,
            guidance: 4.0,
            steps: None,
            mcmc_steps: None,
            step_scale: None,
            mcmc_fraction: None,
            report: None,
            jobs: 2,
            settings: setting_keys(),
            samplers: sampler_keys(),
        };
        let mut it = args.iter();
        while let Some(&a) = it.next() {
            match a {
                "--quick" => out.quick = true,
                "--reuse-models" => out.reuse_models = true,
                "--no-energy" => out.no_energy = true,
                "--no-experts" => out.no_experts = true,
                "--score-expert" => out
                    .score_experts
                    .push(parse_expert(option_value(&mut it, a)?)?),
                "--energy-expert" => {
                    out.energy_experts
                        .push(parse_expert(option_value(&mut it, a)?)?);
                }
                "--expert-steps" => {
                    out.expert_steps = Some(positive_option(a, option_value(&mut it, a)?)?);
                }
                "--score" => out.score = Some(PathBuf::from(option_value(&mut it, a)?)),
                "--energy" => out.energy = Some(PathBuf::from(option_value(&mut it, a)?)),
                "--sets" => out.sets = positive_option(a, option_value(&mut it, a)?)?,
                "--chains" => out.chains = positive_option(a, option_value(&mut it, a)?)?,
                "--levels" => out.levels = positive_option(a, option_value(&mut it, a)?)?,
                "--steps" => out.steps = Some(positive_option(a, option_value(&mut it, a)?)?),
                "--mcmc-steps" => {
                    out.mcmc_steps = Some(positive_option(a, option_value(&mut it, a)?)?);
                }
                "--step-scale" => {
                    let v = option_value(&mut it, a)?;
                    out.step_scale = match v.parse::<f64>() {
                        Ok(s) if s.is_finite() && s > 0.0 => Some(s),
                        _ => bail!("--step-scale expects a positive number, got '{v}'"),
                    };
                }
                "--mcmc-fraction" => {
                    let v = option_value(&mut it, a)?;
                    out.mcmc_fraction = match v.parse::<f64>() {
                        Ok(f) if f > 0.0 && f <= 1.0 => Some(f),
                        _ => bail!("--mcmc-fraction expects a number in (0, 1], got '{v}'"),
                    };
                }
                "--report" => out.report = Some(option_value(&mut it, a)?.to_string()),
                "--jobs" => out.jobs = positive_option(a, option_value(&mut it, a)?)?,
                "--settings" => {
                    out.settings = list_option(a, option_value(&mut it, a)?, &setting_keys())?;
                }
                "--samplers" => {
                    out.samplers = list_option(a, option_value(&mut it, a)?, &sampler_keys())?;
                }
                "--guidance" => {
                    let v = option_value(&mut it, a)?;
                    out.guidance = match v.parse::<f64>() {
                        Ok(g) if g.is_finite() && g >= 0.0 => g,
                        _ => bail!("--guidance expects a non-negative number, got '{v}'"),
                    };
                }
                other => bail!(
                    "unknown option {other} (reproduce image-composition [--quick] \
                     [--reuse-models] [--score DIR] [--energy DIR] [--no-energy] [--no-experts] \
                     [--score-expert DIR@T]... [--energy-expert DIR@T]... [--sets N] [--chains N] \
                     [--levels N] [--guidance G] [--steps N] [--expert-steps N] [--mcmc-steps K] \
                     [--step-scale S] [--mcmc-fraction F] [--report NAME] [--jobs N] \
                     [--settings LIST] [--samplers LIST])"
                ),
            }
        }
        if out.samplers.iter().any(|s| s == "reverse-equal")
            && !out.samplers.iter().any(|s| s == "ula")
        {
            bail!("--samplers: reverse-equal matches the model calls of ula; name ula too");
        }
        if out.levels < 2 {
            bail!("--levels must be at least 2, got {}", out.levels);
        }
        if out.no_energy && (out.energy.is_some() || !out.energy_experts.is_empty()) {
            bail!("--no-energy contradicts --energy and --energy-expert");
        }
        for (flag, run, experts) in [
            ("--score-expert", &out.score, &out.score_experts),
            ("--energy-expert", &out.energy, &out.energy_experts),
        ] {
            if !experts.is_empty() && (run.is_none() || out.no_experts) {
                bail!(
                    "{flag} adds an expert to a given run ({}) and contradicts --no-experts",
                    flag.trim_end_matches("-expert")
                );
            }
        }
        if out.quick {
            out.sets = out.sets.min(2);
            out.chains = out.chains.min(2);
            out.levels = out.levels.min(10);
        }
        Ok(out)
    }

    /// The command line that reproduces a run with these options.
    pub fn command(&self) -> String {
        let mut c = String::from("cargo xtask reproduce image-composition");
        for (flag, on) in [
            ("--quick", self.quick),
            ("--reuse-models", self.reuse_models),
            ("--no-energy", self.no_energy),
            ("--no-experts", self.no_experts),
        ] {
            if on {
                let _ = write!(c, " {flag}");
            }
        }
        for (flag, dir) in [("--score", &self.score), ("--energy", &self.energy)] {
            if let Some(d) = dir {
                let _ = write!(c, " {flag} {}", d.display());
            }
        }
        for (flag, experts) in [
            ("--score-expert", &self.score_experts),
            ("--energy-expert", &self.energy_experts),
        ] {
            for (t, d) in experts {
                let _ = write!(c, " {flag} {}@{t}", d.display());
            }
        }
        let _ = write!(
            c,
            " --sets {} --chains {} --levels {} --guidance {}",
            self.sets, self.chains, self.levels, self.guidance
        );
        if let Some(s) = self.steps {
            let _ = write!(c, " --steps {s}");
        }
        if let Some(s) = self.expert_steps {
            let _ = write!(c, " --expert-steps {s}");
        }
        if let Some(k) = self.mcmc_steps {
            let _ = write!(c, " --mcmc-steps {k}");
        }
        if let Some(s) = self.step_scale {
            let _ = write!(c, " --step-scale {s}");
        }
        if let Some(f) = self.mcmc_fraction {
            let _ = write!(c, " --mcmc-fraction {f}");
        }
        if let Some(r) = &self.report {
            let _ = write!(c, " --report {r}");
        }
        let _ = write!(c, " --jobs {}", self.jobs);
        if self.settings != setting_keys() {
            let _ = write!(c, " --settings {}", self.settings.join(","));
        }
        if self.samplers != sampler_keys() {
            let _ = write!(c, " --samplers {}", self.samplers.join(","));
        }
        c
    }

    /// The run of `param` given on the command line (`--score` / `--energy`).
    fn given_run(&self, param: Param) -> Option<&PathBuf> {
        match param {
            Param::Score => self.score.as_ref(),
            Param::Energy => self.energy.as_ref(),
        }
    }

    /// The settings to evaluate, in the table's order.
    fn selected_settings(&self) -> Vec<Setting> {
        Setting::ALL
            .into_iter()
            .filter(|s| self.settings.contains(&s.key()))
            .collect()
    }

    /// The given expert networks of a given run of `param`.
    fn given_experts(&self, param: Param) -> &[(usize, PathBuf)] {
        match param {
            Param::Score => &self.score_experts,
            Param::Energy => &self.energy_experts,
        }
    }

    fn report_name(&self) -> &str {
        self.report.as_deref().unwrap_or("image-composition")
    }
}

/// The `--settings` names of every setting, in the table's order.
fn setting_keys() -> Vec<String> {
    Setting::ALL.iter().map(|s| s.key()).collect()
}

/// The `--samplers` names of every sampler, in the table's order.
fn sampler_keys() -> Vec<String> {
    SAMPLERS.iter().map(|s| s.key.to_string()).collect()
}

/// A comma-separated subset of `all`, kept in `all`'s order.
fn list_option(flag: &str, v: &str, all: &[String]) -> Result<Vec<String>> {
    let given: Vec<&str> = v.split(',').map(str::trim).collect();
    if let Some(bad) = given.iter().find(|g| !all.iter().any(|a| a == *g)) {
        bail!(
            "{flag}: unknown entry '{bad}' (expected some of {})",
            all.join(",")
        );
    }
    Ok(all
        .iter()
        .filter(|a| given.contains(&a.as_str()))
        .cloned()
        .collect())
}

/// The recipe's expert bands, training timesteps [min, max) of the model's schedule: each band
/// gets a network of its own, trained on its levels alone, that replaces the model's own network
/// there when sampling. Position and shape words decide the layout at the noisy levels, where
/// the network trained on every level responds to them least.
pub fn expert_bands(quick: bool) -> Vec<(usize, usize)> {
    if quick {
        vec![(10, 15), (15, 20)]
    } else {
        vec![(500, 850), (850, 1000)]
    }
}

/// The dataset's seed, image side and size (full recipe / quick).
const DATA_SEED: u64 = 1;
const SIZE: usize = 32;
fn num_images(quick: bool) -> usize {
    if quick { 64 } else { 4000 }
}

/// The size of a network of [`recipe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// A tiny network on a 20-level schedule that checks the pipeline (`--quick`).
    Quick,
    /// The small pretrained network of `fixtures/image-composition/`
    /// (`cargo xtask fixtures image-composition`): 24 base channels, 3.6 MB.
    Fixture,
    /// The expert network of that model for the noisiest levels ([`FIXTURE_EXPERT_BAND`]):
    /// 16 base channels, 1.8 MB.
    FixtureExpert,
    /// The networks of the experiments (`fixtures/image-composition-full/`): 32 base channels.
    Full,
}

impl Scale {
    /// The networks of an experiment: [`Scale::Quick`] for `--quick`, else [`Scale::Full`].
    pub fn of(quick: bool) -> Self {
        if quick { Self::Quick } else { Self::Full }
    }
}

/// The training recipe of the text-conditioned U-Net (see the report's setup section): the
/// model on every level, or with `band` = [min, max) an expert network for those training
/// timesteps alone ([`expert_bands`]).
pub fn recipe(
    data: &Path,
    energy: bool,
    scale: Scale,
    steps: Option<usize>,
    band: Option<(usize, usize)>,
) -> Result<RunConfig> {
    // Every network of the full recipe, the base and each expert, trains 3000 steps.
    let quick = scale == Scale::Quick;
    let (channels, mult, attention, text, default_steps, batch) = match scale {
        Scale::Quick => (8, "[1, 2]", "[]", (16, 1, 2), 4, 4),
        Scale::Fixture => (24, "[1, 2, 2]", "[8]", (64, 2, 4), 4000, 32),
        Scale::FixtureExpert => (16, "[1, 2, 2]", "[8]", (64, 2, 4), 4000, 32),
        Scale::Full => (32, "[1, 2, 2]", "[8]", (64, 2, 4), 3000, 32),
    };
    let timesteps = match band {
        Some((min, max)) => format!("{{ kind = \"range\", min = {min}, max = {max} }}"),
        None => "{ kind = \"logit_normal\", mean = 1.0, std = 1.5 }".to_string(),
    };
    let head = if quick { 8 } else { channels };
    let groups = if quick { 4 } else { channels / 2 };
    let time = if quick { 16 } else { 4 * channels };
    let text_cfg = format!(
        "[model]\nkind = \"unet\"\nimage_size = {SIZE}\nin_channels = 3\nout_channels = 3\n\
         model_channels = {channels}\nchannel_mult = {mult}\nnum_res_blocks = 1\n\
         attention_resolutions = {attention}\nnum_head_channels = {head}\nnum_groups = {groups}\n\
         time_embed_dim = {time}\ndropout = 0.0\ncoord_channels = true\n\n\
         [data]\nkind = \"captioned_folder\"\ndir = \"{}\"\nsize = {SIZE}\nuncond_prob = 0.1\n\n\
         [text]\nwidth = {}\nlayers = {}\nheads = {}\ncross_attention = true\n\n\
         [diffusion]\nnum_timesteps = {}\n{}\n\
         [train]\nbatch_size = {batch}\nsteps = {}\nlr = 5e-4\nema_decay = {}\n\
         ema_warmup = true\ncheckpoint_every = 250\nseed = 0\n\
         timesteps = {timesteps}\n{}",
        data.display(),
        text.0,
        text.1,
        text.2,
        if quick { 20 } else { 1000 },
        // The layout a prompt names is decided at the noisiest levels: v-prediction (or, for
        // the energy model, whose output is ε̂ = ∇ₓE, the loss weighted as v's) and timesteps
        // drawn towards the noisy end give those levels the weight that position words need.
        if energy {
            "energy = \"squared_residual\"\n"
        } else {
            "prediction = \"v\"\n"
        },
        steps.unwrap_or(default_steps),
        if quick { 0.9 } else { 0.999 },
        if energy {
            "loss_weight = { target = \"v\", max = 100.0 }\ngrad_clip = 1.0\n"
        } else {
            ""
        },
    );
    Ok(RunConfig::from_toml(&text_cfg)?)
}

/// Writes the dataset into `work` unless a complete copy is there; returns its directory.
fn dataset(work: &Path, quick: bool) -> Result<PathBuf> {
    let n = num_images(quick);
    let dir = work.join(format!("data-{SIZE}px-{n}-seed{DATA_SEED}"));
    // The tokenizer is written last: its presence means a complete dataset.
    if !dir.join(TOKENIZER_FILE).is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        ShapesText::new(DATA_SEED, SIZE)?.write(n, &dir)?;
        // The tokenizer the model trains with, as `recompose dataset shapes-text` writes it.
        TextTokenizer::word_level(shapes_text::vocabulary(), shapes_text::PROMPT_LEN)?
            .save(&dir.join(TOKENIZER_FILE))?;
    }
    Ok(dir)
}

/// The job that trains (or reuses) a network of the recipe in `work`; it returns the run
/// directory and the training seconds (`None` when reused from a finished run without timing).
fn train_job(
    work: &Path,
    data: &Path,
    param: Param,
    band: Option<(usize, usize)>,
    args: &ImageCompositionArgs,
) -> Result<Job<'static, Network>> {
    let steps = if band.is_some() {
        args.expert_steps
    } else {
        args.steps
    };
    let scale = Scale::of(args.quick);
    let cfg = recipe(data, param == Param::Energy, scale, steps, band)?;
    let name = match band {
        Some((min, max)) => format!("{}-t{min}-{max}", param.key()),
        None => param.key().to_string(),
    };
    let dir = work.join(&name);
    let reuse = args.reuse_models;
    Ok(Box::new(move || {
        let t = train_or_reuse(
            &cfg,
            &dir,
            reuse,
            &Device::Cpu,
            &format!("the {name} network"),
        )?;
        Ok(Network {
            dir,
            seconds: t.seconds,
        })
    }))
}

/// One trained network of the evaluation.
struct Network {
    dir: PathBuf,
    /// Training seconds, when trained (not reused without timing, not given).
    seconds: Option<f64>,
}

/// A model of the evaluation: its network on every level and its expert networks, each with
/// the first training timestep it serves ([`recompose_compose::LevelExperts`]).
struct Model {
    param: Param,
    base: Network,
    experts: Vec<(usize, Network)>,
}

/// What the samples of a setting must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    /// k full captions ANDed.
    And(usize),
    /// A caption of shape and quadrant, NOT a colour.
    Not,
}

impl Setting {
    const ALL: [Setting; 4] = [
        Setting::And(1),
        Setting::And(2),
        Setting::And(3),
        Setting::Not,
    ];

    fn key(self) -> String {
        match self {
            Self::And(k) => format!("and{k}"),
            Self::Not => "not".into(),
        }
    }

    fn title(self) -> String {
        match self {
            Self::And(1) => "1 prompt".into(),
            Self::And(k) => format!("{k} ANDed"),
            Self::Not => "A NOT B".into(),
        }
    }

    /// Condition set `i`: the expression and the conditions wanted and excluded.
    fn draw(self, i: usize) -> (String, Vec<Condition>, Vec<Condition>) {
        let mut rng = seeded(0x1c0_5e75);
        rng.set_stream(
            match self {
                Self::And(k) => k as u64,
                Self::Not => 0,
            } * 1_000_000
                + i as u64,
        );
        let mut quadrants = Position::ALL;
        for q in 0..quadrants.len() {
            let j = rng.random_range(q..quadrants.len());
            quadrants.swap(q, j);
        }
        let colour = |r: &mut SeededRng| Colour::ALL[r.random_range(0..Colour::ALL.len())];
        let shape = |r: &mut SeededRng| Shape::ALL[r.random_range(0..Shape::ALL.len())];
        match self {
            Self::And(k) => {
                let want: Vec<Condition> = quadrants[..k]
                    .iter()
                    .map(|&p| {
                        Condition::new(Some(colour(&mut rng)), Some(shape(&mut rng)), Some(p))
                            .expect("a full caption")
                    })
                    .collect();
                let expr = want
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                (expr, want, Vec::new())
            }
            Self::Not => {
                let positive = Condition::new(None, Some(shape(&mut rng)), Some(quadrants[0]))
                    .expect("shape and quadrant");
                let negated = Condition::new(Some(colour(&mut rng)), None, None).expect("a colour");
                (
                    format!("\"{positive}\" NOT \"{negated}\""),
                    vec![positive],
                    vec![negated],
                )
            }
        }
    }
}

/// A sampler of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SamplerSpec {
    name: &'static str,
    /// The name in `--samplers` and in grid file names.
    key: &'static str,
    kernel: Option<Kernel>,
    /// Reverse diffusion on as many levels as ULA makes calls.
    matched: bool,
}

const SAMPLERS: [SamplerSpec; 6] = [
    SamplerSpec {
        name: "reverse",
        key: "reverse",
        kernel: None,
        matched: false,
    },
    SamplerSpec {
        name: "ula",
        key: "ula",
        kernel: Some(Kernel::Ula),
        matched: false,
    },
    SamplerSpec {
        name: "reverse, equal calls",
        key: "reverse-equal",
        kernel: None,
        matched: true,
    },
    SamplerSpec {
        name: "uhmc",
        key: "uhmc",
        kernel: Some(Kernel::UHmc),
        matched: false,
    },
    SamplerSpec {
        name: "mala",
        key: "mala",
        kernel: Some(Kernel::Mala),
        matched: false,
    },
    SamplerSpec {
        name: "hmc",
        key: "hmc",
        kernel: Some(Kernel::Hmc),
        matched: false,
    },
];

/// One cell of the table: a model, a sampler, a setting.
#[derive(Debug, Clone)]
struct Cell {
    param: Param,
    sampler: &'static str,
    setting: Setting,
    levels: usize,
    good: usize,
    total: usize,
    /// Network calls per chain (each evaluates every prompt of the expression at once).
    calls: usize,
    seconds: f64,
    acceptance: Option<f64>,
}

/// Runs every sampler of `samplers` on one (model, setting), in order; grids go to `plots`.
fn run_setting(
    model: &PromptModel,
    param: Param,
    samplers: &[SamplerSpec],
    setting: Setting,
    args: &ImageCompositionArgs,
    plots: &Path,
) -> Result<Vec<Cell>> {
    let t_max = model.schedule().len();
    let levels = args.levels.min(t_max);
    let mut ula_calls = None;
    let mut cells = Vec::new();
    for &spec in samplers {
        if spec.kernel.is_some_and(Kernel::is_metropolis) && param == Param::Score {
            continue;
        }
        let levels = if spec.matched {
            match ula_calls {
                Some(c) => usize::min(c, t_max),
                None => continue,
            }
        } else {
            levels
        };
        let grid = plots.join(format!(
            "{}-{}-{}.png",
            param.key(),
            setting.key(),
            spec.key
        ));
        let cell = run_cell(model, param, spec, setting, levels, args, &grid)?;
        eprintln!(
            "{} {:<22} {:<8} {:>3}/{:<3} ({:.0}%) {} calls {:.0} s",
            param.key(),
            spec.name,
            setting.title(),
            cell.good,
            cell.total,
            100.0 * cell.good as f64 / cell.total as f64,
            cell.calls,
            cell.seconds
        );
        if spec.kernel == Some(Kernel::Ula) {
            ula_calls = Some(cell.calls);
        }
        cells.push(cell);
    }
    Ok(cells)
}

/// Samples and judges one (model, sampler, setting); the first set's samples go to `grid`.
#[allow(clippy::too_many_arguments)]
fn run_cell(
    model: &PromptModel,
    param: Param,
    spec: SamplerSpec,
    setting: Setting,
    levels: usize,
    args: &ImageCompositionArgs,
    grid: &Path,
) -> Result<Cell> {
    let mut cfg = match spec.kernel {
        None => AnnealConfig::reverse(),
        Some(k) => AnnealConfig::paper_image(k),
    };
    cfg.clip_x0 = Some(1.0);
    if let Some(k) = args.mcmc_steps {
        cfg.mcmc_steps = k;
    }
    if let (Some(s), StepSize::BetaScaled(c)) = (args.step_scale, cfg.step_size) {
        cfg.step_size = StepSize::BetaScaled(s * c);
    }
    if let (Some(f), Some(_)) = (args.mcmc_fraction, spec.kernel) {
        cfg.mcmc_fraction = f;
    }
    if args.quick {
        cfg.mcmc_steps = cfg.mcmc_steps.min(2);
    }
    let mut good = 0;
    let mut calls = 0;
    let mut accept = Vec::new();
    let start = Instant::now();
    let mut first = None;
    for i in 0..args.sets {
        let (text, want, not) = setting.draw(i);
        let expr = parse(&text)?;
        let mut none = |n: &str| -> recompose_compose::Result<Box<dyn Component>> {
            Err(ComposeError::Config(format!("no model `{n}`")))
        };
        let mut models = PromptModels::new();
        models.insert(model.clone())?;
        let mut prompt = |q: Option<&str>| models.resolve(q);
        let composed = build_with(&expr, &mut none, &mut prompt, args.guidance)?;
        let composed = Respaced::new(composed, levels)?;
        // The same initial noise for every sampler of this set.
        let mut rng = seeded(0x5a3_0000 + i as u64);
        let out = anneal(&composed, &cfg, args.chains, &mut rng)?;
        calls = out.evaluations;
        if let Some(a) = out.mean_acceptance() {
            accept.push(a);
        }
        let values = out.samples_vec()?;
        for sample in values.chunks(3 * SIZE * SIZE) {
            let unit: Vec<f32> = sample.iter().map(|&v| 0.5 * (v + 1.0)).collect();
            if check::satisfies_all(&check::detect(&unit, SIZE)?, &want, &not) {
                good += 1;
            }
        }
        if first.is_none() {
            first = Some(out.samples);
        }
    }
    if let Some(x) = first {
        let images = x.reshape((args.chains, 3, SIZE, SIZE))?;
        save_png_grid(
            &images,
            recompose_diffusion::data::ValueRange::MinusOneOne,
            args.chains.min(8),
            grid,
        )?;
    }
    Ok(Cell {
        param,
        sampler: spec.name,
        setting,
        levels,
        good,
        total: args.sets * args.chains,
        calls,
        seconds: start.elapsed().as_secs_f64(),
        acceptance: (!accept.is_empty()).then(|| accept.iter().sum::<f64>() / accept.len() as f64),
    })
}

/// The band of training timesteps, [min, max), of the small model's expert network: the
/// noisiest, where a prompt's layout is decided (the full recipe's last band).
pub const FIXTURE_EXPERT_BAND: (usize, usize) = (850, 1000);

/// Where the small model's expert network lies inside `fixtures/image-composition/`.
pub fn fixture_expert_dir() -> String {
    let (min, max) = FIXTURE_EXPERT_BAND;
    format!("expert-t{min}-{max}")
}

/// Trains the small pretrained model of `fixtures/image-composition/` (`cargo xtask fixtures
/// image-composition`) on the full recipe's dataset: its network for every level
/// ([`Scale::Fixture`]) in `target/image-composition-fixture` and its expert network for the
/// levels of [`FIXTURE_EXPERT_BAND`] ([`Scale::FixtureExpert`]) in
/// `target/image-composition-fixture-expert`, side by side on one thread each (a cut training
/// resumes from its checkpoint; a finished one of the same recipe is kept), and copies each
/// run into the fixture directory, the expert into [`fixture_expert_dir`]: weights and
/// manifest, configuration, tokenizer, loss log, provenance, timing.
///
/// # Errors
///
/// Whatever writing the dataset, training or copying reports.
pub fn fixture(root: &Path) -> Result<()> {
    if !recompose_core::process::pin_threads(Some(1)) {
        bail!("could not pin candle to one thread (RAYON_NUM_THREADS=1): set it before running");
    }
    // The configuration names its dataset relative to the workspace (as the full recipe's).
    std::env::set_current_dir(root)
        .with_context(|| format!("entering the workspace {}", root.display()))?;
    let work = Path::new("target").join("reproduce-image-composition");
    std::fs::create_dir_all(&work)?;
    let data = dataset(&work, false)?;
    let dir = Path::new("fixtures").join("image-composition");
    let networks = [
        (
            recipe(&data, false, Scale::Fixture, None, None)?,
            Path::new("target").join("image-composition-fixture"),
            dir.clone(),
            "the fixture network",
        ),
        (
            recipe(
                &data,
                false,
                Scale::FixtureExpert,
                None,
                Some(FIXTURE_EXPERT_BAND),
            )?,
            Path::new("target").join("image-composition-fixture-expert"),
            dir.join(fixture_expert_dir()),
            "the fixture's expert network",
        ),
    ];
    let jobs: Vec<Job<'static, ()>> = networks
        .into_iter()
        .map(|(cfg, run, to, what)| -> Job<'static, ()> {
            Box::new(move || {
                let t = train_or_reuse(&cfg, &run, true, &Device::Cpu, what)?;
                crate::runs::copy_run(
                    &run,
                    &to,
                    &[
                        "model.safetensors",
                        "model.json",
                        "config.toml",
                        TOKENIZER_FILE,
                        "loss.jsonl",
                        "provenance.json",
                        crate::runs::TIMING_FILE,
                    ],
                )?;
                eprintln!(
                    "{} {what}; wrote {}",
                    match t.seconds {
                        Some(s) => format!("trained in {s:.0} s"),
                        None => "reused".to_string(),
                    },
                    to.display()
                );
                Ok(())
            })
        })
        .collect();
    parallel(jobs, 2)?;
    Ok(())
}

/// Runs the task (see the [module documentation](self)).
///
/// # Errors
///
/// Whatever training, sampling or writing reports.
pub fn image_composition(root: &Path, args: &ImageCompositionArgs) -> Result<()> {
    // One thread per training or sampling group: `--jobs` of them run side by side. Set before
    // candle starts its pool (it reads the variable once).
    if !recompose_core::process::pin_threads(Some(1)) {
        bail!("could not pin candle to one thread (RAYON_NUM_THREADS=1): set it before running");
    }
    // The recipe names its dataset relative to the workspace, so that the configurations of
    // the committed networks hold on every checkout.
    std::env::set_current_dir(root)
        .with_context(|| format!("entering the workspace {}", root.display()))?;
    let total = Instant::now();
    let work = Path::new("target").join(if args.quick {
        "reproduce-image-composition-quick"
    } else {
        "reproduce-image-composition"
    });
    std::fs::create_dir_all(&work)?;
    // The full recipe's networks take hours to train: they are kept in fixtures/ (weights,
    // configuration, tokenizer, loss log, provenance and timing; not the checkpoints).
    let networks = if args.quick {
        work.clone()
    } else {
        PathBuf::from("fixtures").join("image-composition-full")
    };
    std::fs::create_dir_all(&networks)?;
    let docs = Path::new("docs").join("results");
    let name = args.report_name().to_string();
    let plots = if args.quick {
        work.join("grids")
    } else {
        docs.join(&name)
    };
    std::fs::create_dir_all(&plots)?;

    // The checker's own accuracy on dataset images.
    let checker = check::accuracy(&AccuracyConfig::clean(
        DATA_SEED,
        SIZE,
        if args.quick { 50 } else { 1000 },
    ))?;

    let needs_data = args.score.is_none() || (args.energy.is_none() && !args.no_energy);
    let data = if needs_data {
        Some(dataset(&work, args.quick)?)
    } else {
        None
    };
    let given = |dir: &PathBuf| Network {
        dir: dir.clone(),
        seconds: None,
    };
    // Every network to train, trained side by side; the workers take jobs from the end of the
    // list, so the energy networks (the slowest) start first.
    let mut jobs: Vec<Job<'static, Network>> = Vec::new();
    let mut trained_params = Vec::new();
    for param in [Param::Score, Param::Energy] {
        let run = args.given_run(param);
        if run.is_some() || (param == Param::Energy && args.no_energy) {
            continue;
        }
        let data = data
            .as_deref()
            .context("the dataset is written when a model is trained")?;
        jobs.push(train_job(&networks, data, param, None, args)?);
        if !args.no_experts {
            for band in expert_bands(args.quick) {
                jobs.push(train_job(&networks, data, param, Some(band), args)?);
            }
        }
        trained_params.push(param);
    }
    let mut trained = parallel(jobs, args.jobs)?.into_iter();
    let mut models: Vec<Model> = Vec::new();
    for param in [Param::Score, Param::Energy] {
        let run = args.given_run(param);
        if let Some(dir) = run {
            models.push(Model {
                param,
                base: given(dir),
                experts: args
                    .given_experts(param)
                    .iter()
                    .map(|(t, dir)| (*t, given(dir)))
                    .collect(),
            });
        } else if trained_params.contains(&param) {
            let base = trained.next().context("a trained network")?;
            let mut experts = Vec::new();
            if !args.no_experts {
                for band in expert_bands(args.quick) {
                    experts.push((band.0, trained.next().context("a trained expert")?));
                }
            }
            models.push(Model {
                param,
                base,
                experts,
            });
        }
    }

    // One job per (model, setting): its samplers run in turn (reverse diffusion at equal calls
    // needs ULA's count first).
    let settings = args.selected_settings();
    let samplers: Vec<SamplerSpec> = SAMPLERS
        .into_iter()
        .filter(|s| args.samplers.iter().any(|k| k == s.key))
        .collect();
    let mut jobs: Vec<Job<'_, Vec<Cell>>> = Vec::new();
    for m in &models {
        let experts: Vec<(usize, &Path)> = m
            .experts
            .iter()
            .map(|(t, n)| (*t, n.dir.as_path()))
            .collect();
        let model = PromptModel::load_with_experts("shapes", &m.base.dir, &experts, &Device::Cpu)
            .with_context(|| format!("loading {}", m.base.dir.display()))?;
        for &setting in &settings {
            let model = model.clone();
            let param = m.param;
            let samplers = samplers.clone();
            let plots = plots.clone();
            jobs.push(Box::new(move || {
                run_setting(&model, param, &samplers, setting, args, &plots)
            }));
        }
    }
    // Workers take jobs from the end: the largest settings (most prompts) first.
    let cells: Vec<Cell> = parallel(jobs, args.jobs)?.into_iter().flatten().collect();
    let report = render(
        args,
        &checker,
        &models,
        &cells,
        total.elapsed().as_secs_f64(),
    )?
    // Paths relative to the workspace, whoever runs it.
    .replace(&format!("{}/", root.display()), "");
    let path = if args.quick {
        work.join(format!("{name}-quick.md"))
    } else {
        docs.join(format!("{name}.md"))
    };
    std::fs::write(&path, report)?;
    let raw: Vec<_> = cells
        .iter()
        .map(|c| {
            json!({
                "parameterization": c.param.key(),
                "sampler": c.sampler,
                "setting": c.setting.key(),
                "levels": c.levels,
                "good": c.good,
                "total": c.total,
                "calls_per_chain": c.calls,
                "seconds": c.seconds,
                "acceptance": c.acceptance,
            })
        })
        .collect();
    std::fs::write(
        path.with_extension("json"),
        serde_json::to_string_pretty(&raw)?,
    )?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn render(
    args: &ImageCompositionArgs,
    checker: &check::Accuracy,
    models: &[Model],
    cells: &[Cell],
    wall: f64,
) -> Result<String> {
    let settings = args.selected_settings();
    let mut o = String::new();
    let _ = writeln!(o, "# Prompt algebra on a text-conditioned image model\n");
    let _ = writeln!(
        o,
        "Generated by `{}` (do not edit by hand). Every number but the timings is a \
         deterministic function of the seeds.\n",
        args.command()
    );
    let _ = writeln!(o, "## Setup\n");
    let _ = writeln!(
        o,
        "- Checker (segmentation by the dataset's palette, shape by fill ratio and corners, \
         quadrant by centroid) on {} dataset images with {} objects: {:.1}% of images with \
         exactly the true objects, {:.1}% of objects found with colour, shape and quadrant right.",
        checker.images,
        checker.objects,
        100.0 * checker.exact_set,
        100.0 * checker.per_object
    );
    for m in models {
        let networks =
            std::iter::once((None, &m.base)).chain(m.experts.iter().map(|(t, n)| (Some(*t), n)));
        for (from, net) in networks {
            let cfg = RunConfig::from_file(&net.dir.join("config.toml"))?;
            let _ = writeln!(
                o,
                "- {} model{}: `{}`{}; its configuration:\n\n```toml\n{}```\n",
                m.param.key(),
                from.map(|t| format!(", expert network from training timestep {t} on"))
                    .unwrap_or_default(),
                net.dir.display(),
                net.seconds
                    .map(|s| format!(
                        ", trained in {s:.0} s on one CPU thread (up to {} networks side by side)",
                        args.jobs
                    ))
                    .unwrap_or_default(),
                cfg.to_toml()?
            );
        }
    }
    let _ = writeln!(
        o,
        "- Sampling: {} condition sets per setting, {} chains each (the same initial noise for \
         every sampler), {} of the model's levels (respaced), guidance γ = {} on every prompt, \
         reverse steps with x̂₀ clipped to [−1, 1]; MCMC with the paper's image settings on {}{}{}. \"Calls\" counts network evaluations per chain, each \
         evaluating every prompt of the expression and the unconditional model in one batch.\n",
        args.sets,
        args.chains,
        args.levels,
        args.guidance,
        match args.mcmc_fraction {
            None => "the noisier half of the levels".to_string(),
            Some(f) if f >= 1.0 => "every level".to_string(),
            Some(f) => format!("the noisiest {:.0}% of the levels", 100.0 * f),
        },
        args.mcmc_steps
            .map(|k| format!(", {k} MCMC steps per level for every kernel"))
            .unwrap_or_default(),
        args.step_scale
            .map(|s| {
                let at = |k: Kernel| match AnnealConfig::paper_image(k).step_size {
                    StepSize::BetaScaled(c) => format!("{}·β_t", c * s),
                    other => format!("{other:?}"),
                };
                format!(
                    ", every kernel's step size {s} times the paper's (ULA {}, MALA {}, U-HMC \
                     and HMC {})",
                    at(Kernel::Ula),
                    at(Kernel::Mala),
                    at(Kernel::Hmc)
                )
            })
            .unwrap_or_default()
    );
    let _ = writeln!(o, "## Generation accuracy\n");
    let _ = writeln!(
        o,
        "The fraction of samples that satisfy every condition (the positive captions found, the \
         negated colour absent).\n"
    );
    let _ = write!(o, "| model | sampler | levels | calls / chain |");
    for s in &settings {
        let _ = write!(o, " {} |", s.title());
    }
    let _ = writeln!(o, " acceptance | seconds |");
    let _ = writeln!(
        o,
        "|---|---|---:|---:|{}---:|---:|",
        "---:|".repeat(settings.len())
    );
    let mut keys: Vec<(Param, &str)> = Vec::new();
    for c in cells {
        if !keys.contains(&(c.param, c.sampler)) {
            keys.push((c.param, c.sampler));
        }
    }
    for (param, sampler) in keys {
        let row: Vec<&Cell> = cells
            .iter()
            .filter(|c| c.param == param && c.sampler == sampler)
            .collect();
        let first = row[0];
        let _ = write!(
            o,
            "| {} | {} | {} | {} |",
            param.key(),
            sampler,
            first.levels,
            first.calls
        );
        for &s in &settings {
            match row.iter().find(|c| c.setting == s) {
                Some(c) => {
                    let _ = write!(
                        o,
                        " {:.0}% ({}/{}) |",
                        100.0 * c.good as f64 / c.total as f64,
                        c.good,
                        c.total
                    );
                }
                None => {
                    let _ = write!(o, " – |");
                }
            }
        }
        let acc: Vec<f64> = row.iter().filter_map(|c| c.acceptance).collect();
        let secs: f64 = row.iter().map(|c| c.seconds).sum();
        let _ = writeln!(
            o,
            " {} | {secs:.0} |",
            if acc.is_empty() {
                "–".to_string()
            } else {
                format!("{:.2}", acc.iter().sum::<f64>() / acc.len() as f64)
            }
        );
    }
    let _ = writeln!(
        o,
        "\nSeconds: the row's sampling time summed over its settings, each setting on one CPU \
         thread with up to {} settings side by side.",
        args.jobs
    );
    let _ = writeln!(o, "\n## Condition sets\n");
    for &s in &settings {
        let sets: Vec<String> = (0..args.sets.min(4))
            .map(|i| format!("`{}`", s.draw(i).0))
            .collect();
        let _ = writeln!(
            o,
            "- {}: {}{}",
            s.title(),
            sets.join(", "),
            if args.sets > 4 { ", …" } else { "" }
        );
    }
    let _ = writeln!(
        o,
        "\nThe grids (`{}/`) show the chains of the first condition set of each cell.\n",
        args.report_name()
    );
    let _ = writeln!(o, "Total wall time {wall:.0} s on the CPU.");
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_sets_are_seeded_distinct_and_well_formed() {
        for s in Setting::ALL {
            for i in 0..20 {
                let (text, want, not) = s.draw(i);
                assert_eq!(s.draw(i).0, text);
                assert!(parse(&text).is_ok(), "{text}");
                match s {
                    Setting::And(k) => {
                        assert_eq!(want.len(), k);
                        assert!(not.is_empty());
                        // Distinct quadrants.
                        let quadrants: std::collections::BTreeSet<String> = want
                            .iter()
                            .map(|c| {
                                let t = c.to_string();
                                t.split(' ').skip(2).collect::<Vec<_>>().join(" ")
                            })
                            .collect();
                        assert_eq!(quadrants.len(), k, "{text}");
                    }
                    Setting::Not => assert_eq!((want.len(), not.len()), (1, 1)),
                }
            }
            assert_ne!(s.draw(0).0, s.draw(1).0);
        }
    }

    #[test]
    fn options_parse_and_name_the_command() -> Result<()> {
        let a = ImageCompositionArgs::parse(&["--sets", "3", "--levels", "40", "--no-energy"])?;
        assert_eq!((a.sets, a.levels, a.no_energy), (3, 40, true));
        assert!(a.command().contains("--no-energy") && a.command().contains("--levels 40"));
        assert!(ImageCompositionArgs::parse(&["--levels", "1"]).is_err());
        assert!(ImageCompositionArgs::parse(&["--guidance", "-2"]).is_err());
        assert!(ImageCompositionArgs::parse(&["--no-energy", "--energy", "x"]).is_err());
        assert!(ImageCompositionArgs::parse(&["--bogus"]).is_err());
        // Experts of given runs: parsed, named in the command, and refused where they
        // contradict other options.
        let a = ImageCompositionArgs::parse(&[
            "--score",
            "s",
            "--score-expert",
            "hi@850",
            "--score-expert",
            "mid@500",
        ])?;
        assert_eq!(
            a.score_experts,
            [(850, PathBuf::from("hi")), (500, PathBuf::from("mid"))]
        );
        assert!(
            a.command()
                .contains("--score-expert hi@850 --score-expert mid@500")
        );
        let a2 = ImageCompositionArgs::parse(&a.command().split(' ').skip(4).collect::<Vec<_>>())?;
        assert_eq!(a2, a);
        for bad in [
            &["--score-expert", "hi@850"][..],
            &["--score", "s", "--score-expert", "hi"],
            &["--score", "s", "--score-expert", "hi@0"],
            &["--score", "s", "--score-expert", "@850"],
            &["--score", "s", "--no-experts", "--score-expert", "hi@850"],
            &["--no-energy", "--energy-expert", "hi@850"],
        ] {
            assert!(ImageCompositionArgs::parse(bad).is_err(), "{bad:?}");
        }
        // Subsets of settings and samplers keep the table's order and round-trip through the
        // command; the defaults are every one and are not written.
        let all = ImageCompositionArgs::parse(&[])?;
        assert_eq!(all.settings, ["and1", "and2", "and3", "not"]);
        assert_eq!(all.samplers.len(), SAMPLERS.len());
        assert!(!all.command().contains("--settings") && !all.command().contains("--samplers"));
        let a = ImageCompositionArgs::parse(&[
            "--settings",
            "not,and1",
            "--samplers",
            "reverse-equal,ula",
            "--jobs",
            "3",
            "--step-scale",
            "0.25",
            "--mcmc-fraction",
            "1",
        ])?;
        assert_eq!(a.step_scale, Some(0.25));
        assert_eq!(a.mcmc_fraction, Some(1.0));
        assert_eq!(a.settings, ["and1", "not"]);
        assert_eq!(a.samplers, ["ula", "reverse-equal"]);
        assert_eq!(a.jobs, 3);
        let a2 = ImageCompositionArgs::parse(&a.command().split(' ').skip(4).collect::<Vec<_>>())?;
        assert_eq!(a2, a);
        for bad in [
            &["--settings", "and4"][..],
            &["--settings", ""],
            &["--samplers", "reverse,euler"],
            &["--samplers", "reverse-equal"],
            &["--jobs", "0"],
            &["--step-scale", "0"],
            &["--step-scale", "nan"],
            &["--mcmc-fraction", "0"],
            &["--mcmc-fraction", "1.5"],
        ] {
            assert!(ImageCompositionArgs::parse(bad).is_err(), "{bad:?}");
        }
        Ok(())
    }

    /// The committed networks are what their recipes train: `--reuse-models` and `cargo
    /// xtask fixtures image-composition` keep them (a recipe whose text drifted from a
    /// committed configuration would retrain that network).
    #[test]
    fn committed_networks_are_their_recipes() -> Result<()> {
        let root = crate::workspace::root();
        let data = Path::new("target")
            .join("reproduce-image-composition")
            .join(format!(
                "data-{SIZE}px-{}-seed{DATA_SEED}",
                num_images(false)
            ));
        let bands = expert_bands(false);
        let networks = [
            (
                "image-composition/config.toml".to_string(),
                Scale::Fixture,
                None,
            ),
            (
                format!("image-composition/{}/config.toml", fixture_expert_dir()),
                Scale::FixtureExpert,
                Some(FIXTURE_EXPERT_BAND),
            ),
            (
                "image-composition-full/score/config.toml".to_string(),
                Scale::Full,
                None,
            ),
            (
                "image-composition-full/score-t500-850/config.toml".to_string(),
                Scale::Full,
                Some(bands[0]),
            ),
            (
                "image-composition-full/score-t850-1000/config.toml".to_string(),
                Scale::Full,
                Some(bands[1]),
            ),
        ];
        for (file, scale, band) in networks {
            let committed = std::fs::read_to_string(root.join("fixtures").join(&file))?;
            let want = recipe(&data, false, scale, None, band)?.to_toml()?;
            assert_eq!(committed, want, "{file}");
        }
        Ok(())
    }

    #[test]
    fn expert_recipes_train_their_band_alone() -> Result<()> {
        for quick in [true, false] {
            let bands = expert_bands(quick);
            let scale = Scale::of(quick);
            let steps = recipe(Path::new("d"), false, scale, None, None)?
                .diffusion
                .num_timesteps;
            // Bands are ordered, disjoint, inside the schedule and end at its last level.
            assert!(
                bands
                    .windows(2)
                    .all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1)
            );
            assert_eq!(bands.last().map(|b| b.1), Some(steps));
            for band in bands {
                let cfg = recipe(Path::new("d"), true, scale, None, Some(band))?;
                let toml = cfg.to_toml()?;
                assert!(
                    toml.contains(&format!("min = {}", band.0))
                        && toml.contains(&format!("max = {}", band.1)),
                    "{toml}"
                );
            }
        }
        Ok(())
    }
}
