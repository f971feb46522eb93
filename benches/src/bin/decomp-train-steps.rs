//! `decomp-train-steps CONFIG`: a timing server for the Decomp Diffusion training step, so that
//! `cargo xtask bench decomp` can interleave it with the same step in PyTorch, a few steps at a
//! time, while both processes stay warm.
//!
//! CONFIG is one of the reference benchmark's configurations (`a-32px-32ch`, `b-32px-16ch`,
//! `c-16px-32ch`, `d-16px-32ch-attn8`); the workload is
//! [`recompose_benches::decomp::DecompWorkload::train_step`], the step the criterion suite times.
//!
//! Protocol (one line each way): after building the model and taking three warm-up steps the
//! server prints `ready`. Then each line it reads holds a step count n; it takes n steps and
//! prints their wall times in seconds, space-separated, on one line. It exits at the end of its
//! input or on an empty line.

use std::io::{BufRead, Write};
use std::time::Instant;

use recompose_benches::decomp::{DecompWorkload, configs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Steps taken before `ready`: the first steps fault in the activation buffers.
const WARMUP: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { recompose_benches::prepare_process() };
    let names: Vec<&str> = configs().iter().map(|(n, _)| *n).collect();
    let name = std::env::args().nth(1).ok_or_else(|| {
        format!(
            "usage: decomp-train-steps CONFIG (one of {})",
            names.join(", ")
        )
    })?;
    let cfg = recompose_benches::decomp::config(&name).ok_or_else(|| {
        format!(
            "unknown configuration '{name}' (one of {})",
            names.join(", ")
        )
    })?;
    let mut work = DecompWorkload::new(&cfg)?;
    for _ in 0..WARMUP {
        work.train_step()?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        let n: usize = line
            .parse()
            .map_err(|_| format!("expected a step count, got '{line}'"))?;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            work.train_step()?;
            times.push(format!("{:.6}", start.elapsed().as_secs_f64()));
        }
        writeln!(out, "{}", times.join(" "))?;
        out.flush()?;
    }
    Ok(())
}
