//! What the reproductions share to train their models and spread work over the cores: a
//! training run that is reused when finished and resumed when cut ([`train_or_reuse`]), and a
//! pool of worker threads that runs independent jobs ([`parallel`]).

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use candle_core::Device;
use recompose_diffusion::run::{RunConfig, train_run};
use recompose_diffusion::train::TrainOptions;
use serde_json::json;

/// A unit of work for [`parallel`].
pub type Job<'a, T> = Box<dyn FnOnce() -> Result<T> + Send + 'a>;

/// Runs `jobs` on `threads` worker threads (at least one), results in job order. The workers
/// take jobs from the end of the list, so the longest belong there.
///
/// # Errors
///
/// The first failed job's error (in job order), or an error when a worker panicked.
pub fn parallel<T: Send>(jobs: Vec<Job<'_, T>>, threads: usize) -> Result<Vec<T>> {
    let n = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let results: Mutex<Vec<Option<Result<T>>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().map(|mut q| q.pop()).ok().flatten();
                    let Some((i, job)) = next else { break };
                    let r = job();
                    if let Ok(mut res) = results.lock() {
                        res[i] = Some(r);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a worker panicked"))?
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("a job did not run"))))
        .collect()
}

/// The name of the file a finished training leaves in its run directory: its seconds, steps
/// per second and whether it resumed.
pub const TIMING_FILE: &str = "timing.json";

/// Copies the named `files` of the run directory `from` into `to` (created if missing): how a
/// trained run becomes a committed fixture (weights, manifest, configuration, logs; never the
/// checkpoints).
///
/// # Errors
///
/// A file missing from `from`, or one that cannot be written, named in the context.
pub fn copy_run(from: &Path, to: &Path, files: &[&str]) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for f in files {
        std::fs::copy(from.join(f), to.join(f))
            .with_context(|| format!("copying {f} from {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// A training that [`train_or_reuse`] ran or found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Training {
    /// Wall-clock seconds of the (last) training run; `None` when a finished run without a
    /// timing file was reused.
    pub seconds: Option<f64>,
    /// Optimizer steps per second of that run.
    pub steps_per_second: Option<f64>,
    /// Whether the run resumed from a checkpoint.
    pub resumed: bool,
}

/// Trains the run `cfg` into `dir`, or with `reuse` keeps what is there: a finished run of the
/// same configuration (its `config.toml` equal to `cfg`'s) is reused as it is, and a cut one
/// resumes from its last checkpoint; anything else in `dir` is removed first. A finished
/// training writes [`TIMING_FILE`]; a run whose checkpoint has reached its last step counts as
/// finished without one (trained by `recompose train`, say). `what` names the model in
/// messages.
///
/// # Errors
///
/// Whatever training or writing reports, with `what` in the context.
pub fn train_or_reuse(
    cfg: &RunConfig,
    dir: &Path,
    reuse: bool,
    device: &Device,
    what: &str,
) -> Result<Training> {
    let text = cfg.to_toml()?;
    let same = std::fs::read_to_string(dir.join("config.toml"))
        .ok()
        .as_deref()
        == Some(text.as_str());
    let timing = dir.join(TIMING_FILE);
    if reuse && same {
        if timing.is_file() {
            let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&timing)?)
                .with_context(|| format!("reading {}", timing.display()))?;
            return Ok(Training {
                seconds: t["seconds"].as_f64(),
                steps_per_second: t["steps_per_second"].as_f64(),
                resumed: t["resumed"].as_bool().unwrap_or(false),
            });
        }
        if recompose_diffusion::train::checkpoint_step(dir)? == Some(cfg.train.steps)
            && dir.join("model.safetensors").is_file()
        {
            return Ok(Training {
                seconds: None,
                steps_per_second: None,
                resumed: false,
            });
        }
    }
    // A run that was cut resumes from its last checkpoint.
    let resume = reuse && same && dir.join("checkpoint").join("state.json").exists();
    if !resume && dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let opts = TrainOptions {
        out_dir: dir.to_path_buf(),
        resume,
        revision: Some(crate::workspace::revision()),
        ..Default::default()
    };
    let report =
        train_run(cfg, &opts, device, &mut |_| {}).with_context(|| format!("training {what}"))?;
    eprintln!(
        "trained {what} in {:.0} s (loss {:.4}){}",
        report.seconds,
        report.recent_loss,
        if resume { ", resumed" } else { "" }
    );
    std::fs::write(
        &timing,
        json!({
            "seconds": report.seconds,
            "steps_per_second": report.steps_per_second(),
            "resumed": resume,
        })
        .to_string(),
    )?;
    Ok(Training {
        seconds: Some(report.seconds),
        steps_per_second: Some(report.steps_per_second()),
        resumed: resume,
    })
}
