//! Decomp Diffusion benchmarks (Su et al. 2024; decomp spec §4): one training step of the whole
//! model (encoder in training mode, K = 3 factors as one batch of 48 denoiser images, x₀ loss,
//! backward, AdamW) at batch 16, the composed prediction of 16 images (48 denoiser images, the
//! cost of one DDIM sampling step) and the encoder alone, at the four small configurations of
//! the reference benchmark.
//!
//! `cargo xtask bench decomp` runs this suite and then the same workloads in PyTorch on the same
//! machine and threads, and writes the comparison to `docs/results/decomp-bench.md`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, Throughput, criterion_group};
use recompose_decomp::visual::{DecompConfig, DecompModel};
use recompose_diffusion::nn::ParamStore;
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::train::{AdamW, AdamWConfig};
use recompose_diffusion::{SeededRng, seeded};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn randn(rng: &mut SeededRng, shape: &[usize]) -> Tensor {
    normal_tensor(rng, shape, DType::F32, &Device::Cpu).expect("noise")
}

/// The four configurations of the reference benchmark (released flags).
fn configs() -> Vec<(&'static str, DecompConfig)> {
    let a = DecompConfig::default();
    let b = DecompConfig {
        num_channels: 16,
        num_head_channels: -1,
        ..a.clone()
    };
    let c = DecompConfig {
        image_size: 16,
        num_head_channels: -1,
        ..a.clone()
    };
    let d = DecompConfig {
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

fn decomp(c: &mut Criterion) {
    let batch = 16;
    for (name, cfg) in configs() {
        let store = ParamStore::new(0);
        let model = DecompModel::from_config(&cfg, store.var_builder(DType::F32, &Device::Cpu))
            .expect("model");
        // Move the zero-initialized output layers off zero, as the PyTorch side does.
        let mut rng = seeded(2);
        for (n, v) in store.vars() {
            if n.contains("running") {
                continue;
            }
            let noise = randn(&mut rng, v.dims());
            v.set(&(v.as_tensor() + (noise * 0.02).expect("scale")).expect("add"))
                .expect("set");
        }
        let s = cfg.image_size;
        let x0 = randn(&mut rng, &[batch, 3, s, s])
            .affine(0.25, 0.5)
            .expect("images");
        let noise = randn(&mut rng, &[batch, 3, s, s]);
        let t_idx: Vec<f32> = (0..batch).map(|i| (i * 997 % 1000) as f32).collect();
        let t = Tensor::from_vec(t_idx, batch, &Device::Cpu).expect("t");
        let alpha = Tensor::full(0.6f32, batch, &Device::Cpu).expect("alpha");
        let sigma = Tensor::full(0.8f32, batch, &Device::Cpu).expect("sigma");
        let x_t = ((&x0 * 0.6).expect("a") + (&noise * 0.8).expect("s")).expect("x_t");

        let mut opt = AdamW::new(store.vars(), AdamWConfig::default()).expect("adam");
        let mut g = c.benchmark_group(format!("decomp/train-step/{name}/batch={batch}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Elements(batch as u64));
        g.bench_function("recompose", |b| {
            b.iter(|| {
                let loss = model
                    .loss(&x0, &x_t, &t, &noise, &alpha, &sigma)
                    .and_then(|l| Ok(l.mean_all()?))
                    .expect("loss");
                let grads = loss.backward().expect("backward");
                opt.step(&grads, 1e-3, 1.0).expect("adam");
            })
        });
        g.finish();

        // Sampling runs on a loaded model (plain tensors, no gradient tracking): the same
        // weights, detached.
        let frozen: std::collections::HashMap<String, Tensor> = store
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().detach()))
            .collect();
        let vb = candle_nn::VarBuilder::from_tensors(frozen, DType::F32, &Device::Cpu);
        let model = DecompModel::from_config(&cfg, vb).expect("frozen model");
        let z = model.encode(&x0, false).expect("encode");
        let k = cfg.num_components as u64;
        let mut g = c.benchmark_group(format!("decomp/forward/{name}/batch={batch}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(batch as u64 * k));
        g.bench_function("recompose", |b| {
            b.iter(|| black_box(model.denoise(&x_t, &t, &z, None).expect("denoise")))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("decomp/encode/{name}/batch={batch}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements(batch as u64));
        g.bench_function("recompose", |b| {
            b.iter(|| black_box(model.encode(&x0, false).expect("encode")))
        });
        g.finish();
    }
}

criterion_group!(benches, decomp);

fn main() {
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { recompose_benches::prepare_process() };
    benches();
    Criterion::default().configure_from_args().final_summary();
}
