//! Diffusion-model benchmarks: a training step of the 2-D residual MLP (Du et al. 2023) and of
//! its energy form at batch 1000, and the improved-diffusion U-Net's forward pass (batch 48 = 16 images × 3 factors) and
//! training step (batch 16) at the small Decomp Diffusion configurations (decomp spec §4).
//!
//! `cargo xtask bench diffusion` runs this suite and then the same workloads in PyTorch on the
//! same machine and threads, and writes the comparison to `docs/results/diffusion-bench.md`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, Throughput, criterion_group};
use recompose_benches::step::{ENERGY_GROUP, MLP_GROUP, StepWorkload};
use recompose_diffusion::Denoiser;
use recompose_diffusion::nn::{ParamStore, UNet, UNetConfig};
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::train::{AdamW, AdamWConfig};
use recompose_diffusion::{Parameterization, SeededRng, seeded};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn randn(rng: &mut SeededRng, shape: &[usize]) -> Tensor {
    normal_tensor(rng, shape, DType::F32, &Device::Cpu).expect("noise")
}

fn times(rng: &mut SeededRng, n: usize, steps: usize) -> Tensor {
    use rand::Rng;
    let t: Vec<f32> = (0..n).map(|_| rng.random_range(0..steps) as f32).collect();
    Tensor::from_vec(t, n, &Device::Cpu).expect("times")
}

/// One optimizer step: forward, MSE against `target`, backward (candle's autograd), AdamW.
fn train_step(
    model: &dyn Denoiser,
    opt: &mut AdamW,
    x: &Tensor,
    t: &Tensor,
    cond: Option<&Tensor>,
    target: &Tensor,
) {
    let out = model.forward(x, t, cond).expect("forward");
    let loss = (out - target)
        .and_then(|d| d.sqr())
        .and_then(|d| d.mean_all())
        .expect("loss");
    let grads = loss.backward().expect("backward");
    opt.step(&grads, 1e-3, 1.0).expect("adam");
}

/// The training steps of the 2-D MLP and its energy form, as `train` takes them
/// ([`StepWorkload`], shared with the `bench-steps` timing server).
fn mlp(c: &mut Criterion) {
    for (group, energy) in [(MLP_GROUP, false), (ENERGY_GROUP, true)] {
        let mut work = StepWorkload::mlp(energy, &candle_core::Device::Cpu).expect("mlp workload");
        let mut g = c.benchmark_group(group);
        g.sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(1));
        g.bench_function("recompose", |b| b.iter(|| work.train_step().expect("step")));
        g.finish();
    }
}

/// The four small configurations of the decomp spec §4 / the reference benchmark.
fn unet_configs() -> Vec<(&'static str, UNetConfig)> {
    let a = UNetConfig::decomp_small();
    let b = UNetConfig {
        model_channels: 16,
        num_head_channels: None,
        num_heads: 1,
        ..a.clone()
    };
    let c = UNetConfig {
        image_size: 16,
        num_head_channels: None,
        num_heads: 1,
        ..a.clone()
    };
    let d = UNetConfig {
        image_size: 16,
        attention_resolutions: vec![8],
        ..a.clone()
    };
    vec![
        ("a-32px-32ch", a),
        ("b-32px-16ch", b),
        ("c-16px-32ch", c),
        ("d-16px-32ch-attn8", d),
    ]
}

fn unet(c: &mut Criterion) {
    for (name, cfg) in unet_configs() {
        let store = ParamStore::new(0);
        let model = UNet::new(
            &cfg,
            Parameterization::X0,
            store.var_builder(DType::F32, &Device::Cpu),
        )
        .expect("unet");
        // Zero-initialized output layers would make the backward pass artificially cheap
        // (no effect on cost in practice, but keep every weight generic).
        let mut rng = seeded(2);
        recompose_benches::decomp::perturb(&store, &mut rng, 0.02).expect("perturb");
        let s = cfg.image_size;
        let cond_dim = cfg.cond_dim;

        let fwd_batch = 48;
        let x = randn(&mut rng, &[fwd_batch, 3, s, s]);
        let t = times(&mut rng, fwd_batch, 1000);
        let cond = randn(&mut rng, &[fwd_batch, cond_dim])
            .relu()
            .expect("relu");
        let mut g = c.benchmark_group(format!("unet/forward/{name}/batch={fwd_batch}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(fwd_batch as u64));
        g.bench_function("recompose", |b| {
            b.iter(|| black_box(model.forward(&x, &t, Some(&cond)).expect("forward")))
        });
        g.finish();

        let batch = 16;
        let mut opt = AdamW::new(store.vars(), AdamWConfig::default()).expect("adam");
        let x = randn(&mut rng, &[batch, 3, s, s]);
        let target = randn(&mut rng, &[batch, 3, s, s]);
        let t = times(&mut rng, batch, 1000);
        let cond = randn(&mut rng, &[batch, cond_dim]).relu().expect("relu");
        let mut g = c.benchmark_group(format!("unet/train-step/{name}/batch={batch}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(6))
            .throughput(Throughput::Elements(batch as u64));
        g.bench_function("recompose", |b| {
            b.iter(|| train_step(&model, &mut opt, &x, &t, Some(&cond), &target))
        });
        g.finish();
    }
}

criterion_group!(benches, mlp, unet);

fn main() {
    // SAFETY: first thing in `main`, before any other thread exists.
    recompose_core::process::prepare();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
