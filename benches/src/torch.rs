//! The PyTorch half of `cargo xtask bench diffusion`, `cargo xtask bench decomp` and
//! `cargo xtask bench image`.
//!
//! After criterion has timed `benches/benches/<suite>.rs`, [`torch_comparison`] times the same
//! workloads in PyTorch on the same machine with the same number of threads, and puts both
//! sides in one table (stdout and `docs/results/<suite>-bench.md`). Suite `diffusion`:
//!
//! * `mlp/train-step/batch=1000`: one Adam step of the 2-D residual MLP (Du et al. 2023);
//! * `mlp-energy/train-step/batch=1000`: the same for its energy parameterization
//!   (E = ‖g − x‖², ε̂ = ∇ₓE: a gradient of an input gradient);
//! * `unet/forward/<cfg>/batch=48`: the Decomp Diffusion U-Net's forward pass, no grad, eval mode;
//! * `unet/train-step/<cfg>/batch=16`: one Adam step of that U-Net (x0-prediction MSE).
//!
//! Suite `decomp` (the whole Decomp Diffusion model, encoder + U-Net, K = 3):
//!
//! * `decomp/train-step/<cfg>/batch=16`: one Adam step (encoder in training mode, 48 denoiser
//!   images, x0 MSE of the mean over factors);
//! * `decomp/forward/<cfg>/batch=16`: the composed prediction (one DDIM step of 16 images);
//! * `decomp/encode/<cfg>/batch=16`: the encoder alone, eval mode.
//!
//! Suite `image` (the text-conditioned U-Net of the image-composition recipe, score and energy
//! models; [`crate::step`]):
//!
//! * `text-unet/train-step/batch=32`, `text-unet-energy/train-step/batch=32`: one Adam step;
//! * `text-unet/guided/chains=64`, `text-unet-energy/guided/chains=64`: one guided prediction
//!   for 64 chains (the cost of one sampling step).
//!
//! `<cfg>` runs over the four small configurations of the reference benchmark (32 or 16 px, 32 or
//! 16 base channels). The PyTorch models live in `torchbench.py` (embedded here, written to
//! `target/torchbench.py`), which checks their parameter counts against the reference (denoiser
//! 710,051 / 188,659 / 722,915 / 710,051; whole model 4,597,635 / 4,076,243 / 4,020,675 /
//! 4,007,811) and prints one JSON object on its last stdout line.
//!
//! Timing: Rust = criterion's median time per iteration (`target/criterion/…/new/estimates.json`);
//! PyTorch = median of 10 calls after 3 warm-up calls. Both sides run float32 on the CPU with
//! N threads: `RAYON_NUM_THREADS` if set (the bench sets it to the available parallelism
//! otherwise), passed to `torch.set_num_threads`. With every core in use, a busy neighbour slows
//! either side down many times over: the script measures the load of other processes (from
//! `/proc/stat`) while it times, retimes a workload taken on a busy machine, and the report
//! flags PyTorch timings that stayed busy. Criterion's numbers carry no such check: run the
//! suite on a quiet machine.
//!
//! The two sides run one after the other, minutes apart, and on a shared machine the speed of
//! the cores drifts over such spans by more than the difference being measured (the same
//! step has measured 0.65 s and 1.1 s within minutes on the same machine). So each suite then
//! times its training steps interleaved (the decomp suite each configuration's, the diffusion
//! suite the two MLP steps'): both sides run as warm timing servers (`bench-steps` of the bench
//! crate, the same step as criterion's, and `torchbench.py --serve`), and in each of
//! [`INTERLEAVED_ROUNDS`] rounds each takes [`STEPS_PER_TURN`] steps, the two turns seconds
//! apart and their order alternating between rounds. The report gives, per workload, the median
//! ratio, how many rounds the Rust side won with the one-sided sign test of that count, and the
//! medians over all steps; for the reference workload (configuration a; the ε-prediction MLP),
//! every round.
//!
//! PyTorch comes from a virtualenv at `target/torch-venv` (created with `python3 -m venv`, then
//! `pip install torch==2.15.0 numpy` from PyPI unless `import torch` already works there).
//! Set `RECOMPOSE_TORCH_PYTHON` to an interpreter that has torch to skip the virtualenv.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The benchmark script, written to `target/torchbench.py` before each run.
const SCRIPT: &str = include_str!("torchbench.py");

/// The PyTorch release the comparison is pinned to.
const TORCH_VERSION: &str = "2.15.0";

/// The U-Net configurations, as named in the criterion ids.
const UNET_CONFIGS: [&str; 4] = [
    "a-32px-32ch",
    "b-32px-16ch",
    "c-16px-32ch",
    "d-16px-32ch-attn8",
];

/// The criterion function name of the Rust side (and the suffix of the script's keys).
const FUNCTION: &str = "recompose";

/// Timings of PyTorch workloads during which other processes kept more cores busy than this
/// are flagged in the report (the script's `QUIET_CORES`: it retimes such workloads twice).
const BUSY_CORES: f64 = 0.25;

/// Rounds of the interleaved comparison of each configuration's training step.
pub const INTERLEAVED_ROUNDS: usize = 20;

/// Steps each side takes per turn of a round (the round's time of a side is their median).
pub const STEPS_PER_TURN: usize = 3;

/// The reference configuration, whose interleaved rounds the report lists one by one.
const REFERENCE_CONFIG: &str = "a-32px-32ch";

/// The criterion group of a decomp workload (`train-step`, `forward`) at a configuration (batch
/// 16, as the suite has it).
fn decomp_group(workload: &str, config: &str) -> String {
    format!("decomp/{workload}/{config}/batch=16")
}

/// One interleaved round: the per-step wall times (ms) of the Rust side's and PyTorch's turns.
#[derive(Clone, Debug)]
pub(crate) struct Round {
    pub(crate) rust: Vec<f64>,
    pub(crate) torch: Vec<f64>,
}

impl Round {
    /// The median step of each side, in ms.
    pub(crate) fn medians(&self) -> (f64, f64) {
        (median_of(&self.rust), median_of(&self.torch))
    }
}

/// One row of the comparison.
struct Workload {
    /// Criterion group id.
    group: String,
    /// Items per call, for the throughput columns.
    items: u64,
    /// Unit of the throughput columns.
    unit: &'static str,
}

/// A benchmark suite with a PyTorch side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// `benches/benches/diffusion.rs`: the MLP and the U-Net alone.
    Diffusion,
    /// `benches/benches/decomp.rs`: the whole Decomp Diffusion model.
    Decomp,
    /// `benches/benches/image.rs`: the text-conditioned U-Net of the image-composition recipe.
    Image,
}

impl Suite {
    /// The suite's name (criterion bench target, `--suite` of the script).
    pub fn name(self) -> &'static str {
        match self {
            Self::Diffusion => "diffusion",
            Self::Decomp => "decomp",
            Self::Image => "image",
        }
    }

    fn workloads(self) -> Vec<Workload> {
        let per_config = |kind: &str, batch: usize, items: u64| {
            UNET_CONFIGS.map(|cfg| Workload {
                group: format!("{kind}/{cfg}/batch={batch}"),
                items,
                unit: "img/s",
            })
        };
        match self {
            Self::Diffusion => {
                let mut w: Vec<Workload> = [crate::step::MLP_GROUP, crate::step::ENERGY_GROUP]
                    .map(|group| Workload {
                        group: group.into(),
                        items: 1,
                        unit: "steps/s",
                    })
                    .into();
                w.extend(per_config("unet/forward", 48, 48));
                w.extend(per_config("unet/train-step", 16, 16));
                w
            }
            Self::Decomp => {
                let mut w = Vec::new();
                w.extend(per_config("decomp/train-step", 16, 16));
                w.extend(per_config("decomp/forward", 16, 48));
                w.extend(per_config("decomp/encode", 16, 16));
                w
            }
            Self::Image => [false, true]
                .into_iter()
                .flat_map(|energy| {
                    [
                        Workload {
                            group: crate::step::text_train_group(energy),
                            items: crate::step::TEXT_BATCH as u64,
                            unit: "img/s",
                        },
                        Workload {
                            group: crate::step::text_guided_group(energy),
                            items: crate::step::GUIDED_CHAINS as u64,
                            unit: "chains/s",
                        },
                    ]
                })
                .collect(),
        }
    }
}

/// What `torchbench.py` reports.
struct TorchReport {
    version: String,
    threads: u64,
    /// Seconds per call, by `<group>/recompose`.
    results: BTreeMap<String, f64>,
    /// Mean cores used by other processes while each workload was timed.
    background: BTreeMap<String, f64>,
}

/// Runs the PyTorch side of a benchmark suite and writes the comparison with the criterion
/// results already in the target directory to `docs/results/<suite>-bench.md`.
///
/// # Errors
///
/// When the virtualenv cannot be set up, the script fails or prints no JSON report, or the
/// report cannot be written. Missing criterion results are reported as "n/a", not errors.
pub fn torch_comparison(root: &Path, suite: Suite) -> Result<()> {
    let threads = threads();
    let python = python(root)?;
    let script = write_script(root)?;
    println!("torch: running {} with {threads} threads", script.display());
    let torch = run_script(root, &python, &script, threads, suite, None)?;

    let criterion = criterion_dir(root);
    let rust = criterion_medians(&criterion)?;
    let rows = table_rows(suite, &rust, &torch);
    let groups: Vec<String> = match suite {
        Suite::Decomp => UNET_CONFIGS
            .iter()
            .map(|&c| decomp_group("train-step", c))
            .collect(),
        Suite::Diffusion => vec![
            crate::step::MLP_GROUP.into(),
            crate::step::ENERGY_GROUP.into(),
        ],
        Suite::Image => vec![
            crate::step::text_train_group(false),
            crate::step::text_train_group(true),
        ],
    };
    let server = build_server(root)?;
    let interleaved = groups
        .into_iter()
        .map(|group| {
            let rounds = interleaved_rounds(root, &server, &python, &script, threads, &group)?;
            Ok((group, rounds))
        })
        .collect::<Result<Vec<_>>>()?;
    let header = [
        "workload",
        "Rust ms",
        "PyTorch ms",
        "PyTorch / Rust",
        "Rust",
        "PyTorch",
    ];
    println!();
    print!("{}", aligned(&header, &rows));

    let busy: Vec<(&String, f64)> = torch
        .background
        .iter()
        .filter(|(_, c)| **c > BUSY_CORES)
        .map(|(k, c)| (k, *c))
        .collect();
    for (key, cores) in &busy {
        eprintln!(
            "warning: other processes used {cores:.2} cores while PyTorch timed {key}; \
             its timing is not comparable"
        );
    }

    let reference = match suite {
        Suite::Decomp => decomp_group("train-step", REFERENCE_CONFIG),
        Suite::Diffusion => crate::step::MLP_GROUP.to_string(),
        Suite::Image => crate::step::text_train_group(false),
    };
    let interleaved_md =
        (!interleaved.is_empty()).then(|| interleaved_section(&interleaved, &reference));
    if let Some(section) = &interleaved_md {
        println!("\n{section}");
    }

    let mut md = markdown(suite, &header, &rows, &torch, threads, &busy);
    if let Some(section) = &interleaved_md {
        md.push('\n');
        md.push_str(section);
    }
    let out = root.join(format!("docs/results/{}-bench.md", suite.name()));
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
    println!("\nwrote {}", out.display());
    Ok(())
}

/// Writes the benchmark script to `target/torchbench.py`; its path.
pub(crate) fn write_script(root: &Path) -> Result<PathBuf> {
    let script = root.join("target/torchbench.py");
    fs::create_dir_all(root.join("target")).context("creating target/")?;
    fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    Ok(script)
}

/// The thread count of both sides: `RAYON_NUM_THREADS` (candle's pool) or the available cores.
pub fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A Python interpreter with torch: `RECOMPOSE_TORCH_PYTHON`, or the project's virtualenv,
/// created and filled on first use.
fn python(root: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RECOMPOSE_TORCH_PYTHON") {
        let p = PathBuf::from(p);
        println!("torch: using RECOMPOSE_TORCH_PYTHON={}", p.display());
        return Ok(p);
    }
    let venv = root.join("target/torch-venv");
    let python = venv.join("bin/python");
    if python.exists() {
        println!("torch: reusing the virtualenv {}", venv.display());
    } else {
        println!("torch: creating a virtualenv at {}", venv.display());
        let mut cmd = Command::new("python3");
        cmd.arg("-m").arg("venv").arg(&venv);
        run(&mut cmd, root)?;
    }
    let check = Command::new(&python)
        .args(["-c", "import torch, numpy; print(torch.__version__)"])
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("could not start {}", python.display()))?;
    if check.status.success() {
        let version = String::from_utf8_lossy(&check.stdout);
        println!("torch: torch {} already installed", version.trim());
        if !version.trim().starts_with(TORCH_VERSION) {
            eprintln!("warning: the comparison is pinned to torch {TORCH_VERSION}");
        }
    } else {
        println!(
            "torch: installing torch=={TORCH_VERSION} and numpy from PyPI into {} \
             (a large download)",
            venv.display()
        );
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "pip", "install", "--disable-pip-version-check"])
            .arg(format!("torch=={TORCH_VERSION}"))
            .arg("numpy");
        run(&mut cmd, root)?;
    }
    Ok(python)
}

fn run(cmd: &mut Command, root: &Path) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .current_dir(root)
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs the script (progress on stderr) and parses the JSON object on its last stdout line.
fn run_script(
    root: &Path,
    python: &Path,
    script: &Path,
    threads: usize,
    suite: Suite,
    only: Option<&str>,
) -> Result<TorchReport> {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--suite")
        .arg(suite.name())
        .arg("--threads")
        .arg(threads.to_string())
        .current_dir(root)
        .stderr(Stdio::inherit());
    if let Some(only) = only {
        cmd.arg("--only").arg(only);
    }
    eprintln!("$ {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("torchbench.py printed nothing")?;
    let json: Value = serde_json::from_str(line)
        .with_context(|| format!("torchbench.py's last line is not JSON: {line}"))?;
    let seconds = |field: &str| -> Result<BTreeMap<String, f64>> {
        let Some(map) = json.get(field).and_then(Value::as_object) else {
            return Ok(BTreeMap::new());
        };
        map.iter()
            .map(|(k, v)| {
                let s = v
                    .as_f64()
                    .with_context(|| format!("torchbench.py: {field}.{k} is not a number"))?;
                Ok((k.clone(), s))
            })
            .collect()
    };
    Ok(TorchReport {
        version: json
            .get("torch")
            .and_then(Value::as_str)
            .context("torchbench.py: no torch version")?
            .to_owned(),
        threads: json
            .get("threads")
            .and_then(Value::as_u64)
            .context("torchbench.py: no thread count")?,
        results: seconds("results")?,
        background: seconds("background_cores")?,
    })
}

/// A warm timing server (`bench-steps` or `torchbench.py --serve`): the protocol of
/// both is `ready` once warm, then one line of step times for each line holding a step count.
struct Server {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts `cmd` (stderr passes through) and waits for its `ready`.
    fn start(name: &'static str, mut cmd: Command) -> Result<Self> {
        eprintln!("$ {cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("could not start {cmd:?}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?);
        let mut server = Self {
            name,
            child,
            stdin,
            stdout,
        };
        let line = server.line()?;
        if line.trim() != "ready" {
            bail!("{name}: expected 'ready', got '{}'", line.trim());
        }
        Ok(server)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .with_context(|| format!("reading from {}", self.name))?;
        if n == 0 {
            let status = self.child.wait()?;
            bail!("{} ended ({status}) before answering", self.name);
        }
        Ok(line)
    }

    /// Takes `n` steps; their wall times in ms.
    fn steps(&mut self, n: usize) -> Result<Vec<f64>> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{n}").with_context(|| format!("writing to {}", self.name))?;
        stdin.flush()?;
        let line = self.line()?;
        let times = line
            .split_whitespace()
            .map(|v| v.parse::<f64>().map(|s| s * 1e3))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: not a list of times: '{}'", self.name, line.trim()))?;
        if times.len() != n {
            bail!(
                "{}: asked for {n} steps, got {} times",
                self.name,
                times.len()
            );
        }
        Ok(times)
    }

    /// Closes the server's input and waits for it to exit.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("{} exited with {status}", self.name);
        }
        Ok(())
    }
}

/// The interleaved comparison of Decomp Diffusion workloads at the reference benchmark's
/// configurations, for `cargo xtask reproduce decomposition`: per `(workload, config)`
/// (`workload` = `train-step` or `forward`, `config` as in the criterion ids), its criterion
/// group and the [`Summary`] of [`INTERLEAVED_ROUNDS`] rounds.
///
/// # Errors
///
/// When PyTorch cannot be set up or a server fails.
pub fn interleaved_summaries(
    root: &Path,
    workloads: &[(&str, &str)],
) -> Result<Vec<(String, Summary)>> {
    let threads = threads();
    let python = python(root)?;
    let script = write_script(root)?;
    let server = build_server(root)?;
    workloads
        .iter()
        .map(|&(workload, config)| {
            let group = decomp_group(workload, config);
            let rounds = interleaved_rounds(root, &server, &python, &script, threads, &group)?;
            Ok((group, Summary::of(&rounds)))
        })
        .collect()
}

/// Builds the Rust timing server `bench-steps` (release); its path.
fn build_server(root: &Path) -> Result<PathBuf> {
    const BIN: &str = "bench-steps";
    crate::workspace::cargo(&[
        "build",
        "--release",
        "-p",
        "recompose-benches",
        "--bin",
        BIN,
    ])?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d));
    Ok(target.join("release").join(BIN))
}

/// [`INTERLEAVED_ROUNDS`] rounds of the workload of criterion group `group`, both sides as warm
/// servers making [`STEPS_PER_TURN`] calls a turn, the first turn alternating between the sides.
fn interleaved_rounds(
    root: &Path,
    server: &Path,
    python: &Path,
    script: &Path,
    threads: usize,
    group: &str,
) -> Result<Vec<Round>> {
    let suite = if group.starts_with("decomp/") {
        Suite::Decomp
    } else if group.starts_with("text-unet") {
        Suite::Image
    } else {
        Suite::Diffusion
    };
    let mut rust_cmd = Command::new(server);
    rust_cmd
        .arg(group)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .current_dir(root);
    let mut torch_cmd = Command::new(python);
    torch_cmd
        .arg(script)
        .args(["--suite", suite.name(), "--threads", &threads.to_string()])
        .args(["--only", &format!("{group}/{FUNCTION}"), "--serve"])
        .current_dir(root);
    interleave(
        group,
        rust_cmd,
        torch_cmd,
        INTERLEAVED_ROUNDS,
        STEPS_PER_TURN,
    )
}

/// `rounds` interleaved rounds of `group` between the warm servers `rust_cmd` (`bench-steps`)
/// and `torch_cmd` (`torchbench.py --serve`), each taking `steps` calls a turn, the first turn
/// alternating between the sides.
pub(crate) fn interleave(
    group: &str,
    rust_cmd: Command,
    torch_cmd: Command,
    rounds: usize,
    steps: usize,
) -> Result<Vec<Round>> {
    println!("interleaved rounds of {group}: starting both servers");
    let mut rust = Server::start("bench-steps", rust_cmd)?;
    let mut torch = Server::start("torchbench.py --serve", torch_cmd)?;
    let mut out = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (r, t) = if round % 2 == 0 {
            let r = rust.steps(steps)?;
            (r, torch.steps(steps)?)
        } else {
            let t = torch.steps(steps)?;
            (rust.steps(steps)?, t)
        };
        let r = Round { rust: r, torch: t };
        let (rm, tm) = r.medians();
        println!(
            "{group} round {} of {rounds}: Rust {rm:.1} ms, PyTorch {tm:.1} ms, ratio {:.2}",
            round + 1,
            tm / rm
        );
        out.push(r);
    }
    rust.finish()?;
    torch.finish()?;
    Ok(out)
}

/// P(X ≥ k) for X ~ Binomial(n, 1/2): the one-sided sign test of k wins in n rounds.
fn sign_test(k: usize, n: usize) -> f64 {
    // C(n, i) / 2^n summed in f64 (n is small).
    let mut c = 1.0f64;
    let mut tail = 0.0;
    for i in 0..=n {
        if i >= k {
            tail += c;
        }
        c = c * (n - i) as f64 / (i + 1) as f64;
    }
    tail / 2f64.powi(n as i32)
}

/// What the interleaved rounds of one workload show.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Median of the rounds' PyTorch / Rust ratios.
    pub median_ratio: f64,
    /// The smallest round ratio.
    pub min_ratio: f64,
    /// The largest round ratio.
    pub max_ratio: f64,
    /// Rounds with a ratio above 1 (a tie is not a win), of `rounds`.
    pub wins: usize,
    /// Rounds run.
    pub rounds: usize,
    /// One-sided sign test of `wins` against even odds.
    pub p: f64,
    /// Median over every call of the Rust side, ms.
    pub rust_ms: f64,
    /// Median over every call of the PyTorch side, ms.
    pub torch_ms: f64,
}

impl Summary {
    /// The summary of interleaved rounds.
    pub(crate) fn of(rounds: &[Round]) -> Self {
        let mut ratios: Vec<f64> = rounds
            .iter()
            .map(|r| {
                let (rm, tm) = r.medians();
                tm / rm
            })
            .collect();
        let wins = ratios.iter().filter(|&&q| q > 1.0).count();
        ratios.sort_by(f64::total_cmp);
        let all = |side: fn(&Round) -> &Vec<f64>| -> Vec<f64> {
            rounds
                .iter()
                .flat_map(|r| side(r).iter().copied())
                .collect()
        };
        Self {
            median_ratio: median(&ratios),
            min_ratio: ratios[0],
            max_ratio: ratios[ratios.len() - 1],
            wins,
            rounds: rounds.len(),
            p: sign_test(wins, rounds.len()),
            rust_ms: median_of(&all(|r| &r.rust)),
            torch_ms: median_of(&all(|r| &r.torch)),
        }
    }
}

/// The report section of the interleaved rounds: a summary row per workload, then the rounds of
/// the `reference` group one by one.
fn interleaved_section(runs: &[(String, Vec<Round>)], reference: &str) -> String {
    let mut s = format!(
        "## Interleaved training steps\n\nThe two sides above ran minutes apart, and this \
         machine's speed drifts over minutes by more than the difference measured. Here both \
         sides ran each training step as warm servers \
         (`bench-steps`, the step criterion times, and `torchbench.py --serve`), taking \
         turns: in each of {INTERLEAVED_ROUNDS} rounds each side took {STEPS_PER_TURN} steps \
         (its time is their median), the two turns seconds apart and the side that goes first \
         alternating between rounds, so that drift reaches both sides of a round alike. A round \
         is a win for the Rust side when its time is lower; p is the one-sided sign test of the \
         wins against even odds.\n\n\
         | workload | median PyTorch / Rust (range) | Rust faster | p | Rust ms | PyTorch ms |\n\
         |---|---:|---:|---:|---:|---:|\n"
    );
    for (group, rounds) in runs {
        let m = Summary::of(rounds);
        let _ = writeln!(
            s,
            "| {group} | **{:.2}** ({:.2}–{:.2}) | {} of {} | {:.1e} | {:.1} | {:.1} |",
            m.median_ratio, m.min_ratio, m.max_ratio, m.wins, m.rounds, m.p, m.rust_ms, m.torch_ms
        );
    }
    let _ = writeln!(
        s,
        "\nRust ms and PyTorch ms: medians over all {} steps of a side.",
        INTERLEAVED_ROUNDS * STEPS_PER_TURN
    );
    if let Some((group, rounds)) = runs.iter().find(|(g, _)| g == reference) {
        let _ = writeln!(s, "\n### Rounds: `{group}`\n");
        s.push_str(&rounds_table(rounds));
    }
    s
}

/// The rounds as a markdown table (each side's median step per round and their ratio).
fn rounds_table(rounds: &[Round]) -> String {
    let mut s = String::from(
        "| round | first | Rust ms (median) | PyTorch ms (median) | PyTorch / Rust |\n\
         |---:|---|---:|---:|---:|\n",
    );
    for (i, r) in rounds.iter().enumerate() {
        let (rm, tm) = r.medians();
        let first = if i % 2 == 0 { "Rust" } else { "PyTorch" };
        let _ = writeln!(
            s,
            "| {} | {first} | {rm:.1} | {tm:.1} | {:.2} |",
            i + 1,
            tm / rm
        );
    }
    s
}

/// The median of unsorted values.
fn median_of(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    median(&v)
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Where criterion writes: `$CRITERION_HOME`, `$CARGO_TARGET_DIR/criterion` or
/// `<root>/target/criterion` (the order criterion itself uses).
fn criterion_dir(root: &Path) -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return root.join(home);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir).join("criterion"),
        None => root.join("target/criterion"),
    }
}

/// Median nanoseconds per iteration of every benchmark of the latest run, by
/// `<group id>/<function id>`.
///
/// Criterion flattens ids into `<group dir>/<function dir>` (with `/` turned into `_`, names
/// truncated), so the ids are taken from each `new/benchmark.json` rather than rebuilt.
fn criterion_medians(dir: &Path) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let Ok(groups) = fs::read_dir(dir) else {
        eprintln!("warning: no criterion results in {}", dir.display());
        return Ok(out);
    };
    for group in groups {
        let group = group?.path();
        let Ok(functions) = fs::read_dir(&group) else {
            continue;
        };
        for function in functions {
            let new = function?.path().join("new");
            let (Ok(meta), Ok(est)) = (
                fs::read_to_string(new.join("benchmark.json")),
                fs::read_to_string(new.join("estimates.json")),
            ) else {
                continue;
            };
            let meta: Value = serde_json::from_str(&meta)
                .with_context(|| format!("parsing {}", new.join("benchmark.json").display()))?;
            let est: Value = serde_json::from_str(&est)
                .with_context(|| format!("parsing {}", new.join("estimates.json").display()))?;
            let (Some(g), Some(f), Some(ns)) = (
                meta.get("group_id").and_then(Value::as_str),
                meta.get("function_id").and_then(Value::as_str),
                est.pointer("/median/point_estimate")
                    .and_then(Value::as_f64),
            ) else {
                continue;
            };
            out.insert(format!("{g}/{f}"), ns);
        }
    }
    Ok(out)
}

fn table_rows(suite: Suite, rust: &BTreeMap<String, f64>, torch: &TorchReport) -> Vec<[String; 6]> {
    suite
        .workloads()
        .into_iter()
        .map(|w| {
            let key = format!("{}/{FUNCTION}", w.group);
            let r = rust.get(&key).map(|ns| ns * 1e-9);
            let p = torch.results.get(&key).copied();
            if r.is_none() {
                eprintln!("warning: no criterion result for {key}");
            }
            if p.is_none() {
                eprintln!("warning: no PyTorch result for {key}");
            }
            let ms = |s: Option<f64>| s.map_or("n/a".into(), |s| format!("{:.1}", s * 1e3));
            let rate = |s: Option<f64>| {
                s.map_or("n/a".into(), |s| {
                    format!("{} {}", significant(w.items as f64 / s), w.unit)
                })
            };
            let ratio = match (r, p) {
                (Some(r), Some(p)) => format!("{:.2}", p / r),
                _ => "n/a".into(),
            };
            [w.group, ms(r), ms(p), ratio, rate(r), rate(p)]
        })
        .collect()
}

/// Three significant digits, without an exponent.
fn significant(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A plain-text table with right-aligned numbers.
fn aligned(header: &[&str; 6], rows: &[[String; 6]]) -> String {
    let mut width = header.map(str::len);
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, cells: [&str; 6]| {
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            if i == 0 {
                let _ = write!(s, "{sep}{cell:<w$}");
            } else {
                let _ = write!(s, "{sep}{cell:>w$}");
            }
        }
        s.push('\n');
    };
    line(&mut s, *header);
    for row in rows {
        line(&mut s, [0, 1, 2, 3, 4, 5].map(|i| row[i].as_str()));
    }
    s
}

fn markdown(
    suite: Suite,
    header: &[&str; 6],
    rows: &[[String; 6]],
    torch: &TorchReport,
    threads: usize,
    busy: &[(&String, f64)],
) -> String {
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut s = String::new();
    let name = suite.name();
    let title = match suite {
        Suite::Diffusion => "Diffusion benchmarks",
        Suite::Decomp => "Decomp Diffusion benchmarks",
        Suite::Image => "Image-composition benchmarks",
    };
    let _ = writeln!(s, "# {title}: recompose (candle) vs PyTorch\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench {name}` on {} (UTC).\n",
        today()
    );
    let _ = writeln!(s, "- Machine: {nproc} CPUs available, {}.", cpu_model());
    let _ = writeln!(
        s,
        "- Threads: {threads} on both sides (candle's rayon pool; `torch.set_num_threads({})`).",
        torch.threads
    );
    let _ = writeln!(s, "- PyTorch {} (CPU, float32).", torch.version);
    let _ = writeln!(
        s,
        "- Rust: criterion's median time per iteration (`benches/benches/{name}.rs`). \
         PyTorch: median of 10 calls after 3 warm-up calls (`benches/src/torchbench.py`), \
         the same models, shapes and optimizer (Adam, lr 1e-3)."
    );
    let throughput = match suite {
        Suite::Diffusion => {
            "optimizer steps per second for the MLP, denoised images per second for the U-Net \
             (48 per forward call, 16 per training step)"
        }
        Suite::Decomp => {
            "training images per second (16 per step), denoiser images per second for the \
             composed prediction (16 images × 3 factors per call; a DDIM sampling run of S \
             steps costs S such calls), encoded images per second"
        }
        Suite::Image => {
            "training images per second (32 per step), chains per second of one guided \
             prediction (64 chains, the network on 128 rows; a sampling run of S steps costs S \
             such calls)"
        }
    };
    let _ = writeln!(
        s,
        "- PyTorch / Rust > 1 means the Rust side is faster. Throughput: {throughput}.\n"
    );
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    let configs = "Configurations: a = 32 px, 32 channels; b = 32 px, 16 channels; \
         c = 16 px, 32 channels, attention at 16×16 and 8×8; d = 16 px, 32 channels, attention \
         at 8×8 (channel multipliers 1, 2; one residual block per level; 16-group GroupNorm)";
    match suite {
        Suite::Diffusion => {
            let _ = writeln!(
                s,
                "\nWorkloads: `mlp/train-step/batch=1000` = one training step (forward, MSE, \
                 backward, Adam) of the 2-D residual MLP of Du et al. 2023 (4 blocks, width 128, \
                 learned time embedding); `mlp-energy/train-step/batch=1000` = the same network \
                 as an energy model (E = ‖g − x‖², the loss on ε̂ = ∇ₓE, so the backward pass \
                 differentiates an input gradient: PyTorch with `create_graph=True`); \
                 `unet/forward/<cfg>/batch=48` = the Decomp Diffusion \
                 U-Net's forward pass without gradients; `unet/train-step/<cfg>/batch=16` = one \
                 x0-prediction training step of that U-Net. {configs}."
            );
        }
        Suite::Decomp => {
            let _ = writeln!(
                s,
                "\nWorkloads (the whole model: latent encoder with 64 channels and batch norm, \
                 shared U-Net, K = 3 factors of d = 32): `decomp/train-step/<cfg>/batch=16` = \
                 encoder in training mode, the 3 factors as one batch of 48 denoiser images, \
                 mean over factors, x0 MSE, backward, optimizer step; \
                 `decomp/forward/<cfg>/batch=16` = the composed prediction from given latents \
                 without gradients; `decomp/encode/<cfg>/batch=16` = the encoder in evaluation \
                 mode. {configs}. The PyTorch models are written from the released code's \
                 module tree and have its parameter counts (asserted); the released code's own \
                 timings on another 2-vCPU machine (reference README: train 0.752 / 0.393 / \
                 0.256 / 0.201 s per step, forward 208 / 86 / 72 / 51 ms, encoder 38 / 37 / 13 \
                 / 13 ms for a–d) are a guide to the machine, not part of this comparison."
            );
        }
        Suite::Image => {
            let _ = writeln!(
                s,
                "\nWorkloads (the model of the image-composition recipe, \
                 `cargo xtask reproduce image-composition`: a text encoder of 2 pre-norm \
                 transformer layers, width 64, 4 heads, over 8 tokens; a 32 px U-Net with 32 \
                 base channels, multipliers 1, 2, 2, one residual block per level, attention \
                 at 8 px with 32 channels per head, 16-group GroupNorm, a time embedding of \
                 128, coordinate channels, the pooled prompt vector joined to the time \
                 embedding and cross-attention to the token states in every attention block): \
                 `text-unet/train-step/batch=32` = text encoder and U-Net forward, ε MSE, \
                 backward, optimizer step; `text-unet/guided/chains=64` = one \
                 classifier-free-guided prediction for 64 chains under one prompt (the empty \
                 prompt and the prompt encoded, the U-Net on the doubled batch of 128) without \
                 parameter gradients; `text-unet-energy/…` = the same network as an energy \
                 model (E = ‖g − x‖², ε̂ = ∇ₓE: the training step differentiates an input \
                 gradient, PyTorch with `create_graph=True`; the guided prediction is an input \
                 gradient). The PyTorch model has the Rust model's parameter count \
                 (asserted)."
            );
        }
    }
    if !busy.is_empty() {
        let _ = writeln!(
            s,
            "\n**Caution:** other processes were busy while PyTorch timed some workloads \
             (mean cores in use: {}); those timings are not comparable.",
            busy.iter()
                .map(|(k, c)| format!("`{}` {c:.2}", k.trim_end_matches("/recompose")))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s
}

/// The first `model name` of /proc/cpuinfo.
pub(crate) fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Today's date (UTC) as YYYY-MM-DD.
pub(crate) fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_date((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PyTorch twin of the image-composition recipe's model has as many parameters as the
    /// Rust model (the script asserts its own count against `TEXT_UNET_PARAMS`).
    #[test]
    fn the_torch_text_unet_has_the_rust_parameter_count() -> Result<()> {
        let (_, _, store) = crate::step::text_unet(false, &candle_core::Device::Cpu)
            .map_err(anyhow::Error::from_boxed)?;
        let rust: usize = store.vars().iter().map(|(_, v)| v.elem_count()).sum();
        let line = SCRIPT
            .lines()
            .find_map(|l| l.strip_prefix("TEXT_UNET_PARAMS = "))
            .context("TEXT_UNET_PARAMS not in torchbench.py")?;
        assert_eq!(line.replace('_', "").parse::<usize>()?, rust);
        Ok(())
    }

    #[test]
    fn interleaved_rounds_report_the_median_ratio_and_the_sign_test() {
        assert_eq!(median(&[1.0, 2.0, 7.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 9.0]), 2.5);
        assert_eq!(median_of(&[9.0, 1.0, 3.0]), 3.0);
        let round = |rust: [f64; 3], torch: [f64; 3]| Round {
            rust: rust.to_vec(),
            torch: torch.to_vec(),
        };
        let rounds = vec![
            round([100.0, 90.0, 500.0], [120.0, 130.0, 110.0]),
            round([200.0, 200.0, 210.0], [180.0, 170.0, 190.0]),
            round([100.0, 100.0, 100.0], [100.0, 100.0, 100.0]),
        ];
        let m = Summary::of(&rounds);
        // Ratios 1.2, 0.9, 1.0; only round 1 is a win (a tie is not): P(X ≥ 1) = 1 − 1/8.
        // All nine steps: medians 100 (Rust) and 120 (PyTorch).
        assert_eq!(
            m,
            Summary {
                median_ratio: 1.0,
                min_ratio: 0.9,
                max_ratio: 1.2,
                wins: 1,
                rounds: 3,
                p: 0.875,
                rust_ms: 100.0,
                torch_ms: 120.0,
            }
        );
        let section = interleaved_section(
            &[
                (decomp_group("train-step", "b-32px-16ch"), rounds.clone()),
                (decomp_group("train-step", REFERENCE_CONFIG), rounds),
            ],
            &decomp_group("train-step", REFERENCE_CONFIG),
        );
        assert!(
            section.contains(
                "| decomp/train-step/b-32px-16ch/batch=16 | **1.00** (0.90–1.20) | 1 of 3 | \
                 8.8e-1 | 100.0 | 120.0 |"
            ),
            "{section}"
        );
        // Only the reference configuration's rounds are listed.
        assert_eq!(section.matches("### Rounds").count(), 1, "{section}");
        assert!(section.contains("### Rounds: `decomp/train-step/a-32px-32ch/batch=16`"));
        assert!(
            section.contains("| 1 | Rust | 100.0 | 120.0 | 1.20 |"),
            "{section}"
        );
        assert!(
            section.contains("| 2 | PyTorch | 200.0 | 180.0 | 0.90 |"),
            "{section}"
        );
    }

    #[test]
    fn the_sign_test_is_the_binomial_tail() {
        assert_eq!(sign_test(0, 5), 1.0);
        assert_eq!(sign_test(5, 5), 1.0 / 32.0);
        assert_eq!(sign_test(4, 5), 6.0 / 32.0);
        // 15 of 20: (C(20,15) + … + C(20,20)) / 2^20 = 21700 / 1048576.
        assert!((sign_test(15, 20) - 21_700.0 / 1_048_576.0).abs() < 1e-15);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_415), (2025, 11, 23));
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }

    #[test]
    fn the_script_times_every_workload() {
        for pattern in [
            "mlp/train-step/batch={batch}/recompose",
            "mlp-energy/train-step/batch={batch}/recompose",
            "unet/forward/{name}/batch={batch}/recompose",
            "unet/train-step/{name}/batch={batch}/recompose",
        ] {
            assert!(SCRIPT.contains(pattern), "{pattern} not in torchbench.py");
        }
        for cfg in UNET_CONFIGS {
            assert!(
                SCRIPT.contains(&format!("(\"{cfg}\"")),
                "{cfg} not in torchbench.py"
            );
        }
        for pattern in [
            "decomp/train-step/{name}/batch={batch}/recompose",
            "decomp/forward/{name}/batch={batch}/recompose",
            "decomp/encode/{name}/batch={batch}/recompose",
        ] {
            assert!(SCRIPT.contains(pattern), "{pattern} not in torchbench.py");
        }
        assert_eq!(
            Suite::Diffusion.workloads().len(),
            2 + 2 * UNET_CONFIGS.len()
        );
        assert_eq!(Suite::Decomp.workloads().len(), 3 * UNET_CONFIGS.len());
        for w in Suite::Image.workloads() {
            let model = w.group.split('/').next().unwrap_or_default();
            let kind = w.group.split('/').nth(1).unwrap_or_default();
            assert!(
                SCRIPT.contains(&format!("\"{model}\"")) && SCRIPT.contains(&format!("/{kind}/")),
                "{} not in torchbench.py",
                w.group
            );
        }
    }
}
