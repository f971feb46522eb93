//! `recompose factorize`, `capacity` and `compare`: factorization of bound hypervectors with
//! the methods of `recompose-decomp`, its capacity search, and side-by-side comparisons.

use anyhow::Result;
use clap::Args;
use recompose_core::memory::{Estimate, MemoryLimit};
use recompose_decomp::capacity::{CapacityConfig, IterLimit, capacity_within};
use recompose_decomp::factorize::coupled::CoupledConfig;
use recompose_decomp::factorize::{
    CoupledOverrides, FactorizeConfig, FactorizeReport, METHOD_NAMES, Method, Progress,
    factorize_within, pipeline_estimate,
};
use recompose_decomp::problem::{Noise, Problem, ProblemConfig, VsaKind};
use serde_json::json;

use crate::{check_memory, device, positive, progress_bar, usage};

#[derive(Debug, Args)]
pub struct FactorizeArgs {
    /// Dimension D of the hypervectors.
    #[arg(
        long,
        required_unless_present = "problem",
        allow_negative_numbers = true
    )]
    dim: Option<i64>,
    /// Number of factors F (at least 2).
    #[arg(
        long,
        required_unless_present = "problem",
        allow_negative_numbers = true
    )]
    factors: Option<i64>,
    /// Codewords per codebook M (at least 1).
    #[arg(
        long,
        required_unless_present = "problem",
        allow_negative_numbers = true
    )]
    codebook: Option<i64>,
    /// Factorize the problem stored in this safetensors file (codebooks, bound vectors and
    /// true indices) instead of generating one; --dim, --factors, --codebook, --vsa, --trials,
    /// the noise flags and the problem part of --seed are then taken from the file.
    #[arg(long, conflicts_with_all = ["dim", "factors", "codebook"])]
    problem: Option<std::path::PathBuf>,
    /// Write the generated problem to this safetensors file.
    #[arg(long)]
    save_problem: Option<std::path::PathBuf>,
    /// VSA model: map or fhrr.
    #[arg(long, default_value = "map")]
    vsa: String,
    /// Number of trials, all run as one batch.
    #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
    trials: i64,
    /// Iteration limit: a number, or `kent` for max(100, 0.001·M^F).
    #[arg(long, default_value = "100")]
    max_iters: String,
    /// Method: resonator, resonator-ols, resonator-sync, stochastic, attention, als or coupled.
    #[arg(long, default_value = "resonator")]
    method: String,
    #[command(flatten)]
    coupled: CoupledArgs,
    /// Standard deviation of additive Gaussian noise on the bound vectors.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    noise_gauss: f64,
    /// Probability of flipping each component of the bound vectors.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    noise_flip: f64,
    /// Seed of the problem and of the method.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Method: resonator, resonator-ols, resonator-sync, stochastic, attention, als or coupled.
    #[arg(long)]
    method: String,
    #[command(flatten)]
    coupled: CoupledArgs,
    /// Dimension D of the hypervectors.
    #[arg(long, allow_negative_numbers = true)]
    dim: i64,
    /// Number of factors F (at least 2).
    #[arg(long, allow_negative_numbers = true)]
    factors: i64,
    /// VSA model: map or fhrr.
    #[arg(long, default_value = "map")]
    vsa: String,
    /// Target exact accuracy.
    #[arg(long, default_value_t = 0.99, allow_negative_numbers = true)]
    target: f64,
    /// Trials per evaluated codebook size.
    #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
    trials: i64,
    /// Iteration limit: a number, or `kent` for max(100, 0.001·M^F).
    #[arg(long, default_value = "kent")]
    max_iters: String,
    /// Largest codebook size to try.
    #[arg(long, default_value_t = 4096, allow_negative_numbers = true)]
    m_limit: i64,
    /// Seed of the problems and of the method.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Settings of `--method coupled`; each one given overrides the preset.
#[derive(Debug, Args)]
struct CoupledArgs {
    /// Coupled diffusion: named preset (default `best`, or the tuned preset of the variant
    /// chosen with --energy/--space/--sampler).
    #[arg(long)]
    preset: Option<String>,
    /// Coupled diffusion: coupling energy, similarity or gaussian.
    #[arg(long)]
    energy: Option<String>,
    /// Coupled diffusion: state space of the chains, latent or codebook.
    #[arg(long)]
    space: Option<String>,
    /// Coupled diffusion: sampler, ode or sde.
    #[arg(long)]
    sampler: Option<String>,
    /// Coupled diffusion: steps T of a pass.
    #[arg(long, allow_negative_numbers = true)]
    steps: Option<i64>,
    /// Coupled diffusion: restarts R after the first pass (0: none).
    #[arg(long, allow_negative_numbers = true)]
    restarts: Option<i64>,
    /// Coupled diffusion: re-noise level ρ of the restarts, a time in (0, 1]; restarts then
    /// re-noise the current estimates instead of starting from fresh noise.
    #[arg(long, allow_negative_numbers = true)]
    renoise: Option<f64>,
    /// Coupled diffusion: guidance scale ζ.
    #[arg(long, allow_negative_numbers = true)]
    guidance: Option<f64>,
    /// Coupled diffusion: codeword width (temperature) τ.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f64>,
}

impl CoupledArgs {
    fn any(&self) -> bool {
        self.preset.is_some()
            || self.energy.is_some()
            || self.space.is_some()
            || self.sampler.is_some()
            || self.steps.is_some()
            || self.restarts.is_some()
            || self.renoise.is_some()
            || self.guidance.is_some()
            || self.temperature.is_some()
    }
}

/// The coupled-diffusion settings the flags ask for, and the name of the preset they start
/// from ([`CoupledOverrides::resolve`]).
fn coupled_config(a: &CoupledArgs) -> Result<(CoupledConfig, String)> {
    /// Parses an optional flag value with the library's `FromStr`, reporting `expected` on error.
    fn flag<T: std::str::FromStr>(
        v: Option<&str>,
        flag: &str,
        expected: &str,
    ) -> Result<Option<T>> {
        v.map(|s| {
            s.parse()
                .map_err(|_| usage(format!("--{flag} must be {expected}, got '{s}'")))
        })
        .transpose()
    }
    let overrides = CoupledOverrides {
        preset: a.preset.clone(),
        energy: flag(a.energy.as_deref(), "energy", "similarity or gaussian")?,
        space: flag(a.space.as_deref(), "space", "latent or codebook")?,
        sampler: flag(a.sampler.as_deref(), "sampler", "ode or sde")?,
        steps: a.steps.map(|t| positive("steps", t, 1)).transpose()?,
        restarts: a.restarts.map(|r| positive("restarts", r, 0)).transpose()?,
        renoise: a.renoise,
        guidance: a.guidance,
        temperature: a.temperature,
    };
    overrides.resolve().map_err(|e| usage(e.to_string()))
}

/// The method of `--method NAME` with the coupled-diffusion flags applied; the preset name when
/// the method is coupled diffusion.
fn method_with_flags(name: &str, c: &CoupledArgs) -> Result<(Method, Option<String>)> {
    if name == "coupled" {
        let (cfg, preset) = coupled_config(c)?;
        return Ok((Method::Coupled(cfg), Some(preset)));
    }
    if c.any() {
        return Err(usage(format!(
            "--preset, --energy, --space, --sampler, --steps, --restarts, --renoise, --guidance \
             and --temperature apply to --method coupled only (got --method {name})"
        )));
    }
    Ok((parse_method(name)?, None))
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Dimension D of the hypervectors.
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    dim: i64,
    /// Number of factors F.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    factors: i64,
    /// Codewords per codebook M.
    #[arg(long, default_value_t = 50, allow_negative_numbers = true)]
    codebook: i64,
    /// Number of trials.
    #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
    trials: i64,
    /// Iteration limit: a number, or `kent`.
    #[arg(long, default_value = "100")]
    max_iters: String,
    /// Seed of the problem and of the methods.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object per method, one per line.
    #[arg(long)]
    json: bool,
}

fn parse_limit(s: &str) -> Result<IterLimit> {
    s.parse().map_err(|_| {
        usage(format!(
            "--max-iters must be a positive integer or 'kent', got '{s}'"
        ))
    })
}

fn parse_method(s: &str) -> Result<Method> {
    s.parse::<Method>().map_err(|e| usage(e.to_string()))
}

fn parse_vsa(s: &str) -> Result<VsaKind> {
    s.parse::<VsaKind>().map_err(|e| usage(e.to_string()))
}

/// Runs one method on one problem, with a progress bar over iterations.
fn solve(
    problem: &Problem,
    fc: &FactorizeConfig,
    label: &str,
    limit: MemoryLimit,
) -> Result<FactorizeReport> {
    let pb = progress_bar(fc.max_iters as u64, false);
    pb.set_message(label.to_string());
    let report = factorize_within(problem, fc, limit, &mut |p: Progress| {
        pb.set_position(p.iteration as u64);
    })?;
    pb.finish_and_clear();
    Ok(report)
}

/// Sizes of a problem as given on the command line, before validation.
struct Sizes {
    dim: i64,
    factors: i64,
    codebook: i64,
    trials: i64,
}

fn problem_config(
    vsa: &str,
    sizes: Sizes,
    gauss: f64,
    flip: f64,
    seed: u64,
) -> Result<ProblemConfig> {
    let Sizes {
        dim,
        factors,
        codebook,
        trials,
    } = sizes;
    let cfg = ProblemConfig {
        vsa: parse_vsa(vsa)?,
        dim: positive("dim", dim, 1)?,
        factors: positive("factors", factors, 2)?,
        codebook_size: positive("codebook", codebook, 1)?,
        trials: positive("trials", trials, 1)?,
        noise: Noise {
            gauss: gauss as f32,
            flip: flip as f32,
        },
        seed,
    };
    if !(0.0..=1.0).contains(&flip) {
        return Err(usage(format!(
            "--noise-flip must lie in [0, 1], got {flip}"
        )));
    }
    if !(gauss.is_finite() && gauss >= 0.0) {
        return Err(usage(format!(
            "--noise-gauss must be finite and non-negative, got {gauss}"
        )));
    }
    cfg.validate().map_err(|e| usage(e.to_string()))?;
    Ok(cfg)
}

fn report_json(
    method: &str,
    pc: &ProblemConfig,
    max_iters: usize,
    r: &FactorizeReport,
) -> serde_json::Value {
    json!({
        "method": method,
        "vsa": pc.vsa.name(),
        "dim": pc.dim,
        "factors": pc.factors,
        "codebook": pc.codebook_size,
        "trials": pc.trials,
        "max_iters": max_iters,
        "seed": pc.seed,
        "noise_gauss": pc.noise.gauss,
        "noise_flip": pc.noise.flip,
        "factor_accuracy": r.factor_accuracy,
        "exact_accuracy": r.exact_accuracy,
        "mean_iterations": r.mean_iterations,
        "converged_fraction": r.converged_fraction,
        "limit_cycle_fraction": r.limit_cycle_fraction,
        "wall_seconds": r.wall_seconds,
        "trials_per_second": r.trials_per_second,
    })
}

const TABLE_HEADER: &str = "method            factor_acc  exact_acc  mean_iters  converged  limit_cycles   wall_s     trials/s";

fn table_row(method: &str, r: &FactorizeReport) -> String {
    format!(
        "{method:<16}  {:>10.4}  {:>9.4}  {:>10.1}  {:>9.3}  {:>12.3}  {:>7.3}  {:>11.0}",
        r.factor_accuracy,
        r.exact_accuracy,
        r.mean_iterations,
        r.converged_fraction,
        r.limit_cycle_fraction,
        r.wall_seconds,
        r.trials_per_second
    )
}

pub fn run_factorize(a: FactorizeArgs, memory: MemoryLimit) -> Result<()> {
    let (method, preset) = method_with_flags(&a.method, &a.coupled)?;
    let limit = parse_limit(&a.max_iters)?;
    let problem = match &a.problem {
        Some(path) => Problem::load_within(path, &device(), memory)?,
        None => {
            let (Some(dim), Some(factors), Some(codebook)) = (a.dim, a.factors, a.codebook) else {
                return Err(usage("--dim, --factors and --codebook are required"));
            };
            let sizes = Sizes {
                dim,
                factors,
                codebook,
                trials: a.trials,
            };
            let pc = problem_config(&a.vsa, sizes, a.noise_gauss, a.noise_flip, a.seed)?;
            // The whole run, checked before the problem is drawn.
            let fc = FactorizeConfig {
                method: method.clone(),
                max_iters: limit.for_problem(pc.codebook_size, pc.factors),
                seed: a.seed,
                threads: 0,
            };
            let mut estimate = pipeline_estimate(&pc, &fc);
            if a.save_problem.is_some() {
                estimate = estimate.max(pc.problem_bytes() + Problem::save_estimate(&pc));
            }
            check_memory(memory, describe_run(&a.method, &pc), estimate)?;
            Problem::generate_within(&pc, &device(), memory)?
        }
    };
    if let Some(path) = &a.save_problem {
        problem.save(path)?;
    }
    let pc = problem.config.clone();
    let max_iters = limit.for_problem(pc.codebook_size, pc.factors);
    let fc = FactorizeConfig {
        method,
        max_iters,
        seed: a.seed,
        threads: 0,
    };
    let r = match solve(&problem, &fc, &a.method, memory) {
        Err(e) => match e.downcast_ref::<recompose_decomp::Error>() {
            Some(
                recompose_decomp::Error::Unsupported { .. } | recompose_decomp::Error::Config(_),
            ) => {
                return Err(usage(e.to_string()));
            }
            _ => return Err(e),
        },
        Ok(r) => r,
    };
    if a.json {
        let mut v = report_json(&a.method, &pc, max_iters, &r);
        add_method_settings(&mut v, &fc.method, preset.as_deref());
        outln!("{v}");
    } else {
        outln!(
            "vsa={} D={} F={} M={} trials={} max_iters={} noise_gauss={} noise_flip={} seed={}",
            pc.vsa.name(),
            pc.dim,
            pc.factors,
            pc.codebook_size,
            pc.trials,
            max_iters,
            pc.noise.gauss,
            pc.noise.flip,
            pc.seed
        );
        if let (Method::Coupled(c), Some(p)) = (&fc.method, &preset) {
            outln!("coupled preset={p} {}", serde_json::to_string(c)?);
        }
        outln!("{TABLE_HEADER}");
        outln!("{}", table_row(&a.method, &r));
    }
    Ok(())
}

/// Adds `preset` and the coupled-diffusion hyperparameters to a JSON report.
fn add_method_settings(v: &mut serde_json::Value, method: &Method, preset: Option<&str>) {
    if let (Method::Coupled(c), Some(obj)) = (method, v.as_object_mut()) {
        obj.insert("preset".into(), json!(preset));
        obj.insert("coupled".into(), json!(c));
    }
}

pub fn run_capacity(a: CapacityArgs, memory: MemoryLimit) -> Result<()> {
    let (method, preset) = method_with_flags(&a.method, &a.coupled)?;
    let limit = parse_limit(&a.max_iters)?;
    if !(a.target > 0.0 && a.target <= 1.0) {
        return Err(usage(format!(
            "--target must lie in (0, 1], got {}",
            a.target
        )));
    }
    let cfg = CapacityConfig {
        method,
        vsa: parse_vsa(&a.vsa)?,
        dim: positive("dim", a.dim, 1)?,
        factors: positive("factors", a.factors, 2)?,
        target: a.target,
        trials: positive("trials", a.trials, 1)?,
        max_iters: limit,
        seed: a.seed,
        m_limit: positive("m-limit", a.m_limit, 1)?,
    };
    if matches!(cfg.method, Method::Als(_) | Method::Coupled(_)) && cfg.vsa != VsaKind::Map {
        return Err(usage(format!(
            "method {} is only available for the map model",
            a.method
        )));
    }
    check_memory(
        memory,
        format_args!(
            "a capacity search of {} up to M = {} ({} trials, D = {}, F = {})",
            a.method, cfg.m_limit, cfg.trials, cfg.dim, cfg.factors
        ),
        cfg.memory_estimate(),
    )?;
    let pb = progress_bar(0, false);
    pb.set_style(indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {msg}",
    )?);
    let report = capacity_within(&cfg, &device(), memory, &mut |p| {
        pb.set_message(format!(
            "M={} exact={:.3} (max_iters {})",
            p.codebook, p.exact_accuracy, p.max_iters
        ));
        pb.tick();
    })
    .map_err(|e| match e {
        recompose_decomp::Error::Unsupported { .. } | recompose_decomp::Error::Config(_) => {
            usage(e.to_string())
        }
        other => other.into(),
    })?;
    pb.finish_and_clear();
    let at = report.at_m_max.as_ref();
    if a.json {
        let v = json!({
            "method": a.method,
            "vsa": cfg.vsa.name(),
            "dim": cfg.dim,
            "factors": cfg.factors,
            "target": cfg.target,
            "trials": cfg.trials,
            "seed": cfg.seed,
            "m_max": report.m_max,
            "max_iters_at_m_max": at.map(|p| p.max_iters),
            "exact_accuracy_at_m_max": at.map(|p| p.exact_accuracy),
            "factor_accuracy_at_m_max": at.map(|p| p.factor_accuracy),
            "evaluations": report.evaluations,
        });
        let mut v = v;
        add_method_settings(&mut v, &cfg.method, preset.as_deref());
        outln!("{v}");
    } else {
        outln!(
            "capacity of {} (vsa={}, D={}, F={}, target exact accuracy {})",
            a.method,
            cfg.vsa.name(),
            cfg.dim,
            cfg.factors,
            cfg.target
        );
        outln!(
            "{:>8}  {:>9}  {:>10}  {:>10}",
            "M",
            "max_iters",
            "exact_acc",
            "factor_acc"
        );
        for p in &report.evaluations {
            outln!(
                "{:>8}  {:>9}  {:>10.4}  {:>10.4}",
                p.codebook,
                p.max_iters,
                p.exact_accuracy,
                p.factor_accuracy
            );
        }
        outln!("m_max = {}", report.m_max);
    }
    Ok(())
}

pub fn run_compare(a: CompareArgs, memory: MemoryLimit) -> Result<()> {
    let limit = parse_limit(&a.max_iters)?;
    let sizes = Sizes {
        dim: a.dim,
        factors: a.factors,
        codebook: a.codebook,
        trials: a.trials,
    };
    let pc = problem_config("map", sizes, 0.0, 0.0, a.seed)?;
    let max_iters = limit.for_problem(pc.codebook_size, pc.factors);
    let configs = METHOD_NAMES
        .iter()
        .map(|name| {
            Ok(FactorizeConfig {
                method: Method::from_name(name)?,
                max_iters,
                seed: a.seed,
                threads: 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // The problem is shared; the methods run one after the other.
    let estimate = configs
        .iter()
        .map(|fc| pipeline_estimate(&pc, fc))
        .fold(Estimate::ZERO, Estimate::max);
    check_memory(memory, describe_run("every method", &pc), estimate)?;
    let problem = Problem::generate_within(&pc, &device(), memory)?;
    if !a.json {
        outln!(
            "factorization comparison: vsa=map D={} F={} M={} trials={} max_iters={} seed={}",
            pc.dim,
            pc.factors,
            pc.codebook_size,
            pc.trials,
            max_iters,
            pc.seed
        );
        outln!("{TABLE_HEADER}");
    }
    for (name, fc) in METHOD_NAMES.iter().zip(&configs) {
        let r = solve(&problem, fc, name, memory)?;
        if a.json {
            outln!("{}", report_json(name, &pc, max_iters, &r));
        } else {
            outln!("{}", table_row(name, &r));
        }
    }
    Ok(())
}

/// "factorizing a map problem of D = …, F = …, M = …, T trials with METHOD", for refusals.
fn describe_run(method: &str, pc: &ProblemConfig) -> String {
    format!("factorizing {} with {method}", pc.describe())
}
