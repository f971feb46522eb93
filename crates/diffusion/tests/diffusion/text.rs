//! Text conditioning end to end: a word-level tokenizer saved and loaded back, its encodings
//! fed to the text encoder, the encoder trained with the crate's AdamW under a model's prefix,
//! and its weights saved to safetensors and loaded into a fresh store.

use std::fs;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use recompose_diffusion::nn::ParamStore;
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::text::{TextEncoder, TextEncoderConfig, TextTokenizer};
use recompose_diffusion::train::{AdamW, AdamWConfig, read_safetensors, write_safetensors};
use recompose_diffusion::{Error, seeded};

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("recompose-text-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

const WORDS: [&str; 8] = [
    "red", "green", "blue", "circle", "square", "triangle", "and", "not",
];

/// Prompts that a person typed go through the strict encoding: a typo is an error naming the
/// word, before any model runs.
#[test]
fn typos_fail_before_the_model_runs() -> Result<()> {
    let tokenizer = TextTokenizer::word_level(WORDS, 8)?;
    let err = tokenizer
        .encode_strict(&["red circle AND NOT blue sqaure"])
        .unwrap_err();
    assert!(matches!(err, Error::Tokenizer(_)) && err.is_bad_input());
    assert!(err.to_string().contains("\"sqaure\""), "{err}");
    Ok(())
}

/// Tokenizer file → encodings → encoder under the prefix `text_encoder`; twenty AdamW steps
/// pull the pooled vectors of three prompts towards fixed targets (the loss falls by half);
/// the weights round-trip through safetensors into a fresh store and give the same states.
#[test]
fn tokenizer_and_encoder_train_and_round_trip() -> Result<()> {
    let dir = scratch("roundtrip")?;
    let dev = Device::Cpu;
    let path = dir.join("tokenizer.json");
    TextTokenizer::word_level(WORDS, 8)?.save(&path)?;
    let tokenizer = TextTokenizer::from_file(&path)?;
    let prompts = [
        "red circle",
        "green triangle and not blue square",
        "Blue  SQUARE",
    ];
    let encoded = tokenizer.encode_strict(&prompts)?;
    let (ids, mask) = (encoded.ids_tensor(&dev)?, encoded.mask_tensor(&dev)?);

    let config = TextEncoderConfig {
        width: 32,
        ..TextEncoderConfig::small(tokenizer.vocab_size(), tokenizer.max_len())
    };
    let store = ParamStore::new(3);
    let encoder = TextEncoder::new(
        &config,
        store.var_builder(DType::F32, &dev).pp("text_encoder"),
    )?;
    assert_eq!(store.num_params(), config.num_params());
    assert!(
        store
            .vars()
            .iter()
            .all(|(name, _)| name.starts_with("text_encoder."))
    );
    let target = normal_tensor(&mut seeded(4), &[3, config.width], DType::F32, &dev)?;
    let loss_of = |encoder: &TextEncoder| -> Result<Tensor> {
        Ok((encoder.pooled(&ids, &mask)? - &target)?
            .sqr()?
            .mean_all()?)
    };
    let mut opt = AdamW::new(store.vars(), AdamWConfig::default())?;
    let first = loss_of(&encoder)?.to_scalar::<f32>()?;
    for _ in 0..20 {
        let grads = loss_of(&encoder)?.backward()?;
        opt.step(&grads, 1e-2, 1.0)?;
    }
    let last = loss_of(&encoder)?.to_scalar::<f32>()?;
    assert!(last < 0.5 * first, "loss {first} → {last}");

    let weights = dir.join("text_encoder.safetensors");
    write_safetensors(&weights, &store.tensors().into_iter().collect::<Vec<_>>())?;
    let fresh = ParamStore::new(99);
    let reloaded = TextEncoder::new(
        &config,
        fresh.var_builder(DType::F32, &dev).pp("text_encoder"),
    )?;
    let before = reloaded.encode(&encoded)?;
    fresh.assign(
        &read_safetensors(&weights, None, &dev)?,
        "text_encoder.safetensors",
    )?;
    let (a, b) = (encoder.encode(&encoded)?, reloaded.encode(&encoded)?);
    let diff = |x: &Tensor, y: &Tensor| -> Result<f32> {
        Ok((x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    };
    assert_eq!(diff(&a, &b)?, 0.0);
    assert!(diff(&a, &before)? > 1e-3);
    // The normalized prompt gets the states of its plain spelling (alone in its batch: equal
    // up to the rounding of another matrix-product blocking).
    let plain = encoder.encode(&tokenizer.encode_strict(&["blue square"])?)?;
    assert!(diff(&a.get(2)?, &plain.get(0)?)? < 1e-5);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// A captioned folder trains a text-conditioned U-Net through the ordinary training loop: the
/// captions reach the model with each batch (condition dropout included), the denoising loss
/// on a fixed held-out draw falls, and the two prompts lead to different predictions of the
/// same noisy image.
#[test]
fn a_text_conditioned_unet_trains_on_a_captioned_folder() -> Result<()> {
    use recompose_diffusion::data::Dataset;
    use recompose_diffusion::data::{CaptionedImages, ImageFolderConfig};
    use recompose_diffusion::nn::UNetConfig;
    use recompose_diffusion::text::{TextUNet, TextUNetConfig};
    use recompose_diffusion::train::{DenoisingLoss, Objective, TrainConfig, TrainOptions};
    use recompose_diffusion::{Denoiser, Parameterization};

    // Eight 8×8 images: red ones on the left half, blue ones on the right half.
    let dir = scratch("captioned-train")?;
    let mut lines = String::new();
    for i in 0..8 {
        let red = i % 2 == 0;
        let img = image::RgbImage::from_fn(8, 8, |x, _| {
            let on = if red { x < 4 } else { x >= 4 };
            match (on, red) {
                (false, _) => image::Rgb([0, 0, 0]),
                (true, true) => image::Rgb([230, 30, 30]),
                (true, false) => image::Rgb([30, 30, 230]),
            }
        });
        let file = format!("image_{i:05}.png");
        img.save(dir.join(&file))?;
        let caption = if red { "red" } else { "blue" };
        lines.push_str(&format!(
            "{{\"file\": \"{file}\", \"captions\": [\"{caption}\"]}}\n"
        ));
    }
    fs::write(dir.join("captions.jsonl"), lines)?;
    let tokenizer = TextTokenizer::word_level(["red", "blue"], 4)?;
    let folder = ImageFolderConfig {
        size: 8,
        ..ImageFolderConfig::default()
    };
    let data = CaptionedImages::open(&dir, &folder, &tokenizer, 0.1)?;
    let unet = UNetConfig {
        image_size: 8,
        in_channels: 3,
        out_channels: 3,
        model_channels: 16,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_resolutions: vec![],
        num_heads: 1,
        num_head_channels: None,
        num_groups: 8,
        time_embed_dim: 32,
        ..UNetConfig::default()
    };
    let cfg = TextUNetConfig::for_tokenizer(unet, &tokenizer)?;
    let store = ParamStore::new(4);
    let model = TextUNet::new(
        &cfg,
        Parameterization::Epsilon,
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    let schedule = recompose_diffusion::DiscreteSchedule::cosine(50, 0.008)?;
    let objective = DenoisingLoss::new(&model, &schedule);
    let held_out = |objective: &DenoisingLoss<TextUNet>| -> Result<f32> {
        let mut rng = seeded(77);
        let (x, ids) = data.sample_conditioned(&mut rng, 64, &Device::Cpu)?;
        Ok(objective
            .loss(&x, ids.as_ref(), &mut rng)?
            .to_scalar::<f32>()?)
    };
    let before = held_out(&objective)?;
    let train_cfg = TrainConfig {
        steps: 60,
        batch_size: 16,
        lr: 2e-3,
        checkpoint_every: 60,
        log_every: 10,
        ..TrainConfig::default()
    };
    let out = scratch("captioned-run")?;
    let opts = TrainOptions {
        out_dir: out.clone(),
        ..Default::default()
    };
    recompose_diffusion::train::train(&store, &objective, &data, &train_cfg, &opts, &mut |_| {})?;
    let after = held_out(&objective)?;
    assert!(after < 0.8 * before, "held-out loss {before} -> {after}");
    // The prompt matters: the same noisy images, captioned "red" or "blue".
    let x = normal_tensor(&mut seeded(5), &[2, 3, 8, 8], DType::F32, &Device::Cpu)?;
    let t = Tensor::new(&[25f32, 25.0], &Device::Cpu)?;
    let ids = |p: &str| tokenizer.encode_strict(&[p, p])?.ids_tensor(&Device::Cpu);
    let red = model.forward(&x, &t, Some(&ids("red")?))?;
    let blue = model.forward(&x, &t, Some(&ids("blue")?))?;
    let gap = (red - blue)?.abs()?.mean_all()?.to_scalar::<f32>()?;
    assert!(gap > 1e-3, "the prompts predict alike: {gap}");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&out);
    Ok(())
}

/// Writes `n` 8×8 images (red on the left half or blue on the right half), their captions and
/// a word-level tokenizer into a fresh directory.
fn captioned_folder(name: &str, n: usize) -> Result<PathBuf> {
    let dir = scratch(name)?;
    let mut lines = String::new();
    for i in 0..n {
        let red = i % 2 == 0;
        let img = image::RgbImage::from_fn(8, 8, |x, _| match ((x < 4) == red, red) {
            (false, _) => image::Rgb([0, 0, 0]),
            (true, true) => image::Rgb([230, 30, 30]),
            (true, false) => image::Rgb([30, 30, 230]),
        });
        let file = format!("image_{i:05}.png");
        img.save(dir.join(&file))?;
        let caption = if red { "red left" } else { "blue right" };
        lines.push_str(&format!(
            "{{\"file\": \"{file}\", \"captions\": [\"{caption}\", \"{}\"]}}\n",
            caption.split(' ').next().unwrap_or(caption)
        ));
    }
    fs::write(dir.join("captions.jsonl"), lines)?;
    TextTokenizer::word_level(["red", "blue", "left", "right"], 5)?
        .save(&dir.join("tokenizer.json"))?;
    Ok(dir)
}

/// A run configuration over captioned data trains a text-conditioned U-Net (score, and energy
/// with `diffusion.energy`), keeps the tokenizer in the run directory, and loads back as the
/// same model without the data.
#[test]
fn captioned_runs_train_and_load_back_as_text_models() -> Result<()> {
    use recompose_diffusion::Denoiser;
    use recompose_diffusion::run::{Model, RunConfig, Trained, train_run};
    use recompose_diffusion::train::TrainOptions;

    let data = captioned_folder("run-data", 6)?;
    // Score and energy models reading the pooled prompt vector, and a score model reading the
    // token states alone (cross-attention, no pooled vector).
    for (energy, reads) in [
        (None, ""),
        (Some("half_norm"), ""),
        (None, "cross_attention = true\npooled = false\n"),
    ] {
        let toml = format!(
            r#"
[model]
kind = "unet"
image_size = 8
in_channels = 3
out_channels = 3
model_channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = [4]
num_head_channels = 8
num_groups = 4
time_embed_dim = 16

[data]
kind = "captioned_folder"
dir = "{}"
size = 8
uncond_prob = 0.2

[text]
width = 16
layers = 1
heads = 2
{reads}
[diffusion]
num_timesteps = 20
{}

[train]
steps = 4
batch_size = 4
checkpoint_every = 4
log_every = 1
"#,
            data.display(),
            energy
                .map(|e| format!("energy = \"{e}\""))
                .unwrap_or_default()
        );
        let cfg = RunConfig::from_toml(&toml)?;
        assert!(cfg.is_text_conditioned());
        let out = scratch("run-out")?;
        let opts = TrainOptions {
            out_dir: out.clone(),
            ..Default::default()
        };
        train_run(&cfg, &opts, &Device::Cpu, &mut |_| {})?;
        assert!(out.join("tokenizer.json").is_file());
        // The data may go: the run directory holds everything the model needs.
        let moved = scratch("run-moved")?;
        fs::remove_dir_all(&moved)?;
        fs::rename(&out, &moved)?;
        let trained = Trained::load(&moved, &Device::Cpu)?;
        let Model::TextUnet(net) = &trained.model else {
            panic!(
                "a captioned run loads as a text model, got {:?}",
                trained.model
            );
        };
        assert_eq!(net.is_energy(), energy.is_some());
        assert_eq!(net.config().unet.cond_dim == 0, !reads.is_empty());
        let tokenizer = trained.tokenizer.as_ref().expect("tokenizer");
        let ids = tokenizer
            .encode_strict(&["red left", ""])?
            .ids_tensor(&Device::Cpu)?;
        let x = normal_tensor(&mut seeded(1), &[2, 3, 8, 8], DType::F32, &Device::Cpu)?;
        let t = Tensor::new(&[5f32, 5.0], &Device::Cpu)?;
        let y = trained.model.forward(&x, &t, Some(&ids))?;
        assert_eq!(y.dims(), [2, 3, 8, 8]);
        assert!(
            y.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite())
        );
        let _ = fs::remove_dir_all(&moved);
    }
    // Settings that do not fit together.
    let base = |extra: &str, data_kind: &str| {
        format!(
            "[model]\nkind = \"unet\"\n[data]\nkind = \"{data_kind}\"\ndir = \"{}\"\nsize = 32\n{extra}",
            data.display()
        )
    };
    for (text, want) in [
        (
            base("uncond_prob = 1.5\n", "captioned_folder"),
            "uncond_prob",
        ),
        (base("[text]\nwidth = 16\n", "image_folder"), "[text]"),
        (
            base("[text]\npooled = false\n", "captioned_folder"),
            "cross_attention",
        ),
    ] {
        let err = RunConfig::from_toml(&text).unwrap_err();
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
    let _ = fs::remove_dir_all(&data);
    Ok(())
}
