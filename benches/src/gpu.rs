//! The prepared GPU runs: one command each, from binaries built elsewhere (`cargo xtask gpu
//! build` puts them in `.gpu/`), each writing its section of `docs/results/gpu.md`.
//!
//! * [`check`] (`recompose-gpu check`): the device parity tests on the GPU (the `parity` test
//!   binary, every check on CUDA device 0 against the CPU fast paths) and the throughput of the
//!   project's training and sampling workloads against PyTorch on the same GPU (`bench-steps`
//!   and `torchbench.py --serve`, interleaved as in `cargo xtask bench`): the 2-D MLP step and
//!   its energy form at batch 1000, the Decomp Diffusion training step (configuration a) at
//!   batch 16 and 128, and its composed prediction at batch 16; and data-parallel training with
//!   a world of one over NCCL against the single process (the same bytes expected). Under
//!   three minutes on an H200.
//! * [`composition`] (`recompose-gpu composition`): the twelve 2-D models of `reproduce
//!   composition --full` trained at the paper's budget on the GPU, all at once (each training on
//!   its own CUDA stream), then the whole composition evaluation on the CPU's cores
//!   (`docs/results/composition-gpu.md`); the section sets every model's training time and every
//!   composition's numbers next to the CPU-trained models' (`composition-full`). Rerun after a
//!   cut: finished models are kept and cut trainings resume from their checkpoints.
//! * [`tetrominoes`] (`recompose-gpu tetrominoes`): the `decomp-tetrominoes` model at its full
//!   recipe (15 000 steps at batch 32) on the GPU, resumable from its checkpoint (every 250
//!   steps), then both it and the CPU-trained fixture evaluated on the same held-out images.
//!
//! The section writer keeps the other runs' sections: each run replaces only the text between
//! its own `<!-- begin KEY -->` and `<!-- end KEY -->` markers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::composition::{CompositionArgs, TrainDevice};
use crate::torch::{Summary, interleave, write_script};
use crate::workspace::{option_value, positive_option};

/// The workloads of the check: (criterion-style group, `torchbench.py` suite, batch).
pub const CHECK_WORKLOADS: [(&str, &str, usize); 5] = [
    ("mlp/train-step/batch=1000", "diffusion", 1000),
    ("mlp-energy/train-step/batch=1000", "diffusion", 1000),
    ("decomp/train-step/a-32px-32ch/batch=16", "decomp", 16),
    ("decomp/train-step/a-32px-32ch/batch=128", "decomp", 128),
    ("decomp/forward/a-32px-32ch/batch=16", "decomp", 16),
];

/// The PyTorch anchors of the spec (H200, PyTorch 2.11 eager, fp32 without TF32), ms, by group.
const ANCHORS: [(&str, f64); 5] = [
    ("mlp/train-step/batch=1000", 5.85),
    ("mlp-energy/train-step/batch=1000", 15.07),
    ("decomp/train-step/a-32px-32ch/batch=16", 27.3),
    ("decomp/train-step/a-32px-32ch/batch=128", 56.4),
    ("decomp/forward/a-32px-32ch/batch=16", 7.5),
];

/// Settings of `recompose-gpu check`.
#[derive(Clone, Debug)]
pub struct CheckArgs {
    /// The device: `cuda:N` on the GPU machine (`cpu` runs the same check on the CPU, with the
    /// parity tests on the CPU reference only).
    pub device: String,
    /// Folder of the sibling binaries (`parity`, `bench-steps`).
    pub bins: PathBuf,
    /// The Python interpreter with torch.
    pub python: PathBuf,
    /// Interleaved rounds per workload.
    pub rounds: usize,
    /// Calls per turn.
    pub steps: usize,
    /// Leave out the comparison with PyTorch.
    pub no_torch: bool,
}

impl CheckArgs {
    /// Parses `[--device D] [--bins DIR] [--python PY] [--rounds N] [--steps N] [--no-torch]`;
    /// the defaults: `cuda:0`, the folder of the running binary, `RECOMPOSE_TORCH_PYTHON` or
    /// `python3`, 10 rounds of 5 calls.
    pub fn parse(args: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the running binary")?;
        let mut out = Self {
            device: "cuda:0".into(),
            bins: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
            python: std::env::var_os("RECOMPOSE_TORCH_PYTHON")
                .map_or_else(|| PathBuf::from("python3"), PathBuf::from),
            rounds: 10,
            steps: 5,
            no_torch: false,
        };
        let mut it = args.iter();
        while let Some(&a) = it.next() {
            match a {
                "--device" => out.device = option_value(&mut it, a)?.to_string(),
                "--bins" => out.bins = PathBuf::from(option_value(&mut it, a)?),
                "--python" => out.python = PathBuf::from(option_value(&mut it, a)?),
                "--rounds" => out.rounds = positive_option(a, option_value(&mut it, a)?)?,
                "--steps" => out.steps = positive_option(a, option_value(&mut it, a)?)?,
                "--no-torch" => out.no_torch = true,
                other => bail!(
                    "unknown option '{other}' (expected --device, --bins, --python, --rounds, \
                     --steps, --no-torch)"
                ),
            }
        }
        if out.device != "cpu" && !out.device.starts_with("cuda") {
            bail!("--device {}: expected cpu or cuda:N", out.device);
        }
        Ok(out)
    }

    /// The command line of this run, for the report's header.
    fn command(&self) -> String {
        let mut c = format!(
            "recompose-gpu check --device {} --rounds {} --steps {}",
            self.device, self.rounds, self.steps
        );
        if self.no_torch {
            c.push_str(" --no-torch");
        }
        c
    }

    fn is_cuda(&self) -> bool {
        self.device.starts_with("cuda")
    }
}

/// One check of the parity binary on one target.
#[derive(Clone, Debug, PartialEq)]
pub struct ParityResult {
    /// The check (the test module's name).
    pub check: String,
    /// The target (`cpu-reference`, `cuda:0`).
    pub target: String,
    /// Outputs compared.
    pub outputs: usize,
    /// The largest relative error over them.
    pub max_error: f64,
    /// The output with that error.
    pub worst: String,
    /// Whether the test passed.
    pub passed: bool,
    /// The failure's message.
    pub message: Option<String>,
}

/// Reads the parity binary's output (`--nocapture`, one test at a time): the lines `parity
/// CHECK TARGET NAME DIMS: ERROR` of passing checks, the failures' messages `parity CHECK on
/// TARGET: MESSAGE`, the `test CHECK::TARGET ... ` lines (which the first output line may
/// follow) and the closing list of failed tests. A check passed when it printed its outputs
/// and neither a message nor the list names it.
pub fn parse_parity(out: &str) -> Vec<ParityResult> {
    fn target_of(test: &str) -> String {
        match test {
            "cuda" => "cuda:0".to_string(),
            _ => "cpu-reference".to_string(),
        }
    }
    fn entry(results: &mut Vec<ParityResult>, check: &str, target: &str) -> usize {
        if let Some(i) = results
            .iter()
            .position(|r| r.check == check && r.target == target)
        {
            return i;
        }
        results.push(ParityResult {
            check: check.into(),
            target: target.into(),
            outputs: 0,
            max_error: 0.0,
            worst: String::new(),
            passed: true,
            message: None,
        });
        results.len() - 1
    }
    let mut results: Vec<ParityResult> = Vec::new();
    let mut listing_failures = false;
    for raw in out.lines() {
        let mut line = raw;
        if line.trim() == "failures:" {
            listing_failures = true;
            continue;
        }
        if listing_failures && raw.starts_with("    ") {
            if let Some((check, test)) = raw.trim().split_once("::") {
                let i = entry(&mut results, check, &target_of(test));
                results[i].passed = false;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("test ") {
            let Some((name, status)) = rest.split_once(" ... ") else {
                continue;
            };
            if let Some((check, test)) = name.trim().split_once("::") {
                let i = entry(&mut results, check, &target_of(test));
                if status.trim() == "FAILED" {
                    results[i].passed = false;
                }
            }
            line = status;
        }
        let Some(rest) = line.strip_prefix("parity ") else {
            continue;
        };
        let mut words = rest.splitn(3, ' ');
        let (Some(check), Some(second), Some(tail)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if second == "on" {
            // A failure: "parity CHECK on TARGET: MESSAGE".
            if let Some((target, msg)) = tail.split_once(": ") {
                let i = entry(&mut results, check, target);
                results[i].message = Some(msg.to_string());
                results[i].passed = false;
            }
            continue;
        }
        let Some((name, err)) = tail.rsplit_once(": ") else {
            continue;
        };
        let Ok(err) = err.trim().parse::<f64>() else {
            continue;
        };
        let name = name.rsplit_once(" [").map_or(name, |(n, _)| n);
        let i = entry(&mut results, check, second);
        let r = &mut results[i];
        r.outputs += 1;
        if err >= r.max_error {
            r.max_error = err;
            r.worst = name.to_string();
        }
    }
    for r in &mut results {
        if r.outputs == 0 {
            r.passed = false;
        }
    }
    results
}

/// The GPU's name, driver and memory (`nvidia-smi`), or the CPU's model for a CPU run.
fn device_info(cuda: bool) -> String {
    if !cuda {
        return format!("CPU: {}", crate::torch::cpu_model());
    }
    Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            let first = text.lines().next().unwrap_or("").trim().to_string();
            let f: Vec<&str> = first.split(", ").collect();
            match f.as_slice() {
                [name, driver, mem] => format!("{name}, driver {driver}, {mem}"),
                _ => first,
            }
        })
        .unwrap_or_else(|| "GPU (nvidia-smi not available)".into())
}

/// Replaces the section `key` of `path` (creating the file with its title when missing).
///
/// # Errors
///
/// When the file cannot be read or written.
pub fn write_section(path: &Path, key: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- begin {key} -->");
    let end = format!("<!-- end {key} -->");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# recompose on a GPU\n\nEach section below is written by one prepared GPU run \
         (`recompose-gpu`, built by `cargo xtask gpu build`); its header names the command.\n"
            .to_string()
    });
    let block = format!("{begin}\n{}\n{end}\n", body.trim_end());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            let after = &old[b + end.len()..];
            format!(
                "{}{block}{}",
                &old[..a],
                after.strip_prefix('\n').unwrap_or(after)
            )
        }
        _ => format!("{}\n{block}", old.trim_end()),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Runs the parity binary; its checks' results and the seconds it took.
fn run_parity(args: &CheckArgs) -> Result<(Vec<ParityResult>, f64)> {
    let bin = args.bins.join("parity");
    let mut cmd = Command::new(&bin);
    cmd.args(["--test-threads=1", "--nocapture"])
        .env("RUST_BACKTRACE", "0");
    if !args.is_cuda() {
        cmd.arg("cpu_reference");
    }
    eprintln!("$ {cmd:?}");
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("could not start {}", bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results = parse_parity(&text);
    if results.is_empty() {
        bail!(
            "{} ran no parity check ({}):\n{text}",
            bin.display(),
            out.status
        );
    }
    Ok((results, seconds))
}

/// Interleaved rounds of every check workload; (group, summary) each.
fn run_throughput(root: &Path, args: &CheckArgs) -> Result<Vec<(String, Summary)>> {
    let script = write_script(root)?;
    let torch_device = args.device.clone();
    CHECK_WORKLOADS
        .iter()
        .map(|&(group, suite, batch)| {
            let mut rust = Command::new(args.bins.join("bench-steps"));
            rust.args([group, "--device", &args.device])
                .current_dir(root);
            let mut torch = Command::new(&args.python);
            torch
                .arg(&script)
                .args(["--suite", suite, "--only", &format!("{group}/recompose")])
                .args(["--serve", "--device", &torch_device])
                .args(["--batch", &batch.to_string()])
                .current_dir(root);
            if !args.is_cuda() {
                let threads = crate::torch::threads().to_string();
                rust.env("RAYON_NUM_THREADS", &threads);
                torch.args(["--threads", &threads]);
            }
            let rounds = interleave(group, rust, torch, args.rounds, args.steps)?;
            Ok((group.to_string(), Summary::of(&rounds)))
        })
        .collect()
}

/// What the data-parallel check found.
struct DataParallel {
    /// The run's outcome, as the report states it.
    verdict: String,
    /// Seconds of the single-process and the world-of-one trainings.
    seconds: Option<(f64, f64)>,
}

/// The folder of `libnccl.so.2` in the Python environment's NVIDIA packages (PyTorch's), if any.
fn nccl_library(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], 'lib'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The 2-D ring model trained on the GPU twice with the NCCL build (`recompose-nccl`): alone,
/// and as rank 0 of a data-parallel group of one over NCCL; the two outputs must be the same
/// bytes.
fn data_parallel_check(root: &Path, args: &CheckArgs) -> DataParallel {
    let bin = args.bins.join("recompose-nccl");
    if !bin.is_file() {
        return DataParallel {
            verdict: format!("not run: {} is missing", bin.display()),
            seconds: None,
        };
    }
    let work = root.join("target/gpu-data-parallel");
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = std::fs::create_dir_all(&work) {
        return DataParallel {
            verdict: format!("not run: {e}"),
            seconds: None,
        };
    }
    let mut library_path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    if let Some(dir) = nccl_library(&args.python) {
        library_path = format!("{dir}:{library_path}");
    }
    let train = |name: &str, group: bool| -> Result<f64> {
        let mut cmd = Command::new(&bin);
        cmd.args(["--device", &args.device, "train", "--preset", "toy2d-ring"])
            .args(["--steps", "500", "--seed", "3", "--quiet", "--out"])
            .arg(work.join(name))
            .env("LD_LIBRARY_PATH", &library_path)
            .current_dir(root);
        if group {
            cmd.arg("--data-parallel")
                .arg(work.join("nccl-id"))
                .env("RANK", "0")
                .env("WORLD_SIZE", "1");
        }
        eprintln!("$ {cmd:?}");
        let started = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("starting {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} ({}): {}",
                name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let outcome = (|| -> Result<DataParallel> {
        let single = train("single", false)?;
        let grouped = train("world-of-one", true)?;
        let same = |f: &str| -> Result<bool> {
            Ok(std::fs::read(work.join("single").join(f))?
                == std::fs::read(work.join("world-of-one").join(f))?)
        };
        let (weights, log) = (same("model.safetensors")?, same("loss.jsonl")?);
        Ok(DataParallel {
            verdict: match (weights, log) {
                (true, true) => "**the same bytes** (weights and loss log)".into(),
                _ => format!(
                    "**different**: weights {}, loss log {}",
                    if weights { "equal" } else { "differ" },
                    if log { "equal" } else { "differs" }
                ),
            },
            seconds: Some((single, grouped)),
        })
    })();
    outcome.unwrap_or_else(|e| DataParallel {
        verdict: format!("failed: {e}"),
        seconds: None,
    })
}

/// `recompose-gpu check`: the parity tests on the device and the throughput against PyTorch,
/// written as the `check` section of `docs/results/gpu.md` under `root`.
///
/// # Errors
///
/// When a binary is missing or fails to run, or the report cannot be written. A parity check
/// that fails is reported in the section (and makes the run fail after writing it).
pub fn check(root: &Path, args: &CheckArgs) -> Result<()> {
    let started = Instant::now();
    let info = device_info(args.is_cuda());
    eprintln!("device: {info}");
    let (parity, parity_seconds) = run_parity(args)?;
    let timings = if args.no_torch {
        Vec::new()
    } else {
        run_throughput(root, args)?
    };
    let data_parallel = args.is_cuda().then(|| data_parallel_check(root, args));
    let total = started.elapsed().as_secs_f64();
    let mut s = String::new();
    let _ = writeln!(s, "## The check: parity and throughput against PyTorch\n");
    let _ = writeln!(
        s,
        "Generated by `{}` on {} ({}), revision {}; {total:.0} s in all.\n",
        args.command(),
        crate::torch::today(),
        info,
        crate::workspace::revision()
    );
    let failed: Vec<&ParityResult> = parity.iter().filter(|r| !r.passed).collect();
    let _ = writeln!(
        s,
        "### Device parity ({} checks on {}, {parity_seconds:.0} s)\n\n\
         Every check against the CPU fast paths; the largest normwise relative error over its \
         outputs (`benches/tests/parity.rs`).\n\n\
         | check | target | outputs | max relative error | worst output | result |\n\
         |---|---|---:|---:|---|---|",
        parity
            .iter()
            .map(|r| &r.check)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        parity
            .iter()
            .map(|r| r.target.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(" and "),
    );
    for r in &parity {
        let result = if r.passed {
            "pass".to_string()
        } else {
            format!(
                "**FAIL**: {}",
                r.message.as_deref().unwrap_or("see the log")
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1e} | {} | {result} |",
            r.check, r.target, r.outputs, r.max_error, r.worst
        );
    }
    if !timings.is_empty() {
        let _ = writeln!(
            s,
            "\n### Throughput against PyTorch on the same device\n\n\
             Both sides as warm servers taking turns ({} rounds of {} calls each, the first turn \
             alternating; each GPU call ends by waiting for the device). {} Ratio = PyTorch ms \
             / recompose ms (above 1: recompose faster).\n\n\
             | workload | recompose ms | PyTorch ms | ratio (range) | recompose faster | spec's PyTorch on H200 |\n\
             |---|---:|---:|---:|---:|---:|",
            args.rounds,
            args.steps,
            if args.is_cuda() {
                "PyTorch fp32 with TF32 off and cuDNN's autotuner on."
            } else {
                "Both on the CPU with the same thread count."
            }
        );
        for (group, m) in &timings {
            let anchor = ANCHORS
                .iter()
                .find(|(g, _)| g == group)
                .map_or("—".to_string(), |(_, ms)| format!("{ms} ms"));
            let _ = writeln!(
                s,
                "| {group} | {:.2} | {:.2} | **{:.2}** ({:.2}–{:.2}) | {} of {} | {anchor} |",
                m.rust_ms, m.torch_ms, m.median_ratio, m.min_ratio, m.max_ratio, m.wins, m.rounds
            );
        }
    }
    if let Some(dp) = &data_parallel {
        let _ = writeln!(
            s,
            "\n### Data-parallel training, a world of one over NCCL\n\n\
             `recompose-nccl --device {} train --preset toy2d-ring --steps 500 --seed 3`, alone \
             and as rank 0 of a group of one (`RANK=0 WORLD_SIZE=1 … --data-parallel ID_FILE`, \
             every gradient through NCCL's all-reduce): {}{}.",
            args.device,
            dp.verdict,
            dp.seconds.map_or(String::new(), |(a, b)| format!(
                " ({a:.1} s alone, {b:.1} s in the group)"
            ))
        );
    }
    let path = root.join("docs/results/gpu.md");
    write_section(&path, "check", &s)?;
    eprintln!("wrote the check section of {}", path.display());
    if !failed.is_empty() {
        bail!(
            "{} parity checks failed: {}",
            failed.len(),
            failed
                .iter()
                .map(|r| format!("{} on {}", r.check, r.target))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `recompose-gpu composition [--device cuda:N] [--jobs N] [--quick]`: the paper-budget 2-D
/// models trained on the GPU and evaluated (see the [module documentation](self)).
///
/// # Errors
///
/// When an option is unknown, a training or sampling run fails, or a report cannot be written.
pub fn composition(root: &Path, args: &[&str]) -> Result<()> {
    let mut device = TrainDevice::Cuda(0);
    let mut jobs = 12;
    let mut quick = false;
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        match a {
            "--device" => device = TrainDevice::parse(option_value(&mut it, a)?)?,
            "--jobs" => jobs = positive_option(a, option_value(&mut it, a)?)?,
            "--quick" => quick = true,
            other => bail!("unknown option '{other}' (expected --device, --jobs, --quick)"),
        }
    }
    if device == TrainDevice::Cpu {
        bail!("recompose-gpu composition trains on a GPU: --device cuda:N");
    }
    let cargs = CompositionArgs {
        quick,
        full: !quick,
        reuse_models: true,
        device,
        jobs,
    };
    let started = Instant::now();
    crate::composition::composition(root, &cargs)?;
    let wall = started.elapsed().as_secs_f64();
    let name = cargs.report_name();
    let header = format!(
        "Generated by `recompose-gpu composition --device {} --jobs {jobs}{}` on {} ({}), \
         revision {}; {wall:.0} s in all (training and the whole evaluation).",
        device.name(),
        if quick { " --quick" } else { "" },
        crate::torch::today(),
        device_info(true),
        crate::workspace::revision()
    );
    let s = composition_section(root, &root.join("target").join(name), name, &header, jobs);
    let path = root.join("docs/results/gpu.md");
    write_section(&path, "composition", &s)?;
    eprintln!("wrote the composition section of {}", path.display());
    Ok(())
}

/// The `composition` section: every model's training time on the GPU (`work`) next to the
/// CPU-trained fixture's, and every composition of the report `name` next to
/// `composition-full`'s.
fn composition_section(root: &Path, work: &Path, name: &str, header: &str, jobs: usize) -> String {
    let cpu_work = root.join("fixtures/composition-full");
    let timing = |dir: &Path| -> Option<f64> {
        let text = std::fs::read_to_string(dir.join("timing.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["seconds"].as_f64()
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## The 2-D composition models at the paper's budget, trained on the GPU
"
    );
    let _ = writeln!(
        s,
        "{header} The full report: [{name}.md]({name}.md); the CPU-trained models': \
         [composition-full.md](composition-full.md).\n"
    );
    let _ = writeln!(
        s,
        "### Training ({jobs} at a time on the GPU; the CPU models one thread each, two at a time)\n\n\
         | model | GPU s | CPU s | CPU / GPU |\n|---|---:|---:|---:|"
    );
    for param in ["score", "energy"] {
        for dist in recompose_diffusion::data::Toy2d::ALL {
            let m = format!("{}-{param}", dist.name());
            let g = timing(&work.join(&m));
            let c = timing(&cpu_work.join(&m));
            let cell = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.0}"));
            let ratio = match (g, c) {
                (Some(g), Some(c)) if g > 0.0 => format!("{:.1}", c / g),
                _ => "—".into(),
            };
            let _ = writeln!(s, "| {m} | {} | {} | {ratio} |", cell(g), cell(c));
        }
    }
    let read = |file: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    let gpu = read(&root.join(format!("docs/results/{name}.json")));
    let cpu = read(&root.join("docs/results/composition-full.json"));
    let _ = writeln!(
        s,
        "\n### Every composition: GPU-trained models next to the CPU-trained ones\n\n\
         Same samplers, seeds and evaluation (2000 chains, seed 7; W2 against 2000 exact \
         samples, seed 11).\n\n\
         | composition | model | sampler | in support GPU / CPU | W2 GPU / CPU | W2 at own split GPU / CPU |\n\
         |---|---|---|---:|---:|---:|"
    );
    let key = |v: &serde_json::Value| {
        (
            v["composition"].as_str().unwrap_or("").to_string(),
            v["model"].as_str().unwrap_or("").to_string(),
            v["sampler"].as_str().unwrap_or("").to_string(),
        )
    };
    let num = |v: Option<&serde_json::Value>, k: &str, pct: bool| -> String {
        match v.and_then(|v| v[k].as_f64()) {
            Some(x) if pct => format!("{:.1}%", 100.0 * x),
            Some(x) => format!("{x:.4}"),
            None => "—".into(),
        }
    };
    for g in &gpu {
        let c = cpu.iter().find(|c| key(c) == key(g));
        let (comp, model, sampler) = key(g);
        let _ = writeln!(
            s,
            "| {comp} | {model} | {sampler} | {} / {} | {} / {} | {} / {} |",
            num(Some(g), "in_support", true),
            num(c, "in_support", true),
            num(Some(g), "w2", false),
            num(c, "w2", false),
            num(Some(g), "w2_at_split", false),
            num(c, "w2_at_split", false),
        );
    }
    s
}

/// `recompose-gpu tetrominoes [--device cuda:N] [--images N] [--steps N]`: the
/// `decomp-tetrominoes` model trained at its full recipe on the GPU (resuming a cut run), then
/// evaluated next to the CPU-trained fixture (see the [module documentation](self)). `--steps`
/// shortens the recipe (a quick check of the pipeline; the section says so).
///
/// # Errors
///
/// When an option is unknown, training or evaluation fails, or the report cannot be written.
pub fn tetrominoes(root: &Path, args: &[&str]) -> Result<()> {
    use recompose_decomp_diffusion::datasets::Kind;
    use recompose_decomp_diffusion::run::train_decomp;
    use recompose_decomp_diffusion::{DecompRunConfig, DecompTrained};
    let mut device = TrainDevice::Cuda(0);
    let mut images = 100;
    let mut steps = None;
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        match a {
            "--device" => device = TrainDevice::parse(option_value(&mut it, a)?)?,
            "--images" => images = positive_option(a, option_value(&mut it, a)?)?,
            "--steps" => steps = Some(positive_option(a, option_value(&mut it, a)?)?),
            other => bail!("unknown option '{other}' (expected --device, --images, --steps)"),
        }
    }
    let mut cfg = DecompRunConfig::preset("decomp-tetrominoes")?;
    if let Some(n) = steps {
        cfg.train.steps = n;
        cfg.train.warmup_steps = cfg.train.warmup_steps.min(n / 2);
    }
    let dir = root.join("target/gpu-tetrominoes");
    let text = cfg.to_toml()?;
    let same = std::fs::read_to_string(dir.join("config.toml"))
        .ok()
        .as_deref()
        == Some(text.as_str());
    let finished = same && dir.join("timing.json").is_file();
    if !finished {
        let resume = same && dir.join("checkpoint").join("state.json").exists();
        if !resume && dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let opts = recompose_diffusion::train::TrainOptions {
            out_dir: dir.clone(),
            resume,
            revision: Some(crate::workspace::revision()),
            ..Default::default()
        };
        let dev = device.open()?;
        eprintln!(
            "training decomp-tetrominoes on {} ({} steps at batch {}){}",
            device.name(),
            cfg.train.steps,
            cfg.train.batch_size,
            if resume { ", resuming" } else { "" }
        );
        let report = train_decomp(&cfg, &opts, &dev, &mut |_| {})?;
        std::fs::write(
            dir.join("timing.json"),
            serde_json::json!({
                "seconds": report.seconds,
                "steps_per_second": report.steps_per_second(),
                "final_loss": report.recent_loss,
                "resumed": resume,
            })
            .to_string(),
        )?;
    }
    let timing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("timing.json"))?)?;
    let fixture = root.join("fixtures/decomp-tetrominoes");
    let cpu_timing: serde_json::Value = std::fs::read_to_string(fixture.join("timing.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    // Both models evaluated alike on the CPU (decomposition of held-out images, dataset seed 1).
    let evals = [&dir, &fixture].map(|d| -> Result<crate::decomposition::ObjectEval> {
        let run = DecompTrained::load(d, &candle_core::Device::Cpu)?;
        crate::decomposition::eval_objects(&run, Kind::Tetrominoes, images)
    });
    let [gpu, cpu] = evals;
    let (gpu, cpu) = (gpu?, cpu?);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Decomp Diffusion on tetrominoes at the full recipe, trained on the GPU\n"
    );
    let _ = writeln!(
        s,
        "Generated by `recompose-gpu tetrominoes --device {} --images {images}{}` on {} ({}), \
         revision {}.{}\n",
        device.name(),
        steps.map_or(String::new(), |n| format!(" --steps {n}")),
        crate::torch::today(),
        device_info(device != TrainDevice::Cpu),
        crate::workspace::revision(),
        if steps.is_some() {
            " **A shortened recipe: a check of the pipeline, not the full-recipe result.**"
        } else {
            ""
        }
    );
    let secs = |v: &serde_json::Value| {
        v["seconds"]
            .as_f64()
            .map_or("not recorded".into(), |x| format!("{x:.0} s"))
    };
    let rate = |v: &serde_json::Value| {
        v["steps_per_second"]
            .as_f64()
            .map_or("—".into(), |x| format!("{x:.2}"))
    };
    let pct =
        |e: &crate::decomposition::ObjectEval| 100.0 * e.isolated as f64 / e.objects.max(1) as f64;
    let _ = writeln!(
        s,
        "| model | training | steps/s | pieces isolated (IoU ≥ 0.5) | mean IoU | reconstruction MSE |\n\
         |---|---:|---:|---:|---:|---:|\n\
         | trained on {} ({} steps at batch {}{}) | {} | {} | **{:.1}%** ({} of {}) | {:.3} | {:.5} |\n\
         | CPU-trained fixture (`fixtures/decomp-tetrominoes`) | {} | {} | {:.1}% ({} of {}) | {:.3} | {:.5} |",
        device.name(),
        cfg.train.steps,
        cfg.train.batch_size,
        if timing["resumed"].as_bool() == Some(true) {
            ", resumed"
        } else {
            ""
        },
        secs(&timing),
        rate(&timing),
        pct(&gpu),
        gpu.isolated,
        gpu.objects,
        gpu.mean_iou,
        gpu.mse,
        secs(&cpu_timing),
        rate(&cpu_timing),
        pct(&cpu),
        cpu.isolated,
        cpu.objects,
        cpu.mean_iou,
        cpu.mse,
    );
    let _ = writeln!(
        s,
        "\nBoth evaluated on the CPU on the same {images} held-out images (dataset seed 1), 50 DDIM \
         steps; a piece is isolated when one factor's render covers it with IoU ≥ 0.5. The GPU \
         training time is that of the last run (a resumed run counts from its checkpoint)."
    );
    let path = root.join("docs/results/gpu.md");
    write_section(&path, "tetrominoes", &s)?;
    eprintln!("wrote the tetrominoes section of {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_output_is_read_per_check_and_target() {
        let out = "\
running 3 tests
test adamw::cpu_reference ... parity adamw cpu-reference p0 [64, 33]: 1.2e-7
parity adamw cpu-reference ema p0 [64, 33]: 3.5e-6
ok
test adamw::cuda ... parity adamw cuda:0 p0 [64, 33]: 2.0e-6
ok
test samplers::cuda ... parity samplers on cuda:0: output 'ddim' [64, 2]: relative error 3.0e-2 on cuda:0 exceeds 1e-4
FAILED
test decomp::cuda ... FAILED

failures:

failures:
    decomp::cuda
    samplers::cuda
";
        let r = parse_parity(out);
        assert_eq!(r.len(), 4, "{r:?}");
        let a = &r[0];
        assert_eq!(
            (a.check.as_str(), a.target.as_str()),
            ("adamw", "cpu-reference")
        );
        assert_eq!(a.outputs, 2);
        assert_eq!(a.max_error, 3.5e-6);
        assert_eq!(a.worst, "ema p0");
        assert!(a.passed);
        assert_eq!(r[1].target, "cuda:0");
        assert!(r[1].passed);
        let f = &r[2];
        assert_eq!(
            (f.check.as_str(), f.target.as_str()),
            ("samplers", "cuda:0")
        );
        assert!(!f.passed);
        assert!(
            f.message
                .as_deref()
                .unwrap()
                .contains("relative error 3.0e-2")
        );
        // A test that failed without a message (no outputs, named in the list).
        assert_eq!(r[3].check, "decomp");
        assert!(!r[3].passed && r[3].message.is_none());
    }

    #[test]
    fn check_options_parse_and_bad_values_are_refused() -> Result<()> {
        let a = CheckArgs::parse(&["--device", "cuda:1", "--rounds", "4", "--steps", "2"])?;
        assert_eq!((a.device.as_str(), a.rounds, a.steps), ("cuda:1", 4, 2));
        assert!(a.is_cuda());
        assert_eq!(
            a.command(),
            "recompose-gpu check --device cuda:1 --rounds 4 --steps 2"
        );
        let cpu = CheckArgs::parse(&["--device", "cpu", "--no-torch"])?;
        assert!(!cpu.is_cuda() && cpu.no_torch);
        for bad in [
            &["--device", "tpu"][..],
            &["--rounds", "0"],
            &["--steps", "x"],
            &["--rounds"],
            &["--verbose"],
        ] {
            assert!(CheckArgs::parse(bad).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn sections_are_replaced_in_place() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("gpu-sections-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("gpu.md");
        let _ = std::fs::remove_file(&path);
        write_section(&path, "check", "## A\nfirst")?;
        write_section(&path, "train", "## B\nsecond")?;
        write_section(&path, "check", "## A\nthird")?;
        let text = std::fs::read_to_string(&path)?;
        assert!(text.starts_with("# recompose on a GPU"));
        assert!(text.contains("third") && !text.contains("first"));
        let a = text.find("## A").unwrap();
        let b = text.find("## B").unwrap();
        assert!(a < b, "the check section stays first:\n{text}");
        assert_eq!(text.matches("<!-- begin check -->").count(), 1);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// The section reads the reports and timings it compares: here the CPU-trained models and
    /// their report against themselves.
    #[test]
    fn the_composition_section_pairs_every_run() {
        let root = crate::workspace::root();
        let s = composition_section(
            &root,
            &root.join("fixtures/composition-full"),
            "composition-full",
            "header",
            12,
        );
        assert!(s.contains("| ring-energy | 1614 | 1614 | 1.0 |"), "{s}");
        let rows = s.lines().filter(|l| l.starts_with("| product |")).count();
        assert!(rows >= 9, "{s}");
        assert!(
            s.contains("| product | energy | hmc | 95.2% / 95.2% |"),
            "{s}"
        );
    }
}
