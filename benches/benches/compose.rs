//! Composition benchmarks: throughput of the annealed-MCMC kernels in chain-steps per second for
//! 1000 chains on the product of two 2-D residual MLPs (score and energy parameterizations, the
//! paper's width H = 128 and the width H = 64 of `cargo xtask reproduce composition`), one
//! evaluation of such a product, and an optimizer step of an energy model (whose loss
//! differentiates through the input gradient).

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device};
use criterion::{Criterion, Throughput, criterion_group};
use recompose_compose::{
    AnnealConfig, Component, EnergyLeaf, Kernel, Product, ScoreLeaf, mcmc_at_level,
};
use recompose_diffusion::nn::{EnergyForm, EnergyMlp, MlpConfig, ParamStore, ResidualMlp};
use recompose_diffusion::train::{AdamW, AdamWConfig, DenoisingLoss, Objective};
use recompose_diffusion::{DiscreteSchedule, Parameterization, SeededRng, seeded};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHAINS: usize = 1000;

fn config(hidden: usize) -> MlpConfig {
    MlpConfig {
        hidden,
        block_hidden: 2 * hidden,
        ..MlpConfig::default()
    }
}

/// Moves every weight off its (partly zero) initialization, as training would.
fn perturb(store: &ParamStore, rng: &mut SeededRng) {
    for (_, var) in store.vars() {
        let t = var.as_tensor();
        let noise =
            recompose_diffusion::random::normal_tensor(rng, t.dims(), DType::F32, &Device::Cpu)
                .expect("noise");
        var.set(&(t + (noise * 0.05).expect("scale")).expect("add"))
            .expect("set");
    }
}

fn leaf(hidden: usize, energy: bool, seed: u64, schedule: &DiscreteSchedule) -> Box<dyn Component> {
    let store = ParamStore::new(seed);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let mut rng = seeded(seed);
    if energy {
        let m = EnergyMlp::new(&config(hidden), EnergyForm::SquaredResidual, vb).expect("energy");
        perturb(&store, &mut rng);
        Box::new(EnergyLeaf::new("e", &m, schedule.clone()).expect("leaf"))
    } else {
        let m = ResidualMlp::new(&config(hidden), Parameterization::Epsilon, vb).expect("mlp");
        perturb(&store, &mut rng);
        Box::new(ScoreLeaf::mlp("s", &m, schedule.clone()).expect("leaf"))
    }
}

fn kernels(c: &mut Criterion) {
    let schedule = DiscreteSchedule::cosine(100, 0.008).expect("schedule");
    let x: Vec<f32> = recompose_diffusion::random::normal_vec(&mut seeded(3), CHAINS * 2)
        .into_iter()
        .map(|v| 0.5 * v)
        .collect();
    let x =
        candle_core::Tensor::from_vec(x, (CHAINS, 2), &candle_core::Device::Cpu).expect("points");
    for hidden in [128, 64] {
        for energy in [false, true] {
            let model = Product::new(vec![
                (1.0, leaf(hidden, energy, 1, &schedule)),
                (1.0, leaf(hidden, energy, 2, &schedule)),
            ])
            .expect("product");
            let param = if energy { "energy" } else { "score" };
            let mut group = c.benchmark_group(format!("compose/{param}/h={hidden}"));
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(4));
            group.throughput(Throughput::Elements(CHAINS as u64));
            group.bench_function(format!("evaluate/chains={CHAINS}"), |b| {
                b.iter(|| black_box(model.evaluate(&x, 50, energy).expect("eval")))
            });
            for kernel in Kernel::ALL {
                if kernel.is_metropolis() && !energy {
                    continue;
                }
                let cfg = AnnealConfig::paper_2d(kernel);
                let mut rng = seeded(4);
                group.bench_function(format!("{}/chains={CHAINS}", kernel.name()), |b| {
                    b.iter(|| {
                        black_box(
                            mcmc_at_level(&model, &cfg, 50, x.clone(), 1, &mut rng).expect("mcmc"),
                        )
                    })
                });
            }
            group.finish();
        }
    }
}

fn energy_training(c: &mut Criterion) {
    let schedule = DiscreteSchedule::cosine(100, 0.008).expect("schedule");
    let mut group = c.benchmark_group("compose/energy-train-step");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for hidden in [128, 64] {
        let store = ParamStore::new(0);
        let model = EnergyMlp::new(
            &config(hidden),
            EnergyForm::SquaredResidual,
            store.var_builder(DType::F32, &Device::Cpu),
        )
        .expect("energy");
        let loss = DenoisingLoss::new(&model, &schedule);
        let mut opt = AdamW::new(store.vars(), AdamWConfig::default()).expect("adam");
        let mut rng = seeded(5);
        let batch = recompose_diffusion::random::normal_tensor(
            &mut rng,
            &[1000, 2],
            DType::F32,
            &Device::Cpu,
        )
        .expect("batch");
        group.bench_function(format!("h={hidden}/batch=1000"), |b| {
            b.iter(|| {
                let l = loss.loss(&batch, None, &mut rng).expect("loss");
                let grads = l.backward().expect("backward");
                opt.step(&grads, 1e-3, 1.0).expect("adam");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kernels, energy_training);

fn main() {
    // SAFETY: first thing in `main`, before any other thread exists.
    recompose_core::process::prepare();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
