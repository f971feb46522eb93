//! `recompose`: the command-line front end of the recompose toolkit.
//!
//! Subcommands:
//! - `factorize`: factorize bound hypervectors with one method and report accuracy and speed;
//! - `capacity`: search the operational capacity (largest codebook size at a target accuracy);
//! - `compare`: run every factorization method on one problem and print a comparison table;
//! - `train`: train a diffusion model from a TOML configuration or a named preset (exact resume);
//! - `sample`: draw samples from a trained model (CSV or PNG);
//! - `dataset`: write a procedural image dataset with masks and labels;
//! - `decomp-eval`: evaluate a Decomp Diffusion checkpoint on given inputs;
//! - `decompose` / `recombine`: split an image into its factors; compose new images from the
//!   factors of two images or two models;
//! - `compose`: sample a composition of trained models (`ring AND bar`, `left OR right`,
//!   `box_large NOT box_small`) with reverse diffusion or annealed MCMC.
//!
//! Exit status: 0 on success; 2 for bad input (invalid arguments; a file that is missing,
//! unreadable, malformed, mismatched or a checkpoint of another kind; an output that cannot be
//! written); 1 for a failure inside the computation. Errors print one line on stderr.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use recompose_core::memory::{Estimate, MemoryError, MemoryLimit};

/// candle allocates a fresh buffer for every tensor op; with the system allocator, buffers of
/// a megabyte or more are mapped and unmapped each time (page faults on every op). mimalloc keeps
/// them: training the 2-D MLP runs ~1.5× faster.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The exit-status contract, shown by `recompose --help`.
const EXIT_HELP: &str = "Exit status: 0 success; 2 bad input (invalid arguments; a file that is \
missing, unreadable, malformed, mismatched or a checkpoint of another kind; an output that \
cannot be written); 1 a failure inside the computation. Errors print one line on stderr.";

/// Compositional inference with diffusion models and vector-symbolic architectures.
#[derive(Debug, Parser)]
#[command(name = "recompose", version, about, after_help = EXIT_HELP)]
struct Cli {
    /// Most memory a command may use, e.g. 512M, 8G, 1.5GiB or plain bytes (units are powers
    /// of 1024). Every command estimates what its request needs before allocating and refuses
    /// (exit status 2) when the estimate exceeds this. Default: the memory available on the
    /// machine (MemAvailable, or the cgroup's limit when lower).
    #[arg(long, global = true, value_name = "SIZE", allow_hyphen_values = true)]
    max_memory: Option<MemoryLimit>,
    /// Where commands compute: cpu, cuda (the first GPU), cuda:N, or auto (a GPU when this
    /// program was built with the `cuda` feature and one is present, else the CPU). Asking for
    /// a GPU from a build without CUDA, or on a machine without one, is an error (exit status 2).
    #[arg(long, global = true, value_name = "DEVICE", default_value = "cpu")]
    device: DeviceChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Factorize bound hypervectors s = x1 ⊙ … ⊙ xF with one method.
    Factorize(factorize::FactorizeArgs),
    /// Find the largest codebook size a method factorizes at a target exact accuracy.
    Capacity(factorize::CapacityArgs),
    /// Run every factorization method on one problem and print a comparison table.
    Compare(factorize::CompareArgs),
    /// Train a diffusion model (--preset NAME or --config FILE.toml) into --out DIR.
    Train(diffusion::TrainArgs),
    /// Sample from a model trained by `recompose train`.
    Sample(diffusion::SampleArgs),
    /// Sample a composition of trained models, e.g. --expr "ring AND bar".
    Compose(compose::ComposeArgs),
    /// Write a procedural image dataset (PNGs, per-object masks, labels.json).
    Dataset(dataset::DatasetArgs),
    /// Evaluate a Decomp Diffusion checkpoint: latents and composed / per-factor outputs.
    DecompEval(decomp::DecompEvalArgs),
    /// Decompose an image into its factors with a Decomp Diffusion model.
    Decompose(decomp::DecomposeArgs),
    /// Compose a new image from the factors of two images (slice or add), or of two models.
    Recombine(decomp::RecombineArgs),
}

/// `println!` that returns an error instead of panicking when stdout is closed (as in
/// `recompose … | head`); `main` treats a broken pipe as a normal end.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

mod compose;
mod dataset;
mod decomp;
mod diffusion;
mod factorize;
mod probe;

/// A bad argument: reported on one line, exit status 2.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Exit status of a failure inside the computation (the request itself was valid).
const EXIT_INTERNAL: u8 = 1;
/// Exit status of bad input: arguments, files that are missing, unreadable, malformed or of
/// another kind, outputs that cannot be written.
const EXIT_BAD_INPUT: u8 = 2;

/// Whether anything in the chain of `e` is about the input (see [`EXIT_BAD_INPUT`]): a usage
/// error, an I/O error, or a library error that says so.
fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<Usage>()
            || cause.is::<std::io::Error>()
            || cause.is::<MemoryError>()
            || library_bad_input(cause)
    })
}

/// [`recompose_core::Error::is_bad_input`] and its kin, for whichever library raised `e`.
fn library_bad_input(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = e.downcast_ref::<recompose_diffusion::Error>() {
        // A run family of another crate keeps its own error inside.
        return match e {
            recompose_diffusion::Error::Run(inner) => library_bad_input(inner.as_ref()),
            e => e.is_bad_input(),
        };
    }
    if let Some(e) = e.downcast_ref::<recompose_decomp::Error>() {
        return e.is_bad_input();
    }
    if let Some(e) = e.downcast_ref::<recompose_decomp_diffusion::Error>() {
        return e.is_bad_input();
    }
    if let Some(e) = e.downcast_ref::<recompose_compose::Error>() {
        return e.is_bad_input();
    }
    e.downcast_ref::<recompose_core::Error>()
        .is_some_and(recompose_core::Error::is_bad_input)
}

/// The message of `e` and its causes on one line, joined with ": ", leaving out a cause whose
/// text the message already holds (errors that print their source would otherwise repeat it).
/// A multi-line message (a TOML parser's) keeps its lines of text, not its source excerpts.
fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('|') && !is_excerpt(l))
            .collect::<Vec<_>>()
            .join(" ");
        let text = text.as_str();
        if text.is_empty() || msg.contains(text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(text);
    }
    msg
}

/// A line of a parser's source excerpt: `17 | [data]`.
fn is_excerpt(line: &str) -> bool {
    line.split_once('|')
        .is_some_and(|(n, _)| !n.trim().is_empty() && n.trim().chars().all(|c| c.is_ascii_digit()))
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

fn positive(name: &str, v: i64, min: i64) -> Result<usize> {
    if v < min {
        return Err(usage(format!("--{name} must be at least {min}, got {v}")));
    }
    usize::try_from(v).map_err(|_| usage(format!("--{name} is too large: {v}")))
}

fn main() -> ExitCode {
    // Thread count pinned, freed buffers kept for reuse (see `recompose_core::process`).
    recompose_core::process::prepare();
    // Fault injection for the crash-safety tests; inert unless RECOMPOSE_PAUSE_AT is set.
    probe::install_from_env();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, as for every other bad argument.
            let text = e.to_string();
            let line: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{}", line.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", message(&e));
            ExitCode::from(if is_bad_input(&e) {
                EXIT_BAD_INPUT
            } else {
                EXIT_INTERNAL
            })
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let limit = cli.max_memory.unwrap_or_else(MemoryLimit::available);
    let device = cli.device.open()?;
    // Set once, before any command reads it.
    let _ = DEVICE.set(device);
    match cli.command {
        Command::Factorize(a) => factorize::run_factorize(a, limit),
        Command::Capacity(a) => factorize::run_capacity(a, limit),
        Command::Compare(a) => factorize::run_compare(a, limit),
        Command::Train(a) => diffusion::run_train(a, limit),
        Command::Sample(a) => diffusion::run_sample(a, limit),
        Command::Compose(a) => compose::run_compose(a, limit),
        Command::Dataset(a) => dataset::run_dataset(a, limit),
        Command::DecompEval(a) => decomp::run_decomp_eval(a, limit),
        Command::Decompose(a) => decomp::run_decompose(a, limit),
        Command::Recombine(a) => decomp::run_recombine(a, limit),
    }
}

/// Refuses a request whose memory estimate exceeds `limit` (exit status 2), before anything
/// is allocated; the message names the request, the estimate and the limit.
fn check_memory(
    limit: MemoryLimit,
    what: impl std::fmt::Display,
    estimate: Estimate,
) -> Result<()> {
    limit.check(what, estimate).map_err(|e| {
        let hint = match limit.source() {
            recompose_core::memory::LimitSource::Given => "",
            _ => " (--max-memory sets the limit)",
        };
        usage(format!("{e}{hint}"))
    })
}

/// A progress bar on stderr over `len` units, hidden when `quiet` or when stderr is not a
/// terminal.
fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise} < {eta_precise}] {bar:40} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// The device of `--device`, opened by [`run`].
static DEVICE: std::sync::OnceLock<candle_core::Device> = std::sync::OnceLock::new();

/// The device the commands compute on (`--device`; the CPU until [`run`] has opened it).
fn device() -> candle_core::Device {
    DEVICE.get().cloned().unwrap_or(candle_core::Device::Cpu)
}

/// The value of `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// The CUDA GPU of this ordinal.
    Cuda(usize),
    /// A GPU when the build has CUDA and one is present, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "auto" => Ok(Self::Auto),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    format!("unknown device '{s}' (expected cpu, cuda, cuda:N or auto)")
                }),
        }
    }
}

impl DeviceChoice {
    /// Opens the device: an error with exit status 2 for a GPU this build or machine lacks.
    fn open(self) -> Result<candle_core::Device> {
        match self {
            Self::Cpu => Ok(candle_core::Device::Cpu),
            Self::Auto => Ok(if candle_core::utils::cuda_is_available() {
                candle_core::Device::new_cuda(0).unwrap_or(candle_core::Device::Cpu)
            } else {
                candle_core::Device::Cpu
            }),
            Self::Cuda(n) if !candle_core::utils::cuda_is_available() => Err(usage(format!(
                "--device cuda:{n}: this recompose was built without CUDA (build it with \
                 `--features cuda`)"
            ))),
            Self::Cuda(n) => candle_core::Device::new_cuda(n).map_err(|e| {
                let text = e.to_string();
                usage(format!(
                    "--device cuda:{n}: no such GPU here ({})",
                    text.lines().next().unwrap_or_default()
                ))
            }),
        }
    }
}
