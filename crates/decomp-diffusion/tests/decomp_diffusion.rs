//! The pretrained Decomp Diffusion model in `fixtures/decomp-tetrominoes/`: it is what
//! `cargo xtask fixtures decomp` trains, it loads, and its latents describe held-out images.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use recompose_decomp_diffusion::datasets::{Kind, generate};
use recompose_decomp_diffusion::render::load_rgb_png;
use recompose_decomp_diffusion::{DecompRunConfig, DecompTrained};
use recompose_diffusion::seeded;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/decomp-tetrominoes")
}

#[test]
fn fixture_is_the_preset_and_its_examples_are_held_out_images() -> anyhow::Result<()> {
    let dir = fixture();
    let saved = std::fs::read_to_string(dir.join("config.toml"))?;
    assert_eq!(
        DecompRunConfig::from_toml(&saved)?,
        DecompRunConfig::preset("decomp-tetrominoes")?,
        "the fixture must be the preset `cargo xtask fixtures decomp` trains"
    );
    for (i, name) in ["example_a.png", "example_b.png"].into_iter().enumerate() {
        let x = load_rgb_png(&dir.join(name), 32, &Device::Cpu)?;
        let want = generate(Kind::Tetrominoes, 1, i as u64).image;
        let got = x.flatten_all()?.to_vec1::<f32>()?;
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 0.5 / 255.0 + 1e-6, "{name}: {worst}");
    }
    Ok(())
}

/// The latents carry what the denoiser needs: on held-out images (dataset seed 1; the model
/// trained on seed 0) noised to t = 500 and 700, the composed x₀ prediction from each image's
/// own latents is clearly better than from another image's latents (an untrained encoder
/// gives no such gap).
#[test]
fn fixture_latents_describe_their_images() -> anyhow::Result<()> {
    let run = DecompTrained::load(&fixture(), &Device::Cpu)?;
    let n = 8;
    let pixels: Vec<f32> = (0..n as u64)
        .flat_map(|i| generate(Kind::Tetrominoes, 1, 100 + i).image)
        .collect();
    let x = Tensor::from_vec(pixels, (n, 3, 32, 32), &Device::Cpu)?;
    let z = run.model.encode(&x, false)?;
    // Image i gets the latents of image i + 1.
    let shifted = Tensor::cat(&[z.narrow(0, 1, n - 1)?, z.narrow(0, 0, 1)?], 0)?;
    let mut rng = seeded(0);
    for t in [500usize, 700] {
        let noise = recompose_diffusion::random::normal_tensor(
            &mut rng,
            x.dims(),
            candle_core::DType::F32,
            &Device::Cpu,
        )?;
        let x_t = ((&x * run.schedule.sqrt_alpha_bar(t))? + (noise * run.schedule.sigma(t))?)?;
        let ts = Tensor::new(vec![t as f32; n], &Device::Cpu)?;
        let err = |z: &Tensor| -> anyhow::Result<f32> {
            let out = run.model.denoise(&x_t, &ts, z, None)?;
            Ok((out - &x)?.sqr()?.mean_all()?.to_scalar::<f32>()?)
        };
        let (own, other) = (err(&z)?, err(&shifted)?);
        eprintln!("t = {t}: x0 error with own latents {own:.5}, with another image's {other:.5}");
        assert!(own < 0.85 * other, "t = {t}: {own} vs {other}");
    }
    Ok(())
}
