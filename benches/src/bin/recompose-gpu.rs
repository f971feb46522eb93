//! `recompose-gpu COMMAND`: the prepared GPU runs ([`recompose_benches::gpu`]), each one
//! command, from binaries built elsewhere by `cargo xtask gpu build` (the GPU machine needs no
//! Rust toolchain), run from the repository's root; each writes its section of
//! `docs/results/gpu.md`.
//!
//! - `check [--device cuda:N] [--rounds N] [--steps N] [--python PY] [--no-torch]`: the device
//!   parity tests and the throughput against PyTorch on the same GPU (under three minutes).
//! - `composition [--device cuda:N] [--jobs N] [--quick]`: the twelve 2-D composition models
//!   at the paper's budget, trained on the GPU at once, and their whole evaluation.
//! - `tetrominoes [--device cuda:N] [--images N] [--steps N]`: the Decomp Diffusion model of
//!   the fixture at its full recipe, resumable, evaluated next to the CPU-trained fixture.
//!
//! Each stays within ten minutes on an H200 (a cut training resumes when the command is run
//! again).

use anyhow::{Result, bail};
use recompose_benches::gpu::{CheckArgs, check, composition, tetrominoes};
use recompose_benches::workspace::root;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: recompose-gpu <check [--device cuda:N] [--rounds N] [--steps N] \
[--python PY] [--bins DIR] [--no-torch] | composition [--device cuda:N] [--jobs N] [--quick] | \
tetrominoes [--device cuda:N] [--images N] [--steps N]>";

fn main() -> Result<()> {
    // Thread count and allocator settings, before any other thread exists.
    recompose_core::process::prepare();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["check", rest @ ..] => check(&root(), &CheckArgs::parse(rest)?),
        ["composition", rest @ ..] => composition(&root(), rest),
        ["tetrominoes", rest @ ..] => tetrominoes(&root(), rest),
        _ => bail!("{USAGE}"),
    }
}
