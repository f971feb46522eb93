//! The mutation engine: runs a target on mutants of its seeds for a time budget.
//!
//! Each input is written to `OUT/current` before the reader sees it, so that a process that
//! dies on it (abort, failed allocation, stack overflow) leaves it behind for the parent. A
//! panic is caught, counted and its input saved to `OUT/crash-<n>`; a watchdog thread ends the
//! process with status [`HANG_EXIT`] when one input runs longer than
//! [`HANG_SECONDS`](super::HANG_SECONDS). The feedback is the outcome: an input whose verdict
//! (kind and message with numbers blanked) was not seen before joins the corpus.

use std::collections::{BTreeMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;
use recompose_core::random;
use serde_json::json;

use super::mutate::Mutator;
use super::targets::{Scratch, Target, Verdict};

/// Exit status of a process stopped by the watchdog.
pub const HANG_EXIT: i32 = 3;

/// Largest corpus kept per target.
const MAX_CORPUS: usize = 512;

/// What one run of a target found.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Inputs run.
    pub execs: u64,
    /// Inputs the reader accepted.
    pub accepted: u64,
    /// Inputs rejected with a bad-input error.
    pub rejected: u64,
    /// Inputs that ended in an error not flagged as bad input, by message.
    pub internal: BTreeMap<String, u64>,
    /// Panics and property violations: (what, saved input).
    pub crashes: Vec<(String, PathBuf)>,
    /// Corpus size at the end (seeds included).
    pub corpus: usize,
    /// Seconds spent.
    pub seconds: f64,
}

impl Stats {
    /// The statistics as one JSON line (what `recompose-fuzz` prints).
    pub fn to_json(&self, target: &str) -> String {
        json!({
            "target": target,
            "execs": self.execs,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "internal": self.internal,
            "crashes": self.crashes.iter().map(|(w, p)| json!([w, p.display().to_string()])).collect::<Vec<_>>(),
            "corpus": self.corpus,
            "seconds": self.seconds,
        })
        .to_string()
    }
}

/// The message of the last panic, recorded by the hook [`quiet_panics`] installs.
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Replaces the panic hook by one that records the message (with its location) instead of
/// printing it.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = format!("{msg}{at}");
        }
    }));
}

/// Runs one input, a panic becoming `Err(message)`.
pub fn run_one(target: &Target, scratch: &Scratch, input: &[u8]) -> Result<Verdict, String> {
    catch_unwind(AssertUnwindSafe(|| (target.run)(scratch, input)))
        .map_err(|_| LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default())
}

/// The outcome's kind with digits blanked: the feedback signal.
fn signature(v: &Result<Verdict, String>) -> String {
    let (kind, msg) = match v {
        Ok(Verdict::Accepted) => ("accepted", ""),
        Ok(Verdict::Rejected(m)) => ("rejected", m.as_str()),
        Ok(Verdict::Internal(m)) => ("internal", m.as_str()),
        Ok(Verdict::Violation(m)) => ("violation", m.as_str()),
        Err(m) => ("panic", m.as_str()),
    };
    let blanked: String = msg
        .chars()
        .take(160)
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    format!("{kind}: {blanked}")
}

/// Runs `target` on mutants of `seeds` (and on the seeds themselves first) for `seconds` or
/// `max_execs` inputs, whichever ends first, drawing mutations from `seed`. Crashing inputs
/// go to `out`.
///
/// # Errors
///
/// If `out` cannot be written.
pub fn fuzz(
    target: &Target,
    scratch: &Scratch,
    seeds: Vec<Vec<u8>>,
    seconds: f64,
    max_execs: u64,
    seed: u64,
    out: &Path,
) -> Result<Stats> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let current = out.join("current");
    let started = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    start_watchdog(started.clone(), t0, current.clone());
    let mut rng = random::seeded(seed);
    // Mutants stay within 128 KiB of the largest seed: room for deep nestings and long names,
    // not for inputs that only take longer to read.
    let largest = seeds.iter().map(Vec::len).max().unwrap_or(0);
    let mutator = Mutator::new(target.format, largest + (1 << 17));
    let mut corpus = seeds;
    let mut seen = HashSet::new();
    let mut stats = Stats::default();
    let mut crash_sigs = HashSet::new();
    let deadline = Duration::from_secs_f64(seconds);
    let n_seeds = corpus.len();
    anyhow::ensure!(n_seeds > 0, "target `{}` has no seed inputs", target.name);
    let mut k = 0usize;
    while stats.execs < max_execs && (t0.elapsed() < deadline || k < n_seeds) {
        let input = if k < n_seeds {
            corpus[k].clone()
        } else {
            // Half of the mutants come from the seeds themselves: most corpus entries are
            // inputs some check rejected, and mutating only those stays near the surface.
            let a = if rng.random_bool(0.5) {
                rng.random_range(0..n_seeds)
            } else {
                rng.random_range(0..corpus.len())
            };
            let b = rng.random_range(0..corpus.len());
            mutator.mutate(&corpus[a], &corpus[b], &mut rng)
        };
        k += 1;
        std::fs::write(&current, &input)
            .with_context(|| format!("writing {}", current.display()))?;
        started.store(t0.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        let v = run_one(target, scratch, &input);
        started.store(0, Ordering::SeqCst);
        stats.execs += 1;
        let sig = signature(&v);
        match &v {
            Ok(Verdict::Accepted) => stats.accepted += 1,
            Ok(Verdict::Rejected(_)) => stats.rejected += 1,
            Ok(Verdict::Internal(m)) => {
                *stats
                    .internal
                    .entry(m.chars().take(200).collect())
                    .or_default() += 1;
            }
            Ok(Verdict::Violation(m)) | Err(m) => {
                if crash_sigs.insert(sig.clone()) {
                    let path = out.join(format!("crash-{}", stats.crashes.len()));
                    std::fs::write(&path, &input)
                        .with_context(|| format!("writing {}", path.display()))?;
                    let what = if v.is_err() { "panic" } else { "violation" };
                    stats.crashes.push((format!("{what}: {m}"), path));
                }
            }
        }
        if seen.insert(sig) && k > n_seeds && corpus.len() < MAX_CORPUS {
            corpus.push(input);
        }
    }
    stats.corpus = corpus.len();
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

use std::sync::Arc;

/// Ends the process when one input has run longer than the hang limit, leaving the input in
/// `current.hang`.
fn start_watchdog(started: Arc<AtomicU64>, t0: Instant, current: PathBuf) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let s = started.load(Ordering::SeqCst);
            if s == 0 {
                continue;
            }
            let now = t0.elapsed().as_millis() as u64 + 1;
            if now.saturating_sub(s) > super::HANG_SECONDS * 1000 {
                let _ = std::fs::copy(&current, current.with_extension("hang"));
                eprintln!(
                    "fuzz: one input ran longer than {} s (left in {})",
                    super::HANG_SECONDS,
                    current.with_extension("hang").display()
                );
                std::process::exit(HANG_EXIT);
            }
        }
    });
}
