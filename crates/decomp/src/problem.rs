//! Factorization problems: codebooks, bound vectors and noise.
//!
//! A problem draws F codebooks of M random codewords of dimension D, picks one codeword per
//! factor for every trial and binds them, s = x₁ ⊙ x₂ ⊙ … ⊙ x_F (Frady et al., *Resonator
//! Networks 1*, Neural Computation 32(12), 2020, eq. 1). The bound vector may then be corrupted
//! by additive Gaussian noise or by component flips. Everything is drawn from one seed, in a fixed
//! order (codebooks, then indices, then noise), so the same configuration and seed always give
//! the same problem.
//!
//! Hypervectors are stored as *planes*: one real plane for MAP (bipolar ±1 values) and two for
//! FHRR (the real and imaginary parts of unit phasors). Codebooks have shape `[F, P, M, D]` and
//! bound vectors `[P, T, D]`, with P the number of planes and T the number of trials.

use candle_core::{Device, Tensor};
use rand::Rng;
use recompose_core::memory::{Estimate, MemoryLimit};
use recompose_vsa::planes::PlaneModel;
use recompose_vsa::random::{self, SeededRng};
use recompose_vsa::{Codebook, Fhrr, Map, Vsa};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The VSA model a problem lives in (MAP or FHRR, the models with a planes form).
pub use recompose_vsa::planes::VsaKind;

/// Corruption applied to the bound vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// Standard deviation σ of additive Gaussian noise, s + σ·ε (per real plane).
    pub gauss: f32,
    /// Probability p that a component is corrupted: its sign is flipped for MAP, its phase is
    /// replaced by a uniformly random one for FHRR.
    pub flip: f32,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemConfig {
    /// The VSA model.
    pub vsa: VsaKind,
    /// Dimension D of every hypervector.
    pub dim: usize,
    /// Number of factors F (at least 2).
    pub factors: usize,
    /// Number of codewords M per codebook (at least 1).
    pub codebook_size: usize,
    /// Number of independent trials T (bound vectors) to factorize.
    pub trials: usize,
    /// Corruption of the bound vectors.
    pub noise: Noise,
    /// Seed of every random draw.
    pub seed: u64,
}

impl ProblemConfig {
    /// A noise-free MAP problem.
    pub fn map(dim: usize, factors: usize, codebook_size: usize, trials: usize, seed: u64) -> Self {
        ProblemConfig {
            vsa: VsaKind::Map,
            dim,
            factors,
            codebook_size,
            trials,
            noise: Noise::default(),
            seed,
        }
    }

    /// Checks every size and probability; the error names the offending value.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(Error::Config("dimension must be at least 1".into()));
        }
        if self.factors < 2 {
            return Err(Error::Config(format!(
                "number of factors must be at least 2, got {}",
                self.factors
            )));
        }
        if self.codebook_size == 0 {
            return Err(Error::Config("codebook size M must be at least 1".into()));
        }
        if self.trials == 0 {
            return Err(Error::Config("number of trials must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.noise.flip) {
            return Err(Error::Config(format!(
                "flip probability must lie in [0, 1], got {}",
                self.noise.flip
            )));
        }
        if !self.noise.gauss.is_finite() || self.noise.gauss < 0.0 {
            return Err(Error::Config(format!(
                "Gaussian noise std must be finite and non-negative, got {}",
                self.noise.gauss
            )));
        }
        Ok(())
    }

    /// Bytes the problem holds once generated: the codebooks `[F, P, M, D]` and bound vectors
    /// `[P, T, D]` in `f32`, the true indices `[T, F]` in `u32`. An overflow of the sizes gives
    /// [`Estimate::OVERFLOW`].
    pub fn problem_bytes(&self) -> Estimate {
        let (f, m, d, t, p) = (
            self.factors,
            self.codebook_size,
            self.dim,
            self.trials,
            self.vsa.planes(),
        );
        Estimate::f32s(&[f, p, m, d]) + Estimate::f32s(&[p, t, d]) + Estimate::array(&[t, f], 4)
    }

    /// Peak bytes [`Problem::generate`] allocates, the generated problem included:
    ///
    /// - MAP: the drawn codewords `F·M·D` `f32` and their host copy (used to bind the truth),
    ///   2·F·M·D·4 bytes;
    /// - FHRR: the angles, their host copy, cosines, sines, the stacked complex vectors, their
    ///   planes and the stacked planes: 10·F·M·D·4 bytes at most;
    /// - the bound vectors `P·T·D` `f32`, twice with Gaussian noise (the draws), and the true
    ///   indices `T·F` `u32`.
    pub fn memory_estimate(&self) -> Estimate {
        let (f, m, d, t, p) = (
            self.factors,
            self.codebook_size,
            self.dim,
            self.trials,
            self.vsa.planes(),
        );
        let words = match self.vsa {
            VsaKind::Map => 2,
            VsaKind::Fhrr => 10,
        };
        let noise = if self.noise.gauss > 0.0 { 2 } else { 1 };
        Estimate::f32s(&[f, m, d]) * words
            + Estimate::f32s(&[p, t, d]) * noise
            + Estimate::array(&[t, f], 4)
    }

    /// A one-line description of the problem for refusals: "a MAP problem of D = 1000, F = 3,
    /// M = 50, 200 trials".
    pub fn describe(&self) -> String {
        format!(
            "a {} problem of D = {}, F = {}, M = {}, {} trials",
            self.vsa.name(),
            self.dim,
            self.factors,
            self.codebook_size,
            self.trials
        )
    }
}

/// A generated factorization problem.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The configuration it was generated from.
    pub config: ProblemConfig,
    /// Codebooks, `[F, P, M, D]` (P planes, see the module docs).
    pub codebooks: Tensor,
    /// Bound, possibly noisy, vectors `[P, T, D]`.
    pub bound: Tensor,
    /// The true codeword index of every factor, trial-major: `truth[t * F + f]`.
    pub truth: Vec<u32>,
}

impl Problem {
    /// Draws a problem from `config.seed` on `device`, refusing with [`Error::Memory`] a
    /// problem whose [`ProblemConfig::memory_estimate`] exceeds the machine's available memory
    /// ([`MemoryLimit::available`]).
    pub fn generate(config: &ProblemConfig, device: &Device) -> Result<Self> {
        Self::generate_within(config, device, MemoryLimit::available())
    }

    /// [`Problem::generate`] under an explicit memory limit: a problem whose
    /// [`ProblemConfig::memory_estimate`] exceeds `limit` (or whose sizes overflow) is refused
    /// with [`Error::Memory`] before anything is allocated.
    pub fn generate_within(
        config: &ProblemConfig,
        device: &Device,
        limit: MemoryLimit,
    ) -> Result<Self> {
        config.validate()?;
        limit.check(
            format_args!("generating {}", config.describe()),
            config.memory_estimate(),
        )?;
        let mut rng = random::seeded(config.seed);
        let (f, m, d, t) = (
            config.factors,
            config.codebook_size,
            config.dim,
            config.trials,
        );
        // Codewords from the VSA models themselves: MAP signs, or FHRR phases (kept on the host
        // too, to bind the truth below in double precision).
        let (codebooks, phases) = match config.vsa {
            VsaKind::Map => {
                let words = Map::new(d, device)?.random(&[f * m], &mut rng)?;
                let host = words.flatten_all()?.to_vec1::<f32>()?;
                (words.reshape((f, 1, m, d))?, host)
            }
            VsaKind::Fhrr => {
                let model = Fhrr::new(d, device)?;
                let angles = model.random_angles(&[f * m], &mut rng)?;
                let host = angles.flatten_all()?.to_vec1::<f32>()?;
                let planes = model.to_planes(&model.from_angles(&angles)?)?;
                let planes = planes
                    .iter()
                    .map(|p| p.reshape((f, m, d)))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                (Tensor::stack(&planes, 1)?, host)
            }
        };
        let truth: Vec<u32> = (0..t * f).map(|_| rng.random_range(0..m as u32)).collect();

        // Bind on the host: the generator is not a hot path and this keeps it exact.
        let planes = config.vsa.planes();
        let mut bound = vec![0f32; planes * t * d];
        for ti in 0..t {
            for di in 0..d {
                match config.vsa {
                    VsaKind::Map => {
                        let mut p = 1f32;
                        for fi in 0..f {
                            let idx = truth[ti * f + fi] as usize;
                            p *= phases[(fi * m + idx) * d + di];
                        }
                        bound[ti * d + di] = p;
                    }
                    VsaKind::Fhrr => {
                        let mut theta = 0f64;
                        for fi in 0..f {
                            let idx = truth[ti * f + fi] as usize;
                            theta += phases[(fi * m + idx) * d + di] as f64;
                        }
                        bound[ti * d + di] = theta.cos() as f32;
                        bound[(t + ti) * d + di] = theta.sin() as f32;
                    }
                }
            }
        }
        corrupt(&mut bound, config, &mut rng);

        let bound = Tensor::from_vec(bound, (planes, t, d), device)?;
        Ok(Problem {
            config: config.clone(),
            codebooks,
            bound,
            truth,
        })
    }

    /// A problem from codebooks and bound vectors built with `recompose-vsa`, so that vectors
    /// made elsewhere in a program can be factorized directly.
    ///
    /// `codebooks` holds one codebook per factor (at least two, all of the same size M, all of
    /// `model`'s dimension), `bound` is a batch `[T, …]` of the model's vectors, and `truth` the
    /// codeword index of every factor of every trial, trial-major (`truth[t * F + f]`), against
    /// which [`factorize`](crate::factorize::factorize) scores its predictions. The
    /// configuration records the shapes; its seed is 0 and its noise none, since nothing was drawn.
    ///
    /// ```
    /// use candle_core::Device;
    /// use recompose_decomp::factorize::{factorize, FactorizeConfig, Method};
    /// use recompose_decomp::problem::Problem;
    /// use recompose_vsa::{random::seeded, Codebook, Map, Vsa};
    ///
    /// let map = Map::new(1024, &Device::Cpu)?;
    /// let mut rng = seeded(5);
    /// let colours = Codebook::random_numbered(map.clone(), "colour", 10, &mut rng)?;
    /// let shapes = Codebook::random_numbered(map.clone(), "shape", 10, &mut rng)?;
    /// // One bound vector: colour 3 with shape 7.
    /// let s = map.bind(&colours.vector(3)?, &shapes.vector(7)?)?.unsqueeze(0)?;
    /// let problem = Problem::from_codebooks(&map, &[colours, shapes], &s, vec![3, 7])?;
    /// let config = FactorizeConfig {
    ///     method: Method::from_name("resonator")?,
    ///     max_iters: 100,
    ///     seed: 1,
    ///     threads: 1,
    /// };
    /// let report = factorize(&problem, &config, &mut |_| {})?;
    /// assert_eq!(report.predictions, vec![3, 7]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for fewer than two codebooks, codebooks of different sizes or
    /// dimensions, a truth of the wrong length or with an index out of range; the VSA crate's
    /// shape error for a `bound` that is not a batch of the model's vectors.
    pub fn from_codebooks<M: PlaneModel>(
        model: &M,
        codebooks: &[Codebook<M>],
        bound: &Tensor,
        truth: Vec<u32>,
    ) -> Result<Problem> {
        let f = codebooks.len();
        if f < 2 {
            return Err(Error::Config(format!(
                "a factorization needs at least 2 codebooks, got {f}"
            )));
        }
        let m = codebooks[0].len();
        let d = model.dim();
        for (i, cb) in codebooks.iter().enumerate() {
            if cb.len() != m {
                return Err(Error::Config(format!(
                    "all codebooks must have the same size: codebook 0 has {m} codewords, \
                     codebook {i} has {}",
                    cb.len()
                )));
            }
            if cb.model().dim() != d {
                return Err(Error::Config(format!(
                    "codebook {i} has dimension {}, the model {d}",
                    cb.model().dim()
                )));
            }
        }
        let bound = model.to_planes(&bound.to_dtype(candle_core::DType::F32)?)?;
        let t = bound[0].dim(0)?;
        if t == 0 {
            return Err(Error::Config("give at least one bound vector".into()));
        }
        if truth.len() != t * f {
            return Err(Error::Config(format!(
                "truth must hold {} indices ({t} trials × {f} factors), got {}",
                t * f,
                truth.len()
            )));
        }
        if let Some(&bad) = truth.iter().find(|&&i| i as usize >= m) {
            return Err(Error::Config(format!(
                "truth index {bad} out of range (codebooks have {m} codewords)"
            )));
        }
        let books = codebooks
            .iter()
            .map(|cb| {
                let planes = model.to_planes(&cb.tensor().to_dtype(candle_core::DType::F32)?)?;
                Ok(Tensor::stack(&planes, 0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Problem {
            config: ProblemConfig {
                vsa: model.kind(),
                dim: d,
                factors: f,
                codebook_size: m,
                trials: t,
                noise: Noise::default(),
                seed: 0,
            },
            codebooks: Tensor::stack(&books, 0)?,
            bound: Tensor::stack(&bound, 0)?,
            truth,
        })
    }

    /// The sub-problem made of the given trials (same codebooks), in the given order.
    pub fn select(&self, trials: &[usize]) -> Result<Problem> {
        let t = self.config.trials;
        if let Some(&bad) = trials.iter().find(|&&i| i >= t) {
            return Err(Error::Config(format!(
                "trial {bad} out of range (the problem has {t} trials)"
            )));
        }
        if trials.is_empty() {
            return Err(Error::Config("select at least one trial".into()));
        }
        let f = self.config.factors;
        let idx: Vec<u32> = trials.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, trials.len(), self.bound.device())?;
        let mut config = self.config.clone();
        config.trials = trials.len();
        Ok(Problem {
            config,
            codebooks: self.codebooks.clone(),
            bound: self.bound.index_select(&idx, 1)?,
            truth: trials
                .iter()
                .flat_map(|&i| self.truth[i * f..(i + 1) * f].iter().copied())
                .collect(),
        })
    }

    /// The codebook of factor `f`, one `[M, D]` tensor per plane.
    pub fn codebook(&self, f: usize) -> Result<Vec<Tensor>> {
        let cb = self.codebooks.get(f)?;
        Ok((0..self.config.vsa.planes())
            .map(|p| cb.get(p))
            .collect::<candle_core::Result<Vec<_>>>()?)
    }

    /// The bound vectors, one `[T, D]` tensor per plane.
    pub fn bound_planes(&self) -> Result<Vec<Tensor>> {
        Ok((0..self.config.vsa.planes())
            .map(|p| self.bound.get(p))
            .collect::<candle_core::Result<Vec<_>>>()?)
    }
}

/// Metadata key under which a problem file stores its configuration as JSON.
const CONFIG_KEY: &str = "recompose.problem";

impl Problem {
    /// Writes the problem to a safetensors file: tensors `codebooks` (f32 `[F, P, M, D]`),
    /// `bound` (f32 `[P, T, D]`) and `truth` (u32 `[T, F]`), and the configuration as JSON
    /// metadata. The file is written to a temporary name and renamed, so a crash never leaves a
    /// truncated file behind. It allocates about [`Problem::save_estimate`] bytes on the way.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let fmt = |msg: String| Error::Format {
            path: path.display().to_string(),
            msg,
        };
        let f32_bytes = |t: &Tensor| -> Result<Vec<u8>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect())
        };
        let cb = f32_bytes(&self.codebooks)?;
        let bound = f32_bytes(&self.bound)?;
        let truth: Vec<u8> = self.truth.iter().flat_map(|v| v.to_le_bytes()).collect();
        use safetensors::Dtype;
        use safetensors::tensor::TensorView;
        let views = vec![
            (
                "codebooks",
                TensorView::new(Dtype::F32, self.codebooks.dims().to_vec(), &cb)
                    .map_err(|e| fmt(e.to_string()))?,
            ),
            (
                "bound",
                TensorView::new(Dtype::F32, self.bound.dims().to_vec(), &bound)
                    .map_err(|e| fmt(e.to_string()))?,
            ),
            (
                "truth",
                TensorView::new(
                    Dtype::U32,
                    vec![self.config.trials, self.config.factors],
                    &truth,
                )
                .map_err(|e| fmt(e.to_string()))?,
            ),
        ];
        let meta = serde_json::to_string(&self.config).map_err(|e| fmt(e.to_string()))?;
        let bytes = safetensors::serialize(
            views,
            Some([(CONFIG_KEY.to_string(), meta)].into_iter().collect()),
        )
        .map_err(|e| fmt(e.to_string()))?;
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Peak bytes [`Problem::save`] allocates for a problem of `config` (on top of the problem
    /// itself): the host copy of its tensors, their little-endian bytes and the serialized file,
    /// 3·[`ProblemConfig::problem_bytes`].
    pub fn save_estimate(config: &ProblemConfig) -> Estimate {
        config.problem_bytes() * 3
    }

    /// Reads a problem written by [`Problem::save`], checking every tensor's presence, dtype
    /// and shape against the stored configuration, that codewords are valid (±1 for MAP, unit
    /// modulus for FHRR), that values are finite and that true indices are in range. The error
    /// names the offending tensor.
    ///
    /// A file whose [`Problem::load_estimate`] exceeds the machine's available memory is
    /// refused with [`Error::Memory`] before it is read.
    pub fn load(path: &std::path::Path, device: &Device) -> Result<Problem> {
        Self::load_within(path, device, MemoryLimit::available())
    }

    /// Peak bytes [`Problem::load`] allocates for a file of `file_len` bytes: the file's bytes,
    /// the host vectors decoded from them and the tensors made from those, 3·`file_len`.
    pub fn load_estimate(file_len: u64) -> Estimate {
        Estimate::bytes(file_len) * 3
    }

    /// [`Problem::load`] under an explicit memory limit, checked against
    /// [`Problem::load_estimate`] of the file's size before the file is read.
    pub fn load_within(
        path: &std::path::Path,
        device: &Device,
        limit: MemoryLimit,
    ) -> Result<Problem> {
        let name = path.display().to_string();
        let fmt = |msg: String| Error::Format {
            path: name.clone(),
            msg,
        };
        let io = |source| Error::Io {
            path: name.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        limit.check(
            format_args!("loading the problem file {name}"),
            Self::load_estimate(len),
        )?;
        let bytes = std::fs::read(path).map_err(io)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| fmt(format!("not a safetensors file ({e})")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| fmt(format!("not a safetensors file ({e})")))?;
        let config: ProblemConfig = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(CONFIG_KEY))
            .ok_or_else(|| fmt(format!("metadata key '{CONFIG_KEY}' is missing")))
            .and_then(|s| {
                serde_json::from_str(s).map_err(|e| fmt(format!("bad '{CONFIG_KEY}': {e}")))
            })?;
        config
            .validate()
            .map_err(|e| fmt(format!("stored configuration is invalid: {e}")))?;
        let (f, m, d, t, p) = (
            config.factors,
            config.codebook_size,
            config.dim,
            config.trials,
            config.vsa.planes(),
        );
        let get = |key: &str, dtype: safetensors::Dtype, shape: &[usize]| {
            let view = st
                .tensor(key)
                .map_err(|_| fmt(format!("tensor '{key}' is missing")))?;
            if view.dtype() != dtype {
                return Err(fmt(format!(
                    "tensor '{key}' has dtype {:?}, expected {dtype:?}",
                    view.dtype()
                )));
            }
            if view.shape() != shape {
                return Err(fmt(format!(
                    "tensor '{key}' has shape {:?}, expected {shape:?} from the stored configuration",
                    view.shape()
                )));
            }
            Ok(view.data().to_vec())
        };
        let to_f32 = |b: Vec<u8>| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let cb = to_f32(get("codebooks", safetensors::Dtype::F32, &[f, p, m, d])?);
        let bound = to_f32(get("bound", safetensors::Dtype::F32, &[p, t, d])?);
        let truth: Vec<u32> = get("truth", safetensors::Dtype::U32, &[t, f])?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(bad) = truth.iter().find(|&&i| i as usize >= m) {
            return Err(fmt(format!(
                "tensor 'truth' holds index {bad}, but codebooks have {m} codewords"
            )));
        }
        if bound.iter().any(|v| !v.is_finite()) {
            return Err(fmt("tensor 'bound' holds non-finite values".into()));
        }
        let valid = match config.vsa {
            VsaKind::Map => cb.iter().all(|&v| v == 1.0 || v == -1.0),
            VsaKind::Fhrr => (0..f).all(|fi| {
                let (re, im) = (
                    &cb[(fi * 2) * m * d..(fi * 2 + 1) * m * d],
                    &cb[(fi * 2 + 1) * m * d..(fi * 2 + 2) * m * d],
                );
                re.iter()
                    .zip(im)
                    .all(|(a, b)| (a.hypot(*b) - 1.0).abs() < 1e-4)
            }),
        };
        if !valid {
            return Err(fmt(format!(
                "tensor 'codebooks' holds values that are not {} codewords",
                match config.vsa {
                    VsaKind::Map => "bipolar (±1)",
                    VsaKind::Fhrr => "unit-phasor",
                }
            )));
        }
        Ok(Problem {
            codebooks: Tensor::from_vec(cb, (f, p, m, d), device)?,
            bound: Tensor::from_vec(bound, (p, t, d), device)?,
            truth,
            config,
        })
    }
}

/// Applies the configured noise in place to host data laid out as `[P, T, D]`.
fn corrupt(bound: &mut [f32], config: &ProblemConfig, rng: &mut SeededRng) {
    let (t, d) = (config.trials, config.dim);
    let Noise { gauss, flip } = config.noise;
    if flip > 0.0 {
        for k in 0..t * d {
            if rng.random::<f32>() < flip {
                match config.vsa {
                    VsaKind::Map => bound[k] = -bound[k],
                    VsaKind::Fhrr => {
                        let th = rng.random_range(-std::f32::consts::PI..std::f32::consts::PI);
                        bound[k] = th.cos();
                        bound[t * d + k] = th.sin();
                    }
                }
            }
        }
    }
    if gauss > 0.0 {
        let eps = random::normal_vec(rng, bound.len());
        for (b, e) in bound.iter_mut().zip(eps) {
            *b += gauss * e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_bound_is_product_of_true_codewords() {
        let cfg = ProblemConfig::map(64, 3, 5, 4, 11);
        let p = Problem::generate(&cfg, &Device::Cpu).unwrap();
        let books: Vec<Vec<Vec<f32>>> = (0..3)
            .map(|f| p.codebook(f).unwrap()[0].to_vec2::<f32>().unwrap())
            .collect();
        let s = p.bound_planes().unwrap()[0].to_vec2::<f32>().unwrap();
        for t in 0..4 {
            for d in 0..64 {
                let prod: f32 = (0..3)
                    .map(|f| books[f][p.truth[t * 3 + f] as usize][d])
                    .product();
                assert_eq!(prod, s[t][d]);
            }
        }
    }

    #[test]
    fn fhrr_bound_has_unit_modulus_and_binds_phases() {
        let mut cfg = ProblemConfig::map(32, 2, 3, 2, 5);
        cfg.vsa = VsaKind::Fhrr;
        let p = Problem::generate(&cfg, &Device::Cpu).unwrap();
        let s = p.bound_planes().unwrap();
        let (re, im) = (
            s[0].to_vec2::<f32>().unwrap(),
            s[1].to_vec2::<f32>().unwrap(),
        );
        let c: Vec<Vec<Vec<f32>>> = p
            .codebook(0)
            .unwrap()
            .iter()
            .map(|x| x.to_vec2().unwrap())
            .collect();
        let e: Vec<Vec<Vec<f32>>> = p
            .codebook(1)
            .unwrap()
            .iter()
            .map(|x| x.to_vec2().unwrap())
            .collect();
        for t in 0..2 {
            let (i, j) = (p.truth[t * 2] as usize, p.truth[t * 2 + 1] as usize);
            for d in 0..32 {
                assert!((re[t][d].hypot(im[t][d]) - 1.0).abs() < 1e-5);
                // (a + ib)(c + id) = (ac − bd) + i(ad + bc)
                let pr = c[0][i][d] * e[0][j][d] - c[1][i][d] * e[1][j][d];
                let pi = c[0][i][d] * e[1][j][d] + c[1][i][d] * e[0][j][d];
                assert!((pr - re[t][d]).abs() < 1e-5 && (pi - im[t][d]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn same_seed_same_problem() {
        let mut cfg = ProblemConfig::map(100, 3, 10, 5, 3);
        cfg.noise = Noise {
            gauss: 0.1,
            flip: 0.1,
        };
        let a = Problem::generate(&cfg, &Device::Cpu).unwrap();
        let b = Problem::generate(&cfg, &Device::Cpu).unwrap();
        assert_eq!(a.truth, b.truth);
        let diff = (a.bound - b.bound)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn flip_noise_flips_the_expected_fraction() {
        let mut cfg = ProblemConfig::map(1000, 2, 4, 50, 9);
        let clean = Problem::generate(&cfg, &Device::Cpu).unwrap();
        cfg.noise.flip = 0.2;
        let noisy = Problem::generate(&cfg, &Device::Cpu).unwrap();
        let a = clean.bound.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = noisy.bound.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let flipped = a.iter().zip(&b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64;
        // 50 000 Bernoulli(0.2) draws: standard error 0.0018.
        assert!((flipped - 0.2).abs() < 0.01, "{flipped}");
    }

    #[test]
    fn save_and_load_round_trip_and_reject_bad_files() {
        let dir = std::env::temp_dir().join(format!("recompose-problem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for vsa in [VsaKind::Map, VsaKind::Fhrr] {
            let mut cfg = ProblemConfig::map(48, 3, 5, 4, 21);
            cfg.vsa = vsa;
            cfg.noise.gauss = 0.1;
            let p = Problem::generate(&cfg, &Device::Cpu).unwrap();
            let path = dir.join(format!("{}.safetensors", vsa.name()));
            p.save(&path).unwrap();
            let q = Problem::load(&path, &Device::Cpu).unwrap();
            assert_eq!(q.config, p.config);
            assert_eq!(q.truth, p.truth);
            let diff = (&q.bound - &p.bound)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
            let diff = (&q.codebooks - &p.codebooks)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
        // Truncated file.
        let path = dir.join("map.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = Problem::load(&cut, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("cut.safetensors"), "{e}");
        // A tensor whose shape disagrees with the configuration is named in the error.
        let p = Problem::generate(&ProblemConfig::map(48, 3, 5, 4, 21), &Device::Cpu).unwrap();
        let mut bad = p.clone();
        bad.config.codebook_size = 6;
        bad.save(&dir.join("shape.safetensors")).unwrap();
        let e = Problem::load(&dir.join("shape.safetensors"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'codebooks'") && e.contains("shape"), "{e}");
        // Codewords that are not bipolar.
        let mut bad = p.clone();
        bad.codebooks = (bad.codebooks * 0.5).unwrap();
        bad.save(&dir.join("values.safetensors")).unwrap();
        let e = Problem::load(&dir.join("values.safetensors"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bipolar"), "{e}");
        // A missing file.
        assert!(matches!(
            Problem::load(&dir.join("absent.safetensors"), &Device::Cpu),
            Err(Error::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_configurations_are_errors() {
        let ok = ProblemConfig::map(10, 2, 3, 1, 0);
        for bad in [
            ProblemConfig {
                dim: 0,
                ..ok.clone()
            },
            ProblemConfig {
                factors: 1,
                ..ok.clone()
            },
            ProblemConfig {
                codebook_size: 0,
                ..ok.clone()
            },
            ProblemConfig {
                trials: 0,
                ..ok.clone()
            },
            ProblemConfig {
                noise: Noise {
                    gauss: 0.0,
                    flip: 1.5,
                },
                ..ok.clone()
            },
            ProblemConfig {
                noise: Noise {
                    gauss: -1.0,
                    flip: 0.0,
                },
                ..ok.clone()
            },
            ProblemConfig {
                noise: Noise {
                    gauss: f32::NAN,
                    flip: 0.0,
                },
                ..ok.clone()
            },
        ] {
            assert!(Problem::generate(&bad, &Device::Cpu).is_err(), "{bad:?}");
        }
    }

    /// A problem built from `recompose-vsa` FHRR codebooks factorizes like a generated one, and
    /// its planes are exactly the model's vectors.
    #[test]
    fn problems_from_vsa_codebooks_factorize() {
        use crate::factorize::{FactorizeConfig, Method, factorize};
        let fhrr = Fhrr::new(512, &Device::Cpu).unwrap();
        let mut rng = random::seeded(9);
        let books: Vec<Codebook<Fhrr>> = (0..3)
            .map(|f| {
                Codebook::random_numbered(fhrr.clone(), &format!("f{f}"), 8, &mut rng).unwrap()
            })
            .collect();
        let truth = vec![1u32, 6, 2, 7, 0, 5];
        let mut bound = Vec::new();
        for t in 0..2 {
            let mut s = books[0].vector(truth[t * 3] as usize).unwrap();
            for f in 1..3 {
                s = fhrr
                    .bind(&s, &books[f].vector(truth[t * 3 + f] as usize).unwrap())
                    .unwrap();
            }
            bound.push(s);
        }
        let bound = Tensor::stack(&bound, 0).unwrap();
        let p = Problem::from_codebooks(&fhrr, &books, &bound, truth.clone()).unwrap();
        assert_eq!(
            (p.config.factors, p.config.codebook_size, p.config.trials),
            (3, 8, 2)
        );
        assert_eq!(p.config.vsa, VsaKind::Fhrr);
        let want = fhrr.to_planes(books[1].tensor()).unwrap();
        let got = p.codebook(1).unwrap();
        for (a, b) in got.iter().zip(&want) {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        }
        let config = FactorizeConfig {
            method: Method::from_name("resonator").unwrap(),
            max_iters: 200,
            seed: 0,
            threads: 1,
        };
        let report = factorize(&p, &config, &mut |_| {}).unwrap();
        assert_eq!(report.predictions, truth);
        assert_eq!(report.exact_accuracy, 1.0);
    }

    #[test]
    fn bad_vsa_inputs_are_errors() {
        let map = Map::new(64, &Device::Cpu).unwrap();
        let mut rng = random::seeded(10);
        let a = Codebook::random_numbered(map.clone(), "a", 4, &mut rng).unwrap();
        let b = Codebook::random_numbered(map.clone(), "b", 4, &mut rng).unwrap();
        let short = Codebook::random_numbered(map.clone(), "c", 3, &mut rng).unwrap();
        let other = Map::new(32, &Device::Cpu).unwrap();
        let narrow = Codebook::random_numbered(other.clone(), "d", 4, &mut rng).unwrap();
        let s = map
            .bind(&a.vector(0).unwrap(), &b.vector(1).unwrap())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let ok = |books: &[Codebook<Map>], s: &Tensor, truth: Vec<u32>| {
            Problem::from_codebooks(&map, books, s, truth)
        };
        assert!(ok(&[a.clone(), b.clone()], &s, vec![0, 1]).is_ok());
        let msg = |r: Result<Problem>| r.unwrap_err().to_string();
        assert!(msg(ok(std::slice::from_ref(&a), &s, vec![0])).contains("at least 2 codebooks"));
        assert!(msg(ok(&[a.clone(), short], &s, vec![0, 1])).contains("same size"));
        assert!(msg(ok(&[a.clone(), narrow], &s, vec![0, 1])).contains("dimension"));
        assert!(msg(ok(&[a.clone(), b.clone()], &s, vec![0])).contains("truth must hold 2"));
        assert!(msg(ok(&[a.clone(), b.clone()], &s, vec![0, 4])).contains("out of range"));
        let single = s.squeeze(0).unwrap();
        assert!(ok(&[a, b], &single, vec![0, 1]).is_err());
    }
}
