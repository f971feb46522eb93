//! `recompose compose`: sampling a composition of trained models written as an expression.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use recompose_compose::component::load;

use recompose_compose::Expr;
use recompose_scenes::shapes_text::{self, Condition, check};

use recompose_compose::prompt::{PromptModel, PromptModels, group_estimate};
use recompose_compose::tree::build_with;
use recompose_compose::{AnnealConfig, Component, Kernel, Respaced, StepSize, anneal, parse};
use recompose_diffusion::run::RunConfig;
use recompose_diffusion::seeded;

use crate::diffusion::{out_kind, write_samples};
use recompose_core::memory::{Estimate, MemoryLimit};

use crate::{check_memory, positive, usage};

/// Arguments of `recompose compose`.
#[derive(Debug, Args)]
pub struct ComposeArgs {
    /// The composition, e.g. "ring AND bar", "left OR right", "1.3*box_large NOT 0.3*box_small"
    /// (AND/NOT bind tighter than OR; parentheses group). Double-quoted prompts are terms of a
    /// text-conditioned model: '"red circle top left" AND "blue square" NOT "green"' (or
    /// 'shapes:"red"' to name the model when several are given).
    #[arg(long)]
    expr: String,
    /// A model of the expression as NAME=DIR (a directory written by `recompose train`);
    /// repeat for each name. A text-conditioned model serves the expression's prompts.
    #[arg(long = "model", value_name = "NAME=DIR")]
    models: Vec<String>,
    /// An expert network of the text model NAME, as NAME=DIR@T: the run in DIR (trained on
    /// the noisy levels, `[train] timesteps = { kind = "range", min = T, … }`) replaces the
    /// model's own network from training timestep T up to the next expert's (eDiff-I's expert
    /// denoisers). Repeat for several bands.
    #[arg(long = "expert", value_name = "NAME=DIR@T")]
    experts: Vec<String>,
    /// Number of samples (independent chains).
    #[arg(long, allow_negative_numbers = true)]
    num: i64,
    /// Output file: .csv (2-D data, `x,y` header) or .png (scatter plot or image grid).
    #[arg(long)]
    out: PathBuf,
    /// reverse (reverse diffusion with the composed model), ula, uhmc, mala or hmc (the last two
    /// need energy models).
    #[arg(long, default_value = "reverse")]
    sampler: String,
    /// MCMC steps per noise level (default 10; 20 for ula and mala on image models). Image
    /// models run them on the noisier half of the levels, 2-D models on every level
    /// (`--mcmc-fraction` changes that).
    #[arg(long, allow_negative_numbers = true)]
    mcmc_steps: Option<i64>,
    /// Step size of the MCMC kernel (default for 2-D models: 0.001 for ula/mala, 0.03 for
    /// uhmc/hmc; for image models 2·β_t for ula, 0.035·β_t for mala and 0.1·β_t, mass β_t for
    /// uhmc/hmc).
    /// A given value is used at every level.
    #[arg(long, allow_negative_numbers = true)]
    step_size: Option<f64>,
    /// Adapt the step size towards this acceptance rate (mala and hmc only).
    #[arg(long, allow_negative_numbers = true)]
    target_accept: Option<f64>,
    /// Run MCMC on this fraction of the noise levels, the noisiest first, in (0, 1] (default:
    /// 0.5 for image models, the paper's noisier half; 1, every level, for 2-D models).
    #[arg(long, allow_negative_numbers = true)]
    mcmc_fraction: Option<f64>,
    /// Pure annealed MCMC: no reverse-diffusion step between noise levels.
    #[arg(long)]
    mcmc_only: bool,
    /// Seed of the initial noise and of every draw of the chains.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Classifier-free guidance scale γ of the prompts: a prompt P contributes
    /// γ·(s_P − s_unconditional) to the score.
    #[arg(long, default_value_t = 4.0, allow_negative_numbers = true)]
    guidance: f64,
    /// Sample on this many noise levels spread evenly over the models' schedule, the noisiest
    /// and the cleanest included (the DDIM respacing; default: every level). Image models
    /// trained on 1000 levels sample well on 100.
    #[arg(long, allow_negative_numbers = true)]
    levels: Option<i64>,
    /// Judge every sample with the shapes-text checker against the expression's prompts
    /// (each prompt of the AND chain present, each prompt after NOT absent) and report the
    /// fraction that satisfies them all. Needs a conjunction of shapes-text prompts and RGB
    /// samples of 32 or 64 pixels.
    #[arg(long)]
    check: bool,
}

/// The sampler's settings. 2-D models get the paper's 2-D settings; image models (`image`) its
/// image settings — step sizes proportional to β_t, MCMC on the noisier half of the levels —
/// and reverse steps whose clean-data estimate is clipped to the data's range `clip`.
fn config(a: &ComposeArgs, image: bool, clip: f64) -> Result<AnnealConfig> {
    let mut cfg = match a.sampler.as_str() {
        "reverse" => {
            for (flag, given) in [
                ("--mcmc-steps", a.mcmc_steps.is_some()),
                ("--step-size", a.step_size.is_some()),
                ("--target-accept", a.target_accept.is_some()),
                ("--mcmc-fraction", a.mcmc_fraction.is_some()),
                ("--mcmc-only", a.mcmc_only),
            ] {
                if given {
                    return Err(usage(format!(
                        "{flag} needs an MCMC sampler (ula, uhmc, mala or hmc), not reverse"
                    )));
                }
            }
            AnnealConfig::reverse()
        }
        name => {
            let kernel: Kernel = name.parse().map_err(|_| {
                usage(format!(
                    "--sampler must be reverse, ula, uhmc, mala or hmc, got '{name}'"
                ))
            })?;
            if image {
                AnnealConfig::paper_image(kernel)
            } else {
                AnnealConfig::paper_2d(kernel)
            }
        }
    };
    if image {
        cfg.clip_x0 = Some(clip);
    }
    if let Some(k) = a.mcmc_steps {
        cfg.mcmc_steps = positive("mcmc-steps", k, 1)?;
    }
    if let Some(s) = a.step_size {
        if !(s.is_finite() && s > 0.0) {
            return Err(usage(format!("--step-size must be positive, got {s}")));
        }
        cfg.step_size = StepSize::Constant(s);
    }
    if let Some(target) = a.target_accept {
        // A β-proportional preset starts from its value at β = 0.02, the noisy end of the
        // usual linear schedule.
        let initial = match cfg.step_size {
            StepSize::Constant(v) => v,
            StepSize::BetaScaled(c) => c * 0.02,
            StepSize::Adaptive { initial, .. } => initial,
        };
        cfg.step_size = StepSize::Adaptive { initial, target };
    }
    if let Some(f) = a.mcmc_fraction {
        if !(f > 0.0 && f <= 1.0) {
            return Err(usage(format!(
                "--mcmc-fraction must lie in (0, 1], got {f}"
            )));
        }
        cfg.mcmc_fraction = f;
    }
    cfg.reverse_steps = !a.mcmc_only;
    Ok(cfg)
}

pub fn run_compose(a: ComposeArgs, memory: MemoryLimit) -> Result<()> {
    let num = positive("num", a.num, 1)?;
    let kind = out_kind(&a.out)?;
    // The flags alone, before any file is read (the model kind is known later).
    config(&a, false, 1.0)?;
    // One line, as for every bad argument: the message and the column of the token.
    let expr = parse(&a.expr).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        usage(format!("--expr '{}': {first}", a.expr))
    })?;
    let mut dirs = BTreeMap::new();
    for m in &a.models {
        let (name, dir) = m
            .split_once('=')
            .filter(|(n, d)| !n.is_empty() && !d.is_empty())
            .ok_or_else(|| usage(format!("--model must be NAME=DIR, got '{m}'")))?;
        if dirs.insert(name.to_string(), PathBuf::from(dir)).is_some() {
            return Err(usage(format!("--model {name} is given twice")));
        }
    }
    let mut experts: BTreeMap<String, Vec<(usize, PathBuf)>> = BTreeMap::new();
    for e in &a.experts {
        let (name, spec) = match e.split_once('=') {
            Some((name, spec)) if !name.is_empty() => (name.to_string(), spec),
            _ => {
                return Err(usage(format!(
                    "--expert must be NAME=DIR@T with T a positive timestep, got '{e}'"
                )));
            }
        };
        let (t, dir) = recompose_compose::experts::parse_expert(spec)
            .map_err(|err| usage(format!("--expert {name}: {err}")))?;
        if !dirs.contains_key(&name) {
            return Err(usage(format!(
                "--expert {name}: no --model {name}=DIR to add it to"
            )));
        }
        experts.entry(name).or_default().push((t, dir));
    }
    if !(a.guidance.is_finite() && a.guidance >= 0.0) {
        return Err(usage(format!(
            "--guidance must be finite and non-negative, got {}",
            a.guidance
        )));
    }
    for dir in dirs
        .values()
        .chain(experts.values().flatten().map(|(_, d)| d))
    {
        crate::diffusion::expect_family(dir, RunConfig::FAMILY.name)?;
    }
    // Checked from the saved configurations, before any weight is read.
    let configs = dirs
        .iter()
        .map(|(name, dir)| {
            Ok((
                name.clone(),
                RunConfig::from_file(&dir.join("config.toml"))?,
            ))
        })
        .collect::<recompose_diffusion::Result<BTreeMap<_, _>>>()?;
    let mut names = expr.model_names();
    if expr.has_unqualified_prompts() {
        // An unqualified prompt belongs to the only text model given.
        for (name, c) in &configs {
            if c.is_text_conditioned() && !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    for name in &names {
        if !dirs.contains_key(name) {
            return Err(usage(format!(
                "the expression uses `{name}` but no --model {name}=DIR is given"
            )));
        }
    }
    if let Some(extra) = dirs.keys().find(|k| !names.contains(k)) {
        return Err(usage(format!(
            "--model {extra} is not used in the expression '{}'",
            a.expr
        )));
    }
    let Some(first) = names.first().map(|n| &configs[n]) else {
        return Err(usage(
            "the expression's prompts need a text-conditioned model: give --model NAME=DIR"
                .to_string(),
        ));
    };
    let (lo, hi) = first.value_range().bounds();
    let cfg = config(
        &a,
        first.model_item_shape().len() == 3,
        f64::from(hi.abs().max(lo.abs())),
    )?;
    let dim = configs
        .values()
        .map(|c| c.model_item_shape().iter().product::<usize>())
        .max()
        .unwrap_or(0);
    let judge = if a.check {
        Some(conditions(&expr)?)
    } else {
        None
    };
    let prompts = expr.prompts().len();
    // The weights of every expert are held beside the model's own; one network runs at a time.
    let mut expert_params = BTreeMap::new();
    for (name, list) in &experts {
        if !configs[name].is_text_conditioned() {
            return Err(usage(format!(
                "--expert {name}: experts serve text-conditioned models; {} is not one",
                dirs[name].display()
            )));
        }
        for (_, dir) in list {
            let c = RunConfig::from_file(&dir.join("config.toml"))?;
            if !c.is_text_conditioned() {
                return Err(usage(format!(
                    "--expert {name}: {} is not a text-conditioned model",
                    dir.display()
                )));
            }
            *expert_params.entry(name.clone()).or_insert(Estimate::ZERO) += c.model.param_bytes();
        }
    }
    let leaves: Vec<_> = configs
        .iter()
        .map(|(name, c)| {
            if c.is_text_conditioned() {
                let params = c.model.param_bytes()
                    + expert_params.get(name).copied().unwrap_or(Estimate::ZERO);
                group_estimate(params, c.activation_bytes(), prompts, dim)
            } else {
                (c.model.param_bytes(), c.activation_bytes())
            }
        })
        .collect();
    check_memory(
        memory,
        format_args!("{num} chains of {} models", leaves.len()),
        recompose_compose::mcmc::anneal_estimate(num, dim, &leaves),
    )?;
    let device = crate::device();
    let mut text_models = PromptModels::new();
    for (name, c) in &configs {
        if c.is_text_conditioned() {
            let list: Vec<(usize, &std::path::Path)> = experts
                .get(name)
                .into_iter()
                .flatten()
                .map(|(t, d)| (*t, d.as_path()))
                .collect();
            let model =
                PromptModel::load_with_experts(name, &dirs[name], &list, &device).map_err(|e| {
                    if e.is_bad_input() {
                        usage(e.to_string())
                    } else {
                        e.into()
                    }
                })?;
            text_models.insert(model)?;
        }
    }
    let mut resolve = |name: &str| -> recompose_compose::Result<Box<dyn Component>> {
        load(name, &dirs[name], &device)
    };
    let mut resolve_prompt = |q: Option<&str>| text_models.resolve(q);
    let model = build_with(&expr, &mut resolve, &mut resolve_prompt, a.guidance).map_err(|e| {
        if e.is_bad_input() || matches!(e, recompose_compose::Error::NeedsDensity(_)) {
            usage(e.to_string())
        } else {
            e.into()
        }
    })?;
    let model: Box<dyn Component> = match a.levels {
        None => model,
        Some(levels) => {
            let levels = positive("levels", levels, 2)?;
            Box::new(Respaced::new(model, levels).map_err(|e| usage(format!("--levels: {e}")))?)
        }
    };
    cfg.validate(model.has_density())
        .map_err(|e| usage(e.to_string()))?;
    let start = Instant::now();
    let out = anneal(model.as_ref(), &cfg, num, &mut seeded(a.seed))?;
    let seconds = start.elapsed().as_secs_f64();
    // Item shape and value range of the models, from the first model's configuration.
    let acc = out
        .mean_acceptance()
        .map(|r| format!(", acceptance {r:.3}"))
        .unwrap_or_default();
    let mut shape = vec![num];
    shape.extend(first.model_item_shape());
    write_samples(
        &out.samples.reshape(shape)?,
        first.value_range(),
        kind,
        &a.out,
    )?;
    outln!(
        "wrote {num} samples of {} ({}, seed {}{acc}) to {} in {seconds:.1} s",
        model.describe(),
        a.sampler,
        a.seed,
        a.out.display()
    );
    if let Some((want, not)) = judge {
        let item = first.model_item_shape();
        let size = match item[..] {
            [3, h, w] if h == w && shapes_text::SIZES.contains(&h) => h,
            _ => {
                return Err(usage(format!(
                    "--check judges RGB images of {} pixels, but the samples have the shape \
                     {item:?}",
                    shapes_text::SIZES.map(|s| s.to_string()).join(" or ")
                )));
            }
        };
        let range = first.value_range();
        let values = out.samples_vec()?;
        let mut good = 0usize;
        for sample in values.chunks(3 * size * size) {
            let unit: Vec<f32> = sample.iter().map(|&v| range.to_unit(v)).collect();
            let found = check::detect(&unit, size)?;
            if check::satisfies_all(&found, &want, &not) {
                good += 1;
            }
        }
        outln!(
            "check: {good} of {num} samples satisfy every condition ({:.1}%)",
            100.0 * good as f64 / num as f64
        );
    }
    Ok(())
}

/// The shapes-text conditions of an expression's prompts for `--check`: those wanted and those
/// excluded.
fn conditions(expr: &Expr) -> Result<(Vec<Condition>, Vec<Condition>)> {
    let (want, not) = expr.prompt_conjunction().ok_or_else(|| {
        usage(
            "--check judges a conjunction of prompts (AND, and NOT of single prompts), not \
             named models or OR"
                .to_string(),
        )
    })?;
    let parse = |texts: Vec<&str>| -> Result<Vec<Condition>> {
        texts
            .into_iter()
            .map(|t| {
                t.parse::<Condition>()
                    .map_err(|e| usage(format!("--check: {e}")))
            })
            .collect()
    };
    Ok((parse(want)?, parse(not)?))
}
