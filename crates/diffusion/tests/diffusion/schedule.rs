//! Tests of the noise schedules (the VP-SDE and the discrete schedules) against their mathematics
//! and published reference values.

use proptest::prelude::*;
use recompose_diffusion::{DiscreteSchedule, Error, Marginal, Posterior, Spacing, VpSde};

/// A few schedules: the default, a constant rate, a steep one and a mild one.
fn schedules() -> Vec<VpSde> {
    vec![
        VpSde::linear(),
        VpSde::new(1.0, 1.0).unwrap(),
        VpSde::new(0.05, 50.0).unwrap(),
        VpSde::new(0.5, 2.0)
            .unwrap()
            .with_time_range(0.01, 0.9)
            .unwrap(),
    ]
}

/// `n + 1` equally spaced points of \[a, b\].
fn linspace(a: f64, b: f64, n: usize) -> impl Iterator<Item = f64> {
    (0..=n).map(move |i| a + (b - a) * i as f64 / n as f64)
}

fn assert_config_err<T: std::fmt::Debug>(r: recompose_diffusion::Result<T>, what: &str) {
    match r {
        Err(Error::Config(msg)) => assert!(!msg.is_empty(), "{what}: empty message"),
        other => panic!("{what}: expected Err(Config), got {other:?}"),
    }
}

#[test]
fn defaults_are_song_et_al() {
    let sde = VpSde::default();
    assert_eq!(sde, VpSde::linear());
    assert_eq!(sde, VpSde::new(0.1, 20.0).unwrap());
    assert_eq!(sde.beta_min(), 0.1);
    assert_eq!(sde.beta_max(), 20.0);
    assert_eq!(sde.t_min(), 1e-3);
    assert_eq!(sde.t_max(), 1.0);
    let narrowed = sde.with_time_range(1e-5, 0.5).unwrap();
    assert_eq!((narrowed.t_min(), narrowed.t_max()), (1e-5, 0.5));
    assert_eq!(narrowed.beta_max(), 20.0);
}

#[test]
fn boundary_values_at_t_zero() {
    for sde in schedules() {
        assert_eq!(sde.alpha(0.0), 1.0);
        assert_eq!(sde.sigma(0.0), 0.0);
        assert_eq!(sde.integral_beta(0.0), 0.0);
        assert_eq!(sde.beta(0.0), sde.beta_min());
        assert!((sde.beta(1.0) - sde.beta_max()).abs() < 1e-12);
        assert_eq!(sde.log_snr(0.0), f64::INFINITY);
        assert_eq!(sde.t_from_log_snr(f64::INFINITY).unwrap(), 0.0);
        assert_eq!(sde.t_from_alpha(1.0).unwrap(), 0.0);
    }
}

#[test]
fn alpha_closed_form_at_one() {
    // α(1) = exp(−¼ (20 − 0.1) − ½ 0.1) = exp(−4.975 − 0.05) = exp(−5.025).
    let sde = VpSde::linear();
    let expected = (-5.025f64).exp();
    assert!(((sde.alpha(1.0) - expected) / expected).abs() < 1e-14);
    assert!((sde.log_alpha(1.0) + 5.025).abs() < 1e-14);
    assert!((sde.integral_beta(1.0) - 10.05).abs() < 1e-13);
    // And at a generic time, against the formula written out term by term.
    for t in linspace(0.0, 1.0, 37) {
        let closed = (-0.25 * t * t * (20.0 - 0.1) - 0.5 * t * 0.1).exp();
        assert!((sde.alpha(t) - closed).abs() < 1e-15, "t = {t}");
    }
}

#[test]
fn variance_is_preserved() {
    for sde in schedules() {
        for t in linspace(0.0, 1.0, 200) {
            let Marginal { alpha, sigma } = sde.marginal(t);
            assert_eq!(alpha, sde.alpha(t));
            assert_eq!(sigma, sde.sigma(t));
            assert!(
                (alpha * alpha + sigma * sigma - 1.0).abs() < 1e-14,
                "t = {t}"
            );
            assert!(alpha > 0.0 && alpha <= 1.0);
            assert!((0.0..1.0).contains(&sigma));
        }
    }
}

#[test]
fn sigma_is_accurate_for_small_t() {
    // σ² = 1 − e^{−S} ≈ S for tiny S; a naive 1 − α² would lose most digits here.
    let sde = VpSde::linear();
    for t in [1e-12, 1e-9, 1e-6] {
        let s = sde.integral_beta(t);
        let sigma_sq = sde.sigma(t).powi(2);
        let series = s - s * s / 2.0;
        assert!(((sigma_sq - series) / series).abs() < 1e-12, "t = {t}");
    }
}

#[test]
fn log_alpha_derivative_is_minus_half_beta() {
    let h = 1e-5;
    for sde in schedules() {
        for t in linspace(0.01, 0.99, 49) {
            let fd = (sde.log_alpha(t + h) - sde.log_alpha(t - h)) / (2.0 * h);
            let exact = -0.5 * sde.beta(t);
            assert!(
                (fd - exact).abs() < 1e-6 * exact.abs().max(1.0),
                "t = {t}: {fd} vs {exact}"
            );
            assert_eq!(sde.drift_coef(t), exact);
            assert_eq!(sde.diffusion_sq(t), sde.beta(t));
        }
    }
}

#[test]
fn log_snr_matches_its_definition() {
    for sde in schedules() {
        for t in linspace(0.01, 1.0, 99) {
            let direct = 2.0 * sde.log_alpha(t) - 2.0 * sde.sigma(t).ln();
            let lambda = sde.log_snr(t);
            assert!(
                (lambda - direct).abs() < 1e-10 * direct.abs().max(1.0),
                "t = {t}"
            );
        }
    }
}

#[test]
fn forward_variance_ode_reproduces_sigma_squared() {
    // Var(x_t) for x_0 = 0 solves dv/dt = 2 f v + g² = −β v + β with v(0) = 0; its solution must
    // be σ(t)². Integrate with classical RK4 on a fine grid and compare at checkpoints.
    for sde in schedules() {
        let rhs = |t: f64, v: f64| -sde.beta(t) * v + sde.diffusion_sq(t);
        let steps = 20_000;
        let h = 1.0 / steps as f64;
        let mut v = 0.0;
        for i in 0..steps {
            let t = i as f64 * h;
            let k1 = rhs(t, v);
            let k2 = rhs(t + h / 2.0, v + h / 2.0 * k1);
            let k3 = rhs(t + h / 2.0, v + h / 2.0 * k2);
            let k4 = rhs(t + h, v + h * k3);
            v += h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
            if (i + 1) % 1000 == 0 {
                let t_next = (i + 1) as f64 * h;
                let sigma_sq = sde.sigma(t_next).powi(2);
                assert!(
                    (v - sigma_sq).abs() < 1e-6,
                    "{sde:?} t = {t_next}: ODE {v} vs σ² {sigma_sq}"
                );
            }
        }
    }
}

#[test]
fn log_snr_round_trips_on_a_grid() {
    for sde in schedules() {
        for t in linspace(1e-3, 1.0, 500) {
            let back = sde.t_from_log_snr(sde.log_snr(t)).unwrap();
            assert!((back - t).abs() < 1e-9, "{sde:?}: t = {t}, back = {back}");
            let back = sde.t_from_alpha(sde.alpha(t)).unwrap();
            assert!(
                (back - t).abs() < 1e-9,
                "{sde:?}: t = {t}, back from α = {back}"
            );
        }
    }
}

#[test]
fn inverses_extend_past_the_time_range() {
    // The root is returned outside [t_min, t_max] too, on the linear extension of β.
    let sde = VpSde::linear();
    for t in [1e-6, 1e-4, 1.5, 3.0] {
        let back = sde.t_from_log_snr(sde.log_snr(t)).unwrap();
        assert!(
            (back - t).abs() < 1e-9 * t.max(1.0),
            "t = {t}, back = {back}"
        );
    }
    // Extreme but finite log-SNRs still give a finite, non-negative time.
    for lambda in [-1e6, -700.0, 700.0, 1e6] {
        let t = sde.t_from_log_snr(lambda).unwrap();
        assert!(t.is_finite() && t >= 0.0, "λ = {lambda}: t = {t}");
    }
}

#[test]
fn time_grid_is_linear_and_decreasing() {
    for sde in schedules() {
        for steps in [1, 2, 10, 1000] {
            let grid = sde.time_grid(steps).unwrap();
            assert_eq!(grid.len(), steps + 1);
            assert_eq!(grid[0], sde.t_max());
            assert_eq!(grid[steps], sde.t_min());
            assert!(grid.windows(2).all(|w| w[0] > w[1]));
            let dt = (sde.t_max() - sde.t_min()) / steps as f64;
            for w in grid.windows(2) {
                assert!((w[0] - w[1] - dt).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn log_snr_grid_is_uniform_in_log_snr() {
    for sde in schedules() {
        for steps in [1, 2, 10, 1000] {
            let grid = sde.time_grid_log_snr(steps).unwrap();
            assert_eq!(grid.len(), steps + 1);
            assert_eq!(grid[0], sde.t_max());
            assert_eq!(grid[steps], sde.t_min());
            assert!(grid.windows(2).all(|w| w[0] > w[1]));
            let dl = (sde.log_snr(sde.t_min()) - sde.log_snr(sde.t_max())) / steps as f64;
            for w in grid.windows(2) {
                let step = sde.log_snr(w[1]) - sde.log_snr(w[0]);
                assert!(
                    (step - dl).abs() < 1e-8 * dl.abs().max(1.0),
                    "{step} vs {dl}"
                );
            }
        }
    }
}

#[test]
fn invalid_configurations_are_errors() {
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    for (bmin, bmax) in [
        (0.0, 20.0),
        (-0.1, 20.0),
        (2.0, 1.0),
        (nan, 20.0),
        (0.1, nan),
        (0.1, inf),
        (-inf, 1.0),
    ] {
        assert_config_err(VpSde::new(bmin, bmax), &format!("new({bmin}, {bmax})"));
    }
    let sde = VpSde::linear();
    for (t0, t1) in [
        (0.0, 1.0),
        (-1e-3, 1.0),
        (0.5, 0.5),
        (0.6, 0.5),
        (1e-3, 1.5),
        (nan, 1.0),
        (1e-3, nan),
    ] {
        assert_config_err(
            sde.with_time_range(t0, t1),
            &format!("with_time_range({t0}, {t1})"),
        );
    }
    assert_config_err(sde.time_grid(0), "time_grid(0)");
    assert_config_err(sde.time_grid_log_snr(0), "time_grid_log_snr(0)");
    assert_config_err(sde.t_from_log_snr(nan), "t_from_log_snr(NaN)");
    assert_config_err(sde.t_from_log_snr(-inf), "t_from_log_snr(-inf)");
    for alpha in [0.0, -0.5, 1.5, nan, inf] {
        assert_config_err(sde.t_from_alpha(alpha), &format!("t_from_alpha({alpha})"));
    }
}

fn any_schedule() -> impl Strategy<Value = VpSde> {
    (0.01f64..5.0, 0.0f64..50.0).prop_map(|(bmin, extra)| VpSde::new(bmin, bmin + extra).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn log_snr_is_strictly_decreasing(
        sde in any_schedule(),
        t in 1e-3f64..1.0,
        dt in 1e-9f64..1.0,
    ) {
        let t2 = (t + dt).min(1.0);
        prop_assume!(t2 > t);
        prop_assert!(sde.log_snr(t) > sde.log_snr(t2), "λ({}) <= λ({})", t, t2);
        prop_assert!(sde.alpha(t) > sde.alpha(t2));
        prop_assert!(sde.sigma(t) < sde.sigma(t2));
    }

    #[test]
    fn log_snr_inverse_round_trips(sde in any_schedule(), t in 1e-3f64..=1.0) {
        let back = sde.t_from_log_snr(sde.log_snr(t)).unwrap();
        prop_assert!((back - t).abs() < 1e-9, "t = {}, back = {}", t, back);
    }
}

// ---------------------------------------------------------------------------------------------
// Discrete schedules
// ---------------------------------------------------------------------------------------------

/// The cosine schedule's continuous ᾱ(u) = cos²((u/T + s)/(1 + s) · π/2), written out directly.
fn cosine_alpha_bar(u: usize, t: usize, s: f64) -> f64 {
    let theta = (u as f64 / t as f64 + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2;
    theta.cos().powi(2)
}

fn rel_err(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

/// Checks every invariant of a schedule: 0 < β < 1 (a last β = 1 only with zero terminal SNR),
/// α = 1 − β, ᾱ strictly decreasing in (0, 1) (last may be 0), ᾱ the running product of α up to
/// rounding, log-SNR strictly decreasing, σ² + ᾱ = 1, and sane posterior coefficients.
fn assert_valid(s: &DiscreteSchedule, what: &str) {
    let t = s.len();
    assert!(t >= 1 && !s.is_empty(), "{what}");
    assert_eq!(s.betas().len(), t);
    assert_eq!(s.alphas().len(), t);
    assert_eq!(s.alphas_cumprod().len(), t);
    let zero_terminal = s.has_zero_terminal_snr();
    let mut product = 1.0;
    let mut tolerance = 0.0;
    for i in 0..t {
        let (beta, alpha, ab) = (s.beta(i), s.alpha(i), s.alpha_bar(i));
        if zero_terminal && i == t - 1 {
            assert_eq!(beta, 1.0, "{what}: last beta of a zero-terminal schedule");
            assert_eq!(ab, 0.0);
            assert_eq!(s.log_snr(i), f64::NEG_INFINITY);
            assert_eq!(s.sigma(i), 1.0);
        } else {
            assert!(beta > 0.0 && beta < 1.0, "{what}: beta {i} = {beta}");
            assert!(ab > 0.0 && ab < 1.0, "{what}: alpha_bar {i} = {ab}");
            assert!(s.log_snr(i).is_finite(), "{what}: log-SNR {i}");
        }
        assert_eq!(alpha, 1.0 - beta);
        assert_eq!(s.alphas_cumprod()[i], ab);
        product *= alpha;
        // Each factor 1 − β carries a relative rounding error of about ε/α (β is rounded to ε
        // absolute), so the tolerance grows with Σ ε/α_i; α = 0 makes both sides exactly 0.
        if alpha > 0.0 {
            tolerance += 4.0 * f64::EPSILON / alpha;
        }
        assert!(
            (product - ab).abs() <= tolerance * ab,
            "{what}: running product {product} vs alpha_bar {i} = {ab}"
        );
        assert!((s.sigma(i).powi(2) + ab - 1.0).abs() < 1e-15);
        assert!((s.sqrt_alpha_bar(i).powi(2) - ab).abs() < 1e-15);
        assert_eq!(
            s.alpha_bar_prev(i),
            if i == 0 { 1.0 } else { s.alpha_bar(i - 1) }
        );
        let p = s.posterior(i);
        assert!(
            p.variance >= 0.0 && p.variance <= beta,
            "{what}: posterior variance {i} = {} vs beta {beta}",
            p.variance
        );
        assert!(p.coef_x0 >= 0.0 && p.coef_xt >= 0.0 && p.coef_x0 <= 1.0 + 1e-12);
        if i > 0 {
            assert!(
                ab < s.alpha_bar(i - 1),
                "{what}: alpha_bar not decreasing at {i}"
            );
            assert!(
                s.log_snr(i) < s.log_snr(i - 1),
                "{what}: log-SNR not decreasing at {i}"
            );
        }
    }
}

/// The standard schedules: DDPM linear, Stable Diffusion scaled-linear, improved-DDPM cosine.
fn standard_schedules() -> Vec<(&'static str, DiscreteSchedule)> {
    vec![
        (
            "linear",
            DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap(),
        ),
        (
            "scaled_linear",
            DiscreteSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap(),
        ),
        (
            "cosine",
            DiscreteSchedule::cosine(1000, DiscreteSchedule::COSINE_S).unwrap(),
        ),
    ]
}

#[test]
fn cosine_matches_published_reference_values() {
    let s = DiscreteSchedule::cosine(1000, 0.008).unwrap();
    assert_eq!(
        s,
        DiscreteSchedule::cosine_with_max_beta(1000, 0.008, 0.999).unwrap()
    );
    assert_eq!(DiscreteSchedule::COSINE_S, 0.008);
    assert_eq!(DiscreteSchedule::COSINE_MAX_BETA, 0.999);
    assert_eq!(s.len(), 1000);
    // β₀ = 4.128e-5 (4 digits), ᾱ₄₉₉ = 0.493844 (6), ᾱ₉₈₀ = 8.7653e-4 (5), β₉₉₉ = 0.999.
    assert!(
        (s.beta(0) - 4.128e-5).abs() <= 0.0005e-5,
        "beta_0 = {}",
        s.beta(0)
    );
    assert!(
        (s.alpha_bar(499) - 0.493844).abs() <= 5e-7,
        "{}",
        s.alpha_bar(499)
    );
    assert!(
        (s.alpha_bar(980) - 8.7653e-4).abs() <= 5e-9,
        "{}",
        s.alpha_bar(980)
    );
    assert_eq!(s.beta(999), 0.999);
    assert_valid(&s, "cosine");
}

#[test]
fn cosine_betas_follow_the_continuous_alpha_bar() {
    // Not all zero (the integer-division bug of candle-transformers): every beta is the ratio of
    // the continuous ᾱ(u) at neighbouring steps, capped at 0.999, and before any cap ᾱ_i is
    // ᾱ(i + 1)/ᾱ(0).
    for (t, s_off) in [(1000, 0.008), (50, 0.008), (4000, 0.0), (200, 0.1)] {
        let s = DiscreteSchedule::cosine(t, s_off).unwrap();
        let mut capped = false;
        for i in 0..t {
            let direct = 1.0 - cosine_alpha_bar(i + 1, t, s_off) / cosine_alpha_bar(i, t, s_off);
            let expected = direct.min(0.999);
            capped |= direct >= 0.999;
            // The direct form loses ~1e-16 absolute to cancellation.
            assert!(
                (s.beta(i) - expected).abs() <= 1e-9 * expected + 1e-15,
                "T = {t}, s = {s_off}, i = {i}: {} vs {expected}",
                s.beta(i)
            );
            if !capped {
                let ab = cosine_alpha_bar(i + 1, t, s_off) / cosine_alpha_bar(0, t, s_off);
                assert!(rel_err(s.alpha_bar(i), ab) < 1e-11, "T = {t}, i = {i}");
            }
        }
        assert_eq!(s.beta(t - 1), 0.999, "T = {t}: the last beta is capped");
        assert_valid(&s, "cosine");
    }
}

#[test]
fn ddpm_linear_schedule() {
    let s = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    assert_eq!((s.beta(0), s.beta(999)), (1e-4, 0.02));
    for i in 0..1000 {
        let expected = 1e-4 + (0.02 - 1e-4) * i as f64 / 999.0;
        assert!((s.beta(i) - expected).abs() < 1e-17, "i = {i}");
    }
    let product: f64 = s.betas().iter().map(|b| 1.0 - b).product();
    assert!(rel_err(s.alpha_bar(999), product) < 1e-13);
    assert!(
        rel_err(s.alpha_bar(999), 4.0358e-5) < 1e-4,
        "{}",
        s.alpha_bar(999)
    );
    assert_valid(&s, "linear");
    // One step: just beta_start. Decreasing betas are allowed too.
    assert_eq!(
        DiscreteSchedule::linear(1, 0.3, 0.5).unwrap().betas(),
        &[0.3]
    );
    assert_valid(
        &DiscreteSchedule::linear(10, 0.2, 0.01).unwrap(),
        "decreasing",
    );
}

#[test]
fn scaled_linear_is_linear_in_sqrt_beta() {
    let s = DiscreteSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    assert!(rel_err(s.beta(0), 0.00085) < 1e-15);
    assert!(rel_err(s.beta(999), 0.012) < 1e-15);
    let (r0, r1) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    for i in 0..1000 {
        let r = r0 + (r1 - r0) * i as f64 / 999.0;
        assert!(rel_err(s.beta(i), r * r) < 1e-14, "i = {i}");
    }
    // Stable Diffusion's schedule leaves ᾱ ≈ 0.0047 (log-SNR ≈ −5.4) at the last step.
    assert!(
        (s.alpha_bar(999) - 0.0047).abs() < 1e-4,
        "{}",
        s.alpha_bar(999)
    );
    assert_valid(&s, "scaled_linear");
}

#[test]
fn from_betas_and_from_alphas_cumprod_agree() {
    for (name, s) in standard_schedules() {
        let again = DiscreteSchedule::from_betas(s.betas().to_vec()).unwrap();
        assert_eq!(again, s, "{name}");
        let from_ab = DiscreteSchedule::from_alphas_cumprod(s.alphas_cumprod().to_vec()).unwrap();
        assert_eq!(
            from_ab.alphas_cumprod(),
            s.alphas_cumprod(),
            "{name}: ᾱ kept exactly"
        );
        for i in 0..s.len() {
            assert!(
                rel_err(from_ab.beta(i), s.beta(i)) < 1e-9,
                "{name} i = {i}: {} vs {}",
                from_ab.beta(i),
                s.beta(i)
            );
        }
        assert_valid(&from_ab, name);
    }
    let s = DiscreteSchedule::from_alphas_cumprod(vec![0.9, 0.45, 0.0]).unwrap();
    assert_eq!(s.betas(), &[0.09999999999999998, 0.5, 1.0]);
    assert!(s.has_zero_terminal_snr());
    assert_valid(&s, "hand-written zero-terminal");
    let s = DiscreteSchedule::from_betas(vec![0.5, 0.5, 1.0]).unwrap();
    assert_eq!(s.alphas_cumprod(), &[0.5, 0.25, 0.0]);
    assert_valid(&s, "hand-written betas");
}

#[test]
fn log_snr_and_sigma_match_their_definitions() {
    for (name, s) in standard_schedules() {
        for i in 0..s.len() {
            let ab = s.alpha_bar(i);
            let direct = (ab / (1.0 - ab)).ln();
            assert!(
                (s.log_snr(i) - direct).abs() < 1e-12 * direct.abs().max(1.0),
                "{name} {i}"
            );
            assert_eq!(s.sigma(i), (1.0 - ab).sqrt());
            assert_eq!(s.sqrt_alpha_bar(i), ab.sqrt());
        }
    }
}

#[test]
fn posterior_matches_the_product_of_gaussians() {
    // q(x_{i−1} | x_i, x_0) ∝ N(x_{i−1}; √ᾱ_{i−1} x_0, 1 − ᾱ_{i−1}) · N(x_i; √α_i x_{i−1}, β_i):
    // precision 1/(1 − ᾱ_{i−1}) + α_i/β_i, mean = variance · (√ᾱ_{i−1}/(1 − ᾱ_{i−1}) x_0 +
    // √α_i/β_i x_i). An independent derivation of DDPM eq. 7.
    let mut schedules = standard_schedules();
    schedules.push((
        "cosine zero-terminal",
        DiscreteSchedule::cosine(1000, 0.008)
            .unwrap()
            .rescale_zero_terminal_snr()
            .unwrap(),
    ));
    for (name, s) in schedules {
        assert_eq!(
            s.posterior(0),
            Posterior {
                variance: 0.0,
                coef_x0: 1.0,
                coef_xt: 0.0
            }
        );
        for i in 1..s.len() {
            let (beta, alpha, prev) = (s.beta(i), s.alpha(i), s.alpha_bar(i - 1));
            let variance = 1.0 / (1.0 / (1.0 - prev) + alpha / beta);
            let coef_x0 = variance * prev.sqrt() / (1.0 - prev);
            let coef_xt = variance * alpha.sqrt() / beta;
            let p = s.posterior(i);
            assert!(rel_err(p.variance, variance) < 1e-10, "{name} {i}");
            assert!(rel_err(p.coef_x0, coef_x0) < 1e-10, "{name} {i}");
            if coef_xt == 0.0 {
                assert_eq!(p.coef_xt, 0.0, "{name} {i}");
            } else {
                assert!(rel_err(p.coef_xt, coef_xt) < 1e-10, "{name} {i}");
            }
            assert_eq!(p.variance, s.posterior_variance(i));
            assert_eq!(p.coef_x0, s.posterior_mean_coef_x0(i));
            assert_eq!(p.coef_xt, s.posterior_mean_coef_xt(i));
            // DDPM eq. 7, term by term.
            let one_minus = 1.0 - s.alpha_bar(i);
            assert!(rel_err(p.variance, beta * (1.0 - prev) / one_minus) < 1e-14);
        }
    }
}

#[test]
fn zero_terminal_snr_rescaling() {
    for (name, s) in standard_schedules() {
        let z = s.rescale_zero_terminal_snr().unwrap();
        assert_eq!(z.len(), s.len());
        assert!(
            !s.has_zero_terminal_snr() && z.has_zero_terminal_snr(),
            "{name}"
        );
        assert_eq!(z.alpha_bar(999), 0.0, "{name}");
        assert_eq!(z.beta(999), 1.0, "{name}");
        assert_eq!(z.log_snr(999), f64::NEG_INFINITY, "{name}");
        assert_eq!(z.alpha_bar(0), s.alpha_bar(0), "{name}: first ᾱ unchanged");
        assert_eq!(z.beta(0), s.beta(0), "{name}: first β unchanged");
        assert_valid(&z, name);
        // √ᾱ' is the affine image of √ᾱ of Algorithm 1.
        let (first, last) = (s.sqrt_alpha_bar(0), s.sqrt_alpha_bar(999));
        for i in 0..999 {
            let expected = (s.sqrt_alpha_bar(i) - last) * first / (first - last);
            assert!(rel_err(z.sqrt_alpha_bar(i), expected) < 1e-12, "{name} {i}");
        }
        // Rescaling again changes nothing but rounding.
        let zz = z.rescale_zero_terminal_snr().unwrap();
        assert_eq!(zz.alpha_bar(999), 0.0);
        for i in 0..999 {
            assert!(
                rel_err(zz.alpha_bar(i), z.alpha_bar(i)) < 1e-12,
                "{name} {i}"
            );
        }
    }
    // Lin et al. report the terminal √ᾱ of Stable Diffusion's schedule as 0.068265 before
    // rescaling.
    let sd = DiscreteSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    assert!(
        (sd.sqrt_alpha_bar(999) - 0.068265).abs() < 1e-6,
        "{}",
        sd.sqrt_alpha_bar(999)
    );
    assert_config_err(
        DiscreteSchedule::linear(1, 0.1, 0.2)
            .unwrap()
            .rescale_zero_terminal_snr(),
        "rescaling a one-step schedule",
    );
}

#[test]
fn timesteps_match_lin_et_al_table_2() {
    let s = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let leading: Vec<usize> = (0..10).rev().map(|i| 100 * i).collect();
    assert_eq!(s.timesteps(10, Spacing::Leading, 0).unwrap(), leading);
    let offset: Vec<usize> = leading.iter().map(|t| t + 1).collect();
    assert_eq!(s.timesteps(10, Spacing::Leading, 1).unwrap(), offset);
    assert_eq!(
        s.timesteps(10, Spacing::Linspace, 0).unwrap(),
        vec![999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    );
    assert_eq!(
        s.timesteps(10, Spacing::Trailing, 0).unwrap(),
        vec![999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    );
    // Decomp Diffusion's 50 DDIM steps: 980, 960, …, 0.
    let ddim50: Vec<usize> = (0..50).rev().map(|i| 20 * i).collect();
    assert_eq!(s.timesteps(50, Spacing::Leading, 0).unwrap(), ddim50);
    // The largest offset that fits, and every step.
    assert_eq!(s.timesteps(10, Spacing::Leading, 99).unwrap()[0], 999);
    let all: Vec<usize> = (0..1000).rev().collect();
    for spacing in [Spacing::Leading, Spacing::Linspace, Spacing::Trailing] {
        assert_eq!(s.timesteps(1000, spacing, 0).unwrap(), all, "{spacing:?}");
    }
    // One step.
    assert_eq!(s.timesteps(1, Spacing::Leading, 0).unwrap(), vec![0]);
    assert_eq!(s.timesteps(1, Spacing::Linspace, 0).unwrap(), vec![0]);
    assert_eq!(s.timesteps(1, Spacing::Trailing, 0).unwrap(), vec![999]);
    // Halves round to even, as NumPy: arange(10, 0, −2.5) = [10, 7.5, 5, 2.5] → [10, 8, 5, 2].
    let small = DiscreteSchedule::linear(10, 0.1, 0.2).unwrap();
    assert_eq!(
        small.timesteps(4, Spacing::Trailing, 0).unwrap(),
        vec![9, 7, 4, 1]
    );
    // linspace(0, 9, 4) = [0, 3, 6, 9]; leading uses ⌊10/4⌋ = 2.
    assert_eq!(
        small.timesteps(4, Spacing::Linspace, 0).unwrap(),
        vec![9, 6, 3, 0]
    );
    assert_eq!(
        small.timesteps(4, Spacing::Leading, 0).unwrap(),
        vec![6, 4, 2, 0]
    );
    // linspace(0, 9, 5) = [0, 2.25, 4.5, 6.75, 9] → [0, 2, 4, 7, 9].
    assert_eq!(
        small.timesteps(5, Spacing::Linspace, 0).unwrap(),
        vec![9, 7, 4, 2, 0]
    );
}

#[test]
fn respacing_to_every_step_is_the_identity() {
    let mut schedules = standard_schedules();
    schedules.push((
        "zero-terminal",
        DiscreteSchedule::cosine(1000, 0.008)
            .unwrap()
            .rescale_zero_terminal_snr()
            .unwrap(),
    ));
    schedules.push(("one step", DiscreteSchedule::linear(1, 0.3, 0.3).unwrap()));
    for (name, s) in schedules {
        let all: Vec<usize> = (0..s.len()).collect();
        let (same, map) = s.respace(&all).unwrap();
        assert_eq!(same, s, "{name}");
        assert_eq!(map, all);
        // The descending output of timesteps works as well.
        let desc = s.timesteps(s.len(), Spacing::Trailing, 0).unwrap();
        let (same, map) = s.respace(&desc).unwrap();
        assert_eq!(same, s, "{name}");
        assert_eq!(map, all);
    }
}

#[test]
fn respacing_keeps_alpha_bar_at_the_kept_steps() {
    for (name, s) in standard_schedules() {
        let kept: Vec<usize> = (0..100).map(|i| 10 * i).collect();
        let (sub, map) = s.respace(&kept).unwrap();
        assert_eq!(map, kept);
        assert_eq!(sub.len(), 100);
        assert_valid(&sub, name);
        let mut product = 1.0;
        for (j, &k) in kept.iter().enumerate() {
            assert_eq!(sub.alpha_bar(j), s.alpha_bar(k), "{name} {j}");
            product *= 1.0 - sub.beta(j);
            assert!(rel_err(product, s.alpha_bar(k)) < 1e-12, "{name} {j}");
        }
        assert_eq!(
            sub.beta(0),
            s.beta(0),
            "{name}: a kept first step keeps its β"
        );
        // Order does not matter; a first step other than 0 gets β' = 1 − ᾱ_k.
        let mut shuffled = s.timesteps(20, Spacing::Trailing, 0).unwrap();
        shuffled.swap(3, 11);
        let (sub, map) = s.respace(&shuffled).unwrap();
        assert!(map.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(map[0], 49);
        assert_eq!(map[19], 999);
        assert!(rel_err(sub.beta(0), 1.0 - s.alpha_bar(49)) < 1e-12);
        assert_valid(&sub, name);
    }
    // Respacing a zero-terminal schedule with trailing steps keeps the pure-noise last step.
    let z = DiscreteSchedule::cosine(1000, 0.008)
        .unwrap()
        .rescale_zero_terminal_snr()
        .unwrap();
    let (sub, map) = z
        .respace(&z.timesteps(25, Spacing::Trailing, 0).unwrap())
        .unwrap();
    assert_eq!(map[24], 999);
    assert!(sub.has_zero_terminal_snr());
    assert_eq!(sub.beta(24), 1.0);
    assert_valid(&sub, "respaced zero-terminal");
}

#[test]
fn invalid_discrete_schedules_are_errors() {
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    assert_config_err(DiscreteSchedule::linear(0, 1e-4, 0.02), "linear T = 0");
    assert_config_err(
        DiscreteSchedule::scaled_linear(0, 1e-4, 0.02),
        "scaled T = 0",
    );
    assert_config_err(DiscreteSchedule::cosine(0, 0.008), "cosine T = 0");
    for (a, b) in [
        (0.0, 0.02),
        (-1e-4, 0.02),
        (1e-4, 1.0),
        (1e-4, 1.5),
        (nan, 0.02),
        (1e-4, nan),
        (1e-4, inf),
    ] {
        assert_config_err(
            DiscreteSchedule::linear(100, a, b),
            &format!("linear({a}, {b})"),
        );
        assert_config_err(
            DiscreteSchedule::scaled_linear(100, a, b),
            &format!("scaled_linear({a}, {b})"),
        );
    }
    // β so small that 1 − β rounds to 1: ᾱ would not decrease.
    assert_config_err(DiscreteSchedule::linear(10, 1e-20, 1e-20), "tiny betas");
    for s in [-0.1, nan, inf] {
        assert_config_err(DiscreteSchedule::cosine(100, s), &format!("cosine s = {s}"));
    }
    for m in [0.0, 1.0, 1.5, -0.5, nan] {
        assert_config_err(
            DiscreteSchedule::cosine_with_max_beta(100, 0.008, m),
            &format!("cosine max_beta = {m}"),
        );
    }
    for betas in [
        vec![],
        vec![0.1, 0.0],
        vec![0.1, -0.1],
        vec![1.0],
        vec![0.5, 1.0, 0.5],
        vec![0.1, 1.5],
        vec![0.1, nan],
        vec![1e-20, 0.1],
    ] {
        assert_config_err(
            DiscreteSchedule::from_betas(betas.clone()),
            &format!("from_betas({betas:?})"),
        );
    }
    for ab in [
        vec![],
        vec![0.5, 0.6],
        vec![0.5, 0.5],
        vec![1.0, 0.5],
        vec![0.0],
        vec![0.5, 0.0, 0.0],
        vec![0.5, -0.1],
        vec![nan, 0.5],
        vec![0.5, nan],
        vec![1.5, 0.5],
    ] {
        assert_config_err(
            DiscreteSchedule::from_alphas_cumprod(ab.clone()),
            &format!("from_alphas_cumprod({ab:?})"),
        );
    }
    let s = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    for spacing in [Spacing::Leading, Spacing::Linspace, Spacing::Trailing] {
        assert_config_err(s.timesteps(0, spacing, 0), "zero steps");
        assert_config_err(s.timesteps(1001, spacing, 0), "more steps than T");
    }
    assert_config_err(
        s.timesteps(10, Spacing::Linspace, 1),
        "offset with linspace",
    );
    assert_config_err(
        s.timesteps(10, Spacing::Trailing, 1),
        "offset with trailing",
    );
    assert_config_err(s.timesteps(10, Spacing::Leading, 100), "offset past T − 1");
    assert_config_err(
        s.timesteps(1000, Spacing::Leading, 1),
        "offset with every step",
    );
    assert_config_err(s.respace(&[]), "respace to nothing");
    assert_config_err(s.respace(&[0, 10, 10]), "duplicate timestep");
    assert_config_err(s.respace(&[0, 1000]), "timestep past T − 1");
}

/// A schedule of one of the three families with T in 2..2000 and sensible parameters.
fn any_discrete_schedule() -> impl Strategy<Value = (String, DiscreteSchedule)> {
    let linear = (2usize..2000, 1e-5f64..1e-3, 1e-3f64..0.05).prop_map(|(t, a, b)| {
        (
            format!("linear({t}, {a}, {b})"),
            DiscreteSchedule::linear(t, a, b).unwrap(),
        )
    });
    let scaled = (2usize..2000, 1e-4f64..2e-3, 2e-3f64..0.03).prop_map(|(t, a, b)| {
        (
            format!("scaled_linear({t}, {a}, {b})"),
            DiscreteSchedule::scaled_linear(t, a, b).unwrap(),
        )
    });
    let cosine = (2usize..2000, 0.0f64..0.05).prop_map(|(t, s)| {
        (
            format!("cosine({t}, {s})"),
            DiscreteSchedule::cosine(t, s).unwrap(),
        )
    });
    prop_oneof![linear, scaled, cosine]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn discrete_schedules_are_monotone_with_betas_in_the_unit_interval(
        (name, s) in any_discrete_schedule(),
    ) {
        assert_valid(&s, &name);
        prop_assert!(!s.has_zero_terminal_snr());
        prop_assert!(s.betas().iter().all(|&b| b > 0.0 && b < 1.0), "{}", name);
        let z = s.rescale_zero_terminal_snr().unwrap();
        assert_valid(&z, &format!("rescaled {name}"));
        prop_assert_eq!(z.alpha_bar(0), s.alpha_bar(0));
        prop_assert_eq!(z.alpha_bar(s.len() - 1), 0.0);
    }

    #[test]
    fn timesteps_are_distinct_descending_and_in_range(
        t in 1usize..2000,
        frac in 0.0f64..=1.0,
        spacing in prop_oneof![
            Just(Spacing::Leading),
            Just(Spacing::Linspace),
            Just(Spacing::Trailing),
        ],
    ) {
        let steps = ((frac * t as f64) as usize).clamp(1, t);
        let s = DiscreteSchedule::linear(t, 1e-4, 0.02).unwrap();
        let ts = s.timesteps(steps, spacing, 0).unwrap();
        prop_assert_eq!(ts.len(), steps);
        prop_assert!(ts.windows(2).all(|w| w[0] > w[1]));
        prop_assert!(ts[0] < t);
        match spacing {
            Spacing::Leading => prop_assert_eq!(ts[steps - 1], 0),
            Spacing::Linspace => {
                prop_assert_eq!(ts[steps - 1], 0);
                if steps > 1 {
                    prop_assert_eq!(ts[0], t - 1);
                }
            }
            Spacing::Trailing => prop_assert_eq!(ts[0], t - 1),
        }
        let (sub, map) = s.respace(&ts).unwrap();
        prop_assert_eq!(sub.len(), steps);
        for (j, &k) in map.iter().enumerate() {
            prop_assert_eq!(sub.alpha_bar(j), s.alpha_bar(k));
        }
    }
}

/// A step count beyond the cap is a configuration error before anything is allocated (the fuzz
/// target `run-config` aborted on `num_timesteps = 1000000000000`, which asked for 8 TB).
#[test]
fn step_counts_beyond_the_cap_are_refused() {
    let huge = 1_000_000_000_000;
    for r in [
        DiscreteSchedule::linear(huge, 1e-4, 0.02),
        DiscreteSchedule::scaled_linear(huge, 1e-4, 0.02),
        DiscreteSchedule::cosine(huge, 0.008),
        DiscreteSchedule::cosine_with_max_beta(DiscreteSchedule::MAX_STEPS + 1, 0.008, 0.999),
    ] {
        let err = r.expect_err("too many steps");
        assert!(
            err.is_bad_input() && err.to_string().contains("at most"),
            "{err}"
        );
    }
    assert_eq!(
        DiscreteSchedule::linear(DiscreteSchedule::MAX_STEPS, 1e-6, 1e-3)
            .map(|s| s.len())
            .ok(),
        Some(DiscreteSchedule::MAX_STEPS)
    );
}
