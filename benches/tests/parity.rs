//! Device parity of every model, training step, sampler and factorizer: each check runs on the
//! CPU fast paths and on every target of this build (`recompose_core::parity`): the CPU with
//! the fast paths off — candle's ops, the code a GPU runs — always, and CUDA device 0 when built
//! with the `cuda` feature. Outputs agree within 10⁻⁴ normwise relative error unless a check
//! states another bound and its reason.
//!
//! The checks switch the process-wide fast paths; they live in this test binary of their own.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use recompose_benches::decomp::{DecompWorkload, config};
use recompose_benches::step::StepWorkload;
use recompose_compose::{
    AnnealConfig, Component, EnergyLeaf, Kernel, Product, ScoreLeaf, StepSize, anneal,
    mcmc::mcmc_at_level,
};
use recompose_core::device_parity;
use recompose_core::host::fast_paths_enabled;
use recompose_decomp::factorize::{FactorizeConfig, Method, factorize};
use recompose_decomp::problem::{Problem, ProblemConfig};
use recompose_diffusion::nn::{
    EnergyForm, EnergyMlp, MlpConfig, ParamStore, ResidualMlp, UNet, UNetConfig,
};
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::run::RunConfig;
use recompose_diffusion::train::{AdamW, AdamWConfig, Ema, TrainOptions, read_model_weights};
use recompose_diffusion::{
    DdpmVariance, DiscreteSchedule, GaussianMixture, GaussianMixtureDenoiser, Parameterization,
    Sampler, SamplerConfig, SamplerKind, SdeSampler, TimeGrid, VpSde, seeded,
};

type Outputs = Result<Vec<(String, Tensor)>>;

/// The gradient of every variable of `store` in `grads`, by name (zeros for a variable the
/// loss does not reach, as on the fused path).
fn named_grads(
    store: &ParamStore,
    grads: &candle_core::backprop::GradStore,
) -> Result<Vec<(String, Tensor)>> {
    store
        .vars()
        .into_iter()
        .map(|(n, v)| {
            let g = match grads.get(v.as_tensor()) {
                Some(g) => g.clone(),
                None => v.as_tensor().zeros_like()?,
            };
            Ok((format!("∂{n}"), g))
        })
        .collect()
}

/// [`recompose_benches::decomp::perturb`] with a fresh generator seeded `seed`.
fn perturb(store: &ParamStore, scale: f64, seed: u64) -> Result<()> {
    recompose_benches::decomp::perturb(store, &mut seeded(seed), scale)
        .map_err(anyhow::Error::from_boxed)
}

/// A small residual MLP (2-D, width 32, 2 blocks, 20 steps), every weight perturbed.
fn score_mlp(device: &Device) -> Result<ResidualMlp> {
    let cfg = MlpConfig {
        hidden: 32,
        block_hidden: 48,
        num_blocks: 2,
        num_timesteps: 20,
        ..MlpConfig::default()
    };
    let store = ParamStore::new(3);
    let net = ResidualMlp::new(
        &cfg,
        Parameterization::Epsilon,
        store.var_builder(DType::F32, device),
    )?;
    perturb(&store, 0.1, 4)?;
    Ok(net)
}

fn energy_mlp(device: &Device) -> Result<EnergyMlp> {
    Ok(EnergyMlp::from_net(
        score_mlp(device)?,
        EnergyForm::SquaredResidual,
    ))
}

fn schedule() -> Result<DiscreteSchedule> {
    Ok(DiscreteSchedule::cosine(20, 0.008)?)
}

/// The fast host path on the CPU with the fast paths on, candle's ops on `device` elsewhere
/// (the choice `recompose_compose::load` makes for a model directory).
fn host_path(device: &Device) -> bool {
    device.is_cpu() && fast_paths_enabled()
}

fn score_leaf(name: &str, device: &Device) -> Result<Box<dyn Component>> {
    let net = score_mlp(device)?;
    Ok(if host_path(device) {
        Box::new(ScoreLeaf::mlp(name, &net, schedule()?)?)
    } else {
        Box::new(ScoreLeaf::new(name, net, schedule()?, &[2], device)?)
    })
}

fn energy_leaf(name: &str, device: &Device) -> Result<Box<dyn Component>> {
    let model = energy_mlp(device)?;
    Ok(if host_path(device) {
        Box::new(EnergyLeaf::new(name, &model, schedule()?)?)
    } else {
        Box::new(EnergyLeaf::on_device(name, model, schedule()?, device))
    })
}

fn host_tensor(values: Vec<f32>, device: &Device) -> Result<Tensor> {
    let n = values.len();
    Ok(Tensor::from_vec(values, n, device)?)
}

/// The MLP or energy MLP training step's loss and gradients (the paper's network, batch 1000,
/// every weight perturbed).
fn mlp_step(energy: bool, device: &Device) -> Outputs {
    let work = StepWorkload::mlp(energy, device).map_err(anyhow::Error::from_boxed)?;
    perturb(work.store(), 0.1, 12)?;
    let (loss, grads) = work.loss_and_grads().map_err(anyhow::Error::from_boxed)?;
    let mut out = vec![("loss".to_string(), loss)];
    out.extend(named_grads(work.store(), &grads)?);
    Ok(out)
}

/// The Decomp Diffusion training step's loss and gradients, batch 2 (encoder with batch norm
/// in training mode, K = 3 factors through the shared U-Net), and the encoder's running
/// statistics after it.
fn decomp_step(name: &str, device: &Device) -> Outputs {
    let cfg = config(name).expect("configuration");
    let work = DecompWorkload::with_batch(&cfg, 2, device).map_err(anyhow::Error::from_boxed)?;
    let (loss, grads) = work.loss_and_grads().map_err(anyhow::Error::from_boxed)?;
    let mut out = vec![("loss".to_string(), loss)];
    out.extend(named_grads(&work.store, &grads)?);
    for (n, v) in work.store.vars() {
        if n.contains("running") {
            out.push((n, v.as_tensor().clone()));
        }
    }
    Ok(out)
}

device_parity! {
    /// The 2-D residual MLP (ε-prediction): loss and every parameter's gradient of one step.
    fn mlp_forward_backward(device: &Device) -> Outputs {
        mlp_step(false, device)
    }

    /// Its energy form E = ‖g − x‖², ε̂ = ∇ₓE: the loss on ∇ₓE and its parameter gradients (a
    /// gradient of a gradient).
    fn energy_mlp_forward_backward(device: &Device) -> Outputs {
        mlp_step(true, device)
    }

    /// Decomp Diffusion, configuration a (32 px, 32 channels, attention by head channels).
    fn decomp_a_forward_backward(device: &Device) -> Outputs {
        decomp_step("a-32px-32ch", device)
    }

    /// Decomp Diffusion, configuration d (16 px, attention at 8 px).
    fn decomp_d_forward_backward(device: &Device) -> Outputs {
        decomp_step("d-16px-32ch-attn8", device)
    }

    /// The composed prediction of Decomp Diffusion (one DDIM step's model call) from the
    /// encoder's latents in evaluation mode.
    fn decomp_composed_prediction(device: &Device) -> Outputs {
        let cfg = config("a-32px-32ch").expect("configuration");
        let work = DecompWorkload::with_batch(&cfg, 4, device).map_err(anyhow::Error::from_boxed)?;
        let model = work.frozen_model().map_err(anyhow::Error::from_boxed)?;
        let z = model.encode(&work.x0, false)?;
        let pred = model.denoise(&work.x_t, &work.t, &z, None)?;
        Ok(vec![("latents".into(), z), ("prediction".into(), pred)])
    }

    /// Three AdamW steps (weight decay, clipping to norm 0.5 active) and EMA updates on fixed
    /// gradients: loss Σ θ ⊙ G has gradient G exactly on every path.
    fn adamw_clip_ema_steps(device: &Device) -> Outputs {
        let mut rng = seeded(5);
        let shapes: [&[usize]; 3] = [&[64, 33], &[33], &[7, 5, 3]];
        let mut vars = Vec::new();
        let mut gs = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            let v = Var::from_tensor(&normal_tensor(&mut rng, s, DType::F32, device)?)?;
            vars.push((format!("p{i}"), v));
            gs.push(normal_tensor(&mut rng, s, DType::F32, device)?);
        }
        let cfg = AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() };
        let mut opt = AdamW::new(vars.clone(), cfg)?;
        let mut ema = Ema::new(&vars, 0.9)?;
        for step in 0..3 {
            let mut loss = Tensor::zeros((), DType::F32, device)?;
            for ((_, v), g) in vars.iter().zip(&gs) {
                loss = (loss + (v.as_tensor() * (g * (1.0 + step as f64))?)?.sum_all()?)?;
            }
            let grads = loss.backward()?;
            let norm = opt.grad_norm(&grads)?;
            let scale = recompose_diffusion::train::clip_scale(norm, Some(0.5));
            opt.step(&grads, 1e-2, scale)?;
            ema.update(&vars)?;
        }
        let mut out: Vec<(String, Tensor)> =
            vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        out.extend(ema.values().iter().map(|(n, t)| (format!("ema {n}"), t.clone())));
        out.extend(opt.state());
        Ok(out)
    }

    /// A whole training run of a 2-D score model (30 steps of batch 64, warm-up, clipping, EMA,
    /// a checkpoint at step 20) on the device, its EMA weights read back on the CPU from the
    /// written files.
    // 30 Adam steps: the rounding of a gradient element near zero can move its update by up to
    // the learning rate (Adam divides by the gradient's own size).
    tolerance = 1e-3;
    fn toy2d_training_run(device: &Device) -> Outputs {
        let mut cfg = RunConfig::preset("toy2d-ring")?;
        cfg.train.steps = 30;
        cfg.train.batch_size = 64;
        cfg.train.warmup_steps = 5;
        cfg.train.grad_clip = Some(1.0);
        cfg.train.checkpoint_every = 20;
        cfg.train.log_every = 10;
        let dir = tempdir("toy2d-run")?;
        let opts = TrainOptions {
            out_dir: dir.clone(),
            ..TrainOptions::default()
        };
        recompose_diffusion::run::train_run(&cfg, &opts, device, &mut |_| {})?;
        let weights = read_model_weights(&dir, &Device::Cpu)?;
        std::fs::remove_dir_all(&dir)?;
        let mut out: Vec<(String, Tensor)> = weights.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Every sampler of a discrete schedule, ten steps from the same seeded noise (64 chains)
    /// on a small perturbed MLP: DDPM (both variances), DDIM (η = 0 and 0.5), reverse SDE, ODE
    /// (Euler and Heun); DDIM and DDPM on a small U-Net with conditioning; and the VP-SDE
    /// samplers on a continuous time grid with the exact denoiser of a Gaussian mixture.
    fn samplers(device: &Device) -> Outputs {
        let net = score_mlp(device)?;
        let kinds = [
            ("ddpm-small", SamplerKind::Ddpm(DdpmVariance::FixedSmall)),
            ("ddpm-large", SamplerKind::Ddpm(DdpmVariance::FixedLarge)),
            ("ddim", SamplerKind::Ddim { eta: 0.0 }),
            ("ddim-0.5", SamplerKind::Ddim { eta: 0.5 }),
            ("sde", SamplerKind::ReverseSde),
            ("ode-euler", SamplerKind::OdeEuler),
            ("ode-heun", SamplerKind::OdeHeun),
        ];
        let mut out = Vec::new();
        for (name, kind) in kinds {
            let sampler = Sampler::new(schedule()?, SamplerConfig::new(kind))?;
            let x = sampler.sample(&net, &[64, 2], 10, None, device, &mut seeded(8))?;
            out.push((name.to_string(), x));
        }
        // Two samplers on a small U-Net (8 px, attention at 4 px): its convolutions, group
        // norms and attention take the CPU kernels on the fast path.
        let unet_cfg = UNetConfig {
            image_size: 8,
            model_channels: 16,
            attention_resolutions: vec![4],
            num_head_channels: None,
            num_groups: 8,
            cond_dim: 4,
            ..UNetConfig::decomp_small()
        };
        let store = ParamStore::new(21);
        let unet = UNet::new(
            &unet_cfg,
            Parameterization::Epsilon,
            store.var_builder(DType::F32, device),
        )?;
        perturb(&store, 0.05, 22)?;
        let cond = normal_tensor(&mut seeded(23), &[3, 4], DType::F32, device)?;
        let image_schedule = DiscreteSchedule::cosine(50, 0.008)?;
        for (name, kind) in [
            ("unet ddim", SamplerKind::Ddim { eta: 0.0 }),
            ("unet ddpm", SamplerKind::Ddpm(DdpmVariance::FixedSmall)),
        ] {
            let sampler = Sampler::new(image_schedule.clone(), SamplerConfig::new(kind))?;
            let x = sampler.sample(&unet, &[3, 3, 8, 8], 5, Some(&cond), device, &mut seeded(24))?;
            out.push((name.to_string(), x));
        }
        // The continuous VP-SDE samplers (log-SNR time grid) on an exact mixture denoiser.
        let mixture = GaussianMixture::new(
            vec![0.3, 0.7],
            vec![vec![0.5, -0.5], vec![-1.0, 0.25]],
            vec![0.05, 0.1],
        )?;
        let exact = GaussianMixtureDenoiser::new(mixture, VpSde::linear());
        for (name, kind) in [
            ("vp-sde", SamplerKind::ReverseSde),
            ("vp-ode-heun", SamplerKind::OdeHeun),
            ("vp-ddim", SamplerKind::Ddim { eta: 0.0 }),
        ] {
            let sampler = SdeSampler::new(VpSde::linear(), kind, TimeGrid::LogSnr)?;
            let x = sampler.sample(&exact, &[64, 2], 10, None, device, &mut seeded(9))?;
            out.push((name.to_string(), x));
        }
        Ok(out)
    }

    /// The composition samplers on a product of two score models and of two energy models:
    /// the whole annealed reverse diffusion (20 levels, 64 chains), and two steps of every MCMC
    /// kernel (ULA, U-HMC; MALA and HMC on the energies) at two noise levels from the same
    /// points, with their acceptance rates: the fast host network against candle's on the
    /// device.
    // The perturbed, untrained energies have ε̂ = ∇ₓE many times larger than the points, so the
    // rounding of ∇ₓE (a hand-written backward on the host, candle's ops elsewhere) enters
    // each of the 20 reverse steps large; one MCMC step stays within 10⁻⁷.
    tolerance = 1e-3;
    fn composition_samplers(device: &Device) -> Outputs {
        let mut out = Vec::new();
        let start = Tensor::from_vec(
            recompose_diffusion::random::normal_vec(&mut seeded(13), 64 * 2),
            (64, 2),
            device,
        )?;
        for energy in [false, true] {
            let leaf = if energy { energy_leaf } else { score_leaf };
            let tag = if energy { "energy" } else { "score" };
            let product = Product::new(vec![(1.0, leaf("a", device)?), (0.5, leaf("b", device)?)])?;
            let run = anneal(&product, &AnnealConfig::reverse(), 64, &mut seeded(4))?;
            out.push((format!("{tag} reverse"), run.samples));
            for kernel in [Kernel::Ula, Kernel::UHmc, Kernel::Mala, Kernel::Hmc] {
                if kernel.is_metropolis() && !energy {
                    continue;
                }
                let cfg = AnnealConfig {
                    step_size: StepSize::Constant(if kernel.is_hamiltonian() { 0.05 } else { 0.005 }),
                    ..AnnealConfig::paper_2d(kernel)
                };
                for level in [3, 15] {
                    let (x, acc) =
                        mcmc_at_level(&product, &cfg, level, start.clone(), 2, &mut seeded(5))?;
                    let name = format!("{tag} {} at {level}", kernel.name());
                    out.push((name.clone(), x));
                    if let Some(a) = acc {
                        out.push((format!("{name}: acceptance"), host_tensor(vec![a as f32], &Device::Cpu)?));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every factorization method on MAP and FHRR problems (D = 512, F = 3, M = 12, 16 trials):
    /// decoded indices and iteration counts agree exactly.
    fn factorizers(device: &Device) -> Outputs {
        let mut out = Vec::new();
        for vsa in ["map", "fhrr"] {
            let mut pc = ProblemConfig::map(512, 3, 12, 16, 6);
            if vsa == "fhrr" {
                pc.vsa = recompose_decomp::problem::VsaKind::Fhrr;
            }
            let problem = Problem::generate(&pc, device)?;
            for method in recompose_decomp::factorize::METHOD_NAMES {
                // Least-squares weights, ALS and coupled diffusion are for MAP codebooks only.
                if vsa == "fhrr" && matches!(method, "resonator-ols" | "als" | "coupled") {
                    continue;
                }
                let cfg = FactorizeConfig {
                    method: Method::from_name(method)?,
                    max_iters: 60,
                    seed: 9,
                    threads: 1,
                };
                let report = factorize(&problem, &cfg, &mut |_| {})?;
                let pred: Vec<f32> = report.predictions.iter().map(|&p| p as f32).collect();
                let iters: Vec<f32> = report.iterations.iter().map(|&i| i as f32).collect();
                out.push((format!("{vsa} {method} predictions"), host_tensor(pred, &Device::Cpu)?));
                out.push((format!("{vsa} {method} iterations"), host_tensor(iters, &Device::Cpu)?));
            }
        }
        Ok(out)
    }
}

/// A fresh, empty folder under the system's temporary directory (not the build's: the test
/// binary also runs on machines it was not built on).
fn tempdir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("recompose-parity-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
