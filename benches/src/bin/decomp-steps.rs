//! `decomp-steps WORKLOAD CONFIG`: a timing server for the Decomp Diffusion workloads, so that
//! `cargo xtask bench decomp` and `cargo xtask reproduce decomposition` can interleave them with
//! the same workloads in PyTorch, a few calls at a time, while both processes stay warm.
//!
//! WORKLOAD is `train-step` (one training step,
//! [`recompose_benches::decomp::DecompWorkload::train_step`]) or `forward` (the composed
//! prediction of the batch from given latents on the detached model, the cost of one DDIM
//! sampling step): the calls the criterion suite `decomp` times. CONFIG is one of the reference
//! benchmark's configurations (`a-32px-32ch`, `b-32px-16ch`, `c-16px-32ch`, `d-16px-32ch-attn8`).
//!
//! Protocol (one line each way): after building the model and making three warm-up calls the
//! server prints `ready`. Then each line it reads holds a call count n; it makes n calls and
//! prints their wall times in seconds, space-separated, on one line. It exits at the end of its
//! input or on an empty line.

use std::hint::black_box;
use std::io::{BufRead, Write};
use std::time::Instant;

use recompose_benches::decomp::{DecompWorkload, Error, configs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls made before `ready`: the first calls fault in the activation buffers.
const WARMUP: usize = 3;

const USAGE: &str = "usage: decomp-steps train-step|forward CONFIG";

fn main() -> Result<(), Error> {
    // SAFETY: first thing in `main`, before any other thread exists.
    recompose_core::process::prepare();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [workload, name] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let names: Vec<&str> = configs().iter().map(|(n, _)| *n).collect();
    let cfg = recompose_benches::decomp::config(name).ok_or_else(|| {
        format!(
            "unknown configuration '{name}' (one of {})",
            names.join(", ")
        )
    })?;
    let mut work = DecompWorkload::new(&cfg)?;
    let mut call: Box<dyn FnMut() -> Result<(), Error>> = match workload.as_str() {
        "train-step" => Box::new(move || work.train_step()),
        "forward" => {
            let model = work.frozen_model()?;
            let z = model.encode(&work.x0, false)?;
            Box::new(move || {
                black_box(model.denoise(&work.x_t, &work.t, &z, None)?);
                Ok(())
            })
        }
        other => return Err(format!("unknown workload '{other}'; {USAGE}").into()),
    };
    for _ in 0..WARMUP {
        call()?;
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
            .map_err(|_| format!("expected a call count, got '{line}'"))?;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            call()?;
            times.push(format!("{:.6}", start.elapsed().as_secs_f64()));
        }
        writeln!(out, "{}", times.join(" "))?;
        out.flush()?;
    }
    Ok(())
}
