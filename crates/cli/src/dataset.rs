//! `recompose dataset`: procedural image datasets with ground truth.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use recompose_core::memory::MemoryLimit;
use recompose_diffusion::run::TOKENIZER_FILE;
use recompose_diffusion::text::TextTokenizer;
use recompose_scenes::objects::{IMAGE_SIZE, Kind, write_dataset_within, write_estimate};
use recompose_scenes::shapes_text::{self, ShapesText};

use crate::{check_memory, positive, usage};

/// Arguments of `recompose dataset`.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    /// tetrominoes, multi-sprites, sprites-night, falcor-lite or shapes-text.
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
    /// Image side in pixels: 32 (the default) or 64 for shapes-text; the other datasets are 32.
    #[arg(long, allow_negative_numbers = true)]
    size: Option<i64>,
}

pub fn run_dataset(a: DatasetArgs, memory: MemoryLimit) -> Result<()> {
    if a.name == shapes_text::NAME {
        return run_shapes_text(a, memory);
    }
    let kind: Kind = a.name.parse().map_err(|_| {
        usage(format!(
            "unknown dataset `{}`; the datasets are {}, {}",
            a.name,
            Kind::ALL.map(Kind::name).join(", "),
            shapes_text::NAME
        ))
    })?;
    let num = positive("num", a.num, 1)?;
    if let Some(size) = a.size
        && usize::try_from(size).ok() != Some(IMAGE_SIZE)
    {
        return Err(usage(format!(
            "--size: the {} images are {IMAGE_SIZE} pixels square, got {size}",
            kind.name()
        )));
    }
    check_memory(
        memory,
        format_args!("a {} dataset of {num} images", kind.name()),
        write_estimate(num),
    )?;
    write_dataset_within(kind, num, a.seed, &a.out, memory).map_err(scenes_error)?;
    outln!(
        "wrote {num} {} images (seed {}) with masks and labels.json to {}",
        kind.name(),
        a.seed,
        a.out.display()
    );
    Ok(())
}

/// `recompose dataset shapes-text`: captioned scenes of coloured shapes.
fn run_shapes_text(a: DatasetArgs, memory: MemoryLimit) -> Result<()> {
    let num = positive("num", a.num, 1)?;
    let size = match a.size {
        None => shapes_text::DEFAULT_SIZE,
        Some(s) => match usize::try_from(s) {
            Ok(s) if shapes_text::SIZES.contains(&s) => s,
            _ => {
                return Err(usage(format!(
                    "--size must be {} for {}, got {s}",
                    shapes_text::SIZES.map(|s| s.to_string()).join(" or "),
                    shapes_text::NAME
                )));
            }
        },
    };
    check_memory(
        memory,
        format_args!("a {} dataset of {num} images", shapes_text::NAME),
        shapes_text::write_estimate(num, size),
    )?;
    let data = ShapesText::new(a.seed, size).map_err(scenes_error)?;
    data.write_within(num, &a.out, memory)
        .map_err(scenes_error)?;
    // The tokenizer a text-conditioned model of these captions trains with.
    let tokenizer = TextTokenizer::word_level(shapes_text::vocabulary(), shapes_text::PROMPT_LEN)?;
    tokenizer.save(&a.out.join(TOKENIZER_FILE))?;
    outln!(
        "wrote {num} {} images of {size}×{size} (seed {}) with masks, labels.json, \
         captions.jsonl and {TOKENIZER_FILE} to {}",
        shapes_text::NAME,
        a.seed,
        a.out.display()
    );
    Ok(())
}

/// An error of the dataset library as the command's: bad input (a setting, an output that
/// cannot be written) is a usage error, exit status 2, with the library's message.
fn scenes_error(e: recompose_scenes::Error) -> anyhow::Error {
    if e.is_bad_input() {
        usage(e.to_string())
    } else {
        e.into()
    }
}
