//! Benchmarks of the `recompose-vsa` models: bind, bundle, pairwise similarity and codebook
//! similarity (all-pairs) for MAP, BSC, HRR and FHRR at D ∈ {1000, 10000}, on the CPU.
//!
//! Each iteration processes a batch of 64 vectors; throughput is reported in vectors (or
//! query–codeword pairs for `similarity_matrix`). Benchmark names read `op/model/d=D`, e.g.
//! `bind/map/d=10000`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::Device;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use recompose_vsa::random::{SeededRng, seeded};
use recompose_vsa::{Bsc, Fhrr, Hrr, Map, Vsa};

/// Vectors per batch.
const BATCH: usize = 64;
/// Dimensions benchmarked.
const DIMS: [usize; 2] = [1_000, 10_000];

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200));
}

/// Operands for one model and dimension: two random batches `[BATCH]` (the second doubles as a
/// codebook) and an RNG for tie-breaks.
struct Operands<M: Vsa> {
    model: M,
    a: M::Vector,
    b: M::Vector,
    rng: SeededRng,
}

impl<M: Vsa> Operands<M> {
    fn new(model: M) -> Self {
        let mut rng = seeded(0x5eed);
        let a = model.random(&[BATCH], &mut rng).expect("random batch");
        let b = model.random(&[BATCH], &mut rng).expect("random batch");
        Self { model, a, b, rng }
    }
}

/// Benchmarks `$body` (an expression using `$ops: &mut Operands<_>`) for every model and
/// dimension, naming each benchmark `model/d=D` inside the current group. A macro rather than a
/// function because the body is generic over the model.
macro_rules! bench_models {
    ($group:expr, |$ops:ident| $body:expr) => {{
        for d in DIMS {
            bench_models!(@one $group, d, "map", Map::new(d, &Device::Cpu), |$ops| $body);
            bench_models!(@one $group, d, "bsc", Bsc::new(d), |$ops| $body);
            bench_models!(@one $group, d, "hrr", Hrr::new(d, &Device::Cpu), |$ops| $body);
            bench_models!(@one $group, d, "fhrr", Fhrr::new(d, &Device::Cpu), |$ops| $body);
        }
    }};
    (@one $group:expr, $d:expr, $name:literal, $model:expr, |$ops:ident| $body:expr) => {{
        #[allow(unused_mut)]
        let mut $ops = Operands::new($model.expect($name));
        $group.bench_function(format!("{}/d={}", $name, $d), |bencher| {
            bencher.iter(|| black_box($body))
        });
    }};
}

fn bind(c: &mut Criterion) {
    let mut group = c.benchmark_group("bind");
    configure(&mut group);
    group.throughput(Throughput::Elements(BATCH as u64));
    bench_models!(group, |ops| ops
        .model
        .bind(black_box(&ops.a), black_box(&ops.b)));
    group.finish();
}

fn bundle(c: &mut Criterion) {
    let mut group = c.benchmark_group("bundle");
    configure(&mut group);
    group.throughput(Throughput::Elements(BATCH as u64));
    // 64 members: an even count, so MAP and BSC exercise their random tie-breaks.
    bench_models!(group, |ops| ops.model.bundle(
        black_box(&ops.a),
        0,
        &mut ops.rng
    ));
    group.finish();
}

fn similarity(c: &mut Criterion) {
    let mut group = c.benchmark_group("similarity");
    configure(&mut group);
    group.throughput(Throughput::Elements(BATCH as u64));
    bench_models!(group, |ops| ops
        .model
        .similarity(black_box(&ops.a), black_box(&ops.b)));
    group.finish();
}

fn similarity_matrix(c: &mut Criterion) {
    let mut group = c.benchmark_group("similarity_matrix");
    configure(&mut group);
    group.throughput(Throughput::Elements((BATCH * BATCH) as u64));
    // 64 queries against a 64-word codebook, as in a clean-up step.
    bench_models!(group, |ops| {
        ops.model
            .similarity_matrix(black_box(&ops.a), black_box(&ops.b))
    });
    group.finish();
}

criterion_group!(benches, bind, bundle, similarity, similarity_matrix);
criterion_main!(benches);
