//! Training: gradients reach every variable, the residual MLP learns the 8-Gaussian ring
//! (Wasserstein-2 to exact samples), resume after an interruption is bit-exact, and bad
//! checkpoints get errors naming the tensor.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use recompose_diffusion::data::Toy2d;
use recompose_diffusion::metrics::wasserstein2;
use recompose_diffusion::nn::{MlpConfig, ParamStore, ResidualMlp};
use recompose_diffusion::run::{ModelConfig, RunConfig, Trained, train_run};
use recompose_diffusion::train::{DenoisingLoss, Objective, TrainOptions, checkpoint_step};
use recompose_diffusion::{DdpmVariance, Denoiser, Parameterization, SamplerKind, sample, seeded};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("recompose-train-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn small_ring_config(steps: usize) -> RunConfig {
    let mut cfg = RunConfig::toy2d(Toy2d::Ring);
    cfg.model = ModelConfig::Mlp(MlpConfig {
        hidden: 32,
        block_hidden: 64,
        num_blocks: 2,
        time_embed_dim: 16,
        ..MlpConfig::default()
    });
    cfg.train.steps = steps;
    cfg.train.batch_size = 64;
    cfg.train.checkpoint_every = 10;
    cfg.train.log_every = 1;
    cfg.train.grad_clip = Some(1.0);
    cfg.train.warmup_steps = 5;
    cfg.train.decay = recompose_diffusion::train::LrDecay::Cosine;
    cfg.train.seed = 11;
    cfg
}

#[test]
fn every_mlp_variable_gets_a_gradient() -> Result<()> {
    let store = ParamStore::new(3);
    let model = ResidualMlp::new(
        &MlpConfig::default(),
        Parameterization::Epsilon,
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    // Move the zero-initialized layers off zero, or nothing upstream of them gets a gradient.
    let mut rng = seeded(4);
    for (_, var) in store.vars() {
        let noise = recompose_diffusion::random::normal_tensor(
            &mut rng,
            var.dims(),
            DType::F32,
            &Device::Cpu,
        )?;
        var.set(&(var.as_tensor() + (noise * 0.05)?)?)?;
    }
    let schedule = recompose_diffusion::DiscreteSchedule::cosine(100, 0.008)?;
    let loss = DenoisingLoss::new(&model, &schedule);
    let batch = Tensor::from_vec(
        Toy2d::Ring
            .sample(&mut rng, 32)
            .into_iter()
            .flat_map(|p| [p[0] as f32, p[1] as f32])
            .collect::<Vec<_>>(),
        (32, 2),
        &Device::Cpu,
    )?;
    let grads = loss.loss(&batch, None, &mut rng)?.backward()?;
    assert_eq!(store.len(), 2 + 1 + 4 * 10 + 2);
    for (name, var) in store.vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("`{name}` got no gradient"));
        let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!(
            norm > 0.0 && norm.is_finite(),
            "`{name}` has gradient norm {norm}"
        );
    }
    Ok(())
}

/// The models `train_run` builds from a configuration (the `run::Model` wrapper) take the
/// MLPs' fused gradient path, as the networks themselves do, and it agrees with autograd.
#[test]
fn run_models_take_the_fused_gradient_path() -> Result<()> {
    use recompose_diffusion::nn::EnergyForm;
    use recompose_diffusion::train::TrainableDenoiser;
    for energy in [None, Some(EnergyForm::SquaredResidual)] {
        let mut cfg = small_ring_config(1);
        cfg.diffusion.energy = energy;
        let store = ParamStore::new(3);
        let model = cfg.build_model(store.var_builder(DType::F32, &Device::Cpu))?;
        let mut rng = seeded(5);
        let x = recompose_diffusion::random::normal_tensor(
            &mut rng,
            &[64, 2],
            DType::F32,
            &Device::Cpu,
        )?;
        let target = recompose_diffusion::random::normal_tensor(
            &mut rng,
            &[64, 2],
            DType::F32,
            &Device::Cpu,
        )?;
        let t = Tensor::from_vec(
            (0..64).map(|i| (i % 100) as f32).collect::<Vec<_>>(),
            64,
            &Device::Cpu,
        )?;
        let (loss, grads) = model
            .fused_mse_and_grads(&x, &t, None, &target)?
            .ok_or_else(|| anyhow::anyhow!("{energy:?}: run::Model has no fused path"))?;
        let reference = (model.forward_train(&x, &t, None, &mut rng)? - &target)?
            .sqr()?
            .mean_all()?;
        let ref_grads = reference.backward()?;
        let (a, b) = (loss.to_scalar::<f32>()?, reference.to_scalar::<f32>()?);
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{energy:?}: loss {a} vs {b}"
        );
        for (name, var) in store.vars() {
            let (g, r) = (
                grads
                    .get(&var)
                    .ok_or_else(|| anyhow::anyhow!("{name}: no gradient"))?,
                ref_grads
                    .get(&var)
                    .ok_or_else(|| anyhow::anyhow!("{name}: no reference gradient"))?,
            );
            let diff = (g - r)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = r.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
            assert!(
                diff <= 1e-3 * scale,
                "{energy:?} {name}: gradient differs by {diff} (scale {scale})"
            );
        }
    }
    Ok(())
}

/// `train_run` refuses a run whose estimate exceeds the limit (the available memory when none
/// is given) with an error, before it allocates or writes anything.
#[test]
fn train_run_refuses_what_does_not_fit() -> Result<()> {
    use recompose_core::memory::MemoryLimit;
    let dir = scratch("too-big");
    let mut huge = small_ring_config(1);
    huge.model = ModelConfig::Mlp(MlpConfig {
        hidden: 1 << 20,
        block_hidden: 1 << 20,
        ..MlpConfig::default()
    });
    let small = small_ring_config(1);
    for (cfg, limit) in [(&huge, None), (&small, Some(MemoryLimit::new(1 << 10)))] {
        let opts = TrainOptions {
            out_dir: dir.clone(),
            max_memory: limit,
            ..Default::default()
        };
        let err = train_run(cfg, &opts, &Device::Cpu, &mut |_| {})
            .err()
            .ok_or_else(|| anyhow::anyhow!("the run was not refused"))?;
        assert!(
            matches!(err, recompose_diffusion::Error::Memory(_)),
            "{err}"
        );
        assert!(err.is_bad_input(), "{err}");
        assert!(!dir.exists(), "the refused run wrote {}", dir.display());
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    Ok(fs::read(path)?)
}

/// An interrupted run resumed from its last checkpoint writes the same loss log and the same
/// weights, byte for byte, as a run that was never interrupted.
#[test]
fn resume_after_interrupt_is_bit_exact() -> Result<()> {
    let cfg = small_ring_config(30);
    let full = scratch("full");
    train_run(
        &cfg,
        &TrainOptions {
            out_dir: full.clone(),
            ..Default::default()
        },
        &Device::Cpu,
        &mut |_| {},
    )?;

    let cut = scratch("cut");
    let opts = TrainOptions {
        out_dir: cut.clone(),
        halt_after: Some(17),
        ..Default::default()
    };
    let report = train_run(&cfg, &opts, &Device::Cpu, &mut |_| {})?;
    assert_eq!(report.end_step, 17);
    // The checkpoint a resume starts from: the last one written (every 10 steps), then the end.
    assert_eq!(checkpoint_step(&cut)?, Some(10));
    assert_eq!(checkpoint_step(&full)?, Some(30));
    assert_eq!(checkpoint_step(&scratch("empty"))?, None);
    // Starting afresh over a checkpoint is refused.
    let err = train_run(
        &cfg,
        &TrainOptions {
            out_dir: cut.clone(),
            ..Default::default()
        },
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("already holds a checkpoint"), "{err}");
    let resumed = train_run(
        &cfg,
        &TrainOptions {
            out_dir: cut.clone(),
            resume: true,
            ..Default::default()
        },
        &Device::Cpu,
        &mut |_| {},
    )?;
    assert_eq!((resumed.start_step, resumed.end_step), (10, 30));
    assert_eq!(
        read(&full.join("loss.jsonl"))?,
        read(&cut.join("loss.jsonl"))?
    );
    assert_eq!(
        read(&full.join("model.safetensors"))?,
        read(&cut.join("model.safetensors"))?
    );
    assert_eq!(
        read(&full.join("checkpoint/state.safetensors"))?,
        read(&cut.join("checkpoint/state.safetensors"))?
    );
    let log = fs::read_to_string(full.join("loss.jsonl"))?;
    assert_eq!(log.lines().count(), 30);

    // A resumed run with other settings is refused, naming the setting.
    let mut other = cfg.clone();
    other.train.lr = 5e-4;
    let err = train_run(
        &other,
        &TrainOptions {
            out_dir: cut.clone(),
            resume: true,
            ..Default::default()
        },
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`lr`"), "{err}");
    let _ = fs::remove_dir_all(&full);
    let _ = fs::remove_dir_all(&cut);
    Ok(())
}

/// Corrupt, truncated and mismatched checkpoints fail with errors naming the tensor.
#[test]
fn bad_checkpoints_name_the_tensor() -> Result<()> {
    let cfg = small_ring_config(10);
    let dir = scratch("bad");
    train_run(
        &cfg,
        &TrainOptions {
            out_dir: dir.clone(),
            ..Default::default()
        },
        &Device::Cpu,
        &mut |_| {},
    )?;
    let resume = |cfg: &RunConfig| {
        let mut c = cfg.clone();
        c.train.steps = 20;
        train_run(
            &c,
            &TrainOptions {
                out_dir: dir.clone(),
                resume: true,
                ..Default::default()
            },
            &Device::Cpu,
            &mut |_| {},
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };

    // Flip a byte in the middle of the state file: its checksum names the tensor.
    let state = dir.join("checkpoint/state.safetensors");
    let good = read(&state)?;
    let mut bytes = good.clone();
    let mid = bytes.len() - 100;
    bytes[mid] ^= 0x40;
    fs::write(&state, &bytes)?;
    let err = resume(&cfg).unwrap_err();
    assert!(err.contains("corrupt") && err.contains("tensor `"), "{err}");

    // Truncate it.
    fs::write(&state, &good[..good.len() - 1000])?;
    let err = resume(&cfg).unwrap_err();
    assert!(
        err.contains("truncated") && err.contains("tensor `"),
        "{err}"
    );
    fs::write(&state, &good)?;

    // A checkpoint of another model: the first mismatching tensor is named.
    let mut wider = cfg.clone();
    if let ModelConfig::Mlp(m) = &mut wider.model {
        m.hidden = 48;
    }
    let err = resume(&wider).unwrap_err();
    assert!(
        err.contains("tensor `param.") || err.contains("blocks.0"),
        "{err}"
    );

    // The sampling side: a corrupted model file and a config that does not match the weights.
    let model = dir.join("model.safetensors");
    let good_model = read(&model)?;
    let mut bytes = good_model.clone();
    let n = bytes.len();
    bytes[n - 5] ^= 1;
    fs::write(&model, &bytes)?;
    let err = Trained::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("tensor `"), "{err}");
    fs::write(&model, &good_model)?;
    Trained::load(&dir, &Device::Cpu)?;
    fs::write(dir.join("config.toml"), wider.to_toml()?)?;
    let err = Trained::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("has shape") && err.contains('`'), "{err}");
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// On resume the loss log is cut back to its length at the checkpoint (a half-written row of a
/// lost step included); a checkpoint that recorded no length (written before it was recorded)
/// keeps the complete rows of the steps it covers; a log shorter than the checkpoint recorded
/// has lost rows and is refused.
#[test]
fn the_loss_log_is_cut_back_to_the_checkpoint() -> Result<()> {
    let cfg = small_ring_config(30);
    let run = |dir: &Path, halt: Option<usize>, resume: bool| {
        train_run(
            &cfg,
            &TrainOptions {
                out_dir: dir.to_path_buf(),
                halt_after: halt,
                resume,
                ..Default::default()
            },
            &Device::Cpu,
            &mut |_| {},
        )
        .map_err(|e| e.to_string())
    };
    let full = scratch("log-full");
    run(&full, None, false).map_err(anyhow::Error::msg)?;
    let want = read(&full.join("loss.jsonl"))?;

    for legacy in [false, true] {
        let dir = scratch(&format!("log-cut-{legacy}"));
        run(&dir, Some(17), false).map_err(anyhow::Error::msg)?;
        let log = dir.join("loss.jsonl");
        let mut bytes = read(&log)?;
        assert_eq!(String::from_utf8_lossy(&bytes).lines().count(), 17);
        bytes.extend_from_slice(b"{\"step\":18,\"lo");
        fs::write(&log, &bytes)?;
        if legacy {
            let state = dir.join("checkpoint/state.json");
            let mut v: serde_json::Value = serde_json::from_slice(&read(&state)?)?;
            assert_eq!(v["log_bytes"].as_u64().map(|n| n > 0), Some(true));
            v.as_object_mut().expect("object").remove("log_bytes");
            fs::write(&state, serde_json::to_vec_pretty(&v)?)?;
        }
        run(&dir, None, true).map_err(anyhow::Error::msg)?;
        assert_eq!(read(&log)?, want, "legacy = {legacy}");
        let _ = fs::remove_dir_all(&dir);
    }

    let dir = scratch("log-lost");
    run(&dir, Some(17), false).map_err(anyhow::Error::msg)?;
    let log = dir.join("loss.jsonl");
    let text = fs::read_to_string(&log)?;
    let five: String = text.lines().take(5).map(|l| format!("{l}\n")).collect();
    fs::write(&log, five)?;
    let err = run(&dir, None, true).unwrap_err();
    assert!(err.contains("loss.jsonl") && err.contains("lost"), "{err}");
    for d in [&full, &dir] {
        let _ = fs::remove_dir_all(d);
    }
    Ok(())
}

/// A scaled-down version of the 2-D setup (the paper's cosine schedule, T = 100; a smaller MLP,
/// 1500 steps at batch 256 instead of 15 000 at 1000) already puts DDPM samples on the ring: W₂
/// to exact samples is at the two-sample noise floor and far below that of N(0, I). The full
/// preset is `recompose train --preset toy2d-ring`.
#[test]
fn mlp_learns_the_ring() -> Result<()> {
    let mut cfg = RunConfig::toy2d(Toy2d::Ring);
    cfg.model = ModelConfig::Mlp(MlpConfig {
        hidden: 64,
        block_hidden: 128,
        num_blocks: 2,
        ..MlpConfig::default()
    });
    cfg.train.steps = 1500;
    cfg.train.batch_size = 256;
    cfg.train.lr = 3e-3;
    cfg.train.warmup_steps = 50;
    cfg.train.decay = recompose_diffusion::train::LrDecay::Cosine;
    cfg.train.final_lr = 1e-4;
    cfg.train.ema_decay = 0.99;
    cfg.train.checkpoint_every = 0;
    cfg.train.seed = 1;
    let dir = scratch("ring");
    train_run(
        &cfg,
        &TrainOptions {
            out_dir: dir.clone(),
            ..Default::default()
        },
        &Device::Cpu,
        &mut |_| {},
    )?;
    let trained = Trained::load(&dir, &Device::Cpu)?;
    let n = 500;
    let mut rng = seeded(2);
    let x = sample(
        &trained.model as &dyn Denoiser,
        &trained.schedule,
        SamplerKind::Ddpm(DdpmVariance::FixedSmall),
        100,
        &[n, 2],
        &Device::Cpu,
        &mut rng,
    )?;
    let got: Vec<Vec<f64>> = x.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let truth: Vec<Vec<f64>> = Toy2d::Ring
        .sample(&mut rng, n)
        .iter()
        .map(|p| p.to_vec())
        .collect();
    let floor: Vec<Vec<f64>> = Toy2d::Ring
        .sample(&mut rng, n)
        .iter()
        .map(|p| p.to_vec())
        .collect();
    let w2 = wasserstein2(&got, &truth)?;
    let w2_floor = wasserstein2(&floor, &truth)?;
    let gauss: Vec<Vec<f64>> = recompose_diffusion::random::normal_vec(&mut rng, 2 * n)
        .chunks(2)
        .map(|c| vec![f64::from(c[0]), f64::from(c[1])])
        .collect();
    let w2_gauss = wasserstein2(&gauss, &truth)?;
    let in_support = got
        .iter()
        .filter(|p| Toy2d::Ring.in_support([p[0], p[1]]))
        .count() as f64
        / n as f64;
    println!(
        "W2 model {w2:.4}, floor {w2_floor:.4}, N(0,I) {w2_gauss:.4}, in support {in_support:.3}"
    );
    // At n = 500 two exact samples are already ~0.115 apart (the modes' counts fluctuate), so
    // the model's W₂ is judged against that floor; the support fraction (within 3 std of a mode:
    // 0.989 for exact samples, ~0.03 for N(0, I)) shows the modes are sharp.
    assert!(w2 < 1.15 * w2_floor, "W2 {w2} vs floor {w2_floor}");
    assert!(w2 < 0.15 * w2_gauss);
    assert!(in_support > 0.4, "{in_support}");
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// The TOML example in README.md is a valid configuration, and a configuration survives a round
/// trip through TOML.
#[test]
fn readme_config_parses_and_round_trips() -> Result<()> {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))?;
    let start = readme.find("```toml\n").expect("a TOML block in README.md") + 8;
    let len = readme[start..].find("```").expect("closed block");
    let cfg = RunConfig::from_toml(&readme[start..start + len])?;
    assert!(matches!(cfg.model, ModelConfig::Unet(_)));
    assert_eq!(cfg.model_item_shape(), vec![3, 32, 32]);
    for name in recompose_diffusion::run::PRESET_NAMES {
        let p = RunConfig::preset(name)?;
        assert_eq!(RunConfig::from_toml(&p.to_toml()?)?, p);
    }
    assert!(RunConfig::preset("toy2d-moon").is_err());
    Ok(())
}

/// A tiny U-Net trains on a folder of PNG images through the same loop and samples back.
#[test]
fn unet_trains_on_an_image_folder() -> Result<()> {
    let dir = scratch("images");
    let images = dir.join("images");
    fs::create_dir_all(&images)?;
    for (i, colour) in [[255u8, 0, 0], [0, 0, 255]].iter().enumerate() {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb(*colour));
        img.save(images.join(format!("{i}.png")))?;
    }
    let toml = format!(
        "[model]\nkind = \"unet\"\nimage_size = 8\nmodel_channels = 16\nchannel_mult = [1, 2]\n\
         num_res_blocks = 1\nattention_resolutions = [4]\nnum_head_channels = 16\ncond_dim = 0\n\
         time_embed_dim = 32\n\n[data]\nkind = \"image_folder\"\ndir = \"{}\"\nsize = 8\n\n\
         [diffusion]\nnum_timesteps = 50\nprediction = \"v\"\n\n[train]\nsteps = 3\nbatch_size = 4\n",
        images.display()
    );
    let cfg = RunConfig::from_toml(&toml)?;
    let out = dir.join("run");
    let report = train_run(
        &cfg,
        &TrainOptions {
            out_dir: out.clone(),
            ..Default::default()
        },
        &Device::Cpu,
        &mut |_| {},
    )?;
    assert_eq!(report.end_step, 3);
    assert!(report.last_loss.is_finite());
    let trained = Trained::load(&out, &Device::Cpu)?;
    assert_eq!(trained.model.parameterization(), Parameterization::V);
    let x = sample(
        &trained.model as &dyn Denoiser,
        &trained.schedule,
        SamplerKind::Ddim { eta: 0.0 },
        5,
        &[2, 3, 8, 8],
        &Device::Cpu,
        &mut seeded(0),
    )?;
    assert_eq!(x.dims(), &[2, 3, 8, 8]);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// Trains `cfg` as one rank of `group` (or alone), writing into `dir` (halting after a step, or
/// resuming, as asked); the final variables.
fn train_rank(
    cfg: &RunConfig,
    dir: &Path,
    group: Option<recompose_core::collective::LocalGroup>,
    (halt_after, resume): (Option<usize>, bool),
) -> Result<Vec<(String, Vec<f32>)>> {
    let store = ParamStore::new(cfg.train.seed);
    let model = cfg.build_model(store.var_builder(DType::F32, &Device::Cpu))?;
    let data = cfg.dataset()?;
    let schedule = cfg.diffusion.schedule()?;
    let objective = DenoisingLoss::new(&model, &schedule);
    let opts = TrainOptions {
        out_dir: dir.to_path_buf(),
        halt_after,
        resume,
        parallel: group.map(|g| {
            std::sync::Arc::new(g) as std::sync::Arc<dyn recompose_core::collective::Collective>
        }),
        ..Default::default()
    };
    recompose_diffusion::train::train(
        &store,
        &objective,
        data.as_ref(),
        &cfg.train,
        &opts,
        &mut |_| {},
    )?;
    store
        .tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

/// Data-parallel training: a group of one is the single-process run, bit for bit (weights,
/// loss log, checkpoint); with two ranks (threads, gradients averaged by an all-reduce) the
/// replicas end equal, rank 1's batches change the result, rank 1 writes only its random
/// state, and a group cut between checkpoints resumes to exactly the uninterrupted result.
#[test]
fn data_parallel_training_is_the_single_run_for_one_rank_and_keeps_replicas_equal() -> Result<()> {
    use recompose_core::collective::LocalGroup;
    let cfg = small_ring_config(20);
    let single = scratch("dp-single");
    let alone = train_rank(&cfg, &single, None, (None, false))?;
    let one = scratch("dp-one");
    let grouped = train_rank(
        &cfg,
        &one,
        Some(LocalGroup::new(1)?.remove(0)),
        (None, false),
    )?;
    assert!(
        alone == grouped,
        "a group of one differs from the single process"
    );
    for f in ["model.safetensors", "loss.jsonl", "checkpoint/state.json"] {
        assert_eq!(read(&single.join(f))?, read(&one.join(f))?, "{f}");
    }

    // Two ranks as threads sharing one folder, as processes on one machine do (rank 0 writes the
    // run, rank 1 only its random state at each checkpoint).
    let two_ranks = |dir: &Path, run: (Option<usize>, bool)| -> Result<Vec<_>> {
        let ranks: Vec<_> = LocalGroup::new(2)?
            .into_iter()
            .map(|g| {
                let dir = dir.to_path_buf();
                let cfg = cfg.clone();
                std::thread::spawn(move || {
                    train_rank(&cfg, &dir, Some(g), run).map_err(|e| e.to_string())
                })
            })
            .collect();
        ranks
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)
    };
    let dir = scratch("dp-two");
    let finals = two_ranks(&dir, (None, false))?;
    assert!(finals[0] == finals[1], "the replicas drifted apart");
    assert!(finals[0] != alone, "rank 1's gradients did not count");
    // Rank 0's run files, and beside them rank 1's random state (the only file it writes).
    for f in [
        "model.safetensors",
        "loss.jsonl",
        "checkpoint/state.json",
        "rank-1.rng.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // Cut after step 15 (the last checkpoint at 10) and resumed: every rank continues its own
    // stream exactly, so the result is the uninterrupted one.
    let cut = scratch("dp-cut");
    two_ranks(&cut, (Some(15), false))?;
    let resumed = two_ranks(&cut, (None, true))?;
    assert!(
        resumed == finals,
        "a resumed group differs from an uninterrupted one"
    );
    assert_eq!(
        read(&cut.join("model.safetensors"))?,
        read(&dir.join("model.safetensors"))?
    );
    for d in [single, one, dir, cut] {
        let _ = fs::remove_dir_all(d);
    }
    Ok(())
}

/// A run's timestep law and loss weight travel through its configuration file (written only
/// when set), train to a finite loss and resume bit for bit; a band outside the schedule is a
/// configuration error before anything is written.
#[test]
fn timestep_law_and_loss_weight_run_and_resume() -> Result<()> {
    use recompose_diffusion::train::{LossWeight, TimestepSampling};
    let mut cfg = small_ring_config(20);
    cfg.train.timesteps = TimestepSampling::LogitNormal {
        mean: 0.5,
        std: 1.2,
    };
    cfg.train.loss_weight = Some(LossWeight {
        target: Parameterization::V,
        max: Some(50.0),
    });
    let text = cfg.to_toml()?;
    assert!(
        text.contains("logit_normal") && text.contains("loss_weight"),
        "{text}"
    );
    assert_eq!(RunConfig::from_toml(&text)?, cfg);
    let plain = small_ring_config(20).to_toml()?;
    assert!(
        !plain
            .lines()
            .any(|l| l.starts_with("timesteps") || l.starts_with("loss_weight")),
        "{plain}"
    );

    let full = scratch("weighted-full");
    let cut = scratch("weighted-cut");
    let opts = |dir: &Path| TrainOptions {
        out_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let report = train_run(&cfg, &opts(&full), &Device::Cpu, &mut |_| {})?;
    assert!(report.last_loss.is_finite());
    train_run(
        &cfg,
        &TrainOptions {
            halt_after: Some(10),
            ..opts(&cut)
        },
        &Device::Cpu,
        &mut |_| {},
    )?;
    train_run(
        &cfg,
        &TrainOptions {
            resume: true,
            ..opts(&cut)
        },
        &Device::Cpu,
        &mut |_| {},
    )?;
    assert_eq!(
        read(&full.join("model.safetensors"))?,
        read(&cut.join("model.safetensors"))?
    );

    let mut bad = small_ring_config(5);
    bad.train.timesteps = TimestepSampling::Range { min: 10, max: 5000 };
    let dir = scratch("bad-band");
    let err = train_run(&bad, &opts(&dir), &Device::Cpu, &mut |_| {})
        .err()
        .ok_or_else(|| anyhow::anyhow!("the band beyond the schedule was accepted"))?;
    assert!(
        matches!(err, recompose_diffusion::Error::Config(_)),
        "{err}"
    );
    assert!(!dir.exists());
    for d in [full, cut] {
        let _ = fs::remove_dir_all(d);
    }
    Ok(())
}
