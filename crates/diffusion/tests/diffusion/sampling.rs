//! Tests of the parameterizations, the denoiser interface and the samplers against closed-form
//! mathematics: exact conversions, exact Gaussian-mixture denoisers, and the moments of the
//! samples they produce.
//!
//! Statistical tolerances are stated in standard errors (SE) of the estimate from n samples:
//! SE(mean) = s/√n, SE(variance) = s²√(2/n), SE(covariance, off-diagonal) = s²/√n for data with
//! per-coordinate variance s², SE(fraction p) = √(p(1 − p)/n). All tests use fixed seeds, so they
//! are deterministic; the tolerances say how far an unlucky seed may land.

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use recompose_diffusion::param::{Parameterization, add_noise, v_target};
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::sampler::{
    DdpmVariance, Sampler, SamplerConfig, SamplerKind, SdeSampler, sample,
};
use recompose_diffusion::{
    Denoiser, DiscreteSchedule, Error, GaussianMixture, GaussianMixtureDenoiser, NoiseLevels,
    SeededRng, Spacing, TimeGrid, VpSde, seeded,
};

const N: usize = 4000;

fn cpu() -> Device {
    Device::Cpu
}

fn linear() -> DiscreteSchedule {
    DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap()
}

/// The 2-D test Gaussian N(μ, s² I) with μ = (1, −0.5), s = 0.5.
fn gaussian_2d() -> GaussianMixture {
    GaussianMixture::gaussian(vec![1.0, -0.5], 0.25).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Sample mean and covariance (row-major d × d, divided by n − 1) of an (n, d) tensor.
fn moments(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = x.dims2().unwrap();
    let v = x
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let mut mean = vec![0.0; d];
    for row in v.chunks_exact(d) {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for row in v.chunks_exact(d) {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += (row[i] - mean[i]) * (row[j] - mean[j]) / (n - 1) as f64;
            }
        }
    }
    (mean, cov)
}

/// Asserts that samples `x` of shape (n, d) have mean `mean` and covariance `var · I` within `k`
/// standard errors (computed from `var`).
fn assert_moments(x: &Tensor, mean: &[f64], var: f64, k: f64, what: &str) {
    let (n, d) = x.dims2().unwrap();
    let (m, cov) = moments(x);
    assert!(
        m.iter().chain(&cov).all(|v| v.is_finite()),
        "{what}: non-finite samples"
    );
    let n = n as f64;
    let se_mean = (var / n).sqrt();
    let se_var = var * (2.0 / n).sqrt();
    let se_cov = var / n.sqrt();
    for i in 0..d {
        assert!(
            (m[i] - mean[i]).abs() < k * se_mean,
            "{what}: mean[{i}] = {} vs {} (tolerance {k} SE = {})",
            m[i],
            mean[i],
            k * se_mean
        );
        for j in 0..d {
            let (expected, se) = if i == j { (var, se_var) } else { (0.0, se_cov) };
            assert!(
                (cov[i * d + j] - expected).abs() < k * se,
                "{what}: cov[{i},{j}] = {} vs {expected} (tolerance {k} SE = {})",
                cov[i * d + j],
                k * se
            );
        }
    }
}

/// The exact law of a sampler's discrete chain on Gaussian data N(μ, s² I), started from
/// x ~ N(0, I): every step is affine in x_t plus Gaussian noise, because the exact predictions
/// are `ε̂ = σ (x − α μ)/v` and `x̂₀ = μ + α s² (x − α μ)/v` with `v = α² s² + σ²`. Returns
/// (c, V) with the output distributed as N(c μ, V I). This is the papers' update rules written
/// out in scalar `f64`, independent of the tensor code; its distance from (1, s²) is the
/// sampler's discretization bias.
fn chain_law(kind: SamplerKind, schedule: &DiscreteSchedule, ks: &[usize], s2: f64) -> (f64, f64) {
    // (ε̂ = e1 x + e0 μ, x̂₀ = k1 x + k0 μ, σ) at timestep i.
    let pred = |i: usize| {
        let (a, sg) = (schedule.sqrt_alpha_bar(i), schedule.sigma(i));
        let v = a * a * s2 + sg * sg;
        (
            (sg / v, -sg * a / v),
            (a * s2 / v, 1.0 - a * a * s2 / v),
            sg,
        )
    };
    let (mut c, mut var) = (0.0, 1.0);
    for (j, &t) in ks.iter().enumerate() {
        let ((e1, e0), (k1, k0), sg_t) = pred(t);
        let Some(&s) = ks.get(j + 1) else {
            // Last step: x̂₀.
            return (k1 * c + k0, k1 * k1 * var);
        };
        let (at, as_) = (schedule.alpha_bar(t), schedule.alpha_bar(s));
        let (one_t, one_s) = (1.0 - at, 1.0 - as_);
        // x_s = cxt x + cx0 x̂₀ + ceps ε̂ + cz z
        let (mut cxt, mut cx0, mut ceps, mut cz) = (0.0, 0.0, 0.0, 0.0);
        let delta = (as_ / at).ln();
        match kind {
            SamplerKind::Ddpm(variance) => {
                // Ho et al. eqs. 6–7 with β = 1 − ᾱ_t/ᾱ_s.
                let beta = 1.0 - at / as_;
                cx0 = as_.sqrt() * beta / one_t;
                cxt = (at / as_).sqrt() * one_s / one_t;
                cz = match variance {
                    DdpmVariance::FixedSmall => (beta * one_s / one_t).sqrt(),
                    DdpmVariance::FixedLarge => beta.sqrt(),
                };
            }
            SamplerKind::Ddim { eta } => {
                // Song, Meng, Ermon eqs. 12 and 16.
                let sig = eta * (one_s / one_t).sqrt() * (1.0 - at / as_).sqrt();
                cx0 = as_.sqrt();
                ceps = (one_s - sig * sig).sqrt();
                cz = sig;
            }
            SamplerKind::ReverseSde => {
                cxt = 1.0 + delta / 2.0;
                ceps = -delta / sg_t;
                cz = delta.sqrt();
            }
            SamplerKind::OdeEuler | SamplerKind::OdeHeun => {
                cxt = 1.0 + delta / 2.0;
                ceps = -delta / (2.0 * sg_t);
            }
        }
        let mut a = cxt + cx0 * k1 + ceps * e1;
        let mut b = cx0 * k0 + ceps * e0;
        if kind == SamplerKind::OdeHeun {
            // x_s = x + Δ/2 (d(x, t) + d(x̃, s)), d(x, t) = ½ x − ½ ε̂(x, t)/σ_t, x̃ = a x + b μ.
            let ((e1s, e0s), _, sg_s) = pred(s);
            let a2 = 1.0 + delta / 4.0 - delta / (4.0 * sg_t) * e1 + delta / 4.0 * a
                - delta / (4.0 * sg_s) * e1s * a;
            let b2 = -delta / (4.0 * sg_t) * e0 + delta / 4.0 * b
                - delta / (4.0 * sg_s) * (e1s * b + e0s);
            (a, b) = (a2, b2);
        }
        c = a * c + b;
        var = a * a * var + cz * cz;
    }
    unreachable!("the chain ends with the step to the clean data")
}

/// Samples N points of the 2-D Gaussian with `kind` over `steps` linspace steps of the linear
/// schedule and checks them (5 SE) against the exact law of the chain, then checks that law
/// against the truth: |c − 1| < `max_mean_bias` and |V/s² − 1| < `max_var_bias`. Returns the
/// samples and the law.
fn check_sampler(
    kind: SamplerKind,
    steps: usize,
    seed: u64,
    max_mean_bias: f64,
    max_var_bias: f64,
) -> (Tensor, f64, f64) {
    let gm = gaussian_2d();
    let s2 = gm.variances()[0];
    let schedule = linear();
    let ks = schedule.timesteps(steps, Spacing::Linspace, 0).unwrap();
    let (c, var) = chain_law(kind, &schedule, &ks, s2);
    let what = format!("{kind:?}, {steps} steps");
    eprintln!("{what}: chain law N({c:.5} mu, {:.5} s^2)", var / s2);
    let x = run(kind, steps, &gm, seed);
    let law_mean: Vec<f64> = gm.mean().iter().map(|m| c * m).collect();
    assert_moments(&x, &law_mean, var, 5.0, &format!("{what} vs its chain law"));
    assert!((c - 1.0).abs() < max_mean_bias, "{what}: mean bias {c}");
    assert!(
        (var / s2 - 1.0).abs() < max_var_bias,
        "{what}: variance bias {}",
        var / s2
    );
    (x, c, var)
}

fn run(kind: SamplerKind, steps: usize, gm: &GaussianMixture, seed: u64) -> Tensor {
    let schedule = linear();
    let model = GaussianMixtureDenoiser::new(gm.clone(), schedule.clone());
    let mut rng = seeded(seed);
    sample(
        &model,
        &schedule,
        kind,
        steps,
        &[N, gm.dim()],
        &cpu(),
        &mut rng,
    )
    .unwrap()
}

fn assert_config_err<T: std::fmt::Debug>(r: recompose_diffusion::Result<T>, what: &str) {
    match r {
        Err(Error::Config(msg)) => assert!(!msg.is_empty(), "{what}: empty message"),
        other => panic!("{what}: expected Err(Config), got {other:?}"),
    }
}

fn assert_shape_err<T: std::fmt::Debug>(r: recompose_diffusion::Result<T>, what: &str) {
    match r {
        Err(Error::Shape(msg)) => assert!(!msg.is_empty(), "{what}: empty message"),
        other => panic!("{what}: expected Err(Shape), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Parameterizations
// ---------------------------------------------------------------------------------------------

/// Random (x_t, ε, α, σ) of shape (b, 3, 4) with α uniform in [0.1, 0.995], σ = √(1 − α²).
fn random_batch(rng: &mut SeededRng, b: usize) -> (Tensor, Tensor, Tensor, Tensor) {
    let dev = cpu();
    let x0 = normal_tensor(rng, &[b, 3, 4], DType::F32, &dev).unwrap();
    let eps = normal_tensor(rng, &[b, 3, 4], DType::F32, &dev).unwrap();
    let alpha: Vec<f32> = (0..b).map(|_| rng.random_range(0.1f32..0.995)).collect();
    let sigma: Vec<f32> = alpha.iter().map(|a| (1.0 - a * a).sqrt()).collect();
    let alpha = Tensor::from_vec(alpha, b, &dev).unwrap();
    let sigma = Tensor::from_vec(sigma, b, &dev).unwrap();
    (x0, eps, alpha, sigma)
}

#[test]
fn conversions_round_trip() {
    use Parameterization::{Epsilon, V, X0};
    let mut rng = seeded(11);
    for _ in 0..16 {
        let (_, eps, alpha, sigma) = random_batch(&mut rng, 8);
        let x_t = normal_tensor(&mut rng, &[8, 3, 4], DType::F32, &cpu()).unwrap();
        // ε → x₀ → v → ε
        let x0 = Epsilon.to_x0(&eps, &x_t, &alpha, &sigma).unwrap();
        let v = X0.to_v(&x0, &x_t, &alpha, &sigma).unwrap();
        let back = V.to_epsilon(&v, &x_t, &alpha, &sigma).unwrap();
        assert!(
            max_abs_diff(&back, &eps) < 1e-5,
            "{}",
            max_abs_diff(&back, &eps)
        );
        // Every pair of parameterizations round-trips, and the direct conversion agrees with the
        // one through a third.
        for p in [Epsilon, X0, V] {
            let out = Epsilon.convert(p, &eps, &x_t, &alpha, &sigma).unwrap();
            for q in [Epsilon, X0, V] {
                let there = p.convert(q, &out, &x_t, &alpha, &sigma).unwrap();
                let again = q.convert(p, &there, &x_t, &alpha, &sigma).unwrap();
                assert!(max_abs_diff(&again, &out) < 1e-5, "{p:?} -> {q:?} -> {p:?}");
                let via_eps = q.convert(Epsilon, &there, &x_t, &alpha, &sigma).unwrap();
                assert!(max_abs_diff(&via_eps, &eps) < 1e-5, "{p:?} -> {q:?} -> eps");
            }
            // The score is −ε̂/σ whatever the parameterization.
            let score = p.to_score(&out, &x_t, &alpha, &sigma).unwrap();
            let expected = eps
                .broadcast_div(&sigma.reshape((8, 1, 1)).unwrap())
                .unwrap()
                .neg()
                .unwrap();
            assert!(max_abs_diff(&score, &expected) < 1e-4);
        }
    }
}

#[test]
fn training_targets_invert_the_forward_process() {
    use Parameterization::{Epsilon, V, X0};
    let mut rng = seeded(12);
    let (x0, eps, alpha, sigma) = random_batch(&mut rng, 16);
    let x_t = add_noise(&x0, &eps, &alpha, &sigma).unwrap();
    // x_t = α x₀ + σ ε, written out.
    let a = alpha.reshape((16, 1, 1)).unwrap();
    let s = sigma.reshape((16, 1, 1)).unwrap();
    let expected = (x0.broadcast_mul(&a).unwrap() + eps.broadcast_mul(&s).unwrap()).unwrap();
    assert!(max_abs_diff(&x_t, &expected) < 1e-6);
    let v = v_target(&x0, &eps, &alpha, &sigma).unwrap();
    let expected = (eps.broadcast_mul(&a).unwrap() - x0.broadcast_mul(&s).unwrap()).unwrap();
    assert!(max_abs_diff(&v, &expected) < 1e-6);
    // A perfect prediction in any parameterization recovers both ε and x₀.
    for p in [Epsilon, X0, V] {
        let target = p.target(&x0, &eps, &alpha, &sigma).unwrap();
        let e = p.to_epsilon(&target, &x_t, &alpha, &sigma).unwrap();
        let c = p.to_x0(&target, &x_t, &alpha, &sigma).unwrap();
        assert!(max_abs_diff(&e, &eps) < 1e-5, "{p:?}");
        assert!(max_abs_diff(&c, &x0) < 1e-4, "{p:?}");
        assert!(max_abs_diff(&p.to_v(&target, &x_t, &alpha, &sigma).unwrap(), &v) < 1e-5);
    }
}

#[test]
fn conversions_reject_mismatched_shapes() {
    use Parameterization::{Epsilon, V};
    let dev = cpu();
    let x = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
    let a = Tensor::ones(4, DType::F32, &dev).unwrap();
    assert_shape_err(
        Epsilon.to_x0(
            &Tensor::zeros((4, 2), DType::F32, &dev).unwrap(),
            &x,
            &a,
            &a,
        ),
        "output shape",
    );
    assert_shape_err(
        V.to_epsilon(&x, &x, &Tensor::ones(3, DType::F32, &dev).unwrap(), &a),
        "alpha length",
    );
    assert_shape_err(
        V.to_epsilon(&x, &x, &a, &Tensor::ones((4, 1), DType::F32, &dev).unwrap()),
        "sigma rank",
    );
    let scalar = Tensor::new(1.0f32, &dev).unwrap();
    assert_shape_err(add_noise(&scalar, &scalar, &a, &a), "scalar data");
    assert_shape_err(v_target(&x, &x.t().unwrap(), &a, &a), "transposed noise");
    assert_shape_err(
        Parameterization::X0.target(
            &x,
            &Tensor::zeros((4, 2), DType::F32, &dev).unwrap(),
            &a,
            &a,
        ),
        "target shape",
    );
}

// ---------------------------------------------------------------------------------------------
// The analytic denoiser
// ---------------------------------------------------------------------------------------------

#[test]
fn gaussian_denoiser_matches_closed_form() {
    // One Gaussian N(μ, s² I): E[ε | x_t] = σ (x_t − α μ)/(α² s² + σ²) and
    // E[x₀ | x_t] = μ + α s² (x_t − α μ)/(α² s² + σ²).
    let schedule = linear();
    let gm = gaussian_2d();
    let model = GaussianMixtureDenoiser::new(gm.clone(), schedule.clone());
    let dev = cpu();
    let x: Vec<f32> = vec![0.3, -1.2, 2.0, 0.1, -0.7, 0.9];
    let times = [0usize, 400, 999];
    let x_t = Tensor::from_vec(x.clone(), (3, 2), &dev).unwrap();
    let t = Tensor::from_vec(times.iter().map(|&i| i as f32).collect(), 3, &dev).unwrap();
    let eps = model
        .forward(&x_t, &t, None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let x0_model = model.clone().with_parameterization(Parameterization::X0);
    let x0 = x0_model
        .forward(&x_t, &t, None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (b, &i) in times.iter().enumerate() {
        let (a, s) = (schedule.sqrt_alpha_bar(i), schedule.sigma(i));
        let v = a * a * 0.25 + s * s;
        for j in 0..2 {
            let r = (x[2 * b + j] as f64 - a * gm.means()[0][j]) / v;
            assert!((eps[b][j] as f64 - s * r).abs() < 1e-6, "eps t={i}");
            assert!(
                (x0[b][j] as f64 - (gm.means()[0][j] + a * 0.25 * r)).abs() < 1e-6,
                "x0"
            );
        }
        let score = gm
            .score(&[x[2 * b] as f64, x[2 * b + 1] as f64], a, s)
            .unwrap();
        assert!((score[0] + eps[b][0] as f64 / s).abs() < 1e-4);
    }
    // The same model on a VP-SDE takes continuous times.
    let sde = GaussianMixtureDenoiser::new(gm.clone(), VpSde::linear());
    let t = Tensor::new(&[0.5f32, 0.5, 0.5], &dev).unwrap();
    let m = VpSde::linear().marginal(0.5);
    let out = sde
        .forward(&x_t, &t, None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let (e, _) = gm.posterior_means(&[0.3, -1.2], m.alpha, m.sigma).unwrap();
    assert!((out[0][0] as f64 - e[0]).abs() < 1e-6);
}

#[test]
fn mixture_denoiser_score_matches_finite_differences() {
    // The score of the noised marginal Σ π_k N(α μ_k, v_k I), by central differences of its
    // log-density.
    let gm = GaussianMixture::new(
        vec![0.2, 0.5, 0.3],
        vec![vec![-1.0, 0.5], vec![1.5, 1.0], vec![0.0, -2.0]],
        vec![0.1, 0.3, 0.05],
    )
    .unwrap();
    let log_p = |x: &[f64], a: f64, s: f64| -> f64 {
        let mut p = 0.0;
        for k in 0..3 {
            let v = a * a * gm.variances()[k] + s * s;
            let d2: f64 = (0..2).map(|j| (x[j] - a * gm.means()[k][j]).powi(2)).sum();
            p += gm.weights()[k] * (-0.5 * d2 / v).exp() / (2.0 * std::f64::consts::PI * v);
        }
        p.ln()
    };
    for (a, s) in [(0.9f64, 0.19f64.sqrt()), (0.5, 0.75f64.sqrt())] {
        for x in [[0.1, 0.2], [-1.3, 0.4], [1.0, -1.0]] {
            let score = gm.score(&x, a, s).unwrap();
            for j in 0..2 {
                let h = 1e-5;
                let mut xp = x;
                let mut xm = x;
                xp[j] += h;
                xm[j] -= h;
                let fd = (log_p(&xp, a, s) - log_p(&xm, a, s)) / (2.0 * h);
                assert!(
                    (score[j] - fd).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{score:?} vs {fd}"
                );
            }
        }
    }
    // Mixture moments agree with direct draws.
    let draws = gm.sample(&mut seeded(3), 20_000);
    let x = Tensor::from_vec(draws, (20_000, 2), &cpu()).unwrap();
    let (mean, cov) = moments(&x);
    let (tm, tc) = (gm.mean(), gm.covariance());
    for i in 0..2 {
        assert!((mean[i] - tm[i]).abs() < 5.0 * (tc[3 * i] / 20_000.0).sqrt());
    }
    for i in 0..4 {
        assert!((cov[i] - tc[i]).abs() < 0.05, "{cov:?} vs {tc:?}");
    }
}

#[test]
fn invalid_mixtures_and_times_are_errors() {
    assert_config_err(
        GaussianMixture::new(vec![], vec![], vec![]),
        "no components",
    );
    assert_config_err(
        GaussianMixture::new(vec![1.0], vec![vec![0.0]], vec![0.0]),
        "variance 0",
    );
    assert_config_err(
        GaussianMixture::new(vec![-1.0], vec![vec![0.0]], vec![1.0]),
        "weight",
    );
    assert_config_err(
        GaussianMixture::new(
            vec![1.0, 1.0],
            vec![vec![0.0], vec![0.0, 1.0]],
            vec![1.0, 1.0],
        ),
        "dimensions",
    );
    assert_config_err(
        GaussianMixture::new(vec![1.0], vec![vec![]], vec![1.0]),
        "dimension 0",
    );
    assert_config_err(
        GaussianMixture::new(vec![1.0], vec![vec![0.0]], vec![]),
        "lengths",
    );
    let schedule = linear();
    assert_config_err(schedule.marginal_at(1000.0), "index T");
    assert_config_err(schedule.marginal_at(2.5), "fractional index");
    assert_config_err(schedule.marginal_at(-1.0), "negative index");
    assert_config_err(VpSde::linear().marginal_at(f64::NAN), "NaN time");
    let gm = gaussian_2d();
    assert_shape_err(gm.posterior_means(&[1.0], 0.5, 0.5), "point dimension");
    assert_config_err(
        gm.posterior_means(&[1.0, 0.0], 0.0, 0.0),
        "alpha = sigma = 0",
    );
    let model = GaussianMixtureDenoiser::new(gm, schedule);
    let dev = cpu();
    let x = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let t = Tensor::zeros(2, DType::F32, &dev).unwrap();
    assert_shape_err(model.forward(&x, &t, None), "data dimension");
    let x = Tensor::zeros((2, 2), DType::F32, &dev).unwrap();
    assert_shape_err(
        model.forward(&x, &Tensor::zeros(3, DType::F32, &dev).unwrap(), None),
        "t",
    );
    let t = Tensor::new(&[0.0f32, 1000.0], &dev).unwrap();
    assert_config_err(model.forward(&x, &t, None), "t out of range");
}

// ---------------------------------------------------------------------------------------------
// Samplers
// ---------------------------------------------------------------------------------------------

#[test]
fn ddim_eta_zero_is_deterministic_and_ignores_the_rng() {
    let schedule = linear();
    let gm = gaussian_2d();
    let model = GaussianMixtureDenoiser::new(gm, schedule.clone());
    let sampler =
        Sampler::new(schedule, SamplerConfig::new(SamplerKind::Ddim { eta: 0.0 })).unwrap();
    let x_t = normal_tensor(&mut seeded(5), &[256, 2], DType::F32, &cpu()).unwrap();
    let steps = sampler.timesteps(50).unwrap();
    let mut rng_a = seeded(1);
    let mut rng_b = seeded(2);
    let a = sampler
        .sample_from(&model, &x_t, &steps, None, &mut rng_a)
        .unwrap();
    let b = sampler
        .sample_from(&model, &x_t, &steps, None, &mut rng_b)
        .unwrap();
    assert_eq!(
        a.to_vec2::<f32>().unwrap(),
        b.to_vec2::<f32>().unwrap(),
        "two runs from the same noise differ"
    );
    // Nothing was drawn: the generators are where fresh ones are.
    assert_eq!(rng_a.random::<u64>(), seeded(1).random::<u64>());
    assert_eq!(rng_b.random::<u64>(), seeded(2).random::<u64>());
    // The probability-flow ODE is deterministic too.
    let ode = Sampler::new(linear(), SamplerConfig::new(SamplerKind::OdeHeun)).unwrap();
    let c = ode
        .sample_from(&model, &x_t, &steps, None, &mut rng_a)
        .unwrap();
    let d = ode
        .sample_from(&model, &x_t, &steps, None, &mut rng_b)
        .unwrap();
    assert_eq!(c.to_vec2::<f32>().unwrap(), d.to_vec2::<f32>().unwrap());
    let mut fresh = seeded(1);
    fresh.random::<u64>();
    assert_eq!(rng_a.random::<u64>(), fresh.random::<u64>());
}

#[test]
fn ddim_recovers_gaussian_moments() {
    // DDIM is first order: with exact predictions every step contracts x − α μ by
    // (α_s α_t s² + σ_s σ_t)/(v_s v_t)^½ ≤ 1 (Cauchy–Schwarz), so 50 steps on DDPM's schedule
    // give the data variance 11 % too small (the chain law says 0.891 s²), 1000 steps 0.6 %.
    check_sampler(SamplerKind::Ddim { eta: 0.0 }, 50, 21, 0.005, 0.12);
    let (x, _, _) = check_sampler(SamplerKind::Ddim { eta: 0.0 }, 1000, 21, 0.005, 0.01);
    // At 1000 steps the bias is below one SE: the samples match the truth itself.
    let gm = gaussian_2d();
    assert_moments(&x, &gm.mean(), 0.25, 5.0, "DDIM, 1000 steps, vs the truth");
}

#[test]
fn ode_heun_recovers_gaussian_moments() {
    // Heun is second order: 50 steps already match the truth (chain law 0.9956 s²).
    let (x, _, _) = check_sampler(SamplerKind::OdeHeun, 50, 22, 0.005, 0.01);
    assert_moments(
        &x,
        &gaussian_2d().mean(),
        0.25,
        5.0,
        "PF-ODE Heun, 50 steps, vs the truth",
    );
}

#[test]
fn ode_euler_recovers_gaussian_moments() {
    // Euler in ρ = −ln ᾱ overshoots: chain law 1.021 s² at 200 steps.
    let (x, _, _) = check_sampler(SamplerKind::OdeEuler, 200, 23, 0.01, 0.03);
    assert_moments(
        &x,
        &gaussian_2d().mean(),
        0.25,
        5.0,
        "PF-ODE Euler, 200 steps, vs the truth",
    );
}

#[test]
fn ddpm_recovers_gaussian_moments() {
    // Fixed-small ignores the posterior variance of x̂₀ and undershoots with few steps (0.876 s²
    // at 100 steps, 0.985 s² at 1000); fixed-large overshoots (1.035 s² at 100, 1.003 s² at 1000).
    check_sampler(
        SamplerKind::Ddpm(DdpmVariance::FixedSmall),
        100,
        24,
        1e-3,
        0.13,
    );
    check_sampler(
        SamplerKind::Ddpm(DdpmVariance::FixedLarge),
        100,
        25,
        1e-3,
        0.04,
    );
    let gm = gaussian_2d();
    for (variance, seed) in [
        (DdpmVariance::FixedSmall, 26),
        (DdpmVariance::FixedLarge, 27),
    ] {
        let (x, _, _) = check_sampler(SamplerKind::Ddpm(variance), 1000, seed, 1e-3, 0.02);
        assert_moments(
            &x,
            &gm.mean(),
            0.25,
            5.0,
            &format!("DDPM {variance:?} vs the truth"),
        );
    }
}

#[test]
fn ddim_with_noise_recovers_gaussian_moments() {
    check_sampler(SamplerKind::Ddim { eta: 0.5 }, 100, 28, 0.005, 0.08);
}

#[test]
fn reverse_sde_recovers_gaussian_moments() {
    // Euler–Maruyama in ρ = −ln ᾱ: chain law 1.048 s² at 100 steps, 1.009 s² at 500.
    check_sampler(SamplerKind::ReverseSde, 100, 29, 0.005, 0.06);
    let (x, _, _) = check_sampler(SamplerKind::ReverseSde, 500, 30, 0.005, 0.015);
    assert_moments(
        &x,
        &gaussian_2d().mean(),
        0.25,
        5.0,
        "reverse SDE, 500 steps, vs the truth",
    );
}

#[test]
fn ddpm_recovers_mixture_weights() {
    // 1-D mixture 0.3 N(−2, 0.3²) + 0.7 N(2, 0.3²): the fraction of samples near each mean
    // estimates its weight with SE √(0.3 · 0.7/n) ≈ 0.0072; tolerance 4 SE.
    let gm = GaussianMixture::new(
        vec![0.3, 0.7],
        vec![vec![-2.0], vec![2.0]],
        vec![0.09, 0.09],
    )
    .unwrap();
    let x = run(SamplerKind::Ddpm(DdpmVariance::FixedSmall), 250, &gm, 31);
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let n = v.len() as f64;
    let near = |m: f32| v.iter().filter(|&&x| (x - m).abs() < 1.0).count() as f64 / n;
    let (left, right) = (near(-2.0), near(2.0));
    let se = (0.3f64 * 0.7 / n).sqrt();
    eprintln!("mixture weights: {left} (0.3), {right} (0.7), SE {se}");
    assert!((left - 0.3).abs() < 4.0 * se, "left weight {left}");
    assert!((right - 0.7).abs() < 4.0 * se, "right weight {right}");
    // Within 1 of a mean is 3.3 component SDs: at most a handful of samples fall outside.
    assert!(
        left + right > 0.995,
        "{} samples between the modes",
        1.0 - left - right
    );
    // The reverse SDE recovers them too.
    let x = run(SamplerKind::ReverseSde, 250, &gm, 32);
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let left = v.iter().filter(|&&x| (x + 2.0).abs() < 1.0).count() as f64 / n;
    assert!((left - 0.3).abs() < 4.0 * se, "SDE left weight {left}");
}

#[test]
fn same_seed_same_samples() {
    let gm = gaussian_2d();
    for kind in [
        SamplerKind::Ddpm(DdpmVariance::FixedSmall),
        SamplerKind::Ddpm(DdpmVariance::FixedLarge),
        SamplerKind::Ddim { eta: 0.7 },
        SamplerKind::ReverseSde,
        SamplerKind::OdeHeun,
    ] {
        let schedule = linear();
        let model = GaussianMixtureDenoiser::new(gm.clone(), schedule.clone());
        let draw = |seed: u64| {
            sample(
                &model,
                &schedule,
                kind,
                20,
                &[64, 2],
                &cpu(),
                &mut seeded(seed),
            )
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
        };
        assert_eq!(draw(7), draw(7), "{kind:?}");
        assert_ne!(draw(7), draw(8), "{kind:?}");
    }
}

#[test]
fn per_sample_timesteps_match_separate_steps() {
    let schedule = linear();
    let gm = GaussianMixture::new(
        vec![0.5, 0.5],
        vec![vec![-1.0, 0.0], vec![1.0, 1.0]],
        vec![0.1, 0.2],
    )
    .unwrap();
    let model = GaussianMixtureDenoiser::new(gm, schedule.clone());
    let x = normal_tensor(&mut seeded(9), &[4, 2], DType::F32, &cpu()).unwrap();
    let t = [999, 500, 10, 700];
    let s = [Some(950), None, Some(3), Some(699)];
    for kind in [
        SamplerKind::Ddim { eta: 0.0 },
        SamplerKind::OdeEuler,
        SamplerKind::OdeHeun,
        SamplerKind::Ddpm(DdpmVariance::FixedSmall),
    ] {
        let sampler = Sampler::new(schedule.clone(), SamplerConfig::new(kind)).unwrap();
        let rng = &mut seeded(0);
        let batch = sampler.step(&model, &x, &t, &s, None, rng).unwrap();
        for i in 0..4 {
            let row = x.narrow(0, i, 1).unwrap();
            let one = sampler
                .step(&model, &row, &t[i..=i], &s[i..=i], None, rng)
                .unwrap();
            let b_x0 = batch.pred_x0.narrow(0, i, 1).unwrap();
            assert!(
                max_abs_diff(&one.pred_x0, &b_x0) < 1e-6,
                "{kind:?} x0 row {i}"
            );
            if !kind.is_stochastic() || s[i].is_none() {
                let b_prev = batch.prev_sample.narrow(0, i, 1).unwrap();
                assert!(
                    max_abs_diff(&one.prev_sample, &b_prev) < 1e-5,
                    "{kind:?} row {i}"
                );
            }
        }
        // The step to the clean data returns x̂₀.
        let b_prev = batch.prev_sample.narrow(0, 1, 1).unwrap();
        assert_eq!(
            b_prev.to_vec2::<f32>().unwrap(),
            batch
                .pred_x0
                .narrow(0, 1, 1)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
    }
}

#[test]
fn parameterizations_give_the_same_samples() {
    // The exact mixture denoiser predicting ε, x₀ or v drives every sampler to the same samples
    // (up to f32 rounding in the conversions).
    let schedule = linear();
    let gm = GaussianMixture::new(
        vec![0.4, 0.6],
        vec![vec![-1.5, 0.5], vec![1.0, -1.0]],
        vec![0.05, 0.3],
    )
    .unwrap();
    let x_t = normal_tensor(&mut seeded(13), &[128, 2], DType::F32, &cpu()).unwrap();
    for kind in [
        SamplerKind::Ddim { eta: 0.0 },
        SamplerKind::OdeHeun,
        SamplerKind::ReverseSde,
    ] {
        let sampler = Sampler::new(schedule.clone(), SamplerConfig::new(kind)).unwrap();
        let ks = sampler.timesteps(25).unwrap();
        let outs: Vec<Tensor> = [
            Parameterization::Epsilon,
            Parameterization::X0,
            Parameterization::V,
        ]
        .into_iter()
        .map(|p| {
            let model =
                GaussianMixtureDenoiser::new(gm.clone(), schedule.clone()).with_parameterization(p);
            sampler
                .sample_from(&model, &x_t, &ks, None, &mut seeded(1))
                .unwrap()
        })
        .collect();
        assert!(
            max_abs_diff(&outs[0], &outs[1]) < 1e-3,
            "{kind:?} eps vs x0"
        );
        assert!(max_abs_diff(&outs[0], &outs[2]) < 1e-3, "{kind:?} eps vs v");
    }
}

#[test]
fn ddim_with_eta_one_is_ddpm_fixed_small() {
    // σ_η at η = 1 is the DDPM posterior standard deviation, and the means agree (Song et al.
    // 2021, §4.1), so with the same noise both chains coincide.
    let schedule = linear();
    let model = GaussianMixtureDenoiser::new(gaussian_2d(), schedule.clone());
    let x_t = normal_tensor(&mut seeded(14), &[64, 2], DType::F32, &cpu()).unwrap();
    let run_kind = |kind| {
        let sampler = Sampler::new(schedule.clone(), SamplerConfig::new(kind)).unwrap();
        let ks = sampler.timesteps(40).unwrap();
        sampler
            .sample_from(&model, &x_t, &ks, None, &mut seeded(3))
            .unwrap()
    };
    let ddim = run_kind(SamplerKind::Ddim { eta: 1.0 });
    let ddpm = run_kind(SamplerKind::Ddpm(DdpmVariance::FixedSmall));
    assert!(
        max_abs_diff(&ddim, &ddpm) < 1e-4,
        "{}",
        max_abs_diff(&ddim, &ddpm)
    );
}

#[test]
fn zero_terminal_snr_needs_v_or_x0_and_a_discrete_sampler() {
    let schedule = linear().rescale_zero_terminal_snr().unwrap();
    let gm = gaussian_2d();
    let eps_model = GaussianMixtureDenoiser::new(gm.clone(), schedule.clone());
    let v_model = eps_model.clone().with_parameterization(Parameterization::V);
    let ddim = Sampler::new(
        schedule.clone(),
        SamplerConfig::new(SamplerKind::Ddim { eta: 0.0 }),
    )
    .unwrap();
    let rng = &mut seeded(4);
    assert_config_err(
        ddim.sample(&eps_model, &[8, 2], 50, None, &cpu(), rng),
        "eps at zero SNR",
    );
    for kind in [
        SamplerKind::ReverseSde,
        SamplerKind::OdeEuler,
        SamplerKind::OdeHeun,
    ] {
        let sampler = Sampler::new(schedule.clone(), SamplerConfig::new(kind)).unwrap();
        assert_config_err(
            sampler.sample(&v_model, &[8, 2], 50, None, &cpu(), rng),
            "SDE/ODE",
        );
        // Starting one step below the top is fine.
        let x = normal_tensor(rng, &[8, 2], DType::F32, &cpu()).unwrap();
        let out = sampler
            .sample_from(&v_model, &x, &[998, 500, 0], None, rng)
            .unwrap();
        assert!(
            out.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite())
        );
    }
    // With a v-model DDIM starts from pure noise and follows its chain law.
    let ks = ddim.timesteps(100).unwrap();
    let (c, var) = chain_law(SamplerKind::Ddim { eta: 0.0 }, &schedule, &ks, 0.25);
    let x = ddim
        .sample(&v_model, &[N, 2], 100, None, &cpu(), rng)
        .unwrap();
    let mean: Vec<f64> = gm.mean().iter().map(|m| c * m).collect();
    assert_moments(&x, &mean, var, 5.0, "DDIM on a zero-terminal-SNR schedule");
    // Starting at pure noise, the mean is exact.
    assert!((c - 1.0).abs() < 1e-12, "{c}");
}

#[test]
fn clipping_bounds_the_predicted_data() {
    let schedule = linear();
    let model = GaussianMixtureDenoiser::new(gaussian_2d(), schedule.clone());
    for kind in [
        SamplerKind::Ddim { eta: 0.0 },
        SamplerKind::Ddpm(DdpmVariance::FixedSmall),
    ] {
        let sampler =
            Sampler::new(schedule.clone(), SamplerConfig::new(kind).with_clip_x0(0.5)).unwrap();
        let rng = &mut seeded(5);
        let mut x = normal_tensor(rng, &[256, 2], DType::F32, &cpu()).unwrap();
        let ks = sampler.timesteps(20).unwrap();
        for (j, &t) in ks.iter().enumerate() {
            let s = ks.get(j + 1).copied();
            let out = sampler
                .step(&model, &x, &[t; 256], &[s; 256], None, rng)
                .unwrap();
            let x0 = out.pred_x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                x0.iter().all(|v| v.abs() <= 0.5),
                "{kind:?}: x0 not clipped at {t}"
            );
            x = out.prev_sample;
        }
        // The data mean (1, −0.5) is pulled into [−0.5, 0.5].
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|v| v.abs() <= 0.5));
    }
}

/// A model that returns the wrong shape.
struct Broken;

impl Denoiser for Broken {
    fn parameterization(&self) -> Parameterization {
        Parameterization::Epsilon
    }

    fn forward(
        &self,
        x_t: &Tensor,
        _t: &Tensor,
        _cond: Option<&Tensor>,
    ) -> recompose_diffusion::Result<Tensor> {
        Ok(x_t.narrow(1, 0, 1)?)
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let schedule = linear();
    let model = GaussianMixtureDenoiser::new(gaussian_2d(), schedule.clone());
    let dev = cpu();
    let rng = &mut seeded(6);
    let ddim = SamplerKind::Ddim { eta: 0.0 };
    // Step counts.
    assert_config_err(
        sample(&model, &schedule, ddim, 0, &[4, 2], &dev, rng),
        "0 steps",
    );
    assert_config_err(
        sample(&model, &schedule, ddim, 1001, &[4, 2], &dev, rng),
        "T + 1 steps",
    );
    // A failed call consumed nothing from the RNG.
    assert_eq!(rng.random::<u64>(), seeded(6).random::<u64>());
    // Settings.
    assert_config_err(
        sample(
            &model,
            &schedule,
            SamplerKind::Ddim { eta: 1.5 },
            10,
            &[4, 2],
            &dev,
            rng,
        ),
        "eta",
    );
    assert_config_err(
        sample(
            &model,
            &schedule,
            SamplerKind::Ddim { eta: f64::NAN },
            10,
            &[4, 2],
            &dev,
            rng,
        ),
        "NaN eta",
    );
    assert_config_err(
        Sampler::new(
            schedule.clone(),
            SamplerConfig::new(ddim).with_clip_x0(-1.0),
        ),
        "negative clip",
    );
    // Shapes.
    assert_shape_err(
        sample(&model, &schedule, ddim, 10, &[4, 3], &dev, rng),
        "data dimension",
    );
    assert_shape_err(
        sample(&model, &schedule, ddim, 10, &[], &dev, rng),
        "empty shape",
    );
    // A batch that could never fit is refused before its noise is drawn.
    for shape in [[1usize << 40, 2], [usize::MAX, 2]] {
        let err = sample(&model, &schedule, ddim, 10, &shape, &dev, rng).unwrap_err();
        assert!(
            matches!(err, recompose_diffusion::Error::Memory(_)),
            "{shape:?}: {err}"
        );
    }
    assert_shape_err(
        sample(&Broken, &schedule, ddim, 10, &[4, 2], &dev, rng),
        "model output",
    );
    let sampler = Sampler::new(schedule.clone(), SamplerConfig::new(ddim)).unwrap();
    let x = Tensor::zeros((4, 2), DType::F32, &dev).unwrap();
    assert_shape_err(
        sampler.step(&model, &x, &[10; 3], &[None; 4], None, rng),
        "t length",
    );
    assert_shape_err(
        sampler.step(&model, &x, &[10; 4], &[None; 5], None, rng),
        "s length",
    );
    let scalar = Tensor::new(0.0f32, &dev).unwrap();
    assert_shape_err(
        sampler.step(&model, &scalar, &[], &[], None, rng),
        "scalar sample",
    );
    // Timesteps.
    assert_config_err(
        sampler.step(&model, &x, &[1000; 4], &[None; 4], None, rng),
        "t = T",
    );
    assert_config_err(
        sampler.step(&model, &x, &[10; 4], &[Some(10); 4], None, rng),
        "s = t",
    );
    assert_config_err(
        sampler.step(&model, &x, &[10; 4], &[Some(20); 4], None, rng),
        "s > t",
    );
    assert_config_err(
        sampler.sample_from(&model, &x, &[], None, rng),
        "no timesteps",
    );
    assert_config_err(
        sampler.sample_from(&model, &x, &[10, 20], None, rng),
        "ascending",
    );
    assert_config_err(
        sampler.sample_from(&model, &x, &[10, 10], None, rng),
        "repeated",
    );
    assert_config_err(
        sampler.sample_from(&model, &x, &[1000, 10], None, rng),
        "past T",
    );
}

#[test]
fn any_model_behind_a_pointer_is_a_denoiser() {
    let schedule = linear();
    let model = GaussianMixtureDenoiser::new(gaussian_2d(), schedule.clone());
    let boxed: Box<dyn Denoiser> = Box::new(model.clone());
    let shared = std::sync::Arc::new(model.clone());
    let kind = SamplerKind::OdeEuler;
    let a = sample(
        &model,
        &schedule,
        kind,
        10,
        &[16, 2],
        &cpu(),
        &mut seeded(1),
    )
    .unwrap();
    let b = sample(
        &boxed,
        &schedule,
        kind,
        10,
        &[16, 2],
        &cpu(),
        &mut seeded(1),
    )
    .unwrap();
    let c = sample(
        &shared,
        &schedule,
        kind,
        10,
        &[16, 2],
        &cpu(),
        &mut seeded(1),
    )
    .unwrap();
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    assert_eq!(a.to_vec2::<f32>().unwrap(), c.to_vec2::<f32>().unwrap());
    assert_eq!(boxed.parameterization(), Parameterization::Epsilon);
}

/// Samples of N(μ, s² I) drawn with `kind` on the continuous VP-SDE (t from 1 down to 10⁻³,
/// `steps` steps on `grid`), the model being the exact denoiser of that data.
fn run_sde(kind: SamplerKind, steps: usize, grid: TimeGrid, seed: u64) -> Tensor {
    let gm = gaussian_2d();
    let sde = VpSde::linear();
    let model = GaussianMixtureDenoiser::new(gm.clone(), sde);
    let sampler = SdeSampler::new(sde, kind, grid).unwrap();
    sampler
        .sample(
            &model,
            &[N, gm.dim()],
            steps,
            None,
            &cpu(),
            &mut seeded(seed),
        )
        .unwrap()
}

#[test]
fn continuous_time_samplers_recover_gaussian_moments() {
    // Every rule of the sampling core on VpSde time grids, against the truth N(μ, 0.25 I) within
    // 5 standard errors of 4000 samples (±2.8% of the variance): Heun is second order and needs
    // few steps, the first-order rules more (their bias shrinks as 1/steps).
    let gm = gaussian_2d();
    for (kind, steps, grid, seed) in [
        (SamplerKind::OdeHeun, 40, TimeGrid::LogSnr, 41),
        (SamplerKind::OdeEuler, 400, TimeGrid::LogSnr, 42),
        (SamplerKind::ReverseSde, 400, TimeGrid::LogSnr, 43),
        (SamplerKind::Ddim { eta: 0.0 }, 400, TimeGrid::LogSnr, 44),
        (SamplerKind::Ddim { eta: 1.0 }, 400, TimeGrid::Linear, 45),
        (
            SamplerKind::Ddpm(DdpmVariance::FixedLarge),
            400,
            TimeGrid::Linear,
            46,
        ),
    ] {
        let x = run_sde(kind, steps, grid, seed);
        assert_moments(
            &x,
            &gm.mean(),
            0.25,
            5.0,
            &format!("{kind:?} on the VP-SDE, {steps} steps, {grid:?}"),
        );
    }
}

#[test]
fn continuous_time_sampler_checks_its_inputs() {
    let gm = gaussian_2d();
    let sde = VpSde::linear();
    let model = GaussianMixtureDenoiser::new(gm, sde);
    assert_config_err(
        SdeSampler::new(sde, SamplerKind::Ddim { eta: -0.1 }, TimeGrid::Linear),
        "eta",
    );
    let sampler = SdeSampler::new(sde, SamplerKind::OdeHeun, TimeGrid::LogSnr).unwrap();
    assert_config_err(sampler.clone().with_clip_x0(0.0), "clip");
    assert_config_err(sampler.times(0), "zero steps");
    let x = Tensor::zeros((2, 2), DType::F32, &cpu()).unwrap();
    let mut rng = seeded(0);
    assert_config_err(
        sampler.sample_from(&model, &x, &[0.5, 0.7], None, &mut rng),
        "ascending times",
    );
    assert_config_err(
        sampler.sample_from(&model, &x, &[], None, &mut rng),
        "no times",
    );
    assert_config_err(
        sampler.step(&model, &x, &[0.5, -1.0], &[None, None], None, &mut rng),
        "negative time",
    );
    assert_shape_err(
        sampler.step(&model, &x, &[0.5], &[None], None, &mut rng),
        "one time for two samples",
    );
    // Heun's last step is the plain Tweedie denoising: a one-time chain returns x̂₀.
    let out = sampler
        .sample_from(&model, &x, &[0.5], None, &mut rng)
        .unwrap();
    let m = sde.marginal(0.5);
    let want = model
        .forward(&x, &Tensor::new(&[0.5f32, 0.5], &cpu()).unwrap(), None)
        .unwrap();
    let want = Parameterization::Epsilon
        .to_x0(
            &want,
            &x,
            &Tensor::new(&[m.alpha, m.alpha], &cpu()).unwrap(),
            &Tensor::new(&[m.sigma, m.sigma], &cpu()).unwrap(),
        )
        .unwrap();
    assert!(max_abs_diff(&out, &want) < 1e-6);
}

#[test]
fn sampler_names_parse() {
    use recompose_diffusion::{DdpmVariance, SamplerKind};
    let parsed: Vec<SamplerKind> = ["ddpm", "ddim", "sde", "ode"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        parsed,
        vec![
            SamplerKind::Ddpm(DdpmVariance::FixedSmall),
            SamplerKind::Ddim { eta: 0.0 },
            SamplerKind::ReverseSde,
            SamplerKind::OdeHeun,
        ]
    );
    assert!("heun".parse::<SamplerKind>().is_err());
}
