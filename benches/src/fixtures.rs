//! The committed fixtures: small factorization problems in safetensors (checked bit for bit in
//! CI) and the pretrained Decomp Diffusion model of `fixtures/decomp-tetrominoes` with the
//! README's example.

use std::path::Path;

use anyhow::{Result, bail};
use candle_core::Device;
use recompose_decomp::problem::{Noise, Problem, ProblemConfig, VsaKind};

use crate::workspace::root;

/// The fixture problems: small, deterministic factorization problems in safetensors, used by the
/// tests to check the file format and that generation stays bit-for-bit reproducible.
pub fn fixture_problems() -> Vec<(&'static str, ProblemConfig)> {
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

/// Regenerates `fixtures/` (or, with `check`, verifies that the committed files are what
/// generation gives).
pub fn fixtures(check: bool) -> Result<()> {
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
pub fn decomp_fixture() -> Result<()> {
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
        revision: Some(crate::workspace::revision()),
        ..Default::default()
    };
    let report = train_decomp(&cfg, &opts, &Device::Cpu, &mut |_| {})?;
    std::fs::write(
        work.join(crate::runs::TIMING_FILE),
        serde_json::json!({
            "seconds": report.seconds,
            "steps_per_second": report.steps_per_second(),
            "final_loss": report.recent_loss,
        })
        .to_string(),
    )?;
    let dir = root().join("fixtures/decomp-tetrominoes");
    crate::runs::copy_run(
        &work,
        &dir,
        &[
            "model.safetensors",
            "model.json",
            "config.toml",
            "loss.jsonl",
            crate::runs::TIMING_FILE,
            "provenance.json",
        ],
    )?;
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
pub fn readme_example(fixture: &Path) -> Result<()> {
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
