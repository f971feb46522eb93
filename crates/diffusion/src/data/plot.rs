//! PNG output: image grids, single images and 2-D scatter plots.
//!
//! Sample grids and scatter plots are the qualitative results of the 2-D and image experiments of
//! Du et al. 2023, "Reduce, Reuse, Recycle: Compositional Generation with Energy-Based Diffusion
//! Models and MCMC" (ICML 2023, §4). Every writer encodes the whole PNG in memory, writes it next
//! to the target as `<path>.png.tmp` (the extension replaced by `png.tmp`) and renames it into
//! place, so that a reader never sees a half-written file.

use std::path::Path;

use ::image::codecs::png::PngEncoder;
use ::image::{ExtendedColorType, ImageEncoder};
use candle_core::{DType, Device, Tensor};

use super::ValueRange;
use crate::{Error, Result};

/// The padding between (and around) the tiles of [`save_png_grid`], in pixels.
pub const GRID_PADDING: usize = 2;

/// The largest side of a [`save_png_scatter`] plot, in pixels.
pub const MAX_SCATTER_SIZE: usize = 16_384;

const WHITE: [u8; 3] = [255, 255, 255];
const AXIS: [u8; 3] = [210, 210, 210];
const FRAME: [u8; 3] = [128, 128, 128];
const POINT: [u8; 3] = [20, 40, 150];

/// Writes a batch of images `[N, C, H, W]` (C = 1 for grayscale or 3 for RGB, any dtype and
/// device) as one PNG grid: `min(ncol, N)` columns, as many rows as needed, row-major, with
/// [`GRID_PADDING`] black pixels between and around the tiles. Values are read in `range` and
/// clamped to it (NaN becomes black); the PNG is 8-bit RGB.
///
/// # Errors
///
/// - [`Error::Shape`] if `images` is not 4-D, C is not 1 or 3, or N, H or W is 0;
/// - [`Error::Config`] if `ncol` is 0;
/// - [`Error::Io`] if the file cannot be written, [`Error::Image`] if encoding fails.
pub fn save_png_grid(images: &Tensor, range: ValueRange, ncol: usize, path: &Path) -> Result<()> {
    let dims = images.dims();
    let &[n, c, h, w] = dims else {
        return Err(Error::Shape(format!(
            "save_png_grid expects images [N, C, H, W], got shape {dims:?}"
        )));
    };
    check_image_dims(c, h, w, dims)?;
    if n == 0 {
        return Err(Error::Shape("save_png_grid got no images (N = 0)".into()));
    }
    if ncol == 0 {
        return Err(Error::Config("save_png_grid needs ncol ≥ 1".into()));
    }
    let values = host_values(images)?;
    let cols = ncol.min(n);
    let rows = n.div_ceil(cols);
    let pad = GRID_PADDING;
    let width = cols * (w + pad) + pad;
    let height = rows * (h + pad) + pad;
    let mut rgb = vec![0u8; 3 * width * height];
    for (k, image) in values.chunks_exact(c * h * w).enumerate() {
        let top = pad + (k / cols) * (h + pad);
        let left = pad + (k % cols) * (w + pad);
        blit(image, c, h, w, range, &mut rgb, width, top, left);
    }
    write_rgb_png(&rgb, width, height, path)
}

/// Writes one image `[C, H, W]` (C = 1 or 3, any dtype and device) as an 8-bit RGB PNG of H × W
/// pixels, reading values in `range` and clamping them to it (NaN becomes black).
///
/// # Errors
///
/// - [`Error::Shape`] if `image` is not 3-D, C is not 1 or 3, or H or W is 0;
/// - [`Error::Io`] if the file cannot be written, [`Error::Image`] if encoding fails.
pub fn save_png_image(image: &Tensor, range: ValueRange, path: &Path) -> Result<()> {
    let dims = image.dims();
    let &[c, h, w] = dims else {
        return Err(Error::Shape(format!(
            "save_png_image expects an image [C, H, W], got shape {dims:?}"
        )));
    };
    check_image_dims(c, h, w, dims)?;
    let values = host_values(image)?;
    let mut rgb = vec![0u8; 3 * w * h];
    blit(&values, c, h, w, range, &mut rgb, w, 0, 0);
    write_rgb_png(&rgb, w, h, path)
}

/// How [`save_png_scatter`] draws a 2-D point cloud.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScatterConfig {
    /// The side of the square plot in pixels (1 to [`MAX_SCATTER_SIZE`]; default 512).
    pub size: usize,
    /// The plotted region `[xmin, xmax, ymin, ymax]` (default \[−1.2, 1.2\] on both axes).
    pub extent: [f64; 4],
    /// The radius of each point's disc in pixels; 0 draws single pixels (default 1).
    pub point_radius: usize,
}

impl Default for ScatterConfig {
    fn default() -> Self {
        ScatterConfig {
            size: 512,
            extent: [-1.2, 1.2, -1.2, 1.2],
            point_radius: 1,
        }
    }
}

impl ScatterConfig {
    /// The pixel `(column, row)` that the point `p` falls in, with the y axis pointing up, or
    /// `None` if `p` lies outside the extent or is not finite.
    ///
    /// The extent is divided into `size` equal columns and rows; a point on the upper edge of the
    /// extent falls in the last column (or the top row).
    pub fn pixel(&self, p: [f64; 2]) -> Option<(usize, usize)> {
        let [x0, x1, y0, y1] = self.extent;
        let inside = p[0] >= x0 && p[0] <= x1 && p[1] >= y0 && p[1] <= y1;
        if !inside {
            return None;
        }
        let s = self.size as f64;
        let last = self.size.saturating_sub(1);
        let col = (((p[0] - x0) / (x1 - x0) * s).floor() as usize).min(last);
        let row = (((y1 - p[1]) / (y1 - y0) * s).floor() as usize).min(last);
        Some((col, row))
    }

    fn validate(&self) -> Result<()> {
        if self.size == 0 || self.size > MAX_SCATTER_SIZE {
            return Err(Error::Config(format!(
                "scatter plot size must be between 1 and {MAX_SCATTER_SIZE} pixels, got {}",
                self.size
            )));
        }
        let [x0, x1, y0, y1] = self.extent;
        let ok = [x0, x1, y0, y1].iter().all(|v| v.is_finite()) && x0 < x1 && y0 < y1;
        if !ok {
            return Err(Error::Config(format!(
                "scatter plot extent must be finite with xmin < xmax and ymin < ymax, got {:?}",
                self.extent
            )));
        }
        Ok(())
    }
}

/// Writes a scatter plot of 2-D points as an RGB PNG of `cfg.size` × `cfg.size` pixels: white
/// background, light grey axes through the origin (where it lies within the extent), a thin grey
/// frame, and every point as a small dark blue disc of radius `cfg.point_radius`. The y axis
/// points up; points outside `cfg.extent` (and non-finite points) are skipped.
///
/// # Errors
///
/// - [`Error::Config`] if `cfg.size` is 0 or above [`MAX_SCATTER_SIZE`], or `cfg.extent` is
///   not finite or empty;
/// - [`Error::Io`] if the file cannot be written, [`Error::Image`] if encoding fails.
pub fn save_png_scatter(points: &[[f64; 2]], cfg: &ScatterConfig, path: &Path) -> Result<()> {
    cfg.validate()?;
    let size = cfg.size;
    let mut rgb = WHITE.repeat(size * size);
    let mut put = |col: usize, row: usize, colour: [u8; 3]| {
        let i = 3 * (row * size + col);
        rgb[i..i + 3].copy_from_slice(&colour);
    };
    if let Some((col, row)) = cfg.pixel([0.0, 0.0]) {
        for k in 0..size {
            put(col, k, AXIS);
            put(k, row, AXIS);
        }
    }
    for k in 0..size {
        put(k, 0, FRAME);
        put(k, size - 1, FRAME);
        put(0, k, FRAME);
        put(size - 1, k, FRAME);
    }
    let r = cfg.point_radius.min(size);
    for &p in points {
        let Some((col, row)) = cfg.pixel(p) else {
            continue;
        };
        for y in row.saturating_sub(r)..=(row + r).min(size - 1) {
            for x in col.saturating_sub(r)..=(col + r).min(size - 1) {
                let (dx, dy) = (x.abs_diff(col), y.abs_diff(row));
                if dx * dx + dy * dy <= r * r {
                    put(x, y, POINT);
                }
            }
        }
    }
    write_rgb_png(&rgb, size, size, path)
}

fn check_image_dims(c: usize, h: usize, w: usize, dims: &[usize]) -> Result<()> {
    if c != 1 && c != 3 {
        return Err(Error::Shape(format!(
            "images must have 1 or 3 channels, got shape {dims:?}"
        )));
    }
    if h == 0 || w == 0 {
        return Err(Error::Shape(format!(
            "images must not be empty, got shape {dims:?}"
        )));
    }
    Ok(())
}

/// The tensor's values as `f32` on the host, row-major.
fn host_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// An 8-bit intensity for a value in `range`, clamped; NaN maps to 0.
fn to_u8(v: f32, range: ValueRange) -> u8 {
    let u = range.to_unit(v);
    if u.is_nan() {
        0
    } else {
        (u.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// Copies one CHW image into an RGB buffer of row stride `width` at (`top`, `left`).
#[allow(clippy::too_many_arguments)]
fn blit(
    image: &[f32],
    c: usize,
    h: usize,
    w: usize,
    range: ValueRange,
    rgb: &mut [u8],
    width: usize,
    top: usize,
    left: usize,
) {
    let plane = h * w;
    for y in 0..h {
        for x in 0..w {
            let dst = 3 * ((top + y) * width + left + x);
            for ch in 0..3 {
                let src = if c == 1 { 0 } else { ch };
                rgb[dst + ch] = to_u8(image[src * plane + y * w + x], range);
            }
        }
    }
}

/// Encodes an 8-bit RGB buffer as PNG and writes it atomically-ish to `path`.
fn write_rgb_png(rgb: &[u8], width: usize, height: usize, path: &Path) -> Result<()> {
    let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(Error::Shape(format!(
            "image of {width} × {height} pixels is too large for PNG"
        )));
    };
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(rgb, w, h, ExtendedColorType::Rgb8)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: format!("cannot encode PNG: {e}"),
        })?;
    let tmp = path.with_extension("png.tmp");
    std::fs::write(&tmp, &bytes).map_err(|source| Error::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use ::image::RgbImage;

    use super::*;
    use crate::data::testutil::TempDir;

    fn read_rgb(path: &Path) -> RgbImage {
        ::image::open(path).unwrap().to_rgb8()
    }

    #[test]
    fn scatter_colours_the_expected_pixel() {
        let tmp = TempDir::new("scatter");
        let path = tmp.0.join("scatter.png");
        let cfg = ScatterConfig::default();
        // col = ⌊(0.5 + 1.2)/2.4 · 512⌋ = 362, row = ⌊(1.2 − 0.5)/2.4 · 512⌋ = 149 (y up).
        assert_eq!(cfg.pixel([0.5, 0.5]), Some((362, 149)));
        assert_eq!(cfg.pixel([0.0, 0.0]), Some((256, 256)));
        assert_eq!(cfg.pixel([1.2, -1.2]), Some((511, 511)));
        assert_eq!(cfg.pixel([1.3, 0.0]), None);
        assert_eq!(cfg.pixel([f64::NAN, 0.0]), None);
        save_png_scatter(&[[0.5, 0.5], [5.0, 5.0], [f64::NAN, 0.0]], &cfg, &path).unwrap();
        assert!(!path.with_extension("png.tmp").exists());
        let img = read_rgb(&path);
        assert_eq!(img.dimensions(), (512, 512));
        assert_eq!(img.get_pixel(362, 149).0, POINT);
        // The disc of radius 1: the four neighbours, not the diagonals.
        assert_eq!(img.get_pixel(363, 149).0, POINT);
        assert_eq!(img.get_pixel(362, 148).0, POINT);
        assert_eq!(img.get_pixel(363, 150).0, WHITE);
        // The mirrored point (0.5, −0.5) was not drawn: y points up.
        assert_eq!(img.get_pixel(362, 362).0, WHITE);
        assert_eq!(img.get_pixel(256, 100).0, AXIS);
        assert_eq!(img.get_pixel(100, 256).0, AXIS);
        assert_eq!(img.get_pixel(0, 0).0, FRAME);
        assert_eq!(img.get_pixel(511, 300).0, FRAME);
        assert_eq!(img.get_pixel(100, 100).0, WHITE);
        let points = img.pixels().filter(|p| p.0 == POINT).count();
        assert_eq!(points, 5);
    }

    #[test]
    fn scatter_rejects_bad_config() {
        let tmp = TempDir::new("scatter-bad");
        let path = tmp.0.join("bad.png");
        for cfg in [
            ScatterConfig {
                size: 0,
                ..Default::default()
            },
            ScatterConfig {
                extent: [1.0, -1.0, -1.0, 1.0],
                ..Default::default()
            },
            ScatterConfig {
                extent: [-1.0, 1.0, f64::NAN, 1.0],
                ..Default::default()
            },
        ] {
            assert!(matches!(
                save_png_scatter(&[], &cfg, &path),
                Err(Error::Config(_))
            ));
        }
        assert!(!path.exists());
    }

    #[test]
    fn grid_layout_values_and_padding() {
        let tmp = TempDir::new("grid");
        let path = tmp.0.join("grid.png");
        // Three 3×2 RGB images: red, green, blue, in [−1, 1]; ncol 2 → 2 columns, 2 rows.
        let mut data = vec![-1.0f32; 3 * 3 * 2 * 3];
        for k in 0..3 {
            for v in &mut data[k * 18 + k * 6..k * 18 + (k + 1) * 6] {
                *v = 1.0;
            }
        }
        let images = Tensor::from_vec(data, (3, 3, 2, 3), &Device::Cpu).unwrap();
        save_png_grid(&images, ValueRange::MinusOneOne, 2, &path).unwrap();
        let img = read_rgb(&path);
        let (w, h) = (2 * (3 + 2) + 2, 2 * (2 + 2) + 2);
        assert_eq!(img.dimensions(), (w, h));
        assert_eq!(img.get_pixel(2, 2).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(4, 3).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(7, 2).0, [0, 255, 0]);
        assert_eq!(img.get_pixel(2, 6).0, [0, 0, 255]);
        // Padding and the unused fourth tile are black.
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(5, 2).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(8, 7).0, [0, 0, 0]);

        // ncol larger than N: one row; grayscale, clamped, NaN black.
        let gray = Tensor::from_vec(
            vec![0.5f32, 2.0, -3.0, f32::NAN],
            (2, 1, 1, 2),
            &Device::Cpu,
        )
        .unwrap();
        save_png_grid(&gray, ValueRange::ZeroOne, 10, &path).unwrap();
        let img = read_rgb(&path);
        assert_eq!(img.dimensions(), (2 * 4 + 2, 5));
        assert_eq!(img.get_pixel(2, 2).0, [128, 128, 128]);
        assert_eq!(img.get_pixel(3, 2).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(6, 2).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(7, 2).0, [0, 0, 0]);
    }

    #[test]
    fn single_image_round_trips_through_load_png() {
        let tmp = TempDir::new("single-image");
        let path = tmp.0.join("img.png");
        let values: Vec<f32> = (0..3 * 4 * 5).map(|i| (i % 7) as f32 / 6.0).collect();
        let image = Tensor::from_vec(values.clone(), (3, 4, 5), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        save_png_image(&image, ValueRange::ZeroOne, &path).unwrap();
        let back = crate::data::load_png(&path, 3, None, ValueRange::ZeroOne).unwrap();
        assert_eq!(back.dims(), &[3, 4, 5]);
        let back = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in back.iter().zip(&values) {
            assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn shape_errors() {
        let tmp = TempDir::new("grid-bad");
        let path = tmp.0.join("bad.png");
        let dev = Device::Cpu;
        let rank3 = Tensor::zeros((3, 4, 4), DType::F32, &dev).unwrap();
        let two_ch = Tensor::zeros((1, 2, 4, 4), DType::F32, &dev).unwrap();
        let empty = Tensor::zeros((0, 3, 4, 4), DType::F32, &dev).unwrap();
        let ok = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        let r = ValueRange::ZeroOne;
        assert!(matches!(
            save_png_grid(&rank3, r, 2, &path),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            save_png_grid(&two_ch, r, 2, &path),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            save_png_grid(&empty, r, 2, &path),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            save_png_grid(&ok, r, 0, &path),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            save_png_image(&ok, r, &path),
            Err(Error::Shape(_))
        ));
        let missing_dir = tmp.0.join("no-such-dir").join("x.png");
        assert!(matches!(
            save_png_image(&rank3, r, &missing_dir),
            Err(Error::Io { .. })
        ));
        assert!(!path.exists());
    }
}
