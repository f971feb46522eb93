//! `cargo xtask`: the project's automation.
//!
//! ```text
//! cargo xtask ci                  fmt --check, no unused dependencies, clippy -D warnings, the test suite,
//!                                 docs, benches compile
//! cargo xtask bench <suite>       run a criterion suite: vsa, factorization, diffusion, compose,
//!                                 decomp or all; diffusion and decomp also time the same models
//!                                 in PyTorch (local venv)
//! cargo xtask fixtures [--check]  regenerate fixtures/ (or verify the committed ones)
//! cargo xtask fixtures reference <DIR>
//!                                 cut fixtures/unet-reference/ from the Decomp Diffusion reference data
//! cargo xtask tune coupled [--variant V] [--samples N] [--refine N] [--seed S]
//!                                 hyperparameter search for a coupled-diffusion preset
//! cargo xtask reproduce factorization [--quick] [--skip-capacity]
//!                                 regenerate docs/results/factorization.md and its charts
//! cargo xtask reproduce composition [--quick] [--reuse-models]
//!                                 train the 2-D models, compose them, write docs/results/composition.md
//! cargo xtask fixtures decomp [--example-only]
//!                                 train the pretrained Decomp Diffusion model of fixtures/decomp-tetrominoes
//!                                 and draw the README's example (or only draw the example)
//! cargo xtask reproduce decomposition [--quick] [--reuse-models] [--steps N] [--batch N] [--images N] [--only KEY,…]
//!                                 [--report NAME] [--no-torch]
//!                                 train and evaluate the Decomp Diffusion models, time training and sampling
//!                                 next to PyTorch (full runs), write docs/results/decomposition.md
//!                                 (or docs/results/NAME.md)
//! ```

// The chart writer offers log axes too; not every report uses them.
mod composition;
mod decomposition;
#[allow(dead_code)]
mod plot;
mod reference;
mod reproduce;
mod torch;
mod tune;

use std::path::{Path, PathBuf};
use std::process::Command;

/// candle allocates a buffer per tensor op; mimalloc keeps them instead of mapping fresh pages
/// (training the 2-D models of `reproduce composition` runs ~1.5× faster).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use recompose_decomp::problem::{Noise, Problem, ProblemConfig, VsaKind};

const USAGE: &str = "usage: cargo xtask <ci | bench <vsa|factorization|diffusion|compose|decomp|all> | fixtures [--check] | fixtures reference <DIR> | tune coupled [--variant V] [--samples N] [--refine N] [--seed S] | reproduce factorization [--quick] [--skip-capacity] | reproduce composition [--quick] [--reuse-models] | fixtures decomp [--example-only] | reproduce decomposition [--quick] [--reuse-models] [--steps N] [--batch N] [--images N] [--only KEY,...] [--report NAME] [--no-torch]>";

/// The benchmark suites in `benches/benches/`.
const SUITES: [&str; 5] = ["vsa", "factorization", "diffusion", "compose", "decomp"];

fn main() -> Result<()> {
    recompose_core::process::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ci"] => ci(),
        ["bench", suite] => bench(suite),
        ["fixtures"] => fixtures(false),
        ["fixtures", "--check"] => fixtures(true),
        ["fixtures", "reference", dir] => reference::fixtures(&root(), Path::new(dir)),
        ["fixtures", "decomp"] => decomp_fixture(),
        ["fixtures", "decomp", "--example-only"] => {
            readme_example(&root().join("fixtures/decomp-tetrominoes"))
        }
        ["tune", "coupled", rest @ ..] => tune::tune(&tune::TuneArgs::parse(rest)?),
        ["reproduce", "factorization", rest @ ..] => {
            reproduce::factorization(&root(), &reproduce::ReproduceArgs::parse(rest)?)
        }
        ["reproduce", "composition", rest @ ..] => {
            composition::composition(&root(), &composition::CompositionArgs::parse(rest)?)
        }
        ["reproduce", "decomposition", rest @ ..] => {
            decomposition::decomposition(&root(), &decomposition::DecompositionArgs::parse(rest)?)
        }
        _ => bail!("{USAGE}"),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// What CI runs (see `.ci/run`).
fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    // Unused dependencies (`cargo install cargo-machete` once).
    cargo(&["machete"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The test command of README.md.
    cargo(&["test", "--workspace", "--release"])?;
    cargo(&["bench", "--workspace", "--no-run"])?;
    fixtures(true)?;
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )
}

fn bench(suite: &str) -> Result<()> {
    let suites: Vec<&str> = match suite {
        "all" => SUITES.to_vec(),
        s if SUITES.contains(&s) => vec![s],
        other => bail!(
            "unknown bench suite '{other}' (expected {} or all)",
            SUITES.join(", ")
        ),
    };
    for s in suites {
        cargo(&["bench", "-p", "recompose-benches", "--bench", s])?;
        match s {
            "diffusion" => torch::torch_comparison(&root(), torch::Suite::Diffusion)?,
            "decomp" => torch::torch_comparison(&root(), torch::Suite::Decomp)?,
            _ => {}
        }
    }
    Ok(())
}

/// The fixture problems: small, deterministic factorization problems in safetensors, used by the
/// tests to check the file format and that generation stays bit-for-bit reproducible.
fn fixture_problems() -> Vec<(&'static str, ProblemConfig)> {
    let map = ProblemConfig::map(512, 3, 8, 16, 2024);
    let fhrr = ProblemConfig {
        vsa: VsaKind::Fhrr,
        ..ProblemConfig::map(256, 3, 6, 8, 2025)
    };
    let noisy = ProblemConfig {
        noise: Noise {
            gauss: 0.5,
            flip: 0.1,
        },
        ..ProblemConfig::map(512, 2, 10, 16, 2026)
    };
    vec![
        ("problem-map-d512-f3-m8.safetensors", map),
        ("problem-fhrr-d256-f3-m6.safetensors", fhrr),
        ("problem-map-noisy-d512-f2-m10.safetensors", noisy),
    ]
}

fn fixtures(check: bool) -> Result<()> {
    let dir = root().join("fixtures");
    std::fs::create_dir_all(&dir)?;
    let tmp = std::env::temp_dir().join(format!("recompose-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut stale = Vec::new();
    for (name, cfg) in fixture_problems() {
        let problem = Problem::generate(&cfg, &Device::Cpu)?;
        let fresh = tmp.join(name);
        problem.save(&fresh)?;
        let target = dir.join(name);
        if check {
            let same = std::fs::read(&target).ok() == Some(std::fs::read(&fresh)?);
            if !same {
                stale.push(name);
            }
        } else {
            std::fs::copy(&fresh, &target)?;
            eprintln!("wrote {}", target.display());
        }
    }
    std::fs::remove_dir_all(&tmp)?;
    if !stale.is_empty() {
        bail!(
            "fixtures differ from what `cargo xtask fixtures` generates: {}",
            stale.join(", ")
        );
    }
    Ok(())
}

/// Trains the `decomp-tetrominoes` preset (seeded, deterministic) and copies the model, its
/// configuration, loss log and timing into `fixtures/decomp-tetrominoes/`, with two held-out
/// images (dataset seed 1) for the README's example.
fn decomp_fixture() -> Result<()> {
    use recompose_decomp_diffusion::DecompRunConfig;
    use recompose_decomp_diffusion::datasets::{IMAGE_SIZE, Kind, generate};
    use recompose_decomp_diffusion::run::train_decomp;

    let work = root().join("target/decomp-fixture");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let cfg = DecompRunConfig::preset("decomp-tetrominoes")?;
    let opts = recompose_diffusion::train::TrainOptions {
        out_dir: work.clone(),
        ..Default::default()
    };
    let report = train_decomp(&cfg, &opts, &Device::Cpu, &mut |_| {})?;
    std::fs::write(
        work.join("timing.json"),
        serde_json::json!({
            "seconds": report.seconds,
            "steps_per_second": report.steps_per_second(),
            "final_loss": report.recent_loss,
        })
        .to_string(),
    )?;
    let dir = root().join("fixtures/decomp-tetrominoes");
    std::fs::create_dir_all(&dir)?;
    for f in [
        "model.safetensors",
        "model.json",
        "config.toml",
        "loss.jsonl",
        "timing.json",
    ] {
        std::fs::copy(work.join(f), dir.join(f))?;
    }
    let n = IMAGE_SIZE * IMAGE_SIZE;
    for (i, name) in ["example_a.png", "example_b.png"].into_iter().enumerate() {
        let scene = generate(Kind::Tetrominoes, 1, i as u64);
        let rgb: Vec<u8> = (0..3 * n)
            .map(|q| (scene.image[(q % 3) * n + q / 3] * 255.0).round() as u8)
            .collect();
        image::save_buffer(
            dir.join(name),
            &rgb,
            IMAGE_SIZE as u32,
            IMAGE_SIZE as u32,
            image::ColorType::Rgb8,
        )?;
    }
    readme_example(&dir)?;
    eprintln!(
        "trained in {:.0} s; wrote {}",
        report.seconds,
        dir.display()
    );
    Ok(())
}

/// The grid the README's `recompose decompose fixtures/decomp-tetrominoes/example_a.png …`
/// writes (50 DDIM steps, seed 0: the command's defaults), as
/// `docs/results/decomposition/readme-example.png`.
fn readme_example(fixture: &Path) -> Result<()> {
    use recompose_decomp_diffusion::DecompTrained;
    use recompose_decomp_diffusion::render::{decompose, load_rgb_png};
    use recompose_diffusion::data::{ValueRange, plot::save_png_grid};

    let run = DecompTrained::load(fixture, &Device::Cpu)?;
    let size = run.config.decomp.image_size;
    let x = load_rgb_png(&fixture.join("example_a.png"), size, &Device::Cpu)?;
    let (recon, singles) = decompose(
        &run.model,
        &run.schedule,
        &x,
        50,
        &mut recompose_diffusion::seeded(0),
    )?;
    let grid = candle_core::Tensor::cat(&[&x, &recon, &singles], 0)?;
    let out = root().join("docs/results/decomposition");
    std::fs::create_dir_all(&out)?;
    save_png_grid(
        &grid,
        ValueRange::ZeroOne,
        run.model.components() + 2,
        &out.join("readme-example.png"),
    )?;
    Ok(())
}
