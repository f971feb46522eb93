//! Tests of the VP-SDE schedule against its mathematics.

use proptest::prelude::*;
use recompose_diffusion::{Error, Marginal, VpSde};

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
