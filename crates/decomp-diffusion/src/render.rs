//! Decomposition and recombination: sampling images from any set of factors.
//!
//! Su et al. (2024, §3.2–3.3): an image is reconstructed by composing the denoiser over its own K
//! factors, one factor is rendered alone by conditioning on z_k only, and new images are
//! composed from factors of several images (or of several models) the same way. In every case
//! the composed prediction is the **mean** of the per-factor predictions (spec §1–2):
//!
//! ```text
//! out(x_t, t) = (1/N) Σ_{j=1..N} f_{m_j}(x_t, t, z_j)
//! ```
//!
//! where factor j is latent z_j read by model m_j. [`FactorMix`] is that composition as a
//! [`Denoiser`]; it batches all factors of one model into a single forward pass.
//!
//! - **slice** ([`slice()`]): factor k from image A where the mask is 1, from image B where it is 0;
//! - **add** ([`add()`]): all K factors of A together with B's factors selected by the mask
//!   (all 2K by default: a scene with the objects of both images);
//! - **cross-model**: a slice whose factors from B are read by a second model trained on another
//!   domain (same K, d and schedule).

use std::path::Path;

use candle_core::{Device, Tensor};
use recompose_diffusion::{
    Denoiser, DiscreteSchedule, Parameterization, Sampler, SamplerConfig, SamplerKind, SeededRng,
};

use crate::model::DecompModel;
use crate::{Error, Result};

/// One factor of a composition: a latent `[B, d]` (one row per image being sampled) read by a
/// model.
#[derive(Debug, Clone)]
pub struct Factor<'a> {
    /// The model whose denoiser reads the latent.
    pub model: &'a DecompModel,
    /// The latent, `[B, d]`.
    pub z: Tensor,
}

/// The mean of the denoiser predictions over a set of factors (see the
/// [module documentation](self)).
#[derive(Debug)]
pub struct FactorMix<'a> {
    groups: Vec<(&'a DecompModel, Vec<Tensor>)>,
    count: usize,
    parameterization: Parameterization,
}

impl<'a> FactorMix<'a> {
    /// The composition of `factors`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if there are none, if the models predict different quantities, or if a
    /// latent does not fit its model or the others' batch size.
    pub fn new(factors: Vec<Factor<'a>>) -> Result<Self> {
        let first = factors
            .first()
            .ok_or_else(|| Error::Config("a composition needs at least one factor".into()))?;
        let parameterization = first.model.denoiser().parameterization();
        let batch = first.z.dim(0)?;
        let count = factors.len();
        let mut groups: Vec<(&DecompModel, Vec<Tensor>)> = Vec::new();
        for (j, f) in factors.into_iter().enumerate() {
            if f.model.denoiser().parameterization() != parameterization {
                return Err(Error::Config(format!(
                    "factor {j} comes from a model predicting {:?}, the first from one \
                     predicting {parameterization:?}",
                    f.model.denoiser().parameterization()
                )));
            }
            let d = f.model.latent_dim();
            if f.z.dims() != [batch, d] {
                return Err(Error::Config(format!(
                    "factor {j}: latent of shape {:?}, its model takes [{batch}, {d}]",
                    f.z.dims()
                )));
            }
            match groups.iter_mut().find(|(m, _)| std::ptr::eq(*m, f.model)) {
                Some((_, zs)) => zs.push(f.z),
                None => groups.push((f.model, vec![f.z])),
            }
        }
        Ok(Self {
            groups,
            count,
            parameterization,
        })
    }

    /// The number of factors.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false: a composition has at least one factor.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Denoiser for FactorMix<'_> {
    fn parameterization(&self) -> Parameterization {
        self.parameterization
    }

    fn forward(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        _cond: Option<&Tensor>,
    ) -> recompose_diffusion::Result<Tensor> {
        let b = x_t.dim(0)?;
        let mut total: Option<Tensor> = None;
        for (model, zs) in &self.groups {
            let n = zs.len();
            // One batch of B·n rows, image-major: the n factors of each image side by side.
            let mut rep = vec![b, n];
            rep.extend(&x_t.dims()[1..]);
            let z = Tensor::stack(zs, 1)?.flatten_to(1)?;
            let out = model
                .denoiser()
                .forward_repeated(x_t, t, Some(&z), None, n, None)?;
            let sum = out.reshape(rep.as_slice())?.sum(1)?;
            total = Some(match total {
                Some(acc) => (acc + sum)?,
                None => sum,
            });
        }
        let total = total.ok_or_else(|| {
            recompose_diffusion::Error::Config("a composition needs at least one factor".into())
        })?;
        Ok((total / self.count as f64)?)
    }
}

/// The DDIM sampler of the released code: η = 0, x̂₀ clipped to \[−1, 1\].
///
/// # Errors
///
/// As [`Sampler::new`].
pub fn ddim(schedule: &DiscreteSchedule) -> Result<Sampler> {
    Ok(Sampler::new(
        schedule.clone(),
        SamplerConfig::new(SamplerKind::Ddim { eta: 0.0 }).with_clip_x0(1.0),
    )?)
}

/// Samples images `[B, C, S, S]` from a composition with `steps` DDIM steps, pixels clamped to
/// the data range \[0, 1\].
///
/// # Errors
///
/// As [`Sampler::sample`].
pub fn render(
    mix: &FactorMix,
    schedule: &DiscreteSchedule,
    shape: &[usize],
    steps: usize,
    device: &Device,
    rng: &mut SeededRng,
) -> Result<Tensor> {
    let x = ddim(schedule)?.sample(mix, shape, steps, None, device, rng)?;
    Ok(x.clamp(0f32, 1f32)?)
}

/// Decomposes images `x` (`[N, 3, S, S]` in \[0, 1\]): encodes them (evaluation mode), then
/// renders the reconstruction from all K factors (`[N, 3, S, S]`) and every factor alone
/// (`[N·K, 3, S, S]`, image-major), each with `steps` DDIM steps from noise drawn from `rng`
/// (the reconstruction first).
///
/// # Errors
///
/// As [`DecompModel::encode`] and [`render`].
pub fn decompose(
    model: &DecompModel,
    schedule: &DiscreteSchedule,
    x: &Tensor,
    steps: usize,
    rng: &mut SeededRng,
) -> Result<(Tensor, Tensor)> {
    let dims = x.dims().to_vec();
    let n = dims[0];
    let (k, d) = (model.components(), model.latent_dim());
    let z = model.encode(x, false)?;
    let recon = render(
        &FactorMix::new(factors(model, &z)?)?,
        schedule,
        &dims,
        steps,
        x.device(),
        rng,
    )?;
    let mut single_dims = dims.clone();
    single_dims[0] = n * k;
    let singles = render(
        &FactorMix::new(vec![Factor {
            model,
            z: z.reshape((n * k, d))?,
        }])?,
        schedule,
        &single_dims,
        steps,
        x.device(),
        rng,
    )?;
    Ok((recon, singles))
}

/// The factors of latents `z` (`[B, K·d]`) read by `model`, in order.
///
/// # Errors
///
/// [`Error::Config`] if `z` does not have K·d columns.
pub fn factors<'a>(model: &'a DecompModel, z: &Tensor) -> Result<Vec<Factor<'a>>> {
    let (k, d) = (model.components(), model.latent_dim());
    if z.rank() != 2 || z.dim(1)? != k * d {
        return Err(Error::Config(format!(
            "latents must be [B, {}] (K = {k} factors of {d}), got {:?}",
            k * d,
            z.dims()
        )));
    }
    (0..k)
        .map(|i| {
            Ok(Factor {
                model,
                z: z.narrow(1, i * d, d)?.contiguous()?,
            })
        })
        .collect()
}

fn parse_mask(mask: &[bool], k: usize) -> Result<()> {
    if mask.len() != k {
        return Err(Error::Config(format!(
            "the mask has {} entries but the model has K = {k} factors",
            mask.len()
        )));
    }
    Ok(())
}

/// Slice recombination: factor k of `a` where `mask[k]`, otherwise factor k of `b` (each
/// read by the model that encoded it; pass the same model twice within one domain).
///
/// # Errors
///
/// [`Error::Config`] if the mask length is not K or the models differ in K.
pub fn slice<'a>(a: Vec<Factor<'a>>, b: Vec<Factor<'a>>, mask: &[bool]) -> Result<FactorMix<'a>> {
    if a.len() != b.len() {
        return Err(Error::Config(format!(
            "the two models have K = {} and K = {} factors; slicing needs the same K",
            a.len(),
            b.len()
        )));
    }
    parse_mask(mask, a.len())?;
    let chosen = a
        .into_iter()
        .zip(b)
        .zip(mask)
        .map(|((fa, fb), &m)| if m { fa } else { fb })
        .collect();
    FactorMix::new(chosen)
}

/// Add recombination: every factor of `a` together with the factors of `b` where `mask` is
/// true (all of them for a mask of ones).
///
/// # Errors
///
/// [`Error::Config`] if the mask length is not the number of factors of `b`.
pub fn add<'a>(a: Vec<Factor<'a>>, b: Vec<Factor<'a>>, mask: &[bool]) -> Result<FactorMix<'a>> {
    parse_mask(mask, b.len())?;
    let mut all = a;
    all.extend(b.into_iter().zip(mask).filter(|(_, m)| **m).map(|(f, _)| f));
    FactorMix::new(all)
}

/// Reads an 8-bit RGB PNG of `size × size` pixels as `[1, 3, size, size]` in \[0, 1\].
///
/// # Errors
///
/// [`Error::Io`] if it cannot be read; [`Error::Format`] naming the file if it is not a PNG, has
/// another size, or is not 3-channel RGB (grey, grey + alpha and RGBA are refused, not
/// converted).
pub fn load_rgb_png(path: &Path, size: usize, device: &Device) -> Result<Tensor> {
    let bad = |msg: String| Error::Format {
        path: path.display().to_string(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    // The size comes from the header, before anything is decoded.
    let decoder = image::codecs::png::PngDecoder::new(std::io::Cursor::new(&bytes))
        .map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    if (w as usize, h as usize) != (size, size) {
        return Err(bad(format!(
            "the image is {w}×{h} pixels, the model takes {size}×{size}"
        )));
    }
    let image = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let channels = image.color().channel_count();
    let rgb = match image {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        image::DynamicImage::ImageRgb16(_) => image.to_rgb8(),
        _ => {
            return Err(bad(format!(
                "the image has {channels} channel(s) ({:?}), the model takes 3 (RGB)",
                image.color()
            )));
        }
    };
    let n = size * size;
    let mut chw = vec![0f32; 3 * n];
    for (p, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * n + p] = f32::from(px.0[c]) / 255.0;
        }
    }
    Ok(Tensor::from_vec(chw, (1, 3, size, size), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DecompConfig;
    use candle_core::DType;
    use recompose_diffusion::nn::ParamStore;

    fn model(seed: u64) -> Result<(ParamStore, DecompModel)> {
        let store = ParamStore::new(seed);
        let cfg = DecompConfig {
            num_channels: 16,
            num_head_channels: -1,
            attention_resolutions: vec![8],
            emb_dim: 16,
            enc_channels: 4,
            ..DecompConfig::default()
        };
        let m = DecompModel::from_config(&cfg, store.var_builder(DType::F32, &Device::Cpu))?;
        Ok((store, m))
    }

    fn max_err(a: &Tensor, b: &Tensor) -> Result<f32> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    }

    /// The mix over an image's own K factors is the model's composed prediction; a mix of one
    /// factor is that factor alone; mixing two models averages their predictions.
    #[test]
    fn factor_mix_is_the_mean_of_the_factor_predictions() -> Result<()> {
        let (_s1, m1) = model(1)?;
        let (_s2, m2) = model(2)?;
        let dev = Device::Cpu;
        let mut rng = recompose_diffusion::seeded(4);
        let mut pixels = crate::datasets::generate(crate::datasets::Kind::Tetrominoes, 0, 0).image;
        pixels.extend(crate::datasets::generate(crate::datasets::Kind::Tetrominoes, 0, 1).image);
        let x0 = Tensor::from_vec(pixels, (2, 3, 32, 32), &dev)?;
        let x_t = recompose_diffusion::random::normal_tensor(
            &mut rng,
            &[2, 3, 32, 32],
            DType::F32,
            &dev,
        )?;
        let t = Tensor::new(&[700f32, 20.0], &dev)?;
        let z1 = m1.encode(&x0, false)?;
        let z2 = m2.encode(&x0, false)?;
        let full = FactorMix::new(factors(&m1, &z1)?)?.forward(&x_t, &t, None)?;
        assert!(max_err(&full, &m1.denoise(&x_t, &t, &z1, None)?)? < 1e-5);
        let one = FactorMix::new(vec![factors(&m1, &z1)?.remove(2)])?.forward(&x_t, &t, None)?;
        assert!(max_err(&one, &m1.denoise(&x_t, &t, &z1, Some(2))?)? < 1e-5);
        // Cross-model slice 1,0,1: factors 0 and 2 from model 1, factor 1 from model 2.
        let mix = slice(factors(&m1, &z1)?, factors(&m2, &z2)?, &[true, false, true])?;
        let got = mix.forward(&x_t, &t, None)?;
        let want = ((m1.denoise(&x_t, &t, &z1, Some(0))?
            + m2.denoise(&x_t, &t, &z2, Some(1))?
            + m1.denoise(&x_t, &t, &z1, Some(2))?)?
            / 3.0)?;
        assert!(max_err(&got, &want)? < 1e-5);
        // Add with every factor of both: the mean of the two composed predictions.
        let mix = add(factors(&m1, &z1)?, factors(&m1, &z2)?, &[true; 3])?;
        assert_eq!(mix.len(), 6);
        let got = mix.forward(&x_t, &t, None)?;
        let want = ((m1.denoise(&x_t, &t, &z1, None)? + m1.denoise(&x_t, &t, &z2, None)?)? / 2.0)?;
        assert!(max_err(&got, &want)? < 1e-5);
        // Bad masks and latents are named.
        let err = slice(factors(&m1, &z1)?, factors(&m1, &z1)?, &[true]).unwrap_err();
        assert!(err.to_string().contains("K = 3"), "{err}");
        assert!(factors(&m1, &z1.narrow(1, 0, 5)?).is_err());
        assert!(FactorMix::new(Vec::new()).is_err());
        Ok(())
    }

    #[test]
    fn png_loading_names_wrong_sizes_and_channels() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("recompose-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let save = |name: &str, w: u32, colour: image::ColorType| -> Result<std::path::PathBuf> {
            let p = dir.join(name);
            let n = (w * w) as usize * usize::from(colour.channel_count());
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            image::save_buffer(&p, &data, w, w, colour)
                .map_err(|e| Error::Config(e.to_string()))?;
            Ok(p)
        };
        let ok = save("ok.png", 32, image::ColorType::Rgb8)?;
        let x = load_rgb_png(&ok, 32, &Device::Cpu)?;
        assert_eq!(x.dims(), [1, 3, 32, 32]);
        let first = x.flatten_all()?.to_vec1::<f32>()?;
        assert!(
            (first[1] - 3.0 / 255.0).abs() < 1e-7,
            "pixel 1, red = byte 3"
        );
        let small = save("small.png", 16, image::ColorType::Rgb8)?;
        let err = load_rgb_png(&small, 32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("16×16") && err.contains("32×32"), "{err}");
        let rgba = save("rgba.png", 32, image::ColorType::Rgba8)?;
        let err = load_rgb_png(&rgba, 32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 channel"), "{err}");
        let grey = save("grey.png", 32, image::ColorType::L8)?;
        let err = load_rgb_png(&grey, 32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 channel"), "{err}");
        std::fs::write(dir.join("junk.png"), b"not a png").map_err(|source| Error::Io {
            path: "junk".into(),
            source,
        })?;
        assert!(load_rgb_png(&dir.join("junk.png"), 32, &Device::Cpu).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
