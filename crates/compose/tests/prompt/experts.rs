//! Level experts against mathematics: a base and an expert fake whose prompted models are
//! different exact Gaussians, so the score of every level says which network served it.

use super::*;
use recompose_compose::LevelExperts;
use recompose_compose::experts::parse_expert;

/// A fake whose words' vectors are `scale` times the base's.
fn scaled(energy: bool, param: Parameterization, scale: f64) -> Arc<FakeText> {
    Arc::new(FakeText {
        scale,
        ..FakeText::new(energy, param)
    })
}

/// Below τ a guided prompt is the base's analytic guided score, from τ on the expert's, and
/// the log-densities follow the same network (energy models); every parameterization.
#[test]
fn each_level_is_served_by_its_band() -> Res {
    let s = schedule();
    let tau = 60;
    let gamma = 2.0;
    for param in [
        Parameterization::Epsilon,
        Parameterization::X0,
        Parameterization::V,
    ] {
        for energy in [false, true] {
            let base = scaled(energy, param, 1.0);
            let expert = scaled(energy, param, 3.0);
            let experts = LevelExperts::new(base.clone(), vec![(tau, expert.clone())])?;
            assert_eq!(experts.thresholds(), [tau]);
            let model =
                PromptModel::new("m", Arc::new(experts), tokenizer(), s.clone(), &Device::Cpu)?;
            let g = GuidedPrompts::new(&model, &[(gamma, "a b")])?;
            let x = [0.3f32, -0.2, 1.5, 0.8];
            for level in [0, tau - 1, tau, 99] {
                let got = g.evaluate(&points(&x, 2), level, energy)?;
                let scale = if level >= tau { 3.0 } else { 1.0 };
                let mean: Vec<f64> = mean_of(&["a", "b"]).iter().map(|m| m * scale).collect();
                let score = got.score_vec()?;
                let density = got.log_density_vec()?;
                for (i, row) in x.chunks(2).enumerate() {
                    let xr: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
                    let (sc, _) = diffused(&s, level, &mean, V_COND, &xr);
                    let (su, _) = diffused(&s, level, &[0.0, 0.0], V_UNCOND, &xr);
                    for j in 0..2 {
                        let want = su[j] + gamma * (sc[j] - su[j]);
                        let got = f64::from(score[2 * i + j]);
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{param:?} energy={energy} level {level}: {got} vs {want}"
                        );
                    }
                }
                // Log-densities are known up to a constant per level: compare the difference
                // between the two points.
                if let Some(f) = density {
                    let want: Vec<f64> = x
                        .chunks(2)
                        .map(|row| {
                            let xr: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
                            let (_, fc) = diffused(&s, level, &mean, V_COND, &xr);
                            let (_, fu) = diffused(&s, level, &[0.0, 0.0], V_UNCOND, &xr);
                            fu + gamma * (fc - fu)
                        })
                        .collect();
                    let (dg, dw) = (f[0] - f[1], want[0] - want[1]);
                    assert!(
                        (dg - dw).abs() <= 1e-4 * (1.0 + dw.abs()),
                        "{param:?} level {level}: Δf {dg} vs {dw}"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Points at levels of several bands in one call: every row is what its band's network gives
/// alone, in the caller's order, energies included; each network runs once.
#[test]
fn mixed_levels_are_split_and_put_back_in_order() -> Res {
    let nets: Vec<Arc<FakeText>> = [1.0, 2.0, -1.5]
        .iter()
        .map(|&k| scaled(true, Parameterization::V, k))
        .collect();
    let experts = LevelExperts::new(
        nets[0].clone(),
        // Given out of order: sorted by threshold.
        vec![(70, nets[2].clone()), (30, nets[1].clone())],
    )?;
    assert_eq!(experts.thresholds(), [30, 70]);
    assert_eq!(
        (experts.band(29.0), experts.band(30.0), experts.band(99.0)),
        (0, 1, 2)
    );
    let levels = [80.0f32, 5.0, 40.0, 75.0, 29.0, 30.0];
    let bands = [2, 0, 1, 2, 0, 1];
    let n = levels.len();
    let x = normal_tensor(&mut seeded(3), &[n, 2], DType::F32, &Device::Cpu)?;
    let t = Tensor::new(&levels[..], &Device::Cpu)?;
    let tok = tokenizer();
    let ids = tok
        .encode_strict(&["a", "b c", ""])?
        .ids_tensor(&Device::Cpu)?;
    let calls_before: Vec<usize> = nets
        .iter()
        .map(|f| f.calls.load(Ordering::SeqCst))
        .collect();
    let got = experts.predict(&x, &t, &ids, true)?;
    for (k, f) in nets.iter().enumerate() {
        assert_eq!(
            f.calls.load(Ordering::SeqCst) - calls_before[k],
            1,
            "network {k}"
        );
    }
    let (out, energy) = (
        got.output.to_vec2::<f32>()?,
        got.energy.expect("asked").to_vec1::<f64>()?,
    );
    assert_eq!((out.len(), energy.len()), (n * 3, n * 3));
    for i in 0..n {
        let one = Tensor::new(&levels[i..=i], &Device::Cpu)?;
        let alone = nets[bands[i]].predict(&x.narrow(0, i, 1)?, &one, &ids, true)?;
        let (a_out, a_e) = (
            alone.output.to_vec2::<f32>()?,
            alone.energy.expect("asked").to_vec1::<f64>()?,
        );
        for k in 0..3 {
            assert_eq!(out[3 * i + k], a_out[k], "point {i} prompt {k}");
            assert_eq!(energy[3 * i + k], a_e[k], "point {i} prompt {k}");
        }
    }
    // All points in one band: that network alone, once.
    let t = Tensor::new(&[50.0f32; 6][..], &Device::Cpu)?;
    let before = nets[1].calls.load(Ordering::SeqCst);
    experts.predict(&x, &t, &ids, false)?;
    assert_eq!(nets[1].calls.load(Ordering::SeqCst), before + 1);
    Ok(())
}

/// `DIR@T` splits at the last `@`; a missing or non-positive timestep or an empty directory
/// is a configuration error quoting the text.
#[test]
fn expert_specs_parse_at_the_last_at_sign() {
    assert_eq!(
        parse_expert("runs/a@b@850").unwrap(),
        (850, std::path::PathBuf::from("runs/a@b"))
    );
    assert_eq!(
        parse_expert("mid@500").unwrap(),
        (500, std::path::PathBuf::from("mid"))
    );
    for bad in ["mid", "@500", "mid@0", "mid@-3", "mid@x", "mid@"] {
        let err = parse_expert(bad).expect_err(bad);
        assert!(
            matches!(err, Error::Config(_)) && err.is_bad_input(),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
    }
}

/// Networks that do not fit together are refused with a message naming the mismatch.
#[test]
fn incompatible_experts_are_refused() {
    let eps = || scaled(false, Parameterization::Epsilon, 1.0) as Arc<dyn PromptNetwork>;
    type Experts = Vec<(usize, Arc<dyn PromptNetwork>)>;
    let cases: Vec<(Experts, &str)> = vec![
        (vec![], "at least one expert"),
        (vec![(0, eps())], "positive timestep"),
        (
            vec![(40, eps()), (40, eps())],
            "two experts start at timestep 40",
        ),
        (
            vec![(40, scaled(false, Parameterization::V, 1.0))],
            "predicts",
        ),
        (
            vec![(40, scaled(true, Parameterization::Epsilon, 1.0))],
            "an energy model",
        ),
    ];
    for (experts, want) in cases {
        let err = LevelExperts::new(eps(), experts).expect_err(want);
        assert!(
            matches!(err, Error::Config(_)) && err.is_bad_input(),
            "{err}"
        );
        assert!(err.to_string().contains(want), "{err} (want `{want}`)");
    }
    // Another item shape.
    let mut wide = FakeText::new(false, Parameterization::Epsilon);
    wide.dim = 3;
    let err = LevelExperts::new(eps(), vec![(10, Arc::new(wide))]).expect_err("shape");
    assert!(err.to_string().contains("shape"), "{err}");
}

/// As a plain denoiser (what `recompose sample --prompt` runs), a guided prompt of a model
/// with experts predicts the analytic guided Gaussian's ε, x₀ or v of the band of each
/// point's own timestep, points of two bands in one call; without a prompt, the
/// unconditional Gaussian's. A further condition and items of another shape are refused.
#[test]
fn guided_prompts_denoise_as_the_guided_gaussian_of_each_band() -> Res {
    let s = schedule();
    let tau = 60;
    let gamma = 2.5;
    for param in [
        Parameterization::Epsilon,
        Parameterization::X0,
        Parameterization::V,
    ] {
        let experts = LevelExperts::new(
            scaled(false, param, 1.0),
            vec![(tau, scaled(false, param, 3.0))],
        )?;
        let model = PromptModel::new("m", Arc::new(experts), tokenizer(), s.clone(), &Device::Cpu)?;
        let x = [0.3f32, -0.2, 1.5, 0.8];
        let levels = [tau - 1, tau];
        let t = Tensor::from_vec(
            levels.iter().map(|&l| l as f32).collect::<Vec<_>>(),
            2,
            &Device::Cpu,
        )?;
        let xt = Tensor::from_vec(x.to_vec(), (2, 2), &Device::Cpu)?;
        for prompt in [Some("a b"), None] {
            let g = match prompt {
                Some(p) => GuidedPrompts::new(&model, &[(gamma, p)])?,
                None => GuidedPrompts::unconditional(&model)?,
            };
            assert_eq!(Denoiser::parameterization(&g), param);
            let got = g.forward(&xt, &t, None)?.to_vec2::<f32>()?;
            for (i, row) in x.chunks(2).enumerate() {
                let level = levels[i];
                let scale = if level >= tau { 3.0 } else { 1.0 };
                let mean: Vec<f64> = mean_of(&["a", "b"]).iter().map(|m| m * scale).collect();
                let xr: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
                let (sc, _) = diffused(&s, level, &mean, V_COND, &xr);
                let (su, _) = diffused(&s, level, &[0.0, 0.0], V_UNCOND, &xr);
                let (a, sigma) = (s.sqrt_alpha_bar(level), s.sigma(level));
                for j in 0..2 {
                    let score = match prompt {
                        Some(_) => su[j] + gamma * (sc[j] - su[j]),
                        None => su[j],
                    };
                    let eps = -sigma * score;
                    let x0 = (xr[j] - sigma * eps) / a;
                    let want = match param {
                        Parameterization::Epsilon => eps,
                        Parameterization::X0 => x0,
                        Parameterization::V => a * eps - sigma * x0,
                    };
                    let g = f64::from(got[i][j]);
                    assert!(
                        (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{param:?} {prompt:?} level {level}: {g} vs {want}"
                    );
                }
            }
            assert!(g.forward(&xt, &t, Some(&xt)).is_err());
            let wrong = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
            let err = g.forward(&wrong, &t, None).expect_err("items of 3");
            assert!(err.to_string().contains("items of shape [2]"), "{err}");
        }
    }
    Ok(())
}
