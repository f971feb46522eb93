//! The U-Net: bit-level agreement with the released PyTorch code of Decomp Diffusion on the
//! reference fixture (`fixtures/unet-reference/`, made with `cargo xtask fixtures reference`),
//! every variable trainable in every variant, seeded dropout, and errors for bad inputs and
//! configurations.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use recompose_diffusion::nn::{ParamStore, UNet, UNetConfig};
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::{Denoiser, Error, Parameterization, seeded};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/unet-reference")
        .join(name)
}

fn load(name: &str) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(fixture(name), &Device::Cpu)?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Every tensor of the reference file is a parameter of the model, with the model's shape, and
/// every parameter of the model is in the file.
#[test]
fn reference_weights_are_exactly_the_model_parameters() -> Result<()> {
    let weights = load("unet_small.safetensors")?;
    let store = ParamStore::new(0);
    UNet::new(
        &UNetConfig::decomp_small(),
        Parameterization::X0,
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    let model: BTreeMap<String, Vec<usize>> = store
        .vars()
        .into_iter()
        .map(|(k, v)| (k, v.dims().to_vec()))
        .collect();
    let file: BTreeMap<String, Vec<usize>> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let missing: Vec<_> = model.keys().filter(|k| !file.contains_key(*k)).collect();
    let extra: Vec<_> = file.keys().filter(|k| !model.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "model parameters not in the file: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "file tensors the model does not use: {extra:?}"
    );
    assert_eq!(model, file, "shapes differ");
    assert_eq!(store.num_params(), 710_051);
    // Loading into the store works too (the training path).
    store.assign(&weights, "unet_small.safetensors")?;
    Ok(())
}

/// The time embedding, the three per-factor predictions and their mean against the PyTorch
/// outputs.
#[test]
fn matches_the_released_pytorch_code() -> Result<()> {
    let dev = Device::Cpu;
    let weights = load("unet_small.safetensors")?;
    let io = load("io.safetensors")?;
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let model = UNet::new(&UNetConfig::decomp_small(), Parameterization::X0, vb)?;
    assert_eq!(model.parameterization(), Parameterization::X0);
    let (x_t, t, z) = (&io["x_t"], &io["t"], &io["z"]);
    let d = model.config().cond_dim;

    let mut errors = Vec::new();
    let temb = model.time_embedding(t)?;
    errors.push(("time_emb", max_abs_diff(&temb, &io["time_emb"])?));

    let mut outs = Vec::new();
    for k in 0..3 {
        let cond = z.narrow(1, k * d, d)?;
        let out = model.forward(x_t, t, Some(&cond))?;
        let name = format!("out_k{k}");
        errors.push((
            ["out_k0", "out_k1", "out_k2"][k],
            max_abs_diff(&out, &io[&name])?,
        ));
        outs.push(out);
    }
    let mean = ((&outs[0] + &outs[1])? + &outs[2])?.affine(1.0 / 3.0, 0.0)?;
    errors.push((
        "out_full (mean of out_k)",
        max_abs_diff(&mean, &io["out_full"])?,
    ));

    // The composed prediction as the released code computes it: one batch of B·K, rows b-major
    // (b0k0, b0k1, b0k2, b1k0, …), averaged over the factors.
    let (b, c, h, w) = x_t.dims4()?;
    let k = 3;
    let xs = x_t
        .unsqueeze(1)?
        .broadcast_as((b, k, c, h, w))?
        .reshape((b * k, c, h, w))?;
    let ts = t.unsqueeze(1)?.broadcast_as((b, k))?.reshape(b * k)?;
    let zs = z.reshape((b * k, d))?;
    let full = model
        .forward(&xs, &ts, Some(&zs))?
        .reshape((b, k, c, h, w))?
        .mean(1)?;
    errors.push((
        "out_full (batch of B·K)",
        max_abs_diff(&full, &io["out_full"])?,
    ));

    for (name, err) in &errors {
        eprintln!("max abs error {name}: {err:.3e}");
    }
    for (name, err) in &errors {
        assert!(*err <= 1e-4, "{name}: max abs error {err}");
    }
    Ok(())
}

/// The portable tensor-op path (taken for other dtypes and devices than `f32` on the CPU)
/// against PyTorch too: the same weights in `f64`.
#[test]
fn f64_model_matches_the_released_pytorch_code() -> Result<()> {
    let dev = Device::Cpu;
    let weights = load("unet_small.safetensors")?;
    let io = load("io.safetensors")?;
    let vb = VarBuilder::from_tensors(weights, DType::F64, &dev);
    let model = UNet::new(&UNetConfig::decomp_small(), Parameterization::X0, vb)?;
    let x_t = io["x_t"].to_dtype(DType::F64)?;
    let cond = io["z"].narrow(1, 32, 32)?.to_dtype(DType::F64)?;
    let out = model.forward(&x_t, &io["t"], Some(&cond))?;
    assert_eq!(out.dtype(), DType::F64);
    let err = max_abs_diff(&out.to_dtype(DType::F32)?, &io["out_k1"])?;
    eprintln!("max abs error out_k1 (f64 model): {err:.3e}");
    assert!(err <= 1e-4, "{err}");
    Ok(())
}

fn small_config(resblock_updown: bool, use_scale_shift_norm: bool) -> UNetConfig {
    UNetConfig {
        image_size: 16,
        in_channels: 3,
        out_channels: 3,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_resolutions: vec![16, 8],
        num_heads: 2,
        num_head_channels: None,
        num_groups: 4,
        dropout: 0.1,
        resblock_updown,
        use_scale_shift_norm,
        time_embed_dim: 16,
        cond_dim: 8,
        coord_channels: false,
        context_dim: 0,
    }
}

/// Moves every variable off its initial value (zero-initialized layers block the gradient to
/// everything upstream of them).
fn perturb(store: &ParamStore, seed: u64) -> Result<()> {
    let mut rng = seeded(seed);
    for (_, var) in store.vars() {
        let noise = normal_tensor(&mut rng, var.dims(), DType::F32, &Device::Cpu)?;
        var.set(&(var.as_tensor() + (noise * 0.1)?)?)?;
    }
    Ok(())
}

fn inputs(cfg: &UNetConfig, batch: usize, seed: u64) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    let mut rng = seeded(seed);
    let s = cfg.image_size;
    let x = normal_tensor(&mut rng, &[batch, cfg.in_channels, s, s], DType::F32, &dev)?;
    let t = Tensor::from_vec(
        (0..batch)
            .map(|i| (i * 137 % 1000) as f32)
            .collect::<Vec<_>>(),
        batch,
        &dev,
    )?;
    let z = normal_tensor(&mut rng, &[batch, cfg.cond_dim], DType::F32, &dev)?;
    Ok((x, t, z))
}

#[test]
fn every_variable_gets_a_gradient_in_every_variant() -> Result<()> {
    for updown in [true, false] {
        for scale_shift in [false, true] {
            let cfg = small_config(updown, scale_shift);
            let store = ParamStore::new(7);
            let model = UNet::new(
                &cfg,
                Parameterization::Epsilon,
                store.var_builder(DType::F32, &Device::Cpu),
            )?;
            perturb(&store, 8)?;
            let (x, t, z) = inputs(&cfg, 2, 9)?;
            let mut rng = seeded(10);
            let out = model.forward_with(&x, &t, Some(&z), Some(&mut rng))?;
            assert_eq!(out.dims(), x.dims());
            let grads = out.sqr()?.mean_all()?.backward()?;
            for (name, var) in store.vars() {
                let g = grads.get(var.as_tensor()).unwrap_or_else(|| {
                    panic!("updown {updown}, scale-shift {scale_shift}: {name} has no gradient")
                });
                let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
                assert!(
                    norm > 0.0 && norm.is_finite(),
                    "updown {updown}, scale-shift {scale_shift}: {name} has gradient norm² {norm}"
                );
            }
        }
    }
    Ok(())
}

/// The gradient of a loss along a random direction of all parameters against a central finite
/// difference, for both resampling variants (scale-shift norm on one of them).
#[test]
fn gradients_match_finite_differences() -> Result<()> {
    for (updown, scale_shift) in [(true, false), (false, true)] {
        let cfg = UNetConfig {
            dropout: 0.0,
            ..small_config(updown, scale_shift)
        };
        let store = ParamStore::new(21);
        let model = UNet::new(
            &cfg,
            Parameterization::Epsilon,
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        perturb(&store, 22)?;
        let (x, t, z) = inputs(&cfg, 2, 23)?;
        let probe = normal_tensor(&mut seeded(24), x.dims(), DType::F32, &Device::Cpu)?;
        let loss = |m: &UNet| -> Result<f64> {
            let out = m.forward(&x, &t, Some(&z))?;
            Ok(f64::from((out * &probe)?.sum_all()?.to_scalar::<f32>()?))
        };
        let grads = (model.forward(&x, &t, Some(&z))? * &probe)?
            .sum_all()?
            .backward()?;
        // A random direction v over all parameters and the directional derivative ⟨∇L, v⟩.
        let mut rng = seeded(25);
        let mut directional = 0f64;
        let mut dirs = Vec::new();
        for (name, var) in store.vars() {
            let v = normal_tensor(&mut rng, var.dims(), DType::F32, &Device::Cpu)?;
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            directional += f64::from((g * &v)?.sum_all()?.to_scalar::<f32>()?);
            dirs.push((var, v));
        }
        let eps = 1e-4;
        let shift = |sign: f64| -> Result<()> {
            for (var, v) in &dirs {
                var.set(&(var.as_tensor() + (v * sign)?)?)?;
            }
            Ok(())
        };
        shift(eps)?;
        let plus = loss(&model)?;
        shift(-2.0 * eps)?;
        let minus = loss(&model)?;
        shift(eps)?;
        let numeric = (plus - minus) / (2.0 * eps);
        let rel = (numeric - directional).abs() / directional.abs().max(1e-3);
        eprintln!(
            "updown {updown}, scale-shift {scale_shift}: autograd {directional:.5}, finite \
             difference {numeric:.5}, relative error {rel:.2e}"
        );
        assert!(rel < 1e-2, "relative error {rel}");
    }
    Ok(())
}

#[test]
fn dropout_is_seeded_in_train_mode_and_off_in_eval_mode() -> Result<()> {
    let cfg = UNetConfig {
        dropout: 0.3,
        ..small_config(true, false)
    };
    let store = ParamStore::new(1);
    let model = UNet::new(
        &cfg,
        Parameterization::X0,
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    perturb(&store, 2)?;
    let (x, t, z) = inputs(&cfg, 3, 3)?;
    let train = |seed: u64| -> Result<Tensor> {
        let mut rng = seeded(seed);
        Ok(model.forward_with(&x, &t, Some(&z), Some(&mut rng))?)
    };
    let (a, b, c) = (train(4)?, train(4)?, train(5)?);
    assert_eq!(max_abs_diff(&a, &b)?, 0.0, "same seed, different output");
    assert!(max_abs_diff(&a, &c)? > 1e-4, "dropout had no effect");

    let eval = model.forward(&x, &t, Some(&z))?;
    assert_eq!(max_abs_diff(&eval, &model.forward(&x, &t, Some(&z))?)?, 0.0);
    assert!(max_abs_diff(&eval, &a)? > 1e-4);
    // Eval mode equals a model built without dropout on the same weights.
    let no_dropout = UNet::new(
        &UNetConfig {
            dropout: 0.0,
            ..cfg.clone()
        },
        Parameterization::X0,
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    let mut rng = seeded(4);
    let plain = no_dropout.forward_with(&x, &t, Some(&z), Some(&mut rng))?;
    assert_eq!(max_abs_diff(&eval, &plain)?, 0.0);
    Ok(())
}

#[test]
fn bad_inputs_are_shape_errors() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = small_config(true, false);
    let store = ParamStore::new(0);
    let model = UNet::new(
        &cfg,
        Parameterization::X0,
        store.var_builder(DType::F32, &dev),
    )?;
    let (x, t, z) = inputs(&cfg, 2, 0)?;
    let shape_err = |r: recompose_diffusion::Result<Tensor>, what: &str| match r {
        Err(Error::Shape(msg)) => assert!(msg.contains(what), "{msg} does not name {what}"),
        other => panic!("expected a shape error naming {what}, got {other:?}"),
    };
    model.forward(&x, &t, Some(&z))?;
    let x4 = Tensor::zeros((2, 4, 16, 16), DType::F32, &dev)?;
    shape_err(model.forward(&x4, &t, Some(&z)), "x_t");
    let x8 = Tensor::zeros((2, 3, 8, 8), DType::F32, &dev)?;
    shape_err(model.forward(&x8, &t, Some(&z)), "x_t");
    let x3 = Tensor::zeros((3, 16, 16), DType::F32, &dev)?;
    shape_err(model.forward(&x3, &t, Some(&z)), "x_t");
    shape_err(model.forward(&x, &t.narrow(0, 0, 1)?, Some(&z)), "t");
    shape_err(model.forward(&x, &t, None), "cond");
    shape_err(model.forward(&x, &t, Some(&z.narrow(1, 0, 4)?)), "cond");
    shape_err(model.forward(&x, &t, Some(&z.narrow(0, 0, 1)?)), "cond");
    assert!(matches!(
        model.time_embedding(&t.unsqueeze(1)?),
        Err(Error::Shape(_))
    ));

    let uncond = UNetConfig {
        cond_dim: 0,
        ..cfg.clone()
    };
    let store = ParamStore::new(0);
    let model = UNet::new(
        &uncond,
        Parameterization::X0,
        store.var_builder(DType::F32, &dev),
    )?;
    assert_eq!(model.forward(&x, &t, None)?.dims(), x.dims());
    shape_err(model.forward(&x, &t, Some(&z)), "cond");
    Ok(())
}

#[test]
fn bad_configurations_are_config_errors() -> Result<()> {
    let base = UNetConfig::decomp_small();
    base.validate()?;
    UNetConfig::decomp_tiny().validate()?;
    let cases: Vec<(&str, UNetConfig)> = vec![
        (
            "model_channels",
            UNetConfig {
                model_channels: 0,
                ..base.clone()
            },
        ),
        (
            "image_size",
            UNetConfig {
                image_size: 0,
                ..base.clone()
            },
        ),
        (
            "num_groups",
            UNetConfig {
                num_groups: 0,
                ..base.clone()
            },
        ),
        (
            "time_embed_dim",
            UNetConfig {
                time_embed_dim: 0,
                ..base.clone()
            },
        ),
        (
            "channel_mult",
            UNetConfig {
                channel_mult: vec![],
                ..base.clone()
            },
        ),
        (
            "channel_mult",
            UNetConfig {
                channel_mult: vec![1, 0],
                ..base.clone()
            },
        ),
        // 24 channels in 16 groups.
        (
            "num_groups",
            UNetConfig {
                model_channels: 24,
                ..base.clone()
            },
        ),
        // 32-channel attention (tiny has 16 and 32 channels) with 64 channels per head.
        (
            "num_head_channels",
            UNetConfig {
                model_channels: 16,
                ..base.clone()
            },
        ),
        (
            "num_heads",
            UNetConfig {
                num_heads: 3,
                num_head_channels: None,
                ..base.clone()
            },
        ),
        (
            "image_size",
            UNetConfig {
                image_size: 30,
                channel_mult: vec![1, 2, 2],
                ..base.clone()
            },
        ),
        (
            "attention",
            UNetConfig {
                attention_resolutions: vec![16, 0],
                ..base.clone()
            },
        ),
        (
            "dropout",
            UNetConfig {
                dropout: 1.0,
                ..base.clone()
            },
        ),
    ];
    for (what, cfg) in cases {
        match cfg.validate() {
            Err(Error::Config(msg)) => assert!(msg.contains(what), "{msg} does not name {what}"),
            other => panic!("{cfg:?}: expected a config error naming {what}, got {other:?}"),
        }
        let store = ParamStore::new(0);
        assert!(matches!(
            UNet::new(
                &cfg,
                Parameterization::X0,
                store.var_builder(DType::F32, &Device::Cpu)
            ),
            Err(Error::Config(_))
        ));
    }
    Ok(())
}

#[test]
fn config_round_trips_through_json() -> Result<()> {
    let cfg = UNetConfig {
        num_head_channels: None,
        use_scale_shift_norm: true,
        ..UNetConfig::decomp_small()
    };
    let text = serde_json::to_string(&cfg)?;
    let back: UNetConfig = serde_json::from_str(&text)?;
    assert_eq!(back, cfg);
    // Missing fields take the defaults of `decomp_small`; unknown fields are refused.
    let partial: UNetConfig = serde_json::from_str(r#"{"model_channels": 16}"#)?;
    assert_eq!(partial.model_channels, 16);
    assert_eq!(partial.channel_mult, vec![1, 2]);
    assert!(serde_json::from_str::<UNetConfig>(r#"{"modelchannels": 16}"#).is_err());
    Ok(())
}

/// A block count read from a file is bounded before the layout walks every block (the fuzz
/// target `run-config` spent over 10 s validating `num_res_blocks = 4294967296`).
#[test]
fn validate_bounds_the_block_count() {
    let mut c = UNetConfig::decomp_tiny();
    c.num_res_blocks = 1 << 32;
    let err = c.validate().expect_err("too many blocks");
    assert!(
        err.is_bad_input() && err.to_string().contains("num_res_blocks"),
        "{err}"
    );
    c.num_res_blocks = UNetConfig::MAX_RES_BLOCKS;
    assert!(c.validate().is_ok());
}
