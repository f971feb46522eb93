//! Shapes-text: captioned scenes of coloured shapes, for compositional generation from text.
//!
//! The protocol follows the image experiments of Liu et al., *Compositional Visual Generation
//! with Composable Diffusion Models* (ECCV 2022), and Du et al., *Reduce, Reuse, Recycle:
//! Compositional Generation with Energy-Based Diffusion Models and MCMC* (ICML 2023): a model
//! learns p(image | one condition) from images paired with a description of *one* of their
//! objects, and generation composes several conditions (products, negations) that no training
//! image was described by at once. Their CLEVR renders and trained classifiers are replaced
//! here by a procedural generator and a deterministic [`check`]er, and the conditions are text,
//! so the same model takes prompts such as `"green"`, `"circle top left"` or
//! `"blue square bottom right"`.
//!
//! - A scene holds 1–3 objects on a flat dark background ([`BACKGROUND`]), each in its own
//!   quadrant ([`Position`]), with a [`Colour`] and a [`Shape`]; size and centre are jittered
//!   inside the quadrant and objects never overlap or touch. Images are `size × size`
//!   ([`SIZES`]: 32 or 64 pixels), planar `[3, size, size]` `f32` in \[0, 1\], with anti-aliased
//!   edges; scene i of a dataset depends only on (seed, i) — the same objects at every size.
//! - Every object carries its ground truth ([`Object`]: attributes, mask, centre, size) and a
//!   canonical caption, colour then shape then position: `"red circle top left"`.
//! - A [`Condition`] names a colour, a shape, a position or any combination of them; it reads
//!   from and prints as text, and [`partial_caption`] draws a random non-empty part of an
//!   object's caption, so that training makes `"green"` alone mean something. [`vocabulary`]
//!   lists every word.
//! - [`ShapesText::write`] writes `image_NNNNN.png`, `mask_NNNNN_K.png` per object,
//!   `labels.json` and `captions.jsonl` — per image every partial caption of every object
//!   ([`partial_captions`]), the captioned-folder format a text-conditioned model trains on.

pub mod check;

use std::fmt;
use std::ops::Range;
use std::path::Path;

use rand::Rng;
use recompose_core::memory::{Estimate, MemoryLimit};
use recompose_core::random::seeded;
use serde_json::{Value, json};

use crate::raster::{Canvas, io, write_json, write_mask_png, write_rgb_png};
use crate::{Error, Result};

/// The image sides the dataset is drawn at, in pixels.
pub const SIZES: [usize; 2] = [32, 64];
/// The image side used unless another is asked for.
pub const DEFAULT_SIZE: usize = 32;
/// The flat background colour.
pub const BACKGROUND: [f32; 3] = [0.1, 0.1, 0.1];
/// The most objects in one scene (the fewest is one).
pub const MAX_OBJECTS: usize = 3;
/// The dataset's name on the command line and in `labels.json`.
pub const NAME: &str = "shapes-text";
/// The token sequence length for a tokenizer of the captions: the longest caption (four
/// words) with start and end tokens, and room to spare.
pub const PROMPT_LEN: usize = 8;

/// Smallest and largest half-extent of an object, as a fraction of the image side (4 and 6
/// pixels at 32).
const HALF_EXTENT: (f32, f32) = (0.125, 0.1875);
/// The least gap between an object and the edges of its quadrant, as a fraction of the image
/// side (just over a pixel at 32): objects in neighbouring quadrants stay at least two pixels
/// apart.
const MARGIN: f32 = 0.035;

/// An object's colour: flat, saturated and far apart in RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    /// `red`.
    Red,
    /// `green`.
    Green,
    /// `blue`.
    Blue,
    /// `yellow`.
    Yellow,
}

impl Colour {
    /// Every colour, in vocabulary order.
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

    /// The word.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    /// The RGB value it is painted with.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Colour::Red => [0.9, 0.1, 0.1],
            Colour::Green => [0.1, 0.8, 0.1],
            Colour::Blue => [0.1, 0.2, 0.9],
            Colour::Yellow => [0.9, 0.85, 0.1],
        }
    }
}

/// An object's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// `circle`: a disk of radius r.
    Circle,
    /// `square`: an axis-aligned square of side 2r.
    Square,
    /// `triangle`: an upward isosceles triangle of base and height 2r.
    Triangle,
}

impl Shape {
    /// Every shape, in vocabulary order.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The word.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// Whether (u, v) lies in the shape centred at (cx, cy) with half-extent r (coordinates
    /// as fractions of the image side, v downwards).
    fn contains(self, cx: f32, cy: f32, r: f32, u: f32, v: f32) -> bool {
        let (dx, dy) = (u - cx, v - cy);
        match self {
            Shape::Circle => dx * dx + dy * dy <= r * r,
            Shape::Square => dx.abs() <= r && dy.abs() <= r,
            // Apex at cy − r, base at cy + r.
            Shape::Triangle => (-r..=r).contains(&dy) && dx.abs() <= (dy + r) / 2.0,
        }
    }
}

/// An object's position: the quadrant of the image it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Position {
    /// `top left`.
    TopLeft,
    /// `top right`.
    TopRight,
    /// `bottom left`.
    BottomLeft,
    /// `bottom right`.
    BottomRight,
}

impl Position {
    /// Every position, in reading order.
    pub const ALL: [Position; 4] = [
        Position::TopLeft,
        Position::TopRight,
        Position::BottomLeft,
        Position::BottomRight,
    ];

    /// The two words.
    pub fn name(self) -> &'static str {
        match self {
            Position::TopLeft => "top left",
            Position::TopRight => "top right",
            Position::BottomLeft => "bottom left",
            Position::BottomRight => "bottom right",
        }
    }

    /// The quadrant on the given side vertically (`top`) and horizontally (`left`).
    pub fn from_sides(top: bool, left: bool) -> Self {
        match (top, left) {
            (true, true) => Position::TopLeft,
            (true, false) => Position::TopRight,
            (false, true) => Position::BottomLeft,
            (false, false) => Position::BottomRight,
        }
    }

    /// The quadrant holding the point (x, y), coordinates as fractions of the image side with
    /// y downwards; the middle lines belong to the right and bottom halves.
    pub fn of_point(x: f32, y: f32) -> Self {
        Self::from_sides(y < 0.5, x < 0.5)
    }

    /// Whether it is one of the two top quadrants.
    pub fn is_top(self) -> bool {
        matches!(self, Position::TopLeft | Position::TopRight)
    }

    /// Whether it is one of the two left quadrants.
    pub fn is_left(self) -> bool {
        matches!(self, Position::TopLeft | Position::BottomLeft)
    }

    /// The quadrant's upper-left corner as fractions of the image side.
    fn origin(self) -> (f32, f32) {
        (
            if self.is_left() { 0.0 } else { 0.5 },
            if self.is_top() { 0.0 } else { 0.5 },
        )
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The three attributes of an object, which its caption names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attributes {
    /// Its colour.
    pub colour: Colour,
    /// Its shape.
    pub shape: Shape,
    /// Its quadrant.
    pub position: Position,
}

impl Attributes {
    /// The canonical caption, colour then shape then position: `"red circle top left"`.
    pub fn caption(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.colour, self.shape, self.position)
    }
}

/// One object of a scene with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Colour, shape and position.
    pub attributes: Attributes,
    /// The centre (x, y) as fractions of the image side, y downwards.
    pub centre: [f32; 2],
    /// The half-extent r as a fraction of the image side: the circle's radius, half the
    /// square's side, half the triangle's base and height.
    pub size: f32,
    /// `size × size` (pixels), set where the object covers at least half of the pixel.
    pub mask: Vec<bool>,
}

impl Object {
    /// The canonical caption (see [`Attributes::caption`]).
    pub fn caption(&self) -> String {
        self.attributes.caption()
    }
}

/// One image of the dataset with its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The image side in pixels.
    pub size: usize,
    /// `[3, size, size]` in \[0, 1\].
    pub image: Vec<f32>,
    /// 1 to [`MAX_OBJECTS`] objects, each in a different quadrant.
    pub objects: Vec<Object>,
}

impl Scene {
    /// The attributes of every object, in object order.
    pub fn attributes(&self) -> Vec<Attributes> {
        self.objects.iter().map(|o| o.attributes).collect()
    }

    /// The caption of every object, in object order.
    pub fn captions(&self) -> Vec<String> {
        self.objects.iter().map(Object::caption).collect()
    }
}

/// The shapes-text dataset drawn with a seed at one image size: an endless sequence of scenes,
/// scene i a function of (seed, i) alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapesText {
    seed: u64,
    size: usize,
}

impl ShapesText {
    /// The dataset of `seed` at `size × size` pixels.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a size not in [`SIZES`].
    pub fn new(seed: u64, size: usize) -> Result<Self> {
        if !SIZES.contains(&size) {
            return Err(Error::Config(format!(
                "the {NAME} images are {} pixels square, not {size}",
                SIZES.map(|s| s.to_string()).join(" or ")
            )));
        }
        Ok(Self { seed, size })
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The image side in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Scene `index`.
    pub fn scene(&self, index: u64) -> Scene {
        let mut rng = seeded(self.seed);
        rng.set_stream(index);
        let count = rng.random_range(1..=MAX_OBJECTS);
        // The first `count` entries of a partial shuffle are the occupied quadrants.
        let mut quadrants = Position::ALL;
        for k in 0..count {
            let j = rng.random_range(k..quadrants.len());
            quadrants.swap(k, j);
        }
        let mut canvas = Canvas::new(self.size, |_, _| BACKGROUND);
        let s = self.size as f32;
        let mut placed = Vec::with_capacity(count);
        for (id, &position) in quadrants[..count].iter().enumerate() {
            let colour = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
            let shape = Shape::ALL[rng.random_range(0..Shape::ALL.len())];
            let r: f32 = rng.random_range(HALF_EXTENT.0..=HALF_EXTENT.1);
            let (qx, qy) = position.origin();
            let (lo, hi) = (r + MARGIN, 0.5 - r - MARGIN);
            let cx = qx + rng.random_range(lo..=hi);
            let cy = qy + rng.random_range(lo..=hi);
            // The pixels the shape can touch.
            let span = |c: f32| {
                let first = ((c - r) * s).floor().max(0.0) as usize;
                first..((c + r) * s).ceil() as usize + 1
            };
            let rgb = colour.rgb();
            canvas.paint_within(
                span(cy),
                span(cx),
                Some(id),
                |u, v| shape.contains(cx, cy, r, u, v),
                |_, _| rgb,
            );
            placed.push((
                Attributes {
                    colour,
                    shape,
                    position,
                },
                [cx, cy],
                r,
            ));
        }
        let raster = canvas.finish(count);
        let objects = placed
            .into_iter()
            .zip(raster.masks)
            .map(|((attributes, centre, size), mask)| Object {
                attributes,
                centre,
                size,
                mask,
            })
            .collect();
        Scene {
            size: self.size,
            image: raster.image,
            objects,
        }
    }

    /// Scenes `indices`, each the same as drawn alone by [`ShapesText::scene`].
    pub fn scenes(&self, indices: Range<u64>) -> Vec<Scene> {
        indices.map(|i| self.scene(i)).collect()
    }

    /// Writes scenes `0..num` to `dir`: `image_NNNNN.png`, `mask_NNNNN_K.png` per object
    /// (white where the object is visible), `labels.json` (the dataset, seed and size, and
    /// per image its file, masks, captions and objects with their attributes, caption, centre
    /// and size) and `captions.jsonl` (one line per image, `{"file": …, "captions": […]}`, with
    /// the [`partial_captions`] of all its objects, each text once).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `num` = 0; [`Error::Io`] or [`Error::Format`] if a file cannot be
    /// written; [`Error::Memory`], before anything is written, when [`write_estimate`]
    /// exceeds the machine's available memory.
    pub fn write(&self, num: usize, dir: &Path) -> Result<()> {
        self.write_within(num, dir, MemoryLimit::available())
    }

    /// [`ShapesText::write`] under an explicit memory limit, checked against
    /// [`write_estimate`].
    pub fn write_within(&self, num: usize, dir: &Path, limit: MemoryLimit) -> Result<()> {
        if num == 0 {
            return Err(Error::Config("a dataset needs at least one image".into()));
        }
        limit.check(
            format_args!("a {NAME} dataset of {num} images"),
            write_estimate(num, self.size),
        )?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut entries = Vec::with_capacity(num);
        let mut lines = String::new();
        for i in 0..num {
            let scene = self.scene(i as u64);
            let file = format!("image_{i:05}.png");
            write_rgb_png(&dir.join(&file), &scene.image, self.size)?;
            let mut masks = Vec::with_capacity(scene.objects.len());
            for (k, object) in scene.objects.iter().enumerate() {
                let name = format!("mask_{i:05}_{k}.png");
                write_mask_png(&dir.join(&name), &object.mask, self.size)?;
                masks.push(name);
            }
            let mut texts: Vec<String> = Vec::new();
            for object in &scene.objects {
                for c in partial_captions(&object.attributes) {
                    let text = c.to_string();
                    if !texts.contains(&text) {
                        texts.push(text);
                    }
                }
            }
            lines.push_str(&json!({ "file": file, "captions": texts }).to_string());
            lines.push('\n');
            entries.push(json!({
                "file": file,
                "masks": masks,
                "captions": scene.captions(),
                "objects": scene.objects.iter().map(object_label).collect::<Vec<_>>(),
            }));
        }
        let labels = json!({
            "dataset": NAME, "seed": self.seed, "size": self.size, "images": entries,
        });
        write_json(&dir.join("labels.json"), &labels)?;
        let captions = dir.join("captions.jsonl");
        std::fs::write(&captions, lines).map_err(io(&captions))
    }
}

/// An object's entry in `labels.json`.
fn object_label(object: &Object) -> Value {
    let a = object.attributes;
    json!({
        "colour": a.colour.name(),
        "shape": a.shape.name(),
        "position": a.position.name(),
        "caption": object.caption(),
        "centre": object.centre,
        "size": object.size,
    })
}

/// Bytes of one image's entries the estimate allows: in `labels.json` the JSON tree of its
/// file, mask names, captions and objects and its pretty-printed text, and its line of
/// `captions.jsonl` (at most 21 partial captions).
const LABEL_BYTES: usize = 8 << 10;

/// Peak bytes of [`ShapesText::write`] for `num` images of `size × size` pixels: per image its
/// `labels.json` entry, kept until the end, and the buffers of the one scene being written (its
/// canvas, `f32` image, masks, 8-bit copies and encoder state, at most 16 `f32` planes).
pub fn write_estimate(num: usize, size: usize) -> Estimate {
    Estimate::array(&[num], LABEL_BYTES) + Estimate::f32s(&[16, size, size])
}

/// A condition on the objects of an image: a colour, a shape, a position, or several of them
/// that one object must have together. It is never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Condition {
    colour: Option<Colour>,
    shape: Option<Shape>,
    position: Option<Position>,
}

impl Condition {
    /// The condition naming the given attributes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when all three are `None`.
    pub fn new(
        colour: Option<Colour>,
        shape: Option<Shape>,
        position: Option<Position>,
    ) -> Result<Self> {
        if colour.is_none() && shape.is_none() && position.is_none() {
            return Err(Error::Config(
                "a condition names at least a colour, a shape or a position".into(),
            ));
        }
        Ok(Self {
            colour,
            shape,
            position,
        })
    }

    /// The condition naming all three attributes of an object (its full caption).
    pub fn of(attributes: Attributes) -> Self {
        Self {
            colour: Some(attributes.colour),
            shape: Some(attributes.shape),
            position: Some(attributes.position),
        }
    }

    /// Every condition there is (each non-empty combination of a colour or none, a shape or
    /// none and a position or none), in a fixed order.
    pub fn all() -> Vec<Condition> {
        let colours = std::iter::once(None).chain(Colour::ALL.map(Some));
        let mut out = Vec::new();
        for colour in colours {
            for shape in std::iter::once(None).chain(Shape::ALL.map(Some)) {
                for position in std::iter::once(None).chain(Position::ALL.map(Some)) {
                    if let Ok(c) = Self::new(colour, shape, position) {
                        out.push(c);
                    }
                }
            }
        }
        out
    }

    /// The colour it names, if any.
    pub fn colour(&self) -> Option<Colour> {
        self.colour
    }

    /// The shape it names, if any.
    pub fn shape(&self) -> Option<Shape> {
        self.shape
    }

    /// The position it names, if any.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// Whether an object with these attributes has every attribute the condition names.
    pub fn matches(&self, attributes: &Attributes) -> bool {
        self.colour.is_none_or(|c| c == attributes.colour)
            && self.shape.is_none_or(|s| s == attributes.shape)
            && self.position.is_none_or(|p| p == attributes.position)
    }

    /// Reads a condition from text: words of the [`vocabulary`] separated by whitespace, in
    /// any case and any order, each attribute named at most once; a position is two words, a
    /// side vertically (`top`, `bottom`) and one horizontally (`left`, `right`). The canonical
    /// order is that of captions: `"blue square bottom right"`.
    ///
    /// # Errors
    ///
    /// [`Error::Condition`] naming the first word that is unknown, repeats or contradicts an
    /// attribute already named, or is half a position; or naming nothing for a text without
    /// words.
    pub fn parse(text: &str) -> Result<Self> {
        let fail = |word: &str, reason: String| Error::Condition {
            text: text.to_string(),
            word: word.to_string(),
            reason,
        };
        let lower = text.to_lowercase();
        let mut colour: Option<(Colour, &str)> = None;
        let mut shape: Option<(Shape, &str)> = None;
        let mut vertical: Option<(bool, &str)> = None;
        let mut horizontal: Option<(bool, &str)> = None;
        for word in lower.split_whitespace() {
            let clash = |slot: &str, before: &str| {
                let reason = if before == word {
                    format!("`{word}` names the {slot} twice")
                } else {
                    format!("`{word}` contradicts `{before}`: one {slot} per condition")
                };
                fail(word, reason)
            };
            if let Some(c) = Colour::ALL.into_iter().find(|c| c.name() == word) {
                if let Some((_, before)) = colour {
                    return Err(clash("colour", before));
                }
                colour = Some((c, word));
            } else if let Some(s) = Shape::ALL.into_iter().find(|s| s.name() == word) {
                if let Some((_, before)) = shape {
                    return Err(clash("shape", before));
                }
                shape = Some((s, word));
            } else if word == "top" || word == "bottom" {
                if let Some((_, before)) = vertical {
                    return Err(clash("vertical side", before));
                }
                vertical = Some((word == "top", word));
            } else if word == "left" || word == "right" {
                if let Some((_, before)) = horizontal {
                    return Err(clash("horizontal side", before));
                }
                horizontal = Some((word == "left", word));
            } else {
                return Err(fail(
                    word,
                    format!(
                        "`{word}` is not a word of the vocabulary ({})",
                        vocabulary().join(", ")
                    ),
                ));
            }
        }
        let position = match (vertical, horizontal) {
            (Some((top, _)), Some((left, _))) => Some(Position::from_sides(top, left)),
            (Some((_, word)), None) => {
                return Err(fail(
                    word,
                    format!("`{word}` is half a position: add `left` or `right`"),
                ));
            }
            (None, Some((_, word))) => {
                return Err(fail(
                    word,
                    format!("`{word}` is half a position: add `top` or `bottom`"),
                ));
            }
            (None, None) => None,
        };
        Self::new(colour.map(|c| c.0), shape.map(|s| s.0), position)
            .map_err(|_| fail("", "it names no colour, shape or position".to_string()))
    }
}

impl std::str::FromStr for Condition {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for Condition {
    /// The canonical text: the attributes it names, colour then shape then position.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = [
            self.colour.map(Colour::name),
            self.shape.map(Shape::name),
            self.position.map(Position::name),
        ];
        let mut first = true;
        for word in words.into_iter().flatten() {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(word)?;
            first = false;
        }
        Ok(())
    }
}

/// Every word of the captions and conditions: the colours, the shapes, then `top`, `bottom`,
/// `left`, `right`. A tokenizer built from it covers every text of the dataset.
pub fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = Colour::ALL.map(Colour::name).to_vec();
    words.extend(Shape::ALL.map(Shape::name));
    words.extend(["top", "bottom", "left", "right"]);
    words
}

/// Every partial caption of an object: the seven conditions naming a non-empty subset of its
/// attributes, in the order of [`partial_caption`]'s subsets (colour alone first, the whole
/// caption last).
pub fn partial_captions(attributes: &Attributes) -> Vec<Condition> {
    (1u8..8)
        .map(|subset| Condition {
            colour: (subset & 1 != 0).then_some(attributes.colour),
            shape: (subset & 2 != 0).then_some(attributes.shape),
            position: (subset & 4 != 0).then_some(attributes.position),
        })
        .collect()
}

/// A random partial caption of an object: a condition naming a non-empty subset of its three
/// attributes, each of the seven subsets equally likely; its text (`to_string`) is in canonical
/// order. Training on these makes a lone `"green"` or `"top left"` a prompt the model knows.
pub fn partial_caption<R: Rng + ?Sized>(attributes: &Attributes, rng: &mut R) -> Condition {
    let subset: u8 = rng.random_range(1..8);
    partial_captions(attributes)[usize::from(subset) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn data(seed: u64, size: usize) -> ShapesText {
        match ShapesText::new(seed, size) {
            Ok(d) => d,
            Err(e) => panic!("size {size}: {e}"),
        }
    }

    #[test]
    fn scenes_follow_the_seed_and_stand_alone() {
        let d = data(4, 32);
        let batch = d.scenes(10..20);
        for (k, scene) in batch.iter().enumerate() {
            assert_eq!(*scene, d.scene(10 + k as u64));
        }
        assert_eq!(d.scene(3), data(4, 32).scene(3));
        assert_ne!(d.scene(3).image, data(5, 32).scene(3).image);
        assert_ne!(d.scene(3).image, d.scene(4).image);
        // The same objects at both sizes.
        assert_eq!(d.scene(7).attributes(), data(4, 64).scene(7).attributes());
        assert_eq!(
            d.scene(7).objects[0].centre,
            data(4, 64).scene(7).objects[0].centre
        );
    }

    #[test]
    fn only_sizes_32_and_64() {
        for size in [0, 16, 33, 128] {
            assert!(
                matches!(ShapesText::new(0, size), Err(Error::Config(_))),
                "{size}"
            );
        }
    }

    #[test]
    fn objects_sit_apart_in_their_quadrants_and_cover_the_vocabulary() {
        let mut counts = [0usize; MAX_OBJECTS + 1];
        let mut seen: HashMap<Attributes, usize> = HashMap::new();
        for size in SIZES {
            let d = data(1, size);
            let n = size * size;
            for i in 0..300 {
                let scene = d.scene(i);
                assert_eq!(scene.image.len(), 3 * n);
                assert!(scene.image.iter().all(|v| (0.0..=1.0).contains(v)));
                let k = scene.objects.len();
                assert!((1..=MAX_OBJECTS).contains(&k), "image {i}: {k} objects");
                counts[k] += 1;
                let mut quadrants: Vec<Position> = scene
                    .objects
                    .iter()
                    .map(|o| o.attributes.position)
                    .collect();
                quadrants.sort();
                quadrants.dedup();
                assert_eq!(quadrants.len(), k, "image {i}: a quadrant twice");
                for o in &scene.objects {
                    *seen.entry(o.attributes).or_default() += 1;
                    let r_px = o.size * size as f32;
                    assert!((4.0..=6.0).contains(&(r_px * 32.0 / size as f32)), "{r_px}");
                    let (x0, y0) = o.attributes.position.origin();
                    let inside = |c: f32, q: f32| c - o.size >= q + 0.03 && c + o.size <= q + 0.47;
                    assert!(inside(o.centre[0], x0) && inside(o.centre[1], y0), "{o:?}");
                    // The mask's area is the shape's, give or take half a pixel along the
                    // outline.
                    let area = o.mask.iter().filter(|&&m| m).count() as f32;
                    let (want, outline) = match o.attributes.shape {
                        Shape::Circle => (
                            std::f32::consts::PI * r_px * r_px,
                            std::f32::consts::TAU * r_px,
                        ),
                        Shape::Square => (4.0 * r_px * r_px, 8.0 * r_px),
                        Shape::Triangle => (2.0 * r_px * r_px, (2.0 + 2.0 * 5f32.sqrt()) * r_px),
                    };
                    assert!(
                        (area - want).abs() <= outline / 2.0,
                        "image {i}: {area} vs {want}"
                    );
                    // The mask lies in the object's quadrant.
                    for p in (0..n).filter(|&p| o.mask[p]) {
                        let (x, y) = ((p % size) as f32 + 0.5, (p / size) as f32 + 0.5);
                        let s = size as f32;
                        assert_eq!(Position::of_point(x / s, y / s), o.attributes.position);
                    }
                }
                // Away from the objects the background is untouched.
                for p in 0..n {
                    let (x, y) = ((p % size) as f32 + 0.5, (p / size) as f32 + 0.5);
                    let near = scene.objects.iter().any(|o| {
                        let reach = o.size * size as f32 + 1.0;
                        (x - o.centre[0] * size as f32).abs() <= reach
                            && (y - o.centre[1] * size as f32).abs() <= reach
                    });
                    if !near {
                        for (k, want) in BACKGROUND.iter().enumerate() {
                            assert_eq!(scene.image[k * n + p], *want, "image {i} pixel {p}");
                        }
                    }
                }
            }
        }
        assert!(counts[1..].iter().all(|&c| c > 100), "{counts:?}");
        // Every combination of colour, shape and position occurs.
        assert_eq!(seen.len(), 4 * 3 * 4, "{seen:?}");
    }

    #[test]
    fn conditions_read_and_print_canonically() -> Result<()> {
        let cases = [
            ("red circle top left", "red circle top left"),
            ("green", "green"),
            ("circle", "circle"),
            ("top left", "top left"),
            ("blue square", "blue square"),
            ("square bottom right", "square bottom right"),
            ("  Yellow \t triangle  ", "yellow triangle"),
            ("left top circle red", "red circle top left"),
            ("bottom square right", "square bottom right"),
        ];
        for (text, canonical) in cases {
            let c = Condition::parse(text)?;
            assert_eq!(c.to_string(), canonical, "{text:?}");
            assert_eq!(c, canonical.parse()?, "{text:?}");
        }
        let all = Condition::all();
        assert_eq!(all.len(), 5 * 4 * 5 - 1);
        for c in &all {
            assert_eq!(Condition::parse(&c.to_string())?, *c);
        }
        Ok(())
    }

    #[test]
    fn condition_errors_name_the_word() {
        let cases = [
            ("red cube", "cube"),
            ("purple", "purple"),
            ("red red circle", "red"),
            ("red blue", "blue"),
            ("circle square", "square"),
            ("top bottom left", "bottom"),
            ("red circle top", "top"),
            ("left", "left"),
            ("green the", "the"),
        ];
        for (text, word) in cases {
            match Condition::parse(text) {
                Err(Error::Condition {
                    word: got, reason, ..
                }) => {
                    assert_eq!(got, word, "{text:?}");
                    assert!(reason.contains(&format!("`{word}`")), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        for blank in ["", "   "] {
            assert!(matches!(
                Condition::parse(blank),
                Err(Error::Condition { word, .. }) if word.is_empty()
            ));
        }
        assert!(Condition::new(None, None, None).is_err());
    }

    #[test]
    fn matching_asks_for_every_named_attribute() -> Result<()> {
        let object = Attributes {
            colour: Colour::Red,
            shape: Shape::Circle,
            position: Position::TopLeft,
        };
        for yes in [
            "red",
            "circle",
            "top left",
            "red circle",
            "red circle top left",
        ] {
            assert!(Condition::parse(yes)?.matches(&object), "{yes}");
        }
        for no in [
            "blue",
            "square",
            "top right",
            "red square",
            "blue circle top left",
        ] {
            assert!(!Condition::parse(no)?.matches(&object), "{no}");
        }
        assert!(Condition::of(object).matches(&object));
        assert_eq!(Condition::of(object).to_string(), object.caption());
        Ok(())
    }

    #[test]
    fn vocabulary_covers_every_caption_word_once() {
        let words = vocabulary();
        assert_eq!(words.len(), 4 + 3 + 4);
        let mut unique = words.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), words.len());
        for c in Condition::all() {
            for w in c.to_string().split(' ') {
                assert!(words.contains(&w), "{w}");
            }
        }
    }

    #[test]
    fn partial_captions_draw_every_non_empty_subset() {
        let object = Attributes {
            colour: Colour::Green,
            shape: Shape::Triangle,
            position: Position::BottomRight,
        };
        let mut rng = seeded(3);
        let mut counts: HashMap<String, usize> = HashMap::new();
        let draws = 7000;
        for _ in 0..draws {
            let c = partial_caption(&object, &mut rng);
            assert!(c.matches(&object));
            *counts.entry(c.to_string()).or_default() += 1;
        }
        assert_eq!(counts.len(), 7, "{counts:?}");
        for (text, n) in &counts {
            // Each subset has probability 1/7: 1000 ± 4 standard deviations (≈ 29).
            assert!((880..=1120).contains(n), "{text}: {n}");
        }
        assert!(counts.contains_key("green triangle bottom right"));
        assert!(counts.contains_key("triangle"));
    }

    #[test]
    fn writes_images_masks_and_labels() -> Result<()> {
        let dir =
            std::env::temp_dir().join(format!("recompose-shapes-text-{}", std::process::id()));
        let d = data(9, 64);
        d.write(4, &dir)?;
        let text = std::fs::read_to_string(dir.join("labels.json")).map_err(io(&dir))?;
        let labels: Value =
            serde_json::from_str(&text).map_err(|e| Error::Config(e.to_string()))?;
        assert_eq!(labels["dataset"], NAME);
        assert_eq!(labels["size"], 64);
        let images = labels["images"].as_array().map_or(&[][..], Vec::as_slice);
        assert_eq!(images.len(), 4);
        for (i, entry) in images.iter().enumerate() {
            let scene = d.scene(i as u64);
            assert_eq!(entry["captions"], json!(scene.captions()));
            assert_eq!(
                entry["objects"][0]["colour"],
                scene.objects[0].attributes.colour.name()
            );
            assert!(dir.join(format!("image_{i:05}.png")).is_file());
            for k in 0..scene.objects.len() {
                assert!(dir.join(format!("mask_{i:05}_{k}.png")).is_file());
            }
        }
        // captions.jsonl: per image, each object's seven partial captions, each text once,
        // and every caption true of the image by the ground truth.
        let lines = std::fs::read_to_string(dir.join("captions.jsonl")).map_err(io(&dir))?;
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines.len(), 4);
        for (i, line) in lines.iter().enumerate() {
            let entry: Value =
                serde_json::from_str(line).map_err(|e| Error::Config(e.to_string()))?;
            assert_eq!(entry["file"], format!("image_{i:05}.png"));
            let scene = d.scene(i as u64);
            let texts: Vec<&str> = entry["captions"]
                .as_array()
                .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
            let unique: std::collections::HashSet<&&str> = texts.iter().collect();
            assert_eq!(unique.len(), texts.len());
            assert!(texts.len() <= 7 * scene.objects.len());
            for o in &scene.objects {
                assert!(texts.contains(&o.caption().as_str()));
            }
            for t in texts {
                let c: Condition = t.parse()?;
                assert!(
                    scene.objects.iter().any(|o| c.matches(&o.attributes)),
                    "{t}"
                );
            }
        }
        let png = image::open(dir.join("image_00000.png"))
            .map_err(|e| Error::Config(e.to_string()))?
            .to_rgb8();
        assert_eq!(png.dimensions(), (64, 64));
        assert!(matches!(d.write(0, &dir), Err(Error::Config(_))));
        assert!(matches!(
            d.write_within(4, &dir, MemoryLimit::new(1024)),
            Err(Error::Memory(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
