//! Image datasets: every `.png` file of a directory as one `[N, C, H, W]` dataset.
//!
//! Each image is decoded, converted to RGB or grayscale, resized to a square of the configured
//! size if it is not one already (a triangle filter, `image::imageops::resize` with
//! `FilterType::Triangle`; non-square images are stretched, not cropped), and stored as `f32` in
//! channel-first (CHW) order, scaled to a [`ValueRange`]. The whole folder is decoded once, in
//! [`ImageFolder::open`], and kept in memory.
//!
//! Conversion details: alpha is dropped (not composited); grayscale is the Rec. 709 luma of the
//! `image` crate (`0.2126 R + 0.7152 G + 0.0722 B`); 16-bit images keep their precision, since
//! the pixels are converted to `f32` before resizing.

use std::path::{Path, PathBuf};

use ::image::imageops::{self, FilterType};
use ::image::{DynamicImage, ImageBuffer, Pixel};
use candle_core::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Dataset, ValueRange};
use crate::random::SeededRng;
use crate::{Error, Result};

/// The largest image side [`ImageFolder`] and [`load_png`] resize to.
pub const MAX_SIZE: usize = 16_384;

/// The most pixels a PNG read by [`ImageFolder`] or [`load_png`] may have (4096 × 4096),
/// checked against its header before decoding: a small compressed file can declare an image
/// whose `f32` copy takes gigabytes.
pub const MAX_PIXELS: u64 = 1 << 24;

/// How [`ImageFolder::open`] prepares the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFolderConfig {
    /// The side of the square every image is resized to, in pixels (1 to [`MAX_SIZE`]).
    pub size: usize,
    /// 3 for RGB, 1 for grayscale.
    pub channels: usize,
    /// The range the pixel values are scaled to.
    pub range: ValueRange,
}

impl Default for ImageFolderConfig {
    /// 32 × 32 RGB in \[−1, 1\].
    fn default() -> Self {
        ImageFolderConfig {
            size: 32,
            channels: 3,
            range: ValueRange::MinusOneOne,
        }
    }
}

/// Every `.png` file of a directory, decoded into memory as `f32` `[C, size, size]` images.
///
/// Files are taken from the directory itself (not its subdirectories), matched by the extension
/// `png` in any letter case, and ordered by file name (byte order: `10.png` comes before
/// `2.png`).
#[derive(Debug, Clone)]
pub struct ImageFolder {
    paths: Vec<PathBuf>,
    config: ImageFolderConfig,
    /// All images, `[N, C, size, size]` row-major.
    data: Vec<f32>,
}

impl ImageFolder {
    /// Loads every `.png` file of `dir` as described by `config`.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] if `config.channels` is not 1 or 3, `config.size` is 0 or above
    ///   [`MAX_SIZE`], or `dir` holds no `.png` file;
    /// - [`Error::Io`] if `dir` does not exist, is not a directory, or a file cannot be read;
    /// - [`Error::Image`] naming the file if a file cannot be decoded as PNG or has more than
    ///   [`MAX_PIXELS`] pixels.
    pub fn open(dir: impl AsRef<Path>, config: &ImageFolderConfig) -> Result<Self> {
        let dir = dir.as_ref();
        check_channels(config.channels)?;
        check_size(config.size)?;
        Self::load(png_files(dir)?, config)
    }

    /// Loads the given PNG files, in this order, as described by `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no files or an invalid `config` (as [`ImageFolder::open`]);
    /// [`Error::Io`] or [`Error::Image`] naming a file that cannot be read or decoded.
    pub fn from_files(paths: Vec<PathBuf>, config: &ImageFolderConfig) -> Result<Self> {
        check_channels(config.channels)?;
        check_size(config.size)?;
        if paths.is_empty() {
            return Err(Error::Config("no image files given".into()));
        }
        Self::load(paths, config)
    }

    fn load(paths: Vec<PathBuf>, config: &ImageFolderConfig) -> Result<Self> {
        let item = config.channels * config.size * config.size;
        let mut data = Vec::with_capacity(paths.len() * item);
        for path in &paths {
            let image = decode_png(path)?;
            data.extend(to_chw(
                &image,
                config.channels,
                Some(config.size),
                config.range,
            ));
        }
        Ok(ImageFolder {
            paths,
            config: *config,
            data,
        })
    }

    /// The number of images (at least one).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Always `false`: [`ImageFolder::open`] fails on a directory without images.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The files the images were loaded from, in dataset order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The configuration the folder was opened with.
    pub fn config(&self) -> &ImageFolderConfig {
        &self.config
    }

    /// The shape of one image, `[channels, size, size]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.config.channels, self.config.size, self.config.size]
    }

    fn item_len(&self) -> usize {
        self.config.channels * self.config.size * self.config.size
    }

    /// The pixel values of image `i`, CHW order, or `None` if `i` is out of range.
    pub fn pixels(&self, i: usize) -> Option<&[f32]> {
        let n = self.item_len();
        (i < self.len()).then(|| &self.data[i * n..(i + 1) * n])
    }

    /// Image `i` as an `f32` CPU tensor `[C, size, size]` (move it with
    /// [`Tensor::to_device`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `i` is not below [`ImageFolder::len`].
    pub fn get(&self, i: usize) -> Result<Tensor> {
        let pixels = self.pixels(i).ok_or_else(|| {
            Error::Config(format!(
                "image index {i} out of range for a folder of {} images",
                self.len()
            ))
        })?;
        Ok(Tensor::from_slice(
            pixels,
            &self.image_shape(),
            &Device::Cpu,
        )?)
    }

    /// All images as one `f32` tensor `[N, C, size, size]` on `device`.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if the tensor cannot be built on `device`.
    pub fn tensor_all(&self, device: &Device) -> Result<Tensor> {
        let [c, h, w] = self.image_shape();
        Ok(Tensor::from_slice(
            &self.data,
            (self.len(), c, h, w),
            device,
        )?)
    }
}

impl Dataset for ImageFolder {
    fn item_shape(&self) -> Vec<usize> {
        self.image_shape().to_vec()
    }

    fn len(&self) -> Option<usize> {
        Some(self.paths.len())
    }

    /// `batch` images at indices drawn uniformly with replacement, `[batch, C, size, size]`.
    fn sample_batch(&self, rng: &mut SeededRng, batch: usize, device: &Device) -> Result<Tensor> {
        let n = self.item_len();
        let mut data = Vec::with_capacity(batch * n);
        for _ in 0..batch {
            let i = rng.random_range(0..self.paths.len());
            data.extend_from_slice(&self.data[i * n..(i + 1) * n]);
        }
        let [c, h, w] = self.image_shape();
        Ok(Tensor::from_vec(data, (batch, c, h, w), device)?)
    }
}

/// Loads one PNG file as an `f32` CPU tensor `[channels, H, W]` scaled to `range`: resized to
/// `size × size` like in [`ImageFolder`] when `size` is given, at its own size otherwise.
///
/// # Errors
///
/// - [`Error::Config`] if `channels` is not 1 or 3 or `size` is `Some(0)` or above
///   [`MAX_SIZE`];
/// - [`Error::Io`] if the file cannot be read;
/// - [`Error::Image`] naming the file if it cannot be decoded as PNG or has more than
///   [`MAX_PIXELS`] pixels.
pub fn load_png(
    path: impl AsRef<Path>,
    channels: usize,
    size: Option<usize>,
    range: ValueRange,
) -> Result<Tensor> {
    let path = path.as_ref();
    check_channels(channels)?;
    if let Some(size) = size {
        check_size(size)?;
    }
    let image = decode_png(path)?;
    let (h, w) = match size {
        Some(s) => (s, s),
        None => (image.height() as usize, image.width() as usize),
    };
    let data = to_chw(&image, channels, size, range);
    Ok(Tensor::from_vec(data, (channels, h, w), &Device::Cpu)?)
}

fn check_channels(channels: usize) -> Result<()> {
    if channels == 1 || channels == 3 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "image channels must be 1 (grayscale) or 3 (RGB), got {channels}"
        )))
    }
}

fn check_size(size: usize) -> Result<()> {
    if size == 0 || size > MAX_SIZE {
        Err(Error::Config(format!(
            "image size must be between 1 and {MAX_SIZE} pixels, got {size}"
        )))
    } else {
        Ok(())
    }
}

/// The `.png` files directly in `dir`, sorted by file name.
fn png_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io_err = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let is_png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(Error::Config(format!("no .png files in {}", dir.display())));
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(paths)
}

/// Decodes a PNG file, refusing from its header alone one of more than [`MAX_PIXELS`] pixels.
fn decode_png(path: &Path) -> Result<DynamicImage> {
    use ::image::ImageDecoder;
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let decoder = ::image::codecs::png::PngDecoder::new(std::io::Cursor::new(&bytes))
        .map_err(|e| bad(format!("cannot decode as PNG: {e}")))?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(bad(format!(
            "the image is {w}×{h} pixels, more than the {MAX_PIXELS} allowed"
        )));
    }
    DynamicImage::from_decoder(decoder).map_err(|e| bad(format!("cannot decode as PNG: {e}")))
}

/// The image as CHW `f32` values in `range`, resized to `size × size` when given and different.
fn to_chw(
    image: &DynamicImage,
    channels: usize,
    size: Option<usize>,
    range: ValueRange,
) -> Vec<f32> {
    if channels == 1 {
        planar(image.to_luma32f(), size, range)
    } else {
        planar(image.to_rgb32f(), size, range)
    }
}

fn planar<P>(image: ImageBuffer<P, Vec<f32>>, size: Option<usize>, range: ValueRange) -> Vec<f32>
where
    P: Pixel<Subpixel = f32> + 'static,
{
    let image = match size {
        // `check_size` bounds the size by MAX_SIZE, so it fits in a u32.
        Some(s) if (s as u32, s as u32) != image.dimensions() => {
            imageops::resize(&image, s as u32, s as u32, FilterType::Triangle)
        }
        _ => image,
    };
    let c = usize::from(P::CHANNEL_COUNT);
    let hw = image.width() as usize * image.height() as usize;
    let mut out = vec![0.0f32; c * hw];
    for (i, pixel) in image.pixels().enumerate() {
        for (ch, &v) in pixel.channels().iter().enumerate() {
            // The resize filter can overshoot [0, 1] by a rounding error.
            out[ch * hw + i] = range.from_unit(v.clamp(0.0, 1.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use ::image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};

    use super::*;
    use crate::data::testutil::TempDir;
    use crate::random::seeded;

    fn cfg(size: usize, channels: usize, range: ValueRange) -> ImageFolderConfig {
        ImageFolderConfig {
            size,
            channels,
            range,
        }
    }

    #[test]
    fn loads_in_name_order_with_exact_values() {
        let tmp = TempDir::new("order");
        // b: white, a: black, c: a 2×2 pattern; also a non-PNG file and a subdirectory.
        RgbImage::from_pixel(2, 2, Rgb([255, 255, 255]))
            .save(tmp.0.join("b.png"))
            .unwrap();
        RgbImage::from_pixel(2, 2, Rgb([0, 0, 0]))
            .save(tmp.0.join("a.png"))
            .unwrap();
        let mut pattern = RgbImage::new(2, 2);
        pattern.put_pixel(0, 0, Rgb([255, 0, 0]));
        pattern.put_pixel(1, 0, Rgb([0, 255, 0]));
        pattern.put_pixel(0, 1, Rgb([0, 0, 255]));
        pattern.put_pixel(1, 1, Rgb([51, 102, 204]));
        pattern.save(tmp.0.join("c.PNG")).unwrap();
        std::fs::write(tmp.0.join("notes.txt"), "not an image").unwrap();
        std::fs::create_dir(tmp.0.join("sub.png")).unwrap();

        let folder = ImageFolder::open(&tmp.0, &cfg(2, 3, ValueRange::ZeroOne)).unwrap();
        assert_eq!(folder.len(), 3);
        assert!(!folder.is_empty());
        let names: Vec<_> = folder
            .paths()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.png", "b.png", "c.PNG"]);
        assert_eq!(folder.pixels(0).unwrap(), &[0.0; 12]);
        assert_eq!(folder.pixels(1).unwrap(), &[1.0; 12]);
        // CHW: the red plane, then green, then blue, each row-major.
        let c = folder.get(2).unwrap();
        assert_eq!(c.dims(), &[3, 2, 2]);
        let v = c.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = [
            1.0, 0.0, 0.0, 0.2, // red
            0.0, 1.0, 0.0, 0.4, // green
            0.0, 0.0, 1.0, 0.8, // blue
        ];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        assert!(folder.pixels(3).is_none());
        assert!(matches!(folder.get(3), Err(Error::Config(_))));

        let minus = ImageFolder::open(&tmp.0, &cfg(2, 3, ValueRange::MinusOneOne)).unwrap();
        assert_eq!(minus.pixels(0).unwrap(), &[-1.0; 12]);
        assert_eq!(minus.pixels(1).unwrap(), &[1.0; 12]);

        let all = minus.tensor_all(&Device::Cpu).unwrap();
        assert_eq!(all.dims(), &[3, 3, 2, 2]);
        assert_eq!(Dataset::item_shape(&minus), vec![3, 2, 2]);
        assert_eq!(Dataset::len(&minus), Some(3));
        assert_eq!(Dataset::is_empty(&minus), Some(false));
    }

    /// An image of more than MAX_PIXELS pixels is refused from its header (the fuzz target
    /// `png` aborted on a 261 kB file declaring 16384 × 16384 grey pixels, whose RGB `f32`
    /// copy asked for 3 GiB).
    #[test]
    fn oversized_images_are_refused_before_decoding() {
        let tmp = TempDir::new("huge");
        let path = tmp.0.join("huge.png");
        GrayImage::new(4097, 4096).save(&path).unwrap();
        for channels in [1, 3] {
            let err = load_png(&path, channels, Some(8), ValueRange::ZeroOne).unwrap_err();
            assert!(err.is_bad_input(), "{err}");
            assert!(
                err.to_string().contains("4097×4096 pixels, more than"),
                "{err}"
            );
        }
    }

    #[test]
    fn resizing_keeps_constant_images_constant() {
        let tmp = TempDir::new("resize");
        RgbImage::from_pixel(7, 5, Rgb([255, 128, 0]))
            .save(tmp.0.join("wide.png"))
            .unwrap();
        GrayImage::from_pixel(3, 3, Luma([64]))
            .save(tmp.0.join("gray.png"))
            .unwrap();
        let folder = ImageFolder::open(&tmp.0, &cfg(4, 3, ValueRange::ZeroOne)).unwrap();
        assert_eq!(folder.image_shape(), [3, 4, 4]);
        // "gray.png" sorts first: a gray image converted to RGB has three equal planes.
        let gray = folder.pixels(0).unwrap();
        assert!(
            gray.iter().all(|&v| (v - 64.0 / 255.0).abs() < 1e-6),
            "{gray:?}"
        );
        let wide = folder.pixels(1).unwrap();
        let planes = [1.0, 128.0 / 255.0, 0.0];
        for (ch, want) in planes.into_iter().enumerate() {
            for &v in &wide[ch * 16..(ch + 1) * 16] {
                assert!((v - want).abs() < 1e-6, "channel {ch}: {v} vs {want}");
            }
        }
    }

    #[test]
    fn grayscale_and_alpha() {
        let tmp = TempDir::new("gray");
        // Fully transparent white: alpha is dropped, not composited.
        RgbaImage::from_pixel(3, 3, Rgba([255, 255, 255, 0]))
            .save(tmp.0.join("a.png"))
            .unwrap();
        RgbImage::from_pixel(3, 3, Rgb([0, 255, 0]))
            .save(tmp.0.join("b.png"))
            .unwrap();
        let folder = ImageFolder::open(&tmp.0, &cfg(3, 1, ValueRange::MinusOneOne)).unwrap();
        assert_eq!(folder.get(0).unwrap().dims(), &[1, 3, 3]);
        assert!(
            folder
                .pixels(0)
                .unwrap()
                .iter()
                .all(|&v| (v - 1.0).abs() < 1e-6)
        );
        // Rec. 709 luma of pure green is 0.7152.
        let want = 2.0 * 0.7152 - 1.0;
        assert!(
            folder
                .pixels(1)
                .unwrap()
                .iter()
                .all(|&v| (v - want).abs() < 1e-3),
            "{:?}",
            folder.pixels(1)
        );
    }

    #[test]
    fn load_png_single_image() {
        let tmp = TempDir::new("single");
        let path = tmp.0.join("one.png");
        let mut img = RgbImage::from_pixel(5, 3, Rgb([0, 0, 0]));
        img.put_pixel(4, 2, Rgb([255, 255, 255]));
        img.save(&path).unwrap();
        let t = load_png(&path, 3, None, ValueRange::MinusOneOne).unwrap();
        assert_eq!(t.dims(), &[3, 3, 5]);
        let v = t.to_vec3::<f32>().unwrap();
        assert_eq!(v[0][0][0], -1.0);
        assert_eq!(v[2][2][4], 1.0);
        let resized = load_png(&path, 1, Some(8), ValueRange::ZeroOne).unwrap();
        assert_eq!(resized.dims(), &[1, 8, 8]);
        assert!(matches!(
            load_png(&path, 2, None, ValueRange::ZeroOne),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            load_png(tmp.0.join("missing.png"), 3, None, ValueRange::ZeroOne),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn sample_batch_is_seeded_and_draws_stored_images() {
        let tmp = TempDir::new("batch");
        for (i, v) in [0u8, 100, 200].into_iter().enumerate() {
            GrayImage::from_pixel(2, 2, Luma([v]))
                .save(tmp.0.join(format!("{i}.png")))
                .unwrap();
        }
        let folder = ImageFolder::open(&tmp.0, &cfg(2, 1, ValueRange::ZeroOne)).unwrap();
        let a = folder
            .sample_batch(&mut seeded(5), 64, &Device::Cpu)
            .unwrap();
        let b = folder
            .sample_batch(&mut seeded(5), 64, &Device::Cpu)
            .unwrap();
        assert_eq!(a.dims(), &[64, 1, 2, 2]);
        let (va, vb) = (a.to_vec3::<f32>().ok(), b.to_vec3::<f32>().ok());
        assert_eq!(va, vb);
        let flat = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut seen = [false; 3];
        for item in flat.chunks(4) {
            assert!(item.iter().all(|&v| v == item[0]));
            let k = [0.0f32, 100.0 / 255.0, 200.0 / 255.0]
                .iter()
                .position(|&w| (w - item[0]).abs() < 1e-6)
                .expect("a stored image");
            seen[k] = true;
        }
        assert_eq!(seen, [true; 3], "64 draws from 3 images hit all of them");
    }

    #[test]
    fn errors_are_clear() {
        let tmp = TempDir::new("errors");
        let good = cfg(4, 3, ValueRange::ZeroOne);

        let missing = tmp.0.join("nope");
        let err = ImageFolder::open(&missing, &good).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");

        let err = ImageFolder::open(&tmp.0, &good).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(err.to_string().contains("no .png files in"), "{err}");

        std::fs::write(tmp.0.join("broken.png"), b"definitely not a png").unwrap();
        let err = ImageFolder::open(&tmp.0, &good).unwrap_err();
        assert!(matches!(err, Error::Image { .. }), "{err}");
        assert!(err.to_string().contains("broken.png"), "{err}");

        for bad in [
            cfg(4, 2, ValueRange::ZeroOne),
            cfg(4, 4, ValueRange::ZeroOne),
        ] {
            let err = ImageFolder::open(&tmp.0, &bad).unwrap_err();
            assert!(err.to_string().contains("channels"), "{err}");
        }
        let err = ImageFolder::open(&tmp.0, &cfg(0, 3, ValueRange::ZeroOne)).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(err.to_string().contains("size"), "{err}");
    }
}
