//! `cargo xtask`: the project's automation.
//!
//! ```text
//! cargo xtask ci                  fmt --check, no unused dependencies, clippy -D warnings, the cuda
//!                                 feature type-checks, the test suite,
//!                                 benches compile, fixtures current, fuzz targets 10 s each, docs
//! cargo xtask bench <suite>       run a criterion suite: vsa, factorization, diffusion, compose,
//!                                 decomp, image or all; diffusion, decomp and image also time the
//!                                 same models in PyTorch (local venv)
//! cargo xtask fixtures [--check]  regenerate fixtures/ (or verify the committed ones)
//! cargo xtask crash-test          the crash-safety tests of `recompose train`, the long kill-and-resume
//!                                 run included (crates/cli/tests/crash.rs)
//! cargo xtask fixtures reference <DIR>
//!                                 cut fixtures/unet-reference/ from the Decomp Diffusion reference data
//! cargo xtask tune coupled [--variant V] [--samples N] [--refine N] [--seed S]
//!                                 hyperparameter search for a coupled-diffusion preset
//! cargo xtask reproduce factorization [--quick] [--skip-capacity]
//!                                 regenerate docs/results/factorization.md and its charts
//! cargo xtask reproduce composition [--quick | --full] [--reuse-models]
//!                                 train the 2-D models, compose them, write docs/results/composition.md
//! cargo xtask reproduce image-composition [--quick] [--reuse-models] [--score DIR] [--energy DIR]
//!                                 [--no-energy] [--no-experts] [--score-expert DIR@T]...
//!                                 [--energy-expert DIR@T]... [--sets N] [--chains N] [--levels N]
//!                                 [--guidance G] [--steps N] [--expert-steps N] [--mcmc-steps K]
//!                                 [--step-scale S] [--mcmc-fraction F] [--report NAME] [--jobs N]
//!                                 [--settings LIST] [--samplers LIST]
//!                                 train a text-conditioned U-Net (and its expert networks) on
//!                                 shapes-text, compose prompts,
//!                                 write docs/results/image-composition.md
//! cargo xtask fixtures image-composition
//!                                 train the small text-conditioned shapes-text model of
//!                                 fixtures/image-composition (resumes a cut training)
//! cargo xtask fixtures decomp [--example-only]
//!                                 train the pretrained Decomp Diffusion model of fixtures/decomp-tetrominoes
//!                                 and draw the README's example (or only draw the example)
//! cargo xtask reproduce decomposition [--quick] [--reuse-models] [--steps N] [--batch N] [--images N] [--only KEY,…]
//!                                 [--report NAME] [--no-torch]
//!                                 train and evaluate the Decomp Diffusion models, time training and sampling
//!                                 next to PyTorch (full runs), write docs/results/decomposition.md
//!                                 (or docs/results/NAME.md)
//! cargo xtask fuzz [TARGET] [--seconds N] [--seed S] [--engine mutation|afl] [--report]
//!                                 fuzz the readers of outside input (every target, 60 s each by
//!                                 default); --report writes docs/results/fuzz.md
//! cargo xtask gpu build           build the prepared GPU runs with CUDA (from PyPI's CUDA wheels, no
//!                                 GPU needed) into .gpu/: recompose, recompose-gpu, bench-steps, parity
//! ```

//!
//! The tasks themselves (reproductions, tuning, PyTorch comparisons, charts, fixtures) live in
//! the library of the `recompose-benches` package; this program only dispatches to them.

use std::path::Path;
use std::process::Command;

/// candle allocates a buffer per tensor op; mimalloc keeps them instead of mapping fresh pages
/// (training the 2-D models of `reproduce composition` runs ~1.5× faster).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Result, bail};
use recompose_benches::fixtures::{decomp_fixture, fixtures, readme_example};
use recompose_benches::workspace::{cargo, cargo_bin, root, run};
use recompose_benches::{
    composition, decomposition, fuzz, image_composition, reference, reproduce, torch, tune,
};

const USAGE: &str = "usage: cargo xtask <ci | bench <vsa|factorization|diffusion|compose|decomp|image|all> | fixtures [--check] | crash-test | fixtures reference <DIR> | tune coupled [--variant V] [--samples N] [--refine N] [--seed S] | reproduce factorization [--quick] [--skip-capacity] | reproduce composition [--quick | --full] [--reuse-models] | reproduce image-composition [--quick] [--reuse-models] [--score DIR] [--energy DIR] [--no-energy] [--no-experts] [--score-expert DIR@T]... [--energy-expert DIR@T]... [--sets N] [--chains N] [--levels N] [--guidance G] [--steps N] [--expert-steps N] [--mcmc-steps K] [--step-scale S] [--mcmc-fraction F] [--report NAME] [--jobs N] [--settings LIST] [--samplers LIST] | fixtures image-composition | fixtures decomp [--example-only] | reproduce decomposition [--quick] [--reuse-models] [--steps N] [--batch N] [--images N] [--only KEY,...] [--report NAME] [--no-torch] | fuzz [TARGET] [--seconds N] [--seed S] [--engine mutation|afl] [--report] | gpu build>";

/// The benchmark suites in `benches/benches/`.
const SUITES: [&str; 6] = [
    "vsa",
    "factorization",
    "diffusion",
    "compose",
    "decomp",
    "image",
];

fn main() -> Result<()> {
    recompose_core::process::keep_freed_memory();
    // The tree this program was built from, before anything can change it.
    let _ = recompose_benches::workspace::revision();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ci"] => ci(),
        ["bench", suite] => bench(suite),
        ["fixtures"] => fixtures(false),
        ["fixtures", "--check"] => fixtures(true),
        ["crash-test"] => cargo(&[
            "test",
            "--release",
            "-p",
            "recompose-cli",
            "--test",
            "crash",
            "--",
            "--include-ignored",
            "--nocapture",
        ]),
        ["fixtures", "reference", dir] => reference::fixtures(&root(), Path::new(dir)),
        ["fixtures", "image-composition"] => recompose_benches::image_composition::fixture(&root()),
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
        ["reproduce", "image-composition", rest @ ..] => image_composition::image_composition(
            &root(),
            &image_composition::ImageCompositionArgs::parse(rest)?,
        ),
        ["reproduce", "decomposition", rest @ ..] => {
            decomposition::decomposition(&root(), &decomposition::DecompositionArgs::parse(rest)?)
        }
        ["fuzz", rest @ ..] => fuzz::xtask::fuzz(&fuzz::xtask::FuzzArgs::parse(rest)?),
        // The binaries of the prepared GPU runs, built with CUDA into .gpu/ (the script says how).
        ["gpu", "build"] => run(&mut Command::new(root().join("xtask/gpu/build.sh"))),
        _ => bail!("{USAGE}"),
    }
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
    run(&mut Command::new(root().join(".ci/cuda-check")))?;
    cargo(&["test", "--workspace", "--release"])?;
    cargo(&["bench", "--workspace", "--no-run"])?;
    fixtures(true)?;
    fuzz::xtask::fuzz(&fuzz::xtask::FuzzArgs::parse(&["--seconds", "10"])?)?;
    run(Command::new(cargo_bin())
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))
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
            "image" => torch::torch_comparison(&root(), torch::Suite::Image)?,
            _ => {}
        }
    }
    Ok(())
}
