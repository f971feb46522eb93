//! Factorization benchmarks: one resonator sweep configuration per method at the paper's
//! protocol point (D = 1000, F = 3, M = 50, 200 trials, 100 iterations), plus a throughput
//! summary that compares the resonator loop's achieved GFLOP/s with candle's own matmul on the
//! same shapes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use criterion::{Criterion, Throughput, criterion_group};
use recompose_decomp::factorize::{FactorizeConfig, METHOD_NAMES, Method, factorize};
use recompose_decomp::problem::{Problem, ProblemConfig};

const D: usize = 1000;
const F: usize = 3;
const M: usize = 50;
const TRIALS: usize = 200;
const ITERS: usize = 100;

fn problem() -> Problem {
    Problem::generate(&ProblemConfig::map(D, F, M, TRIALS, 0), &Device::Cpu)
        .expect("problem generation")
}

fn config(method: &str) -> FactorizeConfig {
    FactorizeConfig {
        method: Method::from_name(method).expect("known method"),
        max_iters: ITERS,
        seed: 0,
        threads: 0,
    }
}

fn resonator_sweeps(c: &mut Criterion) {
    let p = problem();
    let mut g = c.benchmark_group(format!("factorize/d={D}/f={F}/m={M}/trials={TRIALS}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(TRIALS as u64));
    for method in ["resonator", "resonator-ols", "stochastic", "coupled"] {
        let cfg = config(method);
        g.bench_function(method, |b| {
            b.iter(|| black_box(factorize(&p, &cfg, &mut |_| {}).expect("factorize")))
        });
    }
    g.finish();
}

/// Median seconds of `f` over `reps` runs.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

/// GFLOP/s of candle's matmul on the resonator's two shapes, `[T, D] × [D, M]` and
/// `[T, M] × [M, D]`.
fn matmul_gflops() -> f64 {
    let a = Tensor::ones((TRIALS, D), candle_core::DType::F32, &Device::Cpu).expect("tensor");
    let ct = Tensor::ones((D, M), candle_core::DType::F32, &Device::Cpu).expect("tensor");
    let s = Tensor::ones((TRIALS, M), candle_core::DType::F32, &Device::Cpu).expect("tensor");
    let c = Tensor::ones((M, D), candle_core::DType::F32, &Device::Cpu).expect("tensor");
    let reps = 200;
    let secs = median_secs(7, || {
        for _ in 0..reps {
            black_box(a.matmul(&ct).expect("matmul"));
            black_box(s.matmul(&c).expect("matmul"));
        }
    });
    (reps as f64 * 2.0 * 2.0 * (TRIALS * D * M) as f64) / secs / 1e9
}

fn summary() {
    let p = problem();
    let mm = matmul_gflops();
    println!();
    println!("resonator loop throughput, D={D} F={F} M={M} trials={TRIALS} max_iters={ITERS}");
    println!("candle matmul on the loop's shapes: {mm:.1} GFLOP/s");
    println!(
        "{:<16} {:>9} {:>11} {:>9} {:>12}",
        "method", "wall_s", "trials/s", "GFLOP/s", "of matmul"
    );
    // Every resonator variant (ALS solves normal equations, not a resonator loop).
    for method in METHOD_NAMES.into_iter().filter(|&m| m != "als") {
        let cfg = config(method);
        let mut flops = 0.0;
        let secs = median_secs(5, || {
            flops = factorize(&p, &cfg, &mut |_| {})
                .expect("factorize")
                .matmul_flops;
        });
        let gf = flops / secs / 1e9;
        println!(
            "{method:<16} {secs:>9.4} {:>11.0} {gf:>9.1} {:>11.0}%",
            TRIALS as f64 / secs,
            100.0 * gf / mm
        );
    }
}

criterion_group!(benches, resonator_sweeps);

fn main() {
    // SAFETY: first thing in `main`, before any other thread exists.
    recompose_core::process::prepare();
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes `--bench`; a plain test run (`cargo test --benches`) does not.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
