//! The fuzz targets: each hands one input to the public reader it names, as a file where the
//! reader takes a path, and classifies the outcome.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use recompose_compose::expr;
use recompose_decomp::problem::{Problem, ProblemConfig};
use recompose_decomp_diffusion::{DecompConfig, DecompRunConfig, DecompTrained, render};
use recompose_diffusion::data::{ValueRange, load_png};
use recompose_diffusion::nn::{MlpConfig, ParamStore};
use recompose_diffusion::run::{DataConfig, ModelConfig, RunConfig, Trained};
use recompose_diffusion::train::{
    Manifest, TrainOptions, read_model_weights, read_safetensors, write_safetensors,
};

use super::mutate::Format;

/// What a reader made of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The input was read.
    Accepted,
    /// The reader refused the input with an error about the input (`is_bad_input()`).
    Rejected(String),
    /// The reader failed with an error that does not say the input is bad: a malformed file
    /// reported as an internal failure (exit status 1 instead of 2 in the CLI).
    Internal(String),
    /// The reader accepted the input but broke a property of its output (non-finite weights
    /// loaded, for one).
    Violation(String),
}

/// A fuzz target.
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// The reader it calls.
    pub reader: &'static str,
    /// What its inputs are.
    pub format: Format,
    /// Makes the scratch directory ready and returns the seed inputs.
    pub prepare: fn(&Scratch) -> Result<Vec<Vec<u8>>>,
    /// Hands one input to the reader.
    pub run: fn(&Scratch, &[u8]) -> Verdict,
}

/// Every target, in report order.
pub const TARGETS: [Target; 9] = [
    Target {
        name: "problem",
        reader: "recompose_decomp::problem::Problem::load",
        format: Format::Safetensors,
        prepare: problem_seeds,
        run: problem,
    },
    Target {
        name: "safetensors",
        reader: "recompose_diffusion::train::read_safetensors (without and with a sidecar manifest)",
        format: Format::Safetensors,
        prepare: safetensors_seeds,
        run: safetensors,
    },
    Target {
        name: "trained",
        reader: "recompose_diffusion::run::Trained::load (model.safetensors of an MLP run)",
        format: Format::Safetensors,
        prepare: trained_seeds,
        run: trained,
    },
    Target {
        name: "sidecar",
        reader: "recompose_diffusion::train::read_model_weights (model.json)",
        format: Format::Text,
        prepare: sidecar_seeds,
        run: sidecar,
    },
    Target {
        name: "checkpoint",
        reader: "recompose_diffusion::run::train_run with resume (checkpoint/state.json)",
        format: Format::Text,
        prepare: checkpoint_seeds,
        run: checkpoint,
    },
    Target {
        name: "decomp-trained",
        reader: "recompose_decomp_diffusion::DecompTrained::load (model.safetensors)",
        format: Format::Safetensors,
        prepare: decomp_trained_seeds,
        run: decomp_trained,
    },
    Target {
        name: "run-config",
        reader: "recompose_diffusion::run::Registry::from_toml (both run families), \
                 recompose_decomp_diffusion::DecompConfig::from_toml",
        format: Format::Text,
        prepare: run_config_seeds,
        run: run_config,
    },
    Target {
        name: "expr",
        reader: "recompose_compose::expr::parse",
        format: Format::Text,
        prepare: expr_seeds,
        run: expr,
    },
    Target {
        name: "png",
        reader: "recompose_diffusion::data::load_png, recompose_decomp_diffusion::render::load_rgb_png",
        format: Format::Png,
        prepare: png_seeds,
        run: png,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A target's private directory for the files its readers open, and the state its
/// preparation keeps there (the sidecar manifest of the safetensors target, the checkpoint
/// template).
pub struct Scratch {
    /// The directory.
    pub dir: PathBuf,
    /// The workspace root (for seeds taken from `fixtures/`).
    pub root: PathBuf,
    manifest: std::sync::OnceLock<Manifest>,
    template: std::sync::OnceLock<Vec<u8>>,
}

impl Scratch {
    /// A fresh scratch directory `dir` (emptied).
    pub fn new(dir: PathBuf, root: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            root,
            manifest: std::sync::OnceLock::new(),
            template: std::sync::OnceLock::new(),
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `bytes` to `name` in the directory; a write failure is the harness's, so it
    /// panics.
    fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.file(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("scratch directory");
        }
        std::fs::write(&path, bytes).expect("scratch file");
        path
    }
}

/// Classifies a library result by its error's own bad-input flag.
fn verdict<T, E: std::fmt::Display>(r: std::result::Result<T, E>, bad: fn(&E) -> bool) -> Verdict {
    match r {
        Ok(_) => Verdict::Accepted,
        Err(e) if bad(&e) => Verdict::Rejected(e.to_string()),
        Err(e) => Verdict::Internal(e.to_string()),
    }
}

/// The first of several verdicts that is not an acceptance or a rejection, else the first one.
fn worst(vs: Vec<Verdict>) -> Verdict {
    vs.iter()
        .find(|v| matches!(v, Verdict::Internal(_) | Verdict::Violation(_)))
        .or(vs.first())
        .cloned()
        .unwrap_or(Verdict::Accepted)
}

fn diffusion_bad(e: &recompose_diffusion::Error) -> bool {
    e.is_bad_input()
}

fn decomp_diffusion_bad(e: &recompose_decomp_diffusion::Error) -> bool {
    e.is_bad_input()
}

/// The tensors of a safetensors buffer that hold a non-finite float, if it parses.
fn non_finite_tensors(bytes: &[u8]) -> Vec<String> {
    let Ok(map) = candle_core::safetensors::load_buffer(bytes, &Device::Cpu) else {
        return Vec::new();
    };
    let mut bad: Vec<String> = map
        .into_iter()
        .filter(|(_, t)| t.dtype().is_float())
        .filter(|(_, t)| {
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .is_ok_and(|v| v.iter().any(|x| !x.is_finite()))
        })
        .map(|(n, _)| n)
        .collect();
    bad.sort();
    bad
}

// --- problem files -------------------------------------------------------------------------

fn problem_seeds(s: &Scratch) -> Result<Vec<Vec<u8>>> {
    let mut seeds = Vec::new();
    for cfg in [
        ProblemConfig::map(32, 2, 3, 2, 1),
        ProblemConfig {
            vsa: recompose_vsa::planes::VsaKind::Fhrr,
            ..ProblemConfig::map(16, 3, 2, 1, 2)
        },
    ] {
        let path = s.file("seed.safetensors");
        Problem::generate(&cfg, &Device::Cpu)?.save(&path)?;
        seeds.push(std::fs::read(&path)?);
    }
    seeds.push(std::fs::read(
        s.root.join("fixtures/problem-fhrr-d256-f3-m6.safetensors"),
    )?);
    Ok(seeds)
}

fn problem(s: &Scratch, input: &[u8]) -> Verdict {
    let path = s.put("problem.safetensors", input);
    match Problem::load(&path, &Device::Cpu) {
        Ok(p) => {
            let finite = |t: &Tensor| {
                t.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .is_ok_and(|v| v.iter().all(|x| x.is_finite()))
            };
            if finite(&p.codebooks) && finite(&p.bound) {
                Verdict::Accepted
            } else {
                Verdict::Violation("a problem with non-finite values was loaded".into())
            }
        }
        Err(e) if e.is_bad_input() => Verdict::Rejected(e.to_string()),
        Err(e) => Verdict::Internal(e.to_string()),
    }
}

// --- safetensors with and without a manifest -------------------------------------------------

fn safetensors_seeds(s: &Scratch) -> Result<Vec<Vec<u8>>> {
    let dev = Device::Cpu;
    let a = Tensor::arange(0f32, 12.0, &dev)?.reshape((3, 4))?;
    let b = Tensor::new(&[1i64, -2, 3], &dev)?;
    let c = Tensor::new(&[7u8, 8], &dev)?;
    let d = Tensor::new(&[0.5f64], &dev)?;
    let path = s.file("seed.safetensors");
    let manifest = write_safetensors(
        &path,
        &[
            ("a".into(), a.clone()),
            ("b".into(), b),
            ("c".into(), c),
            ("d".into(), d),
        ],
    )?;
    let first = std::fs::read(&path)?;
    let _ = s.manifest.set(manifest);
    write_safetensors(&path, &[("only".into(), a.to_dtype(DType::F16)?)])?;
    let second = std::fs::read(&path)?;
    Ok(vec![first, second])
}

fn safetensors(s: &Scratch, input: &[u8]) -> Verdict {
    let path = s.put("file.safetensors", input);
    let plain = verdict(read_safetensors(&path, None, &Device::Cpu), diffusion_bad);
    let checked = verdict(
        read_safetensors(&path, s.manifest.get(), &Device::Cpu),
        diffusion_bad,
    );
    worst(vec![plain, checked])
}

// --- trained denoiser weights ----------------------------------------------------------------

/// A run small enough to build thousands of times a second.
fn tiny_run() -> RunConfig {
    let mut cfg = RunConfig::toy2d(recompose_diffusion::data::Toy2d::Ring);
    cfg.model = ModelConfig::Mlp(MlpConfig {
        data_dim: 2,
        hidden: 8,
        block_hidden: 8,
        num_blocks: 1,
        time_embed_dim: 4,
        num_timesteps: 10,
    });
    cfg.diffusion.num_timesteps = 10;
    cfg.data = DataConfig::Toy2d {
        name: "ring".into(),
    };
    cfg.train.steps = 2;
    cfg.train.batch_size = 8;
    cfg.train.checkpoint_every = 1;
    cfg.train.log_every = 1;
    cfg
}

/// The weights of the tiny run's model as a safetensors file, and its manifest.
fn tiny_weights(s: &Scratch) -> Result<(Vec<u8>, Manifest)> {
    let cfg = tiny_run();
    let store = ParamStore::new(3);
    cfg.build_model(store.var_builder(DType::F32, &Device::Cpu))?;
    let tensors: Vec<(String, Tensor)> = store
        .vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let path = s.file("seed.safetensors");
    let manifest = write_safetensors(&path, &tensors)?;
    Ok((std::fs::read(&path)?, manifest))
}

fn trained_seeds(s: &Scratch) -> Result<Vec<Vec<u8>>> {
    s.put("run/config.toml", tiny_run().to_toml()?.as_bytes());
    Ok(vec![tiny_weights(s)?.0])
}

fn trained(s: &Scratch, input: &[u8]) -> Verdict {
    s.put("run/model.safetensors", input);
    match Trained::load(&s.file("run"), &Device::Cpu) {
        Ok(_) => match non_finite_tensors(input).first() {
            Some(name) => Verdict::Violation(format!("non-finite weights in `{name}` loaded")),
            None => Verdict::Accepted,
        },
        Err(e) if e.is_bad_input() => Verdict::Rejected(e.to_string()),
        Err(e) => Verdict::Internal(e.to_string()),
    }
}

fn sidecar_seeds(s: &Scratch) -> Result<Vec<Vec<u8>>> {
    let (weights, manifest) = tiny_weights(s)?;
    s.put("run/model.safetensors", &weights);
    Ok(vec![serde_json::to_vec_pretty(&manifest)?])
}

fn sidecar(s: &Scratch, input: &[u8]) -> Verdict {
    s.put("run/model.json", input);
    verdict(
        read_model_weights(&s.file("run"), &Device::Cpu),
        diffusion_bad,
    )
}

// --- training checkpoints ---------------------------------------------------------------------

fn checkpoint_seeds(s: &Scratch) -> Result<Vec<Vec<u8>>> {
    let out = s.file("template");
    let _ = std::fs::remove_dir_all(&out);
    let opts = TrainOptions {
        out_dir: out.clone(),
        halt_after: Some(1),
        ..Default::default()
    };
    recompose_diffusion::run::train_run(&tiny_run(), &opts, &Device::Cpu, &mut |_| {})?;
    let state = std::fs::read(out.join("checkpoint/state.json"))?;
    let _ = s
        .template
        .set(std::fs::read(out.join("checkpoint/state.safetensors"))?);
    Ok(vec![state])
}

fn checkpoint(s: &Scratch, input: &[u8]) -> Verdict {
    let out = s.file("resume");
    let _ = std::fs::remove_dir_all(&out);
    s.put("resume/checkpoint/state.json", input);
    s.put(
        "resume/checkpoint/state.safetensors",
        s.template.get().map_or(&[][..], Vec::as_slice),
    );
    // The loss log the checkpoint records the length of (a resume cuts the log back to it).
    for log in ["loss.jsonl", "loss.csv"] {
        if let Ok(bytes) = std::fs::read(s.file("template").join(log)) {
            s.put(&format!("resume/{log}"), &bytes);
        }
    }
    let opts = TrainOptions {
        out_dir: out,
        resume: true,
        ..Default::default()
    };
    verdict(
        recompose_diffusion::run::train_run(&tiny_run(), &opts, &Device::Cpu, &mut |_| {}),
        diffusion_bad,
    )
}

// --- Decomp Diffusion weights -----------------------------------------------------------------

fn decomp_trained_seeds(s: &Scratch) -> Result<Vec<Vec<u8>>> {
    let fixture = s.root.join("fixtures/decomp-tetrominoes");
    s.put(
        "run/config.toml",
        &std::fs::read(fixture.join("config.toml"))?,
    );
    Ok(vec![std::fs::read(fixture.join("model.safetensors"))?])
}

fn decomp_trained(s: &Scratch, input: &[u8]) -> Verdict {
    s.put("run/model.safetensors", input);
    match DecompTrained::load(&s.file("run"), &Device::Cpu) {
        Ok(_) => match non_finite_tensors(input).first() {
            Some(name) => Verdict::Violation(format!("non-finite weights in `{name}` loaded")),
            None => Verdict::Accepted,
        },
        Err(e) if e.is_bad_input() => Verdict::Rejected(e.to_string()),
        Err(e) => Verdict::Internal(e.to_string()),
    }
}

// --- run configurations -----------------------------------------------------------------------

fn registry() -> recompose_diffusion::run::Registry {
    recompose_diffusion::run::Registry::new()
        .with(DecompRunConfig::FAMILY)
        .expect("the two families have distinct tables")
}

fn run_config_seeds(s: &Scratch) -> Result<Vec<Vec<u8>>> {
    let reg = registry();
    let mut seeds = Vec::new();
    for name in reg.preset_names() {
        seeds.push(reg.preset(name)?.to_toml()?.into_bytes());
    }
    let mut unet = tiny_run();
    unet.model = ModelConfig::Unet(recompose_diffusion::nn::UNetConfig::decomp_tiny());
    seeds.push(unet.to_toml()?.into_bytes());
    seeds.push(tiny_run().to_toml()?.into_bytes());
    // The model file of `recompose decomp --config`.
    seeds.push(
        b"image_size = 16\nnum_channels = 8\nchannel_mult = [1, 2]\nattention_resolutions = [8]\n\
          emb_dim = 16\nnum_components = 2\nenc_channels = 8\nnum_head_channels = -1\n"
            .to_vec(),
    );
    seeds.push(std::fs::read(
        s.root.join("fixtures/decomp-tetrominoes/config.toml"),
    )?);
    Ok(seeds)
}

fn run_config(_: &Scratch, input: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(input) else {
        return Verdict::Rejected("not UTF-8".into());
    };
    let run = match registry().from_toml(text) {
        Ok(run) => run
            .validate()
            .and_then(|()| run.to_toml())
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) if e.is_bad_input() => Err(e.to_string()),
        Err(e) => return Verdict::Internal(e.to_string()),
    };
    let decomp = verdict(DecompConfig::from_toml(text), decomp_diffusion_bad);
    match (run, decomp) {
        (_, v @ (Verdict::Internal(_) | Verdict::Violation(_))) => v,
        (Ok(()), _) | (_, Verdict::Accepted) => Verdict::Accepted,
        (Err(m), _) => Verdict::Rejected(m),
    }
}

// --- composition expressions ------------------------------------------------------------------

fn expr_seeds(_: &Scratch) -> Result<Vec<Vec<u8>>> {
    Ok([
        "ring AND bar",
        "left OR right",
        "1.3*box_large NOT 0.3*box_small",
        "horse AND (beach OR grass) NOT sunny",
        "a AND b AND c OR -0.5*(d NOT e)",
        "(x.1 OR y-2) AND 1e-2*_z",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect())
}

fn expr(_: &Scratch, input: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(input) else {
        return Verdict::Rejected("not UTF-8".into());
    };
    match expr::parse(text) {
        Ok(e) => {
            // The canonical form parses to the same tree.
            let canonical = e.to_string();
            match expr::parse(&canonical) {
                Ok(back) if back.to_string() == canonical => {
                    let _ = e.model_names();
                    Verdict::Accepted
                }
                Ok(_) => Verdict::Violation(format!("`{canonical}` does not round-trip")),
                Err(err) => {
                    Verdict::Violation(format!("the canonical form `{canonical}` fails: {err}"))
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
            Verdict::Rejected(e.message)
        }
    }
}

// --- PNG images ---------------------------------------------------------------------------------

fn png_seeds(s: &Scratch) -> Result<Vec<Vec<u8>>> {
    use image::{ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};
    let mut seeds = Vec::new();
    let mut encode = |img: image::DynamicImage| -> Result<()> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png)?;
        seeds.push(out.into_inner());
        Ok(())
    };
    let v = |x: u32, y: u32| ((x * 16 + y * 3) % 256) as u8;
    encode(ImageBuffer::from_fn(16, 16, |x, y| Rgb([v(x, y), v(y, x), 7])).into())?;
    encode(ImageBuffer::from_fn(9, 5, |x, y| Luma([v(x, y)])).into())?;
    encode(ImageBuffer::from_fn(16, 16, |x, y| Rgba([v(x, y), 1, 2, v(y, x)])).into())?;
    encode(ImageBuffer::from_fn(4, 4, |x, y| LumaA([v(x, y), 200])).into())?;
    encode(ImageBuffer::from_fn(16, 16, |x, y| Rgb([u16::from(v(x, y)) * 257, 0, 65535])).into())?;
    for name in ["example_a.png", "example_b.png"] {
        seeds.push(std::fs::read(
            s.root.join("fixtures/decomp-tetrominoes").join(name),
        )?);
    }
    Ok(seeds)
}

fn png(s: &Scratch, input: &[u8]) -> Verdict {
    let path = s.put("image.png", input);
    let finite = |r: recompose_diffusion::Result<Tensor>| -> Verdict {
        match r {
            Ok(t) => {
                let ok = t
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .is_ok_and(|v| v.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)));
                if ok {
                    Verdict::Accepted
                } else {
                    Verdict::Violation("pixel values outside [-1, 1]".into())
                }
            }
            Err(e) if e.is_bad_input() => Verdict::Rejected(e.to_string()),
            Err(e) => Verdict::Internal(e.to_string()),
        }
    };
    let resized = finite(load_png(&path, 3, Some(16), ValueRange::MinusOneOne));
    let own = finite(load_png(&path, 1, None, ValueRange::ZeroOne));
    let rgb = verdict(
        render::load_rgb_png(&path, 16, &Device::Cpu),
        decomp_diffusion_bad,
    );
    worst(vec![resized, own, rgb])
}
