//! Samplers and operators against exact targets: diffused Gaussians and Gaussian mixtures, whose
//! scores and log-densities are known in closed form.

use candle_core::{Device, Tensor};
use recompose_compose::{
    AnalyticLeaf, AnnealConfig, Component, Error, Kernel, Mixture, Product, ScoreLeaf, StepSize,
    anneal, build, mcmc_at_level, parse,
};
use recompose_diffusion::{DiscreteSchedule, GaussianMixture, GaussianMixtureDenoiser, seeded};

mod prompt;

type Res = anyhow::Result<()>;

fn schedule() -> DiscreteSchedule {
    DiscreteSchedule::cosine(100, 0.008).expect("schedule")
}

fn analytic(name: &str, m: GaussianMixture) -> Box<dyn Component> {
    Box::new(AnalyticLeaf::new(name, m, schedule()))
}

fn score_only(name: &str, m: GaussianMixture) -> Box<dyn Component> {
    let s = schedule();
    let d = m.dim();
    let den = GaussianMixtureDenoiser::new(m, s.clone());
    Box::new(ScoreLeaf::new(name, den, s, &[d], &Device::Cpu).expect("leaf"))
}

/// Host points `[n, d]` as a tensor on the CPU.
fn points(x: &[f32], d: usize) -> Tensor {
    Tensor::from_slice(x, (x.len() / d, d), &Device::Cpu).expect("points")
}

/// Mean and covariance (row-major d×d) of `[n, d]` samples.
fn moments(x: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / d;
    let mut mean = vec![0.0; d];
    for row in x.chunks(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += f64::from(*v) / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for row in x.chunks(d) {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] +=
                    (f64::from(row[i]) - mean[i]) * (f64::from(row[j]) - mean[j]) / n as f64;
            }
        }
    }
    (mean, cov)
}

/// The paper's 2-D settings with fewer steps and step sizes scaled to targets of standard
/// deviation ~0.3 (the paper's are tuned to modes of standard deviation 0.03).
fn quick(kernel: Option<Kernel>) -> AnnealConfig {
    match kernel {
        None => AnnealConfig::reverse(),
        Some(k) => AnnealConfig {
            mcmc_steps: 5,
            step_size: StepSize::Constant(if k.is_hamiltonian() { 0.1 } else { 0.01 }),
            ..AnnealConfig::paper_2d(k)
        },
    }
}

/// A 2-D two-component mixture with unequal weights and anisotropic overall covariance.
fn two_modes() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.3, 0.7],
        vec![vec![-0.6, 0.2], vec![0.5, -0.1]],
        vec![0.04, 0.09],
    )
    .expect("mixture")
}

#[test]
fn every_sampler_recovers_the_mean_and_covariance_of_a_mixture() -> Res {
    let target = two_modes();
    let (want_mean, want_cov) = (target.mean(), target.covariance());
    let model = analytic("gmm", target);
    for kernel in [
        None,
        Some(Kernel::Ula),
        Some(Kernel::UHmc),
        Some(Kernel::Mala),
        Some(Kernel::Hmc),
    ] {
        for reverse_steps in [true, false] {
            if kernel.is_none() && !reverse_steps {
                continue;
            }
            let cfg = AnnealConfig {
                reverse_steps,
                ..quick(kernel)
            };
            let out = anneal(model.as_ref(), &cfg, 4000, &mut seeded(1))?;
            let (mean, cov) = moments(&out.samples_vec()?, 2);
            for i in 0..2 {
                assert!(
                    (mean[i] - want_mean[i]).abs() < 0.03,
                    "{kernel:?} rev={reverse_steps}: mean {mean:?} vs {want_mean:?}"
                );
            }
            for i in 0..4 {
                assert!(
                    (cov[i] - want_cov[i]).abs() < 0.1 * want_cov[0].max(want_cov[3]),
                    "{kernel:?} rev={reverse_steps}: cov {cov:?} vs {want_cov:?}"
                );
            }
            if let Some(k) = kernel.filter(|k| k.is_metropolis()) {
                let acc = out.mean_acceptance().expect("acceptance");
                assert!((0.3..=1.0).contains(&acc), "{k:?}: acceptance {acc}");
                assert!(out.levels.iter().all(|l| l.acceptance.is_some()));
            } else {
                assert!(out.mean_acceptance().is_none());
            }
            assert_eq!(out.levels.len(), 100);
        }
    }
    Ok(())
}

/// Exact CDF of a 1-D Gaussian mixture.
fn mixture_cdf(m: &GaussianMixture, x: f64) -> f64 {
    m.weights()
        .iter()
        .zip(m.means())
        .zip(m.variances())
        .map(|((w, mu), v)| w * normal_cdf((x - mu[0]) / v.sqrt()))
        .sum()
}

fn normal_cdf(z: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 on erf, |error| < 1.5e-7.
    let t = 1.0 / (1.0 + 0.3275911 * z.abs() / std::f64::consts::SQRT_2);
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let erf = 1.0 - poly * (-(z * z) / 2.0).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// Pearson's χ² of samples against the exact mixture over `bins` equal-probability-ish bins on
/// [lo, hi] (plus the two tails).
fn chi_square(samples: &[f32], m: &GaussianMixture, lo: f64, hi: f64, bins: usize) -> f64 {
    let n = samples.len() as f64;
    let edges: Vec<f64> = (0..=bins)
        .map(|i| lo + (hi - lo) * i as f64 / bins as f64)
        .collect();
    let mut counts = vec![0usize; bins + 2];
    for &s in samples {
        let s = f64::from(s);
        let k = if s < lo {
            0
        } else if s >= hi {
            bins + 1
        } else {
            1 + (((s - lo) / (hi - lo)) * bins as f64) as usize
        };
        counts[k.min(bins + 1)] += 1;
    }
    let mut probs = vec![mixture_cdf(m, lo)];
    for w in edges.windows(2) {
        probs.push(mixture_cdf(m, w[1]) - mixture_cdf(m, w[0]));
    }
    probs.push(1.0 - mixture_cdf(m, hi));
    counts
        .iter()
        .zip(&probs)
        .filter(|(_, p)| **p * n > 5.0)
        .map(|(&c, &p)| (c as f64 - n * p).powi(2) / (n * p))
        .sum()
}

/// MALA and HMC keep the target invariant (detailed balance): chains started in the exact 1-D
/// target stay distributed as it even with a step size large enough to bias ULA, whose χ²
/// statistic is far larger. The check is at level 0, where the target is the mixture diffused
/// to σ_0 (computed exactly).
#[test]
fn mala_and_hmc_leave_a_1d_target_invariant() -> Res {
    let clean = GaussianMixture::new(vec![0.4, 0.6], vec![vec![-1.0], vec![1.0]], vec![0.1, 0.2])?;
    let s = schedule();
    let (a, sig) = (s.sqrt_alpha_bar(0), s.sigma(0));
    // The level-0 marginal as a mixture of its own.
    let level0 = GaussianMixture::new(
        clean.weights().to_vec(),
        clean.means().iter().map(|m| vec![a * m[0]]).collect(),
        clean
            .variances()
            .iter()
            .map(|v| a * a * v + sig * sig)
            .collect(),
    )?;
    let model = analytic("bimodal", clean);
    let n = 20_000;
    let start: Vec<f32> = level0
        .sample(&mut seeded(5), n)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let chi_start = chi_square(&start, &level0, -2.0, 2.5, 30);
    let run = |kernel: Kernel, step: f64| -> anyhow::Result<(f64, Option<f64>)> {
        let cfg = AnnealConfig {
            step_size: StepSize::Constant(step),
            ..AnnealConfig::paper_2d(kernel)
        };
        let x0 = points(&start, 1);
        let (x, acc) = mcmc_at_level(model.as_ref(), &cfg, 0, x0, 30, &mut seeded(6))?;
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        Ok((chi_square(&x, &level0, -2.0, 2.5, 30), acc))
    };
    let (chi_mala, acc_mala) = run(Kernel::Mala, 0.08)?;
    let (chi_hmc, acc_hmc) = run(Kernel::Hmc, 0.35)?;
    let (chi_ula, _) = run(Kernel::Ula, 0.08)?;
    // 31 degrees of freedom: the 99.9% quantile is 61.1.
    assert!(chi_start < 61.0, "exact samples: χ² = {chi_start}");
    assert!(chi_mala < 61.0, "MALA: χ² = {chi_mala}");
    assert!(chi_hmc < 61.0, "HMC: χ² = {chi_hmc}");
    assert!(
        chi_ula > 4.0 * 61.0,
        "ULA should be visibly biased: χ² = {chi_ula}"
    );
    let (acc_mala, acc_hmc) = (acc_mala.expect("rate"), acc_hmc.expect("rate"));
    assert!(
        (0.4..0.95).contains(&acc_mala),
        "MALA acceptance {acc_mala}"
    );
    assert!((0.4..0.98).contains(&acc_hmc), "HMC acceptance {acc_hmc}");
    Ok(())
}

/// N(μ₁, v₁ I) · N(μ₂, v₂ I) ∝ N((μ₁/v₁ + μ₂/v₂) v, v I) with 1/v = 1/v₁ + 1/v₂. Annealed MCMC
/// lands on it; reverse diffusion with summed scores does not (its variance is off).
#[test]
fn product_of_two_gaussians_lands_on_the_analytic_product() -> Res {
    let (m1, v1, m2, v2) = ([1.0, 0.5], 0.3, [-0.5, 0.0], 0.1);
    let v = 1.0 / (1.0 / v1 + 1.0 / v2);
    let want: Vec<f64> = (0..2).map(|i| (m1[i] / v1 + m2[i] / v2) * v).collect();
    let product = || -> anyhow::Result<Product> {
        Ok(Product::new(vec![
            (
                1.0,
                analytic("a", GaussianMixture::gaussian(m1.to_vec(), v1)?),
            ),
            (
                1.0,
                analytic("b", GaussianMixture::gaussian(m2.to_vec(), v2)?),
            ),
        ])?)
    };
    let p = product()?;
    for kernel in [Kernel::Ula, Kernel::UHmc, Kernel::Mala, Kernel::Hmc] {
        let out = anneal(&p, &quick(Some(kernel)), 4000, &mut seeded(2))?;
        let (mean, cov) = moments(&out.samples_vec()?, 2);
        for i in 0..2 {
            assert!(
                (mean[i] - want[i]).abs() < 0.02,
                "{kernel:?}: {mean:?} vs {want:?}"
            );
            assert!(
                (cov[i * 3] - v).abs() < 0.12 * v,
                "{kernel:?}: var {cov:?} vs {v}"
            );
        }
        assert!(cov[1].abs() < 0.1 * v);
    }
    let rev = anneal(&p, &AnnealConfig::reverse(), 4000, &mut seeded(2))?;
    let (_, cov) = moments(&rev.samples_vec()?, 2);
    assert!(
        (cov[0] - v).abs() > 0.2 * v,
        "reverse diffusion alone should miss the product's variance: {} vs {v}",
        cov[0]
    );
    Ok(())
}

/// A mixture of normalized components is exact at every level, so even reverse diffusion
/// samples it: each mode gets its weight.
#[test]
fn mixture_gets_the_weights_right() -> Res {
    let left = GaussianMixture::gaussian(vec![-1.0, 0.0], 0.02)?;
    let right = GaussianMixture::gaussian(vec![1.0, 0.0], 0.02)?;
    let m = Mixture::new(vec![
        (0.3, analytic("l", left)),
        (0.7, analytic("r", right)),
    ])?;
    for cfg in [AnnealConfig::reverse(), quick(Some(Kernel::Hmc))] {
        let out = anneal(&m, &cfg, 4000, &mut seeded(3))?;
        let samples = out.samples_vec()?;
        let frac = samples.chunks(2).filter(|p| p[0] < 0.0).count() as f64 / 4000.0;
        assert!((frac - 0.3).abs() < 0.03, "{frac}");
    }
    Ok(())
}

#[test]
fn same_seed_same_samples() -> Res {
    let model = analytic("gmm", two_modes());
    for k in [Kernel::Mala, Kernel::Hmc] {
        let a = anneal(model.as_ref(), &quick(Some(k)), 100, &mut seeded(9))?;
        let b = anneal(model.as_ref(), &quick(Some(k)), 100, &mut seeded(9))?;
        let c = anneal(model.as_ref(), &quick(Some(k)), 100, &mut seeded(10))?;
        assert_eq!(a.samples_vec()?, b.samples_vec()?);
        assert_eq!(a.levels, b.levels);
        assert_ne!(a.samples_vec()?, c.samples_vec()?);
    }
    Ok(())
}

#[test]
fn adaptive_step_size_reaches_the_target_acceptance() -> Res {
    let model = analytic("gmm", two_modes());
    let cfg = AnnealConfig {
        step_size: StepSize::Adaptive {
            initial: 1.0,
            target: 0.6,
        },
        ..quick(Some(Kernel::Mala))
    };
    let out = anneal(model.as_ref(), &cfg, 1000, &mut seeded(4))?;
    let late: Vec<f64> = out.levels[50..]
        .iter()
        .filter_map(|l| l.acceptance)
        .collect();
    let mean = late.iter().sum::<f64>() / late.len() as f64;
    assert!((mean - 0.6).abs() < 0.1, "acceptance {mean}");
    Ok(())
}

#[test]
fn impossible_requests_are_clear_errors() -> Res {
    let score = || score_only("ring", two_modes());
    // Metropolis kernels and mixtures need log-densities.
    let p = Product::new(vec![(1.0, score()), (1.0, analytic("b", two_modes()))])?;
    for k in [Kernel::Mala, Kernel::Hmc] {
        let err = anneal(&p, &quick(Some(k)), 10, &mut seeded(0)).unwrap_err();
        assert!(matches!(err, Error::NeedsDensity(_)), "{err}");
    }
    let err = Mixture::new(vec![(1.0, score()), (1.0, analytic("b", two_modes()))]).unwrap_err();
    assert!(err.to_string().contains("`ring`"), "{err}");
    assert!(anneal(&p, &quick(Some(Kernel::Ula)), 10, &mut seeded(0)).is_ok());
    // Bad settings.
    let m = analytic("gmm", two_modes());
    let bad = [
        AnnealConfig {
            step_size: StepSize::Constant(-1.0),
            ..quick(Some(Kernel::Ula))
        },
        AnnealConfig {
            refresh: 1.0,
            ..quick(Some(Kernel::Hmc))
        },
        AnnealConfig {
            mcmc_steps: 0,
            ..quick(Some(Kernel::Ula))
        },
        AnnealConfig {
            step_size: StepSize::Adaptive {
                initial: 0.1,
                target: 0.5,
            },
            ..quick(Some(Kernel::Ula))
        },
        AnnealConfig {
            reverse_steps: false,
            ..AnnealConfig::reverse()
        },
        AnnealConfig {
            mcmc_fraction: 0.0,
            ..quick(Some(Kernel::Ula))
        },
    ];
    for cfg in bad {
        let err = anneal(m.as_ref(), &cfg, 10, &mut seeded(0)).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{cfg:?}: {err}");
    }
    assert!(matches!(
        anneal(m.as_ref(), &quick(None), 0, &mut seeded(0)),
        Err(Error::Config(_))
    ));
    // Chains that could never fit: refused before anything is drawn, not an abort.
    for num in [1usize << 40, usize::MAX] {
        let err = anneal(m.as_ref(), &quick(None), num, &mut seeded(0)).unwrap_err();
        assert!(matches!(err, Error::Memory(_)), "{num}: {err}");
        assert!(err.is_bad_input(), "{err}");
    }
    // A step size far too large diverges: an error naming the level, never NaN samples.
    let wild = AnnealConfig {
        step_size: StepSize::Constant(50.0),
        ..quick(Some(Kernel::Ula))
    };
    let err = anneal(m.as_ref(), &wild, 10, &mut seeded(0)).unwrap_err();
    assert!(matches!(err, Error::Diverged(_)), "{err}");
    assert!(err.to_string().contains("level"), "{err}");
    // Points of the wrong size.
    assert!(matches!(
        m.evaluate(&points(&[0.0; 3], 3), 0, false),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        m.evaluate(
            &points(&[0.0; 4], 2).to_dtype(candle_core::DType::F64)?,
            0,
            false
        ),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        m.evaluate(&points(&[0.0; 2], 2), 100, false),
        Err(Error::Config(_))
    ));
    Ok(())
}

#[test]
fn expressions_build_the_operators() -> Res {
    let mut names = Vec::new();
    let mut resolve = |name: &str| -> recompose_compose::Result<Box<dyn Component>> {
        names.push(name.to_string());
        match name {
            "a" => Ok(analytic(
                "a",
                GaussianMixture::gaussian(vec![1.0, 0.0], 0.1)?,
            )),
            "b" => Ok(analytic(
                "b",
                GaussianMixture::gaussian(vec![-1.0, 0.0], 0.1)?,
            )),
            "c" => Ok(analytic(
                "c",
                GaussianMixture::gaussian(vec![0.0, 1.0], 0.1)?,
            )),
            other => Err(Error::Config(format!("no model named `{other}`"))),
        }
    };
    let x = points(&[0.3f32, -0.2, 1.1, 0.4], 2);
    let host = |c: &dyn Component| -> anyhow::Result<(Vec<f32>, Option<Vec<f64>>)> {
        let e = c.evaluate(&x, 3, true)?;
        Ok((e.score_vec()?, e.log_density_vec()?))
    };
    let tree = build(&parse("1.3*a NOT 0.3*b")?, &mut resolve)?;
    let direct = Product::new(vec![
        (
            1.3,
            analytic("a", GaussianMixture::gaussian(vec![1.0, 0.0], 0.1)?),
        ),
        (
            -0.3,
            analytic("b", GaussianMixture::gaussian(vec![-1.0, 0.0], 0.1)?),
        ),
    ])?;
    assert_eq!(host(tree.as_ref())?, host(&direct)?);
    // Default negation weights are the paper's.
    let tree = build(&parse("a NOT b")?, &mut resolve)?;
    assert_eq!(host(tree.as_ref())?, host(&direct)?);
    let tree = build(&parse("a AND (b OR c)")?, &mut resolve)?;
    assert!(tree.has_density());
    let Err(err) = build(&parse("a AND nope")?, &mut resolve) else {
        panic!("an unknown model name must be an error");
    };
    assert!(err.to_string().contains("`nope`"));
    assert_eq!(names, ["a", "b", "a", "b", "a", "b", "c", "a", "nope"]);
    Ok(())
}

/// Every level evaluates its own target: with pure annealed MCMC a Metropolis kernel evaluates
/// the current state afresh at each level (1 + K evaluations per level), and the final denoising
/// step reuses level 0's.
#[test]
fn pure_mcmc_evaluates_each_level_afresh() -> Res {
    let model = analytic("gmm", two_modes());
    let cfg = AnnealConfig {
        reverse_steps: false,
        ..quick(Some(Kernel::Mala))
    };
    let out = anneal(model.as_ref(), &cfg, 10, &mut seeded(0))?;
    assert_eq!(out.evaluations, 100 * (1 + cfg.mcmc_steps));
    assert_eq!(out.chain_steps, 100 * cfg.mcmc_steps * 10);
    Ok(())
}

/// Clipping x̂₀ in the reverse steps: with data at ±1.5 and the bound 1 every sample ends in
/// \[−1, 1\] (the last step lands on the clipped estimate), while unclipped sampling reaches
/// the modes; a bound far beyond the data changes nothing; a non-positive bound is refused.
#[test]
fn clipping_the_clean_estimate_bounds_the_samples() -> Res {
    let data = GaussianMixture::new(
        vec![0.5, 0.5],
        vec![vec![-1.5], vec![1.5]],
        vec![0.01, 0.01],
    )?;
    let model = analytic("pm", data);
    let free = anneal(
        model.as_ref(),
        &AnnealConfig::reverse(),
        500,
        &mut seeded(1),
    )?
    .samples_vec()?;
    let far = anneal(
        model.as_ref(),
        &AnnealConfig {
            clip_x0: Some(1e3),
            ..AnnealConfig::reverse()
        },
        500,
        &mut seeded(1),
    )?
    .samples_vec()?;
    let worst = free
        .iter()
        .zip(&far)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "a far bound moved a sample by {worst}");
    let beyond = free.iter().filter(|v| v.abs() > 1.3).count();
    assert!(
        beyond > 450,
        "{beyond} of 500 unclipped samples near the modes"
    );
    for kernel in [None, Some(Kernel::Ula)] {
        let cfg = AnnealConfig {
            clip_x0: Some(1.0),
            ..quick(kernel)
        };
        let clipped = anneal(model.as_ref(), &cfg, 500, &mut seeded(1))?.samples_vec()?;
        let max = clipped.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max <= 1.0 + 1e-5, "a clipped sample at {max}");
        assert!(clipped.iter().filter(|v| v.abs() > 0.9).count() > 450);
    }
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let cfg = AnnealConfig {
            clip_x0: Some(bad),
            ..AnnealConfig::reverse()
        };
        let err = anneal(model.as_ref(), &cfg, 4, &mut seeded(0)).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
    Ok(())
}

/// An energy U-Net read from its run directory is an energy leaf: a log-density −E/σ_t whose
/// central differences along random directions equal the score's projection, so MALA and HMC
/// accept it.
#[test]
fn energy_unet_leaf_has_a_log_density_whose_gradient_is_the_score() -> Res {
    use recompose_compose::EnergyLeaf;
    use recompose_diffusion::nn::{EnergyForm, EnergyUNet, ParamStore, UNetConfig};
    // The tiny U-Net of the prompt tests, unconditional.
    let cfg = UNetConfig {
        cond_dim: 0,
        ..prompt::tiny_unet()
    };
    let store = ParamStore::new(3);
    let net = EnergyUNet::new(
        &cfg,
        EnergyForm::SquaredResidual,
        store.var_builder(candle_core::DType::F32, &Device::Cpu),
    )?;
    // Away from the zero-initialized output layer.
    prompt::perturb(&store, 4)?;
    let mut rng = seeded(5);
    let leaf = EnergyLeaf::unet("img", net, schedule(), &Device::Cpu);
    assert!(leaf.has_density());
    assert_eq!(leaf.dim(), 3 * 8 * 8);
    let d = leaf.dim();
    let x0 = recompose_core::random::normal_vec(&mut rng, 2 * d);
    let x = points(&x0, d);
    for level in [5, 60] {
        let e = leaf.evaluate(&x, level, true)?;
        let score = e.score_vec()?;
        let v = recompose_core::random::normal_vec(&mut rng, 2 * d);
        let h = 1e-2f32;
        let shifted = |sign: f32| -> anyhow::Result<Vec<f64>> {
            let xs: Vec<f32> = x0.iter().zip(&v).map(|(a, b)| a + sign * h * b).collect();
            Ok(leaf
                .evaluate(&points(&xs, d), level, true)?
                .log_density_vec()?
                .expect("density"))
        };
        let (plus, minus) = (shifted(1.0)?, shifted(-1.0)?);
        for i in 0..2 {
            let fd = (plus[i] - minus[i]) / (2.0 * f64::from(h));
            let exact: f64 = score[i * d..(i + 1) * d]
                .iter()
                .zip(&v[i * d..(i + 1) * d])
                .map(|(s, w)| f64::from(*s) * f64::from(*w))
                .sum();
            assert!(
                (fd - exact).abs() <= 1e-2 * exact.abs().max(1.0),
                "level {level}, point {i}: {fd} vs {exact}"
            );
        }
    }
    AnnealConfig::paper_image(Kernel::Mala).validate(leaf.has_density())?;
    Ok(())
}
