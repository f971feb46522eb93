//! `recompose dataset`: procedural image datasets with ground truth.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use recompose_core::memory::MemoryLimit;
use recompose_decomp_diffusion::datasets::{Kind, write_dataset_within, write_estimate};

use crate::{check_memory, positive, usage};

/// Arguments of `recompose dataset`.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    /// tetrominoes, multi-sprites, sprites-night or falcor-lite.
    name: String,
    /// Number of images.
    #[arg(long, allow_negative_numbers = true)]
    num: i64,
    /// Output directory: image_NNNNN.png, mask_NNNNN_K.png per object, labels.json.
    #[arg(long)]
    out: PathBuf,
    /// Seed: image i depends only on (seed, i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run_dataset(a: DatasetArgs, memory: MemoryLimit) -> Result<()> {
    let kind: Kind = a
        .name
        .parse()
        .map_err(|e: recompose_decomp_diffusion::Error| usage(e.to_string()))?;
    let num = positive("num", a.num, 1)?;
    check_memory(
        memory,
        format_args!("a {} dataset of {num} images", kind.name()),
        write_estimate(num),
    )?;
    write_dataset_within(kind, num, a.seed, &a.out, memory)?;
    outln!(
        "wrote {num} {} images (seed {}) with masks and labels.json to {}",
        kind.name(),
        a.seed,
        a.out.display()
    );
    Ok(())
}
