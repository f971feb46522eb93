//! The rasterizer every dataset draws with, and the PNG files they are written as.
//!
//! A [`Canvas`] is a square RGB image with a per-pixel owner (the object visible there). Shapes
//! are painted with 4×4 supersampling: a pixel blends its colour with the shape's by the covered
//! fraction of its samples, and becomes the shape's when at least half of it is covered.

use std::ops::Range;
use std::path::Path;

use crate::{Error, Result};

/// Samples per pixel side.
const SS: usize = 4;

/// An RGB canvas of `size × size` pixels with a per-pixel owner (the object visible there).
pub(crate) struct Canvas {
    size: usize,
    rgb: Vec<[f32; 3]>,
    owner: Vec<Option<usize>>,
    /// The colours before anything was painted.
    background: Vec<[f32; 3]>,
}

/// What a finished canvas holds, as planar images.
pub(crate) struct Raster {
    /// `[3, size, size]` in \[0, 1\].
    pub(crate) image: Vec<f32>,
    /// `[3, size, size]`: the canvas before anything was painted.
    pub(crate) background: Vec<f32>,
    /// One `size × size` mask per object.
    pub(crate) masks: Vec<Vec<bool>>,
}

impl Canvas {
    /// A canvas whose pixel (x, y) has the colour `background(u, v)` at its centre
    /// (u = (x + ½)/size, v = (y + ½)/size).
    pub(crate) fn new(size: usize, background: impl Fn(f32, f32) -> [f32; 3]) -> Self {
        let n = size * size;
        let rgb = (0..n)
            .map(|i| {
                let (y, x) = (i / size, i % size);
                background(
                    (x as f32 + 0.5) / size as f32,
                    (y as f32 + 0.5) / size as f32,
                )
            })
            .collect::<Vec<_>>();
        Self {
            size,
            background: rgb.clone(),
            rgb,
            owner: vec![None; n],
        }
    }

    /// Paints the region `inside(u, v)` (coordinates in \[0, 1\], v downwards) with
    /// `colour(u, v)`, blending by coverage; pixels covered at least half become `object`'s.
    pub(crate) fn paint(
        &mut self,
        object: Option<usize>,
        inside: impl Fn(f32, f32) -> bool,
        colour: impl Fn(f32, f32) -> [f32; 3],
    ) {
        let all = 0..self.size;
        self.paint_within(all.clone(), all, object, inside, colour);
    }

    /// [`Canvas::paint`] for a region that lies within the pixel rows `ys` and columns `xs`:
    /// the same pixels as painting everywhere, visiting only those.
    pub(crate) fn paint_within(
        &mut self,
        ys: Range<usize>,
        xs: Range<usize>,
        object: Option<usize>,
        inside: impl Fn(f32, f32) -> bool,
        colour: impl Fn(f32, f32) -> [f32; 3],
    ) {
        let size = self.size;
        let s = size as f32;
        for y in ys.start..ys.end.min(size) {
            for x in xs.start..xs.end.min(size) {
                let mut hits = 0;
                let mut acc = [0.0f32; 3];
                for sy in 0..SS {
                    for sx in 0..SS {
                        let u = (x as f32 + (sx as f32 + 0.5) / SS as f32) / s;
                        let v = (y as f32 + (sy as f32 + 0.5) / SS as f32) / s;
                        if inside(u, v) {
                            hits += 1;
                            for (a, c) in acc.iter_mut().zip(colour(u, v)) {
                                *a += c;
                            }
                        }
                    }
                }
                if hits == 0 {
                    continue;
                }
                let cover = hits as f32 / (SS * SS) as f32;
                let i = y * size + x;
                for (dst, a) in self.rgb[i].iter_mut().zip(acc) {
                    *dst = (1.0 - cover) * *dst + cover * a / hits as f32;
                }
                if cover >= 0.5 {
                    self.owner[i] = object;
                }
            }
        }
    }

    /// The planar image (clamped to \[0, 1\]), the planar background and the masks of objects
    /// `0..objects`.
    pub(crate) fn finish(self, objects: usize) -> Raster {
        let planar = |rgb: &[[f32; 3]]| {
            let n = rgb.len();
            let mut out = vec![0.0f32; 3 * n];
            for (i, c) in rgb.iter().enumerate() {
                for k in 0..3 {
                    out[k * n + i] = c[k].clamp(0.0, 1.0);
                }
            }
            out
        };
        let image = planar(&self.rgb);
        let background = planar(&self.background);
        let masks = (0..objects)
            .map(|o| self.owner.iter().map(|w| *w == Some(o)).collect())
            .collect();
        Raster {
            image,
            background,
            masks,
        }
    }
}

/// The error of a file operation on `path`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a planar `[3, size, size]` image in \[0, 1\] as an 8-bit RGB PNG.
pub(crate) fn write_rgb_png(path: &Path, image: &[f32], size: usize) -> Result<()> {
    let n = size * size;
    let mut rgb = vec![0u8; 3 * n];
    for p in 0..n {
        for k in 0..3 {
            rgb[3 * p + k] = (image[k * n + p] * 255.0).round() as u8;
        }
    }
    write_png(path, &rgb, size, image::ColorType::Rgb8)
}

/// Writes a mask as an 8-bit grey PNG, white where it is set.
pub(crate) fn write_mask_png(path: &Path, mask: &[bool], size: usize) -> Result<()> {
    let grey: Vec<u8> = mask.iter().map(|&b| if b { 255 } else { 0 }).collect();
    write_png(path, &grey, size, image::ColorType::L8)
}

fn write_png(path: &Path, data: &[u8], size: usize, colour: image::ColorType) -> Result<()> {
    let side = u32::try_from(size)
        .map_err(|_| Error::Config(format!("an image side of {size} pixels is too large")))?;
    image::save_buffer(path, data, side, side, colour).map_err(|e| Error::Format {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// Writes `labels` as pretty-printed JSON to `path`.
pub(crate) fn write_json(path: &Path, labels: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(labels).map_err(|e| Error::Format {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn painting_within_a_box_equals_painting_everywhere() {
        let inside = |u: f32, v: f32| (u - 0.3).powi(2) + (v - 0.6).powi(2) <= 0.15f32.powi(2);
        let colour = |u: f32, _: f32| [u, 0.5, 1.0 - u];
        for size in [16, 32, 64] {
            let mut a = Canvas::new(size, |u, v| [u, v, 0.2]);
            let mut b = Canvas::new(size, |u, v| [u, v, 0.2]);
            a.paint(Some(0), inside, colour);
            let lo = |c: f32| ((c - 0.15) * size as f32).floor().max(0.0) as usize;
            let hi = |c: f32| ((c + 0.15) * size as f32).ceil() as usize + 1;
            b.paint_within(lo(0.6)..hi(0.6), lo(0.3)..hi(0.3), Some(0), inside, colour);
            let (a, b) = (a.finish(1), b.finish(1));
            assert_eq!(a.image, b.image, "size {size}");
            assert_eq!(a.masks, b.masks, "size {size}");
            let covered = a.masks[0].iter().filter(|&&m| m).count() as f32;
            let area = std::f32::consts::PI * (0.15 * size as f32).powi(2);
            assert!(
                (covered - area).abs() < 0.1 * area,
                "size {size}: {covered} vs {area}"
            );
        }
    }
}
