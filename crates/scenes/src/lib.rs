//! # recompose-scenes
//!
//! Procedural image datasets with ground truth, drawn deterministically from a seed: image i of
//! a dataset depends only on (seed, i), so any subset can be regenerated and nothing is
//! downloaded.
//!
//! - [`objects`]: object scenes for unsupervised decomposition (Su et al., *Compositional Image
//!   Decomposition with Diffusion Models*, ICML 2024) — tetrominoes, multi-sprites and its night
//!   domain, and Falcor-lite over five global factors — with per-object masks and labels.
//! - [`shapes_text`]: captioned scenes of coloured shapes for compositional generation from
//!   text (Liu et al., *Compositional Visual Generation with Composable Diffusion Models*,
//!   ECCV 2022; Du et al., *Reduce, Reuse, Recycle*, ICML 2023): the dataset, its vocabulary,
//!   text [`Condition`]s, and a deterministic [`check`]er that tells whether an image satisfies
//!   a condition.
//!
//! Images are `[3, H, W]` row-major `f32` in \[0, 1\], rasterized with 4×4 supersampling.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod objects;
mod raster;
pub mod shapes_text;

pub use error::{Error, Result};
pub use shapes_text::check;
pub use shapes_text::{Condition, ShapesText};

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
