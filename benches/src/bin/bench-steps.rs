//! `bench-steps GROUP [--device DEVICE]`: a timing server for the workloads that `cargo xtask bench diffusion`,
//! `cargo xtask bench image`, `cargo xtask bench decomp` and `cargo xtask reproduce decomposition` interleave with the same
//! workloads in PyTorch, a few calls at a time, while both processes stay warm.
//!
//! GROUP is the workload's criterion group: `mlp/train-step/batch=1000` or
//! `mlp-energy/train-step/batch=1000` (one training step of the 2-D MLP or its energy form,
//! [`recompose_benches::step::StepWorkload::train_step`]); `text-unet/train-step/batch=32` or
//! `text-unet-energy/train-step/batch=32` (one training step of the image-composition recipe's
//! text-conditioned U-Net, score or energy) or `text-unet/guided/chains=64`,
//! `text-unet-energy/guided/chains=64` (one guided prediction,
//! [`recompose_benches::step::GuidedWorkload::predict`]); `decomp/train-step/CONFIG/batch=16`
//! (one Decomp Diffusion training step,
//! [`recompose_benches::decomp::DecompWorkload::train_step`]) or `decomp/forward/CONFIG/batch=16`
//! (the composed prediction of the batch from given latents on the detached model, the cost of
//! one DDIM sampling step), CONFIG one of the reference benchmark's configurations
//! (`a-32px-32ch`, `b-32px-16ch`, `c-16px-32ch`, `d-16px-32ch-attn8`).
//!
//! Protocol (one line each way): after building the model and making three warm-up calls the
//! server prints `ready`. Then each line it reads holds a call count n; it makes n calls and
//! prints their wall times in seconds, space-separated, on one line. It exits at the end of its
//! input or on an empty line.

use std::hint::black_box;
use std::io::{BufRead, Write};
use std::time::Instant;

use candle_core::Device;

use recompose_benches::composition::TrainDevice;
use recompose_benches::decomp::{DecompWorkload, Error, configs};
use recompose_benches::step::{
    ENERGY_GROUP, GuidedWorkload, MLP_GROUP, StepWorkload, text_guided_group, text_train_group,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls made before `ready`: the first calls fault in the activation buffers.
const WARMUP: usize = 3;

const USAGE: &str = "usage: bench-steps GROUP [--device cpu|cuda:N] (GROUP: \
mlp/train-step/batch=1000, mlp-energy/train-step/batch=1000, text-unet[-energy]/train-step/batch=32, \
text-unet[-energy]/guided/chains=64, decomp/train-step/CONFIG/batch=N or decomp/forward/CONFIG/batch=N)";

fn main() -> Result<(), Error> {
    // SAFETY: first thing in `main`, before any other thread exists.
    recompose_core::process::prepare();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (group, device) = match args.as_slice() {
        [group] => (group, Device::Cpu),
        [group, flag, dev] if flag == "--device" => (group, open_device(dev)?),
        _ => return Err(USAGE.into()),
    };
    let mut inner = workload(group, &device)?;
    let mut call = move || -> Result<(), Error> {
        inner()?;
        device.synchronize()?;
        Ok(())
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

/// The device `--device` names: `cpu` or `cuda:N` (the GPU's default stream, as PyTorch's).
fn open_device(name: &str) -> Result<Device, Error> {
    Ok(match TrainDevice::parse(name)? {
        TrainDevice::Cpu => Device::Cpu,
        TrainDevice::Cuda(n) => Device::new_cuda(n).map_err(|e| format!("--device {name}: {e}"))?,
    })
}

/// The call a group names, on `device`.
fn workload(group: &str, device: &Device) -> Result<Box<dyn FnMut() -> Result<(), Error>>, Error> {
    if group == MLP_GROUP || group == ENERGY_GROUP {
        let mut work = StepWorkload::mlp(group == ENERGY_GROUP, device)?;
        return Ok(Box::new(move || work.train_step()));
    }
    for energy in [false, true] {
        if group == text_train_group(energy) {
            let mut work = StepWorkload::text_unet(energy, device)?;
            return Ok(Box::new(move || work.train_step()));
        }
        if group == text_guided_group(energy) {
            let work = GuidedWorkload::new(energy, device)?;
            return Ok(Box::new(move || {
                black_box(work.predict()?);
                Ok(())
            }));
        }
    }
    let parts: Vec<&str> = group.split('/').collect();
    let ["decomp", kind, name, batch] = parts.as_slice() else {
        return Err(format!("unknown group '{group}'; {USAGE}").into());
    };
    let batch: usize = batch
        .strip_prefix("batch=")
        .and_then(|b| b.parse().ok())
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("unknown batch '{batch}' in '{group}'; {USAGE}"))?;
    let names: Vec<&str> = configs().iter().map(|(n, _)| *n).collect();
    let cfg = recompose_benches::decomp::config(name).ok_or_else(|| {
        format!(
            "unknown configuration '{name}' (one of {})",
            names.join(", ")
        )
    })?;
    let mut work = DecompWorkload::with_batch(&cfg, batch, device)?;
    Ok(match *kind {
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
    })
}
