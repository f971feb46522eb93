//! Decomp Diffusion benchmarks (Su et al. 2024; decomp spec §4): one training step of the whole
//! model (encoder in training mode, K = 3 factors as one batch of 48 denoiser images, x₀ loss,
//! backward, AdamW) at batch 16, the composed prediction of 16 images (48 denoiser images, the
//! cost of one DDIM sampling step) and the encoder alone, at the four small configurations of
//! the reference benchmark.
//!
//! `cargo xtask bench decomp` runs this suite and then the same workloads in PyTorch on the same
//! machine and threads, and writes the comparison to `docs/results/decomp-bench.md`. The model
//! and inputs come from [`recompose_benches::decomp`], which the `bench-steps` timing
//! server shares.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group};
use recompose_benches::decomp::{BATCH, DecompWorkload, configs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn decomp(c: &mut Criterion) {
    for (name, cfg) in configs() {
        let mut work = DecompWorkload::new(&cfg, &candle_core::Device::Cpu).expect("model");
        let mut g = c.benchmark_group(format!("decomp/train-step/{name}/batch={BATCH}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("recompose", |b| {
            b.iter(|| work.train_step().expect("training step"))
        });
        g.finish();

        // Sampling runs on a loaded model (plain tensors, no gradient tracking): the same
        // weights, detached.
        let model = work.frozen_model().expect("frozen model");
        let z = model.encode(&work.x0, false).expect("encode");
        let k = cfg.num_components as u64;
        let mut g = c.benchmark_group(format!("decomp/forward/{name}/batch={BATCH}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(BATCH as u64 * k));
        g.bench_function("recompose", |b| {
            b.iter(|| {
                black_box(
                    model
                        .denoise(&work.x_t, &work.t, &z, None)
                        .expect("denoise"),
                )
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("decomp/encode/{name}/batch={BATCH}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("recompose", |b| {
            b.iter(|| black_box(model.encode(&work.x0, false).expect("encode")))
        });
        g.finish();
    }
}

criterion_group!(benches, decomp);

fn main() {
    // SAFETY: first thing in `main`, before any other thread exists.
    recompose_core::process::prepare();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
