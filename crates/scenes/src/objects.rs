//! Procedural image datasets with ground truth, for unsupervised decomposition.
//!
//! Decomp Diffusion (Su et al., ICML 2024) is evaluated on object scenes (Tetris-like pieces,
//! CLEVR) and on scenes with global factors (Falcor3D). These generators draw comparable scenes
//! with everything a metric needs — per-object masks, object attributes, global factor values —
//! deterministically from a seed: image i of a dataset depends only on (seed, i), so any subset
//! can be regenerated.
//!
//! - [`Kind::Tetrominoes`]: three non-overlapping tetrominoes (19 orientations, 6 colours) on
//!   black, 32×32, drawn on a grid of 4-pixel cells.
//! - [`Kind::MultiSprites`]: 2–4 shaded shapes (square, disk, triangle) with soft shadows on a
//!   floor gradient, 32×32 (CLEVR-lite).
//! - [`Kind::SpritesNight`]: the second domain for cross-model recombination — the same shapes,
//!   glowing in a dark palette over a starry floor, no shadows.
//! - [`Kind::FalcorLite`]: one fixed scene (a ball and a block on a floor) rendered under five
//!   known global factors — light intensity, light direction, colour temperature, camera shift,
//!   zoom — each on a grid of [`FALCOR_LEVELS`] values, for MIG and MCC.
//!
//! Images are `[3, H, W]` row-major `f32` in \[0, 1\]. Shapes are rasterized with 4×4
//! supersampling; an object's mask holds the pixels where it is the visible surface and covers
//! at least half of the pixel.

use std::path::Path;

use rand::Rng;
use recompose_core::memory::{Estimate, MemoryLimit};
use recompose_core::random::{SeededRng, seeded};
use serde_json::{Value, json};

use crate::raster::{Canvas, io, write_json, write_mask_png, write_rgb_png};
use crate::{Error, Result};

/// Side of every generated image.
pub const IMAGE_SIZE: usize = 32;
/// Values per global factor of [`Kind::FalcorLite`].
pub const FALCOR_LEVELS: usize = 5;
/// The global factors of [`Kind::FalcorLite`], in label order.
pub const FALCOR_FACTORS: [&str; 5] = [
    "light_intensity",
    "light_direction",
    "colour_temperature",
    "camera_shift",
    "zoom",
];

/// Which dataset to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Three tetrominoes on black.
    Tetrominoes,
    /// 2–4 shaded shapes with shadows on a floor gradient.
    MultiSprites,
    /// The night-palette domain of the same shapes.
    SpritesNight,
    /// One scene over a grid of five global factors.
    FalcorLite,
}

impl Kind {
    /// Every dataset.
    pub const ALL: [Kind; 4] = [
        Kind::Tetrominoes,
        Kind::MultiSprites,
        Kind::SpritesNight,
        Kind::FalcorLite,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tetrominoes => "tetrominoes",
            Kind::MultiSprites => "multi-sprites",
            Kind::SpritesNight => "sprites-night",
            Kind::FalcorLite => "falcor-lite",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown dataset `{s}`; the datasets are {}",
                    Kind::ALL.map(Kind::name).join(", ")
                ))
            })
    }
}

/// One generated image with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// `[3, H, W]` in \[0, 1\].
    pub image: Vec<f32>,
    /// One `H × W` mask per object (empty for [`Kind::FalcorLite`]).
    pub masks: Vec<Vec<bool>>,
    /// `[3, H, W]`: the same scene without its objects and their shadows (the floor alone;
    /// black for [`Kind::Tetrominoes`]). What a factor render is told apart from.
    pub background: Vec<f32>,
    /// Object attributes or global factors, as JSON.
    pub labels: Value,
}

/// The scene of a finished canvas with `objects` objects.
fn scene(canvas: Canvas, objects: usize, labels: Value) -> Scene {
    let raster = canvas.finish(objects);
    Scene {
        image: raster.image,
        masks: raster.masks,
        background: raster.background,
        labels,
    }
}

/// The six tetromino colours.
const PIECE_COLOURS: [(&str, [f32; 3]); 6] = [
    ("red", [0.9, 0.15, 0.15]),
    ("green", [0.2, 0.8, 0.25]),
    ("blue", [0.2, 0.35, 0.95]),
    ("yellow", [0.95, 0.85, 0.15]),
    ("magenta", [0.85, 0.2, 0.85]),
    ("cyan", [0.15, 0.85, 0.9]),
];

/// The 19 fixed tetrominoes: (piece, cells as (row, column)).
fn tetrominoes() -> Vec<(&'static str, [(usize, usize); 4])> {
    vec![
        ("I", [(0, 0), (0, 1), (0, 2), (0, 3)]),
        ("I", [(0, 0), (1, 0), (2, 0), (3, 0)]),
        ("O", [(0, 0), (0, 1), (1, 0), (1, 1)]),
        ("T", [(0, 0), (0, 1), (0, 2), (1, 1)]),
        ("T", [(0, 1), (1, 0), (1, 1), (2, 1)]),
        ("T", [(0, 1), (1, 0), (1, 1), (1, 2)]),
        ("T", [(0, 0), (1, 0), (1, 1), (2, 0)]),
        ("S", [(0, 1), (0, 2), (1, 0), (1, 1)]),
        ("S", [(0, 0), (1, 0), (1, 1), (2, 1)]),
        ("Z", [(0, 0), (0, 1), (1, 1), (1, 2)]),
        ("Z", [(0, 1), (1, 0), (1, 1), (2, 0)]),
        ("J", [(0, 0), (1, 0), (1, 1), (1, 2)]),
        ("J", [(0, 0), (0, 1), (1, 0), (2, 0)]),
        ("J", [(0, 0), (0, 1), (0, 2), (1, 2)]),
        ("J", [(0, 1), (1, 1), (2, 0), (2, 1)]),
        ("L", [(0, 2), (1, 0), (1, 1), (1, 2)]),
        ("L", [(0, 0), (1, 0), (2, 0), (2, 1)]),
        ("L", [(0, 0), (0, 1), (0, 2), (1, 0)]),
        ("L", [(0, 0), (0, 1), (1, 1), (2, 1)]),
    ]
}

/// Cells of 4 pixels: an 8×8 board.
const CELL: usize = 4;
const BOARD: usize = IMAGE_SIZE / CELL;

fn tetromino_scene(rng: &mut SeededRng) -> Scene {
    let shapes = tetrominoes();
    let mut taken = [[false; BOARD]; BOARD];
    let mut canvas = Canvas::new(IMAGE_SIZE, |_, _| [0.0; 3]);
    let mut objects = Vec::new();
    while objects.len() < 3 {
        let (piece, cells) = shapes[rng.random_range(0..shapes.len())];
        let orientation = shapes[..]
            .iter()
            .filter(|(p, _)| *p == piece)
            .position(|(_, c)| *c == cells)
            .unwrap_or(0);
        let rows = cells.iter().map(|c| c.0).max().unwrap_or(0) + 1;
        let cols = cells.iter().map(|c| c.1).max().unwrap_or(0) + 1;
        let (r0, c0) = (
            rng.random_range(0..=BOARD - rows),
            rng.random_range(0..=BOARD - cols),
        );
        let placed: Vec<(usize, usize)> = cells.iter().map(|&(r, c)| (r0 + r, c0 + c)).collect();
        let (name, colour) = PIECE_COLOURS[rng.random_range(0..PIECE_COLOURS.len())];
        // Pieces may not overlap or touch edge to edge (so each stays a separate object).
        let blocked = placed.iter().any(|&(r, c)| {
            taken[r][c]
                || (r > 0 && taken[r - 1][c])
                || (r + 1 < BOARD && taken[r + 1][c])
                || (c > 0 && taken[r][c - 1])
                || (c + 1 < BOARD && taken[r][c + 1])
        });
        if blocked {
            continue;
        }
        for &(r, c) in &placed {
            taken[r][c] = true;
        }
        let id = objects.len();
        let cells_of = placed.clone();
        canvas.paint(
            Some(id),
            move |u, v| {
                let (c, r) = ((u * BOARD as f32) as usize, (v * BOARD as f32) as usize);
                cells_of.contains(&(r, c))
            },
            |_, _| colour,
        );
        objects.push(json!({
            "piece": piece, "orientation": orientation, "colour": name,
            "cells": placed.iter().map(|&(r, c)| [r, c]).collect::<Vec<_>>(),
        }));
    }
    scene(canvas, 3, json!({ "objects": objects }))
}

/// The sprite shapes.
const SPRITE_SHAPES: [&str; 3] = ["square", "disk", "triangle"];
const SPRITE_COLOURS: [(&str, [f32; 3]); 6] = [
    ("red", [0.85, 0.2, 0.2]),
    ("green", [0.25, 0.75, 0.3]),
    ("blue", [0.25, 0.4, 0.9]),
    ("yellow", [0.9, 0.8, 0.2]),
    ("purple", [0.6, 0.3, 0.8]),
    ("orange", [0.95, 0.55, 0.15]),
];

/// Whether (u, v) lies in `shape` centred at (cx, cy) with half-size r.
fn in_shape(shape: usize, cx: f32, cy: f32, r: f32, u: f32, v: f32) -> bool {
    let (dx, dy) = (u - cx, v - cy);
    match shape {
        0 => dx.abs() <= r && dy.abs() <= r,
        1 => dx * dx + dy * dy <= r * r,
        // Upward triangle with base at cy + r and apex at cy − r.
        _ => dy <= r && dy >= -r && dx.abs() <= (dy + r) / 2.0,
    }
}

fn sprite_scene(rng: &mut SeededRng, night: bool) -> Scene {
    let count = rng.random_range(2..=4);
    let floor_angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (fx, fy) = (floor_angle.cos(), floor_angle.sin());
    let stars: Vec<(f32, f32)> = if night {
        (0..12)
            .map(|_| (rng.random_range(0.0..1.0), rng.random_range(0.0..1.0)))
            .collect()
    } else {
        Vec::new()
    };
    let mut canvas = Canvas::new(IMAGE_SIZE, |u, v| {
        let g = 0.5 + 0.5 * ((u - 0.5) * fx + (v - 0.5) * fy);
        if night {
            let star = stars
                .iter()
                .any(|&(sx, sy)| (u - sx).abs() < 0.02 && (v - sy).abs() < 0.02);
            let b = if star { 0.6 } else { 0.05 + 0.1 * g };
            [b * 0.6, b * 0.7, b]
        } else {
            let b = 0.55 + 0.3 * g;
            [b, b, b * 0.95]
        }
    });
    // Light from the upper left: shadows fall down and to the right.
    let mut placed: Vec<(usize, f32, f32, f32, [f32; 3])> = Vec::new();
    let mut labels = Vec::new();
    let mut attempts = 0;
    while placed.len() < count && attempts < 1000 {
        attempts += 1;
        let shape = rng.random_range(0..SPRITE_SHAPES.len());
        let r: f32 = rng.random_range(0.09..0.16);
        let cx: f32 = rng.random_range(r + 0.02..1.0 - r - 0.06);
        let cy: f32 = rng.random_range(r + 0.02..1.0 - r - 0.06);
        let (cname, base) = SPRITE_COLOURS[rng.random_range(0..SPRITE_COLOURS.len())];
        let apart = placed.iter().all(|&(_, x, y, q, _)| {
            ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() > 1.05 * (q + r) + 0.03
        });
        if !apart {
            continue;
        }
        placed.push((shape, cx, cy, r, base));
        labels.push(json!({
            "shape": SPRITE_SHAPES[shape], "colour": cname, "size": r,
            "x": cx, "y": cy,
        }));
    }
    if !night {
        for &(shape, cx, cy, r, _) in &placed {
            canvas.paint(
                None,
                |u, v| in_shape(shape, cx + 0.04, cy + 0.04, r, u, v),
                |_, _| [0.25, 0.25, 0.25],
            );
        }
    }
    for (id, &(shape, cx, cy, r, base)) in placed.iter().enumerate() {
        canvas.paint(
            Some(id),
            |u, v| in_shape(shape, cx, cy, r, u, v),
            |u, v| {
                // Lambert-like shading from the upper left.
                let shade = (1.0 - 0.6 * ((u - cx) + (v - cy)) / (2.0 * r)).clamp(0.5, 1.3);
                if night {
                    [
                        (0.55 + 0.45 * base[0]) * shade,
                        (0.55 + 0.45 * base[1]) * shade,
                        (0.55 + 0.45 * base[2]) * shade,
                    ]
                } else {
                    [base[0] * shade, base[1] * shade, base[2] * shade]
                }
            },
        );
    }
    let n = placed.len();
    scene(canvas, n, json!({ "objects": labels }))
}

fn falcor_scene(rng: &mut SeededRng) -> Scene {
    let mut idx = [0usize; 5];
    for v in &mut idx {
        *v = rng.random_range(0..FALCOR_LEVELS);
    }
    render_falcor(idx)
}

/// The Falcor-lite scene at the factor levels `idx` (each in 0..[`FALCOR_LEVELS`], in the
/// order of [`FALCOR_FACTORS`]), for loops over the factor grid; [`try_falcor_render`] is the
/// same for levels that come from a caller.
///
/// # Panics
///
/// If a level is out of range.
pub fn falcor_render(idx: [usize; 5]) -> Scene {
    assert!(
        idx.iter().all(|&i| i < FALCOR_LEVELS),
        "factor levels out of range: {idx:?}"
    );
    render_falcor(idx)
}

/// [`falcor_render`] with the levels checked: [`Error::Config`] names a level outside
/// 0..[`FALCOR_LEVELS`].
pub fn try_falcor_render(idx: [usize; 5]) -> Result<Scene> {
    if let Some(k) = idx.iter().position(|&i| i >= FALCOR_LEVELS) {
        return Err(Error::Config(format!(
            "{} level {} is out of range (0..{FALCOR_LEVELS})",
            FALCOR_FACTORS[k], idx[k]
        )));
    }
    Ok(render_falcor(idx))
}

/// The Falcor-lite scene at levels already known to be in range.
fn render_falcor(idx: [usize; 5]) -> Scene {
    let level = |k: usize| idx[k] as f32 / (FALCOR_LEVELS - 1) as f32;
    let intensity = 0.5 + 0.7 * level(0);
    let light_angle = std::f32::consts::PI * (0.15 + 0.7 * level(1));
    let (lx, ly) = (light_angle.cos(), -light_angle.sin().abs());
    let temp = level(2);
    let tint = [1.0 + 0.3 * (temp - 0.5), 1.0, 1.0 - 0.3 * (temp - 0.5)];
    let shift = 0.16 * (level(3) - 0.5);
    let zoom = 0.8 + 0.4 * level(4);
    // Scene coordinates: view (u, v) ↦ world ((u − 0.5)/zoom + 0.5 − shift, (v − 0.5)/zoom + 0.5).
    let world = move |u: f32, v: f32| ((u - 0.5) / zoom + 0.5 - shift, (v - 0.5) / zoom + 0.5);
    let lit = move |c: [f32; 3], light: f32| {
        [
            (c[0] * light * intensity * tint[0]).min(1.0),
            (c[1] * light * intensity * tint[1]).min(1.0),
            (c[2] * light * intensity * tint[2]).min(1.0),
        ]
    };
    let mut canvas = Canvas::new(IMAGE_SIZE, move |u, v| {
        let (_, wy) = world(u, v);
        if wy > 0.62 {
            lit([0.55, 0.5, 0.45], 0.8)
        } else {
            lit([0.35, 0.4, 0.55], 0.6)
        }
    });
    // Ball at (0.38, 0.55), radius 0.14; block [0.58, 0.78] × [0.42, 0.7]. The ball's shadow
    // is a flat ellipse on the floor, displaced away from the light.
    canvas.paint(
        None,
        move |u, v| {
            let (wx, wy) = world(u, v);
            let (dx, dy) = ((wx - 0.38 + 0.12 * lx) / 0.16, (wy - 0.69) / 0.04);
            dx * dx + dy * dy <= 1.0
        },
        move |_, _| lit([0.2, 0.2, 0.2], 0.8),
    );
    canvas.paint(
        None,
        move |u, v| {
            let (wx, wy) = world(u, v);
            (0.58..=0.78).contains(&wx) && (0.42..=0.7).contains(&wy)
        },
        move |u, _| {
            let (wx, _) = world(u, 0.5);
            let light = 0.6 + 0.4 * (if (wx - 0.68) * lx > 0.0 { 1.0 } else { 0.5 });
            lit([0.75, 0.7, 0.3], light)
        },
    );
    canvas.paint(
        None,
        move |u, v| {
            let (wx, wy) = world(u, v);
            (wx - 0.38).powi(2) + (wy - 0.55).powi(2) <= 0.14 * 0.14
        },
        move |u, v| {
            let (wx, wy) = world(u, v);
            let (nx, ny) = ((wx - 0.38) / 0.14, (wy - 0.55) / 0.14);
            let nz = (1.0 - nx * nx - ny * ny).max(0.0).sqrt();
            let light = (0.25 + 0.75 * (nx * lx + ny * ly + 0.6 * nz).max(0.0)).min(1.2);
            lit([0.8, 0.25, 0.25], light)
        },
    );
    let factors: serde_json::Map<String, Value> = FALCOR_FACTORS
        .iter()
        .zip(&idx)
        .map(|(name, &i)| (name.to_string(), json!(i)))
        .collect();
    scene(canvas, 0, json!({ "factors": factors }))
}

/// Image `index` of the dataset `kind` drawn with `seed`.
pub fn generate(kind: Kind, seed: u64, index: u64) -> Scene {
    let mut rng = seeded(seed);
    rng.set_stream(index);
    match kind {
        Kind::Tetrominoes => tetromino_scene(&mut rng),
        Kind::MultiSprites => sprite_scene(&mut rng, false),
        Kind::SpritesNight => sprite_scene(&mut rng, true),
        Kind::FalcorLite => falcor_scene(&mut rng),
    }
}

/// Writes `num` images of `kind` drawn with `seed` to `dir`: `image_NNNNN.png`,
/// `mask_NNNNN_K.png` per object (white where the object is visible) and `labels.json` (one
/// entry per image: file, masks, labels).
///
/// # Errors
///
/// [`Error::Config`] for `num` = 0; [`Error::Io`] if a file cannot be written.
///
/// A dataset whose [`write_estimate`] exceeds the machine's available memory is refused with
/// [`Error::Memory`] before anything is written.
pub fn write_dataset(kind: Kind, num: usize, seed: u64, dir: &Path) -> Result<()> {
    write_dataset_within(kind, num, seed, dir, MemoryLimit::available())
}

/// Bytes of one image's entry in `labels.json` the estimate allows: the JSON tree of its file,
/// mask names and object labels, and its pretty-printed text.
const LABEL_BYTES: usize = 8 << 10;

/// Peak bytes of [`write_dataset`] for `num` images: per image its `labels.json` entry, kept
/// until the end (`LABEL_BYTES` for the JSON tree and the text), and the buffers of the one
/// scene being written (its `f32` RGB image, masks, 8-bit copies and encoder state, at most
/// 16 `f32` planes of S² values).
pub fn write_estimate(num: usize) -> Estimate {
    Estimate::array(&[num], LABEL_BYTES) + Estimate::f32s(&[16, IMAGE_SIZE, IMAGE_SIZE])
}

/// [`write_dataset`] under an explicit memory limit, checked against [`write_estimate`].
pub fn write_dataset_within(
    kind: Kind,
    num: usize,
    seed: u64,
    dir: &Path,
    limit: MemoryLimit,
) -> Result<()> {
    if num == 0 {
        return Err(Error::Config("a dataset needs at least one image".into()));
    }
    limit.check(
        format_args!("a {} dataset of {num} images", kind.name()),
        write_estimate(num),
    )?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut entries = Vec::with_capacity(num);
    for i in 0..num {
        let scene = generate(kind, seed, i as u64);
        let file = format!("image_{i:05}.png");
        write_rgb_png(&dir.join(&file), &scene.image, IMAGE_SIZE)?;
        let mut masks = Vec::new();
        for (k, m) in scene.masks.iter().enumerate() {
            let name = format!("mask_{i:05}_{k}.png");
            write_mask_png(&dir.join(&name), m, IMAGE_SIZE)?;
            masks.push(name);
        }
        entries.push(json!({ "file": file, "masks": masks, "labels": scene.labels }));
    }
    let labels = json!({
        "dataset": kind.name(), "seed": seed, "size": IMAGE_SIZE, "images": entries,
    });
    write_json(&dir.join("labels.json"), &labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_images_and_any_index_stands_alone() {
        for kind in Kind::ALL {
            let a = generate(kind, 5, 3);
            assert_eq!(a, generate(kind, 5, 3), "{kind:?}");
            assert_ne!(a.image, generate(kind, 6, 3).image, "{kind:?}");
            assert_ne!(a.image, generate(kind, 5, 4).image, "{kind:?}");
            assert_eq!(a.image.len(), 3 * IMAGE_SIZE * IMAGE_SIZE);
            assert!(a.image.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    /// FNV-1a over the `f32` bits of images and backgrounds, the masks and the label text of
    /// images 0..64 of seed 11.
    fn digest(kind: Kind) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |word: u32| {
            for byte in word.to_le_bytes() {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for i in 0..64 {
            let s = generate(kind, 11, i);
            for v in s.image.iter().chain(&s.background) {
                eat(v.to_bits());
            }
            for m in &s.masks {
                for &b in m {
                    eat(u32::from(b));
                }
            }
            for b in s.labels.to_string().bytes() {
                eat(u32::from(b));
            }
        }
        h
    }

    /// The committed fixtures and reports were made from these exact images: any change to
    /// the arithmetic or the order of the random draws shows here.
    #[test]
    fn images_are_bit_identical_to_the_recorded_ones() {
        let want = [
            (Kind::Tetrominoes, 0x77d8_b847_14cf_b950),
            (Kind::MultiSprites, 0x669d_13f7_61db_4f61),
            (Kind::SpritesNight, 0x0c8e_92ba_21b3_6891),
            (Kind::FalcorLite, 0x711b_3721_427e_d3dc),
        ];
        for (kind, digest_want) in want {
            assert_eq!(digest(kind), digest_want, "{kind:?}");
        }
    }

    #[test]
    fn tetrominoes_have_three_disjoint_four_cell_pieces() {
        for i in 0..50 {
            let s = generate(Kind::Tetrominoes, 1, i);
            assert_eq!(s.masks.len(), 3);
            for m in &s.masks {
                // Four cells of 4×4 pixels each.
                assert_eq!(
                    m.iter().filter(|&&b| b).count(),
                    4 * CELL * CELL,
                    "image {i}"
                );
            }
            for p in 0..IMAGE_SIZE * IMAGE_SIZE {
                assert!(s.masks.iter().filter(|m| m[p]).count() <= 1);
                let lit = (0..3).any(|k| s.image[k * IMAGE_SIZE * IMAGE_SIZE + p] > 0.0);
                assert_eq!(lit, s.masks.iter().any(|m| m[p]), "image {i} pixel {p}");
            }
            let objects = s.labels["objects"].as_array().map_or(0, Vec::len);
            assert_eq!(objects, 3);
        }
        assert_eq!(tetrominoes().len(), 19);
    }

    #[test]
    fn sprites_have_two_to_four_visible_objects_matching_their_labels() {
        for kind in [Kind::MultiSprites, Kind::SpritesNight] {
            let mut counts = [0usize; 5];
            for i in 0..60 {
                let s = generate(kind, 2, i);
                let n = s.masks.len();
                assert!((2..=4).contains(&n), "{kind:?} image {i}: {n} objects");
                counts[n] += 1;
                assert_eq!(s.labels["objects"].as_array().map_or(0, Vec::len), n);
                for m in &s.masks {
                    // The smallest triangle covers 2r² ≈ 16.6 pixels.
                    assert!(m.iter().filter(|&&b| b).count() >= 12, "{kind:?} image {i}");
                }
            }
            assert!(
                counts[2] > 0 && counts[3] > 0 && counts[4] > 0,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn the_background_is_the_scene_without_its_objects() {
        let n = IMAGE_SIZE * IMAGE_SIZE;
        for kind in [Kind::Tetrominoes, Kind::MultiSprites, Kind::SpritesNight] {
            for i in 0..20 {
                let s = generate(kind, 3, i);
                assert_eq!(s.background.len(), 3 * n);
                if kind == Kind::Tetrominoes {
                    assert!(s.background.iter().all(|&v| v == 0.0));
                }
                // Shadows and anti-aliased edges stay within 2 px of their object.
                let near = |p: usize| {
                    let (y, x) = ((p / IMAGE_SIZE) as isize, (p % IMAGE_SIZE) as isize);
                    s.masks.iter().any(|m| {
                        (-2..=2).any(|dy| {
                            (-2..=2).any(|dx| {
                                let (yy, xx) = (y + dy, x + dx);
                                (0..IMAGE_SIZE as isize).contains(&yy)
                                    && (0..IMAGE_SIZE as isize).contains(&xx)
                                    && m[yy as usize * IMAGE_SIZE + xx as usize]
                            })
                        })
                    })
                };
                let diff = |p: usize| {
                    (0..3)
                        .map(|k| (s.image[k * n + p] - s.background[k * n + p]).abs())
                        .fold(0.0f32, f32::max)
                };
                for p in (0..n).filter(|&p| !near(p)) {
                    assert_eq!(diff(p), 0.0, "{kind:?} image {i} pixel {p}");
                }
                for m in &s.masks {
                    let on: Vec<f32> = (0..n).filter(|&p| m[p]).map(diff).collect();
                    let mean = on.iter().sum::<f32>() / on.len() as f32;
                    assert!(mean > 0.2, "{kind:?} image {i}: object {mean}");
                }
            }
        }
    }

    #[test]
    fn every_falcor_factor_changes_the_image() {
        let base = falcor_render([2; 5]);
        for k in 0..FALCOR_FACTORS.len() {
            let mut idx = [2; 5];
            idx[k] = 4;
            let other = falcor_render(idx);
            let diff: f32 = other
                .image
                .iter()
                .zip(&base.image)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / base.image.len() as f32;
            assert!(diff > 0.005, "{}: mean change {diff}", FALCOR_FACTORS[k]);
        }
    }

    #[test]
    fn out_of_range_falcor_levels_are_an_error() {
        assert_eq!(
            try_falcor_render([1, 2, 3, 4, 0]).ok(),
            Some(falcor_render([1, 2, 3, 4, 0]))
        );
        let err = try_falcor_render([0, 0, FALCOR_LEVELS, 0, 0]).err();
        assert!(
            matches!(&err, Some(Error::Config(m)) if m.contains("colour_temperature")),
            "{err:?}"
        );
    }

    #[test]
    fn falcor_factors_cover_the_grid() {
        let mut seen = vec![[false; FALCOR_LEVELS]; FALCOR_FACTORS.len()];
        for i in 0..200 {
            let s = generate(Kind::FalcorLite, 3, i);
            for (k, name) in FALCOR_FACTORS.iter().enumerate() {
                let v = s.labels["factors"][name].as_u64().expect("factor index") as usize;
                seen[k][v] = true;
            }
        }
        assert!(seen.iter().all(|f| f.iter().all(|&b| b)));
    }

    #[test]
    fn writes_pngs_masks_and_labels() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("recompose-datasets-{}", std::process::id()));
        write_dataset(Kind::Tetrominoes, 3, 9, &dir)?;
        let labels: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("labels.json")).map_err(io(&dir))?,
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        assert_eq!(labels["images"].as_array().map_or(0, Vec::len), 3);
        assert!(dir.join("image_00002.png").is_file());
        assert!(dir.join("mask_00002_2.png").is_file());
        assert!(write_dataset(Kind::Tetrominoes, 0, 9, &dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
