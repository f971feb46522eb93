//! Images with text captions, for text-conditioned diffusion models with classifier-free
//! guidance.
//!
//! The training data of a text-conditioned model pair each image with a caption; Ho & Salimans,
//! *Classifier-Free Diffusion Guidance* (2022), train one network for the conditional and the
//! unconditional model by replacing the condition with a null one at a fixed rate ("condition
//! dropout"), and Du et al., *Reduce, Reuse, Recycle* (ICML 2023) train their CLEVR models the
//! same way (dropout 0.05). Here the null condition is the empty prompt, which a text encoder
//! sees as just its start and end tokens — the arrangement of text-to-image models.
//!
//! A captioned folder is a directory with a file `captions.jsonl` that lists its images, one
//! JSON object per image (a PNG file of the directory, read as [`ImageFolder`] reads images;
//! other files, such as masks, are ignored):
//!
//! ```text
//! {"file": "image_00000.png", "captions": ["red circle top left", "red circle", "red"]}
//! ```
//!
//! Every image needs at least one caption; an image may have several (the descriptions of each
//! of its objects, or partial ones), of which each draw picks one uniformly. Every caption is
//! tokenized once, strictly (a word the tokenizer does not know is an error naming the file and
//! the line), so a batch costs no tokenization.
//!
//! # Draws
//!
//! For each item of a batch, in order: the image index (uniform, with replacement), then one
//! uniform number u — the item gets the empty prompt if u < `uncond_prob` — and, if it keeps a
//! caption, the caption's index. Everything comes from the caller's seeded generator.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::Rng;
use serde::Deserialize;

use super::{Dataset, ImageFolder, ImageFolderConfig};
use crate::random::SeededRng;
use crate::text::TextTokenizer;
use crate::{Error, Result};

/// The name of the captions file of a captioned folder.
pub const CAPTIONS_FILE: &str = "captions.jsonl";

/// One line of [`CAPTIONS_FILE`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptionLine {
    file: String,
    captions: Vec<String>,
}

/// A folder of images with captions (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct CaptionedImages {
    images: ImageFolder,
    /// Per image, the token ids of each of its captions (`max_len` each).
    captions: Vec<Vec<Vec<u32>>>,
    /// The token ids of the empty prompt.
    empty: Vec<u32>,
    max_len: usize,
    uncond_prob: f64,
}

fn format_error(path: &Path, msg: String) -> Error {
    Error::Config(format!("{}: {msg}", path.display()))
}

impl CaptionedImages {
    /// Loads the images of `dir` as described by `config` and their captions from
    /// `dir/captions.jsonl`, tokenized with `tokenizer`; `uncond_prob` is the rate at which a
    /// draw gets the empty prompt instead of a caption.
    ///
    /// # Errors
    ///
    /// As [`ImageFolder::from_files`] (a listed image that cannot be read or decoded);
    /// [`Error::Io`] if the captions file cannot be read; [`Error::Config`] naming the file and
    /// line for a line that is not a caption object, a file listed twice or outside the
    /// directory, an image without captions, a file listing no image, or `uncond_prob` outside
    /// \[0, 1\]; [`Error::Tokenizer`] for a caption with a word the tokenizer does not know or
    /// too long for it.
    pub fn open(
        dir: impl AsRef<Path>,
        config: &ImageFolderConfig,
        tokenizer: &TextTokenizer,
        uncond_prob: f64,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        if !(0.0..=1.0).contains(&uncond_prob) {
            return Err(Error::Config(format!(
                "the condition dropout rate must lie in [0, 1], got {uncond_prob}"
            )));
        }
        let path = dir.join(CAPTIONS_FILE);
        let text = fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut captions: Vec<Vec<Vec<u32>>> = Vec::new();
        for (k, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |msg: String| format_error(&path, format!("line {}: {msg}", k + 1));
            let entry: CaptionLine = serde_json::from_str(line)
                .map_err(|e| at(format!("not a caption object ({e})")))?;
            let inside = Path::new(&entry.file)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if entry.file.is_empty() || !inside {
                return Err(at(format!(
                    "`{}` is not a file name inside the folder",
                    entry.file
                )));
            }
            if entry.captions.is_empty() {
                return Err(at(format!("`{}` has no caption", entry.file)));
            }
            if seen.insert(entry.file.clone(), k).is_some() {
                return Err(at(format!("`{}` is listed twice", entry.file)));
            }
            let texts: Vec<&str> = entry.captions.iter().map(String::as_str).collect();
            let encoded = tokenizer.encode_strict(&texts).map_err(|e| match e {
                Error::Tokenizer(m) => Error::Tokenizer(format!(
                    "{} line {} (`{}`): {m}",
                    path.display(),
                    k + 1,
                    entry.file
                )),
                other => other,
            })?;
            let len = tokenizer.max_len();
            captions.push(encoded.ids().chunks(len).map(<[u32]>::to_vec).collect());
            files.push(dir.join(&entry.file));
        }
        if files.is_empty() {
            return Err(format_error(&path, "lists no image".into()));
        }
        let images = ImageFolder::from_files(files, config)?;
        let empty = tokenizer.encode(&[""])?.ids().to_vec();
        Ok(Self {
            images,
            captions,
            empty,
            max_len: tokenizer.max_len(),
            uncond_prob,
        })
    }

    /// The images.
    pub fn images(&self) -> &ImageFolder {
        &self.images
    }

    /// The token ids of each caption of image `i` (`None` if out of range).
    pub fn captions(&self, i: usize) -> Option<&[Vec<u32>]> {
        self.captions.get(i).map(Vec::as_slice)
    }

    /// The token ids of the empty prompt, the null condition.
    pub fn empty_prompt(&self) -> &[u32] {
        &self.empty
    }

    /// The token sequence length L.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The rate at which a draw gets the empty prompt.
    pub fn uncond_prob(&self) -> f64 {
        self.uncond_prob
    }

    /// `batch` draws (see the [module documentation](self)): the images `[batch, C, H, W]`
    /// and the token ids `[batch, L]` (`u32`) on `device`, and the image index of each draw.
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] if the tensors cannot be built on `device`.
    pub fn draw(
        &self,
        rng: &mut SeededRng,
        batch: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor, Vec<usize>)> {
        let n = self.images.len();
        let [c, h, w] = self.images.image_shape();
        let mut pixels = Vec::with_capacity(batch * c * h * w);
        let mut ids = Vec::with_capacity(batch * self.max_len);
        let mut drawn = Vec::with_capacity(batch);
        for _ in 0..batch {
            let i = rng.random_range(0..n);
            let image = self.images.pixels(i).ok_or_else(|| {
                Error::Config(format!("image {i} is outside the folder's {n} images"))
            })?;
            pixels.extend_from_slice(image);
            let u: f64 = rng.random();
            if u < self.uncond_prob {
                ids.extend_from_slice(&self.empty);
            } else {
                let options = &self.captions[i];
                ids.extend_from_slice(&options[rng.random_range(0..options.len())]);
            }
            drawn.push(i);
        }
        Ok((
            Tensor::from_vec(pixels, (batch, c, h, w), device)?,
            Tensor::from_vec(ids, (batch, self.max_len), device)?,
            drawn,
        ))
    }
}

impl Dataset for CaptionedImages {
    fn item_shape(&self) -> Vec<usize> {
        self.images.image_shape().to_vec()
    }

    fn len(&self) -> Option<usize> {
        Some(self.images.len())
    }

    /// The images of [`CaptionedImages::draw`] (the same draws; the captions are dropped).
    fn sample_batch(&self, rng: &mut SeededRng, batch: usize, device: &Device) -> Result<Tensor> {
        Ok(self.draw(rng, batch, device)?.0)
    }

    /// The images and token ids of [`CaptionedImages::draw`].
    fn sample_conditioned(
        &self,
        rng: &mut SeededRng,
        batch: usize,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (x, ids, _) = self.draw(rng, batch, device)?;
        Ok((x, Some(ids)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::seeded;

    /// A folder of `n` 4×4 RGB images, image i filled with the value i/n in every channel, and
    /// a captions file written from `lines`.
    fn folder(n: usize, lines: &str) -> Result<tempfile_dir::Dir> {
        let dir = tempfile_dir::Dir::new()?;
        for i in 0..n {
            let v = (255 * i / n) as u8;
            let img = image::RgbImage::from_pixel(4, 4, image::Rgb([v, v, v]));
            img.save(dir.path().join(format!("image_{i:05}.png")))
                .map_err(|e| Error::Config(e.to_string()))?;
        }
        fs::write(dir.path().join(CAPTIONS_FILE), lines).map_err(|source| Error::Io {
            path: dir.path().to_path_buf(),
            source,
        })?;
        Ok(dir)
    }

    /// A temporary directory removed on drop (tests only).
    mod tempfile_dir {
        use std::path::{Path, PathBuf};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> crate::Result<Self> {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "recompose-captioned-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).map_err(|source| crate::Error::Io {
                    path: path.clone(),
                    source,
                })?;
                Ok(Self(path))
            }

            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn tokenizer() -> Result<TextTokenizer> {
        TextTokenizer::word_level(["red", "blue", "circle", "square", "top", "left"], 6)
    }

    fn config() -> ImageFolderConfig {
        ImageFolderConfig {
            size: 4,
            ..ImageFolderConfig::default()
        }
    }

    const LINES: &str = "{\"file\": \"image_00000.png\", \"captions\": [\"red circle\", \"red\"]}\n\
                         {\"file\": \"image_00001.png\", \"captions\": [\"blue square top left\"]}\n\
                         \n\
                         {\"file\": \"image_00002.png\", \"captions\": [\"square\", \"blue\", \"left\"]}\n";

    #[test]
    fn each_draw_pairs_an_image_with_one_of_its_captions() -> Result<()> {
        let dir = folder(3, LINES)?;
        let tok = tokenizer()?;
        let data = CaptionedImages::open(dir.path(), &config(), &tok, 0.25)?;
        let (x, ids, drawn) = data.draw(&mut seeded(3), 4000, &Device::Cpu)?;
        assert_eq!(x.dims(), [4000, 3, 4, 4]);
        assert_eq!(ids.dims(), [4000, 6]);
        let ids = ids.to_vec2::<u32>()?;
        let x = x.flatten_from(1)?.to_vec2::<f32>()?;
        let mut empty = 0;
        for ((row, pixels), &i) in ids.iter().zip(&x).zip(&drawn) {
            // The pixels are image i's.
            assert_eq!(pixels.as_slice(), data.images().pixels(i).expect("image"));
            if row.as_slice() == data.empty_prompt() {
                empty += 1;
            } else {
                let options = data.captions(i).expect("captions");
                assert!(
                    options.iter().any(|c| c == row),
                    "{row:?} is not a caption of {i}"
                );
            }
        }
        // The empty prompt at the dropout rate: 1000 expected, σ ≈ 27.
        assert!((empty as f64 - 1000.0).abs() < 100.0, "{empty}");
        // Every caption of image 2 is drawn.
        let seen: std::collections::HashSet<&Vec<u32>> = ids
            .iter()
            .zip(&drawn)
            .filter(|(row, i)| **i == 2 && row.as_slice() != data.empty_prompt())
            .map(|(row, _)| row)
            .collect();
        assert_eq!(seen.len(), 3);
        Ok(())
    }

    /// Only the listed images are data: other PNG files of the folder (masks) are ignored, and
    /// the images come in the order of the captions file.
    #[test]
    fn the_captions_file_lists_the_images() -> Result<()> {
        let dir = folder(
            3,
            "{\"file\": \"image_00002.png\", \"captions\": [\"blue\"]}\n\
             {\"file\": \"image_00000.png\", \"captions\": [\"red\"]}\n",
        )?;
        let data = CaptionedImages::open(dir.path(), &config(), &tokenizer()?, 0.0)?;
        assert_eq!(data.len(), Some(2));
        let names: Vec<String> = data
            .images()
            .paths()
            .iter()
            .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, ["image_00002.png", "image_00000.png"]);
        Ok(())
    }

    #[test]
    fn same_seed_same_batch_and_the_unconditional_view_draws_alike() -> Result<()> {
        let dir = folder(3, LINES)?;
        let data = CaptionedImages::open(dir.path(), &config(), &tokenizer()?, 0.1)?;
        let (a, ca) = data.sample_conditioned(&mut seeded(9), 16, &Device::Cpu)?;
        let (b, cb) = data.sample_conditioned(&mut seeded(9), 16, &Device::Cpu)?;
        let only = data.sample_batch(&mut seeded(9), 16, &Device::Cpu)?;
        assert_eq!(
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(
            a.flatten_all()?.to_vec1::<f32>()?,
            only.flatten_all()?.to_vec1::<f32>()?
        );
        let (ca, cb) = (ca.expect("ids"), cb.expect("ids"));
        assert_eq!(ca.to_vec2::<u32>()?, cb.to_vec2::<u32>()?);
        Ok(())
    }

    #[test]
    fn bad_captions_are_errors_that_name_the_line() -> Result<()> {
        let tok = tokenizer()?;
        let cases = [
            ("\n", "lists no image"),
            ("not json\n", "line 1"),
            (
                "{\"file\": \"image_00000.png\", \"captions\": [\"red\"]}\n{\"file\": \"nope.png\", \"captions\": [\"red\"]}\n",
                "nope.png",
            ),
            (
                "{\"file\": \"../image_00000.png\", \"captions\": [\"red\"]}\n",
                "inside the folder",
            ),
            (
                "{\"file\": \"image_00000.png\", \"captions\": [\"red\"]}\n{\"file\": \"image_00000.png\", \"captions\": [\"red\"]}\n",
                "twice",
            ),
            (
                "{\"file\": \"image_00000.png\", \"captions\": []}\n{\"file\": \"image_00001.png\", \"captions\": [\"red\"]}\n",
                "no caption",
            ),
            (
                "{\"file\": \"image_00000.png\", \"captions\": [\"green\"]}\n{\"file\": \"image_00001.png\", \"captions\": [\"red\"]}\n",
                "green",
            ),
        ];
        for (lines, want) in cases {
            let dir = folder(2, lines)?;
            let err = CaptionedImages::open(dir.path(), &config(), &tok, 0.1).unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
            assert!(err.is_bad_input(), "{err}");
        }
        let dir = folder(2, "")?;
        fs::remove_file(dir.path().join(CAPTIONS_FILE)).map_err(|source| Error::Io {
            path: dir.path().to_path_buf(),
            source,
        })?;
        assert!(matches!(
            CaptionedImages::open(dir.path(), &config(), &tok, 0.1),
            Err(Error::Io { .. })
        ));
        let dir = folder(3, LINES)?;
        for p in [-0.1, 1.5, f64::NAN] {
            assert!(CaptionedImages::open(dir.path(), &config(), &tok, p).is_err());
        }
        Ok(())
    }
}
