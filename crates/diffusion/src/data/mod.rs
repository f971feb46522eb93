//! Training data: the 2-D toy distributions, image folders, and PNG output.
//!
//! - [`Toy2d`]: the 2-D distributions of the compositional-sampling experiments of Du et al.
//!   2023, "Reduce, Reuse, Recycle: Compositional Generation with Energy-Based Diffusion Models
//!   and MCMC" (ICML 2023, §4, 2-D experiments): a ring of eight Gaussians, vertical bars and
//!   boxes, each with its exact density, mean and covariance, so that composed samplers can be
//!   checked against the true product or mixture.
//! - [`ImageFolder`]: every `.png` file of a directory, decoded, resized and scaled into a
//!   `[N, C, H, W]` tensor; [`load_png`] loads a single image the same way.
//! - [`CaptionedImages`]: an image folder whose images carry text captions
//!   (`captions.jsonl`), drawn with their token ids and a condition-dropout rate for
//!   classifier-free guidance.
//! - [`plot`]: PNG writers for image grids ([`plot::save_png_grid`]) and 2-D scatter plots
//!   ([`plot::save_png_scatter`]).
//!
//! Every data source implements [`Dataset`], the one interface the training loop draws batches
//! from. Random draws come from a caller-supplied [`SeededRng`], so the same seed gives the same
//! batches on every device.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::random::SeededRng;
use crate::{Error, Result};

pub mod captioned;
pub mod image;
pub mod plot;
pub mod toy2d;

pub use self::captioned::CaptionedImages;
pub use self::image::{ImageFolder, ImageFolderConfig, load_png};
pub use self::toy2d::Toy2d;

/// A source of training examples, all of the same shape.
pub trait Dataset {
    /// The shape of one item, for example `[2]` for a 2-D point or `[3, 32, 32]` for an RGB
    /// image.
    fn item_shape(&self) -> Vec<usize>;

    /// The number of items of a finite dataset; `None` for a distribution that can be sampled
    /// without end.
    fn len(&self) -> Option<usize>;

    /// Whether a finite dataset has no items (`Some(true)`), has some (`Some(false)`), or the
    /// dataset is infinite (`None`).
    fn is_empty(&self) -> Option<bool> {
        self.len().map(|n| n == 0)
    }

    /// A batch of `batch` items as an `f32` tensor of shape `[batch, item_shape...]` on
    /// `device`, drawn with `rng`. Finite datasets draw uniform indices with replacement;
    /// infinite ones draw fresh samples.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if the tensor cannot be built on `device`.
    fn sample_batch(&self, rng: &mut SeededRng, batch: usize, device: &Device) -> Result<Tensor>;

    /// A batch with its conditioning: the items as [`Dataset::sample_batch`] and, for a
    /// conditional dataset, one condition per item (for captioned images, each caption's token
    /// ids `[batch, L]`). The default is the unconditional batch of [`Dataset::sample_batch`]
    /// with the same draws and no condition.
    ///
    /// # Errors
    ///
    /// As [`Dataset::sample_batch`].
    fn sample_conditioned(
        &self,
        rng: &mut SeededRng,
        batch: usize,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.sample_batch(rng, batch, device)?, None))
    }
}

/// The range that pixel values are scaled to: intensity 0 maps to the lower bound, full
/// intensity to the upper bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueRange {
    /// \[0, 1\].
    ZeroOne,
    /// \[−1, 1\], the usual range of diffusion-model data.
    #[default]
    MinusOneOne,
}

impl ValueRange {
    /// Both variants.
    pub const ALL: [ValueRange; 2] = [ValueRange::ZeroOne, ValueRange::MinusOneOne];

    /// The name used by [`FromStr`] and [`fmt::Display`]: `"zero_one"` or `"minus_one_one"`.
    pub fn name(self) -> &'static str {
        match self {
            ValueRange::ZeroOne => "zero_one",
            ValueRange::MinusOneOne => "minus_one_one",
        }
    }

    /// The lower and upper bound of the range.
    pub fn bounds(self) -> (f32, f32) {
        match self {
            ValueRange::ZeroOne => (0.0, 1.0),
            ValueRange::MinusOneOne => (-1.0, 1.0),
        }
    }

    /// Maps an intensity in \[0, 1\] to this range.
    pub fn from_unit(self, v: f32) -> f32 {
        match self {
            ValueRange::ZeroOne => v,
            ValueRange::MinusOneOne => 2.0 * v - 1.0,
        }
    }

    /// Maps a value in this range to an intensity in \[0, 1\] (not clamped).
    pub fn to_unit(self, v: f32) -> f32 {
        match self {
            ValueRange::ZeroOne => v,
            ValueRange::MinusOneOne => 0.5 * (v + 1.0),
        }
    }
}

impl fmt::Display for ValueRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ValueRange {
    type Err = Error;

    /// Parses `"zero_one"` or `"minus_one_one"` (hyphens accepted in place of underscores).
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().replace('-', "_");
        ValueRange::ALL
            .into_iter()
            .find(|r| r.name() == norm)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown value range '{s}', expected one of: zero_one, minus_one_one"
                ))
            })
    }
}

#[cfg(test)]
mod testutil {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh temporary directory, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("recompose-data-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_range_round_trips() {
        for r in ValueRange::ALL {
            assert_eq!(r.name().parse::<ValueRange>().unwrap(), r);
            let (lo, hi) = r.bounds();
            assert_eq!(r.from_unit(0.0), lo);
            assert_eq!(r.from_unit(1.0), hi);
            assert_eq!(r.to_unit(lo), 0.0);
            assert_eq!(r.to_unit(hi), 1.0);
        }
        assert_eq!(
            "minus-one-one".parse::<ValueRange>().unwrap(),
            ValueRange::MinusOneOne
        );
        let err = "half".parse::<ValueRange>().unwrap_err().to_string();
        assert!(
            err.contains("zero_one") && err.contains("minus_one_one"),
            "{err}"
        );
    }
}
