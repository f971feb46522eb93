//! Prompt algebra against mathematics: a fake text-conditioned network whose conditional
//! models are exact Gaussians diffused along the schedule, and a small real `TextUNet`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use recompose_compose::prompt::group_estimate;
use recompose_compose::{
    AnalyticLeaf, AnnealConfig, Component, Error, GuidedPrompts, Kernel, Prediction, PromptModel,
    PromptModels, PromptNetwork, Result, anneal, build, build_with, parse,
};
use recompose_diffusion::nn::{EnergyForm, ParamStore, UNetConfig};
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::text::{TextTokenizer, TextUNet, TextUNetConfig};
use recompose_diffusion::{Denoiser, DiscreteSchedule, GaussianMixture, Parameterization, seeded};

use super::{Res, moments, points, quick, schedule};

mod experts;

/// The variance of every prompted model and of the unconditional one.
const V_COND: f64 = 0.1;
const V_UNCOND: f64 = 0.25;

/// A text "network" whose model under a prompt is N(μ, v I) diffused along the schedule:
/// μ is the sum of the prompt's words' vectors, v = [`V_COND`] — or, for the empty prompt,
/// μ = 0 and v = [`V_UNCOND`]. Exact ε̂ (or x̂₀) and energy E = σ ‖x − αμ‖² / (2(α²v + σ²)),
/// whose gradient is ε̂ and whose −E/σ is the log-density up to a constant.
struct FakeText {
    words: HashMap<u32, Vec<f64>>,
    dim: usize,
    schedule: DiscreteSchedule,
    energy: bool,
    parameterization: Parameterization,
    /// Every word's vector is multiplied by it (1 unless a test needs a second network).
    scale: f64,
    calls: AtomicUsize,
    rows: AtomicUsize,
}

/// The words of the fake and their mean vectors (d = 2).
const WORDS: [(&str, [f64; 2]); 4] = [
    ("a", [1.0, 0.0]),
    ("b", [0.0, 1.0]),
    ("c", [-1.0, -1.0]),
    ("far", [2.0, 0.0]),
];

fn tokenizer() -> TextTokenizer {
    TextTokenizer::word_level(WORDS.iter().map(|(w, _)| *w), 6).expect("tokenizer")
}

impl FakeText {
    fn new(energy: bool, parameterization: Parameterization) -> Self {
        let tok = tokenizer();
        let words = WORDS
            .iter()
            .map(|(w, v)| (tok.token_to_id(w).expect("a word"), v.to_vec()))
            .collect();
        Self {
            words,
            dim: 2,
            schedule: schedule(),
            energy,
            parameterization,
            scale: 1.0,
            calls: AtomicUsize::new(0),
            rows: AtomicUsize::new(0),
        }
    }

    /// Mean and variance of the clean model of one prompt's ids.
    fn gaussian(&self, ids: &[u32]) -> (Vec<f64>, f64) {
        let mut mean = vec![0.0; self.dim];
        let mut any = false;
        for id in ids {
            if let Some(v) = self.words.get(id) {
                any = true;
                for (m, x) in mean.iter_mut().zip(v) {
                    *m += self.scale * x;
                }
            }
        }
        (mean, if any { V_COND } else { V_UNCOND })
    }
}

/// Score and unnormalized log-density of N(μ, v I) diffused to `level` at `x`.
fn diffused(
    schedule: &DiscreteSchedule,
    level: usize,
    mean: &[f64],
    v: f64,
    x: &[f64],
) -> (Vec<f64>, f64) {
    let (a, s) = (schedule.sqrt_alpha_bar(level), schedule.sigma(level));
    let var = a * a * v + s * s;
    let r: Vec<f64> = x.iter().zip(mean).map(|(x, m)| x - a * m).collect();
    (
        r.iter().map(|r| -r / var).collect(),
        -r.iter().map(|r| r * r).sum::<f64>() / (2.0 * var),
    )
}

impl PromptNetwork for FakeText {
    fn item_shape(&self) -> Vec<usize> {
        vec![self.dim]
    }
    fn parameterization(&self) -> Parameterization {
        self.parameterization
    }
    fn has_energy(&self) -> bool {
        self.energy
    }
    fn predict(&self, x: &Tensor, t: &Tensor, ids: &Tensor, energy: bool) -> Result<Prediction> {
        if energy && !self.energy {
            return Err(Error::NeedsDensity("the fake has no energy".into()));
        }
        let (p, l) = ids.dims2()?;
        let xs = x.to_vec2::<f32>()?;
        let ts = t.to_vec1::<f32>()?;
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.rows.fetch_add(xs.len() * p, Ordering::SeqCst);
        let (mut out, mut energies) = (Vec::new(), Vec::new());
        for (row, &level) in xs.iter().zip(&ts) {
            let level = level as usize;
            let (a, s) = (
                self.schedule.sqrt_alpha_bar(level),
                self.schedule.sigma(level),
            );
            let xr: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            for k in 0..p {
                let (mean, v) = self.gaussian(&ids[k * l..(k + 1) * l]);
                let (score, logp) = diffused(&self.schedule, level, &mean, v, &xr);
                for (j, sc) in score.iter().enumerate() {
                    let eps = -s * sc;
                    out.push(match self.parameterization {
                        Parameterization::Epsilon => eps,
                        // x̂₀ = (x − σ ε̂)/α
                        Parameterization::X0 => (xr[j] - s * eps) / a,
                        // v̂ = α ε̂ − σ x̂₀
                        Parameterization::V => a * eps - s * (xr[j] - s * eps) / a,
                    } as f32);
                }
                energies.push(-s * logp);
            }
        }
        let n = xs.len();
        Ok(Prediction {
            energy: energy
                .then(|| Tensor::from_vec(energies, n * p, x.device()))
                .transpose()?,
            output: Tensor::from_vec(out, (n * p, self.dim), x.device())?,
        })
    }
}

fn fake_model(name: &str, energy: bool, param: Parameterization) -> (PromptModel, Arc<FakeText>) {
    let net = Arc::new(FakeText::new(energy, param));
    let model =
        PromptModel::new(name, net.clone(), tokenizer(), schedule(), &Device::Cpu).expect("model");
    (model, net)
}

/// Builds `text` over the fake models and the named Gaussian leaves.
fn build_fake(
    text: &str,
    models: &PromptModels,
    leaves: &HashMap<&str, GaussianMixture>,
    guidance: f64,
) -> Result<Box<dyn Component>> {
    let expr = parse(text)?;
    build_with(
        &expr,
        &mut |name| {
            let m = leaves
                .get(name)
                .ok_or_else(|| Error::Config(format!("no model `{name}`")))?;
            Ok(Box::new(AnalyticLeaf::new(name, m.clone(), schedule())))
        },
        &mut |q| models.resolve(q),
        guidance,
    )
}

fn registry(models: &[PromptModel]) -> PromptModels {
    let mut r = PromptModels::new();
    for m in models {
        r.insert(m.clone()).expect("distinct names");
    }
    r
}

/// Mean of a word sum.
fn mean_of(words: &[&str]) -> Vec<f64> {
    let mut m = vec![0.0; 2];
    for w in words {
        let (_, v) = WORDS.iter().find(|(n, _)| n == w).expect("a word");
        m[0] += v[0];
        m[1] += v[1];
    }
    m
}

/// (a) The group's score and log-density are s_u + Σ c_i (s_i − s_u) and f_u + Σ c_i (f_i − f_u)
/// of the per-prompt models, in every parameterization, at every level tried.
#[test]
fn guided_scores_are_the_guidance_formula() -> Res {
    let x: Vec<f32> = vec![0.3, -0.2, 1.5, 0.7, -1.1, 0.05, 2.0, -2.5];
    let terms: [(f64, &str); 3] = [(2.5, "a"), (-0.7, "b c"), (1.2, "far")];
    for (energy, param) in [
        (true, Parameterization::Epsilon),
        (false, Parameterization::Epsilon),
        (false, Parameterization::X0),
        (false, Parameterization::V),
    ] {
        let (model, _) = fake_model("fake", energy, param);
        let g = GuidedPrompts::new(&model, &terms)?;
        assert_eq!(g.rows_per_point(), 4);
        assert_eq!(g.has_density(), energy);
        for level in [0usize, 13, 57, 99] {
            let e = g.evaluate(&points(&x, 2), level, energy)?;
            let (score, logp) = (e.score_vec()?, e.log_density_vec()?);
            let s = &model.schedule;
            for (i, row) in x.chunks(2).enumerate() {
                let xr: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
                let (su, fu) = diffused(s, level, &[0.0, 0.0], V_UNCOND, &xr);
                let mut want_s = su.clone();
                let mut want_f = fu;
                for (c, text) in terms {
                    let words: Vec<&str> = text.split(' ').collect();
                    let (si, fi) = diffused(s, level, &mean_of(&words), V_COND, &xr);
                    for j in 0..2 {
                        want_s[j] += c * (si[j] - su[j]);
                    }
                    want_f += c * (fi - fu);
                }
                for j in 0..2 {
                    let got = f64::from(score[i * 2 + j]);
                    assert!(
                        (got - want_s[j]).abs() <= 1e-4 * (1.0 + want_s[j].abs()),
                        "{param:?} energy={energy} level {level}: {got} vs {}",
                        want_s[j]
                    );
                }
                if let Some(f) = &logp {
                    assert!(
                        (f[i] - want_f).abs() <= 1e-4 * (1.0 + want_f.abs()),
                        "level {level}: f {} vs {want_f}",
                        f[i]
                    );
                }
            }
        }
        // A prompt given twice is one row with the summed coefficient.
        let twice = GuidedPrompts::new(&model, &[(1.0, "a"), (0.5, "b"), (2.0, "a")])?;
        assert_eq!(twice.prompts(), ["a", "b"]);
        assert_eq!(twice.coefficients(), [3.0, 0.5]);
        let once = GuidedPrompts::new(&model, &[(3.0, "a"), (0.5, "b")])?;
        let (p, q) = (
            twice.evaluate(&points(&x, 2), 40, false)?.score_vec()?,
            once.evaluate(&points(&x, 2), 40, false)?.score_vec()?,
        );
        assert_eq!(p, q);
    }
    Ok(())
}

/// (b) One network call per evaluation whatever the number of prompts, on n·(P + 1) rows; an
/// annealing run makes exactly one call per composed evaluation.
#[test]
fn one_network_call_per_evaluation() -> Res {
    let x = points(&[0.1, 0.2, -0.3, 0.4, 0.5, -0.6], 2);
    let (model, net) = fake_model("fake", true, Parameterization::Epsilon);
    let all = ["a", "b", "c", "far", "a b", "b c far"];
    for p in 1..=all.len() {
        let terms: Vec<(f64, &str)> = all[..p].iter().map(|t| (1.5, *t)).collect();
        let g = GuidedPrompts::new(&model, &terms)?;
        let (c0, r0) = (
            net.calls.load(Ordering::SeqCst),
            net.rows.load(Ordering::SeqCst),
        );
        g.evaluate(&x, 30, true)?;
        assert_eq!(net.calls.load(Ordering::SeqCst) - c0, 1, "{p} prompts");
        assert_eq!(net.rows.load(Ordering::SeqCst) - r0, 3 * (p + 1));
    }
    let models = registry(&[model]);
    let composed = build_fake(
        "\"a\" AND 2*\"b\" NOT (\"c\" AND \"far\")",
        &models,
        &HashMap::new(),
        3.0,
    )?;
    let before = net.calls.load(Ordering::SeqCst);
    let out = anneal(
        composed.as_ref(),
        &quick(Some(Kernel::Hmc)),
        50,
        &mut seeded(4),
    )?;
    assert_eq!(
        net.calls.load(Ordering::SeqCst) - before,
        out.evaluations,
        "one call per evaluation of the composition"
    );
    Ok(())
}

/// Samples of `composed` by annealing with `kernel`: mean and variance per coordinate.
fn sample(
    composed: &dyn Component,
    kernel: Kernel,
    seed: u64,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let start = std::time::Instant::now();
    let out = anneal(composed, &quick(Some(kernel)), 4000, &mut seeded(seed))?;
    let (mean, cov) = moments(&out.samples_vec()?, 2);
    eprintln!(
        "{} with {kernel:?}: mean {mean:.4?}, variances ({:.4}, {:.4}), acceptance {:?}, {:.2} s",
        composed.describe(),
        cov[0],
        cov[3],
        out.mean_acceptance(),
        start.elapsed().as_secs_f64()
    );
    Ok((mean, vec![cov[0], cov[3]]))
}

/// (c) `"a" AND "b"` with guidance γ is p_u (p_a/p_u)^γ (p_b/p_u)^γ: for Gaussians
/// N(μ_a, v), N(μ_b, v), N(0, v_u) a Gaussian of precision 2γ/v − (2γ − 1)/v_u and mean
/// γ(μ_a + μ_b)/v divided by that precision. Annealed MCMC lands on it, with energies (HMC)
/// and with scores alone (U-HMC).
#[test]
fn conjunction_of_prompts_lands_on_the_analytic_product() -> Res {
    for (energy, kernel) in [(true, Kernel::Hmc), (false, Kernel::UHmc)] {
        let (model, _) = fake_model("fake", energy, Parameterization::Epsilon);
        let models = registry(&[model]);
        for gamma in [1.0, 2.0] {
            let precision = 2.0 * gamma / V_COND - (2.0 * gamma - 1.0) / V_UNCOND;
            let want_var = 1.0 / precision;
            // μ_a + μ_b = (1, 1).
            let want_mean = gamma / V_COND / precision;
            let composed = build_fake("\"a\" AND \"b\"", &models, &HashMap::new(), gamma)?;
            let (mean, var) = sample(composed.as_ref(), kernel, 7)?;
            for i in 0..2 {
                assert!(
                    (mean[i] - want_mean).abs() < 0.02,
                    "γ = {gamma}, {kernel:?}: mean {mean:?} vs {want_mean}"
                );
                assert!(
                    (var[i] - want_var).abs() < 0.12 * want_var,
                    "γ = {gamma}, {kernel:?}: variance {var:?} vs {want_var}"
                );
            }
            // The product of the conditionals alone (without dividing by p_u) would have mean
            // 0.5 at γ = 1: the base is counted once, not twice or never.
            assert!((mean[0] - 0.5).abs() > 0.08, "{mean:?}");
        }
    }
    Ok(())
}

/// (d) `"a" NOT "b"` (γ = 1, weights 1 and 1) is p_u p_a / p_b: with equal conditional
/// variances a Gaussian of precision 1/v_u and mean v_u (μ_a − μ_b)/v = (2.5, −2.5), far from
/// μ_b; `"a"` alone is p_a, with mean μ_a. Written weights are used as written.
#[test]
fn negated_prompt_pushes_samples_away() -> Res {
    let (model, _) = fake_model("fake", true, Parameterization::Epsilon);
    let models = registry(&[model]);
    let none = HashMap::new();
    let (alone, alone_var) = sample(
        build_fake("\"a\"", &models, &none, 1.0)?.as_ref(),
        Kernel::Hmc,
        3,
    )?;
    assert!(
        (alone[0] - 1.0).abs() < 0.02 && alone[1].abs() < 0.02,
        "{alone:?}"
    );
    assert!(
        alone_var.iter().all(|v| (v - V_COND).abs() < 0.12 * V_COND),
        "{alone_var:?}"
    );
    let (mean, var) = sample(
        build_fake("\"a\" NOT \"b\"", &models, &none, 1.0)?.as_ref(),
        Kernel::Hmc,
        3,
    )?;
    let want = [V_UNCOND / V_COND, -V_UNCOND / V_COND];
    for i in 0..2 {
        assert!((mean[i] - want[i]).abs() < 0.05, "{mean:?} vs {want:?}");
        assert!((var[i] - V_UNCOND).abs() < 0.12 * V_UNCOND, "{var:?}");
    }
    let dist = |m: &[f64]| (m[0].powi(2) + (m[1] - 1.0).powi(2)).sqrt();
    assert!(dist(&mean) > dist(&alone) + 2.0, "{mean:?} vs {alone:?}");
    // "a" NOT α·"b" with α = 0.5 is p_u (p_a/p_u) (p_b/p_u)^−α = p_a p_b^−α p_u^α: precision
    // (1 − α)/v + α/v_u, mean (μ_a − α μ_b)/v divided by it.
    let (mean, var) = sample(
        build_fake("\"a\" NOT 0.5*\"b\"", &models, &none, 1.0)?.as_ref(),
        Kernel::Hmc,
        3,
    )?;
    let precision = 0.5 / V_COND + 0.5 / V_UNCOND;
    let want = [1.0 / V_COND / precision, -0.5 / V_COND / precision];
    for i in 0..2 {
        assert!((mean[i] - want[i]).abs() < 0.03, "{mean:?} vs {want:?}");
        assert!(
            (var[i] * precision - 1.0).abs() < 0.12,
            "{var:?} vs {}",
            1.0 / precision
        );
    }
    Ok(())
}

/// OR of prompts mixes the guided conditionals (at γ = 1 the conditionals themselves): half the
/// samples near μ_a, half near μ_b.
#[test]
fn disjunction_of_prompts_is_a_mixture_of_guided_models() -> Res {
    let (model, _) = fake_model("fake", true, Parameterization::Epsilon);
    let models = registry(&[model]);
    let composed = build_fake("\"a\" OR \"b\"", &models, &HashMap::new(), 1.0)?;
    let out = anneal(
        composed.as_ref(),
        &quick(Some(Kernel::Hmc)),
        4000,
        &mut seeded(9),
    )?;
    let x = out.samples_vec()?;
    let near_a = x.chunks(2).filter(|p| p[0] > p[1]).count() as f64 / 4000.0;
    eprintln!("\"a\" OR \"b\": {near_a:.3} of the samples near a");
    assert!((near_a - 0.5).abs() < 0.05, "{near_a}");
    Ok(())
}

/// The grouping rules, read from the composition's description: one group per model and
/// chain with γ times the weights, NOT of prompts with weights (1, 1), density NOT otherwise,
/// a bare model kept as a product term.
#[test]
fn expressions_group_prompts_per_model_and_chain() -> Res {
    let (shapes, _) = fake_model("shapes", true, Parameterization::Epsilon);
    let (colors, _) = fake_model("colors", true, Parameterization::Epsilon);
    let one = registry(std::slice::from_ref(&shapes));
    let two = registry(&[shapes, colors]);
    let mut leaves = HashMap::new();
    leaves.insert("ring", GaussianMixture::gaussian(vec![0.0, 0.0], 0.5)?);
    let cases: [(&PromptModels, &str, &str); 9] = [
        (&one, "\"a\"", "`shapes`[2*\"a\"]"),
        (&one, "\"a\" AND \"b\"", "`shapes`[2*\"a\", 2*\"b\"]"),
        (
            &one,
            "0.5*\"a\" NOT 3*\"b c\"",
            "`shapes`[1*\"a\", -6*\"b c\"]",
        ),
        (
            &one,
            "\"a\" AND (\"b\" NOT \"c\") NOT (\"far\" AND shapes:\"a\")",
            "`shapes`[0*\"a\", 2*\"b\", -2*\"c\", -2*\"far\"]",
        ),
        (
            &one,
            "ring AND \"a\" NOT \"b\"",
            "(1*`ring` AND 1*`shapes`[2*\"a\", -2*\"b\"])",
        ),
        (
            &one,
            "\"a\" NOT ring",
            "(1.3*`shapes`[2*\"a\"] AND -0.3*`ring`)",
        ),
        (
            &one,
            "2*(ring AND \"a\")",
            "(2*`ring` AND 1*`shapes`[4*\"a\"])",
        ),
        (
            &two,
            "shapes:\"a\" AND colors:\"b\" NOT shapes:\"c\"",
            "(1*`shapes`[2*\"a\", -2*\"c\"] AND 1*`colors`[2*\"b\"])",
        ),
        (
            &two,
            "(shapes:\"a\" OR colors:\"b\") NOT colors:\"c\"",
            "(1*(0.5*`shapes`[2*\"a\"] OR 0.5*`colors`[2*\"b\"]) AND 1*`colors`[-2*\"c\"])",
        ),
    ];
    for (models, text, want) in cases {
        let c = build_fake(text, models, &leaves, 2.0)?;
        assert_eq!(c.describe(), want, "{text}");
    }
    // Prompt-free expressions build as before, through `build` too.
    let leaf = |name: &str| -> Result<Box<dyn Component>> {
        Ok(Box::new(AnalyticLeaf::new(
            name,
            GaussianMixture::gaussian(vec![0.0, 0.0], 0.5)?,
            schedule(),
        )))
    };
    let expr = parse("ring AND 2*ring NOT ring")?;
    let a = build(&expr, &mut |n| leaf(n))?.describe();
    let b = build_with(&expr, &mut |n| leaf(n), &mut |q| one.resolve(q), 4.0)?.describe();
    assert_eq!(a, b);
    assert_eq!(a, "(1.3*(1*`ring` AND 2*`ring`) AND -0.3*`ring`)");
    Ok(())
}

/// (e) Clear errors: an unknown qualifier, a bare prompt with zero or several text models, a
/// word the tokenizer does not know, OR over score models, a prompt given to `build`, models
/// that do not fit together, a bad guidance scale.
#[test]
fn prompt_errors_are_clear() -> Res {
    let (shapes, _) = fake_model("shapes", false, Parameterization::Epsilon);
    let (colors, _) = fake_model("colors", false, Parameterization::Epsilon);
    let one = registry(std::slice::from_ref(&shapes));
    let two = registry(&[shapes.clone(), colors]);
    let none = PromptModels::new();
    let mut leaves = HashMap::new();
    leaves.insert("d3", GaussianMixture::gaussian(vec![0.0; 3], 0.5)?);
    let no = HashMap::new();
    let message = |r: Result<Box<dyn Component>>| match r {
        Ok(c) => panic!("built {}", c.describe()),
        Err(e) => e,
    };

    let e = message(build_fake("\"a\" AND nope:\"b\"", &one, &no, 1.0));
    assert!(matches!(e, Error::Config(_)) && e.is_bad_input(), "{e}");
    assert!(
        e.to_string()
            .contains("`nope` is not a text model (the text models: `shapes`)"),
        "{e}"
    );

    let e = message(build_fake("\"a\"", &two, &no, 1.0));
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(e.to_string().contains("the prompt \"a\""), "{e}");
    assert!(
        e.to_string()
            .contains("several text models (`shapes`, `colors`)"),
        "{e}"
    );
    assert!(build_fake("shapes:\"a\" AND colors:\"b\"", &two, &no, 1.0).is_ok());

    let e = message(build_fake("\"a\"", &none, &no, 1.0));
    assert!(e.to_string().contains("none is given"), "{e}");

    let e = message(build_fake("\"a\" AND \"b cirle\"", &one, &no, 1.0));
    assert!(matches!(e, Error::Diffusion(_)) && e.is_bad_input(), "{e}");
    assert!(e.to_string().contains("\"cirle\""), "{e}");
    assert!(e.to_string().contains("`shapes`"), "{e}");

    let e = message(build_fake("\"a\" OR \"b\"", &one, &no, 1.0));
    assert!(matches!(e, Error::NeedsDensity(_)), "{e}");

    let e = message(build_fake("d3 AND \"a\"", &one, &leaves, 1.0));
    assert!(matches!(e, Error::Shape(_)), "{e}");

    for gamma in [-1.0, f64::NAN, f64::INFINITY] {
        let e = message(build_fake("\"a\"", &one, &no, gamma));
        assert!(matches!(e, Error::Config(_)), "{e}");
    }

    let expr = parse("ring AND \"a\"")?;
    let e = message(build(&expr, &mut |_| {
        Err(Error::Config("no models here".into()))
    }));
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(e.to_string().contains("holds the prompt \"a\""), "{e}");

    let mut r = PromptModels::new();
    r.insert(shapes.clone())?;
    assert!(matches!(r.insert(shapes.clone()), Err(Error::Config(_))));
    assert!(matches!(
        GuidedPrompts::new(&shapes, &[]),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        GuidedPrompts::new(&shapes, &[(1.0, "  ")]),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        GuidedPrompts::new(&shapes, &[(f64::NAN, "a")]),
        Err(Error::Config(_))
    ));
    // A prompt longer than the tokenizer's 6 tokens (start and end included).
    assert!(matches!(
        GuidedPrompts::new(&shapes, &[(1.0, "a b c a b")]),
        Err(Error::Diffusion(_))
    ));
    // A score model has no log-density.
    let g = GuidedPrompts::new(&shapes, &[(1.0, "a")])?;
    assert!(matches!(
        g.evaluate(&points(&[0.0, 0.0], 2), 3, true),
        Err(Error::NeedsDensity(_))
    ));
    Ok(())
}

// ---- A small real TextUNet ----------------------------------------------------------------

pub(crate) fn tiny_unet() -> UNetConfig {
    UNetConfig {
        image_size: 8,
        in_channels: 3,
        out_channels: 3,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_resolutions: vec![4],
        num_heads: 1,
        num_head_channels: None,
        num_groups: 4,
        time_embed_dim: 16,
        ..UNetConfig::default()
    }
}

/// A tiny TextUNet (score or energy; pooled conditioning, with cross-attention to the token
/// states if `cross`) with random weights, perturbed so that the zero-initialized output layers
/// pass a signal.
fn text_unet(energy: bool, cross: bool) -> anyhow::Result<(TextUNet, TextTokenizer)> {
    let tok = TextTokenizer::word_level(["red", "blue", "circle", "square"], 5)?;
    let unet = UNetConfig {
        context_dim: usize::from(cross),
        ..tiny_unet()
    };
    let cfg = TextUNetConfig {
        energy: energy.then_some(EnergyForm::HalfNorm),
        ..TextUNetConfig::for_tokenizer(unet, &tok)?
    };
    let store = ParamStore::new(11);
    let net = TextUNet::new(
        &cfg,
        Parameterization::Epsilon,
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    perturb(&store, 12)?;
    Ok((net, tok))
}

/// Moves every parameter of `store` by Gaussian noise of σ = 0.1 (seeded), so that the
/// zero-initialized output layers pass a signal.
pub(crate) fn perturb(store: &ParamStore, seed: u64) -> anyhow::Result<()> {
    let mut rng = seeded(seed);
    for (_, var) in store.vars() {
        let noise = normal_tensor(&mut rng, var.as_tensor().dims(), DType::F32, &Device::Cpu)?;
        var.set(&(var.as_tensor() + (noise * 0.1)?)?)?;
    }
    Ok(())
}

/// (f) The real network: the batched evaluation equals the guidance formula over separate
/// per-prompt calls, and annealing runs (score: ULA; energy: MALA) and gives finite samples.
#[test]
fn text_unet_guided_by_prompts() -> Res {
    let schedule = DiscreteSchedule::cosine(10, 0.008)?;
    let gamma = 3.0;
    for (energy, cross) in [(false, false), (true, false), (false, true), (true, true)] {
        let (net, tok) = text_unet(energy, cross)?;
        let net = Arc::new(net);
        let model = PromptModel::new(
            "shapes",
            net.clone(),
            tok.clone(),
            schedule.clone(),
            &Device::Cpu,
        )?;
        let terms: [(f64, &str); 3] = [(gamma, "red circle"), (gamma, "blue"), (-gamma, "square")];
        let g = GuidedPrompts::new(&model, &terms)?;
        let n = 3;
        let x = normal_tensor(&mut seeded(5), &[n, 192], DType::F32, &Device::Cpu)?;
        let level = 6;
        let sigma = schedule.sigma(level);
        let start = std::time::Instant::now();
        let got = g.evaluate(&x, level, energy)?;
        let batched = start.elapsed().as_secs_f64();
        // Separately: each prompt (and the empty one) in its own call.
        let x4 = x.reshape((n, 3, 8, 8))?;
        let t = Tensor::new(vec![level as f32; n], &Device::Cpu)?;
        let per_prompt = |text: &str| -> anyhow::Result<(Vec<f32>, Option<Vec<f64>>)> {
            let ids = tok
                .encode_strict(&vec![text; n])?
                .ids_tensor(&Device::Cpu)?;
            if energy {
                let (e, grad) = net.energy_and_grad(&x4, &t, &ids)?;
                let s = (grad.flatten_from(1)? * (-1.0 / sigma))?;
                let f = (e.to_dtype(DType::F64)? * (-1.0 / sigma))?;
                Ok((s.flatten_all()?.to_vec1()?, Some(f.to_vec1()?)))
            } else {
                let eps = net.forward(&x4, &t, Some(&ids))?;
                let s = (eps.flatten_from(1)? * (-1.0 / sigma))?;
                Ok((s.flatten_all()?.to_vec1()?, None))
            }
        };
        let (su, fu) = per_prompt("")?;
        let mut want_s: Vec<f64> = su.iter().map(|&v| f64::from(v)).collect();
        let mut want_f = fu.clone();
        for (c, text) in terms {
            let (si, fi) = per_prompt(text)?;
            for (j, w) in want_s.iter_mut().enumerate() {
                *w += c * f64::from(si[j] - su[j]);
            }
            if let (Some(wf), Some(fi), Some(fu)) = (want_f.as_mut(), fi, fu.as_ref()) {
                for (i, w) in wf.iter_mut().enumerate() {
                    *w += c * (fi[i] - fu[i]);
                }
            }
        }
        let score = got.score_vec()?;
        let scale = want_s.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let diff = score
            .iter()
            .zip(&want_s)
            .fold(0.0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs()));
        eprintln!(
            "TextUNet energy={energy} cross={cross}: batched vs separate max |Δs| = {diff:.2e} (max |s| = \
             {scale:.2}), one batched evaluation of {n}×4 rows in {batched:.3} s"
        );
        assert!(diff <= 1e-5 * scale, "{diff} (scale {scale})");
        if let (Some(f), Some(wf)) = (got.log_density_vec()?, want_f) {
            let fscale = wf.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let fdiff = f
                .iter()
                .zip(&wf)
                .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
            eprintln!("  max |Δf| = {fdiff:.2e} (max |f| = {fscale:.2})");
            assert!(fdiff <= 1e-5 * fscale, "{fdiff} (scale {fscale})");
        }
        // Annealing a composition of the real network.
        let mut models = PromptModels::new();
        models.insert(model)?;
        let text = if energy {
            "(\"red circle\" OR \"blue square\") NOT \"square\""
        } else {
            "\"red circle\" AND \"blue\" NOT \"square\""
        };
        let composed = build_with(
            &parse(text)?,
            &mut |name| Err(Error::Config(format!("no model `{name}`"))),
            &mut |q| models.resolve(q),
            gamma,
        )?;
        let cfg = AnnealConfig {
            mcmc_steps: 2,
            step_size: recompose_compose::StepSize::BetaScaled(0.02),
            ..AnnealConfig::paper_image(if energy { Kernel::Mala } else { Kernel::Ula })
        };
        let start = std::time::Instant::now();
        let out = anneal(composed.as_ref(), &cfg, 4, &mut seeded(6))?;
        let samples = out.samples_vec()?;
        eprintln!(
            "  anneal `{text}`: {} evaluations, acceptance {:?}, {:.2} s",
            out.evaluations,
            out.mean_acceptance(),
            start.elapsed().as_secs_f64()
        );
        assert_eq!(out.samples.dims(), [4, 192]);
        assert!(samples.iter().all(|v| v.is_finite()));
        assert_eq!(out.levels.len(), 10);
    }
    // The memory estimate of a group grows with its rows.
    let (p, a) = group_estimate(
        recompose_core::memory::Estimate::bytes(1000),
        recompose_core::memory::Estimate::bytes(100),
        3,
        192,
    );
    assert_eq!(p.get(), Some(1000));
    assert_eq!(a.get(), Some(4 * (100 + 4 * 4 * 192)));
    Ok(())
}
