//! Image-composition benchmarks: the text-conditioned U-Net of the image-composition recipe
//! (`recompose_benches::image_composition::recipe`: a two-layer text encoder of width 64, a
//! 32 px U-Net with 32 base channels, multipliers 1, 2, 2, attention at 8 px, coordinate
//! channels and cross-attention to the token states), as a score model and as an energy model
//! (E = ‖g − x‖², ε̂ = ∇ₓE):
//!
//! * `text-unet/train-step/batch=32`, `text-unet-energy/train-step/batch=32`: one AdamW step
//!   (text encoder and U-Net, ε MSE) at the recipe's batch;
//! * `text-unet/guided/chains=64`, `text-unet-energy/guided/chains=64`: one
//!   classifier-free-guided prediction for 64 chains (the network on 128 rows), the cost of one
//!   step of reverse diffusion or of ULA / U-HMC.
//!
//! `cargo xtask bench image` runs this suite and then the same workloads in PyTorch on the same
//! machine and threads, and writes the comparison to `docs/results/image-bench.md`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group};
use recompose_benches::step::{
    GUIDED_CHAINS, GuidedWorkload, StepWorkload, TEXT_BATCH, text_guided_group, text_train_group,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn text_unet(c: &mut Criterion) {
    for energy in [false, true] {
        let mut work = StepWorkload::text_unet(energy, &Device::Cpu).expect("text workload");
        let mut g = c.benchmark_group(text_train_group(energy));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Elements(TEXT_BATCH as u64));
        g.bench_function("recompose", |b| b.iter(|| work.train_step().expect("step")));
        g.finish();

        let work = GuidedWorkload::new(energy, &Device::Cpu).expect("guided workload");
        let mut g = c.benchmark_group(text_guided_group(energy));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(6))
            .throughput(Throughput::Elements(GUIDED_CHAINS as u64));
        g.bench_function("recompose", |b| {
            b.iter(|| black_box(work.predict().expect("guided prediction")))
        });
        g.finish();
    }
}

criterion_group!(benches, text_unet);

fn main() {
    // SAFETY: first thing in `main`, before any other thread exists.
    recompose_core::process::prepare();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
